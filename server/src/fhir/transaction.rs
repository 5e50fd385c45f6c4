//! Batch and transaction Bundles (FHIR R4 §3.1.0.11). A transaction is one
//! database transaction, always: entries are processed in the spec's order
//! (DELETE, POST, PUT/PATCH, then GET/HEAD), `urn:uuid:`/`urn:oid:` fullUrls
//! and conditional references are resolved first, and any failure rolls back
//! everything and names the entry. A batch runs each entry on its own.

use std::collections::{HashMap, HashSet};

use actix_web::http::StatusCode;
use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::Value;
use uuid::Uuid;

use super::{
    bundle::{raw, raw_json, response_entry, Response},
    conditional, parse_id,
    patch::PatchDocument,
    search::SearchScope,
    Return, WriteOutcome,
};
use crate::{
    app::AppState,
    auth::Caller,
    config::Limits,
    error::{Error, Result},
    store::{Reads, Tx, Version},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    const ALL: [Method; 6] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// Processing order within a transaction.
    fn rank(self) -> u8 {
        match self {
            Method::Delete => 0,
            Method::Post => 1,
            Method::Put | Method::Patch => 2,
            Method::Get | Method::Head => 3,
        }
    }

    fn is_read(self) -> bool {
        matches!(self, Method::Get | Method::Head)
    }
}

/// One entry's request, as sent.
struct Entry {
    index: usize,
    full_url: Option<String>,
    method: Method,
    url: String,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

/// What a request URL addresses.
enum Target {
    Type {
        resource_type: String,
        query: Option<String>,
    },
    Instance {
        resource_type: String,
        id: String,
    },
    Version {
        resource_type: String,
        id: String,
        version: String,
    },
}

/// The result of one entry.
struct Done {
    status: StatusCode,
    version: Option<Version>,
    /// A body to return instead of the version (search Bundle, outcome).
    body: Option<String>,
}

impl Done {
    fn version(status: StatusCode, version: Version) -> Done {
        Done {
            status,
            version: Some(version),
            body: None,
        }
    }

    fn written(version: Version, outcome: WriteOutcome) -> Done {
        let status = if outcome == WriteOutcome::Created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Done::version(status, version)
    }
}

fn entry_error(entry: &Entry, error: Error) -> Error {
    let place = match &entry.full_url {
        Some(full_url) => format!("Bundle.entry[{}] ({full_url})", entry.index),
        None => format!("Bundle.entry[{}]", entry.index),
    };
    let prefix = |message: String| format!("{place}: {message}");
    match error {
        Error::BadRequest(m) => Error::BadRequest(prefix(m)),
        Error::Forbidden(m) => Error::Forbidden(prefix(m)),
        Error::NotFound(m) => Error::NotFound(prefix(m)),
        Error::UnknownResourceType(t) => {
            Error::NotFound(prefix(format!("Unknown resource type: {t}")))
        }
        Error::MethodNotAllowed(m) => Error::MethodNotAllowed(prefix(m)),
        Error::Conflict(m) => Error::Conflict(prefix(m)),
        Error::Gone(m) => Error::Gone(prefix(m)),
        Error::PreconditionFailed(m) => Error::PreconditionFailed(prefix(m)),
        Error::Unprocessable(m) => Error::Unprocessable(prefix(m)),
        Error::Invalid(issues) => Error::Invalid(
            issues
                .into_iter()
                .map(|mut issue| {
                    issue.diagnostics = prefix(issue.diagnostics);
                    issue.expression = issue
                        .expression
                        .map(|e| format!("Bundle.entry[{}].resource.{e}", entry.index));
                    issue
                })
                .collect(),
        ),
        other => other,
    }
}

/// Takes the Bundle apart (its entries are moved, not copied: a Bundle of
/// many resources is held once).
fn parse_entries(mut bundle: Value, max: usize) -> Result<(bool, Vec<Entry>)> {
    if bundle["resourceType"] != "Bundle" {
        return Err(Error::BadRequest(
            "POST to the FHIR base takes a Bundle of type batch or transaction".into(),
        ));
    }
    let transaction = match bundle["type"].as_str() {
        Some("transaction") => true,
        Some("batch") => false,
        other => {
            return Err(Error::BadRequest(format!(
                "Bundle.type must be 'batch' or 'transaction', not {}",
                other.map_or("missing".to_string(), |t| format!("'{t}'"))
            )))
        }
    };
    let raw = match bundle["entry"].take() {
        Value::Null => Vec::new(),
        Value::Array(entries) => entries,
        _ => return Err(Error::BadRequest("Bundle.entry must be an array".into())),
    };
    if raw.len() > max {
        return Err(Error::BadRequest(format!(
            "The Bundle has {} entries; at most {max} are accepted (FHIRGATE_MAX_BUNDLE_ENTRIES)",
            raw.len()
        )));
    }
    let mut entries = Vec::with_capacity(raw.len());
    for (index, value) in raw.into_iter().enumerate() {
        let request = &value["request"];
        let text = |name: &str| request[name].as_str().map(str::to_owned);
        let method = Method::ALL
            .into_iter()
            .find(|m| request["method"].as_str() == Some(m.as_str()))
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "Bundle.entry[{index}].request.method must be GET, HEAD, POST, PUT, PATCH or DELETE, not {}",
                    request["method"]
                ))
            })?;
        let url = text("url").ok_or_else(|| {
            Error::BadRequest(format!("Bundle.entry[{index}].request.url is required"))
        })?;
        entries.push(Entry {
            index,
            full_url: value["fullUrl"].as_str().map(str::to_owned),
            method,
            url,
            resource: value.get("resource").cloned(),
            if_none_exist: text("ifNoneExist"),
            if_match: text("ifMatch"),
            if_none_match: text("ifNoneMatch"),
            if_modified_since: text("ifModifiedSince"),
        });
    }
    Ok((transaction, entries))
}

/// `Type`, `Type?query`, `Type/id`, `Type/id/_history/vid`; absolute URLs on
/// this server are accepted too.
fn parse_target(state: &AppState, url: &str) -> Result<Target> {
    let base = format!("{}fhir/R4/", state.base_url);
    let relative = url
        .strip_prefix(&base)
        .unwrap_or(url)
        .trim_start_matches('/');
    let (path, query) = match relative.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (relative, None),
    };
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let bad = || {
        Error::BadRequest(format!(
            "request.url '{url}' is not a FHIR URL this server understands"
        ))
    };
    Ok(match parts.as_slice() {
        [resource_type] => Target::Type {
            resource_type: resource_type.to_string(),
            query,
        },
        [resource_type, id] if query.is_none() => Target::Instance {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
        },
        [resource_type, id, "_history", version] if query.is_none() => Target::Version {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: version.to_string(),
        },
        _ => return Err(bad()),
    })
}

/// Runs a batch or transaction Bundle; `prefer` shapes what each write
/// entry answers with, as it would a single write.
pub async fn process(
    state: &AppState,
    caller: &Caller,
    bundle: Value,
    prefer: Return,
) -> Result<String> {
    let (transaction, entries) = parse_entries(bundle, state.config.max_bundle_entries)?;
    // Per entry, by position: whether it writes, and its method and URL
    // (only when an outcome will name them).
    let requests: Vec<(bool, String)> = entries
        .iter()
        .map(|e| {
            let described = (prefer == Return::OperationOutcome)
                .then(|| format!("{} {}", e.method.as_str(), e.url));
            (!e.method.is_read(), described.unwrap_or_default())
        })
        .collect();
    let results = if transaction {
        run_transaction(state, caller, entries).await?
    } else {
        run_batch(state, caller, entries).await
    };
    response_bundle(state, transaction, &results, &requests, prefer)
}

async fn run_batch(state: &AppState, caller: &Caller, entries: Vec<Entry>) -> Vec<Result<Done>> {
    let mut results = Vec::with_capacity(entries.len());
    for entry in &entries {
        let result = if entry.method.is_read() {
            read_entry(state, &state.store, caller, entry).await
        } else {
            super::atomically(state, async |tx| {
                write_entry(state, tx, caller, entry, entry.resource.clone(), None).await
            })
            .await
        };
        results.push(result.map_err(|e| entry_error(entry, e)));
    }
    results
}

async fn run_transaction(
    state: &AppState,
    caller: &Caller,
    mut entries: Vec<Entry>,
) -> Result<Vec<Result<Done>>> {
    let mut seen = HashSet::new();
    for entry in &entries {
        if let Some(full_url) = &entry.full_url {
            if !seen.insert(full_url.clone()) {
                return Err(entry_error(
                    entry,
                    Error::BadRequest(format!(
                        "fullUrl {full_url} appears twice in the transaction"
                    )),
                ));
            }
        }
    }
    let tx = state.store.begin().await?;
    let assigned = assign_ids(state, &tx, caller, &entries).await?;
    rewrite_references(
        &tx,
        caller,
        &state.config.limits,
        &mut entries,
        &assigned.references,
    )
    .await?;
    check_single_write(state, &entries, &assigned.ids)?;

    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].method.rank());
    let writes: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&i| !entries[i].method.is_read())
        .collect();
    let mut results: Vec<Option<Result<Done>>> = entries.iter().map(|_| None).collect();
    for i in writes {
        let resource = entries[i].resource.take();
        let entry = &entries[i];
        let done = write_entry(
            state,
            &tx,
            caller,
            entry,
            resource,
            assigned.ids.get(&i).copied(),
        )
        .await
        .map_err(|e| entry_error(entry, e))?;
        results[i] = Some(Ok(done));
    }
    // Reads come last, inside the transaction: they see its writes, and
    // one that fails rolls them back like a failed write.
    for &i in order.iter().filter(|&&i| entries[i].method.is_read()) {
        let entry = &entries[i];
        let done = read_entry(state, &tx, caller, entry)
            .await
            .map_err(|e| entry_error(entry, e))?;
        results[i] = Some(Ok(done));
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.expect("every entry processed"))
        .collect())
}

/// Ids decided before anything is written.
struct Assigned {
    /// Entry index -> the id its POST (or conditional PUT) creates or hits.
    ids: HashMap<usize, Uuid>,
    /// fullUrl -> `Type/id`.
    references: HashMap<String, String>,
}

async fn assign_ids(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    entries: &[Entry],
) -> Result<Assigned> {
    let mut assigned = Assigned {
        ids: HashMap::new(),
        references: HashMap::new(),
    };
    for entry in entries {
        let target = parse_target(state, &entry.url).map_err(|e| entry_error(entry, e))?;
        let (resource_type, id) = match (entry.method, &target) {
            (
                Method::Post,
                Target::Type {
                    resource_type,
                    query: None,
                },
            ) => {
                let existing = match &entry.if_none_exist {
                    Some(condition) => conditional::existing(
                        tx,
                        caller,
                        &state.config.limits,
                        resource_type,
                        condition,
                    )
                    .await
                    .map_err(|e| entry_error(entry, e))?,
                    None => None,
                };
                (
                    resource_type.clone(),
                    existing.map_or_else(super::resource::new_id, |v| v.id),
                )
            }
            (
                Method::Put,
                Target::Type {
                    resource_type,
                    query: Some(query),
                },
            ) => {
                let found =
                    conditional::matches(tx, caller, &state.config.limits, resource_type, query, 2)
                        .await
                        .map_err(|e| entry_error(entry, e))?;
                let id = match found.as_slice() {
                    [] => super::resource::new_id(),
                    [one] => one.id,
                    _ => {
                        return Err(entry_error(
                            entry,
                            Error::PreconditionFailed(format!(
                                "More than one {resource_type} matches '{query}'"
                            )),
                        ))
                    }
                };
                (resource_type.clone(), id)
            }
            (
                Method::Put | Method::Patch | Method::Delete,
                Target::Instance { resource_type, id },
            ) => {
                if let (Some(full_url), Some(_)) = (&entry.full_url, parse_id(id)) {
                    assigned
                        .references
                        .insert(full_url.clone(), format!("{resource_type}/{id}"));
                }
                continue;
            }
            _ => continue,
        };
        assigned.ids.insert(entry.index, id);
        if let Some(full_url) = &entry.full_url {
            assigned
                .references
                .insert(full_url.clone(), format!("{resource_type}/{id}"));
        }
    }
    Ok(assigned)
}

/// Replaces every string equal to a fullUrl of the Bundle (references,
/// and anywhere else they appear) and every conditional reference
/// (`Patient?identifier=…`, exactly one match) with `Type/id`.
async fn rewrite_references(
    tx: &Tx,
    caller: &Caller,
    limits: &Limits,
    entries: &mut [Entry],
    references: &HashMap<String, String>,
) -> Result<()> {
    for entry in entries.iter_mut() {
        for text in [&mut entry.url]
            .into_iter()
            .chain(entry.if_none_exist.as_mut())
        {
            for (full_url, reference) in references {
                if text.contains(full_url.as_str()) {
                    *text = text.replace(full_url.as_str(), reference);
                }
            }
        }
        let Some(resource) = entry.resource.as_mut() else {
            continue;
        };
        replace_strings(resource, references);
        let mut conditional_refs = Vec::new();
        collect_conditional_references(resource, &mut conditional_refs);
        let mut resolved = HashMap::new();
        for reference in conditional_refs {
            let (resource_type, query) = reference.split_once('?').expect("collected with a '?'");
            let found = conditional::matches(tx, caller, limits, resource_type, query, 2)
                .await
                .map_err(|e| entry_error(entry, e))?;
            match found.as_slice() {
                [one] => {
                    resolved.insert(reference.clone(), format!("{resource_type}/{}", one.id));
                }
                _ => {
                    let count = if found.is_empty() {
                        "no"
                    } else {
                        "more than one"
                    };
                    return Err(entry_error(
                        entry,
                        Error::BadRequest(format!("The conditional reference '{reference}' matches {count} resource; it must match exactly one")),
                    ));
                }
            }
        }
        if let Some(resource) = entry.resource.as_mut() {
            replace_strings(resource, &resolved);
        }
    }
    Ok(())
}

fn replace_strings(value: &mut Value, replacements: &HashMap<String, String>) {
    match value {
        Value::String(text) => {
            if let Some(replacement) = replacements.get(text.as_str()) {
                *text = replacement.clone();
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| replace_strings(v, replacements)),
        Value::Object(fields) => fields
            .values_mut()
            .for_each(|v| replace_strings(v, replacements)),
        _ => {}
    }
}

fn collect_conditional_references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::String(reference)) = fields.get("reference") {
                let is_conditional = reference
                    .split_once('?')
                    .is_some_and(|(t, _)| fhir_model::resource_types::is_known_resource_type(t));
                if is_conditional && !found.contains(reference) {
                    found.push(reference.clone());
                }
            }
            fields
                .values()
                .for_each(|v| collect_conditional_references(v, found));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_conditional_references(v, found)),
        _ => {}
    }
}

/// Two writes to one resource in one transaction are refused.
fn check_single_write(
    state: &AppState,
    entries: &[Entry],
    ids: &HashMap<usize, Uuid>,
) -> Result<()> {
    let mut written = HashSet::new();
    for entry in entries.iter().filter(|e| !e.method.is_read()) {
        let key = match (ids.get(&entry.index), parse_target(state, &entry.url)?) {
            (Some(id), Target::Type { resource_type, .. }) => format!("{resource_type}/{id}"),
            (_, Target::Instance { resource_type, id }) => format!("{resource_type}/{id}"),
            _ => continue,
        };
        if !written.insert(key.clone()) {
            return Err(entry_error(
                entry,
                Error::BadRequest(format!(
                    "{key} is written by more than one entry of the transaction"
                )),
            ));
        }
    }
    Ok(())
}

/// The entry's resource, which the caller has taken out of it (a
/// transaction moves it; a batch, which may retry an entry, clones it).
fn resource_of(entry: &Entry, resource: Option<Value>) -> Result<Value> {
    resource.ok_or_else(|| {
        Error::BadRequest(format!(
            "A {} entry needs a resource",
            entry.method.as_str()
        ))
    })
}

/// A PATCH entry's body: JSON Patch carried in a Binary, or FHIRPath Patch
/// as a Parameters resource.
fn patch_of(entry: &Entry, resource: Option<Value>, limits: &Limits) -> Result<PatchDocument> {
    let resource = resource_of(entry, resource)?;
    match resource["resourceType"].as_str() {
        Some("Parameters") => PatchDocument::parse(resource, limits.max_patch_operations),
        Some("Binary") => {
            let data = resource["data"].as_str().unwrap_or_default();
            let bytes = STANDARD.decode(data).map_err(|_| {
                Error::BadRequest("Binary.data of a PATCH entry is not base64".into())
            })?;
            fhir_model::json_bounds::check(&bytes, crate::http::json_bounds(limits))
                .map_err(|e| Error::TooLarge(e.to_string()))?;
            let document = serde_json::from_slice(&bytes).map_err(|e| {
                Error::BadRequest(format!("Binary.data of a PATCH entry is not JSON: {e}"))
            })?;
            PatchDocument::parse(document, limits.max_patch_operations)
        }
        _ => Err(Error::BadRequest(
            "A PATCH entry carries JSON Patch in a Binary or FHIRPath Patch as Parameters".into(),
        )),
    }
}

async fn write_entry(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    entry: &Entry,
    resource: Option<Value>,
    assigned: Option<Uuid>,
) -> Result<Done> {
    let if_match = entry.if_match.as_deref();
    match (entry.method, parse_target(state, &entry.url)?) {
        (
            Method::Post,
            Target::Type {
                resource_type,
                query: None,
            },
        ) => {
            let body = resource_of(entry, resource)?;
            if let Some(condition) = &entry.if_none_exist {
                if let Some(found) = conditional::existing(
                    tx,
                    caller,
                    &state.config.limits,
                    &resource_type,
                    condition,
                )
                .await?
                {
                    return Ok(Done::version(StatusCode::OK, super::redact(caller, found)?));
                }
            }
            let id = assigned.unwrap_or_else(super::resource::new_id);
            let version =
                super::create_with_id(state, tx, caller, &resource_type, body, id).await?;
            Ok(Done::version(StatusCode::CREATED, version))
        }
        (Method::Put, Target::Instance { resource_type, id }) => {
            let (version, outcome) = super::update(
                state,
                tx,
                caller,
                &resource_type,
                &id,
                resource_of(entry, resource)?,
                if_match,
            )
            .await?;
            Ok(Done::written(version, outcome))
        }
        (
            Method::Put,
            Target::Type {
                resource_type,
                query: Some(query),
            },
        ) => {
            let new_id = assigned.unwrap_or_else(super::resource::new_id);
            let (version, outcome) = conditional::update(
                state,
                tx,
                caller,
                &resource_type,
                &query,
                resource_of(entry, resource)?,
                if_match,
                new_id,
            )
            .await?;
            Ok(Done::written(version, outcome))
        }
        (Method::Patch, Target::Instance { resource_type, id }) => {
            let (version, outcome) = super::patch(
                state,
                tx,
                caller,
                &resource_type,
                &id,
                patch_of(entry, resource, &state.config.limits)?,
                if_match,
            )
            .await?;
            Ok(Done::written(version, outcome))
        }
        (
            Method::Patch,
            Target::Type {
                resource_type,
                query: Some(query),
            },
        ) => {
            let (version, outcome) = conditional::patch(
                state,
                tx,
                caller,
                &resource_type,
                &query,
                patch_of(entry, resource, &state.config.limits)?,
                if_match,
            )
            .await?;
            Ok(Done::written(version, outcome))
        }
        (Method::Delete, Target::Instance { resource_type, id }) => {
            super::delete(state, tx, caller, &resource_type, &id).await?;
            Ok(Done {
                status: StatusCode::NO_CONTENT,
                version: None,
                body: None,
            })
        }
        (
            Method::Delete,
            Target::Type {
                resource_type,
                query: Some(query),
            },
        ) => {
            conditional::delete(
                state,
                tx,
                caller,
                &resource_type,
                &query,
                state.config.max_conditional_delete,
            )
            .await?;
            Ok(Done {
                status: StatusCode::NO_CONTENT,
                version: None,
                body: None,
            })
        }
        (method, _) => Err(Error::BadRequest(format!(
            "{} is not allowed on '{}'",
            method.as_str(),
            entry.url
        ))),
    }
}

/// A GET or HEAD entry, read through `db`: the pool in a batch, the open
/// transaction in a transaction.
async fn read_entry(
    state: &AppState,
    db: &impl Reads,
    caller: &Caller,
    entry: &Entry,
) -> Result<Done> {
    let mut done = match parse_target(state, &entry.url)? {
        Target::Instance { resource_type, id } => {
            let version = super::read(db, caller, &resource_type, &id).await?;
            if not_modified(
                entry.if_none_match.as_deref(),
                entry.if_modified_since.as_deref(),
                &version,
            ) {
                return Ok(Done {
                    status: StatusCode::NOT_MODIFIED,
                    version: None,
                    body: None,
                });
            }
            Done::version(StatusCode::OK, version)
        }
        Target::Version {
            resource_type,
            id,
            version,
        } => Done::version(
            StatusCode::OK,
            super::vread(db, caller, &resource_type, &id, &version).await?,
        ),
        Target::Type {
            resource_type,
            query,
        } => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
                    Error::BadRequest(format!(
                        "The search '{}' is not a valid query: {e}",
                        entry.url
                    ))
                })?;
            let scope = SearchScope {
                resource_type: Some(&resource_type),
                compartment: None,
            };
            let body = super::search::search(
                state,
                db,
                caller,
                &scope,
                &pairs,
                false,
                &format!("fhir/R4/{resource_type}"),
            )
            .await?;
            Done {
                status: StatusCode::OK,
                version: None,
                body: Some(body),
            }
        }
    };
    if entry.method == Method::Head {
        done.body = None;
        if let Some(version) = done.version.as_mut() {
            version.content = None;
        }
    }
    Ok(done)
}

/// `ifNoneMatch` (`W/"vid"` or `*`) and `ifModifiedSince` on a read (an
/// entry's, or the `If-None-Match` and `If-Modified-Since` headers').
pub(crate) fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    version: &Version,
) -> bool {
    let etag_matches = if_none_match.is_some_and(|tag| {
        let tag = tag.trim();
        tag == "*"
            || tag.trim_start_matches("W/").trim_matches('"') == version.version_id.to_string()
    });
    let unchanged_since = if_modified_since.is_some_and(|since| {
        match chrono::DateTime::parse_from_rfc3339(since) {
            Ok(since) => version.last_updated <= since,
            // An HTTP date has whole seconds, as the `Last-Modified` the
            // client got: compare at that precision (RFC 9110 13.1.3).
            Err(_) => chrono::DateTime::parse_from_rfc2822(since)
                .is_ok_and(|since| version.last_updated.timestamp() <= since.timestamp()),
        }
    });
    etag_matches || unchanged_since
}

fn status_text(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// The response Bundle: each entry's status, location, version and
/// resource; a write entry (`requests`, by position: whether it writes, and
/// its method and URL) answers with its resource, nothing or an
/// OperationOutcome as `prefer` asks.
fn response_bundle(
    state: &AppState,
    transaction: bool,
    results: &[Result<Done>],
    requests: &[(bool, String)],
    prefer: Return,
) -> Result<String> {
    let entries = results
        .iter()
        .zip(requests)
        .map(|(result, (write, request))| match result {
            Ok(done) => {
                let status = status_text(done.status);
                let prefer = if *write {
                    prefer
                } else {
                    Return::Representation
                };
                let (mut resource, response) = match &done.version {
                    Some(version) => {
                        let location = format!(
                            "{}fhir/R4/{}/{}/_history/{}",
                            state.base_url, version.resource_type, version.id, version.version_id
                        );
                        let outcome = (prefer == Return::OperationOutcome).then(|| {
                            super::informational(&format!(
                                "{status}: {}/{}",
                                version.resource_type, version.id
                            ))
                        });
                        let resource = match prefer {
                            Return::Representation => raw(version)?,
                            Return::Minimal | Return::OperationOutcome => None,
                        };
                        let response = Response {
                            location: Some(location),
                            outcome,
                            ..Response::of_version(status, version)
                        };
                        (resource, response)
                    }
                    None => (
                        None,
                        Response {
                            outcome: (prefer == Return::OperationOutcome)
                                .then(|| super::informational(&format!("{status}: {request}"))),
                            ..Response::of_status(status)
                        },
                    ),
                };
                if let Some(body) = &done.body {
                    resource = Some(raw_json(body)?);
                }
                Ok(response_entry(resource, response))
            }
            Err(error) => {
                let status = actix_web::ResponseError::error_response(error).status();
                Ok(response_entry(
                    None,
                    Response {
                        outcome: Some(error.outcome()),
                        ..Response::of_status(status_text(status))
                    },
                ))
            }
        })
        .collect::<Result<_>>()?;
    super::bundle::response_bundle(transaction, entries)
}
