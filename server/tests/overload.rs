//! Overload is refused, not queued forever: with every database connection
//! held, requests wait `FHIRGATE_QUEUE_TIMEOUT` and get 503 with
//! `Retry-After`; `/healthcheck` still answers, memory stays bounded, and
//! the same process serves again once the connections come back.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;

use std::time::{Duration, Instant};

use common::{start_logging, Admin, Api, Logs, Running, TestDatabase};
use serde_json::Value;
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// A Binary upload that sends more than one stored chunk (so its write
/// transaction holds a connection) and then nothing: a slow client.
async fn stalled_upload(running: &Running, token: &str) -> TcpStream {
    let mut stream = TcpStream::connect(&running.address).await.unwrap();
    let head = format!(
        "POST /fhir/R4/Binary HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: 4000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![7u8; 600_000]).await.unwrap();
    stream
}

/// Resident memory of the process, from `/proc`.
fn resident_bytes(running: &Running) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_beyond_the_pool_get_503_after_the_queue_timeout() {
    let database = TestDatabase::new();
    let admin = Admin::generated();
    let mut env = vec![
        ("FHIRGATE_DB_POOL_SIZE", "2"),
        ("FHIRGATE_QUEUE_TIMEOUT", "1"),
        // The default debug log of every request would dominate the memory
        // and CPU this test watches.
        ("FHIRGATE_LOG_LEVEL", "info"),
    ];
    env.extend(admin.env());
    let running = start_logging(&database.url, Logs::Read, &env);
    let api = Api::sign_in(&running, &admin.client_id, &admin.client_secret).await;
    assert_eq!(api.get("fhir/R4/Patient?name=x").await.status(), 200);
    let resident_before = resident_bytes(&running);

    // More slow uploads than connections: each holds one, or waits for one.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_upload(&running, &api.token).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Many searches at once: each waits at most the queue timeout.
    let started = Instant::now();
    let searches: Vec<_> = (0..200)
        .map(|i| {
            let api = api.clone();
            tokio::spawn(async move {
                let response = api.get(&format!("fhir/R4/Patient?name=n{i}")).await;
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let status = response.status().as_u16();
                (status, retry_after, response.json::<Value>().await.ok())
            })
        })
        .collect();
    // Under overload the health check answers, and says PostgreSQL is up.
    let health = reqwest::Client::new()
        .get(running.url("healthcheck"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("the health check answers under overload");
    assert_eq!(health.status(), 200);
    let resident_during = resident_bytes(&running);
    let mut refused = 0;
    for search in searches {
        let (status, retry_after, body) = search.await.unwrap();
        assert_eq!(status, 503, "{body:?}");
        assert_eq!(retry_after.as_deref(), Some("2"));
        let body = body.expect("an OperationOutcome");
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "transient", "{body}");
        refused += 1;
    }
    assert_eq!(refused, 200);
    // Bounded: nothing waited much beyond the queue timeout (1 s).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the queued requests were not refused in time: {:?}",
        started.elapsed()
    );
    assert!(
        resident_during < resident_before + 128 * 1024 * 1024,
        "resident memory grew from {resident_before} to {resident_during} bytes"
    );

    // The slow clients go away: their transactions roll back, and the same
    // process serves again.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = api.get("fhir/R4/Patient?name=x").await.status();
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after the overload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let found: Value = api.get("fhir/R4/Binary").await.json().await.unwrap();
    assert_eq!(found["entry"].as_array().map_or(0, Vec::len), 0, "{found}");
}
