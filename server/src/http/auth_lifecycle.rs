//! `/auth/*` routes of the user lifecycle: sign-up, password reset, links,
//! email verification and change, password change, personal tokens.

use super::{
    openapi::{JsonObject, JsonOk, OutcomeOk},
    routes::Routes,
};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::{informational, parse_resource, read_body, FHIR_JSON};
use crate::{
    admin::{
        account, field_issue,
        links::{self, MailRequest},
        tokens,
    },
    app::AppState,
    auth::{
        login::{LoginContext, LoginRequest},
        Caller,
    },
    error::{Error, Result},
    fhir::parse_id,
    store::lifecycle::RequestKind,
};

type Data = web::Data<AppState>;

pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_reset_password, reset_password)
        .add(__path_set_password, set_password)
        .add(__path_verify_email, verify_email)
        .add(__path_resend_verification, resend_verification)
        .add(__path_email_available, email_available)
        .add(__path_new_user, new_user)
        .add(__path_new_project, new_project)
        .add(__path_new_patient, new_patient)
        .add(__path_change_password, change_password)
        .add(__path_change_email, change_email)
        .add(__path_own_token, own_token);
}

/// These bodies hold a few short strings.
const BODY_LIMIT: usize = 16 * 1024;

async fn body(req: &HttpRequest, payload: web::Payload) -> Result<Value> {
    parse_resource(&read_body(req, payload, BODY_LIMIT).await?)
}

/// The named string fields, each required (one issue per missing field).
fn required<'a, const N: usize>(body: &'a Value, names: [&str; N]) -> Result<[&'a str; N]> {
    let mut issues = Vec::new();
    let values = names.map(|name| match body[name].as_str() {
        Some(value) if !value.is_empty() => value,
        _ => {
            issues.push(field_issue(name, format!("{name} is required")));
            ""
        }
    });
    if issues.is_empty() {
        Ok(values)
    } else {
        Err(Error::Invalid(issues))
    }
}

fn ok(message: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(informational(message).to_string())
}

/// `{email, projectId?}` of an anonymous request for mail.
fn mail_request(body: &Value) -> Result<MailRequest> {
    let [email] = required(body, ["email"])?;
    let project_id = match body["projectId"].as_str() {
        None => None,
        Some(id) => Some(parse_id(id).ok_or_else(|| {
            Error::Invalid(vec![field_issue(
                "projectId",
                "projectId must be a project id",
            )])
        })?),
    };
    Ok(MailRequest {
        email: email.to_string(),
        project_id,
    })
}

/// Always 200: whether the email has an account is not revealed.
#[utoipa::path(post, path = "/auth/resetpassword", security(()), request_body(content = JsonObject, description = "{email, projectId?}"), responses(OutcomeOk))]
async fn reset_password(
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let request = mail_request(&body(&req, payload).await?)?;
    links::spawn_mail_request(state.clone(), request, RequestKind::Reset);
    Ok(ok(
        "If the address belongs to an account, a reset link is on its way",
    ))
}

#[utoipa::path(post, path = "/auth/verifyemail/resend", security(()), request_body(content = JsonObject, description = "{email, projectId?}"), responses(OutcomeOk))]
async fn resend_verification(
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let request = mail_request(&body(&req, payload).await?)?;
    links::spawn_mail_request(state.clone(), request, RequestKind::VerifyEmail);
    Ok(ok(
        "If the address belongs to an account that is not verified yet, a verification link is on its way",
    ))
}

#[utoipa::path(post, path = "/auth/setpassword", security(()), request_body(content = JsonObject, description = "{id, secret, password}"), responses(OutcomeOk))]
async fn set_password(
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body = body(&req, payload).await?;
    let [id, secret, password] = required(&body, ["id", "secret", "password"])?;
    links::set_password(&state, id, secret, password).await?;
    Ok(ok("Password set; sign in with it"))
}

#[utoipa::path(post, path = "/auth/verifyemail", security(()), request_body(content = JsonObject, description = "{id, secret}"), responses(OutcomeOk))]
async fn verify_email(
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body = body(&req, payload).await?;
    let [id, secret] = required(&body, ["id", "secret"])?;
    links::verify_email(&state, id, secret).await?;
    Ok(ok("Email address verified"))
}

/// For sign-up forms. It tells whether an address is taken, so it sits under
/// `/auth/`, whose per-address rate limit bounds how fast anyone can probe.
#[utoipa::path(post, path = "/auth/emailavailable", security(()), request_body(content = JsonObject, description = "{email}"), responses(JsonOk))]
async fn email_available(
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let request = mail_request(&body(&req, payload).await?)?;
    let available = links::email_available(&state, &request).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "available": available })))
}

/// `POST /auth/newuser`: Medplum's sign-up; answers `{login}` for
/// `/auth/newproject` or `/auth/newpatient`.
#[utoipa::path(post, path = "/auth/newuser", security(()), request_body(content = JsonObject, description = "{firstName, lastName, email, password, projectId?, clientId?, scope?, remember?}"), responses(JsonOk))]
async fn new_user(state: Data, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    account::check_registration_open(&state)?;
    let body = body(&req, payload).await?;
    let text = |name: &str| body[name].as_str().map(str::to_string);
    let request = LoginRequest {
        email: text("email").unwrap_or_default(),
        project_id: text("projectId"),
        client_id: text("clientId"),
        scope: text("scope").unwrap_or_else(|| "openid".into()),
        context: LoginContext {
            nonce: text("nonce"),
            code_challenge: text("codeChallenge"),
            code_challenge_method: text("codeChallengeMethod"),
            remember: body["remember"] == Value::Bool(true),
            ..super::auth::request_context(&req)
        },
        ..LoginRequest::default()
    };
    let login = account::register(&state, &body, &request).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "login": login })))
}

#[utoipa::path(post, path = "/auth/newproject", security(()), request_body(content = JsonObject, description = "{login, projectName}"), responses(JsonOk))]
async fn new_project(state: Data, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    account::check_registration_open(&state)?;
    let body = body(&req, payload).await?;
    let [login] = required(&body, ["login"])?;
    let name = body["projectName"].as_str().unwrap_or_default();
    let outcome = account::new_project(&state, login, name).await?;
    Ok(HttpResponse::Ok().json(outcome.to_json(&[])))
}

#[utoipa::path(post, path = "/auth/newpatient", security(()), request_body(content = JsonObject, description = "{login, projectId}"), responses(JsonOk))]
async fn new_patient(state: Data, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse> {
    account::check_registration_open(&state)?;
    let body = body(&req, payload).await?;
    let [login, project] = required(&body, ["login", "projectId"])?;
    let outcome = account::new_patient(&state, login, project).await?;
    Ok(HttpResponse::Ok().json(outcome.to_json(&[])))
}

#[utoipa::path(post, path = "/auth/changepassword", request_body(content = JsonObject, description = "{oldPassword, newPassword}"), responses(OutcomeOk))]
async fn change_password(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    account::change_password(&state, &caller, &body(&req, payload).await?).await?;
    Ok(ok("Password changed; your other sessions are signed out"))
}

#[utoipa::path(post, path = "/auth/changeemail", request_body(content = JsonObject, description = "{email, password}"), responses(OutcomeOk))]
async fn change_email(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    account::change_email(&state, &caller, &body(&req, payload).await?).await?;
    Ok(ok(
        "A verification link was sent to the new address; the change takes effect when it is followed",
    ))
}

/// A personal access token for the caller's own membership.
#[utoipa::path(post, path = "/auth/tokens", request_body(content = JsonObject, description = "{scope?, lifetime?}"), responses(JsonOk))]
async fn own_token(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body = body(&req, payload).await?;
    let membership = account::own_membership(&state, &caller).await?;
    let token = tokens::mint(&state, &caller, &membership, &body).await?;
    Ok(super::admin::token_response(token))
}
