//! Runs `$export` jobs: each instance polls for a job no one holds (or one
//! whose runner stopped renewing its lease), takes it with `FOR UPDATE SKIP
//! LOCKED`, and runs it from the start. Pages of resources are read in id
//! order from one REPEATABLE READ snapshot and written out in chunks of
//! about [`CHUNK_BYTES`], so memory holds one page and one chunk whatever
//! the size of the export.

use std::sync::Weak;
use std::time::Duration;

use tracing::Instrument;

use access_policy::{Branch, Interaction, RowFilter, Types};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::ExportParams;
use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    store::export::ExportJob,
};

/// How often an idle instance looks for a job.
const POLL: Duration = Duration::from_secs(1);
/// How long a runner holds a job without renewing (it renews every page).
const LEASE: Duration = Duration::from_secs(30);
/// Resources read per page.
const PAGE: i64 = 1_000;
/// NDJSON bytes per stored chunk.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Runs jobs until the server is dropped.
pub fn spawn(state: Weak<AppState>) {
    let runner = Uuid::new_v4();
    tokio::spawn(
        async move {
            loop {
                tokio::time::sleep(POLL).await;
                let Some(state) = state.upgrade() else { break };
                // One statement on a partial index of finished jobs: cheap at every poll.
                if let Err(e) = state
                    .store
                    .remove_expired_exports(state.config.export_retention)
                    .await
                {
                    tracing::warn!(error = %e, "removing expired exports failed");
                }
                match state.store.claim_export_job(runner, LEASE).await {
                    Ok(Some(job)) => run(&state, runner, job).await,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "looking for export jobs failed"),
                }
            }
        }
        .instrument(crate::job_span("export")),
    );
}

async fn run(state: &AppState, runner: Uuid, job: ExportJob) {
    tracing::info!(job = %job.id, "export started");
    let outcome = match state.store.clear_export_output(job.id).await {
        Ok(()) => export(state, runner, &job).await,
        Err(e) => Err(e),
    };
    let finished = match outcome {
        Ok(Some(transaction_time)) => Ok(transaction_time),
        // Cancelled, or taken over: nothing more to do.
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "export failed");
            Err(e.to_string())
        }
    };
    if let Err(e) = state
        .store
        .finish_export_job(job.id, runner, finished)
        .await
    {
        tracing::warn!(job = %job.id, error = %e, "recording the end of an export failed");
    }
    tracing::info!(job = %job.id, "export finished");
}

/// One type's output as it is written: the chunk being filled.
struct Output<'a> {
    state: &'a AppState,
    job: Uuid,
    runner: Uuid,
    resource_type: &'a str,
    buffer: Vec<u8>,
    lines: i32,
    seq: i32,
}

impl Output<'_> {
    fn push(&mut self, line: &str) {
        self.buffer.extend_from_slice(line.as_bytes());
        self.buffer.push(b'\n');
        self.lines += 1;
    }

    /// Stores the chunk when it is full (or `always`); false when the job
    /// is no longer this runner's.
    async fn flush(&mut self, always: bool) -> Result<bool> {
        if self.buffer.is_empty() || (!always && self.buffer.len() < CHUNK_BYTES) {
            return Ok(true);
        }
        let kept = self
            .state
            .store
            .append_export_output(
                self.job,
                self.runner,
                self.resource_type,
                self.seq,
                self.lines,
                &self.buffer,
            )
            .await?;
        self.buffer.clear();
        self.lines = 0;
        self.seq += 1;
        Ok(kept)
    }
}

/// Exports as the caller who asked; `None` when the job stopped being this
/// runner's (cancelled or taken over), else the transaction time.
async fn export(state: &AppState, runner: Uuid, job: &ExportJob) -> Result<Option<DateTime<Utc>>> {
    let caller = Caller::for_login(state, job.login_id, &job.scope, &job.client_id).await?;
    if caller.membership_id != job.membership_id || caller.project_id != job.project_id {
        return Err(Error::Forbidden(
            "The membership that asked for this export no longer signs in this way".into(),
        ));
    }
    let params = ExportParams::from_json(&job.params)?;
    let scope = params.scope();
    let snapshot = state.store.export_snapshot().await?;
    let mut exported = 0u64;
    for resource_type in params.types_for(&caller) {
        let types = [resource_type.clone()];
        let filter = caller.policy.row_filter(&types, Interaction::Search);
        let type_filters = params.filters_of(&resource_type)?;
        let narrowing = match type_filters.is_empty() {
            true => RowFilter::All,
            false => RowFilter::AnyOf(
                type_filters
                    .iter()
                    .map(|filters| Branch {
                        types: Types::Any,
                        filters,
                    })
                    .collect(),
            ),
        };
        let hides = caller.policy.hides_fields(&resource_type);
        let mut output = Output {
            state,
            job: job.id,
            runner,
            resource_type: &resource_type,
            buffer: Vec::with_capacity(CHUNK_BYTES + 64 * 1024),
            lines: 0,
            seq: 0,
        };
        let mut after = None;
        loop {
            let page = snapshot
                .page(
                    job.project_id,
                    &resource_type,
                    &scope,
                    params.since,
                    &[&filter, &narrowing],
                    after,
                    PAGE,
                )
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            let full = page.len() as i64 == PAGE;
            exported += page.len() as u64;
            for (_, content) in page {
                if hides {
                    let mut value: Value = serde_json::from_str(&content).map_err(|e| {
                        Error::Internal(format!("stored resource is not JSON: {e}"))
                    })?;
                    caller.policy.redact(&mut value);
                    output.push(&value.to_string());
                } else if content.contains('\n') {
                    // One resource a line: stored JSON may be pretty-printed.
                    let value: Value = serde_json::from_str(&content).map_err(|e| {
                        Error::Internal(format!("stored resource is not JSON: {e}"))
                    })?;
                    output.push(&value.to_string());
                } else {
                    output.push(&content);
                }
                if !output.flush(false).await? {
                    return Ok(None);
                }
            }
            let progress = format!("{exported} resources exported ({resource_type})");
            if !state
                .store
                .renew_export_job(job.id, runner, LEASE, &progress)
                .await?
            {
                return Ok(None);
            }
            if !full {
                break;
            }
        }
        if !output.flush(true).await? {
            return Ok(None);
        }
    }
    let transaction_time = snapshot.transaction_time;
    snapshot.finish().await?;
    Ok(Some(transaction_time))
}
