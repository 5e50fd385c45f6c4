//! `GET /openapi.json`: the OpenAPI 3.1 document of every route, built once
//! at start-up from the routes' own descriptions ([`super::routes`]), plus
//! the shapes FHIR bodies share and the security schemes.
//!
//! The FHIR types below are only described, never built: handlers read and
//! write resources as JSON values, checked against the FHIR R4 schema.
#![allow(dead_code)]

use actix_web::{web, HttpResponse};
use serde_json::Value;
use utoipa::{
    openapi::{
        path::{Operation, Paths},
        security::{
            AuthorizationCode, ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2,
            Scopes, SecurityRequirement, SecurityScheme,
        },
        ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, RefOr,
        ResponseBuilder, Server,
    },
    IntoParams, IntoResponses, PartialSchema, ToSchema,
};

use super::routes::{Documented, Routes};
use crate::app::AppState;

/// A FHIR R4 resource in JSON: `resourceType` names its type, and the other
/// elements follow that type's definition (<https://hl7.org/fhir/R4/>).
/// `Binary` may instead be sent and read as raw bytes of its content type.
#[derive(ToSchema)]
pub struct Resource {
    #[schema(rename = "resourceType", example = "Patient")]
    resource_type: String,
    /// Assigned by the server on create.
    id: Option<String>,
    meta: Option<Meta>,
}

/// Resource metadata maintained by the server.
#[derive(ToSchema)]
pub struct Meta {
    #[schema(rename = "versionId")]
    version_id: Option<String>,
    #[schema(rename = "lastUpdated")]
    last_updated: Option<String>,
}

/// A FHIR Bundle: search results and histories (`searchset`, `history`),
/// batch and transaction requests and their responses.
#[derive(ToSchema)]
pub struct Bundle {
    #[schema(rename = "resourceType", pattern = "^Bundle$")]
    resource_type: String,
    #[schema(rename = "type", example = "searchset")]
    bundle_type: String,
    total: Option<u64>,
    link: Option<Vec<BundleLink>>,
    entry: Option<Vec<BundleEntry>>,
}

#[derive(ToSchema)]
pub struct BundleLink {
    /// `self`, `next`, `previous`…
    relation: String,
    url: String,
}

/// One entry: a resource with its search mode, or a request and its response.
#[derive(ToSchema)]
pub struct BundleEntry {
    #[schema(rename = "fullUrl")]
    full_url: Option<String>,
    resource: Option<Resource>,
}

/// Why a request failed (or, with `Prefer: return=OperationOutcome`, what it did).
#[derive(ToSchema)]
pub struct OperationOutcome {
    #[schema(rename = "resourceType", pattern = "^OperationOutcome$")]
    resource_type: String,
    issue: Vec<Issue>,
}

#[derive(ToSchema)]
pub struct Issue {
    /// `fatal`, `error`, `warning` or `information`.
    severity: String,
    /// An IssueType code: `invalid`, `not-found`, `forbidden`…
    code: String,
    diagnostics: Option<String>,
    /// FHIRPath of the element concerned.
    expression: Option<Vec<String>>,
}

/// A FHIR Parameters resource: the input or output of an operation.
#[derive(ToSchema)]
pub struct Parameters {
    #[schema(rename = "resourceType", pattern = "^Parameters$")]
    resource_type: String,
    parameter: Option<Vec<Value>>,
}

/// An OAuth 2.0 error (RFC 6749 §5.2), answered by the `/oauth2/*` endpoints.
#[derive(ToSchema)]
pub struct OAuthError {
    error: String,
    error_description: Option<String>,
}

/// A JSON object; its members are described with the operation.
#[derive(ToSchema)]
pub struct JsonObject {}

/// The resource.
#[derive(IntoResponses)]
#[response(status = 200, content_type = "application/fhir+json")]
pub struct ResourceOk(Resource);

/// Created: the new resource (by `Prefer: return`), its URL in `Location`.
#[derive(IntoResponses)]
#[response(status = 201, content_type = "application/fhir+json")]
pub struct Created(Resource);

/// A Bundle.
#[derive(IntoResponses)]
#[response(status = 200, content_type = "application/fhir+json")]
pub struct BundleOk(Bundle);

/// Done; the OperationOutcome says what happened.
#[derive(IntoResponses)]
#[response(status = 200, content_type = "application/fhir+json")]
pub struct OutcomeOk(OperationOutcome);

/// A Parameters resource.
#[derive(IntoResponses)]
#[response(status = 200, content_type = "application/fhir+json")]
pub struct ParametersOk(Parameters);

/// A JSON object.
#[derive(IntoResponses)]
#[response(status = 200, content_type = "application/json")]
pub struct JsonOk(JsonObject);

/// `{type}`: a FHIR resource type; `{id}`: a resource id.
#[derive(IntoParams)]
#[into_params(names("type", "id"), parameter_in = Path)]
pub struct TypeAndId(String, String);

/// The FHIR search parameters of the type (or of all types), as in the
/// CapabilityStatement at `/fhir/R4/metadata`, and `_count`, `_sort`,
/// `_include`, `_revinclude`, `_elements`, `_summary`, `_total`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// `name=value` pairs: any search parameter of the type.
    #[param(style = Form, explode, value_type = Object)]
    parameters: Option<Value>,
}

/// Every area's routes, in matching order.
pub fn routes(routes: &mut Routes) {
    routes.add(__path_openapi_json, openapi_json);
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", security(()), responses(JsonOk))]
async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .body(state.openapi.clone())
}

/// The document of `routes`, served from `base_url` (ending in `/`).
pub fn document(routes: Routes, base_url: &str) -> OpenApi {
    let (documented, mut schemas) = routes.into_documented();
    for (name, schema) in [
        (Resource::name(), Resource::schema()),
        (Meta::name(), Meta::schema()),
        (Bundle::name(), Bundle::schema()),
        (BundleLink::name(), BundleLink::schema()),
        (BundleEntry::name(), BundleEntry::schema()),
        (OperationOutcome::name(), OperationOutcome::schema()),
        (Issue::name(), Issue::schema()),
        (Parameters::name(), Parameters::schema()),
        (OAuthError::name(), OAuthError::schema()),
        (JsonObject::name(), JsonObject::schema()),
    ] {
        schemas.push((name.into_owned(), schema));
    }
    let error = ResponseBuilder::new()
        .description(
            "An OperationOutcome saying why (the `/oauth2/*` endpoints answer \
             an OAuth 2.0 error object instead)",
        )
        .content(
            "application/fhir+json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "OperationOutcome",
                ))))
                .build(),
        )
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "OAuthError",
                ))))
                .build(),
        )
        .build();
    let paths = documented.into_iter().fold(
        Paths::new(),
        |mut paths,
         Documented {
             method,
             path,
             operation,
         }| {
            paths.add_path_operation(path, vec![method], with_errors(operation));
            paths
        },
    );
    let authorize = format!("{base_url}oauth2/authorize");
    let token = format!("{base_url}oauth2/token");
    let scopes = || Scopes::from_iter(super::oauth::SCOPES.iter().map(|scope| (*scope, *scope)));
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .response("Error", error)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from /oauth2/token or /auth/login's code exchange, \
                         or a personal access token",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "oauth2",
            SecurityScheme::OAuth2(OAuth2::with_description(
                [
                    Flow::AuthorizationCode(AuthorizationCode::new(&authorize, &token, scopes())),
                    Flow::ClientCredentials(ClientCredentials::new(&token, scopes())),
                ],
                "SMART on FHIR / OAuth 2.0. The authorization code flow requires PKCE \
                 (code_challenge_method S256); clients authenticate with a secret \
                 or a private_key_jwt assertion.",
            )),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("fhirgate")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(env!("CARGO_PKG_DESCRIPTION")))
                .build(),
        )
        .servers(Some([Server::new(base_url.trim_end_matches('/'))]))
        .paths(paths)
        .components(Some(components))
        .security(Some([
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("oauth2", Vec::<String>::new()),
        ]))
        .build()
}

/// Every operation can fail with an OperationOutcome (errors are mapped once,
/// at the HTTP edge).
fn with_errors(mut operation: Operation) -> Operation {
    for status in ["4XX", "5XX"] {
        operation.responses.responses.insert(
            status.to_string(),
            RefOr::Ref(utoipa::openapi::Ref::from_response_name("Error")),
        );
    }
    operation
}

/// `/healthcheck`'s answer.
#[derive(ToSchema)]
pub struct Health {
    ok: bool,
    postgres: bool,
    /// Only with `FHIRGATE_READ_DATABASE_URL`: whether the replica answers.
    replica: Option<bool>,
    version: String,
}
