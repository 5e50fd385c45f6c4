//! FHIR R4 Subscriptions, durable on PostgreSQL alone (docs/subscriptions.md).
//!
//! 1. A write to a watched type records an event in its own transaction
//!    (triggers, `migrations/0025_subscriptions.sql`).
//! 2. The fan-out (one instance at a time) matches each event against the
//!    project's active Subscriptions with the search engine's SQL, and the
//!    FHIRPath condition, and queues one delivery per match.
//! 3. A dispatcher on every instance leases the queues whose heads are due
//!    (`FOR UPDATE SKIP LOCKED`) and starts a task per leased queue, which
//!    delivers it batch after batch while it holds the lease: it checks the
//!    author's access (loaded again at most a second old), POSTs (rest-hook)
//!    or sends to bound clients (websocket) in order, and records each
//!    attempt as an AuditEvent; failures retry with exponential backoff.
//!
//! The fan-out's `NOTIFY` wakes the dispatchers; they also poll every second.

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
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::{
    app::AppState,
    error::{Error, Result},
    fhir::{self, resource::Stamp},
    store::{
        subscriptions::{Attempted, Delivery, Event, Leased, NewDelivery, VersionKey},
        Tenant, Tx,
    },
};
use spec::{Channel, Spec};

/// Subscriptions an instance delivers to at once: one task each, started by
/// the dispatcher for a leased queue. A task holds a database connection
/// only to read a batch and to record what it sent, never while it sends;
/// idle, it does not exist (only the dispatcher claims).
const DELIVERY_TASKS: usize = 64;
/// How often the fan-out and the dispatcher look for work when nothing
/// woke them.
const POLL: Duration = Duration::from_secs(1);
/// Notifications of one subscription a task reads, sends and records at once.
const DELIVERY_BATCH: i64 = 50;
/// How long a task delivers by the subscription and its author's access as
/// it loaded them before loading them again (and a new lease always loads
/// them): a revoked membership or a changed subscription stops delivery
/// within this, plus the batch being sent.
const CURRENT_FOR: Duration = Duration::from_secs(1);
/// How long the fan-out waits after a write woke it, so that one pass
/// matches the writes of a few milliseconds rather than one each.
const FANOUT_GATHER: Duration = Duration::from_millis(20);
/// Events one fan-out transaction matches.
const FANOUT_BATCH: i64 = 500;
/// How long a lease on a queue lasts from its claim or renewal (a task that
/// dies leaves it to expire; then any instance's dispatcher claims the queue
/// again).
const LEASE: Duration = Duration::from_secs(20);
/// No POST starts later than this after the claim or renewal, so that every
/// POST ends (its timeout) before the lease can expire and another instance
/// could send the same notification.
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
    /// client bound a websocket, a delivery task ended), so the dispatcher
    /// does not wake at every write.
    deliveries: Arc<watch::Sender<u64>>,
    /// The delivery tasks that may still start ([`DELIVERY_TASKS`]).
    tasks: Arc<Semaphore>,
    http: reqwest::Client,
    allow_private: bool,
    pub sockets: websocket::Sockets,
}

impl Hub {
    pub fn new(allow_private: bool, events: Arc<watch::Sender<u64>>) -> Result<Hub> {
        Ok(Hub {
            events,
            deliveries: Arc::new(watch::Sender::new(0)),
            tasks: Arc::new(Semaphore::new(DELIVERY_TASKS)),
            http: resthook::client(allow_private)
                .map_err(|e| Error::Startup(format!("subscription HTTP client: {e}")))?,
            allow_private,
            sockets: websocket::Sockets::default(),
        })
    }

    fn woken(&self, work: Work) -> watch::Receiver<u64> {
        match work {
            Work::FanOut => self.events.subscribe(),
            Work::Dispatch => self.deliveries.subscribe(),
        }
    }

    /// Wakes this instance's dispatcher (a client bound a websocket, a
    /// delivery task ended).
    pub fn wake(&self) {
        self.deliveries.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Starts the listener, the fan-out and the delivery dispatcher; they stop
/// when the state is dropped.
pub fn spawn(state: &Arc<AppState>, pg: tokio_postgres::Config) {
    crate::store::subscriptions::spawn_listener(
        pg,
        Arc::downgrade(&state.subscriptions.events),
        Arc::downgrade(&state.subscriptions.deliveries),
    );
    spawn_worker(Arc::downgrade(state), Work::FanOut);
    spawn_worker(Arc::downgrade(state), Work::Dispatch);
}

#[derive(Debug, Clone, Copy)]
enum Work {
    FanOut,
    Dispatch,
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
                Work::Dispatch => {
                    dispatch(&current)
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

/// A subscription as a delivery task sees it now.
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

/// Leases the queues whose heads are due, as many as tasks may still start,
/// and starts a task for each; true if it got all it asked for (more may
/// be waiting). With every task busy it claims nothing: the next task to
/// end wakes it.
async fn dispatch(state: &Arc<AppState>) -> Result<bool> {
    let hub = &state.subscriptions;
    let free = hub.tasks.available_permits();
    if free == 0 {
        return Ok(false);
    }
    let leased_at = Instant::now();
    let tx = state.store.begin().await?;
    let queues = tx
        .claim_queues(free as i64, &hub.sockets.bound(), Uuid::new_v4(), LEASE)
        .await?;
    tx.commit().await?;
    for queue in &queues {
        // Only this dispatcher takes permits, and `free` were there.
        let permit = hub
            .tasks
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::Internal(format!("delivery tasks: {e}")))?;
        tokio::spawn(
            serve(Arc::downgrade(state), *queue, leased_at, permit)
                .instrument(crate::job_span("subscription-delivery")),
        );
    }
    Ok(queues.len() == free)
}

/// One leased queue's task: delivers it, gives the lease back on error,
/// and wakes the dispatcher, since what was queued while the task gave the
/// lease back is waiting for a claim.
async fn serve(
    state: Weak<AppState>,
    queue: Leased,
    leased_at: Instant,
    permit: OwnedSemaphorePermit,
) {
    let served = deliver_queue(&state, &queue, leased_at).await;
    drop(permit);
    let Some(state) = state.upgrade() else {
        return;
    };
    if let Err(e) = served {
        tracing::warn!(error = %e, subscription = %queue.subscription_id, "subscription delivery failed; giving the queue back");
        let released = async {
            let tx = state.store.begin().await?;
            tx.release_lease(&queue).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "giving a subscription queue back failed; its lease expires");
        }
    }
    state.subscriptions.wake();
}

/// Delivers a leased queue in order, batch after batch, while it holds the
/// lease, and gives the lease back when the queue is empty or cannot go on
/// now (a failure waits for its retry, a websocket client went away). Per
/// batch, two short transactions around the sending, never one open while
/// it sends: read the batch and its versions; record every attempt, renew
/// the lease and read the next batch (or give the lease back).
async fn deliver_queue(state: &Weak<AppState>, queue: &Leased, leased_at: Instant) -> Result<()> {
    let mut leased_at = leased_at;
    let mut cached: Option<(Instant, Current)> = None;
    let Some(first) = state.upgrade() else {
        return Ok(());
    };
    let mut tx = first.store.begin().await?;
    drop(first);
    loop {
        let (batch, contents) = read_batch(&tx, queue).await?;
        if batch.is_empty() {
            tx.release_lease(queue).await?;
            return tx.commit().await;
        }
        tx.commit().await?;
        // Gone: the instance stops, and the lease expires.
        let Some(state) = state.upgrade() else {
            return Ok(());
        };
        let fresh = match cached.take() {
            Some((loaded, current)) if loaded.elapsed() < CURRENT_FOR => (loaded, current),
            _ => {
                let loaded = Instant::now();
                match load_current(&state, queue.project_id, queue.subscription_id).await? {
                    Ok(current) => (loaded, current),
                    Err(reason) => {
                        let tx = state.store.begin().await?;
                        tx.drop_pending(queue.subscription_id, &reason).await?;
                        tx.release_lease(queue).await?;
                        return tx.commit().await;
                    }
                }
            }
        };
        let current = &cached.insert(fresh).1;
        let attempts = send_in_order(&state, current, &batch, &contents, leased_at).await?;
        tx = state.store.begin().await?;
        record_attempts(&state, &tx, current, &batch, &attempts).await?;
        let go_on = attempts.len() == batch.len()
            && !matches!(attempts.last(), Some(Attempt::Sent(Err(_))));
        if !go_on {
            tx.release_lease(queue).await?;
            return tx.commit().await;
        }
        let renewing = Instant::now();
        if !tx.renew_lease(queue, LEASE).await? {
            // It expired and another claim took the queue.
            return tx.commit().await;
        }
        leased_at = renewing;
    }
}

/// The head of a leased queue and the contents of its versions.
async fn read_batch(tx: &Tx, queue: &Leased) -> Result<(Vec<Delivery>, HashMap<Uuid, String>)> {
    let batch = tx.queue_batch(queue, DELIVERY_BATCH).await?;
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
    Ok((batch, contents))
}

/// Records a batch's attempts (`attempts` are those of its first
/// notifications): AuditEvents of rest-hook attempts, delivered rows,
/// retries, and a subscription's stop when a notification used up its
/// attempts.
async fn record_attempts(
    state: &AppState,
    tx: &Tx,
    current: &Current,
    batch: &[Delivery],
    attempts: &[Attempt],
) -> Result<()> {
    let mut delivered = Vec::new();
    for (delivery, attempt) in batch.iter().zip(attempts) {
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
            record_audit(state, tx, delivery, &current.author, result).await?;
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
                stop_with_error(state, tx, delivery, &current.author, &reason).await?;
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
    tx.record_delivered(&delivered).await
}

/// Sends a batch in order, up to the first failure (or until the lease
/// taken or renewed at `leased_at` nears its end): one attempt per
/// notification it got to, in the batch's order.
async fn send_in_order(
    state: &AppState,
    current: &Current,
    batch: &[Delivery],
    contents: &HashMap<Uuid, String>,
    leased_at: Instant,
) -> Result<Vec<Attempt>> {
    let mut attempts = Vec::new();
    for delivery in batch {
        if leased_at.elapsed() > LAST_SEND {
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
