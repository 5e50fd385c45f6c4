//! All SQL that touches resources lives here. Every function takes the
//! caller's [`Tenant`], and every statement filters by it, so no query can
//! forget the project.

pub mod binary;
pub mod changes;
pub mod connect;
pub mod export;
pub mod identity;
mod index;
pub mod lifecycle;
pub mod maintenance;
pub mod mfa;
pub mod replica;
pub mod search;
mod statistics;
mod stream;
pub mod subscriptions;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use access_policy::RowFilter;
use changes::{Change, ChangeObserver};
use chrono::{DateTime, Utc};
use deadpool_postgres::{Object, Pool};
use tokio_postgres::types::ToSql;
use tracing::Instrument;
use uuid::Uuid;

use crate::error::{Error, Result};

/// Whose data a statement may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tenant {
    Project(Uuid),
    /// Super admins cross projects.
    AllProjects,
}

/// One version of a resource as stored. `content` is `None` for a deletion.
#[derive(Debug, Clone)]
pub struct Version {
    pub project_id: Uuid,
    pub resource_type: String,
    pub id: Uuid,
    pub version_id: Uuid,
    pub last_updated: DateTime<Utc>,
    pub content: Option<String>,
}

impl Version {
    fn from_row(row: &tokio_postgres::Row) -> Version {
        Version {
            project_id: row.get("project_id"),
            resource_type: row.get("resource_type"),
            id: row.get("id"),
            version_id: row.get("version_id"),
            last_updated: row.get("last_updated"),
            content: row.get("content"),
        }
    }

    pub fn is_deleted(&self) -> bool {
        self.content.is_none()
    }
}

/// A new version to write: `content: None` deletes.
pub struct Write<'a> {
    pub project_id: Uuid,
    pub resource_type: &'a str,
    pub id: Uuid,
    pub version_id: Uuid,
    pub last_updated: DateTime<Utc>,
    pub content: Option<&'a str>,
}

/// Which versions a history request lists, newest first.
pub struct HistoryFilter<'a> {
    pub resource_type: Option<&'a str>,
    pub id: Option<Uuid>,
    pub since: Option<DateTime<Utc>>,
    /// Keyset cursor: only versions strictly older than this one.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    /// The caller's policy for history: a version is listed when the
    /// resource's current row passes it.
    pub policy: &'a RowFilter<'a>,
    pub limit: i64,
}

/// A signing key row.
pub struct SigningKeyRow {
    pub kid: String,
    pub private_pem: String,
    pub public_jwk: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Builds one parameterised statement: text plus its bound values, numbered as
/// they are added so a filter can never be spliced in as text.
struct Query {
    sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Query {
    fn new(sql: &str) -> Query {
        Query {
            sql: sql.into(),
            params: Vec::new(),
        }
    }

    fn push(&mut self, sql: &str) -> &mut Query {
        self.sql.push_str(sql);
        self
    }

    fn bind<T: ToSql + Sync + Send + 'static>(&mut self, value: T) -> &mut Query {
        self.params.push(Box::new(value));
        self.sql.push_str(&format!("${}", self.params.len()));
        self
    }

    /// Registers a value and returns its placeholder, for SQL that uses the
    /// same value more than once.
    fn placeholder<T: ToSql + Sync + Send + 'static>(&mut self, value: T) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// `project` as `estimate` says to name it: `$n`, or `(SELECT $n::uuid)`,
    /// a value the planner does not see and so estimates as an average one,
    /// or the column of the walk over every project (`project` unused).
    fn bind_project(&mut self, project: Uuid, estimate: statistics::ProjectEstimate) -> &mut Query {
        match estimate {
            statistics::ProjectEstimate::Known => self.bind(project),
            statistics::ProjectEstimate::Unknown => {
                self.push("(SELECT ").bind(project).push("::uuid)")
            }
            statistics::ProjectEstimate::EachProject => self.push(search::EACH_PROJECT),
        }
    }

    fn tenant(&mut self, tenant: Tenant) -> &mut Query {
        if let Tenant::Project(project_id) = tenant {
            self.push(" AND project_id = ").bind(project_id);
        }
        self
    }

    /// ` AND …`: a history row `h` whose resource's current row passes `filter`.
    fn current_passes(&mut self, filter: &RowFilter<'_>) -> Result<&mut Query> {
        match filter {
            RowFilter::All => {}
            RowFilter::Nothing => {
                self.push(" AND FALSE");
            }
            RowFilter::AnyOf(_) => {
                self.push(" AND EXISTS (SELECT 1 FROM resource r WHERE r.project_id = h.project_id AND r.resource_type = h.resource_type AND r.id = h.id");
                search::row_condition(self, "r", filter)?;
                self.push(")");
            }
        }
        Ok(self)
    }

    fn values(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// Runs a statement: the pool (reads outside a write) or an open write
/// transaction (reads that must see the transaction's own writes).
trait Executor {
    async fn query(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>>;

    /// A read by primary key ([`Store`] pipelines them).
    async fn lookup(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>> {
        self.query(query).await
    }

    /// How statements name `project` to the planner (`store::statistics`).
    async fn project_estimate(&self, project: Uuid) -> statistics::ProjectEstimate;
}

const VERSION_COLUMNS: &str =
    "project_id, resource_type, id, version_id, last_updated, CASE WHEN deleted THEN NULL ELSE content END AS content";
const HISTORY_COLUMNS: &str = "project_id, resource_type, id, version_id, last_updated, content";

/// Connection counts across a store's pools.
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolStatus {
    pub max: usize,
    pub size: usize,
    pub in_use: usize,
    pub waiting: usize,
}

#[derive(Clone)]
pub struct Store {
    /// For threads that are not HTTP workers: start-up, maintenance.
    pool: Pool,
    /// One pool per HTTP worker thread ([`Store::adopt_worker_thread`]).
    worker_pools: Arc<WorkerPools>,
    /// Told of every committed write sessions depend on.
    observer: Option<Arc<dyn ChangeObserver>>,
    group: Arc<GroupCommit>,
    statistics: Arc<statistics::Statistics>,
    /// Where reads by id, searches and history may go (`store::replica`).
    replica: Option<Arc<replica::Replica>>,
    /// Bumped after each committed write: the subscription fan-out wakes on
    /// it. The triggers that record subscription events do not `NOTIFY`,
    /// because a notifying transaction holds PostgreSQL's global notify lock
    /// through its commit, which serialized every watched write's commit
    /// (no group commit).
    committed: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Creates in one project before the first `ANALYZE` they start
/// ([`Store::analyzing_after`]).
pub const DEFAULT_ANALYZE_AFTER: u64 = 1_000;

#[derive(Default)]
struct WorkerPools {
    pools: Vec<Pool>,
    adopted: std::sync::atomic::AtomicUsize,
}

thread_local! {
    /// The worker pool this thread adopted: its `WorkerPools` (by address) and index.
    static WORKER_POOL: std::cell::Cell<Option<(usize, usize)>> = const { std::cell::Cell::new(None) };
    /// This worker thread's shared lookup connections ([`Store::lookup`]),
    /// from the pool it adopted (a thread adopts one pool, once).
    static LOOKUP_CONNECTIONS: std::cell::RefCell<Vec<Arc<Object>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// How many connections of its pool a worker thread's lookups share: one
/// left the CPU idle while its backend worked through a queue; more than
/// two did not read faster (measured on 2 cores).
const LOOKUP_CONNECTIONS_PER_WORKER: usize = 2;

/// The least busy of this thread's lookup connections (busy: how many
/// lookups hold it), opening them from `pool` until there are enough.
async fn lookup_connection(
    pool: &Pool,
    shared: &'static std::thread::LocalKey<std::cell::RefCell<Vec<Arc<Object>>>>,
) -> Result<Arc<Object>> {
    // A small pool keeps a connection for everything else: lookups that
    // held all of them would leave searches and writes waiting until
    // FHIRGATE_QUEUE_TIMEOUT, every time.
    let kept = LOOKUP_CONNECTIONS_PER_WORKER.min(pool.status().max_size.saturating_sub(1));
    let least_busy = shared.with_borrow_mut(|connections| {
        connections.retain(|c| !c.is_closed());
        (connections.len() >= kept.max(1))
            .then(|| {
                connections
                    .iter()
                    .min_by_key(|c| Arc::strong_count(c))
                    .cloned()
            })
            .flatten()
    });
    if let Some(connection) = least_busy {
        return Ok(connection);
    }
    let connection = Arc::new(pool.get().await?);
    // Lookups that asked at once all opened one; the extras serve their
    // lookup and go back to the pool.
    shared.with_borrow_mut(|connections| {
        if connections.len() < kept {
            connections.push(connection.clone());
        }
    });
    Ok(connection)
}

/// Logs a statement's text (never its values) at trace level under the
/// target `fhirgate::sql`, inside the request's span: with
/// `FHIRGATE_LOG_LEVEL=info,fhirgate::sql=trace` the log shows every
/// statement each request runs (`server/tests/tenancy_sql.rs` checks them).
fn trace_statement(sql: &str) {
    tracing::trace!(target: "fhirgate::sql", sql, "statement");
}

/// Statements on a connection of their own, outside a [`Tx`] (`$export`,
/// background jobs): logged as [`trace_statement`] logs every other, so the
/// check of `server/tests/tenancy_sql.rs` sees them too.
pub(crate) trait Traced {
    async fn traced_execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, tokio_postgres::Error>;
    async fn traced_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>;
}

impl Traced for tokio_postgres::Client {
    async fn traced_execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        trace_statement(sql);
        self.execute(sql, params).await
    }

    async fn traced_query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        trace_statement(sql);
        self.query(sql, params).await
    }
}

async fn run_on(
    client: &Object,
    query: &Query,
) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    trace_statement(&query.sql);
    timed(async {
        let statement = client.prepare_cached(&query.sql).await?;
        client.query(&statement, &query.values()).await
    })
    .await
}

tokio::task_local! {
    /// The SQL statements of the request this task serves, for the log line
    /// of a slow request (`FHIRGATE_SLOW_REQUEST_MS`).
    pub static STATEMENTS: Arc<StatementTally>;
}

/// How many statements a request ran and how long they took in all.
#[derive(Debug, Default)]
pub struct StatementTally {
    count: std::sync::atomic::AtomicU64,
    micros: std::sync::atomic::AtomicU64,
}

impl StatementTally {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn millis(&self) -> f64 {
        self.micros.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

/// Runs a statement, adding it to the request's tally when there is one.
async fn timed<T>(statement: impl std::future::Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let output = statement.await;
    let _ = STATEMENTS.try_with(|tally| {
        tally.count.fetch_add(1, Ordering::Relaxed);
        tally
            .micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    });
    output
}

impl Executor for Store {
    async fn query(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>> {
        Ok(run_on(&self.pool().get().await?, query).await?)
    }

    /// Runs a primary-key lookup. On an HTTP worker thread it shares a
    /// connection with the thread's other lookups, and tokio-postgres
    /// pipelines them: one backend answers a burst of lookups from one read
    /// of its socket instead of each waking a backend of its own (measured
    /// on 2 cores: PostgreSQL's CPU per read by id 35–46 → 21–27 µs, reads
    /// +30%). Searches keep a connection each: their cost varies too much to
    /// queue others behind them (shared, name-search p99 went from 15 to
    /// 20–28 ms). A lookup only reads, so one whose connection was closed
    /// under it is retried once on another.
    async fn lookup(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>> {
        let Some(pool) = self.worker_pool() else {
            return self.query(query).await;
        };
        let connection = lookup_connection(pool, &LOOKUP_CONNECTIONS).await?;
        match run_on(&connection, query).await {
            Err(_) if connection.is_closed() => {
                Ok(run_on(&*lookup_connection(pool, &LOOKUP_CONNECTIONS).await?, query).await?)
            }
            result => Ok(result?),
        }
    }

    async fn project_estimate(&self, project: Uuid) -> statistics::ProjectEstimate {
        self.statistics.estimate(project).await
    }
}

impl Executor for Tx {
    async fn query(&self, query: &Query) -> Result<Vec<tokio_postgres::Row>> {
        self.run(&query.sql, &query.values()).await
    }

    async fn project_estimate(&self, project: Uuid) -> statistics::ProjectEstimate {
        self.statistics.estimate(project).await
    }
}

/// Reads by id and searches: on the pool ([`Store`]), or inside an open
/// write transaction ([`Tx`]), which sees its own writes (a transaction
/// Bundle's GET entries run after its writes, before its commit).
#[allow(async_fn_in_trait)] // Their futures run on the worker that made them (actix): none needs Send.
pub trait Reads {
    /// The current version (deleted ones included, so the caller can say
    /// 410), if `filter` admits it.
    async fn read(
        &self,
        tenant: Tenant,
        resource_type: &str,
        id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<Option<Version>>;

    /// One version, current or superseded, if `filter` admits its resource.
    async fn vread(
        &self,
        tenant: Tenant,
        resource_type: &str,
        id: Uuid,
        version_id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<Option<Version>>;

    /// The live resources of one type with these ids, in one tenant.
    async fn read_live_many(
        &self,
        tenant: Tenant,
        resource_type: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, String)>>;

    /// One page of a search, with what it includes.
    async fn search(&self, sq: &search::SearchQuery<'_>) -> Result<search::SearchPage>;

    /// Versions newest first, at most `filter.limit`.
    async fn history(&self, tenant: Tenant, filter: &HistoryFilter<'_>) -> Result<Vec<Version>>;
}

impl<E: Executor> Reads for E {
    async fn read(
        &self,
        tenant: Tenant,
        resource_type: &str,
        id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<Option<Version>> {
        let q = current_query(tenant, resource_type, id, filter)?;
        Ok(self.lookup(&q).await?.first().map(Version::from_row))
    }

    async fn vread(
        &self,
        tenant: Tenant,
        resource_type: &str,
        id: Uuid,
        version_id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<Option<Version>> {
        let q = versions_query(tenant, filter, |q| {
            q.push(" AND resource_type = ")
                .bind(resource_type.to_string())
                .push(" AND id = ")
                .bind(id)
                .push(" AND version_id = ")
                .bind(version_id);
        })?;
        Ok(self.lookup(&q).await?.first().map(Version::from_row))
    }

    async fn read_live_many(
        &self,
        tenant: Tenant,
        resource_type: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, String)>> {
        let mut q = Query::new("SELECT id, content FROM resource WHERE resource_type = ");
        q.bind(resource_type.to_string())
            .push(" AND id = ANY(")
            .bind(ids.to_vec())
            .push(") AND NOT deleted")
            .tenant(tenant);
        Ok(self
            .query(&q)
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect())
    }

    async fn search(&self, sq: &search::SearchQuery<'_>) -> Result<search::SearchPage> {
        search::run(self, sq).await
    }

    async fn history(&self, tenant: Tenant, filter: &HistoryFilter<'_>) -> Result<Vec<Version>> {
        let mut q = versions_query(tenant, filter.policy, |q| {
            if let Some(resource_type) = filter.resource_type {
                q.push(" AND resource_type = ")
                    .bind(resource_type.to_string());
            }
            if let Some(id) = filter.id {
                q.push(" AND id = ").bind(id);
            }
            if let Some(since) = filter.since {
                q.push(" AND last_updated >= ").bind(since);
            }
            if let Some((last_updated, version_id)) = filter.before {
                q.push(" AND (last_updated, version_id) < (")
                    .bind(last_updated)
                    .push(", ")
                    .bind(version_id)
                    .push(")");
            }
            q.push(" ORDER BY last_updated DESC, version_id DESC LIMIT ")
                .bind(filter.limit);
        })?;
        q.push(" ORDER BY last_updated DESC, version_id DESC LIMIT ")
            .bind(filter.limit);
        Ok(self
            .query(&q)
            .await?
            .iter()
            .map(Version::from_row)
            .collect())
    }
}

impl Store {
    pub fn new(pool: Pool) -> Store {
        Store {
            statistics: Arc::new(statistics::Statistics::new(
                pool.clone(),
                DEFAULT_ANALYZE_AFTER,
            )),
            pool,
            worker_pools: Arc::default(),
            observer: None,
            group: Arc::default(),
            replica: None,
            committed: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// The signal bumped after each committed write of this instance.
    pub fn committed_writes(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        self.committed.clone()
    }

    /// The same store, with a read replica.
    pub fn with_replica(self, replica: Arc<replica::Replica>) -> Store {
        Store {
            replica: Some(replica),
            ..self
        }
    }

    /// The same store, analyzing the search tables when a project reaches
    /// `first_step` resources created (by every instance, counted in
    /// PostgreSQL), then ten times as many, and so on (0: never); see
    /// `store::statistics`.
    pub fn analyzing_after(self, first_step: u64) -> Store {
        Store {
            statistics: Arc::new(statistics::Statistics::new(self.pool.clone(), first_step)),
            ..self
        }
    }

    /// The same store, with a pool for each HTTP worker thread to adopt.
    pub fn with_worker_pools(self, pools: Vec<Pool>) -> Store {
        Store {
            worker_pools: Arc::new(WorkerPools {
                pools,
                adopted: Default::default(),
            }),
            ..self
        }
    }

    /// Called once on each HTTP worker thread: its queries use a pool of
    /// their own. A pool opens connections on the thread that asks for them,
    /// so the connection task and the request share a thread and a query
    /// wakes no other thread (measured on 2 cores: context switches were a
    /// sixth of a read's CPU).
    pub fn adopt_worker_thread(&self) {
        let pools = &self.worker_pools;
        if pools.pools.is_empty() {
            return;
        }
        let index = pools
            .adopted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % pools.pools.len();
        WORKER_POOL.set(Some((Arc::as_ptr(pools) as usize, index)));
    }

    fn pool(&self) -> &Pool {
        self.worker_pool().unwrap_or(&self.pool)
    }

    /// The connections of every pool of this store, summed (`/metrics`).
    pub fn pool_status(&self) -> PoolStatus {
        let mut total = PoolStatus::default();
        for pool in std::iter::once(&self.pool).chain(&self.worker_pools.pools) {
            let status = pool.status();
            total.max += status.max_size;
            total.size += status.size;
            total.in_use += status.size.saturating_sub(status.available);
            total.waiting += status.waiting;
        }
        total
    }

    /// The pool this HTTP worker thread adopted, if it is one of this store's.
    fn worker_pool(&self) -> Option<&Pool> {
        self.worker_index()
            .map(|index| &self.worker_pools.pools[index])
    }

    /// The index of the pool this HTTP worker thread adopted, if it is one
    /// of this store's.
    fn worker_index(&self) -> Option<usize> {
        match WORKER_POOL.get() {
            Some((owner, index)) if owner == Arc::as_ptr(&self.worker_pools) as usize => {
                Some(index)
            }
            _ => None,
        }
    }

    /// The same store, telling `observer` of this instance's committed
    /// changes the moment they commit.
    pub fn observed_by(self, observer: Arc<dyn ChangeObserver>) -> Store {
        Store {
            observer: Some(observer),
            ..self
        }
    }

    /// `SELECT 1`: whether the database answers.
    /// Whether PostgreSQL answers, on the start-up and maintenance pool, so
    /// that the answer does not wait behind requests queued for the
    /// workers' connections (`/healthcheck` under overload).
    pub async fn ping(&self) -> Result<()> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// [`Reads::read`] on the pool, callable without the trait in scope.
    pub async fn read(
        &self,
        tenant: Tenant,
        resource_type: &str,
        id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<Option<Version>> {
        Reads::read(self, tenant, resource_type, id, filter).await
    }

    /// [`Reads::search`] on the pool, callable without the trait in scope.
    pub async fn search(&self, sq: &search::SearchQuery<'_>) -> Result<search::SearchPage> {
        Reads::search(self, sq).await
    }

    /// Whether any Project exists: false only on an empty database.
    pub async fn any_project(&self) -> Result<bool> {
        let q = Query::new("SELECT 1 FROM resource WHERE resource_type = 'Project' LIMIT 1");
        Ok(!self.query(&q).await?.is_empty())
    }

    /// The super-admin Project (the first one bootstrapped), if any.
    pub async fn super_admin_project(&self) -> Result<Option<Uuid>> {
        let q = Query::new(
            "SELECT id FROM resource WHERE resource_type = 'Project' AND project_id = id \
             AND NOT deleted AND (content::jsonb) ->> 'superAdmin' = 'true' \
             ORDER BY last_updated LIMIT 1",
        );
        Ok(self.query(&q).await?.first().map(|row| row.get(0)))
    }

    pub async fn secret_hash(
        &self,
        resource_type: &str,
        id: Uuid,
        kind: &str,
    ) -> Result<Option<String>> {
        let mut q = Query::new("SELECT hash FROM resource_secret WHERE resource_type = ");
        q.bind(resource_type.to_string())
            .push(" AND resource_id = ")
            .bind(id)
            .push(" AND kind = ")
            .bind(kind.to_string());
        Ok(self.query(&q).await?.first().map(|row| row.get(0)))
    }

    /// A secret's hash if it was set after `since`.
    pub async fn secret_hash_since(
        &self,
        resource_type: &str,
        id: Uuid,
        kind: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>> {
        let mut q = Query::new("SELECT hash FROM resource_secret WHERE resource_type = ");
        q.bind(resource_type.to_string())
            .push(" AND resource_id = ")
            .bind(id)
            .push(" AND kind = ")
            .bind(kind.to_string())
            .push(" AND updated_at > ")
            .bind(since);
        Ok(self.query(&q).await?.first().map(|row| row.get(0)))
    }

    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>> {
        let q = Query::new(
            "SELECT kid, private_pem, public_jwk, created_at FROM signing_key WHERE active ORDER BY created_at DESC, kid",
        );
        Ok(self
            .query(&q)
            .await?
            .iter()
            .map(|row| SigningKeyRow {
                kid: row.get(0),
                private_pem: row.get(1),
                public_jwk: row.get(2),
                created_at: row.get(3),
            })
            .collect())
    }

    pub async fn signing_key_exists(&self, kid: &str) -> Result<bool> {
        let mut q = Query::new("SELECT 1 FROM signing_key WHERE active AND kid = ");
        q.bind(kid.to_string());
        Ok(!self.query(&q).await?.is_empty())
    }

    pub async fn insert_signing_key(&self, key: &SigningKeyRow) -> Result<()> {
        let client = self.pool().get().await?;
        client
            .execute(
                "INSERT INTO signing_key (kid, private_pem, public_jwk, created_at) VALUES ($1, $2, $3, $4)",
                &[&key.kid, &key.private_pem, &key.public_jwk, &key.created_at],
            )
            .await?;
        Ok(())
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(Tx {
            pool: self.pool().clone(),
            client: tokio::sync::OnceCell::new(),
            begun: AtomicBool::new(false),
            observer: self.observer.clone(),
            changes: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            held: Mutex::new(None),
            group: self.group.clone(),
            created: Mutex::new(Vec::new()),
            statistics: self.statistics.clone(),
            committed: self.committed.clone(),
            unlocked: None,
            read_unlocked: Mutex::new(Vec::new()),
        })
    }

    /// Starts a write transaction that reads the version it replaces
    /// without locking it ([`Tx::lock_current`]): its new version is
    /// written only if that is still current, else it fails with
    /// `Error::VersionMoved` and changes nothing. One that sends no other
    /// statement commits with others ([`GroupCommit`]).
    pub async fn begin_unlocked(&self) -> Result<Tx> {
        let mut tx = self.begin().await?;
        tx.unlocked = Some(self.clone());
        Ok(tx)
    }

    /// Holds the start-up advisory lock on its own connection while `work`
    /// runs, so that instances starting together migrate and bootstrap once.
    pub async fn with_startup_lock<T, F>(&self, work: F) -> Result<T>
    where
        F: AsyncFnOnce(&mut deadpool_postgres::Client) -> Result<T>,
    {
        let mut client = self.pool().get().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&connect::STARTUP_LOCK])
            .await?;
        let result = work(&mut client).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&connect::STARTUP_LOCK])
            .await?;
        result
    }
}

/// `SELECT` of one current row `r`, in the tenant, if `filter` admits it.
fn current_query(
    tenant: Tenant,
    resource_type: &str,
    id: Uuid,
    filter: &RowFilter<'_>,
) -> Result<Query> {
    let mut q = Query::new(&format!(
        "SELECT {VERSION_COLUMNS} FROM resource r WHERE resource_type = "
    ));
    q.bind(resource_type.to_string())
        .push(" AND id = ")
        .bind(id)
        .tenant(tenant);
    search::row_condition(&mut q, "r", filter)?;
    Ok(q)
}

/// The versions that `conditions` (` AND …`, then any `ORDER BY`/`LIMIT`)
/// select, in the tenant, whose resource's current row passes `filter`: the
/// superseded ones from `resource_history` and the current ones from
/// `resource` (a current version lives only there, so a create writes one
/// row, not two).
fn versions_query(
    tenant: Tenant,
    filter: &RowFilter<'_>,
    conditions: impl Fn(&mut Query),
) -> Result<Query> {
    let mut q = Query::new(&format!(
        "(SELECT {HISTORY_COLUMNS} FROM resource_history h WHERE true"
    ));
    q.tenant(tenant).current_passes(filter)?;
    conditions(&mut q);
    // A current version is its resource's current row: the filter applies
    // to it directly.
    q.push(&format!(
        ") UNION ALL (SELECT {VERSION_COLUMNS} FROM resource r WHERE true"
    ))
    .tenant(tenant);
    search::row_condition(&mut q, "r", filter)?;
    conditions(&mut q);
    q.push(")");
    Ok(q)
}

/// `UNNEST` of the arrays of [`Columns`] ($1 to $7) as `x`.
const VERSIONS: &str = "x AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::timestamptz[], $6::text[], $7::uuid[]) \
     AS x (project_id, resource_type, id, version_id, last_updated, content, replaces))";

/// New resources, any number: the arrays of [`Columns`], then
/// [`index::IndexRows::params`] (into the index tables of `tables`).
fn insert_sql(tables: usize) -> &'static str {
    static SQL: [OnceLock<String>; index::TABLE_SETS] =
        [const { OnceLock::new() }; index::TABLE_SETS];
    SQL[tables].get_or_init(|| {
        with_index_rows(
            &[
                VERSIONS,
                "w AS (INSERT INTO resource (project_id, resource_type, id, version_id, last_updated, deleted, content) \
                 SELECT project_id, resource_type, id, version_id, last_updated, false, content FROM x)",
            ],
            index::insert_ctes(8, tables),
            "1",
        )
    })
}

/// New versions of existing resources, any number, at most one per
/// resource: the arrays of [`Columns`] (content NULL deletes), then those
/// of their index `rows`. A version is applied only if its resource is
/// still at the version it `replaces` (when that is NULL, the caller holds
/// the row's lock); the version it supersedes goes to history and its index
/// rows become the new version's ([`index::replace_ctes`]), for the applied
/// ones alone. Returns the new version ids applied.
fn update_sql(rows: &index::IndexRows) -> &'static str {
    const SHAPES: usize = 2 * index::TABLE_SETS;
    static SQL: [OnceLock<String>; SHAPES] = [const { OnceLock::new() }; SHAPES];
    SQL[index::replace_shape(rows)].get_or_init(|| {
        let history = format!(
            "h AS (INSERT INTO resource_history (project_id, resource_type, id, version_id, last_updated, content) \
             SELECT {VERSION_COLUMNS} FROM resource JOIN w USING (project_id, resource_type, id))"
        );
        with_index_rows(
            &[
                VERSIONS,
                // Under a concurrent write, PostgreSQL re-checks the
                // condition on the row that write committed: a moved
                // resource is not updated.
                "w AS (UPDATE resource r SET version_id = x.version_id, last_updated = x.last_updated, \
                 deleted = x.content IS NULL, content = COALESCE(x.content, r.content) FROM x \
                 WHERE r.project_id = x.project_id AND r.resource_type = x.resource_type AND r.id = x.id \
                 AND r.version_id = COALESCE(x.replaces, r.version_id) \
                 RETURNING r.project_id, r.resource_type, r.id, r.version_id AS applied)",
                // The version it supersedes goes to history: the statement's
                // snapshot of the row, which for an applied update is the
                // version it replaces (the one locked or read, committed
                // before the statement began, and still current).
                &history,
            ],
            index::replace_ctes(8, rows),
            "applied FROM w",
        )
    })
}

/// `WITH <ctes>, <index_ctes> SELECT <result>`.
fn with_index_rows(ctes: &[&str], index_ctes: Vec<String>, result: &str) -> String {
    let all: Vec<&str> = ctes
        .iter()
        .copied()
        .chain(index_ctes.iter().map(String::as_str))
        .collect();
    format!("WITH {} SELECT {result}", all.join(", "))
}

/// A version written by a transaction and not yet sent: a new resource
/// (sent in one [`insert_sql`] with the others) or a new version of an
/// existing one (content `None`: deleted; an [`update_sql`]).
struct NewVersion {
    project_id: Uuid,
    resource_type: String,
    id: Uuid,
    version_id: Uuid,
    last_updated: DateTime<Utc>,
    content: Option<String>,
    index: Vec<fhir_model::search::IndexValue>,
    /// The version it must replace, read without a lock
    /// ([`Store::begin_unlocked`]); `None` for a new resource, or when the
    /// transaction holds the row's lock.
    replaces: Option<Uuid>,
}

impl NewVersion {
    fn key(&self) -> (Uuid, &str, Uuid) {
        (self.project_id, &self.resource_type, self.id)
    }

    fn moved(&self) -> Error {
        Error::VersionMoved(format!(
            "{}/{} was changed by another request at the same time; retry the request",
            self.resource_type, self.id
        ))
    }
}

/// Versions as the arrays a statement unnests: $1 projects, $2 types, $3
/// ids, $4 versions, $5 last-updated times, $6 contents, $7 the versions
/// they replace (unused by an insert), then their index rows' arrays.
struct Columns<'a> {
    project_id: Vec<Uuid>,
    resource_type: Vec<&'a str>,
    id: Vec<Uuid>,
    version_id: Vec<Uuid>,
    last_updated: Vec<DateTime<Utc>>,
    content: Vec<Option<&'a str>>,
    replaces: Vec<Option<Uuid>>,
    rows: index::IndexRows,
}

impl<'a> Columns<'a> {
    fn of(versions: &[&'a NewVersion]) -> Columns<'a> {
        let mut columns = Columns {
            project_id: Vec::with_capacity(versions.len()),
            resource_type: Vec::with_capacity(versions.len()),
            id: Vec::with_capacity(versions.len()),
            version_id: Vec::with_capacity(versions.len()),
            last_updated: Vec::with_capacity(versions.len()),
            content: Vec::with_capacity(versions.len()),
            replaces: Vec::with_capacity(versions.len()),
            rows: index::IndexRows::default(),
        };
        for v in versions {
            columns.project_id.push(v.project_id);
            columns.resource_type.push(&v.resource_type);
            columns.id.push(v.id);
            columns.version_id.push(v.version_id);
            columns.last_updated.push(v.last_updated);
            columns.content.push(v.content.as_deref());
            columns.replaces.push(v.replaces);
            columns
                .rows
                .add(v.project_id, &v.resource_type, v.id, &v.index);
        }
        columns
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.project_id,
            &self.resource_type,
            &self.id,
            &self.version_id,
            &self.last_updated,
            &self.content,
            &self.replaces,
        ];
        params.extend(self.rows.params());
        params
    }
}

/// Versions held back at most before they are sent; a [`GroupCommit`]
/// batch adds transactions queued after its writer's while under it.
const MAX_PENDING_VERSIONS: usize = 1000;

/// Group commit: transactions that sent no statement (so nothing they read
/// or locked rests on their own transaction) and only create, or only write
/// one new version of a resource they read without a lock, commit together.
/// While one of them writes a batch, those that arrive queue, and the first
/// to get the writer's turn next writes all that queued, on its connection,
/// in one round trip and one `COMMIT`: one statement for the new resources
/// and one for the new versions. Executor start-up, the round trip and the
/// WAL flush are paid once per batch instead of once per write. Nobody
/// waits for company: a write that finds the writer free goes at once. A
/// batch succeeds or fails whole; its new ids are the server's own
/// (time-ordered UUIDs), so no client can make another's create fail. A new
/// version whose resource moved since it was read is not applied, and only
/// its transaction is told so (`Error::VersionMoved`).
pub(crate) struct GroupCommit {
    queue: Mutex<std::collections::VecDeque<Queued>>,
    /// Batches written at once: one per CPU, so that PostgreSQL's work is
    /// not held to one core.
    writers: tokio::sync::Semaphore,
    tickets: std::sync::atomic::AtomicU64,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            queue: Mutex::default(),
            writers: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            tickets: Default::default(),
        }
    }
}

/// One transaction's writes in the queue: new resources, or one new version.
struct Queued {
    ticket: u64,
    creates: Vec<NewVersion>,
    update: Option<NewVersion>,
    written: tokio::sync::oneshot::Sender<BatchOutcome>,
}

/// What the writer of a batch tells each transaction in it: written, or
/// why not.
type BatchOutcome = std::result::Result<(), Arc<Error>>;

impl GroupCommit {
    /// Commits `creates` or `update` with whatever else is queued; `tx`
    /// writes the batch if its turn comes first.
    async fn commit(
        &self,
        tx: &Tx,
        creates: Vec<NewVersion>,
        update: Option<NewVersion>,
    ) -> Result<()> {
        let ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (written, mut outcome) = tokio::sync::oneshot::channel();
        lock(&self.queue).push_back(Queued {
            ticket,
            creates,
            update,
            written,
        });
        tokio::select! {
            biased;
            outcome = &mut outcome => return Self::reported(outcome),
            _turn = self.writers.acquire() => {
                if let Some(batch) = self.batch_with(ticket) {
                    Self::write(tx, batch).await;
                }
            }
        }
        // Written by this transaction or, when another writer had taken its
        // writes already, by that one: either reports here.
        Self::reported(outcome.await)
    }

    /// Writes a batch on `tx`'s connection and tells each transaction in it.
    async fn write(tx: &Tx, batch: Vec<Queued>) {
        let creates: Vec<&NewVersion> = batch.iter().flat_map(|queued| &queued.creates).collect();
        // In one order, so that batches written at once lock their rows
        // alike (no deadlock), and one version per resource: of two, the
        // UPDATE would apply either, with the index rows of both. The
        // second is not sent, so is answered as moved.
        let mut updates: Vec<&NewVersion> = batch
            .iter()
            .filter_map(|queued| queued.update.as_ref())
            .collect();
        updates.sort_by(|a, b| a.key().cmp(&b.key()));
        updates.dedup_by(|a, b| a.key() == b.key());
        let result = tx
            .send_versions(&updates, &creates, true)
            .await
            .map_err(Arc::new);
        for queued in batch {
            let outcome = match (&result, &queued.update) {
                (Err(e), _) => Err(e.clone()),
                (Ok(applied), Some(update)) if !applied.contains(&update.version_id) => {
                    Err(Arc::new(update.moved()))
                }
                (Ok(_), _) => Ok(()),
            };
            // A requester that went away still had its writes written.
            let _ = queued.written.send(outcome);
        }
    }

    fn reported(
        outcome: std::result::Result<BatchOutcome, tokio::sync::oneshot::error::RecvError>,
    ) -> Result<()> {
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Shared(e)),
            Err(_) => Err(Error::Internal("a batch of writes was abandoned".into())),
        }
    }

    /// The queued transactions from the oldest to the one holding `ticket`,
    /// and those after it up to a statement's worth; none if another writer
    /// has taken `ticket`'s already.
    fn batch_with(&self, ticket: u64) -> Option<Vec<Queued>> {
        let mut queue = lock(&self.queue);
        let mine = queue.iter().position(|queued| queued.ticket == ticket)?;
        let mut batch: Vec<Queued> = queue.drain(..=mine).collect();
        let mut versions: usize = batch.iter().map(Queued::versions).sum();
        while versions < MAX_PENDING_VERSIONS {
            let Some(queued) = queue.pop_front() else {
                break;
            };
            versions += queued.versions();
            batch.push(queued);
        }
        Some(batch)
    }
}

impl Queued {
    fn versions(&self) -> usize {
        self.creates.len() + usize::from(self.update.is_some())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A write transaction on one pooled connection. Dropped without
/// [`Tx::commit`], its connection is closed instead of returned to the pool,
/// so PostgreSQL rolls everything back and a failed write leaves no trace.
pub struct Tx {
    pool: Pool,
    client: tokio::sync::OnceCell<Object>,
    /// Whether `BEGIN` went out: it is sent with the first statement, in the
    /// same round trip.
    begun: AtomicBool,
    observer: Option<Arc<dyn ChangeObserver>>,
    /// What this transaction wrote that sessions depend on.
    changes: Mutex<Vec<Change>>,
    /// New resources, not yet sent.
    pending: Mutex<Vec<NewVersion>>,
    /// The last new version of an existing resource, not yet sent: sent
    /// before the transaction's next statement or with its `COMMIT`, so a
    /// single update's write and commit are one round trip.
    held: Mutex<Option<NewVersion>>,
    group: Arc<GroupCommit>,
    committed: Arc<tokio::sync::watch::Sender<u64>>,
    /// The project of each resource this transaction created, counted at
    /// its commit.
    created: Mutex<Vec<Uuid>>,
    statistics: Arc<statistics::Statistics>,
    /// Where [`Tx::lock_current`] reads without a lock, in a transaction
    /// from [`Store::begin_unlocked`].
    unlocked: Option<Store>,
    /// The versions it read so: type, id and version.
    read_unlocked: Mutex<Vec<(String, Uuid, Uuid)>>,
}

impl Tx {
    /// The transaction's connection, taken from the pool at its first
    /// statement: one that only creates may never need one (see
    /// [`GroupCommit`]), and one refused before it writes holds none.
    async fn client(&self) -> Result<&Object> {
        self.client
            .get_or_try_init(|| async { Ok(self.pool.get().await?) })
            .await
    }

    /// Runs a statement in the transaction, after the writes it has not
    /// sent yet (so that it sees them).
    async fn run(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        self.send_pending().await?;
        Ok(self.send(&[(sql, params)], false).await?.remove(0))
    }

    /// Sends statements in one round trip with the transaction's `BEGIN`
    /// (before its first statement) and, when `commit`, its `COMMIT`: a
    /// single create is one round trip. The messages go out in the order
    /// `try_join!` first polls the futures, each sending on its first poll.
    /// Should a statement fail, the `COMMIT` behind it ends an aborted
    /// transaction, which PostgreSQL rolls back.
    async fn send(
        &self,
        statements: &[(&str, &[&(dyn ToSql + Sync)])],
        commit: bool,
    ) -> Result<Vec<Vec<tokio_postgres::Row>>> {
        let client = self.client().await?;
        let mut prepared = Vec::with_capacity(statements.len());
        for (sql, _) in statements {
            trace_statement(sql);
            prepared.push(timed(client.prepare_cached(sql)).await?);
        }
        let begin = !self.begun.swap(true, Ordering::AcqRel);
        let sent = timed(async {
            tokio::try_join!(
                async {
                    if begin {
                        client.batch_execute("BEGIN").await
                    } else {
                        Ok(())
                    }
                },
                futures_util::future::try_join_all(
                    prepared
                        .iter()
                        .zip(statements)
                        .map(|(statement, (_, params))| client.query(statement, params))
                ),
                async {
                    if commit {
                        client.batch_execute("COMMIT").await
                    } else {
                        Ok(())
                    }
                }
            )
        })
        .await;
        match sent {
            Ok((_, rows, _)) => Ok(rows),
            Err(e) if commit => Err(in_doubt(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// `COMMIT` alone, after the transaction's statements.
    async fn send_commit(&self) -> Result<()> {
        self.client()
            .await?
            .batch_execute("COMMIT")
            .await
            .map_err(in_doubt)
    }

    /// Sends what was held back: the new version, then the new resources
    /// (the order they were written in: a version is held only after the
    /// new resources before it were sent).
    async fn send_pending(&self) -> Result<()> {
        let held = lock(&self.held).take();
        let pending = std::mem::take(&mut *lock(&self.pending));
        self.send_own(held, &pending, false).await
    }

    /// Sends this transaction's `update` and `creates`, with the `COMMIT`
    /// when `commit`; an update that was not applied fails it.
    async fn send_own(
        &self,
        update: Option<NewVersion>,
        creates: &[NewVersion],
        commit: bool,
    ) -> Result<()> {
        let updates: Vec<&NewVersion> = update.iter().collect();
        let applied = self
            .send_versions(&updates, &creates.iter().collect::<Vec<_>>(), commit)
            .await?;
        match update {
            Some(update) if !applied.contains(&update.version_id) => Err(update.moved()),
            _ => Ok(()),
        }
    }

    /// Sends new versions of existing resources (at most one per resource)
    /// in one statement, then new resources in another, in one round trip,
    /// with the `COMMIT` when `commit`. Returns the new versions applied.
    async fn send_versions(
        &self,
        updates: &[&NewVersion],
        creates: &[&NewVersion],
        commit: bool,
    ) -> Result<Vec<Uuid>> {
        let updated = Columns::of(updates);
        let created = Columns::of(creates);
        let (update_params, create_params) = (updated.params(), created.params());
        let mut statements: Vec<(&str, &[&(dyn ToSql + Sync)])> = Vec::with_capacity(2);
        if !updates.is_empty() {
            statements.push((update_sql(&updated.rows), &update_params));
        }
        if !creates.is_empty() {
            statements.push((insert_sql(created.rows.tables_with_rows()), &create_params));
        }
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self
            .send(&statements, commit)
            .await
            .map_err(conflict_on_duplicate)?;
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        Ok(rows[0].iter().map(|row| row.get(0)).collect())
    }

    /// Serialises writers that decide on the same condition (conditional
    /// create, update, delete): held until the transaction ends.
    pub async fn lock_condition(&self, key: &str) -> Result<()> {
        let mut q = Query::new("SELECT pg_advisory_xact_lock(hashtextextended(");
        q.bind(key.to_string()).push(", 0))");
        self.query(&q).await?;
        Ok(())
    }

    /// The current version if `filter` admits it, locked until commit so
    /// concurrent writers queue; in a transaction from
    /// [`Store::begin_unlocked`] that has sent nothing yet, read without a
    /// lock instead, and a new version of it is written only if it is still
    /// current.
    pub async fn lock_current(
        &self,
        tenant: Tenant,
        resource_type: &str,
        id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<Option<Version>> {
        let mut q = current_query(tenant, resource_type, id, filter)?;
        if let Some(store) = self
            .unlocked
            .as_ref()
            .filter(|_| !self.begun.load(Ordering::Acquire))
        {
            let version = store.lookup(&q).await?.first().map(Version::from_row);
            if let Some(v) = &version {
                lock(&self.read_unlocked).push((v.resource_type.clone(), v.id, v.version_id));
            }
            return Ok(version);
        }
        q.push(" FOR UPDATE OF r");
        Ok(self.query(&q).await?.first().map(Version::from_row))
    }

    /// Whether the stored row (as this transaction sees it) passes `filter`:
    /// a write checks the resource before and after it changes.
    pub async fn passes(
        &self,
        project_id: Uuid,
        resource_type: &str,
        id: Uuid,
        filter: &RowFilter<'_>,
    ) -> Result<bool> {
        if *filter == RowFilter::All {
            return Ok(true);
        }
        let mut q = Query::new("SELECT 1 FROM resource r WHERE r.project_id = ");
        q.bind(project_id)
            .push(" AND r.resource_type = ")
            .bind(resource_type.to_string())
            .push(" AND r.id = ")
            .bind(id);
        search::row_condition(&mut q, "r", filter)?;
        Ok(!self.query(&q).await?.is_empty())
    }

    /// Whether a resource with this type and id exists in any project.
    pub async fn exists_anywhere(&self, resource_type: &str, id: Uuid) -> Result<bool> {
        let mut q = Query::new("SELECT 1 FROM resource WHERE resource_type = ");
        q.bind(resource_type.to_string())
            .push(" AND id = ")
            .bind(id);
        Ok(!self.query(&q).await?.is_empty())
    }

    /// Writes a version: the resource row (inserted when `is_new`, otherwise
    /// updated, the version it replaces copied to history) and its
    /// search-index rows (`index`; none for a deletion). An update replaces
    /// the version [`Tx::lock_current`] returned: locked, or read without a
    /// lock and then written only if still current. New resources are held
    /// back and sent together (a transaction Bundle's creates cost one
    /// statement), and a new version until the next statement or the
    /// commit, so a failure of either surfaces there.
    pub async fn write(
        &self,
        w: &Write<'_>,
        is_new: bool,
        index: Vec<fhir_model::search::IndexValue>,
    ) -> Result<()> {
        if is_new && w.content.is_none() {
            return Err(Error::Internal(format!(
                "{}/{} cannot be created deleted",
                w.resource_type, w.id
            )));
        }
        if let Some(change) = Change::of(w.resource_type, w.id) {
            lock(&self.changes).push(change);
        }
        let replaces = lock(&self.read_unlocked)
            .iter()
            .find(|(resource_type, id, _)| resource_type == w.resource_type && *id == w.id)
            .map(|(_, _, version_id)| *version_id);
        let version = NewVersion {
            project_id: w.project_id,
            resource_type: w.resource_type.to_string(),
            id: w.id,
            version_id: w.version_id,
            last_updated: w.last_updated,
            content: w.content.map(str::to_string),
            index,
            replaces: replaces.filter(|_| !is_new),
        };
        if is_new {
            lock(&self.created).push(w.project_id);
            let full = {
                let mut pending = lock(&self.pending);
                pending.push(version);
                pending.len() >= MAX_PENDING_VERSIONS
            };
            if full {
                self.send_pending().await?;
            }
        } else {
            // What was held before goes first, in writing order.
            self.send_pending().await?;
            *lock(&self.held) = Some(version);
        }
        Ok(())
    }

    /// Sets a secret (a hash) that belongs to a resource but never appears in it.
    pub async fn set_secret(
        &self,
        project_id: Uuid,
        resource_type: &str,
        id: Uuid,
        kind: &str,
        hash: &str,
    ) -> Result<()> {
        self.run(
            "INSERT INTO resource_secret (project_id, resource_type, resource_id, kind, hash)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (project_id, resource_type, resource_id, kind)
             DO UPDATE SET hash = EXCLUDED.hash, updated_at = now()",
            &[&project_id, &resource_type, &id, &kind, &hash],
        )
        .await?;
        Ok(())
    }

    /// The content of the newest live version of a resource that is now
    /// deleted (the deletion moved it to history).
    pub async fn last_live_content(&self, deleted: &Version) -> Result<Option<String>> {
        let rows = self
            .run(
                "SELECT content FROM resource_history
                 WHERE project_id = $1 AND resource_type = $2 AND id = $3 AND content IS NOT NULL
                 ORDER BY last_updated DESC, version_id DESC LIMIT 1",
                &[&deleted.project_id, &deleted.resource_type, &deleted.id],
            )
            .await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    /// Forgets a secret (an unproven account's password).
    pub async fn delete_secret(
        &self,
        project_id: Uuid,
        resource_type: &str,
        id: Uuid,
        kind: &str,
    ) -> Result<()> {
        self.run(
            "DELETE FROM resource_secret
             WHERE project_id = $1 AND resource_type = $2 AND resource_id = $3 AND kind = $4",
            &[&project_id, &resource_type, &id, &kind],
        )
        .await?;
        Ok(())
    }

    pub async fn commit(mut self) -> Result<()> {
        let statistics = self.statistics.clone();
        let created = std::mem::take(self.created.get_mut().unwrap_or_else(|e| e.into_inner()));
        self.commit_writes().await?;
        statistics.created(&created);
        Ok(())
    }

    async fn commit_writes(mut self) -> Result<()> {
        let held = lock(&self.held).take();
        let pending = std::mem::take(&mut *lock(&self.pending));
        let begun = *self.begun.get_mut();
        match (held, pending.is_empty(), begun) {
            // Without a statement, nothing was begun.
            (None, true, false) => self.finish(false),
            (None, true, true) => {
                self.send_commit().await?;
                self.finish(true)
            }
            // Only creates, or only one new version, and no statement sent:
            // with others (group commit), in a task of its own so that a
            // batch others wait on is written even if this request is
            // dropped.
            (held, only_version, false) if held.is_none() || only_version => {
                let group = self.group.clone();
                // In the request's span, so that its log lines (and its
                // statements, `fhirgate::sql`) name the request.
                tokio::spawn(
                    async move {
                        group.commit(&self, pending, held).await?;
                        self.finish(true)
                    }
                    .in_current_span(),
                )
                .await
                .map_err(|e| Error::Internal(format!("committing new versions: {e}")))?
            }
            (held, _, _) => {
                // A version that may find its resource moved is applied
                // before the `COMMIT` goes: else the transaction's other
                // statements would commit without it.
                let checked = held.as_ref().is_some_and(|v| v.replaces.is_some());
                self.send_own(held, &pending, !checked).await?;
                if checked {
                    self.send_commit().await?;
                }
                self.finish(true)
            }
        }
    }

    /// After the commit: the connection back to the pool, the changes told,
    /// and, if it `wrote`, the committed-writes signal bumped.
    fn finish(mut self, wrote: bool) -> Result<()> {
        drop(self.client.take());
        if wrote {
            self.committed.send_modify(|n| *n = n.wrapping_add(1));
        }
        if let Some(observer) = &self.observer {
            let changes = std::mem::take(self.changes.get_mut().unwrap_or_else(|e| e.into_inner()));
            for change in changes {
                observer.changed(change);
            }
        }
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Detach from the pool; dropping the connection rolls back.
            drop(Object::take(client));
        }
    }
}

/// A failed `COMMIT` (or a statement sent with one): when the connection
/// went away, PostgreSQL may have committed before it did.
fn in_doubt(e: tokio_postgres::Error) -> Error {
    if crate::error::is_unavailable(&e) {
        Error::CommitInDoubt(e.to_string())
    } else {
        e.into()
    }
}

fn conflict_on_duplicate(e: Error) -> Error {
    match e {
        Error::Database(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                && e.as_db_error().and_then(|d| d.constraint()) == Some("resource_user_email") =>
        {
            crate::admin::users::email_taken()
        }
        Error::Database(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) =>
        {
            Error::Conflict(
                "A resource with this id was created at the same time; retry the request".into(),
            )
        }
        e => e,
    }
}
