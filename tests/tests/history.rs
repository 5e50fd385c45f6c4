//! History at all three levels, with `_count`, `_since` and next links.

use fhirgate_tests::{assert_outcome, status_json, Session, TestApp};
use serde_json::{json, Value};

/// Follows `next` links from `path`, returning every entry and the number of pages.
async fn entries(session: &Session, path: &str) -> (Vec<Value>, usize) {
    let mut url = session.url(&format!("fhir/R4/{path}"));
    let mut entries = Vec::new();
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
        entries.extend(bundle["entry"].as_array().into_iter().flatten().cloned());
        let next = bundle["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_string());
        match next {
            Some(next) => url = next,
            None => return (entries, pages),
        }
    }
}

/// Follows `next` links from `path`, returning every entry's request URL (`Type/id`).
async fn walk(session: &Session, path: &str) -> (Vec<String>, usize) {
    let (entries, pages) = entries(session, path).await;
    let urls = entries
        .iter()
        .map(|entry| entry["request"]["url"].as_str().unwrap().to_string())
        .collect();
    (urls, pages)
}

/// The version id a history entry's ETag (`W/"…"`) names.
fn version_of(entry: &Value) -> String {
    entry["response"]["etag"]
        .as_str()
        .unwrap()
        .trim_start_matches("W/\"")
        .trim_end_matches('"')
        .to_string()
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

/// A resource's current version is stored once (its row); history keeps the
/// versions it superseded. Paging through history crosses the two without
/// losing or repeating a version, deletions included.
#[tokio::test(flavor = "multi_thread")]
async fn history_pages_across_current_and_superseded_versions() {
    let app = TestApp::spawn().await;
    let project = app.project("versions").await;
    let user = project.member;
    let patient = user
        .create(json!({"resourceType": "Patient", "name": [{"family": "V1"}]}))
        .await;
    let id = patient["id"].as_str().unwrap().to_string();
    let mut versions = vec![patient["meta"]["versionId"].as_str().unwrap().to_string()];
    let mut families = vec![Some("V1".to_string())];
    for family in ["V2", "V3"] {
        let (status, updated) = status_json(
            user.put(
                &format!("Patient/{id}"),
                &json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{updated}");
        versions.push(updated["meta"]["versionId"].as_str().unwrap().to_string());
        families.push(Some(family.to_string()));
    }
    assert_eq!(user.delete(&format!("Patient/{id}")).await.status(), 200);
    let (_, history) =
        status_json(user.get(&format!("Patient/{id}/_history?_count=1")).await).await;
    versions.push(version_of(&history["entry"][0]));
    families.push(None);
    let (status, recreated) = status_json(
        user.put(
            &format!("Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "name": [{"family": "V5"}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{recreated}");
    versions.push(recreated["meta"]["versionId"].as_str().unwrap().to_string());
    families.push(Some("V5".to_string()));
    versions.reverse();
    families.reverse();

    // Two versions a page: the current one and the superseded ones, newest first.
    let (seen, pages) = entries(&user, &format!("Patient/{id}/_history?_count=2")).await;
    assert_eq!(pages, 3);
    let seen_versions: Vec<String> = seen.iter().map(version_of).collect();
    let seen_families: Vec<Option<String>> = seen
        .iter()
        .map(|entry| {
            entry["resource"]["name"][0]["family"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(seen_versions, versions);
    assert_eq!(seen_families, families, "the deletion has no resource");

    // Every version reads back, the current one and the superseded ones.
    for (version, family) in versions.iter().zip(&families) {
        let response = user.get(&format!("Patient/{id}/_history/{version}")).await;
        match family {
            Some(family) => {
                let (status, body) = status_json(response).await;
                assert_eq!(status, 200, "{body}");
                assert_eq!(body["name"][0]["family"], json!(family));
            }
            None => assert_eq!(response.status(), 410),
        }
    }

    // Stored: one current row, and one history row per superseded version.
    assert_eq!(app.history_rows(&id).await, versions.len() - 1);

    // The type and system levels list the same versions.
    let (ids, _) = walk(&user, "Patient/_history?_count=2").await;
    assert_eq!(ids.len(), versions.len());
    let (ids, _) = walk(&user, "_history?_count=4").await;
    assert_eq!(ids.len(), versions.len());
}
