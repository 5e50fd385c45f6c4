//! Configuration, read once from the environment. Every variable is listed in
//! README.md with its default.

use std::{env, net::SocketAddr, time::Duration};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// A day to download an export's files.
const DEFAULT_EXPORT_RETENTION_SECONDS: u64 = 24 * 3600;

/// A replica on the same network replays a commit within milliseconds; a
/// read waits this long at most before it goes to the primary.
const DEFAULT_REPLICA_WAIT_MS: usize = 200;

/// 100 MiB: scans and PDFs, not videos.
const DEFAULT_MAX_BINARY_BYTES: usize = 100 * 1024 * 1024;

/// Seconds a request waits for a database connection: long enough for a
/// burst to drain, short enough that a client retries rather than hangs.
const DEFAULT_QUEUE_TIMEOUT_SECONDS: usize = 5;

#[derive(Debug, Clone)]
pub struct Config {
    /// `postgres://user[:password]@host:port/database`.
    pub database_url: String,
    /// A streaming replica for reads by id, searches and history
    /// (`FHIRGATE_READ_DATABASE_URL`; `store::replica`).
    pub read_database_url: Option<String>,
    /// How long a read waits for the replica to replay its caller's last
    /// write before it goes to the primary.
    pub replica_wait: Duration,
    pub bind: SocketAddr,
    /// Public base URL ending in `/`; links and the token issuer derive from
    /// it. `None`: `http://<bound address>/`, known once the socket is bound.
    pub base_url: Option<String>,
    pub pool_size: usize,
    pub max_body_bytes: usize,
    /// Largest Binary upload; larger ones get 413 and store nothing.
    pub max_binary_bytes: usize,
    /// Whether this instance runs `$export` jobs (any instance may).
    pub export_worker: bool,
    /// How long a finished export's files stay downloadable.
    pub export_retention: Duration,
    pub log_level: String,
    pub log_format: LogFormat,
    /// HTTP worker threads.
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// Longest a single SQL statement may run.
    pub statement_timeout: Duration,
    /// Longest a request waits for a database connection before it is
    /// answered 503 with `Retry-After` (`FHIRGATE_QUEUE_TIMEOUT`).
    pub queue_timeout: Duration,
    pub access_token_lifetime: Duration,
    /// How long an authorization code may wait to be redeemed.
    pub code_lifetime: Duration,
    /// How long a refresh token stays valid (each use issues a new one).
    pub refresh_token_lifetime: Duration,
    /// Consecutive failed sign-ins that lock an email (in one scope).
    pub lockout_threshold: u32,
    /// First lockout period; each further failure doubles it, up to a day.
    pub lockout_period: Duration,
    /// Requests per minute one client address may make to `/auth/*` and `/oauth2/*`.
    pub auth_rate_limit: u32,
    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` name the client
    /// (`FHIRGATE_TRUSTED_PROXIES`); from anyone else those headers are ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Whether a client's `jwksUri` may be plain `http://` (development only).
    pub allow_http_jwks_uri: bool,
    /// Whether subscription endpoints may be loopback, link-local or private
    /// addresses (`FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE`; development and tests).
    pub subscription_allow_private: bool,
    /// Most resources one conditional delete may remove.
    pub max_conditional_delete: usize,
    /// How long a client's previous secret keeps working after
    /// `$rotate-secret` (zero: not at all).
    pub retiring_secret: Duration,
    /// Most entries in one batch or transaction Bundle.
    pub max_bundle_entries: usize,
    /// Batch and transaction Bundles processed at once per instance; more
    /// wait, unread, so the memory they take is bounded.
    pub bundle_concurrency: usize,
    /// Resources created in one project, by all instances together, before
    /// the search tables are analyzed, then ten times as many, and so on;
    /// 0: never (`store::statistics`).
    pub analyze_after: u64,
    /// Where `/metrics` listens (`FHIRGATE_METRICS_BIND`); `None`: nowhere.
    pub metrics_bind: Option<SocketAddr>,
    /// Requests slower than this are logged with their SQL statement count
    /// and time (`FHIRGATE_SLOW_REQUEST_MS`).
    pub slow_request: Duration,
    /// Whether the browser console is served at `/console/` and its client
    /// signs people in (`FHIRGATE_CONSOLE`).
    pub console: bool,
    pub admin: AdminBootstrap,
    pub lifecycle: Lifecycle,
    pub limits: Limits,
}

/// Bounds on the work one request may ask for, so that one caller cannot
/// take the server from the others: past each, a 400 or 413 that names it.
#[derive(Debug, Clone)]
pub struct Limits {
    /// JSON values in one request body, counted before it is parsed.
    pub max_json_values: usize,
    /// Items in one JSON array of a body.
    pub max_array_length: usize,
    /// Conditions of one search: each value of each parameter, chain and
    /// `_has` link, include and revinclude.
    pub max_search_conditions: usize,
    pub max_sort_keys: usize,
    /// Entries of `_elements`.
    pub max_elements: usize,
    /// Operations of one JSON Patch or FHIRPath Patch.
    pub max_patch_operations: usize,
    /// Searches, history, Bundles and conditional writes of one membership
    /// running at once per instance; more wait, holding no database
    /// connection. `0`: half the pool.
    pub max_concurrent_per_caller: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_json_values: 500_000,
            max_array_length: 10_000,
            max_search_conditions: 100,
            max_sort_keys: 8,
            max_elements: 100,
            max_patch_operations: 1_000,
            max_concurrent_per_caller: 0,
        }
    }
}

impl Limits {
    /// The per-caller concurrency for a pool of `pool_size` connections.
    pub fn concurrent_per_caller(&self, pool_size: usize) -> usize {
        match self.max_concurrent_per_caller {
            0 => (pool_size / 2).max(1),
            n => n,
        }
    }
}

/// Mail and the user lifecycle (invitations, registration, links).
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// `smtp://host:port`, `smtps://user:pass@host:465`, … `None`: messages go
    /// to the outbox table and the log only.
    pub smtp_url: Option<String>,
    /// The `From` of every message.
    pub email_from: String,
    /// Where the links in messages point (the app that shows the forms);
    /// `None`: the server's base URL.
    pub app_base_url: Option<String>,
    pub invite_link_lifetime: Duration,
    pub reset_link_lifetime: Duration,
    pub verify_link_lifetime: Duration,
    /// Whether `POST /auth/newuser` accepts sign-ups (FHIRGATE_REGISTRATION).
    pub registration_enabled: bool,
    /// Longest lifetime a personal access token may be given.
    pub max_personal_token_lifetime: Duration,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            smtp_url: None,
            email_from: DEFAULT_EMAIL_FROM.into(),
            app_base_url: None,
            invite_link_lifetime: Duration::from_secs(7 * 24 * 3600),
            reset_link_lifetime: Duration::from_secs(3600),
            verify_link_lifetime: Duration::from_secs(24 * 3600),
            registration_enabled: true,
            max_personal_token_lifetime: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Credentials for the super admin created on an empty database. Whatever is
/// `None` is generated and printed once.
#[derive(Debug, Clone, Default)]
pub struct AdminBootstrap {
    pub email: Option<String>,
    pub password: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
}

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/fhirgate";
pub const DEFAULT_BIND: &str = "127.0.0.1:8103";
pub const DEFAULT_EMAIL_FROM: &str = "fhirgate <noreply@fhirgate.invalid>";

impl Config {
    pub fn from_env() -> Result<Config, Error> {
        let var = |name: &str| env::var(name).ok().filter(|v| !v.trim().is_empty());
        let bind: SocketAddr = parse(
            "FHIRGATE_BIND",
            &var("FHIRGATE_BIND").unwrap_or_else(|| DEFAULT_BIND.into()),
        )?;
        let log_format = match var("FHIRGATE_LOG_FORMAT").as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(Error::Config(format!(
                    "FHIRGATE_LOG_FORMAT must be 'human' or 'json', not '{other}'"
                )))
            }
        };
        let number = |name: &str, default: usize| -> Result<usize, Error> {
            var(name).map_or(Ok(default), |v| parse(name, &v))
        };
        let seconds = |name: &str, default: Duration| -> Result<Duration, Error> {
            var(name).map_or(Ok(default), |v| {
                parse::<u64>(name, &v).map(|s| Duration::from_secs(s.max(1)))
            })
        };
        let defaults = Lifecycle::default();
        let lifecycle = Lifecycle {
            smtp_url: var("FHIRGATE_SMTP_URL"),
            email_from: var("FHIRGATE_EMAIL_FROM").unwrap_or(defaults.email_from),
            app_base_url: var("FHIRGATE_APP_BASE_URL").map(with_trailing_slash),
            invite_link_lifetime: seconds(
                "FHIRGATE_INVITE_LINK_LIFETIME",
                defaults.invite_link_lifetime,
            )?,
            reset_link_lifetime: seconds(
                "FHIRGATE_RESET_LINK_LIFETIME",
                defaults.reset_link_lifetime,
            )?,
            verify_link_lifetime: seconds(
                "FHIRGATE_VERIFY_LINK_LIFETIME",
                defaults.verify_link_lifetime,
            )?,
            registration_enabled: switch(
                "FHIRGATE_REGISTRATION",
                var("FHIRGATE_REGISTRATION"),
                ("open", "closed"),
            )?,
            max_personal_token_lifetime: seconds(
                "FHIRGATE_MAX_PERSONAL_TOKEN_LIFETIME",
                defaults.max_personal_token_lifetime,
            )?,
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let default_limits = Limits::default();
        let limits = Limits {
            max_json_values: number("FHIRGATE_MAX_JSON_VALUES", default_limits.max_json_values)?
                .max(1),
            max_array_length: number("FHIRGATE_MAX_ARRAY_LENGTH", default_limits.max_array_length)?
                .max(1),
            max_search_conditions: number(
                "FHIRGATE_MAX_SEARCH_CONDITIONS",
                default_limits.max_search_conditions,
            )?
            .max(1),
            max_sort_keys: number("FHIRGATE_MAX_SORT_KEYS", default_limits.max_sort_keys)?.max(1),
            max_elements: number("FHIRGATE_MAX_ELEMENTS", default_limits.max_elements)?.max(1),
            max_patch_operations: number(
                "FHIRGATE_MAX_PATCH_OPERATIONS",
                default_limits.max_patch_operations,
            )?
            .max(1),
            max_concurrent_per_caller: number(
                "FHIRGATE_MAX_CONCURRENT_PER_CALLER",
                default_limits.max_concurrent_per_caller,
            )?,
        };
        Ok(Config {
            database_url: var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            read_database_url: var("FHIRGATE_READ_DATABASE_URL"),
            replica_wait: Duration::from_millis(number(
                "FHIRGATE_READ_REPLICA_WAIT_MS",
                DEFAULT_REPLICA_WAIT_MS,
            )? as u64),
            bind,
            base_url: var("FHIRGATE_BASE_URL").map(with_trailing_slash),
            pool_size: number("FHIRGATE_DB_POOL_SIZE", 16)?.max(1),
            max_body_bytes: number("FHIRGATE_MAX_BODY_BYTES", 16 * 1024 * 1024)?,
            max_binary_bytes: number("FHIRGATE_MAX_BINARY_BYTES", DEFAULT_MAX_BINARY_BYTES)?
                // The size is recorded as a FHIR integer.
                .min(i32::MAX as usize),
            export_worker: number("FHIRGATE_EXPORT_WORKER", 1)? != 0,
            export_retention: Duration::from_secs(number(
                "FHIRGATE_EXPORT_RETENTION_SECONDS",
                DEFAULT_EXPORT_RETENTION_SECONDS as usize,
            )? as u64),
            log_level: var("FHIRGATE_LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_format,
            workers: number("FHIRGATE_WORKERS", cores)?.max(1),
            shutdown_timeout: Duration::from_secs(number("FHIRGATE_SHUTDOWN_TIMEOUT", 30)? as u64),
            statement_timeout: Duration::from_secs(
                number("FHIRGATE_STATEMENT_TIMEOUT", 30)?.max(1) as u64,
            ),
            queue_timeout: Duration::from_secs(
                number("FHIRGATE_QUEUE_TIMEOUT", DEFAULT_QUEUE_TIMEOUT_SECONDS)?.max(1) as u64,
            ),
            access_token_lifetime: Duration::from_secs(
                number("FHIRGATE_ACCESS_TOKEN_LIFETIME", 3600)?.max(1) as u64,
            ),
            code_lifetime: Duration::from_secs(number("FHIRGATE_CODE_LIFETIME", 120)?.max(1) as u64),
            refresh_token_lifetime: Duration::from_secs(
                number("FHIRGATE_REFRESH_TOKEN_LIFETIME", 14 * 24 * 3600)?.max(1) as u64,
            ),
            lockout_threshold: number("FHIRGATE_LOCKOUT_THRESHOLD", 5)?.clamp(1, 1000) as u32,
            lockout_period: Duration::from_secs(
                number("FHIRGATE_LOCKOUT_SECONDS", 60)?.max(1) as u64
            ),
            auth_rate_limit: number("FHIRGATE_AUTH_RATE_LIMIT", 600)?.clamp(1, 1_000_000) as u32,
            trusted_proxies: trusted_proxies(var("FHIRGATE_TRUSTED_PROXIES").as_deref())?,
            allow_http_jwks_uri: number("FHIRGATE_ALLOW_HTTP_JWKS_URI", 0)? != 0,
            subscription_allow_private: number("FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE", 0)? != 0,
            max_conditional_delete: number("FHIRGATE_MAX_CONDITIONAL_DELETE", 100)?.max(1),
            retiring_secret: Duration::from_secs(
                number("FHIRGATE_RETIRING_SECRET_SECONDS", 3600)? as u64
            ),
            max_bundle_entries: number("FHIRGATE_MAX_BUNDLE_ENTRIES", 10_000)?.max(1),
            bundle_concurrency: number("FHIRGATE_BUNDLE_CONCURRENCY", cores)?.max(1),
            analyze_after: number(
                "FHIRGATE_ANALYZE_AFTER",
                crate::store::DEFAULT_ANALYZE_AFTER as usize,
            )? as u64,
            metrics_bind: var("FHIRGATE_METRICS_BIND")
                .map(|v| parse("FHIRGATE_METRICS_BIND", &v))
                .transpose()?,
            slow_request: Duration::from_millis(number("FHIRGATE_SLOW_REQUEST_MS", 1000)? as u64),
            console: switch("FHIRGATE_CONSOLE", var("FHIRGATE_CONSOLE"), ("on", "off"))?,
            admin: AdminBootstrap {
                email: var("FHIRGATE_ADMIN_EMAIL"),
                password: var("FHIRGATE_ADMIN_PASSWORD"),
                client_id: var("FHIRGATE_ADMIN_CLIENT_ID"),
                client_secret: var("FHIRGATE_ADMIN_CLIENT_SECRET"),
            },
            lifecycle,
            limits,
        })
    }

    /// A configuration for tests and tools: everything at its default except
    /// the database and an ephemeral port.
    pub fn for_database(database_url: &str) -> Config {
        Config {
            database_url: database_url.into(),
            read_database_url: None,
            replica_wait: Duration::from_millis(DEFAULT_REPLICA_WAIT_MS as u64),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            pool_size: 8,
            max_body_bytes: 16 * 1024 * 1024,
            max_binary_bytes: DEFAULT_MAX_BINARY_BYTES,
            export_worker: true,
            export_retention: Duration::from_secs(DEFAULT_EXPORT_RETENTION_SECONDS),
            log_level: "warn".into(),
            log_format: LogFormat::Human,
            workers: 1,
            shutdown_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            queue_timeout: Duration::from_secs(DEFAULT_QUEUE_TIMEOUT_SECONDS as u64),
            access_token_lifetime: Duration::from_secs(3600),
            code_lifetime: Duration::from_secs(120),
            refresh_token_lifetime: Duration::from_secs(14 * 24 * 3600),
            lockout_threshold: 5,
            lockout_period: Duration::from_secs(60),
            auth_rate_limit: 600,
            trusted_proxies: Vec::new(),
            allow_http_jwks_uri: false,
            subscription_allow_private: false,
            max_conditional_delete: 100,
            retiring_secret: Duration::from_secs(3600),
            max_bundle_entries: 10_000,
            bundle_concurrency: 4,
            analyze_after: crate::store::DEFAULT_ANALYZE_AFTER,
            metrics_bind: None,
            slow_request: Duration::from_secs(1),
            console: true,
            admin: AdminBootstrap::default(),
            lifecycle: Lifecycle::default(),
            limits: Limits::default(),
        }
    }
}

/// `FHIRGATE_TRUSTED_PROXIES`: CIDR ranges or addresses, separated by
/// commas or spaces.
fn trusted_proxies(value: Option<&str>) -> Result<Vec<ipnet::IpNet>, Error> {
    value
        .unwrap_or_default()
        .split([',', ' '])
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    Error::Config(format!(
                        "FHIRGATE_TRUSTED_PROXIES: '{item}' is not an IP address or CIDR range (e.g. 10.0.0.0/8)"
                    ))
                })
        })
        .collect()
}

/// A variable that is one of two words, `(on, off)`; unset means on.
fn switch(name: &str, value: Option<String>, (on, off): (&str, &str)) -> Result<bool, Error> {
    match value.as_deref() {
        None => Ok(true),
        Some(v) if v == on => Ok(true),
        Some(v) if v == off => Ok(false),
        Some(other) => Err(Error::Config(format!(
            "{name} must be '{on}' or '{off}', not '{other}'"
        ))),
    }
}

fn with_trailing_slash(mut url: String) -> String {
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

fn parse<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| Error::Config(format!("{name}='{value}' is not valid: {e}")))
}
