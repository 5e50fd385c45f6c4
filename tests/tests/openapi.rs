//! `GET /openapi.json`: a valid OpenAPI 3.1 document, served without a
//! token, that lists every routed method and path (taken from the server's
//! own route registration) and nothing else.

use std::collections::{BTreeSet, HashSet};

use fhirgate_tests::{status_json, TestApp};
use serde_json::Value;

/// The OpenAPI Initiative's schema of 3.1 documents (see tests/openapi/NOTICE).
const OAS_3_1_SCHEMA: &str = include_str!("../openapi/oas-3.1-schema-2022-10-07.json");

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn document(app: &TestApp) -> Value {
    let (status, document) =
        status_json(app.http.get(app.url("openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{document}");
    document
}

/// The routed (method, path) pairs, the trailing-slash alias of `/fhir/R4`
/// folded into the path it stands for.
fn routed() -> BTreeSet<(String, String)> {
    let routed: BTreeSet<(String, String)> = fhirgate_server::routed_paths()
        .into_iter()
        .map(|(method, path)| match path.strip_suffix('/') {
            Some(path) if !path.is_empty() => (method, path.to_string()),
            _ => (method, path),
        })
        .collect();
    assert!(routed.len() > 70, "only {} routes recorded", routed.len());
    routed
}

fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(move |method| (method.to_string(), path.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_is_valid_openapi_3_1() {
    let app = TestApp::spawn().await;
    let document = document(&app).await;
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
    let schema: Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
    let validator = jsonschema::draft202012::new(&schema).expect("the OAS 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not OpenAPI 3.1: {errors:#?}");
    // The schema does catch a broken document.
    let mut broken = document.clone();
    broken["paths"]["/healthcheck"]["get"]["responses"] = serde_json::json!("none");
    assert!(!validator.is_valid(&broken));

    // The schema cannot check references, ids or path parameters: do.
    let mut refs = Vec::new();
    collect_refs(&document, &mut refs);
    assert!(!refs.is_empty());
    for reference in refs {
        let pointer = reference.strip_prefix('#').expect("a local $ref");
        assert!(
            document.pointer(pointer).is_some(),
            "{reference} points nowhere"
        );
    }
    let mut ids = HashSet::new();
    for (method, path) in documented(&document) {
        let operation = &document["paths"][&path][&method];
        let id = operation["operationId"].as_str().expect("an operationId");
        assert!(ids.insert(id.to_string()), "operationId {id} is repeated");
        let declared: BTreeSet<&str> = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        let templated: BTreeSet<&str> = path
            .split('{')
            .skip(1)
            .map(|rest| rest.split('}').next().unwrap())
            .collect();
        assert_eq!(declared, templated, "{method} {path}: path parameters");
        assert!(
            operation["responses"]["4XX"].is_object(),
            "{method} {path}: errors"
        );
    }

    // Tokens: bearer JWTs, and OAuth 2.0 flows at this server's own URLs.
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
    let flows = &schemes["oauth2"]["flows"];
    let token_url = format!("{}oauth2/token", app.base_url);
    assert_eq!(
        flows["authorizationCode"]["authorizationUrl"],
        format!("{}oauth2/authorize", app.base_url)
    );
    assert_eq!(flows["authorizationCode"]["tokenUrl"], token_url);
    assert_eq!(flows["clientCredentials"]["tokenUrl"], token_url);
    assert!(flows["clientCredentials"]["scopes"]["system/*.cruds"].is_string());
    // Public operations say so; FHIR interactions need a token.
    assert_eq!(
        document["paths"]["/oauth2/token"]["post"]["security"],
        serde_json::json!([{}])
    );
    assert!(document["paths"]["/fhir/R4/{type}/{id}"]["get"]["security"].is_null());
    assert!(document["security"].as_array().unwrap().len() == 2);
    // Bodies are described as FHIR shapes.
    assert_eq!(
        document["paths"]["/fhir/R4"]["post"]["requestBody"]["content"]["application/fhir+json"]
            ["schema"]["$ref"],
        "#/components/schemas/Bundle"
    );
    assert_eq!(
        document["paths"]["/auth/login"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/LoginBody"
    );
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get("$ref") {
                refs.push(reference.clone());
            }
            map.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_lists_exactly_the_routed_paths() {
    let app = TestApp::spawn().await;
    let document = document(&app).await;
    let routed = routed();
    let documented = documented(&document);
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routed, not in /openapi.json: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "in /openapi.json, not routed: {unrouted:?}"
    );
    for area in [
        "/auth/login",
        "/oauth2/token",
        "/admin/projects/{project}",
        "/.well-known/smart-configuration",
        "/healthcheck",
        "/fhir/R4/{type}/{id}/_history/{vid}",
        "/fhir/R4/$export",
        "/fhir/R4/Subscription/{id}/$get-ws-binding-token",
    ] {
        assert!(document["paths"][area].is_object(), "{area} is missing");
    }
}

/// The recorded routes are the ones the running server answers: each
/// (anonymous, with placeholder path parameters) reaches its handler, which
/// refuses it for a reason of its own, never "no such route" or "method not
/// allowed".
#[tokio::test(flavor = "multi_thread")]
async fn every_recorded_route_is_served() {
    let app = TestApp::spawn().await;
    for (method, path) in fhirgate_server::routed_paths() {
        let url = app.url(
            path.trim_start_matches('/')
                .replace("{type}", "Patient")
                .replace("{compartment}", "Patient")
                .replace('{', "x")
                .replace('}', "")
                .as_str(),
        );
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app.http.request(method.clone(), &url).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("Nothing here"),
            "{method} {path}: {status} {body}"
        );
    }
    // A method that is not routed on a routed path is refused with an OperationOutcome.
    let (status, body) =
        status_json(app.http.delete(app.url("auth/login")).send().await.unwrap()).await;
    assert_eq!(status, 405);
    assert_eq!(body["resourceType"], "OperationOutcome");
}

/// The parameters of one operation, `$ref`s resolved, by (`in`, name).
fn parameters<'a>(document: &'a Value, operation: &'a Value) -> BTreeSet<(String, String)> {
    operation["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|parameter| match parameter["$ref"].as_str() {
            Some(reference) => document.pointer(&reference[1..]).unwrap(),
            None => parameter,
        })
        .map(|p| {
            (
                p["in"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The headers a response of `operation` with `status` declares.
fn response_headers(operation: &Value, status: &str) -> BTreeSet<String> {
    operation["responses"][status]["headers"]
        .as_object()
        .unwrap_or_else(|| panic!("no headers on {status}: {operation}"))
        .keys()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fhir_interactions_document_their_headers_and_search_parameters() {
    let app = TestApp::spawn().await;
    let document = document(&app).await;
    let operation = |method: &str, path: &str| document["paths"][path][method].clone();
    let header = |name: &str| ("header".to_string(), name.to_string());
    let query = |name: &str| ("query".to_string(), name.to_string());

    // FHIR R4 http.html: each interaction's request and response headers.
    let update = operation("put", "/fhir/R4/{type}/{id}");
    let declared = parameters(&document, &update);
    assert!(declared.contains(&header("If-Match")), "{declared:?}");
    assert!(declared.contains(&header("Prefer")), "{declared:?}");
    assert!(response_headers(&update, "200").contains("ETag"));
    assert!(response_headers(&update, "201").contains("Location"));
    let create = operation("post", "/fhir/R4/{type}");
    assert!(parameters(&document, &create).contains(&header("If-None-Exist")));
    let created = response_headers(&create, "201");
    for name in ["Location", "ETag", "Last-Modified"] {
        assert!(created.contains(name), "create: {name} in {created:?}");
    }
    let read = operation("get", "/fhir/R4/{type}/{id}");
    let declared = parameters(&document, &read);
    assert!(declared.contains(&header("If-None-Match")), "{declared:?}");
    assert!(
        declared.contains(&header("If-Modified-Since")),
        "{declared:?}"
    );
    assert!(response_headers(&read, "200").contains("ETag"));
    assert!(response_headers(&read, "304").contains("ETag"));
    assert!(response_headers(
        &operation("get", "/fhir/R4/{type}/{id}/_history/{vid}"),
        "200"
    )
    .contains("Last-Modified"));
    for (method, path) in [
        ("patch", "/fhir/R4/{type}/{id}"),
        ("put", "/fhir/R4/{type}"),
    ] {
        assert!(
            parameters(&document, &operation(method, path)).contains(&header("If-Match")),
            "{method} {path}"
        );
    }
    assert!(parameters(&document, &operation("post", "/fhir/R4")).contains(&header("Prefer")));
    assert!(
        response_headers(&operation("get", "/fhir/R4/$export"), "202").contains("Content-Location")
    );
    assert!(
        response_headers(&operation("get", "/fhir/R4/$export-status/{job}"), "202")
            .contains("Retry-After")
    );

    // Searches name the parameters every type has, and take the type's own
    // as free-form pairs; conditional writes take only what matches.
    let result_parameters = [
        "_count",
        "_offset",
        "_cursor",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
    ];
    let filters = ["_id", "_lastUpdated", "_tag", "_profile", "_security"];
    for path in [
        "/fhir/R4/{type}",
        "/fhir/R4",
        "/fhir/R4/{compartment}/{id}/{type}",
    ] {
        let search = operation("get", path);
        let declared = parameters(&document, &search);
        for name in result_parameters.iter().chain(&filters) {
            assert!(declared.contains(&query(name)), "{path}: {name}");
        }
        assert!(declared.contains(&query("parameters")), "{path}: free-form");
        assert!(declared.contains(&header("Prefer")), "{path}: Prefer");
    }
    let count = operation("get", "/fhir/R4/{type}")["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "_count")
        .unwrap()
        .clone();
    assert_eq!(count["schema"]["maximum"], 1000, "{count}");
    let conditional = parameters(&document, &operation("delete", "/fhir/R4/{type}"));
    assert!(conditional.contains(&query("_id")));
    assert!(!conditional.contains(&query("_count")), "{conditional:?}");
    assert!(
        parameters(&document, &operation("get", "/fhir/R4/{type}/_history"))
            .contains(&query("_since"))
    );

    // Every operation takes and answers X-Request-Id; errors may say when
    // to come back.
    for (method, path) in documented(&document) {
        let operation = &document["paths"][&path][&method];
        assert!(
            parameters(&document, operation).contains(&header("X-Request-Id")),
            "{method} {path}: X-Request-Id"
        );
        for (status, response) in operation["responses"].as_object().unwrap() {
            if response.get("$ref").is_none() {
                assert!(
                    response_headers(operation, status).contains("X-Request-Id"),
                    "{method} {path} {status}: X-Request-Id"
                );
            }
        }
    }
    let error = &document["components"]["responses"]["Error"]["headers"];
    assert!(error["Retry-After"].is_object(), "{error}");
    assert!(error["X-Request-Id"].is_object(), "{error}");
}
