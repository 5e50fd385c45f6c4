//! The crate's error type. Invalid resources are not errors: they come back as `Vec<Issue>`.

/// Failures of the crate itself, as opposed to problems with a client's resource.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An embedded schema does not parse or compile: a bug in this crate's data, not the caller's.
    #[error("embedded FHIR schema is broken: {0}")]
    Schema(String),
}
