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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use deadpool_postgres::Pool;
use uuid::Uuid;

/// The tables searches plan from, each led by `project_id`.
const ANALYZED: &str = "ANALYZE resource, resource_compartment, idx_token, idx_string, idx_date, \
    idx_number, idx_quantity, idx_reference, idx_uri, idx_composite, idx_text";

pub(crate) struct Growth {
    /// Resources this instance created per project since it started.
    created: Mutex<HashMap<Uuid, u64>>,
    /// Creates in one project before its first `ANALYZE`; each further step
    /// is ten times the last. 0: never.
    first_step: u64,
    /// An `ANALYZE` runs, and whether another was asked for meanwhile.
    running: AtomicBool,
    again: AtomicBool,
    pool: Pool,
}

impl Growth {
    pub(crate) fn new(pool: Pool, first_step: u64) -> Growth {
        Growth {
            created: Mutex::default(),
            first_step,
            running: AtomicBool::new(false),
            again: AtomicBool::new(false),
            pool,
        }
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
        let growth = self.clone();
        tokio::spawn(async move {
            while growth.again.swap(false, Ordering::SeqCst) {
                let result = match growth.pool.get().await {
                    Ok(client) => client
                        .batch_execute(ANALYZED)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => tracing::info!("analyzed the search tables after a project grew"),
                    Err(e) => tracing::warn!("ANALYZE after a project grew failed: {e}"),
                }
            }
            growth.running.store(false, Ordering::SeqCst);
            // Asked for between the last check and giving up the turn.
            if growth.again.load(Ordering::SeqCst) {
                growth.analyze();
            }
        });
    }
}

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
