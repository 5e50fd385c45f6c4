//! Fresh planner statistics for growing projects: `ANALYZE` of the tables
//! every search reads, started by the writes that make a project grow.
//!
//! PostgreSQL plans a search in a project from the statistics of
//! `project_id`. With fewer projects than the statistics keep common values
//! for (100), every project `ANALYZE` saw is one of them and together they
//! cover every row, so a project created since is estimated at one row; a
//! scan of the whole project then costs as little as an index lookup, and the
//! planner picks it. Measured on a database of two 10,000-Patient projects
//! with a third loaded after the last `ANALYZE`: name search 8,100 → 35/s,
//! `_include` 4,000 → 2/s, chains timing out, until `ANALYZE`. Autovacuum
//! analyzes a table once a tenth of it has changed, which a new project in a
//! large table may never reach. Estimating every project alike (no
//! statistics on `project_id`) fixed new projects but cost large ones: a
//! `value-quantity=gt100` page over 73,000 matches went from 2.7 to 479 ms.
//! So the statistics stay, and the search tables are analyzed when a project
//! has grown tenfold since the last step.
//!
//! The count is shared, in PostgreSQL (`project_growth`, migration 0046):
//! each instance counts its creates and adds them to the project's row every
//! [`FLUSH_BATCH`] creates or after [`FLUSH_EVERY`], and the instance whose
//! addition passes a step claims it there and analyzes. A count kept by each
//! instance alone never reached a step when a load was spread over
//! instances or restarts: 12,100 Patients loaded through several instances
//! left `Patient?family:exact=…` at 127 s, planned from statistics that
//! counted the new project's rows as one.
//!
//! Until then (and for every project below the first step) a search names a
//! project the statistics do not list as a value unknown at planning time
//! ([`ProjectEstimate::Unknown`]), which PostgreSQL estimates as an average
//! project, the number of rows over the number of projects, instead of as one
//! row. Measured on a 200-Patient project created after the last `ANALYZE`:
//! `_include` 22 ms a search, a one-link chain over 30 s (cancelled), both
//! walking the whole project once per row of an outer walk of it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tracing::Instrument;
use uuid::Uuid;

use super::Traced;

/// The tables searches plan from, each led by `project_id`.
const ANALYZED: &str = "ANALYZE resource, resource_compartment, idx_token, idx_string, idx_date, \
    idx_number, idx_quantity, idx_reference, idx_uri, idx_composite, idx_text";

pub(crate) struct Statistics {
    /// Resources this instance created per project and has not yet added
    /// to the shared count.
    pending: Mutex<Pending>,
    /// One addition to the shared count at a time.
    flushing: AtomicBool,
    /// Creates in one project before its first `ANALYZE`; each further step
    /// is ten times the last. 0: never.
    first_step: u64,
    /// An `ANALYZE` runs, and whether another was asked for meanwhile.
    running: AtomicBool,
    again: AtomicBool,
    pool: Pool,
    /// The projects the statistics of `resource.project_id` list, as last read.
    known: RwLock<Known>,
    /// One reader of the statistics at a time; searches meanwhile use the
    /// last read (none yet: every project unknown, the safe side).
    reading: tokio::sync::Mutex<()>,
}

struct Pending {
    counts: HashMap<Uuid, u64>,
    total: u64,
    /// When the counts were last added to the shared ones.
    flushed_at: Instant,
}

/// Creates an instance counts before it adds them to the shared count, or
/// the time after which it adds what it has at its next create: so few
/// statements that they cost nothing beside the creates, and an instance
/// that stops loses at most that many.
const FLUSH_BATCH: u64 = 500;
const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Known {
    read_at: Option<Instant>,
    projects: HashSet<Uuid>,
}

/// How long a read of the statistics serves: `ANALYZE` by another instance
/// or by autovacuum shows within this time.
const KNOWN_FOR: Duration = Duration::from_secs(60);

/// How a statement names the project it searches to the planner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProjectEstimate {
    /// By value: the statistics list it, with its share of the rows.
    Known,
    /// As a value unknown when planning: the statistics have not seen it,
    /// and by value it would be estimated at one row.
    Unknown,
    /// As each project of a walk over all of them, in turn: a super admin's
    /// page (`store::search::each_project_page`).
    EachProject,
}

impl Statistics {
    pub(crate) fn new(pool: Pool, first_step: u64) -> Statistics {
        Statistics {
            pending: Mutex::new(Pending {
                counts: HashMap::new(),
                total: 0,
                flushed_at: Instant::now(),
            }),
            flushing: AtomicBool::new(false),
            first_step,
            running: AtomicBool::new(false),
            again: AtomicBool::new(false),
            pool,
            known: RwLock::default(),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the statistics know `project`, from a read at most
    /// [`KNOWN_FOR`] old (made now if the last is older and no other search
    /// is making one).
    pub(crate) async fn estimate(&self, project: Uuid) -> ProjectEstimate {
        if self.stale() {
            if let Ok(_reading) = self.reading.try_lock() {
                if self.stale() {
                    self.read_known().await;
                }
            }
        }
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        if known.projects.contains(&project) {
            ProjectEstimate::Known
        } else {
            ProjectEstimate::Unknown
        }
    }

    /// Reads the projects among the most common values of
    /// `resource.project_id` (none before the first `ANALYZE`), on a
    /// connection of its own, so that no caller's transaction depends on it.
    async fn read_known(&self) {
        const SQL: &str = "SELECT most_common_vals::text::uuid[] FROM pg_stats \
            WHERE schemaname = current_schema() AND tablename = 'resource' AND attname = 'project_id'";
        let read = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            let rows = client
                .traced_query(SQL, &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(
                rows.first()
                    .and_then(|row| row.get::<_, Option<Vec<Uuid>>>(0)),
            )
        };
        let result = read.await;
        let mut known = self.known.write().unwrap_or_else(|e| e.into_inner());
        // A failed read keeps the last list and is retried after KNOWN_FOR.
        known.read_at = Some(Instant::now());
        match result {
            Ok(projects) => known.projects = projects.unwrap_or_default().into_iter().collect(),
            Err(e) => tracing::warn!("reading the planner statistics of projects failed: {e}"),
        }
    }

    fn stale(&self) -> bool {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.read_at.is_none_or(|at| at.elapsed() >= KNOWN_FOR)
    }

    /// Counts committed creates, one project id per resource, and adds
    /// them to the shared count when enough have gathered.
    pub(crate) fn created(self: &Arc<Self>, projects: &[Uuid]) {
        // Most commits (updates, deletes) create nothing: no lock for them.
        if self.first_step == 0 || projects.is_empty() {
            return;
        }
        let (due, first) = {
            let mut pending = super::lock(&self.pending);
            let first = pending.total == 0;
            for project in projects {
                *pending.counts.entry(*project).or_default() += 1;
            }
            pending.total += projects.len() as u64;
            let due = pending.total >= FLUSH_BATCH || pending.flushed_at.elapsed() >= FLUSH_EVERY;
            (due, first)
        };
        if due {
            self.flush();
        } else if first {
            // The last creates of a load are added too, with no create after them.
            let statistics = self.clone();
            tokio::spawn(
                async move {
                    tokio::time::sleep(FLUSH_EVERY).await;
                    statistics.flush();
                }
                .instrument(crate::job_span("statistics")),
            );
        }
    }

    /// Adds the pending counts to the shared ones in the background (unless
    /// an addition is running: the counts wait for the next); analyzes when
    /// this instance claimed a step.
    fn flush(self: &Arc<Self>) {
        if self.flushing.swap(true, Ordering::SeqCst) {
            return;
        }
        let counts = {
            let mut pending = super::lock(&self.pending);
            pending.total = 0;
            pending.flushed_at = Instant::now();
            std::mem::take(&mut pending.counts)
        };
        if counts.is_empty() {
            self.flushing.store(false, Ordering::SeqCst);
            return;
        }
        let statistics = self.clone();
        tokio::spawn(
            async move {
                let result = statistics.add_to_shared(&counts).await;
                statistics.flushing.store(false, Ordering::SeqCst);
                match result {
                    Ok(true) => statistics.analyze(),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!("counting a project's growth failed: {e}");
                        // Counted again with the next addition.
                        let mut pending = super::lock(&statistics.pending);
                        for (project, n) in counts {
                            *pending.counts.entry(project).or_default() += n;
                            pending.total += n;
                        }
                    }
                }
            }
            .instrument(crate::job_span("statistics")),
        );
    }

    /// Adds `counts` to the projects' shared counts; answers whether this
    /// instance claimed a step one of them passed, and so is to analyze.
    async fn add_to_shared(&self, counts: &HashMap<Uuid, u64>) -> Result<bool, String> {
        // In project order, so two instances adding at once wait for each
        // other rather than deadlock.
        let mut counts: Vec<(Uuid, i64)> = counts
            .iter()
            .map(|(project, n)| (*project, *n as i64))
            .collect();
        counts.sort_unstable();
        let (projects, added): (Vec<Uuid>, Vec<i64>) = counts.into_iter().unzip();
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let rows = client
            .traced_query(
                "INSERT INTO project_growth AS g (project_id, created) \
                 SELECT * FROM UNNEST($1::uuid[], $2::bigint[]) \
                 ON CONFLICT (project_id) DO UPDATE SET created = g.created + EXCLUDED.created \
                 RETURNING project_id, created, analyzed_at",
                &[&projects, &added],
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut claimed = false;
        for row in rows {
            let (project, created, analyzed_at): (Uuid, i64, i64) =
                (row.get(0), row.get(1), row.get(2));
            let step = step_reached(created as u64, self.first_step);
            if step <= analyzed_at as u64 {
                continue;
            }
            // Of the instances that see the step passed, one claims it.
            claimed |= client
                .traced_execute(
                    "UPDATE project_growth SET analyzed_at = $2 \
                     WHERE project_id = $1 AND analyzed_at < $2",
                    &[&project, &(step as i64)],
                )
                .await
                .map_err(|e| e.to_string())?
                == 1;
        }
        Ok(claimed)
    }

    /// One `ANALYZE` at a time per instance; one asked for while it runs
    /// follows it, since the rows it sampled may predate the step.
    fn analyze(self: &Arc<Self>) {
        self.again.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let statistics = self.clone();
        tokio::spawn(
            async move {
                while statistics.again.swap(false, Ordering::SeqCst) {
                    let result = match statistics.pool.get().await {
                        Ok(client) => {
                            super::trace_statement(ANALYZED);
                            client
                                .batch_execute(ANALYZED)
                                .await
                                .map_err(|e| e.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    crate::metrics::job("statistics", result.is_ok());
                    match result {
                        Ok(()) => {
                            // The next search reads what this ANALYZE found.
                            statistics
                                .known
                                .write()
                                .unwrap_or_else(|e| e.into_inner())
                                .read_at = None;
                            tracing::info!("analyzed the search tables after a project grew")
                        }
                        Err(e) => tracing::warn!("ANALYZE after a project grew failed: {e}"),
                    }
                }
                statistics.running.store(false, Ordering::SeqCst);
                // Asked for between the last check and giving up the turn.
                if statistics.again.load(Ordering::SeqCst) {
                    statistics.analyze();
                }
            }
            .instrument(crate::job_span("statistics")),
        );
    }
}

/// The largest step `count` has reached: `first`, ten times it, a hundred
/// times, …; 0 below the first (or when `first` is 0: never).
fn step_reached(count: u64, first: u64) -> u64 {
    if first == 0 || count < first {
        return 0;
    }
    let mut step = first;
    while let Some(next) = step.checked_mul(10).filter(|next| *next <= count) {
        step = next;
    }
    step
}

#[cfg(test)]
mod tests {
    use super::step_reached;

    #[test]
    fn steps_are_tenfold_from_the_first() {
        let steps: Vec<u64> = [19, 20, 199, 200, 1_999, 2_000, 25_000, 200_000]
            .iter()
            .map(|&n| step_reached(n, 20))
            .collect();
        assert_eq!(steps, [0, 20, 20, 200, 200, 2_000, 20_000, 200_000]);
        assert_eq!(step_reached(u64::MAX, 20), 2 * 10u64.pow(18));
        assert_eq!(step_reached(1, 1), 1);
        assert_eq!(step_reached(5_000, 0), 0);
    }
}
