//! Crashes lose nothing and leave nothing half-written (issue 30, item 3).
//! Single creates and transaction Bundles are sent without pause while the
//! server is killed with SIGKILL after a random delay, many times; then the
//! same with PostgreSQL killed (`pg_ctl stop -m immediate`). After each
//! crash: every request answered 2xx reads back exactly as answered, with
//! its history; a request refused with a definite status left nothing; one
//! without an answer (or whose commit was in doubt) left all or nothing;
//! and `fhirgate check` finds every resource's index rows equal to what
//! extraction gives, with no index row left without its resource.
//!
//! Rounds per kind: `FHIRGATE_CRASH_ROUNDS` (default 5); the random
//! delays come from `FHIRGATE_CRASH_SEED` when set.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;
#[allow(dead_code)]
mod postgres_cluster;
#[allow(dead_code)]
mod traffic;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use common::{client_token, start_logging, Admin, Logs, Running};
use postgres_cluster::Cluster;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use traffic::{send, Reply};

const DATABASE: &str = "fhirgate";
/// Patients in each transaction Bundle (plus one Observation about the first).
const TRANSACTION_PATIENTS: usize = 40;

fn rounds() -> usize {
    std::env::var("FHIRGATE_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn rng() -> rand::rngs::StdRng {
    let seed = std::env::var("FHIRGATE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("FHIRGATE_CRASH_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// One request the test sent, and what it was answered.
#[derive(Debug, Clone)]
struct Sent {
    mark: String,
    /// Resources it writes: 1 for a create, a transaction's entries.
    resources: usize,
    reply: Reply,
}

impl Sent {
    /// What an assertion message needs (a transaction's answer is long).
    fn summary(&self) -> String {
        format!(
            "mark {} ({} resources): status {:?}, {}",
            self.mark,
            self.resources,
            self.reply.status,
            self.reply
                .transport_error
                .clone()
                .unwrap_or_else(|| self.reply.body["issue"].to_string())
        )
    }
}

/// Creates and transactions from `workers` tasks until `stop`.
fn spawn_writers(
    base: String,
    token: &str,
    workers: usize,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Sent>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|worker| {
            let (base, token, stop, sent) =
                (base.clone(), token.to_string(), stop.clone(), sent.clone());
            tokio::spawn(async move {
                let http = traffic::client(Duration::from_secs(60));
                // Half the workers ingest transactions, half create one by one.
                let transactions = worker % 2 == 0;
                while !stop.load(Ordering::Relaxed) {
                    let mark = uuid::Uuid::new_v4().to_string();
                    let (request, resources) = if transactions {
                        (
                            http.post(format!("{base}fhir/R4"))
                                .json(&traffic::transaction(&mark, TRANSACTION_PATIENTS)),
                            TRANSACTION_PATIENTS + 1,
                        )
                    } else {
                        (
                            http.post(format!("{base}fhir/R4/Patient"))
                                .json(&traffic::patient(&mark)),
                            1,
                        )
                    };
                    let reply = send(request.bearer_auth(&token)).await;
                    let failed = !reply.is_success();
                    sent.lock().unwrap().push(Sent {
                        mark,
                        resources,
                        reply,
                    });
                    if failed {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect()
}

/// A create and a transaction, so that the crash finds the server warm
/// (a new process builds its validators at first use).
async fn warm_up(base: &str, token: &str) {
    let http = traffic::client(Duration::from_secs(60));
    let mark = uuid::Uuid::new_v4().to_string();
    for (path, body) in [
        ("fhir/R4/Patient", traffic::patient(&mark)),
        ("fhir/R4", traffic::transaction(&mark, 1)),
    ] {
        let reply = send(
            http.post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(&body),
        )
        .await;
        assert!(reply.is_success(), "{reply:?}");
    }
}

/// Runs the writers, calls `crash` after a random delay, then stops them;
/// returns what they sent.
async fn write_through_crash(
    base: String,
    token: &str,
    rng: &mut rand::rngs::StdRng,
    crash: impl FnOnce(),
) -> Vec<Sent> {
    warm_up(&base, token).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let writers = spawn_writers(base, token, 6, stop.clone(), sent.clone());
    tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2000))).await;
    crash();
    // Requests in flight at the crash get their answer (or none) first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let sent = sent.lock().unwrap().clone();
    sent
}

/// The marked resources stored: mark -> (type, id, content).
async fn stored_by_mark(cluster: &Cluster) -> HashMap<String, Vec<(String, String, Value)>> {
    let client = cluster.connect(DATABASE).await;
    let rows = client
        .query(
            "SELECT resource_type, id::text, content FROM resource WHERE resource_type IN ('Patient', 'Observation') AND NOT deleted",
            &[],
        )
        .await
        .unwrap();
    let mut stored: HashMap<String, Vec<_>> = HashMap::new();
    for row in rows {
        let content: Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap();
        let mark = content["identifier"]
            .as_array()
            .and_then(|ids| ids.iter().find(|i| i["system"] == traffic::MARK_SYSTEM))
            .and_then(|i| i["value"].as_str())
            .map(str::to_string);
        if let Some(mark) = mark {
            stored
                .entry(mark)
                .or_default()
                .push((row.get(0), row.get(1), content));
        }
    }
    stored
}

/// The resources a 2xx answer carried: the created one, or each entry's of a
/// transaction-response.
fn answered_resources(sent: &Sent) -> Vec<Value> {
    match sent.reply.body["resourceType"].as_str() {
        Some("Bundle") => sent.reply.body["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .collect(),
        _ => vec![sent.reply.body.clone()],
    }
}

/// Checks everything `sent` against what is stored and served now.
async fn verify(cluster: &Cluster, running: &Running, token: &str, sent: &[Sent]) {
    let stored = stored_by_mark(cluster).await;
    let http = traffic::client(Duration::from_secs(30));
    let (mut succeeded, mut refused, mut unanswered, mut unanswered_saved) = (0, 0, 0, 0);
    for s in sent {
        let found = stored.get(&s.mark).map_or(0, Vec::len);
        if s.reply.is_success() {
            succeeded += 1;
            assert_eq!(
                found,
                s.resources,
                "a 2xx request lost resources: {}",
                s.summary()
            );
            for resource in answered_resources(s) {
                let (kind, id) = (
                    resource["resourceType"].as_str().unwrap(),
                    resource["id"].as_str().unwrap(),
                );
                let read = send(
                    http.get(running.url(&format!("fhir/R4/{kind}/{id}")))
                        .bearer_auth(token),
                )
                .await;
                assert_eq!(read.status, Some(200), "{read:?}");
                assert_eq!(read.body, resource, "read back differs from the answer");
                let history = send(
                    http.get(running.url(&format!("fhir/R4/{kind}/{id}/_history")))
                        .bearer_auth(token),
                )
                .await;
                let entries = history.body["entry"].as_array().expect("history entries");
                assert_eq!(entries.len(), 1, "{history:?}");
                assert_eq!(
                    entries[0]["resource"], resource,
                    "history differs from the answer"
                );
            }
        } else if s.reply.not_sent || (s.reply.status.is_some() && !s.reply.is_in_doubt()) {
            refused += 1;
            assert_eq!(
                found,
                0,
                "a refused request left resources: {}",
                s.summary()
            );
        } else {
            unanswered += 1;
            unanswered_saved += usize::from(found > 0);
            assert!(
                found == 0 || found == s.resources,
                "an unanswered request left {found} of its {} resources: {}",
                s.resources,
                s.summary()
            );
        }
    }
    eprintln!(
        "{succeeded} succeeded, {refused} refused or not sent, {unanswered} without an answer or in doubt ({unanswered_saved} of them saved)"
    );
    assert!(succeeded > 0, "nothing succeeded before the crash");
    check_index(cluster).await;
}

/// `fhirgate check` (index rows equal extraction for every live resource)
/// and no index or compartment row without its live resource.
async fn check_index(cluster: &Cluster) {
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .arg("check")
        .env("DATABASE_URL", cluster.url(DATABASE))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "fhirgate check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let client = cluster.connect(DATABASE).await;
    for table in [
        "idx_token",
        "idx_string",
        "idx_date",
        "idx_number",
        "idx_quantity",
        "idx_reference",
        "idx_uri",
        "idx_composite",
        "idx_text",
        "resource_compartment",
    ] {
        let orphans: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM resource r \
                     WHERE r.project_id = t.project_id AND r.resource_type = t.resource_type \
                     AND r.id = t.resource_id AND NOT r.deleted)"
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(orphans, 0, "{table} has rows without their resource");
    }
}

/// Starts the server; every start has the same public URL, so that tokens
/// (whose issuer it is) outlive a restart on another port.
fn start_server(cluster: &Cluster, admin: &Admin) -> Running {
    let mut env = admin.env().to_vec();
    env.extend([
        ("FHIRGATE_LOG_LEVEL", "info"),
        ("FHIRGATE_WORKERS", "2"),
        ("FHIRGATE_BASE_URL", "http://fhirgate.test/"),
    ]);
    start_logging(&cluster.url(DATABASE), Logs::Read, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_server_loses_no_answered_write_and_leaves_none_half_written() {
    let cluster = Cluster::start();
    let admin = Admin::generated();
    let mut rng = rng();
    let mut running = start_server(&cluster, &admin);
    let token = client_token(&running, &admin.client_id, &admin.client_secret).await;
    for round in 0..rounds() {
        let sent = write_through_crash(running.url(""), &token, &mut rng, || running.kill()).await;
        running = start_server(&cluster, &admin);
        eprint!("server killed, round {round}: ");
        verify(&cluster, &running, &token, &sent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_database_loses_no_answered_write_and_leaves_none_half_written() {
    let cluster = Cluster::start();
    let admin = Admin::generated();
    let mut rng = rng();
    let running = start_server(&cluster, &admin);
    let token = client_token(&running, &admin.client_id, &admin.client_secret).await;
    for round in 0..rounds() {
        let sent = write_through_crash(running.url(""), &token, &mut rng, || cluster.kill()).await;
        cluster.boot();
        eprint!("PostgreSQL killed, round {round}: ");
        // The same server process serves on once PostgreSQL has recovered.
        verify(&cluster, &running, &token, &sent).await;
    }
}
