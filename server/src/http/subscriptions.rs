//! Subscription routes: the websocket binding token and the websocket
//! itself (`crate::subscriptions::websocket` speaks the protocol).

use super::{openapi::ParametersOk, routes::Routes};
use actix_web::{web, HttpRequest, HttpResponse};

use super::FHIR_JSON;
use crate::{app::AppState, auth::Caller, error::Result, subscriptions::websocket};

/// Before the FHIR routes, which would take the operation for a
/// compartment search.
pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_binding_token, binding_token)
        .add(__path_connect, connect);
}

#[utoipa::path(
    get,
    path = "/fhir/R4/Subscription/{id}/$get-ws-binding-token",
    responses(ParametersOk)
)]
async fn binding_token(
    caller: Caller,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let parameters = websocket::binding_token(&state, &caller, &path).await?;
    Ok(HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .body(parameters.to_string()))
}

/// The websocket: upgraded here, served on this worker thread.
#[utoipa::path(get, path = "/ws/subscriptions-r4", security(()), responses((status = 101, description = "A websocket: send `bind-with-token` with a token from `$get-ws-binding-token`; notifications are Bundles")))]
async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> std::result::Result<HttpResponse, actix_web::Error> {
    let (response, session, messages) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(websocket::serve(state, session, messages));
    Ok(response)
}
