//! Lifecycle events as FHIR AuditEvents in the project they concern, written
//! in the transaction of the change they record (so they cannot disagree).
//! Each has a stable code (`AuditEvent.subtype`, README "Lifecycle events"),
//! so a Subscription on `AuditEvent?subtype=…` delivers them.

use access_policy::RowFilter;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    app::AppState,
    error::Result,
    fhir::{insert, parse_id, resource::Stamp},
    store::{Tenant, Tx},
};

/// fhirgate's codes for `AuditEvent.subtype`; search with
/// `AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|user-invited`.
/// The codes are stable: subscriptions depend on them.
pub const LIFECYCLE_SYSTEM: &str = "https://fhirgate.dev/fhir/CodeSystem/lifecycle";
const DICOM: &str = "http://dicom.nema.org/resources/ontology/DCM";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    UserCreated,
    UserInvited,
    MembershipAdded,
    MembershipChanged,
    MembershipRemoved,
    LoginSucceeded,
    LoginFailed,
    /// Failed sign-ins locked the email for a while.
    LoginLocked,
    /// A sign-in (Login) was revoked: sign-out, token revocation, a removed
    /// membership or user.
    TokenRevoked,
    MfaEnrolled,
    MfaRecoveryCodeUsed,
    MfaDisabled,
    PasswordChanged,
    PasswordReset,
    EmailVerified,
    UserDeleted,
}

impl Event {
    pub fn code(self) -> &'static str {
        match self {
            Event::UserCreated => "user-created",
            Event::UserInvited => "user-invited",
            Event::MembershipAdded => "membership-added",
            Event::MembershipChanged => "membership-changed",
            Event::MembershipRemoved => "membership-removed",
            Event::LoginSucceeded => "login-succeeded",
            Event::LoginFailed => "login-failed",
            Event::LoginLocked => "login-locked",
            Event::TokenRevoked => "token-revoked",
            Event::MfaEnrolled => "mfa-enrolled",
            Event::MfaRecoveryCodeUsed => "mfa-recovery-code-used",
            Event::MfaDisabled => "mfa-disabled",
            Event::PasswordChanged => "password-changed",
            Event::PasswordReset => "password-reset",
            Event::EmailVerified => "email-verified",
            Event::UserDeleted => "user-deleted",
        }
    }

    /// The DICOM event type: authentication, role changes, or user changes.
    fn event_type(self) -> (&'static str, &'static str) {
        match self {
            Event::LoginSucceeded
            | Event::LoginFailed
            | Event::LoginLocked
            | Event::TokenRevoked
            | Event::MfaRecoveryCodeUsed => ("110114", "User Authentication"),
            Event::MembershipAdded | Event::MembershipChanged | Event::MembershipRemoved => {
                ("110136", "Security Roles Changed")
            }
            _ => ("110137", "User Security Attributes Changed"),
        }
    }

    /// `AuditEvent.action`: C(reate), U(pdate), D(elete), E(xecute).
    fn action(self) -> &'static str {
        match self {
            Event::UserCreated | Event::MembershipAdded => "C",
            Event::MembershipRemoved | Event::UserDeleted => "D",
            Event::LoginSucceeded
            | Event::LoginFailed
            | Event::LoginLocked
            | Event::TokenRevoked
            | Event::MfaRecoveryCodeUsed => "E",
            _ => "U",
        }
    }
}

/// Writes one AuditEvent into `project_id`: `agent` did `event` to `entity`
/// (references such as `Practitioner/…` and `User/…`). A membership added or
/// removed whose profile is a Patient also carries `patient-enlisted` or
/// `patient-unenlisted`, and the Patient as a second entity.
pub async fn record(
    state: &AppState,
    tx: &Tx,
    project_id: Uuid,
    event: Event,
    agent: &str,
    entity: &str,
) -> Result<()> {
    let stamp = Stamp::new(crate::fhir::resource::new_id(), project_id, agent);
    let (code, display) = event.event_type();
    let outcome = if matches!(event, Event::LoginFailed | Event::LoginLocked) {
        "4"
    } else {
        "0"
    };
    let mut subtype = vec![json!({"system": LIFECYCLE_SYSTEM, "code": event.code()})];
    let mut entities = vec![json!({"what": {"reference": entity}})];
    let enlistment = match event {
        Event::MembershipAdded => Some("patient-enlisted"),
        Event::MembershipRemoved => Some("patient-unenlisted"),
        _ => None,
    };
    if let Some(enlistment) = enlistment {
        if let Some(patient) = patient_of_membership(tx, project_id, entity).await? {
            subtype.push(json!({"system": LIFECYCLE_SYSTEM, "code": enlistment}));
            entities.push(json!({"what": {"reference": patient}}));
        }
    }
    let audit = json!({
        "resourceType": "AuditEvent",
        "type": {"system": DICOM, "code": code, "display": display},
        "subtype": subtype,
        "action": event.action(),
        "recorded": crate::fhir::resource::instant(&stamp.last_updated),
        "outcome": outcome,
        "agent": [{"who": {"reference": agent}, "requestor": true}],
        "source": {"observer": {"display": "fhirgate"}},
        "entity": entities
    });
    insert(&state.validator, tx, audit, &stamp).await?;
    Ok(())
}

/// The Patient profile of the membership `entity` names (as this
/// transaction sees it, or as it was before its deletion), if it has one.
async fn patient_of_membership(tx: &Tx, project_id: Uuid, entity: &str) -> Result<Option<String>> {
    let Some(id) = entity.strip_prefix("ProjectMembership/").and_then(parse_id) else {
        return Ok(None);
    };
    let Some(current) = tx
        .lock_current(
            Tenant::Project(project_id),
            "ProjectMembership",
            id,
            &RowFilter::All,
        )
        .await?
    else {
        return Ok(None);
    };
    let content = match &current.content {
        Some(content) => Some(content.clone()),
        None => tx.last_live_content(&current).await?,
    };
    let profile = content
        .and_then(|content| serde_json::from_str::<Value>(&content).ok())
        .and_then(|membership| {
            membership["profile"]["reference"]
                .as_str()
                .map(str::to_string)
        });
    Ok(profile.filter(|profile| profile.starts_with("Patient/")))
}

/// A password sign-in of `User/user_id` (`events`: succeeded; failed;
/// failed and locked), recorded in each project it could sign in to.
pub async fn record_login(
    state: &AppState,
    user_id: Uuid,
    projects: &[Uuid],
    events: &[Event],
) -> Result<()> {
    record_in_projects(state, projects, events, &format!("User/{user_id}")).await
}

/// `events`, done by and to `user_ref`, recorded in each of `projects` in
/// one transaction of its own.
pub async fn record_in_projects(
    state: &AppState,
    projects: &[Uuid],
    events: &[Event],
    user_ref: &str,
) -> Result<()> {
    crate::fhir::atomically(state, async |tx| {
        for project_id in projects {
            for event in events {
                record(state, tx, *project_id, *event, user_ref, user_ref).await?;
            }
        }
        Ok(())
    })
    .await
}
