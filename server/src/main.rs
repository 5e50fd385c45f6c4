//! The `fhirgate` binary: read configuration, start logging, serve.

use std::process::ExitCode;

use fhirgate_server::{config::LogFormat, Application, Config};
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
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
    match app.run_until_stopped().await {
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
