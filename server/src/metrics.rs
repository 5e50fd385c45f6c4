//! Prometheus metrics, served at `/metrics` on `FHIRGATE_METRICS_BIND` (a
//! listener of its own, off unless set, so the numbers never share a port
//! with the public API). Code anywhere records with the `metrics` macros;
//! the recorder is the process's one Prometheus recorder. Requests are
//! labelled by route template (`/fhir/R4/{type}/{id}`), never by
//! raw path, so the number of series stays bounded.

use std::sync::OnceLock;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web, HttpResponse,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::app::AppState;

pub const REQUESTS: &str = "fhirgate_http_requests_total";
pub const REQUEST_SECONDS: &str = "fhirgate_http_request_duration_seconds";
pub const LOGINS: &str = "fhirgate_logins_total";
pub const LOCKOUTS: &str = "fhirgate_lockouts_total";
pub const RATE_LIMITED: &str = "fhirgate_rate_limited_total";
pub const DATABASE_FAILURES: &str = "fhirgate_database_failures_total";
pub const JOBS: &str = "fhirgate_background_jobs_total";

/// Request latency buckets, seconds: a read takes about a millisecond here.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's recorder, installed on first use; `None` if another
/// recorder was installed first (then `/metrics` says so).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            spawn_upkeep(handle.clone());
            Some(handle)
        })
        .as_ref()
}

/// The recorder keeps every histogram sample until upkeep folds them into
/// the buckets: without it, a process nobody scrapes grew by about 20 bytes
/// a request (6 MiB a minute in the soak). A thread of its own, so that it
/// runs whichever runtime (or none) installed the recorder.
fn spawn_upkeep(handle: PrometheusHandle) {
    const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples will pile up");
    }
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS,
        "HTTP requests by route template, method and status"
    );
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency by route template and method"
    );
    metrics::describe_counter!(LOGINS, "Password and second-factor sign-ins by outcome");
    metrics::describe_counter!(LOCKOUTS, "Sign-in keys locked after repeated failures");
    metrics::describe_counter!(RATE_LIMITED, "Requests refused by the /auth rate limit");
    metrics::describe_counter!(
        DATABASE_FAILURES,
        "Failed statements by kind (timeout, error, pool)"
    );
    metrics::describe_counter!(JOBS, "Background jobs by job and outcome");
}

/// Counts a sign-in step by outcome: `succeeded`, `failed`, `locked`,
/// `second_factor_asked`.
pub fn login(outcome: &'static str) {
    metrics::counter!(LOGINS, "outcome" => outcome).increment(1);
}

/// Counts a background job's run (`mail`, `statistics`, …).
pub fn job(name: &'static str, succeeded: bool) {
    let outcome = if succeeded { "done" } else { "failed" };
    metrics::counter!(JOBS, "job" => name, "outcome" => outcome).increment(1);
}

/// Middleware: counts and times every request by its route template.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = std::time::Instant::now();
    let method = req.method().to_string();
    let response = next.call(req).await?;
    let route = response
        .request()
        .app_data::<crate::http::routes::RouteTemplate>()
        .map_or_else(|| "unmatched".to_string(), |route| route.0.clone());
    let status = response.status().as_u16().to_string();
    metrics::counter!(REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route, "method" => method)
        .record(start.elapsed().as_secs_f64());
    Ok(response)
}

/// `GET /metrics` on the metrics listener: the recorder's series, then the
/// gauges read now (pool, process).
async fn render(state: web::Data<AppState>) -> HttpResponse {
    let Some(handle) = handle() else {
        return HttpResponse::ServiceUnavailable()
            .body("another metrics recorder was installed in this process\n");
    };
    handle.run_upkeep();
    let mut text = handle.render();
    let pool = state.store.pool_status();
    gauge(
        &mut text,
        "fhirgate_db_pool_connections",
        "Open PostgreSQL connections",
        pool.size,
    );
    gauge(
        &mut text,
        "fhirgate_db_pool_in_use",
        "PostgreSQL connections serving a request",
        pool.in_use,
    );
    gauge(
        &mut text,
        "fhirgate_db_pool_waiting",
        "Requests waiting for a PostgreSQL connection",
        pool.waiting,
    );
    gauge(
        &mut text,
        "fhirgate_db_pool_max",
        "Most PostgreSQL connections this instance opens",
        pool.max,
    );
    if let Some(process) = process_stats() {
        gauge(
            &mut text,
            "process_resident_memory_bytes",
            "Resident memory",
            process.resident_bytes,
        );
        let cpu = "# HELP process_cpu_seconds_total User and system CPU time\n# TYPE process_cpu_seconds_total counter\n";
        text.push_str(&format!(
            "{cpu}process_cpu_seconds_total {:.2}\n",
            process.cpu_seconds
        ));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

fn gauge(text: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    text.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
    ));
}

struct ProcessStats {
    resident_bytes: u64,
    cpu_seconds: f64,
}

/// Linux's view of this process: resident memory from `/proc/self/status`,
/// CPU from `/proc/self/stat` (user + system, in USER_HZ = 100 ticks a second).
fn process_stats() -> Option<ProcessStats> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let resident_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are the 14th and 15th fields: 11 and 12 after the name.
    let cpu_ticks = ticks(11)? + ticks(12)?;
    Some(ProcessStats {
        resident_bytes: resident_kib * 1024,
        cpu_seconds: cpu_ticks as f64 / 100.0,
    })
}

/// The metrics listener's routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(render));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let stats = process_stats().expect("Linux /proc");
        assert!(stats.resident_bytes > 1024 * 1024);
        assert!(stats.cpu_seconds >= 0.0);
    }
}
