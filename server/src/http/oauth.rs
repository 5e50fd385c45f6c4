//! OAuth 2.0 endpoints at Medplum's paths. Errors here use RFC 6749's
//! `{error, error_description}` shape, as OAuth clients expect.

use std::collections::HashMap;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};

use super::read_body;
use crate::{
    app::AppState,
    auth::token::{client_credentials, ClientCredentials},
    error::{Error, Result},
};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/oauth2/token", web::post().to(token))
        .route("/.well-known/jwks.json", web::get().to(jwks));
}

/// Token requests are small; a tight limit keeps this unauthenticated route cheap.
const TOKEN_BODY_LIMIT: usize = 16 * 1024;

async fn token(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
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
        return Err(Error::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The token request must be sent as application/x-www-form-urlencoded",
        ));
    }
    let body = read_body(&req, payload, TOKEN_BODY_LIMIT).await?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|_| {
        Error::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The form body is not valid",
        )
    })?;
    let mut form = HashMap::new();
    for (name, value) in pairs {
        // RFC 6749 §3.2: parameters must not be repeated.
        if form.insert(name.clone(), value).is_some() {
            return Err(Error::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("Parameter '{name}' is repeated"),
            ));
        }
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(Error::oauth(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                format!(
                "grant_type '{other}' is not supported; this server supports client_credentials"
            ),
            ))
        }
        None => {
            return Err(Error::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            ))
        }
    }
    let authorization = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credentials = ClientCredentials::from_request(authorization, &form)?;
    let remote = req.peer_addr().map(|a| a.ip().to_string());
    let response = client_credentials(
        &state,
        credentials,
        form.get("scope").map(String::as_str),
        remote,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(response))
}

async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "public, max-age=300"))
        .body(state.keys.jwks().to_string())
}
