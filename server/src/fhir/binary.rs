//! Binary resources. The resource row keeps `contentType`,
//! `securityContext` and, in `meta.extension`, the size and SHA-256 of the
//! bytes; the bytes live in chunks beside it (`store::binary`). An upload is
//! streamed into chunks inside the write's transaction, so one that is
//! refused, too large or cut off stores nothing.

use std::pin::Pin;

use access_policy::Interaction;
use actix_web::web::{Bytes, BytesMut};
use base64::{engine::general_purpose::STANDARD, Engine};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{atomically, authorize, parse_id, parse_stored, WriteOutcome};
use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    store::{binary::CHUNK_BYTES, Tx, Version},
};

/// `meta.extension` holding the size in bytes (`valueInteger`).
pub const SIZE_URL: &str = "https://fhirgate.dev/fhir/StructureDefinition/binary-size";
/// `meta.extension` holding the SHA-256 of the bytes (`valueBase64Binary`):
/// an update with the same bytes changes nothing, new bytes make a version.
pub const SHA256_URL: &str = "https://fhirgate.dev/fhir/StructureDefinition/binary-sha256";

/// A Binary's bytes as they arrive or leave, chunk by chunk.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>>>>;

/// What an upload stored.
struct Stored {
    size: usize,
    sha256: [u8; 32],
}

/// Stores `bytes` as Binary `id` of `project_id`, one chunk a statement,
/// refusing with 413 (and so storing nothing) past `limit` bytes.
async fn store_bytes(
    tx: &Tx,
    project_id: Uuid,
    id: Uuid,
    mut bytes: ByteStream,
    limit: usize,
) -> Result<Stored> {
    let mut buffer = BytesMut::with_capacity(CHUNK_BYTES);
    let mut digest = Sha256::new();
    let mut size = 0usize;
    let mut seq = 0i32;
    while let Some(piece) = bytes.next().await {
        let piece = piece?;
        size += piece.len();
        if size > limit {
            return Err(Error::PayloadTooLarge(limit));
        }
        digest.update(&piece);
        buffer.extend_from_slice(&piece);
        while buffer.len() >= CHUNK_BYTES {
            let chunk = buffer.split_to(CHUNK_BYTES);
            tx.put_binary_chunk(project_id, id, seq, &chunk).await?;
            seq += 1;
        }
    }
    if !buffer.is_empty() {
        tx.put_binary_chunk(project_id, id, seq, &buffer).await?;
    }
    Ok(Stored {
        size,
        sha256: digest.finalize().into(),
    })
}

/// The resource to write: what the client said, with the size and digest
/// of what was stored (replacing any the client sent).
fn describe(mut resource: Value, stored: &Stored) -> Value {
    let mut extensions: Vec<Value> = resource["meta"]["extension"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|e| e["url"] != SIZE_URL && e["url"] != SHA256_URL)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    extensions.push(json!({"url": SIZE_URL, "valueInteger": stored.size}));
    extensions
        .push(json!({"url": SHA256_URL, "valueBase64Binary": STANDARD.encode(stored.sha256)}));
    if !resource["meta"].is_object() {
        resource["meta"] = json!({});
    }
    resource["meta"]["extension"] = Value::Array(extensions);
    resource
}

/// The stored size of a Binary's bytes (0 when they are inline or absent).
fn stored_size(value: &Value) -> usize {
    value["meta"]["extension"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["url"] == SIZE_URL))
        .and_then(|e| e["valueInteger"].as_u64())
        .unwrap_or(0) as usize
}

/// The caller must be able to read what `securityContext` names: access to
/// a Binary follows access to the resource it belongs to (FHIR R4 Binary,
/// "Security"). A Binary whose context the caller cannot see is a 404, as if
/// it did not exist.
async fn check_security_context(state: &AppState, caller: &Caller, value: &Value) -> Result<()> {
    let Some(reference) = value["securityContext"]["reference"].as_str() else {
        return Ok(());
    };
    let hidden = || {
        Error::NotFound(format!(
            "Binary/{} not found",
            value["id"].as_str().unwrap_or_default()
        ))
    };
    let (resource_type, id) = reference.split_once('/').ok_or_else(hidden)?;
    match super::read(&state.store, caller, resource_type, id).await {
        Ok(_) => Ok(()),
        Err(
            Error::NotFound(_)
            | Error::Gone(_)
            | Error::Forbidden(_)
            | Error::UnknownResourceType(_),
        ) => Err(hidden()),
        Err(e) => Err(e),
    }
}

/// On create, a securityContext the caller cannot read is refused.
async fn check_new_security_context(
    state: &AppState,
    caller: &Caller,
    resource: &Value,
) -> Result<()> {
    check_security_context(state, caller, resource)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Error::Invalid(vec![fhir_model::Issue::error(
                fhir_model::IssueCode::Value,
                format!(
                    "securityContext '{}' is not a resource you can read",
                    resource["securityContext"]["reference"]
                        .as_str()
                        .unwrap_or_default()
                ),
            )
            .at("Binary.securityContext")]),
            e => e,
        })
}

/// `POST Binary`: stores the bytes, then the resource that describes them.
pub async fn create(
    state: &AppState,
    caller: &Caller,
    resource: Value,
    bytes: ByteStream,
) -> Result<Version> {
    authorize(caller, "Binary", Interaction::Create)?;
    check_new_security_context(state, caller, &resource).await?;
    let id = super::resource::new_id();
    let limit = state.config.max_binary_bytes;
    atomically(state, async |tx| {
        let stored = store_bytes(tx, caller.project_id, id, bytes, limit).await?;
        let version =
            super::create_with_id(state, tx, caller, "Binary", describe(resource, &stored), id)
                .await?;
        if version.project_id != caller.project_id {
            tx.move_binary(caller.project_id, version.project_id, id)
                .await?;
        }
        Ok(version)
    })
    .await
}

/// `PUT Binary/{id}`: replaces the bytes and the resource together.
pub async fn update(
    state: &AppState,
    caller: &Caller,
    id: &str,
    mut resource: Value,
    bytes: ByteStream,
    if_match: Option<&str>,
) -> Result<(Version, WriteOutcome)> {
    authorize(caller, "Binary", Interaction::Update)?;
    let uuid = parse_id(id).ok_or_else(|| {
        Error::BadRequest(format!(
            "'{id}' is not a valid fhirgate id: ids are lower-case UUIDs"
        ))
    })?;
    // The bytes go where the resource is; `update` itself says what a
    // missing one means for this caller.
    let project_id = match read(state, caller, id).await {
        Ok((current, _)) => current.project_id,
        Err(Error::NotFound(_) | Error::Gone(_)) => caller.project_id,
        Err(e) => return Err(e),
    };
    check_new_security_context(state, caller, &resource).await?;
    resource["id"] = json!(id);
    let limit = state.config.max_binary_bytes;
    atomically(state, async |tx| {
        tx.clear_binary(project_id, uuid).await?;
        let stored = store_bytes(tx, project_id, uuid, bytes, limit).await?;
        super::update(
            state,
            tx,
            caller,
            "Binary",
            id,
            describe(resource, &stored),
            if_match,
        )
        .await
    })
    .await
}

/// A Binary the caller may read: its version (hidden fields removed) and
/// content, after its `securityContext` is checked.
pub async fn read(state: &AppState, caller: &Caller, id: &str) -> Result<(Version, Value)> {
    let version = super::read(&state.store, caller, "Binary", id).await?;
    let value = parse_stored(&version)?;
    check_security_context(state, caller, &value).await?;
    Ok((version, value))
}

/// The bytes of a Binary read with [`read`], and their length: inline
/// `data` (a Binary written inside a Bundle), or the stored chunks.
pub fn bytes(state: &AppState, version: &Version, value: &Value) -> Result<(usize, ByteStream)> {
    if let Some(data) = value["data"].as_str() {
        let decoded = STANDARD
            .decode(data)
            .map_err(|e| Error::Internal(format!("stored Binary data is not base64: {e}")))?;
        return Ok((
            decoded.len(),
            Box::pin(futures_util::stream::once(async move {
                Ok(Bytes::from(decoded))
            })),
        ));
    }
    Ok((
        stored_size(value),
        Box::pin(state.store.binary_chunks(version.project_id, version.id)),
    ))
}

/// The FHIR JSON form of a Binary read with [`read`], `data` in base64,
/// written chunk by chunk (each chunk is a multiple of 3 bytes, so their
/// base64 concatenates).
pub fn fhir_json(state: &AppState, version: &Version, value: &Value) -> Result<ByteStream> {
    let content = version.content.clone().unwrap_or_default();
    if value.get("data").is_some() || stored_size(value) == 0 {
        return Ok(Box::pin(futures_util::stream::once(async move {
            Ok(Bytes::from(content))
        })));
    }
    let open = content
        .strip_suffix('}')
        .ok_or_else(|| Error::Internal("stored Binary is not a JSON object".into()))?;
    let head = Bytes::from(format!("{open},\"data\":\""));
    let (_, chunks) = bytes(state, version, value)?;
    let data = chunks.map(|chunk| chunk.map(|bytes| Bytes::from(STANDARD.encode(&bytes))));
    Ok(Box::pin(
        futures_util::stream::once(async move { Ok(head) })
            .chain(data)
            .chain(futures_util::stream::once(async {
                Ok(Bytes::from_static(b"\"}"))
            })),
    ))
}
