//! The `fhirgate` binary: the server (no subcommand, or `serve`), and the
//! operator's commands. Configuration comes from the environment, as ever;
//! the commands that talk HTTP take the server's address as options.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirgate_server::{config::LogFormat, store::maintenance::Scope, Application, Config};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fhirgate",
    version,
    about = "A FHIR R4 server with identity and access control"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where a FHIR server is and how to sign in to it (client credentials).
#[derive(clap::Args)]
struct Server {
    /// The server's root, e.g. http://127.0.0.1:8103/
    #[arg(long)]
    base_url: String,
    #[arg(long)]
    client_id: String,
    #[arg(long)]
    client_secret: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (what `fhirgate` alone does); configured by FHIRGATE_* variables.
    Serve,
    /// Apply the database migrations not yet applied, then exit.
    Migrate,
    /// Import NDJSON files, Bundle files and directories of them (Synthea's output works as it is).
    Import {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        server: Server,
        /// Transaction Bundles in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Resources per transaction Bundle from NDJSON files.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
        /// Where progress is kept; run the same command again to resume from it.
        #[arg(long, default_value = ".fhirgate-import.journal")]
        journal: PathBuf,
    },
    /// Run a Bulk Data $export on any server and download its NDJSON files.
    Export {
        #[command(flatten)]
        server: Server,
        /// `$export` (default), `Patient/$export` or `Group/{id}/$export`.
        #[arg(long, default_value = "$export")]
        endpoint: String,
        /// Resource types, comma-separated (`_type`).
        #[arg(long = "type")]
        types: Option<String>,
        /// Only resources changed after this instant (`_since`).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Rebuild search index rows from stored resources, in batches, while the server serves; resumable.
    Reindex {
        #[arg(long)]
        project: Option<String>,
        #[arg(long = "type")]
        resource_type: Option<String>,
    },
    /// Report every resource whose index rows differ from what extraction gives today; changes nothing.
    Check {
        #[arg(long)]
        project: Option<String>,
        #[arg(long = "type")]
        resource_type: Option<String>,
    },
}

/// mimalloc rather than glibc's allocator: under the request mix (many
/// short-lived JSON trees across threads) glibc spent a third of the CPU of
/// a transaction Bundle in malloc/free and kept freed memory resident.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Freed memory goes back to the OS at once instead of after mimalloc's
/// 10 ms delay, unless `MIMALLOC_PURGE_DELAY` says otherwise: on 2 cores
/// under the benchmark, peak resident 102 -> 84 MiB at 2-6% of throughput.
fn return_freed_memory_at_once() {
    // `mi_option_purge_delay` in mimalloc 2's `mimalloc.h`; libmimalloc-sys
    // names the options on either side of it (14 and 16) but not this one.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide option that mimalloc reads at every purge.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    }
}

/// Logs to stdout. A log line that cannot be written (the reader of a pipe
/// went away) is dropped without a word: tracing-subscriber would otherwise
/// report it on stderr, and `eprintln!` panics when stderr is that same
/// broken pipe, so logging could take the server down.
fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// Resolves at the first SIGTERM or SIGINT. The handlers are installed when
/// this is called, so call it first: a signal during start-up is kept.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = Cli::parse().command.unwrap_or(Command::Serve);
    match run_command(command).await {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fhirgate: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand; `Err` is the one line to print.
async fn run_command(command: Command) -> Result<ExitCode, String> {
    use fhirgate_client::{export, import};
    match command {
        Command::Serve => Ok(serve().await),
        Command::Import {
            paths,
            server,
            concurrency,
            batch_size,
            journal,
        } => {
            let api = connect(&server).await?;
            let started = std::time::Instant::now();
            let options = import::ImportOptions {
                paths,
                concurrency,
                batch_size,
                journal,
            };
            let summary = import::run(&api, &options)
                .await
                .map_err(|e| e.to_string())?;
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "imported {} resources from {} files in {seconds:.1} s ({:.0}/s); {} rejected; {} batches already done",
                summary.imported,
                summary.files,
                summary.imported as f64 / seconds.max(0.001),
                summary.rejected,
                summary.skipped_batches
            );
            Ok(if summary.rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        Command::Export {
            server,
            endpoint,
            types,
            since,
            out,
        } => {
            let api = connect(&server).await?;
            let options = export::ExportOptions {
                endpoint,
                types,
                since,
                out,
            };
            for file in export::run(&api, &options)
                .await
                .map_err(|e| e.to_string())?
            {
                let count = file
                    .count
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "?".into());
                eprintln!("{}: {count} {}", file.path.display(), file.resource_type);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = command_store().await?;
            let applied = fhirgate_server::cli::migrate(&store)
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("applied {applied} migration(s)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Reindex {
            project,
            resource_type,
        } => {
            let walk = walk(project, resource_type, false).await?;
            eprintln!("reindexed {} resources", walk.resources);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            project,
            resource_type,
        } => {
            let walk = walk(project, resource_type, true).await?;
            eprintln!(
                "checked {} resources: {} with index rows that differ from extraction{}",
                walk.resources,
                walk.differences.len(),
                if walk.differences.is_empty() {
                    ""
                } else {
                    "; run `fhirgate reindex`"
                }
            );
            Ok(if walk.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

async fn connect(server: &Server) -> Result<fhirgate_client::api::Api, String> {
    fhirgate_client::api::Api::connect(&server.base_url, &server.client_id, &server.client_secret)
        .await
        .map_err(|e| e.to_string())
}

/// The database of the configuration in the environment.
async fn command_store() -> Result<fhirgate_server::store::Store, String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    fhirgate_server::cli::store(&config)
        .await
        .map_err(|e| e.to_string())
}

async fn walk(
    project: Option<String>,
    resource_type: Option<String>,
    dry_run: bool,
) -> Result<fhirgate_server::cli::Walk, String> {
    let store = command_store().await?;
    let scope = Scope {
        project_id: fhirgate_server::cli::project_id(project.as_deref())
            .map_err(|e| e.to_string())?,
        resource_type: resource_type.as_deref(),
    };
    fhirgate_server::cli::walk(&store, &scope, dry_run)
        .await
        .map_err(|e| e.to_string())
}

async fn serve() -> ExitCode {
    return_freed_memory_at_once();
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(e) => {
            eprintln!("fhirgate: cannot listen for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("fhirgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("fhirgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown).await {
        Ok(()) => {
            tracing::info!("fhirgate stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fhirgate: server error: {e}");
            ExitCode::FAILURE
        }
    }
}
