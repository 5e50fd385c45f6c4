//! The server's one error type, and its single mapping to HTTP: every error a
//! client sees is an OperationOutcome (or, on the OAuth token endpoint, the
//! RFC 6749 error object), with the right status. Causes of server-side
//! failures go to the log, never into a response body.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use fhir_model::{operation_outcome, Issue, IssueCode};

use crate::http::FHIR_JSON;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- start-up ---
    #[error("configuration: {0}")]
    Config(String),
    #[error("{0}")]
    Startup(String),

    // --- client mistakes ---
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid resource")]
    Invalid(Vec<Issue>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Unknown resource type: {0}")]
    UnknownResourceType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    Conflict(String),
    /// An update that read its resource without a lock found, when it came
    /// to write, that another write had replaced the version it read
    /// (`fhir::atomically_optimistic` runs it again, locked).
    #[error("{0}")]
    VersionMoved(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("Request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// A body within the byte limit that holds more than another limit allows.
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotImplemented(String),
    /// Rate limit or sign-in lockout: 429 with `Retry-After`.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },

    /// An RFC 6749 section 5.2 error from the token endpoint.
    #[error("{error}: {description}")]
    OAuth {
        status: StatusCode,
        error: &'static str,
        description: String,
        /// Whether the client authenticated with HTTP Basic (RFC 6749 asks
        /// for a `WWW-Authenticate` challenge in the 401 then).
        basic_challenge: bool,
    },

    // --- server-side failures (details logged, not returned) ---
    #[error("database: {}", describe_db_error(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The connection went away while a `COMMIT` was on it: the write may or
    /// may not have been saved, and only reading it back tells.
    #[error("commit in doubt: {0}")]
    CommitInDoubt(String),
    #[error("internal: {0}")]
    Internal(String),
    /// One failure that several requests share (a batch of creates written
    /// together): each answers as the failure itself would.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn is_statement_timeout(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
}

/// Seconds a client is asked to wait (`Retry-After`) when no database
/// connection was free (a burst drains within seconds; `FHIRGATE_QUEUE_TIMEOUT`
/// bounds each wait) or the database is unreachable (a restart takes a few).
const RETRY_AFTER_UNAVAILABLE: u64 = 2;

/// Whether PostgreSQL was unreachable or went away under the statement
/// (restart, crash, shutdown, connection lost), as opposed to refusing it:
/// the same request may succeed once the database is back.
pub fn is_unavailable(error: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // Class 08: connection exception.
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                ]
                .contains(code)
        }
        None => std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// tokio-postgres says only "db error"; the server's message is in the source.
fn describe_db_error(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => std::error::Error::source(error)
            .map_or_else(|| error.to_string(), |s| format!("{error}: {s}")),
    }
}

impl Error {
    pub fn oauth(status: StatusCode, error: &'static str, description: impl Into<String>) -> Error {
        Error::OAuth {
            status,
            error,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn issue_code(&self) -> IssueCode {
        match self {
            Error::Shared(inner) => inner.issue_code(),
            Error::BadRequest(_) | Error::Invalid(_) | Error::Unprocessable(_) => {
                IssueCode::Invalid
            }
            Error::Unauthorized(_) => IssueCode::Login,
            Error::Forbidden(_) => IssueCode::Forbidden,
            Error::NotFound(_) | Error::UnknownResourceType(_) => IssueCode::NotFound,
            Error::Gone(_) => IssueCode::Deleted,
            Error::Conflict(_) | Error::VersionMoved(_) | Error::PreconditionFailed(_) => {
                IssueCode::Conflict
            }
            Error::PayloadTooLarge(_) | Error::TooLarge(_) => IssueCode::TooCostly,
            Error::TooManyRequests { .. } => IssueCode::Throttled,
            Error::MethodNotAllowed(_)
            | Error::NotAcceptable(_)
            | Error::UnsupportedMediaType(_)
            | Error::NotImplemented(_) => IssueCode::NotSupported,
            Error::Pool(_) | Error::CommitInDoubt(_) => IssueCode::Transient,
            Error::Database(e) if is_unavailable(e) => IssueCode::Transient,
            Error::Database(e) if is_statement_timeout(e) => IssueCode::TooCostly,
            _ => IssueCode::Exception,
        }
    }

    /// What the client may read. Server-side causes are replaced by a generic
    /// sentence so that no SQL or internal detail leaks.
    fn public_message(&self) -> String {
        match self {
            Error::Shared(inner) => inner.public_message(),
            Error::Database(e) if is_statement_timeout(e) => {
                "The request took longer than the server allows (FHIRGATE_STATEMENT_TIMEOUT); narrow the search or try again".into()
            }
            Error::CommitInDoubt(_) => {
                "The database connection was lost while the change was being committed: it may or may not have been saved; read it back before sending it again".into()
            }
            Error::Database(e) if is_unavailable(e) => {
                "The database is not available right now; try again shortly".into()
            }
            Error::Database(_) | Error::Internal(_) | Error::Config(_) | Error::Startup(_) => {
                "Internal server error; the cause has been logged".into()
            }
            Error::Pool(deadpool_postgres::PoolError::Timeout(_)) => {
                "The server is busy: no database connection became free within FHIRGATE_QUEUE_TIMEOUT; try again shortly".into()
            }
            Error::Pool(_) => "The database is not available right now; try again shortly".into(),
            other => other.to_string(),
        }
    }
}

impl Error {
    /// Whether a write that read without locks lost a race and runs again
    /// holding its row's lock: its version moved, or its batch deadlocked
    /// with a transaction that holds locks.
    pub fn version_moved(&self) -> bool {
        match self {
            Error::Shared(inner) => inner.version_moved(),
            Error::VersionMoved(_) => true,
            Error::Database(e) => {
                e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
            }
            _ => false,
        }
    }

    /// Seconds to wait before trying again, for a refusal that passes.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Shared(inner) => inner.retry_after(),
            Error::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Error::Pool(_) | Error::CommitInDoubt(_) => Some(RETRY_AFTER_UNAVAILABLE),
            Error::Database(e) if is_unavailable(e) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        }
    }

    /// The OperationOutcome a client receives for this error.
    pub fn outcome(&self) -> serde_json::Value {
        let issues = match self {
            Error::Shared(inner) => return inner.outcome(),
            Error::Invalid(issues) => issues.clone(),
            other => vec![Issue::error(other.issue_code(), other.public_message())],
        };
        operation_outcome(&issues)
    }
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        match self {
            Error::Shared(inner) => inner.status_code(),
            Error::BadRequest(_) | Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) | Error::UnknownResourceType(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Error::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Error::Conflict(_) | Error::VersionMoved(_) => StatusCode::CONFLICT,
            Error::Gone(_) => StatusCode::GONE,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::PayloadTooLarge(_) | Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::OAuth { status, .. } => *status,
            Error::Pool(_) | Error::CommitInDoubt(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Database(e) if is_unavailable(e) || is_statement_timeout(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::Database(_) | Error::Internal(_) | Error::Config(_) | Error::Startup(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Error::Shared(inner) = self {
            return inner.error_response();
        }
        let status = self.status_code();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let database_failure = match self {
            Error::Database(e) if is_unavailable(e) => Some("unavailable"),
            Error::CommitInDoubt(_) => Some("unavailable"),
            Error::Database(e) if is_statement_timeout(e) => Some("timeout"),
            Error::Database(_) => Some("error"),
            Error::Pool(_) => Some("pool"),
            _ => None,
        };
        if let Some(kind) = database_failure {
            metrics::counter!(crate::metrics::DATABASE_FAILURES, "kind" => kind).increment(1);
        }
        if let Error::OAuth {
            error,
            description,
            basic_challenge,
            ..
        } = self
        {
            let mut response = HttpResponse::build(status);
            response.insert_header(("Cache-Control", "no-store"));
            if *basic_challenge && status == StatusCode::UNAUTHORIZED {
                response.insert_header(("WWW-Authenticate", "Basic realm=\"fhirgate\""));
            }
            return response
                .json(serde_json::json!({ "error": error, "error_description": description }));
        }
        let mut response = HttpResponse::build(status);
        response.content_type(FHIR_JSON);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"fhirgate\""));
        }
        if let Some(seconds) = self.retry_after() {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.body(self.outcome().to_string())
    }
}
