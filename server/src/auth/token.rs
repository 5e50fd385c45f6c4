//! `POST /oauth2/token`: the `authorization_code` (with PKCE), `refresh_token`
//! and `client_credentials` grants, and the tokens they issue.

use access_policy::RowFilter;
use std::collections::HashMap;

use access_policy::scopes::Scope;
use actix_web::http::StatusCode;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{
    client::{verify_client_jwt, Client, ClientAuth},
    login::{
        find_user, grant_scope, has_scope, lock_login, memberships_of, revoke_login, save_login,
        time_delta, LoginRecord,
    },
    reference_id,
    secrets::{hash_client_secret, random_token},
    AccessClaims,
};
use crate::{
    app::AppState,
    error::{Error, Result},
    fhir::{self, resource::Stamp},
    store::{
        identity::{LoginSecret, NewSecret, SecretKind},
        Tenant, Tx,
    },
};

/// The claims of an OpenID Connect ID token.
#[derive(Debug, Serialize, Deserialize)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(rename = "fhirUser")]
    pub fhir_user: String,
    pub login_id: String,
}

/// RFC 7523 §2.1: a JWT assertion as an authorization grant.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

fn invalid_grant(description: impl Into<String>) -> Error {
    Error::oauth(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

fn invalid_request(description: impl Into<String>) -> Error {
    Error::oauth(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// Dispatches a token request on its `grant_type`.
pub async fn token(
    state: &AppState,
    form: &HashMap<String, String>,
    authorization: Option<&str>,
    remote_address: Option<String>,
) -> Result<Value> {
    let grant_type = form
        .get("grant_type")
        .ok_or_else(|| invalid_request("grant_type is required"))?;
    let auth = ClientAuth::from_request(authorization, form)?;
    match grant_type.as_str() {
        "authorization_code" => authorization_code(state, form, &auth).await,
        "refresh_token" => refresh_token(state, form, &auth).await,
        "client_credentials" => client_credentials(state, form, &auth, remote_address).await,
        JWT_BEARER => jwt_bearer(state, form, remote_address).await,
        other => Err(Error::oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            format!(
                "grant_type '{other}' is not supported; use authorization_code, refresh_token, client_credentials or {JWT_BEARER}"
            ),
        )),
    }
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str> {
    form.get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid_request(format!("{name} is required")))
}

/// RFC 6749 §4.1.3 with RFC 7636: a code is redeemed once, by the client it
/// was issued to, with the redirect URI it was issued for and the PKCE
/// verifier of its challenge. A second redemption revokes the Login.
async fn authorization_code(
    state: &AppState,
    form: &HashMap<String, String>,
    auth: &ClientAuth,
) -> Result<Value> {
    let code = required(form, "code")?;
    let client = auth.authenticate(state).await?;
    let digest = hash_client_secret(code);
    let (tx, secret, mut login) = redeem(state, &digest, SecretKind::Code).await?;
    check_same_client(&login, client.as_ref())?;
    if let Some(expected) = &secret.redirect_uri {
        if form.get("redirect_uri") != Some(expected) {
            return Err(invalid_grant(
                "redirect_uri must be the one the authorization request used",
            ));
        }
    }
    check_verifier(
        &login.content,
        form.get("code_verifier").map(String::as_str),
    )?;
    tx.mark_login_secret_used(&digest).await?;
    login.content["granted"] = Value::Bool(true);
    let login_id = secret.login_id;
    let refresh = wants_refresh(&login.content);
    let content = login.content.clone();
    let project_id = login.project_id;
    save_login(state, &tx, login_id, login).await?;
    let response = issue(state, &tx, login_id, project_id, &content, refresh).await?;
    tx.commit().await?;
    Ok(response)
}

/// Locks an authorization code or refresh token and its Login for
/// redemption. A spent one is a replay: the Login is revoked (committed at
/// once) and the request fails (RFC 9700 §2.1.1, §4.14.2).
async fn redeem(
    state: &AppState,
    digest: &str,
    kind: SecretKind,
) -> Result<(Tx, LoginSecret, LoginRecord)> {
    let what = match kind {
        SecretKind::Code => "authorization code",
        SecretKind::Refresh => "refresh token",
    };
    let tx = state.store.begin().await?;
    let secret = tx
        .lock_login_secret(digest, kind)
        .await?
        .ok_or_else(|| invalid_grant(format!("Invalid {what}")))?;
    if secret.used {
        revoke_login(state, &tx, secret.login_id).await?;
        tx.commit().await?;
        return Err(invalid_grant(format!(
            "This {what} was already used; its sign-in and every token of it are revoked, sign in again"
        )));
    }
    if secret.expires_at < Utc::now() {
        return Err(invalid_grant(format!(
            "The {what} has expired; sign in again"
        )));
    }
    let login = lock_login(&tx, secret.login_id)
        .await?
        .filter(|l| l.content["revoked"] != Value::Bool(true))
        .ok_or_else(|| invalid_grant(format!("The sign-in of this {what} was revoked")))?;
    Ok((tx, secret, login))
}

/// The client redeeming a code or refresh token must be the one it was issued to.
fn check_same_client(login: &LoginRecord, client: Option<&Client>) -> Result<()> {
    let issued_to = login.content["client"]["reference"].as_str();
    let presented = client.map(Client::reference);
    if issued_to != presented.as_deref() {
        return Err(invalid_grant(match issued_to {
            Some(_) => "This grant was issued to another client (send its client_id)",
            None => "This grant was issued without a client; do not send client_id",
        }));
    }
    Ok(())
}

/// RFC 7636 §4.6. A verifier without a challenge is refused too, so PKCE
/// cannot be stripped from a flow (RFC 9700 §2.1.1).
fn check_verifier(login: &Value, verifier: Option<&str>) -> Result<()> {
    let challenge = login["codeChallenge"].as_str();
    let wrong = || invalid_grant("code_verifier does not match the code challenge");
    match (challenge, verifier) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(invalid_grant(
            "code_verifier was sent but the authorization request had no code challenge",
        )),
        (Some(_), None) => Err(invalid_request("code_verifier is required (PKCE)")),
        (Some(challenge), Some(verifier)) => {
            let computed = match login["codeChallengeMethod"].as_str() {
                Some("plain") => verifier.to_string(),
                _ => URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            };
            if bool::from(computed.as_bytes().ct_eq(challenge.as_bytes())) {
                Ok(())
            } else {
                Err(wrong())
            }
        }
    }
}

/// A refresh token comes with `offline_access` or `remember`.
fn wants_refresh(login: &Value) -> bool {
    login["remember"] == Value::Bool(true)
        || login["scope"]
            .as_str()
            .is_some_and(|s| has_scope(s, &Scope::OfflineAccess))
}

/// RFC 6749 §6 with rotation: each refresh token works once and is replaced;
/// presenting a spent one revokes the whole Login (RFC 9700 §4.14.2).
async fn refresh_token(
    state: &AppState,
    form: &HashMap<String, String>,
    auth: &ClientAuth,
) -> Result<Value> {
    let token = required(form, "refresh_token")?;
    let client = auth.authenticate(state).await?;
    let digest = hash_client_secret(token);
    let (tx, secret, login) = redeem(state, &digest, SecretKind::Refresh).await?;
    check_same_client(&login, client.as_ref())?;
    if let Some(scope) = form.get("scope") {
        if Some(scope.as_str()) != login.content["scope"].as_str() {
            return Err(Error::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_scope",
                "A refresh keeps the scope of the sign-in; omit scope",
            ));
        }
    }
    tx.mark_login_secret_used(&digest).await?;
    let response = issue(
        state,
        &tx,
        secret.login_id,
        login.project_id,
        &login.content,
        true,
    )
    .await?;
    tx.commit().await?;
    Ok(response)
}

/// The access token (and ID token, refresh token) of a granted Login.
async fn issue(
    state: &AppState,
    tx: &Tx,
    login_id: Uuid,
    login_project: Uuid,
    login: &Value,
    refresh: bool,
) -> Result<Value> {
    let membership_id = reference_id(&login["membership"], "ProjectMembership")
        .ok_or_else(|| invalid_grant("The sign-in has no membership chosen yet"))?;
    let membership = state
        .store
        .read(
            Tenant::AllProjects,
            "ProjectMembership",
            membership_id,
            &RowFilter::All,
        )
        .await?
        .and_then(|v| {
            v.content
                .and_then(|c| serde_json::from_str::<Value>(&c).ok())
        })
        .filter(|m| m["active"] != Value::Bool(false))
        .ok_or_else(|| invalid_grant("The membership of this sign-in is no longer active"))?;
    let profile = membership["profile"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let user_ref = login["user"]["reference"].as_str().unwrap_or_default();
    let subject = user_ref.split_once('/').map_or(user_ref, |(_, id)| id);
    let client_id = login["client"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("ClientApplication/"))
        .map(str::to_string);
    let scope = login["scope"].as_str().unwrap_or_default().to_string();
    let now = Utc::now().timestamp();
    let lifetime = state.config.access_token_lifetime.as_secs() as i64;
    let audience = client_id.clone().unwrap_or_else(|| state.base_url.clone());
    let claims = AccessClaims {
        iss: state.base_url.clone(),
        sub: subject.to_string(),
        aud: audience.clone(),
        iat: now,
        exp: now + lifetime,
        client_id: client_id.clone().unwrap_or_default(),
        login_id: login_id.to_string(),
        scope: scope.clone(),
        profile: profile.clone(),
    };
    let mut response = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": scope,
        "access_token": state.keys.sign(&claims)?,
        "project": membership["project"],
        "profile": {"reference": profile},
    });
    if has_scope(&scope, &Scope::OpenId) {
        let auth_time = login["authTime"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(now, |t| t.timestamp());
        response["id_token"] = json!(state.keys.sign(&IdClaims {
            iss: state.base_url.clone(),
            sub: subject.to_string(),
            aud: audience,
            iat: now,
            exp: now + lifetime,
            auth_time,
            nonce: login["nonce"].as_str().map(str::to_string),
            fhir_user: profile.clone(),
            login_id: login_id.to_string(),
        })?);
    }
    if let Some(patient) = profile.strip_prefix("Patient/") {
        response["patient"] = json!(patient);
    }
    if refresh {
        let token = random_token(32);
        let lifetime = time_delta(state.config.refresh_token_lifetime)?;
        tx.insert_login_secret(&NewSecret {
            digest: &hash_client_secret(&token),
            kind: SecretKind::Refresh,
            project_id: login_project,
            login_id,
            redirect_uri: None,
            expires_at: Utc::now() + lifetime,
        })
        .await?;
        response["refresh_token"] = json!(token);
    }
    Ok(response)
}

/// RFC 6749 §4.4: a confidential client signs in as itself, through its
/// membership in its project.
async fn client_credentials(
    state: &AppState,
    form: &HashMap<String, String>,
    auth: &ClientAuth,
    remote_address: Option<String>,
) -> Result<Value> {
    let basic = matches!(auth, ClientAuth::Secret { basic: true, .. });
    let invalid_client = |description: &str| Error::OAuth {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: description.into(),
        basic_challenge: basic,
    };
    if matches!(auth, ClientAuth::Absent | ClientAuth::Public { .. }) {
        return Err(invalid_client(
            "Client authentication required: HTTP Basic, client_id and client_secret in the body, or a client assertion",
        ));
    }
    let client = auth
        .authenticate(state)
        .await?
        .ok_or_else(|| invalid_client("Invalid client id or secret"))?;
    let client_ref = client.reference();
    let membership = fhir::search::find(
        state,
        Tenant::Project(client.project_id),
        "ProjectMembership",
        &[("user", &client_ref)],
    )
    .await?
    .into_iter()
    .find(|m| {
        let content = m.content.as_deref().unwrap_or("{}");
        serde_json::from_str::<Value>(content)
            .is_ok_and(|v| crate::auth::membership_usable(&v, chrono::Utc::now()))
    })
    .ok_or_else(|| {
        invalid_client("This client has no active membership in its project (inactive or ended)")
    })?;
    let mut response = granted_login(
        state,
        &client,
        &client_ref,
        membership.id,
        form.get("scope").map(String::as_str),
        "client",
        remote_address,
    )
    .await?;
    // A client signs in as itself: no ID token.
    if let Some(map) = response.as_object_mut() {
        map.remove("id_token");
    }
    Ok(response)
}

/// RFC 7523 §2.1: a trusted client (a backend) signs a JWT whose `sub` is
/// the email of a user of its project, and gets tokens for that user's
/// membership there. `iss` is the client, `aud` the token endpoint, `jti`
/// single-use, as for client assertions.
async fn jwt_bearer(
    state: &AppState,
    form: &HashMap<String, String>,
    remote_address: Option<String>,
) -> Result<Value> {
    let assertion = required(form, "assertion")?;
    let (client, subject) = verify_client_jwt(state, assertion)
        .await
        .map_err(|e| match e {
            Error::OAuth { description, .. } => invalid_grant(description),
            other => other,
        })?;
    let unknown = || invalid_grant("The assertion's sub is not a user of the client's project");
    let user = find_user(state, &subject, Some(client.project_id))
        .await?
        .ok_or_else(unknown)?;
    let user_ref = format!("User/{}", user.id);
    let membership = memberships_of(state, &user_ref, Some(client.project_id))
        .await?
        .into_iter()
        .next()
        .ok_or_else(unknown)?;
    granted_login(
        state,
        &client,
        &user_ref,
        membership.id,
        form.get("scope").map(String::as_str),
        "external",
        remote_address,
    )
    .await
}

/// Records a Login that is granted at once (no code: the client's own
/// credentials or assertion are the grant) and issues its tokens.
async fn granted_login(
    state: &AppState,
    client: &Client,
    user_ref: &str,
    membership_id: Uuid,
    requested_scope: Option<&str>,
    auth_method: &str,
    remote_address: Option<String>,
) -> Result<Value> {
    let scope = grant_scope(requested_scope.unwrap_or("openid"), Some(client))
        .map_err(|e| Error::oauth(StatusCode::BAD_REQUEST, "invalid_scope", e.to_string()))?;
    let login_id = Uuid::new_v4();
    let stamp = Stamp::new(login_id, client.project_id, user_ref);
    let mut login = json!({
        "resourceType": "Login",
        "user": { "reference": user_ref },
        "client": { "reference": client.reference() },
        "membership": { "reference": format!("ProjectMembership/{membership_id}") },
        "project": { "reference": format!("Project/{}", client.project_id) },
        "authMethod": auth_method,
        "authTime": fhir::resource::instant(&stamp.last_updated),
        "scope": scope,
        "granted": true
    });
    if let Some(address) = remote_address {
        login["remoteAddress"] = json!(address);
    }
    let tx = state.store.begin().await?;
    fhir::insert(&state.validator, &tx, login.clone(), &stamp).await?;
    let response = issue(state, &tx, login_id, client.project_id, &login, false).await?;
    tx.commit().await?;
    Ok(response)
}

/// What introspection tells about a live token.
pub struct TokenInfo {
    pub login_id: Uuid,
    /// The project the token acts in.
    pub project_id: Uuid,
    pub client_id: Option<String>,
    pub subject: String,
    pub profile: String,
    pub scope: String,
    pub token_type: &'static str,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub issuer: String,
}

/// A live access token (checked as a request would check it) or an unused,
/// unexpired refresh token of a live Login; `None` for anything else.
pub async fn inspect(state: &AppState, token: &str) -> Result<Option<TokenInfo>> {
    if token.split('.').count() == 3 {
        let Ok(claims) = state
            .keys
            .verify::<AccessClaims>(token, &state.base_url)
            .await
        else {
            return Ok(None);
        };
        let caller = match super::Caller::from_bearer(state, token, None).await {
            Ok(caller) => caller,
            Err(Error::Unauthorized(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        return Ok(Some(TokenInfo {
            login_id: caller.login_id,
            project_id: caller.project_id,
            client_id: caller.client_id,
            subject: claims.sub,
            profile: caller.profile,
            scope: caller.scope,
            token_type: "Bearer",
            iat: Some(claims.iat),
            exp: Some(claims.exp),
            issuer: claims.iss,
        }));
    }
    let tx = state.store.begin().await?;
    let Some(secret) = tx
        .lock_login_secret(&hash_client_secret(token), SecretKind::Refresh)
        .await?
        .filter(|s| !s.used && s.expires_at > Utc::now())
    else {
        return Ok(None);
    };
    let Some(login) = lock_login(&tx, secret.login_id)
        .await?
        .filter(|l| l.content["revoked"] != Value::Bool(true))
    else {
        return Ok(None);
    };
    drop(tx);
    let content = &login.content;
    let Some(project_id) = reference_id(&content["project"], "Project") else {
        return Ok(None);
    };
    let user = content["user"]["reference"].as_str().unwrap_or_default();
    Ok(Some(TokenInfo {
        login_id: secret.login_id,
        project_id,
        client_id: content["client"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("ClientApplication/"))
            .map(str::to_string),
        subject: user.split_once('/').map_or(user, |(_, id)| id).to_string(),
        profile: String::new(),
        scope: content["scope"].as_str().unwrap_or_default().to_string(),
        token_type: "refresh_token",
        iat: None,
        exp: Some(secret.expires_at.timestamp()),
        issuer: state.base_url.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_must_match_its_challenge() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWM5EjXk";
        let login = json!({"codeChallenge": "uz7zgJl48oN-TEfo7BsdRi8d2JcKJgR3iaId61caY4k", "codeChallengeMethod": "S256"});
        assert!(check_verifier(&login, Some(verifier)).is_ok());
        assert!(
            check_verifier(&login, Some("wrong-verifier-wrong-verifier-wrong-verifier")).is_err()
        );
        assert!(check_verifier(&login, None).is_err());
        assert!(check_verifier(&json!({}), Some(verifier)).is_err());
        assert!(check_verifier(&json!({}), None).is_ok());
    }
}
