//! OAuth 2.0 / OpenID Connect endpoints at Medplum's paths, and the
//! discovery documents. Errors of the token, introspection and revocation
//! endpoints use RFC 6749's `{error, error_description}` shape.

use super::{
    openapi::{JsonObject, JsonOk},
    routes::Routes,
};
use std::collections::HashMap;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::read_body;
use crate::{
    app::AppState,
    auth::{
        client::ClientAuth,
        login::revoke_login,
        token::{self, TokenInfo},
        Caller,
    },
    error::{Error, Result},
    store::Tenant,
};

pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_token, token)
        .add(__path_userinfo, userinfo)
        .add(__path_introspect, introspect)
        .add(__path_revoke, revoke)
        .add(__path_logout, logout)
        .add(__path_jwks, jwks)
        .add(__path_openid_configuration, openid_configuration)
        .add(__path_authorization_server, authorization_server)
        .add(__path_smart_configuration, smart_configuration)
        .add(__path_rotate_keys, rotate_keys);
}

/// Token requests are small; a tight limit keeps this unauthenticated route cheap.
const TOKEN_BODY_LIMIT: usize = 16 * 1024;

fn oauth_invalid_request(description: impl Into<String>) -> Error {
    Error::oauth(StatusCode::BAD_REQUEST, "invalid_request", description)
}

/// An `application/x-www-form-urlencoded` body without repeated parameters.
async fn read_form(req: &HttpRequest, payload: web::Payload) -> Result<HashMap<String, String>> {
    let is_form = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(oauth_invalid_request(
            "The request must be sent as application/x-www-form-urlencoded",
        ));
    }
    let body = read_body(req, payload, TOKEN_BODY_LIMIT).await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|_| oauth_invalid_request("The form body is not valid"))?;
    let mut form = HashMap::new();
    for (name, value) in pairs {
        // RFC 6749 §3.2: parameters must not be repeated.
        if form.insert(name.clone(), value).is_some() {
            return Err(oauth_invalid_request(format!(
                "Parameter '{name}' is repeated"
            )));
        }
    }
    Ok(form)
}

fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn no_store(mut response: actix_web::HttpResponseBuilder, body: Value) -> HttpResponse {
    response
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(body)
}

#[utoipa::path(post, path = "/oauth2/token", security(()), request_body(content = JsonObject, content_type = "application/x-www-form-urlencoded", description = "grant_type authorization_code (with code_verifier), refresh_token or client_credentials; client authentication by HTTP Basic, client_secret or client_assertion"), responses(JsonOk))]
async fn token(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let form = read_form(&req, payload).await?;
    let remote = super::auth::remote_address(&req);
    let response = token::token(&state, &form, authorization(&req), remote).await?;
    Ok(no_store(HttpResponse::Ok(), response))
}

/// OpenID Connect UserInfo: `sub` and `fhirUser` always, names with the
/// `profile` scope, the email with the `email` scope.
#[utoipa::path(method(get, post), path = "/oauth2/userinfo", responses(JsonOk))]
async fn userinfo(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    let subject = caller
        .user
        .split_once('/')
        .map_or(caller.user.as_str(), |(_, id)| id);
    let mut info = json!({"sub": subject, "fhirUser": caller.profile});
    let scopes: Vec<&str> = caller.scope.split(' ').collect();
    if let Some(user_id) = crate::auth::reference_id(&json!({"reference": caller.user}), "User") {
        if let Some(user) =
            crate::auth::read_live(&state, Tenant::AllProjects, "User", user_id).await?
        {
            if scopes.contains(&"profile") {
                let given = user["firstName"].as_str().unwrap_or_default();
                let family = user["lastName"].as_str().unwrap_or_default();
                info["given_name"] = json!(given);
                info["family_name"] = json!(family);
                info["name"] = json!(format!("{given} {family}").trim());
            }
            if scopes.contains(&"email") {
                info["email"] = user["email"].clone();
                info["email_verified"] = json!(user["emailVerified"] == Value::Bool(true));
            }
        }
    }
    Ok(no_store(HttpResponse::Ok(), info))
}

/// RFC 7662. The caller authenticates as a client (or with a bearer token)
/// and learns only about tokens of its own project; anything else is
/// `{"active": false}`.
#[utoipa::path(post, path = "/oauth2/introspect", request_body(content = JsonObject, content_type = "application/x-www-form-urlencoded", description = "token"), responses(JsonOk))]
async fn introspect(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let form = read_form(&req, payload).await?;
    let project_id = requester_project(&state, &req, &form).await?;
    let presented = form
        .get("token")
        .ok_or_else(|| oauth_invalid_request("token is required"))?;
    let body = match token::inspect(&state, presented).await? {
        Some(info) if info.project_id == project_id => info.to_json(),
        _ => json!({"active": false}),
    };
    Ok(no_store(HttpResponse::Ok(), body))
}

/// The project of whoever calls introspection: an authenticated client, or
/// the caller of a bearer token.
async fn requester_project(
    state: &AppState,
    req: &HttpRequest,
    form: &HashMap<String, String>,
) -> Result<uuid::Uuid> {
    if let Some(bearer) = authorization(req).and_then(|h| h.strip_prefix("Bearer ")) {
        return Ok(Caller::from_bearer(state, bearer.trim(), None)
            .await?
            .project_id);
    }
    let auth = ClientAuth::from_request(authorization(req), form)?;
    if matches!(auth, ClientAuth::Public { .. } | ClientAuth::Absent) {
        return Err(Error::oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Introspection needs client authentication or a bearer token",
        ));
    }
    let client = auth.authenticate(state).await?.ok_or_else(|| {
        Error::oauth(StatusCode::UNAUTHORIZED, "invalid_client", "Invalid client")
    })?;
    Ok(client.project_id)
}

/// RFC 7009: revokes the Login behind an access or refresh token, which
/// ends every token of that sign-in. Answers 200 whether or not the token
/// was valid; a token of another client is left alone.
#[utoipa::path(post, path = "/oauth2/revoke", request_body(content = JsonObject, content_type = "application/x-www-form-urlencoded", description = "token"), responses((status = 200, description = "Revoked, or nothing to revoke")))]
async fn revoke(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let form = read_form(&req, payload).await?;
    let auth = ClientAuth::from_request(authorization(&req), &form)?;
    let client = auth.authenticate(&state).await?;
    let presented = form
        .get("token")
        .ok_or_else(|| oauth_invalid_request("token is required"))?;
    if let Some(info) = token::inspect(&state, presented).await? {
        let requester = client.as_ref().map(|c| c.id.to_string());
        if info.client_id == requester {
            let tx = state.store.begin().await?;
            revoke_login(&state, &tx, info.login_id).await?;
            tx.commit().await?;
        }
    }
    Ok(no_store(HttpResponse::Ok(), json!({})))
}

/// Ends the caller's sign-in (Medplum's `/oauth2/logout`).
#[utoipa::path(method(get, post), path = "/oauth2/logout", responses(JsonOk))]
async fn logout(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    let tx = state.store.begin().await?;
    revoke_login(&state, &tx, caller.login_id).await?;
    tx.commit().await?;
    Ok(no_store(HttpResponse::Ok(), json!({"ok": true})))
}

#[utoipa::path(get, path = "/.well-known/jwks.json", security(()), responses(JsonOk))]
async fn jwks(state: web::Data<AppState>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .body(state.keys.current_jwks().await?))
}

/// Scopes fhirgate understands (SMART v1 and v2 forms of the resource scopes).
pub(crate) const SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.*",
    "system/*.*",
];
const GRANT_TYPES: &[&str] = &["authorization_code", "refresh_token", "client_credentials"];
const AUTH_METHODS: &[&str] = &[
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
];
const ASSERTION_ALGS: &[&str] = &[
    "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];

fn authorization_server_metadata(base: &str) -> Value {
    json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}oauth2/authorize"),
        "token_endpoint": format!("{base}oauth2/token"),
        "jwks_uri": format!("{base}.well-known/jwks.json"),
        "introspection_endpoint": format!("{base}oauth2/introspect"),
        "revocation_endpoint": format!("{base}oauth2/revoke"),
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": GRANT_TYPES,
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
        "code_challenge_methods_supported": ["S256"],
    })
}

fn discovery(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "public, max-age=300"))
        .insert_header(("Access-Control-Allow-Origin", "*"))
        .json(body)
}

#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", security(()), responses(JsonOk))]
async fn authorization_server(state: web::Data<AppState>) -> HttpResponse {
    discovery(authorization_server_metadata(&state.base_url))
}

#[utoipa::path(get, path = "/.well-known/openid-configuration", security(()), responses(JsonOk))]
async fn openid_configuration(state: web::Data<AppState>) -> HttpResponse {
    let base = &state.base_url;
    let mut body = authorization_server_metadata(base);
    body["userinfo_endpoint"] = json!(format!("{base}oauth2/userinfo"));
    body["end_session_endpoint"] = json!(format!("{base}oauth2/logout"));
    body["subject_types_supported"] = json!(["public"]);
    body["id_token_signing_alg_values_supported"] = json!(["ES256"]);
    body["claims_supported"] = json!([
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "auth_time",
        "nonce",
        "fhirUser",
        "name",
        "given_name",
        "family_name",
        "email",
        "email_verified"
    ]);
    discovery(body)
}

/// SMART App Launch 2.0 §2.1: the required fields and the capabilities
/// fhirgate implements.
#[utoipa::path(get, path = "/.well-known/smart-configuration", security(()), responses(JsonOk))]
async fn smart_configuration(state: web::Data<AppState>) -> HttpResponse {
    let base = &state.base_url;
    let mut body = authorization_server_metadata(base);
    body["userinfo_endpoint"] = json!(format!("{base}oauth2/userinfo"));
    body["capabilities"] = json!([
        "launch-standalone",
        "authorize-post",
        "client-public",
        "client-confidential-symmetric",
        "client-confidential-asymmetric",
        "sso-openid-connect",
        "context-standalone-patient",
        "permission-offline",
        "permission-online",
        "permission-patient",
        "permission-user",
        "permission-v1",
        "permission-v2"
    ]);
    discovery(body)
}

/// Adds a signing key that signs from now on; older keys stay published
/// until their tokens expire. Super admins only.
#[utoipa::path(post, path = "/admin/super/keys/rotate", responses(JsonOk))]
async fn rotate_keys(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    caller.require_full_access()?;
    if !caller.is_super_admin() {
        return Err(Error::Forbidden(
            "Only super admins may rotate the signing keys".into(),
        ));
    }
    let kid = state.keys.rotate().await?;
    Ok(HttpResponse::Ok().json(json!({"kid": kid})))
}

impl TokenInfo {
    /// RFC 7662 §2.2.
    fn to_json(&self) -> Value {
        json!({
            "active": true,
            "token_type": self.token_type,
            "scope": self.scope,
            "client_id": self.client_id,
            "sub": self.subject,
            "fhirUser": self.profile,
            "exp": self.exp,
            "iat": self.iat,
            "iss": self.issuer,
        })
    }
}
