//! Loads the data set: transaction Bundles when the server takes them, else
//! one POST per resource with references rewritten to the created ids.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, RwLock,
    },
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::Value;

use crate::{
    client::{encode, Api, BUNDLE_PREFER},
    data::{self, Generator, Group, Res, MRN_SYSTEM},
};

/// A Patient of the loaded data set.
#[derive(Debug, Clone)]
pub struct LoadedPatient {
    pub id: String,
    pub mrn: String,
    pub family: String,
    /// As posted (references rewritten), without `id`; shared, as the
    /// callers of a run each hold the Patients they pick from.
    pub body: Arc<Value>,
}

/// What has been loaded so far, across calls of [`Loader::load`].
pub struct Loader {
    api: Arc<Api>,
    concurrency: usize,
    pub patients: Vec<LoadedPatient>,
    pub resources: usize,
    pub errors: usize,
    /// Seconds spent loading, over every [`Loader::load`].
    pub seconds: f64,
    /// `Ok` when the server took a transaction Bundle, else why not; `None`
    /// until the first Bundle was tried.
    pub transactions: Option<Result<(), String>>,
    /// Whether the load's Bundles still go with `Prefer: return=minimal`:
    /// until a server answers one with no entries to read the ids from (as
    /// Medplum does), after which they go without it.
    minimal: Arc<AtomicBool>,
}

/// Target entries per load Bundle (groups are never split).
const BUNDLE_TARGET: usize = 100;
/// Patients generated and held in memory at a time, so large data sets do
/// not have to fit at once.
const CHUNK_PATIENTS: usize = 2000;

impl Loader {
    pub fn new(api: Arc<Api>, concurrency: usize) -> Loader {
        Loader {
            api,
            concurrency,
            patients: Vec::new(),
            resources: 0,
            errors: 0,
            seconds: 0.0,
            transactions: None,
            minimal: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Generates and loads the next `patients` groups.
    pub async fn load(&mut self, generator: &mut Generator, patients: usize) -> Result<(), String> {
        let done = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let expected = patients * (1 + generator.resources_per_patient());
        let progress = tokio::spawn(progress(done.clone(), stop.clone(), expected, started));
        let (resources, errors) = (self.resources, self.errors);
        let mut result = Ok(());
        let mut left = patients;
        while left > 0 && result.is_ok() {
            let groups = generator.take(left.min(CHUNK_PATIENTS));
            left -= groups.len();
            result = self.load_groups(groups, &done).await;
        }
        stop.store(true, Ordering::Relaxed);
        let _ = progress.await;
        self.seconds += started.elapsed().as_secs_f64();
        if result.is_ok() {
            let secs = started.elapsed().as_secs_f64();
            let loaded = self.resources - resources;
            eprintln!(
                "load: {loaded} resources in {secs:.1} s ({:.0}/s), {} failed, {} patients usable",
                loaded as f64 / secs.max(1e-9),
                self.errors - errors,
                self.patients.len()
            );
        }
        result
    }

    async fn load_groups(
        &mut self,
        groups: Vec<Group>,
        done: &Arc<AtomicUsize>,
    ) -> Result<(), String> {
        if groups.is_empty() {
            return Ok(());
        }
        let chunk = Arc::new(Chunk {
            api: self.api.clone(),
            groups,
            done: done.clone(),
            loaded: AtomicUsize::new(0),
            errors: AtomicUsize::new(0),
            map: RwLock::new(HashMap::new()),
            minimal: self.minimal.clone(),
        });
        match self.transactions {
            Some(Err(_)) => post_each(&chunk, self.concurrency).await,
            Some(Ok(())) => post_bundles(&chunk, self.concurrency, false)
                .await
                .map_err(|e| format!("loading the data set: {}", e.message))?,
            None => match post_bundles(&chunk, self.concurrency, true).await {
                Ok(()) => self.transactions = Some(Ok(())),
                Err(e) if e.unsupported => {
                    eprintln!(
                        "load: transaction Bundles not taken ({}); posting one resource at a time",
                        e.message
                    );
                    self.transactions = Some(Err(e.message));
                    post_each(&chunk, self.concurrency).await
                }
                Err(e) => return Err(format!("loading the data set: {}", e.message)),
            },
        }
        let map = chunk.map.read().unwrap();
        self.patients.extend(loaded_patients(&chunk.groups, &map));
        self.resources += chunk.loaded.load(Ordering::Relaxed);
        self.errors += chunk.errors.load(Ordering::Relaxed);
        Ok(())
    }
}

/// What the workers loading one chunk share.
struct Chunk {
    api: Arc<Api>,
    groups: Vec<Group>,
    /// Resources loaded, for the progress line, over the whole load.
    done: Arc<AtomicUsize>,
    /// Resources of this chunk loaded.
    loaded: AtomicUsize,
    /// Resources that failed to load.
    errors: AtomicUsize,
    /// `urn:uuid:` fullUrl → `Type/id` of what was created (of the
    /// Patients only, when a transaction's ids had to be searched for).
    map: RwLock<HashMap<String, String>>,
    /// [`Loader::minimal`].
    minimal: Arc<AtomicBool>,
}

impl Chunk {
    fn created(&self, created: Created) {
        self.done.fetch_add(created.resources, Ordering::Relaxed);
        self.loaded.fetch_add(created.resources, Ordering::Relaxed);
        self.map.write().unwrap().extend(created.ids);
    }

    /// Counts `n` failed resources; the first failure is shown.
    fn failed(&self, n: usize, message: &str) {
        if self.errors.fetch_add(n, Ordering::Relaxed) == 0 {
            eprintln!("load: {message}");
        }
    }
}

/// Calls `work(chunk, items, i)` for every item, `concurrency` calls in flight.
async fn in_parallel<T, F, Fut>(chunk: &Arc<Chunk>, items: Vec<T>, concurrency: usize, work: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<Chunk>, Arc<Vec<T>>, usize) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(items.len()).max(1) {
        let (chunk, items, next) = (chunk.clone(), items.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                work(chunk.clone(), items.clone(), i).await;
            }
        });
    }
    while workers.join_next().await.is_some() {}
}
/// Posts the groups as transaction Bundles of whole groups, about
/// BUNDLE_TARGET entries each, `concurrency` in flight; a failed Bundle
/// counts its resources as errors. With `probe` the first Bundle goes alone
/// and its error is the answer: whether the server takes Bundles at all.
async fn post_bundles(
    chunk: &Arc<Chunk>,
    concurrency: usize,
    probe: bool,
) -> Result<(), BundleError> {
    let mut bundles: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut size = 0;
    for (i, g) in chunk.groups.iter().enumerate() {
        if size > 0 && size + g.resources.len() > BUNDLE_TARGET {
            bundles.push(std::mem::take(&mut current));
            size = 0;
        }
        size += g.resources.len();
        current.push(i);
    }
    if !current.is_empty() {
        bundles.push(current);
    }
    if probe {
        chunk.created(post_bundle(chunk, &bundles.remove(0)).await?);
    }
    in_parallel(
        chunk,
        bundles,
        concurrency,
        |chunk, bundles, i| async move {
            let bundle = &bundles[i];
            match post_bundle(&chunk, bundle).await {
                Ok(map) => chunk.created(map),
                Err(e) => {
                    let n = bundle
                        .iter()
                        .map(|&g| chunk.groups[g].resources.len())
                        .sum();
                    chunk.failed(n, &format!("a transaction Bundle failed: {}", e.message));
                }
            }
        },
    )
    .await;
    Ok(())
}

async fn progress(
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    expected: usize,
    started: Instant,
) {
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last.elapsed() >= Duration::from_secs(3) && !stop.load(Ordering::Relaxed) {
            last = Instant::now();
            let n = done.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "load: {n}/~{expected} resources, {:.0}/s",
                n as f64 / secs.max(1e-9)
            );
        }
    }
}

/// The loaded Patients of `groups`, in order, with their bodies as stored.
fn loaded_patients(groups: &[Group], map: &HashMap<String, String>) -> Vec<LoadedPatient> {
    groups
        .iter()
        .filter_map(|g| {
            let patient = &g.resources[0];
            let reference = map.get(&patient.full_url)?;
            let id = reference.strip_prefix("Patient/")?.to_string();
            let mut body = patient.body.clone();
            data::rewrite_references(&mut body, &mut |r| map.get(r).cloned());
            Some(LoadedPatient {
                id,
                mrn: g.mrn.clone(),
                family: g.family.clone(),
                body: Arc::new(body),
            })
        })
        .collect()
}

pub struct BundleError {
    /// The server does not take transaction Bundles at all (4xx on the probe).
    pub unsupported: bool,
    pub message: String,
}

/// What one Bundle or POST created.
struct Created {
    /// `fullUrl → Type/id` of what is known.
    ids: HashMap<String, String>,
    /// Resources created.
    resources: usize,
}

/// Posts the groups as one transaction and finds what it created: from the
/// response's entries, or, when the server answered `return=minimal` with
/// none (a transaction is all or nothing, so every resource is there),
/// the Patients by identifier; later Bundles then go without the header.
async fn post_bundle(chunk: &Chunk, which: &[usize]) -> Result<Created, BundleError> {
    let groups = &chunk.groups;
    let resources: Vec<&Res> = which
        .iter()
        .flat_map(|&g| groups[g].resources.iter())
        .collect();
    let bundle = data::transaction_bundle(resources.iter().copied());
    let body = serde_json::to_vec(&bundle).expect("JSON");
    let minimal = chunk.minimal.load(Ordering::Relaxed);
    let failed = |message| BundleError {
        unsupported: false,
        message,
    };
    let reply = chunk
        .api
        .send(
            Method::POST,
            "",
            Some(&body),
            minimal.then_some(BUNDLE_PREFER),
        )
        .await
        .map_err(failed)?;
    if !reply.ok() {
        return Err(BundleError {
            unsupported: reply.status.is_client_error(),
            message: format!("POST fhir/R4 (transaction) answered {}", reply.describe()),
        });
    }
    let response = reply.json().unwrap_or(Value::Null);
    if minimal && !has_entries(&response) {
        if chunk.minimal.swap(false, Ordering::Relaxed) {
            eprintln!(
                "load: the server answered a transaction with no entries under \
                 Prefer: {BUNDLE_PREFER}; finding its Patients by identifier and \
                 sending the other Bundles without the header"
            );
        }
        let ids = patients_by_identifier(&chunk.api, groups, which)
            .await
            .map_err(failed)?;
        return Ok(Created {
            ids,
            resources: resources.len(),
        });
    }
    let ids = transaction_ids(&response, &resources).map_err(failed)?;
    Ok(Created {
        resources: ids.len(),
        ids,
    })
}

fn has_entries(response: &Value) -> bool {
    response.get("entry").is_some_and(Value::is_array)
}

/// Whether a successful transaction-response accounts for all `resources`:
/// an entry for each, or none at all where the server took
/// `return=minimal` to leave them out.
pub fn transaction_accounted(response: &Value, resources: &[&Res]) -> bool {
    !has_entries(response) || transaction_ids(response, resources).is_ok()
}

/// `fullUrl → Patient/id` of the Patients of `groups[which]`, searched by
/// their identifiers in one request.
async fn patients_by_identifier(
    api: &Api,
    groups: &[Group],
    which: &[usize],
) -> Result<HashMap<String, String>, String> {
    let values: Vec<String> = which
        .iter()
        .map(|&g| encode(&format!("{MRN_SYSTEM}|{}", groups[g].mrn)))
        .collect();
    let path = format!(
        "Patient?identifier={}&_count={}&_elements=identifier",
        values.join(","),
        values.len() * 2
    );
    let found = api.get_json(&path).await?;
    let mut by_mrn = HashMap::new();
    for patient in found["entry"].as_array().into_iter().flatten() {
        let Some(id) = patient.pointer("/resource/id").and_then(Value::as_str) else {
            continue;
        };
        for identifier in patient
            .pointer("/resource/identifier")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if identifier["system"] == MRN_SYSTEM {
                if let Some(mrn) = identifier["value"].as_str() {
                    by_mrn.entry(mrn.to_string()).or_insert(id.to_string());
                }
            }
        }
    }
    which
        .iter()
        .map(|&g| {
            let group = &groups[g];
            let id = by_mrn.get(&group.mrn).ok_or_else(|| {
                format!(
                    "the transaction answered no entries and no Patient has the identifier {MRN_SYSTEM}|{}",
                    group.mrn
                )
            })?;
            Ok((group.resources[0].full_url.clone(), format!("Patient/{id}")))
        })
        .collect()
}

/// Maps each request entry's fullUrl to `Type/id` from a transaction-response.
pub fn transaction_ids(
    response: &Value,
    resources: &[&Res],
) -> Result<HashMap<String, String>, String> {
    let entries = response
        .get("entry")
        .and_then(Value::as_array)
        .ok_or("the transaction response has no entries")?;
    if entries.len() != resources.len() {
        return Err(format!(
            "the transaction response has {} entries for {} requests",
            entries.len(),
            resources.len()
        ));
    }
    let mut map = HashMap::new();
    for (entry, res) in entries.iter().zip(resources) {
        let id = entry
            .pointer("/resource/id")
            .and_then(Value::as_str)
            .map(String::from)
            .or_else(|| {
                // Type/id/_history/vid, possibly absolute.
                let location = entry.pointer("/response/location")?.as_str()?;
                let parts: Vec<&str> = location.split('/').collect();
                let at = parts.iter().position(|p| *p == res.resource_type)?;
                parts.get(at + 1).map(|s| s.to_string())
            })
            .ok_or_else(|| {
                format!(
                    "no id for the {} entry in the transaction response",
                    res.resource_type
                )
            })?;
        map.insert(res.full_url.clone(), format!("{}/{id}", res.resource_type));
    }
    Ok(map)
}

/// One POST per resource, in three waves so references can be rewritten:
/// Patients, then Encounters and Conditions, then Observations.
async fn post_each(chunk: &Arc<Chunk>, concurrency: usize) {
    let waves: [&[&str]; 3] = [&["Patient"], &["Encounter", "Condition"], &["Observation"]];
    for types in waves {
        let items: Vec<(usize, usize)> = chunk
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| {
                group
                    .resources
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| types.contains(&r.resource_type))
                    .map(move |(r, _)| (g, r))
            })
            .collect();
        in_parallel(chunk, items, concurrency, |chunk, items, i| async move {
            let (g, r) = items[i];
            let res = &chunk.groups[g].resources[r];
            match post_one(&chunk, res).await {
                Ok(id) => chunk.created(Created {
                    ids: HashMap::from([(
                        res.full_url.clone(),
                        format!("{}/{id}", res.resource_type),
                    )]),
                    resources: 1,
                }),
                Err(e) => chunk.failed(1, &e),
            }
        })
        .await;
    }
}

/// Posts one resource with its references rewritten; answers its id.
async fn post_one(chunk: &Chunk, res: &Res) -> Result<String, String> {
    let mut body = res.body.clone();
    let mut missing = false;
    {
        let map = chunk.map.read().unwrap();
        data::rewrite_references(&mut body, &mut |reference| {
            let found = map.get(reference).cloned();
            if found.is_none() && reference.starts_with("urn:uuid:") {
                missing = true;
            }
            found
        });
    }
    if missing {
        return Err("a resource it refers to failed to load".to_string());
    }
    chunk.api.create(&body).await
}
