//! The command line's work, end to end against the real server and
//! database: `import` of a Synthea-like directory and of NDJSON with
//! references across files, a malformed line and a rejected resource, and a
//! resume after the import was stopped halfway; `export` downloading a Bulk
//! Data export; `reindex` after index rows were deleted by hand, `check`
//! finding that planted difference, and `migrate`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fhirgate_client::{api::Api, export, import};
use fhirgate_server::{cli, store::maintenance::Scope, Config};
use fhirgate_tests::{postgres_server, status_json, Session, TestApp, TestProject};
use serde_json::{json, Value};

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fhirgate-cli-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn api(app: &TestApp, project: &TestProject) -> Api {
    let credentials = &project.admin.credentials;
    Api::connect(
        &app.base_url,
        &credentials.client_id,
        &credentials.client_secret,
    )
    .await
    .expect("sign in")
}

async fn search(session: &Session, query: &str) -> Vec<Value> {
    let (status, bundle) = status_json(session.get(query).await).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e["resource"].clone())
        .collect()
}

async fn total(session: &Session, resource_type: &str) -> u64 {
    let (_, bundle) = status_json(
        session
            .get(&format!("{resource_type}?_summary=count"))
            .await,
    )
    .await;
    bundle["total"].as_u64().unwrap()
}

const SYNTHEA: &str = "https://github.com/synthetichealth/synthea";

fn write(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// Synthea's layout: hospital and practitioner Bundles that patients'
/// Bundles refer to by identifier, each patient's Bundle self-contained
/// through `urn:uuid` full URLs.
fn synthea_like(dir: &Path, patients: usize) {
    write(
        &dir.join("hospitalInformation1.json"),
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [{
            "fullUrl": "urn:uuid:0f0e0d0c-0000-4000-8000-000000000001",
            "resource": {"resourceType": "Organization", "name": "General Hospital",
                "identifier": [{"system": SYNTHEA, "value": "org-1"}]},
            "request": {"method": "POST", "url": "Organization",
                "ifNoneExist": format!("identifier={SYNTHEA}|org-1")}}]}),
    );
    write(
        &dir.join("practitionerInformation1.json"),
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [{
            "fullUrl": "urn:uuid:0f0e0d0c-0000-4000-8000-000000000002",
            "resource": {"resourceType": "Practitioner", "name": [{"family": "Doctor"}],
                "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "999"}]},
            "request": {"method": "POST", "url": "Practitioner",
                "ifNoneExist": "identifier=http://hl7.org/fhir/sid/us-npi|999"}}]}),
    );
    for n in 0..patients {
        let patient = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        let encounter = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        write(
            &dir.join(format!(
                "Patient{n}_Family{n}_{}.json",
                uuid::Uuid::new_v4()
            )),
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"fullUrl": patient, "request": {"method": "POST", "url": "Patient"},
                 "resource": {"resourceType": "Patient", "name": [{"family": format!("Family{n}")}],
                    "identifier": [{"system": SYNTHEA, "value": format!("patient-{n}")}]}},
                {"fullUrl": encounter, "request": {"method": "POST", "url": "Encounter"},
                 "resource": {"resourceType": "Encounter", "status": "finished",
                    "class": {"code": "AMB"}, "subject": {"reference": patient},
                    "serviceProvider": {"reference": format!("Organization?identifier={SYNTHEA}|org-1")},
                    "participant": [{"individual": {"reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|999"}}]}},
                {"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "request": {"method": "POST", "url": "Observation"},
                 "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                    "subject": {"reference": patient}, "encounter": {"reference": encounter}}}
            ]}),
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn import_resolves_references_across_files_and_reports_rejections() {
    let app = TestApp::spawn().await;
    let project = app.project("import").await;
    let admin = &project.admin;
    let dir = temp_dir();
    synthea_like(&dir, 3);
    // NDJSON as a Bulk Data export writes it: source ids, references between files.
    let ndjson = dir.join("ndjson");
    std::fs::create_dir_all(&ndjson).unwrap();
    std::fs::write(
        ndjson.join("Patient.ndjson"),
        [
            json!({"resourceType": "Patient", "id": "src-1", "identifier": [{"system": "urn:src", "value": "1"}]}),
            json!({"resourceType": "Patient", "id": "src-2", "identifier": [{"system": "urn:src", "value": "2"}]}),
        ]
        .iter()
        .map(|v| format!("{v}\n"))
        .collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        ndjson.join("Observation.ndjson"),
        format!(
            "{}\n{{\"resourceType\": \"Observation\", broken\n{}\n{}\n",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "a"}, "subject": {"reference": "Patient/src-1"}}),
            json!({"resourceType": "Observation", "status": "not-a-status", "code": {"text": "b"}}),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "c"}, "subject": {"reference": "Patient/src-2"}}),
        ),
    )
    .unwrap();
    let journal = dir.join("journal");
    let options = import::ImportOptions {
        paths: vec![dir.clone()],
        concurrency: 3,
        batch_size: 10,
        journal: journal.clone(),
    };
    let summary = import::run(&api(&app, &project).await, &options)
        .await
        .unwrap();
    assert_eq!(summary.files, 7);
    assert_eq!(summary.imported, 2 + 3 * 3 + 2 + 2, "{summary:?}");
    assert_eq!(summary.rejected, 2, "{summary:?}");
    let observations = ndjson.join("Observation.ndjson").display().to_string();
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("{observations}:2: not JSON"))),
        "{:?}",
        summary.errors
    );
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.starts_with(&format!("{observations}:3: ")) && e.contains("not-a-status")),
        "{:?}",
        summary.errors
    );

    assert_eq!(total(admin, "Patient").await, 5);
    assert_eq!(total(admin, "Organization").await, 1);
    // Synthea's references: within the Bundle and by identifier.
    let organization = &search(admin, "Organization").await[0];
    let encounters = search(admin, "Encounter").await;
    assert_eq!(encounters.len(), 3);
    for encounter in &encounters {
        assert_eq!(
            encounter["serviceProvider"]["reference"],
            format!("Organization/{}", organization["id"].as_str().unwrap())
        );
        let subject = encounter["subject"]["reference"].as_str().unwrap();
        let (status, _) = status_json(admin.get(subject).await).await;
        assert_eq!(status, 200, "{subject} resolves");
    }
    // NDJSON's references: to the id the server gave the source's Patient/src-1.
    let patient = &search(admin, "Patient?identifier=urn:src|1").await[0];
    let linked = search(
        admin,
        &format!(
            "Observation?subject=Patient/{}",
            patient["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(linked.len(), 1);
    assert_eq!(linked[0]["code"]["text"], "a");

    // Run again: everything is done already; nothing is sent twice.
    let again = import::run(&api(&app, &project).await, &options)
        .await
        .unwrap();
    assert_eq!(again.imported, 0);
    assert!(again.skipped_batches >= 7);
    assert_eq!(total(admin, "Patient").await, 5);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_stopped_halfway_resumes_without_duplicates() {
    let app = TestApp::spawn().await;
    let project = app.project("import-resume").await;
    let dir = temp_dir();
    let lines: String = (0..400)
        .map(|n| format!("{}\n", json!({"resourceType": "Patient", "id": format!("s{n}"), "name": [{"family": format!("R{n}")}]})))
        .collect();
    std::fs::write(dir.join("Patient.ndjson"), lines).unwrap();
    let journal = dir.join("journal");
    let options = import::ImportOptions {
        paths: vec![dir.join("Patient.ndjson")],
        concurrency: 4,
        batch_size: 10,
        journal: journal.clone(),
    };
    let api = api(&app, &project).await;
    // Stopped as a crash or Ctrl-C stops it: at whatever await it is at,
    // with transactions in flight.
    let first = async {
        let _ = import::run(&api, &options).await;
    };
    let stopper = async {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = std::fs::read_to_string(&journal)
                .unwrap_or_default()
                .matches("\"done\"")
                .count();
            if done >= 10 {
                break;
            }
        }
    };
    tokio::select! {
        _ = first => panic!("the import finished before it could be stopped"),
        _ = stopper => {}
    }
    let partial = total(&project.admin, "Patient").await;
    assert!(partial > 0 && partial < 400, "{partial}");
    let summary = import::run(&api, &options).await.unwrap();
    assert!(summary.skipped_batches >= 10, "{summary:?}");
    assert_eq!(summary.rejected, 0, "{summary:?}");
    assert_eq!(total(&project.admin, "Patient").await, 400);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn export_downloads_the_files_of_a_bulk_export() {
    let app = TestApp::spawn().await;
    let project = app.project("cli-export").await;
    for n in 0..3 {
        project
            .admin
            .create(json!({"resourceType": "Patient", "name": [{"family": format!("E{n}")}]}))
            .await;
    }
    let out = temp_dir();
    let options = export::ExportOptions {
        endpoint: "$export".into(),
        types: Some("Patient".into()),
        since: None,
        out: out.clone(),
    };
    let files = export::run(&api(&app, &project).await, &options)
        .await
        .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].count, Some(3));
    let text = std::fs::read_to_string(out.join("Patient.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 3);
    let _ = std::fs::remove_dir_all(&out);
}

#[tokio::test(flavor = "multi_thread")]
async fn reindex_restores_deleted_index_rows_and_check_finds_the_difference() {
    let app = TestApp::spawn().await;
    let project = app.project("reindex").await;
    let other = app.project("reindex-other").await;
    let admin = &project.admin;
    for n in 0..7 {
        admin
            .create(json!({"resourceType": "Patient", "name": [{"family": format!("Zimmer{n}")}]}))
            .await;
    }
    other
        .admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Zimmer"}]}))
        .await;
    assert_eq!(search(admin, "Patient?name=Zimmer").await.len(), 7);
    let store = cli::store(&Config::for_database(&format!(
        "{}/{}",
        postgres_server(),
        app.database
    )))
    .await
    .unwrap();
    assert_eq!(cli::migrate(&store).await.unwrap(), 0, "already migrated");
    let project_id: uuid::Uuid = project.id.parse().unwrap();
    let scope = Scope {
        project_id: Some(project_id),
        resource_type: None,
    };
    let everything = Scope {
        project_id: None,
        resource_type: None,
    };
    let clean = cli::walk(&store, &everything, true).await.unwrap();
    assert!(clean.differences.is_empty(), "{:?}", clean.differences);

    // Planted: one Patient's name rows deleted by hand.
    let db = app.db().await;
    let victim: uuid::Uuid = db
        .query_one(
            "SELECT resource_id FROM idx_string WHERE project_id = $1 AND resource_type = 'Patient' LIMIT 1",
            &[&project_id],
        )
        .await
        .unwrap()
        .get(0);
    db.execute(
        "DELETE FROM idx_string WHERE project_id = $1 AND resource_id = $2",
        &[&project_id, &victim],
    )
    .await
    .unwrap();
    assert_eq!(search(admin, "Patient?name=Zimmer").await.len(), 6);
    let checked = cli::walk(&store, &everything, true).await.unwrap();
    assert_eq!(
        checked.differences,
        vec![(project_id, "Patient".to_string(), victim)]
    );
    assert!(checked.resources >= 8);
    // check changed nothing.
    assert_eq!(search(admin, "Patient?name=Zimmer").await.len(), 6);

    let reindexed = cli::walk(&store, &scope, false).await.unwrap();
    assert!(reindexed.resources >= 7);
    assert_eq!(search(admin, "Patient?name=Zimmer").await.len(), 7);
    assert!(cli::walk(&store, &everything, true)
        .await
        .unwrap()
        .differences
        .is_empty());
    // A completed run leaves no cursor: the next starts from the beginning.
    assert!(store.reindex_cursor(&scope).await.unwrap().is_none());

    // A run stopped after some batches resumes after the last one it
    // finished: rows of resources before its cursor stay as they are.
    let ids: Vec<uuid::Uuid> = db
        .query(
            "SELECT id FROM resource WHERE project_id = $1 AND resource_type = 'Patient' ORDER BY id",
            &[&project_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (first, last) = (ids[0], ids[ids.len() - 1]);
    db.execute(
        "DELETE FROM idx_string WHERE project_id = $1 AND resource_id = ANY($2)",
        &[&project_id, &vec![first, last]],
    )
    .await
    .unwrap();
    let patients = Scope {
        project_id: Some(project_id),
        resource_type: Some("Patient"),
    };
    let middle = ids.len() / 2;
    store
        .save_reindex_cursor(
            &patients,
            Some(&(project_id, "Patient".to_string(), ids[middle])),
        )
        .await
        .unwrap();
    let resumed = cli::walk(&store, &patients, false).await.unwrap();
    assert_eq!(resumed.resources, (ids.len() - middle - 1) as u64);
    let still_missing = cli::walk(&store, &everything, true).await.unwrap();
    assert_eq!(
        still_missing.differences,
        vec![(project_id, "Patient".to_string(), first)]
    );
}
