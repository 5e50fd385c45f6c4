//! Bulk Data `$export` end to end: system, Patient and Group levels with
//! `_type` and `_since`, the manifest, downloads only for the caller who
//! asked, a policy-restricted caller, cancel, retention, and a job taken
//! over by another instance after the one running it stopped.

use std::time::Duration;

use fhirgate_tests::{assert_outcome, count, postgres_server, Session, TestApp};
use reqwest::{Method, Response};
use serde_json::{json, Value};

async fn kick_off(session: &Session, path: &str) -> Response {
    session
        .fhir(Method::GET, path)
        .header("Prefer", "respond-async")
        .send()
        .await
        .expect("kick-off")
}

/// Kicks off and returns the status URL.
async fn start(session: &Session, path: &str) -> String {
    let response = kick_off(session, path).await;
    assert_eq!(response.status(), 202, "{path}");
    response.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string()
}

async fn get(session: &Session, url: &str) -> Response {
    session
        .http
        .get(url)
        .bearer_auth(&session.token)
        .send()
        .await
        .expect("GET")
}

/// Polls until the manifest: every 202 carries X-Progress and Retry-After.
async fn manifest(session: &Session, status_url: &str) -> Value {
    for _ in 0..300 {
        let response = get(session, status_url).await;
        match response.status().as_u16() {
            202 => {
                assert!(response.headers().contains_key("x-progress"));
                assert_eq!(response.headers()["retry-after"], "1");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            200 => return response.json().await.unwrap(),
            status => panic!("status {status}: {}", response.text().await.unwrap()),
        }
    }
    panic!("the export did not finish within a minute");
}

/// Each output type's resource ids, sorted, after checking counts agree.
async fn exported(session: &Session, manifest: &Value) -> Vec<(String, Vec<String>)> {
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["transactionTime"].is_string(), "{manifest}");
    assert_eq!(manifest["error"], json!([]));
    let mut result = Vec::new();
    for output in manifest["output"].as_array().unwrap() {
        let response = get(session, output["url"].as_str().unwrap()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            "application/fhir+ndjson"
        );
        let text = response.text().await.unwrap();
        let mut ids: Vec<String> = text
            .lines()
            .map(|line| {
                let resource: Value = serde_json::from_str(line).expect("one resource a line");
                assert_eq!(resource["resourceType"], output["type"]);
                resource["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len() as u64, output["count"].as_u64().unwrap());
        ids.sort();
        result.push((output["type"].as_str().unwrap().to_string(), ids));
    }
    result.sort();
    result
}

fn id(resource: &Value) -> String {
    resource["id"].as_str().unwrap().to_string()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn system_patient_and_group_levels_with_type_and_since() {
    let app = TestApp::spawn().await;
    let project = app.project("export").await;
    let other = app.project("export-other").await;
    let admin = &project.admin;
    let mut patients = Vec::new();
    let mut observations = Vec::new();
    for n in 0..3 {
        let patient = admin
            .create(json!({"resourceType": "Patient", "name": [{"family": format!("P{n}")}]}))
            .await;
        observations.push(
            admin
                .create(json!({"resourceType": "Observation", "status": "final",
                    "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", id(&patient))}}))
                .await,
        );
        patients.push(patient);
    }
    let practitioner = admin
        .create(json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}))
        .await;
    let group = admin
        .create(
            json!({"resourceType": "Group", "type": "person", "actual": true, "member": [
            {"entity": {"reference": format!("Patient/{}", id(&patients[0]))}},
            {"entity": {"reference": format!("Patient/{}", id(&patients[1]))}}]}),
        )
        .await;
    other
        .admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Elsewhere"}]}))
        .await;
    let patient_ids = sorted(patients.iter().map(id).collect());
    let observation_ids = sorted(observations.iter().map(id).collect());

    let status = start(admin, "$export?_type=Patient,Observation,Practitioner").await;
    let system = manifest(admin, &status).await;
    assert!(system["request"]
        .as_str()
        .unwrap()
        .ends_with("fhir/R4/$export?_type=Patient,Observation,Practitioner"));
    assert_eq!(
        exported(admin, &system).await,
        vec![
            ("Observation".to_string(), observation_ids.clone()),
            ("Patient".to_string(), patient_ids.clone()),
            ("Practitioner".to_string(), vec![id(&practitioner)]),
        ]
    );
    // Without _type: every type with resources, the Group included.
    let everything = manifest(admin, &start(admin, "$export").await).await;
    let types: Vec<String> = exported(admin, &everything)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(types, ["Group", "Observation", "Patient", "Practitioner"]);

    // Patient level: the patients and their compartments (the Group lists
    // them as members), no Practitioner.
    let patient_level = manifest(admin, &start(admin, "Patient/$export").await).await;
    assert_eq!(
        exported(admin, &patient_level).await,
        vec![
            ("Group".to_string(), vec![id(&group)]),
            ("Observation".to_string(), observation_ids.clone()),
            ("Patient".to_string(), patient_ids.clone()),
        ]
    );
    // Group level: its members only.
    let group_level = manifest(
        admin,
        &start(
            admin,
            &format!("Group/{}/$export?_type=Patient,Observation", id(&group)),
        )
        .await,
    )
    .await;
    assert_eq!(
        exported(admin, &group_level).await,
        vec![
            (
                "Observation".to_string(),
                sorted(observations[..2].iter().map(id).collect())
            ),
            (
                "Patient".to_string(),
                sorted(patients[..2].iter().map(id).collect())
            ),
        ]
    );

    // _since: only what changed after it.
    let since = patients[2]["meta"]["lastUpdated"]
        .as_str()
        .unwrap()
        .to_string();
    let late = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Late"}]}))
        .await;
    let url = format!(
        "$export?_type=Patient&_outputFormat=application/fhir%2Bndjson&_since={}",
        since.replace('+', "%2B")
    );
    let since_manifest = manifest(admin, &start(admin, &url).await).await;
    assert_eq!(
        exported(admin, &since_manifest).await,
        vec![("Patient".to_string(), vec![id(&late)])]
    );

    // Only the caller who asked polls and downloads.
    let file = system["output"][0]["url"].as_str().unwrap();
    for stranger in [&project.member, &other.admin] {
        assert_outcome(get(stranger, &status).await, 404, "not found").await;
        assert_outcome(get(stranger, file).await, 404, "not found").await;
        let response = stranger
            .http
            .delete(&status)
            .bearer_auth(&stranger.token)
            .send()
            .await
            .unwrap();
        assert_outcome(response, 404, "not found").await;
    }
    // A Group the caller cannot see is a 404 at kick-off.
    assert_outcome(
        kick_off(&other.admin, &format!("Group/{}/$export", id(&group))).await,
        404,
        "not found",
    )
    .await;

    // What the kick-off cannot honour is a 400 that names it.
    let response = admin.get("$export").await;
    assert_outcome(response, 400, "respond-async").await;
    assert_outcome(
        kick_off(admin, "$export?_outputFormat=text/csv").await,
        400,
        "_outputFormat",
    )
    .await;
    assert_outcome(
        kick_off(admin, "$export?_type=Nonsense").await,
        400,
        "Nonsense",
    )
    .await;
    assert_outcome(
        kick_off(admin, "$export?_since=yesterday").await,
        400,
        "_since",
    )
    .await;
    assert_outcome(
        kick_off(admin, "$export?_typeFilter=Patient%3Fnosuch%3Dtrue").await,
        400,
        "_typeFilter",
    )
    .await;
    assert_outcome(
        kick_off(admin, "$export?_elements=id").await,
        400,
        "_elements",
    )
    .await;

    // _typeFilter: only the matching resources of its type; others whole.
    let typed = manifest(
        admin,
        &start(
            admin,
            &format!(
                "$export?_type=Patient,Practitioner&_typeFilter=Patient%3Ffamily%3DP1,Patient%3F_id%3D{}",
                id(&patients[2])
            ),
        )
        .await,
    )
    .await;
    assert_eq!(
        exported(admin, &typed).await,
        vec![
            (
                "Patient".to_string(),
                sorted(vec![id(&patients[1]), id(&patients[2])])
            ),
            ("Practitioner".to_string(), vec![id(&practitioner)]),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restricted_caller_exports_what_it_may_read_without_hidden_fields() {
    let app = TestApp::spawn().await;
    let project = app.project("export-policy").await;
    let admin = &project.admin;
    let patient = admin
        .create(json!({"resourceType": "Patient", "birthDate": "1970-01-01", "gender": "female"}))
        .await;
    let subject = format!("Patient/{}", id(&patient));
    let final_obs = admin
        .create(
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                       "subject": {"reference": subject}}),
        )
        .await;
    admin
        .create(
            json!({"resourceType": "Observation", "status": "preliminary", "code": {"text": "b"},
                       "subject": {"reference": subject}}),
        )
        .await;
    admin
        .create(json!({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}))
        .await;
    let policy = admin
        .create(json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Observation", "criteria": "Observation?status=final"},
            {"resourceType": "Patient", "hiddenFields": ["birthDate"]}]}))
        .await;
    let root = app.super_admin().await;
    let analyst = app
        .client_with(
            &root,
            &project.id,
            json!({"accessPolicy": {"reference": format!("AccessPolicy/{}", id(&policy))}}),
            None,
        )
        .await;
    let result = manifest(&analyst, &start(&analyst, "$export").await).await;
    assert_eq!(
        exported(&analyst, &result).await,
        vec![
            ("Observation".to_string(), vec![id(&final_obs)]),
            ("Patient".to_string(), vec![id(&patient)]),
        ]
    );
    let patient_file = result["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "Patient")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let line: Value = serde_json::from_str(
        get(&analyst, &patient_file)
            .await
            .text()
            .await
            .unwrap()
            .trim(),
    )
    .unwrap();
    assert_eq!(line["gender"], "female");
    assert!(line.get("birthDate").is_none(), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_removes_the_job_and_its_files_and_retention_expires_them() {
    let app = TestApp::spawn_with(|config| {
        config.export_retention = Duration::from_secs(3);
    })
    .await;
    let project = app.project("export-cancel").await;
    let admin = &project.admin;
    admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "A"}]}))
        .await;
    let status = start(admin, "$export?_type=Patient").await;
    let done = manifest(admin, &status).await;
    let file = done["output"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(get(admin, &file).await.status(), 200);
    let response = admin
        .http
        .delete(&status)
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_outcome(get(admin, &status).await, 404, "not found").await;
    assert_outcome(get(admin, &file).await, 404, "not found").await;
    let db = app.db().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM export_output", &[]).await,
        0
    );

    // Past the retention, a finished export is gone.
    let status = start(admin, "$export?_type=Patient").await;
    manifest(admin, &status).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_outcome(get(admin, &status).await, 404, "not found").await;
    assert_eq!(count(&db, "SELECT count(*) FROM export_job", &[]).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_whose_instance_stopped_is_finished_by_another() {
    // The first instance takes requests but runs no jobs; its job is made to
    // look like one it began and died running (a lease about to pass, half
    // a file written).
    let first = TestApp::spawn_with(|config| config.export_worker = false).await;
    let project = first.project("export-restart").await;
    let admin = &project.admin;
    for n in 0..3 {
        admin
            .create(json!({"resourceType": "Patient", "name": [{"family": format!("R{n}")}]}))
            .await;
    }
    let status = start(admin, "$export?_type=Patient").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = get(admin, &status).await;
    assert_eq!(response.status(), 202, "no instance runs jobs yet");
    let db = first.db().await;
    db.execute(
        "UPDATE export_job SET status = 'running', runner = gen_random_uuid(),
                lease_until = now() + interval '2 seconds', progress = '1 resources exported (Patient)'",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO export_output (job_id, resource_type, seq, lines, bytes)
         SELECT id, 'Patient', 0, 1, convert_to('{\"resourceType\":\"Patient\",\"id\":\"half\"}\n', 'UTF8') FROM export_job",
        &[],
    )
    .await
    .unwrap();
    // A second instance on the same database picks it up once the lease passes.
    let database_url = format!("{}/{}", postgres_server(), first.database);
    let _second = TestApp::spawn_with(|config| config.database_url = database_url).await;
    let result = manifest(admin, &status).await;
    let files = exported(admin, &result).await;
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].1.len(), 3, "{files:?}");
    assert!(!files[0].1.contains(&"half".to_string()));
}
