//! Authentication from day one: the client-credentials grant, the token's
//! shape and signature, and bearer checks on every FHIR route.

use base64::{engine::general_purpose::STANDARD, Engine};
use fhirgate_tests::{assert_outcome, status_json, TestApp};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use oauth2::{basic::BasicClient, AuthUrl, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn oauth2_client_gets_a_token_with_basic_auth() {
    let app = TestApp::spawn().await;
    // A real OAuth client library, which authenticates with HTTP Basic.
    let client = BasicClient::new(ClientId::new(app.admin.client_id.clone()))
        .set_client_secret(ClientSecret::new(app.admin.client_secret.clone()))
        .set_auth_uri(AuthUrl::new(app.url("oauth2/authorize")).unwrap())
        .set_token_uri(TokenUrl::new(app.url("oauth2/token")).unwrap());
    let http = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let token = client
        .exchange_client_credentials()
        .add_scope(Scope::new("openid".into()))
        .request_async(&http)
        .await
        .expect("client credentials grant");
    assert_eq!(token.token_type(), &oauth2::basic::BasicTokenType::Bearer);
    assert!(token.expires_in().unwrap().as_secs() > 3000);

    // The token works on the FHIR API.
    let response = app
        .http
        .get(app.url("fhir/R4/Project/_history"))
        .bearer_auth(token.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// What `@medplum/core` 5.0.x (Medplum's command-line tool) sends: the
/// client id and secret in an `Authorization: Basic` header and again in
/// the form body. Identical sets are taken; differing ones are refused.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_sent_both_as_basic_and_in_the_body_must_agree() {
    let app = TestApp::spawn().await;
    let (id, secret) = (
        app.admin.client_id.as_str(),
        app.admin.client_secret.as_str(),
    );
    let send = |form: Vec<(&'static str, String)>| {
        app.http
            .post(app.url("oauth2/token"))
            .basic_auth(id, Some(secret))
            .form(&form)
            .send()
    };
    let both = vec![
        ("grant_type", "client_credentials".to_string()),
        ("client_id", id.to_string()),
        ("client_secret", secret.to_string()),
    ];
    let (status, body) = status_json(send(both).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let response = app
        .http
        .get(app.url("fhir/R4/Patient"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    for (field, value) in [
        ("client_secret", format!("{secret}x")),
        ("client_id", uuid::Uuid::new_v4().to_string()),
    ] {
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", id.to_string()),
            ("client_secret", secret.to_string()),
        ];
        form.retain(|(name, _)| *name != field);
        form.push((field, value));
        let (status, body) = status_json(send(form).await.unwrap()).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_an_es256_jwt_verifiable_with_the_published_jwks() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .post(app.url("oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", app.admin.client_id.as_str()),
            ("client_secret", app.admin.client_secret.as_str()),
            ("scope", "openid system/*.read"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, body) = status_json(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "openid system/*.read");
    assert_eq!(body["expires_in"], 3600);
    let profile = format!("ClientApplication/{}", app.admin.client_id);
    assert_eq!(body["profile"]["reference"], profile);
    assert!(body["project"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Project/"));

    let token = body["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let (_, jwks) = status_json(
        app.http
            .get(app.url(".well-known/jwks.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == json!(header.kid.as_deref().unwrap()))
        .expect("token's key is published");
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert!(
        jwk.get("d").is_none(),
        "private key must never be published"
    );
    let key =
        DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[app.base_url.as_str()]);
    validation.set_audience(&[app.admin.client_id.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims;
    for claim in [
        "iss",
        "sub",
        "aud",
        "iat",
        "exp",
        "client_id",
        "login_id",
        "scope",
        "profile",
    ] {
        assert!(
            claims.get(claim).is_some(),
            "missing claim {claim}: {claims}"
        );
    }
    assert_eq!(claims["client_id"], app.admin.client_id);
    assert_eq!(claims["profile"], profile);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );

    // The token's Login is a real resource that the super admin can read.
    let login_id = claims["login_id"].as_str().unwrap();
    let root = app.super_admin().await;
    let (status, login) = status_json(root.get(&format!("Login/{login_id}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(login["authMethod"], "client");
    assert_eq!(login["client"]["reference"], profile);
}

async fn token_error(
    app: &TestApp,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value, Option<String>) {
    let mut request = app.http.post(app.url("oauth2/token")).form(form);
    if let Some((id, secret)) = basic {
        request = request.header(
            "Authorization",
            format!("Basic {}", STANDARD.encode(format!("{id}:{secret}"))),
        );
    }
    let response = request.send().await.unwrap();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, body) = status_json(response).await;
    (status, body, challenge)
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_errors_follow_rfc_6749() {
    let app = TestApp::spawn().await;
    let id = app.admin.client_id.as_str();

    let (status, body, challenge) = token_error(
        &app,
        &[("grant_type", "client_credentials")],
        Some((id, "wrong-secret")),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(challenge.unwrap().starts_with("Basic"));

    // Unknown client and wrong secret read the same.
    let (status, unknown, challenge) = token_error(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &uuid::Uuid::new_v4().to_string()),
            ("client_secret", "x"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(unknown["error_description"], body["error_description"]);
    assert!(
        challenge.is_none(),
        "no Basic challenge when Basic was not used"
    );

    let (status, body, _) = token_error(
        &app,
        &[("grant_type", "password")],
        Some((id, &app.admin.client_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    let (status, body, _) = token_error(
        &app,
        &[("scope", "openid")],
        Some((id, &app.admin.client_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // The secret in the body as well as in Basic is taken when it is the
    // same one (credentials_sent_both_as_basic_and_in_the_body_must_agree),
    // refused when it is another.
    let other_secret = format!("{}x", app.admin.client_secret);
    let (status, body, _) = token_error(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("client_secret", &other_secret),
        ],
        Some((id, &app.admin.client_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body, _) = token_error(
        &app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", "bad\"scope"),
        ],
        Some((id, &app.admin.client_secret)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fhir_routes_require_a_valid_bearer_token() {
    let app = TestApp::spawn().await;
    let metadata = app
        .http
        .get(app.url("fhir/R4/metadata"))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 200, "metadata is public");

    let response = app
        .http
        .get(app.url("fhir/R4/Patient/_history"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"fhirgate\""
    );
    assert_outcome(response, 401, "Authentication required").await;

    let garbage = app
        .http
        .get(app.url("fhir/R4/Patient/_history"))
        .bearer_auth("not.a.jwt")
        .send()
        .await
        .unwrap();
    assert_outcome(garbage, 401, "Invalid or expired").await;

    // A token signed by someone else's key, with our key id.
    let session = app.super_admin().await;
    let header = jsonwebtoken::decode_header(&session.token).unwrap();
    let foreign_key = p256_pem();
    let mut forged_header = jsonwebtoken::Header::new(Algorithm::ES256);
    forged_header.kid = header.kid;
    let payload = session.token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let forged = jsonwebtoken::encode(
        &forged_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(foreign_key.as_bytes()).unwrap(),
    )
    .unwrap();
    let response = app
        .http
        .get(app.url("fhir/R4/Patient/_history"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 401, "Invalid or expired").await;

    // An unknown resource type still asks for authentication first.
    let response = app
        .http
        .get(app.url("fhir/R4/Foo/123"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

/// A P-256 key that fhirgate never saw.
fn p256_pem() -> String {
    use p256::pkcs8::EncodePrivateKey;
    p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng)
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tokens_are_refused() {
    let app = TestApp::spawn_with(|config| {
        config.access_token_lifetime = std::time::Duration::from_secs(1)
    })
    .await;
    let session = app.super_admin().await;
    assert_eq!(session.get("Patient/_history").await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_outcome(session.get("Patient/_history").await, 401, "expired").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_logins_and_removed_memberships_stop_working_at_once() {
    let app = TestApp::spawn().await;
    let project = app.project("revocation").await;
    assert_eq!(project.member.get("Patient/_history").await.status(), 200);

    // Revoke the member's Login as the super admin.
    let root = app.super_admin().await;
    let claims = claims_of(&project.member.token);
    let login_path = format!("Login/{}", claims["login_id"].as_str().unwrap());
    let (_, mut login) = status_json(root.get(&login_path).await).await;
    login["revoked"] = json!(true);
    assert_eq!(root.put(&login_path, &login).await.status(), 200);
    assert_outcome(project.member.get("Patient/_history").await, 401, "revoked").await;

    // Deleting a membership ends the admin's access too.
    assert_eq!(project.admin.get("Patient/_history").await.status(), 200);
    let (_, memberships) =
        status_json(root.get("ProjectMembership/_history?_count=100").await).await;
    let admin_membership = memberships["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["resource"]["user"]["reference"]
                == json!(format!(
                    "ClientApplication/{}",
                    project.admin.credentials.client_id
                ))
        })
        .expect("admin membership in history");
    let path = format!(
        "ProjectMembership/{}",
        admin_membership["resource"]["id"].as_str().unwrap()
    );
    assert_eq!(root.delete(&path).await.status(), 200);
    assert_outcome(project.admin.get("Patient/_history").await, 401, "revoked").await;
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// A second instance on `app`'s database, behind the same public URL (the
/// tokens' issuer), as instances behind one load balancer are.
async fn second_instance(app: &TestApp) -> TestApp {
    let base_url = app.base_url.clone();
    app.another_instance(move |config| config.base_url = Some(base_url))
        .await
}

/// Polls `GET path` until it answers 401, for at most five seconds; returns
/// how long that took, or `None` if it never did.
async fn until_refused(session: &fhirgate_tests::Session, path: &str) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if session.get(path).await.status() == 401 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// Marks a Login revoked straight in the database, as an operator would:
/// no fhirgate instance takes part in the write.
async fn revoke_in_sql(app: &TestApp, token: &str) {
    let login_id: uuid::Uuid = claims_of(token)["login_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let changed = app
        .db()
        .await
        .execute(
            "UPDATE resource SET content = jsonb_set(content::jsonb, '{revoked}', 'true')::text \
             WHERE resource_type = 'Login' AND id = $1",
            &[&login_id],
        )
        .await
        .unwrap();
    assert_eq!(changed, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_reach_every_instance_that_remembered_the_caller() {
    let app = TestApp::spawn().await;
    let second = second_instance(&app).await;
    let project = app.project("two instances").await;
    let on_second = |session: &fhirgate_tests::Session| fhirgate_tests::Session {
        base_url: second.local_url.clone(),
        ..session.clone()
    };
    let (member, member_there) = (project.member.clone(), on_second(&project.member));
    let (admin, admin_there) = (project.admin.clone(), on_second(&project.admin));
    // Both instances have loaded (and now remember) both callers.
    for session in [&member, &member_there, &admin, &admin_there] {
        assert_eq!(session.get("Patient/_history").await.status(), 200);
        assert_eq!(session.get("Patient/_history").await.status(), 200);
    }

    // A Login revoked in SQL: neither instance wrote it, both hear of it.
    revoke_in_sql(&app, &member.token).await;
    for session in [&member, &member_there] {
        let took = until_refused(session, "Patient/_history").await;
        assert!(
            took.is_some(),
            "{} still serves a revoked login",
            session.base_url
        );
        assert_outcome(session.get("Patient/_history").await, 401, "revoked").await;
    }

    // A membership deleted through the first instance ends the admin's
    // access on the second.
    let root = app.super_admin().await;
    let (_, memberships) = status_json(
        root.get(&format!(
            "ProjectMembership?user=ClientApplication/{}",
            admin.credentials.client_id
        ))
        .await,
    )
    .await;
    let membership_id = memberships["entry"][0]["resource"]["id"].as_str().unwrap();
    assert_eq!(
        root.delete(&format!("ProjectMembership/{membership_id}"))
            .await
            .status(),
        200
    );
    assert_outcome(admin.get("Patient/_history").await, 401, "revoked").await;
    let took = until_refused(&admin_there, "Patient/_history").await;
    assert!(
        took.is_some(),
        "the second instance still serves a removed membership"
    );
    assert_outcome(admin_there.get("Patient/_history").await, 401, "revoked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_change_listener_nothing_is_remembered() {
    let app = TestApp::spawn().await;
    let project = app.project("deaf").await;
    let member = project.member.clone();
    assert_eq!(member.get("Patient/_history").await.status(), 200);
    assert_eq!(member.get("Patient/_history").await.status(), 200);

    // Cut the instance's listening connection, then change the Login in
    // SQL while it cannot hear (it reconnects after a second).
    let db = app.db().await;
    let listeners = "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2";
    let name = fhirgate_server::store::changes::LISTENER_NAME;
    let terminated = db
        .execute(
            &format!("SELECT pg_terminate_backend(pid) FROM ({listeners}) l"),
            &[&app.database, &name],
        )
        .await
        .unwrap();
    assert_eq!(terminated, 1, "one listening connection per instance");
    while !db
        .query(listeners, &[&app.database, &name])
        .await
        .unwrap()
        .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    revoke_in_sql(&app, &member.token).await;
    assert_outcome(member.get("Patient/_history").await, 401, "revoked").await;
}
