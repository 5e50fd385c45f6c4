//! `/oauth2/authorize` (RFC 6749 §4.1, GET and POST) with fhirgate's own
//! sign-in page and membership chooser: server-rendered HTML, every value
//! escaped, no JavaScript, not frameable, not cached.
//!
//! A bad client or redirect URI is a plain 400 (nothing is redirected to an
//! unchecked address); every other error goes back to the client's
//! redirect URI as `error=…&state=…`.
//!
//! Every form the pages post carries an anti-forgery token: an HMAC of the
//! authorization request and a random cookie of the browser's own
//! (`SameSite=Lax`, so a cross-site POST goes without it). Another site can
//! neither read that cookie nor make the token, so it cannot sign a victim
//! into the attacker's account (login CSRF) or post a second step for them.

use super::{openapi::JsonObject, routes::Routes};
use std::collections::HashMap;

use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse};

use super::{
    auth::{project_names, request_context},
    read_body,
};
use crate::{
    app::AppState,
    auth::{
        client::{find_client, Client},
        login::{
            check_pkce, choose_membership, grant_scope, password_login, verify_second_factor,
            LoginContext, LoginOutcome, LoginRequest,
        },
        mfa::Enrolment,
        secrets::random_token,
    },
    error::{Error, Result},
};

pub fn routes(routes: &mut Routes) {
    routes
        .add(__path_authorize_get, authorize_get)
        .add(__path_authorize_post, authorize_post);
}

const FORM_LIMIT: usize = 16 * 1024;

/// The authorization request's parameters, carried through the pages.
const OAUTH_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    // fhirgate's: the project of a project-scoped user (a patient) signing in
    // through the console, whose sign-ins are not limited to one project.
    "project_id",
];

type Params = HashMap<String, String>;

fn params_from(pairs: Vec<(String, String)>) -> Result<Params> {
    let mut params = HashMap::new();
    for (name, value) in pairs {
        // RFC 6749 §3.1: parameters must not be repeated.
        if params.insert(name.clone(), value).is_some() {
            return Err(Error::BadRequest(format!("Parameter '{name}' is repeated")));
        }
    }
    Ok(params)
}

/// A checked authorization request.
struct Checked {
    client: Client,
    redirect_uri: String,
    /// Whether the request named the redirect URI (then the token request must too).
    named_redirect: bool,
}

/// Client and redirect URI first: these errors are never redirected.
async fn check_client(state: &AppState, params: &Params) -> Result<Checked> {
    let client_id = params
        .get("client_id")
        .ok_or_else(|| Error::BadRequest("client_id is required".into()))?;
    let client = find_client(state, client_id)
        .await?
        .ok_or_else(|| Error::BadRequest("Unknown or inactive client_id".into()))?;
    let (redirect_uri, named_redirect) = match params.get("redirect_uri") {
        Some(uri) if client.allows_redirect(uri) => (uri.clone(), true),
        Some(_) => {
            return Err(Error::BadRequest(
                "redirect_uri does not exactly match a redirect URI registered for this client".into(),
            ))
        }
        None => (
            client.only_redirect().ok_or_else(|| {
                Error::BadRequest(
                    "redirect_uri is required: this client has more than one (or no) registered redirect URI".into(),
                )
            })?,
            false,
        ),
    };
    Ok(Checked {
        client,
        redirect_uri,
        named_redirect,
    })
}

/// The rest of the request; an error here is an RFC 6749 §4.1.2.1 code.
fn check_request(
    checked: &Checked,
    params: &Params,
) -> std::result::Result<(), (&'static str, String)> {
    let get = |name: &str| params.get(name).map(String::as_str);
    match get("response_type") {
        Some("code") => {}
        Some(_) => {
            return Err((
                "unsupported_response_type",
                "response_type must be code".into(),
            ))
        }
        None => return Err(("invalid_request", "response_type is required".into())),
    }
    grant_scope(get("scope").unwrap_or_default(), Some(&checked.client))
        .map_err(|e| ("invalid_scope", e.to_string()))?;
    check_pkce(
        Some(&checked.client),
        get("code_challenge"),
        get("code_challenge_method"),
    )
    .map_err(|e| ("invalid_request", e.to_string()))?;
    Ok(())
}

#[utoipa::path(get, path = "/oauth2/authorize", security(()), responses((status = 200, description = "The sign-in page", content_type = "text/html"), (status = 302, description = "Back to the redirect URI with `code` and `state`, or an `error`")))]
async fn authorize_get(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse> {
    let pairs = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| Error::BadRequest(format!("The query string is not valid: {e}")))?;
    let params = params_from(pairs)?;
    let checked = check_client(&state, &params).await?;
    if let Err((error, description)) = check_request(&checked, &params) {
        return Ok(redirect_error(&checked, &params, error, &description));
    }
    let form = Form::new(&state, &req, &params);
    Ok(sign_in_page(&params, &checked, &form, None, StatusCode::OK))
}

#[utoipa::path(post, path = "/oauth2/authorize", security(()), request_body(content = JsonObject, content_type = "application/x-www-form-urlencoded", description = "The authorization request's parameters with the sign-in form's"), responses((status = 200, description = "The sign-in page again, or the membership choice", content_type = "text/html"), (status = 302, description = "Back to the redirect URI with `code` and `state`, or an `error`")))]
async fn authorize_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse> {
    let body = read_body(&req, payload, FORM_LIMIT).await?;
    let pairs = serde_urlencoded::from_bytes(&body)
        .map_err(|_| Error::BadRequest("The form body is not valid".into()))?;
    let params = params_from(pairs)?;
    let checked = check_client(&state, &params).await?;
    if let Err((error, description)) = check_request(&checked, &params) {
        return Ok(redirect_error(&checked, &params, error, &description));
    }
    let form = Form::new(&state, &req, &params);
    let posted = ["email", "login"]
        .iter()
        .any(|name| params.contains_key(*name));
    if !posted {
        // An authorization request sent as a form: show the page.
        return Ok(sign_in_page(&params, &checked, &form, None, StatusCode::OK));
    }
    if !form_token_valid(&state, &req, &params) {
        return Ok(sign_in_page(
            &params,
            &checked,
            &form,
            Some("This sign-in form has expired or did not come from this server; please sign in again"),
            StatusCode::FORBIDDEN,
        ));
    }
    let redirect = checked
        .named_redirect
        .then_some(checked.redirect_uri.as_str());
    let get = |name: &str| params.get(name).cloned();
    let mut recovery_codes = None;
    let outcome = match (
        params.get("login"),
        params.get("membership"),
        params.get("mfa_code"),
    ) {
        (Some(login), Some(membership), _) => {
            choose_membership(&state, login, membership, Some(&checked.client), redirect).await
        }
        (Some(login), None, Some(code)) => {
            let enrol = params.contains_key("mfa_enrol");
            match verify_second_factor(&state, login, code, enrol, Some(&checked.client), redirect)
                .await
            {
                Ok((outcome, codes)) => {
                    recovery_codes = codes;
                    Ok(outcome)
                }
                Err(e @ (Error::BadRequest(_) | Error::TooManyRequests { .. })) => {
                    let enrolment = enrol.then(|| Enrolment {
                        uri: get("mfa_uri").unwrap_or_default(),
                        qr_code: String::new(),
                    });
                    let status = actix_web::ResponseError::status_code(&e);
                    return Ok(second_factor_page(
                        &params,
                        &checked,
                        &form,
                        login,
                        enrolment.as_ref(),
                        Some(&e.to_string()),
                        status,
                    ));
                }
                Err(e) => Err(e),
            }
        }
        (Some(_), None, None) => Err(Error::BadRequest(
            "Choose a project, or enter the code from the authenticator app".into(),
        )),
        _ => {
            let request = LoginRequest {
                email: get("email").unwrap_or_default(),
                password: get("password").unwrap_or_default(),
                project_id: get("project_id"),
                client_id: Some(checked.client.id.to_string()),
                scope: get("scope").unwrap_or_default(),
                context: LoginContext {
                    nonce: get("nonce"),
                    code_challenge: get("code_challenge"),
                    code_challenge_method: get("code_challenge_method"),
                    redirect_uri: redirect.map(str::to_string),
                    remember: params
                        .get("remember")
                        .is_some_and(|v| v == "on" || v == "true"),
                    ..request_context(&req)
                },
            };
            password_login(&state, &request).await
        }
    };
    match outcome {
        Ok(LoginOutcome::Code { code, .. }) => {
            let mut pairs = vec![("code", code.as_str())];
            if let Some(s) = params.get("state") {
                pairs.push(("state", s));
            }
            let target = redirect_target(&checked.redirect_uri, &pairs);
            Ok(match recovery_codes {
                // Shown once, before the user leaves for the application.
                Some(codes) => recovery_codes_page(&checked, &codes, &target),
                None => redirect_to(&target),
            })
        }
        Ok(LoginOutcome::SecondFactor {
            login_id,
            enrolment,
        }) => Ok(second_factor_page(
            &params,
            &checked,
            &form,
            &login_id.to_string(),
            enrolment.as_ref(),
            None,
            StatusCode::OK,
        )),
        Ok(choose @ LoginOutcome::Choose { .. }) => {
            let names = project_names(&state, &choose).await?;
            let LoginOutcome::Choose {
                login_id,
                memberships,
            } = choose
            else {
                unreachable!("matched above")
            };
            let choices: Vec<(String, String)> = memberships
                .iter()
                .map(|m| {
                    let project = names
                        .iter()
                        .find(|(id, _)| *id == m.project_id)
                        .map_or_else(|| m.project_id.to_string(), |(_, n)| n.clone());
                    let profile = m.content["profile"]["display"]
                        .as_str()
                        .or(m.content["profile"]["reference"].as_str())
                        .unwrap_or_default();
                    (m.id.to_string(), format!("{project}: {profile}"))
                })
                .collect();
            Ok(chooser_page(
                &params,
                &checked,
                &form,
                &login_id.to_string(),
                &choices,
                recovery_codes.as_deref(),
            ))
        }
        // Wrong credentials or a lockout: the page again, with the reason.
        Err(e @ (Error::BadRequest(_) | Error::TooManyRequests { .. })) => {
            let status = actix_web::ResponseError::status_code(&e);
            Ok(sign_in_page(
                &params,
                &checked,
                &form,
                Some(&e.to_string()),
                status,
            ))
        }
        Err(e) => Err(e),
    }
}

/// The browser's anti-forgery cookie, and the token the page's forms carry.
struct Form {
    cookie: String,
    /// Mark the cookie `Secure` (the server's public URL is https).
    secure: bool,
    /// Set the cookie with this response (the browser had none).
    new_cookie: bool,
    token: String,
}

const FORM_COOKIE: &str = "fhirgate_authorize";
const FORM_TOKEN_FIELD: &str = "form_token";
/// How long a page's form may be posted.
const FORM_TOKEN_SECONDS: i64 = 3600;

impl Form {
    fn new(state: &AppState, req: &HttpRequest, params: &Params) -> Form {
        let (cookie, new_cookie) = match form_cookie(req) {
            Some(cookie) => (cookie, false),
            None => (random_token(32), true),
        };
        let issued = chrono::Utc::now().timestamp();
        let mac = state.keys.form_mac(&form_message(&cookie, issued, params));
        Form {
            cookie,
            secure: state.base_url.starts_with("https://"),
            new_cookie,
            token: format!("{issued}.{mac}"),
        }
    }

    fn hidden_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"{FORM_TOKEN_FIELD}\" value=\"{}\">\n",
            escape(&self.token)
        )
    }
}

/// The anti-forgery cookie the request carries, if it looks like one of ours.
fn form_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| {
            *name == FORM_COOKIE
                && value.len() == 43
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|(_, value)| value.to_string())
}

/// What a form token signs: when it was issued, the browser's cookie and
/// the authorization request.
fn form_message(cookie: &str, issued: i64, params: &Params) -> Vec<u8> {
    let mut message = format!("{issued}\n{cookie}\n");
    for name in OAUTH_PARAMS {
        message.push_str(name);
        message.push('=');
        message.push_str(params.get(*name).map_or("", String::as_str));
        message.push('\n');
    }
    message.into_bytes()
}

/// Whether the posted form came from a page this server gave this browser
/// for this authorization request, within the hour.
fn form_token_valid(state: &AppState, req: &HttpRequest, params: &Params) -> bool {
    let (Some(cookie), Some(token)) = (form_cookie(req), params.get(FORM_TOKEN_FIELD)) else {
        return false;
    };
    let Some((issued, mac)) = token.split_once('.') else {
        return false;
    };
    let Ok(issued) = issued.parse::<i64>() else {
        return false;
    };
    let age = chrono::Utc::now().timestamp() - issued;
    (0..=FORM_TOKEN_SECONDS).contains(&age)
        && state
            .keys
            .form_mac_matches(&form_message(&cookie, issued, params), mac)
}

/// `uri` with `pairs` added to its query (RFC 6749 §4.1.2 keeps the existing query).
fn redirect_target(uri: &str, pairs: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{query}")
}

fn redirect_to(target: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", target))
        .insert_header(("Cache-Control", "no-store"))
        .finish()
}

fn redirect_error(
    checked: &Checked,
    params: &Params,
    error: &str,
    description: &str,
) -> HttpResponse {
    let mut pairs = vec![("error", error), ("error_description", description)];
    if let Some(s) = params.get("state") {
        pairs.push(("state", s));
    }
    redirect_to(&redirect_target(&checked.redirect_uri, &pairs))
}

/// `scheme://host[:port]` of a URL, for the page's `form-action`.
fn origin(uri: &str) -> Option<&str> {
    let scheme_end = uri.find("://")? + 3;
    let end = uri[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(uri.len(), |i| scheme_end + i);
    Some(&uri[..end])
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The authorization request and the form's anti-forgery token, as hidden fields.
fn hidden_fields(params: &Params, form: &Form) -> String {
    let request: String = OAUTH_PARAMS
        .iter()
        .filter_map(|name| {
            params.get(*name).map(|value| {
                format!(
                    "<input type=\"hidden\" name=\"{name}\" value=\"{}\">\n",
                    escape(value)
                )
            })
        })
        .collect();
    request + &form.hidden_field()
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;line-height:1.5}\
label{display:block;margin-top:1rem;font-weight:600}input[type=email],input[type=password],input[type=text]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}\
button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem}.error{color:#a00;border:1px solid #a00;padding:.5rem}fieldset{border:none;padding:0}\
.codes{font-family:monospace;font-size:1.1rem}";

fn page(
    checked: &Checked,
    form: Option<&Form>,
    title: &str,
    body: &str,
    status: StatusCode,
) -> HttpResponse {
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self' {}; frame-ancestors 'none'; base-uri 'none'",
        origin(&checked.redirect_uri).unwrap_or("")
    );
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} – fhirgate</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title)
    );
    let mut response = HttpResponse::build(status);
    if let Some(form) = form.filter(|f| f.new_cookie) {
        let secure = if form.secure { "; Secure" } else { "" };
        response.insert_header((
            "Set-Cookie",
            format!(
                "{FORM_COOKIE}={}; Path=/oauth2/; HttpOnly; SameSite=Lax{secure}",
                form.cookie
            ),
        ));
    }
    response
        .content_type("text/html; charset=utf-8")
        .insert_header(("Content-Security-Policy", csp))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cache-Control", "no-store"))
        .body(html)
}

fn client_name(checked: &Checked) -> String {
    checked.client.content["name"]
        .as_str()
        .unwrap_or("an application")
        .to_string()
}

fn error_notice(error: Option<&str>) -> String {
    error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>\n", escape(e)))
        .unwrap_or_default()
}

fn sign_in_page(
    params: &Params,
    checked: &Checked,
    form: &Form,
    error: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let email = params.get("email").map(|e| escape(e)).unwrap_or_default();
    let body = format!(
        "<h1>Sign in</h1>\n<p>to continue to {client}</p>\n{error}\
         <form method=\"post\" action=\"authorize\">\n{hidden}\
         <label for=\"email\">Email</label>\n\
         <input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"username\" required value=\"{email}\">\n\
         <label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\n\
         <label><input name=\"remember\" type=\"checkbox\"> Keep me signed in</label>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n",
        client = escape(&client_name(checked)),
        error = error_notice(error),
        hidden = hidden_fields(params, form),
    );
    page(checked, Some(form), "Sign in", &body, status)
}

/// The second step: the authenticator app's code (or a recovery code); with
/// `enrolment`, the key to add to the app first.
fn second_factor_page(
    params: &Params,
    checked: &Checked,
    form: &Form,
    login_id: &str,
    enrolment: Option<&Enrolment>,
    error: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    let (title, intro, enrol_fields) = match enrolment {
        Some(enrolment) => {
            let qr = crate::auth::totp::qr_data_url(&enrolment.uri).unwrap_or_default();
            (
                "Set up two-step sign-in",
                format!(
                    "<p>This project requires a second step at sign-in. Scan this code with an \
                     authenticator app, then enter the six digits it shows.</p>\n\
                     <img src=\"{}\" alt=\"QR code of the key\" width=\"200\" height=\"200\">\n\
                     <p>Or enter this key by hand: <code>{}</code></p>\n",
                    escape(&qr),
                    escape(key_of(&enrolment.uri)),
                ),
                format!(
                    "<input type=\"hidden\" name=\"mfa_enrol\" value=\"1\">\n\
                     <input type=\"hidden\" name=\"mfa_uri\" value=\"{}\">\n",
                    escape(&enrolment.uri)
                ),
            )
        }
        None => (
            "Two-step sign-in",
            "<p>Enter the six digits your authenticator app shows, or one of your recovery codes.</p>\n"
                .to_string(),
            String::new(),
        ),
    };
    let body = format!(
        "<h1>{title}</h1>\n{intro}{error}\
         <form method=\"post\" action=\"authorize\">\n{hidden}{enrol_fields}\
         <input type=\"hidden\" name=\"login\" value=\"{login}\">\n\
         <label for=\"mfa_code\">Code</label>\n\
         <input id=\"mfa_code\" name=\"mfa_code\" type=\"text\" inputmode=\"numeric\" autocomplete=\"one-time-code\" required>\n\
         <button type=\"submit\">Continue</button>\n</form>\n",
        error = error_notice(error),
        hidden = hidden_fields(params, form),
        login = escape(login_id),
    );
    page(checked, Some(form), title, &body, status)
}

/// The `secret` of an `otpauth://` URI.
fn key_of(uri: &str) -> &str {
    uri.split_once("secret=")
        .map_or("", |(_, rest)| rest.split('&').next().unwrap_or(""))
}

fn recovery_codes_list(codes: &[String]) -> String {
    let items: String = codes
        .iter()
        .map(|c| format!("<li>{}</li>\n", escape(c)))
        .collect();
    format!(
        "<h2>Your recovery codes</h2>\n<p>Each signs you in once if you lose your \
         authenticator app. Keep them somewhere safe: they are shown only now.</p>\n\
         <ul class=\"codes\">\n{items}</ul>\n"
    )
}

/// After enrolling during sign-in: the recovery codes, then on to the application.
fn recovery_codes_page(checked: &Checked, codes: &[String], target: &str) -> HttpResponse {
    let body = format!(
        "<h1>Two-step sign-in is on</h1>\n{list}<p><a href=\"{target}\">Continue to {client}</a></p>\n",
        list = recovery_codes_list(codes),
        target = escape(target),
        client = escape(&client_name(checked)),
    );
    page(
        checked,
        None,
        "Two-step sign-in is on",
        &body,
        StatusCode::OK,
    )
}

fn chooser_page(
    params: &Params,
    checked: &Checked,
    form: &Form,
    login_id: &str,
    choices: &[(String, String)],
    recovery_codes: Option<&[String]>,
) -> HttpResponse {
    let options: String = choices
        .iter()
        .enumerate()
        .map(|(i, (id, label))| {
            format!(
                "<div><input type=\"radio\" id=\"m{i}\" name=\"membership\" value=\"{}\" required{}>\
                 <label for=\"m{i}\" style=\"display:inline\">{}</label></div>\n",
                escape(id),
                if i == 0 { " checked" } else { "" },
                escape(label)
            )
        })
        .collect();
    let body = format!(
        "{codes}<h1>Choose a project</h1>\n<p>Which profile should {client} use?</p>\n\
         <form method=\"post\" action=\"authorize\">\n{hidden}\
         <input type=\"hidden\" name=\"login\" value=\"{login}\">\n\
         <fieldset>\n<legend>Project and profile</legend>\n{options}</fieldset>\n\
         <button type=\"submit\">Continue</button>\n</form>\n",
        codes = recovery_codes.map(recovery_codes_list).unwrap_or_default(),
        client = escape(&client_name(checked)),
        hidden = hidden_fields(params, form),
        login = escape(login_id),
    );
    page(
        checked,
        Some(form),
        "Choose a project",
        &body,
        StatusCode::OK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_builds_redirects() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        assert_eq!(
            redirect_target(
                "https://a.example/cb?x=1",
                &[("code", "a b"), ("state", "s&t")]
            ),
            "https://a.example/cb?x=1&code=a+b&state=s%26t"
        );
        assert_eq!(
            origin("https://a.example:8443/cb?x"),
            Some("https://a.example:8443")
        );
        assert_eq!(origin("http://localhost"), Some("http://localhost"));
    }
}
