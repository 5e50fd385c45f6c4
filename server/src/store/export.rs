//! Bulk Data `$export` jobs and their output
//! (`migrations/0031_bulk_export.sql`), and the snapshot an export reads.

use std::time::Duration;

use access_policy::RowFilter;
use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use futures_util::Stream;
use serde_json::Value;
use uuid::Uuid;

use super::{search, Query, Store, Tenant, Traced};
use crate::error::Result;

/// A job as the kick-off records it.
pub struct NewExportJob<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub membership_id: Uuid,
    pub login_id: Uuid,
    pub scope: &'a str,
    pub client_id: &'a str,
    pub request: &'a str,
    pub params: &'a Value,
}

/// A job as stored.
pub struct ExportJob {
    pub id: Uuid,
    pub project_id: Uuid,
    pub membership_id: Uuid,
    pub login_id: Uuid,
    pub scope: String,
    pub client_id: String,
    pub request: String,
    pub params: Value,
    pub status: String,
    pub progress: String,
    pub error: Option<String>,
    pub transaction_time: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, project_id, membership_id, login_id, scope, client_id, request, params, status, progress, error, transaction_time";

impl ExportJob {
    fn from_row(row: &tokio_postgres::Row) -> ExportJob {
        ExportJob {
            id: row.get("id"),
            project_id: row.get("project_id"),
            membership_id: row.get("membership_id"),
            login_id: row.get("login_id"),
            scope: row.get("scope"),
            client_id: row.get("client_id"),
            request: row.get("request"),
            params: row.get("params"),
            status: row.get("status"),
            progress: row.get("progress"),
            error: row.get("error"),
            transaction_time: row.get("transaction_time"),
        }
    }
}

/// Which resources an export reads.
pub enum ExportScope {
    /// Everything (`/$export`).
    System,
    /// Patients and what is in their compartments: every patient
    /// (`/Patient/$export`), or these (a Group's members).
    Patients(Option<Vec<Uuid>>),
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl Store {
    pub async fn create_export_job(&self, job: &NewExportJob<'_>) -> Result<()> {
        self.pool()
            .get()
            .await?
            .traced_execute(
                "INSERT INTO export_job (id, project_id, membership_id, login_id, scope, client_id, request, params)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&job.id, &job.project_id, &job.membership_id, &job.login_id, &job.scope, &job.client_id, &job.request, job.params],
            )
            .await?;
        Ok(())
    }

    /// A job of `project_id`.
    pub async fn export_job(&self, project_id: Uuid, id: Uuid) -> Result<Option<ExportJob>> {
        let rows = self
            .pool()
            .get()
            .await?
            .traced_query(
                &format!("SELECT {JOB_COLUMNS} FROM export_job WHERE project_id = $1 AND id = $2"),
                &[&project_id, &id],
            )
            .await?;
        Ok(rows.first().map(ExportJob::from_row))
    }

    /// The types a job of `project_id` wrote and how many resources of
    /// each, by type.
    pub async fn export_files(&self, project_id: Uuid, id: Uuid) -> Result<Vec<(String, i64)>> {
        let rows = self
            .pool()
            .get()
            .await?
            .traced_query(
                "SELECT o.resource_type, sum(o.lines)::bigint FROM export_output o
                 JOIN export_job j ON j.id = o.job_id WHERE j.project_id = $1 AND o.job_id = $2
                 GROUP BY o.resource_type ORDER BY o.resource_type",
                &[&project_id, &id],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Cancels a job of `project_id` and removes its output; false if there is none.
    pub async fn delete_export_job(&self, project_id: Uuid, id: Uuid) -> Result<bool> {
        let deleted = self
            .pool()
            .get()
            .await?
            .traced_execute(
                "DELETE FROM export_job WHERE project_id = $1 AND id = $2",
                &[&project_id, &id],
            )
            .await?;
        Ok(deleted > 0)
    }

    /// One type's NDJSON output of a job of `project_id`, chunk by chunk.
    pub fn export_file(
        &self,
        project_id: Uuid,
        id: Uuid,
        resource_type: &str,
    ) -> impl Stream<Item = Result<Bytes>> + 'static {
        let mut query = Query::new(
            "SELECT o.bytes FROM export_output o JOIN export_job j ON j.id = o.job_id WHERE j.project_id = ",
        );
        query
            .bind(project_id)
            .push(" AND o.job_id = ")
            .bind(id)
            .push(" AND o.resource_type = ")
            .bind(resource_type.to_string())
            .push(" ORDER BY o.seq");
        super::stream::first_column(self.pool().clone(), query)
    }

    /// Takes the oldest job waiting, or running under a lease that has
    /// passed (its instance stopped), for `runner`; other instances skip it.
    pub async fn claim_export_job(
        &self,
        runner: Uuid,
        lease: Duration,
    ) -> Result<Option<ExportJob>> {
        let rows = self
            .pool()
            .get()
            .await?
            .traced_query(
                &format!(
                    "UPDATE export_job SET status = 'running', runner = $1,
                            lease_until = now() + make_interval(secs => $2), progress = 'starting'
                     WHERE id = (SELECT id FROM export_job
                                 WHERE status = 'accepted' OR (status = 'running' AND lease_until < now())
                                 ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING {JOB_COLUMNS}"
                ),
                &[&runner, &seconds(lease)],
            )
            .await?;
        Ok(rows.first().map(ExportJob::from_row))
    }

    /// Removes what an earlier run of the job wrote: a job taken over starts again.
    pub async fn clear_export_output(&self, id: Uuid) -> Result<()> {
        self.pool()
            .get()
            .await?
            .traced_execute("DELETE FROM export_output WHERE job_id = $1", &[&id])
            .await?;
        Ok(())
    }

    /// Extends `runner`'s lease and records progress; false when the job is
    /// no longer `runner`'s (cancelled, or taken over).
    pub async fn renew_export_job(
        &self,
        id: Uuid,
        runner: Uuid,
        lease: Duration,
        progress: &str,
    ) -> Result<bool> {
        let updated = self
            .pool()
            .get()
            .await?
            .traced_execute(
                "UPDATE export_job SET lease_until = now() + make_interval(secs => $3), progress = $4
                 WHERE id = $1 AND runner = $2 AND status = 'running'",
                &[&id, &runner, &seconds(lease), &progress],
            )
            .await?;
        Ok(updated > 0)
    }

    /// Adds a chunk of NDJSON to a job `runner` still holds; false when it
    /// no longer does.
    pub async fn append_export_output(
        &self,
        id: Uuid,
        runner: Uuid,
        resource_type: &str,
        seq: i32,
        lines: i32,
        bytes: &[u8],
    ) -> Result<bool> {
        let inserted = self
            .pool()
            .get()
            .await?
            .traced_execute(
                "INSERT INTO export_output (job_id, resource_type, seq, lines, bytes)
                 SELECT $1, $3, $4, $5, $6 FROM export_job WHERE id = $1 AND runner = $2 AND status = 'running'",
                &[&id, &runner, &resource_type, &seq, &lines, &bytes],
            )
            .await?;
        Ok(inserted > 0)
    }

    /// Ends a job `runner` holds: complete as of `transaction_time`, or failed.
    pub async fn finish_export_job(
        &self,
        id: Uuid,
        runner: Uuid,
        outcome: std::result::Result<DateTime<Utc>, String>,
    ) -> Result<()> {
        let (status, transaction_time, error) = match outcome {
            Ok(time) => ("complete", Some(time), None),
            Err(error) => ("failed", None, Some(error)),
        };
        self.pool()
            .get()
            .await?
            .traced_execute(
                "UPDATE export_job SET status = $3, transaction_time = $4, error = $5,
                        completed_at = now(), lease_until = NULL, progress = ''
                 WHERE id = $1 AND runner = $2",
                &[&id, &runner, &status, &transaction_time, &error],
            )
            .await?;
        Ok(())
    }

    /// Deletes jobs (and their output) finished more than `retention` ago.
    pub async fn remove_expired_exports(&self, retention: Duration) -> Result<u64> {
        Ok(self
            .pool()
            .get()
            .await?
            .traced_execute(
                "DELETE FROM export_job WHERE completed_at < now() - make_interval(secs => $1)",
                &[&seconds(retention)],
            )
            .await?)
    }

    /// A read-only snapshot for one export: every page it reads sees the
    /// database as of its `transaction_time`.
    pub async fn export_snapshot(&self) -> Result<ExportSnapshot> {
        let client = self.pool().get().await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let mut snapshot = ExportSnapshot {
            client: Some(client),
            transaction_time: Utc::now(),
        };
        // The first statement takes the snapshot; now() is the transaction's start.
        let rows = snapshot.client()?.traced_query("SELECT now()", &[]).await?;
        snapshot.transaction_time = rows
            .first()
            .map(|row| row.get(0))
            .unwrap_or(snapshot.transaction_time);
        Ok(snapshot)
    }
}

/// A connection in a read-only REPEATABLE READ transaction. Dropped
/// without [`ExportSnapshot::finish`], the connection is closed rather than
/// returned to the pool in the middle of its transaction.
pub struct ExportSnapshot {
    client: Option<Object>,
    pub transaction_time: DateTime<Utc>,
}

impl ExportSnapshot {
    fn client(&self) -> Result<&Object> {
        self.client
            .as_ref()
            .ok_or_else(|| crate::error::Error::Internal("export snapshot finished".into()))
    }

    /// Up to `limit` live resources of one type of `project_id` in `scope`,
    /// changed after `since`, that pass every one of `filters` (the
    /// caller's policy, `_typeFilter`), in id order after `after`.
    #[allow(clippy::too_many_arguments)]
    pub async fn page(
        &self,
        project_id: Uuid,
        resource_type: &str,
        scope: &ExportScope,
        since: Option<DateTime<Utc>>,
        filters: &[&RowFilter<'_>],
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<(Uuid, String)>> {
        let mut q =
            Query::new("SELECT id, content FROM resource r WHERE NOT deleted AND resource_type = ");
        q.bind(resource_type.to_string())
            .tenant(Tenant::Project(project_id));
        if let Some(since) = since {
            q.push(" AND last_updated > ").bind(since);
        }
        match scope {
            ExportScope::System => {}
            ExportScope::Patients(patients) if resource_type == "Patient" => {
                if let Some(ids) = patients {
                    q.push(" AND id = ANY(").bind(ids.clone()).push(")");
                }
            }
            ExportScope::Patients(patients) => {
                q.push(" AND EXISTS (SELECT 1 FROM resource_compartment c WHERE c.project_id = r.project_id AND c.resource_type = r.resource_type AND c.resource_id = r.id AND c.compartment_type = 'Patient'");
                if let Some(ids) = patients {
                    q.push(" AND c.compartment_id = ANY(")
                        .bind(ids.clone())
                        .push(")");
                }
                q.push(")");
            }
        }
        for filter in filters {
            search::row_condition(&mut q, "r", filter)?;
        }
        if let Some(after) = after {
            q.push(" AND id > ").bind(after);
        }
        q.push(" ORDER BY id LIMIT ").bind(limit);
        let client = self.client()?;
        super::trace_statement(&q.sql);
        let statement = client.prepare_cached(&q.sql).await?;
        let rows = client.query(&statement, &q.values()).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn finish(mut self) -> Result<()> {
        if let Some(client) = self.client.take() {
            client.batch_execute("COMMIT").await?;
        }
        Ok(())
    }
}

impl Drop for ExportSnapshot {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}
