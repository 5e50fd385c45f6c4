//! The floor: fhirgate's own primary SQL for read-by-id and a token search,
//! a durable single-row insert of a resource-shaped row, and the rows
//! fhirgate writes for a transaction of 100 new resources (the resource rows
//! and every search-index row, one statement and one commit), run straight
//! against its PostgreSQL with one connection per worker and a statement
//! prepared once per connection (fhirgate caches its statements too). What
//! fhirgate adds on top (HTTP, auth, JSON, pool, search-index rows) is the gap.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use access_policy::{CompiledPolicy, Interaction, PolicyInput, Role, RowFilter, Types};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio_postgres::{types::ToSql, Client, NoTls, Statement};
use uuid::Uuid;

use crate::{
    data::{self, INCLUDE_CODE, LOINC_SYSTEM, MRN_SYSTEM},
    stats::{Recorder, ScenarioResult},
};

const READ_SQL: &str =
    "SELECT content FROM resource WHERE project_id = $1 AND resource_type = 'Patient' AND id = $2";

/// The page statement `store::search` builds for `Patient?identifier=system|value`
/// (driven by the token index, in id order; parameters inlined where they are constants).
const TOKEN_SQL: &str = "SELECT r.project_id, r.resource_type, r.id, r.version_id, r.last_updated, r.content \
    FROM (SELECT DISTINCT d.resource_id FROM idx_token d WHERE d.project_id = $1 AND d.resource_type = 'Patient' \
    AND d.param = 'identifier' AND d.system = $2 AND d.code = $3 ORDER BY d.resource_id ASC) d \
    JOIN resource r ON r.id = d.resource_id WHERE NOT r.deleted AND r.project_id = $1 \
    AND r.resource_type = 'Patient' ORDER BY r.id ASC LIMIT 21";

/// `search-include`'s two statements (`Observation?code=…&_include=Observation:subject&_count=20`)
/// as `store::search` builds them for a project admin once the statistics
/// know the project (`--analyze`): the page, driven by the token index, one
/// row more than a page to know there is a next; then the resources the
/// page's matches reference, under the caller's row filter ([`admin_filter`]).
const INCLUDE_PAGE_SQL: &str = "SELECT r.project_id, r.resource_type, r.id, r.version_id, r.last_updated, r.content \
    FROM (SELECT DISTINCT d.resource_id FROM idx_token d WHERE d.project_id = $1 AND d.resource_type = $2 \
    AND d.param = $3 AND d.system = $4 AND d.code = $5 ORDER BY d.resource_id ASC) d \
    JOIN resource r ON r.id = d.resource_id WHERE NOT r.deleted AND r.project_id = $6 AND r.resource_type = $7 \
    ORDER BY r.id ASC LIMIT $8";
const INCLUDE_SQL: &str = "(SELECT t.project_id, t.resource_type, t.id, t.version_id, t.last_updated, t.content \
    FROM idx_reference i JOIN resource t ON t.project_id = i.project_id AND t.resource_type = i.target_type \
    AND t.id = i.target_id WHERE NOT t.deleted AND i.project_id = $1 AND ((TRUE AND t.resource_type <> ALL($2)) \
    OR (TRUE AND t.resource_type = $3) OR (TRUE AND t.resource_type = $4) OR (TRUE AND t.resource_type = $5) \
    OR (TRUE AND t.resource_type = $6) OR (TRUE AND t.resource_type = $7) OR (TRUE AND t.resource_type = $8) \
    OR (TRUE AND t.resource_type = $9)) AND i.resource_type = $10 AND (i.param = $11) \
    AND i.resource_id = ANY($12)) LIMIT $13";
/// The most included resources `store::search` reads for one page.
const MAX_INCLUDED: i64 = 1000;

/// `search-chain`'s statement (`Observation?subject:Patient.identifier=system|value`)
/// as `store::search` builds it for a project's caller once the statistics
/// know the project: the page's ids from the indexes, the chain an `EXISTS`
/// through the reference and token indexes, then the page's rows.
const CHAIN_SQL: &str = "SELECT r.project_id, r.resource_type, r.id, r.version_id, r.last_updated, r.content \
    FROM resource r WHERE (r.project_id, r.resource_type, r.id) IN (SELECT r.project_id, r.resource_type, r.id \
    FROM resource r WHERE NOT r.deleted AND r.project_id = $1 AND r.resource_type = $2 \
    AND EXISTS (SELECT 1 FROM idx_reference c1 JOIN resource t2 ON t2.project_id = c1.project_id \
    AND t2.resource_type = c1.target_type AND t2.id = c1.target_id WHERE c1.project_id = r.project_id \
    AND c1.resource_type = r.resource_type AND c1.resource_id = r.id AND (c1.param = $3) AND c1.target_type = $4 \
    AND NOT t2.deleted AND EXISTS (SELECT 1 FROM idx_token i3 WHERE i3.project_id = t2.project_id \
    AND i3.resource_type = t2.resource_type AND i3.resource_id = t2.id AND (i3.param = $5) \
    AND ((i3.system = $6 AND i3.code = $7)))) ORDER BY r.id ASC LIMIT $8) ORDER BY r.id ASC";

/// A search page's `LIMIT`: the scenarios' 20 (asked for, or the default) and one more.
const PAGE_LIMIT: i64 = 21;

/// The values a project admin's row filter binds in an include statement
/// (whose types are not known in advance): the types `*` leaves out, then
/// each administrative type its role grants, in the policy's order.
fn admin_filter() -> Result<(Vec<String>, Vec<String>), String> {
    let policy = CompiledPolicy::compile(&PolicyInput {
        role: Role::ProjectAdmin,
        profile: "ClientApplication/bench",
        policies: Vec::new(),
        policy_required: false,
        scopes: &[],
    });
    let RowFilter::AnyOf(branches) = policy.row_filter(&[], Interaction::Search) else {
        return Err("baseline-search-include: a project admin's row filter has no branches".into());
    };
    // INCLUDE_SQL's shape: the ordinary types' branch, then one a type.
    let mut types = Vec::new();
    for (n, branch) in branches.iter().enumerate() {
        match (n, branch.types) {
            (0, Types::Ordinary) => {}
            (1.., Types::One(t)) => types.push(t.to_string()),
            _ => {
                return Err(format!(
                    "baseline-search-include: a project admin's row filter is not INCLUDE_SQL's: {branches:?}"
                ))
            }
        }
    }
    let outside = access_policy::outside_star().map(str::to_string).collect();
    Ok((outside, types))
}

/// `resource`'s shape and primary key, without its search-index rows or
/// secondary indexes: what one create costs PostgreSQL at the least (one row,
/// one commit, WAL flushed). A table of the tool's own, dropped afterwards.
const INSERT_TABLE: &str = "fhirgate_bench_baseline_insert";

fn insert_sql() -> String {
    format!(
        "INSERT INTO {INSERT_TABLE} (project_id, resource_type, id, version_id, last_updated, content) \
         VALUES ($1, 'Observation', $2, $2, now(), $3)"
    )
}

async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL for the baseline: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("baseline: PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}

/// Refreshes the planner's statistics on fhirgate's tables, and vacuums them
/// as autovacuum would after a load (which also lets index-only scans skip
/// the heap); then checkpoints, so that the scenarios do not run while the
/// load's dirty pages are still being written (measured at 100,000 Patients:
/// reads at half speed and a p99 of 63 ms until the writes ended).
pub async fn analyze(url: &str) -> Result<(), String> {
    let client = connect(url).await?;
    client
        .batch_execute(
            "VACUUM (ANALYZE) resource, resource_history, idx_token, idx_string, idx_date, \
             idx_number, idx_quantity, idx_reference, idx_uri, idx_composite, idx_text, \
             resource_compartment",
        )
        .await
        .map_err(|e| format!("VACUUM (ANALYZE): {e}"))?;
    // CHECKPOINT needs a superuser or pg_checkpoint; without, the run goes on.
    if let Err(e) = client.batch_execute("CHECKPOINT").await {
        eprintln!("analyze: CHECKPOINT refused ({e}); scenarios may overlap the load's writes");
    }
    Ok(())
}

/// The tables a new resource has rows in, each with the column naming the
/// resource (`store::index`'s tables and `resource`).
const RESOURCE_TABLES: [(&str, &str); 11] = [
    ("resource", "id"),
    ("idx_token", "resource_id"),
    ("idx_string", "resource_id"),
    ("idx_date", "resource_id"),
    ("idx_number", "resource_id"),
    ("idx_quantity", "resource_id"),
    ("idx_reference", "resource_id"),
    ("idx_uri", "resource_id"),
    ("idx_composite", "resource_id"),
    ("idx_text", "resource_id"),
    ("resource_compartment", "resource_id"),
];

/// Copies of a sample's rows, one table of the tool's own per table in
/// [`RESOURCE_TABLES`], named with this prefix and dropped afterwards.
const INGEST_PREFIX: &str = "fhirgate_bench_ingest_";

/// The `transaction` scenario's Bundle: 10 × (Patient, Encounter, 6
/// Observations, 2 Conditions).
const INGEST_SAMPLE: [(&str, usize); 4] = [
    ("Patient", 10),
    ("Encounter", 10),
    ("Observation", 60),
    ("Condition", 20),
];

enum Kind {
    Read {
        project: Uuid,
        ids: Vec<Uuid>,
    },
    Token {
        project: Uuid,
        codes: Vec<String>,
    },
    /// The page, then what it includes, as `search-include` runs them;
    /// the row filter's values from [`admin_filter`].
    Include {
        project: Uuid,
        outside: Vec<String>,
        admin_types: Vec<String>,
    },
    Chain {
        project: Uuid,
        codes: Vec<String>,
    },
    Insert {
        project: Uuid,
        content: String,
    },
    /// The sample's rows again under new ids in `project`, a project of the
    /// baseline's own (so no search of the loaded one sees them), by `sql`.
    Ingest {
        project: Uuid,
        sample: Vec<Uuid>,
        sql: String,
    },
}

/// Runs `baseline-read`, `baseline-search-token`, `baseline-search-include`,
/// `baseline-search-chain`, `baseline-insert` and `baseline-ingest`.
pub async fn run(
    url: &str,
    concurrency: usize,
    duration: Duration,
    seed: u64,
) -> Result<Vec<ScenarioResult>, String> {
    let client = connect(url).await?;
    // Patients, from the project holding most of them.
    let rows = client
        .query(
            "SELECT project_id, id FROM resource WHERE resource_type='Patient' AND NOT deleted LIMIT 1000",
            &[],
        )
        .await
        .map_err(|e| format!("baseline: listing Patients: {e}"))?;
    let mut by_project: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for row in rows {
        by_project.entry(row.get(0)).or_default().push(row.get(1));
    }
    let (project, ids) = by_project
        .into_iter()
        .max_by_key(|(_, ids)| ids.len())
        .ok_or("baseline: no Patient in the database")?;
    let rows = client
        .query(
            "SELECT code FROM idx_token WHERE project_id = $1 AND resource_type = 'Patient' \
             AND param = 'identifier' AND system = $2 LIMIT 1000",
            &[&project, &MRN_SYSTEM],
        )
        .await
        .map_err(|e| format!("baseline: listing identifiers: {e}"))?;
    let codes: Vec<String> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect();
    drop(client);

    // The token and chain searches look a loaded Patient up by identifier.
    let no_codes = |name: &str| {
        ScenarioResult::skipped(
            name,
            format!("no {MRN_SYSTEM} identifier in idx_token for project {project}"),
        )
    };
    let run = |name: &'static str, kind: Kind| {
        measure(url, concurrency, duration, seed, name, Arc::new(kind))
    };
    let read = run("baseline-read", Kind::Read { project, ids }).await?;
    let token = if codes.is_empty() {
        no_codes("baseline-search-token")
    } else {
        run(
            "baseline-search-token",
            Kind::Token {
                project,
                codes: codes.clone(),
            },
        )
        .await?
    };
    let (outside, admin_types) = admin_filter()?;
    let include = run(
        "baseline-search-include",
        Kind::Include {
            project,
            outside,
            admin_types,
        },
    )
    .await?;
    let chain = if codes.is_empty() {
        no_codes("baseline-search-chain")
    } else {
        run("baseline-search-chain", Kind::Chain { project, codes }).await?
    };
    let insert = measure_insert(url, concurrency, duration, seed, project).await?;
    let ingest = measure_ingest(url, concurrency, duration, seed, project).await?;
    Ok(vec![read, token, include, chain, insert, ingest])
}

/// Runs `sql` on the connection that makes and drops a baseline's scratch
/// tables; a failure names the baseline and the statement.
async fn scratch(owner: &Client, baseline: &str, sql: String) -> Result<(), String> {
    owner
        .batch_execute(&sql)
        .await
        .map_err(|e| format!("{baseline}: {sql}: {e}"))
}

/// `baseline-ingest`: copies a sample of the loaded project's resources
/// shaped like the `transaction` scenario's Bundle, with their index rows,
/// then writes them again and again under new ids (time-ordered, as
/// fhirgate's) into fhirgate's own tables, 100 resources a statement and a
/// commit; what is written is deleted afterwards.
async fn measure_ingest(
    url: &str,
    concurrency: usize,
    duration: Duration,
    seed: u64,
    loaded: Uuid,
) -> Result<ScenarioResult, String> {
    let owner = &connect(url).await?;
    let run = |sql: String| scratch(owner, "baseline-ingest", sql);
    let picks: Vec<String> = INGEST_SAMPLE
        .iter()
        .map(|(resource_type, count)| {
            format!(
                "(SELECT id FROM resource WHERE project_id = '{loaded}' AND resource_type = '{resource_type}' \
                 AND NOT deleted ORDER BY id LIMIT {count})"
            )
        })
        .collect();
    run(format!(
        "DROP TABLE IF EXISTS {INGEST_PREFIX}sample; CREATE TABLE {INGEST_PREFIX}sample AS {}",
        picks.join(" UNION ALL ")
    ))
    .await?;
    let mut writes = Vec::new();
    for (table, id_column) in RESOURCE_TABLES {
        run(format!(
            "DROP TABLE IF EXISTS {INGEST_PREFIX}{table}; \
             CREATE TABLE {INGEST_PREFIX}{table} AS SELECT t.* FROM {table} t \
             WHERE t.project_id = '{loaded}' AND t.{id_column} IN (SELECT id FROM {INGEST_PREFIX}sample)"
        ))
        .await?;
        let columns: Vec<String> = owner
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
                &[&table],
            )
            .await
            .map_err(|e| format!("baseline-ingest: columns of {table}: {e}"))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let values: Vec<String> = columns
            .iter()
            .map(|column| match column.as_str() {
                "project_id" => "$3::uuid".to_string(),
                c if c == id_column || (table == "resource" && c == "version_id") => {
                    "m.new".to_string()
                }
                "last_updated" => "now()".to_string(),
                c => format!("s.{c}"),
            })
            .collect();
        // The resource rows come back counted, so a statement that wrote
        // fewer than the sample counts as failed.
        let returning = if table == "resource" {
            " RETURNING 1"
        } else {
            ""
        };
        writes.push(format!(
            "w_{table} AS (INSERT INTO {table} ({}) SELECT {} FROM {INGEST_PREFIX}{table} s \
             JOIN m ON m.old = s.{id_column}{returning})",
            columns.join(", "),
            values.join(", ")
        ));
    }
    let sample: Vec<Uuid> = owner
        .query(&format!("SELECT id FROM {INGEST_PREFIX}sample"), &[])
        .await
        .map_err(|e| format!("baseline-ingest: sample: {e}"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let sql = format!(
        "WITH m AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) AS m (old, new)), {} SELECT count(*) FROM w_resource",
        writes.join(", ")
    );
    let project = Uuid::new_v4();
    let result = if sample.is_empty() {
        Ok(ScenarioResult::skipped(
            "baseline-ingest",
            format!("no resources to copy in project {loaded}"),
        ))
    } else {
        measure(
            url,
            concurrency,
            duration,
            seed,
            "baseline-ingest",
            Arc::new(Kind::Ingest {
                project,
                sample,
                sql,
            }),
        )
        .await
    };
    let mut cleanup: Vec<String> = RESOURCE_TABLES
        .iter()
        .map(|(table, _)| format!("DELETE FROM {table} WHERE project_id = '{project}'; DROP TABLE {INGEST_PREFIX}{table}"))
        .collect();
    cleanup.push(format!("DROP TABLE {INGEST_PREFIX}sample"));
    run(cleanup.join("; ")).await?;
    result
}

async fn measure_insert(
    url: &str,
    concurrency: usize,
    duration: Duration,
    seed: u64,
    project: Uuid,
) -> Result<ScenarioResult, String> {
    // One connection of its own makes the table and drops it again.
    let owner = &connect(url).await?;
    let ddl = |sql: String| scratch(owner, "baseline-insert", sql);
    ddl(format!(
        "DROP TABLE IF EXISTS {INSERT_TABLE}; \
         CREATE TABLE {INSERT_TABLE} (LIKE resource INCLUDING DEFAULTS, \
         PRIMARY KEY (project_id, resource_type, id))"
    ))
    .await?;
    // The body the `create` scenario posts, as fhirgate stores it.
    let mut rng = StdRng::seed_from_u64(seed);
    let content = data::observation(
        &mut rng,
        &format!("Patient/{}", Uuid::now_v7()),
        None,
        "2024-01-01T12:00:00Z",
    )
    .to_string();
    let result = measure(
        url,
        concurrency,
        duration,
        seed,
        "baseline-insert",
        Arc::new(Kind::Insert { project, content }),
    )
    .await;
    ddl(format!("DROP TABLE {INSERT_TABLE}")).await?;
    result
}

/// Reads the content out, as fhirgate does; whether there was a row.
fn content_read(rows: Vec<tokio_postgres::Row>) -> bool {
    let bytes: usize = rows.iter().map(|r| r.get::<_, &str>("content").len()).sum();
    std::hint::black_box(bytes);
    !rows.is_empty()
}

/// `search-include`'s round trips: the page, then what its matches (not
/// the row beyond the page) reference; whether both found rows.
async fn include(
    client: &Client,
    statements: &[Statement],
    project: &Uuid,
    outside: &Vec<String>,
    admin_types: &[String],
) -> Result<bool, tokio_postgres::Error> {
    let page = client
        .query(
            &statements[0],
            &[
                project,
                &"Observation",
                &"code",
                &LOINC_SYSTEM,
                &INCLUDE_CODE,
                project,
                &"Observation",
                &PAGE_LIMIT,
            ],
        )
        .await?;
    let matches: Vec<Uuid> = page
        .iter()
        .take(PAGE_LIMIT as usize - 1)
        .map(|row| row.get("id"))
        .collect();
    if !content_read(page) {
        return Ok(false);
    }
    let mut values: Vec<&(dyn ToSql + Sync)> = vec![project, outside];
    values.extend(admin_types.iter().map(|t| t as &(dyn ToSql + Sync)));
    values.extend([
        &"Observation" as &(dyn ToSql + Sync),
        &"subject",
        &matches,
        &MAX_INCLUDED,
    ]);
    let included = client.query(&statements[1], &values).await?;
    Ok(content_read(included))
}

async fn measure(
    url: &str,
    concurrency: usize,
    duration: Duration,
    seed: u64,
    name: &str,
    kind: Arc<Kind>,
) -> Result<ScenarioResult, String> {
    // Connect everyone before the clock starts.
    let mut clients = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let client = connect(url).await?;
        let sql = match &*kind {
            Kind::Read { .. } => vec![READ_SQL.to_string()],
            Kind::Token { .. } => vec![TOKEN_SQL.to_string()],
            Kind::Include { .. } => vec![INCLUDE_PAGE_SQL.to_string(), INCLUDE_SQL.to_string()],
            Kind::Chain { .. } => vec![CHAIN_SQL.to_string()],
            Kind::Insert { .. } => vec![insert_sql()],
            Kind::Ingest { sql, .. } => vec![sql.clone()],
        };
        let mut statements = Vec::with_capacity(sql.len());
        for sql in sql {
            statements.push(
                client
                    .prepare(&sql)
                    .await
                    .map_err(|e| format!("{name}: prepare: {e}"))?,
            );
        }
        clients.push((client, statements));
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = tokio::task::JoinSet::new();
    for (worker, (client, statements)) in clients.into_iter().enumerate() {
        let kind = kind.clone();
        workers.spawn(async move {
            let mut rng =
                StdRng::seed_from_u64(seed ^ 0xba5e_0000_0000 ^ ((worker as u64 + 1) << 32));
            let mut rec = Recorder::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let statement = &statements[0];
                let result = match &*kind {
                    Kind::Read { project, ids } => {
                        let id = &ids[rng.gen_range(0..ids.len())];
                        client
                            .query(statement, &[project, id])
                            .await
                            .map(content_read)
                    }
                    Kind::Token { project, codes } => {
                        let code = &codes[rng.gen_range(0..codes.len())];
                        client
                            .query(statement, &[project, &MRN_SYSTEM, code])
                            .await
                            .map(content_read)
                    }
                    Kind::Include {
                        project,
                        outside,
                        admin_types,
                    } => include(&client, &statements, project, outside, admin_types).await,
                    Kind::Chain { project, codes } => {
                        let code = &codes[rng.gen_range(0..codes.len())];
                        client
                            .query(
                                statement,
                                &[
                                    project,
                                    &"Observation",
                                    &"subject",
                                    &"Patient",
                                    &"identifier",
                                    &MRN_SYSTEM,
                                    code,
                                    &PAGE_LIMIT,
                                ],
                            )
                            .await
                            .map(content_read)
                    }
                    Kind::Insert { project, content } => client
                        .execute(statement, &[project, &Uuid::now_v7(), content])
                        .await
                        .map(|inserted| inserted == 1),
                    Kind::Ingest {
                        project, sample, ..
                    } => {
                        let ids: Vec<Uuid> = sample.iter().map(|_| Uuid::now_v7()).collect();
                        let written = client
                            .query_one(statement, &[sample, &ids, project])
                            .await
                            .map(|row| row.get::<_, i64>(0) as u64);
                        if let Ok(n) = written {
                            rec.resources += n;
                        }
                        written.map(|n| n == sample.len() as u64)
                    }
                };
                match result {
                    Ok(true) => rec.ok(t.elapsed()),
                    Ok(false) => rec.error("no row".into()),
                    Err(e) => rec.error(e.to_string()),
                }
            }
            rec
        });
    }
    let total = Recorder::join(workers).await;
    Ok(ScenarioResult::from_recorder(
        name,
        total,
        start.elapsed().as_secs_f64(),
        matches!(*kind, Kind::Ingest { .. }),
    ))
}
