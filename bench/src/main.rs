//! fhirgate-bench: loads a deterministic synthetic data set into a FHIR R4
//! server over HTTP, then measures throughput and latency of reads, searches
//! and writes. See bench/README.md.

mod baseline;
mod client;
mod data;
mod load;
mod policy;
mod report;
mod scenarios;
mod stats;
mod subscription;

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::Parser;
use serde_json::json;

use crate::{
    client::Api,
    data::Generator,
    load::Loader,
    policy::Policy,
    report::SizeRun,
    scenarios::{Ctx, Scenario},
    stats::{ScenarioResult, ServerWatch, Status},
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
    /// Scenario to run; repeat for several or give a list. Default: all, in the order listed
    /// (with --sizes: read, search-name, search-token, create).
    #[arg(long = "scenario", value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Workers (requests in flight), for loading and for every scenario.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// Seconds each scenario runs.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Patients in the generated data set (each with 1-3 Encounters, Observations, 0-2 Conditions).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    patients: u64,
    /// Growth run: the scenarios at each of these data-set sizes (patients), smallest first,
    /// loading only the Patients each size adds.
    #[arg(long, value_delimiter = ',', conflicts_with = "patients",
          value_parser = clap::value_parser!(u64).range(1..))]
    sizes: Vec<u64>,
    /// Mean number of other resources (Encounters, Observations, Conditions) per Patient; only
    /// the Observations per Encounter scale.
    #[arg(long, default_value_t = data::DEFAULT_RESOURCES_PER_PATIENT as u64,
          value_parser = clap::value_parser!(u64).range(
              *data::RESOURCES_PER_PATIENT.start() as u64..=*data::RESOURCES_PER_PATIENT.end() as u64))]
    resources_per_patient: u64,
    /// When the client is a super admin, run in a new Project of its own as
    /// that Project's admin client: what an application's client is (a super
    /// admin's searches cross projects). `--policy` implies it.
    #[arg(long)]
    own_project: bool,
    /// Caller access policies to measure the reads and searches as; repeat or give a list:
    /// none (the admin client), compartment, criteria.
    #[arg(long = "policy", value_enum, value_delimiter = ',')]
    policies: Vec<Policy>,
    /// Seed of the data set and of the request streams.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Entries per Bundle in the `transaction` scenario (whole synthetic patients of 10 resources).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    transaction_entries: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Seconds between progress lines of each scenario (req/s, p99, errors and, with
    /// --server-pid, the server's resident memory in that interval): a soak's stability.
    #[arg(long)]
    interval: Option<f64>,
    /// The server's process id (same machine): report its peak RSS and CPU seconds.
    #[arg(long)]
    server_pid: Option<u32>,
    /// fhirgate's PostgreSQL: also run its primary SQL for read and token search directly.
    #[arg(long)]
    baseline_postgres: Option<String>,
    /// After the load, run VACUUM (ANALYZE) on fhirgate's tables (through --baseline-postgres) so the
    /// planner knows the loaded data even where autovacuum is off or has not run yet.
    #[arg(long, requires = "baseline_postgres")]
    analyze: bool,
    /// Another server to run the same scenarios against after this one, in
    /// the same invocation: BASE_URL,CLIENT_ID,CLIENT_SECRET[,PID]; ends with
    /// one table of both and their ratio.
    #[arg(long, value_name = "BASE_URL,ID,SECRET[,PID]", value_parser = parse_other,
          conflicts_with_all = ["sizes", "policies"])]
    compare: Option<Server>,
}

/// A server to measure and how to reach it.
#[derive(Debug, Clone)]
struct Server {
    base_url: String,
    client_id: String,
    client_secret: String,
    pid: Option<u32>,
    /// Its PostgreSQL, when it is fhirgate's (baselines and `--analyze`).
    postgres: Option<String>,
}

fn parse_other(value: &str) -> Result<Server, String> {
    let parts: Vec<&str> = value.split(',').collect();
    let (base_url, client_id, client_secret, pid) = match parts.as_slice() {
        [base, id, secret] => (base, id, secret, None),
        [base, id, secret, pid] => (
            base,
            id,
            secret,
            Some(
                pid.parse::<u32>()
                    .map_err(|_| format!("'{pid}' is not a process id"))?,
            ),
        ),
        _ => return Err("expected BASE_URL,CLIENT_ID,CLIENT_SECRET[,PID]".into()),
    };
    if [base_url, client_id, client_secret]
        .iter()
        .any(|s| s.is_empty())
    {
        return Err("BASE_URL, CLIENT_ID and CLIENT_SECRET must not be empty".into());
    }
    Ok(Server {
        base_url: base_url.to_string(),
        client_id: client_id.to_string(),
        client_secret: client_secret.to_string(),
        pid,
        postgres: None,
    })
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

/// The given values in order, each once; `default` when none were given.
fn distinct<T: Copy + PartialEq>(given: &[T], default: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for &v in if given.is_empty() { default } else { given } {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

async fn run(args: Args) -> Result<ExitCode, String> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err("--duration must be a positive number of seconds".into());
    }
    let server = Server {
        base_url: args.base_url.clone(),
        client_id: args.client_id.clone(),
        client_secret: args.client_secret.clone(),
        pid: args.server_pid,
        postgres: args.baseline_postgres.clone(),
    };
    let mut measured = vec![measure(&args, &server).await?];
    if let Some(other) = &args.compare {
        eprintln!("compare: the same scenarios against {}", other.base_url);
        measured.push(measure(&args, other).await?);
    }
    let mut report = measured[0].report.clone();
    if let (Some(other), [first, second]) = (&args.compare, measured.as_slice()) {
        let rows = report::comparison(&first.last()?.results, &second.last()?.results);
        report::print_comparison(&server.base_url, &other.base_url, &rows);
        report["compare"] = second.report.clone();
        report["comparison"] = json!(rows);
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).expect("JSON");
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    let failed = measured
        .iter()
        .flat_map(|m| &m.runs)
        .flat_map(|r| &r.results)
        .filter(|r| r.status == Status::Failed)
        .count();
    if failed > 0 {
        eprintln!("fhirgate-bench: {failed} scenario(s) failed");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One server's run: its results at each size and its JSON report.
struct Measured {
    runs: Vec<SizeRun>,
    report: serde_json::Value,
}

impl Measured {
    fn last(&self) -> Result<&SizeRun, String> {
        self.runs.last().ok_or_else(|| "no size to measure".into())
    }
}

/// Loads the data set into `server` and runs the scenarios at each size.
async fn measure(args: &Args, server: &Server) -> Result<Measured, String> {
    let concurrency = args.concurrency as usize;
    let duration = Duration::from_secs_f64(args.duration);
    if args.interval.is_some_and(|i| !(i > 0.0 && i.is_finite())) {
        return Err("--interval must be a positive number of seconds".into());
    }
    let progress = Progress {
        interval: args.interval.map(Duration::from_secs_f64),
        server_pid: args.server_pid,
    };
    let growth = !args.sizes.is_empty();
    let mut sizes: Vec<usize> = args.sizes.iter().map(|&n| n as usize).collect();
    sizes.sort_unstable();
    sizes.dedup();
    if !growth {
        sizes.push(args.patients as usize);
    }
    let all = Scenario::defaults();
    let default_scenarios: &[Scenario] = if growth { &scenarios::GROWTH } else { &all };
    if growth && !args.analyze {
        eprintln!(
            "growth: without --analyze the larger sizes may run on stale planner statistics \
             (see bench/README.md, Planner statistics)"
        );
    }
    let selected = distinct(&args.scenarios, default_scenarios);
    let policies = distinct(&args.policies, &[Policy::Unrestricted]);
    let restricted: Vec<Policy> = policies
        .iter()
        .copied()
        .filter(|&p| p != Policy::Unrestricted)
        .collect();

    let mut watch = ServerWatch::start(server.pid)?;
    let mut api = Api::connect(
        &server.base_url,
        &server.client_id,
        &server.client_secret,
        concurrency,
    )
    .await?;
    eprintln!(
        "auth: token from {}oauth2/token",
        api_base(&server.base_url)
    );
    let mut own_project = false;
    if !restricted.is_empty() || args.own_project {
        (api, own_project) =
            policy::own_project(api, &server.base_url, args.seed, concurrency).await?;
    }
    let api = Arc::new(api);

    let mut generator = Generator::new(args.seed, args.resources_per_patient as usize);
    let mut loader = Loader::new(api.clone(), concurrency);
    // The client given, and the restricted callers once the first size is loaded.
    let mut callers: Vec<(Policy, Arc<Api>)> = vec![(Policy::Unrestricted, api.clone())];
    let mut runs: Vec<SizeRun> = Vec::new();
    let mut rounds: Vec<subscription::Round> = Vec::new();
    for &size in &sizes {
        let delta = size - generator.generated();
        eprintln!(
            "load: {delta} patients to {size}, ~{} other resources each (seed {})",
            args.resources_per_patient, args.seed
        );
        loader.load(&mut generator, delta).await?;
        if loader.patients.is_empty() {
            return Err("no Patient could be loaded; nothing to measure".into());
        }
        let postgres = server.postgres.as_deref();
        if args.analyze && postgres.is_some() {
            let url = postgres.ok_or("--analyze needs --baseline-postgres")?;
            eprintln!("analyze: VACUUM (ANALYZE) on fhirgate's tables");
            baseline::analyze(url).await?;
        }
        // The baseline runs on the data set as loaded, like the read
        // scenarios after it, and while the server is idle (outside its CPU
        // accounting).
        let mut baseline_results = Vec::new();
        if let Some(url) = postgres {
            eprintln!(
                "run: baseline SQL for {:.1} s each at concurrency {concurrency}",
                args.duration
            );
            baseline_results = baseline::run(url, concurrency, duration, args.seed).await?;
        }
        if runs.is_empty() {
            for &p in &restricted {
                let client = policy::restricted_client(
                    &api,
                    &server.base_url,
                    p,
                    &loader.patients[0],
                    concurrency,
                )
                .await?;
                eprintln!(
                    "policy: signed in as a client with the {} policy",
                    p.as_str()
                );
                callers.push((p, Arc::new(client)));
            }
        }

        watch.begin()?;
        let transactions = loader.transactions.clone().unwrap_or(Ok(()));
        let ctxs: Vec<(Policy, Arc<Ctx>)> = callers
            .iter()
            .map(|(p, caller)| {
                let ctx = Ctx {
                    api: caller.clone(),
                    patients: Arc::new(p.visible(&loader.patients)),
                    seed: args.seed,
                    transaction_groups: (args.transaction_entries / 10) as usize,
                    transactions: transactions.clone(),
                };
                (*p, Arc::new(ctx))
            })
            .collect();
        let mut results = Vec::new();
        for &scenario in &selected {
            if scenario == Scenario::Subscription {
                let (rows, subscription_rounds) =
                    subscription::run(&ctxs[0].1, concurrency, duration).await;
                results.extend(rows);
                rounds = subscription_rounds;
                continue;
            }
            for (p, ctx) in &ctxs {
                if wanted(scenario, *p, &policies) {
                    results.push(
                        run_scenario(ctx, scenario, *p, concurrency, duration, &progress).await,
                    );
                }
            }
        }
        watch.end()?;
        results.extend(baseline_results);
        if growth {
            println!("\n{size} patients, {} resources loaded", loader.resources);
        }
        report::print_table(&results);
        subscription::print(&rounds);
        runs.push(SizeRun {
            patients: size,
            resources: loader.resources,
            results,
        });
    }
    let server_report = watch.finish().await?;
    report::print_server(&server_report);
    if growth {
        report::print_growth(&runs);
    }

    let last = runs.last().ok_or("no size to measure")?;
    let mut report = json!({
        "base_url": server.base_url,
        "concurrency": concurrency,
        "duration_seconds": args.duration,
        "patients": last.patients,
        "resources_per_patient": args.resources_per_patient,
        "seed": args.seed,
        "load": {
            "resources": loader.resources,
            "errors": loader.errors,
            "seconds": loader.seconds,
            "resources_per_second": loader.resources as f64 / loader.seconds.max(1e-9),
            "transactions": matches!(loader.transactions, Some(Ok(()))),
            "analyzed": args.analyze && server.postgres.is_some(),
        },
        "scenarios": report::scenarios_json(&last.results),
        "server": server_report,
    });
    if !restricted.is_empty() {
        report["policies"] = json!(policies.iter().map(|p| p.as_str()).collect::<Vec<_>>());
        report["project"] = json!({"id": api.project, "created": own_project});
    }
    if !rounds.is_empty() {
        report["subscription"] = subscription::to_json(&rounds);
    }
    if growth {
        report["sizes"] = json!(report::sizes_json(&runs));
        report["growth"] = json!(report::growth_json(&runs));
    }
    Ok(Measured { runs, report })
}

/// Whether `scenario` runs as the caller with `policy`: reads and searches
/// as every policy asked for, writes as the client given only.
fn wanted(scenario: Scenario, policy: Policy, policies: &[Policy]) -> bool {
    if scenario.is_read() {
        policies.contains(&policy)
    } else {
        policy == Policy::Unrestricted
    }
}

/// Progress lines of a long run (`--interval`).
struct Progress {
    interval: Option<Duration>,
    server_pid: Option<u32>,
}

impl Progress {
    fn print(&self, at: Duration, window: &ScenarioResult) {
        let rss = self
            .server_pid
            .and_then(|pid| stats::proc_sample(pid).ok())
            .map_or_else(String::new, |s| {
                format!(", server RSS {:.1} MiB", s.rss_bytes as f64 / 1048576.0)
            });
        eprintln!(
            "progress: {:>6.0} s {}: {:.1} req/s, p99 {} ms, {} errors{rss}",
            at.as_secs_f64(),
            window.name,
            window.requests as f64 / window.seconds.max(f64::EPSILON),
            window.p99_ms.map_or("-".into(), |p| format!("{p:.1}")),
            window.errors,
        );
    }
}

/// One scenario as one caller; a restricted caller's row is named
/// `scenario[policy]`.
async fn run_scenario(
    ctx: &Arc<Ctx>,
    scenario: Scenario,
    policy: Policy,
    concurrency: usize,
    duration: Duration,
    progress: &Progress,
) -> ScenarioResult {
    let mut name = scenario.name();
    if policy != Policy::Unrestricted {
        name = format!("{name}[{}]", policy.as_str());
    }
    let mut result = if ctx.patients.is_empty() {
        ScenarioResult::skipped(
            &name,
            "no loaded Patient is visible under the policy".into(),
        )
    } else {
        eprintln!(
            "run: {name} for {:.1} s at concurrency {concurrency}",
            duration.as_secs_f64()
        );
        let window = progress.interval.unwrap_or(duration);
        scenarios::run_in_windows(ctx, scenario, concurrency, duration, window, |at, r| {
            if progress.interval.is_some() {
                progress.print(at, r);
            }
        })
        .await
    };
    result.name = name;
    result.policy = Some(policy.as_str());
    if let Some(reason) = result
        .reason
        .as_ref()
        .filter(|_| result.status != Status::Ok)
    {
        eprintln!("run: {} {}: {reason}", result.name, result.status.as_str());
    }
    result
}

fn api_base(base: &str) -> String {
    if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    }
}
