//! The HTTP scenarios: `concurrency` workers, each looping one step until the
//! duration is over.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use rand::{rngs::StdRng, Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};

use crate::{
    client::{encode, Api, Reply, BUNDLE_PREFER},
    data::{self, Shape, INCLUDE_CODE, LOINC_SYSTEM, MIXED_SYSTEM, MRN_SYSTEM},
    load::{self, LoadedPatient},
    stats::{Recorder, ScenarioResult},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Read,
    SearchName,
    SearchExact,
    SearchToken,
    SearchReferenceDate,
    SearchInclude,
    SearchChain,
    Create,
    Update,
    Transaction,
    Mixed,
    /// Creates with 0, 1, 10 and 100 matching rest-hook Subscriptions
    /// (`crate::subscription`); only when asked for.
    Subscription,
}

/// What a `--sizes` run measures unless told otherwise.
pub const GROWTH: [Scenario; 4] = [
    Scenario::Read,
    Scenario::SearchName,
    Scenario::SearchToken,
    Scenario::Create,
];

impl Scenario {
    /// What runs when no scenario is named: all but `subscription`, which
    /// needs a server that may call this tool's receiver.
    pub fn defaults() -> Vec<Scenario> {
        Scenario::value_variants()
            .iter()
            .copied()
            .filter(|&s| s != Scenario::Subscription)
            .collect()
    }

    /// Reads and searches: only these run as the policy-restricted callers.
    pub fn is_read(self) -> bool {
        matches!(
            self,
            Scenario::Read
                | Scenario::SearchName
                | Scenario::SearchExact
                | Scenario::SearchToken
                | Scenario::SearchReferenceDate
                | Scenario::SearchInclude
                | Scenario::SearchChain
        )
    }

    pub fn name(self) -> String {
        self.to_possible_value()
            .expect("named")
            .get_name()
            .to_string()
    }
}

/// A `transaction` Bundle holds `Ctx::transaction_groups` synthetic patients of this shape (10 resources each).
const TRANSACTION_SHAPE: Shape = Shape {
    encounters: 1,
    observations_per_encounter: 6,
    conditions: 2,
};

pub struct Ctx {
    pub api: Arc<Api>,
    pub patients: Arc<Vec<LoadedPatient>>,
    pub seed: u64,
    /// Synthetic patients (10 resources each) per `transaction` Bundle.
    pub transaction_groups: usize,
    /// `Ok` when the server takes transaction Bundles, else why not.
    pub transactions: Result<(), String>,
}

/// Runs `scenario` for `duration` as windows of `window` back to back (the
/// last may be shorter), `on_window` told of each one's result as it ends
/// (a soak's req/s, p99 and the server's memory over time); the result is
/// over all of them.
pub async fn run_in_windows(
    ctx: &Arc<Ctx>,
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    window: Duration,
    mut on_window: impl FnMut(Duration, &ScenarioResult),
) -> ScenarioResult {
    let name = scenario.name();
    if scenario == Scenario::Transaction {
        if let Err(reason) = &ctx.transactions {
            return ScenarioResult::skipped(&name, format!("transactions unsupported: {reason}"));
        }
    }
    let start = Instant::now();
    let mut total = Recorder::default();
    let mut index = 0;
    while start.elapsed() < duration {
        let length = window.min(duration - start.elapsed());
        let window_start = Instant::now();
        let rec = run_window(ctx, scenario, concurrency, length, index).await;
        index += 1;
        let seconds = window_start.elapsed().as_secs_f64();
        let result = ScenarioResult::from_recorder(
            &name,
            rec.clone(),
            seconds,
            scenario == Scenario::Transaction,
        );
        on_window(start.elapsed(), &result);
        total.merge(rec);
    }
    let seconds = start.elapsed().as_secs_f64();
    ScenarioResult::from_recorder(&name, total, seconds, scenario == Scenario::Transaction)
}

async fn run_window(
    ctx: &Arc<Ctx>,
    scenario: Scenario,
    concurrency: usize,
    duration: Duration,
    window: u64,
) -> Recorder {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let ctx = ctx.clone();
        workers.spawn(async move {
            // Distinct, reproducible streams per scenario and worker.
            let stream = ctx.seed
                ^ ((scenario as u64 + 1) << 48)
                ^ ((worker as u64 + 1) << 32)
                ^ (window << 16);
            let mut rng = StdRng::seed_from_u64(stream);
            let mut rec = Recorder::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                step(&ctx, scenario, &mut rng, &mut rec, worker, n).await;
                n += 1;
            }
            rec
        });
    }
    Recorder::join(workers).await
}

/// Records the reply: 2xx is a success, anything else an error. Answers the
/// reply when it was a success.
fn record(rec: &mut Recorder, what: &str, reply: Result<Reply, String>) -> Option<Reply> {
    match reply {
        Ok(reply) if reply.ok() => {
            rec.ok(reply.latency);
            Some(reply)
        }
        Ok(reply) => {
            rec.error(format!("{what}: {}", reply.describe()));
            None
        }
        Err(e) => {
            rec.error(e);
            None
        }
    }
}

async fn get(ctx: &Ctx, rec: &mut Recorder, path: &str) -> Option<Reply> {
    record(
        rec,
        &format!("GET {path}"),
        ctx.api.send(Method::GET, path, None, None).await,
    )
}

async fn send_json(
    ctx: &Ctx,
    rec: &mut Recorder,
    method: Method,
    path: &str,
    body: &Value,
    prefer: Option<&str>,
) -> Option<Reply> {
    let bytes = serde_json::to_vec(body).expect("JSON");
    let what = format!(
        "{method} {}",
        if path.is_empty() { "fhir/R4" } else { path }
    );
    record(
        rec,
        &what,
        ctx.api.send(method, path, Some(&bytes), prefer).await,
    )
}

async fn step(
    ctx: &Ctx,
    scenario: Scenario,
    rng: &mut StdRng,
    rec: &mut Recorder,
    worker: usize,
    n: u64,
) {
    let patient = &ctx.patients[rng.gen_range(0..ctx.patients.len())];
    match scenario {
        Scenario::Read => {
            get(ctx, rec, &format!("Patient/{}", patient.id)).await;
        }
        Scenario::SearchName => {
            // A loaded Patient's family name, so every search finds some.
            let prefix: String = patient.family.chars().take(3).collect();
            get(
                ctx,
                rec,
                &format!("Patient?family={}&_count=20", encode(&prefix)),
            )
            .await;
        }
        Scenario::SearchExact => {
            get(
                ctx,
                rec,
                &format!("Patient?family:exact={}", encode(&patient.family)),
            )
            .await;
        }
        Scenario::SearchToken => {
            let value = encode(&format!("{MRN_SYSTEM}|{}", patient.mrn));
            get(ctx, rec, &format!("Patient?identifier={value}")).await;
        }
        Scenario::SearchReferenceDate => {
            let date = data::search_date(rng);
            get(
                ctx,
                rec,
                &format!("Observation?subject=Patient/{}&date=ge{date}", patient.id),
            )
            .await;
        }
        Scenario::SearchInclude => {
            let code = encode(&format!("{LOINC_SYSTEM}|{INCLUDE_CODE}"));
            get(
                ctx,
                rec,
                &format!("Observation?code={code}&_include=Observation:subject&_count=20"),
            )
            .await;
        }
        Scenario::SearchChain => {
            let value = encode(&format!("{MRN_SYSTEM}|{}", patient.mrn));
            get(
                ctx,
                rec,
                &format!("Observation?subject:Patient.identifier={value}"),
            )
            .await;
        }
        Scenario::Create => {
            let effective = format!("{}T12:00:00Z", data::search_date(rng));
            let body = data::observation(rng, &format!("Patient/{}", patient.id), None, &effective);
            send_json(ctx, rec, Method::POST, "Observation", &body, None).await;
        }
        Scenario::Update => {
            // The loaded body with the id and a changed phone number.
            let mut body = (*patient.body).clone();
            body["id"] = json!(patient.id);
            body["telecom"] = json!([{ "system": "phone", "value": format!("555-{:04}-{worker:03}-{n}", rng.gen_range(0..10000)) }]);
            send_json(
                ctx,
                rec,
                Method::PUT,
                &format!("Patient/{}", patient.id),
                &body,
                None,
            )
            .await;
        }
        Scenario::Transaction => {
            let groups: Vec<data::Group> = (0..ctx.transaction_groups)
                .map(|g| {
                    data::group(
                        rng,
                        format!("tx-{}-{worker}-{n}-{g}", ctx.seed),
                        TRANSACTION_SHAPE,
                    )
                })
                .collect();
            let resources: Vec<&data::Res> =
                groups.iter().flat_map(|g| g.resources.iter()).collect();
            let bundle = data::transaction_bundle(resources.iter().copied());
            if let Some(reply) =
                send_json(ctx, rec, Method::POST, "", &bundle, Some(BUNDLE_PREFER)).await
            {
                // Count the resources only if the response accounts for them all.
                if load::transaction_accounted(&reply.json().unwrap_or(Value::Null), &resources) {
                    rec.resources += resources.len() as u64;
                }
            }
        }
        Scenario::Subscription => {
            rec.error("the subscription scenario runs in rounds of its own".into());
        }
        Scenario::Mixed => {
            // Medplum's load test loop: create a Patient, read it, search by its family.
            let family = data::FAMILIES[rng.gen_range(0..data::FAMILIES.len())];
            let mrn = format!("{}-{worker}-{n}", ctx.seed);
            let body = data::patient(rng, MIXED_SYSTEM, &mrn, family);
            let Some(created) = send_json(ctx, rec, Method::POST, "Patient", &body, None).await
            else {
                return;
            };
            let Some(id) = created.created_id() else {
                rec.fail_last("POST Patient answered no id".into());
                return;
            };
            if get(ctx, rec, &format!("Patient/{id}")).await.is_none() {
                return;
            }
            get(
                ctx,
                rec,
                &format!("Patient?family={}&_count=20", encode(family)),
            )
            .await;
        }
    }
}
