//! Bounded work per request: searches, bodies and patches past the limits
//! are clear 400s and 413s that change nothing, and one member flooding the
//! server takes no more than its share of the database from other projects.

use std::time::{Duration, Instant};

use fhirgate_tests::{assert_outcome, count, status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

fn repeated(pair: &str, times: usize) -> String {
    vec![pair; times].join("&")
}

#[tokio::test(flavor = "multi_thread")]
async fn searches_past_the_limits_are_refused_clearly() {
    let app = TestApp::spawn().await;
    let project = app.project("limits").await;
    let member = &project.member;
    member
        .create(json!({"resourceType": "Patient", "name": [{"family": "Kept"}]}))
        .await;

    // 100 conditions are allowed; 101 are not, however they are spelled.
    let allowed = repeated("name=a", 100);
    assert_eq!(
        member.get(&format!("Patient?{allowed}")).await.status(),
        200
    );
    let values = vec!["a"; 101].join(",");
    for query in [
        repeated("name=a", 101),
        format!("name={values}"),
        repeated("name=a", 5_000),
        repeated("organization.name=a", 51),
    ] {
        assert_outcome(
            member.get(&format!("Patient?{query}")).await,
            400,
            "FHIRGATE_MAX_SEARCH_CONDITIONS",
        )
        .await;
    }
    let sort = vec!["family"; 4_000].join(",");
    assert_outcome(
        member.get(&format!("Patient?_sort={sort}")).await,
        400,
        "FHIRGATE_MAX_SORT_KEYS",
    )
    .await;
    let elements = (0..200)
        .map(|n| format!("e{n}"))
        .collect::<Vec<_>>()
        .join(",");
    assert_outcome(
        member.get(&format!("Patient?_elements={elements}")).await,
        400,
        "FHIRGATE_MAX_ELEMENTS",
    )
    .await;
    // The same through a _search body and a conditional create.
    let response = member
        .fhir(Method::POST, "Patient/_search")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(repeated("name=a", 5_000))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "FHIRGATE_MAX_SEARCH_CONDITIONS").await;
    let response = member
        .fhir(Method::POST, "Patient")
        .header("Content-Type", "application/fhir+json")
        .header("If-None-Exist", repeated("name=a", 200))
        .json(&json!({"resourceType": "Patient"}))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "FHIRGATE_MAX_SEARCH_CONDITIONS").await;
    let db = app.db().await;
    let patients = count(
        &db,
        "SELECT count(*) FROM resource WHERE resource_type = 'Patient'",
        &[],
    )
    .await;
    assert_eq!(patients, 1, "nothing was created by a refused request");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_and_patches_past_the_limits_are_refused_before_they_are_parsed() {
    let app = TestApp::spawn_with(|config| {
        config.limits.max_json_values = 2_000;
        config.limits.max_array_length = 100;
        config.limits.max_patch_operations = 50;
    })
    .await;
    let project = app.project("limits").await;
    let member = &project.member;
    let names =
        |n: usize| -> Vec<Value> { (0..n).map(|i| json!({"family": format!("F{i}")})).collect() };

    // Within the limits: stored.
    let patient = member
        .create(json!({"resourceType": "Patient", "name": names(100)}))
        .await;
    let id = patient["id"].as_str().unwrap().to_string();
    // One array too long; too many values overall.
    assert_outcome(
        member
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": names(101)}),
            )
            .await,
        413,
        "FHIRGATE_MAX_ARRAY_LENGTH",
    )
    .await;
    let many: Vec<Value> = (0..30)
        .map(|i| json!({"family": format!("F{i}"), "given": vec!["g"; 90]}))
        .collect();
    assert_outcome(
        member
            .post("Patient", &json!({"resourceType": "Patient", "name": many}))
            .await,
        413,
        "FHIRGATE_MAX_JSON_VALUES",
    )
    .await;
    // Patches: 50 operations pass, 51 do not (JSON Patch and FHIRPath Patch).
    let operations = |n: usize| -> Value {
        (0..n)
            .map(|_| json!({"op": "add", "path": "/gender", "value": "other"}))
            .collect()
    };
    assert_eq!(
        member
            .patch(&format!("Patient/{id}"), &operations(50))
            .await
            .status(),
        200
    );
    assert_outcome(
        member
            .patch(&format!("Patient/{id}"), &operations(51))
            .await,
        413,
        "FHIRGATE_MAX_PATCH_OPERATIONS",
    )
    .await;
    let parameters: Vec<Value> = (0..51)
        .map(|_| {
            json!({"name": "operation", "part": [
                {"name": "type", "valueCode": "replace"},
                {"name": "path", "valueString": "Patient.gender"},
                {"name": "value", "valueCode": "male"}]})
        })
        .collect();
    let response = member
        .fhir(Method::PATCH, &format!("Patient/{id}"))
        .header("Content-Type", "application/fhir+json")
        .json(&json!({"resourceType": "Parameters", "parameter": parameters}))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 413, "FHIRGATE_MAX_PATCH_OPERATIONS").await;
    // A JSON Patch hidden in a Bundle's Binary is held to the same limits.
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(operations(51).to_string());
    let (status, body) = status_json(
        member
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
                    "request": {"method": "PATCH", "url": format!("Patient/{id}")},
                    "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}
                }]}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let (_, stored) = status_json(member.get(&format!("Patient/{id}")).await).await;
    assert_eq!(stored["gender"], "other", "only the allowed patch applied");
}

/// The 99th percentile of `durations`.
fn p99(durations: &mut [Duration]) -> Duration {
    durations.sort();
    durations[(durations.len() * 99 / 100).min(durations.len() - 1)]
}

/// One member floods the server with heavy searches; another project's
/// searches and `/healthcheck` keep answering, and nothing answers 5xx.
#[tokio::test(flavor = "multi_thread")]
async fn one_member_flooding_does_not_starve_other_projects() {
    let app = TestApp::spawn_with(|config| {
        config.workers = 2;
        config.pool_size = 8;
        config.limits.max_concurrent_per_caller = 2;
        config.statement_timeout = Duration::from_secs(10);
        // Fairness, not overload, is under test: another project's search
        // may wait as long as one flood search runs (on a loaded 2-core
        // machine, more than the default 5 s) without being refused.
        config.queue_timeout = Duration::from_secs(10);
    })
    .await;
    let flooder = app.project("flooder").await;
    let other = app.project("other").await;
    // Enough Patients that the flood's searches take real work.
    for batch in 0..4 {
        let entries: Vec<Value> = (0..500)
            .map(|i| {
                json!({"request": {"method": "POST", "url": "Patient"},
                    "resource": {"resourceType": "Patient",
                        "name": [{"family": format!("Family{batch}x{i}"), "given": ["Alexander", "Elena"]}]}})
            })
            .collect();
        let (status, body) = status_json(
            flooder
                .admin
                .post(
                    "",
                    &json!({"resourceType": "Bundle", "type": "batch", "entry": entries}),
                )
                .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    other
        .member
        .create(json!({"resourceType": "Patient", "name": [{"family": "Quiet"}]}))
        .await;

    let flood_until = Instant::now() + Duration::from_secs(6);
    let mut flood = Vec::new();
    for _ in 0..32 {
        let member: Session = flooder.member.clone();
        flood.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < flood_until {
                let response = member
                    .get("Patient?name:contains=e&_total=accurate&_count=1000&_sort=family")
                    .await;
                statuses.push(response.status().as_u16());
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    let mut health = Vec::new();
    while Instant::now() + Duration::from_millis(500) < flood_until {
        let started = Instant::now();
        let (status, body) = status_json(other.member.get("Patient?name=quiet").await).await;
        latencies.push(started.elapsed());
        assert_eq!(
            status, 200,
            "another project's search during the flood: {body}"
        );
        assert_eq!(body["entry"].as_array().map(Vec::len), Some(1), "{body}");
        let response = app.http.get(app.url("healthcheck")).send().await.unwrap();
        health.push(response.status().as_u16());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut flood_statuses = Vec::new();
    for task in flood {
        flood_statuses.extend(task.await.unwrap());
    }
    assert!(health.iter().all(|s| *s == 200), "healthcheck: {health:?}");
    assert!(
        flood_statuses.iter().all(|s| *s == 200 || *s == 429),
        "the flooder sees only answers or 429: {:?}",
        flood_statuses
            .iter()
            .filter(|s| **s != 200 && **s != 429)
            .collect::<Vec<_>>()
    );
    assert!(flood_statuses.contains(&200), "the flood was served");
    let p99 = p99(&mut latencies);
    println!(
        "flood: {} flood requests ({} answered, {} 429); other project: {} searches, p99 {:?}",
        flood_statuses.len(),
        flood_statuses.iter().filter(|s| **s == 200).count(),
        flood_statuses.iter().filter(|s| **s == 429).count(),
        latencies.len(),
        p99
    );
    // Starved, the other project's searches would wait for a connection until
    // the statement timeout and fail; they must not come close.
    assert!(p99 < Duration::from_secs(5), "other project's p99 {p99:?}");
}

/// Large resources and patches are validated and applied on a blocking
/// thread: the answers are the same as for small ones.
#[tokio::test(flavor = "multi_thread")]
async fn large_resources_and_patches_are_checked_like_small_ones() {
    let app = TestApp::spawn().await;
    let project = app.project("large").await;
    let member = &project.member;
    // 120 names of 200 given names each: about 24,000 values.
    let names: Vec<Value> = (0..120)
        .map(|i| json!({"family": format!("F{i}"), "given": vec!["g"; 200]}))
        .collect();
    let patient = member
        .create(json!({"resourceType": "Patient", "name": names.clone()}))
        .await;
    assert_eq!(patient["name"].as_array().map(Vec::len), Some(120));
    let (status, body) = status_json(
        member
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "name": names, "gender": "unknown-gender"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["issue"][0]["expression"][0], "Patient.gender",
        "{body}"
    );
    let operations: Vec<Value> = (0..150)
        .map(|i| json!({"op": "replace", "path": format!("/name/{}/family", i % 120), "value": format!("P{i}")}))
        .collect();
    let (status, patched) = status_json(
        member
            .patch(
                &format!("Patient/{}", patient["id"].as_str().unwrap()),
                &Value::Array(operations),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["name"][0]["family"], "P120");
    assert_eq!(patched["name"][119]["family"], "P119");
}
