//! Medplum's `/auth/*` routes: password sign-in, choosing a profile.
//! Bodies and answers are JSON in Medplum's shapes; errors are OperationOutcomes.

use super::{openapi::JsonOk, routes::Routes};
use access_policy::RowFilter;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::{parse_json, read_body};
use crate::{
    app::AppState,
    auth::{
        login::{
            choose_membership, password_login, revoke_login, sessions_of, verify_second_factor,
            LoginContext, LoginOutcome, LoginRequest,
        },
        mfa, read_live, reference_id, Caller,
    },
    error::{Error, Result},
    fhir::parse_id,
    store::Tenant,
};

pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_login, login)
        .add(__path_profile, profile)
        .add(__path_me, me)
        .add(__path_revoke_session, revoke_session)
        .add(__path_mfa_status, mfa_status)
        .add(__path_mfa_enroll, mfa_enroll)
        .add(__path_mfa_disable, mfa_disable)
        .add(__path_mfa_verify, mfa_verify)
        .add(__path_mfa_login_enroll, mfa_login_enroll);
}

/// Sign-in bodies are small.
const AUTH_BODY_LIMIT: usize = 16 * 1024;

async fn json_body<T: for<'de> Deserialize<'de>>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T> {
    let body = read_body(req, payload, AUTH_BODY_LIMIT).await?;
    let value = parse_json(&body)?;
    serde_json::from_value(value)
        .map_err(|e| Error::BadRequest(format!("Invalid request body: {e}")))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct LoginBody {
    email: Option<String>,
    password: Option<String>,
    project_id: Option<String>,
    client_id: Option<String>,
    scope: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    #[serde(default)]
    remember: bool,
}

/// The client's address as text (the peer's, or the one a trusted proxy names).
pub fn remote_address(req: &HttpRequest) -> Option<String> {
    let trusted = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.config.trusted_proxies.as_slice())
        .unwrap_or_default();
    super::client_address::client_address(req.headers(), req.peer_addr(), trusted)
        .map(|address| address.to_string())
}

/// Where a sign-in comes from: the client's address and (capped) User-Agent.
pub fn request_context(req: &HttpRequest) -> LoginContext {
    LoginContext {
        remote_address: remote_address(req),
        user_agent: req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(512).collect()),
        ..LoginContext::default()
    }
}

#[utoipa::path(post, path = "/auth/login", security(()), request_body = LoginBody, responses(JsonOk))]
async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body: LoginBody = json_body(&req, payload).await?;
    let request = LoginRequest {
        email: body.email.unwrap_or_default(),
        password: body.password.unwrap_or_default(),
        project_id: body.project_id,
        client_id: body.client_id,
        scope: body.scope.unwrap_or_default(),
        context: LoginContext {
            nonce: body.nonce,
            code_challenge: body.code_challenge,
            code_challenge_method: body.code_challenge_method,
            remember: body.remember,
            ..request_context(&req)
        },
    };
    let outcome = password_login(&state, &request).await?;
    outcome_response(&state, &outcome).await
}

#[derive(Deserialize, utoipa::ToSchema)]
struct ProfileBody {
    login: Option<String>,
    profile: Option<String>,
}

#[utoipa::path(post, path = "/auth/profile", security(()), request_body = ProfileBody, responses(JsonOk))]
async fn profile(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body: ProfileBody = json_body(&req, payload).await?;
    let login = body
        .login
        .ok_or_else(|| Error::BadRequest("login is required".into()))?;
    let profile = body
        .profile
        .ok_or_else(|| Error::BadRequest("profile (a membership id) is required".into()))?;
    let outcome = choose_membership(&state, &login, &profile, None, None).await?;
    outcome_response(&state, &outcome).await
}

/// The project names a membership choice shows.
pub async fn project_names(
    state: &AppState,
    outcome: &LoginOutcome,
) -> Result<Vec<(uuid::Uuid, String)>> {
    let mut names = Vec::new();
    if let LoginOutcome::Choose { memberships, .. } = outcome {
        for m in memberships {
            let name = state
                .store
                .read(
                    Tenant::Project(m.project_id),
                    "Project",
                    m.project_id,
                    &RowFilter::All,
                )
                .await?
                .and_then(|v| v.content)
                .and_then(|c| serde_json::from_str::<Value>(&c).ok())
                .and_then(|p| p["name"].as_str().map(str::to_string))
                .unwrap_or_default();
            names.push((m.project_id, name));
        }
    }
    Ok(names)
}

async fn outcome_response(state: &AppState, outcome: &LoginOutcome) -> Result<HttpResponse> {
    let names = project_names(state, outcome).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(outcome.to_json(&names)))
}

/// Medplum's `GET /auth/me`: who the caller is, in which project, and (for
/// users) their active sessions.
#[utoipa::path(get, path = "/auth/me", responses(JsonOk))]
async fn me(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    let read = |resource_type: &'static str, reference: &Value| {
        let state = state.clone();
        let id = reference_id(reference, resource_type);
        async move {
            match id {
                Some(id) => read_live(&state, Tenant::AllProjects, resource_type, id).await,
                None => Ok(None),
            }
        }
    };
    let membership = read(
        "ProjectMembership",
        &serde_json::json!({"reference": format!("ProjectMembership/{}", caller.membership_id)}),
    )
    .await?
    .unwrap_or(Value::Null);
    let project = read("Project", &membership["project"])
        .await?
        .unwrap_or(Value::Null);
    let profile = match membership["profile"]["reference"]
        .as_str()
        .and_then(|r| r.split_once('/'))
    {
        Some((kind, id)) => match parse_id(id) {
            Some(id) => {
                state
                    .store
                    .read(
                        Tenant::Project(caller.project_id),
                        kind,
                        id,
                        &RowFilter::All,
                    )
                    .await?
            }
            None => None,
        }
        .and_then(|v| v.content)
        .and_then(|c| serde_json::from_str::<Value>(&c).ok()),
        None => None,
    };
    let user = read("User", &membership["user"]).await?;
    let mut body = serde_json::json!({
        "project": {
            "resourceType": "Project", "id": project["id"], "name": project["name"],
            "description": project["description"], "strictMode": project["strictMode"],
            "superAdmin": project["superAdmin"],
        },
        "membership": {
            "resourceType": "ProjectMembership", "id": membership["id"],
            "identifier": membership["identifier"], "user": membership["user"],
            "profile": membership["profile"], "admin": membership["admin"],
        },
        "profile": profile,
        "config": {"resourceType": "UserConfiguration"},
        // The effective policy: every entry of the membership's policies with
        // parameters substituted, the admin rules and the login's scopes.
        "accessPolicy": caller.policy.to_access_policy(),
    });
    if let Some(user) = user {
        body["user"] = serde_json::json!({
            "resourceType": "User", "id": user["id"], "email": user["email"],
            "identifier": user["identifier"],
        });
        let enrolled = match reference_id(&membership["user"], "User") {
            Some(id) => state.store.mfa(id).await?.is_some_and(|row| row.enrolled),
            None => false,
        };
        body["security"] = serde_json::json!({ "mfaEnrolled": enrolled });
        // The user's sessions are shown only to a session of the user's own.
        if caller.require_own_session().is_ok() {
            body["security"]["sessions"] = Value::Array(sessions_of(&state, &caller.user).await?);
        }
    }
    strip_nulls(&mut body);
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body))
}

/// Absent values are left out, as Medplum's JSON leaves `undefined` out.
fn strip_nulls(value: &mut Value) {
    if let Value::Object(map) = value {
        map.retain(|_, v| !v.is_null());
        map.values_mut().for_each(strip_nulls);
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct RevokeBody {
    login_id: Option<String>,
}

/// Medplum's `POST /auth/revoke {loginId}`: a user ends one of their own sessions.
#[utoipa::path(post, path = "/auth/revoke", request_body = RevokeBody, responses(JsonOk))]
async fn revoke_session(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    caller.require_own_session()?;
    let body: RevokeBody = json_body(&req, payload).await?;
    let not_found = || Error::NotFound("No such session of yours".into());
    let login_id = body
        .login_id
        .as_deref()
        .and_then(parse_id)
        .ok_or_else(|| Error::BadRequest("loginId is required".into()))?;
    let login = read_live(&state, Tenant::AllProjects, "Login", login_id)
        .await?
        .ok_or_else(not_found)?;
    if login["user"]["reference"].as_str() != Some(caller.user.as_str()) {
        return Err(not_found());
    }
    let tx = state.store.begin().await?;
    revoke_login(&state, &tx, login_id).await?;
    tx.commit().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"ok": true})))
}

#[derive(Deserialize, utoipa::ToSchema)]
struct MfaBody {
    login: Option<String>,
    token: Option<String>,
}

impl MfaBody {
    fn token(&self) -> Result<&str> {
        self.token
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| {
                Error::BadRequest("token (the code from the authenticator app) is required".into())
            })
    }

    fn login(&self) -> Result<&str> {
        self.login
            .as_deref()
            .ok_or_else(|| Error::BadRequest("login is required".into()))
    }
}

/// The signed-in user's id and email; second factors belong to users
/// signed in themselves, not to clients or minted tokens.
async fn own_user(state: &AppState, caller: &Caller) -> Result<(uuid::Uuid, String)> {
    caller.require_own_session()?;
    let id = caller
        .user
        .strip_prefix("User/")
        .and_then(parse_id)
        .ok_or_else(|| Error::Forbidden("Only a user has a second factor".into()))?;
    let user = read_live(state, Tenant::AllProjects, "User", id)
        .await?
        .ok_or_else(|| Error::Unauthorized("The signed-in user no longer exists".into()))?;
    Ok((id, user["email"].as_str().unwrap_or_default().to_string()))
}

/// Medplum's `GET /auth/mfa/status`: enrolled, or the key to enrol.
#[utoipa::path(get, path = "/auth/mfa/status", responses(JsonOk))]
async fn mfa_status(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse> {
    let (id, email) = own_user(&state, &caller).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(mfa::status(&state, id, &email).await?))
}

/// `POST /auth/mfa/enroll {token}`: the answer lists the recovery codes, once.
#[utoipa::path(post, path = "/auth/mfa/enroll", request_body = MfaBody, responses(JsonOk))]
async fn mfa_enroll(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let (id, _) = own_user(&state, &caller).await?;
    let body: MfaBody = json_body(&req, payload).await?;
    let codes = mfa::enrol(&state, id, body.token()?).await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({"enrolled": true, "recoveryCodes": codes})))
}

/// `POST /auth/mfa/disable {token}`: a current code (or a recovery code) turns it off.
#[utoipa::path(post, path = "/auth/mfa/disable", request_body = MfaBody, responses(JsonOk))]
async fn mfa_disable(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let (id, _) = own_user(&state, &caller).await?;
    let body: MfaBody = json_body(&req, payload).await?;
    if !mfa::disable(&state, id, body.token()?).await? {
        return Err(Error::BadRequest("Invalid code".into()));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({"enrolled": false})))
}

/// Medplum's `POST /auth/mfa/verify {login, token}`: the second step of a
/// sign-in; answers as `/auth/login` would have without a second factor.
#[utoipa::path(post, path = "/auth/mfa/verify", security(()), request_body = MfaBody, responses(JsonOk))]
async fn mfa_verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body: MfaBody = json_body(&req, payload).await?;
    let (outcome, _) =
        verify_second_factor(&state, body.login()?, body.token()?, false, None, None).await?;
    outcome_response(&state, &outcome).await
}

/// `POST /auth/mfa/login-enroll {login, token}`: a member of a project that
/// requires MFA enrols during sign-in; the answer adds the recovery codes.
#[utoipa::path(post, path = "/auth/mfa/login-enroll", security(()), request_body = MfaBody, responses(JsonOk))]
async fn mfa_login_enroll(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body: MfaBody = json_body(&req, payload).await?;
    let (outcome, codes) =
        verify_second_factor(&state, body.login()?, body.token()?, true, None, None).await?;
    let names = project_names(&state, &outcome).await?;
    let mut answer = outcome.to_json(&names);
    answer["recoveryCodes"] = serde_json::json!(codes);
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(answer))
}
