//! `POST /oauth2/token` with `grant_type=client_credentials` (RFC 6749 §4.4),
//! client authentication by `client_secret_basic` or `client_secret_post`.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{secrets::client_secret_matches, AccessClaims};
use crate::{
    app::AppState,
    error::{Error, Result},
    fhir::{self, parse_id, resource::Stamp},
    store::Tenant,
};

/// The credentials a client presented, and how.
#[derive(Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub secret: String,
    pub basic: bool,
}

impl ClientCredentials {
    /// From `Authorization: Basic` or the form body; using both is an error
    /// (RFC 6749 §2.3: a client must use only one method).
    pub fn from_request(
        authorization: Option<&str>,
        form: &HashMap<String, String>,
    ) -> Result<ClientCredentials> {
        let in_form = form.contains_key("client_secret");
        match authorization.and_then(|h| h.strip_prefix("Basic ")) {
            Some(_) if in_form => Err(Error::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Use one client authentication method: HTTP Basic or client_secret in the body, not both",
            )),
            Some(encoded) => {
                let malformed = || Error::OAuth {
                    status: StatusCode::UNAUTHORIZED,
                    error: "invalid_client",
                    description: "The Basic credentials are not valid base64 of 'client_id:client_secret'".into(),
                    basic_challenge: true,
                };
                let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
                let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
                let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
                // RFC 6749 §2.3.1: both parts are form-urlencoded before encoding.
                let unescape = |s: &str| {
                    serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
                        .ok()
                        .and_then(|mut v| v.pop())
                        .map(|(_, v)| v)
                };
                Ok(ClientCredentials {
                    client_id: unescape(id).ok_or_else(malformed)?,
                    secret: unescape(secret).ok_or_else(malformed)?,
                    basic: true,
                })
            }
            None => match (form.get("client_id"), form.get("client_secret")) {
                (Some(id), Some(secret)) => Ok(ClientCredentials {
                    client_id: id.clone(),
                    secret: secret.clone(),
                    basic: false,
                }),
                _ => Err(Error::oauth(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "Client authentication required: HTTP Basic, or client_id and client_secret in the body",
                )),
            },
        }
    }
}

/// Authenticates the client, records a Login and issues an access token.
pub async fn client_credentials(
    state: &AppState,
    credentials: ClientCredentials,
    scope: Option<&str>,
    remote_address: Option<String>,
) -> Result<Value> {
    let invalid_client = || Error::OAuth {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: "Invalid client id or secret".into(),
        basic_challenge: credentials.basic,
    };
    let client_id = parse_id(&credentials.client_id);
    let client = match client_id {
        Some(id) => {
            state
                .store
                .read(
                    Tenant::AllProjects,
                    "ClientApplication",
                    id,
                    &access_policy::RowFilter::All,
                )
                .await?
        }
        None => None,
    }
    .filter(|client| !client.is_deleted());
    let stored_hash = match &client {
        Some(client) => {
            state
                .store
                .secret_hash("ClientApplication", client.id, "client_secret")
                .await?
        }
        None => None,
    };
    // Always compare, so unknown clients take as long as wrong secrets.
    if !client_secret_matches(&credentials.secret, stored_hash.as_deref()) {
        return Err(invalid_client());
    }
    let client = client.ok_or_else(invalid_client)?;
    let content: Value = serde_json::from_str(client.content.as_deref().unwrap_or("{}"))
        .map_err(|e| Error::Internal(format!("stored client is not JSON: {e}")))?;
    if content["status"] == "off" {
        return Err(invalid_client());
    }
    let client_ref = format!("ClientApplication/{}", client.id);
    let membership = fhir::search::find_by_reference(
        state,
        Tenant::Project(client.project_id),
        "ProjectMembership",
        "user",
        &client_ref,
    )
    .await?
    .into_iter()
    .find(|m| {
        let content = m.content.as_deref().unwrap_or("{}");
        serde_json::from_str::<Value>(content).is_ok_and(|v| v["active"] != Value::Bool(false))
    })
    .ok_or_else(|| Error::OAuth {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: "This client has no active membership in its project".into(),
        basic_challenge: credentials.basic,
    })?;
    let scope = validate_scope(scope.unwrap_or("openid"))?;

    let login_id = Uuid::new_v4();
    let stamp = Stamp::new(login_id, client.project_id, &client_ref);
    let mut login = json!({
        "resourceType": "Login",
        "user": { "reference": client_ref },
        "client": { "reference": client_ref },
        "membership": { "reference": format!("ProjectMembership/{}", membership.id) },
        "project": { "reference": format!("Project/{}", client.project_id) },
        "authMethod": "client",
        "authTime": fhir::resource::instant(&stamp.last_updated),
        "scope": scope,
        "granted": true
    });
    if let Some(address) = remote_address {
        login["remoteAddress"] = json!(address);
    }
    let tx = state.store.begin().await?;
    fhir::insert(&state.validator, &tx, login, &stamp).await?;
    tx.commit().await?;

    let now = stamp.last_updated.timestamp();
    let lifetime = state.config.access_token_lifetime.as_secs() as i64;
    let claims = AccessClaims {
        iss: state.base_url.clone(),
        sub: client.id.to_string(),
        aud: client.id.to_string(),
        iat: now,
        exp: now + lifetime,
        client_id: client.id.to_string(),
        login_id: login_id.to_string(),
        scope: scope.clone(),
        profile: client_ref.clone(),
    };
    Ok(json!({
        "access_token": state.keys.sign(&claims)?,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": scope,
        "project": { "reference": format!("Project/{}", client.project_id) },
        "profile": { "reference": client_ref }
    }))
}

/// RFC 6749 §3.3: scope tokens are printable ASCII without `"` or `\`.
fn validate_scope(scope: &str) -> Result<String> {
    let tokens: Vec<&str> = scope.split(' ').filter(|t| !t.is_empty()).collect();
    let valid = !tokens.is_empty()
        && tokens.iter().all(|t| {
            t.chars()
                .all(|c| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c))
        });
    if valid {
        Ok(tokens.join(" "))
    } else {
        Err(Error::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must be space-separated tokens of printable ASCII",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn basic_credentials_are_url_decoded() {
        let header = format!("Basic {}", STANDARD.encode("my%3Aclient:p%40ss+word"));
        let c = ClientCredentials::from_request(Some(&header), &form(&[])).unwrap();
        assert_eq!(
            (c.client_id.as_str(), c.secret.as_str(), c.basic),
            ("my:client", "p@ss word", true)
        );
    }

    #[test]
    fn two_methods_or_none_are_refused() {
        let header = format!("Basic {}", STANDARD.encode("a:b"));
        assert!(
            ClientCredentials::from_request(Some(&header), &form(&[("client_secret", "x")]))
                .is_err()
        );
        assert!(ClientCredentials::from_request(None, &form(&[("client_id", "a")])).is_err());
        assert!(ClientCredentials::from_request(Some("Basic !!!"), &form(&[])).is_err());
        let post = ClientCredentials::from_request(
            None,
            &form(&[("client_id", "a"), ("client_secret", "b")]),
        )
        .unwrap();
        assert!(!post.basic);
    }

    #[test]
    fn scopes_are_checked() {
        assert_eq!(
            validate_scope("  openid   system/*.read ").unwrap(),
            "openid system/*.read"
        );
        assert!(validate_scope("bad\"scope").is_err());
        assert!(validate_scope("   ").is_err());
    }
}
