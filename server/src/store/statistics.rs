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
//! So the statistics stay, and each instance analyzes when a project it
//! creates resources in has grown tenfold since the last step.
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
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use uuid::Uuid;

/// The tables searches plan from, each led by `project_id`.
const ANALYZED: &str = "ANALYZE resource, resource_compartment, idx_token, idx_string, idx_date, \
    idx_number, idx_quantity, idx_reference, idx_uri, idx_composite, idx_text";

pub(crate) struct Statistics {
    /// Resources this instance created per project since it started.
    created: Mutex<HashMap<Uuid, u64>>,
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
            created: Mutex::default(),
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
            let row = client
                .query_opt(SQL, &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(row.and_then(|row| row.get::<_, Option<Vec<Uuid>>>(0)))
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

    /// Counts committed creates, one project id per resource; when a
    /// project passes a step, analyzes in the background.
    pub(crate) fn created(self: &std::sync::Arc<Self>, projects: &[Uuid]) {
        // Most commits (updates, deletes) create nothing: no lock for them.
        if self.first_step == 0 || projects.is_empty() {
            return;
        }
        let stepped = {
            let mut created = super::lock(&self.created);
            let mut stepped = false;
            for project in projects {
                let count = created.entry(*project).or_default();
                *count += 1;
                stepped |= is_step(*count, self.first_step);
            }
            stepped
        };
        if stepped {
            self.analyze();
        }
    }

    /// One `ANALYZE` at a time per instance; one asked for while it runs
    /// follows it, since the rows it sampled may predate the step.
    fn analyze(self: &std::sync::Arc<Self>) {
        self.again.store(true, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return;
        }
        let statistics = self.clone();
        tokio::spawn(async move {
            while statistics.again.swap(false, Ordering::SeqCst) {
                // Err: the cause, and whether the database was away.
                let result = match statistics.pool.get().await {
                    Ok(client) => client
                        .batch_execute(ANALYZED)
                        .await
                        .map_err(|e| (e.to_string(), crate::error::is_unavailable(&e))),
                    Err(e) => Err((e.to_string(), true)),
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
                    // The step has passed and will not come again: with the
                    // database away, retried until it is back.
                    Err((e, true)) => {
                        tracing::warn!("ANALYZE after a project grew failed, retrying: {e}");
                        tokio::time::sleep(ANALYZE_RETRY).await;
                        statistics.again.store(true, Ordering::SeqCst);
                    }
                    Err((e, false)) => tracing::warn!("ANALYZE after a project grew failed: {e}"),
                }
            }
            statistics.running.store(false, Ordering::SeqCst);
            // Asked for between the last check and giving up the turn.
            if statistics.again.load(Ordering::SeqCst) {
                statistics.analyze();
            }
        });
    }
}

/// How long after a failed `ANALYZE` (the database away) it is tried again.
const ANALYZE_RETRY: Duration = Duration::from_secs(10);

/// Whether `count` is a step: `first`, ten times it, a hundred times, …
fn is_step(count: u64, first: u64) -> bool {
    let mut step = first;
    while step < count {
        match step.checked_mul(10) {
            Some(next) => step = next,
            None => return false,
        }
    }
    step == count
}

#[cfg(test)]
mod tests {
    use super::is_step;

    #[test]
    fn steps_are_tenfold_from_the_first() {
        let steps: Vec<u64> = (1..=200_000).filter(|&n| is_step(n, 20)).collect();
        assert_eq!(steps, [20, 200, 2_000, 20_000, 200_000]);
        assert!(!is_step(u64::MAX, 20));
        assert!(is_step(1, 1));
    }
}
