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
        header::HeaderBuilder,
        path::{Operation, ParameterBuilder, ParameterIn, Paths},
        security::{
            AuthorizationCode, ClientCredentials, Flow, HttpAuthScheme, HttpBuilder, OAuth2,
            Scopes, SecurityRequirement, SecurityScheme,
        },
        ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, RefOr,
        Required, ResponseBuilder, Server,
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

/// The version read or written (by `Prefer: return` on writes: the
/// resource, nothing, or an OperationOutcome).
#[derive(IntoResponses)]
#[response(
    status = 200,
    content_type = "application/fhir+json",
    headers(
        ("ETag" = String, description = "The version: `W/\"<versionId>\"`, for `If-Match` and `If-None-Match`"),
        ("Last-Modified" = String, description = "`meta.lastUpdated` as an HTTP date")
    )
)]
pub struct VersionOk(Resource);

/// Not modified: the version named by `If-None-Match`, or one not changed
/// since `If-Modified-Since`, is the current one.
#[derive(IntoResponses)]
#[response(
    status = 304,
    headers(
        ("ETag" = String, description = "The current version: `W/\"<versionId>\"`"),
        ("Last-Modified" = String, description = "`meta.lastUpdated` as an HTTP date")
    )
)]
pub struct NotModified;

/// Created: the new resource (by `Prefer: return`), its URL in `Location`.
#[derive(IntoResponses)]
#[response(
    status = 201,
    content_type = "application/fhir+json",
    headers(
        ("Location" = String, description = "The new version's URL: `<base>fhir/R4/<type>/<id>/_history/<versionId>`"),
        ("ETag" = String, description = "The version: `W/\"<versionId>\"`"),
        ("Last-Modified" = String, description = "`meta.lastUpdated` as an HTTP date")
    )
)]
pub struct Created(Resource);

/// Created: the new resource (the admin routes: no `Location`).
#[derive(IntoResponses)]
#[response(status = 201, content_type = "application/fhir+json")]
pub struct ResourceCreated(Resource);

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

/// What a search matches: the parameters every type has and, as free-form
/// pairs, the type's own (listed in the CapabilityStatement at
/// `/fhir/R4/metadata`). A repeated parameter is AND, a comma OR.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchFilters {
    /// Resource ids, comma-separated.
    #[param(rename = "_id")]
    id: Option<String>,
    /// A date prefix and instant, e.g. `gt2026-01-01`; repeat for a range.
    #[param(rename = "_lastUpdated", style = Form, explode)]
    last_updated: Option<Vec<String>>,
    /// `meta.tag` as a token: `system|code`.
    #[param(rename = "_tag")]
    tag: Option<String>,
    /// `meta.profile`, a canonical URL.
    #[param(rename = "_profile")]
    profile: Option<String>,
    /// `meta.security` as a token: `system|code`.
    #[param(rename = "_security")]
    security: Option<String>,
    /// `name=value` pairs: any other search parameter of the type, with
    /// modifiers (`name:exact`), chains and `_has`.
    #[param(style = Form, explode, value_type = Object)]
    parameters: Option<Value>,
}

/// How a search's matches are returned.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchResults {
    /// Matches per page: default 20, at most 1000.
    #[param(rename = "_count", minimum = 0, maximum = 1000)]
    count: Option<u32>,
    /// Matches to skip, at most 10,000 (the `next` links page with `_cursor` instead).
    #[param(rename = "_offset", minimum = 0, maximum = 10000)]
    offset: Option<u32>,
    /// Where a page starts: taken from a `next` or `previous` link, never made by hand.
    #[param(rename = "_cursor")]
    cursor: Option<String>,
    /// Sort keys, comma-separated, `-` for descending: `-_lastUpdated,name`.
    #[param(rename = "_sort")]
    sort: Option<String>,
    /// `Type:parameter[:target]` (`:iterate` too): the resources matches refer to.
    #[param(rename = "_include", style = Form, explode)]
    include: Option<Vec<String>>,
    /// `Type:parameter[:target]` (`:iterate` too): resources that refer to matches.
    #[param(rename = "_revinclude", style = Form, explode)]
    revinclude: Option<Vec<String>>,
    /// `true`, `count`, `data`, `text` or `false`.
    #[param(rename = "_summary", pattern = "^(true|false|count|data|text)$")]
    summary: Option<String>,
    /// Top-level elements to return, comma-separated.
    #[param(rename = "_elements")]
    elements: Option<String>,
    /// `none`, `estimate` or `accurate`: whether and how `Bundle.total` is counted.
    #[param(rename = "_total", pattern = "^(none|estimate|accurate)$")]
    total: Option<String>,
}

/// Which versions a history lists.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Versions per page: default 20.
    #[param(rename = "_count", minimum = 1)]
    count: Option<u32>,
    /// Only versions written after this instant.
    #[param(rename = "_since")]
    since: Option<String>,
    /// Where a page starts: taken from a `next` link.
    #[param(rename = "_cursor")]
    cursor: Option<String>,
}

/// `If-Match` on writes (FHIR R4 http.html#concurrency).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfMatch {
    /// The version the write expects to replace, `W/"<versionId>"`; another
    /// current version is 412.
    #[param(rename = "If-Match")]
    if_match: Option<String>,
}

/// The headers of a conditional read (FHIR R4 http.html#cread).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfNoneMatch {
    /// `W/"<versionId>"` (or `*`): 304 when that version is the current one.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
    /// An HTTP date: 304 when the resource has not changed since.
    #[param(rename = "If-Modified-Since")]
    if_modified_since: Option<String>,
}

/// `If-None-Exist` on create (FHIR R4 http.html#ccreate).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfNoneExist {
    /// A search (`identifier=urn:mrn|123`): one match is answered 200 and
    /// nothing is created, several are 412.
    #[param(rename = "If-None-Exist")]
    if_none_exist: Option<String>,
}

/// `Prefer` (RFC 7240).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct Prefer {
    /// On writes and Bundles `return=minimal`, `return=representation`
    /// (the default) or `return=OperationOutcome`; on searches
    /// `handling=lenient` (unknown parameters are ignored, not 400);
    /// `$export` requires `respond-async`.
    #[param(rename = "Prefer")]
    prefer: Option<String>,
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
        .header(REQUEST_ID, request_id_header())
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(u64::schema()))
                .description(Some("On 429 and 503: seconds to wait before trying again"))
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
            paths.add_path_operation(path, vec![method], with_common(operation));
            paths
        },
    );
    let authorize = format!("{base_url}oauth2/authorize");
    let token = format!("{base_url}oauth2/token");
    let scopes = || Scopes::from_iter(super::oauth::SCOPES.iter().map(|scope| (*scope, *scope)));
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .response("Error", error)
        .header(REQUEST_ID, request_id_header())
        .parameter(
            REQUEST_ID,
            ParameterBuilder::new()
                .name(REQUEST_ID)
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .schema(Some(String::schema()))
                .description(Some(
                    "The request's id in the log (a short token); a new UUID when absent",
                ))
                .build(),
        )
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

/// Every request may carry its id and every response answers it (the
/// logging middleware, `app.rs`); every operation can fail with an
/// OperationOutcome (errors are mapped once, at the HTTP edge).
fn with_common(mut operation: Operation) -> Operation {
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(
                REQUEST_ID.into(),
                RefOr::Ref(Ref::new(format!("#/components/headers/{REQUEST_ID}"))),
            );
        }
    }
    operation
        .parameters
        .get_or_insert_with(Vec::new)
        .push(RefOr::Ref(Ref::new(format!(
            "#/components/parameters/{REQUEST_ID}"
        ))));
    for status in ["4XX", "5XX"] {
        operation.responses.responses.insert(
            status.to_string(),
            RefOr::Ref(Ref::from_response_name("Error")),
        );
    }
    operation
}

const REQUEST_ID: &str = "X-Request-Id";

fn request_id_header() -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(Some(String::schema()))
        .description(Some("The request's id: the client's, or a new UUID"))
        .build()
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
