//! The second factor (TOTP, RFC 6238) over HTTP: enrolment with recovery
//! codes, sign-in with `/auth/login` then `/auth/mfa/verify`, replayed
//! codes, lockout through wrong codes, a project that requires MFA, the
//! authorize page's code step, disabling, and the lifecycle AuditEvents.
//! Codes are computed here from the key the server shows, at this clock.

use fhirgate_server::auth::totp;
use fhirgate_tests::{
    assert_outcome, pkce_pair, status_json, Browser, Clinic, TestApp, TestUser, TEST_PASSWORD,
};
use serde_json::{json, Value};

fn now_step() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    totp::step_at(now.as_secs())
}

fn key_of(enroll_uri: &str) -> String {
    let query = enroll_uri.split_once('?').unwrap().1;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    pairs.into_iter().find(|(k, _)| k == "secret").unwrap().1
}

fn code(key: &str, step: u64) -> String {
    totp::code_at_step(key, step).unwrap()
}

/// `POST /auth/login` with the right password through the public client, as
/// an app does (PKCE); returns the status, the answer and the verifier.
async fn sign_in(app: &TestApp, user: &TestUser, client_id: &str) -> (u16, Value, String) {
    let (verifier, challenge) = pkce_pair();
    let (status, body) = app
        .login(
            &json!({"email": user.email, "password": TEST_PASSWORD, "clientId": client_id,
            "scope": "openid", "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    (status, body, verifier)
}

/// Sets the project's `requireMfa` setting as its super admin.
async fn require_mfa(app: &TestApp, project_id: &str) {
    let root = app.super_admin().await;
    let path = format!("Project/{project_id}");
    let (_, mut stored) = status_json(root.get(&path).await).await;
    stored["setting"] = json!([{"name": "requireMfa", "valueBoolean": true}]);
    let (status, body) = status_json(root.put(&path, &stored).await).await;
    assert_eq!(status, 200, "{body}");
}

/// An authorization request of the public client with PKCE and `state`.
fn authorize_url(app: &TestApp, client_id: &str, state: &str) -> String {
    let (_, challenge) = pkce_pair();
    format!(
        "{}?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid&state={state}&code_challenge={challenge}&code_challenge_method=S256",
        app.url("oauth2/authorize"),
        fhirgate_tests::REDIRECT_URI
    )
}

/// Opens the sign-in page of an authorization request (`state`) in a new
/// browser and posts the right password: the browser and the next page.
async fn past_the_password(
    app: &TestApp,
    user: &TestUser,
    client_id: &str,
    state: &str,
) -> (Browser, String) {
    let mut browser = Browser::new(app);
    let page = browser
        .open(&authorize_url(app, client_id, state))
        .await
        .text()
        .await
        .unwrap();
    let response = browser
        .submit(
            &page,
            &[("email", &user.email), ("password", TEST_PASSWORD)],
        )
        .await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    (browser, html)
}

/// Signs `user` (not enrolled) in through `/auth/login` and the token
/// endpoint; returns the access token.
async fn user_session(app: &TestApp, user: &TestUser, client_id: &str) -> String {
    let (status, body, verifier) = sign_in(app, user, client_id).await;
    assert_eq!(status, 200, "{body}");
    let (status, token) = app
        .redeem(
            body["code"].as_str().expect("code"),
            &verifier,
            Some(client_id),
        )
        .await;
    assert_eq!(status, 200, "{token}");
    token["access_token"].as_str().unwrap().to_string()
}

async fn post(app: &TestApp, token: Option<&str>, path: &str, body: Value) -> (u16, Value) {
    let mut request = app.http.post(app.url(path)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    status_json(request.send().await.unwrap()).await
}

/// Enrols `token`'s user; returns the key and the recovery codes.
async fn enrol(app: &TestApp, token: &str) -> (String, Vec<String>) {
    let (status, body) = status_json(app.bearer_get(token, "auth/mfa/status").await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["enrolled"], false);
    let uri = body["enrollUri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(body["enrollQrCode"]
        .as_str()
        .unwrap()
        .starts_with("data:image/svg+xml;base64,"));
    let key = key_of(uri);
    // Asking again shows the same key until enrolment is done.
    let (_, again) = status_json(app.bearer_get(token, "auth/mfa/status").await).await;
    assert_eq!(key_of(again["enrollUri"].as_str().unwrap()), key);

    let (status, body) = post(
        app,
        Some(token),
        "auth/mfa/enroll",
        json!({"token": "000000"}),
    )
    .await;
    assert!(
        status == 400 || code(&key, now_step()) == "000000",
        "{body}"
    );
    let (status, body) = post(
        app,
        Some(token),
        "auth/mfa/enroll",
        json!({"token": code(&key, now_step())}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let codes: Vec<String> = body["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    (key, codes)
}

async fn password_step(app: &TestApp, user: &TestUser, client_id: &str) -> (String, String) {
    let (status, body, verifier) = sign_in(app, user, client_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mfaRequired"], true, "{body}");
    assert!(
        body.get("code").is_none(),
        "no code before the second factor: {body}"
    );
    (body["login"].as_str().unwrap().to_string(), verifier)
}

#[tokio::test(flavor = "multi_thread")]
async fn enrolment_sign_in_replay_recovery_codes_and_disabling() {
    let app = TestApp::spawn().await;
    let Clinic {
        project,
        user,
        client_id,
    } = app.clinic().await;
    let token = user_session(&app, &user, &client_id).await;
    let (_, me) = status_json(app.bearer_get(&token, "auth/me").await).await;
    assert_eq!(me["security"]["mfaEnrolled"], false, "{me}");

    // A client (not a user signed in themselves) has no second factor.
    let response = app
        .bearer_get(&project.admin.token, "auth/mfa/status")
        .await;
    assert_outcome(response, 403, "signing in yourself").await;

    let (key, recovery) = enrol(&app, &token).await;
    let (_, me) = status_json(app.bearer_get(&token, "auth/me").await).await;
    assert_eq!(me["security"]["mfaEnrolled"], true, "{me}");
    let (status, body) = post(
        &app,
        Some(&token),
        "auth/mfa/enroll",
        json!({"token": code(&key, now_step() + 1)}),
    )
    .await;
    assert_eq!(
        (status, body["issue"][0]["diagnostics"].as_str()),
        (400, Some("Already enrolled"))
    );

    // The key is never shown again, and the hashes of the codes are not the codes.
    let (_, status_body) = status_json(app.bearer_get(&token, "auth/mfa/status").await).await;
    assert_eq!(
        status_body,
        json!({"enrolled": true, "recoveryCodesLeft": 10})
    );
    let db = app.db().await;
    let stored: Vec<String> = db
        .query_one(
            "SELECT recovery_codes FROM user_mfa WHERE user_id = $1",
            &[&user.id.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 10);
    assert!(stored
        .iter()
        .all(|digest| !recovery.iter().any(|c| digest.contains(c.as_str()))));

    // Password alone: a login that waits, no code; a wrong code is refused.
    let (login, verifier) = password_step(&app, &user, &client_id).await;
    let wrong = if code(&key, now_step()) == "123456" {
        "654321"
    } else {
        "123456"
    };
    let (status, body) = post(
        &app,
        None,
        "auth/mfa/verify",
        json!({"login": login, "token": wrong}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    // The pending login cannot skip the second factor through /auth/profile.
    let (status, _) = post(
        &app,
        None,
        "auth/profile",
        json!({"login": login, "profile": user.membership_id}),
    )
    .await;
    assert_eq!(status, 400);

    // The code of the next step (inside the drift window) signs in...
    let step = now_step() + 1;
    let (status, body) = post(
        &app,
        None,
        "auth/mfa/verify",
        json!({"login": login, "token": code(&key, step)}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, tokens) = app
        .redeem(body["code"].as_str().unwrap(), &verifier, Some(&client_id))
        .await;
    assert_eq!(status, 200, "{tokens}");
    // ...once: the same code, or an older step's, is refused on a new login.
    let (login, _) = password_step(&app, &user, &client_id).await;
    for replay in [code(&key, step), code(&key, step - 1)] {
        let (status, body) = post(
            &app,
            None,
            "auth/mfa/verify",
            json!({"login": login, "token": replay}),
        )
        .await;
        assert_eq!(status, 400, "replayed code accepted: {body}");
    }

    // A recovery code works once, however it is typed.
    let typed = recovery[0].to_uppercase().replace('-', " ");
    let (status, body) = post(
        &app,
        None,
        "auth/mfa/verify",
        json!({"login": login, "token": typed}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (login, _) = password_step(&app, &user, &client_id).await;
    let (status, _) = post(
        &app,
        None,
        "auth/mfa/verify",
        json!({"login": login, "token": recovery[0]}),
    )
    .await;
    assert_eq!(status, 400, "a recovery code is single-use");
    let (_, status_body) = status_json(app.bearer_get(&token, "auth/mfa/status").await).await;
    assert_eq!(status_body["recoveryCodesLeft"], 9);

    // Disabling takes a valid code; then the password alone signs in again.
    let (status, _) = post(
        &app,
        Some(&token),
        "auth/mfa/disable",
        json!({"token": wrong}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post(
        &app,
        Some(&token),
        "auth/mfa/disable",
        json!({"token": recovery[1]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    user_session(&app, &user, &client_id).await;
    let (_, status_body) = status_json(app.bearer_get(&token, "auth/mfa/status").await).await;
    assert_eq!(status_body["enrolled"], false);
    assert_ne!(
        key_of(status_body["enrollUri"].as_str().unwrap()),
        key,
        "a new key after disabling"
    );

    // Enrolment, the recovery code and disabling are lifecycle AuditEvents.
    // One recovery code signed in, another disabled the factor.
    for (event, times) in [
        ("mfa-enrolled", 1),
        ("mfa-recovery-code-used", 2),
        ("mfa-disabled", 1),
    ] {
        let (status, found) = status_json(
            project
                .admin
                .get(&format!(
                    "AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|{event}"
                ))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{found}");
        assert_eq!(
            found["entry"].as_array().map_or(0, Vec::len),
            times,
            "{event}: {found}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_codes_count_toward_the_password_lockout() {
    let app = TestApp::spawn_with(|c| c.lockout_threshold = 3).await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let token = user_session(&app, &user, &client_id).await;
    let (key, _) = enrol(&app, &token).await;
    let wrong = if code(&key, now_step()) == "111111" {
        "222222"
    } else {
        "111111"
    };
    let (login, _) = password_step(&app, &user, &client_id).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _) = post(
            &app,
            None,
            "auth/mfa/verify",
            json!({"login": login, "token": wrong}),
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(statuses, [400, 400, 429], "{login}");
    // Locked: a right code and the right password are both refused now.
    let (status, _) = post(
        &app,
        None,
        "auth/mfa/verify",
        json!({"login": login, "token": code(&key, now_step() + 1)}),
    )
    .await;
    assert_eq!(status, 429);
    let (status, body, _) = sign_in(&app, &user, &client_id).await;
    assert_eq!(status, 429, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_project_that_requires_mfa_leads_its_members_to_enrol_at_sign_in() {
    let app = TestApp::spawn().await;
    let Clinic {
        project,
        user,
        client_id,
    } = app.clinic().await;
    require_mfa(&app, &project.id).await;

    let (status, body, verifier) = sign_in(&app, &user, &client_id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["mfaEnrollRequired"], true, "{body}");
    assert!(body.get("code").is_none());
    let key = key_of(body["enrollUri"].as_str().unwrap());
    let login = body["login"].as_str().unwrap();
    // Verifying is not enrolling: a user without a factor cannot pass /verify.
    let (status, _) = post(
        &app,
        None,
        "auth/mfa/verify",
        json!({"login": login, "token": code(&key, now_step())}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post(
        &app,
        None,
        "auth/mfa/login-enroll",
        json!({"login": login, "token": code(&key, now_step())}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["recoveryCodes"].as_array().unwrap().len(), 10);
    let (status, tokens) = app
        .redeem(body["code"].as_str().unwrap(), &verifier, Some(&client_id))
        .await;
    assert_eq!(status, 200, "{tokens}");
    // From now on the user is asked for a code.
    password_step(&app, &user, &client_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_authorize_page_asks_for_the_code() {
    let app = TestApp::spawn().await;
    let Clinic {
        user, client_id, ..
    } = app.clinic().await;
    let token = user_session(&app, &user, &client_id).await;
    let (key, _) = enrol(&app, &token).await;

    let (mut browser, html) = past_the_password(&app, &user, &client_id, "s1").await;
    assert!(html.contains("name=\"mfa_code\""), "{html}");

    let response = browser.submit(&html, &[("mfa_code", "not-a-code")]).await;
    assert_eq!(response.status(), 400);
    let html = response.text().await.unwrap();
    assert!(html.contains("Invalid code"), "{html}");

    let next = code(&key, now_step() + 1);
    let response = browser.submit(&html, &[("mfa_code", &next)]).await;
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with(fhirgate_tests::REDIRECT_URI)
            && location.contains("code=")
            && location.contains("state=s1"),
        "{location}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_authorize_page_enrols_a_member_of_a_project_that_requires_it() {
    let app = TestApp::spawn().await;
    let Clinic {
        project,
        user,
        client_id,
    } = app.clinic().await;
    require_mfa(&app, &project.id).await;
    let (mut browser, html) = past_the_password(&app, &user, &client_id, "s2").await;
    assert!(
        html.contains("<img src=\"data:image/svg+xml;base64,"),
        "{html}"
    );
    let uri = fhirgate_tests::hidden_fields(&html)
        .into_iter()
        .find(|(name, _)| name == "mfa_uri")
        .unwrap()
        .1;
    let key = key_of(&uri);
    assert!(html.contains(&key), "the key is shown for typing by hand");

    let response = browser
        .submit(&html, &[("mfa_code", &code(&key, now_step()))])
        .await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert_eq!(
        html.matches("<li>").count(),
        10,
        "the recovery codes: {html}"
    );
    let next = html
        .split("<a href=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(
        next.starts_with(fhirgate_tests::REDIRECT_URI)
            && next.contains("code=")
            && next.contains("state=s2"),
        "{next}"
    );
    let (status, body) = status_json(
        project
            .admin
            .get("AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|mfa-enrolled")
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["entry"].as_array().map_or(0, Vec::len), 1, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_a_user_forgets_its_second_factor() {
    let app = TestApp::spawn().await;
    let Clinic {
        project,
        user,
        client_id,
    } = app.clinic().await;
    let token = user_session(&app, &user, &client_id).await;
    enrol(&app, &token).await;
    let user_id = user.id.parse::<uuid::Uuid>().unwrap();
    let db = app.db().await;
    let stored = async || -> i64 {
        db.query_one(
            "SELECT count(*) FROM user_mfa WHERE user_id = $1",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert_eq!(stored().await, 1);

    // A server-wide user (not the project's own): a super admin deletes it;
    // the project's admin does not even see it.
    let user_ref = format!("User/{}", user.id);
    assert_eq!(project.admin.delete(&user_ref).await.status(), 404);
    assert_eq!(stored().await, 1);
    let response = app.super_admin().await.delete(&user_ref).await;
    assert_eq!(response.status(), 200);
    // The key goes with the user, in the deletion's transaction.
    assert_eq!(stored().await, 0);
}
