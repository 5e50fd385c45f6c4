//! `GET /fhir/R4/metadata`: generated from the interactions fhirgate routes,
//! so it changes when a feature lands rather than when someone remembers.

use fhir_model::{
    resource_types::all_resource_types,
    search::{ParamType, Registry},
};
use serde_json::{json, Value};

/// Interactions routed for every resource type (see `http::fhir`).
pub const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// Whole-system interactions routed at `/fhir/R4`.
pub const SYSTEM_INTERACTIONS: &[&str] =
    &["transaction", "batch", "history-system", "search-system"];

pub fn capability_statement(base_url: &str) -> Value {
    let interactions = |codes: &[&str]| {
        codes
            .iter()
            .map(|c| json!({ "code": c }))
            .collect::<Vec<_>>()
    };
    let resources: Vec<Value> = all_resource_types()
        .map(|resource_type| {
            let params = Registry::get().params_for(resource_type);
            let search_params: Vec<Value> = params
                .iter()
                .map(|p| json!({ "name": p.code, "type": p.kind.as_str() }))
                .collect();
            let references: Vec<String> = params
                .iter()
                .filter(|p| p.kind == ParamType::Reference)
                .map(|p| format!("{resource_type}:{}", p.code))
                .collect();
            json!({
                "type": resource_type,
                "interaction": interactions(TYPE_INTERACTIONS),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": false,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "conditionalDelete": "multiple",
                "searchInclude": references,
                "searchRevInclude": references,
                "searchParam": search_params
            })
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": chrono::Utc::now().format("%Y-%m-%d").to_string(),
        "kind": "instance",
        "software": { "name": "fhirgate", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "fhirgate FHIR R4 server", "url": format!("{base_url}fhir/R4") },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{
                    "coding": [{
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "OAuth"
                    }]
                }],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{ "url": "token", "valueUri": format!("{base_url}oauth2/token") }]
                }],
                "description": "OAuth 2.0 bearer tokens (ES256 JWTs) from the token endpoint; every route but metadata requires one"
            },
            "resource": resources,
            "interaction": interactions(SYSTEM_INTERACTIONS)
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_valid_capability_statement() {
        let statement = capability_statement("http://localhost:8103/");
        let mut without_admin_types = statement.clone();
        // Admin types are fhirgate's own; the R4 schema checks the rest.
        without_admin_types["rest"][0]["resource"]
            .as_array_mut()
            .unwrap()
            .retain(|r| {
                !fhir_model::resource_types::is_admin_resource_type(r["type"].as_str().unwrap())
            });
        fhir_model::Validator::new()
            .unwrap()
            .validate(&without_admin_types)
            .unwrap();
        assert_eq!(statement["fhirVersion"], "4.0.1");
        assert!(statement["rest"][0]["resource"].as_array().unwrap().len() > 150);
    }
}
