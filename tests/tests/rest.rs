//! Single-resource REST: create, read, vread, update, patch, delete, with
//! versions, preconditions, Prefer, negotiation, validation and errors.

use fhirgate_tests::{assert_outcome, status_json, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"given": ["Ada"], "family": "Lovelace"}], "birthDate": "1815-12-10"})
}

#[tokio::test(flavor = "multi_thread")]
async fn create_read_vread_update_delete_round_trip() {
    let app = TestApp::spawn().await;
    let project = app.project("crud").await;
    let user = &project.member;

    let mut input = patient();
    input["id"] = json!("client-chosen");
    input["meta"] = json!({"versionId": "42", "project": "elsewhere", "tag": [{"system": "urn:t", "code": "kept"}]});
    let response = user.post("Patient", &input).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let vid = created["meta"]["versionId"].as_str().unwrap().to_string();
    assert_ne!(id, "client-chosen", "the server assigns ids on create");
    assert_ne!(vid, "42");
    assert_eq!(
        created["meta"]["project"],
        json!(project.id),
        "meta.project comes from the caller"
    );
    assert_eq!(created["meta"]["tag"][0]["code"], "kept");
    assert_eq!(
        created["meta"]["author"]["reference"],
        json!(format!("ClientApplication/{}", user.credentials.client_id))
    );
    assert_eq!(
        headers["location"].to_str().unwrap(),
        format!("{}fhir/R4/Patient/{id}/_history/{vid}", app.base_url)
    );
    assert_eq!(headers["etag"].to_str().unwrap(), format!("W/\"{vid}\""));
    assert!(headers["last-modified"].to_str().unwrap().ends_with("GMT"));
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/fhir+json"));

    let response = user.get(&format!("Patient/{id}")).await;
    assert_eq!(
        response.headers()["etag"].to_str().unwrap(),
        format!("W/\"{vid}\"")
    );
    let (status, read) = status_json(response).await;
    assert_eq!((status, &read), (200, &created));

    // Update with the right If-Match.
    let mut changed = read.clone();
    changed["birthDate"] = json!("1815-12-11");
    let response = user
        .fhir(Method::PUT, &format!("Patient/{id}"))
        .header("If-Match", format!("W/\"{vid}\""))
        .json(&changed)
        .send()
        .await
        .unwrap();
    let (status, updated) = status_json(response).await;
    assert_eq!(status, 200, "{updated}");
    let vid2 = updated["meta"]["versionId"].as_str().unwrap().to_string();
    assert_ne!(vid2, vid);
    assert_eq!(updated["birthDate"], "1815-12-11");

    // A stale If-Match is refused and changes nothing.
    let response = user
        .fhir(Method::PUT, &format!("Patient/{id}"))
        .header("If-Match", format!("W/\"{vid}\""))
        .json(&read)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 412, "does not match").await;

    // vread of both versions.
    let (status, v1) = status_json(user.get(&format!("Patient/{id}/_history/{vid}")).await).await;
    assert_eq!(
        (status, v1["birthDate"].as_str()),
        (200, Some("1815-12-10"))
    );
    let (status, v2) = status_json(user.get(&format!("Patient/{id}/_history/{vid2}")).await).await;
    assert_eq!(
        (status, v2["birthDate"].as_str()),
        (200, Some("1815-12-11"))
    );
    assert_outcome(
        user.get(&format!("Patient/{id}/_history/{}", uuid::Uuid::new_v4()))
            .await,
        404,
        "not found",
    )
    .await;

    // Delete, read gives 410, delete again succeeds, history keeps the deletion.
    let (status, outcome) = status_json(user.delete(&format!("Patient/{id}")).await).await;
    assert_eq!(
        (status, outcome["resourceType"].as_str()),
        (200, Some("OperationOutcome"))
    );
    assert_outcome(user.get(&format!("Patient/{id}")).await, 410, "deleted").await;
    assert_eq!(user.delete(&format!("Patient/{id}")).await.status(), 200);
    let (_, history) = status_json(user.get(&format!("Patient/{id}/_history")).await).await;
    let methods: Vec<&str> = history["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        ["DELETE", "PUT", "PUT"],
        "one deletion, two versions, newest first"
    );
    // The old versions stay readable.
    assert_eq!(
        user.get(&format!("Patient/{id}/_history/{vid}"))
            .await
            .status(),
        200
    );
}

/// FHIR R4 http.html#cread: `If-None-Match` and `If-Modified-Since` on a
/// read answer 304 while the client's copy is current, the version otherwise.
#[tokio::test(flavor = "multi_thread")]
async fn conditional_read_answers_304_while_the_copy_is_current() {
    let app = TestApp::spawn().await;
    let project = app.project("cread").await;
    let user = &project.member;
    let created = user.post("Patient", &patient()).await;
    let etag = created.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = created.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let read = |name: &'static str, value: String| {
        user.fhir(Method::GET, &format!("Patient/{id}"))
            .header(name, value)
            .send()
    };
    for (name, value) in [
        ("If-None-Match", etag.clone()),
        ("If-None-Match", "*".to_string()),
        ("If-Modified-Since", last_modified.clone()),
    ] {
        let response = read(name, value.clone()).await.unwrap();
        assert_eq!(response.status(), 304, "{name}: {value}");
        assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
        assert!(response.bytes().await.unwrap().is_empty());
    }
    for (name, value) in [
        ("If-None-Match", "W/\"not-the-version\"".to_string()),
        (
            "If-Modified-Since",
            "Sat, 01 Jan 2000 00:00:00 GMT".to_string(),
        ),
    ] {
        let (status, body) = status_json(read(name, value.clone()).await.unwrap()).await;
        assert_eq!(status, 200, "{name}: {value}");
        assert_eq!(body["id"], id.as_str());
    }
    // A resource the caller may not read stays 404 whatever the headers say.
    let other = app.project("cread-other").await;
    let response = other
        .member
        .fhir(Method::GET, &format!("Patient/{id}"))
        .header("If-None-Match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ids_types_and_routes() {
    let app = TestApp::spawn().await;
    let user = app.project("unknowns").await.member;
    assert_outcome(
        user.get(&format!("Patient/{}", uuid::Uuid::new_v4())).await,
        404,
        "not found",
    )
    .await;
    assert_outcome(user.get("Patient/not-a-uuid").await, 404, "not found").await;
    assert_outcome(user.get("Foo/123").await, 404, "Unknown resource type: Foo").await;
    assert_outcome(
        user.post("Foo", &json!({"resourceType": "Foo"})).await,
        404,
        "Unknown resource type: Foo",
    )
    .await;
    assert_outcome(
        user.delete(&format!("Patient/{}", uuid::Uuid::new_v4()))
            .await,
        404,
        "not found",
    )
    .await;
    let response = app.http.get(app.url("no/such/route")).send().await.unwrap();
    assert_outcome(response, 404, "Nothing here").await;
    let response = user
        .fhir(Method::POST, &format!("Patient/{}", uuid::Uuid::new_v4()))
        .send()
        .await
        .unwrap();
    assert_outcome(response, 405, "not supported").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_rules() {
    let app = TestApp::spawn().await;
    let user = app.project("updates").await.member;
    let created = user.create(patient()).await;
    let id = created["id"].as_str().unwrap();
    let path = format!("Patient/{id}");

    // The body's id must equal the URL's.
    let mut wrong = created.clone();
    wrong["id"] = json!(uuid::Uuid::new_v4().to_string());
    assert_outcome(user.put(&path, &wrong).await, 400, "does not match").await;
    let mut missing = created.clone();
    missing.as_object_mut().unwrap().remove("id");
    assert_outcome(
        user.put(&path, &missing).await,
        400,
        "must carry the resource id",
    )
    .await;

    // A no-op update writes no new version.
    let (status, same) = status_json(user.put(&path, &created).await).await;
    assert_eq!(status, 200);
    assert_eq!(same["meta"]["versionId"], created["meta"]["versionId"]);
    let (_, history) = status_json(user.get(&format!("{path}/_history")).await).await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 1);

    // Update of an unknown id does not create it for ordinary callers.
    let new_id = uuid::Uuid::new_v4().to_string();
    let mut other = patient();
    other["id"] = json!(new_id);
    assert_outcome(
        user.put(&format!("Patient/{new_id}"), &other).await,
        405,
        "updateCreate is false",
    )
    .await;
    assert_eq!(user.get(&format!("Patient/{new_id}")).await.status(), 404);

    // Super admins may create on update, at the id they choose.
    let root = app.super_admin().await;
    let (status, made) = status_json(root.put(&format!("Patient/{new_id}"), &other).await).await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["id"], json!(new_id));
    assert_outcome(
        root.put(
            "Patient/example",
            &json!({"resourceType": "Patient", "id": "example"}),
        )
        .await,
        400,
        "UUID",
    )
    .await;
}

/// Concurrent plain creates commit together (group commit: one statement
/// and one COMMIT for whatever queued): each is answered with its own
/// resource, stored once, readable and searchable at once.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_creates_each_store_their_own_resource_once() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let user = app.project("group-commit").await.member;
    let creates = (0..48).map(|i| {
        let user = user.clone();
        let body = json!({"resourceType": "Patient", "name": [{"family": "Groupcommit"}],
            "identifier": [{"system": "urn:group-commit", "value": format!("n{i}")}]});
        async move { (i, status_json(user.post("Patient", &body).await).await) }
    });
    let replies = futures_util::future::join_all(creates).await;
    let mut ids = std::collections::HashSet::new();
    for (i, (status, created)) in &replies {
        assert_eq!(*status, 201, "{created}");
        assert_eq!(created["identifier"][0]["value"], format!("n{i}"));
        ids.insert(created["id"].as_str().unwrap().to_string());
        let (status, read) = status_json(
            user.get(&format!("Patient/{}", created["id"].as_str().unwrap()))
                .await,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(read, *created);
    }
    assert_eq!(ids.len(), 48);
    let (_, counted) =
        status_json(user.get("Patient?family=Groupcommit&_summary=count").await).await;
    assert_eq!(counted["total"], 48, "{counted}");
    let (_, one) = status_json(user.get("Patient?identifier=urn:group-commit|n17").await).await;
    assert_eq!(one["entry"].as_array().map(Vec::len), Some(1), "{one}");
}

/// Reads by id share connections and are pipelined on them: each of many
/// concurrent reads gets its own resource back, at the version its own
/// update just wrote.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reads_each_see_their_own_resource_after_its_write() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let user = app.project("shared-reads").await.member;
    let rounds = (0..32).map(|i| {
        let user = user.clone();
        async move {
            let mut body = user
                .create(
                    json!({"resourceType": "Patient", "name": [{"family": format!("Reader{i}")}]}),
                )
                .await;
            let path = format!("Patient/{}", body["id"].as_str().unwrap());
            for round in 0..5 {
                body["birthDate"] = json!(format!("19{i:02}-01-{:02}", round + 1));
                let (status, updated) = status_json(user.put(&path, &body).await).await;
                assert_eq!(status, 200, "{updated}");
                let (status, read) = status_json(user.get(&path).await).await;
                assert_eq!(status, 200, "{read}");
                assert_eq!(read, updated, "a read after a write sees the write");
                body = read;
            }
        }
    });
    futures_util::future::join_all(rounds).await;
}

/// When PostgreSQL closes the server's connections (a restart, a failover,
/// an administrator), the next reads are answered on new ones.
#[tokio::test(flavor = "multi_thread")]
async fn reads_are_answered_after_the_database_closes_the_connections() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let user = app.project("reconnect").await.member;
    let created = user.create(patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());
    let read_many = || {
        futures_util::future::join_all((0..16).map(|_| {
            let (user, path) = (user.clone(), path.clone());
            async move { status_json(user.get(&path).await).await }
        }))
    };
    for (status, read) in read_many().await {
        assert_eq!((status, &read), (200, &created));
    }

    let db = app.db().await;
    let terminated: Vec<i32> = db
        .query(
            // Materialized, so that only this database's backends are terminated.
            "WITH mine AS MATERIALIZED (SELECT pid FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()) \
             SELECT pid FROM mine WHERE pg_terminate_backend(pid)",
            &[&app.database],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        terminated.len() >= 2,
        "the reads held connections: {terminated:?}"
    );
    let alive = "SELECT pid FROM pg_stat_activity WHERE pid = ANY($1)";
    while !db.query(alive, &[&terminated]).await.unwrap().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for (status, read) in read_many().await {
        assert_eq!((status, &read), (200, &created));
    }
}

/// Racing creates at one new id (a super admin's update-as-create): the
/// create's insert and its COMMIT go out together, and a loser's insert
/// fails on the id only once the winner commits. Every request is answered
/// 201, 200 or 409, and the history holds exactly the versions reported.
#[tokio::test(flavor = "multi_thread")]
async fn racing_creates_at_one_id_keep_exactly_the_versions_they_report() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let root = app.super_admin().await;
    let id = uuid::Uuid::new_v4().to_string();
    let path = format!("Patient/{id}");
    let writes = (0..16).map(|i| {
        let (root, path) = (root.clone(), path.clone());
        let mut body = patient();
        body["id"] = json!(id);
        body["birthDate"] = json!(format!("1815-12-{:02}", i + 1));
        async move { status_json(root.put(&path, &body).await).await }
    });
    let replies = futures_util::future::join_all(writes).await;
    let count = |status: u16| replies.iter().filter(|(s, _)| *s == status).count();
    assert_eq!(count(201), 1, "{replies:?}");
    assert_eq!(count(201) + count(200) + count(409), 16, "{replies:?}");
    for (_, outcome) in replies.iter().filter(|(s, _)| *s == 409) {
        assert!(
            outcome["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("retry")),
            "{outcome}"
        );
    }
    let (_, history) = status_json(root.get(&format!("{path}/_history")).await).await;
    assert_eq!(
        history["entry"].as_array().unwrap().len(),
        count(201) + count(200),
        "{history}"
    );
}

/// Racing updates of one resource (each read without a lock and committed
/// with others when still current, else run again holding the lock): each
/// is answered 200, or 412 when its If-Match no longer holds, and the
/// history holds exactly one version per 200, each with the content its
/// request sent, chained one after another: no update is lost.
#[tokio::test(flavor = "multi_thread")]
async fn racing_updates_of_one_resource_each_keep_their_version() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let user = app.project("racing-updates").await.member;
    let created = user.create(patient()).await;
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("Patient/{id}");
    let first_version = created["meta"]["versionId"].as_str().unwrap().to_string();
    let birth_date = |i: usize| format!("1815-{:02}-{:02}", i / 28 + 1, i % 28 + 1);
    let put_all = |range: std::ops::Range<usize>, if_match: Option<String>| {
        futures_util::future::join_all(range.map(|i| {
            let (user, path, if_match) = (user.clone(), path.clone(), if_match.clone());
            let mut body = created.clone();
            body["birthDate"] = json!(birth_date(i));
            async move {
                let mut request = user
                    .fhir(Method::PUT, &path)
                    .header("Content-Type", "application/fhir+json")
                    .json(&body);
                if let Some(version) = if_match {
                    request = request.header("If-Match", format!("W/\"{version}\""));
                }
                let (status, reply) = status_json(request.send().await.unwrap()).await;
                (i, status, reply)
            }
        }))
    };

    let replies = put_all(0..20, None).await;
    let mut written = std::collections::HashMap::new();
    for (i, status, reply) in &replies {
        assert_eq!(*status, 200, "{reply}");
        assert_eq!(reply["birthDate"], birth_date(*i), "{reply}");
        written.insert(reply["meta"]["versionId"].as_str().unwrap().to_string(), *i);
    }
    assert_eq!(written.len(), 20, "each update wrote a version of its own");

    // All sent with the same If-Match: one applies, the others are refused.
    let current = status_json(user.get(&path).await).await.1;
    let version = current["meta"]["versionId"].as_str().unwrap().to_string();
    let replies = put_all(20..36, Some(version)).await;
    let count = |status: u16| replies.iter().filter(|(_, s, _)| *s == status).count();
    assert_eq!((count(200), count(412)), (1, 15), "{replies:?}");
    for (i, status, reply) in &replies {
        if *status == 200 {
            written.insert(reply["meta"]["versionId"].as_str().unwrap().to_string(), *i);
        } else {
            assert_eq!(reply["issue"][0]["code"], "conflict", "{reply}");
            let diagnostics = reply["issue"][0]["diagnostics"].as_str().unwrap();
            assert!(diagnostics.contains("If-Match"), "{reply}");
        }
    }

    let (status, history) =
        status_json(user.get(&format!("{path}/_history?_count=100")).await).await;
    assert_eq!(status, 200, "{history}");
    let entries = history["entry"].as_array().unwrap();
    assert_eq!(entries.len(), written.len() + 1, "{history}");
    // Newest first: the current version, then each one it replaced.
    assert_eq!(
        entries[0]["resource"]["meta"]["versionId"],
        current_version(&user, &path).await
    );
    assert_eq!(
        entries.last().unwrap()["resource"]["meta"]["versionId"],
        first_version
    );
    let mut seen = std::collections::HashSet::new();
    for entry in &entries[..entries.len() - 1] {
        let resource = &entry["resource"];
        let version = resource["meta"]["versionId"].as_str().unwrap();
        let i = written[version];
        assert_eq!(resource["birthDate"], birth_date(i), "{resource}");
        assert_eq!(resource["name"], created["name"]);
        assert!(seen.insert(version.to_string()));
    }
    let stamps: Vec<&str> = entries
        .iter()
        .map(|e| e["resource"]["meta"]["lastUpdated"].as_str().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] >= w[1]), "{stamps:?}");
    assert_eq!(
        app.history_rows(&id).await,
        written.len(),
        "one history row per version replaced"
    );
}

async fn current_version(user: &fhirgate_tests::Session, path: &str) -> Value {
    status_json(user.get(path).await).await.1["meta"]["versionId"].clone()
}

/// Concurrent updates of different resources (committed together): each
/// is applied, with its history and its search index rows.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_updates_of_different_resources_all_apply() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let user = app.project("batched-updates").await.member;
    let mut patients = Vec::new();
    for i in 0..32 {
        patients.push(
            user.create(
                json!({"resourceType": "Patient", "name": [{"family": format!("Before{i}")}],
                "identifier": [{"system": "urn:batched", "value": format!("n{i}")}]}),
            )
            .await,
        );
    }
    let updates = patients.iter().enumerate().map(|(i, created)| {
        let user = user.clone();
        let mut body = created.clone();
        body["name"] = json!([{"family": format!("After{i}")}]);
        async move {
            let path = format!("Patient/{}", body["id"].as_str().unwrap());
            (
                path.clone(),
                status_json(user.put(&path, &body).await).await,
            )
        }
    });
    let replies = futures_util::future::join_all(updates).await;
    for (i, (path, (status, updated))) in replies.iter().enumerate() {
        assert_eq!(*status, 200, "{updated}");
        let (_, read) = status_json(user.get(path).await).await;
        assert_eq!(read, *updated);
        let (_, history) = status_json(user.get(&format!("{path}/_history")).await).await;
        assert_eq!(history["entry"].as_array().unwrap().len(), 2, "{history}");
        let (_, found) = status_json(
            user.get(&format!(
                "Patient?family=After{i}&identifier=urn:batched|n{i}"
            ))
            .await,
        )
        .await;
        assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");
    }
    let (_, before) = status_json(user.get("Patient?family=Before&_summary=count").await).await;
    assert_eq!(before["total"], 0, "{before}");
    let (_, after) = status_json(
        user.get("Patient?identifier=urn:batched|&_summary=count")
            .await,
    )
    .await;
    assert_eq!(after["total"], 32, "{after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_patch() {
    let app = TestApp::spawn().await;
    let user = app.project("patch").await.member;
    let created = user.create(patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    let ops = json!([
        {"op": "test", "path": "/birthDate", "value": "1815-12-10"},
        {"op": "replace", "path": "/birthDate", "value": "1815-12-12"},
        {"op": "add", "path": "/active", "value": true}
    ]);
    let (status, patched) = status_json(user.patch(&path, &ops).await).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (patched["birthDate"].as_str(), patched["active"].as_bool()),
        (Some("1815-12-12"), Some(true))
    );
    assert_ne!(patched["meta"]["versionId"], created["meta"]["versionId"]);

    // A failed test changes nothing.
    let failing = json!([{"op": "test", "path": "/birthDate", "value": "2000-01-01"}, {"op": "remove", "path": "/name"}]);
    assert_outcome(user.patch(&path, &failing).await, 412, "test failed").await;
    // A patch that makes the resource invalid is refused and stores nothing.
    let invalid = json!([{"op": "replace", "path": "/birthDate", "value": "12/12/1815"}]);
    let outcome = assert_outcome(user.patch(&path, &invalid).await, 400, "birthDate").await;
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.birthDate");
    let (_, now) = status_json(user.get(&path).await).await;
    assert_eq!(now, patched, "failed patches left the resource as it was");
    let (_, history) = status_json(user.get(&format!("{path}/_history")).await).await;
    assert_eq!(history["entry"].as_array().unwrap().len(), 2);

    // Paths that do not exist, server-managed elements, wrong media type, bad documents.
    assert_outcome(
        user.patch(&path, &json!([{"op": "remove", "path": "/gender"}]))
            .await,
        422,
        "cannot be applied",
    )
    .await;
    assert_outcome(
        user.patch(
            &path,
            &json!([{"op": "replace", "path": "/id", "value": "x"}]),
        )
        .await,
        400,
        "managed by the server",
    )
    .await;
    assert_outcome(
        user.patch(&path, &json!([{"op": "remove", "path": "/meta/versionId"}]))
            .await,
        400,
        "managed by the server",
    )
    .await;
    assert_outcome(
        user.patch(&path, &json!({"op": "remove"})).await,
        400,
        "not a JSON Patch",
    )
    .await;
    let response = user
        .fhir(Method::PATCH, &path)
        .header("Content-Type", "text/plain")
        .body(ops.to_string())
        .send()
        .await
        .unwrap();
    assert_outcome(response, 415, "application/json-patch+json").await;

    // FHIRPath Patch: a Parameters resource.
    let fhirpath_patch = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.name.where(family = 'Lovelace').given[0]"},
            {"name": "value", "valueString": "Augusta"}]},
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Patient"},
            {"name": "name", "valueString": "gender"},
            {"name": "value", "valueCode": "female"}]}
    ]});
    let response = user
        .fhir(Method::PATCH, &path)
        .header("Content-Type", "application/fhir+json")
        .json(&fhirpath_patch)
        .send()
        .await
        .unwrap();
    let (status, patched) = status_json(response).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (
            patched["name"][0]["given"][0].as_str(),
            patched["gender"].as_str()
        ),
        (Some("Augusta"), Some("female"))
    );
    let change_id = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.id"},
        {"name": "value", "valueId": "x"}]}]});
    let response = user
        .fhir(Method::PATCH, &path)
        .header("Content-Type", "application/fhir+json")
        .json(&change_id)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "managed by the server").await;
    // A path that is not FHIRPath: 400 saying where it goes wrong.
    let unclosed = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "delete"},
        {"name": "path", "valueString": "Patient.name.where(use = 'old'"}]}]});
    let response = user
        .fhir(Method::PATCH, &path)
        .header("Content-Type", "application/fhir+json")
        .json(&unclosed)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "FHIRPath syntax error at character 30").await;
    assert_outcome(
        user.patch(&format!("Patient/{}", uuid::Uuid::new_v4()), &ops)
            .await,
        404,
        "not found",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prefer_return() {
    let app = TestApp::spawn().await;
    let user = app.project("prefer").await.member;
    let minimal = user
        .fhir(Method::POST, "Patient")
        .header("Prefer", "return=minimal")
        .json(&patient())
        .send()
        .await
        .unwrap();
    assert_eq!(minimal.status(), 201);
    let location = minimal.headers()["location"].to_str().unwrap().to_string();
    assert!(minimal.text().await.unwrap().is_empty());

    let outcome = user
        .fhir(Method::POST, "Patient")
        .header("Prefer", "return=OperationOutcome")
        .json(&patient())
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(outcome).await;
    assert_eq!(
        (status, body["resourceType"].as_str()),
        (201, Some("OperationOutcome"))
    );
    assert_eq!(body["issue"][0]["severity"], "information");

    // The minimal create really stored the resource.
    let id = location.split('/').rev().nth(2).unwrap();
    assert_eq!(user.get(&format!("Patient/{id}")).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn content_negotiation() {
    let app = TestApp::spawn().await;
    let user = app.project("negotiation").await.member;
    let created = user.create(patient()).await;
    let path = format!("Patient/{}", created["id"].as_str().unwrap());

    for accept in [
        "application/json",
        "application/fhir+json",
        "*/*",
        "application/fhir+json;q=0.9, text/html",
    ] {
        let response = user
            .fhir(Method::GET, &path)
            .header("Accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{accept}");
    }
    let response = user
        .fhir(Method::GET, &path)
        .header("Accept", "application/fhir+xml")
        .send()
        .await
        .unwrap();
    assert_outcome(response, 406, "JSON only").await;
    assert_eq!(
        user.get(&format!("{path}?_format=json")).await.status(),
        200
    );
    assert_outcome(
        user.get(&format!("{path}?_format=xml")).await,
        406,
        "JSON only",
    )
    .await;
    let response = user
        .fhir(Method::POST, "Patient")
        .header("Content-Type", "application/xml")
        .body("<Patient/>")
        .send()
        .await
        .unwrap();
    assert_outcome(response, 415, "not supported").await;
    let response = user
        .fhir(Method::POST, "Patient")
        .header("Content-Type", "application/json")
        .body(patient().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "application/json is accepted too");
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_point_at_the_element() {
    let app = TestApp::spawn().await;
    let user = app.project("validation").await.member;

    let bad =
        json!({"resourceType": "Patient", "birthDate": "1990-13-01", "gender": "robot", "foo": 1});
    let (status, outcome) = status_json(user.post("Patient", &bad).await).await;
    assert_eq!(status, 400);
    let expressions: Vec<&str> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    for expected in ["Patient.birthDate", "Patient.gender", "Patient.foo"] {
        assert!(
            expressions.contains(&expected),
            "{expected} missing from {outcome}"
        );
    }
    for issue in outcome["issue"].as_array().unwrap() {
        assert!(!issue["diagnostics"].as_str().unwrap().is_empty());
    }

    let observation = json!({"resourceType": "Observation", "valueQuantity": {"value": "high"}});
    let (status, outcome) = status_json(user.post("Observation", &observation).await).await;
    assert_eq!(status, 400);
    let text = outcome.to_string();
    for expected in [
        "Observation.status",
        "Observation.code",
        "Observation.valueQuantity.value",
    ] {
        assert!(text.contains(expected), "{expected} missing from {outcome}");
    }

    let response = user
        .fhir(Method::POST, "Patient")
        .header("Content-Type", "application/fhir+json")
        .body("{\n  \"resourceType\": \"Patient\",\n  \"name\": [{} {}]\n}")
        .send()
        .await
        .unwrap();
    assert_outcome(
        response,
        400,
        "Malformed JSON at line 3, column 15: expected `,` or `]`",
    )
    .await;
    assert_outcome(
        user.post("Patient", &json!({"resourceType": "Observation"}))
            .await,
        400,
        "URL is for Patient",
    )
    .await;
    assert_outcome(
        user.post("Patient", &json!(["not", "an", "object"])).await,
        400,
        "JSON object",
    )
    .await;
    assert_outcome(
        user.post("Patient", &json!({"active": true})).await,
        400,
        "no resourceType",
    )
    .await;

    // Nothing of the above was stored.
    let (_, history) = status_json(user.get("_history").await).await;
    assert_eq!(
        history["entry"].as_array().map_or(0, Vec::len),
        0,
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_are_refused() {
    let app = TestApp::spawn_with(|config| config.max_body_bytes = 2048).await;
    let user = app.project("limits").await.member;
    let mut big = patient();
    big["name"][0]["text"] = json!("x".repeat(4096));
    assert_outcome(
        user.post("Patient", &big).await,
        413,
        "larger than the limit of 2048 bytes",
    )
    .await;
    assert_eq!(user.post("Patient", &patient()).await.status(), 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn capability_statement_lists_what_works() {
    let app = TestApp::spawn().await;
    let (status, statement) = status_json(
        app.http
            .get(app.url("fhir/R4/metadata"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    let patient = statement["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert_eq!(patient["updateCreate"], false);

    // Every interaction the statement advertises for Patient really works.
    let user = app.project("capabilities").await.member;
    let created = user.create(self::patient()).await;
    let id = created["id"].as_str().unwrap();
    let vid = created["meta"]["versionId"].as_str().unwrap();
    for interaction in patient["interaction"].as_array().unwrap() {
        let code = interaction["code"].as_str().unwrap();
        let status = match code {
            "read" => user.get(&format!("Patient/{id}")).await.status(),
            "vread" => user
                .get(&format!("Patient/{id}/_history/{vid}"))
                .await
                .status(),
            "update" => user.put(&format!("Patient/{id}"), &created).await.status(),
            "patch" => user
                .patch(
                    &format!("Patient/{id}"),
                    &json!([{"op": "add", "path": "/active", "value": true}]),
                )
                .await
                .status(),
            "history-instance" => user.get(&format!("Patient/{id}/_history")).await.status(),
            "history-type" => user.get("Patient/_history").await.status(),
            "create" => user.post("Patient", &self::patient()).await.status(),
            "delete" => user.delete(&format!("Patient/{id}")).await.status(),
            "search-type" => user.get("Patient?gender=female").await.status(),
            other => panic!("the statement advertises '{other}', which this test does not know"),
        };
        assert!(status.is_success(), "{code} gave {status}");
    }
    for interaction in statement["rest"][0]["interaction"].as_array().unwrap() {
        let status = match interaction["code"].as_str().unwrap() {
            "history-system" => user.get("_history").await.status(),
            "search-system" => user.get("?_type=Patient").await.status(),
            code @ ("transaction" | "batch") => {
                let bundle = json!({"resourceType": "Bundle", "type": code, "entry": [
                    {"request": {"method": "POST", "url": "Patient"}, "resource": self::patient()}
                ]});
                let (status, body) = status_json(user.post("", &bundle).await).await;
                assert_eq!(
                    body["entry"][0]["response"]["status"], "201 Created",
                    "{body}"
                );
                reqwest::StatusCode::from_u16(status).unwrap()
            }
            other => panic!("the statement advertises '{other}', which this test does not know"),
        };
        assert!(status.is_success(), "{interaction} gave {status}");
    }
    let gender = patient["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "gender")
        .unwrap();
    assert_eq!(gender["type"], "token");
}
