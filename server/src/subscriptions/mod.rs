//! FHIR R4 Subscriptions, durable on PostgreSQL alone (docs/subscriptions.md).
//!
//! 1. A write to a watched type records an event in its own transaction
//!    (triggers, `migrations/0025_subscriptions.sql`).
//! 2. The fan-out (one instance at a time) matches each event against the
//!    project's active Subscriptions with the search engine's SQL, and the
//!    FHIRPath condition, and queues one delivery per match.
//! 3. Delivery workers on every instance take the head of a subscription's
//!    queue with `FOR UPDATE SKIP LOCKED`, check the author's access as it is
//!    now, and POST it (rest-hook) or send it to bound clients (websocket),
//!    recording each attempt as an AuditEvent; failures retry with
//!    exponential backoff.
//!
//! `NOTIFY` wakes the workers at each commit; they also poll every second.

pub mod resthook;
pub mod spec;
pub mod websocket;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::Instrument;

use access_policy::{CompiledPolicy, Interaction, RowFilter};
use chrono::Utc;
use fhir_model::search::{Filter, Registry};
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    app::AppState,
    error::{Error, Result},
    fhir::{self, resource::Stamp},
    store::{
        subscriptions::{Attempted, Claim, Delivery, Event, NewDelivery, VersionKey},
        Tenant, Tx,
    },
};
use spec::{Channel, Spec};

/// Delivery workers per instance: each delivers one subscription's queue at
/// a time, so this many subscriptions are served at once. They hold a
/// database connection only to claim a queue and to record what they sent,
/// never while they send. More is not better: every pass of the fan-out
/// wakes them all, and each idle one then runs the claim query for nothing
/// (16 workers cut creates with one subscription from 1,339/s to 616/s,
/// `bench/RESULTS.md`).
const DELIVERY_WORKERS: usize = 4;
/// How often workers look for work when no notification woke them.
const POLL: Duration = Duration::from_secs(1);
/// Notifications of one subscription one worker takes at once.
const DELIVERY_BATCH: i64 = 50;
/// How long the fan-out waits after a write woke it, so that one pass
/// matches the writes of a few milliseconds rather than one each.
const FANOUT_GATHER: Duration = Duration::from_millis(20);
/// Events one fan-out transaction matches.
const FANOUT_BATCH: i64 = 500;
/// How long a worker's claim on a queue lasts (a worker that dies leaves it
/// to expire; then another worker takes the queue over).
const LEASE: Duration = Duration::from_secs(20);
/// No POST starts later than this after the claim, so that every POST ends
/// (its timeout) before the lease can expire and another worker could send
/// the same notification.
const LAST_SEND: Duration = LEASE
    .saturating_sub(resthook::TIMEOUT)
    .saturating_sub(Duration::from_secs(2));
/// The first retry's delay; each further one doubles it, up to an hour.
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(3600);
/// How long finished deliveries are kept (and websocket notifications wait
/// for a client).
pub const KEEP_DELIVERIES: Duration = Duration::from_secs(24 * 3600);

/// fhirgate's codes for the AuditEvents of subscriptions.
pub const AUDIT_SYSTEM: &str = "https://fhirgate.dev/fhir/CodeSystem/subscription";
const DELIVERY_ATTEMPT: &str = "delivery-attempt";

/// The subscription machinery of one instance.
pub struct Hub {
    /// Bumped when events may be waiting for the fan-out: after each write
    /// this instance commits (`Store::committed_writes`), and when the
    /// listener (re)connects.
    events: Arc<watch::Sender<u64>>,
    /// Bumped when deliveries may be waiting (the fan-out queued some, a
    /// client bound a websocket), so the delivery workers do not wake at
    /// every write.
    deliveries: Arc<watch::Sender<u64>>,
    http: reqwest::Client,
    allow_private: bool,
    pub sockets: websocket::Sockets,
}

impl Hub {
    pub fn new(allow_private: bool, events: Arc<watch::Sender<u64>>) -> Result<Hub> {
        Ok(Hub {
            events,
            deliveries: Arc::new(watch::Sender::new(0)),
            http: resthook::client(allow_private)
                .map_err(|e| Error::Startup(format!("subscription HTTP client: {e}")))?,
            allow_private,
            sockets: websocket::Sockets::default(),
        })
    }

    fn woken(&self, work: Work) -> watch::Receiver<u64> {
        match work {
            Work::FanOut => self.events.subscribe(),
            Work::Delivery => self.deliveries.subscribe(),
        }
    }

    /// Wakes this instance's delivery workers (a client bound a websocket).
    pub fn wake(&self) {
        self.deliveries.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Starts the listener, the fan-out and the delivery workers; they stop
/// when the state is dropped.
pub fn spawn(state: &Arc<AppState>, pg: tokio_postgres::Config) {
    crate::store::subscriptions::spawn_listener(
        pg,
        Arc::downgrade(&state.subscriptions.events),
        Arc::downgrade(&state.subscriptions.deliveries),
    );
    spawn_worker(Arc::downgrade(state), Work::FanOut);
    for _ in 0..DELIVERY_WORKERS {
        spawn_worker(Arc::downgrade(state), Work::Delivery);
    }
}

#[derive(Debug, Clone, Copy)]
enum Work {
    FanOut,
    Delivery,
}

/// Does `work` while it says more may be waiting, then waits for a wake-up
/// or the poll interval; a failure is logged and retried after the interval.
fn spawn_worker(state: Weak<AppState>, work: Work) {
    tokio::spawn(async move {
        let Some(mut woken) = state.upgrade().map(|s| s.subscriptions.woken(work)) else {
            return;
        };
        loop {
            woken.mark_unchanged();
            let Some(current) = state.upgrade() else {
                return;
            };
            let done = match work {
                Work::FanOut => {
                    fan_out(&current)
                        .instrument(crate::job_span("subscription-fanout"))
                        .await
                }
                Work::Delivery => {
                    deliver(&current)
                        .instrument(crate::job_span("subscription-delivery"))
                        .await
                }
            };
            drop(current);
            let more = done.unwrap_or_else(|e| {
                tracing::warn!(?work, error = %e, "subscription worker failed; retrying");
                false
            });
            if !more {
                let woke = tokio::time::timeout(POLL, woken.changed()).await;
                if matches!(work, Work::FanOut) && woke.is_ok() {
                    // Writes wake it one by one: gather a few into one pass.
                    tokio::time::sleep(FANOUT_GATHER).await;
                }
            }
        }
    });
}

/// The active Subscriptions of one project on one type.
type Watchers = Vec<(Uuid, Spec)>;

/// Matches the oldest events and queues their deliveries; true if more
/// events may be waiting. One statement reads the versions' contents, one
/// per project and type matches the versions still current against every
/// criteria there, one queues the deliveries.
async fn fan_out(state: &AppState) -> Result<bool> {
    let tx = state.store.begin().await?;
    if !tx.take_fanout_turn().await? {
        // Another instance is matching; what this one's writes recorded may
        // have come after its claim, so look again shortly.
        tx.rollback().await?;
        tokio::time::sleep(FANOUT_GATHER).await;
        return Ok(true);
    }
    let events = tx.claim_events(FANOUT_BATCH).await?;
    if events.is_empty() {
        tx.rollback().await?;
        return Ok(false);
    }
    let key = |event: &Event| (event.project_id, event.resource_type.clone());
    let mut watchers: HashMap<(Uuid, String), Watchers> = HashMap::new();
    for event in &events {
        if let std::collections::hash_map::Entry::Vacant(slot) = watchers.entry(key(event)) {
            let specs = tx
                .watchers(event.project_id, &event.resource_type)
                .await?
                .into_iter()
                .filter_map(|w| {
                    let value = serde_json::from_str::<Value>(&w.content).ok()?;
                    Some((w.id, Spec::parse(&value).ok()?))
                })
                .collect();
            slot.insert(specs);
        }
    }
    // For each event, the subscriptions (indexes into its watchers) it may notify.
    let listening: Vec<Vec<usize>> = events
        .iter()
        .map(|event| {
            watchers[&key(event)]
                .iter()
                .enumerate()
                .filter(|(_, (_, spec))| spec.listens(&event.interaction, event.recorded_at))
                .map(|(n, _)| n)
                .collect()
        })
        .collect();
    let mut wanted = Vec::new();
    let mut current: HashMap<(Uuid, String), Vec<(Uuid, Uuid)>> = HashMap::new();
    for (event, listening) in events.iter().zip(&listening) {
        if listening.is_empty() {
            continue;
        }
        let version = |version_id| VersionKey {
            project_id: event.project_id,
            resource_type: event.resource_type.clone(),
            id: event.resource_id,
            version_id,
        };
        wanted.extend(notified_version(event).map(version));
        if needs_previous(event, &watchers[&key(event)], listening) {
            wanted.extend(event.previous_version_id.map(version));
        }
        if event.interaction != "delete" {
            current
                .entry(key(event))
                .or_default()
                .push((event.resource_id, event.version_id));
        }
    }
    let contents = tx.version_contents(&wanted).await?;
    let mut matched_now = HashMap::new();
    for ((project_id, resource_type), versions) in &current {
        let specs = &watchers[&(*project_id, resource_type.clone())];
        if specs.iter().all(|(_, spec)| spec.filters.is_empty()) {
            continue;
        }
        let criteria = criteria_of(specs);
        matched_now.extend(
            tx.current_matches(*project_id, resource_type, versions, &criteria)
                .await?,
        );
    }
    let mut queued = Vec::new();
    for (event, listening) in events.iter().zip(&listening) {
        if !listening.is_empty() {
            let specs = &watchers[&key(event)];
            let found = Found {
                contents: &contents,
                matched_now: &matched_now,
            };
            queued.extend(matching(&tx, event, specs, listening, &found).await?);
        }
    }
    tx.queue_deliveries(&queued).await?;
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    tx.forget_events(&seqs).await?;
    if !queued.is_empty() {
        tx.announce_deliveries().await?;
    }
    tx.commit().await?;
    Ok(events.len() as i64 == FANOUT_BATCH)
}

fn criteria_of(specs: &[(Uuid, Spec)]) -> Vec<&[Filter]> {
    specs.iter().map(|(_, s)| s.filters.as_slice()).collect()
}

/// The version whose content a notification of `event` carries: the
/// written one, or for a delete the one deleted.
fn notified_version(event: &Event) -> Option<Uuid> {
    if event.interaction == "delete" {
        event.previous_version_id
    } else {
        Some(event.version_id)
    }
}

/// Whether a FHIRPath condition needs `%previous` (an update's).
fn needs_previous(event: &Event, specs: &[(Uuid, Spec)], listening: &[usize]) -> bool {
    event.interaction != "delete" && listening.iter().any(|&n| specs[n].1.fhirpath.is_some())
}

/// What the fan-out read for a batch of events: versions' contents, and
/// the criteria matched by versions still current (by version id, one
/// result per watcher of their project and type).
struct Found<'a> {
    contents: &'a HashMap<Uuid, String>,
    matched_now: &'a HashMap<Uuid, Vec<bool>>,
}

/// The deliveries of `event`: one per listening subscription (indexes into
/// `specs`) whose criteria and condition it meets.
async fn matching<'e>(
    tx: &Tx,
    event: &'e Event,
    specs: &[(Uuid, Spec)],
    listening: &[usize],
    found: &Found<'_>,
) -> Result<Vec<NewDelivery<'e>>> {
    let Some(version_id) = notified_version(event) else {
        return Ok(Vec::new());
    };
    let Some(content) = found.contents.get(&version_id) else {
        return Ok(Vec::new());
    };
    let current = parse(content, event)?;
    if is_delivery_audit(&current) {
        // It would notify about the notification it records, without end.
        return Ok(Vec::new());
    }
    let matched = if specs.iter().all(|(_, spec)| spec.filters.is_empty()) {
        vec![true; specs.len()]
    } else if let Some(matched) = found.matched_now.get(&event.version_id) {
        matched.clone()
    } else {
        // A delete, or a version a later write replaced already.
        let index = fhir_model::search::extract(Registry::get(), &current);
        tx.past_matches(
            event.project_id,
            &event.resource_type,
            content,
            index,
            &criteria_of(specs),
        )
        .await?
    };
    let previous = match event.previous_version_id {
        Some(previous) if needs_previous(event, specs, listening) => found
            .contents
            .get(&previous)
            .map(|content| parse(content, event))
            .transpose()?,
        _ => None,
    };
    Ok(listening
        .iter()
        .map(|&n| &specs[n])
        .zip(listening.iter().map(|&n| matched[n]))
        .filter(|((_, spec), matched)| {
            *matched && spec.condition_holds(&current, previous.as_ref())
        })
        .map(|((id, spec), _)| NewDelivery {
            subscription_id: *id,
            channel: match spec.channel {
                Channel::RestHook { .. } => "rest-hook",
                Channel::Websocket => "websocket",
            },
            event,
            version_id,
        })
        .collect())
}

fn parse(content: &str, event: &Event) -> Result<Value> {
    serde_json::from_str(content).map_err(|e| {
        Error::Internal(format!(
            "stored {}/{} is not JSON: {e}",
            event.resource_type, event.resource_id
        ))
    })
}

fn is_delivery_audit(resource: &Value) -> bool {
    resource["resourceType"] == "AuditEvent"
        && resource["subtype"].as_array().is_some_and(|codes| {
            codes
                .iter()
                .any(|c| c["system"] == AUDIT_SYSTEM && c["code"] == DELIVERY_ATTEMPT)
        })
}

/// A subscription as a delivery worker sees it now.
struct Current {
    spec: Spec,
    /// `meta.author`: whose access the notifications are filtered by.
    author: String,
    /// The author's access, as it is now.
    policy: CompiledPolicy,
}

/// One notification's fate in a delivery round.
enum Attempt {
    /// Not sent: the author may not read the resource.
    Unreadable,
    /// Sent: the receiver's 2xx status, or what went wrong.
    Sent(std::result::Result<u16, String>),
}

/// Delivers the head of one subscription's queue and what follows it, in
/// order, stopping at the first failure; true if it found work (or another
/// worker took a queue first). Three short steps, so that no connection is
/// held while the notifications go out: claim the queue (a lease) and read
/// the versions; send; record every attempt and give the queue back, in
/// one transaction.
async fn deliver(state: &AppState) -> Result<bool> {
    let claimed_at = Instant::now();
    let holder = Uuid::new_v4();
    let tx = state.store.begin().await?;
    let claim = tx
        .claim_deliveries(
            DELIVERY_BATCH,
            &state.subscriptions.sockets.bound(),
            holder,
            LEASE,
        )
        .await?;
    let batch = match claim {
        Claim::Nothing | Claim::Taken => {
            tx.rollback().await?;
            return Ok(matches!(claim, Claim::Taken));
        }
        Claim::Leased(batch) => batch,
    };
    let versions: Vec<VersionKey> = batch
        .iter()
        .map(|d| VersionKey {
            project_id: d.project_id,
            resource_type: d.resource_type.clone(),
            id: d.resource_id,
            version_id: d.version_id,
        })
        .collect();
    let contents = tx.version_contents(&versions).await?;
    tx.commit().await?;
    let (subscription_id, project_id) = (batch[0].subscription_id, batch[0].project_id);
    let current = match load_current(state, project_id, subscription_id).await? {
        Ok(current) => current,
        Err(reason) => {
            let tx = state.store.begin().await?;
            tx.drop_pending(subscription_id, &reason).await?;
            tx.release_lease(subscription_id, holder).await?;
            tx.commit().await?;
            return Ok(true);
        }
    };
    let attempts = send_in_order(state, &current, &batch, &contents, claimed_at).await?;
    let tx = state.store.begin().await?;
    let mut delivered = Vec::new();
    for (delivery, attempt) in batch.iter().zip(&attempts) {
        let result = match attempt {
            Attempt::Unreadable => {
                let reason = "the subscription's author may not read this resource";
                tx.record_attempt(delivery.seq, &Attempted::Finished("dropped", reason.into()))
                    .await?;
                continue;
            }
            Attempt::Sent(result) => result,
        };
        if matches!(current.spec.channel, Channel::RestHook { .. }) {
            // Held back and written with the batch's others in one statement.
            record_audit(state, &tx, delivery, &current.author, result).await?;
        }
        match result {
            Ok(_) => delivered.push(delivery.seq),
            Err(error) if delivery.attempts + 1 >= current.spec.max_attempts as i32 => {
                let reason = format!(
                    "delivery of {}/{} failed {} times, the last with: {error}",
                    delivery.resource_type,
                    delivery.resource_id,
                    delivery.attempts + 1
                );
                tx.record_attempt(delivery.seq, &Attempted::Finished("failed", error.clone()))
                    .await?;
                stop_with_error(state, &tx, delivery, &current.author, &reason).await?;
            }
            Err(error) => {
                let delay = RETRY_BASE
                    .saturating_mul(1u32 << delivery.attempts.clamp(0, 20) as u32)
                    .min(RETRY_MOST);
                tx.record_attempt(delivery.seq, &Attempted::Retry(delay, error.clone()))
                    .await?;
            }
        }
    }
    tx.record_delivered(&delivered).await?;
    tx.release_lease(subscription_id, holder).await?;
    tx.commit().await?;
    Ok(true)
}

/// Sends a claimed batch in order, up to the first failure (or until the
/// lease taken at `claimed_at` nears its end): one attempt per
/// notification it got to, in the batch's order.
async fn send_in_order(
    state: &AppState,
    current: &Current,
    batch: &[Delivery],
    contents: &HashMap<Uuid, String>,
    claimed_at: Instant,
) -> Result<Vec<Attempt>> {
    let mut attempts = Vec::new();
    for delivery in batch {
        if claimed_at.elapsed() > LAST_SEND {
            break;
        }
        let Some(body) = readable_content(state, &current.policy, delivery, contents).await? else {
            attempts.push(Attempt::Unreadable);
            continue;
        };
        let subscription_id = delivery.subscription_id;
        let result = match &current.spec.channel {
            Channel::RestHook {
                endpoint,
                headers,
                payload,
            } => {
                let reference = format!("{}/{}", delivery.resource_type, delivery.resource_id);
                resthook::send(
                    &state.subscriptions.http,
                    state.subscriptions.allow_private,
                    &resthook::Post {
                        endpoint,
                        headers,
                        subscription_id: &subscription_id.to_string(),
                        interaction: &delivery.interaction,
                        reference: &reference,
                        body: payload.is_some().then_some(body.as_str()),
                        secret: current.spec.secret.as_deref(),
                    },
                )
                .await
            }
            Channel::Websocket => {
                if !state.subscriptions.sockets.send(
                    subscription_id,
                    &websocket::notification(&state.base_url, delivery, &body),
                ) {
                    // The client went away: the next one bound takes it.
                    break;
                }
                Ok(0)
            }
        };
        let failed = result.is_err();
        attempts.push(Attempt::Sent(result));
        if failed {
            break;
        }
    }
    Ok(attempts)
}

/// The subscription now, or why its notifications are dropped.
async fn load_current(
    state: &AppState,
    project_id: Uuid,
    subscription_id: Uuid,
) -> Result<std::result::Result<Current, String>> {
    let Some(subscription) = crate::auth::read_live(
        state,
        Tenant::Project(project_id),
        "Subscription",
        subscription_id,
    )
    .await?
    else {
        return Ok(Err("the subscription was deleted".into()));
    };
    let spec = match Spec::parse(&subscription) {
        Ok(spec) if spec.listens_at_all(Utc::now()) => spec,
        Ok(_) => return Ok(Err("the subscription is no longer active".into())),
        Err(reason) => return Ok(Err(reason)),
    };
    let author = subscription["meta"]["author"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let Some(policy) = author_policy(state, project_id, &author).await? else {
        return Ok(Err(
            "the subscription's author has no active membership in the project".into(),
        ));
    };
    Ok(Ok(Current {
        spec,
        author,
        policy,
    }))
}

/// The author's access as it is now: its membership in the project (none,
/// ended or deactivated: `None`) and that membership's policies.
async fn author_policy(
    state: &AppState,
    project_id: Uuid,
    author: &str,
) -> Result<Option<CompiledPolicy>> {
    let tenant = Tenant::Project(project_id);
    let memberships =
        crate::fhir::search::find(state, tenant, "ProjectMembership", &[("profile", author)])
            .await?;
    let Some(membership) = memberships
        .iter()
        .map(fhir::parse_stored)
        .collect::<Result<Vec<Value>>>()?
        .into_iter()
        .find(|m| crate::auth::membership_usable(m, Utc::now()))
    else {
        return Ok(None);
    };
    let Some(project) = crate::auth::read_live(state, tenant, "Project", project_id).await? else {
        return Ok(None);
    };
    let (_, policy, _) =
        crate::auth::membership_access(state, project_id, &project, &membership, &[]).await?;
    Ok(Some(policy))
}

/// The notified version as the author may read it (hidden fields removed),
/// if the author may read the resource (as it is now) at all.
async fn readable_content(
    state: &AppState,
    policy: &CompiledPolicy,
    delivery: &Delivery,
    contents: &HashMap<Uuid, String>,
) -> Result<Option<String>> {
    let kind = &delivery.resource_type;
    let Some(content) = contents.get(&delivery.version_id) else {
        return Ok(None);
    };
    if !policy.allows(kind, Interaction::Read) {
        return Ok(None);
    }
    let types = [kind.clone()];
    let filter = policy.row_filter(&types, Interaction::Read);
    // Without criteria, the gate above decided.
    if filter != RowFilter::All {
        let tenant = Tenant::Project(delivery.project_id);
        let readable = state
            .store
            .read(tenant, kind, delivery.resource_id, &filter)
            .await?;
        if readable.is_none() {
            return Ok(None);
        }
    }
    if !policy.hides_fields(kind) {
        return Ok(Some(content.clone()));
    }
    let mut value: Value = serde_json::from_str(content)
        .map_err(|e| Error::Internal(format!("stored {kind} is not JSON: {e}")))?;
    policy.redact(&mut value);
    Ok(Some(value.to_string()))
}

/// One attempt as an AuditEvent in the subscription's project, as Medplum
/// records them: the subscription, the resource, and the HTTP status or
/// error.
async fn record_audit(
    state: &AppState,
    tx: &Tx,
    delivery: &Delivery,
    author: &str,
    result: &std::result::Result<u16, String>,
) -> Result<()> {
    let stamp = Stamp::new(fhir::resource::new_id(), delivery.project_id, author);
    let subscription = format!("Subscription/{}", delivery.subscription_id);
    let (outcome, description) = match result {
        Ok(status) => ("0", format!("HTTP {status}")),
        Err(error) => ("4", error.clone()),
    };
    let audit = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "transmit", "display": "Transmit Record"},
        "subtype": [{"system": AUDIT_SYSTEM, "code": DELIVERY_ATTEMPT}],
        "action": "E",
        "recorded": fhir::resource::instant(&stamp.last_updated),
        "outcome": outcome,
        "outcomeDesc": description,
        "agent": [{"who": {"reference": subscription}, "requestor": false}],
        "source": {"observer": {"reference": subscription}},
        "entity": [
            {"what": {"reference": format!("{}/{}", delivery.resource_type, delivery.resource_id)}},
            {"what": {"reference": subscription}}
        ]
    });
    fhir::insert(&state.validator, tx, audit, &stamp).await?;
    Ok(())
}

/// After the last attempt failed: the subscription's status is `error`,
/// with the reason, and what was queued behind it is dropped.
async fn stop_with_error(
    state: &AppState,
    tx: &Tx,
    delivery: &Delivery,
    author: &str,
    reason: &str,
) -> Result<()> {
    fhir::modify(
        state,
        tx,
        Tenant::Project(delivery.project_id),
        "Subscription",
        delivery.subscription_id,
        author,
        |subscription| {
            subscription["status"] = json!("error");
            subscription["error"] = json!(reason);
            Ok(())
        },
    )
    .await?;
    tx.drop_pending(delivery.subscription_id, reason).await
}

/// Forgets old deliveries; run by the instance's maintenance.
pub async fn clean(state: &AppState) {
    match state.store.clean_deliveries(KEEP_DELIVERIES).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "old subscription deliveries cleaned up"),
        Err(e) => tracing::warn!(error = %e, "cleaning up subscription deliveries failed"),
    }
}
