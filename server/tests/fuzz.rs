//! HTTP fuzzing of every route of the real binary: random methods, paths,
//! headers, query strings and bodies, as anonymous, member and admin
//! callers. No answer is a 500 (or any 5xx but 501), every error body is
//! an OperationOutcome (or an OAuth error object), nothing panics, and the
//! process is still up and healthy at the end.
//!
//! `FHIRGATE_FUZZ_REQUESTS` (default 400) sets the number of requests,
//! `FHIRGATE_FUZZ_SEED` the seed (default: a new one, printed on failure).

#[allow(dead_code)] // Uses part of the shared harness.
mod common;
mod strategies;

use common::{start_logging, Admin, Api, Logs, TestDatabase};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use reqwest::Method;
use serde_json::{json, Value};
use strategies::*;

/// Every route, with `{…}` segments to fill.
const ROUTES: &[&str] = &[
    "/healthcheck",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
    "/.well-known/openid-configuration",
    "/.well-known/smart-configuration",
    "/admin/super/keys/rotate",
    "/auth/changeemail",
    "/auth/changepassword",
    "/auth/emailavailable",
    "/auth/login",
    "/auth/me",
    "/auth/mfa/disable",
    "/auth/mfa/enroll",
    "/auth/mfa/login-enroll",
    "/auth/mfa/status",
    "/auth/mfa/verify",
    "/auth/newpatient",
    "/auth/newproject",
    "/auth/newuser",
    "/auth/profile",
    "/auth/resetpassword",
    "/auth/revoke",
    "/auth/setpassword",
    "/auth/tokens",
    "/auth/verifyemail",
    "/auth/verifyemail/resend",
    "/fhir/R4",
    "/fhir/R4/",
    "/fhir/R4/$export",
    "/fhir/R4/$export-output/{id}/{id}",
    "/fhir/R4/$export-status/{id}",
    "/fhir/R4/ClientApplication/{id}/$rotate-secret",
    "/fhir/R4/Group/{id}/$export",
    "/fhir/R4/Patient/$export",
    "/fhir/R4/Subscription/{id}/$get-ws-binding-token",
    "/fhir/R4/_history",
    "/fhir/R4/_search",
    "/fhir/R4/metadata",
    "/fhir/R4/{type}/{id}/{type}",
    "/fhir/R4/{type}",
    "/fhir/R4/{type}/_history",
    "/fhir/R4/{type}/_search",
    "/fhir/R4/{type}/{id}",
    "/fhir/R4/{type}/{id}/_history",
    "/fhir/R4/{type}/{id}/_history/{id}",
    "/oauth2/authorize",
    "/oauth2/introspect",
    "/oauth2/logout",
    "/oauth2/revoke",
    "/oauth2/token",
    "/oauth2/userinfo",
    "/admin/projects/setpassword",
    "/admin/projects/{project}",
    "/admin/projects/{project}/bot",
    "/admin/projects/{project}/client",
    "/admin/projects/{project}/invite",
    "/admin/projects/{project}/members/{id}",
    "/admin/projects/{project}/members/{id}/tokens",
    "/admin/projects/{project}/members/{id}/tokens/{id}",
    "/{text}",
];

/// One generated request; `caller` picks the token (0: none).
#[derive(Debug, Clone)]
struct Fuzzed {
    method: Method,
    route: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<String>,
    caller: usize,
}

fn segment(project: String) -> impl Strategy<Value = String> {
    prop_oneof![
        resource_type(),
        Just(project),
        Just(uuid::Uuid::nil().to_string()),
        "[a-zA-Z0-9\\-.]{1,64}".prop_map(String::from),
        text(),
    ]
}

fn request(project: String) -> impl Strategy<Value = Fuzzed> {
    let method = prop::sample::select(
        &[
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
        ][..],
    );
    let header_name = prop::sample::select(
        &[
            "Content-Type",
            "Accept",
            "If-Match",
            "If-None-Match",
            "If-None-Exist",
            "If-Modified-Since",
            "Prefer",
            "X-Forwarded-For",
            "Forwarded",
            "Authorization",
            "X-Security-Context",
            "Content-Encoding",
            "Range",
            "X-Request-Id",
            "traceparent",
        ][..],
    );
    let header_value = prop_oneof![
        prop::sample::select(
            &[
                "application/fhir+json",
                "application/json",
                "application/json-patch+json",
                "application/x-www-form-urlencoded",
                "application/octet-stream",
                "text/html",
                "*/*",
                "W/\"1\"",
                "*",
                "return=representation",
                "return=OperationOutcome",
                "handling=strict",
                "handling=lenient",
                "respond-async",
                "Basic Og==",
                "Bearer x",
                "gzip",
                "bytes=0-1",
                "Tue, 01 Jan 2030 00:00:00 GMT",
            ][..]
        )
        .prop_map(String::from),
        "[ -~]{0,40}".prop_map(String::from),
        search_query().prop_map(|q| serde_urlencoded::to_string(q).unwrap_or_default()),
    ];
    let body = prop_oneof![
        resource().prop_map(|r| r.to_string()),
        bundle().prop_map(|b| b.to_string()),
        json_patch().prop_map(|p| p.to_string()),
        fhirpath_patch().prop_map(|p| p.to_string()),
        json().prop_map(|v| v.to_string()),
        search_query().prop_map(|q| serde_urlencoded::to_string(q).unwrap_or_default()),
        text(),
    ];
    (
        method,
        prop::sample::select(ROUTES),
        prop::collection::vec(segment(project), 3),
        search_query(),
        prop::collection::vec((header_name.prop_map(String::from), header_value), 0..4),
        prop::option::of(body),
        0..3usize,
    )
        .prop_map(|(method, route, segments, query, headers, body, caller)| {
            let mut route = route.to_string();
            for (placeholder, value) in ["{type}", "{id}", "{project}", "{text}"]
                .iter()
                .zip(segments.iter().cycle())
            {
                while let Some(at) = route.find(placeholder) {
                    let encoded: String = value
                        .bytes()
                        .map(|b| match b {
                            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'$' => {
                                (b as char).to_string()
                            }
                            _ => format!("%{b:02X}"),
                        })
                        .collect();
                    route.replace_range(at..at + placeholder.len(), &encoded);
                }
            }
            Fuzzed {
                method,
                route,
                query,
                headers,
                body,
                caller,
            }
        })
}

fn count() -> usize {
    std::env::var("FHIRGATE_FUZZ_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

fn seed() -> [u8; 32] {
    let seed: u64 = std::env::var("FHIRGATE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FHIRGATE_FUZZ_SEED={seed}");
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn random_requests_to_every_route_never_fail_the_server() {
    let database = TestDatabase::new();
    let admin = Admin::generated();
    let mut env = vec![
        ("FHIRGATE_LOG_LEVEL", "info"),
        // The fuzz signs in often; the rate limit is not under test.
        ("FHIRGATE_AUTH_RATE_LIMIT", "1000000"),
    ];
    env.extend(admin.env());
    let mut running = start_logging(&database.url, Logs::Kept, &env);
    let root = Api::sign_in(&running, &admin.client_id, &admin.client_secret).await;
    let project = root.new_project("fuzz").await;
    let mut callers = vec![None];
    for admin_flag in [false, true] {
        let member = root
            .project_client(&running, &project, json!({"admin": admin_flag}))
            .await;
        callers.push(Some(member.api.token));
    }
    // Something to find, read, patch and delete.
    for _ in 0..3 {
        root.create(
            json!({"resourceType": "Patient", "meta": {"project": project},
            "name": [{"family": "Fuzz", "given": ["A"]}], "birthDate": "1990-01-01"}),
        )
        .await;
    }

    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed()),
    );
    let strategy = request(project);
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for _ in 0..count() {
        let fuzzed = strategy.new_tree(&mut runner).unwrap().current();
        let mut url = reqwest::Url::parse(&running.url("")).unwrap();
        url.set_path(&fuzzed.route);
        if !fuzzed.query.is_empty() {
            url.set_query(Some(
                &serde_urlencoded::to_string(&fuzzed.query).unwrap_or_default(),
            ));
        }
        let mut builder = http.request(fuzzed.method.clone(), url);
        if let Some(token) = &callers[fuzzed.caller] {
            builder = builder.bearer_auth(token);
        }
        for (name, value) in &fuzzed.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(body) = &fuzzed.body {
            builder = builder.body(body.clone());
        }
        let response = match builder.send().await {
            Ok(response) => response,
            // reqwest refuses some generated headers before sending.
            Err(e) if e.is_builder() => continue,
            Err(e) => {
                failures.push(format!("{fuzzed:?}: no answer: {e}"));
                break;
            }
        };
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.bytes().await.unwrap_or_default();
        if status >= 500 && status != 501 {
            failures.push(format!(
                "{status} for {fuzzed:?}: {}",
                String::from_utf8_lossy(&body)
            ));
            continue;
        }
        if status >= 400 && fuzzed.method != Method::HEAD && content_type.contains("json") {
            let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if parsed["resourceType"] != "OperationOutcome" && parsed.get("error").is_none() {
                failures.push(format!(
                    "{status} without an OperationOutcome for {fuzzed:?}: {parsed}"
                ));
            }
        }
    }
    let health = http
        .get(running.url("healthcheck"))
        .send()
        .await
        .expect("still up");
    assert_eq!(health.status(), 200);
    running.terminate();
    let (status, stderr) = running.wait_with_stderr();
    let log: Vec<String> = running.log.take().unwrap().try_iter().collect();
    let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        panics.is_empty() && !stderr.contains("panicked"),
        "{panics:#?}\n{stderr}"
    );
    assert!(status.success(), "exit after SIGTERM: {status}");
}
