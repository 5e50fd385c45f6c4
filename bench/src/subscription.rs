//! The `subscription` scenario: Patient creates at the run's concurrency with
//! 0, 1, 10 and 100 active rest-hook Subscriptions matching every one of
//! them, pointed at a receiver this tool runs. Reports the creates' rate,
//! notifications delivered per second, commit-to-delivery latency (the
//! receiver's clock minus the notified version's `meta.lastUpdated`, same
//! machine) and the create throughput lost to notifications. The server must
//! run with `FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE=1` (the receiver is local).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    data::{self, MIXED_SYSTEM},
    scenarios::Ctx,
    stats::{percentile_ms, Recorder, ScenarioResult},
};

/// Active matching Subscriptions in each round.
pub const COUNTS: [usize; 4] = [0, 1, 10, 100];
/// How long to wait for the notifications still queued when creates stop.
const DRAIN: Duration = Duration::from_secs(120);
/// The tag that makes a round's Patients, and only those, match its Subscriptions.
const TAG_SYSTEM: &str = "https://fhirgate.dev/bench/subscription-round";

/// One round's figures.
pub struct Round {
    pub subscriptions: usize,
    pub creates_per_second: f64,
    pub expected: u64,
    pub delivered: u64,
    /// Notifications per second, from the first create to the last delivery.
    pub notifications_per_second: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

pub async fn run(
    ctx: &Arc<Ctx>,
    concurrency: usize,
    duration: Duration,
) -> (Vec<ScenarioResult>, Vec<Round>) {
    let mut results = Vec::new();
    let mut rounds = Vec::new();
    for subscriptions in COUNTS {
        let name = format!("subscription[{subscriptions}]");
        eprintln!(
            "run: {name} for {:.1} s at concurrency {concurrency}",
            duration.as_secs_f64()
        );
        match round(ctx, subscriptions, concurrency, duration).await {
            Ok((result, round)) => {
                results.push(ScenarioResult { name, ..result });
                rounds.push(round);
            }
            Err(reason) => {
                eprintln!("run: {name} failed: {reason}");
                results.push(ScenarioResult::skipped(&name, reason));
            }
        }
    }
    (results, rounds)
}

async fn round(
    ctx: &Arc<Ctx>,
    count: usize,
    concurrency: usize,
    duration: Duration,
) -> Result<(ScenarioResult, Round), String> {
    let receiver = Receiver::start().await?;
    let tag = format!("{}-{count}-{}", ctx.seed, uuid::Uuid::new_v4().simple());
    let mut subscriptions = Vec::new();
    for n in 0..count {
        let subscription = json!({
            "resourceType": "Subscription", "status": "active",
            "reason": format!("fhirgate-bench subscription {n}"),
            "criteria": format!("Patient?_tag={TAG_SYSTEM}|{tag}"),
            "channel": {"type": "rest-hook", "endpoint": format!("{}hook/{n}", receiver.url),
                "payload": "application/fhir+json"}
        });
        let id = ctx.api.create(&subscription).await?;
        subscriptions.push(id);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let ctx = ctx.clone();
        let tag = tag.clone();
        workers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(ctx.seed ^ ((worker as u64 + 1) << 40));
            let mut rec = Recorder::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let family = data::FAMILIES[rng.gen_range(0..data::FAMILIES.len())];
                let mut body = data::patient(
                    &mut rng,
                    MIXED_SYSTEM,
                    &format!("sub-{tag}-{worker}-{n}"),
                    family,
                );
                body["meta"] = json!({"tag": [{"system": TAG_SYSTEM, "code": tag}]});
                let bytes = serde_json::to_vec(&body).expect("JSON");
                match ctx
                    .api
                    .send(Method::POST, "Patient", Some(&bytes), None)
                    .await
                {
                    Ok(reply) if reply.ok() => rec.ok(reply.latency),
                    Ok(reply) => rec.error(format!("POST Patient: {}", reply.describe())),
                    Err(e) => rec.error(e),
                }
                n += 1;
            }
            rec
        });
    }
    let recorder = Recorder::join(workers).await;
    let seconds = start.elapsed().as_secs_f64();
    let created = recorder.requests - recorder.errors;
    let expected = created * count as u64;
    let drain_until = Instant::now() + DRAIN;
    while receiver.count() < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deliveries = receiver.deliveries();
    for id in &subscriptions {
        // Off, so that later rounds' creates notify nobody here.
        let _ = ctx
            .api
            .send(Method::DELETE, &format!("Subscription/{id}"), None, None)
            .await;
    }
    let mut latencies_us: Vec<u32> = deliveries
        .iter()
        .map(|d| d.latency_us.clamp(0, u32::MAX as i64) as u32)
        .collect();
    latencies_us.sort_unstable();
    let last = deliveries.iter().map(|d| d.at).max();
    let notifications_per_second = match last {
        Some(last) => deliveries.len() as f64 / (last - start).as_secs_f64().max(1e-9),
        None => 0.0,
    };
    let result = ScenarioResult::from_recorder("subscription", recorder, seconds, false);
    let round = Round {
        subscriptions: count,
        creates_per_second: result.requests_per_second(),
        expected,
        delivered: deliveries.len() as u64,
        notifications_per_second,
        p50_ms: percentile_ms(&latencies_us, 50.0),
        p99_ms: percentile_ms(&latencies_us, 99.0),
    };
    Ok((result, round))
}

pub fn print(rounds: &[Round]) {
    if rounds.is_empty() {
        return;
    }
    let baseline = rounds
        .iter()
        .find(|r| r.subscriptions == 0)
        .map(|r| r.creates_per_second);
    println!("\nsubscription: creates with N matching rest-hook subscriptions");
    println!(
        "{:>5} {:>10} {:>10} {:>10} {:>10} {:>12} {:>12} {:>9}",
        "subs", "creates/s", "lost", "expected", "delivered", "notif/s", "p50 ms", "p99 ms"
    );
    for r in rounds {
        let lost = match baseline {
            Some(b) if b > 0.0 && r.subscriptions > 0 => {
                format!("{:.1}%", 100.0 * (1.0 - r.creates_per_second / b))
            }
            _ => "-".into(),
        };
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        println!(
            "{:>5} {:>10.0} {:>10} {:>10} {:>10} {:>12.0} {:>12} {:>9}",
            r.subscriptions,
            r.creates_per_second,
            lost,
            r.expected,
            r.delivered,
            r.notifications_per_second,
            ms(r.p50_ms),
            ms(r.p99_ms)
        );
    }
}

pub fn to_json(rounds: &[Round]) -> Value {
    json!(rounds
        .iter()
        .map(|r| json!({
            "subscriptions": r.subscriptions,
            "creates_per_second": r.creates_per_second,
            "expected": r.expected,
            "delivered": r.delivered,
            "notifications_per_second": r.notifications_per_second,
            "delivery_p50_ms": r.p50_ms,
            "delivery_p99_ms": r.p99_ms,
        }))
        .collect::<Vec<_>>())
}

/// One notification as the receiver got it.
struct Delivery {
    at: Instant,
    /// Receipt (wall clock) minus the body's `meta.lastUpdated`.
    latency_us: i64,
}

/// A minimal HTTP/1.1 server (keep-alive, Content-Length bodies) that
/// answers 200 to everything and times each notification.
struct Receiver {
    url: String,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Result<Receiver, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("receiver: {e}"))?;
        let address = listener
            .local_addr()
            .map_err(|e| format!("receiver: {e}"))?;
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let recorded = deliveries.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, recorded.clone()));
            }
        });
        Ok(Receiver {
            url: format!("http://{address}/"),
            deliveries,
            task,
        })
    }

    fn count(&self) -> u64 {
        self.deliveries.lock().unwrap().len() as u64
    }

    fn deliveries(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.deliveries.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: tokio::net::TcpStream, deliveries: Arc<Mutex<Vec<Delivery>>>) {
    // A small answer goes out at once, not after the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let mut data: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        // A whole request: the head, then Content-Length bytes of body.
        let request = loop {
            if let Some(end) = find(&data, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let length = content_length(&head);
                if data.len() >= end + 4 + length {
                    let body = data[end + 4..end + 4 + length].to_vec();
                    data.drain(..end + 4 + length);
                    break body;
                }
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => data.extend_from_slice(&buffer[..n]),
            }
        };
        let received = chrono::Utc::now();
        let at = Instant::now();
        let latency_us = last_updated(&request)
            .map(|updated| {
                (received - updated.to_utc())
                    .num_microseconds()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        deliveries.lock().unwrap().push(Delivery { at, latency_us });
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// `meta.lastUpdated` of a notified Patient, found without parsing the
/// body (the receiver shares the machine's cores with the server it
/// measures; a Patient has no other `lastUpdated`).
fn last_updated(body: &[u8]) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    const KEY: &[u8] = b"\"lastUpdated\":\"";
    let start = find(body, KEY)? + KEY.len();
    let length = body[start..].iter().position(|&b| b == b'"')?;
    let text = std::str::from_utf8(&body[start..start + length]).ok()?;
    chrono::DateTime::parse_from_rfc3339(text).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_updated_is_read_from_the_body_without_parsing_it() {
        let body = br#"{"resourceType":"Patient","id":"x","meta":{"versionId":"v","lastUpdated":"2026-12-07T18:00:00.123Z"},"name":[{"family":"lastUpdated"}]}"#;
        let expected = chrono::DateTime::parse_from_rfc3339("2026-12-07T18:00:00.123Z").unwrap();
        assert_eq!(last_updated(body), Some(expected));
        assert_eq!(last_updated(b"{}"), None);
    }
}
