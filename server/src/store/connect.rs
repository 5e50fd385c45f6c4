//! Connecting to PostgreSQL: the pool, creating the database when it is
//! missing, and applying the embedded migrations exactly once.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{error::SqlState, Config as PgConfig, NoTls};

use crate::error::{Error, Result};

/// One `migrations/*.sql` file, embedded at build time by `build.rs`.
pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

pub static MIGRATIONS: &[Migration] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Serialises start-up work (migrations, bootstrap) between instances that
/// start at the same moment: `pg_advisory_lock` key, "fhirgate" in ASCII.
pub const STARTUP_LOCK: i64 = 0x6668_6972_6761_7465;

/// Opens the pool, creating the database first if PostgreSQL says it does
/// not exist. Fails with a message that says what was tried and how to fix it.
/// A request waits at most `queue_timeout` for a connection (then
/// [`deadpool_postgres::PoolError::Timeout`], a 503).
pub async fn connect(
    database_url: &str,
    pool_size: usize,
    statement_timeout: Duration,
    queue_timeout: Duration,
) -> Result<Pool> {
    let config = pool_config(database_url, statement_timeout)?;
    let pool = build_pool(config.clone(), pool_size, queue_timeout)?;
    match pool.get().await {
        Ok(_) => Ok(pool),
        Err(e) if is_missing_database(&e) => {
            create_database(&config).await?;
            drop(pool.get().await.map_err(|e| unreachable(&config, &e))?);
            Ok(pool)
        }
        Err(e) => Err(unreachable(&config, &e)),
    }
}

/// Pools like [`connect`]'s that open their connections when first asked
/// (after `connect` has made sure the database exists).
pub fn more_pools(
    database_url: &str,
    pool_size: usize,
    statement_timeout: Duration,
    queue_timeout: Duration,
    count: usize,
) -> Result<Vec<Pool>> {
    let config = pool_config(database_url, statement_timeout)?;
    (0..count)
        .map(|_| build_pool(config.clone(), pool_size, queue_timeout))
        .collect()
}

fn pool_config(database_url: &str, statement_timeout: Duration) -> Result<PgConfig> {
    let mut config = pg_config(database_url)?;
    // A query whose client has gone keeps running in PostgreSQL; the timeout
    // bounds how long it can hold a pooled connection. JIT compiles a
    // statement whose estimated cost is high, which a page walked through
    // indexes can have and not need: a super admin's name search across
    // three projects took 23 ms, 22 of them compiling, on 100,000 Patients.
    config.options(format!(
        "-c statement_timeout={} -c jit=off",
        statement_timeout.as_millis()
    ));
    Ok(config)
}

/// `DATABASE_URL` parsed.
pub fn pg_config(database_url: &str) -> Result<PgConfig> {
    database_url.parse().map_err(|e| {
        Error::Config(format!(
            "DATABASE_URL is not a valid PostgreSQL URL ({e}); expected postgres://user[:password]@host:port/database"
        ))
    })
}

fn build_pool(config: PgConfig, size: usize, queue_timeout: Duration) -> Result<Pool> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(queue_timeout))
        .build()
        .map_err(|e| Error::Config(format!("database pool: {e}")))
}

fn is_missing_database(error: &deadpool_postgres::PoolError) -> bool {
    matches!(error, deadpool_postgres::PoolError::Backend(e)
        if e.code() == Some(&SqlState::INVALID_CATALOG_NAME))
}

/// `CREATE DATABASE` through the `postgres` maintenance database. DDL takes no
/// bind parameters, so the name is quoted as an identifier.
async fn create_database(config: &PgConfig) -> Result<()> {
    let name = config.get_dbname().unwrap_or("postgres").to_string();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(NoTls)
        .await
        .map_err(|e| unreachable(&admin, &e))?;
    let connection = tokio::spawn(connection);
    let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
    match client.batch_execute(&sql).await {
        Ok(()) => tracing::info!(database = %name, "created database"),
        // Another instance created it a moment ago: fine. (A race inside
        // CREATE DATABASE surfaces as a unique violation on pg_database.)
        Err(e) if matches!(e.code(), Some(c) if *c == SqlState::DUPLICATE_DATABASE || *c == SqlState::UNIQUE_VIOLATION) => {}
        Err(e) => {
            return Err(Error::Startup(format!(
                "could not create database '{name}' on {}: {}. Create it by hand or give DATABASE_URL a database that exists",
                describe(config),
                root_cause(&e)
            )))
        }
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// `host:port (database D, user U)`, never the password.
pub fn describe(config: &PgConfig) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "PostgreSQL at {host}:{port} (database '{}', user '{}')",
        config.get_dbname().unwrap_or("?"),
        config.get_user().unwrap_or("?")
    )
}

fn unreachable(config: &PgConfig, error: &dyn std::error::Error) -> Error {
    Error::Startup(format!(
        "cannot connect to {}: {}. Start PostgreSQL (for example `pg_ctlcluster 15 main start`) or point DATABASE_URL at a running server",
        describe(config),
        root_cause(error)
    ))
}

/// The innermost cause, which is the one a person can act on ("Connection refused").
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

/// Applies every embedded migration that is not yet recorded, each in its own
/// transaction together with its record. The caller holds [`STARTUP_LOCK`].
pub async fn migrate(client: &mut deadpool_postgres::Client) -> Result<usize> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                name       text        PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
    let applied: Vec<String> = client
        .query("SELECT name FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut count = 0;
    for migration in MIGRATIONS
        .iter()
        .filter(|m| !applied.iter().any(|a| a == m.name))
    {
        let tx = client.transaction().await?;
        // Building an index on a large table takes longer than the request
        // statement timeout allows.
        tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (name) VALUES ($1)",
            &[&migration.name],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = migration.name, "applied migration");
        count += 1;
    }
    Ok(count)
}
