//! fhirgate's server: HTTP glue over `fhir-model` and `access-policy`, with
//! PostgreSQL storage. See README.md's architecture section for the map.

pub mod admin;
pub mod app;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod console;
pub mod email;
pub mod error;
pub mod export;
pub mod fhir;
pub mod http;
pub mod metrics;
pub mod store;
pub mod subscriptions;

pub use app::{prepare_database, Application};
pub use config::Config;
pub use error::Error;

/// The span of a background job (`export`, `statistics`, `subscriptions`,
/// `cleanup`): its log lines, statements included, carry `job = <name>`
/// where a request's carry the request's id (`server/tests/tenancy_sql.rs`
/// checks the statements of both).
pub fn job_span(name: &'static str) -> tracing::Span {
    // A root span even when a request sets the job off (the statistics job
    // after a create): the job is not the request's work.
    tracing::info_span!(parent: None, "job", job = name)
}

/// Every routed method and path (lowercase method, actix pattern), taken
/// from the same registration the server uses: the OpenAPI test checks
/// that the document lists each.
pub fn routed_paths() -> Vec<(String, String)> {
    http::routes().routed()
}
