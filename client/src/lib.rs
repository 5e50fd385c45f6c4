//! The HTTP side of `fhirgate import` and `fhirgate export`: a FHIR client
//! with client-credentials tokens, the importer and the Bulk Data
//! downloader. Talks to any FHIR R4 server; does no database I/O.

pub mod api;
pub mod export;
pub mod import;
pub mod progress;

/// What can stop an import or export as a whole (a rejected resource does
/// not: it is reported and the import goes on).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Server(String),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}
