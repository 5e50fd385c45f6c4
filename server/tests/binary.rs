//! The `fhirgate` binary as an operator runs it: zero configuration against a
//! local PostgreSQL, credentials printed once, a clear message when the
//! database is down, and a graceful stop on SIGTERM.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;

use std::{process::Command, time::Duration};

use common::{client_token, start, start_logging, Admin, Logs, TestDatabase};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn starts_with_no_configuration_and_stops_gracefully() {
    let database = TestDatabase::new();
    let url = &database.url;
    let http = reqwest::Client::new();

    // First start: creates the database, bootstraps, prints credentials once.
    let mut first = start(url);
    let log = first.startup_log.join("\n");
    assert!(log.contains("created database"), "{log}");
    assert!(log.contains("shown once"), "{log}");
    let secret_line = first
        .startup_log
        .iter()
        .find(|l| l.contains("client secret:"))
        .expect("credentials printed");
    assert!(!secret_line.contains("(from the environment)"));
    let health: Value = http
        .get(format!("http://{}/healthcheck", first.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["ok"], true);

    // A request in flight when SIGTERM arrives still gets its answer: send
    // the headers and half the body, signal, then finish the body.
    let mut stream = tokio::net::TcpStream::connect(&first.address)
        .await
        .unwrap();
    let body = r#"{"grant_type_is_missing": "so this is a 400 after a full read"}"#;
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body.as_bytes()[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "in-flight request was cut: {response:?}"
    );
    assert!(response.contains("invalid_request"));
    let status = first.child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");

    // Second start on the same database: no new credentials.
    let mut second = start(url);
    let log = second.startup_log.join("\n");
    assert!(
        !log.contains("shown once") && !log.contains("client secret"),
        "{log}"
    );
    assert!(
        !log.contains("applied migration"),
        "migrations ran twice: {log}"
    );
    second.terminate();
    let (status, stderr) = second.wait_with_stderr();
    assert!(status.success(), "{status}: {stderr}");
}

/// When whoever reads the log goes away (a pipe to a log shipper that
/// died), logging fails quietly: the server keeps answering and stops
/// cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_reader_that_goes_away_takes_nothing_down() {
    let database = TestDatabase::new();
    let url = &database.url;
    let mut running = start_logging(url, Logs::Abandoned, &[]);
    let http = reqwest::Client::new();
    // Debug logs: every request writes to the broken pipes.
    for _ in 0..50 {
        let health = http
            .get(format!("http://{}/healthcheck", running.address))
            .send()
            .await
            .expect("the server still answers");
        assert_eq!(health.status(), 200);
        let refused = http
            .get(format!("http://{}/fhir/R4/Patient", running.address))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
    }
    running.terminate();
    let status = running.child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn unreachable_database_exits_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/fhirgate")
        .env("FHIRGATE_BIND", "127.0.0.1:0")
        .output()
        .expect("run fhirgate");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to PostgreSQL at 127.0.0.1:1"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    assert!(
        stderr.lines().count() <= 2,
        "the message should be short: {stderr}"
    );
}

/// Each log line of a request names its id (the client's `X-Request-Id`)
/// and the W3C trace id; a slow request is logged with its SQL statements.
#[tokio::test(flavor = "multi_thread")]
async fn log_lines_carry_the_request_id_and_slow_requests_their_sql() {
    let database = TestDatabase::new();
    let url = &database.url;
    // Every request counts as slow.
    let mut running = start_logging(url, Logs::Kept, &[("FHIRGATE_SLOW_REQUEST_MS", "0")]);
    let response = reqwest::Client::new()
        .post(format!("http://{}/oauth2/token", running.address))
        .header("X-Request-Id", "req-under-test-7")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "00000000-0000-0000-0000-000000000001"),
            ("client_secret", "wrong"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["x-request-id"], "req-under-test-7");
    let log = running.log.take().unwrap();
    let mut ours = Vec::new();
    while let Ok(line) = log.recv_timeout(Duration::from_secs(2)) {
        if line.contains("req-under-test-7") {
            ours.push(serde_json::from_str::<Value>(&line).unwrap());
        }
        if line.contains("slow request") {
            break;
        }
    }
    let slow = ours
        .iter()
        .find(|l| l["fields"]["message"] == "slow request")
        .unwrap_or_else(|| panic!("no slow-request line: {ours:#?}"));
    assert_eq!(slow["span"]["id"], "req-under-test-7", "{slow}");
    assert_eq!(slow["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(slow["fields"]["status"], 401);
    assert!(
        slow["fields"]["statements"].as_u64().unwrap() >= 1,
        "the client lookup ran SQL: {slow}"
    );
    assert!(slow["fields"]["statement_ms"].as_f64().unwrap() > 0.0);
    // Debug lines written while the request ran carry its id too.
    assert!(ours.len() >= 2, "{ours:#?}");
    assert!(ours.iter().all(|l| l["span"]["id"] == "req-under-test-7"
        || l["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["id"] == "req-under-test-7"))));
    running.terminate();
    running.child.wait().unwrap();
}

/// A receiver of rest-hook notifications that records every body and
/// leaves the first request unanswered, so that delivery is in flight when
/// the server is killed.
struct HoldingReceiver {
    address: std::net::SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HoldingReceiver {
    async fn start() -> HoldingReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = bodies.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let body = read_request(&mut stream).await;
                let first = {
                    let mut bodies = recorded.lock().unwrap();
                    bodies.push(body);
                    bodies.len() == 1
                };
                if first {
                    held.push(stream);
                } else {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                }
            }
        });
        HoldingReceiver { address, bodies }
    }

    async fn wait_for(&self, count: usize) -> Vec<String> {
        for _ in 0..600 {
            let bodies = self.bodies.lock().unwrap().clone();
            if bodies.len() >= count {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "expected {count} notifications, got {:?}",
            self.bodies.lock().unwrap()
        );
    }
}

/// One HTTP/1.1 request's body (by its Content-Length).
async fn read_request(stream: &mut tokio::net::TcpStream) -> String {
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = stream.read(&mut buffer).await.unwrap_or(0);
        if read == 0 {
            return String::new();
        }
        data.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&data).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return String::from_utf8_lossy(&data[end + 4..end + 4 + length]).to_string();
            }
        }
    }
}

/// A write committed while its notification could not go out yet (the
/// receiver holds the one before it), then SIGKILL: after a restart on the
/// same database both notifications are delivered, in order.
#[tokio::test(flavor = "multi_thread")]
async fn notifications_survive_sigkill_between_commit_and_delivery() {
    let database = TestDatabase::new();
    let url = &database.url;
    let admin = Admin::generated();
    let mut env = vec![("FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE", "1")];
    env.extend(admin.env());
    let receiver = HoldingReceiver::start().await;
    let mut first = start_logging(url, Logs::Read, &env);
    let http = reqwest::Client::new();
    let base = format!("http://{}", first.address);
    let token = client_token(&first, &admin.client_id, &admin.client_secret).await;
    let create = async |body: Value| -> Value {
        let response = http
            .post(format!(
                "{base}/fhir/R4/{}",
                body["resourceType"].as_str().unwrap()
            ))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    };
    create(
        serde_json::json!({"resourceType": "Subscription", "status": "active",
        "reason": "crash test", "criteria": "Patient",
        "channel": {"type": "rest-hook", "endpoint": format!("http://{}/hook", receiver.address),
            "payload": "application/fhir+json"}}),
    )
    .await;
    let held =
        create(serde_json::json!({"resourceType": "Patient", "name": [{"family": "Held"}]})).await;
    receiver.wait_for(1).await;
    let queued =
        create(serde_json::json!({"resourceType": "Patient", "name": [{"family": "Queued"}]}))
            .await;

    first.kill();
    assert_eq!(
        receiver.bodies.lock().unwrap().len(),
        1,
        "the second notification waited behind the first"
    );

    let mut second = start_logging(url, Logs::Read, &env);
    let bodies = receiver.wait_for(3).await;
    let ids: Vec<Value> = bodies
        .iter()
        .map(|body| serde_json::from_str::<Value>(body).unwrap()["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [held["id"].clone(), held["id"].clone(), queued["id"].clone()],
        "the unacknowledged notification again, then the queued one"
    );
    second.kill();
}
