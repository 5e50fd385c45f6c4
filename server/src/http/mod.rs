//! HTTP glue: content negotiation, bodies, and the shape of FHIR responses.
//! Handlers live in the submodules and call into `fhir` and `auth`.

pub mod admin;
pub mod auth;
pub mod auth_lifecycle;
pub mod authorize;
pub mod binary;
pub mod client_address;
pub mod export;
pub mod fhir;
pub mod oauth;
pub mod openapi;
pub mod ratelimit;
pub mod read_your_writes;
pub mod routes;
pub mod subscriptions;

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse, HttpResponseBuilder,
};
use futures_util::StreamExt;
use serde_json::Value;

pub use crate::fhir::{informational, Return};
use crate::{
    app::AppState,
    error::{Error, Result},
    store::Version,
};

/// Every route, in matching order.
pub fn routes() -> routes::Routes {
    let mut routes = routes::Routes::default();
    routes.add(crate::app::__path_healthcheck, crate::app::healthcheck);
    openapi::routes(&mut routes);
    auth::routes(&mut routes);
    authorize::routes(&mut routes);
    oauth::routes(&mut routes);
    auth_lifecycle::routes(&mut routes);
    // Before the FHIR routes, which would take `$rotate-secret` for a compartment.
    admin::routes(&mut routes);
    subscriptions::routes(&mut routes);
    // Before the FHIR routes, which would take `$export` for a type or an id.
    export::routes(&mut routes);
    fhir::routes(&mut routes);
    routes
}

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// Media types fhirgate reads and writes for resources.
pub const JSON_TYPES: &[&str] = &[
    "application/fhir+json",
    "application/json",
    "application/json+fhir",
];

/// 406 unless the client accepts JSON (through `Accept` or `_format`).
pub fn check_accept(req: &HttpRequest) -> Result<()> {
    let format = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .ok()
        .and_then(|q| {
            q.iter()
                .find(|(k, _)| k == "_format")
                .map(|(_, v)| v.clone())
        });
    if let Some(format) = format {
        let format = format.to_ascii_lowercase();
        if format != "json" && !JSON_TYPES.contains(&format.as_str()) {
            return Err(Error::NotAcceptable(format!(
                "_format={format} is not supported: fhirgate speaks FHIR JSON only (use _format=json)"
            )));
        }
        return Ok(());
    }
    let Some(accept) = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(());
    };
    let acceptable = accept.split(',').any(|item| {
        let media = item
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        media == "*/*" || media == "application/*" || JSON_TYPES.contains(&media.as_str())
    });
    if acceptable {
        Ok(())
    } else {
        Err(Error::NotAcceptable(format!(
            "Cannot answer with '{accept}': fhirgate speaks FHIR JSON only (Accept: application/fhir+json)"
        )))
    }
}

/// 415 unless the body's `Content-Type` is one of `allowed` (a missing
/// header is taken as the first allowed type).
pub fn check_content_type(req: &HttpRequest, allowed: &[&str]) -> Result<()> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if allowed.contains(&media.as_str()) {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(format!(
            "Content-Type '{media}' is not supported here; send {}",
            allowed.join(" or ")
        )))
    }
}

/// 413 before reading a byte when `Content-Length` says the body passes `limit`.
pub fn check_declared_length(req: &HttpRequest, limit: usize) -> Result<()> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(Error::PayloadTooLarge(limit));
    }
    Ok(())
}

/// Reads the whole body, refusing with 413 as soon as it passes `limit`.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes> {
    check_declared_length(req, limit)?;
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|e| Error::BadRequest(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Parses a JSON body; a syntax error names its line and column.
pub fn parse_json(body: &[u8]) -> Result<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest(
            "The request body is empty; send a JSON resource".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let position = format!(" at line {} column {}", e.line(), e.column());
        let problem = e.to_string().trim_end_matches(&position).to_string();
        Error::BadRequest(format!(
            "Malformed JSON at line {}, column {}: {problem}",
            e.line(),
            e.column()
        ))
    })
}

/// Bodies from this size on are parsed on a blocking thread, not on the
/// HTTP worker that other requests share.
const PARSE_OFF_WORKER_BYTES: usize = 256 * 1024;

/// A FHIR request body as JSON: read up to `FHIRGATE_MAX_BODY_BYTES`, its
/// values and arrays counted against the limits before it is parsed (a
/// parsed tree costs many times its bytes), and large ones parsed off the
/// HTTP worker.
pub async fn read_fhir_json(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Value> {
    let body = read_body(req, payload, state.config.max_body_bytes).await?;
    let bounds = json_bounds(&state.config.limits);
    let parse = move || -> Result<Value> {
        fhir_model::json_bounds::check(&body, bounds)
            .map_err(|e| Error::TooLarge(e.to_string()))?;
        parse_json(&body)
    };
    if body_len_is_large(req) {
        web::block(parse)
            .await
            .map_err(|e| Error::Internal(format!("parsing a body: {e}")))?
    } else {
        parse()
    }
}

fn body_len_is_large(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_none_or(|length| length >= PARSE_OFF_WORKER_BYTES)
}

/// The JSON bounds of the configured limits.
pub fn json_bounds(limits: &crate::config::Limits) -> fhir_model::json_bounds::JsonBounds {
    fhir_model::json_bounds::JsonBounds {
        max_values: limits.max_json_values,
        max_array_length: limits.max_array_length,
    }
}

/// [`read_fhir_json`], which must be a JSON object (a FHIR resource).
pub async fn read_fhir_resource(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Value> {
    as_resource(read_fhir_json(state, req, payload).await?)
}

/// The body parsed as a JSON object.
pub fn parse_resource(body: &[u8]) -> Result<Value> {
    as_resource(parse_json(body)?)
}

fn as_resource(value: Value) -> Result<Value> {
    match value {
        value @ Value::Object(_) => Ok(value),
        _ => Err(Error::BadRequest(
            "The body must be a JSON object (a FHIR resource)".into(),
        )),
    }
}

/// The query string as ordered pairs.
pub fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>> {
    let pairs = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| Error::BadRequest(format!("The query string is not valid: {e}")))?;
    crate::fhir::search::without_nul(pairs)
}

/// `Prefer: return=…` (RFC 7240 / FHIR 3.1.0.8.1).
pub fn prefer_return(req: &HttpRequest) -> Return {
    let prefer = req
        .headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("return="))
        .map(|v| v.trim().trim_matches('"').to_ascii_lowercase());
    match prefer.as_deref() {
        Some("minimal") => Return::Minimal,
        Some("operationoutcome") => Return::OperationOutcome,
        _ => Return::Representation,
    }
}

/// A response carrying one stored version: its bytes as stored, with
/// `ETag` and `Last-Modified`, shaped by `Prefer: return`.
pub fn version_response(
    status: StatusCode,
    version: &Version,
    prefer: Return,
    message: &str,
) -> HttpResponse {
    let mut response = HttpResponseBuilder::new(status);
    version_headers(&mut response, version);
    match prefer {
        Return::Minimal => response.finish(),
        Return::Representation => response
            .content_type(FHIR_JSON)
            .body(version.content.clone().unwrap_or_default()),
        Return::OperationOutcome => response
            .content_type(FHIR_JSON)
            .body(informational(message).to_string()),
    }
}

/// `ETag` and `Last-Modified` of a version.
pub fn version_headers(response: &mut HttpResponseBuilder, version: &Version) {
    response
        .insert_header((header::ETAG, format!("W/\"{}\"", version.version_id)))
        .insert_header((header::LAST_MODIFIED, http_date(version)));
}

fn http_date(version: &Version) -> String {
    version
        .last_updated
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}
