//! Conditional create, update, patch and delete, and their behaviour under
//! concurrency.

use fhirgate_tests::{assert_outcome, status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

fn patient(mrn: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}], "active": true})
}

async fn count(s: &Session, query: &str) -> usize {
    let (status, bundle) = status_json(s.get(query).await).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"].as_array().map_or(0, Vec::len)
}

async fn conditional_create(s: &Session, mrn: &str) -> reqwest::Response {
    s.fhir(Method::POST, "Patient")
        .header("If-None-Exist", format!("identifier=urn:mrn|{mrn}"))
        .json(&patient(mrn))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_create_update_patch_delete() {
    let app = TestApp::spawn().await;
    let s = app.project("conditional").await.member;

    // create: 0 matches creates, 1 returns it, 2 is 412
    let (status, first) = status_json(conditional_create(&s, "1").await).await;
    assert_eq!(status, 201);
    let (status, again) = status_json(conditional_create(&s, "1").await).await;
    assert_eq!(status, 200);
    assert_eq!(again["id"], first["id"]);
    assert_eq!(count(&s, "Patient?identifier=urn:mrn|1").await, 1);
    s.create(patient("dup")).await;
    s.create(patient("dup")).await;
    assert_outcome(conditional_create(&s, "dup").await, 412, "More than one").await;

    // update: 0 creates, 1 updates (400 if the body names another id), >1 is 412
    let mut body = patient("2");
    body["gender"] = json!("female");
    let (status, created) = status_json(s.put("Patient?identifier=urn:mrn|2", &body).await).await;
    assert_eq!(status, 201, "{created}");
    body["gender"] = json!("male");
    let (status, updated) = status_json(s.put("Patient?identifier=urn:mrn|2", &body).await).await;
    assert_eq!(
        (status, &updated["id"], updated["gender"].as_str()),
        (200, &created["id"], Some("male"))
    );
    body["id"] = json!(uuid::Uuid::new_v4().to_string());
    assert_outcome(
        s.put("Patient?identifier=urn:mrn|2", &body).await,
        400,
        "not the id",
    )
    .await;
    assert_outcome(
        s.put("Patient?identifier=urn:mrn|dup", &patient("dup"))
            .await,
        412,
        "More than one",
    )
    .await;
    assert_outcome(
        s.put("Patient", &patient("x")).await,
        400,
        "needs search parameters",
    )
    .await;

    // patch: 0 is 404, 1 patches, >1 is 412
    let ops = json!([{"op": "replace", "path": "/active", "value": false}]);
    let (status, patched) = status_json(s.patch("Patient?identifier=urn:mrn|2", &ops).await).await;
    assert_eq!((status, patched["active"].as_bool()), (200, Some(false)));
    assert_outcome(
        s.patch("Patient?identifier=urn:mrn|none", &ops).await,
        404,
        "No Patient matches",
    )
    .await;
    assert_outcome(
        s.patch("Patient?identifier=urn:mrn|dup", &ops).await,
        412,
        "More than one",
    )
    .await;

    // delete: every match, up to the maximum
    assert_eq!(
        s.delete("Patient?identifier=urn:mrn|dup").await.status(),
        200
    );
    assert_eq!(count(&s, "Patient?identifier=urn:mrn|dup").await, 0);
    assert_eq!(
        s.delete("Patient?identifier=urn:mrn|none").await.status(),
        200
    );
    assert_outcome(s.delete("Patient").await, 400, "needs search parameters").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_delete_has_a_maximum() {
    let app = TestApp::spawn_with(|config| config.max_conditional_delete = 2).await;
    let s = app.project("delete-max").await.member;
    for _ in 0..3 {
        s.create(patient("many")).await;
    }
    assert_outcome(
        s.delete("Patient?identifier=urn:mrn|many").await,
        412,
        "at most 2",
    )
    .await;
    assert_eq!(
        count(&s, "Patient?identifier=urn:mrn|many").await,
        3,
        "nothing was deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_conditional_writes_make_one_resource() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let s = app.project("race").await.member;
    let creates = (0..32).map(|_| conditional_create(&s, "race"));
    let statuses: Vec<u16> = futures_util::future::join_all(creates)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 201),
        "{statuses:?}"
    );
    assert_eq!(count(&s, "Patient?identifier=urn:mrn|race").await, 1);

    let updates = (0..32).map(|i| {
        let s = s.clone();
        async move {
            let mut body = patient("race-update");
            body["birthDate"] = json!(format!("2000-01-{:02}", i % 28 + 1));
            s.put("Patient?identifier=urn:mrn|race-update", &body)
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(updates).await;
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 201),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(count(&s, "Patient?identifier=urn:mrn|race-update").await, 1);
}
