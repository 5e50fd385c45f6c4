//! Lifecycle events as FHIR AuditEvents in the project they concern, written
//! in the transaction of the change they record (so they cannot disagree).

use serde_json::json;
use uuid::Uuid;

use crate::{
    app::AppState,
    error::Result,
    fhir::{insert, resource::Stamp},
    store::Tx,
};

/// fhirgate's codes for `AuditEvent.subtype`; search with
/// `AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|user-invited`.
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
    PasswordChanged,
    PasswordReset,
    EmailVerified,
    UserDeleted,
    MfaEnrolled,
    MfaRecoveryCodeUsed,
    MfaDisabled,
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
            Event::PasswordChanged => "password-changed",
            Event::PasswordReset => "password-reset",
            Event::EmailVerified => "email-verified",
            Event::UserDeleted => "user-deleted",
            Event::MfaEnrolled => "mfa-enrolled",
            Event::MfaRecoveryCodeUsed => "mfa-recovery-code-used",
            Event::MfaDisabled => "mfa-disabled",
        }
    }

    /// The DICOM event type: authentication, role changes, or user changes.
    fn event_type(self) -> (&'static str, &'static str) {
        match self {
            Event::LoginSucceeded | Event::LoginFailed | Event::MfaRecoveryCodeUsed => {
                ("110114", "User Authentication")
            }
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
            Event::LoginSucceeded | Event::LoginFailed | Event::MfaRecoveryCodeUsed => "E",
            _ => "U",
        }
    }
}

/// Writes one AuditEvent into `project_id`: `agent` did `event` to `entity`
/// (references such as `Practitioner/…` and `User/…`).
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
    let outcome = if event == Event::LoginFailed {
        "4"
    } else {
        "0"
    };
    let audit = json!({
        "resourceType": "AuditEvent",
        "type": {"system": DICOM, "code": code, "display": display},
        "subtype": [{"system": LIFECYCLE_SYSTEM, "code": event.code()}],
        "action": event.action(),
        "recorded": crate::fhir::resource::instant(&stamp.last_updated),
        "outcome": outcome,
        "agent": [{"who": {"reference": agent}, "requestor": true}],
        "source": {"observer": {"display": "fhirgate"}},
        "entity": [{"what": {"reference": entity}}]
    });
    insert(&state.validator, tx, audit, &stamp).await?;
    Ok(())
}

/// A password sign-in of `user`, successful or not, recorded in each project
/// it could sign in to.
pub async fn record_login(
    state: &AppState,
    user_id: Uuid,
    projects: &[Uuid],
    succeeded: bool,
) -> Result<()> {
    let event = if succeeded {
        Event::LoginSucceeded
    } else {
        Event::LoginFailed
    };
    record_in_projects(state, projects, event, &format!("User/{user_id}")).await
}

/// `event`, done by and to `user_ref`, recorded in each of `projects` in one
/// transaction of its own.
pub async fn record_in_projects(
    state: &AppState,
    projects: &[Uuid],
    event: Event,
    user_ref: &str,
) -> Result<()> {
    crate::fhir::atomically(state, async |tx| {
        for project_id in projects {
            record(state, tx, *project_id, event, user_ref, user_ref).await?;
        }
        Ok(())
    })
    .await
}
