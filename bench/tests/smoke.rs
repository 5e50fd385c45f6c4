//! The benchmark's smoke run, part of the test suite so it keeps working:
//! every scenario and the SQL baseline, briefly, on a tiny data set, against
//! a real fhirgate on its own database. Real measurements are run by hand
//! (see bench/README.md).

use std::process::Command;

use fhirgate_tests::{postgres_server, TestApp};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_runs_against_fhirgate() {
    let app = TestApp::spawn_with(|config| config.workers = 2).await;
    let report = std::env::temp_dir().join(format!("fhirgate-bench-smoke-{}.json", app.database));
    let base_url = app.base_url.clone();
    let database_url = format!("{}/{}", postgres_server(), app.database);
    let (client_id, client_secret) = (app.admin.client_id.clone(), app.admin.client_secret.clone());
    let json_path = report.clone();
    // The tool is a blocking child process; the server keeps serving on this runtime.
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_fhirgate-bench"))
            .args([
                "--base-url",
                &base_url,
                "--client-id",
                &client_id,
                "--client-secret",
                &client_secret,
            ])
            .args([
                "--patients",
                "5",
                "--duration",
                "0.3",
                "--concurrency",
                "2",
                "--seed",
                "7",
            ])
            .args(["--baseline-postgres", &database_url, "--analyze"])
            .arg("--json")
            .arg(&json_path)
            .output()
            .expect("run fhirgate-bench")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fhirgate-bench failed:\n{stdout}\n{stderr}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let scenarios = report["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for expected in [
        "read",
        "search-name",
        "search-token",
        "search-reference-date",
        "search-include",
        "search-chain",
        "create",
        "update",
        "transaction",
        "mixed",
        "baseline-read",
        "baseline-search-token",
    ] {
        let scenario = scenarios
            .iter()
            .find(|s| s["name"] == expected)
            .unwrap_or_else(|| panic!("{expected} missing from {names:?}"));
        assert!(
            scenario["requests"].as_u64().unwrap() > 0,
            "{expected}: {scenario}"
        );
        assert_eq!(scenario["errors"], 0, "{expected}: {scenario}");
        assert!(scenario["requests_per_second"].as_f64().unwrap() > 0.0);
    }
}
