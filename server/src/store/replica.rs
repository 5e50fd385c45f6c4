//! Reads on a streaming replica (`FHIRGATE_READ_DATABASE_URL`), with
//! read-your-writes: a caller's reads go to the replica only once it has
//! replayed the caller's last write, else they wait (bounded) for it to,
//! then go to the primary. A replica that does not answer is left out until
//! it does. Only reads by id, searches and history come here; everything a
//! decision rests on (sessions, policies, writes) reads the primary.
//! The guarantee and its limits: `docs/replicas.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use uuid::Uuid;

use super::{lookup_connection, run_on, statistics, Executor, Query, Store};
use crate::error::{is_unavailable, Error, Result};

/// How often the replica's replay position is read.
const POLL: Duration = Duration::from_millis(20);

/// A position in PostgreSQL's write-ahead log (`pg_lsn`), as a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// PostgreSQL's text form, `16/B374D848`.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (high, low) = text.trim().split_once('/')?;
        let high = u32::from_str_radix(high, 16).ok()?;
        let low = u32::from_str_radix(low, 16).ok()?;
        Some(Lsn((u64::from(high) << 32) | u64::from(low)))
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The replica: its pools, how far it has replayed, and each caller's last
/// write on this instance.
pub struct Replica {
    /// For threads that are not HTTP workers.
    pool: Pool,
    /// One per HTTP worker, the same index as the worker's primary pool.
    worker_pools: Vec<Pool>,
    /// The last replay position read, while the replica answers.
    replayed: tokio::sync::watch::Sender<Lsn>,
    up: AtomicBool,
    /// How long a read waits for the replica to replay its caller's write.
    wait: Duration,
    /// Callers' last writes not yet known to be replayed.
    written: Mutex<HashMap<Uuid, Lsn>>,
}

thread_local! {
    /// This worker thread's shared lookup connections to the replica.
    static REPLICA_LOOKUPS: std::cell::RefCell<Vec<Arc<Object>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Replica {
    pub fn new(pool: Pool, worker_pools: Vec<Pool>, wait: Duration) -> Arc<Replica> {
        let replica = Arc::new(Replica {
            pool,
            worker_pools,
            replayed: tokio::sync::watch::Sender::new(Lsn::default()),
            up: AtomicBool::new(false),
            wait,
            written: Mutex::default(),
        });
        spawn_poller(Arc::downgrade(&replica));
        replica
    }

    /// Whether the replica answered its last poll.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Records a caller's write at `lsn`.
    pub fn wrote(&self, caller: Uuid, lsn: Lsn) {
        if lsn <= *self.replayed.borrow() {
            return;
        }
        let mut written = super::lock(&self.written);
        let last = written.entry(caller).or_default();
        *last = (*last).max(lsn);
    }

    /// The position a caller's reads must see: its last write here, or what
    /// the client says it wrote elsewhere (`X-Fhirgate-Lsn`), whichever is later.
    pub fn read_after(&self, caller: Uuid, told: Option<Lsn>) -> Option<Lsn> {
        let remembered = super::lock(&self.written).get(&caller).copied();
        remembered.max(told)
    }

    /// Whether a read that must see `after` may run here: once the replica
    /// has replayed that far, waiting at most `wait`.
    async fn serves(&self, after: Option<Lsn>) -> bool {
        if !self.is_up() {
            return false;
        }
        let Some(after) = after else {
            return true;
        };
        let mut replayed = self.replayed.subscribe();
        let caught_up = tokio::time::timeout(self.wait, replayed.wait_for(|r| *r >= after));
        matches!(caught_up.await, Ok(Ok(_))) && self.is_up()
    }

    /// The pool of the HTTP worker `worker`, or the shared one.
    fn pool(&self, worker: Option<usize>) -> &Pool {
        worker.map_or(&self.pool, |index| &self.worker_pools[index])
    }

    fn went_down(&self, error: &Error) {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(%error, "the read replica does not answer; reading from the primary");
        }
    }

    /// Reads the replay position; forgets the writes it covers.
    async fn poll(&self) -> Result<()> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT pg_last_wal_replay_lsn()::text", &[])
            .await?;
        let replayed = row
            .get::<_, Option<&str>>(0)
            .and_then(Lsn::parse)
            .ok_or_else(|| Error::Internal("the read database is not a replica".into()))?;
        self.replayed.send_replace(replayed);
        super::lock(&self.written).retain(|_, lsn| *lsn > replayed);
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(%replayed, "reading from the replica");
        }
        Ok(())
    }
}

fn spawn_poller(replica: Weak<Replica>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(replica) = replica.upgrade() else {
                return;
            };
            if let Err(e) = replica.poll().await {
                replica.went_down(&e);
            }
        }
    });
}

/// Reads by id, searches and history for one caller: on the replica when it
/// is up and has replayed `after`, else on the primary; a read the replica
/// fails to answer is run again on the primary.
pub struct ReplicaReads<'a> {
    store: &'a Store,
    after: Option<Lsn>,
    /// Whether the replica may serve: decided at the first statement, so
    /// that a request waits at most once and reads one server.
    replica_serves: tokio::sync::OnceCell<bool>,
}

impl Store {
    /// Reads that see everything up to `after` (the caller's last write).
    pub fn reads_after(&self, after: Option<Lsn>) -> ReplicaReads<'_> {
        ReplicaReads {
            store: self,
            after,
            replica_serves: tokio::sync::OnceCell::new(),
        }
    }

    /// The read replica, when one is configured.
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_deref()
    }

    /// The primary's write position now: at or past every commit that has
    /// returned.
    pub async fn primary_lsn(&self) -> Result<Lsn> {
        let rows = self
            .query(&Query::new("SELECT pg_current_wal_lsn()::text"))
            .await?;
        rows.first()
            .and_then(|row| Lsn::parse(row.get(0)))
            .ok_or_else(|| Error::Internal("pg_current_wal_lsn() gave no position".into()))
    }
}

impl ReplicaReads<'_> {
    /// Runs `read` on the replica's pool when it may serve, else (or when
    /// the replica fails under it) `fallback` on the primary.
    async fn route<T>(
        &self,
        on_replica: impl AsyncFnOnce(&Pool) -> Result<T>,
        on_primary: impl AsyncFnOnce() -> Result<T>,
    ) -> Result<T> {
        let Some(replica) = self.store.replica.as_deref() else {
            return on_primary().await;
        };
        let serves = self
            .replica_serves
            .get_or_init(|| replica.serves(self.after))
            .await;
        if !*serves || !replica.is_up() {
            return on_primary().await;
        }
        match on_replica(replica.pool(self.store.worker_index())).await {
            Err(e) if unreachable(&e) => {
                replica.went_down(&e);
                on_primary().await
            }
            // Replay removed rows the statement still needed ("conflict
            // with recovery"): the primary has no such conflict.
            Err(Error::Database(e))
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) =>
            {
                on_primary().await
            }
            result => result,
        }
    }
}

/// The replica is unreachable or went away (not: refused the statement).
fn unreachable(error: &Error) -> bool {
    match error {
        Error::Pool(_) => true,
        Error::Database(e) => is_unavailable(e),
        _ => false,
    }
}

impl Executor for ReplicaReads<'_> {
    async fn query(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>> {
        self.route(
            async |pool| Ok(run_on(&pool.get().await?, query).await?),
            async || self.store.query(query).await,
        )
        .await
    }

    async fn lookup(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>> {
        self.route(
            async |pool| match self.store.worker_index() {
                Some(_) => {
                    Ok(run_on(&*lookup_connection(pool, &REPLICA_LOOKUPS).await?, query).await?)
                }
                None => Ok(run_on(&pool.get().await?, query).await?),
            },
            async || self.store.lookup(query).await,
        )
        .await
    }

    async fn project_estimate(&self, project: Uuid) -> statistics::ProjectEstimate {
        self.store.project_estimate(project).await
    }
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn lsns_parse_and_print_as_postgresql_does() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.0, (0x16 << 32) | 0xB374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!(Lsn::parse("0/3000000").unwrap() < lsn);
        assert_eq!(Lsn::parse("nonsense"), None);
        assert_eq!(Lsn::parse("1/"), None);
    }
}
