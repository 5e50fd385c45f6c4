//! Conditional create, update, patch and delete (FHIR R4 §3.1.0.8–.10).
//! Each takes a transaction-scoped advisory lock on its condition before it
//! searches, so concurrent requests with the same condition decide one after
//! the other and, say, 32 identical conditional creates make one resource.

use access_policy::Interaction;
use fhir_model::search::{parse_search, Registry};
use serde_json::Value;
use uuid::Uuid;

use super::{authorize, redact, WriteOutcome};
use crate::{
    app::AppState,
    auth::Caller,
    config::Limits,
    error::{Error, Result},
    store::{search::SearchQuery, Reads, Tenant, Tx, Version},
};

/// The live resources of `resource_type` that match `query` (a search query
/// string, with or without a leading `?`), at most `limit`.
pub async fn matches(
    tx: &Tx,
    caller: &Caller,
    limits: &Limits,
    resource_type: &str,
    query: &str,
    limit: usize,
) -> Result<Vec<Version>> {
    authorize(caller, resource_type, Interaction::Search)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.trim_start_matches('?'))
        .map_err(|e| {
            Error::BadRequest(format!("The condition '{query}' is not a valid query: {e}"))
        })?;
    if pairs.is_empty() {
        return Err(Error::BadRequest(format!(
            "A conditional {resource_type} interaction needs search parameters that say which resource it means"
        )));
    }
    super::search::check_pair_count(&pairs, limits)?;
    let mut request = parse_search(Registry::get(), Some(resource_type), &pairs, false)?;
    super::search::check_limits(&request, limits)?;
    super::search::check_hidden_conditions(caller, &request)?;
    request.count = limit;
    let mut key_parts = request.canonical_query.clone();
    key_parts.sort();
    let tenant = match caller.tenant() {
        Tenant::Project(id) => id.to_string(),
        Tenant::AllProjects => "*".into(),
    };
    tx.lock_condition(&format!("{tenant}|{resource_type}|{key_parts:?}"))
        .await?;
    Ok(tx
        .search(&SearchQuery {
            request: &request,
            tenant: caller.tenant(),
            policy: &caller.policy,
            cursor: None,
        })
        .await?
        .matches)
}

fn too_many(resource_type: &str, query: &str) -> Error {
    Error::PreconditionFailed(format!(
        "More than one {resource_type} matches '{query}'; make the condition more selective"
    ))
}

/// The one resource an `If-None-Exist` condition names, if any (more than
/// one is 412).
pub async fn existing(
    tx: &Tx,
    caller: &Caller,
    limits: &Limits,
    resource_type: &str,
    condition: &str,
) -> Result<Option<Version>> {
    authorize(caller, resource_type, Interaction::Create)?;
    let mut found = matches(tx, caller, limits, resource_type, condition, 2).await?;
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(too_many(resource_type, condition)),
    }
}

/// `POST` with `If-None-Exist`: 0 matches creates, 1 returns it (200), more is 412.
pub async fn create(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    body: Value,
    if_none_exist: Option<&str>,
) -> Result<(Version, WriteOutcome)> {
    if let Some(condition) = if_none_exist {
        if let Some(found) =
            existing(tx, caller, &state.config.limits, resource_type, condition).await?
        {
            return Ok((redact(caller, found)?, WriteOutcome::Unchanged));
        }
    }
    let version = super::create(state, tx, caller, resource_type, body).await?;
    Ok((version, WriteOutcome::Created))
}

/// `PUT Type?query`: 0 matches creates (at `new_id`), 1 updates it (400 if
/// the body names another id), more is 412.
#[allow(clippy::too_many_arguments)]
pub async fn update(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    query: &str,
    mut body: Value,
    if_match: Option<&str>,
    new_id: Uuid,
) -> Result<(Version, WriteOutcome)> {
    authorize(caller, resource_type, Interaction::Update)?;
    let found = matches(tx, caller, &state.config.limits, resource_type, query, 2).await?;
    match found.as_slice() {
        [] => {
            let version =
                super::create_with_id(state, tx, caller, resource_type, body, new_id).await?;
            Ok((version, WriteOutcome::Created))
        }
        [existing] => {
            let id = existing.id.to_string();
            match body["id"].as_str() {
                Some(body_id) if body_id != id => Err(Error::BadRequest(format!(
                    "The body's id '{body_id}' is not the id of the {resource_type} that matches '{query}' ({id})"
                ))),
                _ => {
                    body["id"] = Value::String(id.clone());
                    super::update(state, tx, caller, resource_type, &id, body, if_match).await
                }
            }
        }
        _ => Err(too_many(resource_type, query)),
    }
}

/// `PATCH Type?query`: 0 matches is 404, 1 patches it, more is 412.
pub async fn patch(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    query: &str,
    operations: super::patch::PatchDocument,
    if_match: Option<&str>,
) -> Result<(Version, WriteOutcome)> {
    authorize(caller, resource_type, Interaction::Patch)?;
    let found = matches(tx, caller, &state.config.limits, resource_type, query, 2).await?;
    match found.as_slice() {
        [] => Err(Error::NotFound(format!(
            "No {resource_type} matches '{query}'"
        ))),
        [existing] => {
            let id = existing.id.to_string();
            super::patch(state, tx, caller, resource_type, &id, operations, if_match).await
        }
        _ => Err(too_many(resource_type, query)),
    }
}

/// `DELETE Type?query`: deletes every match, up to `max`; more is 412.
/// Returns how many were deleted.
pub async fn delete(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    query: &str,
    max: usize,
) -> Result<usize> {
    authorize(caller, resource_type, Interaction::Delete)?;
    let found = matches(
        tx,
        caller,
        &state.config.limits,
        resource_type,
        query,
        max + 1,
    )
    .await?;
    if found.len() > max {
        return Err(Error::PreconditionFailed(format!(
            "More than {max} {resource_type} resources match '{query}'; a conditional delete removes at most {max} (FHIRGATE_MAX_CONDITIONAL_DELETE)"
        )));
    }
    for version in &found {
        super::delete(state, tx, caller, resource_type, &version.id.to_string()).await?;
    }
    Ok(found.len())
}
