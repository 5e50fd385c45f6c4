//! Binary end to end: bytes in and out unchanged (raw and FHIR JSON forms),
//! the size limit (413, nothing stored), replacement, tenant isolation and
//! `securityContext`.

use base64::{engine::general_purpose::STANDARD, Engine};
use fhirgate_tests::{assert_outcome, count, status_json, Session, TestApp, TestProject};
use reqwest::{Method, Response};
use serde_json::{json, Value};

/// PNG-like bytes: the PNG signature, then `len - 8` bytes that vary.
fn png(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    bytes.extend((0..len - 8).map(|i| (i as u64 * 31 + seed as u64 * 7 % 251) as u8));
    bytes
}

async fn upload(session: &Session, content_type: &str, bytes: Vec<u8>) -> Response {
    session
        .fhir(Method::POST, "Binary")
        .header("Content-Type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("POST Binary")
}

/// `pieces` pieces of 300,000 bytes sent without a `Content-Length`.
async fn streamed(session: &Session, method: Method, path: &str, pieces: u8) -> Response {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..pieces).map(|i| Ok(png(300_000, i))).collect();
    session
        .fhir(method, path)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .send()
        .await
        .expect("streamed upload")
}

async fn download(session: &Session, id: &str) -> Response {
    session
        .fhir(Method::GET, &format!("Binary/{id}"))
        .header("Accept", "*/*")
        .send()
        .await
        .expect("GET Binary")
}

async fn created_id(response: Response) -> String {
    let (status, body) = status_json(response).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").to_string()
}

async fn stored_rows(app: &TestApp) -> (i64, i64) {
    let db = app.db().await;
    (
        count(&db, "SELECT count(*) FROM binary_chunk", &[]).await,
        count(
            &db,
            "SELECT count(*) FROM resource WHERE resource_type = 'Binary'",
            &[],
        )
        .await,
    )
}

/// A client of `project` bound by an AccessPolicy with these `resource` entries.
async fn client_with_policy(app: &TestApp, project: &TestProject, resources: Value) -> Session {
    let policy = project
        .admin
        .create(json!({"resourceType": "AccessPolicy", "resource": resources}))
        .await;
    let reference = format!("AccessPolicy/{}", policy["id"].as_str().unwrap());
    let root = app.super_admin().await;
    app.client_with(
        &root,
        &project.id,
        json!({"accessPolicy": {"reference": reference}}),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_round_trip_unchanged_in_both_forms() {
    let app = TestApp::spawn().await;
    let project = app.project("binary").await;
    let member = &project.member;
    // Several chunks and a partial last one.
    let bytes = png(700_001, 1);
    let (status, created) = status_json(upload(member, "image/png", bytes.clone()).await).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["contentType"], "image/png");
    assert!(created.get("data").is_none(), "{created}");
    let id = created["id"].as_str().unwrap();
    // Where the bytes are, as Medplum's createAttachment expects.
    assert_eq!(created["url"], app.url(&format!("fhir/R4/Binary/{id}")));

    let response = download(member, id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/png");
    assert_eq!(response.headers()["content-length"], "700001");
    assert!(response.headers().contains_key("etag"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let response = member
        .fhir(Method::GET, &format!("Binary/{id}"))
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    let (status, json_form) = status_json(response).await;
    assert_eq!(status, 200);
    assert_eq!(json_form["resourceType"], "Binary");
    assert_eq!(json_form["contentType"], "image/png");
    let data = STANDARD
        .decode(json_form["data"].as_str().expect("data"))
        .unwrap();
    assert_eq!(data, bytes);

    // The FHIR JSON form in, bytes out.
    let pdf = b"%PDF-1.4 a tiny document".to_vec();
    let id2 = created_id(
        member
            .post(
                "Binary",
                &json!({"resourceType": "Binary", "contentType": "application/pdf",
                        "data": STANDARD.encode(&pdf)}),
            )
            .await,
    )
    .await;
    let response = download(member, &id2).await;
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert_eq!(response.bytes().await.unwrap().as_ref(), pdf.as_slice());

    // A DocumentReference whose attachment points at the Binary: its url
    // fetches the bytes.
    let document = member
        .create(json!({"resourceType": "DocumentReference", "status": "current",
            "content": [{"attachment": {"contentType": "image/png", "url": format!("Binary/{id}")}}]}))
        .await;
    let url = document["content"][0]["attachment"]["url"]
        .as_str()
        .unwrap();
    let response = download(member, url.trim_start_matches("Binary/")).await;
    assert_eq!(response.bytes().await.unwrap().len(), bytes.len());

    // Not base64: 400, nothing stored.
    let before = stored_rows(&app).await;
    assert_outcome(
        member
            .post(
                "Binary",
                &json!({"resourceType": "Binary", "contentType": "text/plain", "data": "***"}),
            )
            .await,
        400,
        "base64",
    )
    .await;
    assert_eq!(stored_rows(&app).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn put_replaces_the_bytes_and_same_bytes_change_nothing() {
    let app = TestApp::spawn().await;
    let project = app.project("binary-put").await;
    let admin = &project.admin;
    let id = created_id(upload(admin, "image/png", png(300_000, 1)).await).await;
    let first = download(admin, &id).await;
    let first_etag = first.headers()["etag"].clone();

    let replacement = png(1_000, 2);
    let put = |bytes: Vec<u8>, content_type: &'static str| {
        admin
            .fhir(Method::PUT, &format!("Binary/{id}"))
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
    };
    let (status, updated) =
        status_json(put(replacement.clone(), "image/jpeg").await.unwrap()).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["contentType"], "image/jpeg");
    let second = download(admin, &id).await;
    let second_etag = second.headers()["etag"].clone();
    assert_ne!(first_etag, second_etag);
    assert_eq!(second.headers()["content-type"], "image/jpeg");
    assert_eq!(
        second.bytes().await.unwrap().as_ref(),
        replacement.as_slice()
    );
    let db = app.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM binary_chunk", &[]).await,
        1
    );

    // Deleted, its bytes go with it.
    let before_delete = count(&db, "SELECT count(*) FROM binary_chunk", &[]).await;
    let other = created_id(upload(admin, "image/png", png(10, 9)).await).await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM binary_chunk", &[]).await,
        before_delete + 1
    );
    assert_eq!(admin.delete(&format!("Binary/{other}")).await.status(), 200);
    assert_eq!(
        count(&db, "SELECT count(*) FROM binary_chunk", &[]).await,
        before_delete
    );
    assert_eq!(download(admin, &other).await.status(), 410);

    // The same bytes again: no new version.
    let (status, same) = status_json(put(replacement.clone(), "image/jpeg").await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        format!("W/\"{}\"", same["meta"]["versionId"].as_str().unwrap()),
        second_etag.to_str().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_size_limit_refuses_larger_uploads_and_stores_nothing() {
    let app = TestApp::spawn_with(|config| config.max_binary_bytes = 1_000_000).await;
    let project = app.project("binary-limit").await;
    let member = &project.member;
    let id = created_id(upload(member, "application/octet-stream", png(1_000_000, 3)).await).await;
    assert_eq!(
        download(member, &id).await.bytes().await.unwrap().len(),
        1_000_000
    );
    let before = stored_rows(&app).await;

    // Declared too large: refused before the body is read.
    assert_outcome(
        upload(member, "application/octet-stream", png(1_000_001, 3)).await,
        413,
        "1000000",
    )
    .await;
    // Streamed without a length: refused when the count passes the limit,
    // after chunks were written in the transaction that is rolled back.
    let response = streamed(member, Method::POST, "Binary", 5).await;
    assert_outcome(response, 413, "1000000").await;
    // Replacing with too much leaves the old bytes.
    let response = streamed(member, Method::PUT, &format!("Binary/{id}"), 4).await;
    assert_outcome(response, 413, "1000000").await;
    assert_eq!(stored_rows(&app).await, before);
    assert_eq!(
        download(member, &id).await.bytes().await.unwrap().as_ref(),
        png(1_000_000, 3).as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn another_project_sees_nothing_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let owner = app.project("binary-owner").await;
    let other = app.project("binary-other").await;
    let bytes = png(5_000, 4);
    let id = created_id(upload(&owner.member, "image/png", bytes.clone()).await).await;
    assert_outcome(download(&other.admin, &id).await, 404, &id).await;
    let response = other
        .admin
        .fhir(Method::GET, &format!("Binary/{id}"))
        .header("Accept", "application/fhir+json")
        .send()
        .await
        .unwrap();
    assert_outcome(response, 404, &id).await;
    let response = other
        .admin
        .fhir(Method::PUT, &format!("Binary/{id}"))
        .header("Content-Type", "text/plain")
        .body("overwritten")
        .send()
        .await
        .unwrap();
    let (status, _) = status_json(response).await;
    assert!(status == 404 || status == 405, "{status}");
    assert_eq!(
        download(&owner.member, &id)
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        bytes.as_slice()
    );
    // The bytes are stored under the owner's project only.
    let db = app.db().await;
    let owner_id: uuid::Uuid = owner.id.parse().unwrap();
    let binary_id: uuid::Uuid = id.parse().unwrap();
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM binary_chunk WHERE binary_id = $1 AND project_id <> $2",
            &[&binary_id, &owner_id]
        )
        .await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn security_context_and_access_policy_decide_who_reads() {
    let app = TestApp::spawn().await;
    let project = app.project("binary-policy").await;
    let admin = &project.admin;
    let secret_doc = admin
        .create(
            json!({"resourceType": "DocumentReference", "status": "current",
                        "content": [{"attachment": {"contentType": "image/png"}}]}),
        )
        .await;
    let context = format!("DocumentReference/{}", secret_doc["id"].as_str().unwrap());
    let guarded = created_id(
        admin
            .fhir(Method::POST, "Binary")
            .header("Content-Type", "image/png")
            .header("X-Security-Context", &context)
            .body(png(100, 5))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let open = created_id(upload(admin, "image/png", png(100, 6)).await).await;

    // A caller whose policy reads Binary but not DocumentReference.
    let viewer = client_with_policy(&app, &project, json!([{"resourceType": "Binary"}])).await;
    assert_eq!(download(&viewer, &open).await.status(), 200);
    assert_outcome(download(&viewer, &guarded).await, 404, &guarded).await;
    assert_eq!(download(admin, &guarded).await.status(), 200);
    // Nor does a search show it what its context hides; the admin finds both.
    let found = |bundle: Value| -> Vec<String> {
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, bundle) = status_json(viewer.get("Binary").await).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(found(bundle), std::slice::from_ref(&open));
    let (_, bundle) = status_json(admin.get("Binary?_count=10").await).await;
    let mut both = found(bundle);
    both.sort();
    let mut expected = vec![open.clone(), guarded.clone()];
    expected.sort();
    assert_eq!(both, expected);
    // It cannot attach new bytes to what it cannot read either.
    let response = viewer
        .fhir(Method::POST, "Binary")
        .header("Content-Type", "image/png")
        .header("X-Security-Context", &context)
        .body(png(100, 7))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "securityContext").await;

    // A caller without Binary in its policy may neither upload nor read.
    let clerk = client_with_policy(&app, &project, json!([{"resourceType": "Patient"}])).await;
    assert_outcome(
        upload(&clerk, "image/png", png(100, 8)).await,
        403,
        "Binary",
    )
    .await;
    assert_outcome(download(&clerk, &open).await, 403, "Binary").await;
}
