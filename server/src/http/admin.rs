//! `/admin/projects/*` and `ClientApplication/$rotate-secret`: project
//! administration, at Medplum's paths. Logic lives in `crate::admin`.

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

pub fn routes(cfg: &mut web::ServiceConfig) {
    // One scope, so that other requests are not matched against each of
    // these patterns' regular expressions in turn (actix tries routes in
    // order: routing fell from 11.8% to 10.4% of a FHIR read's server CPU).
    cfg.service(
        web::scope("/admin/projects")
            .route("/setpassword", web::post().to(set_password))
            .route("/{project}", web::get().to(project))
            .route("/{project}/invite", web::post().to(invite))
            .route("/{project}/client", web::post().to(client))
            .route("/{project}/bot", web::post().to(bot))
            .service(
                web::resource("/{project}/members/{membership}")
                    .get(read_member)
                    .post(update_member)
                    .patch(patch_member)
                    .delete(delete_member),
            )
            .service(
                web::resource("/{project}/members/{membership}/tokens")
                    .get(list_tokens)
                    .post(mint_token),
            )
            .route(
                "/{project}/members/{membership}/tokens/{login}",
                web::delete().to(revoke_token),
            ),
    )
    .route(
        "/fhir/R4/ClientApplication/{id}/$rotate-secret",
        web::post().to(rotate_secret),
    );
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

async fn rotate_secret(
    caller: Caller,
    state: Data,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let client = clients::rotate_secret(&state, &caller, &path).await?;
    Ok(json(StatusCode::OK, &client.to_string()))
}

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
