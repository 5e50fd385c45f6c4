//! The browser flow at `/oauth2/authorize` (fhirgate's own sign-in page),
//! driven by the `oauth2` crate; userinfo, introspection, revocation,
//! logout, discovery, key rotation and `private_key_jwt`.

use std::collections::HashMap;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use fhirgate_tests::{assert_outcome, hidden_fields, status_json, Browser, TestApp, TEST_PASSWORD};
use oauth2::{
    basic::BasicClient, AuthType, AuthUrl, AuthorizationCode, ClientId, CsrfToken,
    PkceCodeChallenge, RedirectUrl, Scope, TokenResponse, TokenUrl,
};
use p256::{elliptic_curve::sec1::ToEncodedPoint, pkcs8::EncodePrivateKey};
use reqwest::Response;
use serde_json::{json, Value};

const REDIRECT: &str = fhirgate_tests::REDIRECT_URI;

use fhirgate_tests::oauth_http as http;

fn query_of(location: &str) -> HashMap<String, String> {
    let query = location.split_once('?').map_or("", |(_, q)| q);
    serde_urlencoded::from_str(query).unwrap()
}

fn location(response: &Response) -> String {
    response.headers()["location"].to_str().unwrap().to_string()
}

/// Opens the authorize URL in a new browser, posts the page's form with the
/// credentials; returns the browser and the response to the sign-in.
async fn sign_in(
    app: &TestApp,
    authorize_url: &str,
    email: &str,
    password: &str,
) -> (Browser, Response) {
    let mut browser = Browser::new(app);
    let page = browser.open(authorize_url).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let response = browser
        .submit(&html, &[("email", email), ("password", password)])
        .await;
    (browser, response)
}

#[tokio::test(flavor = "multi_thread")]
async fn browser_flow_with_the_sign_in_page_and_pkce() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    let client_id = app
        .public_client(&project.id, REDIRECT, json!({"name": "<b>Chart</b> & co"}))
        .await;
    let client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_auth_type(AuthType::RequestBody)
        .set_auth_uri(AuthUrl::new(app.url("oauth2/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(app.url("oauth2/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap());
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf) = client
        .authorize_url(CsrfToken::new_random)
        .add_scope(Scope::new("openid".into()))
        .add_scope(Scope::new("offline_access".into()))
        .add_extra_param("nonce", "abc123")
        .set_pkce_challenge(challenge)
        .url();

    // The page: accessible, escaped, without script, not frameable or cached.
    let page = app.http.get(url.as_str()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(headers["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    assert!(html.contains("<html lang=\"en\">"));
    assert!(html.contains("<label for=\"email\">") && html.contains("<label for=\"password\">"));
    assert!(
        html.contains("&lt;b&gt;Chart&lt;/b&gt; &amp; co"),
        "client name escaped"
    );
    assert!(!html.contains("<script"));

    let (_, response) = sign_in(&app, url.as_str(), &user.email, TEST_PASSWORD).await;
    assert_eq!(response.status(), 303);
    let target = location(&response);
    assert!(target.starts_with(REDIRECT), "{target}");
    let query = query_of(&target);
    assert_eq!(&query["state"], csrf.secret());
    let token = client
        .exchange_code(AuthorizationCode::new(query["code"].clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http())
        .await
        .expect("code exchange");
    assert!(token.refresh_token().is_some());

    // Wrong password: the page again, with the reason, and no redirect.
    let (_, response) = sign_in(&app, url.as_str(), &user.email, "wrong password here").await;
    assert_eq!(response.status(), 400);
    let html = response.text().await.unwrap();
    assert!(html.contains("Email or password is invalid"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chooser_picks_one_of_several_memberships() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    let root = app.super_admin().await;
    let patient = root
        .create(json!({"resourceType": "Patient", "meta": {"project": project.id}}))
        .await;
    let patient = format!("Patient/{}", patient["id"].as_str().unwrap());
    let second = app
        .add_membership(&root, &project.id, &user.id, &patient)
        .await;
    let client_id = app.public_client(&project.id, REDIRECT, json!({})).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let url = format!(
        "{}?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid%20launch%2Fpatient&state=xyz&code_challenge={}&code_challenge_method=S256",
        app.url("oauth2/authorize"),
        urlencode(REDIRECT),
        challenge.as_str()
    );
    let (mut browser, response) = sign_in(&app, &url, &user.email, TEST_PASSWORD).await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains("Choose a project"));
    assert!(html.contains(&second));
    let login = hidden_fields(&html)
        .into_iter()
        .find(|(name, _)| name == "login")
        .unwrap()
        .1;
    // The login cannot be finished through another client, even with a
    // valid form of that client's own page.
    let other = app.public_client(&project.id, REDIRECT, json!({})).await;
    let other_url = url.replace(&client_id, &other);
    let other_page = browser.open(&other_url).await.text().await.unwrap();
    let response = browser
        .submit(&other_page, &[("login", &login), ("membership", &second)])
        .await;
    assert_eq!(response.status(), 400);
    let response = browser.submit(&html, &[("membership", &second)]).await;
    assert_eq!(response.status(), 303);
    let query = query_of(&location(&response));
    assert_eq!(query["state"], "xyz");
    let redeem = |redirect_uri: Option<&'static str>| {
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", query["code"].clone()),
            ("code_verifier", verifier.secret().clone()),
            ("client_id", client_id.clone()),
        ];
        if let Some(uri) = redirect_uri {
            form.push(("redirect_uri", uri.to_string()));
        }
        let app = &app;
        async move {
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.token(&form).await
        }
    };
    // The code was issued for REDIRECT: another redirect_uri, or none, is refused.
    for wrong in [Some("https://app.example.com/other"), None] {
        let (status, body) = redeem(wrong).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{body}"
        );
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("redirect_uri"));
    }
    let (status, token) = redeem(Some(REDIRECT)).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["profile"]["reference"], patient);
    assert_eq!(token["patient"], patient.strip_prefix("Patient/").unwrap());
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)]).unwrap()[2..].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_errors_are_plain_for_bad_clients_and_redirected_otherwise() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let client_id = app.public_client(&project.id, REDIRECT, json!({})).await;
    let authorize = |query: String| {
        let url = format!("{}?{query}", app.url("oauth2/authorize"));
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    let redirect = urlencode(REDIRECT);
    // Unknown client, unregistered redirect URI: 400, never a redirect.
    let response = authorize(format!(
        "response_type=code&client_id=00000000-0000-4000-8000-000000000000&redirect_uri={redirect}"
    ))
    .await;
    assert_outcome(response, 400, "Unknown or inactive client_id").await;
    let response = authorize(format!(
        "response_type=code&client_id={client_id}&redirect_uri={}&scope=openid",
        urlencode("https://evil.example.com/callback")
    ))
    .await;
    assert_outcome(response, 400, "redirect_uri does not exactly match").await;
    let response = authorize(format!(
        "response_type=code&client_id={client_id}&redirect_uri={}&scope=openid",
        urlencode("https://app.example.com/callback/extra")
    ))
    .await;
    assert_eq!(response.status(), 400, "prefix matches are not matches");

    // Everything else goes back to the client with state.
    let cases = [
        ("response_type=token", "unsupported_response_type"),
        ("response_type=code&scope=openid", "invalid_request"), // no PKCE
        (
            "response_type=code&scope=openid&code_challenge=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa&code_challenge_method=plain",
            "invalid_request",
        ),
        (
            "response_type=code&scope=bad%22scope&code_challenge=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa&code_challenge_method=S256",
            "invalid_scope",
        ),
    ];
    for (query, error) in cases {
        let response = authorize(format!(
            "{query}&client_id={client_id}&redirect_uri={redirect}&state=s1"
        ))
        .await;
        assert_eq!(response.status(), 303, "{query}");
        let target = location(&response);
        assert!(target.starts_with(REDIRECT));
        let params = query_of(&target);
        assert_eq!(params["error"], error, "{query}");
        assert_eq!(params["state"], "s1");
    }
}

/// A user signed in through a public client: the token response.
async fn user_token(app: &TestApp, project_id: &str, scope: &str) -> (Value, String) {
    app.user(project_id, "doctor@example.com", "Practitioner", false)
        .await;
    let client_id = app.public_client(project_id, REDIRECT, json!({})).await;
    let (token, _) = user_token_again(app, &client_id, scope).await;
    (token, client_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn userinfo_introspection_revocation_and_logout() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let (token, client_id) =
        user_token(&app, &project.id, "openid profile email offline_access").await;
    let access = token["access_token"].as_str().unwrap();
    let (status, info) = status_json(app.bearer_get(access, "oauth2/userinfo").await).await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["email"], "doctor@example.com");
    assert_eq!(info["given_name"], "Test");
    assert_eq!(info["fhirUser"], token["profile"]["reference"]);

    // Introspection by the project's confidential client.
    let introspect = |token: String| {
        let app = &app;
        let credentials = project.admin.credentials.clone();
        async move {
            status_json(
                app.http
                    .post(app.url("oauth2/introspect"))
                    .basic_auth(&credentials.client_id, Some(&credentials.client_secret))
                    .form(&[("token", token)])
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let (status, active) = introspect(access.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["client_id"], client_id);
    assert_eq!(active["scope"], "openid profile email offline_access");
    let refresh = token["refresh_token"].as_str().unwrap().to_string();
    let (_, refresh_info) = introspect(refresh.clone()).await;
    assert_eq!(refresh_info["active"], true);
    assert_eq!(
        introspect("garbage".into()).await.1,
        json!({"active": false})
    );
    // A client of another project learns nothing.
    let other = app.project("other").await;
    let (_, foreign) = status_json(
        app.http
            .post(app.url("oauth2/introspect"))
            .basic_auth(
                &other.admin.credentials.client_id,
                Some(&other.admin.credentials.client_secret),
            )
            .form(&[("token", access)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(foreign, json!({"active": false}));
    // Without client authentication: 401.
    let (status, body) = status_json(
        app.http
            .post(app.url("oauth2/introspect"))
            .form(&[("token", access)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    // Revocation (RFC 7009) of the refresh token ends the whole sign-in.
    let response = app
        .http
        .post(app.url("oauth2/revoke"))
        .form(&[("token", refresh.as_str()), ("client_id", &client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(introspect(access.to_string()).await.1["active"], false);
    let response = app.bearer_get(access, "oauth2/userinfo").await;
    assert_outcome(response, 401, "revoked").await;

    // Logout revokes the caller's own login.
    let (second, _) = user_token_again(&app, &client_id, "openid").await;
    let bearer = second["access_token"].as_str().unwrap();
    let response = app
        .http
        .post(app.url("oauth2/logout"))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app.bearer_get(bearer, "auth/me").await;
    assert_outcome(response, 401, "revoked").await;
}

/// Signs the user in again through `client_id`: (token response, login id).
async fn user_token_again(app: &TestApp, client_id: &str, scope: &str) -> (Value, String) {
    let (verifier, challenge) = fhirgate_tests::pkce_pair();
    let (_, login) = app
        .login(
            &json!({"email": "doctor@example.com", "password": TEST_PASSWORD,
            "clientId": client_id, "scope": scope,
            "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    let (status, token) = app
        .redeem(login["code"].as_str().unwrap(), &verifier, Some(client_id))
        .await;
    assert_eq!(status, 200, "{token}");
    (token, login["login"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_me_lists_sessions_and_a_user_revokes_one() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let (first, client_id) = user_token(&app, &project.id, "openid").await;
    let (second, second_login) = user_token_again(&app, &client_id, "openid").await;
    let bearer = first["access_token"].as_str().unwrap();
    let (status, me) = status_json(app.bearer_get(bearer, "auth/me").await).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], "doctor@example.com");
    assert_eq!(me["project"]["id"], project.id);
    assert_eq!(me["project"]["name"], "clinic");
    assert_eq!(me["membership"]["profile"], first["profile"]);
    assert_eq!(me["profile"]["resourceType"], "Practitioner");
    assert_eq!(me["config"]["resourceType"], "UserConfiguration");
    // A member without a policy: every ordinary type, every interaction.
    assert_eq!(
        me["accessPolicy"],
        json!({"resourceType": "AccessPolicy", "resource": [{"resourceType": "*",
            "interaction": ["create", "read", "vread", "update", "patch", "delete", "history", "search"]}]})
    );
    let sessions = me["security"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert!(sessions.iter().all(|s| s["remoteAddress"] == "127.0.0.1"));
    assert!(sessions.iter().any(|s| s["id"] == second_login
        && s["client"]["reference"] == format!("ClientApplication/{client_id}")));
    assert!(!me.to_string().contains("argon2"), "no hash in /auth/me");

    let response = app
        .http
        .post(app.url("auth/revoke"))
        .bearer_auth(bearer)
        .json(&json!({"loginId": second_login}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = app
        .bearer_get(second["access_token"].as_str().unwrap(), "auth/me")
        .await;
    assert_outcome(response, 401, "revoked").await;
    // Nobody else revokes the user's sessions: a client's token is no
    // session of the user's own.
    let response = app
        .http
        .post(app.url("auth/revoke"))
        .bearer_auth(&project.admin.token)
        .json(&json!({"loginId": me["security"]["sessions"][0]["id"]}))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 403, "signing in yourself").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_user_ends_its_tokens() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let (token, _) = user_token(&app, &project.id, "openid").await;
    let bearer = token["access_token"].as_str().unwrap();
    let me = app.bearer_get(bearer, "auth/me").await;
    let (_, me) = status_json(me).await;
    let root = app.super_admin().await;
    let response = root
        .delete(&format!("User/{}", me["user"]["id"].as_str().unwrap()))
        .await;
    assert_eq!(response.status(), 200);
    let response = app.bearer_get(bearer, "auth/me").await;
    assert_outcome(response, 401, "revoked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_documents() {
    let app = TestApp::spawn().await;
    for path in [
        ".well-known/openid-configuration",
        ".well-known/oauth-authorization-server",
        ".well-known/smart-configuration",
    ] {
        let (status, doc) = status_json(app.http.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(doc["issuer"], app.base_url);
        assert_eq!(doc["token_endpoint"], app.url("oauth2/token"));
        assert_eq!(doc["authorization_endpoint"], app.url("oauth2/authorize"));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert!(doc["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("authorization_code")));
    }
    let (_, smart) = status_json(
        app.http
            .get(app.url(".well-known/smart-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // SMART App Launch 2.0 required fields.
    for field in [
        "jwks_uri",
        "scopes_supported",
        "response_types_supported",
        "capabilities",
    ] {
        assert!(smart.get(field).is_some(), "{field}");
    }
    let capabilities = smart["capabilities"].as_array().unwrap();
    for capability in [
        "launch-standalone",
        "client-public",
        "client-confidential-asymmetric",
        "permission-v2",
        "sso-openid-connect",
    ] {
        assert!(capabilities.contains(&json!(capability)), "{capability}");
    }
    let (_, oidc) = status_json(
        app.http
            .get(app.url(".well-known/openid-configuration"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(oidc["userinfo_endpoint"], app.url("oauth2/userinfo"));
    assert_eq!(
        oidc["id_token_signing_alg_values_supported"],
        json!(["ES256"])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_keys_sign_new_tokens_and_old_tokens_keep_working() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let old_kid = jsonwebtoken::decode_header(&root.token)
        .unwrap()
        .kid
        .unwrap();
    let project = app.project("clinic").await;
    // Another instance on the same database and public URL, started before the rotation.
    let database = app.database.clone();
    let base_url = app.base_url.clone();
    let second = TestApp::spawn_with(move |config| {
        config.database_url = format!("{}/{database}", fhirgate_tests::postgres_server());
        config.base_url = Some(base_url);
    })
    .await;
    let response = app
        .http
        .post(app.url("admin/super/keys/rotate"))
        .bearer_auth(&project.admin.token)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 403, "Only super admins").await;
    let (status, rotated) = status_json(
        app.http
            .post(app.url("admin/super/keys/rotate"))
            .bearer_auth(&root.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_kid = rotated["kid"].as_str().unwrap();
    assert_ne!(new_kid, old_kid);
    let fresh = app.super_admin().await;
    assert_eq!(
        jsonwebtoken::decode_header(&fresh.token)
            .unwrap()
            .kid
            .unwrap(),
        new_kid
    );
    assert_eq!(
        root.get("Project/_history").await.status(),
        200,
        "old token still valid"
    );
    let (_, jwks) = status_json(
        app.http
            .get(app.url(".well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid),
        "{kids:?}"
    );

    // The other instance meets the new key on first sight and loads it.
    let response = second
        .http
        .get(second.url("fhir/R4/Project/_history"))
        .bearer_auth(&fresh.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// An ES256 key pair: (private PEM, public JWK with `kid`).
fn client_key(kid: &str) -> (String, Value) {
    let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let pem = secret
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let point = secret.public_key().to_encoded_point(false);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
    (pem, jwk)
}

/// The client-credentials grant, the client authenticated by `assertion`
/// (RFC 7523 `private_key_jwt`).
async fn assertion_grant(app: &TestApp, assertion: &str, scope: Option<&str>) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
    ];
    form.extend(scope.map(|scope| ("scope", scope)));
    app.token(&form).await
}

fn assertion(
    pem: &str,
    kid: &str,
    client_id: &str,
    audience: &str,
    jti: &str,
    exp_in: i64,
) -> String {
    signed(pem, kid, client_id, client_id, audience, jti, exp_in)
}

fn signed(
    pem: &str,
    kid: &str,
    issuer: &str,
    subject: &str,
    audience: &str,
    jti: &str,
    exp_in: i64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        &json!({"iss": issuer, "sub": subject, "aud": audience, "jti": jti, "iat": now, "exp": now + exp_in}),
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A ClientApplication with an ES256 key in its `jwks` and a membership in
/// the project: (client id, private key PEM).
async fn keyed_client(app: &TestApp, project_id: &str, extra: Value) -> (String, String) {
    let root = app.super_admin().await;
    let (pem, jwk) = client_key("key-1");
    let mut client = json!({"resourceType": "ClientApplication", "name": "backend",
        "meta": {"project": project_id}, "jwks": {"keys": [jwk]}});
    if let (Some(fields), Some(extra)) = (client.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    let client = root.create(client).await;
    let client_id = client["id"].as_str().unwrap().to_string();
    let client_ref = format!("ClientApplication/{client_id}");
    root.create(
        json!({"resourceType": "ProjectMembership", "meta": {"project": project_id},
        "project": {"reference": format!("Project/{project_id}")},
        "user": {"reference": client_ref}, "profile": {"reference": client_ref}}),
    )
    .await;
    (client_id, pem)
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_client_authentication_refuses_replays() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let (client_id, pem) = keyed_client(&app, &project.id, json!({})).await;
    let grant = |assertion: String| {
        let app = &app;
        async move { assertion_grant(app, &assertion, Some("system/*.rs")).await }
    };
    let audience = app.url("oauth2/token");
    let good = assertion(&pem, "key-1", &client_id, &audience, "jti-1", 60);
    let (status, token) = grant(good.clone()).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "system/*.rs");

    let (status, replay) = grant(good).await;
    assert_eq!(status, 401);
    assert_eq!(replay["error"], "invalid_client");
    assert!(replay["error_description"]
        .as_str()
        .unwrap()
        .contains("replayed"));

    let (status, _) = grant(assertion(
        &pem,
        "key-1",
        &client_id,
        "https://elsewhere.example/token",
        "jti-2",
        60,
    ))
    .await;
    assert_eq!(status, 401, "wrong audience");
    let (status, _) = grant(assertion(
        &pem, "key-1", &client_id, &audience, "jti-3", -120,
    ))
    .await;
    assert_eq!(status, 401, "expired assertion");
    let (other_pem, _) = client_key("key-1");
    let (status, _) = grant(assertion(
        &other_pem, "key-1", &client_id, &audience, "jti-4", 60,
    ))
    .await;
    assert_eq!(status, 401, "signed by a key that is not the client's");
    // A client with keys cannot skip authentication.
    let (status, _) = app
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
        ])
        .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_bearer_grant_acts_for_a_user_of_the_clients_project() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    let (client_id, pem) = keyed_client(&app, &project.id, json!({})).await;
    let audience = app.url("oauth2/token");
    let grant = |assertion: String| {
        let app = &app;
        async move {
            app.token(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion),
                ("scope", "openid user/*.rs"),
            ])
            .await
        }
    };
    let good = signed(&pem, "key-1", &client_id, &user.email, &audience, "b-1", 60);
    let (status, token) = grant(good.clone()).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["profile"]["reference"], user.profile);
    assert_eq!(token["scope"], "openid user/*.rs");
    let me = app
        .bearer_get(token["access_token"].as_str().unwrap(), "auth/me")
        .await;
    assert_eq!(status_json(me).await.1["user"]["id"], user.id);
    let (status, replay) = grant(good).await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, unknown) = grant(signed(
        &pem,
        "key-1",
        &client_id,
        "nobody@example.com",
        &audience,
        "b-2",
        60,
    ))
    .await;
    assert_eq!(
        (status, unknown["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_are_granted_only_as_far_as_the_client_allows_and_old_grants_are_refused() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let (client_id, pem) = keyed_client(
        &app,
        &project.id,
        json!({"scope": "openid system/Observation.rs system/Patient.r"}),
    )
    .await;
    let (status, token) = assertion_grant(
        &app,
        &assertion(
            &pem,
            "key-1",
            &client_id,
            &app.url("oauth2/token"),
            "s-1",
            60,
        ),
        Some("system/Observation.read system/Patient.cruds system/Condition.rs"),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["scope"], "system/Observation.read system/Patient.r");
    for grant in ["password", "implicit", "token"] {
        let (status, body) = app
            .token(&[("grant_type", grant), ("username", "a"), ("password", "b")])
            .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("unsupported_grant_type")),
            "{grant}"
        );
    }
}

/// A JSON document served over HTTP on a random local port: what it serves
/// can change, and it counts the requests it answered.
struct Served {
    uri: String,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Served {
    fn set(&self, body: Value) {
        *self.body.lock().unwrap() = body.to_string();
    }

    fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Serves `body` as JSON to every HTTP request.
async fn serve_json(body: Value) -> Served {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = Served {
        uri: format!("http://{address}/jwks.json"),
        body: std::sync::Arc::new(std::sync::Mutex::new(body.to_string())),
        requests: Default::default(),
    };
    let (body, requests) = (served.body.clone(), served.requests.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.lock().unwrap().clone();
            requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    served
}

/// A ClientApplication of a new project whose keys are at `jwks_uri`, with
/// a membership there; its id.
async fn remote_keys_client(app: &TestApp, jwks_uri: &str) -> String {
    let project = app.project("clinic").await;
    let root = app.super_admin().await;
    let client = root
        .create(
            json!({"resourceType": "ClientApplication", "name": "remote keys",
            "meta": {"project": project.id}, "jwksUri": jwks_uri}),
        )
        .await;
    let client_id = client["id"].as_str().unwrap().to_string();
    let client_ref = format!("ClientApplication/{client_id}");
    root.create(
        json!({"resourceType": "ProjectMembership", "meta": {"project": project.id},
        "project": {"reference": format!("Project/{}", project.id)},
        "user": {"reference": client_ref}, "profile": {"reference": client_ref}}),
    )
    .await;
    client_id
}

#[tokio::test(flavor = "multi_thread")]
async fn private_key_jwt_with_keys_from_the_clients_jwks_uri() {
    let (pem, jwk) = client_key("remote-1");
    let served = serve_json(json!({"keys": [jwk]})).await;
    let jwks_uri = served.uri.clone();
    for allow_http in [true, false] {
        let app = TestApp::spawn_with(|config| config.allow_http_jwks_uri = allow_http).await;
        let client_id = remote_keys_client(&app, &jwks_uri).await;
        let (status, body) = assertion_grant(
            &app,
            &assertion(
                &pem,
                "remote-1",
                &client_id,
                &app.url("oauth2/token"),
                "r-1",
                60,
            ),
            None,
        )
        .await;
        if allow_http {
            assert_eq!(status, 200, "{body}");
        } else {
            assert_eq!(status, 401, "{body}");
            assert!(body["error_description"]
                .as_str()
                .unwrap()
                .contains("must be https"));
        }
    }
}

/// A client's `jwksUri` is fetched once and remembered: further assertions
/// do not wait on it, and a new `kid` (a rotated key) fetches it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_clients_jwks_uri_is_remembered_and_fetched_again_for_a_new_kid() {
    let (pem, jwk) = client_key("first");
    let served = serve_json(json!({"keys": [jwk]})).await;
    let app = TestApp::spawn_with(|config| config.allow_http_jwks_uri = true).await;
    let client_id = remote_keys_client(&app, &served.uri).await;
    let token_url = app.url("oauth2/token");
    for jti in ["c-1", "c-2", "c-3"] {
        let (status, body) = assertion_grant(
            &app,
            &assertion(&pem, "first", &client_id, &token_url, jti, 60),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(served.requests(), 1, "fetched once for three assertions");
    // The client rotates its key: the new kid is not remembered, so the
    // set is fetched again (once the last fetch is ten seconds old).
    let (new_pem, new_jwk) = client_key("second");
    served.set(json!({"keys": [new_jwk]}));
    let (status, body) = assertion_grant(
        &app,
        &assertion(&new_pem, "second", &client_id, &token_url, "c-4", 60),
        None,
    )
    .await;
    assert_eq!(status, 401, "too soon to fetch again: {body}");
    assert_eq!(served.requests(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(10_200)).await;
    let (status, body) = assertion_grant(
        &app,
        &assertion(&new_pem, "second", &client_id, &token_url, "c-5", 60),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(served.requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sign_in_form_needs_the_anti_forgery_token_of_this_browser_and_request() {
    let app = TestApp::spawn().await;
    let fhirgate_tests::Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let (_, challenge) = fhirgate_tests::pkce_pair();
    let url = format!(
        "{}?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        app.url("oauth2/authorize"),
        urlencode(REDIRECT)
    );
    let credentials = [("email", user.email.as_str()), ("password", TEST_PASSWORD)];
    let mut victim = Browser::new(&app);
    let page = victim.open(&url).await;
    let set_cookie = page.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"),
        "{set_cookie}"
    );
    let html = page.text().await.unwrap();
    let form = |html: &str| {
        let mut form = hidden_fields(html);
        form.extend(
            credentials
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        form
    };
    let refused = |response: Response| async move {
        assert_eq!(response.status(), 403);
        assert!(response.headers().get("location").is_none());
        let html = response.text().await.unwrap();
        assert!(
            html.contains("expired or did not come from this server"),
            "{html}"
        );
    };

    // A cross-site POST: the attacker's page has no cookie of this browser
    // and no token, or a token of the attacker's own browser.
    let bare: Vec<(String, String)> = query_of(&url)
        .into_iter()
        .chain(
            credentials
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .collect();
    refused(
        app.http
            .post(app.url("oauth2/authorize"))
            .form(&bare)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let mut attacker = Browser::new(&app);
    let attacker_page = attacker.open(&url).await.text().await.unwrap();
    refused(victim.post(&form(&attacker_page)).await).await;
    // The victim's token without the victim's cookie (SameSite keeps it home).
    refused(attacker.post(&form(&html)).await).await;
    // The victim's token for another authorization request.
    let mut other_request = form(&html);
    for (name, value) in other_request.iter_mut() {
        if name == "state" {
            *value = "changed".into();
        }
    }
    refused(victim.post(&other_request).await).await;
    // A forged token.
    let mut forged = form(&html);
    for (name, value) in forged.iter_mut() {
        if name == "form_token" {
            let (issued, _) = value.split_once('.').unwrap();
            *value = format!("{issued}.{}", "0".repeat(64));
        }
    }
    refused(victim.post(&forged).await).await;

    // The page's own form in the browser that opened it signs in.
    let response = victim.post(&form(&html)).await;
    assert_eq!(response.status(), 303);
    assert!(location(&response).starts_with(REDIRECT));
}
