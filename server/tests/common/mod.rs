//! The real `fhirgate` binary as an operator runs it, for tests that need
//! processes: several instances on one database, signals, crashes, overload.
//! Each test makes its own database ([`TestDatabase`], dropped with it) and
//! starts processes on it ([`start`], killed when dropped if still running).

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use uuid::Uuid;

/// The PostgreSQL server the tests use; override with FHIRGATE_TEST_POSTGRES.
pub fn postgres_server() -> String {
    std::env::var("FHIRGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A database name of one test; the server creates the database on its
/// first start, and dropping this value drops it.
pub struct TestDatabase {
    pub name: String,
    /// `DATABASE_URL` for it.
    pub url: String,
}

impl TestDatabase {
    pub fn new() -> TestDatabase {
        let name = format!("fhirgate_test_{}", Uuid::new_v4().simple());
        TestDatabase {
            url: format!("{}/{name}", postgres_server()),
            name,
        }
    }

    /// A direct connection, for assertions on what is stored.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropping needs async I/O, also when a test panicked inside a
        // runtime: on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = connect(&format!("{}/postgres", postgres_server())).await;
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// The super admin's client, given to the first start so that the test
/// knows it (`FHIRGATE_ADMIN_CLIENT_*`).
#[derive(Clone)]
pub struct Admin {
    pub client_id: String,
    pub client_secret: String,
}

impl Admin {
    pub fn generated() -> Admin {
        Admin {
            client_id: Uuid::new_v4().to_string(),
            client_secret: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        }
    }

    /// The environment that makes a first start bootstrap this client.
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("FHIRGATE_ADMIN_CLIENT_ID", &self.client_id),
            ("FHIRGATE_ADMIN_CLIENT_SECRET", &self.client_secret),
        ]
    }
}

/// What becomes of the log once the server listens.
#[derive(PartialEq)]
pub enum Logs {
    Read,
    /// The reader goes away: stdout and stderr are broken pipes.
    Abandoned,
    /// The test reads the lines after start-up ([`Running::log`]).
    Kept,
}

/// A running `fhirgate` process; killed when dropped, unless it has exited.
pub struct Running {
    pub child: Child,
    pub address: String,
    /// Every log line printed up to "listening".
    pub startup_log: Vec<String>,
    /// The lines after it, with [`Logs::Kept`].
    pub log: Option<mpsc::Receiver<String>>,
}

impl Running {
    /// `http://<address>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.address, path.trim_start_matches('/'))
    }

    /// Sends SIGTERM (graceful stop).
    pub fn terminate(&self) {
        signal(&self.child, "TERM");
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) {
        signal(&self.child, "KILL");
        self.child.wait().unwrap();
    }

    /// Waits for the exit; returns its status and everything on stderr.
    pub fn wait_with_stderr(&mut self) -> (ExitStatus, String) {
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (self.child.wait().unwrap(), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Starts the binary on a free port with JSON logs and waits until it listens.
pub fn start(database_url: &str) -> Running {
    start_logging(database_url, Logs::Read, &[])
}

/// Starts the binary with `env` besides (or over) the defaults: one worker,
/// JSON debug logs, a free port.
pub fn start_logging(database_url: &str, logs: Logs, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("FHIRGATE_BIND", "127.0.0.1:0")
        .env("FHIRGATE_LOG_FORMAT", "json")
        .env("FHIRGATE_LOG_LEVEL", "debug")
        .env("FHIRGATE_WORKERS", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fhirgate");
    if logs == Logs::Abandoned {
        drop(child.stderr.take());
    }
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut startup_log = Vec::new();
    loop {
        let Ok(line) = receiver.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let status = child.wait();
            panic!("fhirgate did not start ({status:?}); log so far: {startup_log:#?}");
        };
        let parsed: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        startup_log.push(line);
        if parsed["fields"]["message"] == "fhirgate listening" {
            let address = parsed["fields"]["address"].as_str().unwrap().to_string();
            let log = match logs {
                // Keep draining so the child never blocks on a full pipe.
                Logs::Read => {
                    std::thread::spawn(move || while receiver.recv().is_ok() {});
                    None
                }
                // The reading thread's next send fails, and it drops stdout.
                Logs::Abandoned => {
                    drop(receiver);
                    None
                }
                Logs::Kept => Some(receiver),
            };
            return Running {
                child,
                address,
                startup_log,
                log,
            };
        }
    }
}

/// A client-credentials access token from `running`; panics unless 200.
pub async fn client_token(running: &Running, client_id: &str, client_secret: &str) -> String {
    let response = reqwest::Client::new()
        .post(running.url("oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(response.status(), 200, "token request failed");
    let body: Value = response.json().await.expect("token JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_string()
}

/// A caller of one running instance: its base URL and a bearer token.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    /// `http://<address>/`.
    pub base_url: String,
    pub token: String,
}

impl Api {
    /// Signs in to `running` with client credentials.
    pub async fn sign_in(running: &Running, client_id: &str, client_secret: &str) -> Api {
        Api {
            http: reqwest::Client::new(),
            base_url: running.url(""),
            token: client_token(running, client_id, client_secret).await,
        }
    }

    /// The same token sent to another instance.
    pub fn on(&self, running: &Running) -> Api {
        Api {
            base_url: running.url(""),
            ..self.clone()
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(
                method,
                format!("{}{}", self.base_url, path.trim_start_matches('/')),
            )
            .bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("GET")
    }

    /// `method path` with a JSON body.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> reqwest::Response {
        self.request(method, path)
            .header("Content-Type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// Creates `resource` under `fhir/R4/<type>`; panics unless 201.
    pub async fn create(&self, resource: Value) -> Value {
        let path = format!("fhir/R4/{}", resource["resourceType"].as_str().unwrap());
        let response = self
            .send_json(reqwest::Method::POST, &path, &resource)
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 201, "create {path}: {body}");
        body
    }
}
