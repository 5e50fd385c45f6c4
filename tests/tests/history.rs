//! History at all three levels, with `_count`, `_since` and next links.

use fhirgate_tests::{assert_outcome, status_json, Session, TestApp};
use serde_json::{json, Value};

/// Follows `next` links from `path`, returning every entry's resource id.
async fn walk(session: &Session, path: &str) -> (Vec<String>, usize) {
    let mut url = session.url(&format!("fhir/R4/{path}"));
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let response = session
            .http
            .get(&url)
            .bearer_auth(&session.token)
            .send()
            .await
            .unwrap();
        let (status, bundle) = status_json(response).await;
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["type"], "history");
        pages += 1;
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            ids.push(entry["request"]["url"].as_str().unwrap().to_string());
        }
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(next) => url = next,
            None => return (ids, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn type_and_system_history_page_through_everything() {
    let app = TestApp::spawn().await;
    let user = app.project("history").await.member;
    let mut expected = Vec::new();
    for i in 0..7 {
        let patient = user
            .create(json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]}))
            .await;
        expected.push(format!("Patient/{}", patient["id"].as_str().unwrap()));
    }
    let observation = user
        .create(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}))
        .await;
    expected.reverse();

    let (ids, pages) = walk(&user, "Patient/_history?_count=3").await;
    assert_eq!(ids, expected, "newest first, no gaps or repeats");
    assert_eq!(pages, 3);

    let (ids, _) = walk(&user, "_history?_count=2").await;
    assert_eq!(ids.len(), 8);
    assert_eq!(
        ids[0],
        format!("Observation/{}", observation["id"].as_str().unwrap())
    );

    // The next link keeps the other parameters and is built on the base URL.
    let (_, bundle) = status_json(user.get("Patient/_history?_count=3").await).await;
    let next = bundle["link"][1]["url"].as_str().unwrap();
    assert!(
        next.starts_with(&format!(
            "{}fhir/R4/Patient/_history?_count=3&_cursor=",
            app.base_url
        )),
        "{next}"
    );
    assert_eq!(bundle["link"][0]["relation"], "self");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_since_and_errors() {
    let app = TestApp::spawn().await;
    let user = app.project("since").await.member;
    let first = user
        .create(json!({"resourceType": "Patient", "active": true}))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = user
        .create(json!({"resourceType": "Patient", "active": false}))
        .await;
    let since = second["meta"]["lastUpdated"].as_str().unwrap();

    let (_, bundle) = status_json(
        user.fhir(reqwest::Method::GET, "Patient/_history")
            .query(&[("_since", since)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    let entries: Vec<&Value> = bundle["entry"].as_array().unwrap().iter().collect();
    assert_eq!(entries.len(), 1, "{bundle}");
    assert_eq!(entries[0]["resource"]["id"], second["id"]);
    assert_ne!(entries[0]["resource"]["id"], first["id"]);
    let entry = entries[0];
    assert_eq!(
        entry["fullUrl"],
        json!(format!(
            "{}fhir/R4/Patient/{}",
            app.base_url,
            second["id"].as_str().unwrap()
        ))
    );
    assert_eq!(
        entry["response"]["etag"],
        json!(format!(
            "W/\"{}\"",
            second["meta"]["versionId"].as_str().unwrap()
        ))
    );

    assert_outcome(user.get("Patient/_history?_count=0").await, 400, "_count").await;
    assert_outcome(
        user.get("Patient/_history?_count=5000").await,
        400,
        "_count",
    )
    .await;
    assert_outcome(
        user.get("Patient/_history?_since=yesterday").await,
        400,
        "_since",
    )
    .await;
    assert_outcome(
        user.get("Patient/_history?_cursor=garbage").await,
        400,
        "_cursor",
    )
    .await;
    assert_outcome(
        user.get("Patient/_history?name=x").await,
        400,
        "Unknown history parameter",
    )
    .await;
    assert_outcome(
        user.get(&format!("Patient/{}/_history", uuid::Uuid::new_v4()))
            .await,
        404,
        "not found",
    )
    .await;
}
