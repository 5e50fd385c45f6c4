//! Brute-force protection: per-email lockout in PostgreSQL (doubling, reset
//! on success, the same for unknown emails, shared by instances) and the
//! per-address rate limit on `/auth/*` and `/oauth2/*`.

use fhirgate_tests::{assert_outcome, TestApp, TEST_PASSWORD};
use reqwest::Response;

async fn attempt(app: &TestApp, email: &str, password: &str) -> Response {
    app.login_attempt(email, password).await
}

#[tokio::test(flavor = "multi_thread")]
async fn five_failures_lock_known_and_unknown_emails_alike() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    for email in [user.email.as_str(), "nobody@example.com"] {
        for _ in 0..4 {
            assert_outcome(
                attempt(&app, email, "wrong password").await,
                400,
                "Email or password is invalid",
            )
            .await;
        }
        // The fifth failure locks.
        let response = attempt(&app, email, "wrong password").await;
        let retry: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((55..=60).contains(&retry), "{retry}");
        assert_outcome(
            response,
            429,
            "Too many failed sign-in attempts for this email; try again after",
        )
        .await;
        // Locked: even the right password is refused, without checking it.
        let response = attempt(&app, email, TEST_PASSWORD).await;
        assert_outcome(response, 429, "try again after").await;
    }
    // Other emails are not affected; the email's case does not matter.
    let response = attempt(&app, "DOCTOR@example.com", TEST_PASSWORD).await;
    assert_eq!(response.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn success_resets_the_count() {
    let app = TestApp::spawn().await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    for _ in 0..4 {
        assert_eq!(
            attempt(&app, &user.email, "wrong password").await.status(),
            400
        );
    }
    assert_eq!(
        attempt(&app, &user.email, TEST_PASSWORD).await.status(),
        200
    );
    for _ in 0..4 {
        assert_eq!(
            attempt(&app, &user.email, "wrong password").await.status(),
            400
        );
    }
    assert_eq!(
        attempt(&app, &user.email, TEST_PASSWORD).await.status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_period_doubles_and_holds_across_instances() {
    let app = TestApp::spawn_with(|config| {
        config.lockout_threshold = 2;
        config.lockout_period = std::time::Duration::from_secs(2);
    })
    .await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doctor@example.com", "Practitioner", false)
        .await;
    assert_eq!(
        attempt(&app, &user.email, "wrong password").await.status(),
        400
    );
    let locked = attempt(&app, &user.email, "wrong password").await;
    assert_eq!(locked.status(), 429);
    assert_eq!(locked.headers()["retry-after"], "2");

    // A second instance on the same database sees the lock.
    let database = app.database.clone();
    let second = TestApp::spawn_with(move |config| {
        config.database_url = format!("{}/{database}", fhirgate_tests::postgres_server());
        config.lockout_threshold = 2;
        config.lockout_period = std::time::Duration::from_secs(2);
    })
    .await;
    assert_eq!(
        attempt(&second, &user.email, TEST_PASSWORD).await.status(),
        429
    );

    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // One more failure after the lock: locked again, for twice as long.
    let locked = attempt(&second, &user.email, "wrong password").await;
    assert_eq!(locked.status(), 429);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3..=4).contains(&retry), "{retry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_routes_are_rate_limited_per_address() {
    let app = TestApp::spawn_with(|config| config.auth_rate_limit = 3).await;
    let root = app.super_admin().await; // one token request
    for _ in 0..2 {
        assert_eq!(
            attempt(&app, "x@example.com", "whatever-password")
                .await
                .status(),
            400
        );
    }
    let response = attempt(&app, "x@example.com", "whatever-password").await;
    assert!(
        response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_outcome(
        response,
        429,
        "Too many sign-in and token requests from this address",
    )
    .await;
    let (status, _) = app.token(&[("grant_type", "client_credentials")]).await;
    assert_eq!(status, 429);
    // FHIR routes are not limited by it.
    assert_eq!(root.get("Project/_history").await.status(), 200);
}
