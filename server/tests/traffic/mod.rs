//! Requests as the fault tests send them: each answer recorded (status, body,
//! `Retry-After`, how long it took), a transport failure recorded as no
//! status, and resources marked so the test finds what each request left.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One request's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// `None`: no answer (connection refused or reset, or the client's timeout).
    pub status: Option<u16>,
    pub body: Value,
    pub retry_after: Option<String>,
    pub elapsed: Duration,
    /// When the answer came.
    pub at: Instant,
    /// What went wrong when there was no answer.
    pub transport_error: Option<String>,
    /// No connection was made: the request never reached a server.
    pub not_sent: bool,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// A 503 saying the write may or may not have been saved.
    pub fn is_in_doubt(&self) -> bool {
        self.status == Some(503)
            && self.body["issue"][0]["diagnostics"]
                .as_str()
                .is_some_and(|d| d.contains("may or may not have been saved"))
    }
}

/// A client that gives up after `timeout`, so a hanging server shows as a
/// failure instead of a hanging test.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder().timeout(timeout).build().unwrap()
}

/// Sends and records the answer.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let start = Instant::now();
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = response.bytes().await;
            let (body, transport_error) = match body {
                Ok(bytes) => (
                    serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }),
                    None,
                ),
                Err(e) => (Value::Null, Some(e.to_string())),
            };
            Reply {
                status: transport_error.is_none().then_some(status),
                body,
                retry_after,
                elapsed: start.elapsed(),
                at: Instant::now(),
                transport_error,
                not_sent: false,
            }
        }
        Err(e) => Reply {
            status: None,
            body: Value::Null,
            retry_after: None,
            elapsed: start.elapsed(),
            at: Instant::now(),
            not_sent: e.is_connect(),
            transport_error: Some(e.to_string()),
        },
    }
}

/// The identifier system that marks the tests' resources.
pub const MARK_SYSTEM: &str = "https://fhirgate.dev/test/mark";

/// A Patient carrying `mark` as an identifier, with enough fields to fill
/// several index tables.
pub fn patient(mark: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{ "system": MARK_SYSTEM, "value": mark }],
        "name": [{ "family": format!("Fault{}", &mark[..8.min(mark.len())]), "given": ["Test"] }],
        "birthDate": "1970-01-01",
        "gender": "unknown"
    })
}

/// A transaction of `entries` Patients (all carrying `mark`) and an
/// Observation about the first, by its `urn:uuid`.
pub fn transaction(mark: &str, entries: usize) -> Value {
    let first = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut entry: Vec<Value> = (0..entries)
        .map(|n| {
            let full_url = if n == 0 {
                first.clone()
            } else {
                format!("urn:uuid:{}", uuid::Uuid::new_v4())
            };
            json!({
                "fullUrl": full_url,
                "resource": patient(mark),
                "request": { "method": "POST", "url": "Patient" }
            })
        })
        .collect();
    entry.push(json!({
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "identifier": [{ "system": MARK_SYSTEM, "value": mark }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
            "subject": { "reference": first },
            "valueQuantity": { "value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" }
        },
        "request": { "method": "POST", "url": "Observation" }
    }));
    json!({ "resourceType": "Bundle", "type": "transaction", "entry": entry })
}
