//! OAuth clients (ClientApplication): finding them, what they allow
//! (redirect URIs, PKCE, scopes), and client authentication at the token
//! endpoint: `client_secret_basic`, `client_secret_post`, `private_key_jwt`
//! (RFC 7523), or none for a public client.

use access_policy::RowFilter;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use access_policy::scopes::ScopeSet;
use actix_web::http::StatusCode;
use base64::{engine::general_purpose::STANDARD, Engine};
use chrono::DateTime;
use jsonwebtoken::{jwk::Jwk, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::secrets::client_secret_matches;
use crate::{
    app::AppState,
    error::{Error, Result},
    fhir::parse_id,
    store::Tenant,
};

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A live, enabled ClientApplication.
#[derive(Debug, Clone)]
pub struct Client {
    pub id: Uuid,
    pub project_id: Uuid,
    pub content: Value,
    pub(crate) has_secret: bool,
}

impl Client {
    pub fn reference(&self) -> String {
        format!("ClientApplication/{}", self.id)
    }

    /// `redirectUri` and `redirectUris` together; a redirect must match one exactly.
    pub fn allows_redirect(&self, uri: &str) -> bool {
        self.content["redirectUri"].as_str() == Some(uri)
            || self.content["redirectUris"]
                .as_array()
                .is_some_and(|uris| uris.iter().any(|u| u.as_str() == Some(uri)))
    }

    /// The one registered redirect URI, used when a request names none.
    pub fn only_redirect(&self) -> Option<String> {
        let mut all: Vec<&str> = self.content["redirectUris"]
            .as_array()
            .map(|uris| uris.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(uri) = self.content["redirectUri"].as_str() {
            if !all.contains(&uri) {
                all.push(uri);
            }
        }
        (all.len() == 1).then(|| all[0].to_string())
    }

    pub fn pkce_optional(&self) -> bool {
        self.content["pkceOptional"] == Value::Bool(true)
    }

    /// The most this client may be granted (`ClientApplication.scope`);
    /// `None`: whatever is asked.
    pub fn allowed_scope(&self) -> Option<ScopeSet> {
        self.content["scope"]
            .as_str()
            .map(|s| ScopeSet::parse(s).unwrap_or_default())
    }

    /// Whether it can authenticate (a secret or keys), and so must.
    pub fn is_confidential(&self) -> bool {
        self.has_secret
            || self.content.get("jwks").is_some()
            || self.content.get("jwksUri").is_some()
    }
}

/// The client named by `id`, if it exists, is not deleted and not `status: off`.
pub async fn find_client(state: &AppState, id: &str) -> Result<Option<Client>> {
    let Some(id) = parse_id(id) else {
        return Ok(None);
    };
    let Some(version) = state
        .store
        .read(
            Tenant::AllProjects,
            "ClientApplication",
            id,
            &RowFilter::All,
        )
        .await?
    else {
        return Ok(None);
    };
    let Some(content) = version.content.as_deref() else {
        return Ok(None);
    };
    let content: Value = serde_json::from_str(content)
        .map_err(|e| Error::Internal(format!("stored client is not JSON: {e}")))?;
    if content["status"] == "off" {
        return Ok(None);
    }
    let has_secret = state
        .store
        .secret_hash("ClientApplication", id, CLIENT_SECRET)
        .await?
        .is_some();
    Ok(Some(Client {
        id,
        project_id: version.project_id,
        content,
        has_secret,
    }))
}

/// How a client presented itself at the token endpoint.
#[derive(Debug)]
pub enum ClientAuth {
    Secret {
        client_id: String,
        secret: String,
        basic: bool,
    },
    /// `private_key_jwt`: a JWT signed with one of the client's keys.
    Assertion {
        assertion: String,
    },
    /// Only `client_id`: a public client.
    Public {
        client_id: String,
    },
    Absent,
}

/// `resource_secret.kind` of a client's secret, and of the one
/// `$rotate-secret` replaced, which keeps working for
/// `FHIRGATE_RETIRING_SECRET_SECONDS` after the rotation.
pub const CLIENT_SECRET: &str = "client_secret";
pub const RETIRING_CLIENT_SECRET: &str = "client_secret_retiring";

fn invalid_client(description: impl Into<String>, basic: bool) -> Error {
    Error::OAuth {
        status: StatusCode::UNAUTHORIZED,
        error: "invalid_client",
        description: description.into(),
        basic_challenge: basic,
    }
}

/// `client_id:client_secret` of a Basic header, each form-urlencoded
/// before the base64 (RFC 6749 §2.3.1).
fn basic_credentials(encoded: &str) -> Result<(String, String)> {
    let malformed = || {
        invalid_client(
            "The Basic credentials are not valid base64 of 'client_id:client_secret'",
            true,
        )
    };
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |s: &str| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={s}"))
            .ok()
            .and_then(|mut v| v.pop())
            .map(|(_, v)| v)
    };
    Ok((
        unescape(id).ok_or_else(malformed)?,
        unescape(secret).ok_or_else(malformed)?,
    ))
}

impl ClientAuth {
    /// From `Authorization: Basic` or the form body. A client uses one method
    /// (RFC 6749 §2.3), but `@medplum/core` sends its id and secret both in
    /// the Basic header and in the body: that is taken when the two sets are
    /// identical, and refused when they differ.
    pub fn from_request(
        authorization: Option<&str>,
        form: &HashMap<String, String>,
    ) -> Result<ClientAuth> {
        let basic = authorization
            .and_then(|h| h.strip_prefix("Basic "))
            .map(basic_credentials)
            .transpose()?;
        let one_method = || {
            Error::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Use one client authentication method: HTTP Basic, client_secret or client_assertion",
            )
        };
        if form.contains_key("client_assertion")
            && (basic.is_some() || form.contains_key("client_secret"))
        {
            return Err(one_method());
        }
        if let Some((client_id, secret)) = basic {
            let same = |name: &str, value: &str| form.get(name).is_none_or(|v| v == value);
            if !same("client_id", &client_id) || !same("client_secret", &secret) {
                return Err(Error::oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "The client credentials in the Authorization header and in the body differ; send one set",
                ));
            }
            return Ok(ClientAuth::Secret {
                client_id,
                secret,
                basic: true,
            });
        }
        if let Some(assertion) = form.get("client_assertion") {
            if form.get("client_assertion_type").map(String::as_str) != Some(ASSERTION_TYPE) {
                return Err(Error::oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("client_assertion_type must be {ASSERTION_TYPE}"),
                ));
            }
            return Ok(ClientAuth::Assertion {
                assertion: assertion.clone(),
            });
        }
        Ok(match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => ClientAuth::Secret {
                client_id: id.clone(),
                secret: secret.clone(),
                basic: false,
            },
            (None, Some(_)) => return Err(invalid_client("client_secret needs client_id", false)),
            (Some(id), None) => ClientAuth::Public {
                client_id: id.clone(),
            },
            (None, None) => ClientAuth::Absent,
        })
    }

    /// Authenticates the client. `None` when no client was named at all.
    /// Unknown clients and wrong secrets fail alike and take alike long.
    pub async fn authenticate(&self, state: &AppState) -> Result<Option<Client>> {
        match self {
            ClientAuth::Absent => Ok(None),
            ClientAuth::Public { client_id } => {
                let client = find_client(state, client_id)
                    .await?
                    .ok_or_else(|| invalid_client("Unknown client", false))?;
                if client.is_confidential() {
                    return Err(invalid_client(
                        "This client must authenticate: client_secret_basic, client_secret_post or private_key_jwt",
                        false,
                    ));
                }
                Ok(Some(client))
            }
            ClientAuth::Secret {
                client_id,
                secret,
                basic,
            } => {
                let client = find_client(state, client_id).await?;
                let (stored, retiring) = match &client {
                    Some(c) => (
                        state
                            .store
                            .secret_hash("ClientApplication", c.id, CLIENT_SECRET)
                            .await?,
                        state
                            .store
                            .secret_hash_since(
                                "ClientApplication",
                                c.id,
                                RETIRING_CLIENT_SECRET,
                                chrono::Utc::now() - state.config.retiring_secret,
                            )
                            .await?,
                    ),
                    None => (None, None),
                };
                // Always compare both, so unknown clients take as long as
                // wrong secrets, and a retiring secret as long as the current.
                let current = client_secret_matches(secret, stored.as_deref());
                let previous = client_secret_matches(secret, retiring.as_deref());
                if !(current || previous) {
                    return Err(invalid_client("Invalid client id or secret", *basic));
                }
                Ok(client)
            }
            ClientAuth::Assertion { assertion } => {
                verify_assertion(state, assertion).await.map(Some)
            }
        }
    }

    /// The client id the request names, however it authenticates.
    pub fn client_id(&self) -> Option<String> {
        match self {
            ClientAuth::Secret { client_id, .. } | ClientAuth::Public { client_id } => {
                Some(client_id.clone())
            }
            ClientAuth::Assertion { assertion } => {
                jsonwebtoken::dangerous::insecure_decode_claims::<AssertionClaims>(assertion)
                    .ok()
                    .map(|c| c.iss)
            }
            ClientAuth::Absent => None,
        }
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: Option<String>,
}

/// Algorithms a client may sign its assertion with.
const ASSERTION_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Verifies a JWT signed by a client with a key from its `jwks`
/// (RFC 7523 §3): `iss` = `sub` = the client, `aud` the token endpoint,
/// `exp` in the future, a `jti` never seen before. Returns the client.
pub async fn verify_assertion(state: &AppState, assertion: &str) -> Result<Client> {
    let (client, subject) = verify_client_jwt(state, assertion).await?;
    if subject != client.id.to_string() {
        return Err(invalid_client(
            "A client assertion's iss and sub must both be the client id",
            false,
        ));
    }
    Ok(client)
}

/// Signature, audience, expiry and replay checks of a JWT that a client
/// signed (client assertions and jwt-bearer grants). Returns the client and
/// the JWT's `sub`.
pub async fn verify_client_jwt(state: &AppState, jwt: &str) -> Result<(Client, String)> {
    let bad = |why: &str| invalid_client(format!("Invalid client assertion: {why}"), false);
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| bad("not a JWT"))?;
    if !ASSERTION_ALGORITHMS.contains(&header.alg) {
        return Err(bad("unsupported signing algorithm"));
    }
    let unverified: AssertionClaims = jsonwebtoken::dangerous::insecure_decode_claims(jwt)
        .map_err(|_| bad("iss, sub and exp are required"))?;
    let client = find_client(state, &unverified.iss)
        .await?
        .ok_or_else(|| bad("unknown client"))?;
    let jwks = match client.content["jwksUri"].as_str() {
        Some(uri) if client.content.get("jwks").is_none() => {
            remote_jwks(state, uri, header.kid.as_deref()).await?
        }
        _ => client.content["jwks"].clone(),
    };
    let keys: Vec<Jwk> = jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| serde_json::from_value(k.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    let jwk = keys
        .iter()
        .find(|k| header.kid.is_some() && k.common.key_id == header.kid)
        .or_else(|| (keys.len() == 1).then(|| &keys[0]))
        .ok_or_else(|| bad("no key of the client's jwks matches the kid"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| bad("the client's key is not usable"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[state.token_endpoint()]);
    validation.set_issuer(&[client.id.to_string()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = 30;
    let claims: AssertionClaims = jsonwebtoken::decode(jwt, &key, &validation)
        .map_err(|e| bad(&e.to_string()))?
        .claims;
    let jti = claims
        .jti
        .as_deref()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| bad("jti is required"))?;
    let expires =
        DateTime::from_timestamp(claims.exp, 0).ok_or_else(|| bad("exp is not a time"))?;
    if !state
        .store
        .remember_assertion_jti(client.id, jti, expires)
        .await?
    {
        return Err(bad("this jti was used before (replayed assertion)"));
    }
    Ok((client, claims.sub))
}

/// How long a key set fetched from a `jwksUri` is used before it is
/// fetched again, and how soon an unknown `kid` may fetch it again (so a
/// client can rotate keys, but no stream of made-up kids makes every
/// sign-in wait on its URL).
const JWKS_TTL: Duration = Duration::from_secs(300);
const JWKS_REFETCH_AFTER: Duration = Duration::from_secs(10);

/// Key sets fetched from clients' `jwksUri`s, by URI: one slow or hostile
/// URL is fetched once per [`JWKS_TTL`], not on every sign-in.
#[derive(Default)]
pub struct JwksCache {
    fetched: Mutex<HashMap<String, (Instant, Value)>>,
}

impl JwksCache {
    fn get(&self, uri: &str) -> Option<(Instant, Value)> {
        self.fetched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uri)
            .cloned()
    }

    fn put(&self, uri: &str, keys: Value) {
        let mut fetched = self.fetched.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: forget what expired once the map grows.
        if fetched.len() >= 10_000 {
            fetched.retain(|_, (at, _)| at.elapsed() < JWKS_TTL);
        }
        fetched.insert(uri.to_string(), (Instant::now(), keys));
    }
}

/// The key set at `uri`: remembered, unless it is older than [`JWKS_TTL`],
/// or lacks `kid` and was fetched more than [`JWKS_REFETCH_AFTER`] ago.
async fn remote_jwks(state: &AppState, uri: &str, kid: Option<&str>) -> Result<Value> {
    if let Some((at, keys)) = state.jwks.get(uri) {
        let knows_kid = kid.is_none_or(|kid| {
            keys["keys"]
                .as_array()
                .is_some_and(|keys| keys.iter().any(|k| k["kid"] == kid))
        });
        let age = at.elapsed();
        if age < JWKS_TTL && (knows_kid || age < JWKS_REFETCH_AFTER) {
            return Ok(keys);
        }
    }
    let keys = fetch_jwks(state, uri).await?;
    state.jwks.put(uri, keys.clone());
    Ok(keys)
}

/// Largest JWKS document fetched from a client's `jwksUri`.
const MAX_JWKS_BYTES: usize = 64 * 1024;

/// The client's key set from its `jwksUri`: HTTPS only (plain HTTP when
/// `FHIRGATE_ALLOW_HTTP_JWKS_URI` is set, for development), no redirects, a
/// short timeout and a size cap, since the address is the client's choice.
async fn fetch_jwks(state: &AppState, uri: &str) -> Result<Value> {
    let refused = |why: String| invalid_client(format!("Invalid client assertion: {why}"), false);
    let allowed = uri.starts_with("https://")
        || (state.config.allow_http_jwks_uri && uri.starts_with("http://"));
    if !allowed {
        return Err(refused(format!(
            "the client's jwksUri must be https: {uri}"
        )));
    }
    let unreachable =
        |e: reqwest::Error| refused(format!("the client's jwksUri could not be read ({e})"));
    let mut response = state
        .http_client
        .get(uri)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(unreachable)?;
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(refused("the client's JWKS is larger than 64 KiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body)
        .map_err(|_| refused("the client's jwksUri did not return JSON".into()))
}
