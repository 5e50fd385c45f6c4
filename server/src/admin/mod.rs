//! Project administration and the user lifecycle: invitations, memberships,
//! clients and bots, single-use links, lifecycle AuditEvents. The HTTP routes
//! (`http/admin.rs`, `http/auth_lifecycle.rs`) only parse and answer.

pub mod account;
pub mod audit;
pub mod clients;
pub mod invite;
pub mod links;
pub mod members;
pub mod tokens;
pub mod users;

use access_policy::Role;
use access_policy::RowFilter;
use fhir_model::{Issue, IssueCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    fhir::{parse_id, parse_stored},
    store::{Tenant, Tx, Version},
};

/// The tenant of server-scoped Users (no `User.project`): they belong to no
/// project, so no project admin reaches them through FHIR, only super admins.
pub const SERVER_TENANT: Uuid = Uuid::nil();

/// The project an admin route acts on.
pub struct AdminProject {
    pub id: Uuid,
    pub resource: Value,
}

impl AdminProject {
    pub fn name(&self) -> &str {
        self.resource["name"].as_str().unwrap_or("your project")
    }

    pub fn reference(&self) -> String {
        format!("Project/{}", self.id)
    }
}

/// Checks that the caller administers `project_id` and loads it. Super admins
/// administer every project (404 if it does not exist); project admins only
/// their own (403 for any other); other members none (403).
pub async fn admin_project(
    state: &AppState,
    caller: &Caller,
    project_id: &str,
) -> Result<AdminProject> {
    let missing = || Error::NotFound(format!("Project/{project_id} not found"));
    caller.require_full_access()?;
    if !caller.is_super_admin() {
        if caller.role != Role::ProjectAdmin {
            return Err(Error::Forbidden(
                "Only project admins may administer a project".into(),
            ));
        }
        if parse_id(project_id) != Some(caller.project_id) {
            return Err(Error::Forbidden(format!(
                "You are not an admin of Project/{project_id}"
            )));
        }
    }
    let id = parse_id(project_id).ok_or_else(missing)?;
    let version = state
        .store
        .read(Tenant::Project(id), "Project", id, &RowFilter::All)
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(missing)?;
    Ok(AdminProject {
        id,
        resource: parse_stored(&version)?,
    })
}

/// Emails are compared in lower case, as mail systems treat them.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// `{"reference": "Type/id"}`.
pub fn reference(resource_type: &str, id: Uuid) -> Value {
    json!({ "reference": format!("{resource_type}/{id}") })
}

/// Serialises everything that decides whether a user with this email (or
/// external id) exists in this scope, until the transaction ends: two
/// identical invitations or sign-ups create one user.
pub async fn lock_identity(tx: &Tx, scope: UserScope, identity: &str) -> Result<()> {
    tx.lock_condition(&format!("user-identity|{}|{identity}", scope.tenant_id()))
        .await
}

/// Where a User lives: on the server (one login, memberships anywhere) or
/// inside one project (`User.project`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserScope {
    Server,
    Project(Uuid),
}

impl UserScope {
    /// The tenant its User resources are stored in.
    pub fn tenant_id(self) -> Uuid {
        match self {
            UserScope::Server => SERVER_TENANT,
            UserScope::Project(id) => id,
        }
    }

    /// The scope a stored User has.
    pub fn of(user: &Value) -> UserScope {
        user["project"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Project/"))
            .and_then(parse_id)
            .map_or(UserScope::Server, UserScope::Project)
    }
}

/// A live version with its parsed content.
pub struct Found {
    pub version: Version,
    pub value: Value,
}

impl Found {
    pub fn new(version: Version) -> Result<Found> {
        let value = parse_stored(&version)?;
        Ok(Found { version, value })
    }

    pub fn reference(&self) -> String {
        format!("{}/{}", self.version.resource_type, self.version.id)
    }
}

/// One invalid input field, named as the request spells it.
pub fn field_issue(field: &str, message: impl Into<String>) -> Issue {
    Issue::error(IssueCode::Value, message).at(field)
}

/// Every AccessPolicy a membership refers to must exist in its project.
/// `prefix` is how the request spells the membership (`membership.`).
pub async fn check_policies(
    tx: &Tx,
    project_id: Uuid,
    membership: &Value,
    prefix: &str,
) -> Result<()> {
    let mut references = vec![(format!("{prefix}accessPolicy"), &membership["accessPolicy"])];
    if let Some(access) = membership["access"].as_array() {
        references.extend(
            access
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("{prefix}access[{i}].policy"), &a["policy"])),
        );
    }
    let mut issues = Vec::new();
    for (path, reference) in references {
        if reference.is_null() {
            continue;
        }
        let text = reference["reference"].as_str().unwrap_or_default();
        let exists = match crate::auth::reference_id(reference, "AccessPolicy") {
            Some(id) => tx
                .lock_current(
                    Tenant::Project(project_id),
                    "AccessPolicy",
                    id,
                    &RowFilter::All,
                )
                .await?
                .is_some_and(|v| !v.is_deleted()),
            None => false,
        };
        if !exists {
            issues.push(field_issue(
                &path,
                format!("AccessPolicy '{text}' does not exist in this project"),
            ));
        }
    }
    if issues.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(issues))
    }
}
