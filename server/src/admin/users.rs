//! Users as data: finding them by email, their passwords, what deleting one
//! takes with it, and which of their fields admins may not change.

use access_policy::RowFilter;
use serde_json::Value;
use uuid::Uuid;

use super::{
    audit::{self, Event},
    normalize_email, Found, UserScope,
};
use crate::{
    app::AppState,
    auth::{login, password, Caller},
    error::{Error, Result},
    fhir::{self, search::find_in},
    store::{Tenant, Tx, Version},
};

/// The User with this email in this scope. A server-scoped user has no
/// `User.project`; a project-scoped one names the project.
pub async fn find_by_email(tx: &Tx, scope: UserScope, email: &str) -> Result<Option<Found>> {
    find_user(tx, scope, "email", &normalize_email(email)).await
}

/// The project-scoped User with this external id.
pub async fn find_by_external_id(
    tx: &Tx,
    project_id: Uuid,
    external_id: &str,
) -> Result<Option<Found>> {
    find_user(
        tx,
        UserScope::Project(project_id),
        "external-id",
        external_id,
    )
    .await
}

async fn find_user(tx: &Tx, scope: UserScope, param: &str, value: &str) -> Result<Option<Found>> {
    // Server-scoped users made by fhirgate live in the server tenant; the
    // bootstrap's and those super admins create through FHIR in a project.
    let tenant = match scope {
        UserScope::Server => Tenant::AllProjects,
        UserScope::Project(id) => Tenant::Project(id),
    };
    for version in find_in(tx, tenant, "User", &[(param, value)]).await? {
        let found = Found::new(version)?;
        if UserScope::of(&found.value) == scope {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Emails are unique per scope (server-scoped Users across the server,
/// project-scoped ones in their project), through every path that writes a
/// User: checked under the identity lock, so two writers cannot both pass
/// (and, having begun its transaction, the write is not batched with other
/// requests' creates); the unique index of migration 0021 is the backstop.
pub async fn check_email_free(tx: &Tx, user: &Value, id: Uuid) -> Result<()> {
    let Some(email) = user["email"].as_str() else {
        return Ok(());
    };
    let scope = UserScope::of(user);
    super::lock_identity(tx, scope, &normalize_email(email)).await?;
    match find_by_email(tx, scope, email).await? {
        Some(found) if found.version.id != id => Err(email_taken()),
        _ => Ok(()),
    }
}

/// 409 for an email that another User of the same scope has.
pub fn email_taken() -> Error {
    Error::Conflict("Email already registered: another user has this email address".into())
}

/// Sets a user's password (checked against the password rules first).
pub async fn set_password(tx: &Tx, user: &Version, password: &str, field: &str) -> Result<()> {
    check_new_password(password, field)?;
    let hash = password::hash(password).await?;
    tx.set_secret(user.project_id, "User", user.id, "password", &hash)
        .await
}

/// 400 naming `field` unless the password policy accepts the password.
pub fn check_new_password(password: &str, field: &str) -> Result<()> {
    password::check_new_password(password, &[]).map_err(|e| match e {
        Error::BadRequest(problem) => Error::Invalid(vec![super::field_issue(field, problem)]),
        other => other,
    })
}

/// Which of a user's logins to revoke.
#[derive(Clone, Copy)]
pub enum Sessions<'a> {
    All,
    /// Those made through one membership (`ProjectMembership/…`).
    OfMembership(&'a str),
    /// All but the caller's own session.
    AllBut(Uuid),
}

/// Revokes the logins of `user` (a `User/…`, `ClientApplication/…` or
/// `Bot/…` reference). Their tokens fail on the next request, their refresh
/// tokens are spent.
pub async fn revoke_logins(
    state: &AppState,
    tx: &Tx,
    user: &str,
    which: Sessions<'_>,
) -> Result<()> {
    let logins = find_in(tx, Tenant::AllProjects, "Login", &[("user", user)]).await?;
    for login in logins {
        let value = fhir::parse_stored(&login)?;
        let spared = match which {
            Sessions::All => false,
            Sessions::OfMembership(m) => value["membership"]["reference"].as_str() != Some(m),
            Sessions::AllBut(id) => login.id == id,
        };
        if value["revoked"] == Value::Bool(true) || spared {
            continue;
        }
        login::revoke_login(state, tx, login.id).await?;
    }
    Ok(())
}

/// After a User is deleted: its memberships go, its logins are revoked, its
/// second factor is forgotten, and each project it was in records the
/// deletion.
pub async fn after_user_deleted(
    state: &AppState,
    tx: &Tx,
    caller: &Caller,
    user: &Version,
) -> Result<()> {
    let user_ref = format!("User/{}", user.id);
    let memberships = find_in(
        tx,
        Tenant::AllProjects,
        "ProjectMembership",
        &[("user", &user_ref)],
    )
    .await?;
    revoke_logins(state, tx, &user_ref, Sessions::All).await?;
    tx.remove_mfa(user.id).await?;
    let mut projects = vec![caller.project_id];
    for found in memberships {
        // Locked, as every write of an existing resource is.
        let Some(membership) = tx
            .lock_current(
                Tenant::Project(found.project_id),
                "ProjectMembership",
                found.id,
                &RowFilter::All,
            )
            .await?
            .filter(|m| !m.is_deleted())
        else {
            continue;
        };
        fhir::remove(tx, &membership).await?;
        let membership_ref = format!("ProjectMembership/{}", membership.id);
        audit::record(
            state,
            tx,
            membership.project_id,
            Event::MembershipRemoved,
            &caller.profile,
            &membership_ref,
        )
        .await?;
        if !projects.contains(&membership.project_id) {
            projects.push(membership.project_id);
        }
    }
    for project_id in projects {
        audit::record(
            state,
            tx,
            project_id,
            Event::UserDeleted,
            &caller.profile,
            &user_ref,
        )
        .await?;
    }
    Ok(())
}
