//! The benchmark's smoke runs, part of the test suite so they keep working:
//! every scenario and the SQL baseline, a growth run over two sizes, the
//! policy-restricted callers, a server that answers `return=minimal`
//! transactions with no entries, and a comparison of two servers, briefly,
//! on tiny data sets, each against a real fhirgate on its own database. Real
//! measurements are run by hand (see bench/README.md).

use std::{
    process::Command,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use actix_web::{http::StatusCode, web, App, HttpRequest, HttpResponse, HttpServer};
use fhirgate_tests::{postgres_server, TestApp};
use serde_json::Value;

fn spawn_app() -> impl std::future::Future<Output = TestApp> {
    TestApp::spawn_with(|config| config.workers = 2)
}

/// Runs fhirgate-bench against a new server as its super-admin client with
/// `args` (plus `--baseline-postgres` for the app's database when
/// `baseline`), asserts it succeeded and answers its JSON report.
async fn run_bench(args: &[&str], baseline: bool) -> Value {
    let app = spawn_app().await;
    run_bench_on(&app, &app.base_url, args, baseline).await
}

/// [`run_bench`] against `app` reached at `base_url`.
async fn run_bench_on(app: &TestApp, base_url: &str, args: &[&str], baseline: bool) -> Value {
    let report = std::env::temp_dir().join(format!("fhirgate-bench-smoke-{}.json", app.database));
    let mut command = Command::new(env!("CARGO_BIN_EXE_fhirgate-bench"));
    command
        .args(["--base-url", base_url])
        .args(["--client-id", &app.admin.client_id])
        .args(["--client-secret", &app.admin.client_secret])
        .args(["--duration", "0.2", "--concurrency", "2", "--seed", "7"])
        .args(args)
        .arg("--json")
        .arg(&report);
    if baseline {
        let database_url = format!("{}/{}", postgres_server(), app.database);
        command.args(["--baseline-postgres", &database_url, "--analyze"]);
    }
    // The tool is a blocking child process; the server keeps serving on this runtime.
    let output = tokio::task::spawn_blocking(move || command.output().expect("run fhirgate-bench"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fhirgate-bench failed:\n{stdout}\n{stderr}"
    );
    if baseline {
        // The baselines' scratch tables go when the run ends, and so do the
        // ingest baseline's rows (written under a project of its own, which
        // no Project resource names).
        let db = app.db().await;
        let left: Vec<String> = db
            .query(
                "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'fhirgate\\_bench\\_%'",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(left.is_empty(), "scratch tables left behind: {left:?}");
        for table in [
            "resource",
            "idx_token",
            "idx_reference",
            "resource_compartment",
        ] {
            let orphans: i64 = db
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM resource p \
                         WHERE p.resource_type = 'Project' AND p.id = t.project_id)"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(orphans, 0, "baseline rows left in {table}");
        }
    }
    let text = std::fs::read_to_string(&report).unwrap();
    let _ = std::fs::remove_file(&report);
    serde_json::from_str(&text).unwrap()
}

/// Asserts each named scenario ran, without errors; answers its row.
fn ran<'a>(scenarios: &'a Value, expected: &[&str]) -> Vec<&'a Value> {
    let scenarios = scenarios.as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    expected
        .iter()
        .map(|expected| {
            let scenario = scenarios
                .iter()
                .find(|s| s["name"] == *expected)
                .unwrap_or_else(|| panic!("{expected} missing from {names:?}"));
            assert!(
                scenario["requests"].as_u64().unwrap() > 0,
                "{expected}: {scenario}"
            );
            assert_eq!(scenario["errors"], 0, "{expected}: {scenario}");
            assert!(scenario["requests_per_second"].as_f64().unwrap() > 0.0);
            scenario
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_scenario_runs_against_fhirgate() {
    let report = run_bench(&["--patients", "5"], true).await;
    ran(
        &report["scenarios"],
        &[
            "read",
            "search-name",
            "search-exact",
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
            "baseline-search-include",
            "baseline-search-chain",
            "baseline-insert",
            "baseline-ingest",
        ],
    );
    // Each scenario with a floor in PostgreSQL alone is given as a fraction
    // of that floor: requests, or resources where the rows count them.
    for (name, floor) in [
        ("read", "baseline-read"),
        ("search-token", "baseline-search-token"),
        ("search-include", "baseline-search-include"),
        ("search-chain", "baseline-search-chain"),
        ("create", "baseline-insert"),
        ("transaction", "baseline-ingest"),
    ] {
        let rows = ran(&report["scenarios"], &[name, floor]);
        let rps = |row: &Value| {
            row.get("resources_per_second")
                .and_then(Value::as_f64)
                .unwrap_or_else(|| row["requests_per_second"].as_f64().unwrap())
        };
        let fraction = rows[0]["fraction_of_baseline"].as_f64().unwrap();
        assert!(fraction > 0.0, "{name} against {floor}: {}", rows[0]);
        assert!(
            (fraction - rps(rows[0]) / rps(rows[1])).abs() < 1e-3,
            "{name} against {floor}: {}",
            rows[0]
        );
    }
    assert!(report.get("sizes").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn growth_run_measures_each_size() {
    let report = run_bench(&["--sizes", "6,3", "--resources-per-patient", "12"], true).await;
    let sizes = report["sizes"].as_array().unwrap();
    let patients: Vec<u64> = sizes
        .iter()
        .map(|s| s["patients"].as_u64().unwrap())
        .collect();
    assert_eq!(patients, [3, 6]);
    let resources: Vec<u64> = sizes
        .iter()
        .map(|s| s["resources"].as_u64().unwrap())
        .collect();
    // Every Patient comes with at least an Encounter and an Observation.
    assert!(
        resources[0] >= 3 * 3 && resources[1] > resources[0],
        "{resources:?}"
    );
    assert_eq!(report["load"]["resources"], resources[1]);
    assert_eq!(report["load"]["errors"], 0);
    let growth_scenarios = ["read", "search-name", "search-token", "create"];
    for size in sizes {
        ran(&size["scenarios"], &growth_scenarios);
        ran(
            &size["scenarios"],
            &["baseline-read", "baseline-search-token", "baseline-insert"],
        );
    }
    let growth = report["growth"].as_array().unwrap();
    for name in growth_scenarios {
        let row = growth.iter().find(|g| g["name"] == name).unwrap();
        assert_eq!(row["sizes"].as_array().unwrap().len(), 2, "{row}");
        assert!(row["throughput_ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_scenarios_run_as_restricted_clients() {
    let report = run_bench(
        &[
            "--patients",
            "20",
            "--policy",
            "none,compartment",
            "--policy",
            "criteria",
            "--scenario",
            "read,search-token,search-reference-date,create",
        ],
        false,
    )
    .await;
    // The super-admin client got a project of its own for the run.
    assert_eq!(report["project"]["created"], true);
    assert_eq!(
        report["policies"],
        serde_json::json!(["none", "compartment", "criteria"])
    );
    let rows = ran(
        &report["scenarios"],
        &[
            "read",
            "read[compartment]",
            "read[criteria]",
            "search-token",
            "search-token[compartment]",
            "search-token[criteria]",
            "search-reference-date[compartment]",
            "create",
        ],
    );
    assert_eq!(rows[1]["policy"], "compartment");
    assert!(rows[1]["fraction_of_unrestricted"].as_f64().unwrap() > 0.0);
    let names: Vec<&str> = report["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // Writes run as the admin client only.
    assert!(!names.contains(&"create[compartment]"), "{names:?}");
}

/// A proxy in front of a server that answers a transaction sent with
/// `Prefer: return=minimal` with its status and an empty body, as Medplum
/// does, and passes everything else through.
struct StrippingProxy {
    base_url: String,
    counts: Arc<ProxyCounts>,
}

#[derive(Default)]
struct ProxyCounts {
    /// Transactions answered with an empty body.
    stripped: AtomicUsize,
    /// Transactions answered as the server answered them.
    whole: AtomicUsize,
}

struct Upstream {
    url: String,
    http: reqwest::Client,
    counts: Arc<ProxyCounts>,
}

impl StrippingProxy {
    async fn start(upstream: &str) -> StrippingProxy {
        let counts = Arc::new(ProxyCounts::default());
        let state = web::Data::new(Upstream {
            url: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            counts: counts.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::PayloadConfig::new(64 << 20))
                .default_service(web::to(forward))
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let base_url = format!("http://{}/", server.addrs()[0]);
        tokio::spawn(server.run());
        StrippingProxy { base_url, counts }
    }

    fn stripped(&self) -> usize {
        self.counts.stripped.load(Ordering::SeqCst)
    }

    fn whole(&self) -> usize {
        self.counts.whole.load(Ordering::SeqCst)
    }
}

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    upstream: web::Data<Upstream>,
) -> HttpResponse {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes()).unwrap();
    let mut request = upstream
        .http
        .request(method, format!("{}{path}", upstream.url))
        .body(body.to_vec());
    for (name, value) in req.headers() {
        if !matches!(name.as_str(), "host" | "content-length" | "connection") {
            request = request.header(name.as_str(), value.as_bytes());
        }
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut reply = HttpResponse::build(status);
    for (name, value) in response.headers() {
        if matches!(name.as_str(), "content-type" | "location" | "etag") {
            reply.insert_header((name.as_str(), value.as_bytes()));
        }
    }
    let bytes = response.bytes().await.unwrap();
    let transaction = req.method() == actix_web::http::Method::POST
        && matches!(req.path(), "/fhir/R4" | "/fhir/R4/");
    let minimal = req
        .headers()
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("return=minimal"));
    if transaction && minimal && status.is_success() {
        upstream.counts.stripped.fetch_add(1, Ordering::SeqCst);
        return reply.finish();
    }
    if transaction {
        upstream.counts.whole.fetch_add(1, Ordering::SeqCst);
    }
    reply.body(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn loads_a_server_that_answers_minimal_transactions_with_no_entries() {
    let app = spawn_app().await;
    let proxy = StrippingProxy::start(&app.base_url).await;
    let report = run_bench_on(
        &app,
        &proxy.base_url,
        &[
            "--patients",
            "30",
            "--scenario",
            "read,search-token,transaction",
        ],
        false,
    )
    .await;
    assert_eq!(report["load"]["errors"], 0, "{}", report["load"]);
    assert_eq!(report["load"]["transactions"], true);
    let rows = ran(
        &report["scenarios"],
        &["read", "search-token", "transaction"],
    );
    assert!(
        rows[2]["resources_per_second"].as_f64().unwrap() > 0.0,
        "{}",
        rows[2]
    );
    // The first Bundle of the load came back empty; the load's other
    // Bundles went without the header and came back whole; the
    // transaction scenario kept it (it needs no ids).
    let transactions = rows[2]["requests"].as_u64().unwrap() as usize;
    assert_eq!(proxy.stripped(), 1 + transactions);
    assert!(
        proxy.whole() >= 1,
        "the load sent every Bundle with return=minimal"
    );
    // Every resource loaded is counted, those of the empty answer too: what
    // the database holds of the data set's types, less what the
    // transaction scenario added (100 a Bundle).
    let db = app.db().await;
    let stored: i64 = db
        .query_one(
            "SELECT count(*) FROM resource WHERE resource_type IN \
             ('Patient', 'Encounter', 'Observation', 'Condition')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        report["load"]["resources"].as_u64().unwrap() + 100 * transactions as u64,
        stored as u64
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_runs_every_scenario_against_both_servers() {
    let (first, second) = tokio::join!(spawn_app(), spawn_app());
    // The second as Medplum answers transactions.
    let proxy = StrippingProxy::start(&second.base_url).await;
    let other = format!(
        "{},{},{}",
        proxy.base_url, second.admin.client_id, second.admin.client_secret
    );
    let scenarios = ["read", "search-token", "create", "transaction"];
    let report = run_bench_on(
        &first,
        &first.base_url,
        &[
            "--patients",
            "5",
            "--scenario",
            &scenarios.join(","),
            "--compare",
            &other,
        ],
        false,
    )
    .await;
    ran(&report["scenarios"], &scenarios);
    assert_eq!(report["compare"]["base_url"], proxy.base_url.as_str());
    ran(&report["compare"]["scenarios"], &scenarios);
    assert!(proxy.stripped() >= 1);
    let rows = report["comparison"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, scenarios);
    for row in rows {
        let (a, b) = (
            row["first"].as_f64().unwrap(),
            row["second"].as_f64().unwrap(),
        );
        assert!(a > 0.0 && b > 0.0, "{row}");
        assert!(
            (row["ratio"].as_f64().unwrap() - a / b).abs() < 1e-3,
            "{row}"
        );
    }
    assert_eq!(rows[3]["unit"], "resources/s");
    // Each server holds its own copy of the data set.
    for app in [&first, &second] {
        let patients: i64 = app
            .db()
            .await
            .query_one(
                "SELECT count(*) FROM resource WHERE resource_type = 'Patient'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(patients >= 5, "{patients}");
    }
}
