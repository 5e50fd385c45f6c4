//! The operations surface: Prometheus metrics on their own listener, and
//! request ids.

use std::collections::HashMap;

use fhirgate_tests::{status_json, TestApp};
use serde_json::json;

/// One sample of the Prometheus text format: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the text exposition format (0.0.4): `# HELP`/`# TYPE` comments and
/// `name{label="value",…} number` lines; panics on anything else.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "unexpected comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split("\",")
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once("=\"").expect("label=\"value\"");
                        (key.to_string(), value.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), HashMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name}"
        );
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_scraped_from_their_own_listener() {
    let app = TestApp::spawn_with(|config| {
        config.metrics_bind = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics_url = app.metrics_url.clone().expect("metrics listener");
    let project = app.project("metrics").await;
    let patient = project
        .admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Metric"}]}))
        .await;
    let id = patient["id"].as_str().unwrap();
    for _ in 0..3 {
        assert_eq!(
            project.admin.get(&format!("Patient/{id}")).await.status(),
            200
        );
    }
    let response = app
        .login_attempt("nobody@example.com", "wrong password")
        .await;
    assert_eq!(response.status(), 400);

    // Not on the public port.
    let (status, _) = status_json(app.http.get(app.url("metrics")).send().await.unwrap()).await;
    assert_eq!(status, 404);

    let response = app.http.get(&metrics_url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = response.text().await.unwrap();
    let samples = parse_exposition(&text);

    let reads = total(
        &samples,
        "fhirgate_http_requests_total",
        &[
            ("route", "/fhir/R4/{type}/{id}"),
            ("method", "GET"),
            ("status", "200"),
        ],
    );
    assert!(
        reads >= 3.0,
        "reads counted by route template: {reads}\n{text}"
    );
    assert!(
        !text.contains(id),
        "a resource id became a label (unbounded series)"
    );
    assert!(
        total(
            &samples,
            "fhirgate_http_request_duration_seconds_count",
            &[("route", "/fhir/R4/{type}/{id}")]
        ) >= 3.0
    );
    assert!(samples.iter().any(
        |s| s.name == "fhirgate_http_request_duration_seconds_bucket"
            && s.labels.get("le").map(String::as_str) == Some("+Inf")
    ));
    assert!(total(&samples, "fhirgate_logins_total", &[("outcome", "failed")]) >= 1.0);
    assert!(total(&samples, "fhirgate_db_pool_max", &[]) >= 1.0);
    assert!(total(&samples, "fhirgate_db_pool_connections", &[]) >= 1.0);
    assert!(samples.iter().any(|s| s.name == "fhirgate_db_pool_waiting"));
    assert!(total(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&samples, "process_cpu_seconds_total", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_response_names_its_request_id() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url("healthcheck"))
        .header("X-Request-Id", "client-chosen-42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-chosen-42");
    // Missing or unusable ids are replaced with a fresh UUID.
    for header in [None, Some("has spaces in it")] {
        let mut request = app.http.get(app.url("fhir/R4/metadata"));
        if let Some(value) = header {
            request = request.header("X-Request-Id", value);
        }
        let response = request.send().await.unwrap();
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    }
    // Errors carry one too.
    let response = app
        .http
        .get(app.url("fhir/R4/Patient/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("x-request-id"));
}
