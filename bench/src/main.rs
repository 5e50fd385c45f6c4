//! fhirgate-bench: loads a deterministic synthetic data set into a FHIR R4
//! server over HTTP, then measures throughput and latency of reads, searches
//! and writes. See bench/README.md.

mod baseline;
mod client;
mod data;
mod load;
mod scenarios;
mod stats;

use std::{
    process::ExitCode,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::{Parser, ValueEnum};
use rand::{rngs::StdRng, SeedableRng};
use serde_json::{json, Value};

use crate::{
    client::Api,
    scenarios::{Ctx, Scenario},
    stats::{ScenarioResult, Status},
};

#[derive(Parser, Debug)]
#[command(
    name = "fhirgate-bench",
    version,
    about = "Benchmark a FHIR R4 server over HTTP (fhirgate, Medplum, ...)"
)]
struct Args {
    /// Server root, e.g. http://127.0.0.1:8103/ (token at {base}oauth2/token, FHIR at {base}fhir/R4).
    #[arg(long)]
    base_url: String,
    /// OAuth client id (client-credentials grant).
    #[arg(long)]
    client_id: String,
    /// OAuth client secret.
    #[arg(long)]
    client_secret: String,
    /// Run the scenarios as this client instead (data is still loaded by --client-id): the same
    /// requests by a caller under an access policy, to measure what the policy costs.
    #[arg(long, requires = "measure_client_secret")]
    measure_client_id: Option<String>,
    /// Secret of --measure-client-id.
    #[arg(long, requires = "measure_client_id")]
    measure_client_secret: Option<String>,
    /// Scenario to run; repeat for several. Default: all, in the order listed.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Workers (requests in flight), for loading and for every scenario.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Patients in the generated data set (each with 1-3 Encounters, 1-9 Observations, 0-2 Conditions).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    patients: u64,
    /// Seed of the data set and of the request streams.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Entries per Bundle in the `transaction` scenario (whole synthetic patients of 10 resources).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    transaction_entries: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// The server's process id (same machine): report its peak RSS and CPU seconds.
    #[arg(long)]
    server_pid: Option<u32>,
    /// fhirgate's PostgreSQL: also run its primary SQL for read and token search directly.
    #[arg(long)]
    baseline_postgres: Option<String>,
    /// After the load, run ANALYZE on fhirgate's tables (through --baseline-postgres) so the
    /// planner knows the loaded data even where autovacuum is off or has not run yet.
    #[arg(long, requires = "baseline_postgres")]
    analyze: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fhirgate-bench: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err("--duration must be a positive number of seconds".into());
    }
    let concurrency = args.concurrency as usize;
    let duration = Duration::from_secs_f64(args.duration);
    let selected: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::value_variants().to_vec()
    } else {
        let mut s: Vec<Scenario> = Vec::new();
        for &scenario in &args.scenarios {
            if !s.contains(&scenario) {
                s.push(scenario);
            }
        }
        s
    };
    let clk_tck = stats::clock_ticks();
    let before_load = match args.server_pid {
        Some(pid) => Some(stats::proc_sample(pid)?),
        None => None,
    };

    let api = Arc::new(
        Api::connect(
            &args.base_url,
            &args.client_id,
            &args.client_secret,
            concurrency,
        )
        .await?,
    );
    eprintln!("auth: token from {}oauth2/token", api_base(&args.base_url));

    let mut rng = StdRng::seed_from_u64(args.seed);
    let groups = data::dataset(&mut rng, args.seed, args.patients as usize);
    let total: usize = groups.iter().map(|g| g.resources.len()).sum();
    eprintln!(
        "load: {} patients, {total} resources (seed {})",
        args.patients, args.seed
    );
    let loaded = load::load(api.clone(), groups, concurrency).await?;
    if loaded.patients.is_empty() {
        return Err("no Patient could be loaded; nothing to measure".into());
    }

    if args.analyze {
        let url = args
            .baseline_postgres
            .as_deref()
            .ok_or("--analyze needs --baseline-postgres")?;
        eprintln!("analyze: ANALYZE on fhirgate's tables");
        baseline::analyze(url).await?;
    }
    // The baseline runs on the data set as loaded, like the read scenarios
    // after it, and while the server is idle (outside its CPU accounting).
    let mut baseline_results = Vec::new();
    if let Some(url) = &args.baseline_postgres {
        eprintln!(
            "run: baseline SQL for {:.1} s each at concurrency {concurrency}",
            args.duration
        );
        baseline_results = baseline::run(url, concurrency, duration, args.seed).await?;
    }

    let before = match args.server_pid {
        Some(pid) => Some(stats::proc_sample(pid)?),
        None => None,
    };
    // Sample RSS while the scenarios run.
    let sampled_peak = Arc::new(AtomicU64::new(before.map_or(0, |s| s.rss_bytes)));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = args.server_pid.map(|pid| {
        let (peak, stop) = (sampled_peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = stats::proc_sample(pid) {
                    peak.fetch_max(s.rss_bytes, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    });

    let api = match (&args.measure_client_id, &args.measure_client_secret) {
        (Some(id), Some(secret)) => {
            eprintln!("auth: scenarios run as client {id}");
            Arc::new(Api::connect(&args.base_url, id, secret, concurrency).await?)
        }
        _ => api,
    };
    let ctx = Arc::new(Ctx {
        api,
        patients: Arc::new(loaded.patients),
        seed: args.seed,
        transaction_groups: (args.transaction_entries / 10) as usize,
        transactions: loaded.transactions,
    });
    let mut results = Vec::new();
    for scenario in selected {
        eprintln!(
            "run: {} for {:.1} s at concurrency {concurrency}",
            scenario.name(),
            args.duration
        );
        let result = scenarios::run(&ctx, scenario, concurrency, duration).await;
        if let Some(reason) = result
            .reason
            .as_ref()
            .filter(|_| result.status != Status::Ok)
        {
            eprintln!("run: {} {}: {reason}", result.name, result.status.as_str());
        }
        results.push(result);
    }

    stop.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }
    let after = match args.server_pid {
        Some(pid) => Some(stats::proc_sample(pid)?),
        None => None,
    };

    results.extend(baseline_results);

    let server = match (args.server_pid, before_load, before, after) {
        (Some(pid), Some(l), Some(b), Some(a)) => {
            let secs = |ticks: u64| ticks as f64 / clk_tck as f64;
            json!({
                "pid": pid,
                "peak_rss_bytes": a.hwm_bytes,
                "cpu_seconds": secs(a.cpu_ticks.saturating_sub(b.cpu_ticks)),
                "sampled_peak_rss_bytes": sampled_peak.load(Ordering::Relaxed).max(a.rss_bytes),
                "rss_before_bytes": b.rss_bytes,
                "rss_after_bytes": a.rss_bytes,
                "load_cpu_seconds": secs(b.cpu_ticks.saturating_sub(l.cpu_ticks)),
                "clock_ticks_per_second": clk_tck,
            })
        }
        _ => json!({ "peak_rss_bytes": null, "cpu_seconds": null }),
    };

    print_table(&results, &server);
    if let Some(path) = &args.json {
        let report = json!({
            "base_url": args.base_url,
            "concurrency": concurrency,
            "duration_seconds": args.duration,
            "patients": args.patients,
            "seed": args.seed,
            "load": {
                "resources": loaded.resources,
                "errors": loaded.errors,
                "transactions": ctx.transactions.is_ok(),
                "analyzed": args.analyze,
            },
            "scenarios": scenarios_json(&results),
            "server": server,
        });
        let text = serde_json::to_string_pretty(&report).expect("JSON");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let failed = results
        .iter()
        .filter(|r| r.status == Status::Failed)
        .count();
    if failed > 0 {
        eprintln!("fhirgate-bench: {failed} scenario(s) failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The scenarios, with `fraction_of_baseline` on `read` and `search-token`
/// when their baseline ran.
fn scenarios_json(results: &[ScenarioResult]) -> Vec<Value> {
    let rate = |name: &str| {
        results
            .iter()
            .find(|r| r.name == name && r.status == Status::Ok)
            .map(ScenarioResult::requests_per_second)
    };
    results
        .iter()
        .map(|r| {
            let mut v = r.to_json();
            let baseline = match r.name.as_str() {
                "read" => rate("baseline-read"),
                "search-token" => rate("baseline-search-token"),
                _ => None,
            };
            if let (Some(b), Status::Ok) = (baseline, r.status) {
                v["fraction_of_baseline"] =
                    json!((r.requests_per_second() / b.max(1e-9) * 10000.0).round() / 10000.0);
            }
            v
        })
        .collect()
}

fn api_base(base: &str) -> String {
    if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

fn print_table(results: &[ScenarioResult], server: &Value) {
    println!(
        "{:<24} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7}  note",
        "scenario", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"
    );
    for r in results {
        let mut note = match r.status {
            Status::Ok => String::new(),
            s => format!(
                "{}: {}",
                s.as_str().to_uppercase(),
                r.reason.clone().unwrap_or_default()
            ),
        };
        if let Some(rps) = r.resources_per_second {
            note = format!("{rps:.0} resources/s {note}");
        }
        let note: String = note.chars().take(160).collect();
        println!(
            "{:<24} {:>9} {:>10.1} {:>9} {:>9} {:>9} {:>7}  {}",
            r.name,
            r.requests,
            r.requests_per_second(),
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms),
            r.errors,
            note.trim_end()
        );
    }
    let find = |name: &str| {
        results
            .iter()
            .find(|r| r.name == name && r.status == Status::Ok)
    };
    for (http, sql) in [
        ("read", "baseline-read"),
        ("search-token", "baseline-search-token"),
    ] {
        if let (Some(h), Some(b)) = (find(http), find(sql)) {
            let fraction = h.requests_per_second() / b.requests_per_second().max(1e-9);
            println!(
                "{http} over HTTP: {:.0} req/s = {:.1}% of {sql} ({:.0} queries/s)",
                h.requests_per_second(),
                fraction * 100.0,
                b.requests_per_second()
            );
        }
    }
    if !server["cpu_seconds"].is_null() {
        let mib = |v: &Value| v.as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
        println!(
            "server pid {}: peak RSS {:.1} MiB (VmHWM, process lifetime; {:.1} MiB sampled during the scenarios), \
             CPU {:.2} s during the scenarios, {:.2} s during the load",
            server["pid"],
            mib(&server["peak_rss_bytes"]),
            mib(&server["sampled_peak_rss_bytes"]),
            server["cpu_seconds"].as_f64().unwrap_or(0.0),
            server["load_cpu_seconds"].as_f64().unwrap_or(0.0),
        );
    }
}
