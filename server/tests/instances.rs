//! Two `fhirgate` processes on one database agree at once: what one
//! revokes, changes or rotates, the other enforces on its next request, and
//! what both count or create they count and create once.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;

use std::time::{Duration, Instant};

use common::{start_logging, Admin, Api, Logs, Member, Running, TestDatabase};
use reqwest::Method;
use serde_json::{json, Value};

/// Instances A and B on one new database, and the super admin (signed in to A).
async fn two_instances(database: &TestDatabase) -> (Running, Running, Api, Admin) {
    let admin = Admin::generated();
    let mut env = vec![
        ("FHIRGATE_RETIRING_SECRET_SECONDS", "0"),
        // Behind one load balancer: one public URL, so one token issuer.
        ("FHIRGATE_BASE_URL", "http://fhirgate.test/"),
    ];
    env.extend(admin.env());
    let a = start_logging(&database.url, Logs::Read, &env);
    let b = start_logging(&database.url, Logs::Read, &env);
    let root = Api::sign_in(&a, &admin.client_id, &admin.client_secret).await;
    (a, b, root, admin)
}

/// B answers `path` with `expected` at once, or after a few stale answers
/// while PostgreSQL delivers A's notification (milliseconds; on a machine
/// loaded with builds, B has served one request before its listener ran).
/// Without the notification B would answer from its cache for a minute.
async fn answers_soon(on_b: &Api, path: &str, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut stale = Vec::new();
    loop {
        let answer = status(on_b.get(path).await).await;
        if answer == expected {
            if !stale.is_empty() {
                eprintln!(
                    "{path}: {} stale answers {stale:?} before {expected}",
                    stale.len()
                );
            }
            return;
        }
        stale.push(answer);
        assert!(
            Instant::now() < deadline,
            "{path}: still {stale:?}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn status(response: reqwest::Response) -> u16 {
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revocation_or_change_on_one_instance_holds_on_the_other_at_once() {
    let database = TestDatabase::new();
    let (a, b, root, _) = two_instances(&database).await;
    let project = root.new_project("clinic").await;

    // A policy change on A: B, which remembers the caller, enforces it next.
    let Member {
        api: member,
        membership,
        ..
    } = root
        .project_client(&a, &project, json!({"admin": false}))
        .await;
    let on_b = member.on(&b);
    assert_eq!(status(on_b.get("fhir/R4/Patient").await).await, 200);
    let policy = root
        .create(
            json!({"resourceType": "AccessPolicy", "name": "observations only",
            "meta": {"project": project}, "resource": [{"resourceType": "Observation"}]}),
        )
        .await;
    let mut changed = membership.clone();
    changed["accessPolicy"] =
        json!({"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())});
    let path = format!(
        "fhir/R4/ProjectMembership/{}",
        membership["id"].as_str().unwrap()
    );
    let response = root.send_json(Method::PUT, &path, &changed).await;
    assert_eq!(response.status(), 200);
    answers_soon(&on_b, "fhir/R4/Patient", 403).await;
    assert_eq!(status(on_b.get("fhir/R4/Observation").await).await, 200);

    // The membership deleted on A: B refuses its token next.
    let response = root.request(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(response.status(), 200);
    answers_soon(&on_b, "fhir/R4/Observation", 401).await;

    // A sign-in ended on A (logout): B refuses the token next.
    let member = root
        .project_client(&a, &project, json!({"admin": false}))
        .await
        .api;
    let on_b = member.on(&b);
    assert_eq!(status(on_b.get("fhir/R4/Patient").await).await, 200);
    let response = member
        .request(Method::POST, "oauth2/logout")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    answers_soon(&on_b, "fhir/R4/Patient", 401).await;

    // The project's admin flag taken away on A: B refuses admin work next.
    let Member {
        api: admin,
        membership,
        client_id,
        secret,
    } = root
        .project_client(&a, &project, json!({"admin": true}))
        .await;
    let on_b = admin.on(&b);
    let project_path = format!("admin/projects/{project}");
    assert_eq!(status(on_b.get(&project_path).await).await, 200);
    let mut demoted = membership.clone();
    demoted["admin"] = json!(false);
    let path = format!(
        "fhir/R4/ProjectMembership/{}",
        membership["id"].as_str().unwrap()
    );
    assert_eq!(
        status(root.send_json(Method::PUT, &path, &demoted).await).await,
        200
    );
    answers_soon(&on_b, &project_path, 403).await;

    // The client's secret rotated on A (no retiring period): B refuses the
    // old one.
    let rotate = format!("fhir/R4/ClientApplication/{client_id}/$rotate-secret");
    let response = root.request(Method::POST, &rotate).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let refused = reqwest::Client::new()
        .post(b.url("oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
}

/// A key rotated on A is in B's JWKS and signs B's tokens at once, and A's
/// tokens signed with it verify on B.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_rotated_on_one_instance_is_published_and_used_by_the_other() {
    let database = TestDatabase::new();
    let (a, b, root, admin) = two_instances(&database).await;
    let http = reqwest::Client::new();
    let jwks_of = async |running: &Running| -> Value {
        http.get(running.url(".well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    };
    let publishes = |jwks: &Value, kid: &str| {
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| key["kid"] == kid)
    };
    let before = jwks_of(&b).await;
    let response = root
        .request(Method::POST, "admin/super/keys/rotate")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let kid = response.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!publishes(&before, &kid));
    // B hears of the rotation through PostgreSQL's NOTIFY, within
    // milliseconds; without it B would publish the old set for a minute.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let jwks = jwks_of(&b).await;
        if publishes(&jwks, &kid) {
            // The superseded key stays published while its tokens live.
            assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
            break;
        }
        assert!(Instant::now() < deadline, "B still publishes {jwks}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B signs with the new key; A's new tokens verify on B.
    let from_a = Api::sign_in(&a, &admin.client_id, &admin.client_secret).await;
    let from_b = Api::sign_in(&b, &admin.client_id, &admin.client_secret).await;
    for api in [&from_a, &from_b] {
        assert_eq!(kid_of(&api.token), kid);
    }
    assert_eq!(
        status(from_a.on(&b).get("fhir/R4/Project").await).await,
        200
    );
    // A token B signed before the rotation still verifies on A.
    assert_eq!(status(root.on(&b).get("fhir/R4/Project").await).await, 200);
}

/// The `kid` in a JWT's header.
fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}

/// Failed sign-ins on either instance count towards one lockout.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_counts_failures_on_both_instances() {
    let database = TestDatabase::new();
    let (a, b, _, _) = two_instances(&database).await;
    let http = reqwest::Client::new();
    let email = format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple());
    let attempt = async |running: &Running| -> u16 {
        http.post(running.url("auth/login"))
            .json(
                &json!({"email": email, "password": "wrong password", "scope": "openid",
                "codeChallenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "codeChallengeMethod": "S256"}),
            )
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    // Four failures, two on each: none locks yet (the threshold is five).
    for running in [&a, &b, &a, &b] {
        assert_eq!(attempt(running).await, 400);
    }
    assert_eq!(attempt(&b).await, 429, "the fifth failure locks");
    assert_eq!(attempt(&a).await, 429, "A sees B's lock");
}

/// The same conditional create sent to both instances at once makes one
/// resource.
#[tokio::test(flavor = "multi_thread")]
async fn a_conditional_create_raced_across_instances_creates_one_resource() {
    let database = TestDatabase::new();
    let (a, b, root, _) = two_instances(&database).await;
    let project = root.new_project("clinic").await;
    let admin = root
        .project_client(&a, &project, json!({"admin": true}))
        .await
        .api;
    let patient = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:race", "value": "one"}]});
    let requests = (0..16).map(|i| {
        let api = if i % 2 == 0 {
            admin.clone()
        } else {
            admin.on(&b)
        };
        let patient = patient.clone();
        tokio::spawn(async move {
            api.request(Method::POST, "fhir/R4/Patient")
                .header("Content-Type", "application/fhir+json")
                .header("If-None-Exist", "identifier=urn:race|one")
                .body(patient.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 201),
        "{statuses:?}"
    );
    let found: Value = admin
        .on(&b)
        .get("fhir/R4/Patient?identifier=urn:race|one&_total=accurate")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 1, "{found}");
}
