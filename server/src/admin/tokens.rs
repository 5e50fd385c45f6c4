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
    auth::{membership_usable, AccessClaims, Caller, PERSONAL_TOKEN},
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
        "authMethod": PERSONAL_TOKEN,
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

/// Admins mint tokens only where they own the identity: their own
/// membership, and the memberships of their project's project-scoped Users,
/// ClientApplications and Bots. A server-scoped User's account is that
/// user's own, wherever it is a member.
pub async fn check_mintable(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    membership: &Version,
) -> Result<()> {
    if caller.is_super_admin() || membership.id == caller.membership_id {
        return Ok(());
    }
    let member = &fhir::parse_stored(membership)?["user"];
    let owned = match member["reference"].as_str().and_then(|r| r.split_once('/')) {
        Some((kind @ ("ClientApplication" | "Bot"), id)) => match parse_id(id) {
            Some(id) => state
                .store
                .read(Tenant::Project(project.id), kind, id, &RowFilter::All)
                .await?
                .is_some_and(|v| !v.is_deleted()),
            None => false,
        },
        Some(("User", id)) => match parse_id(id) {
            Some(id) => state
                .store
                .read(Tenant::AllProjects, "User", id, &RowFilter::All)
                .await?
                .filter(|v| !v.is_deleted())
                .map(|v| fhir::parse_stored(&v))
                .transpose()?
                .is_some_and(|user| user["project"]["reference"] == json!(project.reference())),
            None => false,
        },
        _ => false,
    };
    if owned {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "Tokens can be minted only for your own membership and for your project's project-scoped users, ClientApplications and Bots; this member's account is not the project's".into(),
        ))
    }
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
        if value["authMethod"] == PERSONAL_TOKEN
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
            || value["authMethod"] != PERSONAL_TOKEN
        {
            return Err(missing());
        }
        crate::auth::login::revoke_login(state, tx, login.id).await
    })
    .await
}
