//! A user's second factor: TOTP enrolment with single-use recovery codes,
//! checking a code (each time step and each recovery code once), disabling,
//! and whether a sign-in must ask for one (the user enrolled, or a project
//! of theirs requires it).

use serde_json::{json, Value};
use uuid::Uuid;

use super::{login::Membership, read_live, secrets::hash_client_secret, totp};
use crate::{
    admin::audit::{self, Event},
    app::AppState,
    error::{Error, Result},
    store::Tenant,
};

/// Recovery codes shown at enrolment.
pub const RECOVERY_CODES: usize = 10;
/// The name in an authenticator app.
const ISSUER: &str = "fhirgate";
/// `Project.setting` that makes every member sign in with a second factor.
pub const REQUIRE_MFA_SETTING: &str = "requireMfa";

/// What an authenticator app needs to enrol: the key as a URI and as a QR code.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub uri: String,
    pub qr_code: String,
}

/// What a password sign-in must do before it is complete.
#[derive(Debug)]
pub enum SecondFactor {
    NotNeeded,
    /// The user is enrolled: ask for a code.
    Verify,
    /// A project requires MFA and the user has none yet: enrol first.
    Enrol(Enrolment),
}

fn bad(message: &str) -> Error {
    Error::BadRequest(message.into())
}

fn now_seconds() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// The key waiting for `user_id`'s enrolment (made on first use), for an
/// authenticator app.
pub async fn enrolment(state: &AppState, user_id: Uuid, email: &str) -> Result<Enrolment> {
    let row = state
        .store
        .pending_mfa_key(user_id, &totp::new_key())
        .await?;
    if row.enrolled {
        return Err(bad("Already enrolled"));
    }
    let uri = totp::enrol_uri(ISSUER, email, &row.key);
    let qr_code = totp::qr_data_url(&uri)
        .ok_or_else(|| Error::Internal("the enrolment URI does not fit a QR code".into()))?;
    Ok(Enrolment { uri, qr_code })
}

/// `GET /auth/mfa/status`, in Medplum's shape.
pub async fn status(state: &AppState, user_id: Uuid, email: &str) -> Result<Value> {
    match state.store.mfa(user_id).await? {
        Some(row) if row.enrolled => Ok(json!({
            "enrolled": true,
            "recoveryCodesLeft": row.recovery_codes_left,
        })),
        _ => {
            let enrolment = enrolment(state, user_id, email).await?;
            Ok(json!({
                "enrolled": false,
                "enrollUri": enrolment.uri,
                "enrollQrCode": enrolment.qr_code,
            }))
        }
    }
}

/// Completes enrolment with a code from the waiting key; returns the
/// recovery codes, shown this once (only their digests are kept).
pub async fn enrol(state: &AppState, user_id: Uuid, token: &str) -> Result<Vec<String>> {
    let row = state.store.mfa(user_id).await?.ok_or_else(|| {
        bad("No key is waiting to be enrolled: GET /auth/mfa/status shows one first")
    })?;
    if row.enrolled {
        return Err(bad("Already enrolled"));
    }
    let step = totp::matching_step(&row.key, token, now_seconds())
        .ok_or_else(|| bad("Invalid code: enter the six digits the authenticator app shows"))?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
    let digests = codes.iter().map(|c| recovery_digest(c)).collect();
    if !state
        .store
        .complete_mfa_enrolment(user_id, step, digests)
        .await?
    {
        return Err(bad(
            "Invalid code: it was used already, or enrolment is done",
        ));
    }
    record(state, user_id, Event::MfaEnrolled).await?;
    Ok(codes)
}

/// Checks `token`, a current TOTP code or an unused recovery code, and
/// spends it; false when it proves nothing. A recovery code's use is recorded.
pub async fn check_code(state: &AppState, user_id: Uuid, token: &str) -> Result<bool> {
    let Some(row) = state.store.mfa(user_id).await?.filter(|r| r.enrolled) else {
        return Ok(false);
    };
    if let Some(step) = totp::matching_step(&row.key, token, now_seconds()) {
        return state.store.accept_mfa_step(user_id, step).await;
    }
    let normalized = normalize_recovery_code(token);
    if normalized.len() != RECOVERY_CODE_CHARS {
        return Ok(false);
    }
    if state
        .store
        .spend_recovery_code(user_id, &hash_client_secret(&normalized))
        .await?
    {
        record(state, user_id, Event::MfaRecoveryCodeUsed).await?;
        return Ok(true);
    }
    Ok(false)
}

/// Turns the second factor off after a valid code; the next enrolment gets a
/// new key (a lost device's key is then worthless).
pub async fn disable(state: &AppState, user_id: Uuid, token: &str) -> Result<bool> {
    if !state
        .store
        .mfa(user_id)
        .await?
        .is_some_and(|row| row.enrolled)
    {
        return Err(bad("This user is not enrolled in MFA"));
    }
    if !check_code(state, user_id, token).await? {
        return Ok(false);
    }
    state.store.remove_mfa(user_id).await?;
    record(state, user_id, Event::MfaDisabled).await?;
    Ok(true)
}

/// Whether `user_id`'s sign-in needs a second factor, given the memberships
/// it may use.
pub async fn required(
    state: &AppState,
    user_id: Uuid,
    email: &str,
    memberships: &[Membership],
) -> Result<SecondFactor> {
    if state.store.mfa(user_id).await?.is_some_and(|r| r.enrolled) {
        return Ok(SecondFactor::Verify);
    }
    for membership in memberships {
        if project_requires_mfa(state, membership.project_id).await? {
            return Ok(SecondFactor::Enrol(enrolment(state, user_id, email).await?));
        }
    }
    Ok(SecondFactor::NotNeeded)
}

async fn project_requires_mfa(state: &AppState, project_id: Uuid) -> Result<bool> {
    let project = read_live(state, Tenant::Project(project_id), "Project", project_id).await?;
    Ok(project
        .as_ref()
        .and_then(|p| p["setting"].as_array())
        .is_some_and(|settings| {
            settings
                .iter()
                .any(|s| s["name"] == REQUIRE_MFA_SETTING && s["valueBoolean"] == Value::Bool(true))
        }))
}

/// Records `event` about `User/user_id` in each project the user is a member of.
async fn record(state: &AppState, user_id: Uuid, event: Event) -> Result<()> {
    let user_ref = format!("User/{user_id}");
    let projects: Vec<Uuid> = super::login::memberships_of(state, &user_ref, None)
        .await?
        .iter()
        .map(|m| m.project_id)
        .collect();
    audit::record_in_projects(state, &projects, &[event], &user_ref).await
}

/// Letters and digits of a recovery code, without separators.
const RECOVERY_CODE_CHARS: usize = 16;

/// `xxxx-xxxx-xxxx-xxxx` in base32: 80 random bits, enough that a plain
/// digest is a safe way to keep it.
fn new_recovery_code() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; RECOVERY_CODE_CHARS * 5 / 8];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let raw = data_encoding::BASE32_NOPAD
        .encode(&bytes)
        .to_ascii_lowercase();
    raw.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn recovery_digest(code: &str) -> String {
    hash_client_secret(&normalize_recovery_code(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_distinct_and_read_back_however_typed() {
        let codes: Vec<String> = (0..50).map(|_| new_recovery_code()).collect();
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), codes.len());
        let code = &codes[0];
        assert_eq!(code.len(), RECOVERY_CODE_CHARS + 3);
        assert_eq!(
            recovery_digest(&code.to_uppercase().replace('-', " ")),
            recovery_digest(code)
        );
        assert_ne!(recovery_digest(code), recovery_digest(&codes[1]));
    }
}
