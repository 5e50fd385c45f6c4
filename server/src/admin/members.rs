//! `/admin/projects/:id/members/:membershipId`: read, update and remove one
//! membership of the admin's project.

use access_policy::RowFilter;
use serde_json::Value;
use uuid::Uuid;

use super::{
    audit::{self, Event},
    check_policies, users, AdminProject, Found,
};
use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    fhir::{self, parse_id},
    store::{Tenant, Tx, Version},
};

fn missing(id: &str) -> Error {
    Error::NotFound(format!("ProjectMembership/{id} not found in this project"))
}

/// The live membership `id` of the project, locked until the transaction ends.
async fn locked(tx: &Tx, project: &AdminProject, id: &str) -> Result<Found> {
    let uuid = parse_id(id).ok_or_else(|| missing(id))?;
    let version = tx
        .lock_current(
            Tenant::Project(project.id),
            "ProjectMembership",
            uuid,
            &RowFilter::All,
        )
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(|| missing(id))?;
    Found::new(version)
}

pub async fn read(state: &AppState, project: &AdminProject, id: &str) -> Result<Version> {
    let uuid = parse_id(id).ok_or_else(|| missing(id))?;
    state
        .store
        .read(
            Tenant::Project(project.id),
            "ProjectMembership",
            uuid,
            &RowFilter::All,
        )
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(|| missing(id))
}

/// How an admin changes a membership: a whole new one (`POST`), or a JSON
/// Patch of the stored one (`PATCH`, as Medplum's user-management guide
/// promotes a member).
pub enum MembershipChange {
    Replace(Value),
    Patch(crate::fhir::patch::PatchDocument),
}

/// Changes the membership; its project and user stay, and so do the
/// caller's own privileges (the floor).
pub async fn update(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    id: &str,
    change: MembershipChange,
) -> Result<Version> {
    if let MembershipChange::Replace(body) = &change {
        if body["resourceType"] != "ProjectMembership" {
            return Err(Error::BadRequest(
                "The body must be a ProjectMembership".into(),
            ));
        }
        if body["id"].as_str().is_some_and(|body_id| body_id != id) {
            return Err(Error::BadRequest(format!(
                "The body's id does not match the URL's membership id '{id}'"
            )));
        }
    }
    fhir::atomically(state, async |tx| {
        let current = locked(tx, project, id).await?;
        let body = match change {
            MembershipChange::Replace(body) => body,
            MembershipChange::Patch(operations) => {
                operations
                    .apply_to("ProjectMembership", current.value.clone())
                    .await?
            }
        };
        for field in ["project", "user"] {
            if body[field]["reference"] != current.value[field]["reference"] {
                return Err(Error::BadRequest(format!(
                    "ProjectMembership.{field} cannot be changed; invite the user again instead"
                )));
            }
        }
        if !caller.is_super_admin() {
            let own = current.version.id == caller.membership_id;
            access_policy::floor::hold("ProjectMembership", own, &body, &current.value)
                .map_err(Error::Forbidden)?;
        }
        check_policies(tx, project.id, &body, "ProjectMembership.").await?;
        let (version, _) = fhir::modify(
            state,
            tx,
            Tenant::Project(project.id),
            "ProjectMembership",
            current.version.id,
            &caller.profile,
            |membership| {
                *membership = body;
                Ok(())
            },
        )
        .await?
        .ok_or_else(|| missing(id))?;
        audit::record(
            state,
            tx,
            project.id,
            Event::MembershipChanged,
            &caller.profile,
            &current.reference(),
        )
        .await?;
        Ok(version)
    })
    .await
}

/// Removes the membership and revokes the logins made through it. The
/// project owner's membership stays: a project always has its owner.
pub async fn delete(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    id: &str,
) -> Result<()> {
    fhir::atomically(state, async |tx| {
        let current = locked(tx, project, id).await?;
        let user = current.value["user"]["reference"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if project.resource["owner"]["reference"].as_str() == Some(user.as_str()) {
            return Err(Error::BadRequest(
                "The project owner's membership cannot be deleted".into(),
            ));
        }
        fhir::remove(tx, &current.version).await?;
        users::revoke_logins(
            state,
            tx,
            &user,
            users::Sessions::OfMembership(&current.reference()),
        )
        .await?;
        audit::record(
            state,
            tx,
            project.id,
            Event::MembershipRemoved,
            &caller.profile,
            &current.reference(),
        )
        .await
    })
    .await
}

/// Adds a membership for a client or bot (`member` is its reference; it is
/// its own profile), written by `author`.
pub async fn add_for(
    state: &AppState,
    tx: &Tx,
    author: &str,
    project_id: Uuid,
    member: &str,
    access_policy: &Value,
) -> Result<()> {
    let mut membership = serde_json::json!({
        "resourceType": "ProjectMembership",
        "project": super::reference("Project", project_id),
        "user": {"reference": member},
        "profile": {"reference": member},
        "invitedBy": {"reference": author}
    });
    if !access_policy.is_null() {
        membership["accessPolicy"] = access_policy.clone();
    }
    check_policies(tx, project_id, &membership, "").await?;
    let id = fhir::resource::new_id();
    let stamp = fhir::resource::Stamp::new(id, project_id, author);
    fhir::insert(&state.validator, tx, membership, &stamp).await?;
    audit::record(
        state,
        tx,
        project_id,
        Event::MembershipAdded,
        author,
        &format!("ProjectMembership/{id}"),
    )
    .await
}
