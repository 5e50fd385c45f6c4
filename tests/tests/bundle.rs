//! Batch and transaction Bundles.

use fhirgate_tests::{assert_outcome, status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

fn post(full_url: &str, resource: Value) -> Value {
    let resource_type = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource_type}})
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

async fn send(s: &Session, bundle: &Value) -> (u16, Value) {
    status_json(s.post("", bundle).await).await
}

async fn count(s: &Session, query: &str) -> usize {
    let (_, found) = status_json(s.get(query).await).await;
    found["entry"].as_array().map_or(0, Vec::len)
}

fn id_from_location(entry: &Value) -> String {
    entry["response"]["location"]
        .as_str()
        .unwrap()
        .split('/')
        .rev()
        .nth(2)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_resolves_references_and_answers_per_entry() {
    let app = TestApp::spawn().await;
    let s = app.project("transaction").await.member;
    let request = bundle(
        "transaction",
        vec![
            // Listed first, processed last: it sees the patient created below.
            json!({"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|tx-1"}}),
            post(
                "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                json!({
                    "resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                    "subject": {"reference": "urn:uuid:88f151c0-a954-468a-88ce-6b2b5c7c1a30"},
                    "hasMember": [{"reference": "urn:uuid:88f151c0-a954-468a-88ce-6b2b5c7c1a30"}],
                    "note": [{"text": "about urn:uuid:88f151c0-a954-468a-88ce-6b2b5c7c1a30"}]
                }),
            ),
            post(
                "urn:uuid:88f151c0-a954-468a-88ce-6b2b5c7c1a30",
                json!({
                    "resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "tx-1"}]
                }),
            ),
        ],
    );
    let (status, response) = send(&s, &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().unwrap();
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert!(entries[2]["response"]["etag"]
        .as_str()
        .unwrap()
        .starts_with("W/\""));
    assert!(entries[2]["response"]["lastModified"].is_string());
    let patient_id = id_from_location(&entries[2]);
    let observation_id = id_from_location(&entries[1]);
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(
        entries[0]["resource"]["entry"][0]["resource"]["id"],
        json!(patient_id)
    );

    let (_, observation) = status_json(s.get(&format!("Observation/{observation_id}")).await).await;
    let expected = json!(format!("Patient/{patient_id}"));
    assert_eq!(observation["subject"]["reference"], expected);
    assert_eq!(observation["hasMember"][0]["reference"], expected);
    assert_eq!(
        count(&s, &format!("Observation?subject=Patient/{patient_id}")).await,
        1
    );

    // Conditional references and If-None-Exist inside a transaction.
    let request = bundle(
        "transaction",
        vec![
            json!({"fullUrl": "urn:uuid:0b7c5e0c-4a57-4a37-9c87-1a1e5bb7b0d1",
               "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "tx-1"}]},
               "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|tx-1"}}),
            post(
                "urn:uuid:5c9a1f6e-2f0e-4a3c-8d1b-9e7f6a5b4c3d",
                json!({
                    "resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                    "subject": {"reference": "Patient?identifier=urn:mrn|tx-1"}
                }),
            ),
            post(
                "urn:uuid:7d2e4f6a-8b9c-4d1e-a2f3-b4c5d6e7f8a9",
                json!({
                    "resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                    "subject": {"reference": "urn:uuid:0b7c5e0c-4a57-4a37-9c87-1a1e5bb7b0d1"}
                }),
            ),
        ],
    );
    let (status, response) = send(&s, &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["entry"][0]["response"]["status"], "200 OK",
        "existing patient reused"
    );
    assert_eq!(id_from_location(&response["entry"][0]), patient_id);
    assert_eq!(
        count(&s, &format!("Encounter?subject=Patient/{patient_id}")).await,
        2
    );
    assert_eq!(count(&s, "Patient?identifier=urn:mrn|tx-1").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_transaction_leaves_no_trace() {
    let app = TestApp::spawn().await;
    let s = app.project("rollback").await.member;
    let request = bundle(
        "transaction",
        vec![
            post(
                "urn:uuid:a1",
                json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "rb"}]}),
            ),
            post(
                "urn:uuid:a2",
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                    "subject": {"reference": "urn:uuid:a1"}}),
            ),
            post(
                "urn:uuid:a3",
                json!({"resourceType": "Patient", "birthDate": "not a date"}),
            ),
        ],
    );
    let (status, outcome) = send(&s, &request).await;
    assert_eq!(status, 400, "{outcome}");
    let text = outcome.to_string();
    assert!(text.contains("Bundle.entry[2] (urn:uuid:a3)"), "{text}");
    assert!(
        text.contains("Bundle.entry[2].resource.Patient.birthDate"),
        "{text}"
    );
    assert_eq!(count(&s, "Patient?identifier=urn:mrn|rb").await, 0);
    assert_eq!(count(&s, "Observation").await, 0);
    let (_, history) = status_json(s.get("_history").await).await;
    assert!(
        history["entry"].as_array().is_none_or(Vec::is_empty),
        "history shows nothing: {history}"
    );

    // Conditional references must match exactly one resource.
    let request = bundle(
        "transaction",
        vec![post(
            "urn:uuid:b1",
            json!({
                "resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Patient?identifier=urn:mrn|nobody"}
            }),
        )],
    );
    assert_outcome(s.post("", &request).await, 400, "matches no resource").await;

    // Duplicate fullUrls, two writes to one resource, wrong Bundle types.
    let patient = json!({"resourceType": "Patient"});
    let request = bundle(
        "transaction",
        vec![
            post("urn:uuid:c1", patient.clone()),
            post("urn:uuid:c1", patient.clone()),
        ],
    );
    assert_outcome(s.post("", &request).await, 400, "appears twice").await;
    let created = s.create(patient.clone()).await;
    let id = created["id"].as_str().unwrap();
    let put = json!({"resource": created.clone(), "request": {"method": "PUT", "url": format!("Patient/{id}")}});
    let delete = json!({"request": {"method": "DELETE", "url": format!("Patient/{id}")}});
    assert_outcome(
        s.post("", &bundle("transaction", vec![put, delete])).await,
        400,
        "more than one entry",
    )
    .await;
    assert_outcome(
        s.post("", &bundle("collection", vec![])).await,
        400,
        "batch' or 'transaction'",
    )
    .await;
    assert_eq!(
        s.get(&format!("Patient/{id}")).await.status(),
        200,
        "the refused transaction deleted nothing"
    );
}

/// A transaction's GET and HEAD entries run inside it, after its writes:
/// they see what it wrote before it commits, and one that fails rolls the
/// writes back.
#[tokio::test(flavor = "multi_thread")]
async fn transaction_reads_see_its_writes_and_a_failed_read_undoes_them() {
    let app = TestApp::spawn().await;
    let s = app.project("transaction-reads").await.member;
    let existing = s
        .create(json!({"resourceType": "Patient", "gender": "female"}))
        .await;
    let existing_id = existing["id"].as_str().unwrap().to_string();
    let patient = |mrn: &str| json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]});
    let mut changed = existing.clone();
    changed["gender"] = json!("male");
    let update = json!({"resource": changed, "request": {"method": "PUT", "url": format!("Patient/{existing_id}")}});

    // Listed first, run last: the new Patient by its fullUrl, by search, and
    // the updated one's new version.
    let request = bundle(
        "transaction",
        vec![
            json!({"request": {"method": "GET", "url": "urn:uuid:5d1c1f3e-0d5a-4a43-9a43-1b1f0e3c7a01"}}),
            json!({"request": {"method": "HEAD", "url": "Patient?identifier=urn:mrn|read-1"}}),
            json!({"request": {"method": "GET", "url": format!("Patient/{existing_id}")}}),
            post(
                "urn:uuid:5d1c1f3e-0d5a-4a43-9a43-1b1f0e3c7a01",
                patient("read-1"),
            ),
            update.clone(),
        ],
    );
    let (status, response) = send(&s, &request).await;
    assert_eq!(status, 200, "{response}");
    let entries = response["entry"].as_array().unwrap();
    let created = id_from_location(&entries[3]);
    assert_eq!(entries[0]["response"]["status"], "200 OK");
    assert_eq!(entries[0]["resource"]["id"], json!(created), "{response}");
    assert_eq!(entries[1]["response"]["status"], "200 OK");
    assert!(
        entries[1].get("resource").is_none(),
        "HEAD has no body: {response}"
    );
    assert_eq!(entries[2]["resource"]["gender"], "male", "{response}");
    assert_eq!(
        entries[2]["resource"]["meta"]["versionId"], entries[4]["resource"]["meta"]["versionId"],
        "the read sees the version the transaction wrote: {response}"
    );

    // A read of a missing resource, or a search that is refused, fails the
    // transaction: neither the create nor the update stays.
    let missing = format!("Patient/{}", uuid::Uuid::new_v4());
    let (_, mut changed_again) = status_json(s.get(&format!("Patient/{existing_id}")).await).await;
    changed_again["gender"] = json!("other");
    let update = json!({"resource": changed_again, "request": {"method": "PUT", "url": format!("Patient/{existing_id}")}});
    for (read, status, needle) in [
        (missing.as_str(), 404, "Bundle.entry[0]"),
        ("Patient?no-such-parameter=1", 400, "no-such-parameter"),
    ] {
        let request = bundle(
            "transaction",
            vec![
                json!({"request": {"method": "GET", "url": read}}),
                post(
                    "urn:uuid:5d1c1f3e-0d5a-4a43-9a43-1b1f0e3c7a02",
                    patient("read-2"),
                ),
                update.clone(),
            ],
        );
        let outcome = assert_outcome(s.post("", &request).await, status, needle).await;
        assert!(outcome.to_string().contains("Bundle.entry[0]"), "{outcome}");
        assert_eq!(
            count(&s, "Patient?identifier=urn:mrn|read-2").await,
            0,
            "{read}"
        );
        let (_, stored) = status_json(s.get(&format!("Patient/{existing_id}")).await).await;
        assert_eq!(
            stored["gender"], "male",
            "{read}: the update was rolled back"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_entries_succeed_or_fail_on_their_own() {
    let app = TestApp::spawn().await;
    let s = app.project("batch").await.member;
    let existing = s
        .create(json!({"resourceType": "Patient", "active": true}))
        .await;
    let id = existing["id"].as_str().unwrap();
    let vid = existing["meta"]["versionId"].as_str().unwrap();
    let patch = base64_json(&json!([{"op": "replace", "path": "/active", "value": false}]));
    let request = bundle(
        "batch",
        vec![
            post(
                "urn:uuid:d1",
                json!({"resourceType": "Patient", "gender": "female"}),
            ),
            post(
                "urn:uuid:d2",
                json!({"resourceType": "Patient", "gender": "robot"}),
            ),
            json!({"request": {"method": "GET", "url": format!("Patient/{}", uuid::Uuid::new_v4())}}),
            json!({"request": {"method": "GET", "url": format!("Patient/{id}"), "ifNoneMatch": format!("W/\"{vid}\"")}}),
            json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
               "request": {"method": "PATCH", "url": format!("Patient/{id}")}}),
            json!({"resource": {"resourceType": "Patient", "gender": "male"},
               "request": {"method": "PUT", "url": "Patient?gender=male"}}),
            json!({"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                       {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                       {"name": "name", "valueString": "birthDate"}, {"name": "value", "valueDate": "1990-01-01"}]}]},
                   "request": {"method": "PATCH", "url": format!("Patient/{id}")}}),
        ],
    );
    let (status, response) = send(&s, &request).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "400 Bad Request",
            "404 Not Found",
            "304 Not Modified",
            "200 OK",
            "201 Created",
            "200 OK"
        ]
    );
    assert_eq!(
        response["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert!(response["entry"][1]["response"]["outcome"]
        .to_string()
        .contains("gender"));
    let (_, patched) = status_json(s.get(&format!("Patient/{id}")).await).await;
    assert_eq!(patched["active"], false);
    assert_eq!(
        patched["birthDate"], "1990-01-01",
        "FHIRPath Patch entry applied"
    );
    assert_eq!(count(&s, "Patient?gender=female").await, 1);
}

fn base64_json(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_limits_and_a_large_transaction() {
    let app = TestApp::spawn_with(|config| config.max_bundle_entries = 3000).await;
    let s = app.project("large").await.member;
    let too_many: Vec<Value> = (0..3001)
        .map(|i| post(&format!("urn:uuid:{i}"), json!({"resourceType": "Patient"})))
        .collect();
    assert_outcome(
        s.post("", &bundle("batch", too_many)).await,
        400,
        "at most 3000",
    )
    .await;

    // A Synthea-sized patient: one Patient and 2,999 resources pointing at it.
    let mut entries = vec![post(
        "urn:uuid:synthea-patient",
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "big"}]}),
    )];
    for i in 0..2999 {
        entries.push(post(&format!("urn:uuid:obs-{i}"), json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "urn:uuid:synthea-patient"},
            "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}
        })));
    }
    let (status, response) = send(&s, &bundle("transaction", entries)).await;
    assert_eq!(
        status,
        200,
        "{}",
        response.to_string().chars().take(500).collect::<String>()
    );
    assert_eq!(response["entry"].as_array().unwrap().len(), 3000);
    let (_, counted) = status_json(s.get("Observation?code=8867-4&_summary=count").await).await;
    assert_eq!(counted["total"], 2999);
}

/// With one Bundle processed at a time (`FHIRGATE_BUNDLE_CONCURRENCY=1`),
/// Bundles sent at once wait their turn and every one is processed whole.
#[tokio::test(flavor = "multi_thread")]
async fn bundles_beyond_the_concurrency_limit_wait_and_succeed() {
    let app = TestApp::spawn_with(|config| config.bundle_concurrency = 1).await;
    let s = app.project("one at a time").await.member;
    let sends = (0..6).map(|n| {
        let s = &s;
        async move {
            let entries = (0..20)
                .map(|k| {
                    post(
                        &format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                        json!({"resourceType": "Patient", "name": [{"family": format!("Queue{n}x{k}")}]}),
                    )
                })
                .collect();
            send(s, &bundle(if n % 2 == 0 { "transaction" } else { "batch" }, entries)).await
        }
    });
    for (status, response) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 200, "{response}");
        let entries = response["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 20);
        assert!(entries
            .iter()
            .all(|e| e["response"]["status"].as_str().unwrap().starts_with("201")));
    }
    assert_eq!(count(&s, "Patient?family=queue&_count=200").await, 120);

    // While a Bundle whose body is still arriving holds the only permit,
    // another one waits: it is answered only after the first is complete.
    let body = bundle(
        "transaction",
        vec![post(
            "urn:uuid:8c1f3f52-5a43-4a53-9b3f-0d2b6a4c1e01",
            json!({"resourceType": "Patient", "name": [{"family": "Held"}]}),
        )],
    )
    .to_string()
    .into_bytes();
    let (half, rest) = body.split_at(body.len() / 2);
    let (feed, chunks) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let stream = futures_util::stream::unfold(chunks, |mut chunks| async move {
        chunks.recv().await.map(|chunk| (chunk, chunks))
    });
    let held = tokio::spawn(
        s.fhir(reqwest::Method::POST, "")
            .header("Content-Type", "application/fhir+json")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    feed.send(Ok(half.to_vec())).await.unwrap();
    // Time for the held request's headers to reach the server, which
    // then takes the permit and waits for the rest of the body.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let second = bundle(
        "batch",
        vec![post(
            "urn:uuid:8c1f3f52-5a43-4a53-9b3f-0d2b6a4c1e02",
            json!({"resourceType": "Patient", "name": [{"family": "Waiting"}]}),
        )],
    );
    let waiting = send(&s, &second);
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "a second Bundle was processed while the first held the only permit"
    );
    feed.send(Ok(rest.to_vec())).await.unwrap();
    drop(feed);
    let (held_status, held_response) = status_json(held.await.unwrap().unwrap()).await;
    assert_eq!(held_status, 200, "{held_response}");
    let (waiting_status, waiting_response) = waiting.await;
    assert_eq!(waiting_status, 200, "{waiting_response}");
    assert_eq!(count(&s, "Patient?family=held").await, 1);
    assert_eq!(count(&s, "Patient?family=waiting").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_return_shapes_each_write_entry_and_leaves_reads_whole() {
    let app = TestApp::spawn().await;
    let s = app.project("bundle-prefer").await.member;
    let request = |mrn: &str| {
        bundle(
            "transaction",
            vec![
                post(
                    "urn:uuid:4f7c2d0e-5a43-4d7e-9a58-0d2f3c1b9e01",
                    json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}]}),
                ),
                json!({"request": {"method": "GET", "url": format!("Patient?identifier=urn:mrn|{mrn}")}}),
            ],
        )
    };
    let send_preferring = |prefer: &'static str, body: Value| {
        let s = &s;
        async move {
            status_json(
                s.fhir(Method::POST, "")
                    .header("Prefer", prefer)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };

    // Minimal: the write entry has its status, location and version but no
    // resource; the search entry still answers with its Bundle.
    let (status, minimal) = send_preferring("return=minimal", request("pr-1")).await;
    assert_eq!(status, 200, "{minimal}");
    let created = &minimal["entry"][0];
    assert_eq!(created["response"]["status"], "201 Created");
    assert!(created.get("resource").is_none(), "{created}");
    assert!(created["response"]["etag"]
        .as_str()
        .unwrap()
        .starts_with("W/"));
    let id = id_from_location(created);
    assert_eq!(minimal["entry"][1]["resource"]["resourceType"], "Bundle");
    assert_eq!(
        minimal["entry"][1]["resource"]["entry"][0]["resource"]["id"],
        id.as_str()
    );
    // The resource left out of the answer was stored.
    let (status, read) = status_json(s.get(&format!("Patient/{id}")).await).await;
    assert_eq!(
        (status, read["identifier"][0]["value"].as_str()),
        (200, Some("pr-1"))
    );

    // OperationOutcome: the write entry carries an informational outcome
    // naming what was written, in `response.outcome`.
    let (status, outcome) = send_preferring("return=OperationOutcome", request("pr-2")).await;
    assert_eq!(status, 200, "{outcome}");
    let created = &outcome["entry"][0];
    assert!(created.get("resource").is_none(), "{created}");
    let issue = &created["response"]["outcome"]["issue"][0];
    assert_eq!(
        created["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(issue["severity"], "information");
    let id = id_from_location(created);
    assert!(
        issue["diagnostics"]
            .as_str()
            .unwrap()
            .contains(&format!("Patient/{id}")),
        "{issue}"
    );

    // A delete has no resource: its outcome names what was deleted.
    let deleted = bundle(
        "transaction",
        vec![json!({"request": {"method": "DELETE", "url": format!("Patient/{id}")}})],
    );
    let (status, outcome) = send_preferring("return=OperationOutcome", deleted).await;
    assert_eq!(status, 200, "{outcome}");
    let response = &outcome["entry"][0]["response"];
    assert_eq!(response["status"], "204 No Content");
    let diagnostics = response["outcome"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap();
    assert!(
        diagnostics.contains(&format!("DELETE Patient/{id}")),
        "{response}"
    );

    // No preference (and representation) embed the stored resource, as before.
    for prefer in ["return=representation", "respond-async"] {
        let (status, whole) = send_preferring(prefer, request("pr-3")).await;
        assert_eq!(status, 200, "{whole}");
        assert_eq!(
            whole["entry"][0]["resource"]["identifier"][0]["value"],
            "pr-3"
        );
        assert_eq!(
            whole["entry"][0]["resource"]["id"],
            id_from_location(&whole["entry"][0]).as_str()
        );
    }

    // A batch honours it per entry too.
    let mut batch = request("pr-4");
    batch["type"] = json!("batch");
    let (status, answered) = send_preferring("return=minimal", batch).await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["entry"][0]["response"]["status"], "201 Created");
    assert!(answered["entry"][0].get("resource").is_none());
}
