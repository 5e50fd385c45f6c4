//! FHIR REST routes under `/fhir/R4`. Each handler extracts the caller first
//! (so an unauthenticated request learns nothing), then negotiates, then
//! calls the interaction in `crate::fhir`.

use super::{
    openapi::{
        Bundle, BundleOk, Created, HistoryQuery, IfMatch, IfNoneExist, IfNoneMatch, JsonObject,
        NotModified, OutcomeOk, Parameters, Prefer, Resource, ResourceOk, SearchFilters,
        SearchResults, VersionOk,
    },
    routes::Routes,
};
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};

use super::{
    check_accept, check_content_type, prefer_return, query_pairs, read_body, read_fhir_resource,
    version_response, FHIR_JSON, JSON_TYPES,
};
use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    fhir::{self, bundle, search::SearchScope, HistoryRequest, WriteOutcome},
};

type Data = web::Data<AppState>;

pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_metadata, metadata)
        .add(__path_search_system, search_system)
        .add(__path_bundle, bundle)
        .alias("/fhir/R4", "/fhir/R4/")
        .add(__path_search_system_post, search_system_post)
        .add(__path_history_system, history_system)
        .add(__path_search_type_post, search_type_post)
        .add(__path_history_type, history_type)
        .add(__path_vread, vread)
        .add(__path_history_instance, history_instance)
        .add(__path_search_compartment, search_compartment)
        .add(__path_read, read)
        .add(__path_update, update)
        .add(__path_patch, patch)
        .add(__path_delete, delete)
        .add(__path_create, create)
        .add(__path_search_type, search_type)
        .add(__path_conditional_update, conditional_update)
        .add(__path_conditional_patch, conditional_patch)
        .add(__path_conditional_delete, conditional_delete);
}

#[utoipa::path(get, path = "/fhir/R4/metadata", security(()), responses(ResourceOk))]
async fn metadata(state: Data, req: HttpRequest) -> Result<HttpResponse> {
    check_accept(&req)?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(state.capability.clone()))
}

#[utoipa::path(post, path = "/fhir/R4/{type}", params(IfNoneExist, Prefer), request_body(content = Resource, content_type = "application/fhir+json", description = "The resource (Binary also takes raw bytes of any type)"), responses(Created, VersionOk))]
async fn create(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let resource_type = path.into_inner();
    if resource_type == "Binary" {
        return super::binary::create(caller, state, req, payload).await;
    }
    fhir::authorize(&caller, &resource_type, access_policy::Interaction::Create)?;
    check_accept(&req)?;
    check_content_type(&req, JSON_TYPES)?;
    let if_none_exist = header(&req, "If-None-Exist");
    let _turn = match if_none_exist {
        Some(_) => caller.take_turn(&state).await?,
        None => None,
    };
    let body = read_fhir_resource(&state, &req, payload).await?;
    let (version, outcome) = fhir::atomically(&state, async |tx| {
        fhir::conditional::create(
            &state,
            tx,
            &caller,
            &resource_type,
            body,
            if_none_exist.as_deref(),
        )
        .await
    })
    .await?;
    if outcome == WriteOutcome::Unchanged {
        // If-None-Exist matched one resource: return it, 200.
        return Ok(version_response(
            StatusCode::OK,
            &version,
            prefer_return(&req),
            "Found an existing match; nothing created",
        ));
    }
    created_response(&state, &req, &version)
}

/// 201 with `Location` for a version just created.
pub(super) fn created_response(
    state: &AppState,
    req: &HttpRequest,
    version: &crate::store::Version,
) -> Result<HttpResponse> {
    let location = format!(
        "{}fhir/R4/{}/{}/_history/{}",
        state.base_url, version.resource_type, version.id, version.version_id
    );
    let mut response = version_response(
        StatusCode::CREATED,
        version,
        prefer_return(req),
        &format!("Created {}/{}", version.resource_type, version.id),
    );
    response.headers_mut().insert(
        actix_web::http::header::LOCATION,
        location
            .parse()
            .map_err(|_| Error::Internal("location header".into()))?,
    );
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/fhir/R4/{type}/{id}",
    params(IfNoneMatch),
    responses(VersionOk, NotModified)
)]
async fn read(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (resource_type, id) = path.into_inner();
    if resource_type == "Binary" {
        return super::binary::read(caller, state, req, id).await;
    }
    check_accept(&req)?;
    let db = super::read_your_writes::reads(&state, &caller, &req);
    let version = fhir::read(&db, &caller, &resource_type, &id).await?;
    // A conditional read (FHIR R4 http.html#cread): the client's copy is current.
    if fhir::transaction::not_modified(
        header(&req, "If-None-Match").as_deref(),
        header(&req, "If-Modified-Since").as_deref(),
        &version,
    ) {
        let mut response = HttpResponse::NotModified();
        super::version_headers(&mut response, &version);
        return Ok(response.finish());
    }
    Ok(version_response(
        StatusCode::OK,
        &version,
        super::Return::Representation,
        "",
    ))
}

#[utoipa::path(
    get,
    path = "/fhir/R4/{type}/{id}/_history/{vid}",
    responses(VersionOk)
)]
async fn vread(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (resource_type, id, vid) = path.into_inner();
    check_accept(&req)?;
    let db = super::read_your_writes::reads(&state, &caller, &req);
    let version = fhir::vread(&db, &caller, &resource_type, &id, &vid).await?;
    Ok(version_response(
        StatusCode::OK,
        &version,
        super::Return::Representation,
        "",
    ))
}

fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn if_match(req: &HttpRequest) -> Option<String> {
    header(req, "If-Match")
}

/// The response to an update or patch: 201 when it created, 200 otherwise.
pub(super) fn write_response(
    req: &HttpRequest,
    version: &crate::store::Version,
    outcome: WriteOutcome,
) -> HttpResponse {
    let reference = format!("{}/{}", version.resource_type, version.id);
    let (status, message) = match outcome {
        WriteOutcome::Created => (StatusCode::CREATED, format!("Created {reference}")),
        WriteOutcome::Updated => (StatusCode::OK, format!("Updated {reference}")),
        WriteOutcome::Unchanged => (
            StatusCode::OK,
            format!("{reference} unchanged: the update matched the current version"),
        ),
    };
    version_response(status, version, prefer_return(req), &message)
}

/// What an update, patch or delete addresses: one resource by id, or the
/// resources a search selects (`PUT /Patient?identifier=…`).
enum Target {
    Id(String),
    Condition(String),
}

impl Target {
    fn instance(path: web::Path<(String, String)>) -> (String, Target) {
        let (resource_type, id) = path.into_inner();
        (resource_type, Target::Id(id))
    }

    fn conditional(path: web::Path<String>, req: &HttpRequest) -> (String, Target) {
        (
            path.into_inner(),
            Target::Condition(req.query_string().to_string()),
        )
    }

    /// A conditional write searches first: it takes a turn, as searches do.
    async fn turn(
        &self,
        caller: &Caller,
        state: &AppState,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        match self {
            Target::Id(_) => Ok(None),
            Target::Condition(_) => caller.take_turn(state).await,
        }
    }
}

async fn update_target(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    (resource_type, target): (String, Target),
    payload: web::Payload,
) -> Result<HttpResponse> {
    fhir::authorize(&caller, &resource_type, access_policy::Interaction::Update)?;
    check_accept(&req)?;
    check_content_type(&req, JSON_TYPES)?;
    let _turn = target.turn(&caller, &state).await?;
    let body = read_fhir_resource(&state, &req, payload).await?;
    let if_match = if_match(&req);
    let (version, outcome) = match &target {
        Target::Id(id) => {
            fhir::atomically_optimistic(&state, async |tx| {
                fhir::update(
                    &state,
                    tx,
                    &caller,
                    &resource_type,
                    id,
                    body.clone(),
                    if_match.as_deref(),
                )
                .await
            })
            .await?
        }
        Target::Condition(query) => {
            fhir::atomically(&state, async |tx| {
                fhir::conditional::update(
                    &state,
                    tx,
                    &caller,
                    &resource_type,
                    query,
                    body,
                    if_match.as_deref(),
                    fhir::resource::new_id(),
                )
                .await
            })
            .await?
        }
    };
    Ok(write_response(&req, &version, outcome))
}

#[utoipa::path(put, path = "/fhir/R4/{type}/{id}", params(IfMatch, Prefer), request_body(content = Resource, content_type = "application/fhir+json", description = "The resource (Binary also takes raw bytes of any type)"), responses(VersionOk, Created))]
async fn update(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    if path.0 == "Binary" {
        let (_, id) = path.into_inner();
        return super::binary::update(caller, state, req, id, payload).await;
    }
    update_target(caller, state, req, Target::instance(path), payload).await
}

#[utoipa::path(put, path = "/fhir/R4/{type}", params(SearchFilters, IfMatch, Prefer), request_body(content = Resource, content_type = "application/fhir+json", description = "The resource (Binary also takes raw bytes of any type)"), responses(VersionOk, Created))]
async fn conditional_update(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let target = Target::conditional(path, &req);
    update_target(caller, state, req, target, payload).await
}

/// Reads a patch body: JSON Patch, or FHIRPath Patch (a Parameters resource).
async fn patch_body(
    req: &HttpRequest,
    state: &Data,
    payload: web::Payload,
) -> Result<fhir::patch::PatchDocument> {
    check_accept(req)?;
    if req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_none()
    {
        return Err(Error::UnsupportedMediaType(
            "A patch needs Content-Type: application/json-patch+json (JSON Patch) or application/fhir+json (FHIRPath Patch)".into(),
        ));
    }
    check_content_type(
        req,
        &[
            "application/json-patch+json",
            "application/fhir+json",
            "application/json",
        ],
    )?;
    let body = super::read_fhir_json(state, req, payload).await?;
    fhir::patch::PatchDocument::parse(body, state.config.limits.max_patch_operations)
}

async fn patch_target(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    (resource_type, target): (String, Target),
    payload: web::Payload,
) -> Result<HttpResponse> {
    fhir::authorize(&caller, &resource_type, access_policy::Interaction::Patch)?;
    let _turn = target.turn(&caller, &state).await?;
    let operations = patch_body(&req, &state, payload).await?;
    let if_match = if_match(&req);
    let (version, outcome) = fhir::atomically(&state, async |tx| match &target {
        Target::Id(id) => {
            fhir::patch(
                &state,
                tx,
                &caller,
                &resource_type,
                id,
                operations,
                if_match.as_deref(),
            )
            .await
        }
        Target::Condition(query) => {
            fhir::conditional::patch(
                &state,
                tx,
                &caller,
                &resource_type,
                query,
                operations,
                if_match.as_deref(),
            )
            .await
        }
    })
    .await?;
    Ok(write_response(&req, &version, outcome))
}

#[utoipa::path(patch, path = "/fhir/R4/{type}/{id}", params(IfMatch, Prefer), request_body(content((Vec<JsonObject> = "application/json-patch+json"), (Parameters = "application/fhir+json")), description = "A JSON Patch, or a FHIRPath Patch Parameters resource"), responses(VersionOk))]
async fn patch(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    patch_target(caller, state, req, Target::instance(path), payload).await
}

#[utoipa::path(patch, path = "/fhir/R4/{type}", params(SearchFilters, IfMatch, Prefer), request_body(content((Vec<JsonObject> = "application/json-patch+json"), (Parameters = "application/fhir+json")), description = "A JSON Patch, or a FHIRPath Patch Parameters resource"), responses(VersionOk))]
async fn conditional_patch(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let target = Target::conditional(path, &req);
    patch_target(caller, state, req, target, payload).await
}

async fn delete_target(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    (resource_type, target): (String, Target),
) -> Result<HttpResponse> {
    check_accept(&req)?;
    let _turn = target.turn(&caller, &state).await?;
    let message = fhir::atomically(&state, async |tx| match &target {
        Target::Id(id) => {
            fhir::delete(&state, tx, &caller, &resource_type, id).await?;
            Ok(format!("Deleted {resource_type}/{id}"))
        }
        Target::Condition(query) => {
            let count = fhir::conditional::delete(
                &state,
                tx,
                &caller,
                &resource_type,
                query,
                state.config.max_conditional_delete,
            )
            .await?;
            Ok(format!(
                "Deleted {count} {resource_type} resource(s) matching '{query}'"
            ))
        }
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(super::informational(&message).to_string()))
}

#[utoipa::path(delete, path = "/fhir/R4/{type}/{id}", responses(OutcomeOk))]
async fn delete(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    delete_target(caller, state, req, Target::instance(path)).await
}

#[utoipa::path(
    delete,
    path = "/fhir/R4/{type}",
    params(SearchFilters),
    responses(OutcomeOk)
)]
async fn conditional_delete(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let target = Target::conditional(path, &req);
    delete_target(caller, state, req, target).await
}

/// `POST /fhir/R4` with a batch or transaction Bundle.
#[utoipa::path(post, path = "/fhir/R4", request_body(content = Bundle, content_type = "application/fhir+json", description = "A batch or transaction Bundle"), params(Prefer), responses(BundleOk))]
async fn bundle(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    check_accept(&req)?;
    check_content_type(&req, JSON_TYPES)?;
    let _turn = caller.take_turn(&state).await?;
    // Before the body is read: waiting Bundles hold no memory but their
    // connection's (a Bundle's entries as JSON trees are megabytes).
    let _permit = state
        .bundle_permits
        .acquire()
        .await
        .map_err(|_| Error::Internal("bundle permits closed".into()))?;
    let body = read_fhir_resource(&state, &req, payload).await?;
    let response = fhir::transaction::process(&state, &caller, body, prefer_return(&req)).await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(response))
}

/// `Prefer: handling=lenient` ignores unknown search parameters.
fn lenient(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
}

async fn run_search(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    scope: SearchScope<'_>,
    query: Vec<(String, String)>,
    self_path: &str,
) -> Result<HttpResponse> {
    check_accept(&req)?;
    let _turn = caller.take_turn(&state).await?;
    let body = fhir::search::search(
        &state,
        &super::read_your_writes::reads(&state, &caller, &req),
        &caller,
        &scope,
        &query,
        lenient(&req),
        self_path,
    )
    .await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body))
}

/// The query of `POST …/_search`: the URL's parameters plus the form body's.
async fn post_query(
    req: &HttpRequest,
    state: &Data,
    payload: web::Payload,
) -> Result<Vec<(String, String)>> {
    check_content_type(req, &["application/x-www-form-urlencoded"])?;
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    let mut query = query_pairs(req)?;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| Error::BadRequest(format!("The _search body is not a valid form: {e}")))?;
    query.extend(form);
    fhir::search::without_nul(query)
}

#[utoipa::path(
    get,
    path = "/fhir/R4/{type}",
    params(SearchFilters, SearchResults, Prefer),
    responses(BundleOk)
)]
async fn search_type(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let query = query_pairs(&req)?;
    let scope = SearchScope {
        resource_type: Some(&path),
        compartment: None,
    };
    let self_path = req.path().to_string();
    run_search(caller, state, req, scope, query, &self_path).await
}

#[utoipa::path(post, path = "/fhir/R4/{type}/_search", request_body(content = JsonObject, content_type = "application/x-www-form-urlencoded", description = "Search parameters, as in the query string of a search"), params(Prefer), responses(BundleOk))]
async fn search_type_post(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    fhir::authorize(&caller, &path, access_policy::Interaction::Search)?;
    let query = post_query(&req, &state, payload).await?;
    let scope = SearchScope {
        resource_type: Some(&path),
        compartment: None,
    };
    let self_path = format!("fhir/R4/{path}");
    run_search(caller, state, req, scope, query, &self_path).await
}

#[utoipa::path(
    get,
    path = "/fhir/R4",
    params(SearchFilters, SearchResults, Prefer),
    responses(BundleOk)
)]
async fn search_system(caller: Caller, state: Data, req: HttpRequest) -> Result<HttpResponse> {
    let query = query_pairs(&req)?;
    let scope = SearchScope {
        resource_type: None,
        compartment: None,
    };
    run_search(caller, state, req, scope, query, "fhir/R4").await
}

#[utoipa::path(post, path = "/fhir/R4/_search", request_body(content = JsonObject, content_type = "application/x-www-form-urlencoded", description = "Search parameters, as in the query string of a search"), params(Prefer), responses(BundleOk))]
async fn search_system_post(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let query = post_query(&req, &state, payload).await?;
    let scope = SearchScope {
        resource_type: None,
        compartment: None,
    };
    run_search(caller, state, req, scope, query, "fhir/R4").await
}

#[utoipa::path(
    get,
    path = "/fhir/R4/{compartment}/{id}/{type}",
    params(SearchFilters, SearchResults, Prefer),
    responses(BundleOk)
)]
async fn search_compartment(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (compartment, id, resource_type) = path.into_inner();
    let query = query_pairs(&req)?;
    let scope = SearchScope {
        resource_type: Some(&resource_type),
        compartment: Some((&compartment, &id)),
    };
    let self_path = req.path().to_string();
    run_search(caller, state, req, scope, query, &self_path).await
}

async fn history(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    resource_type: Option<&str>,
    id: Option<&str>,
) -> Result<HttpResponse> {
    check_accept(&req)?;
    let _turn = caller.take_turn(&state).await?;
    let query = query_pairs(&req)?;
    let params = bundle::HistoryParams::parse(&query)?;
    let request = HistoryRequest {
        resource_type,
        id,
        params,
    };
    let db = super::read_your_writes::reads(&state, &caller, &req);
    let versions = fhir::history(&db, &caller, &request).await?;
    let kept: Vec<(String, String)> = query.into_iter().filter(|(k, _)| k != "_cursor").collect();
    let mut self_url = format!("{}{}", state.base_url, req.path().trim_start_matches('/'));
    if !kept.is_empty() {
        self_url.push('?');
        self_url.push_str(&serde_urlencoded::to_string(&kept).unwrap_or_default());
    }
    let body = bundle::history_bundle(
        &format!("{}fhir/R4/", state.base_url),
        &self_url,
        &versions,
        request.params.count,
    )?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body))
}

#[utoipa::path(
    get,
    path = "/fhir/R4/_history",
    params(HistoryQuery),
    responses(BundleOk)
)]
async fn history_system(caller: Caller, state: Data, req: HttpRequest) -> Result<HttpResponse> {
    history(caller, state, req, None, None).await
}

#[utoipa::path(
    get,
    path = "/fhir/R4/{type}/_history",
    params(HistoryQuery),
    responses(BundleOk)
)]
async fn history_type(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    history(caller, state, req, Some(&path), None).await
}

#[utoipa::path(
    get,
    path = "/fhir/R4/{type}/{id}/_history",
    params(HistoryQuery),
    responses(BundleOk)
)]
async fn history_instance(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (resource_type, id) = path.into_inner();
    history(caller, state, req, Some(&resource_type), Some(&id)).await
}
