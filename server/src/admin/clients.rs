//! Programs in a project: ClientApplications (with a secret shown only when
//! made or rotated) and Bots, each with its own membership; and setting the
//! password of a project-scoped user.

use access_policy::Interaction;
use serde_json::{json, Value};

use super::{
    audit::{self, Event},
    field_issue, members, users, AdminProject, UserScope,
};
use crate::{
    app::AppState,
    auth::{
        client::{CLIENT_SECRET, RETIRING_CLIENT_SECRET},
        secrets::random_token,
        Caller,
    },
    error::{Error, Result},
    fhir::{self, parse_id, resource::Stamp},
};

/// Fields of a new client or bot the request may give.
const CLIENT_FIELDS: &[&str] = &[
    "name",
    "description",
    "redirectUri",
    "redirectUris",
    "launchUri",
    "pkceOptional",
];
const BOT_FIELDS: &[&str] = &["name", "description", "runtimeVersion", "timeout"];

/// The resource to create from the request body: its allowed fields only.
fn from_body(resource_type: &str, body: &Value, allowed: &[&str]) -> Result<Value> {
    let mut resource = json!({"resourceType": resource_type});
    match body["name"].as_str().map(str::trim) {
        Some(name) if !name.is_empty() => {}
        _ => {
            return Err(Error::Invalid(vec![field_issue(
                "name",
                "name is required",
            )]))
        }
    }
    for field in allowed {
        if !body[*field].is_null() {
            resource[*field] = body[*field].clone();
        }
    }
    Ok(resource)
}

/// `POST /admin/projects/:id/client`: the ClientApplication with its new
/// secret in the response (the only time it is shown) and its membership.
pub async fn create_client(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    body: &Value,
) -> Result<Value> {
    let mut client = from_body("ClientApplication", body, CLIENT_FIELDS)?;
    let secret = random_token(32);
    client["secret"] = json!(secret);
    let mut stored =
        create_with_membership(state, caller, project, client, &body["accessPolicy"]).await?;
    stored["secret"] = json!(secret);
    Ok(stored)
}

/// `POST /admin/projects/:id/bot`: the Bot and its membership.
pub async fn create_bot(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    body: &Value,
) -> Result<Value> {
    let bot = from_body("Bot", body, BOT_FIELDS)?;
    create_with_membership(state, caller, project, bot, &body["accessPolicy"]).await
}

async fn create_with_membership(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    resource: Value,
    access_policy: &Value,
) -> Result<Value> {
    fhir::atomically(state, async |tx| {
        let id = fhir::resource::new_id();
        let stamp = Stamp::new(id, project.id, &caller.profile);
        let (version, value) = fhir::insert(&state.validator, tx, resource, &stamp).await?;
        let member = format!("{}/{id}", version.resource_type);
        members::add_for(
            state,
            tx,
            &caller.profile,
            project.id,
            &member,
            access_policy,
        )
        .await?;
        Ok(value)
    })
    .await
}

/// `POST /fhir/R4/ClientApplication/:id/$rotate-secret`: a new secret, shown
/// once; the old one keeps working for `FHIRGATE_RETIRING_SECRET_SECONDS`.
pub async fn rotate_secret(state: &AppState, caller: &Caller, id: &str) -> Result<Value> {
    caller.require_full_access()?;
    fhir::authorize(caller, "ClientApplication", Interaction::Update)?;
    let missing = || Error::NotFound(format!("ClientApplication/{id} not found"));
    let uuid = parse_id(id).ok_or_else(missing)?;
    // The caller's update filter, as for any update: a criteria-limited
    // policy or scope holds here too.
    let types = ["ClientApplication".to_string()];
    let updatable = caller.policy.row_filter(&types, Interaction::Update);
    fhir::atomically(state, async |tx| {
        let current = tx
            .lock_current(caller.tenant(), "ClientApplication", uuid, &updatable)
            .await?
            .filter(|v| !v.is_deleted())
            .ok_or_else(missing)?;
        // The secret being replaced keeps working a while, so running
        // clients are not cut off before they are given the new one.
        if let Some(previous) = state
            .store
            .secret_hash("ClientApplication", uuid, CLIENT_SECRET)
            .await?
        {
            tx.set_secret(
                current.project_id,
                "ClientApplication",
                uuid,
                RETIRING_CLIENT_SECRET,
                &previous,
            )
            .await?;
        }
        let secret = random_token(32);
        let hash = crate::auth::secrets::hash_client_secret(&secret);
        tx.set_secret(
            current.project_id,
            "ClientApplication",
            uuid,
            CLIENT_SECRET,
            &hash,
        )
        .await?;
        let mut client = fhir::parse_stored(&current)?;
        client["secret"] = json!(secret);
        Ok(client)
    })
    .await
}

/// `POST /admin/projects/setpassword {email, password}`: sets the password of
/// a project-scoped user of the admin's project.
pub async fn set_user_password(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    body: &Value,
) -> Result<()> {
    let email = body["email"].as_str().unwrap_or_default();
    let password = body["password"].as_str().unwrap_or_default();
    let mut issues = Vec::new();
    if email.trim().is_empty() {
        issues.push(field_issue("email", "email is required"));
    }
    if let Err(Error::Invalid(problems)) = users::check_new_password(password, "password") {
        issues.extend(problems);
    }
    if !issues.is_empty() {
        return Err(Error::Invalid(issues));
    }
    fhir::atomically(state, async |tx| {
        let user = users::find_by_email(tx, UserScope::Project(project.id), email)
            .await?
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "No project-scoped user with email {email} in this project"
                ))
            })?;
        users::set_password(tx, &user.version, password, "password").await?;
        audit::record(
            state,
            tx,
            project.id,
            Event::PasswordChanged,
            &caller.profile,
            &user.reference(),
        )
        .await
    })
    .await
}
