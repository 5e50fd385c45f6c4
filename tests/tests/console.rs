//! The console in real Chromium: each test starts its own fhirgate
//! (TestApp) and its own chromedriver on a free port, drives a headless
//! browser through one flow, and checks the result through the API too.
//! Set FHIRGATE_SCREENSHOTS=<dir> to save the screenshots the README shows.

use std::{
    net::TcpListener,
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{
    elements::Element, wd::WebDriverCompatibleCommand, Client, ClientBuilder, Locator,
};
use fhirgate_tests::{smtp::SmtpServer, status_json, Session, TestApp, TEST_PASSWORD};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium behind its own chromedriver.
struct Chrome {
    client: Client,
    driver: Child,
    base_url: String,
}

/// chromedriver's log of the browser console (not in the W3C protocol).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Chrome {
    async fn start(app: &TestApp) -> Chrome {
        let port = free_port();
        let driver =
            Command::new(std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()))
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own process group, so that the browsers it starts end with it.
                .process_group(0)
                .spawn()
                .expect("chromedriver (Debian package chromium-driver) must be installed");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1280,1000", "--lang=en-US"]}),
        );
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let started = Instant::now();
        let client = loop {
            let connected =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await;
            match connected {
                Ok(client) => break client,
                Err(e) if started.elapsed() < WAIT => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session: {e}"),
            }
        };
        Chrome {
            client,
            driver,
            base_url: app.base_url.clone(),
        }
    }

    async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base_url))
            .await
            .unwrap();
    }

    /// The first element matching `css` whose text contains `text`, waiting for it.
    async fn wait_text(&self, css: &str, text: &str) -> Element {
        let started = Instant::now();
        loop {
            if let Ok(elements) = self.client.find_all(Locator::Css(css)).await {
                for element in elements {
                    if element.text().await.is_ok_and(|t| t.contains(text)) {
                        return element;
                    }
                }
            }
            if started.elapsed() > WAIT {
                let main = self
                    .client
                    .find(Locator::Css("body"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap_or_default();
                panic!("no '{css}' with text '{text}' within {WAIT:?}; the page says:\n{main}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn heading(&self, text: &str) {
        self.wait_text("main h1", text).await;
    }

    /// The control a `<label>` with exactly this text names.
    async fn field(&self, label: &str) -> Element {
        let xpath = format!("//label[normalize-space(.)='{label}']");
        let label = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|_| panic!("no label '{label}'"));
        match label.attr("for").await.unwrap() {
            Some(id) => self.client.find(Locator::Id(&id)).await.unwrap(),
            None => label.find(Locator::Css("input")).await.unwrap(),
        }
    }

    async fn fill(&self, label: &str, value: &str) {
        let field = self.field(label).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn click_button(&self, name: &str) {
        let xpath = format!("//button[normalize-space(.)='{name}']");
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|_| panic!("no button '{name}'"))
            .click()
            .await
            .unwrap();
    }

    async fn click_link(&self, text: &str) {
        self.wait_text("a", text).await.click().await.unwrap();
    }

    /// Signs in on fhirgate's own sign-in page, where the console sent the browser.
    async fn sign_in_page(&self, email: &str, password: &str) {
        let email_field = self
            .client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css("input#email"))
            .await
            .expect("the sign-in page");
        email_field.send_keys(email).await.unwrap();
        self.client
            .find(Locator::Css("input#password"))
            .await
            .unwrap()
            .send_keys(password)
            .await
            .unwrap();
        self.client
            .find(Locator::Css("button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn sign_in(&self, email: &str, password: &str) {
        self.open("console/").await;
        self.sign_in_page(email, password).await;
    }

    async fn script(&self, js: &str) -> Value {
        self.client.execute(js, vec![]).await.unwrap()
    }

    async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("FHIRGATE_SCREENSHOTS") {
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
        }
    }

    /// The errors in the browser console since the last call, other than
    /// the network lines for API answers the flow expected
    /// (`expected_status`, such as 400 for an invalid policy).
    async fn console_errors(&self, expected_status: &[u16]) -> Vec<String> {
        let log = self.client.issue_cmd(BrowserLog).await.unwrap();
        log.as_array()
            .unwrap_or_else(|| panic!("chromedriver's browser log: {log}"))
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter_map(|entry| entry["message"].as_str().map(str::to_string))
            .filter(|message| {
                !expected_status.iter().any(|status| {
                    message.contains(&format!("the server responded with a status of {status}"))
                })
            })
            .collect()
    }

    /// Ends the session; fails on any unexpected error in the browser console.
    async fn finish(self, expected_status: &[u16]) {
        let errors = self.console_errors(expected_status).await;
        self.client.clone().close().await.unwrap();
        assert!(
            errors.is_empty(),
            "errors in the browser console: {errors:#?}"
        );
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.wait();
    }
}

/// A project with an admin user (server-scoped, password TEST_PASSWORD):
/// the project id, the project's admin client and the user's membership id.
async fn project_with_admin(app: &TestApp, name: &str, email: &str) -> (String, Session, String) {
    let project = app.project(name).await;
    let user = app.user(&project.id, email, "Practitioner", false).await;
    let root = app.super_admin().await;
    let response = root
        .patch(
            &format!("ProjectMembership/{}", user.membership_id),
            &json!([{"op": "add", "path": "/admin", "value": true}]),
        )
        .await;
    assert_eq!(response.status(), 200);
    (project.id, project.admin, user.membership_id)
}

/// A server with a project whose admin has signed in to the console.
struct AdminConsole {
    chrome: Chrome,
    app: TestApp,
    project_id: String,
    /// The project's admin client, for setting up data.
    admin: Session,
    membership_id: String,
}

async fn admin_console(project: &str, email: &str) -> AdminConsole {
    let app = TestApp::spawn().await;
    let (project_id, admin, membership_id) = project_with_admin(&app, project, email).await;
    let chrome = Chrome::start(&app).await;
    chrome.sign_in(email, TEST_PASSWORD).await;
    chrome.heading(project).await;
    AdminConsole {
        chrome,
        app,
        project_id,
        admin,
        membership_id,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn super_admin_creates_a_project_and_invites_its_admin() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url.clone();
    let app = TestApp::spawn_with(|c| c.lifecycle.smtp_url = Some(url)).await;
    let chrome = Chrome::start(&app).await;
    chrome
        .sign_in("admin@example.com", "admin-password-for-tests")
        .await;
    chrome.heading("Super Admin").await;
    chrome.wait_text("td[data-count=Practitioner]", "1").await;
    // Page weight on a first load: the page and every file it loaded (this
    // load revalidated them by ETag, so their bodies are fetched again here).
    let urls = chrome
        .script(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
               .map(e => e.name).filter(u => new URL(u).pathname.includes('/console/'))",
        )
        .await;
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    let mut bytes = 0;
    for url in &urls {
        let response = app.http.get(url).send().await.unwrap();
        let headers: usize = response
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        bytes += headers + response.bytes().await.unwrap().len();
    }
    eprintln!(
        "console first load: {} files, {bytes} bytes (bodies and headers, uncompressed)",
        urls.len()
    );
    assert!(bytes > 10_000 && bytes < 300_000, "{bytes}");
    chrome.screenshot("console-project.png").await;

    chrome.fill("Project name", "Riverside Clinic").await;
    chrome.click_button("Create project").await;
    chrome
        .wait_text(".notice", "Created Riverside Clinic")
        .await;
    chrome.fill("First name", "Rita").await;
    chrome.fill("Last name", "Rivers").await;
    chrome.fill("Email", "rita@riverside.test").await;
    chrome.click_button("Invite admin").await;
    chrome
        .wait_text(".notice", "Invited rita@riverside.test as admin")
        .await;

    chrome.click_link("Audit").await;
    chrome.heading("Audit").await;
    chrome.wait_text("main td", "user-invited").await;

    let mail = smtp.next().await;
    assert_eq!(mail.to, vec!["rita@riverside.test".to_string()]);
    assert!(mail.part("text/plain").contains("/setpassword/"));
    let root = app.super_admin().await;
    let (_, projects) = status_json(root.get("Project?name=Riverside").await).await;
    let project_id = projects["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, members) = status_json(
        root.get(&format!("ProjectMembership?project=Project/{project_id}"))
            .await,
    )
    .await;
    assert_eq!(members["entry"][0]["resource"]["admin"], json!(true));
    chrome.finish(&[]).await;
}

/// The full URL of the first link to `page` in a mail's text.
fn link_in(mail: &fhirgate_tests::smtp::Mail, page: &str) -> String {
    let text = mail.part("text/plain");
    let start = text.find("http").expect("a link");
    let link: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert!(link.contains(page), "{link}");
    link
}

#[tokio::test(flavor = "multi_thread")]
async fn invitee_sets_a_password_from_the_email_and_signs_in() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url.clone();
    let app = TestApp::spawn_with(|c| c.lifecycle.smtp_url = Some(url)).await;
    let root = app.super_admin().await;
    let project = root
        .create(json!({"resourceType": "Project", "name": "Harbor Health"}))
        .await;
    let project_id = project["id"].as_str().unwrap();
    let response = root
        .post_json(
            &format!("admin/projects/{project_id}/invite"),
            &json!({"resourceType": "Practitioner", "firstName": "Hana", "lastName": "Hale",
                    "email": "hana@harbor.test", "membership": {"admin": true}}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let link = link_in(&smtp.next().await, "/setpassword/");
    assert!(link.starts_with(&app.base_url), "{link}");

    let chrome = Chrome::start(&app).await;
    chrome.client.goto(&link).await.unwrap();
    chrome.heading("Choose your password").await;
    chrome.fill("New password", TEST_PASSWORD).await;
    chrome.fill("Repeat the password", TEST_PASSWORD).await;
    chrome.click_button("Set password").await;
    chrome.wait_text(".notice", "Your password is set").await;
    chrome.click_button("Sign in").await;
    chrome.sign_in_page("hana@harbor.test", TEST_PASSWORD).await;
    chrome.heading("Harbor Health").await;

    // The same link a second time: the error a person needs.
    chrome.client.goto(&link).await.unwrap();
    chrome.fill("New password", TEST_PASSWORD).await;
    chrome.fill("Repeat the password", TEST_PASSWORD).await;
    chrome.click_button("Set password").await;
    chrome.wait_text(".notice", "ask for a new one").await;
    chrome.finish(&[400]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_invites_promotes_and_removes_members() {
    let AdminConsole {
        chrome,
        app,
        project_id,
        ..
    } = admin_console("Oak Clinic", "boss@oak.test").await;
    chrome.click_link("Invite").await;
    chrome.heading("Invite").await;
    chrome.fill("First name", "Paula").await;
    chrome.fill("Last name", "Practer").await;
    chrome.fill("Email", "paula@oak.test").await;
    chrome.click_button("Invite").await;
    chrome.wait_text(".notice", "Invited paula@oak.test").await;

    chrome
        .field("Profile type")
        .await
        .find(Locator::Css("option[value=Patient]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    chrome.fill("First name", "Pat").await;
    chrome.fill("Last name", "Ient").await;
    chrome.fill("Email", "pat@oak.test").await;
    chrome.click_button("Invite").await;
    chrome.wait_text(".notice", "Invited pat@oak.test").await;

    chrome.click_link("Members").await;
    chrome.click_link("Paula Practer").await;
    chrome.heading("Paula Practer").await;
    chrome
        .field("Admin of this project (promote to admin)")
        .await
        .click()
        .await
        .unwrap();
    chrome.click_button("Save").await;
    chrome.wait_text(".notice", "Saved").await;

    let root = app.super_admin().await;
    let (_, paula) = status_json(
        root.get(&format!(
            "ProjectMembership?project=Project/{project_id}&profile-type=Practitioner&_count=50"
        ))
        .await,
    )
    .await;
    let promoted = paula["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["admin"] == json!(true))
        .count();
    assert_eq!(promoted, 2, "the test's admin and Paula: {paula}");

    chrome.click_link("Members").await;
    chrome.wait_text("main td", "Admin").await;
    chrome.screenshot("console-members.png").await;
    chrome.click_link("Patients").await;
    chrome.click_link("Pat Ient").await;
    chrome.heading("Pat Ient").await;
    chrome.click_button("Remove from project").await;
    chrome
        .wait_text(".notice", "the Patient resource stays")
        .await;
    chrome.click_button("Yes, remove").await;
    chrome.heading("Members").await;

    let (_, patients) = status_json(
        root.get(&format!(
            "ProjectMembership?project=Project/{project_id}&profile-type=Patient"
        ))
        .await,
    )
    .await;
    assert!(
        patients["entry"].as_array().is_none_or(|e| e.is_empty()),
        "{patients}"
    );
    let (_, profiles) = status_json(root.get("Patient?name=Ient").await).await;
    assert_eq!(
        profiles["entry"].as_array().map(Vec::len),
        Some(1),
        "the profile stays"
    );
    chrome.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_clients_secret_works_with_client_credentials() {
    let AdminConsole { chrome, app, .. } = admin_console("Lab", "lab@lab.test").await;
    chrome.click_link("Clients").await;
    chrome.heading("Clients").await;
    chrome.fill("Name", "Results feed").await;
    chrome.click_button("Create client").await;
    let secret = chrome
        .wait_text("[data-secret]", "")
        .await
        .text()
        .await
        .unwrap();
    let client_id = chrome
        .wait_text("[data-client-id]", "")
        .await
        .text()
        .await
        .unwrap();
    assert!(secret.len() >= 32, "{secret}");
    let (status, token) = app
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_id", &client_id),
            ("client_secret", &secret),
        ])
        .await;
    assert_eq!(status, 200, "{token}");
    chrome.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_access_policy_error_is_shown_inline_then_fixed() {
    let AdminConsole { chrome, app, .. } = admin_console("Policy Lab", "pol@lab.test").await;
    chrome.click_link("Access policies").await;
    chrome.click_link("New access policy").await;
    chrome.heading("New access policy").await;
    let bad = json!({"resourceType": "AccessPolicy", "name": "Nurses",
        "resource": [{"resourceType": "Observation", "criteria": "Observation?no-such-param=1"}]});
    chrome.fill("Resource JSON", &bad.to_string()).await;
    chrome.click_button("Save").await;
    chrome.wait_text("#json-errors li", "criteria").await;
    chrome.screenshot("console-policy-error.png").await;

    let good = json!({"resourceType": "AccessPolicy", "name": "Nurses",
        "resource": [{"resourceType": "Observation", "criteria": "Observation?status=final"}]});
    chrome.fill("Resource JSON", &good.to_string()).await;
    chrome.click_button("Save").await;
    chrome.heading("Access policy: Nurses").await;
    let root = app.super_admin().await;
    let (_, found) = status_json(root.get("AccessPolicy?name=Nurses").await).await;
    assert_eq!(
        found["entry"][0]["resource"]["resource"][0]["criteria"],
        "Observation?status=final"
    );
    chrome.finish(&[400]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resources_are_searched_and_opened() {
    // Bound, not `..`: the server lives as long as the binding.
    let AdminConsole {
        chrome,
        admin,
        app: _app,
        ..
    } = admin_console("Records", "rec@records.test").await;
    for (given, family) in [("Anna", "Smith"), ("Ben", "Smith"), ("Cleo", "Jones")] {
        admin
            .create(
                json!({"resourceType": "Patient", "name": [{"given": [given], "family": family}]}),
            )
            .await;
    }
    chrome.click_link("Resources").await;
    chrome.heading("Resources").await;
    chrome.fill("Resource type", "Patient").await;
    chrome.fill("Search query", "name=smith&_count=1").await;
    chrome.click_button("Search").await;
    chrome.wait_text("td a", "Smith").await;
    chrome.click_button("Next page").await;
    chrome.wait_text("td a", "Smith").await;
    let rows = chrome
        .client
        .find_all(Locator::Css("main tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    chrome.client.back().await.unwrap();
    chrome.heading("Resources").await;
    chrome.click_link("Smith").await;
    chrome.heading("Patient:").await;
    chrome.wait_text("main pre", "\"family\": \"Smith\"").await;
    chrome.click_link("History").await;
    chrome.wait_text("main td", "JSON").await;
    chrome.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_in_the_data_renders_as_text() {
    let app = TestApp::spawn().await;
    let (_, admin, _) = project_with_admin(&app, "Evil Corp", "sec@evil.test").await;
    let payload = "<img src=x onerror=alert(1)>";
    admin
        .create(
            json!({"resourceType": "Patient", "name": [{"given": [payload], "family": "Mallory"}]}),
        )
        .await;
    let chrome = Chrome::start(&app).await;
    // A page's address before signing in: the console returns to it after.
    chrome
        .open("console/resources?type=Patient&q=family%3DMallory")
        .await;
    chrome.sign_in_page("sec@evil.test", TEST_PASSWORD).await;
    chrome
        .wait_text("td a", payload)
        .await
        .click()
        .await
        .unwrap();
    chrome.heading(payload).await;
    assert_eq!(
        chrome
            .script("return document.querySelectorAll('main img').length")
            .await,
        json!(0)
    );
    assert!(
        chrome.client.get_alert_text().await.is_err(),
        "no alert ran"
    );
    chrome.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_sees_only_the_account_page() {
    let app = TestApp::spawn().await;
    let project = app.project("Sunny Side").await;
    app.user(&project.id, "patient@sunny.test", "Patient", true)
        .await;
    let chrome = Chrome::start(&app).await;
    chrome.client.set_window_size(375, 800).await.unwrap();
    chrome.open(&format!("signin?project={}", project.id)).await;
    chrome.click_button("Sign in").await;
    chrome
        .sign_in_page("patient@sunny.test", TEST_PASSWORD)
        .await;
    chrome.heading("Your account").await;
    let links = chrome
        .script("return [...document.querySelectorAll('nav a')].map(a => a.textContent)")
        .await;
    assert_eq!(links, json!(["Account"]));
    assert_eq!(
        chrome
            .script("return document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        json!(true),
        "usable at 375 px: nothing wider than the window"
    );
    chrome.screenshot("console-account-375.png").await;
    // An admin page by its address: back to the account page.
    chrome.open("console/members").await;
    chrome
        .sign_in_page("patient@sunny.test", TEST_PASSWORD)
        .await;
    chrome.heading("Your account").await;
    chrome.finish(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ended_session_says_so() {
    let AdminConsole {
        chrome,
        app,
        membership_id,
        ..
    } = admin_console("Brief", "brief@brief.test").await;
    // The membership is switched off elsewhere: its tokens and refresh stop.
    let root = app.super_admin().await;
    let response = root
        .patch(
            &format!("ProjectMembership/{membership_id}"),
            &json!([{"op": "add", "path": "/active", "value": false}]),
        )
        .await;
    assert_eq!(response.status(), 200);
    chrome.click_link("Members").await;
    chrome.heading("Session expired").await;
    chrome.finish(&[400, 401]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_is_served_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let root = app
        .http
        .get(app.url(""))
        .header("Accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), 303);
    assert_eq!(root.headers()["location"], "/console/");
    let api_root = app
        .http
        .get(app.url(""))
        .header("Accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(api_root.status(), 404);

    for path in [
        "console/",
        "console/members/123",
        "setpassword/a/b",
        "verifyemail/a/b",
        "signin",
    ] {
        let page = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(page.headers()["referrer-policy"], "no-referrer");
        let html = page.text().await.unwrap();
        assert!(html.contains("src=\"/console/assets/app.js\""), "{html}");
        assert!(
            !html.contains("<script>") && !html.contains("style="),
            "nothing inline"
        );
    }

    let script = app
        .http
        .get(app.url("console/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let etag = script.headers()["etag"].clone();
    let again = app
        .http
        .get(app.url("console/assets/app.js"))
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let missing = app
        .http
        .get(app.url("console/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // No asset builds HTML from strings.
    for name in [
        "app.js",
        "api.js",
        "dom.js",
        "pages/members.js",
        "pages/resources.js",
    ] {
        let text = app
            .http
            .get(app.url(&format!("console/assets/{name}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "eval(",
            "localStorage.",
        ] {
            assert!(!text.contains(banned), "{name} uses {banned}");
        }
    }

    // The console's client: public, one redirect URI under this server.
    let admin = app.super_admin().await;
    let (status, client) = status_json(
        admin
            .get("ClientApplication/0c0501e0-0000-4000-8000-00000000c0de")
            .await,
    )
    .await;
    assert_eq!(status, 200, "{client}");
    assert_eq!(client["redirectUri"], json!(app.url("console/callback")));
    assert_eq!(client["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_can_be_turned_off() {
    let app = TestApp::spawn_with(|c| c.console = false).await;
    for path in [
        "console/",
        "console/assets/app.js",
        "setpassword/a/b",
        "signin",
    ] {
        let response = app
            .http
            .get(app.url(path))
            .header("Accept", "text/html")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let admin = app.super_admin().await;
    let (_, client) = status_json(
        admin
            .get("ClientApplication/0c0501e0-0000-4000-8000-00000000c0de")
            .await,
    )
    .await;
    assert_eq!(client["status"], "off");
    let authorize = app
        .http
        .get(app.url(
            "oauth2/authorize?response_type=code&client_id=0c0501e0-0000-4000-8000-00000000c0de",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(authorize.status(), 400, "its client signs nobody in");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_browser_console_check_sees_errors() {
    let app = TestApp::spawn().await;
    let chrome = Chrome::start(&app).await;
    chrome.open("signin").await;
    chrome.heading("fhirgate console").await;
    assert_eq!(chrome.console_errors(&[]).await, Vec::<String>::new());
    chrome
        .script("console.error('a console error the check must see')")
        .await;
    let errors = chrome.console_errors(&[]).await;
    assert!(
        errors.iter().any(|e| e.contains("the check must see")),
        "{errors:?}"
    );
    chrome.finish(&[]).await;
}
