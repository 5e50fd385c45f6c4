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
    pub keys: Keys,
    pub mailer: Mailer,
    /// Public base URL ending in `/`.
    pub base_url: String,
    /// The CapabilityStatement, rendered once.
    pub capability: String,
    pub auth_limiter: AuthLimiter,
    /// Callers remembered between requests.
    pub sessions: Arc<SessionCache>,
    /// Permits to process a batch or transaction Bundle
    /// (`Config::bundle_concurrency`).
    pub bundle_permits: tokio::sync::Semaphore,
    /// Each caller's share of concurrent FHIR requests.
    pub admission: crate::auth::admission::Admission,
    /// Outgoing HTTP (clients' `jwksUri`).
    pub http_client: reqwest::Client,
    /// Key sets fetched from clients' `jwksUri`s.
    pub jwks: crate::auth::client::JwksCache,
}

impl AppState {
    /// The token endpoint's URL: the audience of client assertions.
    pub fn token_endpoint(&self) -> String {
        format!("{}oauth2/token", self.base_url)
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
                config.workers,
            )?)
            .observed_by(sessions.clone());
        let observer: Arc<dyn ChangeObserver> = sessions.clone();
        changes::spawn_listener(
            connect::pg_config(&config.database_url)?,
            Arc::downgrade(&observer),
        );
        let keys = Keys::load(&store, config.access_token_lifetime).await?;
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
        let state = web::Data::new(AppState {
            auth_limiter: AuthLimiter::new(config.auth_rate_limit),
            sessions,
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
            capability: capability_statement(&base_url).to_string(),
            base_url: base_url.clone(),
            store,
            validator,
            keys,
            mailer,
            config: config.clone(),
        });
        spawn_maintenance(Arc::downgrade(&state.clone().into_inner()));
        if config.export_worker {
            crate::export::worker::spawn(Arc::downgrade(&state.clone().into_inner()));
        }
        let server = HttpServer::new(move || {
            // Runs on each worker thread.
            state.store.adopt_worker_thread();
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(http::ratelimit::limit_auth))
                .wrap(from_fn(log_request))
                .route("/healthcheck", web::get().to(healthcheck))
                .configure(http::auth::routes)
                .configure(http::authorize::routes)
                .configure(http::oauth::routes)
                .configure(http::auth_lifecycle::routes)
                // Before the FHIR routes, which would take `$rotate-secret` for a compartment.
                .configure(http::admin::routes)
                // Before the FHIR routes, which would take `$export` for a type or an id.
                .configure(http::export::routes)
                .configure(http::fhir::routes)
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
        Ok(Application {
            base_url,
            address,
            server,
        })
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
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down gracefully");
            handle.stop(true).await;
        });
        self.server.await
    }
}

/// Once a minute, until the server is dropped: forget idle rate-limit
/// entries, and reload signing keys (another instance may have rotated, and
/// superseded keys leave the JWKS once their tokens have expired).
fn spawn_maintenance(state: std::sync::Weak<AppState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { break };
            state.auth_limiter.prune();
            if let Err(e) = state.keys.reload().await {
                tracing::warn!(error = %e, "reloading signing keys failed");
            }
        }
    });
}

/// `GET /healthcheck`: 200 when PostgreSQL answers, 503 when it does not.
async fn healthcheck(state: web::Data<AppState>) -> HttpResponse {
    let postgres = tokio::time::timeout(std::time::Duration::from_secs(3), state.store.ping())
        .await
        .is_ok_and(|result| result.is_ok());
    let body =
        json!({ "ok": postgres, "postgres": postgres, "version": env!("CARGO_PKG_VERSION") });
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

async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let response = next.call(req).await?;
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}
