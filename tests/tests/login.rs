//! Password sign-in at `/auth/login` and `/auth/profile`, and redeeming its
//! code at the token endpoint with PKCE, driven by the `oauth2` crate.

use fhirgate_tests::{assert_outcome, pkce_pair, status_json, Clinic, TestApp};
use oauth2::{
    basic::BasicClient, AuthType, AuthUrl, AuthorizationCode, ClientId, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
};
use serde_json::{json, Value};

const REDIRECT: &str = fhirgate_tests::REDIRECT_URI;

use fhirgate_tests::oauth_http as http;

fn oauth_client(
    app: &TestApp,
    client_id: &str,
) -> oauth2::basic::BasicClient<
    oauth2::EndpointSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
> {
    BasicClient::new(ClientId::new(client_id.into()))
        .set_auth_type(AuthType::RequestBody)
        .set_auth_uri(AuthUrl::new(app.url("oauth2/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(app.url("oauth2/token")).unwrap())
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).unwrap())
}

/// Signs `user` in through `client_id` and returns the code and verifier.
async fn code_for(app: &TestApp, email: &str, client_id: &str, scope: &str) -> (String, String) {
    let (verifier, challenge) = pkce_pair();
    let (status, body) = app
        .login(
            &json!({"email": email, "password": fhirgate_tests::TEST_PASSWORD,
            "clientId": client_id, "scope": scope,
            "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    (body["code"].as_str().expect("code").to_string(), verifier)
}

#[tokio::test(flavor = "multi_thread")]
async fn password_login_then_code_exchange_with_pkce() {
    let app = TestApp::spawn().await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;

    let (code, verifier) = code_for(
        &app,
        "Doctor@Example.com",
        &client_id,
        "openid fhirUser offline_access user/*.cruds",
    )
    .await;
    let token = oauth_client(&app, &client_id)
        .exchange_code(AuthorizationCode::new(code))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&http())
        .await
        .expect("authorization_code grant");
    assert_eq!(
        token
            .scopes()
            .unwrap()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["openid", "fhirUser", "offline_access", "user/*.cruds"]
    );
    let refresh = token
        .refresh_token()
        .expect("refresh token with offline_access");

    // The access token works as the user's profile, in the project.
    let response = app
        .bearer_get(
            token.access_token().secret(),
            &format!("fhir/R4/{}", user.profile),
        )
        .await;
    assert_eq!(response.status(), 200);

    // Refresh rotates: the new refresh token differs and works.
    let refreshed = oauth_client(&app, &client_id)
        .exchange_refresh_token(refresh)
        .request_async(&http())
        .await
        .expect("refresh_token grant");
    let second = refreshed.refresh_token().unwrap().secret().clone();
    assert_ne!(&second, refresh.secret());
    oauth_client(&app, &client_id)
        .exchange_refresh_token(&RefreshToken::new(second))
        .request_async(&http())
        .await
        .expect("the rotated refresh token works once");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_response_has_medplum_fields_and_an_id_token() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "pat@example.com", "Patient", true)
        .await;
    let client_id = app.public_client(&project.id, REDIRECT, json!({})).await;
    let (verifier, challenge) = pkce_pair();
    let (status, body) = app
        .login(&json!({"email": "pat@example.com", "password": user.password,
            "projectId": project.id, "clientId": client_id, "scope": "openid fhirUser launch/patient patient/*.rs",
            "nonce": "n-0S6_WzA2Mj", "codeChallenge": challenge, "codeChallengeMethod": "S256"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["login"].as_str().is_some());
    let (status, token) = app
        .redeem(body["code"].as_str().unwrap(), &verifier, Some(&client_id))
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["profile"]["reference"], user.profile);
    assert_eq!(
        token["project"]["reference"],
        format!("Project/{}", project.id)
    );
    assert_eq!(
        token["patient"],
        user.profile.strip_prefix("Patient/").unwrap()
    );
    assert!(
        token.get("refresh_token").is_none(),
        "no offline_access, no refresh token"
    );
    let id_token = token["id_token"].as_str().unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            id_token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(claims["fhirUser"], user.profile);
    assert_eq!(claims["aud"], client_id);
    assert_eq!(claims["sub"], user.id);
    assert!(claims["auth_time"].as_i64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    app.user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    let attempt = |email: &'static str, password: &'static str| {
        let app = &app;
        async move {
            let started = std::time::Instant::now();
            let response = app.login_attempt(email, password).await;
            let body = assert_outcome(response, 400, "Email or password is invalid").await;
            (body, started.elapsed())
        }
    };
    let (wrong, wrong_time) = attempt("doctor@example.com", "not the password").await;
    let (unknown, unknown_time) = attempt("nobody@example.com", "not the password").await;
    assert_eq!(wrong, unknown);
    // Both verify one Argon2id hash: neither is an order of magnitude faster.
    let (fast, slow) = if wrong_time < unknown_time {
        (wrong_time, unknown_time)
    } else {
        (unknown_time, wrong_time)
    };
    assert!(
        slow < fast * 5,
        "timings differ: {wrong_time:?} vs {unknown_time:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn several_memberships_are_chosen_with_auth_profile() {
    let app = TestApp::spawn().await;
    let first = app.project("first").await;
    let second = app.project("second").await;
    let user = app
        .user(&first.id, "nurse@example.com", "Practitioner", false)
        .await;
    let root = app.super_admin().await;
    let other_profile = root
        .create(json!({"resourceType": "Practitioner", "meta": {"project": second.id}}))
        .await;
    let other_profile = format!("Practitioner/{}", other_profile["id"].as_str().unwrap());
    let second_membership = app
        .add_membership(&root, &second.id, &user.id, &other_profile)
        .await;

    let (verifier, challenge) = pkce_pair();
    let (status, body) = app
        .login(
            &json!({"email": user.email, "password": user.password, "scope": "openid",
            "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("code").is_none());
    let memberships = body["memberships"].as_array().unwrap();
    assert_eq!(memberships.len(), 2);
    let chosen = memberships
        .iter()
        .find(|m| m["id"] == second_membership)
        .expect("second membership offered");
    assert_eq!(chosen["project"]["display"], "second");
    assert_eq!(chosen["profile"]["reference"], other_profile);

    // A membership that is not the user's is refused.
    let (status, refused) = status_json(
        app.http
            .post(app.url("auth/profile"))
            .json(&json!({"login": body["login"], "profile": uuid_like()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{refused}");

    let (status, picked) = status_json(
        app.http
            .post(app.url("auth/profile"))
            .json(&json!({"login": body["login"], "profile": second_membership}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{picked}");
    assert_eq!(picked["login"], body["login"]);
    let (status, token) = app
        .redeem(picked["code"].as_str().unwrap(), &verifier, None)
        .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["profile"]["reference"], other_profile);
    assert_eq!(
        token["project"]["reference"],
        format!("Project/{}", second.id)
    );

    // Choosing again is refused: the login has its membership.
    let response = app
        .http
        .post(app.url("auth/profile"))
        .json(&json!({"login": body["login"], "profile": second_membership}))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "Login not found, already used or expired").await;
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".into()
}

#[tokio::test(flavor = "multi_thread")]
async fn inactive_or_expired_membership_is_refused() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let root = app.super_admin().await;
    let cases = [
        (
            "gone@example.com",
            json!({"op": "add", "path": "/active", "value": false}),
        ),
        (
            "ended@example.com",
            json!({"op": "add", "path": "/endDate", "value": "2020-01-01"}),
        ),
    ];
    for (email, change) in cases {
        let user = app.user(&project.id, email, "Practitioner", false).await;
        let response = root
            .patch(
                &format!("ProjectMembership/{}", user.membership_id),
                &json!([change]),
            )
            .await;
        assert_eq!(response.status(), 200, "{email}");
        let (_, challenge) = pkce_pair();
        let response = app
            .http
            .post(app.url("auth/login"))
            .json(
                &json!({"email": user.email, "password": user.password, "scope": "openid",
                "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
            )
            .send()
            .await
            .unwrap();
        assert_outcome(response, 400, "no active project membership").await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn project_scoped_users_are_found_only_through_their_project() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "local@example.com", "Patient", true)
        .await;
    let (_, challenge) = pkce_pair();
    let body = |project_id: Option<&str>| {
        let mut body = json!({"email": user.email, "password": user.password, "scope": "openid",
            "codeChallenge": challenge, "codeChallengeMethod": "S256"});
        if let Some(p) = project_id {
            body["projectId"] = json!(p);
        }
        body
    };
    let (status, found) = app.login(&body(Some(&project.id))).await;
    assert_eq!(status, 200, "{found}");
    assert!(found["code"].is_string());
    let (status, _) = app.login(&body(None)).await;
    assert_eq!(status, 400);
    // Through a client of the project, too.
    let client_id = app.public_client(&project.id, REDIRECT, json!({})).await;
    let mut via_client = body(None);
    via_client["clientId"] = json!(client_id);
    let (status, found) = app.login(&via_client).await;
    assert_eq!(status, 200, "{found}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pkce_is_checked_when_given_and_plain_is_refused() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    let base = json!({"email": user.email, "password": user.password, "scope": "openid"});
    // As in Medplum, /auth/login may go without a challenge: the code comes
    // back in the body, and is redeemed without a verifier.
    let (status, body) = app.login(&base).await;
    assert_eq!(status, 200, "{body}");
    let (status, token) = app
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", body["code"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(status, 200, "{token}");
    // A challenge that is given binds the code: no verifier, no token.
    let (_, challenge) = fhirgate_tests::pkce_pair();
    let mut with_challenge = base.clone();
    with_challenge["codeChallenge"] = json!(challenge);
    with_challenge["codeChallengeMethod"] = json!("S256");
    let (status, body) = app.login(&with_challenge).await;
    assert_eq!(status, 200, "{body}");
    let (status, error) = app
        .token(&[
            ("grant_type", "authorization_code"),
            ("code", body["code"].as_str().unwrap()),
        ])
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"], "invalid_request", "{error}");
    // /oauth2/authorize, whose code travels through a redirect, still
    // requires a challenge.
    let strict = app.public_client(&project.id, REDIRECT, json!({})).await;
    let response = app
        .http
        .get(app.url(&format!(
            "oauth2/authorize?response_type=code&scope=openid&client_id={strict}&redirect_uri={}",
            urlencode(REDIRECT)
        )))
        .send()
        .await
        .unwrap();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        location.starts_with(REDIRECT) && location.contains("error=invalid_request"),
        "{} {location}",
        response.status()
    );
    let mut plain = base.clone();
    plain["codeChallenge"] = json!("a".repeat(43));
    plain["codeChallengeMethod"] = json!("plain");
    let response = app
        .http
        .post(app.url("auth/login"))
        .json(&plain)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "'plain' is refused").await;
    // A client may make PKCE optional.
    let client_id = app
        .public_client(&project.id, REDIRECT, json!({"pkceOptional": true}))
        .await;
    let mut optional = base.clone();
    optional["clientId"] = json!(client_id);
    let (status, body) = app.login(&optional).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_code_fails_and_revokes_the_first_tokens() {
    let app = TestApp::spawn().await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let (code, verifier) = code_for(&app, &user.email, &client_id, "openid offline_access").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("client_id", client_id.as_str()),
    ];
    let (status, first) = app.token(&form).await;
    assert_eq!(status, 200, "{first}");

    let err = oauth_client(&app, &client_id)
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier.clone()))
        .request_async(&http())
        .await
        .unwrap_err();
    match err {
        RequestTokenError::ServerResponse(response) => {
            assert_eq!(response.error().as_ref(), "invalid_grant");
            assert!(response
                .error_description()
                .unwrap()
                .contains("already used"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // The tokens of the first redemption are revoked.
    let response = app
        .bearer_get(
            first["access_token"].as_str().unwrap(),
            &format!("fhir/R4/{}", user.profile),
        )
        .await;
    assert_outcome(response, 401, "revoked").await;
    let (status, body) = app
        .token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", first["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_redemptions_of_one_code_yield_one_token() {
    let app = TestApp::spawn().await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let (code, verifier) = code_for(&app, &user.email, &client_id, "openid").await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("code_verifier", verifier.as_str()),
        ("client_id", client_id.as_str()),
    ];
    let results = futures_util::future::join_all((0..4).map(|_| app.token(&form))).await;
    let ok = results.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(ok, 1, "{results:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_verifier_and_wrong_redirect_are_refused() {
    let app = TestApp::spawn().await;
    let Clinic {
        project,
        user,
        client_id,
    } = app.clinic().await;
    let (code, _) = code_for(&app, &user.email, &client_id, "openid").await;
    let (wrong_verifier, _) = pkce_pair();
    let (status, body) = app.redeem(&code, &wrong_verifier, Some(&client_id)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("code_verifier does not match"));
    // Another client cannot redeem it either.
    let other = app.public_client(&project.id, REDIRECT, json!({})).await;
    let (status, body) = app.redeem(&code, &wrong_verifier, Some(&other)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reused_refresh_token_revokes_the_login() {
    let app = TestApp::spawn().await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let (code, verifier) = code_for(&app, &user.email, &client_id, "openid offline_access").await;
    let (_, first) = app.redeem(&code, &verifier, Some(&client_id)).await;
    let old = first["refresh_token"].as_str().unwrap();
    let refresh = |token: String| {
        let client_id = client_id.clone();
        let app = &app;
        async move {
            app.token(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &token),
                ("client_id", &client_id),
            ])
            .await
        }
    };
    let (status, second) = refresh(old.to_string()).await;
    assert_eq!(status, 200, "{second}");
    // The old one again: refused, and the whole login is revoked.
    let (status, replay) = refresh(old.to_string()).await;
    assert_eq!(status, 400);
    assert!(replay["error_description"]
        .as_str()
        .unwrap()
        .contains("already used"));
    let (status, _) = refresh(second["refresh_token"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 400, "the rotated token died with the login");
    let response = app
        .bearer_get(
            second["access_token"].as_str().unwrap(),
            &format!("fhir/R4/{}", user.profile),
        )
        .await;
    assert_outcome(response, 401, "revoked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_code_and_expired_access_token_are_refused() {
    let app = TestApp::spawn_with(|config| {
        config.code_lifetime = std::time::Duration::from_secs(1);
        config.access_token_lifetime = std::time::Duration::from_secs(1);
    })
    .await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let (late_code, late_verifier) = code_for(&app, &user.email, &client_id, "openid").await;
    let (code, verifier) = code_for(&app, &user.email, &client_id, "openid").await;
    let (status, token) = app.redeem(&code, &verifier, Some(&client_id)).await;
    assert_eq!(status, 200, "{token}");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = app
        .redeem(&late_code, &late_verifier, Some(&client_id))
        .await;
    assert_eq!(status, 400);
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let response = app
        .bearer_get(
            token["access_token"].as_str().unwrap(),
            &format!("fhir/R4/{}", user.profile),
        )
        .await;
    assert_outcome(response, 401, "Invalid or expired access token").await;
}

fn urlencode(value: &str) -> String {
    serde_urlencoded::to_string([("v", value)]).unwrap()[2..].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_console_client_signs_people_in_to_another_project() {
    let app = TestApp::spawn().await;
    let clinic = app.project("clinic").await;
    let other = app.project("other").await;
    let user = app
        .user(&clinic.id, "both@example.com", "Practitioner", false)
        .await;
    let root = app.super_admin().await;
    let profile = root
        .create(json!({"resourceType": "Practitioner", "meta": {"project": other.id}}))
        .await;
    let profile = format!("Practitioner/{}", profile["id"].as_str().unwrap());
    app.add_membership(&root, &other.id, &user.id, &profile)
        .await;
    let (_, challenge) = pkce_pair();
    let login = |client_id: String| {
        json!({"email": user.email, "password": user.password, "scope": "openid",
            "projectId": other.id, "clientId": client_id,
            "codeChallenge": challenge, "codeChallengeMethod": "S256"})
    };
    // A project's own client cannot be used to sign in to another project…
    let clinic_client = app.public_client(&clinic.id, REDIRECT, json!({})).await;
    let (status, body) = app.login(&login(clinic_client)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("does not belong to this project"),
        "{body}"
    );
    // …the console's client can, for a project the user is a member of.
    let console = fhirgate_server::console::client::CLIENT_ID.to_string();
    let (status, body) = app.login(&login(console)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["code"].is_string(), "{body}");
}
