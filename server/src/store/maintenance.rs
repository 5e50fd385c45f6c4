//! Operator commands' SQL: rebuilding search index rows from stored
//! resources (`fhirgate reindex`) and comparing them with what extraction
//! gives today (`fhirgate check`), in batches of short transactions so the
//! server keeps serving.

use uuid::Uuid;

use super::index::{self, IndexRows};
use super::{Query, Store};
use crate::error::Result;

/// A resource's position in the walk: `(project, type, id)` order.
pub type Position = (Uuid, String, Uuid);

/// What a walk covers.
pub struct Scope<'a> {
    pub project_id: Option<Uuid>,
    pub resource_type: Option<&'a str>,
}

impl Scope<'_> {
    /// The key of this scope's saved cursor.
    fn key(&self) -> String {
        format!(
            "project={} type={}",
            self.project_id.map(|p| p.to_string()).unwrap_or_default(),
            self.resource_type.unwrap_or_default()
        )
    }
}

/// One live resource to index.
pub struct Stored {
    pub project_id: Uuid,
    pub resource_type: String,
    pub id: Uuid,
    pub content: String,
}

/// `md5` of every index row of each resource of `$1` project, `$2` type with
/// an id in `$3`: what a comparison before and after a rewrite looks at.
fn digest_sql() -> String {
    let rows: Vec<String> = index::TABLES
        .iter()
        .map(|(table, columns)| {
            let values: Vec<String> = columns.iter().map(|(c, _)| format!("{c}::text")).collect();
            format!(
                "SELECT resource_id, '{table}' || chr(31) || concat_ws(chr(31), {}) AS row_text FROM {table} \
                 WHERE project_id = $1 AND resource_type = $2 AND resource_id = ANY($3)",
                values.join(", ")
            )
        })
        .collect();
    format!(
        "SELECT resource_id, md5(string_agg(row_text, chr(30) ORDER BY row_text)) FROM ({}) x GROUP BY resource_id",
        rows.join(" UNION ALL ")
    )
}

/// Replaces the index rows of `resources` (all of one project and type).
fn rewrite_sql(tables: usize) -> String {
    let deletes: Vec<String> = index::TABLES
        .iter()
        .enumerate()
        .map(|(n, (table, _))| {
            format!("d{n} AS (DELETE FROM {table} WHERE project_id = $1 AND resource_type = $2 AND resource_id = ANY($3))")
        })
        .collect();
    let mut ctes = deletes;
    ctes.extend(index::insert_ctes(4, tables));
    format!("WITH {} SELECT 1", ctes.join(", "))
}

impl Store {
    /// Up to `limit` live resources in `scope` after `after`, in order.
    pub async fn resources_after(
        &self,
        scope: &Scope<'_>,
        after: Option<&Position>,
        limit: i64,
    ) -> Result<Vec<Stored>> {
        let mut q = Query::new(
            "SELECT project_id, resource_type, id, content FROM resource WHERE NOT deleted",
        );
        if let Some(project) = scope.project_id {
            q.push(" AND project_id = ").bind(project);
        }
        if let Some(resource_type) = scope.resource_type {
            q.push(" AND resource_type = ")
                .bind(resource_type.to_string());
        }
        if let Some((project, resource_type, id)) = after {
            q.push(" AND (project_id, resource_type, id) > (")
                .bind(*project)
                .push(", ")
                .bind(resource_type.clone())
                .push(", ")
                .bind(*id)
                .push(")");
        }
        q.push(" ORDER BY project_id, resource_type, id LIMIT ")
            .bind(limit);
        let client = self.pool().get().await?;
        let rows = super::run_on(&client, &q).await?;
        Ok(rows
            .iter()
            .map(|r| Stored {
                project_id: r.get(0),
                resource_type: r.get(1),
                id: r.get(2),
                content: r.get(3),
            })
            .collect())
    }

    /// Writes the index rows of `resources` (one project and type, each
    /// with its extracted values) in one transaction, holding their rows'
    /// locks so no write interleaves. With `dry_run`, rolls back and only
    /// returns the resources whose rows would change.
    pub async fn rewrite_index(
        &self,
        project_id: Uuid,
        resource_type: &str,
        resources: &[(Uuid, Vec<fhir_model::search::IndexValue>)],
        dry_run: bool,
    ) -> Result<Vec<Uuid>> {
        let mut client = self.pool().get().await?;
        let tx = client.transaction().await?;
        let ids: Vec<Uuid> = resources.iter().map(|(id, _)| *id).collect();
        tx.execute(
            "SELECT 1 FROM resource WHERE project_id = $1 AND resource_type = $2 AND id = ANY($3) FOR UPDATE",
            &[&project_id, &resource_type, &ids],
        )
        .await?;
        let digest = digest_sql();
        let before = if dry_run {
            tx.query(&digest, &[&project_id, &resource_type, &ids])
                .await?
        } else {
            Vec::new()
        };
        let mut rows = IndexRows::default();
        for (id, values) in resources {
            rows.add(project_id, resource_type, *id, values);
        }
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&project_id, &resource_type, &ids];
        params.extend(rows.params());
        tx.execute(&rewrite_sql(rows.tables_with_rows()), &params)
            .await?;
        if !dry_run {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let after = tx
            .query(&digest, &[&project_id, &resource_type, &ids])
            .await?;
        tx.rollback().await?;
        let digests = |rows: &[tokio_postgres::Row]| -> std::collections::HashMap<Uuid, String> {
            rows.iter().map(|r| (r.get(0), r.get(1))).collect()
        };
        let (before, after) = (digests(&before), digests(&after));
        Ok(ids
            .into_iter()
            .filter(|id| before.get(id) != after.get(id))
            .collect())
    }

    /// Where an earlier run over `scope` stopped.
    pub async fn reindex_cursor(&self, scope: &Scope<'_>) -> Result<Option<Position>> {
        let row = self
            .pool()
            .get()
            .await?
            .query_opt(
                "SELECT project_id, resource_type, id FROM reindex_cursor WHERE scope = $1",
                &[&scope.key()],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1), r.get(2))))
    }

    /// Records progress over `scope` (`None`: the run is complete).
    pub async fn save_reindex_cursor(
        &self,
        scope: &Scope<'_>,
        at: Option<&Position>,
    ) -> Result<()> {
        let client = self.pool().get().await?;
        match at {
            Some((project, resource_type, id)) => {
                client
                    .execute(
                        "INSERT INTO reindex_cursor (scope, project_id, resource_type, id) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (scope) DO UPDATE SET project_id = $2, resource_type = $3, id = $4",
                        &[&scope.key(), project, resource_type, id],
                    )
                    .await?
            }
            None => {
                client
                    .execute("DELETE FROM reindex_cursor WHERE scope = $1", &[&scope.key()])
                    .await?
            }
        };
        Ok(())
    }
}
