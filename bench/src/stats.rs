//! Latency summaries and the server process's memory and CPU from /proc.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::{json, Value};

/// What one worker recorded.
#[derive(Default, Clone)]
pub struct Recorder {
    pub requests: u64,
    pub errors: u64,
    /// Latencies of the successful requests, microseconds.
    pub latencies_us: Vec<u32>,
    pub first_error: Option<String>,
    /// Resources written by successful transactions.
    pub resources: u64,
}

impl Recorder {
    pub fn ok(&mut self, latency: Duration) {
        self.requests += 1;
        self.latencies_us
            .push(latency.as_micros().min(u32::MAX as u128) as u32);
    }

    pub fn error(&mut self, message: String) {
        self.requests += 1;
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    /// Turns the last success into an error (its reply was unusable).
    pub fn fail_last(&mut self, message: String) {
        self.latencies_us.pop();
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message);
        }
    }

    /// Waits for every worker and merges what they recorded; a worker that
    /// panicked counts as an error.
    pub async fn join(mut workers: tokio::task::JoinSet<Recorder>) -> Recorder {
        let mut total = Recorder::default();
        while let Some(rec) = workers.join_next().await {
            match rec {
                Ok(rec) => total.merge(rec),
                Err(e) => total.error(format!("worker panicked: {e}")),
            }
        }
        total
    }

    pub fn merge(&mut self, other: Recorder) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        self.resources += other.resources;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Failed,
    Skipped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

pub struct ScenarioResult {
    pub name: String,
    pub status: Status,
    pub reason: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub resources_per_second: Option<f64>,
    /// The access policy of the caller (`none`, …); baseline rows have none.
    pub policy: Option<&'static str>,
}

impl ScenarioResult {
    pub fn skipped(name: &str, reason: String) -> ScenarioResult {
        ScenarioResult {
            name: name.to_string(),
            status: Status::Skipped,
            reason: Some(reason),
            requests: 0,
            errors: 0,
            seconds: 0.0,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            resources_per_second: None,
            policy: None,
        }
    }

    /// A scenario that made no successful request failed; its reason is the
    /// first error seen.
    pub fn from_recorder(
        name: &str,
        mut rec: Recorder,
        seconds: f64,
        count_resources: bool,
    ) -> ScenarioResult {
        rec.latencies_us.sort_unstable();
        let succeeded = rec.requests - rec.errors;
        let (status, reason) = if rec.requests == 0 {
            (
                Status::Failed,
                Some("no request completed within the duration".to_string()),
            )
        } else if succeeded == 0 {
            (
                Status::Failed,
                Some(format!(
                    "every request failed; first: {}",
                    rec.first_error.unwrap_or_default()
                )),
            )
        } else {
            (
                Status::Ok,
                rec.first_error.map(|e| format!("first error: {e}")),
            )
        };
        let p = |q| percentile_ms(&rec.latencies_us, q);
        ScenarioResult {
            name: name.to_string(),
            status,
            reason,
            requests: rec.requests,
            errors: rec.errors,
            seconds,
            p50_ms: p(50.0),
            p95_ms: p(95.0),
            p99_ms: p(99.0),
            resources_per_second: count_resources.then(|| rec.resources as f64 / seconds.max(1e-9)),
            policy: None,
        }
    }

    /// Resources per second where the scenario counts them (transactions,
    /// the ingest baseline), else requests per second.
    pub fn throughput(&self) -> f64 {
        self.resources_per_second
            .unwrap_or_else(|| self.requests_per_second())
    }

    pub fn requests_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let mut v = json!({
            "name": self.name,
            "status": self.status.as_str(),
            "requests": self.requests,
            "requests_per_second": round(self.requests_per_second()),
            "p50_ms": self.p50_ms.map(round),
            "p95_ms": self.p95_ms.map(round),
            "p99_ms": self.p99_ms.map(round),
            "errors": self.errors,
            "duration_seconds": round(self.seconds),
            "reason": self.reason,
        });
        if let Some(r) = self.resources_per_second {
            v["resources_per_second"] = json!(round(r));
        }
        if let Some(policy) = self.policy {
            v["policy"] = json!(policy);
        }
        v
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
pub fn percentile_ms(sorted_us: &[u32], q: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = ((q / 100.0) * sorted_us.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted_us.len()) - 1;
    Some(sorted_us[i] as f64 / 1000.0)
}

/// One look at /proc/PID.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub rss_bytes: u64,
    pub hwm_bytes: u64,
    pub cpu_ticks: u64,
}

pub fn proc_sample(pid: u32) -> Result<ProcSample, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    Ok(ProcSample {
        rss_bytes: kb("VmRSS:"),
        hwm_bytes: kb("VmHWM:"),
        cpu_ticks: cpu_ticks(&stat).ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))?,
    })
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line; the command
/// name in parentheses may hold spaces, so fields count from the last ')'.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The server process over a run, from /proc: its CPU split into the time
/// the scenarios ran and the rest (load, ANALYZE, baseline, policy set-up),
/// and its RSS sampled every 250 ms while scenarios run. Without a pid
/// every method does nothing.
pub struct ServerWatch(Option<Watched>);

struct Watched {
    pid: u32,
    clk_tck: u64,
    start: ProcSample,
    /// At the first `begin`.
    first: Option<ProcSample>,
    /// At the latest `begin`.
    phase: Option<ProcSample>,
    scenario_ticks: u64,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl ServerWatch {
    pub fn start(pid: Option<u32>) -> Result<ServerWatch, String> {
        let Some(pid) = pid else {
            return Ok(ServerWatch(None));
        };
        let start = proc_sample(pid)?;
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (measuring, stop, peak) = (measuring.clone(), stop.clone(), peak.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if measuring.load(Ordering::Relaxed) {
                        if let Ok(s) = proc_sample(pid) {
                            peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
        };
        Ok(ServerWatch(Some(Watched {
            pid,
            clk_tck: clock_ticks(),
            start,
            first: None,
            phase: None,
            scenario_ticks: 0,
            measuring,
            stop,
            peak,
            sampler,
        })))
    }

    /// Scenarios start.
    pub fn begin(&mut self) -> Result<(), String> {
        if let Some(w) = &mut self.0 {
            let s = proc_sample(w.pid)?;
            w.first.get_or_insert(s);
            w.phase = Some(s);
            w.peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
            w.measuring.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Scenarios are over (until the next `begin`).
    pub fn end(&mut self) -> Result<(), String> {
        if let Some(w) = &mut self.0 {
            w.measuring.store(false, Ordering::Relaxed);
            let s = proc_sample(w.pid)?;
            w.peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
            let phase = w.phase.take().unwrap_or(s);
            w.scenario_ticks += s.cpu_ticks.saturating_sub(phase.cpu_ticks);
        }
        Ok(())
    }

    /// The report's `server` object.
    pub async fn finish(self) -> Result<Value, String> {
        let Some(w) = self.0 else {
            return Ok(json!({ "peak_rss_bytes": null, "cpu_seconds": null }));
        };
        w.stop.store(true, Ordering::Relaxed);
        let _ = w.sampler.await;
        let end = proc_sample(w.pid)?;
        let secs = |ticks: u64| ticks as f64 / w.clk_tck as f64;
        let total = end.cpu_ticks.saturating_sub(w.start.cpu_ticks);
        Ok(json!({
            "pid": w.pid,
            "peak_rss_bytes": end.hwm_bytes,
            "cpu_seconds": secs(w.scenario_ticks),
            "sampled_peak_rss_bytes": w.peak.load(Ordering::Relaxed),
            "rss_before_bytes": w.first.unwrap_or(end).rss_bytes,
            "rss_after_bytes": end.rss_bytes,
            "load_cpu_seconds": secs(total.saturating_sub(w.scenario_ticks)),
            "clock_ticks_per_second": w.clk_tck,
        }))
    }
}

/// Clock ticks per second from `getconf CLK_TCK`, 100 when that fails.
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&v, 50.0), Some(50.0));
        assert_eq!(percentile_ms(&v, 99.0), Some(99.0));
        assert_eq!(percentile_ms(&[5000], 95.0), Some(5.0));
        assert_eq!(percentile_ms(&[], 50.0), None);
    }

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let stat =
            "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some(325));
    }

    #[test]
    fn all_errors_is_failed() {
        let mut rec = Recorder::default();
        rec.error("HTTP 500".into());
        let r = ScenarioResult::from_recorder("read", rec, 1.0, false);
        assert_eq!(r.status, Status::Failed);
        assert!(r.reason.unwrap().contains("HTTP 500"));
    }
}
