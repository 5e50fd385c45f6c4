//! The FHIR interactions on single resources and history, independent of
//! HTTP: each takes the caller, checks the gate, and talks to the store with
//! the caller's tenant.

pub mod binary;
pub mod bundle;
pub mod capability;
pub mod conditional;
pub mod patch;
pub mod resource;
pub mod search;
pub mod transaction;

use access_policy::{Interaction, RowFilter};
use fhir_model::resource_types::is_known_resource_type;
use fhir_model::Validator;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    store::{HistoryFilter, Reads, Tenant, Tx, Version, Write},
};
use resource::{prepare, same_content, Prepared, Stamp};

/// What a write answers with (`Prefer: return=…`, RFC 7240 / FHIR
/// 3.1.0.8.1): for a single write the response body, for each write entry
/// of a batch or transaction its `resource` or `response.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// An OperationOutcome that reports success.
pub fn informational(message: &str) -> Value {
    fhir_model::operation_outcome(&[fhir_model::Issue {
        severity: fhir_model::Severity::Information,
        code: fhir_model::IssueCode::Informational,
        diagnostics: message.to_string(),
        expression: None,
    }])
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Updated,
    /// The update changed nothing; no version was written.
    Unchanged,
}

/// Checks that the type exists and the caller may perform `interaction` on it.
pub fn authorize(caller: &Caller, resource_type: &str, interaction: Interaction) -> Result<()> {
    if !is_known_resource_type(resource_type) {
        return Err(Error::UnknownResourceType(resource_type.to_string()));
    }
    if !caller.policy.allows(resource_type, interaction) {
        return Err(Error::Forbidden(format!(
            "Your access does not allow {interaction} on {resource_type} resources"
        )));
    }
    Ok(())
}

/// fhirgate ids are UUIDs in their canonical lower-case form, so one resource
/// has exactly one URL. Anything else cannot name a stored resource.
pub fn parse_id(id: &str) -> Option<Uuid> {
    Uuid::parse_str(id)
        .ok()
        .filter(|uuid| uuid.hyphenated().to_string() == id)
}

fn not_found(resource_type: &str, id: &str) -> Error {
    Error::NotFound(format!("{resource_type}/{id} not found"))
}

fn gone(resource_type: &str, id: &str) -> Error {
    Error::Gone(format!("{resource_type}/{id} has been deleted"))
}

/// Removes the fields the caller's policy hides from a version it is about to get.
pub fn redact(caller: &Caller, mut version: Version) -> Result<Version> {
    if version.is_deleted() || !caller.policy.hides_fields(&version.resource_type) {
        return Ok(version);
    }
    let mut value = parse_stored(&version)?;
    caller.policy.redact(&mut value);
    version.content = Some(value.to_string());
    Ok(version)
}

/// Parses stored content (always valid JSON: the server wrote it).
pub fn parse_stored(version: &Version) -> Result<Value> {
    let content = version.content.as_deref().unwrap_or("null");
    serde_json::from_str(content).map_err(|e| {
        Error::Internal(format!(
            "stored {}/{} is not JSON: {e}",
            version.resource_type, version.id
        ))
    })
}

/// Reads one resource through `db`: the pool, or a transaction's own view.
pub async fn read(
    db: &impl Reads,
    caller: &Caller,
    resource_type: &str,
    id: &str,
) -> Result<Version> {
    authorize(caller, resource_type, Interaction::Read)?;
    let uuid = parse_id(id).ok_or_else(|| not_found(resource_type, id))?;
    let types = [resource_type.to_string()];
    let filter = caller.policy.row_filter(&types, Interaction::Read);
    let version = db
        .read(caller.tenant(), resource_type, uuid, &filter)
        .await?
        .ok_or_else(|| not_found(resource_type, id))?;
    if version.is_deleted() {
        return Err(gone(resource_type, id));
    }
    redact(caller, version)
}

pub async fn vread(
    db: &impl Reads,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    version_id: &str,
) -> Result<Version> {
    authorize(caller, resource_type, Interaction::Vread)?;
    let missing = || {
        Error::NotFound(format!(
            "{resource_type}/{id}/_history/{version_id} not found"
        ))
    };
    let (uuid, vid) = parse_id(id).zip(parse_id(version_id)).ok_or_else(missing)?;
    let types = [resource_type.to_string()];
    let filter = caller.policy.row_filter(&types, Interaction::Vread);
    let version = db
        .vread(caller.tenant(), resource_type, uuid, vid, &filter)
        .await?
        .ok_or_else(missing)?;
    if version.is_deleted() {
        return Err(Error::Gone(format!(
            "{resource_type}/{id}/_history/{version_id} is a deletion"
        )));
    }
    redact(caller, version)
}

/// The project a new resource goes into. Members write into their own
/// project; super admins may name another one in `meta.project`. A Project
/// is its own tenant.
async fn target_project(
    state: &AppState,
    caller: &Caller,
    resource: &Value,
    new_id: Uuid,
) -> Result<Uuid> {
    if resource["resourceType"] == "Project" {
        return Ok(new_id);
    }
    let requested = resource["meta"]["project"].as_str();
    match requested {
        Some(project) if caller.is_super_admin() => {
            let project_id = parse_id(project).ok_or_else(|| bad_project(project))?;
            match state
                .store
                .read(Tenant::AllProjects, "Project", project_id, &RowFilter::All)
                .await?
            {
                Some(version) if !version.is_deleted() => Ok(project_id),
                _ => Err(bad_project(project)),
            }
        }
        _ => Ok(caller.project_id),
    }
}

fn bad_project(project: &str) -> Error {
    Error::Invalid(vec![fhir_model::Issue::error(
        fhir_model::IssueCode::Value,
        format!("meta.project '{project}' is not an existing Project id"),
    )
    .at("meta.project")])
}

/// `meta.author`: the caller, unless a super admin says otherwise.
fn author_for(caller: &Caller, resource: &Value) -> String {
    match resource["meta"]["author"]["reference"].as_str() {
        Some(author) if caller.is_super_admin() => author.to_string(),
        _ => caller.profile.clone(),
    }
}

/// Checks rules that JSON schema cannot express, with the resource's project
/// known; an AccessPolicy must be one the engine can use.
fn check_consistency(resource: &Value, project_id: Uuid) -> Result<()> {
    if resource["resourceType"] == "ProjectMembership" {
        let expected = format!("Project/{project_id}");
        if resource["project"]["reference"].as_str() != Some(expected.as_str()) {
            return Err(Error::Invalid(vec![fhir_model::Issue::error(
                fhir_model::IssueCode::Value,
                format!("ProjectMembership.project must be {{\"reference\": \"{expected}\"}}, the project it belongs to"),
            )
            .at("ProjectMembership.project")]));
        }
    }
    if resource["resourceType"] == "AccessPolicy" {
        access_policy::validate(resource).map_err(|e| {
            Error::Invalid(vec![fhir_model::Issue::error(
                fhir_model::IssueCode::Value,
                e.message,
            )
            .at(e.path)])
        })?;
    }
    Ok(())
}

/// Stores a new resource (or the first version at a chosen id) in `tx`.
pub async fn insert(
    validator: &Validator,
    tx: &Tx,
    resource: Value,
    stamp: &Stamp,
) -> Result<(Version, Value)> {
    store_prepared(tx, prepare(validator, resource, stamp).await?, stamp, true).await
}

/// Stores a new version of an existing resource on the server's own behalf
/// (no caller to authorize): sign-in state of a Login.
pub async fn overwrite(
    validator: &Validator,
    tx: &Tx,
    resource: Value,
    stamp: &Stamp,
) -> Result<(Version, Value)> {
    store_prepared(tx, prepare(validator, resource, stamp).await?, stamp, false).await
}

async fn store_prepared(
    tx: &Tx,
    prepared: Prepared,
    stamp: &Stamp,
    is_new: bool,
) -> Result<(Version, Value)> {
    check_consistency(&prepared.value, stamp.project_id)?;
    match prepared.value["resourceType"].as_str() {
        Some("User") => {
            crate::admin::users::check_email_free(tx, &prepared.value, stamp.id).await?;
        }
        Some("AccessPolicy") => {
            crate::auth::policies::check_bases(tx, stamp.project_id, stamp.id, &prepared.value)
                .await?;
        }
        _ => {}
    }
    let resource_type = prepared.value["resourceType"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    tx.write(
        &Write {
            project_id: stamp.project_id,
            resource_type: &resource_type,
            id: stamp.id,
            version_id: stamp.version_id,
            last_updated: stamp.last_updated,
            content: Some(&prepared.content),
        },
        is_new,
        fhir_model::search::extract(fhir_model::search::Registry::get(), &prepared.value),
    )
    .await?;
    for (kind, hash) in &prepared.secrets {
        tx.set_secret(stamp.project_id, &resource_type, stamp.id, kind, hash)
            .await?;
    }
    let version = Version {
        project_id: stamp.project_id,
        resource_type,
        id: stamp.id,
        version_id: stamp.version_id,
        last_updated: stamp.last_updated,
        content: Some(prepared.content),
    };
    Ok((version, prepared.value))
}

/// The body's `resourceType` must be the URL's.
fn check_body_type(resource_type: &str, body: &Value) -> Result<()> {
    match body["resourceType"].as_str() {
        Some(t) if t == resource_type => Ok(()),
        Some(t) => Err(Error::BadRequest(format!(
            "The body is a {t} but the URL is for {resource_type}"
        ))),
        None => Err(Error::BadRequest(format!(
            "The body has no resourceType; expected \"resourceType\": \"{resource_type}\""
        ))),
    }
}

/// Runs `work` in one database transaction, committed only if it succeeds:
/// a failed write leaves nothing behind.
pub async fn atomically<T>(
    state: &AppState,
    work: impl AsyncFnOnce(&Tx) -> Result<T>,
) -> Result<T> {
    committed(state.store.begin().await?, work).await
}

/// Runs `work`, one write of a resource it reads, like [`atomically`] but
/// first without locking what it reads (`Store::begin_unlocked`): when it
/// sends no other statement it commits with others (group commit). A
/// policy with a row filter checks the row in SQL (`Tx::passes`), so such a
/// write commits alone, its version still applied only if current; the
/// checks read the row as it is, and a row that moved fails the write. If
/// another write replaced the version it read, it runs again, holding the
/// row's lock this time, so that writers of one busy resource queue instead
/// of retrying.
pub async fn atomically_optimistic<T>(
    state: &AppState,
    work: impl AsyncFn(&Tx) -> Result<T>,
) -> Result<T> {
    match committed(state.store.begin_unlocked().await?, &work).await {
        Err(e) if e.version_moved() => atomically(state, work).await,
        result => result,
    }
}

async fn committed<T>(tx: Tx, work: impl AsyncFnOnce(&Tx) -> Result<T>) -> Result<T> {
    let result = work(&tx).await?;
    tx.commit().await?;
    Ok(result)
}

pub async fn create(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    body: Value,
) -> Result<Version> {
    create_with_id(state, tx, caller, resource_type, body, resource::new_id()).await
}

/// Creates at an id the server chose beforehand (a transaction Bundle assigns
/// ids first, so that entries can reference each other).
pub async fn create_with_id(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    body: Value,
    id: Uuid,
) -> Result<Version> {
    authorize(caller, resource_type, Interaction::Create)?;
    check_body_type(resource_type, &body)?;
    let mut body = body;
    hold_floor_on_create(caller, &mut body)?;
    let project_id = target_project(state, caller, &body, id).await?;
    let stamp = Stamp::new(id, project_id, &author_for(caller, &body));
    let (version, value) = insert(&state.validator, tx, body, &stamp).await?;
    check_written(tx, caller, Interaction::Create, None, &value, &version).await?;
    redact(caller, version)
}

/// What no policy lets anyone but a super admin create: a Project (they
/// come from `/auth/newproject`), or a User outside the caller's project (a
/// project admin's users are project-scoped: a server-scoped one would
/// compete with real accounts for an email at sign-in).
fn hold_floor_on_create(caller: &Caller, body: &mut Value) -> Result<()> {
    if caller.is_super_admin() {
        return Ok(());
    }
    let resource_type = body["resourceType"].as_str().unwrap_or_default();
    access_policy::floor::creatable(resource_type).map_err(Error::Forbidden)?;
    if resource_type == "ProjectMembership" && body["user"]["reference"] == caller.user.as_str() {
        return Err(Error::Forbidden(
            "You cannot give yourself another membership: ask another admin of the project".into(),
        ));
    }
    if resource_type == "User" {
        let expected = format!("Project/{}", caller.project_id);
        match &body["project"] {
            Value::Null => body["project"] = serde_json::json!({ "reference": expected }),
            project if project["reference"].as_str() == Some(expected.as_str()) => {}
            _ => {
                return Err(Error::Forbidden(format!(
                    "A User you create belongs to your project: User.project must be {{\"reference\": \"{expected}\"}} or absent"
                )))
            }
        }
    }
    Ok(())
}

/// Which stored administrative resources a caller who is not a super admin
/// may change or delete: a User only when it is one of the caller's
/// project's own (a server-scoped account belongs to its user, wherever it
/// is stored), and never an AccessPolicy that binds the caller itself.
fn check_changeable(caller: &Caller, current: &Version, stored: &Value) -> Result<()> {
    if caller.is_super_admin() {
        return Ok(());
    }
    match current.resource_type.as_str() {
        "User" if stored["project"]["reference"] != format!("Project/{}", caller.project_id).as_str() => {
            Err(Error::Forbidden(
                "This User is a server-scoped account: only a super admin or the user changes it"
                    .into(),
            ))
        }
        "AccessPolicy" if caller.own_policies.contains(&current.id) => Err(Error::Forbidden(
            "This AccessPolicy applies to your own membership: ask another admin of the project to change it".into(),
        )),
        _ => Ok(()),
    }
}

/// After a write, in its transaction: the new content must pass the write
/// constraints and the criteria of an entry that allows the interaction.
/// Failing is 403, and the transaction (never committed) changes nothing.
async fn check_written(
    tx: &Tx,
    caller: &Caller,
    interaction: Interaction,
    before: Option<&Value>,
    after: &Value,
    version: &Version,
) -> Result<()> {
    let filter = caller
        .policy
        .write_filter(&version.resource_type, interaction, before, Some(after))
        .map_err(Error::Forbidden)?;
    if !tx
        .passes(
            version.project_id,
            &version.resource_type,
            version.id,
            &filter,
        )
        .await?
    {
        return Err(Error::Forbidden(format!(
            "Your access policy does not allow this {interaction}: the {} would be outside the resources you may {interaction}",
            version.resource_type
        )));
    }
    Ok(())
}

/// The current version for a write, locked (or, in a transaction from
/// `Store::begin_unlocked`, read without a lock and written only if still
/// current); `None` when there is none the caller may read (so a write
/// outside the policy is a 404, like a miss).
async fn lock_readable(
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    id: Uuid,
) -> Result<Option<Version>> {
    let types = [resource_type.to_string()];
    let readable = caller.policy.row_filter(&types, Interaction::Read);
    tx.lock_current(caller.tenant(), resource_type, id, &readable)
        .await
}

/// Before a write: the caller sees the stored resource (else 404, as if it
/// did not exist) and may change it (else 403).
async fn check_before(
    tx: &Tx,
    interaction: Interaction,
    current: &Version,
    filter: &RowFilter<'_>,
) -> Result<()> {
    if tx
        .passes(
            current.project_id,
            &current.resource_type,
            current.id,
            filter,
        )
        .await?
    {
        return Ok(());
    }
    Err(Error::Forbidden(format!(
        "Your access policy does not allow {interaction} of {}/{}",
        current.resource_type, current.id
    )))
}

/// `PUT Type/id`. Create-on-update is for super admins only (the
/// CapabilityStatement says `updateCreate: false` for everyone else).
pub async fn update(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    body: Value,
    if_match: Option<&str>,
) -> Result<(Version, WriteOutcome)> {
    authorize(caller, resource_type, Interaction::Update)?;
    check_body_type(resource_type, &body)?;
    match body["id"].as_str() {
        Some(body_id) if body_id == id => {}
        Some(body_id) => {
            return Err(Error::BadRequest(format!(
                "The body's id '{body_id}' does not match the URL's id '{id}'"
            )))
        }
        None => {
            return Err(Error::BadRequest(format!(
                "An update must carry the resource id in the body: \"id\": \"{id}\""
            )))
        }
    }
    let cannot_create = || {
        Error::MethodNotAllowed(format!(
            "{resource_type}/{id} does not exist, and an update does not create it (updateCreate is false); create it with POST"
        ))
    };
    let uuid = match parse_id(id) {
        Some(uuid) => uuid,
        None if caller.is_super_admin() => {
            return Err(Error::BadRequest(format!(
                "'{id}' is not a valid fhirgate id: ids are lower-case UUIDs"
            )))
        }
        None => return Err(cannot_create()),
    };
    let types = [resource_type.to_string()];
    let current = lock_readable(tx, caller, resource_type, uuid).await?;
    let Some(current) = current else {
        if !caller.is_super_admin() {
            return Err(cannot_create());
        }
        if if_match.is_some() {
            return Err(Error::PreconditionFailed(format!(
                "If-Match was sent but {resource_type}/{id} does not exist"
            )));
        }
        // A super admin's lock above saw every project: a row found now was
        // created by a request that committed in between.
        if tx.exists_anywhere(resource_type, uuid).await? {
            return Err(Error::Conflict(format!(
                "{resource_type}/{id} was created by another request at the same time; retry the request"
            )));
        }
        let project_id = target_project(state, caller, &body, uuid).await?;
        let stamp = Stamp::new(uuid, project_id, &author_for(caller, &body));
        let (version, value) = insert(&state.validator, tx, body, &stamp).await?;
        check_written(tx, caller, Interaction::Update, None, &value, &version).await?;
        return Ok((redact(caller, version)?, WriteOutcome::Created));
    };
    // Writing a deleted resource again brings it back: a create, which
    // takes the right to create.
    if current.is_deleted() {
        authorize(caller, resource_type, Interaction::Create)?;
    }
    check_before(
        tx,
        Interaction::Update,
        &current,
        &caller.policy.row_filter(&types, Interaction::Update),
    )
    .await?;
    check_if_match(&current, if_match)?;
    let stamp = Stamp::new(uuid, current.project_id, &author_for(caller, &body));
    replace(
        state,
        tx,
        caller,
        Interaction::Update,
        &current,
        body,
        &stamp,
    )
    .await
}

/// Writes `resource` as the next version of `current`, unless nothing
/// changed. Fields the policy protects, and those only the server writes,
/// keep their values: the stored ones, or for a deleted resource those of its
/// last live version (deleting first must not free them).
async fn replace(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    interaction: Interaction,
    current: &Version,
    mut resource: Value,
    stamp: &Stamp,
) -> Result<(Version, WriteOutcome)> {
    let stored = (!current.is_deleted())
        .then(|| parse_stored(current))
        .transpose()?;
    let last_live = match &stored {
        Some(_) => None,
        None => tx
            .last_live_content(current)
            .await?
            .map(|content| serde_json::from_str::<Value>(&content))
            .transpose()
            .map_err(|e| {
                Error::Internal(format!(
                    "stored history of {}/{} is not JSON: {e}",
                    current.resource_type, current.id
                ))
            })?,
    };
    if let Some(before) = stored.as_ref().or(last_live.as_ref()) {
        caller
            .policy
            .keep_protected(interaction, &mut resource, before);
        check_changeable(caller, current, before)?;
        if !caller.is_super_admin() {
            let own_membership = current.id == caller.membership_id;
            access_policy::floor::hold(&current.resource_type, own_membership, &resource, before)
                .map_err(Error::Forbidden)?;
        }
    }
    let Some((version, value)) = write_next(state, tx, stored.as_ref(), resource, stamp).await?
    else {
        return Ok((redact(caller, current.clone())?, WriteOutcome::Unchanged));
    };
    // Bringing a deleted resource back is checked as the create it is.
    let written_as = if stored.is_some() {
        interaction
    } else {
        Interaction::Create
    };
    check_written(tx, caller, written_as, stored.as_ref(), &value, &version).await?;
    Ok((redact(caller, version)?, WriteOutcome::Updated))
}

/// Writes `resource` as the next version after `stored` (the current
/// content, `None` when deleted); `None` when nothing changed.
async fn write_next(
    state: &AppState,
    tx: &Tx,
    stored: Option<&Value>,
    resource: Value,
    stamp: &Stamp,
) -> Result<Option<(Version, Value)>> {
    let prepared = prepare(&state.validator, resource, stamp).await?;
    if let Some(stored) = stored {
        if prepared.secrets.is_empty() && same_content(stored, &prepared.value) {
            return Ok(None);
        }
    }
    Ok(Some(store_prepared(tx, prepared, stamp, false).await?))
}

/// `If-Match` against the current version: `W/"<vid>"`, `"<vid>"` or `<vid>`.
fn check_if_match(current: &Version, if_match: Option<&str>) -> Result<()> {
    let Some(expected) = if_match else {
        return Ok(());
    };
    let expected = expected.trim();
    let expected = expected
        .strip_prefix("W/")
        .unwrap_or(expected)
        .trim_matches('"');
    if expected == current.version_id.to_string() {
        Ok(())
    } else {
        Err(Error::PreconditionFailed(format!(
            "If-Match '{expected}' does not match the current version '{}'",
            current.version_id
        )))
    }
}

/// JSON Patch (RFC 6902; `test` operations honoured) or FHIRPath Patch. The patched
/// resource is validated like any update, and nothing is stored on failure.
pub async fn patch(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    id: &str,
    operations: patch::PatchDocument,
    if_match: Option<&str>,
) -> Result<(Version, WriteOutcome)> {
    authorize(caller, resource_type, Interaction::Patch)?;
    let uuid = parse_id(id).ok_or_else(|| not_found(resource_type, id))?;
    let types = [resource_type.to_string()];
    let current = lock_readable(tx, caller, resource_type, uuid)
        .await?
        .ok_or_else(|| not_found(resource_type, id))?;
    if current.is_deleted() {
        return Err(gone(resource_type, id));
    }
    check_before(
        tx,
        Interaction::Patch,
        &current,
        &caller.policy.row_filter(&types, Interaction::Patch),
    )
    .await?;
    check_if_match(&current, if_match)?;
    // The patch sees what the caller may read: a `test` on a hidden field
    // cannot probe its value, and `replace` puts protected fields back.
    let mut resource = parse_stored(&current)?;
    caller.policy.redact(&mut resource);
    let resource = operations.apply_to(resource_type, resource).await?;
    let stamp = Stamp::new(uuid, current.project_id, &caller.profile);
    replace(
        state,
        tx,
        caller,
        Interaction::Patch,
        &current,
        resource,
        &stamp,
    )
    .await
}

/// Deletes the current version. Deleting a deleted resource succeeds and
/// writes nothing. Deleting a User also removes its memberships and revokes
/// its logins.
pub async fn delete(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    resource_type: &str,
    id: &str,
) -> Result<()> {
    authorize(caller, resource_type, Interaction::Delete)?;
    let uuid = parse_id(id).ok_or_else(|| not_found(resource_type, id))?;
    let current = lock_readable(tx, caller, resource_type, uuid)
        .await?
        .ok_or_else(|| not_found(resource_type, id))?;
    if current.is_deleted() {
        return Ok(());
    }
    let stored = parse_stored(&current)?;
    check_changeable(caller, &current, &stored)?;
    let filter = caller
        .policy
        .write_filter(resource_type, Interaction::Delete, Some(&stored), None)
        .map_err(Error::Forbidden)?;
    check_before(tx, Interaction::Delete, &current, &filter).await?;
    remove(tx, &current).await?;
    if resource_type == "User" {
        crate::admin::users::after_user_deleted(state, tx, caller, &current).await?;
    }
    Ok(())
}

/// Writes the deletion of a live version: a version without content (the
/// live one goes to history), and no index rows.
pub async fn remove(tx: &Tx, current: &Version) -> Result<()> {
    tx.write(
        &Write {
            project_id: current.project_id,
            resource_type: &current.resource_type,
            id: current.id,
            version_id: resource::new_id(),
            last_updated: resource::now_millis(),
            content: None,
        },
        false,
        Vec::new(),
    )
    .await
}

/// Changes a stored resource on the server's own behalf (no caller's gate:
/// the route that calls this has decided). `None` when it does not exist or
/// is deleted.
pub async fn modify(
    state: &AppState,
    tx: &Tx,
    tenant: Tenant,
    resource_type: &str,
    id: Uuid,
    author: &str,
    change: impl FnOnce(&mut Value) -> Result<()>,
) -> Result<Option<(Version, Value)>> {
    let Some(current) = tx
        .lock_current(tenant, resource_type, id, &RowFilter::All)
        .await?
    else {
        return Ok(None);
    };
    if current.is_deleted() {
        return Ok(None);
    }
    let stored = parse_stored(&current)?;
    let mut resource = stored.clone();
    change(&mut resource)?;
    let stamp = Stamp::new(id, current.project_id, author);
    match write_next(state, tx, Some(&stored), resource, &stamp).await? {
        Some(written) => Ok(Some(written)),
        None => Ok(Some((current, stored))),
    }
}

/// Which history: all of the caller's, one type's, or one resource's.
pub struct HistoryRequest<'a> {
    pub resource_type: Option<&'a str>,
    pub id: Option<&'a str>,
    pub params: bundle::HistoryParams,
}

/// Versions newest first, one page (plus one row to know whether more exist).
pub async fn history(
    db: &impl Reads,
    caller: &Caller,
    request: &HistoryRequest<'_>,
) -> Result<Vec<Version>> {
    let types: Vec<String> = request
        .resource_type
        .map(str::to_string)
        .into_iter()
        .collect();
    if let Some(resource_type) = request.resource_type {
        authorize(caller, resource_type, Interaction::History)?;
    }
    let policy = caller.policy.row_filter(&types, Interaction::History);
    let id = match request.id {
        Some(id) => {
            let resource_type = request.resource_type.unwrap_or_default();
            let uuid = parse_id(id).ok_or_else(|| not_found(resource_type, id))?;
            if db
                .read(caller.tenant(), resource_type, uuid, &policy)
                .await?
                .is_none()
            {
                return Err(not_found(resource_type, id));
            }
            Some(uuid)
        }
        None => None,
    };
    let filter = HistoryFilter {
        resource_type: request.resource_type,
        id,
        since: request.params.since,
        before: request.params.cursor,
        policy: &policy,
        limit: request.params.count as i64 + 1,
    };
    db.history(caller.tenant(), &filter)
        .await?
        .into_iter()
        .map(|version| redact(caller, version))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_canonical_uuids() {
        let id = Uuid::new_v4().to_string();
        assert_eq!(parse_id(&id), Some(Uuid::parse_str(&id).unwrap()));
        assert_eq!(parse_id(&id.to_uppercase()), None);
        assert_eq!(parse_id(&id.replace('-', "")), None);
        assert_eq!(parse_id("example"), None);
    }
}
