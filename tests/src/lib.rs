//! Test harness: each [`TestApp`] is the real fhirgate server, started
//! in-process on a random port against its own fresh PostgreSQL database
//! (created by the server itself, as on a first start), and dropped after.
//! Tests talk to it over HTTP only, as clients do.

pub mod receiver;
pub mod smtp;
pub mod walk;

use std::sync::OnceLock;

use fhirgate_server::{Application, Config};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use uuid::Uuid;

/// The PostgreSQL server the tests use; override with FHIRGATE_TEST_POSTGRES.
pub fn postgres_server() -> String {
    std::env::var("FHIRGATE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A client id and secret.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub client_id: String,
    pub client_secret: String,
}

pub struct TestApp {
    /// Base URL ending in `/`.
    pub base_url: String,
    /// This instance's own address as a URL ending in `/` (the same as
    /// `base_url` unless the configuration names a public URL).
    pub local_url: String,
    pub http: reqwest::Client,
    pub database: String,
    /// The bootstrapped super-admin client.
    pub admin: Credentials,
    /// `http://…/metrics` when the configuration set `metrics_bind`.
    pub metrics_url: Option<String>,
    /// Whether dropping this app drops its database (not for a second
    /// instance on another's database).
    owns_database: bool,
}

/// A signed-in caller: a bearer token and the base URL.
#[derive(Clone)]
pub struct Session {
    pub base_url: String,
    pub http: reqwest::Client,
    pub token: String,
    pub credentials: Credentials,
}

/// A project made for one test, with an admin client and a plain member client.
pub struct TestProject {
    pub id: String,
    pub admin: Session,
    pub member: Session,
}

fn http_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("HTTP client")
        })
        .clone()
}

/// Server logs on stderr when FHIRGATE_TEST_LOG is set (e.g. `warn`, `debug`).
fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        if let Ok(filter) = std::env::var("FHIRGATE_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

pub fn random_secret() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    /// Starts a server on a new database; `configure` may change its config.
    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> TestApp {
        let database = format!("fhirgate_test_{}", Uuid::new_v4().simple());
        let admin = Credentials {
            client_id: Uuid::new_v4().to_string(),
            client_secret: random_secret(),
        };
        TestApp::start(database, admin, true, configure).await
    }

    /// Another instance on this app's database (it stays this app's).
    pub async fn another_instance(&self, configure: impl FnOnce(&mut Config)) -> TestApp {
        TestApp::start(self.database.clone(), self.admin.clone(), false, configure).await
    }

    async fn start(
        database: String,
        admin: Credentials,
        owns_database: bool,
        configure: impl FnOnce(&mut Config),
    ) -> TestApp {
        init_logging();
        let mut config = Config::for_database(&format!("{}/{database}", postgres_server()));
        config.admin.client_id = Some(admin.client_id.clone());
        config.admin.client_secret = Some(admin.client_secret.clone());
        config.admin.email = Some("admin@example.com".into());
        config.admin.password = Some("admin-password-for-tests".into());
        configure(&mut config);
        let app = Application::build(config).await.expect("server starts");
        let base_url = app.base_url().to_string();
        let local_url = format!("http://{}/", app.address());
        let metrics_url = app
            .metrics_address()
            .map(|address| format!("http://{address}/metrics"));
        tokio::spawn(app.run_until(std::future::pending()));
        TestApp {
            base_url,
            local_url,
            http: http_client(),
            database,
            admin,
            metrics_url,
            owns_database,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path.trim_start_matches('/'))
    }

    /// `POST` of a JSON body without a token (`auth/…` routes).
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// A direct connection to this app's database, for assertions on what is stored.
    pub async fn db(&self) -> tokio_postgres::Client {
        connect(&format!("{}/{}", postgres_server(), self.database)).await
    }

    /// How many superseded versions of the resource `id` are stored in history.
    pub async fn history_rows(&self, id: &str) -> usize {
        let count: i64 = self
            .db()
            .await
            .query_one(
                "SELECT count(*) FROM resource_history WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        count as usize
    }

    /// Client credentials with `client_secret_post`; panics unless it works.
    pub async fn session(&self, credentials: &Credentials) -> Session {
        self.sign_in(credentials, &[]).await
    }

    async fn sign_in(&self, credentials: &Credentials, extra: &[(&str, &str)]) -> Session {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", credentials.client_id.as_str()),
            ("client_secret", credentials.client_secret.as_str()),
        ];
        form.extend_from_slice(extra);
        let response = self
            .http
            .post(self.url("oauth2/token"))
            .form(&form)
            .send()
            .await
            .expect("token request");
        assert_eq!(response.status(), 200, "token request failed");
        let body: Value = response.json().await.expect("token JSON");
        Session {
            base_url: self.base_url.clone(),
            http: self.http.clone(),
            token: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
            credentials: credentials.clone(),
        }
    }

    pub async fn super_admin(&self) -> Session {
        self.session(&self.admin).await
    }

    /// A new project with an admin client and a non-admin member client,
    /// created through the FHIR API by the super admin.
    pub async fn project(&self, name: &str) -> TestProject {
        let root = self.super_admin().await;
        let project = root
            .create(json!({"resourceType": "Project", "name": name}))
            .await;
        let id = project["id"].as_str().expect("project id").to_string();
        let admin = self.client_in(&root, &id, true).await;
        let member = self.client_in(&root, &id, false).await;
        TestProject { id, admin, member }
    }

    /// A ClientApplication with a membership in `project_id`, signed in.
    pub async fn client_in(&self, root: &Session, project_id: &str, admin: bool) -> Session {
        self.client_with(root, project_id, json!({"admin": admin}), None)
            .await
    }

    /// A ClientApplication signed in (asking for `scope`, if given) through a
    /// membership in `project_id` with `fields` (`admin`, `profile`,
    /// `accessPolicy`, `access`, …) over the defaults; its profile is the
    /// client itself unless `fields` names one.
    pub async fn client_with(
        &self,
        root: &Session,
        project_id: &str,
        fields: Value,
        scope: Option<&str>,
    ) -> Session {
        let secret = random_secret();
        let client = root
            .create(json!({
                "resourceType": "ClientApplication", "name": "test client", "secret": secret,
                "meta": {"project": project_id}
            }))
            .await;
        let client_ref = format!("ClientApplication/{}", client["id"].as_str().unwrap());
        let mut membership = json!({
            "resourceType": "ProjectMembership", "meta": {"project": project_id},
            "project": {"reference": format!("Project/{project_id}")},
            "user": {"reference": client_ref}, "profile": {"reference": client_ref}
        });
        for (key, value) in fields.as_object().expect("membership fields") {
            membership[key] = value.clone();
        }
        root.create(membership).await;
        let credentials = Credentials {
            client_id: client["id"].as_str().unwrap().to_string(),
            client_secret: secret,
        };
        match scope {
            None => self.session(&credentials).await,
            Some(scope) => self.session_with_scope(&credentials, scope).await,
        }
    }

    /// Client credentials asking for `scope`; panics unless it works.
    pub async fn session_with_scope(&self, credentials: &Credentials, scope: &str) -> Session {
        self.sign_in(credentials, &[("scope", scope)]).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if !self.owns_database {
            return;
        }
        let database = self.database.clone();
        // Dropping needs async I/O; do it on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let client = connect(&format!("{}/postgres", postgres_server())).await;
                let _ = client
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                    ))
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

/// The single `bigint` that `sql` (a `SELECT count(*) …`) returns.
pub async fn count(
    db: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    db.query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

impl Session {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path.trim_start_matches('/'))
    }

    /// A request to any route (`admin/…`, `auth/…`) with this session's bearer token.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// `POST` of a JSON body to any route, with this session's token.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path)
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// A request to `fhir/R4/<path>` with this session's bearer token.
    pub fn fhir(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(
                method,
                self.url(&format!("fhir/R4/{}", path.trim_start_matches('/'))),
            )
            .bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.fhir(Method::GET, path).send().await.expect("GET")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.fhir(Method::DELETE, path)
            .send()
            .await
            .expect("DELETE")
    }

    pub async fn put(&self, path: &str, body: &Value) -> Response {
        self.fhir(Method::PUT, path)
            .header("Content-Type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .expect("PUT")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Response {
        self.fhir(Method::POST, path)
            .header("Content-Type", "application/fhir+json")
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    pub async fn patch(&self, path: &str, operations: &Value) -> Response {
        self.fhir(Method::PATCH, path)
            .header("Content-Type", "application/json-patch+json")
            .body(operations.to_string())
            .send()
            .await
            .expect("PATCH")
    }

    /// Creates a resource, asserting 201, and returns what the server stored.
    pub async fn create(&self, resource: Value) -> Value {
        let resource_type = resource["resourceType"]
            .as_str()
            .expect("resourceType")
            .to_string();
        let response = self.post(&resource_type, &resource).await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(status, 201, "create {resource_type} failed: {body}");
        body
    }
}

/// The response's status and JSON body.
pub async fn status_json(response: Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    (status, body)
}

/// Asserts an OperationOutcome error with `status` whose text contains `needle`.
pub async fn assert_outcome(response: Response, status: u16, needle: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (actual, body) = status_json(response).await;
    assert_eq!(actual, status, "unexpected status; body: {body}");
    assert!(
        content_type.starts_with("application/fhir+json"),
        "content type {content_type}"
    );
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(text.contains(needle), "expected '{needle}' in '{text}'");
    body
}

/// A person who signs in with a password.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub password: String,
    /// `Practitioner/…` or `Patient/…`.
    pub profile: String,
    pub membership_id: String,
}

pub const TEST_PASSWORD: &str = "violet staircase under the moon";

impl TestApp {
    /// A User with `TEST_PASSWORD`, a `profile_type` profile and a membership
    /// in `project_id`. `project_scoped` sets `User.project` (the user exists
    /// only in that project); otherwise the user is server-scoped.
    pub async fn user(
        &self,
        project_id: &str,
        email: &str,
        profile_type: &str,
        project_scoped: bool,
    ) -> TestUser {
        let root = self.super_admin().await;
        let mut user = json!({"resourceType": "User", "email": email, "firstName": "Test", "lastName": "User"});
        if project_scoped {
            user["project"] = json!({"reference": format!("Project/{project_id}")});
            user["meta"] = json!({"project": project_id});
        }
        let user = root.create(user).await;
        let id = user["id"].as_str().unwrap().to_string();
        let profile = root
            .create(
                json!({"resourceType": profile_type, "meta": {"project": project_id},
                "name": [{"family": "User", "given": ["Test"]}]}),
            )
            .await;
        let profile = format!("{profile_type}/{}", profile["id"].as_str().unwrap());
        let membership_id = self.add_membership(&root, project_id, &id, &profile).await;
        self.set_password(&id, TEST_PASSWORD).await;
        TestUser {
            id,
            email: email.to_string(),
            password: TEST_PASSWORD.to_string(),
            profile,
            membership_id,
        }
    }

    /// A membership of `User/user_id` in `project_id` with `profile`.
    pub async fn add_membership(
        &self,
        root: &Session,
        project_id: &str,
        user_id: &str,
        profile: &str,
    ) -> String {
        let membership = root
            .create(json!({
                "resourceType": "ProjectMembership", "meta": {"project": project_id},
                "project": {"reference": format!("Project/{project_id}")},
                "user": {"reference": format!("User/{user_id}")},
                "profile": {"reference": profile}
            }))
            .await;
        membership["id"].as_str().unwrap().to_string()
    }

    /// Stores a password hash for a user, as the set-password routes do.
    pub async fn set_password(&self, user_id: &str, password: &str) {
        let hash = fhirgate_server::auth::secrets::hash_password(password).unwrap();
        let db = self.db().await;
        let user_id: Uuid = user_id.parse().unwrap();
        db.execute(
            "INSERT INTO resource_secret (project_id, resource_type, resource_id, kind, hash)
             SELECT project_id, 'User', id, 'password', $2 FROM resource WHERE resource_type = 'User' AND id = $1
             ON CONFLICT (project_id, resource_type, resource_id, kind) DO UPDATE SET hash = EXCLUDED.hash",
            &[&user_id, &hash],
        )
        .await
        .unwrap();
    }

    /// A public ClientApplication in `project_id` with one redirect URI.
    pub async fn public_client(
        &self,
        project_id: &str,
        redirect_uri: &str,
        extra: Value,
    ) -> String {
        let root = self.super_admin().await;
        let mut client = json!({"resourceType": "ClientApplication", "name": "web app",
            "meta": {"project": project_id}, "redirectUris": [redirect_uri]});
        if let (Some(fields), Some(extra)) = (client.as_object_mut(), extra.as_object()) {
            fields.extend(extra.clone());
        }
        root.create(client).await["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `POST /auth/login` with a JSON body.
    pub async fn login(&self, body: &Value) -> (u16, Value) {
        status_json(
            self.http
                .post(self.url("auth/login"))
                .json(body)
                .send()
                .await
                .expect("login request"),
        )
        .await
    }

    /// `POST /oauth2/token` with a form.
    pub async fn token(&self, form: &[(&str, &str)]) -> (u16, Value) {
        status_json(
            self.http
                .post(self.url("oauth2/token"))
                .form(form)
                .send()
                .await
                .expect("token request"),
        )
        .await
    }
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce_pair() -> (String, String) {
    use base64::Engine;
    let verifier = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let digest = <sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes());
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
    (verifier, challenge)
}

/// The redirect URI of the clients made by [`TestApp::clinic`].
pub const REDIRECT_URI: &str = "https://app.example.com/callback";

/// A project "clinic" with a server-scoped Practitioner user
/// `doctor@example.com` and a public client redirecting to [`REDIRECT_URI`].
pub struct Clinic {
    pub project: TestProject,
    pub user: TestUser,
    pub client_id: String,
}

/// An HTTP client for the `oauth2` crate, redirects off.
pub fn oauth_http() -> oauth2::reqwest::Client {
    oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .expect("HTTP client")
}

impl TestApp {
    pub async fn clinic(&self) -> Clinic {
        let project = self.project("clinic").await;
        let user = self
            .user(&project.id, "doctor@example.com", "Practitioner", false)
            .await;
        let client_id = self
            .public_client(&project.id, REDIRECT_URI, json!({}))
            .await;
        Clinic {
            project,
            user,
            client_id,
        }
    }

    /// The authorization_code grant for a public client (or none).
    pub async fn redeem(
        &self,
        code: &str,
        verifier: &str,
        client_id: Option<&str>,
    ) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
        ];
        if let Some(client_id) = client_id {
            form.push(("client_id", client_id));
        }
        self.token(&form).await
    }

    /// `GET path` with a bearer token.
    pub async fn bearer_get(&self, token: &str, path: &str) -> Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET")
    }

    /// `POST /auth/login` with the S256 challenge of a fresh verifier.
    pub async fn login_attempt(&self, email: &str, password: &str) -> Response {
        let (_, challenge) = pkce_pair();
        self.http
            .post(self.url("auth/login"))
            .json(
                &json!({"email": email, "password": password, "scope": "openid",
                "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
            )
            .send()
            .await
            .expect("login request")
    }
}

/// A browser on fhirgate's sign-in pages: it keeps the anti-forgery cookie
/// the first page sets and posts each page's form with its hidden fields,
/// as a real browser does.
pub struct Browser {
    http: reqwest::Client,
    authorize_url: String,
    cookie: Option<String>,
}

impl Browser {
    pub fn new(app: &TestApp) -> Browser {
        Browser {
            http: app.http.clone(),
            authorize_url: app.url("oauth2/authorize"),
            cookie: None,
        }
    }

    fn keep_cookie(&mut self, response: &Response) {
        if let Some(set) = response.headers().get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap();
            self.cookie = Some(pair.to_string());
        }
    }

    /// `GET url` (an authorization request).
    pub async fn open(&mut self, url: &str) -> Response {
        let mut request = self.http.get(url);
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        let response = request.send().await.expect("GET authorize");
        self.keep_cookie(&response);
        response
    }

    /// Posts the form of the page `html` with `fields` filled in.
    pub async fn submit(&mut self, html: &str, fields: &[(&str, &str)]) -> Response {
        let mut form = hidden_fields(html);
        form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.post(&form).await
    }

    /// Posts `form` as it is, with the cookie.
    pub async fn post(&mut self, form: &[(String, String)]) -> Response {
        let mut request = self.http.post(&self.authorize_url).form(form);
        if let Some(cookie) = &self.cookie {
            request = request.header("Cookie", cookie);
        }
        let response = request.send().await.expect("POST authorize");
        self.keep_cookie(&response);
        response
    }
}

/// The hidden inputs of a page's form, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let attribute = |tag: &str, name: &str| {
        tag.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .map(|tag| tag.split('>').next().unwrap_or_default())
        .map(|tag| (attribute(tag, "name"), attribute(tag, "value")))
        .collect()
}
