//! PostgreSQL fails and comes back under load (issue 30, item 2): a private
//! cluster is restarted, then stopped for 20 s, while requests keep coming.
//! During the outage every request is answered 503 with an OperationOutcome
//! and `Retry-After` within the statement timeout (no hang, no 500, no
//! panic); afterwards the same process serves again within 2 s, its
//! background listeners reconnect, an export runs and mail is recorded.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;
#[allow(dead_code)]
mod postgres_cluster;
#[allow(dead_code)]
mod traffic;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{client_token, start_logging, Admin, Logs, Running};
use postgres_cluster::Cluster;
use serde_json::Value;
use traffic::{send, Reply};

/// `FHIRGATE_STATEMENT_TIMEOUT` of the server under test.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the database stays down (the 20 s; `FHIRGATE_OUTAGE_SECONDS` to change).
fn outage() -> Duration {
    Duration::from_secs(
        std::env::var("FHIRGATE_OUTAGE_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    )
}

/// Mixed traffic (create, read what was created, search) from `workers`
/// tasks until `stop`; every answer is kept.
fn spawn_load(
    running: &Running,
    token: &str,
    workers: usize,
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Reply>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|_| {
            let base = running.url("fhir/R4/");
            let token = token.to_string();
            let stop = stop.clone();
            let replies = replies.clone();
            tokio::spawn(async move {
                let http = traffic::client(Duration::from_secs(30));
                let mut last_id: Option<String> = None;
                while !stop.load(Ordering::Relaxed) {
                    let mark = uuid::Uuid::new_v4().to_string();
                    let created = send(
                        http.post(format!("{base}Patient"))
                            .bearer_auth(&token)
                            .json(&traffic::patient(&mark)),
                    )
                    .await;
                    if created.is_success() {
                        last_id = created.body["id"].as_str().map(str::to_string);
                    }
                    let mut round = vec![created];
                    if let Some(id) = &last_id {
                        round.push(
                            send(http.get(format!("{base}Patient/{id}")).bearer_auth(&token)).await,
                        );
                    }
                    round.push(
                        send(
                            http.get(format!("{base}Patient?name=Fault&_count=5"))
                                .bearer_auth(&token),
                        )
                        .await,
                    );
                    let pause = round.iter().any(|r| !r.is_success());
                    replies.lock().unwrap().extend(round);
                    if pause {
                        // As a client honouring Retry-After would, but sooner.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            })
        })
        .collect()
}

async fn healthcheck(running: &Running) -> (u16, Value) {
    let reply =
        send(traffic::client(Duration::from_secs(10)).get(running.url("healthcheck"))).await;
    (reply.status.expect("healthcheck answers"), reply.body)
}

/// Polls a search until it answers 200; returns how long that took.
async fn time_to_serve(running: &Running, token: &str) -> Duration {
    let start = Instant::now();
    let http = traffic::client(Duration::from_secs(10));
    loop {
        let reply = send(
            http.get(running.url("fhir/R4/Patient?_count=1"))
                .bearer_auth(token),
        )
        .await;
        if reply.status == Some(200) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not serving 30 s after PostgreSQL came back: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The listeners (`LISTEN` connections) of the server, by application name.
async fn listeners(cluster: &Cluster) -> Vec<String> {
    let client = cluster.connect("fhirgate").await;
    client
        .query(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE 'fhirgate%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Waits until both listeners are connected again.
async fn listeners_reconnect(cluster: &Cluster) {
    let start = Instant::now();
    loop {
        let names = listeners(cluster).await;
        if names.iter().any(|n| n == "fhirgate change listener")
            && names.iter().any(|n| n.contains("subscription"))
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "listeners did not reconnect: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A system `$export` started now completes: the export worker survived.
async fn export_completes(running: &Running, token: &str) {
    let http = traffic::client(Duration::from_secs(30));
    let kickoff = http
        .get(running.url("fhir/R4/$export"))
        .bearer_auth(token)
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kickoff.status(), 202);
    let status_url = kickoff.headers()["content-location"]
        .to_str()
        .unwrap()
        .to_string();
    let start = Instant::now();
    loop {
        let status = send(http.get(&status_url).bearer_auth(token)).await;
        if status.status == Some(200) {
            assert!(status.body["output"].is_array(), "{status:?}");
            return;
        }
        assert_eq!(status.status, Some(202), "{status:?}");
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the export did not finish after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A password-reset request after the outage has its mail recorded in the outbox.
async fn mail_is_recorded(running: &Running, cluster: &Cluster) {
    let outbox = || async {
        let count: i64 = cluster
            .connect("fhirgate")
            .await
            .query_one("SELECT count(*) FROM email_outbox", &[])
            .await
            .unwrap()
            .get(0);
        count
    };
    let before = outbox().await;
    let reply = send(
        traffic::client(Duration::from_secs(30))
            .post(running.url("auth/resetpassword"))
            .json(&serde_json::json!({ "email": "admin@example.com" })),
    )
    .await;
    assert_eq!(reply.status, Some(200), "{reply:?}");
    // The mail is made in the background (the answer's timing says nothing).
    let start = Instant::now();
    while outbox().await == before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no mail recorded after the outage"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_during_a_database_outage_get_503_and_the_same_process_recovers() {
    let cluster = Cluster::start();
    let admin = Admin::generated();
    let timeout = STATEMENT_TIMEOUT.as_secs().to_string();
    let mut env = admin.env().to_vec();
    env.extend([
        ("FHIRGATE_STATEMENT_TIMEOUT", timeout.as_str()),
        ("FHIRGATE_LOG_LEVEL", "info"),
        ("FHIRGATE_WORKERS", "2"),
    ]);
    let mut running = start_logging(&cluster.url("fhirgate"), Logs::Kept, &env);
    let token = client_token(&running, &admin.client_id, &admin.client_secret).await;
    listeners_reconnect(&cluster).await;

    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(Mutex::new(Vec::new()));
    let load = spawn_load(&running, &token, 8, stop.clone(), replies.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A restart (pg_ctl restart -m fast).
    cluster.restart();
    let back_after_restart = time_to_serve(&running, &token).await;
    listeners_reconnect(&cluster).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stopped for 20 s.
    cluster.stop();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, down_health) = healthcheck(&running).await;
    assert_eq!(status, 503, "{down_health}");
    assert_eq!(down_health["postgres"], false, "{down_health}");
    tokio::time::sleep(outage().saturating_sub(down_at.elapsed())).await;
    cluster.boot();
    let back_after_stop = time_to_serve(&running, &token).await;
    let (status, up_health) = healthcheck(&running).await;
    assert_eq!(status, 200, "{up_health}");
    assert_eq!(up_health["postgres"], true, "{up_health}");
    listeners_reconnect(&cluster).await;
    export_completes(&running, &token).await;
    mail_is_recorded(&running, &cluster).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }

    running.terminate();
    let (exit, stderr) = running.wait_with_stderr();
    let log: Vec<String> = running.log.take().unwrap().iter().collect();
    assert!(exit.success(), "{exit:?}: {stderr}");
    for line in log.iter().map(String::as_str).chain(stderr.lines()) {
        assert!(!line.contains("panicked"), "panic in the log: {line}");
    }
    // The distinct causes of refusals, should an assertion below fail.
    let causes: std::collections::BTreeSet<String> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "request failed")
        .map(|line| line["fields"]["error"].to_string())
        .collect();

    let replies = replies.lock().unwrap().clone();
    let failures: Vec<&Reply> = replies.iter().filter(|r| !r.is_success()).collect();
    eprintln!(
        "{} requests, {} refused; serving again {back_after_restart:?} after the restart, {back_after_stop:?} after the {:?} stop",
        replies.len(),
        failures.len(),
        outage()
    );
    assert!(
        !failures.is_empty(),
        "the outage refused nothing: the test saw no outage"
    );
    for reply in &failures {
        assert_eq!(reply.status, Some(503), "{reply:?}\n{causes:#?}");
        assert_eq!(reply.body["resourceType"], "OperationOutcome", "{reply:?}");
        assert!(reply.retry_after.is_some(), "no Retry-After: {reply:?}");
    }
    let slowest = replies.iter().map(|r| r.elapsed).max().unwrap();
    assert!(
        slowest <= STATEMENT_TIMEOUT,
        "a request took {slowest:?}, longer than the statement timeout"
    );
    assert!(
        back_after_restart <= Duration::from_secs(2) && back_after_stop <= Duration::from_secs(2),
        "serving again took {back_after_restart:?} / {back_after_stop:?}"
    );
    // Work after the outage succeeds (the last replies came after it).
    assert!(replies.last().unwrap().is_success());
}
