//! Privilege escalation, attacked end to end: what a self-registered project
//! admin, a scope-limited app, a personal token or a stranger who signs up
//! first must never gain (super admin, another person's account, their own
//! membership's powers, a sign-in that is not theirs), and a randomized walk
//! of admin-type writes checked against invariants after every step.
//!
//! The walk's actors, in two projects: each project's admin, a member with a
//! random AccessPolicy and a patient; tokens narrowed by SMART scopes (the
//! admins signed in with `openid patient/Observation.rs`, `openid
//! user/Patient.rs` and `openid user/*.rs`, a member with `openid
//! user/*.rs`, and an admin ClientApplication with client_credentials and
//! `system/AccessPolicy.cruds system/Observation.rs`); and a member of
//! project 0 whose policy hides `Patient.birthDate`, with two twin Patients
//! alike but for their birthDates. The walk's admins leave that member's
//! policy and membership alone (they may lawfully show it the field).
//!
//! The invariants, after every step:
//! - only the bootstrap project is a super admin project; no walk project's
//!   `superAdmin`, `features` or `link` changes;
//! - no actor changes its own membership's `admin`, `accessPolicy` or
//!   `access`; no membership moves to another user or project;
//! - nothing of the other walk project changes;
//! - no User's email, project or password changes but by that user; a
//!   project-scoped User lives in its project;
//! - over HTTP, every actor sees its own project only, nothing of the other
//!   one and no super admin route; no request gets a 5xx;
//! - a minted token is one its minter may mint and does not act on the
//!   account;
//! - no token acts beyond its scope: every request of a scope-narrowed actor
//!   is recorded with what it asks for (a transaction's entries, each) and
//!   compared with what the scope grants: a write of a type it does not
//!   grant, every account route (`/auth/changeemail`, `changepassword`,
//!   `tokens`, `revoke`) and every administration route (`/admin/projects/
//!   {id}/invite`, `/client`, `/members/{m}`, `/members/{m}/tokens`,
//!   `ClientApplication/{id}/$rotate-secret`) is refused with 401, 403 or
//!   404; a read or search of a type it does not grant is a 403; a read or
//!   search it grants answers as the same membership's unnarrowed token does
//!   (status and entries); and the database shows it: across its step no
//!   stored row of a type the scope does not let it write changes, and no
//!   password or client secret;
//! - no hidden value can be told apart: the hiding member asks, about each
//!   twin in turn, a request that would discriminate on the hidden birthDate
//!   (`birthdate=` with each prefix, `:missing`, `_sort`, a chain, `_has`,
//!   `_include`, `_revinclude`, `?_type=`, `POST _search`, a compartment
//!   search, reads, `_elements`, a conditional create with If-None-Exist
//!   (REST and transaction), a conditional update, patch and delete): the two
//!   answers, with the twins named by role, are the same, and neither twin
//!   (nor its Observation) changes; and no response anywhere in the walk to
//!   an actor whose access does not show Patients of project 0 carries
//!   either birthDate (an echo of the request's own value in an
//!   OperationOutcome's text or a Bundle's links aside).
//!
//! The walk runs a fixed seed; `FHIRGATE_WALK_SEED` and `FHIRGATE_WALK_STEPS`
//! replay another or run a longer one, and `FHIRGATE_WALK_KEEP_GOING=1`
//! reports the first violation of each kind at the end instead of stopping
//! at the first one; `FHIRGATE_WALK_VERBOSE=1` prints every step's writes.

use std::collections::{BTreeMap, BTreeSet};

use fhirgate_tests::walk::{env_number, Rng};
use fhirgate_tests::{
    count, pkce_pair, smtp::SmtpServer, status_json, Credentials, Session, TestApp, TEST_PASSWORD,
};
use reqwest::Method;
use serde_json::{json, Value};

/// The super admin the harness bootstraps.
const SUPER_EMAIL: &str = "admin@example.com";
const SUPER_PASSWORD: &str = "admin-password-for-tests";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn spawn_with_mail() -> (TestApp, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url.clone();
    let app = TestApp::spawn_with(|config| config.lifecycle.smtp_url = Some(url)).await;
    (app, smtp)
}

/// `base` with another bearer token.
fn with_token(base: &Session, token: &str) -> Session {
    Session {
        token: token.to_string(),
        ..base.clone()
    }
}

/// Redeems a code with its PKCE verifier; asserts 200 and returns the access token.
async fn redeem_ok(app: &TestApp, code: &Value, verifier: &str, client_id: Option<&str>) -> String {
    let code = code
        .as_str()
        .unwrap_or_else(|| panic!("a code: {code}"))
        .to_string();
    let (status, token) = app.redeem(&code, verifier, client_id).await;
    assert_eq!(status, 200, "code redemption: {token}");
    token["access_token"].as_str().unwrap().to_string()
}

/// `POST /auth/login`; asserts 200 with a code and redeems it.
async fn password_token(
    app: &TestApp,
    email: &str,
    password: &str,
    project_id: Option<&str>,
    client_id: Option<&str>,
    scope: &str,
) -> String {
    let (verifier, challenge) = pkce_pair();
    let mut body = json!({"email": email, "password": password, "scope": scope,
        "codeChallenge": challenge, "codeChallengeMethod": "S256"});
    if let Some(project_id) = project_id {
        body["projectId"] = json!(project_id);
    }
    if let Some(client_id) = client_id {
        body["clientId"] = json!(client_id);
    }
    let (status, answer) = app.login(&body).await;
    assert_eq!(status, 200, "sign-in of {email}: {answer}");
    redeem_ok(app, &answer["code"], &verifier, client_id).await
}

async fn me(session: &Session) -> Value {
    let (status, me) = status_json(
        session
            .request(Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "/auth/me: {me}");
    me
}

/// Someone who signed up (`/auth/newuser`) and made a project
/// (`/auth/newproject`): its owner and admin, with a user token.
struct Owner {
    session: Session,
    email: String,
    project_id: String,
    membership_id: String,
    user_id: String,
}

async fn sign_up_with_project(app: &TestApp, root: &Session, email: &str, name: &str) -> Owner {
    let (verifier, challenge) = pkce_pair();
    let (status, answer) = status_json(
        app.post_json(
            "auth/newuser",
            &json!({"firstName": "Eve", "lastName": "Mallory", "email": email,
                "password": TEST_PASSWORD, "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "newuser: {answer}");
    let (status, outcome) = status_json(
        app.post_json(
            "auth/newproject",
            &json!({"login": answer["login"], "projectName": name}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "newproject: {outcome}");
    let token = redeem_ok(app, &outcome["code"], &verifier, None).await;
    let session = with_token(root, &token);
    let me = me(&session).await;
    assert_eq!(me["membership"]["admin"], true, "{me}");
    Owner {
        email: email.to_string(),
        project_id: me["project"]["id"].as_str().unwrap().to_string(),
        membership_id: me["membership"]["id"].as_str().unwrap().to_string(),
        user_id: me["user"]["id"].as_str().unwrap().to_string(),
        session,
    }
}

/// The bootstrapped super admin's User id.
async fn super_admin_user(root: &Session) -> String {
    let (status, found) = status_json(root.get(&format!("User?email={SUPER_EMAIL}")).await).await;
    assert_eq!(status, 200, "{found}");
    let entries = found["entry"].as_array().expect("the super admin's User");
    assert_eq!(entries.len(), 1, "{found}");
    entries[0]["resource"]["id"].as_str().unwrap().to_string()
}

async fn read_as(session: &Session, reference: &str) -> Value {
    let (status, body) = status_json(session.get(reference).await).await;
    assert_eq!(status, 200, "read {reference}: {body}");
    body
}

/// The ids a searchset's entries carry.
fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn base64_json(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(value.to_string())
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// A transaction entry that JSON-patches `url` (a Binary, as FHIR says).
fn patch_entry(url: &str, operations: &Value) -> Value {
    json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64_json(operations)},
        "request": {"method": "PATCH", "url": url}})
}

fn put_entry(url: &str, resource: &Value) -> Value {
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
}

/// Asserts a refusal: `status` and an OperationOutcome body.
async fn assert_refused(response: reqwest::Response, status: u16, what: &str) -> Value {
    let (actual, body) = status_json(response).await;
    assert_eq!(
        actual, status,
        "{what}: expected {status}, got {actual}: {body}"
    );
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}: {body}");
    body
}

/// Asserts that nothing was gained: 401, 403 or 404.
async fn assert_denied(response: reqwest::Response, what: &str) -> Value {
    let (status, body) = status_json(response).await;
    assert!(
        matches!(status, 401 | 403 | 404),
        "{what}: expected 401, 403 or 404, got {status}: {body}"
    );
    body
}

/// The `login_id` claim of a fhirgate access token (read, not verified).
fn login_of(token: &str) -> String {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .expect("base64url claims"),
    )
    .expect("JSON claims");
    claims["login_id"].as_str().expect("login_id").to_string()
}

/// A ClientApplication with a secret and a membership (`fields` over the
/// defaults), made by the super admin; not signed in.
async fn make_client(root: &Session, project_id: &str, name: &str, fields: Value) -> Credentials {
    let secret = fhirgate_tests::random_secret();
    let client = root
        .create(
            json!({"resourceType": "ClientApplication", "name": name, "secret": secret,
            "meta": {"project": project_id}}),
        )
        .await;
    let id = client["id"].as_str().unwrap().to_string();
    let client_ref = format!("ClientApplication/{id}");
    let mut membership = json!({
        "resourceType": "ProjectMembership", "meta": {"project": project_id},
        "project": {"reference": format!("Project/{project_id}")},
        "user": {"reference": client_ref}, "profile": {"reference": client_ref}
    });
    for (key, value) in fields.as_object().unwrap() {
        membership[key] = value.clone();
    }
    root.create(membership).await;
    Credentials {
        client_id: id,
        client_secret: secret,
    }
}

async fn client_credentials(app: &TestApp, credentials: &Credentials) -> (u16, Value) {
    app.token(&[
        ("grant_type", "client_credentials"),
        ("client_id", &credentials.client_id),
        ("client_secret", &credentials.client_secret),
    ])
    .await
}

/// The stored resource as the super admin reads it.
async fn stored(root: &Session, reference: &str) -> Value {
    read_as(root, reference).await
}

/// The membership fields that say what it may do.
fn powers(membership: &Value) -> Value {
    json!([
        membership["admin"],
        membership["accessPolicy"],
        membership["access"],
        membership["user"],
        membership["project"]
    ])
}

// ---------------------------------------------------------------------------
// Attack 1: self-registration to super admin
// ---------------------------------------------------------------------------

/// The policy an attacker would like: Project writes and everything else.
fn everything_policy() -> Value {
    json!({"resourceType": "AccessPolicy", "name": "everything",
        "resource": [{"resourceType": "Project"}, {"resourceType": "*"}]})
}

/// Every way to make `P` a super admin project (or change its `features` or
/// `link`) fails, whatever policies `attacker` has; afterwards the attacker
/// still sees only its own project and no super admin route.
async fn assert_the_super_admin_floor_holds(root: &Session, attacker: &Session, project_id: &str) {
    let project_ref = format!("Project/{project_id}");
    // Something stored in `features`, to see that a PUT without it keeps it.
    let mut project = stored(root, &project_ref).await;
    project["features"] = json!(["bots"]);
    let (status, body) = status_json(root.put(&project_ref, &project).await).await;
    assert_eq!(status, 200, "the super admin sets features: {body}");
    let before = stored(root, &project_ref).await;
    let unchanged = |what: &str, now: &Value| {
        assert_ne!(
            now["superAdmin"], true,
            "{what}: Project/{project_id} became a super admin project: {now}"
        );
        assert_eq!(
            now["features"], before["features"],
            "{what}: features: {now}"
        );
        assert_eq!(now["link"], before["link"], "{what}: link: {now}");
    };

    let response = attacker
        .patch(
            &project_ref,
            &json!([{"op": "add", "path": "/superAdmin", "value": true}]),
        )
        .await;
    assert_refused(response, 403, "PATCH Project superAdmin").await;
    unchanged("PATCH superAdmin", &stored(root, &project_ref).await);

    let (status, mine) = status_json(attacker.get(&project_ref).await).await;
    assert_eq!(status, 200, "an admin reads its project: {mine}");
    let mut put = mine.clone();
    put["superAdmin"] = json!(true);
    assert_refused(
        attacker.put(&project_ref, &put).await,
        403,
        "PUT Project superAdmin",
    )
    .await;
    unchanged("PUT superAdmin", &stored(root, &project_ref).await);

    let mut put = mine.clone();
    put["features"] = json!(["bots", "cron", "email"]);
    assert_refused(
        attacker.put(&project_ref, &put).await,
        403,
        "PUT Project features",
    )
    .await;
    let response = attacker
        .patch(
            &project_ref,
            &json!([{"op": "add", "path": "/features", "value": ["bots", "cron"]}]),
        )
        .await;
    assert_refused(response, 403, "PATCH Project features").await;
    let mut put = mine.clone();
    put["link"] = json!([{"project": {"reference": format!("Project/{}", uuid::Uuid::new_v4())}}]);
    assert_refused(
        attacker.put(&project_ref, &put).await,
        403,
        "PUT Project link",
    )
    .await;
    unchanged("features and link", &stored(root, &project_ref).await);

    // Leaving `features` out of a PUT removes it: refused like any change.
    // With the server's fields sent back as read, the admin renames it.
    let mut put = mine.clone();
    put.as_object_mut().unwrap().remove("features");
    put["name"] = json!("Renamed by its admin");
    let response = attacker.put(&project_ref, &put).await;
    assert_refused(response, 403, "PUT without features").await;
    unchanged("PUT without features", &stored(root, &project_ref).await);
    let mut put = stored(root, &project_ref).await;
    put["name"] = json!("Renamed by its admin");
    let (status, body) = status_json(attacker.put(&project_ref, &put).await).await;
    assert_eq!(status, 200, "a PUT that keeps the server's fields: {body}");
    let now = stored(root, &project_ref).await;
    assert_eq!(now["name"], "Renamed by its admin", "{now}");
    unchanged("renamed", &now);

    // Transactions: a Binary JSON patch and a PUT entry.
    let mut put = stored(root, &project_ref).await;
    put["superAdmin"] = json!(true);
    for (what, entry) in [
        (
            "transaction PATCH",
            patch_entry(
                &project_ref,
                &json!([{"op": "add", "path": "/superAdmin", "value": true}]),
            ),
        ),
        ("transaction PUT", put_entry(&project_ref, &put)),
    ] {
        let (status, body) = status_json(attacker.post("", &transaction(vec![entry])).await).await;
        assert!(
            (400..500).contains(&status),
            "{what}: the transaction should be refused: {status} {body}"
        );
        unchanged(what, &stored(root, &project_ref).await);
    }

    // Conditional update.
    let response = attacker
        .put(&format!("Project?_id={project_id}"), &put)
        .await;
    assert_refused(response, 403, "conditional PUT Project superAdmin").await;
    unchanged("conditional PUT", &stored(root, &project_ref).await);

    // Projects are made through /auth/newproject only.
    let response = attacker
        .post(
            "Project",
            &json!({"resourceType": "Project", "name": "Shadow", "superAdmin": true}),
        )
        .await;
    assert_refused(response, 403, "POST Project").await;

    // After all of it: one project, no super admin's User, no super admin route.
    let (status, projects) = status_json(attacker.get("Project").await).await;
    assert_eq!(status, 200, "{projects}");
    assert_eq!(entry_ids(&projects), [project_id], "{projects}");
    let super_user = super_admin_user(root).await;
    assert_denied(
        attacker.get(&format!("User/{super_user}")).await,
        "reading the super admin's User",
    )
    .await;
    let response = attacker
        .request(Method::POST, "admin/super/keys/rotate")
        .send()
        .await
        .unwrap();
    assert_refused(response, 403, "POST /admin/super/keys/rotate").await;
    let (status, me) = status_json(
        attacker
            .request(Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_ne!(me["project"]["superAdmin"], true, "{me}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_self_registered_admin_cannot_change_its_own_membership() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let owner = sign_up_with_project(&app, &root, "eve@attacker.test", "Evil Corp").await;
    let policy = owner.session.create(everything_policy()).await;
    let policy_ref = format!("AccessPolicy/{}", policy["id"].as_str().unwrap());
    let membership_ref = format!("ProjectMembership/{}", owner.membership_id);
    let before = stored(&root, &membership_ref).await;

    // FHIR PATCH of its own accessPolicy, access and admin.
    for (what, operations) in [
        (
            "accessPolicy",
            json!([{"op": "add", "path": "/accessPolicy", "value": {"reference": policy_ref}}]),
        ),
        (
            "access",
            json!([{"op": "add", "path": "/access", "value": [{"policy": {"reference": policy_ref}}]}]),
        ),
        (
            "admin",
            json!([{"op": "replace", "path": "/admin", "value": false}]),
        ),
    ] {
        let response = owner.session.patch(&membership_ref, &operations).await;
        assert_refused(response, 403, &format!("PATCH own membership {what}")).await;
        assert_eq!(
            powers(&stored(&root, &membership_ref).await),
            powers(&before),
            "own membership changed by PATCH of {what}"
        );
    }
    // PUT, a transaction and the admin route.
    let mut put = stored(&root, &membership_ref).await;
    put["accessPolicy"] = json!({"reference": policy_ref});
    assert_refused(
        owner.session.put(&membership_ref, &put).await,
        403,
        "PUT own membership",
    )
    .await;
    let (status, body) = status_json(
        owner
            .session
            .post("", &transaction(vec![put_entry(&membership_ref, &put)]))
            .await,
    )
    .await;
    assert!(
        (400..500).contains(&status),
        "a transaction changing its own membership: {status} {body}"
    );
    let response = owner
        .session
        .post_json(
            &format!(
                "admin/projects/{}/members/{}",
                owner.project_id, owner.membership_id
            ),
            &put,
        )
        .await;
    assert_refused(response, 403, "the admin route on its own membership").await;
    assert_eq!(
        powers(&stored(&root, &membership_ref).await),
        powers(&before),
        "own membership changed"
    );

    // Whether or not the policy got attached, the floor holds.
    let session = with_token(
        &root,
        &password_token(&app, &owner.email, TEST_PASSWORD, None, None, "openid").await,
    );
    assert_the_super_admin_floor_holds(&root, &session, &owner.project_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_policy_makes_a_project_admin_a_super_admin() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let owner = sign_up_with_project(&app, &root, "eve@attacker.test", "Evil Corp").await;
    let policy = owner.session.create(everything_policy()).await;
    // The super admin attaches the very policy the attacker wanted.
    let response = root
        .patch(
            &format!("ProjectMembership/{}", owner.membership_id),
            &json!([{"op": "add", "path": "/accessPolicy",
                "value": {"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())}}]),
        )
        .await;
    assert_eq!(response.status(), 200);
    let session = with_token(
        &root,
        &password_token(&app, &owner.email, TEST_PASSWORD, None, None, "openid").await,
    );
    let me = me(&session).await;
    assert!(
        me["accessPolicy"].to_string().contains("\"Project\""),
        "the policy is in effect: {me}"
    );
    assert_the_super_admin_floor_holds(&root, &session, &owner.project_id).await;
}

// ---------------------------------------------------------------------------
// Attack 2: personal tokens for accounts an admin does not own
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_project_admin_cannot_mint_tokens_for_users_it_does_not_own() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let owner = sign_up_with_project(&app, &root, "eve@attacker.test", "B").await;
    let b = owner.project_id.clone();
    let super_user = super_admin_user(&root).await;
    let db = app.db().await;
    let hash_of = |id: String| {
        let db = &db;
        async move {
            db.query_opt(
                "SELECT hash FROM resource_secret WHERE resource_type = 'User' AND kind = 'password' AND resource_id::text = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|row| row.get::<_, String>(0))
        }
    };
    let super_hash = hash_of(super_user.clone()).await;
    assert!(super_hash.is_some());
    let mint = |membership: String| {
        let session = owner.session.clone();
        let b = b.clone();
        async move {
            status_json(
                session
                    .post_json(
                        &format!("admin/projects/{b}/members/{membership}/tokens"),
                        &json!({"lifetime": 600}),
                    )
                    .await,
            )
            .await
        }
    };

    // The super admin's email, invited into B.
    let (status, invited) = status_json(
        owner
            .session
            .post_json(
                &format!("admin/projects/{b}/invite"),
                &json!({"resourceType": "Practitioner", "firstName": "Root", "lastName": "Admin",
                    "email": SUPER_EMAIL, "sendEmail": false}),
            )
            .await,
    )
    .await;
    if status == 200 {
        assert_eq!(
            invited["user"]["reference"],
            format!("User/{super_user}"),
            "{invited}"
        );
        let (status, token) = mint(invited["id"].as_str().unwrap().to_string()).await;
        assert_eq!(
            status, 403,
            "a token for the super admin's User, minted by a project admin: {token}"
        );
        assert!(token.get("access_token").is_none(), "{token}");
    } else {
        assert!((400..500).contains(&status), "{status} {invited}");
    }
    let user = stored(&root, &format!("User/{super_user}")).await;
    assert_eq!(user["email"], SUPER_EMAIL);
    assert_eq!(hash_of(super_user.clone()).await, super_hash);

    // A server-scoped user of B is not B's to speak for either.
    let doctor = app
        .user(&b, "doctor@example.com", "Practitioner", false)
        .await;
    let (status, token) = mint(doctor.membership_id.clone()).await;
    assert_eq!(status, 403, "a token for a server-scoped user: {token}");

    // Its own membership and a project-scoped user of B: allowed.
    let (status, token) = mint(owner.membership_id.clone()).await;
    assert_eq!(status, 201, "its own membership: {token}");
    let local = app
        .user(&b, "local@example.com", "Practitioner", true)
        .await;
    let (status, token) = mint(local.membership_id.clone()).await;
    assert_eq!(status, 201, "a project-scoped user of B: {token}");
    let script = with_token(&root, token["access_token"].as_str().unwrap());
    let (status, profile) = status_json(script.get(&local.profile).await).await;
    assert_eq!(status, 200, "the minted token reads in B: {profile}");
    // ... but does not act on the account.
    for (path, body) in [
        (
            "auth/changeemail",
            json!({"email": "taken-over@attacker.test", "password": local.password}),
        ),
        (
            "auth/changepassword",
            json!({"oldPassword": local.password, "newPassword": "amber lighthouse beyond the hills"}),
        ),
        ("auth/tokens", json!({"lifetime": 600})),
    ] {
        assert_refused(
            script.post_json(path, &body).await,
            403,
            &format!("{path} with an admin-minted token"),
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// Attack 3: shadow Users
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_user_cannot_block_the_super_admins_sign_in() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let b = app.project("B").await;
    let owner = sign_up_with_project(&app, &root, "eve@attacker.test", "C").await;
    for (admin, project_id) in [(&b.admin, &b.id), (&owner.session, &owner.project_id)] {
        let (status, user) = status_json(
            admin
                .post(
                    "User",
                    &json!({"resourceType": "User", "email": SUPER_EMAIL, "firstName": "x", "lastName": "y"}),
                )
                .await,
        )
        .await;
        if status == 201 {
            assert_eq!(
                user["project"]["reference"],
                format!("Project/{project_id}"),
                "a User made by a project admin is scoped to its project: {user}"
            );
        } else {
            assert!((400..500).contains(&status), "{status} {user}");
        }
    }
    let (_, challenge) = pkce_pair();
    let (status, body) = app
        .login(
            &json!({"email": SUPER_EMAIL, "password": SUPER_PASSWORD, "scope": "openid",
            "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    assert_eq!(status, 200, "the super admin signs in: {body}");
    assert!(body["login"].as_str().is_some(), "{body}");
    assert!(body["code"].as_str().is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_emails_are_unique_within_their_scope() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let server_user = json!({"resourceType": "User", "email": "dup@example.com", "firstName": "A", "lastName": "B"});
    let (status, first) = status_json(root.post("User", &server_user).await).await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = status_json(root.post("User", &server_user).await).await;
    assert_eq!(
        status, 409,
        "a second server-scoped User with the same email: {second}"
    );

    let p1 = app.project("P1").await;
    let p2 = app.project("P2").await;
    let scoped = |project: &str| {
        json!({"resourceType": "User", "email": "local@example.com", "firstName": "A", "lastName": "B",
            "project": {"reference": format!("Project/{project}")}})
    };
    let (status, body) = status_json(p1.admin.post("User", &scoped(&p1.id)).await).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = status_json(p2.admin.post("User", &scoped(&p2.id)).await).await;
    assert_eq!(status, 201, "the same email in another project: {body}");
    let (status, body) = status_json(p1.admin.post("User", &scoped(&p1.id)).await).await;
    assert_eq!(
        status, 409,
        "a second project-scoped User with the same email: {body}"
    );
}

// ---------------------------------------------------------------------------
// Attack 4: a scope-limited sign-in of an admin
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_scope_limited_admin_sign_in_reaches_no_account_or_admin_route() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let owner = sign_up_with_project(&app, &root, "owner@example.com", "Clinic").await;
    let scope = "openid patient/Observation.rs";
    let client_id = app
        .public_client(
            &owner.project_id,
            fhirgate_tests::REDIRECT_URI,
            json!({"scope": scope}),
        )
        .await;
    let token = password_token(
        &app,
        &owner.email,
        TEST_PASSWORD,
        None,
        Some(&client_id),
        scope,
    )
    .await;
    let app_session = with_token(&root, &token);
    assert_eq!(
        app_session.get("Patient").await.status(),
        403,
        "Patient is outside the scope"
    );
    let clients_before = entry_ids(&read_as(&root, "ClientApplication?_count=100").await);

    let p = &owner.project_id;
    for (path, body) in [
        ("auth/tokens".to_string(), json!({"lifetime": 600})),
        (
            "auth/changeemail".to_string(),
            json!({"email": "taken-over@attacker.test", "password": TEST_PASSWORD}),
        ),
        (
            format!("admin/projects/{p}/client"),
            json!({"name": "Exfiltrator", "redirectUri": "https://attacker.test/cb"}),
        ),
        (
            format!("admin/projects/{p}/invite"),
            json!({"resourceType": "Practitioner", "firstName": "Mal", "lastName": "Lory",
                "email": "mallory@attacker.test", "admin": true,
                "password": "amber lighthouse beyond the hills", "sendEmail": false}),
        ),
    ] {
        assert_refused(
            app_session.post_json(&path, &body).await,
            403,
            &format!("{path} with scope '{scope}'"),
        )
        .await;
    }
    let (_, users) = status_json(root.get("User?email=mallory@attacker.test").await).await;
    assert_eq!(entry_ids(&users).len(), 0, "nobody was invited: {users}");
    assert_eq!(
        entry_ids(&read_as(&root, "ClientApplication?_count=100").await),
        clients_before,
        "no client was made"
    );
    let (_, challenge) = pkce_pair();
    let (status, _) = app
        .login(&json!({"email": "mallory@attacker.test", "password": "amber lighthouse beyond the hills",
            "scope": "openid", "codeChallenge": challenge, "codeChallengeMethod": "S256"}))
        .await;
    assert_ne!(status, 200, "no admin account was made");
}

// ---------------------------------------------------------------------------
// Attack 4b: only the user acts on the account
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn client_and_personal_tokens_cannot_act_on_the_account() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let user = app
        .user(&project.id, "acct@example.com", "Practitioner", false)
        .await;
    let signed_in = with_token(
        &project.admin,
        &password_token(&app, &user.email, &user.password, None, None, "openid").await,
    );
    let (status, personal) = status_json(
        signed_in
            .post_json("auth/tokens", &json!({"lifetime": 600}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "the user mints a personal token: {personal}");
    let personal = with_token(&project.admin, personal["access_token"].as_str().unwrap());
    assert_eq!(personal.get("Patient").await.status(), 200);
    let session_login = login_of(&signed_in.token);

    let new_password = "amber lighthouse beyond the hills";
    for (who, session, own_login) in [
        ("a personal token", &personal, session_login.clone()),
        (
            "a client_credentials token",
            &project.admin,
            login_of(&project.admin.token),
        ),
    ] {
        for (path, body) in [
            (
                "auth/changeemail",
                json!({"email": "taken-over@attacker.test", "password": user.password}),
            ),
            (
                "auth/changepassword",
                json!({"oldPassword": user.password, "newPassword": new_password}),
            ),
            ("auth/tokens", json!({"lifetime": 600})),
            ("auth/revoke", json!({"loginId": own_login})),
        ] {
            assert_refused(
                session.post_json(path, &body).await,
                403,
                &format!("{path} with {who}"),
            )
            .await;
        }
    }
    // Nothing changed: the password and the sessions work.
    assert_eq!(signed_in.get("Patient").await.status(), 200);
    password_token(&app, &user.email, &user.password, None, None, "openid").await;

    // The user's own password sign-in changes the password.
    let (status, body) = status_json(
        signed_in
            .post_json(
                "auth/changepassword",
                &json!({"oldPassword": user.password, "newPassword": new_password}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    password_token(&app, &user.email, new_password, None, None, "openid").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_email_needs_the_current_password() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let user = app
        .user(&project.id, "acct@example.com", "Practitioner", false)
        .await;
    let session = with_token(
        &project.admin,
        &password_token(&app, &user.email, &user.password, None, None, "openid").await,
    );
    let (status, body) = status_json(
        session
            .post_json("auth/changeemail", &json!({"email": "new@example.com"}))
            .await,
    )
    .await;
    assert_eq!(status, 400, "no password: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert_refused(
        session
            .post_json(
                "auth/changeemail",
                &json!({"email": "new@example.com", "password": "not the password at all"}),
            )
            .await,
        400,
        "the wrong password",
    )
    .await;
    let (status, body) = status_json(
        session
            .post_json(
                "auth/changeemail",
                &json!({"email": "new@example.com", "password": user.password}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "the right password: {body}");
}

// ---------------------------------------------------------------------------
// Attack 5: claiming someone else's invitation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_invitation_does_not_hand_the_account_to_whoever_signed_up_first() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("Corp").await;
    let victim = "victim@corp.test";
    let stranger_password = "stranger knows this passphrase well";
    let (_, challenge) = pkce_pair();
    let (status, body) = status_json(
        app.post_json(
            "auth/newuser",
            &json!({"firstName": "Vic", "lastName": "Tim", "email": victim,
                "password": stranger_password, "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The verification mail goes to the real person; the stranger never reads it.
    let verification = smtp.next().await;
    assert_eq!(verification.to, vec![victim]);

    let (status, membership) = status_json(
        project
            .admin
            .post_json(
                &format!("admin/projects/{}/invite", project.id),
                &json!({"resourceType": "Practitioner", "firstName": "Vic", "lastName": "Tim", "email": victim}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{membership}");

    let (status, body) = status_json(app.login_attempt(victim, stranger_password).await).await;
    assert_ne!(
        status, 200,
        "the stranger's password still opens the invited account: {body}"
    );

    // The real person gets a link to choose a password.
    let mut link = None;
    for _ in 0..3 {
        let mail = smtp.next().await;
        if mail.to == vec![victim.to_string()] && mail.part("text/plain").contains("/setpassword/")
        {
            link = Some(mail.link("setpassword"));
            break;
        }
    }
    let (id, secret) = link.expect("a set-password mail to the invited address");
    let password = "the real victim chose this one";
    let (status, body) = status_json(
        app.post_json(
            "auth/setpassword",
            &json!({"id": id, "secret": secret, "password": password}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let session = with_token(
        &project.admin,
        &password_token(&app, victim, password, None, None, "openid").await,
    );
    let me = me(&session).await;
    assert_eq!(me["project"]["id"], project.id, "{me}");
    let profile = membership["profile"]["reference"].as_str().unwrap();
    let (status, read) = status_json(session.get(profile).await).await;
    assert_eq!(
        status, 200,
        "the invited person reads in the project: {read}"
    );
    assert_ne!(
        status_json(app.login_attempt(victim, stranger_password).await)
            .await
            .0,
        200,
        "the stranger's password is gone"
    );
}

// ---------------------------------------------------------------------------
// Client lifecycle and secret rotation
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn clients_whose_membership_ended_or_is_inactive_get_no_token() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let project = app.project("P").await;
    for (what, fields) in [
        ("an endDate in the past", json!({"endDate": "2000-01-01"})),
        ("active false", json!({"active": false})),
    ] {
        let credentials = make_client(&root, &project.id, "retired", fields).await;
        let (status, body) = client_credentials(&app, &credentials).await;
        assert!(
            matches!(status, 400 | 401),
            "{what}: expected 400 or 401, got {status}: {body}"
        );
        assert!(
            body["error"].as_str().is_some(),
            "{what}: OAuth error: {body}"
        );
        assert!(body.get("access_token").is_none(), "{what}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_turned_off_or_deleted_loses_its_tokens_at_once() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let project = app.project("P").await;

    let off = app.client_in(&root, &project.id, false).await;
    assert_eq!(off.get("Patient").await.status(), 200);
    let client_ref = format!("ClientApplication/{}", off.credentials.client_id);
    let mut client = stored(&root, &client_ref).await;
    client["status"] = json!("off");
    let (status, body) = status_json(root.put(&client_ref, &client).await).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = status_json(off.get("Patient").await).await;
    assert_eq!(status, 401, "a client set off keeps its token: {body}");

    let deleted = app.client_in(&root, &project.id, false).await;
    assert_eq!(deleted.get("Patient").await.status(), 200);
    let client_ref = format!("ClientApplication/{}", deleted.credentials.client_id);
    assert!(root.delete(&client_ref).await.status().is_success());
    let (status, body) = status_json(deleted.get("Patient").await).await;
    assert_eq!(status, 401, "a deleted client keeps its token: {body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scope_narrowed_admin_token_cannot_rotate_other_clients_secrets() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let project = app.project("P").await;
    let alpha = make_client(&root, &project.id, "alpha", json!({})).await;
    let beta = make_client(&root, &project.id, "beta", json!({})).await;
    let narrowed = app
        .client_with(
            &root,
            &project.id,
            json!({"admin": true}),
            Some("user/ClientApplication.cruds?name=alpha"),
        )
        .await;
    // The scope narrows reads.
    assert_eq!(
        narrowed
            .get(&format!("ClientApplication/{}", alpha.client_id))
            .await
            .status(),
        200
    );
    assert_denied(
        narrowed
            .get(&format!("ClientApplication/{}", beta.client_id))
            .await,
        "reading beta",
    )
    .await;
    let response = narrowed
        .fhir(
            Method::POST,
            &format!("ClientApplication/{}/$rotate-secret", beta.client_id),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert!(
        matches!(status, 403 | 404),
        "rotating beta's secret with a token for alpha only: {status} {body}"
    );
    let (status, body) = client_credentials(&app, &beta).await;
    assert_eq!(status, 200, "beta's secret still works: {body}");
}

// ---------------------------------------------------------------------------
// The escalation walk
// ---------------------------------------------------------------------------

/// The other ways a restricted admin could lift its own limits: an
/// invitation upserting its own membership, a second membership for itself,
/// and rewriting the AccessPolicy that binds it.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_cannot_lift_its_own_limits_another_way() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let owner = sign_up_with_project(&app, &root, "eve@attacker.test", "Evil Corp").await;
    // The super admin limits the owner with a policy of the project.
    let limiting = json!({"resourceType": "AccessPolicy", "name": "no patients",
        "meta": {"project": owner.project_id},
        "resource": [{"resourceType": "Observation"}]});
    let limiting = root.create(limiting).await;
    let limiting_ref = format!("AccessPolicy/{}", limiting["id"].as_str().unwrap());
    let membership_ref = format!("ProjectMembership/{}", owner.membership_id);
    let mut membership = stored(&root, &membership_ref).await;
    membership["accessPolicy"] = json!({"reference": limiting_ref});
    let (status, body) = status_json(root.put(&membership_ref, &membership).await).await;
    assert_eq!(status, 200, "{body}");
    let before = stored(&root, &membership_ref).await;
    let session = with_token(
        &owner.session,
        &password_token(&app, &owner.email, TEST_PASSWORD, None, None, "openid").await,
    );

    // Rewriting the policy that binds it.
    let mut widened = stored(&root, &limiting_ref).await;
    widened["resource"] = json!([{"resourceType": "*"}]);
    assert_refused(
        session.put(&limiting_ref, &widened).await,
        403,
        "PUT own policy",
    )
    .await;
    assert_refused(
        session.delete(&limiting_ref).await,
        403,
        "DELETE own policy",
    )
    .await;
    assert_eq!(
        stored(&root, &limiting_ref).await["resource"],
        json!([{"resourceType": "Observation"}])
    );

    // An invitation upserting its own membership without the policy.
    let response = session
        .post_json(
            &format!("admin/projects/{}/invite", owner.project_id),
            &json!({"resourceType": "Practitioner", "firstName": "Eve", "lastName": "Mallory",
                "email": owner.email, "upsert": true, "sendEmail": false,
                "membership": {"admin": true}}),
        )
        .await;
    assert_refused(response, 403, "invite upsert of its own membership").await;

    // A second membership for itself, without the policy.
    let response = session
        .post(
            "ProjectMembership",
            &json!({"resourceType": "ProjectMembership",
                "project": {"reference": format!("Project/{}", owner.project_id)},
                "user": {"reference": format!("User/{}", owner.user_id)},
                "profile": before["profile"], "admin": true}),
        )
        .await;
    assert_refused(response, 403, "a second membership for itself").await;

    assert_eq!(
        powers(&stored(&root, &membership_ref).await),
        powers(&before)
    );
    let db = app.db().await;
    let memberships = count(
        &db,
        "SELECT count(*) FROM resource WHERE resource_type = 'ProjectMembership' AND NOT deleted \
         AND content::jsonb #>> '{user,reference}' = $1",
        &[&format!("User/{}", owner.user_id)],
    )
    .await;
    assert_eq!(memberships, 1, "no second membership");
}

/// Inviting an unverified address never gives the account the password the
/// inviting admin chose: the account has memberships elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn an_invitation_never_sets_an_existing_accounts_password() {
    let (app, _smtp) = spawn_with_mail().await;
    let root = app.super_admin().await;
    // A person signs up and makes a project; the address is not verified yet.
    let victim = sign_up_with_project(&app, &root, "busy@corp.test", "Busy Corp").await;
    let attacker = sign_up_with_project(&app, &root, "eve@attacker.test", "Evil Corp").await;
    let chosen = "the attacker picked this passphrase";
    let response = attacker
        .session
        .post_json(
            &format!("admin/projects/{}/invite", attacker.project_id),
            &json!({"resourceType": "Practitioner", "firstName": "B", "lastName": "C",
                "email": victim.email, "password": chosen, "sendEmail": false}),
        )
        .await;
    let (status, body) = status_json(response).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = status_json(app.login_attempt(&victim.email, chosen).await).await;
    assert_ne!(
        status, 200,
        "the attacker's password opens the account: {body}"
    );
    // The registrant's sessions ended with the reset.
    let (status, _) = status_json(victim.session.get("Patient").await).await;
    assert_eq!(status, 401);
}

/// A server-scoped User stored in a project (a super admin wrote it there)
/// is still that user's account: the project's admins neither change nor
/// delete it.
#[tokio::test(flavor = "multi_thread")]
async fn project_admins_do_not_change_server_scoped_users_stored_in_their_project() {
    let app = TestApp::spawn().await;
    let project = app.project("Hosting").await;
    let root = app.super_admin().await;
    let user = root
        .create(json!({"resourceType": "User", "email": "guest@example.com",
            "firstName": "Test", "lastName": "User", "meta": {"project": project.id}}))
        .await;
    let user_ref = format!("User/{}", user["id"].as_str().unwrap());
    assert!(user.get("project").is_none(), "server-scoped: {user}");
    let (status, _) = status_json(project.admin.get(&user_ref).await).await;
    assert_eq!(status, 200, "stored in the project, so its admins see it");
    let mut renamed = stored(&root, &user_ref).await;
    renamed["firstName"] = json!("Renamed");
    assert_refused(project.admin.put(&user_ref, &renamed).await, 403, "PUT").await;
    assert_refused(project.admin.delete(&user_ref).await, 403, "DELETE").await;
    assert_eq!(stored(&root, &user_ref).await["firstName"], "Test");
}

/// With sign-up closed, no step of the sign-up flow makes a project.
#[tokio::test(flavor = "multi_thread")]
async fn closed_registration_makes_no_project() {
    let app = TestApp::spawn_with(|config| config.lifecycle.registration_enabled = false).await;
    let project = app.project("clinic").await;
    let user = app
        .user(&project.id, "doc@example.com", "Practitioner", false)
        .await;
    let (status, body) = status_json(app.login_attempt(&user.email, &user.password).await).await;
    assert_eq!(status, 200, "{body}");
    let login = body["login"].clone();
    for path in ["auth/newproject", "auth/newpatient"] {
        let response = app
            .post_json(
                path,
                &json!({"login": login, "projectName": "Mine", "projectId": project.id}),
            )
            .await;
        assert_refused(response, 403, path).await;
    }
    let db = app.db().await;
    let projects = count(
        &db,
        "SELECT count(*) FROM resource WHERE resource_type = 'Project' AND NOT deleted",
        &[],
    )
    .await;
    assert_eq!(projects, 2, "the super admin's project and the clinic");
}

/// A Bot's tokens stop when the Bot is deleted.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_bots_tokens_stop_at_once() {
    let app = TestApp::spawn().await;
    let project = app.project("Bots").await;
    let (status, bot) = status_json(
        project
            .admin
            .post_json(
                &format!("admin/projects/{}/bot", project.id),
                &json!({"name": "nightly"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 201, "{bot}");
    let bot_ref = format!("Bot/{}", bot["id"].as_str().unwrap());
    let (_, members) = status_json(
        project
            .admin
            .get(&format!("ProjectMembership?user={bot_ref}"))
            .await,
    )
    .await;
    let membership = members["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, minted) = status_json(
        project
            .admin
            .post_json(
                &format!("admin/projects/{}/members/{membership}/tokens", project.id),
                &json!({}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let token = with_token(&project.admin, minted["access_token"].as_str().unwrap());
    assert_eq!(token.get("Patient").await.status(), 200);
    assert_eq!(project.admin.delete(&bot_ref).await.status(), 200);
    assert_eq!(token.get("Patient").await.status(), 401);
}

/// Entries a random AccessPolicy draws from: admin types among them.
const POLICY_TYPES: [&str; 8] = [
    "Project",
    "ProjectMembership",
    "AccessPolicy",
    "User",
    "ClientApplication",
    "*",
    "Patient",
    "Observation",
];

fn random_policy(rng: &mut Rng, name: &str) -> Value {
    let mut types = BTreeSet::new();
    for _ in 0..1 + rng.below(4) {
        types.insert(*rng.pick(&POLICY_TYPES));
    }
    let resource: Vec<Value> = types
        .into_iter()
        .map(|t| {
            if rng.chance(30) {
                json!({"resourceType": t, "readonly": true})
            } else {
                json!({"resourceType": t})
            }
        })
        .collect();
    json!({"resourceType": "AccessPolicy", "name": name, "resource": resource})
}

struct Actor {
    label: String,
    project: usize,
    session: Session,
    membership: String,
    /// `User/…`.
    user: String,
    email: String,
    /// A token narrowed by SMART resource scopes: what they grant.
    scope: Option<Scoped>,
    /// Whether its membership may show it the hidden birthDates (people of
    /// project 0 whose access includes Patients); every response to the
    /// others is scanned for them.
    sees_hidden: bool,
}

/// A token narrowed by SMART scopes, and one of the same membership without.
struct Scoped {
    scope: String,
    /// (type or `*`, the v2 letters `cruds` it grants).
    grants: Vec<(String, String)>,
    /// The same membership signed in without a resource scope: reads inside
    /// the scope answer as it does.
    base: Session,
}

impl Scoped {
    fn new(scope: &str, base: Session) -> Scoped {
        let grants = scope
            .split_whitespace()
            .filter_map(|s| {
                let (_, rest) = s.split_once('/')?;
                let (resource_type, letters) = rest.split_once('.')?;
                Some((resource_type.to_string(), letters.to_string()))
            })
            .collect();
        Scoped {
            scope: scope.to_string(),
            grants,
            base,
        }
    }

    /// Whether the scope grants `letter` (one of `cruds`) on `resource_type`.
    fn grants(&self, resource_type: &str, letter: char) -> bool {
        self.grants
            .iter()
            .any(|(t, l)| (t == "*" || t == resource_type) && l.contains(letter))
    }

    fn writes(&self, resource_type: &str) -> bool {
        "cud".chars().any(|l| self.grants(resource_type, l))
    }
}

/// What a request asks for, as a scope would grant it.
#[derive(Clone, Debug, PartialEq)]
enum Access {
    /// A FHIR interaction on a type, as its SMART letter (`c r u d s`).
    Fhir(String, char),
    /// `/auth/changeemail`, `/auth/changepassword`, `/auth/tokens`, `/auth/revoke`.
    Account,
    /// `/admin/…` and `$rotate-secret`.
    Admin,
    Other,
}

/// The accesses a request (its method, URL path and body) asks for; a
/// transaction's are its entries'.
fn classify(method: &str, path: &str, body: Option<&[u8]>) -> Vec<Access> {
    let path = path.trim_start_matches('/');
    if let Some(route) = path.strip_prefix("auth/") {
        return vec![match route {
            "changeemail" | "changepassword" | "tokens" | "revoke" => Access::Account,
            _ => Access::Other,
        }];
    }
    if path.starts_with("admin/") {
        return vec![Access::Admin];
    }
    let Some(rest) = path.strip_prefix("fhir/R4") else {
        return vec![Access::Other];
    };
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() && method == "POST" {
        let bundle: Value = body
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        return bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                fhir_access(
                    entry["request"]["method"].as_str().unwrap_or_default(),
                    entry["request"]["url"].as_str().unwrap_or_default(),
                )
            })
            .collect();
    }
    vec![fhir_access(method, rest)]
}

fn fhir_access(method: &str, url: &str) -> Access {
    let path = url.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let Some(resource_type) = segments
        .first()
        .filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase()))
    else {
        return Access::Other;
    };
    if segments.contains(&"$rotate-secret") {
        return Access::Admin;
    }
    if segments.iter().any(|s| s.starts_with('$')) {
        return Access::Other;
    }
    let letter = match (segments.len(), method) {
        (1, "GET") => 's',
        (2, "POST") if segments[1] == "_search" => 's',
        (1, "POST") => 'c',
        (1 | 2, "PUT" | "PATCH") => 'u',
        (1 | 2, "DELETE") => 'd',
        (2, "GET") => 'r',
        (_, "GET") if segments.get(2) == Some(&"_history") => 'r',
        _ => return Access::Other,
    };
    Access::Fhir(resource_type.to_string(), letter)
}

/// One request of a scope-narrowed actor and its status.
struct Outcome {
    actor: usize,
    what: String,
    accesses: Vec<Access>,
    status: u16,
}

/// Two Patients of project 0 alike in all but the birthDate that the
/// hiding member's policy hides, each the subject of an Observation.
struct Twins {
    /// The hiding member's index among the actors.
    actor: usize,
    patients: [String; 2],
    observations: [String; 2],
    /// Their birthDates, which no response to an actor that may not see
    /// them may carry.
    values: [&'static str; 2],
}

/// Whether `body` carries one of `values`; when the request itself named
/// one (`echoed`), an echo of it in an OperationOutcome's text or a
/// Bundle's links is not counted.
fn reveals(body: &Value, values: &[&str], echoed: bool) -> bool {
    match body {
        Value::String(s) => values.iter().any(|v| s.contains(v)),
        Value::Array(items) => items.iter().any(|i| reveals(i, values, echoed)),
        Value::Object(fields) => fields.iter().any(|(key, value)| {
            let echo = echoed
                && (key == "link"
                    || (key == "diagnostics" || key == "details" || key == "expression"));
            !echo && reveals(value, values, echoed)
        }),
        _ => false,
    }
}

/// A response with `target` and `twin` named by their roles and what
/// differs between any two answers (new ids, timestamps, links) left out.
fn twin_shape(status: u16, body: &Value, target: &str, twin: &str) -> Value {
    let text = body
        .to_string()
        .replace(target, "TARGET")
        .replace(twin, "TWIN");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let id = |resource: &Value| match resource["id"].as_str() {
        Some(id @ ("TARGET" | "TWIN")) => json!(id),
        Some(_) => json!("another"),
        None => Value::Null,
    };
    let shape = match body["resourceType"].as_str() {
        Some("Bundle") => json!({
            "type": body["type"],
            "total": body["total"],
            "entry": body["entry"].as_array().into_iter().flatten().map(|e| json!([
                e["resource"]["resourceType"], id(&e["resource"]), e["search"]["mode"],
                e["response"]["status"], e["response"]["outcome"]["issue"]
            ])).collect::<Vec<_>>(),
        }),
        Some("OperationOutcome") => body["issue"].clone(),
        Some(resource_type) => json!([resource_type, id(&body)]),
        None => body,
    };
    json!([status, shape])
}

/// Every stored version and secret: what a refused write must leave alone.
struct Fingerprint {
    /// (type, id) → (project, versionId, deleted).
    rows: BTreeMap<(String, String), (String, String, bool)>,
    /// (type, id, kind) → hash.
    secrets: BTreeMap<(String, String, String), String>,
}

impl Fingerprint {
    async fn take(db: &tokio_postgres::Client) -> Fingerprint {
        let rows = db
            .query(
                "SELECT resource_type, id::text, project_id::text, version_id::text, deleted FROM resource",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
            .collect();
        let secrets = db
            .query(
                "SELECT resource_type, resource_id::text, kind, hash FROM resource_secret",
                &[],
            )
            .await
            .unwrap()
            .into_iter()
            .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
            .collect();
        Fingerprint { rows, secrets }
    }

    /// The (type, id) of the rows that differ.
    fn changed(&self, after: &Fingerprint) -> Vec<(String, String)> {
        let keys: BTreeSet<_> = self.rows.keys().chain(after.rows.keys()).collect();
        keys.into_iter()
            .filter(|k| self.rows.get(*k) != after.rows.get(*k))
            .cloned()
            .collect()
    }
}

/// What the database holds of the administrative types, and the password hashes.
#[derive(Clone)]
struct Snapshot {
    /// (project, type, id) → (versionId, deleted).
    rows: BTreeMap<(String, String, String), (String, bool)>,
    /// (type, id) → content.
    contents: BTreeMap<(String, String), Value>,
    /// User id → password hash.
    hashes: BTreeMap<String, Option<String>>,
}

const ADMIN_TYPES: [&str; 6] = [
    "Project",
    "ProjectMembership",
    "AccessPolicy",
    "ClientApplication",
    "User",
    "Bot",
];

impl Snapshot {
    async fn take(db: &tokio_postgres::Client) -> Snapshot {
        let types: Vec<&str> = ADMIN_TYPES.to_vec();
        let mut rows = BTreeMap::new();
        let mut contents = BTreeMap::new();
        for row in db
            .query(
                "SELECT project_id::text, resource_type, id::text, version_id::text, deleted, content
                 FROM resource WHERE resource_type = ANY($1)",
                &[&types],
            )
            .await
            .unwrap()
        {
            let (project, resource_type, id): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            rows.insert(
                (project, resource_type.clone(), id.clone()),
                (row.get(3), row.get(4)),
            );
            let content: String = row.get(5);
            let deleted: bool = row.get(4);
            if !deleted {
                if let Ok(value) = serde_json::from_str(&content) {
                    contents.insert((resource_type, id), value);
                }
            }
        }
        let mut hashes = BTreeMap::new();
        for (_, resource_type, id) in rows.keys() {
            if resource_type == "User" {
                hashes.insert(id.clone(), None);
            }
        }
        for row in db
            .query(
                "SELECT resource_id::text, hash FROM resource_secret
                 WHERE resource_type = 'User' AND kind = 'password'",
                &[],
            )
            .await
            .unwrap()
        {
            hashes.insert(row.get(0), Some(row.get(1)));
        }
        Snapshot {
            rows,
            contents,
            hashes,
        }
    }

    fn content(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.contents
            .get(&(resource_type.to_string(), id.to_string()))
    }

    fn ids_of(&self, resource_type: &str, project: &str) -> Vec<String> {
        self.rows
            .iter()
            .filter(|((p, t, _), (_, deleted))| p == project && t == resource_type && !deleted)
            .map(|((_, _, id), _)| id.clone())
            .collect()
    }
}

struct Walk {
    app: TestApp,
    db: tokio_postgres::Client,
    root: Session,
    seed: u64,
    step: usize,
    /// The bootstrap (super admin) project.
    bootstrap: String,
    super_user: String,
    projects: Vec<String>,
    actors: Vec<Actor>,
    /// What the current step did, for the failure message.
    log: Vec<String>,
    requests: usize,
    /// The current step's violations: (kind, detail).
    flags: Vec<(String, String)>,
    /// With FHIRGATE_WALK_KEEP_GOING: the first report of each kind.
    found: BTreeMap<String, String>,
    /// Bearer token → actor, to tell whose request `send` sends.
    by_token: BTreeMap<String, usize>,
    /// The requests of scope-narrowed actors since the last check.
    outcomes: Vec<Outcome>,
    /// The hidden birthDates and the member they are hidden from.
    twins: Option<Twins>,
    /// The hiding member's AccessPolicy and membership, which the walk's
    /// admins leave alone (an admin may lawfully show it the field).
    protected: BTreeSet<String>,
    /// Per project: ids of the Patients and Observations it holds.
    samples: Vec<BTreeMap<&'static str, Vec<String>>>,
}

/// The birthDates of project 0's twin Patients, hidden from one member.
const HIDDEN: [&str; 2] = ["1917-05-29", "1983-11-04"];

/// How a write is sent.
#[derive(Clone, Copy, Debug)]
enum Via {
    Patch,
    Put,
    BundlePatch,
    BundlePut,
    Conditional,
}

impl Walk {
    async fn build(seed: u64, rng: &mut Rng) -> Walk {
        let app = TestApp::spawn().await;
        let root = app.super_admin().await;
        let db = app.db().await;
        let super_user = super_admin_user(&root).await;
        let bootstrap: String = db
            .query_one(
                "SELECT project_id::text FROM resource WHERE resource_type = 'User' AND id::text = $1",
                &[&super_user],
            )
            .await
            .unwrap()
            .get(0);
        let mut walk = Walk {
            app,
            db,
            root,
            seed,
            step: 0,
            bootstrap,
            super_user,
            projects: Vec::new(),
            actors: Vec::new(),
            log: Vec::new(),
            requests: 0,
            flags: Vec::new(),
            found: BTreeMap::new(),
            by_token: BTreeMap::new(),
            outcomes: Vec::new(),
            twins: None,
            protected: BTreeSet::new(),
            samples: Vec::new(),
        };
        for p in 0..2 {
            let owner = sign_up_with_project(
                &walk.app,
                &walk.root,
                &format!("owner{p}@walk.test"),
                &format!("walk-{p}"),
            )
            .await;
            let pid = owner.project_id.clone();
            walk.verify_email(&owner.user_id).await;

            let policy = walk
                .root
                .create({
                    let mut policy = random_policy(rng, &format!("member-{p}"));
                    policy["meta"] = json!({"project": pid});
                    policy
                })
                .await;
            let member = walk
                .app
                .user(&pid, &format!("member{p}@walk.test"), "Practitioner", false)
                .await;
            walk.verify_email(&member.id).await;
            walk.root_patch(
                &format!("ProjectMembership/{}", member.membership_id),
                json!([{"op": "add", "path": "/accessPolicy",
                    "value": {"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())}}]),
            )
            .await;
            let member_token = password_token(
                &walk.app,
                &member.email,
                &member.password,
                None,
                None,
                "openid",
            )
            .await;

            let compartment = walk
                .root
                .create(
                    json!({"resourceType": "AccessPolicy", "name": format!("patient-{p}"),
                    "meta": {"project": pid},
                    "resource": [{"resourceType": "*", "criteria": "*?_compartment=%patient"}]}),
                )
                .await;
            let patient = walk
                .app
                .user(&pid, &format!("patient{p}@walk.test"), "Patient", true)
                .await;
            walk.verify_email(&patient.id).await;
            walk.root_patch(
                &format!("ProjectMembership/{}", patient.membership_id),
                json!([{"op": "add", "path": "/access", "value": [{"policy":
                    {"reference": format!("AccessPolicy/{}", compartment["id"].as_str().unwrap())}}]}]),
            )
            .await;
            let patient_token = password_token(
                &walk.app,
                &patient.email,
                &patient.password,
                Some(&pid),
                None,
                "openid",
            )
            .await;

            walk.actors.push(Actor {
                label: format!("admin of project {p}"),
                project: p,
                session: owner.session.clone(),
                membership: owner.membership_id.clone(),
                user: format!("User/{}", owner.user_id),
                email: owner.email.clone(),
                scope: None,
                sees_hidden: p == 0,
            });
            walk.actors.push(Actor {
                label: format!("member of project {p}"),
                project: p,
                session: with_token(&walk.root, &member_token),
                membership: member.membership_id.clone(),
                user: format!("User/{}", member.id),
                email: member.email.clone(),
                scope: None,
                sees_hidden: p == 0,
            });
            walk.actors.push(Actor {
                label: format!("patient of project {p}"),
                project: p,
                session: with_token(&walk.root, &patient_token),
                membership: patient.membership_id.clone(),
                user: format!("User/{}", patient.id),
                email: patient.email.clone(),
                scope: None,
                sees_hidden: false,
            });
            walk.projects.push(pid);
        }
        walk.add_samples().await;
        walk.add_hiding_member().await;
        walk.add_scoped_actors().await;
        for (a, actor) in walk.actors.iter().enumerate() {
            walk.by_token.insert(actor.session.token.clone(), a);
        }
        walk
    }

    /// A Patient and an Observation of it in each project; in project 0
    /// two Patients alike but for their birthDates.
    async fn add_samples(&mut self) {
        for (p, birth_dates) in [(0, vec![HIDDEN[0], HIDDEN[1]]), (1, vec!["1960-02-03"])] {
            let project = self.projects[p].clone();
            let mut samples = BTreeMap::new();
            for birth_date in birth_dates {
                let patient = self
                    .root
                    .create(
                        json!({"resourceType": "Patient", "meta": {"project": project},
                        "name": [{"family": "Twin", "given": ["Same"]}], "gender": "female",
                        "birthDate": birth_date}),
                    )
                    .await;
                let patient = patient["id"].as_str().unwrap().to_string();
                let observation = self
                    .root
                    .create(
                        json!({"resourceType": "Observation", "meta": {"project": project},
                        "status": "final", "code": {"text": "twin"},
                        "subject": {"reference": format!("Patient/{patient}")}}),
                    )
                    .await;
                let entry: &mut Vec<String> = samples.entry("Patient").or_default();
                entry.push(patient);
                samples
                    .entry("Observation")
                    .or_default()
                    .push(observation["id"].as_str().unwrap().to_string());
            }
            self.samples.push(samples);
        }
    }

    /// A member of project 0 whose policy hides Patient.birthDate.
    async fn add_hiding_member(&mut self) {
        let project = self.projects[0].clone();
        let policy = self
            .root
            .create(
                json!({"resourceType": "AccessPolicy", "name": "hides birthDate",
                "meta": {"project": project},
                "resource": [{"resourceType": "Patient", "hiddenFields": ["birthDate"]},
                    {"resourceType": "Observation"}]}),
            )
            .await;
        let policy = policy["id"].as_str().unwrap().to_string();
        let member = self
            .app
            .user(&project, "hider0@walk.test", "Practitioner", false)
            .await;
        self.verify_email(&member.id).await;
        self.root_patch(
            &format!("ProjectMembership/{}", member.membership_id),
            json!([{"op": "add", "path": "/accessPolicy",
                "value": {"reference": format!("AccessPolicy/{policy}")}}]),
        )
        .await;
        let token = password_token(
            &self.app,
            &member.email,
            &member.password,
            None,
            None,
            "openid",
        )
        .await;
        // The value is served as stored to whoever may see it, and the
        // policy is in effect: the member reads the Patient without it.
        let session = with_token(&self.root, &token);
        for (i, value) in HIDDEN.iter().enumerate() {
            let reference = format!("Patient/{}", self.samples[0]["Patient"][i]);
            assert_eq!(read_as(&self.root, &reference).await["birthDate"], *value);
            let read = read_as(&session, &reference).await;
            assert_eq!(read["name"][0]["family"], "Twin", "{read}");
            assert!(
                read.get("birthDate").is_none() && !read.to_string().contains(value),
                "the hiding policy is not in effect: {read}"
            );
        }
        self.protected.insert(policy);
        self.protected.insert(member.membership_id.clone());
        self.twins = Some(Twins {
            actor: self.actors.len(),
            patients: [0, 1].map(|i| self.samples[0]["Patient"][i].clone()),
            observations: [0, 1].map(|i| self.samples[0]["Observation"][i].clone()),
            values: HIDDEN,
        });
        self.actors.push(Actor {
            label: "member of project 0 who may not see birthDate".into(),
            project: 0,
            session,
            membership: member.membership_id,
            user: format!("User/{}", member.id),
            email: member.email,
            scope: None,
            sees_hidden: false,
        });
    }

    /// Admins, a member and an admin client whose tokens SMART scopes narrow.
    async fn add_scoped_actors(&mut self) {
        // (base actor, scope): people signed in with a password.
        for (base, scope) in [
            (0, "openid patient/Observation.rs"),
            (3, "openid user/Patient.rs"),
            (0, "openid user/*.rs"),
            (4, "openid user/*.rs"),
        ] {
            let of = &self.actors[base];
            let token =
                password_token(&self.app, &of.email, TEST_PASSWORD, None, None, scope).await;
            let scoped = Scoped::new(scope, of.session.clone());
            let actor = Actor {
                label: format!("{} with scope '{scope}'", of.label),
                project: of.project,
                session: with_token(&self.root, &token),
                membership: of.membership.clone(),
                user: of.user.clone(),
                email: of.email.clone(),
                sees_hidden: of.sees_hidden && scoped.grants("Patient", 'r'),
                scope: Some(scoped),
            };
            self.actors.push(actor);
        }
        // An admin client of project 1 with client_credentials and a scope
        // that grants writes of one administrative type.
        let scope = "system/AccessPolicy.cruds system/Observation.rs";
        let credentials = make_client(
            &self.root,
            &self.projects[1],
            "walk-scoped-client",
            json!({"admin": true}),
        )
        .await;
        let (status, token) = self
            .app
            .token(&[
                ("grant_type", "client_credentials"),
                ("client_id", &credentials.client_id),
                ("client_secret", &credentials.client_secret),
                ("scope", scope),
            ])
            .await;
        assert_eq!(status, 200, "client_credentials with a scope: {token}");
        let client_ref = format!("ClientApplication/{}", credentials.client_id);
        let membership: String = self
            .db
            .query_one(
                "SELECT id::text FROM resource WHERE resource_type = 'ProjectMembership' \
                 AND NOT deleted AND content::jsonb #>> '{user,reference}' = $1",
                &[&client_ref],
            )
            .await
            .unwrap()
            .get(0);
        let base = self.app.session(&credentials).await;
        self.actors.push(Actor {
            label: format!("admin client of project 1 with scope '{scope}'"),
            project: 1,
            session: with_token(&self.root, token["access_token"].as_str().unwrap()),
            membership,
            user: client_ref,
            email: "walk-client@walk.test".into(),
            scope: Some(Scoped::new(scope, base)),
            sees_hidden: false,
        });
    }

    fn context(&self) -> String {
        format!(
            "escalation walk, seed {} (replay with FHIRGATE_WALK_SEED={}), step {}:\n  {}",
            self.seed,
            self.seed,
            self.step,
            self.log.join("\n  ")
        )
    }

    async fn verify_email(&self, user_id: &str) {
        self.root_patch(
            &format!("User/{user_id}"),
            json!([{"op": "add", "path": "/emailVerified", "value": true}]),
        )
        .await;
    }

    async fn root_patch(&self, reference: &str, operations: Value) {
        let (status, body) = status_json(self.root.patch(reference, &operations).await).await;
        assert_eq!(status, 200, "the super admin patches {reference}: {body}");
    }

    /// Sends a request and logs it; a 5xx is a failure in itself.
    ///
    /// Every request of a scope-narrowed actor is kept, with what it asked
    /// for, for [`Walk::check_scopes`]; every response to an actor that may
    /// not see the hidden birthDates is scanned for them.
    async fn send(&mut self, what: String, request: reqwest::RequestBuilder) -> (u16, Value) {
        let request = request.build().expect("a request");
        let sender = request
            .headers()
            .get(reqwest::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| self.by_token.get(token))
            .copied();
        let sent_body = request.body().and_then(|b| b.as_bytes()).unwrap_or(&[]);
        let accesses = classify(
            request.method().as_str(),
            request.url().path(),
            Some(sent_body),
        );
        let sent = format!("{} {}", request.url(), String::from_utf8_lossy(sent_body));
        let response = self.root.http.execute(request).await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        self.requests += 1;
        let mut shown = body.to_string();
        shown.truncate(300);
        self.log.push(format!("{what} -> {status} {shown}"));
        if status >= 500 {
            self.flag("a server error", format!("{what} -> {status}"));
        }
        if let Some(actor) = sender {
            if self.actors[actor].scope.is_some() {
                self.outcomes.push(Outcome {
                    actor,
                    what: what.clone(),
                    accesses,
                    status,
                });
            }
            if let Some(twins) = self
                .twins
                .as_ref()
                .filter(|_| !self.actors[actor].sees_hidden)
            {
                let echoed = twins.values.iter().any(|v| sent.contains(v));
                if reveals(&body, &twins.values, echoed) {
                    self.flag(
                        "a hidden value in a response",
                        format!(
                            "{what} -> {status}: the response shows a hidden birthDate ({:?}) to {}: {body}",
                            twins.values, self.actors[actor].label
                        ),
                    );
                }
            }
        }
        (status, body)
    }

    /// Sets `field` of `resource_type/id` to `value` (or removes it) the `via` way.
    async fn write_field(
        &mut self,
        actor: usize,
        snapshot: &Snapshot,
        (resource_type, id): (&str, &str),
        (field, value): (&str, Option<Value>),
        via: Via,
    ) -> (u16, Value) {
        let session = self.actors[actor].session.clone();
        let url = format!("{resource_type}/{id}");
        let operations = match &value {
            Some(value) => json!([{"op": "add", "path": format!("/{field}"), "value": value}]),
            None => json!([{"op": "remove", "path": format!("/{field}")}]),
        };
        // The attacker is assumed to know the stored resource.
        let mut body = snapshot
            .content(resource_type, id)
            .cloned()
            .unwrap_or_else(|| json!({"resourceType": resource_type, "id": id}));
        match &value {
            Some(value) => body[field] = value.clone(),
            None => {
                body.as_object_mut().map(|o| o.remove(field));
            }
        }
        let label = &self.actors[actor].label;
        let what = format!("{label}: {via:?} {url} {field} = {value:?}");
        let request = match via {
            Via::Patch => session
                .fhir(Method::PATCH, &url)
                .header("Content-Type", "application/json-patch+json")
                .body(operations.to_string()),
            Via::Put => session
                .fhir(Method::PUT, &url)
                .header("Content-Type", "application/fhir+json")
                .json(&body),
            Via::BundlePatch => session
                .fhir(Method::POST, "")
                .header("Content-Type", "application/fhir+json")
                .json(&transaction(vec![patch_entry(&url, &operations)])),
            Via::BundlePut => session
                .fhir(Method::POST, "")
                .header("Content-Type", "application/fhir+json")
                .json(&transaction(vec![put_entry(&url, &body)])),
            Via::Conditional => session
                .fhir(Method::PUT, &format!("{resource_type}?_id={id}"))
                .header("Content-Type", "application/fhir+json")
                .json(&body),
        };
        self.send(what, request).await
    }

    fn random_via(rng: &mut Rng, conditional: bool) -> Via {
        let choices: &[Via] = if conditional {
            &[
                Via::Patch,
                Via::Put,
                Via::BundlePatch,
                Via::BundlePut,
                Via::Conditional,
            ]
        } else {
            &[Via::Patch, Via::Put, Via::BundlePatch, Via::BundlePut]
        };
        *rng.pick(choices)
    }

    /// Own project most of the time, else the other one.
    fn target_project(&self, rng: &mut Rng, actor: usize) -> usize {
        let own = self.actors[actor].project;
        if rng.chance(70) {
            own
        } else {
            1 - own
        }
    }

    /// `ids` but the hiding member's policy and membership.
    fn unprotected(&self, ids: Vec<String>) -> Vec<String> {
        ids.into_iter()
            .filter(|id| !self.protected.contains(id))
            .collect()
    }

    fn random_policy_ref(&self, rng: &mut Rng, snapshot: &Snapshot, project: usize) -> Value {
        let ids = snapshot.ids_of("AccessPolicy", &self.projects[project]);
        match ids.is_empty() {
            true => json!({"reference": format!("AccessPolicy/{}", uuid::Uuid::new_v4())}),
            false => json!({"reference": format!("AccessPolicy/{}", rng.pick(&ids))}),
        }
    }

    async fn step(&mut self, rng: &mut Rng, actor: usize, snapshot: &Snapshot) {
        let label = self.actors[actor].label.clone();
        let own = self.actors[actor].project;
        let n = self.step;
        match rng.below(9) {
            // A new AccessPolicy, perhaps in a transaction.
            0 => {
                let policy = random_policy(rng, &format!("walk-{n}"));
                let session = self.actors[actor].session.clone();
                let request = if rng.chance(50) {
                    session.fhir(Method::POST, "AccessPolicy").json(&policy)
                } else {
                    session.fhir(Method::POST, "").json(&transaction(vec![
                        json!({"resource": policy, "request": {"method": "POST", "url": "AccessPolicy"}}),
                    ]))
                };
                self.send(format!("{label}: create AccessPolicy {policy}"), request)
                    .await;
            }
            // Broaden an existing AccessPolicy.
            1 => {
                let p = self.target_project(rng, actor);
                let ids = self.unprotected(snapshot.ids_of("AccessPolicy", &self.projects[p]));
                if ids.is_empty() {
                    return;
                }
                let id = rng.pick(&ids).clone();
                let resource = random_policy(rng, "broadened")["resource"].clone();
                let via = Self::random_via(rng, false);
                self.write_field(
                    actor,
                    snapshot,
                    ("AccessPolicy", &id),
                    ("resource", Some(resource)),
                    via,
                )
                .await;
            }
            // A membership's powers: its own or another's.
            2 | 3 => {
                let target = if rng.chance(50) {
                    self.actors[actor].membership.clone()
                } else {
                    let p = self.target_project(rng, actor);
                    let ids =
                        self.unprotected(snapshot.ids_of("ProjectMembership", &self.projects[p]));
                    rng.pick(&ids).clone()
                };
                let other_user = self.actors[rng.below(self.actors.len())].user.clone();
                let field = *rng.pick(&["admin", "accessPolicy", "access", "user", "project"]);
                let value = match field {
                    "admin" => Some(json!(rng.chance(70))),
                    "accessPolicy" => {
                        let p = self.target_project(rng, actor);
                        Some(self.random_policy_ref(rng, snapshot, p))
                    }
                    "access" => {
                        let p = self.target_project(rng, actor);
                        if rng.chance(20) {
                            None
                        } else {
                            Some(json!([{"policy": self.random_policy_ref(rng, snapshot, p)}]))
                        }
                    }
                    "user" => Some(json!({"reference": if rng.chance(50) {
                        format!("User/{}", self.super_user)
                    } else {
                        other_user
                    }})),
                    _ => Some(json!({"reference": format!("Project/{}", self.projects[1 - own])})),
                };
                let via = Self::random_via(rng, false);
                if rng.chance(30) {
                    // The admin route, with the whole membership.
                    let Some(mut body) = snapshot.content("ProjectMembership", &target).cloned()
                    else {
                        return;
                    };
                    match value {
                        Some(value) => body[field] = value,
                        None => {
                            body.as_object_mut().map(|o| o.remove(field));
                        }
                    }
                    let project = self.projects[own].clone();
                    let request = self.actors[actor]
                        .session
                        .request(
                            Method::POST,
                            &format!("admin/projects/{project}/members/{target}"),
                        )
                        .json(&body);
                    self.send(
                        format!("{label}: admin route members/{target} {field}"),
                        request,
                    )
                    .await;
                } else {
                    self.write_field(
                        actor,
                        snapshot,
                        ("ProjectMembership", &target),
                        (field, value),
                        via,
                    )
                    .await;
                }
            }
            // The Project: superAdmin, features, link, owner, name.
            4 => {
                let p = self.target_project(rng, actor);
                let id = self.projects[p].clone();
                let field = *rng.pick(&["superAdmin", "features", "link", "owner", "name"]);
                let value = match field {
                    "superAdmin" => json!(true),
                    "features" => json!(["bots", "cron"]),
                    "link" => {
                        json!([{"project": {"reference": format!("Project/{}", self.bootstrap)}}])
                    }
                    "owner" => json!({"reference": format!("User/{}", self.super_user)}),
                    _ => json!(format!("renamed-{n}")),
                };
                let via = Self::random_via(rng, true);
                self.write_field(actor, snapshot, ("Project", &id), (field, Some(value)), via)
                    .await;
                if rng.chance(20) {
                    let request = self.actors[actor].session.fhir(Method::POST, "Project").json(
                        &json!({"resourceType": "Project", "name": format!("made-{n}"), "superAdmin": true}),
                    );
                    self.send(format!("{label}: POST Project superAdmin"), request)
                        .await;
                }
            }
            // Users: a shadow of someone's email, or a change of one.
            5 => {
                if rng.chance(50) {
                    let email = if rng.chance(30) {
                        SUPER_EMAIL.to_string()
                    } else {
                        self.actors[rng.below(self.actors.len())].email.clone()
                    };
                    let mut user = json!({"resourceType": "User", "email": email,
                        "firstName": "Shadow", "lastName": format!("N{n}")});
                    match rng.below(3) {
                        0 => {}
                        1 => {
                            user["project"] =
                                json!({"reference": format!("Project/{}", self.projects[own])})
                        }
                        _ => {
                            user["project"] =
                                json!({"reference": format!("Project/{}", self.projects[1 - own])})
                        }
                    }
                    let session = self.actors[actor].session.clone();
                    let request = if rng.chance(50) {
                        session.fhir(Method::POST, "User").json(&user)
                    } else {
                        session.fhir(Method::POST, "").json(&transaction(vec![
                            json!({"resource": user, "request": {"method": "POST", "url": "User"}}),
                        ]))
                    };
                    self.send(format!("{label}: create User {user}"), request)
                        .await;
                } else {
                    let target = if rng.chance(20) {
                        self.super_user.clone()
                    } else {
                        let users: Vec<&str> = self
                            .actors
                            .iter()
                            .filter_map(|a| a.user.strip_prefix("User/"))
                            .collect();
                        rng.pick(&users).to_string()
                    };
                    let (field, value) = if rng.chance(60) {
                        ("email", json!(format!("stolen-{n}@attacker.test")))
                    } else {
                        (
                            "project",
                            json!({"reference": format!("Project/{}", self.projects[rng.below(2)])}),
                        )
                    };
                    let via = Self::random_via(rng, false);
                    self.write_field(
                        actor,
                        snapshot,
                        ("User", &target),
                        (field, Some(value)),
                        via,
                    )
                    .await;
                }
            }
            // ClientApplications: a new one, or another's redirect.
            6 => {
                if rng.chance(40) {
                    let client = json!({"resourceType": "ClientApplication", "name": format!("walk-client-{n}"),
                        "redirectUris": ["https://attacker.test/cb"]});
                    let request = self.actors[actor]
                        .session
                        .fhir(Method::POST, "ClientApplication")
                        .json(&client);
                    self.send(format!("{label}: create ClientApplication"), request)
                        .await;
                } else {
                    let p = self.target_project(rng, actor);
                    let ids = snapshot.ids_of("ClientApplication", &self.projects[p]);
                    if ids.is_empty() {
                        return;
                    }
                    let id = rng.pick(&ids).clone();
                    let via = Self::random_via(rng, false);
                    self.write_field(
                        actor,
                        snapshot,
                        ("ClientApplication", &id),
                        ("redirectUris", Some(json!(["https://attacker.test/cb"]))),
                        via,
                    )
                    .await;
                }
            }
            // Invite the other project's people (or the super admin).
            7 => {
                let email = if rng.chance(20) {
                    SUPER_EMAIL.to_string()
                } else {
                    let others: Vec<&Actor> =
                        self.actors.iter().filter(|a| a.project != own).collect();
                    others[rng.below(others.len())].email.clone()
                };
                let admin = rng.chance(50);
                let project = self.projects[own].clone();
                let request = self.actors[actor]
                    .session
                    .request(Method::POST, &format!("admin/projects/{project}/invite"))
                    .json(&json!({"resourceType": "Practitioner", "firstName": "In", "lastName": "Vited",
                        "email": email, "admin": admin, "sendEmail": false}));
                self.send(
                    format!("{label}: invite {email} (admin {admin}) into project {own}"),
                    request,
                )
                .await;
            }
            // A personal token for some membership.
            _ => {
                let p = self.target_project(rng, actor);
                let ids = snapshot.ids_of("ProjectMembership", &self.projects[p]);
                let target = rng.pick(&ids).clone();
                let project = self.projects[p].clone();
                let request = self.actors[actor]
                    .session
                    .request(
                        Method::POST,
                        &format!("admin/projects/{project}/members/{target}/tokens"),
                    )
                    .json(&json!({"lifetime": 600}));
                let (status, token) = self
                    .send(
                        format!("{label}: mint a token for membership {target} of project {p}"),
                        request,
                    )
                    .await;
                if status == 201 {
                    if !self.may_mint(actor, snapshot, p, &target) {
                        self.flag(
                            "a token the caller may not mint",
                            format!(
                                "{label} minted a token for membership {target} of project {p}"
                            ),
                        );
                    }
                    let script = with_token(&self.root, token["access_token"].as_str().unwrap());
                    let request = script
                        .request(Method::POST, "auth/changeemail")
                        .json(&json!({"email": format!("taken-{n}@attacker.test"), "password": TEST_PASSWORD}));
                    let (status, _) = self
                        .send("the minted token: /auth/changeemail".into(), request)
                        .await;
                    if status != 403 {
                        self.flag(
                            "a personal token acts on the account",
                            format!("a minted token: /auth/changeemail -> {status}"),
                        );
                    }
                }
            }
        }
    }

    /// What an actor does besides its step: a scope-narrowed one tries an
    /// account route, an administration route and a read; the member who
    /// may not see birthDate tries to tell its twins' birthDates apart.
    async fn probe(&mut self, rng: &mut Rng, actor: usize, snapshot: &Snapshot, hidden: bool) {
        if self.actors[actor].scope.is_some() {
            self.scoped_probe(rng, actor, snapshot).await;
        }
        if hidden {
            for _ in 0..2 {
                self.hidden_probe(rng).await;
            }
        }
    }

    async fn scoped_probe(&mut self, rng: &mut Rng, actor: usize, snapshot: &Snapshot) {
        let session = self.actors[actor].session.clone();
        let label = self.actors[actor].label.clone();
        let own = self.actors[actor].project;
        let project = self.projects[own].clone();
        let n = self.step;
        let new_password = "amber lighthouse beyond the hills";
        let (path, body) = match rng.below(4) {
            0 => (
                "auth/changeemail",
                json!({"email": format!("scoped-{n}@attacker.test"), "password": TEST_PASSWORD}),
            ),
            1 => (
                "auth/changepassword",
                json!({"oldPassword": TEST_PASSWORD, "newPassword": new_password}),
            ),
            2 => ("auth/tokens", json!({"lifetime": 600})),
            _ => ("auth/revoke", json!({"loginId": login_of(&session.token)})),
        };
        let request = session.request(Method::POST, path).json(&body);
        self.send(format!("{label}: POST /{path}"), request).await;

        let memberships = snapshot.ids_of("ProjectMembership", &project);
        let member = rng.pick(&memberships).clone();
        let request = match rng.below(5) {
            0 => session
                .request(Method::POST, &format!("admin/projects/{project}/invite"))
                .json(
                    &json!({"resourceType": "Practitioner", "firstName": "Sco", "lastName": "Ped",
                    "email": format!("scoped-invite-{n}@attacker.test"), "admin": true,
                    "password": new_password, "sendEmail": false}),
                ),
            1 => session
                .request(Method::POST, &format!("admin/projects/{project}/client"))
                .json(&json!({"name": format!("scoped-client-{n}"),
                    "redirectUri": "https://attacker.test/cb"})),
            2 => {
                let mut body = snapshot
                    .content("ProjectMembership", &member)
                    .cloned()
                    .unwrap_or(Value::Null);
                body["admin"] = json!(true);
                session
                    .request(
                        Method::POST,
                        &format!("admin/projects/{project}/members/{member}"),
                    )
                    .json(&body)
            }
            3 => session
                .request(
                    Method::POST,
                    &format!("admin/projects/{project}/members/{member}/tokens"),
                )
                .json(&json!({"lifetime": 600})),
            _ => {
                let clients = snapshot.ids_of("ClientApplication", &project);
                let client = match clients.is_empty() {
                    true => uuid::Uuid::new_v4().to_string(),
                    false => rng.pick(&clients).clone(),
                };
                session.fhir(
                    Method::POST,
                    &format!("ClientApplication/{client}/$rotate-secret"),
                )
            }
        };
        self.send(format!("{label}: an administration route"), request)
            .await;

        // A read or search, inside the scope or not.
        let resource_type = *rng.pick(&[
            "Patient",
            "Observation",
            "Practitioner",
            "Project",
            "ProjectMembership",
            "AccessPolicy",
            "ClientApplication",
            "User",
        ]);
        let ids = match resource_type {
            "Patient" | "Observation" => self.samples[own][resource_type].clone(),
            "Project" => vec![project.clone()],
            "Practitioner" => Vec::new(),
            t => snapshot.ids_of(t, &project),
        };
        let (path, letter) = if ids.is_empty() || rng.chance(50) {
            (format!("{resource_type}?_count=20"), 's')
        } else {
            (format!("{resource_type}/{}", rng.pick(&ids)), 'r')
        };
        let (status, body) = self
            .send(
                format!("{label}: GET {path}"),
                session.fhir(Method::GET, &path),
            )
            .await;
        let scoped = self.actors[actor].scope.as_ref().unwrap();
        if scoped.grants(resource_type, letter) {
            // Outside the scope it must be a 403: see check_scopes.
            let base = scoped.base.fhir(Method::GET, &path);
            let (base_status, base_body) = self
                .send(format!("the same membership, unscoped: GET {path}"), base)
                .await;
            if status != base_status || (status == 200 && entry_ids(&body) != entry_ids(&base_body))
            {
                self.flag(
                    "a read inside the scope answered otherwise",
                    format!(
                        "{label}: GET {path} -> {status} {:?}, without the scope {base_status} {:?}",
                        entry_ids(&body),
                        entry_ids(&base_body)
                    ),
                );
            }
        }
    }

    /// The same request about each twin, the other as the twin: the
    /// answers must not differ (a 403 for both is the usual answer).
    async fn hidden_probe(&mut self, rng: &mut Rng) {
        let twins = self.twins.as_ref().unwrap();
        let (actor, patients, observations) = (
            twins.actor,
            twins.patients.clone(),
            twins.observations.clone(),
        );
        let session = self.actors[actor].session.clone();
        let label = self.actors[actor].label.clone();
        let value = format!(
            "{}{}",
            rng.pick(&["", "", "eq", "ne", "lt", "ge", "sa", "eb", "ap"]),
            rng.pick(&twins.values)
        );
        let sort = *rng.pick(&["birthdate", "-birthdate"]);
        let form = rng.below(17);
        let read = rng.below(5);
        let created = json!({"resourceType": "Patient", "name": [{"family": "Twin", "given": ["Same"]}],
            "gender": "female", "birthDate": "2002-02-02"});
        let mut shapes = Vec::new();
        let mut asked = Vec::new();
        for (a, b) in [(0, 1), (1, 0)] {
            let (t, w, o) = (&patients[a], &patients[b], &observations[a]);
            let criteria = format!("_id={t}&birthdate={value}");
            let get = |path: String| (session.fhir(Method::GET, &path), path);
            let (request, what) = match form {
                0 => get(format!("Patient?{criteria}")),
                1 => get(format!("Patient?_id={t},{w}&_sort={sort}")),
                2 => get(format!("Patient?_id={t}&birthdate:missing=false")),
                3 => get(format!(
                    "Observation?_id={o}&subject:Patient.birthdate={value}"
                )),
                4 => get(format!(
                    "Patient?_id={t}&_has:Observation:subject:subject:Patient.birthdate={value}"
                )),
                5 => get(format!(
                    "Patient?_has:Observation:subject:_id={o}&birthdate={value}"
                )),
                6 => get(format!("Observation?_id={o}&_include=Observation:subject")),
                7 => get(format!(
                    "Patient?{criteria}&_revinclude=Observation:subject"
                )),
                8 => get(format!("?_type=Patient&{criteria}")),
                9 => get([
                    format!("Patient/{t}"),
                    format!("Patient/{t}/_history"),
                    format!("Patient?_id={t}&_elements=birthDate"),
                    format!("Patient?_id={t}&_summary=true"),
                    format!("Patient?_id={t}&_sort={sort}&_count=1"),
                ][read]
                    .clone()),
                10 => (
                    session
                        .fhir(Method::POST, "Patient/_search")
                        .header("Content-Type", "application/x-www-form-urlencoded")
                        .body(criteria.clone()),
                    format!("POST Patient/_search {criteria}"),
                ),
                11 => (
                    session
                        .fhir(Method::POST, "Patient")
                        .header("Content-Type", "application/fhir+json")
                        .header("If-None-Exist", &criteria)
                        .json(&created),
                    format!("POST Patient, If-None-Exist: {criteria}"),
                ),
                12 => (
                    session
                        .fhir(Method::POST, "")
                        .json(&transaction(vec![json!({
                        "resource": created, "request": {"method": "POST", "url": "Patient",
                            "ifNoneExist": criteria}})])),
                    format!("a transaction: POST Patient, ifNoneExist {criteria}"),
                ),
                13 => (
                    session
                        .fhir(Method::PUT, &format!("Patient?{criteria}"))
                        .header("Content-Type", "application/fhir+json")
                        .json(&json!({"resourceType": "Patient", "gender": "female",
                            "name": [{"family": "Twin", "given": ["Same"]}]})),
                    format!("PUT Patient?{criteria}"),
                ),
                14 => (
                    session
                        .fhir(Method::PATCH, &format!("Patient?{criteria}"))
                        .header("Content-Type", "application/json-patch+json")
                        .body(
                            json!([{"op": "replace", "path": "/gender", "value": "female"}])
                                .to_string(),
                        ),
                    format!("PATCH Patient?{criteria}"),
                ),
                15 => (
                    session.fhir(Method::DELETE, &format!("Patient?{criteria}")),
                    format!("DELETE Patient?{criteria}"),
                ),
                _ => get(format!(
                    "Patient/{t}/Observation?subject:Patient.birthdate={value}"
                )),
            };
            let (status, body) = self
                .send(format!("{label}: {what} (twin {a})"), request)
                .await;
            shapes.push(twin_shape(status, &body, t, w));
            asked.push(format!("{what} -> {status} {body}"));
        }
        if shapes[0] != shapes[1] {
            self.flag(
                "a hidden value told apart",
                format!(
                    "the answers about twins whose hidden birthDates differ differ:\n    {}\n    {}",
                    asked[0], asked[1]
                ),
            );
        }
    }

    /// After the step of a scope-narrowed actor: the database changed only
    /// in types its scope lets it write, and no secret changed; after the
    /// hiding member's: its twins (and their Observations) are as they were.
    async fn check_unchanged(&mut self, actor: usize, before: &Fingerprint, hidden: bool) {
        let after = Fingerprint::take(&self.db).await;
        let changed = before.changed(&after);
        let me = &self.actors[actor];
        let mut flags = Vec::new();
        if let Some(scoped) = &me.scope {
            for (resource_type, id) in &changed {
                if !scoped.writes(resource_type) {
                    flags.push((
                        "a scope-narrowed token changed what its scope does not grant",
                        format!(
                            "{} changed {resource_type}/{id}, which scope '{}' does not let it write",
                            me.label, scoped.scope
                        ),
                    ));
                }
            }
        }
        if let Some(twins) = self.twins.as_ref().filter(|_| hidden) {
            for (resource_type, id) in &changed {
                if twins.patients.contains(id) || twins.observations.contains(id) {
                    flags.push((
                        "a twin changed by a hidden-field request",
                        format!(
                            "{resource_type}/{id} changed in a step where {} probed",
                            self.actors[twins.actor].label
                        ),
                    ));
                }
            }
        }
        if me.scope.is_some() && before.secrets != after.secrets {
            let kinds: Vec<_> = before
                .secrets
                .iter()
                .filter(|(k, v)| after.secrets.get(*k) != Some(*v))
                .map(|(k, _)| k.clone())
                .chain(
                    after
                        .secrets
                        .keys()
                        .filter(|k| !before.secrets.contains_key(*k))
                        .cloned(),
                )
                .collect();
            flags.push((
                "a secret changed in a watched step",
                format!("{}'s step changed secrets {kinds:?}", me.label),
            ));
        }
        for (kind, detail) in flags {
            self.flag(kind, detail);
        }
    }

    /// Each request a scope-narrowed actor made since the last check,
    /// against what its scope grants: a write of a type it does not grant
    /// and every account and administration route refused (401, 403 or
    /// 404), a read or search of a type it does not grant a 403.
    fn check_scopes(&mut self) {
        let mut flags = Vec::new();
        for outcome in std::mem::take(&mut self.outcomes) {
            let me = &self.actors[outcome.actor];
            let scoped = me.scope.as_ref().unwrap();
            let refused = matches!(outcome.status, 401 | 403 | 404);
            for access in &outcome.accesses {
                let (kind, ok) = match access {
                    Access::Fhir(t, l @ ('r' | 's')) if !scoped.grants(t, *l) => (
                        "a read outside the token's scope not refused with 403",
                        outcome.status == 403,
                    ),
                    Access::Fhir(t, l) if !scoped.grants(t, *l) => {
                        ("a write outside the token's scope not refused", refused)
                    }
                    Access::Account => ("an account route with a scope-narrowed token", refused),
                    Access::Admin => ("an admin route with a scope-narrowed token", refused),
                    _ => continue,
                };
                if !ok {
                    flags.push((
                        kind,
                        format!(
                            "{} ({access:?}, outside scope '{}'): {} -> {}",
                            me.label, scoped.scope, outcome.what, outcome.status
                        ),
                    ));
                }
            }
        }
        for (kind, detail) in flags {
            self.flag(kind, detail);
        }
    }

    /// Admins mint for their own project only: their own membership,
    /// project-scoped users of it, its clients and bots.
    fn may_mint(&self, actor: usize, snapshot: &Snapshot, project: usize, target: &str) -> bool {
        let me = &self.actors[actor];
        let own_membership = snapshot.content("ProjectMembership", &me.membership);
        let is_admin = own_membership.is_some_and(|m| m["admin"] == true);
        if project != me.project || !is_admin {
            return false;
        }
        if target == me.membership {
            return true;
        }
        let Some(membership) = snapshot.content("ProjectMembership", target) else {
            return false;
        };
        let user = membership["user"]["reference"].as_str().unwrap_or_default();
        if user.starts_with("ClientApplication/") || user.starts_with("Bot/") {
            return true;
        }
        let Some(user_id) = user.strip_prefix("User/") else {
            return false;
        };
        snapshot.content("User", user_id).is_some_and(|u| {
            u["project"]["reference"] == json!(format!("Project/{}", self.projects[project]))
        })
    }

    /// The invariants, after a step of `actor`.
    async fn check(&mut self, actor: usize, before: &Snapshot) {
        // The step's own requests stay in the log; the checks' only when flagged.
        let logged = self.log.len();
        let after = Snapshot::take(&self.db).await;
        let me = &self.actors[actor];
        let mut flags: Vec<(String, String)> = Vec::new();
        let mut flag = |kind: &str, detail: String| flags.push((kind.to_string(), detail));

        // Only the bootstrap project is a super admin project; the walk's
        // projects keep their superAdmin, features and link.
        for ((_, resource_type, id), (_, deleted)) in &after.rows {
            if resource_type != "Project" || *deleted {
                continue;
            }
            let content = after.content("Project", id).unwrap();
            if content["superAdmin"] == true && *id != self.bootstrap {
                flag(
                    "a super admin project",
                    format!("Project/{id} is a super admin project"),
                );
            }
            if let (true, Some(old)) = (self.projects.contains(id), before.content("Project", id)) {
                for field in ["superAdmin", "features", "link"] {
                    if content[field] != old[field] {
                        flag(
                            &format!("Project.{field} changed"),
                            format!("Project/{id}.{field}: {} -> {}", old[field], content[field]),
                        );
                    }
                }
            }
        }
        // No membership gained powers by its own request; no membership
        // moved to another user or project.
        let own = me.membership.as_str();
        if let (Some(old), Some(new)) = (
            before.content("ProjectMembership", own),
            after.content("ProjectMembership", own),
        ) {
            for field in ["admin", "accessPolicy", "access"] {
                if new[field] != old[field] {
                    flag(
                        &format!("own membership's {field} changed"),
                        format!(
                            "{} changed its own membership's {field}: {} -> {}",
                            me.label, old[field], new[field]
                        ),
                    );
                }
            }
        }
        for ((resource_type, id), old) in &before.contents {
            if resource_type != "ProjectMembership" {
                continue;
            }
            if let Some(new) = after.content("ProjectMembership", id) {
                for field in ["user", "project"] {
                    if new[field] != old[field] {
                        flag(
                            &format!("ProjectMembership.{field} changed"),
                            format!(
                                "ProjectMembership/{id}.{field}: {} -> {}",
                                old[field], new[field]
                            ),
                        );
                    }
                }
            }
        }
        // Nothing of the other walk project changed.
        let mine = &self.projects[me.project];
        let keys: BTreeSet<_> = before.rows.keys().chain(after.rows.keys()).collect();
        for key in keys {
            let (project, resource_type, id) = key;
            if project == mine || !self.projects.contains(project) {
                continue;
            }
            if before.rows.get(key) != after.rows.get(key) {
                flag(
                    "a write into another project",
                    format!(
                        "{} changed {resource_type}/{id} of another project",
                        me.label
                    ),
                );
            }
        }
        // Users: their email and password are their own; a project-scoped
        // User lives in its project.
        for ((resource_type, id), old) in &before.contents {
            if resource_type != "User" || me.user == format!("User/{id}") {
                continue;
            }
            if let Some(new) = after.content("User", id) {
                for field in ["email", "project"] {
                    if new[field] != old[field] {
                        flag(
                            &format!("User.{field} changed"),
                            format!("User/{id}.{field}: {} -> {}", old[field], new[field]),
                        );
                    }
                }
            }
            if after.hashes.get(id) != before.hashes.get(id) {
                flag(
                    "a User's password changed",
                    format!("User/{id}'s password hash changed"),
                );
            }
        }
        for ((project, resource_type, id), (_, deleted)) in &after.rows {
            if resource_type != "User" || *deleted {
                continue;
            }
            let user = after.content("User", id).unwrap();
            if let Some(scope) = user["project"]["reference"].as_str() {
                if scope != format!("Project/{project}") {
                    flag(
                        "a User scoped to another project",
                        format!("User/{id} lives in project {project} but is scoped to {scope}"),
                    );
                }
            }
        }
        self.flags.extend(flags);

        // Over HTTP, for every actor: its project only, nothing of the
        // other one, no super admin route.
        for a in 0..self.actors.len() {
            let session = self.actors[a].session.clone();
            let label = self.actors[a].label.clone();
            let project = self.actors[a].project;
            let (own, other) = (
                self.projects[project].clone(),
                self.projects[1 - project].clone(),
            );
            let (status, projects) = self
                .send(
                    format!("{label}: GET Project"),
                    session.fhir(Method::GET, "Project"),
                )
                .await;
            let ids = entry_ids(&projects);
            if (status == 200 && ids.iter().any(|id| *id != own))
                || !matches!(status, 200 | 401 | 403)
            {
                self.flag(
                    "GET Project shows other projects",
                    format!("{label}: GET Project -> {status} {ids:?}"),
                );
            }
            let other_membership = self.actors[(1 - project) * 3].membership.clone();
            for reference in [
                format!("Project/{other}"),
                format!("ProjectMembership/{other_membership}"),
                format!("User/{}", self.super_user),
            ] {
                let (status, _) = self
                    .send(
                        format!("{label}: GET {reference}"),
                        session.fhir(Method::GET, &reference),
                    )
                    .await;
                if !matches!(status, 401 | 403 | 404) {
                    self.flag(
                        "a read outside the caller's project",
                        format!("{label}: GET {reference} -> {status}"),
                    );
                }
            }
            if a == actor || self.step.is_multiple_of(10) {
                let (status, _) = self
                    .send(
                        format!("{label}: rotate the signing keys"),
                        session.request(Method::POST, "admin/super/keys/rotate"),
                    )
                    .await;
                if !matches!(status, 401 | 403) {
                    self.flag(
                        "a super admin route",
                        format!("{label}: POST /admin/super/keys/rotate -> {status}"),
                    );
                }
            }
        }
        self.log.truncate(logged);
    }

    fn flag(&mut self, kind: &str, detail: String) {
        self.flags.push((kind.to_string(), detail));
    }

    /// Ends the step: its violations fail the test at once, or (with
    /// FHIRGATE_WALK_KEEP_GOING) are kept, the first of each kind, for the end.
    fn end_step(&mut self, keep_going: bool) {
        if self.flags.is_empty() {
            return;
        }
        let flags = std::mem::take(&mut self.flags);
        let details: Vec<String> = flags.iter().map(|(_, d)| d.clone()).collect();
        let report = format!(
            "{}
  violated: {}",
            self.context(),
            details.join(
                "
  violated: "
            )
        );
        if !keep_going {
            panic!("{report}");
        }
        for (kind, _) in flags {
            self.found.entry(kind).or_insert_with(|| report.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn escalation_walk() {
    let seed = env_number("FHIRGATE_WALK_SEED", 20261206);
    let steps = env_number("FHIRGATE_WALK_STEPS", 250) as usize;
    let keep_going = std::env::var("FHIRGATE_WALK_KEEP_GOING").is_ok_and(|v| v != "0");
    let verbose = std::env::var("FHIRGATE_WALK_VERBOSE").is_ok_and(|v| v != "0");
    eprintln!("escalation walk: seed {seed}, {steps} steps (FHIRGATE_WALK_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let mut walk = Walk::build(seed, &mut rng).await;
    let started = std::time::Instant::now();
    for step in 0..steps {
        walk.step = step;
        walk.log.clear();
        // Admins half the time: theirs are the writes that can escalate.
        let actor = if rng.chance(50) {
            3 * rng.below(2)
        } else {
            rng.below(walk.actors.len())
        };
        let before = Snapshot::take(&walk.db).await;
        let hider = walk.twins.as_ref().unwrap().actor;
        // The member who may not see birthDate probes on its own steps and
        // on a fifth of the others'.
        let hidden_probe = actor == hider || rng.chance(20);
        let watched = walk.actors[actor].scope.is_some() || hidden_probe;
        let fingerprint = match watched {
            true => Some(Fingerprint::take(&walk.db).await),
            false => None,
        };
        walk.step(&mut rng, actor, &before).await;
        walk.probe(&mut rng, actor, &before, hidden_probe).await;
        if verbose {
            for line in &walk.log {
                eprintln!("step {step}: {line}");
            }
        }
        if let Some(fingerprint) = fingerprint {
            walk.check_unchanged(actor, &fingerprint, hidden_probe)
                .await;
        }
        walk.check(actor, &before).await;
        walk.check_scopes();
        walk.end_step(keep_going);
    }
    eprintln!(
        "escalation walk: seed {seed}, {steps} steps, {} requests in {:?}",
        walk.requests,
        started.elapsed()
    );
    assert!(
        walk.found.is_empty(),
        "{} kinds of violation (the first of each):\n\n{}",
        walk.found.len(),
        walk.found
            .iter()
            .map(|(kind, report)| format!("== {kind}\n{report}"))
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    assert!(walk.requests > steps);
}
