//! The application: start-up (database, migrations, bootstrap, keys), shared
//! state, and the HTTP server with its routes.

use std::{
    future::Future,
    net::TcpListener,
    sync::Arc,
    time::{Duration, Instant},
};

use actix_web::{
    body::MessageBody,
    dev::{Server, ServiceRequest, ServiceResponse},
    middleware::{from_fn, Next},
    web, App, HttpRequest, HttpResponse, HttpServer,
};
use fhir_model::Validator;
use serde_json::json;
use tracing::Instrument;

use crate::{
    auth::{keys::Keys, sessions::SessionCache},
    bootstrap::bootstrap,
    config::Config,
    email::Mailer,
    error::{Error, Result},
    fhir::capability::capability_statement,
    http::{self, ratelimit::AuthLimiter},
    store::{
        changes::{self, ChangeObserver},
        connect, Store,
    },
};

/// What every request handler can reach. Passed, never global, so tests can
/// run several servers with different configurations side by side.
pub struct AppState {
    pub config: Config,
    pub store: Store,
    pub validator: Validator,
    pub keys: Arc<Keys>,
    pub mailer: Mailer,
    /// Public base URL ending in `/`.
    pub base_url: String,
    /// The CapabilityStatement, rendered once.
    pub capability: String,
    /// The OpenAPI document, rendered once.
    pub openapi: String,
    pub auth_limiter: AuthLimiter,
    /// Callers remembered between requests.
    pub sessions: Arc<SessionCache>,
    /// Told of other instances' changes; the listener runs while it lives.
    _remembered: Arc<dyn ChangeObserver>,
    /// Permits to process a batch or transaction Bundle
    /// (`Config::bundle_concurrency`).
    pub bundle_permits: tokio::sync::Semaphore,
    /// Each caller's share of concurrent FHIR requests.
    pub admission: crate::auth::admission::Admission,
    /// Outgoing HTTP (clients' `jwksUri`).
    pub http_client: reqwest::Client,
    /// Key sets fetched from clients' `jwksUri`s.
    pub jwks: crate::auth::client::JwksCache,
    /// Subscription delivery: its workers and this instance's websockets.
    pub subscriptions: crate::subscriptions::Hub,
    /// The console's client, when the console is on.
    pub console_client: Option<crate::console::ConsoleClient>,
}

impl AppState {
    /// Whether `client` signs people in to any of their projects: the
    /// console's does; every other client only to its own project.
    pub fn signs_in_to_any_project(&self, client: &crate::auth::client::Client) -> bool {
        self.console_client
            .is_some_and(|console| console.is(client))
    }
}

impl AppState {
    /// The token endpoint's URL: the audience of client assertions.
    pub fn token_endpoint(&self) -> String {
        format!("{}oauth2/token", self.base_url)
    }
}

/// What this instance remembers from the database: callers and signing
/// keys, both told of every change another instance commits.
struct Remembered {
    sessions: Arc<SessionCache>,
    keys: Arc<Keys>,
}

impl ChangeObserver for Remembered {
    fn changed(&self, change: changes::Change) {
        match change {
            changes::Change::SigningKeys => self.keys.reload_soon(),
            other => self.sessions.changed(other),
        }
    }

    fn hearing(&self, hearing: bool) {
        self.sessions.hearing(hearing);
        // A rotation while nobody listened was missed.
        if hearing {
            self.keys.reload_soon();
        }
    }
}

/// Connects (creating the database if needed), applies migrations, makes sure
/// a signing key exists and bootstraps the super admin on an empty database.
/// Instances that start together do this one at a time.
pub async fn prepare_database(config: &Config, validator: &Validator) -> Result<Store> {
    let store = Store::new(
        connect::connect(
            &config.database_url,
            config.pool_size,
            config.statement_timeout,
            config.queue_timeout,
        )
        .await?,
    )
    .analyzing_after(config.analyze_after);
    store
        .with_startup_lock(async |client| {
            connect::migrate(client).await?;
            Keys::ensure(&store).await?;
            bootstrap(&store, validator, &config.admin).await
        })
        .await?;
    Ok(store)
}

pub struct Application {
    base_url: String,
    address: std::net::SocketAddr,
    server: Server,
    /// The metrics listener's address and server, when configured.
    metrics: Option<(std::net::SocketAddr, Server)>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application> {
        let validator =
            Validator::new().map_err(|e| Error::Startup(format!("FHIR schema: {e}")))?;
        let sessions = Arc::new(SessionCache::default());
        // Requests use the workers' pools; start-up and maintenance use the first pool,
        // which opens only the few connections they need.
        let worker_pool_size = config.pool_size.div_ceil(config.workers);
        let store = prepare_database(&config, &validator)
            .await?
            .with_worker_pools(connect::more_pools(
                &config.database_url,
                worker_pool_size,
                config.statement_timeout,
                config.queue_timeout,
                config.workers,
            )?)
            .observed_by(sessions.clone());
        let store = match &config.read_database_url {
            Some(url) => store.with_replica(crate::store::replica::Replica::new(
                connect::more_pools(url, 2, config.statement_timeout, config.queue_timeout, 1)?
                    .remove(0),
                connect::more_pools(
                    url,
                    worker_pool_size,
                    config.statement_timeout,
                    config.queue_timeout,
                    config.workers,
                )?,
                config.replica_wait,
            )),
            None => store,
        };
        let keys = Arc::new(Keys::load(&store, config.access_token_lifetime).await?);
        let remembered: Arc<dyn ChangeObserver> = Arc::new(Remembered {
            sessions: sessions.clone(),
            keys: keys.clone(),
        });
        changes::spawn_listener(
            connect::pg_config(&config.database_url)?,
            Arc::downgrade(&remembered),
        );
        let mailer = Mailer::new(&config.lifecycle)?;
        let listener = TcpListener::bind(config.bind).map_err(|e| {
            Error::Startup(format!(
                "cannot listen on {}: {e}; set FHIRGATE_BIND",
                config.bind
            ))
        })?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::Startup(format!("listener address: {e}")))?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{address}/"));
        let console_client = store
            .with_startup_lock(async |_| {
                crate::console::client::ensure(&store, &validator, &base_url, config.console).await
            })
            .await?;
        let console = config.console;
        let state = web::Data::new(AppState {
            console_client,
            auth_limiter: AuthLimiter::new(config.auth_rate_limit),
            sessions,
            _remembered: remembered,
            bundle_permits: tokio::sync::Semaphore::new(config.bundle_concurrency),
            admission: crate::auth::admission::Admission::new(
                config.limits.concurrent_per_caller(config.pool_size),
                config.statement_timeout,
            ),
            http_client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| Error::Startup(format!("HTTP client: {e}")))?,
            jwks: Default::default(),
            subscriptions: crate::subscriptions::Hub::new(
                config.subscription_allow_private,
                store.committed_writes(),
            )?,
            capability: capability_statement(&base_url).to_string(),
            openapi: http::openapi::document(http::routes(), &base_url)
                .to_json()
                .map_err(|e| Error::Startup(format!("OpenAPI document: {e}")))?,
            base_url: base_url.clone(),
            store,
            validator,
            keys,
            mailer,
            config: config.clone(),
        });
        spawn_maintenance(Arc::downgrade(&state.clone().into_inner()));
        // Installed before the first request, so that every one is counted.
        crate::metrics::handle();
        let metrics_state = state.clone();
        crate::subscriptions::spawn(
            &state.clone().into_inner(),
            connect::pg_config(&config.database_url)?,
        );
        if config.export_worker {
            crate::export::worker::spawn(Arc::downgrade(&state.clone().into_inner()));
        }
        let server = HttpServer::new(move || {
            // Runs on each worker thread.
            state.store.adopt_worker_thread();
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(http::ratelimit::limit_auth))
                .wrap(from_fn(http::read_your_writes::remember_writes))
                .wrap(from_fn(crate::metrics::record))
                .wrap(from_fn(log_request))
                .configure(|cfg| {
                    if console {
                        crate::console::routes(cfg);
                    }
                })
                .configure(|cfg| http::routes().install(cfg))
                .default_service(web::to(not_found))
        })
        .workers(config.workers)
        // main.rs listens for signals from its first line, so that none
        // arriving during start-up is missed.
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs())
        .listen(listener)
        .map_err(|e| Error::Startup(format!("cannot start the HTTP server: {e}")))?
        .run();
        tracing::info!(%address, %base_url, "fhirgate listening");
        let metrics = match config.metrics_bind {
            Some(bind) => Some(metrics_server(bind, metrics_state)?),
            None => None,
        };
        Ok(Application {
            base_url,
            address,
            server,
            metrics,
        })
    }

    /// Where `/metrics` listens, when `FHIRGATE_METRICS_BIND` is set.
    pub fn metrics_address(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|(address, _)| *address)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Where this instance listens (its public `base_url` may name a proxy).
    pub fn address(&self) -> std::net::SocketAddr {
        self.address
    }

    /// Serves until `shutdown` completes, then stops accepting connections,
    /// finishes requests in flight (up to the shutdown timeout) and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let handle = self.server.handle();
        let metrics = self.metrics.map(|(_, server)| server);
        let metrics_handle = metrics.as_ref().map(Server::handle);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down gracefully");
            if let Some(metrics) = metrics_handle {
                metrics.stop(true).await;
            }
            handle.stop(true).await;
        });
        if let Some(metrics) = metrics {
            tokio::spawn(metrics);
        }
        self.server.await
    }
}

/// Once a minute, until the server is dropped: forget idle rate-limit
/// entries, and reload signing keys (another instance may have rotated, and
/// superseded keys leave the JWKS once their tokens have expired).
fn spawn_maintenance(state: std::sync::Weak<AppState>) {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(state) = state.upgrade() else { break };
                state.auth_limiter.prune();
                crate::subscriptions::clean(&state).await;
                if let Err(e) = state.keys.reload().await {
                    tracing::warn!(error = %e, "reloading signing keys failed");
                }
            }
        }
        .instrument(crate::job_span("cleanup")),
    );
}

/// 200 when PostgreSQL answers, 503 when it does not; with a read replica,
/// whether it answers (reads go to the primary while it does not, so it
/// does not decide `ok`).
#[utoipa::path(
    get,
    path = "/healthcheck",
    security(()),
    responses(
        (status = 200, description = "PostgreSQL answers", body = crate::http::openapi::Health),
        (status = 503, description = "PostgreSQL does not answer", body = crate::http::openapi::Health),
    )
)]
pub(crate) async fn healthcheck(state: web::Data<AppState>) -> HttpResponse {
    let postgres = tokio::time::timeout(std::time::Duration::from_secs(3), state.store.ping())
        .await
        .is_ok_and(|result| result.is_ok());
    let mut body =
        json!({ "ok": postgres, "postgres": postgres, "version": env!("CARGO_PKG_VERSION") });
    if let Some(replica) = state.store.replica() {
        body["replica"] = json!(replica.is_up());
    }
    if postgres {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse> {
    Err(Error::NotFound(format!(
        "Nothing here: {} {}",
        req.method(),
        req.path()
    )))
}

/// The metrics listener: `/metrics` only, on its own address and one worker.
fn metrics_server(
    bind: std::net::SocketAddr,
    state: web::Data<AppState>,
) -> Result<(std::net::SocketAddr, Server)> {
    let listener = TcpListener::bind(bind).map_err(|e| {
        Error::Startup(format!(
            "cannot listen on {bind}: {e}; set FHIRGATE_METRICS_BIND"
        ))
    })?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::Startup(format!("metrics listener address: {e}")))?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(crate::metrics::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .map_err(|e| Error::Startup(format!("cannot start the metrics server: {e}")))?
    .run();
    tracing::info!(%address, "metrics listening");
    Ok((address, server))
}

/// Every request gets an id: the client's `X-Request-Id` when it is a short
/// token, else a new UUID. It is answered in `X-Request-Id` and carried by
/// every log line of the request, with the W3C `traceparent` trace id when
/// one came. A request slower than `FHIRGATE_SLOW_REQUEST_MS` is logged as
/// a warning with its SQL statement count and time.
async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_request_id(id))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string);
    let trace_id = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(trace_id_of)
        .unwrap_or_default();
    let slow = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.config.slow_request);
    let span = tracing::info_span!("request", id = %request_id, trace_id = %trace_id);
    let tally = Arc::new(crate::store::StatementTally::default());
    let mut response = crate::store::STATEMENTS
        .scope(tally.clone(), next.call(req))
        .instrument(span.clone())
        .await?;
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            value,
        );
    }
    let elapsed = start.elapsed();
    let _entered = span.enter();
    let status = response.status().as_u16();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    if slow.is_some_and(|slow| elapsed > slow) {
        tracing::warn!(
            %method,
            %path,
            status,
            elapsed_ms,
            statements = tally.count(),
            statement_ms = tally.millis(),
            "slow request"
        );
    } else {
        tracing::info!(%method, %path, status, elapsed_ms, "request");
    }
    Ok(response)
}

/// A client's request id is kept when it is 1 to 128 visible ASCII
/// characters without spaces (it goes into logs and a header).
fn is_request_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// unless it is malformed or all zeros.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    match parts.as_slice() {
        [version, trace, parent, flags, ..]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0') =>
        {
            Some(trace.to_ascii_lowercase())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_and_trace_ids_are_checked() {
        assert!(is_request_id("abc-123"));
        assert!(!is_request_id("has space"));
        assert!(!is_request_id(&"x".repeat(129)));
        assert_eq!(
            trace_id_of("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id_of("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of("garbage"), None);
    }
}
