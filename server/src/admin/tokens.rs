//! Personal access tokens: long-lived bearer tokens for scripts, minted for
//! one membership with a lifetime no longer than the configured maximum. Each
//! is a Login (`authMethod: personal-token`), so it is listed with the
//! sessions and revoked like one.

use access_policy::RowFilter;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{field_issue, members, AdminProject};
use crate::{
    app::AppState,
    auth::{membership_usable, AccessClaims, Caller},
    error::{Error, Result},
    fhir::{self, parse_id, resource::Stamp, search::find},
    store::{Tenant, Version},
};

/// A lifetime when the request names none: 30 days, or the maximum if lower.
const DEFAULT_LIFETIME_SECS: u64 = 30 * 24 * 3600;

/// Mints a token for `membership` (`{lifetime?, scope?}` in `body`); the
/// token itself is in this response only.
pub async fn mint(
    state: &AppState,
    caller: &Caller,
    membership: &Version,
    body: &Value,
) -> Result<Value> {
    let max = state.config.lifecycle.max_personal_token_lifetime.as_secs();
    let lifetime = match &body["lifetime"] {
        Value::Null => DEFAULT_LIFETIME_SECS.min(max),
        value => match value.as_u64() {
            Some(seconds) if (1..=max).contains(&seconds) => seconds,
            _ => {
                return Err(Error::Invalid(vec![field_issue(
                    "lifetime",
                    format!("lifetime must be a whole number of seconds from 1 to {max} (FHIRGATE_MAX_PERSONAL_TOKEN_LIFETIME)"),
                )]))
            }
        },
    };
    let scope = body["scope"].as_str().unwrap_or("openid").to_string();
    let project_id = membership.project_id;
    let membership_value = fhir::parse_stored(membership)?;
    if !membership_usable(&membership_value, chrono::Utc::now()) {
        return Err(Error::BadRequest(
            "This membership is inactive or has ended; a token for it would not work".into(),
        ));
    }
    let user = membership_value["user"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let profile = membership_value["profile"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A Login lives with its user (a User's tenant; a client's project).
    let login_tenant = match crate::auth::reference_id(&membership_value["user"], "User") {
        Some(user_id) => state
            .store
            .read(Tenant::AllProjects, "User", user_id, &RowFilter::All)
            .await?
            .map_or(project_id, |user| user.project_id),
        None => project_id,
    };
    let login_id = Uuid::new_v4();
    let stamp = Stamp::new(login_id, login_tenant, &caller.profile);
    let issued = stamp.last_updated.timestamp();
    let expires = stamp.last_updated + chrono::Duration::seconds(lifetime as i64);
    let login = json!({
        "resourceType": "Login",
        "user": {"reference": user},
        "membership": {"reference": format!("ProjectMembership/{}", membership.id)},
        "project": {"reference": format!("Project/{project_id}")},
        "authMethod": "personal-token",
        "authTime": fhir::resource::instant(&stamp.last_updated),
        "expires": fhir::resource::instant(&expires),
        "scope": scope,
        "granted": true
    });
    fhir::atomically(state, async |tx| {
        fhir::insert(&state.validator, tx, login, &stamp).await?;
        Ok(())
    })
    .await?;
    let subject = user.split_once('/').map_or(user.as_str(), |(_, id)| id);
    let claims = AccessClaims {
        iss: state.base_url.clone(),
        sub: subject.to_string(),
        aud: state.base_url.clone(),
        iat: issued,
        exp: issued + lifetime as i64,
        client_id: String::new(),
        login_id: login_id.to_string(),
        scope: scope.clone(),
        profile: profile.clone(),
    };
    Ok(json!({
        "access_token": state.keys.sign(&claims)?,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": scope,
        "login": {"reference": format!("Login/{login_id}")},
        "profile": {"reference": profile}
    }))
}

/// The membership's personal tokens (never the tokens themselves).
pub async fn list(state: &AppState, project: &AdminProject, membership_id: &str) -> Result<Value> {
    let membership = members::read(state, project, membership_id).await?;
    let membership_ref = format!("ProjectMembership/{}", membership.id);
    let user = fhir::parse_stored(&membership)?["user"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let logins = find(state, Tenant::AllProjects, "Login", &[("user", &user)]).await?;
    let mut tokens = Vec::new();
    for login in logins {
        let value = fhir::parse_stored(&login)?;
        if value["authMethod"] == "personal-token"
            && value["membership"]["reference"] == json!(membership_ref)
        {
            tokens.push(json!({
                "login": {"reference": format!("Login/{}", login.id)},
                "authTime": value["authTime"],
                "expires": value["expires"],
                "scope": value["scope"],
                "revoked": value["revoked"] == Value::Bool(true)
            }));
        }
    }
    Ok(json!({ "tokens": tokens }))
}

/// Revokes one personal token of the membership; it fails on its next use.
pub async fn revoke(
    state: &AppState,
    project: &AdminProject,
    membership_id: &str,
    login_id: &str,
) -> Result<()> {
    let membership = members::read(state, project, membership_id).await?;
    let missing = || {
        Error::NotFound(format!(
            "Login/{login_id} is not a token of this membership"
        ))
    };
    let login_uuid = parse_id(login_id).ok_or_else(missing)?;
    let membership_ref = format!("ProjectMembership/{}", membership.id);
    fhir::atomically(state, async |tx| {
        let login = tx
            .lock_current(Tenant::AllProjects, "Login", login_uuid, &RowFilter::All)
            .await?
            .filter(|v| !v.is_deleted())
            .ok_or_else(missing)?;
        let value = fhir::parse_stored(&login)?;
        if value["membership"]["reference"] != json!(membership_ref)
            || value["authMethod"] != "personal-token"
        {
            return Err(missing());
        }
        crate::auth::login::revoke_login(state, tx, login.id).await
    })
    .await
}
