//! `fhirgate import`: NDJSON files (one resource a line), Bundle files
//! (transaction, batch or collection) and directories of them, sent as
//! transaction Bundles at a chosen concurrency.
//!
//! - References between files resolve: `urn:uuid:` full URLs and `Type/id`
//!   of the source are rewritten to the ids the server assigned to resources
//!   imported before (files that others refer to go first: organizations,
//!   practitioners and locations, then patients, then encounters, then the
//!   rest, each group finished before the next starts); conditional
//!   references (`Organization?identifier=…`) are left to the server.
//! - A journal records each batch as it is sent and when it is done, with
//!   the ids it was given: run again, the import skips what is done, and
//!   re-sends a batch that was in flight as conditional creates on the tag
//!   every imported resource carries, so nothing is imported twice.
//! - A rejected transaction is retried entry by entry, so each rejected
//!   resource is reported as `file:line: message` and the rest go in.
//!
//! NDJSON is read line by line; a Bundle file is read whole.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::api::{outcome_message, Api};
use crate::progress::Progress;
use crate::{io, Error, Result};

/// The `meta.tag` system marking each imported resource with its batch and
/// position, so a batch re-sent after a crash finds what it created.
pub const IMPORT_TAG: &str = "https://fhirgate.dev/fhir/CodeSystem/import";

pub struct ImportOptions {
    pub paths: Vec<PathBuf>,
    /// Transactions in flight at once.
    pub concurrency: usize,
    /// Resources per transaction from NDJSON (Bundle files: up to 1,000 entries each).
    pub batch_size: usize,
    /// Where progress is recorded, to resume from.
    pub journal: PathBuf,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    pub imported: u64,
    pub rejected: u64,
    /// Batches a previous run had finished.
    pub skipped_batches: u64,
    /// `file:line: message` of each rejected resource.
    pub errors: Vec<String>,
}

/// One resource to send, with where it came from.
struct Entry {
    origin: String,
    resource: Value,
    full_url: Option<String>,
    request: Option<Value>,
}

/// A transaction's worth of entries, named by file and first line/entry.
struct Batch {
    key: String,
    entries: Vec<Entry>,
    /// Bytes of the input this batch accounts for (progress).
    bytes: u64,
}

/// What the workers share.
struct Shared<'a> {
    api: &'a Api,
    journal: Journal,
    /// Source reference (`urn:uuid:…`, `Type/source-id`) -> `Type/server-id`.
    ids: RwLock<HashMap<String, String>>,
    progress: Progress,
    bytes_done: AtomicU64,
    imported: AtomicU64,
    skipped: AtomicU64,
    errors: Mutex<Vec<String>>,
}

pub async fn run(api: &Api, options: &ImportOptions) -> Result<Summary> {
    let files = collect_files(&options.paths)?;
    let total_bytes = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let journal = Journal::open(&options.journal)?;
    let shared = Shared {
        api,
        ids: RwLock::new(journal.ids.clone()),
        journal,
        progress: Progress::new(total_bytes, "resources"),
        bytes_done: AtomicU64::new(0),
        imported: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        errors: Mutex::new(Vec::new()),
    };
    let mut groups: Vec<Vec<PathBuf>> = vec![Vec::new(); 4];
    for file in &files {
        groups[rank(file)].push(file.clone());
    }
    for group in groups {
        run_group(&shared, &group, options).await?;
    }
    shared.progress.finish();
    let errors = std::mem::take(&mut *shared.errors.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Summary {
        files: files.len(),
        imported: shared.imported.load(Ordering::Relaxed),
        rejected: errors.len() as u64,
        skipped_batches: shared.skipped.load(Ordering::Relaxed),
        errors,
    })
}

/// The files under `paths`, `.ndjson` and `.json`, in name order.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io(path))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            children.sort();
            let nested: Vec<PathBuf> = children
                .into_iter()
                .filter(|c| c.is_dir() || is_input(c))
                .collect();
            files.extend(collect_files(&nested)?);
        } else if path.exists() {
            files.push(path.clone());
        } else {
            return Err(Error::Usage(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    Ok(files)
}

fn is_input(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("ndjson" | "json")
    )
}

fn is_ndjson(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("ndjson")
}

/// Which group a file goes in, so what others refer to is there first:
/// 0 organizations, practitioners, locations (Synthea's
/// `hospitalInformation*`/`practitionerInformation*`), 1 patients (Synthea's
/// patient Bundles), 2 encounters, 3 the rest. An NDJSON file is named by
/// its type (`Patient.ndjson`, `Patient.000.ndjson`).
fn rank(path: &Path) -> usize {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name.split('.').next().unwrap_or("");
    if name.contains("Information")
        || [
            "Organization",
            "Practitioner",
            "PractitionerRole",
            "Location",
        ]
        .contains(&stem)
    {
        0
    } else if !is_ndjson(path) || stem == "Patient" {
        1
    } else if stem == "Encounter" {
        2
    } else {
        3
    }
}

/// Runs one group's batches, `concurrency` at a time.
async fn run_group(shared: &Shared<'_>, files: &[PathBuf], options: &ImportOptions) -> Result<()> {
    use futures_util::StreamExt;
    let batches = Batches::new(files.to_vec(), options.batch_size);
    let mut failure = None;
    let mut work = futures_util::stream::iter(batches)
        .map(|unit| async move {
            // A Bundle file's batches go in order: later ones may refer to
            // earlier ones' full URLs.
            for batch in unit? {
                send_batch(shared, batch).await?;
            }
            Ok(())
        })
        .buffer_unordered(options.concurrency.max(1));
    while let Some(result) = work.next().await {
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The batches of a group's files, read as they are needed.
struct Batches {
    files: std::vec::IntoIter<PathBuf>,
    batch_size: usize,
    /// The NDJSON file being read: its path, reader and last line number.
    ndjson: Option<(String, std::io::BufReader<std::fs::File>, usize)>,
}

/// Bundle files are sent in transactions of at most this many entries.
const BUNDLE_BATCH: usize = 1_000;

impl Batches {
    fn new(files: Vec<PathBuf>, batch_size: usize) -> Batches {
        Batches {
            files: files.into_iter(),
            batch_size: batch_size.max(1),
            ndjson: None,
        }
    }

    fn next_ndjson_batch(&mut self) -> Result<Option<Batch>> {
        let Some((name, reader, line_no)) = &mut self.ndjson else {
            return Ok(None);
        };
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let first = *line_no + 1;
        let mut line = String::new();
        while entries.len() < self.batch_size {
            line.clear();
            let read = reader.read_line(&mut line).map_err(|source| Error::Io {
                path: name.clone(),
                source,
            })?;
            if read == 0 {
                break;
            }
            *line_no += 1;
            bytes += read as u64;
            if line.trim().is_empty() {
                continue;
            }
            let origin = format!("{name}:{line_no}");
            let resource = serde_json::from_str(&line)
                .unwrap_or_else(|e| json!({"__malformed": e.to_string()}));
            entries.push(Entry {
                origin,
                resource,
                full_url: None,
                request: None,
            });
        }
        if bytes == 0 {
            self.ndjson = None;
            return Ok(None);
        }
        Ok(Some(Batch {
            key: format!("{name}:{first}"),
            entries,
            bytes,
        }))
    }

    /// A Bundle (or single resource) file's batches.
    fn bundle_batches(&self, path: &Path) -> Result<Vec<Batch>> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let bytes = text.len() as u64;
        let value: Value = match serde_json::from_str(&text) {
            Ok(value) => value,
            Err(e) => {
                let origin = format!("{name}:{}", e.line());
                let entries = vec![Entry {
                    origin,
                    resource: json!({"__malformed": e.to_string()}),
                    full_url: None,
                    request: None,
                }];
                return Ok(vec![Batch {
                    key: format!("{name}:1"),
                    entries,
                    bytes,
                }]);
            }
        };
        let entries: Vec<Entry> = if value["resourceType"] == "Bundle" {
            value["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .filter(|(_, e)| e["resource"].is_object())
                .map(|(i, e)| Entry {
                    origin: format!("{name}: entry {i}"),
                    resource: e["resource"].clone(),
                    full_url: e["fullUrl"].as_str().map(str::to_string),
                    request: e.get("request").cloned(),
                })
                .collect()
        } else {
            vec![Entry {
                origin: format!("{name}:1"),
                resource: value,
                full_url: None,
                request: None,
            }]
        };
        let mut batches = Vec::new();
        let mut entries = entries.into_iter().peekable();
        let mut index = 0;
        while entries.peek().is_some() || batches.is_empty() {
            let chunk: Vec<Entry> = entries.by_ref().take(BUNDLE_BATCH).collect();
            batches.push(Batch {
                key: format!("{name}#{index}"),
                bytes: 0,
                entries: chunk,
            });
            index += 1;
        }
        if let Some(last) = batches.last_mut() {
            last.bytes = bytes;
        }
        Ok(batches)
    }
}

/// Yields units of work: an NDJSON batch, or a Bundle file's batches.
impl Iterator for Batches {
    type Item = Result<Vec<Batch>>;

    fn next(&mut self) -> Option<Result<Vec<Batch>>> {
        loop {
            match self.next_ndjson_batch() {
                Ok(Some(batch)) => return Some(Ok(vec![batch])),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
            let path = self.files.next()?;
            if is_ndjson(&path) {
                match std::fs::File::open(&path) {
                    Ok(file) => {
                        self.ndjson =
                            Some((path.display().to_string(), std::io::BufReader::new(file), 0))
                    }
                    Err(e) => return Some(Err(io(&path)(e))),
                }
            } else {
                return Some(self.bundle_batches(&path));
            }
        }
    }
}

/// FNV-1a: a stable digest of a batch key for the import tag.
fn digest(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `Type/id` of a transaction response entry's `location`.
fn location_reference(location: &str) -> Option<String> {
    let parts: Vec<&str> = location.split('/').collect();
    let end = parts
        .iter()
        .position(|p| *p == "_history")
        .unwrap_or(parts.len());
    (end >= 2).then(|| format!("{}/{}", parts[end - 2], parts[end - 1]))
}

/// Rewrites every `reference` in `value` that `resolve` knows.
fn rewrite_references(value: &mut Value, resolve: &impl Fn(&str) -> Option<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(reference) if key == "reference" => {
                        if let Some(target) = resolve(reference) {
                            *reference = target;
                        }
                    }
                    _ => rewrite_references(child, resolve),
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|v| rewrite_references(v, resolve)),
        _ => {}
    }
}

/// A transaction entry for `entry`, and the source references it answers to.
fn transaction_entry(
    entry: &Entry,
    tag: &str,
    conditional: bool,
) -> std::result::Result<(Value, Vec<String>), String> {
    if let Some(problem) = entry.resource["__malformed"].as_str() {
        return Err(format!("not JSON: {problem}"));
    }
    let resource_type = entry.resource["resourceType"]
        .as_str()
        .ok_or("no resourceType")?
        .to_string();
    let full_url = match &entry.full_url {
        Some(url) => url.clone(),
        None => format!("urn:uuid:{}", Uuid::new_v4()),
    };
    let mut aliases = vec![full_url.clone()];
    let mut resource = entry.resource.clone();
    if let Some(id) = resource.as_object_mut().and_then(|r| r.remove("id")) {
        if let Some(id) = id.as_str() {
            aliases.push(format!("{resource_type}/{id}"));
        }
    }
    let mut tags = resource["meta"]["tag"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    tags.push(json!({"system": IMPORT_TAG, "code": tag}));
    if !resource["meta"].is_object() {
        resource["meta"] = json!({});
    }
    resource["meta"]["tag"] = Value::Array(tags);
    // The server assigns ids: a source's `PUT Type/id` becomes a create.
    let request = match &entry.request {
        Some(request) if request["url"].as_str().is_some_and(|u| u.contains('?')) => {
            request.clone()
        }
        Some(request) if request["method"] == "POST" => request.clone(),
        _ => json!({"method": "POST", "url": resource_type}),
    };
    let mut entry = json!({"fullUrl": full_url, "resource": resource, "request": request});
    if conditional {
        make_entry_conditional(&mut entry, tag);
    }
    Ok((entry, aliases))
}

/// Times a busy or unreachable server is asked again, waiting 0.4 s, 0.8 s, … between.
const RETRIES: u32 = 5;

/// A create that finds the resource its tag names instead of making another.
fn make_entry_conditional(entry: &mut Value, tag: &str) {
    let request = &mut entry["request"];
    if request["method"] == "POST" && request.get("ifNoneExist").is_none() {
        request["ifNoneExist"] = json!(format!("_tag={IMPORT_TAG}|{tag}"));
    }
}

fn make_conditional(bundle: &mut Value, tags: &[String]) {
    if let Some(entries) = bundle["entry"].as_array_mut() {
        for (entry, tag) in entries.iter_mut().zip(tags) {
            make_entry_conditional(entry, tag);
        }
    }
}

/// Sends one batch, unless the journal says it is done.
async fn send_batch(shared: &Shared<'_>, batch: Batch) -> Result<()> {
    if shared.journal.is_done(&batch.key) {
        shared.skipped.fetch_add(1, Ordering::Relaxed);
        shared.advance(batch.bytes, 0);
        return Ok(());
    }
    // A batch that was in flight when a previous run stopped may be in:
    // creates become conditional on its tags.
    let conditional = shared.journal.was_started(&batch.key);
    shared.journal.record(&json!({"started": batch.key}))?;
    let digest = digest(&batch.key);
    let tags: Vec<String> = (0..batch.entries.len())
        .map(|i| format!("{digest:016x}.{i}"))
        .collect();
    let mut learned = Vec::new();
    let (done, rejected) =
        match send_entries(shared, &batch.entries, &tags, conditional, &mut learned).await? {
            Ok(done) => (done, Vec::new()),
            // Entry by entry: each rejected one is named, the others go in.
            Err(_) => {
                let mut done = 0;
                let mut rejected = Vec::new();
                for (entry, tag) in batch.entries.iter().zip(&tags) {
                    match send_entries(
                        shared,
                        std::slice::from_ref(entry),
                        std::slice::from_ref(tag),
                        conditional,
                        &mut learned,
                    )
                    .await?
                    {
                        Ok(n) => done += n,
                        Err(message) => rejected.push(format!("{}: {message}", entry.origin)),
                    }
                }
                (done, rejected)
            }
        };
    shared
        .journal
        .record(&json!({"done": batch.key, "ids": learned}))?;
    for line in &rejected {
        shared.progress.println(line);
    }
    shared
        .errors
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(rejected);
    shared.advance(batch.bytes, done);
    Ok(())
}

impl Shared<'_> {
    fn advance(&self, bytes: u64, imported: u64) {
        let position = self.bytes_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let items = self.imported.fetch_add(imported, Ordering::Relaxed) + imported;
        self.progress.update(position, items);
    }
}

/// Sends `entries` as one transaction: `Ok(Ok(n))` when it went in (their
/// ids learned), `Ok(Err(message))` when the server refused it.
async fn send_entries(
    shared: &Shared<'_>,
    entries: &[Entry],
    tags: &[String],
    conditional: bool,
    learned: &mut Vec<(String, String)>,
) -> Result<std::result::Result<u64, String>> {
    let mut bundle_entries = Vec::with_capacity(entries.len());
    let mut aliases = Vec::with_capacity(entries.len());
    for (entry, tag) in entries.iter().zip(tags) {
        match transaction_entry(entry, tag, conditional) {
            Ok((bundle_entry, names)) => {
                bundle_entries.push(bundle_entry);
                aliases.push(names);
            }
            Err(message) => return Ok(Err(message)),
        }
    }
    // References to this batch's own entries go to their full URLs; to
    // resources imported before, to the ids the server gave them.
    let local: HashMap<&str, &str> = aliases
        .iter()
        .flat_map(|names| {
            names[1..]
                .iter()
                .map(move |alias| (alias.as_str(), names[0].as_str()))
        })
        .collect();
    {
        let ids = shared.ids.read().unwrap_or_else(|e| e.into_inner());
        let resolve = |reference: &str| {
            local
                .get(reference)
                .map(|s| s.to_string())
                .or_else(|| ids.get(reference).cloned())
        };
        for entry in &mut bundle_entries {
            rewrite_references(&mut entry["resource"], &resolve);
        }
    }
    let mut bundle =
        json!({"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries});
    let mut attempt = 0;
    let (status, body) = loop {
        let answer = shared.api.post_bundle(&bundle).await;
        let busy = match &answer {
            Ok((status, _)) => [429, 502, 503, 504].contains(&status.as_u16()),
            Err(Error::Http(_)) => true,
            Err(_) => false,
        };
        if !busy || attempt == RETRIES {
            break answer?;
        }
        // The transaction may have gone in before the answer was lost:
        // the retry's creates are conditional on their tags.
        attempt += 1;
        make_conditional(&mut bundle, tags);
        tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
    };
    if !status.is_success() {
        if status.is_server_error() {
            return Err(Error::Server(format!(
                "the server failed ({status}): {}",
                outcome_message(&body)
            )));
        }
        return Ok(Err(outcome_message(&body)));
    }
    let mut ids = shared.ids.write().unwrap_or_else(|e| e.into_inner());
    for (names, response) in aliases
        .iter()
        .zip(body["entry"].as_array().into_iter().flatten())
    {
        if let Some(target) = response["response"]["location"]
            .as_str()
            .and_then(location_reference)
        {
            for name in names {
                ids.insert(name.clone(), target.clone());
                learned.push((name.clone(), target.clone()));
            }
        }
    }
    Ok(Ok(entries.len() as u64))
}

/// The append-only record of batches started and done, and the ids learned.
struct Journal {
    file: Mutex<std::fs::File>,
    started: HashSet<String>,
    done: HashSet<String>,
    ids: HashMap<String, String>,
}

impl Journal {
    fn open(path: &Path) -> Result<Journal> {
        let mut journal = Journal {
            file: Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io(path))?,
            ),
            started: HashSet::new(),
            done: HashSet::new(),
            ids: HashMap::new(),
        };
        let text = std::fs::read(path).map_err(io(path))?;
        // A crash can cut the last line off; what is appended now starts on
        // a line of its own, so that it is not lost with the cut one.
        if text.last().is_some_and(|&byte| byte != b'\n') {
            journal.record_raw("")?;
        }
        for line in text.as_slice().lines() {
            let line = line.map_err(io(path))?;
            // A line cut off by a crash is ignored: its batch is not done.
            let Ok(record) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(key) = record["started"].as_str() {
                journal.started.insert(key.to_string());
            }
            if let Some(key) = record["done"].as_str() {
                journal.done.insert(key.to_string());
                for pair in record["ids"].as_array().into_iter().flatten() {
                    if let (Some(from), Some(to)) = (pair[0].as_str(), pair[1].as_str()) {
                        journal.ids.insert(from.to_string(), to.to_string());
                    }
                }
            }
        }
        Ok(journal)
    }

    fn is_done(&self, key: &str) -> bool {
        self.done.contains(key)
    }

    fn was_started(&self, key: &str) -> bool {
        self.started.contains(key)
    }

    /// Appends one line, flushed before the next step.
    fn record(&self, record: &Value) -> Result<()> {
        self.record_raw(&record.to_string())
    }

    fn record_raw(&self, line: &str) -> Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(file, "{line}")
            .and_then(|_| file.flush())
            .map_err(|source| Error::Io {
                path: "import journal".into(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_cut_off_by_a_crash_keeps_what_is_appended_after() {
        let path = std::env::temp_dir().join(format!("journal-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "{\"started\":\"a\"}\n{\"done\":\"a\",\"ids\":[[\"x").unwrap();
        let journal = Journal::open(&path).unwrap();
        assert!(journal.was_started("a") && !journal.is_done("a"));
        journal.record(&json!({"started": "b"})).unwrap();
        let reopened = Journal::open(&path).unwrap();
        assert!(
            reopened.was_started("b"),
            "{}",
            std::fs::read_to_string(&path).unwrap()
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn locations_name_the_resource() {
        assert_eq!(
            location_reference("Patient/abc/_history/1").as_deref(),
            Some("Patient/abc")
        );
        assert_eq!(
            location_reference("http://x/fhir/R4/Patient/abc/_history/1").as_deref(),
            Some("Patient/abc")
        );
        assert_eq!(
            location_reference("Patient/abc").as_deref(),
            Some("Patient/abc")
        );
    }

    #[test]
    fn references_are_rewritten_where_known() {
        let mut value =
            json!({"subject": {"reference": "Patient/1"}, "x": [{"reference": "Other/2"}]});
        rewrite_references(&mut value, &|r: &str| {
            (r == "Patient/1").then(|| "Patient/new".to_string())
        });
        assert_eq!(value["subject"]["reference"], "Patient/new");
        assert_eq!(value["x"][0]["reference"], "Other/2");
    }

    #[test]
    fn files_others_refer_to_go_first() {
        assert_eq!(rank(Path::new("out/hospitalInformation1.json")), 0);
        assert_eq!(rank(Path::new("Practitioner.ndjson")), 0);
        assert_eq!(rank(Path::new("Patient.000.ndjson")), 1);
        assert_eq!(rank(Path::new("Aaron_Smith.json")), 1);
        assert_eq!(rank(Path::new("Encounter.ndjson")), 2);
        assert_eq!(rank(Path::new("Observation.ndjson")), 3);
    }
}
