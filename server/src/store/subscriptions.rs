//! SQL of subscriptions: the events the triggers of
//! `migrations/0025_subscriptions.sql` record in the writing transaction,
//! their fan-out into one delivery per matching subscription, and the
//! delivery queues the instances share.

use std::collections::HashMap;
use std::time::Duration;

use access_policy::{Branch, RowFilter, Types};
use chrono::{DateTime, Utc};
use fhir_model::search::Filter;
use uuid::Uuid;

use super::{search, Query, Store, Traced, Tx, Write};
use crate::error::Result;

/// The channel the triggers notify when they record an event.
pub const CHANNEL: &str = "fhirgate_subscriptions";

/// `pg_try_advisory_xact_lock` key of the fan-out: one instance at a time
/// turns events into deliveries, so each queue gets them in event order.
const FANOUT_LOCK: i64 = 0x6668_6972_7375_6273;

/// A write to a watched type, as the trigger recorded it.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub project_id: Uuid,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub version_id: Uuid,
    pub previous_version_id: Option<Uuid>,
    pub interaction: String,
    pub recorded_at: DateTime<Utc>,
}

/// An active Subscription watching a type.
pub struct Watcher {
    pub id: Uuid,
    pub content: String,
}

/// Which version of which resource.
pub struct VersionKey {
    pub project_id: Uuid,
    pub resource_type: String,
    pub id: Uuid,
    pub version_id: Uuid,
}

/// A delivery to queue: of `event`, carrying `version_id`'s content.
pub struct NewDelivery<'a> {
    pub subscription_id: Uuid,
    pub channel: &'static str,
    pub event: &'a Event,
    pub version_id: Uuid,
}

/// A notification to deliver: which version of which resource.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub seq: i64,
    pub subscription_id: Uuid,
    pub project_id: Uuid,
    pub resource_type: String,
    pub resource_id: Uuid,
    pub version_id: Uuid,
    pub interaction: String,
    pub recorded_at: DateTime<Utc>,
    pub attempts: i32,
}

/// A subscription's queue leased to the caller by [`Tx::claim_queues`].
#[derive(Debug, Clone, Copy)]
pub struct Leased {
    pub subscription_id: Uuid,
    pub project_id: Uuid,
    /// Which claim took it: only its holder renews or gives it back.
    pub holder: Uuid,
}

/// A delivery that did not succeed.
pub enum Attempted {
    /// Try again after the delay.
    Retry(Duration, String),
    /// No more tries: `outcome` is `failed` or `dropped`.
    Finished(&'static str, String),
}

impl Tx {
    /// Takes the fan-out turn for this transaction; false when another
    /// instance has it.
    pub async fn take_fanout_turn(&self) -> Result<bool> {
        let rows = self
            .run("SELECT pg_try_advisory_xact_lock($1)", &[&FANOUT_LOCK])
            .await?;
        Ok(rows.first().is_some_and(|row| row.get::<_, bool>(0)))
    }

    /// The oldest events, locked until this transaction ends.
    pub async fn claim_events(&self, limit: i64) -> Result<Vec<Event>> {
        let rows = self
            .run(
                "SELECT seq, project_id, resource_type, resource_id, version_id, previous_version_id,
                        interaction, recorded_at
                 FROM subscription_event ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Event {
                seq: row.get(0),
                project_id: row.get(1),
                resource_type: row.get(2),
                resource_id: row.get(3),
                version_id: row.get(4),
                previous_version_id: row.get(5),
                interaction: row.get(6),
                recorded_at: row.get(7),
            })
            .collect())
    }

    /// The active Subscriptions of a project watching a type.
    pub async fn watchers(&self, project_id: Uuid, resource_type: &str) -> Result<Vec<Watcher>> {
        let rows = self
            .run(
                "SELECT r.id, r.content FROM subscription_target t
                 JOIN resource r ON r.project_id = t.project_id AND r.resource_type = 'Subscription'
                                AND r.id = t.subscription_id AND NOT r.deleted
                 WHERE t.project_id = $1 AND t.resource_type = $2
                 ORDER BY r.id",
                &[&project_id, &resource_type],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Watcher {
                id: row.get(0),
                content: row.get(1),
            })
            .collect())
    }

    /// The contents of versions (current or superseded), by version id;
    /// deletions and versions that are gone are absent. One statement.
    pub async fn version_contents(&self, versions: &[VersionKey]) -> Result<HashMap<Uuid, String>> {
        if versions.is_empty() {
            return Ok(HashMap::new());
        }
        let projects: Vec<Uuid> = versions.iter().map(|v| v.project_id).collect();
        let types: Vec<&str> = versions.iter().map(|v| v.resource_type.as_str()).collect();
        let ids: Vec<Uuid> = versions.iter().map(|v| v.id).collect();
        let version_ids: Vec<Uuid> = versions.iter().map(|v| v.version_id).collect();
        let rows = self
            .run(
                "WITH v AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[])
                            AS v (project_id, resource_type, id, version_id))
                 SELECT r.version_id, r.content FROM resource r
                 JOIN v USING (project_id, resource_type, id, version_id) WHERE NOT r.deleted
                 UNION ALL
                 SELECT h.version_id, h.content FROM resource_history h
                 JOIN v USING (project_id, resource_type, id, version_id) WHERE h.content IS NOT NULL",
                &[&projects, &types, &ids, &version_ids],
            )
            .await?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// Which of `criteria` (each the filters of one search, ANDed) each of
    /// `versions` (resource id, version id) of one project and type matches,
    /// by version id; a version a later one has replaced is absent. One
    /// statement, compiled by the search engine as searches are.
    pub async fn current_matches(
        &self,
        project_id: Uuid,
        resource_type: &str,
        versions: &[(Uuid, Uuid)],
        criteria: &[&[Filter]],
    ) -> Result<HashMap<Uuid, Vec<bool>>> {
        let mut q = Query::new("SELECT r.version_id, ARRAY[true");
        for filters in criteria {
            q.push(", (TRUE");
            search::row_condition(&mut q, "r", &one_branch(filters))?;
            q.push(")");
        }
        let (ids, version_ids): (Vec<Uuid>, Vec<Uuid>) = versions.iter().copied().unzip();
        q.push("] FROM resource r WHERE r.project_id = ")
            .bind(project_id)
            .push(" AND r.resource_type = ")
            .bind(resource_type.to_string())
            .push(" AND (r.id, r.version_id) IN (SELECT * FROM UNNEST(")
            .bind(ids)
            .push("::uuid[], ")
            .bind(version_ids)
            .push("::uuid[])) AND NOT r.deleted");
        let rows = self.run(&q.sql, &q.values()).await?;
        Ok(rows
            .iter()
            .map(|row| {
                let mut matched: Vec<bool> = row.get(1);
                matched.remove(0);
                (row.get(0), matched)
            })
            .collect())
    }

    /// Which of `criteria` a version that is no longer current would match:
    /// it is written again, at a scratch id, with its index rows, matched as
    /// [`Tx::current_matches`] matches, and rolled back.
    pub async fn past_matches(
        &self,
        project_id: Uuid,
        resource_type: &str,
        content: &str,
        index: Vec<fhir_model::search::IndexValue>,
        criteria: &[&[Filter]],
    ) -> Result<Vec<bool>> {
        self.run("SAVEPOINT past_version", &[]).await?;
        let kept = self.bookkeeping_len();
        let scratch = Uuid::new_v4();
        let version_id = Uuid::new_v4();
        let matched = async {
            self.write(
                &Write {
                    project_id,
                    resource_type,
                    id: scratch,
                    version_id,
                    last_updated: Utc::now(),
                    content: Some(content),
                },
                true,
                index,
            )
            .await?;
            self.current_matches(
                project_id,
                resource_type,
                &[(scratch, version_id)],
                criteria,
            )
            .await
        }
        .await;
        // The scratch version (and the event its trigger recorded) goes.
        self.run("ROLLBACK TO SAVEPOINT past_version", &[]).await?;
        self.truncate_bookkeeping(kept);
        Ok(matched?
            .remove(&version_id)
            .unwrap_or_else(|| vec![false; criteria.len()]))
    }

    /// Queues deliveries, in the order given (each queue's order).
    pub async fn queue_deliveries(&self, deliveries: &[NewDelivery<'_>]) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let column =
            |f: fn(&NewDelivery<'_>) -> Uuid| deliveries.iter().map(f).collect::<Vec<Uuid>>();
        let subscriptions = column(|d| d.subscription_id);
        let projects = column(|d| d.event.project_id);
        let resources = column(|d| d.event.resource_id);
        let versions = column(|d| d.version_id);
        let channels: Vec<&str> = deliveries.iter().map(|d| d.channel).collect();
        let types: Vec<&str> = deliveries
            .iter()
            .map(|d| d.event.resource_type.as_str())
            .collect();
        let interactions: Vec<&str> = deliveries
            .iter()
            .map(|d| d.event.interaction.as_str())
            .collect();
        let recorded: Vec<DateTime<Utc>> = deliveries.iter().map(|d| d.event.recorded_at).collect();
        self.run(
            "INSERT INTO subscription_delivery
                (subscription_id, channel, project_id, resource_type, resource_id, version_id, interaction, recorded_at)
             SELECT s, c, p, t, r, v, i, a
             FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::uuid[], $6::uuid[], $7::text[], $8::timestamptz[])
                  WITH ORDINALITY AS x (s, c, p, t, r, v, i, a, n)
             ORDER BY n",
            &[
                &subscriptions,
                &channels,
                &projects,
                &types,
                &resources,
                &versions,
                &interactions,
                &recorded,
            ],
        )
        .await?;
        Ok(())
    }

    /// Wakes the delivery dispatchers of every instance at this transaction's
    /// commit.
    pub async fn announce_deliveries(&self) -> Result<()> {
        self.run("SELECT pg_notify($1, $2)", &[&CHANNEL, &DELIVERIES])
            .await?;
        Ok(())
    }

    pub async fn forget_events(&self, seqs: &[i64]) -> Result<()> {
        self.run(
            "DELETE FROM subscription_event WHERE seq = ANY($1)",
            &[&seqs],
        )
        .await?;
        Ok(())
    }

    /// Leases up to `limit` queues whose head (oldest pending notification)
    /// is due and whose subscription no one holds: a lease row each,
    /// `holder`'s for `lease`, taken in this one statement, so no one of any
    /// instance takes those queues until they are given back
    /// ([`Tx::release_lease`]) or expire. The heads are found by a skip scan
    /// of the pending index, one probe per subscription with pending
    /// notifications, not a walk of every pending row. The heads' row locks
    /// (`SKIP LOCKED`) keep concurrent claims off each other's heads, and
    /// the upsert refuses a lease another claim took since this statement's
    /// snapshot. rest-hooks any instance delivers; websocket notifications
    /// only an instance where a client is bound to the subscription
    /// (`sockets`). Oldest heads first.
    pub async fn claim_queues(
        &self,
        limit: i64,
        sockets: &[Uuid],
        holder: Uuid,
        lease: Duration,
    ) -> Result<Vec<Leased>> {
        let rows = self
            .run(
                "WITH RECURSIVE queue AS (
                    (SELECT d.subscription_id, d.seq FROM subscription_delivery d
                     WHERE d.finished_at IS NULL ORDER BY d.subscription_id, d.seq LIMIT 1)
                    UNION ALL
                    SELECT n.subscription_id, n.seq FROM queue q, LATERAL (
                        SELECT d.subscription_id, d.seq FROM subscription_delivery d
                        WHERE d.finished_at IS NULL AND d.subscription_id > q.subscription_id
                        ORDER BY d.subscription_id, d.seq LIMIT 1
                    ) n
                 ), head AS (
                    SELECT d.subscription_id, d.project_id FROM queue q
                    JOIN subscription_delivery d ON d.seq = q.seq
                    WHERE d.finished_at IS NULL AND d.next_attempt_at <= now()
                      AND (d.channel = 'rest-hook' OR d.subscription_id = ANY($2))
                      AND NOT EXISTS (SELECT 1 FROM subscription_lease l
                                      WHERE l.subscription_id = d.subscription_id
                                        AND l.until > now())
                    ORDER BY d.seq LIMIT $1 FOR UPDATE OF d SKIP LOCKED
                 ), leased AS (
                    INSERT INTO subscription_lease (subscription_id, holder, until)
                    SELECT subscription_id, $3, clock_timestamp() + make_interval(secs => $4)
                    FROM head
                    ON CONFLICT (subscription_id) DO UPDATE
                        SET holder = EXCLUDED.holder, until = EXCLUDED.until
                        WHERE subscription_lease.until <= clock_timestamp()
                    RETURNING subscription_id
                 )
                 SELECT head.subscription_id, head.project_id FROM head JOIN leased USING (subscription_id)",
                &[&limit, &sockets, &holder, &lease.as_secs_f64()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Leased {
                subscription_id: row.get(0),
                project_id: row.get(1),
                holder,
            })
            .collect())
    }

    /// Up to `limit` of a leased queue's first notifications, in order.
    pub async fn queue_batch(&self, queue: &Leased, limit: i64) -> Result<Vec<Delivery>> {
        let rows = self
            .run(
                "SELECT seq, subscription_id, project_id, resource_type, resource_id, version_id,
                        interaction, recorded_at, attempts
                 FROM subscription_delivery
                 WHERE project_id = $1 AND subscription_id = $2 AND finished_at IS NULL
                 ORDER BY seq LIMIT $3",
                &[&queue.project_id, &queue.subscription_id, &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| Delivery {
                seq: row.get(0),
                subscription_id: row.get(1),
                project_id: row.get(2),
                resource_type: row.get(3),
                resource_id: row.get(4),
                version_id: row.get(5),
                interaction: row.get(6),
                recorded_at: row.get(7),
                attempts: row.get(8),
            })
            .collect())
    }

    /// Extends a lease by `lease` from now; false if it is no longer
    /// `queue.holder`'s (it expired and another claim took it).
    pub async fn renew_lease(&self, queue: &Leased, lease: Duration) -> Result<bool> {
        let renewed = self
            .run(
                "UPDATE subscription_lease SET until = clock_timestamp() + make_interval(secs => $3)
                 WHERE subscription_id = $1 AND holder = $2 RETURNING 1",
                &[&queue.subscription_id, &queue.holder, &lease.as_secs_f64()],
            )
            .await?;
        Ok(!renewed.is_empty())
    }

    /// Gives a subscription's queue back (if the lease is still its holder's).
    pub async fn release_lease(&self, queue: &Leased) -> Result<()> {
        self.run(
            "DELETE FROM subscription_lease WHERE subscription_id = $1 AND holder = $2",
            &[&queue.subscription_id, &queue.holder],
        )
        .await?;
        Ok(())
    }

    /// Records a failed attempt (or, for `Finished("dropped", …)`, none).
    pub async fn record_attempt(&self, seq: i64, attempted: &Attempted) -> Result<()> {
        let (outcome, retry_in, error, counts): (Option<&str>, Option<f64>, Option<&str>, i32) =
            match attempted {
                Attempted::Retry(delay, error) => {
                    (None, Some(delay.as_secs_f64()), Some(error.as_str()), 1)
                }
                Attempted::Finished(outcome, error) => (
                    Some(*outcome),
                    None,
                    Some(error.as_str()),
                    i32::from(*outcome == "failed"),
                ),
            };
        self.run(
            "UPDATE subscription_delivery SET attempts = attempts + $2,
                finished_at = CASE WHEN $3::text IS NULL THEN NULL ELSE clock_timestamp() END,
                outcome = $3, last_error = $4,
                next_attempt_at = clock_timestamp() + make_interval(secs => coalesce($5::float8, 0))
             WHERE seq = $1",
            &[&seq, &counts, &outcome, &error, &retry_in],
        )
        .await?;
        Ok(())
    }

    /// Records successful attempts.
    pub async fn record_delivered(&self, seqs: &[i64]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.run(
            "UPDATE subscription_delivery SET attempts = attempts + 1, finished_at = clock_timestamp(),
                outcome = 'delivered', last_error = NULL
             WHERE seq = ANY($1)",
            &[&seqs],
        )
        .await?;
        Ok(())
    }

    /// Drops every pending notification of a subscription (it stopped).
    pub async fn drop_pending(&self, subscription_id: Uuid, reason: &str) -> Result<()> {
        self.run(
            "UPDATE subscription_delivery SET finished_at = clock_timestamp(), outcome = 'dropped',
                last_error = $2
             WHERE subscription_id = $1 AND finished_at IS NULL",
            &[&subscription_id, &reason],
        )
        .await?;
        Ok(())
    }

    /// Ends this transaction without a trace, its connection back to the
    /// pool (dropping a `Tx` closes it instead).
    pub async fn rollback(mut self) -> Result<()> {
        if let Some(client) = self.client.get() {
            if self.begun.load(std::sync::atomic::Ordering::Acquire) {
                client.batch_execute("ROLLBACK").await?;
            }
        }
        drop(self.client.take());
        Ok(())
    }

    /// How much this transaction has noted for its commit (changes, creates,
    /// unsent resources).
    fn bookkeeping_len(&self) -> (usize, usize, usize) {
        (
            super::lock(&self.changes).len(),
            super::lock(&self.created).len(),
            super::lock(&self.pending).len(),
        )
    }

    /// Forgets what was noted after [`Tx::bookkeeping_len`] said `kept`.
    fn truncate_bookkeeping(&self, kept: (usize, usize, usize)) {
        super::lock(&self.changes).truncate(kept.0);
        super::lock(&self.created).truncate(kept.1);
        super::lock(&self.pending).truncate(kept.2);
    }
}

impl Store {
    /// Forgets finished deliveries older than `age` and leases expired that
    /// long, and drops websocket notifications no client came for within
    /// `age`; how many.
    pub async fn clean_deliveries(&self, age: Duration) -> Result<u64> {
        let client = self.pool.get().await?;
        let dropped = client
            .traced_execute(
                "UPDATE subscription_delivery SET finished_at = clock_timestamp(), outcome = 'dropped',
                    last_error = 'no websocket client was bound to the subscription'
                 WHERE finished_at IS NULL AND channel = 'websocket'
                   AND recorded_at < now() - make_interval(secs => $1)",
                &[&age.as_secs_f64()],
            )
            .await?;
        let forgotten = client
            .traced_execute(
                "DELETE FROM subscription_delivery
                 WHERE finished_at < now() - make_interval(secs => $1)",
                &[&age.as_secs_f64()],
            )
            .await?;
        // Leases of tasks that died, on subscriptions no one claims again.
        let expired = client
            .execute(
                "DELETE FROM subscription_lease WHERE until < now() - make_interval(secs => $1)",
                &[&age.as_secs_f64()],
            )
            .await?;
        Ok(dropped + forgotten + expired)
    }
}

/// A search's filters as a row filter: every one must hold.
fn one_branch(filters: &[Filter]) -> RowFilter<'_> {
    if filters.is_empty() {
        return RowFilter::All;
    }
    RowFilter::AnyOf(vec![Branch {
        types: Types::Any,
        filters,
    }])
}

/// `application_name` of the listening connection.
const LISTENER_NAME: &str = "fhirgate subscription listener";

/// The payload of the fan-out's notification: deliveries were queued (the
/// triggers' events notify with an empty payload).
const DELIVERIES: &str = "deliveries";

/// Listens on [`CHANNEL`] and bumps `events` at each event the triggers
/// announce and `deliveries` at each batch the fan-out queued (both once
/// listening, for what was recorded before), until they are gone;
/// reconnects after a second when the connection fails (the dispatchers poll
/// meanwhile).
pub fn spawn_listener(
    config: tokio_postgres::Config,
    events: std::sync::Weak<tokio::sync::watch::Sender<u64>>,
    deliveries: std::sync::Weak<tokio::sync::watch::Sender<u64>>,
) {
    tokio::spawn(async move {
        let bump = |wake: &std::sync::Weak<tokio::sync::watch::Sender<u64>>| match wake.upgrade() {
            Some(wake) => {
                wake.send_modify(|n| *n = n.wrapping_add(1));
                true
            }
            None => false,
        };
        loop {
            let reason = super::changes::listen_on(
                &config,
                CHANNEL,
                LISTENER_NAME,
                || bump(&events) && bump(&deliveries),
                |payload| {
                    if payload == DELIVERIES {
                        bump(&deliveries)
                    } else {
                        bump(&events)
                    }
                },
            )
            .await;
            if events.strong_count() == 0 {
                return;
            }
            tracing::warn!(%reason, "not hearing subscription events; polling until the listener reconnects");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}
