//! The operator subcommands that work on the database directly:
//! `migrate`, `reindex` and `check` (`import` and `export` are HTTP clients,
//! in the `fhirgate-client` crate).

use fhir_model::search::{extract, Registry};
use fhirgate_client::progress::Progress;
use uuid::Uuid;

use crate::{
    config::Config,
    error::{Error, Result},
    store::{
        connect,
        maintenance::{Position, Scope},
        Store,
    },
};

/// Resources per reindex transaction: short enough that writers queued
/// behind its row locks wait milliseconds.
const BATCH: i64 = 500;

/// A store for a command: the configured database, a few connections.
pub async fn store(config: &Config) -> Result<Store> {
    Ok(Store::new(
        connect::connect(
            &config.database_url,
            4,
            config.statement_timeout,
            config.queue_timeout,
        )
        .await?,
    ))
}

/// Applies the migrations not yet applied (under the start-up lock, as a
/// starting server would); returns how many.
pub async fn migrate(store: &Store) -> Result<usize> {
    store
        .with_startup_lock(async |client| connect::migrate(client).await)
        .await
}

/// What a reindex or check went through.
#[derive(Debug, Default)]
pub struct Walk {
    pub resources: u64,
    /// Resources whose index rows differed from extraction (check only).
    pub differences: Vec<Position>,
}

/// Rebuilds (or, `dry_run`, compares) the index rows of every live resource
/// in `scope` from its stored content, in batches. A reindex records where
/// it is after each batch and, run again over the same scope, resumes there.
pub async fn walk(store: &Store, scope: &Scope<'_>, dry_run: bool) -> Result<Walk> {
    let progress = Progress::new(0, "resources");
    let mut walk = Walk::default();
    let mut after = match dry_run {
        true => None,
        false => store.reindex_cursor(scope).await?,
    };
    if let Some((project, resource_type, id)) = &after {
        progress.println(&format!(
            "resuming after {resource_type}/{id} of project {project}"
        ));
    }
    loop {
        let batch = store.resources_after(scope, after.as_ref(), BATCH).await?;
        let Some(last) = batch.last() else { break };
        let last = (last.project_id, last.resource_type.clone(), last.id);
        // One statement per project and type in the batch.
        let mut start = 0;
        while start < batch.len() {
            let (project, resource_type) = (batch[start].project_id, &batch[start].resource_type);
            let end = batch[start..]
                .iter()
                .position(|r| r.project_id != project || &r.resource_type != resource_type)
                .map_or(batch.len(), |n| start + n);
            let mut values = Vec::with_capacity(end - start);
            for stored in &batch[start..end] {
                let value: serde_json::Value =
                    serde_json::from_str(&stored.content).map_err(|e| {
                        Error::Internal(format!(
                            "stored {resource_type}/{} is not JSON: {e}",
                            stored.id
                        ))
                    })?;
                values.push((stored.id, extract(Registry::get(), &value)));
            }
            let differing = store
                .rewrite_index(project, resource_type, &values, dry_run)
                .await?;
            for id in differing {
                progress.println(&format!(
                    "difference: {resource_type}/{id} of project {project}: its index rows are not what extraction gives"
                ));
                walk.differences.push((project, resource_type.clone(), id));
            }
            start = end;
        }
        walk.resources += batch.len() as u64;
        progress.update(0, walk.resources);
        if !dry_run {
            store.save_reindex_cursor(scope, Some(&last)).await?;
        }
        after = Some(last);
    }
    if !dry_run {
        store.save_reindex_cursor(scope, None).await?;
    }
    progress.finish();
    Ok(walk)
}

/// `--project` as a project id.
pub fn project_id(project: Option<&str>) -> Result<Option<Uuid>> {
    project
        .map(|p| {
            Uuid::parse_str(p)
                .map_err(|_| Error::Config(format!("--project '{p}' is not a project id (a UUID)")))
        })
        .transpose()
}
