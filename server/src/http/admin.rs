//! `/admin/projects/*` and `ClientApplication/$rotate-secret`: project
//! administration, at Medplum's paths. Logic lives in `crate::admin`.

use super::{
    openapi::{JsonObject, JsonOk, OutcomeOk, Resource, ResourceCreated, ResourceOk},
    routes::Routes,
};
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::{informational, parse_json, parse_resource, read_body, FHIR_JSON};
use crate::{
    admin::{admin_project, clients, invite, members, tokens},
    app::AppState,
    auth::Caller,
    error::Result,
};

type Data = web::Data<AppState>;

pub fn routes(routes: &mut Routes) {
    // One scope, so that other requests are not matched against each of
    // these patterns' regular expressions in turn (actix tries routes in
    // order: routing fell from 11.8% to 10.4% of a FHIR read's server CPU).
    routes.scope("/admin/projects", |routes| {
        routes
            .add(__path_set_password, set_password)
            .add(__path_project, project)
            .add(__path_invite, invite)
            .add(__path_client, client)
            .add(__path_bot, bot)
            .add(__path_read_member, read_member)
            .add(__path_update_member, update_member)
            .add(__path_patch_member, patch_member)
            .add(__path_delete_member, delete_member)
            .add(__path_list_tokens, list_tokens)
            .add(__path_mint_token, mint_token)
            .add(__path_revoke_token, revoke_token);
    });
    routes.add(__path_rotate_secret, rotate_secret);
}

/// Admin requests are small JSON objects.
const ADMIN_BODY_LIMIT: usize = 64 * 1024;

async fn body(req: &HttpRequest, payload: web::Payload) -> Result<Value> {
    parse_resource(&read_body(req, payload, ADMIN_BODY_LIMIT).await?)
}

fn json(status: StatusCode, body: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .body(body.to_string())
}

fn ok_outcome(message: &str) -> HttpResponse {
    json(StatusCode::OK, &informational(message).to_string())
}

#[utoipa::path(get, path = "/admin/projects/{project}", responses(JsonOk))]
async fn project(caller: Caller, state: Data, path: web::Path<String>) -> Result<HttpResponse> {
    let project = admin_project(&state, &caller, &path).await?;
    let mut summary = serde_json::Map::new();
    for field in [
        "resourceType",
        "id",
        "name",
        "description",
        "owner",
        "features",
        "strictMode",
    ] {
        if !project.resource[field].is_null() {
            summary.insert(field.into(), project.resource[field].clone());
        }
    }
    let body = serde_json::json!({ "project": summary });
    Ok(json(StatusCode::OK, &body.to_string()))
}

#[utoipa::path(post, path = "/admin/projects/{project}/invite", request_body(content = JsonObject, description = "Medplum's invite: the profile to create (resourceType, firstName, lastName, email) and its membership"), responses(JsonOk))]
async fn invite(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let project = admin_project(&state, &caller, &path).await?;
    let request = invite::InviteRequest::parse(&body(&req, payload).await?, project.id)?;
    let invited = invite::invite(&state, &caller, &project, request).await?;
    let mut response = json(StatusCode::OK, &invited.membership);
    if let Some(problem) = invited.email_problem {
        // The user and membership exist; the admin should know the mail did not go.
        let warning = format!(
            "299 fhirgate \"The invitation email could not be sent ({}); the user and membership were created\"",
            problem.replace(['"', '\r', '\n'], " ")
        );
        if let Ok(value) = warning.parse() {
            response
                .headers_mut()
                .insert(actix_web::http::header::WARNING, value);
        }
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/admin/projects/{project}/members/{membership}",
    responses(ResourceOk)
)]
async fn read_member(
    caller: Caller,
    state: Data,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (project, membership) = path.into_inner();
    let project = admin_project(&state, &caller, &project).await?;
    let version = members::read(&state, &project, &membership).await?;
    Ok(json(
        StatusCode::OK,
        version.content.as_deref().unwrap_or_default(),
    ))
}

/// `POST /admin/projects/{p}/members/{m}` with a whole membership.
#[utoipa::path(post, path = "/admin/projects/{project}/members/{membership}", request_body(content = Resource, content_type = "application/fhir+json"), responses(ResourceOk))]
async fn update_member(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let change = members::MembershipChange::Replace(body(&req, payload).await?);
    change_member(&caller, &state, path, change).await
}

/// `PATCH /admin/projects/{p}/members/{m}` with a JSON Patch.
#[utoipa::path(patch, path = "/admin/projects/{project}/members/{membership}", request_body(content = Vec<JsonObject>, content_type = "application/json-patch+json"), responses(ResourceOk))]
async fn patch_member(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let operations = crate::fhir::patch::PatchDocument::parse(
        parse_json(&read_body(&req, payload, ADMIN_BODY_LIMIT).await?)?,
        state.config.limits.max_patch_operations,
    )?;
    let change = members::MembershipChange::Patch(operations);
    change_member(&caller, &state, path, change).await
}

async fn change_member(
    caller: &Caller,
    state: &Data,
    path: web::Path<(String, String)>,
    change: members::MembershipChange,
) -> Result<HttpResponse> {
    let (project, membership) = path.into_inner();
    let project = admin_project(state, caller, &project).await?;
    let version = members::update(state, caller, &project, &membership, change).await?;
    Ok(json(
        StatusCode::OK,
        version.content.as_deref().unwrap_or_default(),
    ))
}

#[utoipa::path(
    delete,
    path = "/admin/projects/{project}/members/{membership}",
    responses(OutcomeOk)
)]
async fn delete_member(
    caller: Caller,
    state: Data,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (project, membership) = path.into_inner();
    let project = admin_project(&state, &caller, &project).await?;
    members::delete(&state, &caller, &project, &membership).await?;
    Ok(ok_outcome(&format!(
        "Deleted ProjectMembership/{membership}; its logins are revoked"
    )))
}

#[utoipa::path(post, path = "/admin/projects/{project}/client", request_body(content = JsonObject, description = "{name, description?, redirectUris?, launchUri?, pkceOptional?}"), responses(ResourceCreated))]
async fn client(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let project = admin_project(&state, &caller, &path).await?;
    let client =
        clients::create_client(&state, &caller, &project, &body(&req, payload).await?).await?;
    Ok(json(StatusCode::CREATED, &client.to_string()))
}

#[utoipa::path(post, path = "/admin/projects/{project}/bot", request_body(content = JsonObject, description = "{name, description?, runtimeVersion?, timeout?}"), responses(ResourceCreated))]
async fn bot(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let project = admin_project(&state, &caller, &path).await?;
    let bot = clients::create_bot(&state, &caller, &project, &body(&req, payload).await?).await?;
    Ok(json(StatusCode::CREATED, &bot.to_string()))
}

#[utoipa::path(
    post,
    path = "/fhir/R4/ClientApplication/{id}/$rotate-secret",
    responses(ResourceOk)
)]
async fn rotate_secret(
    caller: Caller,
    state: Data,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let client = clients::rotate_secret(&state, &caller, &path).await?;
    Ok(json(StatusCode::OK, &client.to_string()))
}

#[utoipa::path(post, path = "/admin/projects/setpassword", request_body(content = JsonObject, description = "{email, password}"), responses(OutcomeOk))]
async fn set_password(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let project = admin_project(&state, &caller, &caller.project_id.to_string()).await?;
    clients::set_user_password(&state, &caller, &project, &body(&req, payload).await?).await?;
    Ok(ok_outcome("Password set"))
}

#[utoipa::path(post, path = "/admin/projects/{project}/members/{membership}/tokens", request_body(content = JsonObject, description = "{scope?, lifetime?}"), responses(JsonOk))]
async fn mint_token(
    caller: Caller,
    state: Data,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let (project, membership) = path.into_inner();
    let project = admin_project(&state, &caller, &project).await?;
    let body = body(&req, payload).await?;
    let membership = members::read(&state, &project, &membership).await?;
    tokens::check_mintable(&state, &caller, &project, &membership).await?;
    let token = tokens::mint(&state, &caller, &membership, &body).await?;
    Ok(token_response(token))
}

/// A new token: shown once, never cached.
pub fn token_response(token: Value) -> HttpResponse {
    HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .json(token)
}

#[utoipa::path(
    get,
    path = "/admin/projects/{project}/members/{membership}/tokens",
    responses(JsonOk)
)]
async fn list_tokens(
    caller: Caller,
    state: Data,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (project, membership) = path.into_inner();
    let project = admin_project(&state, &caller, &project).await?;
    let list = tokens::list(&state, &project, &membership).await?;
    Ok(HttpResponse::Ok().json(list))
}

#[utoipa::path(
    delete,
    path = "/admin/projects/{project}/members/{membership}/tokens/{login}",
    responses(OutcomeOk)
)]
async fn revoke_token(
    caller: Caller,
    state: Data,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse> {
    let (project, membership, login) = path.into_inner();
    let project = admin_project(&state, &caller, &project).await?;
    tokens::revoke(&state, &project, &membership, &login).await?;
    Ok(ok_outcome(&format!("Revoked Login/{login}")))
}
