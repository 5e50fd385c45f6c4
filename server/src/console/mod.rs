//! The administration console: hand-written HTML, CSS and JavaScript modules
//! embedded in the binary and served under `/console/`, with the pages the
//! lifecycle emails link to (`/setpassword/…`, `/verifyemail/…`, `/signin`).
//! The console is a client of the public API only: it signs people in through
//! `/oauth2/authorize` as the ClientApplication that [`client::ensure`] keeps.

pub mod client;

use std::sync::OnceLock;

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::{
    app::AppState,
    error::{Error, Result},
    http::authorize::escape,
    http::routes::RouteTemplate,
};

pub use client::ConsoleClient;

/// Scripts and styles come only from this server, nothing inline, no `eval`,
/// never framed. `data:` images are the MFA enrolment QR code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The page every console path answers with; the script routes on the path.
const INDEX: &str = include_str!("assets/index.html");

/// `(name, content type, bytes)` of every asset, at `/console/assets/<name>`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    ("app.js", JS, include_str!("assets/app.js")),
    ("api.js", JS, include_str!("assets/api.js")),
    ("dom.js", JS, include_str!("assets/dom.js")),
    (
        "pages/common.js",
        JS,
        include_str!("assets/pages/common.js"),
    ),
    ("pages/links.js", JS, include_str!("assets/pages/links.js")),
    (
        "pages/project.js",
        JS,
        include_str!("assets/pages/project.js"),
    ),
    (
        "pages/members.js",
        JS,
        include_str!("assets/pages/members.js"),
    ),
    (
        "pages/invite.js",
        JS,
        include_str!("assets/pages/invite.js"),
    ),
    (
        "pages/clients.js",
        JS,
        include_str!("assets/pages/clients.js"),
    ),
    (
        "pages/policies.js",
        JS,
        include_str!("assets/pages/policies.js"),
    ),
    (
        "pages/resources.js",
        JS,
        include_str!("assets/pages/resources.js"),
    ),
    ("pages/audit.js", JS, include_str!("assets/pages/audit.js")),
    (
        "pages/account.js",
        JS,
        include_str!("assets/pages/account.js"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/", root))
        .service(get("/console", to_console))
        .service(get("/console/assets/{name:.*}", asset))
        .service(get("/console/{tail:.*}", page))
        .service(get("/setpassword/{id}/{secret}", page))
        .service(get("/verifyemail/{id}/{secret}", page))
        .service(get("/signin", page));
}

/// A GET route carrying its template for the request metrics.
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .app_data(RouteTemplate(path.to_string()))
        .route(web::get().to(handler))
}

/// `GET /`: a browser goes to the console; anything else finds nothing here.
async fn root(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let browser = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if !browser {
        return Err(Error::NotFound("Nothing here: GET /".into()));
    }
    Ok(see_other(&format!(
        "{}console/",
        base_path(&state.base_url)
    )))
}

async fn to_console(state: web::Data<AppState>) -> HttpResponse {
    see_other(&format!("{}console/", base_path(&state.base_url)))
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// The path of the public base URL (`/` unless a proxy serves fhirgate
/// under a prefix), where the page finds its assets.
fn base_path(base_url: &str) -> &str {
    base_url
        .find("://")
        .and_then(|scheme| base_url[scheme + 3..].find('/').map(|i| scheme + 3 + i))
        .map_or("/", |start| &base_url[start..])
}

async fn page(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let html = INDEX.replace("%BASE%", &escape(base_path(&state.base_url)));
    respond(&req, "text/html; charset=utf-8", html.into_bytes(), None)
}

async fn asset(req: HttpRequest, name: web::Path<String>) -> Result<HttpResponse> {
    let (content_type, body, etag) = find_asset(&name)
        .ok_or_else(|| Error::NotFound(format!("No console asset named '{name}'")))?;
    Ok(respond(
        &req,
        content_type,
        body.as_bytes().to_vec(),
        Some(etag),
    ))
}

/// An asset with its strong ETag (a digest of its bytes, computed once).
fn find_asset(name: &str) -> Option<(&'static str, &'static str, &'static str)> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|(_, _, body)| {
                let digest = Sha256::digest(body.as_bytes());
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    ASSETS
        .iter()
        .zip(etags)
        .find(|((asset, _, _), _)| *asset == name)
        .map(|((_, content_type, body), etag)| (*content_type, *body, etag.as_str()))
}

/// Every console response: the policy, no sniffing, no framing, no referrer
/// (the email link pages carry a secret in their URL). Assets are
/// revalidated by ETag, so a new binary's console is used at once.
fn respond(
    req: &HttpRequest,
    content_type: &str,
    body: Vec<u8>,
    etag: Option<&str>,
) -> HttpResponse {
    let unchanged = etag.is_some_and(|etag| {
        req.headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|given| given.split(',').any(|tag| tag.trim() == etag))
    });
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if let Some(etag) = etag {
        response.insert_header((header::ETAG, etag));
    }
    if unchanged {
        return response.finish();
    }
    response.content_type(content_type).body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_path_is_the_public_urls_path() {
        assert_eq!(base_path("http://127.0.0.1:8103/"), "/");
        assert_eq!(base_path("https://example.org/fhirgate/"), "/fhirgate/");
        assert_eq!(base_path("https://example.org"), "/");
    }

    #[test]
    fn every_asset_has_an_etag() {
        for (name, _, _) in ASSETS {
            assert!(find_asset(name).is_some(), "{name}");
        }
        assert!(find_asset("nope.js").is_none());
    }
}
