//! `fhirgate import` killed with SIGKILL halfway, twice, then run again: it
//! resumes from its journal and every resource arrives exactly once.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{start_logging, Admin, Api, Logs, Running, TestDatabase};
use serde_json::{json, Value};

const PATIENTS: usize = 600;

fn import(running: &Running, admin: &Admin, dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    command
        .arg("import")
        .arg(dir.join("Patient.ndjson"))
        .args(["--base-url", &running.url("")])
        .args(["--client-id", &admin.client_id])
        .args(["--client-secret", &admin.client_secret])
        .args(["--concurrency", "4", "--batch-size", "10"])
        .arg("--journal")
        .arg(dir.join("journal"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

fn batches_done(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("journal"))
        .unwrap_or_default()
        .matches("\"done\"")
        .count()
}

/// Kills the import with SIGKILL once its journal records `done` batches.
fn kill_after(mut child: Child, dir: &Path, done: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while batches_done(dir) < done {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the import ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the import made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(!exit.success(), "killed, not finished: {exit:?}");
}

async fn patients(api: &Api) -> Vec<String> {
    let mut families = Vec::new();
    let mut next = Some("fhir/R4/Patient?_count=1000&_elements=name".to_string());
    while let Some(path) = next.take() {
        let bundle: Value = api.get(&path).await.json().await.unwrap();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            families.push(
                entry["resource"]["name"][0]["family"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
        }
        next = bundle["link"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["relation"] == "next")
            .and_then(|l| l["url"].as_str())
            .map(|url| {
                url.split_once("/fhir/")
                    .map(|(_, rest)| format!("fhir/{rest}"))
                    .unwrap()
            });
    }
    families
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_killed_twice_resumes_and_imports_each_resource_once() {
    let database = TestDatabase::new();
    let admin = Admin::generated();
    let running = start_logging(&database.url, Logs::Read, &admin.env());
    let api = Api::sign_in(&running, &admin.client_id, &admin.client_secret).await;
    let dir = std::env::temp_dir().join(format!("import-killed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines: String = (0..PATIENTS)
        .map(|n| {
            let patient = json!({"resourceType": "Patient", "id": format!("k{n}"),
                                 "name": [{"family": format!("Killed{n}")}]});
            format!("{patient}\n")
        })
        .collect();
    std::fs::write(dir.join("Patient.ndjson"), lines).unwrap();

    // Killed while transactions are in flight, at two different points.
    for done in [10, 30] {
        let child = import(&running, &admin, &dir).spawn().unwrap();
        kill_after(child, &dir, done);
        let so_far = patients(&api).await.len();
        assert!(so_far > 0 && so_far < PATIENTS, "{so_far} after a kill");
    }

    let output = import(&running, &admin, &dir).output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("batches already done"), "{log}");

    let mut families = patients(&api).await;
    families.sort();
    let expected = {
        let mut all: Vec<String> = (0..PATIENTS).map(|n| format!("Killed{n}")).collect();
        all.sort();
        all
    };
    assert_eq!(families, expected, "each Patient exactly once");
    let _ = std::fs::remove_dir_all(&dir);
}
