//! `Binary` over HTTP: any content type in and out as raw bytes, streamed
//! both ways; the FHIR JSON form (`data` in base64) with
//! `application/fhir+json`.

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{check_accept, check_declared_length, read_fhir_resource, version_headers, FHIR_JSON};
use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    fhir::{self, binary::ByteStream, WriteOutcome},
    store::Version,
};

/// Media types that carry the FHIR JSON form of a Binary rather than its bytes.
const FHIR_FORM: &[&str] = &["application/fhir+json", "application/json+fhir"];

fn media_type(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|m| !m.is_empty())
}

/// The resource and bytes of an upload: the FHIR JSON form decoded, or the
/// raw body as it streams in (`X-Security-Context` names its context).
async fn upload(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<(Value, ByteStream)> {
    let content_type = media_type(req).ok_or_else(|| {
        Error::UnsupportedMediaType(
            "A Binary upload needs a Content-Type: the type of the bytes (image/png, application/pdf, …), or application/fhir+json for a Binary resource with base64 data".into(),
        )
    })?;
    if FHIR_FORM.contains(&content_type.as_str()) {
        let mut resource = read_fhir_resource(state, req, payload).await?;
        if resource["resourceType"] != "Binary" {
            return Err(Error::BadRequest(
                "The body must be a Binary resource (\"resourceType\": \"Binary\")".into(),
            ));
        }
        let data = match resource.as_object_mut().and_then(|r| r.remove("data")) {
            None => Vec::new(),
            Some(Value::String(data)) => STANDARD
                .decode(data)
                .map_err(|e| Error::BadRequest(format!("Binary.data is not valid base64: {e}")))?,
            Some(_) => {
                return Err(Error::BadRequest(
                    "Binary.data must be a base64 string".into(),
                ))
            }
        };
        let bytes: ByteStream = Box::pin(futures_util::stream::once(async move {
            Ok(web::Bytes::from(data))
        }));
        return Ok((resource, bytes));
    }
    let mut resource = json!({"resourceType": "Binary", "contentType": content_type});
    if let Some(context) = req
        .headers()
        .get("X-Security-Context")
        .and_then(|v| v.to_str().ok())
    {
        resource["securityContext"] = json!({"reference": context.trim()});
    }
    let bytes: ByteStream = Box::pin(payload.map(|piece| {
        piece.map_err(|e| Error::BadRequest(format!("Could not read the request body: {e}")))
    }));
    Ok((resource, bytes))
}

pub async fn create(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    fhir::authorize(&caller, "Binary", access_policy::Interaction::Create)?;
    check_accept(&req)?;
    check_declared_length(&req, state.config.max_binary_bytes)?;
    let (resource, bytes) = upload(&state, &req, payload).await?;
    let version = fhir::binary::create(&state, &caller, resource, bytes).await?;
    super::fhir::created_response(&state, &req, &with_url(&state, version)?)
}

pub async fn update(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: String,
    payload: web::Payload,
) -> Result<HttpResponse> {
    fhir::authorize(&caller, "Binary", access_policy::Interaction::Update)?;
    check_accept(&req)?;
    check_declared_length(&req, state.config.max_binary_bytes)?;
    let (resource, bytes) = upload(&state, &req, payload).await?;
    let if_match = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok());
    let (version, outcome): (Version, WriteOutcome) =
        fhir::binary::update(&state, &caller, &id, resource, bytes, if_match).await?;
    Ok(super::fhir::write_response(
        &req,
        &with_url(&state, version)?,
        outcome,
    ))
}

/// The answer to an upload names where the bytes are (`url`, as Medplum
/// answers: `@medplum/core`'s `createAttachment` makes the attachment's URL
/// from it). Not stored: R4's Binary has no `url`.
fn with_url(state: &AppState, mut version: Version) -> Result<Version> {
    let mut value = fhir::parse_stored(&version)?;
    value["url"] = json!(format!("{}fhir/R4/Binary/{}", state.base_url, version.id));
    version.content = Some(value.to_string());
    Ok(version)
}

/// Whether the client asks for the FHIR JSON form (`Accept` or `_format`
/// naming FHIR JSON) rather than the bytes.
fn wants_fhir_json(req: &HttpRequest) -> bool {
    let format = serde_urlencoded::from_str::<Vec<(String, String)>>(req.query_string())
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "_format")
        .map(|(_, v)| v.to_ascii_lowercase());
    if let Some(format) = format {
        return format == "json" || super::JSON_TYPES.contains(&format.as_str());
    }
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept.split(',').any(|item| {
                let media = item.split(';').next().unwrap_or("").trim();
                super::JSON_TYPES.contains(&media.to_ascii_lowercase().as_str())
            })
        })
}

pub async fn read(
    caller: Caller,
    state: web::Data<AppState>,
    req: HttpRequest,
    id: String,
) -> Result<HttpResponse> {
    let (version, value) = fhir::binary::read(&state, &caller, &id).await?;
    let mut response = HttpResponse::build(StatusCode::OK);
    version_headers(&mut response, &version);
    if wants_fhir_json(&req) {
        let body = fhir::binary::fhir_json(&state, &version, &value)?;
        return Ok(response.content_type(FHIR_JSON).streaming(body));
    }
    let content_type = value["contentType"]
        .as_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    let (length, body) = fhir::binary::bytes(&state, &version, &value)?;
    Ok(response
        .content_type(content_type)
        .no_chunking(length as u64)
        .streaming(body))
}
