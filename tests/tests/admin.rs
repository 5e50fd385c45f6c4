//! Project administration and the user lifecycle over HTTP: invitations and
//! their mail, links that set passwords and verify email, memberships,
//! clients, bots, users as data and lifecycle AuditEvents.

use std::time::Duration;

use fhirgate_tests::{
    assert_outcome, count, smtp::SmtpServer, status_json, Credentials, Session, TestApp,
};
use serde_json::{json, Value};

/// A server that mails through a test SMTP listener.
async fn spawn_with_mail() -> (TestApp, SmtpServer) {
    let smtp = SmtpServer::start().await;
    let url = smtp.url.clone();
    let app = TestApp::spawn_with(|config| config.lifecycle.smtp_url = Some(url)).await;
    (app, smtp)
}

fn invitation(resource_type: &str, email: &str) -> Value {
    json!({"resourceType": resource_type, "firstName": "Ada", "lastName": "Lovelace", "email": email})
}

async fn invite(admin: &Session, project: &str, body: &Value) -> (u16, Value) {
    status_json(
        admin
            .post_json(&format!("admin/projects/{project}/invite"), body)
            .await,
    )
    .await
}

/// Asserts 200 and returns the membership.
async fn invite_ok(admin: &Session, project: &str, body: &Value) -> Value {
    let (status, membership) = invite(admin, project, body).await;
    assert_eq!(status, 200, "{membership}");
    assert_eq!(membership["resourceType"], "ProjectMembership");
    membership
}

async fn search(session: &Session, query: &str) -> Vec<Value> {
    let (status, bundle) = status_json(session.get(query).await).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

async fn set_password(
    app: &TestApp,
    (id, secret): &(String, String),
    password: &str,
) -> (u16, Value) {
    status_json(
        app.post_json(
            "auth/setpassword",
            &json!({"id": id, "secret": secret, "password": password}),
        )
        .await,
    )
    .await
}

#[tokio::test]
async fn a_new_practitioner_is_invited_by_mail_and_sets_a_password_once() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("Clinic North").await;
    let membership = invite_ok(
        &project.admin,
        &project.id,
        &invitation("Practitioner", "Ada@Example.com"),
    )
    .await;
    assert_eq!(
        membership["project"]["reference"],
        format!("Project/{}", project.id)
    );
    let profile = membership["profile"]["reference"].as_str().unwrap();
    assert!(profile.starts_with("Practitioner/"), "{membership}");

    let mail = smtp.next().await;
    assert_eq!(mail.to, vec!["ada@example.com"]);
    assert!(
        mail.subject().contains("Clinic North"),
        "{}",
        mail.subject()
    );
    assert!(mail.part("text/plain").contains("Clinic North"));
    assert!(mail.part("text/html").contains("Clinic North"));
    let link = mail.link("setpassword");
    assert!(
        mail.part("text/html").contains(&link.1),
        "the HTML part carries the link too"
    );

    // The server-scoped user, its profile and password state.
    let user_ref = membership["user"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let user_id = user_ref.strip_prefix("User/").unwrap();
    let root = app.super_admin().await;
    let (_, user) = status_json(root.get(&user_ref).await).await;
    assert_eq!(user["email"], "ada@example.com");
    assert!(user.get("project").is_none(), "server-scoped: {user}");
    assert_eq!(user["emailVerified"], false);
    let (_, practitioner) = status_json(project.admin.get(profile).await).await;
    assert_eq!(practitioner["telecom"][0]["value"], "ada@example.com");
    assert_eq!(practitioner["name"][0]["family"], "Lovelace");

    let (status, body) = set_password(
        &app,
        &(link.0.clone(), "wrong-secret".into()),
        "violet staircase under the moon",
    )
    .await;
    assert_eq!(
        (status, body["issue"][0]["diagnostics"].as_str()),
        (400, Some("This link is not valid; ask for a new one"))
    );
    let (status, body) = set_password(&app, &link, "short").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["issue"][0]["expression"][0], "password");
    let (status, body) = set_password(&app, &link, "violet staircase under the moon").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = set_password(&app, &link, "amber lighthouse beyond the hills").await;
    assert_eq!(status, 400);
    assert!(body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("already been used"));

    let (_, user) = status_json(root.get(&user_ref).await).await;
    assert_eq!(user["emailVerified"], true);
    let hashes = count(
        &app.db().await,
        "SELECT count(*) FROM resource_secret WHERE kind = 'password' AND resource_id::text = $1",
        &[&user_id],
    )
    .await;
    assert_eq!(hashes, 1);

    // The project's admins find what happened; its members do not, unless a
    // policy names AuditEvent (sign-in addresses, who invited whom).
    let events = search(
        &project.admin,
        "AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|",
    )
    .await;
    assert_outcome(project.member.get("AuditEvent").await, 403, "AuditEvent").await;
    let codes: Vec<&str> = events
        .iter()
        .map(|e| e["subtype"][0]["code"].as_str().unwrap())
        .collect();
    for code in [
        "user-created",
        "membership-added",
        "user-invited",
        "password-reset",
    ] {
        assert!(codes.contains(&code), "{code} in {codes:?}");
    }
}

#[tokio::test]
async fn invitations_refuse_what_is_wrong() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let other = app.project("Q").await;
    let url = format!("admin/projects/{}/invite", project.id);
    let body = json!({"resourceType": "Practitioner", "firstName": "A", "lastName": "B", "email": "a@example.com", "sendEmail": false});

    let unauthenticated = app
        .http
        .post(app.url(&url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_outcome(unauthenticated, 401, "Authentication required").await;
    assert_outcome(
        project.member.post_json(&url, &body).await,
        403,
        "Only project admins",
    )
    .await;
    assert_outcome(
        other.admin.post_json(&url, &body).await,
        403,
        "not an admin of",
    )
    .await;
    let root = app.super_admin().await;
    let missing = "00000000-0000-4000-8000-000000000000";
    assert_outcome(
        root.post_json(&format!("admin/projects/{missing}/invite"), &body)
            .await,
        404,
        "not found",
    )
    .await;

    let (status, outcome) = invite(
        &project.admin,
        &project.id,
        &json!({
            "resourceType": "Organization", "email": "nope", "scope": "everywhere", "sendEmail": 1
        }),
    )
    .await;
    assert_eq!(status, 400, "{outcome}");
    let fields: Vec<&str> = outcome["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["expression"][0].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "resourceType",
            "firstName",
            "lastName",
            "email",
            "scope",
            "sendEmail"
        ]
    );

    let mut with_policy = body.clone();
    with_policy["membership"] =
        json!({"accessPolicy": {"reference": format!("AccessPolicy/{missing}")}});
    let (status, outcome) = invite(&project.admin, &project.id, &with_policy).await;
    assert_eq!(status, 400);
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains(&format!("AccessPolicy/{missing}")));
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "membership.accessPolicy"
    );

    let foreign = other
        .admin
        .create(json!({"resourceType": "Practitioner"}))
        .await;
    let mut foreign_profile = body.clone();
    foreign_profile["membership"] = json!({"profile": {"reference": format!("Practitioner/{}", foreign["id"].as_str().unwrap())}});
    let (status, outcome) = invite(&project.admin, &project.id, &foreign_profile).await;
    assert_eq!(
        (status, outcome["issue"][0]["diagnostics"].as_str()),
        (400, Some("Profile does not belong to project"))
    );
    let patient = project
        .admin
        .create(json!({"resourceType": "Patient"}))
        .await;
    let mut wrong_type = body.clone();
    wrong_type["membership"] =
        json!({"profile": {"reference": format!("Patient/{}", patient["id"].as_str().unwrap())}});
    let (status, outcome) = invite(&project.admin, &project.id, &wrong_type).await;
    assert_eq!(status, 400);
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("must be a Practitioner"));

    // None of the refused invitations left anything behind.
    assert_eq!(
        count(
            &app.db().await,
            "SELECT count(*) FROM resource WHERE resource_type = $1",
            &[&"User"],
        )
        .await,
        1
    );

    let first = invite_ok(&project.admin, &project.id, &body).await;
    let (status, outcome) = invite(&project.admin, &project.id, &body).await;
    assert_eq!(
        (status, outcome["issue"][0]["diagnostics"].as_str()),
        (409, Some("User is already a member of this project"))
    );

    // upsert updates the membership in place; another profile is a conflict.
    let mut upsert = body.clone();
    upsert["upsert"] = json!(true);
    upsert["membership"] = json!({"admin": true, "externalId": "staff-1"});
    let updated = invite_ok(&project.admin, &project.id, &upsert).await;
    assert_eq!(
        (updated["id"].clone(), updated["admin"].clone()),
        (first["id"].clone(), json!(true))
    );
    let practitioner = project
        .admin
        .create(json!({"resourceType": "Practitioner"}))
        .await;
    upsert["membership"] = json!({"profile": {"reference": format!("Practitioner/{}", practitioner["id"].as_str().unwrap())}});
    let (status, _) = invite(&project.admin, &project.id, &upsert).await;
    assert_eq!(status, 409);

    // A membership externalId is unique in the project.
    let mut duplicate = json!({"resourceType": "Practitioner", "firstName": "C", "lastName": "D", "email": "c@example.com", "sendEmail": false});
    duplicate["membership"] = json!({"externalId": "staff-1"});
    let (status, outcome) = invite(&project.admin, &project.id, &duplicate).await;
    assert_eq!(status, 409);
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("staff-1"));
}

#[tokio::test]
async fn existing_users_are_reused_and_welcomed_not_reset() {
    let (app, smtp) = spawn_with_mail().await;
    let first = app.project("First").await;
    let second = app.project("Second").await;
    let a = invite_ok(
        &first.admin,
        &first.id,
        &invitation("Practitioner", "grace@example.com"),
    )
    .await;
    let link = smtp.next().await.link("setpassword");
    assert_eq!(
        set_password(&app, &link, "violet staircase under the moon")
            .await
            .0,
        200
    );
    let user_id = a["user"]["reference"]
        .as_str()
        .unwrap()
        .strip_prefix("User/")
        .unwrap()
        .to_string();
    let hash_before: String = app
        .db()
        .await
        .query_one(
            "SELECT hash FROM resource_secret WHERE resource_id::text = $1",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);

    let mut with_password = invitation("Practitioner", "grace@example.com");
    with_password["password"] = json!("crimson harbor after midnight rain");
    let b = invite_ok(&second.admin, &second.id, &with_password).await;
    assert_eq!(a["user"], b["user"], "the same server-scoped user");
    let welcome = smtp.next().await;
    assert!(
        welcome.subject().contains("Welcome to Second"),
        "{}",
        welcome.subject()
    );
    assert!(
        !welcome.part("text/plain").contains("setpassword"),
        "no link for an existing user"
    );
    let hash_after: String = app
        .db()
        .await
        .query_one(
            "SELECT hash FROM resource_secret WHERE resource_id::text = $1",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hash_before, hash_after, "the password was not reset");

    // The same email with the project scope is another user, refused while
    // the server-scoped one is a member, unless asked for.
    let mut scoped = invitation("Practitioner", "grace@example.com");
    scoped["scope"] = json!("project");
    scoped["sendEmail"] = json!(false);
    let (status, outcome) = invite(&second.admin, &second.id, &scoped).await;
    assert_eq!(
        (status, outcome["issue"][0]["diagnostics"].as_str()),
        (409, Some("User is already a member of this project"))
    );
    scoped["forceNewMembership"] = json!(true);
    let c = invite_ok(&second.admin, &second.id, &scoped).await;
    assert_ne!(c["user"], b["user"]);
    assert_eq!(
        c["profile"], b["profile"],
        "the profile with the same email is reused"
    );
    smtp.assert_none(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn patients_and_external_ids_are_project_scoped() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("P").await;
    let membership = invite_ok(
        &project.admin,
        &project.id,
        &invitation("Patient", "pat@example.com"),
    )
    .await;
    let (_, user) = status_json(
        project
            .admin
            .get(membership["user"]["reference"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(
        user["project"]["reference"],
        format!("Project/{}", project.id)
    );
    assert!(membership["profile"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Patient/"));
    smtp.next().await.link("setpassword");

    let external = invite_ok(
        &project.admin,
        &project.id,
        &json!({
            "resourceType": "Practitioner", "firstName": "E", "lastName": "X", "externalId": "ext-7"
        }),
    )
    .await;
    let (_, user) = status_json(
        project
            .admin
            .get(external["user"]["reference"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(
        (
            user["externalId"].as_str(),
            user["project"]["reference"].as_str()
        ),
        (
            Some("ext-7"),
            Some(format!("Project/{}", project.id).as_str())
        )
    );
    smtp.assert_none(Duration::from_millis(300)).await;

    // An admin sets a project-scoped user's password directly.
    let response = project
        .admin
        .post_json(
            "admin/projects/setpassword",
            &json!({"email": "pat@example.com", "password": "quiet meadow of silver foxes"}),
        )
        .await;
    assert_eq!(status_json(response).await.0, 200);
    let response = project
        .admin
        .post_json(
            "admin/projects/setpassword",
            &json!({"email": "nobody@example.com", "password": "quiet meadow of silver foxes"}),
        )
        .await;
    assert_outcome(response, 404, "No project-scoped user").await;
    let response = project
        .member
        .post_json(
            "admin/projects/setpassword",
            &json!({"email": "pat@example.com", "password": "quiet meadow of silver foxes"}),
        )
        .await;
    assert_outcome(response, 403, "Only project admins").await;
}

#[tokio::test]
async fn mail_failures_keep_the_invitation_and_say_so() {
    let url = fhirgate_tests::smtp::unreachable_smtp_url().await;
    let app = TestApp::spawn_with(|config| config.lifecycle.smtp_url = Some(url)).await;
    let project = app.project("P").await;
    let response = project
        .admin
        .post_json(
            &format!("admin/projects/{}/invite", project.id),
            &invitation("Practitioner", "x@example.com"),
        )
        .await;
    let warning = response
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_string());
    let (status, membership) = status_json(response).await;
    assert_eq!(status, 200, "{membership}");
    assert!(warning.unwrap_or_default().contains("could not be sent"));
    let (status, _) = status_json(
        project
            .admin
            .get(
                membership["id"]
                    .as_str()
                    .map(|id| format!("ProjectMembership/{id}"))
                    .unwrap()
                    .as_str(),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200);
    let failed = count(
        &app.db().await,
        "SELECT count(*) FROM email_outbox WHERE error IS NOT NULL AND recipient = $1",
        &[&"x@example.com"],
    )
    .await;
    assert_eq!(failed, 1);
}

#[tokio::test]
async fn without_smtp_mail_goes_to_the_outbox_and_send_email_false_sends_nothing() {
    let app = TestApp::spawn().await;
    let project = app.project("Local").await;
    invite_ok(
        &project.admin,
        &project.id,
        &invitation("Practitioner", "dev@example.com"),
    )
    .await;
    let mut quiet = invitation("Practitioner", "quiet@example.com");
    quiet["sendEmail"] = json!(false);
    invite_ok(&project.admin, &project.id, &quiet).await;
    let row = app
        .db()
        .await
        .query_one(
            "SELECT subject, text_body, html_body FROM email_outbox WHERE recipient = $1",
            &[&"dev@example.com"],
        )
        .await
        .unwrap();
    let (subject, text, html): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    assert!(
        subject.contains("Local")
            && text.contains("/setpassword/")
            && html.contains("/setpassword/")
    );
    assert_eq!(
        count(
            &app.db().await,
            "SELECT count(*) FROM email_outbox WHERE recipient = $1",
            &[&"quiet@example.com"],
        )
        .await,
        0
    );
}

#[tokio::test]
async fn concurrent_identical_invitations_make_one_user_and_one_membership() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let mut body = invitation("Practitioner", "same@example.com");
    body["sendEmail"] = json!(false);
    let requests = (0..8).map(|_| invite(&project.admin, &project.id, &body));
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let users = count(&app.db().await, "SELECT count(*) FROM resource WHERE resource_type = 'User' AND NOT deleted AND content::jsonb->>'email' = $1", &[&"same@example.com"]).await;
    let memberships = count(&app.db().await, "SELECT count(*) FROM resource WHERE resource_type = 'ProjectMembership' AND NOT deleted AND content::jsonb->'user'->>'reference' LIKE 'User/%' AND project_id::text = $1", &[&project.id]).await;
    assert_eq!((users, memberships), (1, 1));
}

#[tokio::test]
async fn password_reset_is_silent_about_unknown_emails_and_links_expire() {
    let smtp = SmtpServer::start().await;
    let url = smtp.url.clone();
    let app = TestApp::spawn_with(|config| {
        config.lifecycle.smtp_url = Some(url);
        config.lifecycle.reset_link_lifetime = Duration::from_secs(1);
    })
    .await;
    let project = app.project("P").await;
    let mut body = invitation("Practitioner", "reset@example.com");
    body["sendEmail"] = json!(false);
    invite_ok(&project.admin, &project.id, &body).await;

    let unknown = status_json(
        app.post_json(
            "auth/resetpassword",
            &json!({"email": "nobody@example.com"}),
        )
        .await,
    )
    .await;
    let known = status_json(
        app.post_json("auth/resetpassword", &json!({"email": "reset@example.com"}))
            .await,
    )
    .await;
    assert_eq!(unknown, known, "the same answer either way");
    assert_eq!(known.0, 200);
    let mail = smtp.next().await;
    assert_eq!(mail.to, vec!["reset@example.com"]);
    smtp.assert_none(Duration::from_millis(300)).await;
    let link = mail.link("setpassword");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, outcome) = set_password(&app, &link, "amber lighthouse beyond the hills").await;
    assert_eq!(
        (status, outcome["issue"][0]["diagnostics"].as_str()),
        (400, Some("This link has expired; ask for a new one"))
    );

    let response = app.post_json("auth/resetpassword", &json!({})).await;
    assert_outcome(response, 400, "email is required").await;
    let (status, outcome) =
        status_json(app.post_json("auth/setpassword", &json!({"id": "x"})).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        outcome["issue"].as_array().unwrap().len(),
        2,
        "secret and password missing: {outcome}"
    );
}

#[tokio::test]
async fn email_verification_is_resent_on_request_and_works_once() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("Verify").await;
    let mut body = invitation("Practitioner", "v@example.com");
    body["sendEmail"] = json!(false);
    let membership = invite_ok(&project.admin, &project.id, &body).await;
    let response = app
        .post_json(
            "auth/verifyemail/resend",
            &json!({"email": "v@example.com"}),
        )
        .await;
    assert_eq!(status_json(response).await.0, 200);
    let mail = smtp.next().await;
    assert!(mail.subject().contains("Confirm your email"));
    let (id, secret) = mail.link("verifyemail");
    let verify = json!({"id": id, "secret": secret});
    assert_eq!(
        status_json(app.post_json("auth/verifyemail", &verify).await)
            .await
            .0,
        200
    );
    let (status, _) = status_json(app.post_json("auth/verifyemail", &verify).await).await;
    assert_eq!(status, 400);
    let root = app.super_admin().await;
    let (_, user) = status_json(
        root.get(membership["user"]["reference"].as_str().unwrap())
            .await,
    )
    .await;
    assert_eq!(user["emailVerified"], true);
    // A verified address gets no more links; a verify link cannot set a password.
    app.post_json(
        "auth/verifyemail/resend",
        &json!({"email": "v@example.com"}),
    )
    .await;
    smtp.assert_none(Duration::from_millis(300)).await;
    assert_eq!(
        set_password(&app, &(id, secret), "amber lighthouse beyond the hills")
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn members_are_read_updated_and_removed_by_their_admins() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let other = app.project("Q").await;
    let mut body = invitation("Practitioner", "m@example.com");
    body["sendEmail"] = json!(false);
    let membership = invite_ok(&project.admin, &project.id, &body).await;
    let id = membership["id"].as_str().unwrap();
    let url = format!("admin/projects/{}/members/{id}", project.id);

    let (status, read) = status_json(
        project
            .admin
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &read["id"]), (200, &membership["id"]));
    let response = other
        .admin
        .request(reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 403, "not an admin of").await;
    let response = other
        .admin
        .request(
            reqwest::Method::GET,
            &format!("admin/projects/{}/members/{id}", other.id),
        )
        .send()
        .await
        .unwrap();
    assert_outcome(response, 404, "not found").await;

    let mut changed = read.clone();
    changed["admin"] = json!(true);
    changed["endDate"] = json!("2099-01-01");
    let (status, updated) = status_json(project.admin.post_json(&url, &changed).await).await;
    assert_eq!(
        (status, &updated["admin"], &updated["endDate"]),
        (200, &json!(true), &json!("2099-01-01"))
    );
    let mut moved = read.clone();
    moved["user"] = json!({"reference": "User/00000000-0000-4000-8000-000000000000"});
    assert_outcome(
        project.admin.post_json(&url, &moved).await,
        400,
        "cannot be changed",
    )
    .await;

    let (status, project_info) = status_json(
        project
            .admin
            .request(
                reqwest::Method::GET,
                &format!("admin/projects/{}", project.id),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &project_info["project"]["name"]),
        (200, &json!("P"))
    );

    let response = project
        .admin
        .request(reqwest::Method::DELETE, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(response).await.0, 200);
    let (status, _) =
        status_json(project.admin.get(&format!("ProjectMembership/{id}")).await).await;
    assert_eq!(status, 410);
    let events = search(
        &project.admin,
        "AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|membership-removed",
    )
    .await;
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn the_owners_membership_stays_and_removing_a_membership_revokes_its_logins() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let project = app.project("Owned").await;
    let mut body = invitation("Practitioner", "owner@example.com");
    body["sendEmail"] = json!(false);
    let owner = invite_ok(&root, &project.id, &body).await;
    let (_, mut stored) = status_json(root.get(&format!("Project/{}", project.id)).await).await;
    stored["owner"] = owner["user"].clone();
    assert_eq!(
        status_json(root.put(&format!("Project/{}", project.id), &stored).await)
            .await
            .0,
        200
    );
    let url = format!(
        "admin/projects/{}/members/{}",
        project.id,
        owner["id"].as_str().unwrap()
    );
    let response = project
        .admin
        .request(reqwest::Method::DELETE, &url)
        .send()
        .await
        .unwrap();
    assert_outcome(response, 400, "owner's membership cannot be deleted").await;

    // The member client's membership: its token stops working at once.
    assert_eq!(project.member.get("Patient").await.status(), 200);
    let client_ref = format!("ClientApplication/{}", project.member.credentials.client_id);
    let memberships = search(
        &project.admin,
        &format!("ProjectMembership?user={client_ref}"),
    )
    .await;
    let url = format!(
        "admin/projects/{}/members/{}",
        project.id,
        memberships[0]["id"].as_str().unwrap()
    );
    assert_eq!(
        project
            .admin
            .request(reqwest::Method::DELETE, &url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_outcome(project.member.get("Patient").await, 401, "revoked").await;
    let revoked = count(&app.db().await, "SELECT count(*) FROM resource WHERE resource_type = 'Login' AND content::jsonb->>'revoked' = 'true' AND content::jsonb->'user'->>'reference' = $1", &[&client_ref]).await;
    assert_eq!(revoked, 1);
}

#[tokio::test]
async fn a_membership_past_its_end_date_stops_working() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    assert_eq!(project.member.get("Patient").await.status(), 200);
    let client_ref = format!("ClientApplication/{}", project.member.credentials.client_id);
    let mut membership = search(
        &project.admin,
        &format!("ProjectMembership?user={client_ref}"),
    )
    .await
    .remove(0);
    membership["endDate"] = json!("2020-01-01T00:00:00Z");
    let url = format!(
        "admin/projects/{}/members/{}",
        project.id,
        membership["id"].as_str().unwrap()
    );
    assert_eq!(
        status_json(project.admin.post_json(&url, &membership).await)
            .await
            .0,
        200
    );
    assert_outcome(project.member.get("Patient").await, 401, "revoked").await;
}

#[tokio::test]
async fn clients_get_a_secret_once_and_can_rotate_it_bots_get_a_membership() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let response = project
        .admin
        .post_json(
            &format!("admin/projects/{}/client", project.id),
            &json!({"name": "Lab importer", "redirectUri": "https://lab.example/cb"}),
        )
        .await;
    let (status, client) = status_json(response).await;
    assert_eq!(status, 201, "{client}");
    let id = client["id"].as_str().unwrap().to_string();
    let secret = client["secret"].as_str().unwrap().to_string();
    let session = app
        .session(&Credentials {
            client_id: id.clone(),
            client_secret: secret.clone(),
        })
        .await;
    assert_eq!(
        session.get("Patient").await.status(),
        200,
        "the client's membership works"
    );
    let (_, stored) =
        status_json(project.admin.get(&format!("ClientApplication/{id}")).await).await;
    assert!(
        stored.get("secret").is_none(),
        "never shown again: {stored}"
    );

    let rotate = format!("fhir/R4/ClientApplication/{id}/$rotate-secret");
    assert_outcome(
        project.member.post_json(&rotate, &json!({})).await,
        403,
        "ClientApplication",
    )
    .await;
    let (status, rotated) = status_json(project.admin.post_json(&rotate, &json!({})).await).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    // The replaced secret keeps working for FHIRGATE_RETIRING_SECRET_SECONDS
    // (an hour by default), so running clients are not cut off.
    let old = app
        .http
        .post(app.url("oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 200);
    app.session(&Credentials {
        client_id: id,
        client_secret: new_secret,
    })
    .await;

    let response = project
        .admin
        .post_json(&format!("admin/projects/{}/client", project.id), &json!({}))
        .await;
    assert_outcome(response, 400, "name is required").await;
    let (status, bot) = status_json(
        project
            .admin
            .post_json(
                &format!("admin/projects/{}/bot", project.id),
                &json!({"name": "Nightly"}),
            )
            .await,
    )
    .await;
    assert_eq!((status, bot["resourceType"].as_str()), (201, Some("Bot")));
    let memberships = search(
        &project.admin,
        &format!("ProjectMembership?user=Bot/{}", bot["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(memberships.len(), 1);
    assert_eq!(
        memberships[0]["profile"]["reference"],
        format!("Bot/{}", bot["id"].as_str().unwrap())
    );
}

#[tokio::test]
async fn admins_search_users_and_memberships_and_deleting_a_user_takes_its_memberships() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let mut body = invitation("Patient", "u@example.com");
    body["sendEmail"] = json!(false);
    let membership = invite_ok(&project.admin, &project.id, &body).await;
    let user_ref = membership["user"]["reference"]
        .as_str()
        .unwrap()
        .to_string();

    let users = search(&project.admin, "User?email=u@example.com").await;
    assert_eq!(users.len(), 1);
    assert!(users[0].get("passwordHash").is_none());
    for query in [
        format!("ProjectMembership?user={user_ref}"),
        format!(
            "ProjectMembership?profile={}",
            membership["profile"]["reference"].as_str().unwrap()
        ),
        "ProjectMembership?profile-type=Patient".to_string(),
        "ProjectMembership?admin=false&active:missing=true&_count=1".to_string(),
    ] {
        assert_eq!(search(&project.admin, &query).await.len(), 1, "{query}");
    }
    assert_outcome(project.member.get("User").await, 403, "User").await;

    let mut user = users[0].clone();
    user["email"] = json!("stolen@example.com");
    assert_outcome(
        project.admin.put(&user_ref, &user).await,
        403,
        "User.email is managed by the server",
    )
    .await;
    let patch = json!([{"op": "remove", "path": "/project"}]);
    assert_outcome(
        project.admin.patch(&user_ref, &patch).await,
        403,
        "User.project is managed by the server",
    )
    .await;
    user["email"] = json!("u@example.com");
    user["firstName"] = json!("Renamed");
    assert_eq!(project.admin.put(&user_ref, &user).await.status(), 200);

    assert_eq!(project.admin.delete(&user_ref).await.status(), 200);
    assert_eq!(project.admin.get(&user_ref).await.status(), 410);
    assert!(search(
        &project.admin,
        &format!("ProjectMembership?user={user_ref}")
    )
    .await
    .is_empty());
    let (_, history) = status_json(project.admin.get(&format!("{user_ref}/_history")).await).await;
    assert_eq!(
        history["entry"][0]["request"]["method"], "DELETE",
        "{history}"
    );
    let events = search(
        &project.admin,
        "AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|user-deleted",
    )
    .await;
    assert_eq!(events[0]["entity"][0]["what"]["reference"], json!(user_ref));
}

#[tokio::test]
async fn personal_access_tokens_are_bounded_listed_and_revocable() {
    let app = TestApp::spawn_with(|config| {
        config.lifecycle.max_personal_token_lifetime = Duration::from_secs(3600)
    })
    .await;
    let project = app.project("P").await;
    let client_ref = format!("ClientApplication/{}", project.member.credentials.client_id);
    let membership = search(
        &project.admin,
        &format!("ProjectMembership?user={client_ref}"),
    )
    .await
    .remove(0);
    let url = format!(
        "admin/projects/{}/members/{}/tokens",
        project.id,
        membership["id"].as_str().unwrap()
    );

    let too_long = project
        .admin
        .post_json(&url, &json!({"lifetime": 3601}))
        .await;
    let outcome = assert_outcome(too_long, 400, "from 1 to 3600").await;
    assert_eq!(outcome["issue"][0]["expression"][0], "lifetime");
    assert_outcome(
        project.member.post_json(&url, &json!({})).await,
        403,
        "Only project admins",
    )
    .await;

    let (status, token) = status_json(
        project
            .admin
            .post_json(&url, &json!({"lifetime": 600}))
            .await,
    )
    .await;
    assert_eq!(
        (status, &token["expires_in"]),
        (201, &json!(600)),
        "{token}"
    );
    let script = Session {
        token: token["access_token"].as_str().unwrap().to_string(),
        ..project.member.clone()
    };
    assert_eq!(script.get("Patient").await.status(), 200);

    let (_, listed) = status_json(
        project
            .admin
            .request(reqwest::Method::GET, &url)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["tokens"][0]["login"], token["login"]);
    assert!(!listed
        .to_string()
        .contains(token["access_token"].as_str().unwrap()));

    let login = token["login"]["reference"]
        .as_str()
        .unwrap()
        .strip_prefix("Login/")
        .unwrap();
    let response = project
        .admin
        .request(reqwest::Method::DELETE, &format!("{url}/{login}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_outcome(script.get("Patient").await, 401, "revoked").await;
    assert_eq!(
        project.member.get("Patient").await.status(),
        200,
        "the client's own token is unaffected"
    );
}

#[tokio::test]
async fn sign_up_forms_can_ask_whether_an_email_is_taken() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let mut body = invitation("Practitioner", "taken@example.com");
    body["sendEmail"] = json!(false);
    invite_ok(&project.admin, &project.id, &body).await;
    for (email, available) in [
        ("taken@example.com", false),
        ("TAKEN@example.com", false),
        ("free@example.com", true),
    ] {
        let (status, answer) = status_json(
            app.post_json("auth/emailavailable", &json!({"email": email}))
                .await,
        )
        .await;
        assert_eq!(
            (status, &answer["available"]),
            (200, &json!(available)),
            "{email}"
        );
    }
    // Project-scoped accounts are a separate namespace.
    let scoped = json!({"email": "taken@example.com", "projectId": project.id});
    let (_, answer) = status_json(app.post_json("auth/emailavailable", &scoped).await).await;
    assert_eq!(answer["available"], true);
}

/// Redeems a code (with its PKCE verifier) for an access token.
async fn exchange(app: &TestApp, code: &Value, verifier: &str, client_id: Option<&str>) -> String {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str().expect("a code")),
        ("code_verifier", verifier),
    ];
    if let Some(client_id) = client_id {
        form.push(("client_id", client_id));
    }
    let (status, token) = app.token(&form).await;
    assert_eq!(status, 200, "{token}");
    token["access_token"].as_str().unwrap().to_string()
}

/// Signs in with a password through a public client and returns an access token.
async fn sign_in(app: &TestApp, client_id: &str, email: &str, password: &str) -> String {
    let (verifier, challenge) = fhirgate_tests::pkce_pair();
    let (status, body) = app
        .login(
            &json!({"email": email, "password": password, "clientId": client_id,
            "scope": "openid", "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    exchange(app, &body["code"], &verifier, Some(client_id)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_mail_set_password_sign_in_and_read_for_each_kind_of_user() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("Riverside").await;
    let client_id = app
        .public_client(&project.id, "https://app.example.com/callback", json!({}))
        .await;
    let observation = project
        .admin
        .create(json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "heart rate"}}))
        .await;
    let cases = [
        ("Practitioner", "server", "doc@example.com", false),
        ("Practitioner", "project", "doc.local@example.com", true),
        ("Patient", "project", "patient@example.com", true),
    ];
    for (resource_type, scope, email, project_scoped) in cases {
        let mut body = invitation(resource_type, email);
        body["scope"] = json!(scope);
        let membership = invite_ok(&project.admin, &project.id, &body).await;
        let mail = smtp.next().await;
        assert_eq!(mail.to, vec![email]);
        let password = "violet staircase under the moon";
        assert_eq!(
            set_password(&app, &mail.link("setpassword"), password)
                .await
                .0,
            200
        );

        let token = sign_in(&app, &client_id, email, password).await;
        let session = Session {
            token,
            ..project.admin.clone()
        };
        let profile = membership["profile"]["reference"].as_str().unwrap();
        let (status, read) = status_json(session.get(profile).await).await;
        assert_eq!(
            (status, read["resourceType"].as_str()),
            (200, Some(resource_type)),
            "{read}"
        );
        let (status, _) = status_json(
            session
                .get(&format!(
                    "Observation/{}",
                    observation["id"].as_str().unwrap()
                ))
                .await,
        )
        .await;
        assert_eq!(status, 200, "{resource_type}/{scope} reads clinical data");
        let root = app.super_admin().await;
        let (_, user) = status_json(
            root.get(membership["user"]["reference"].as_str().unwrap())
                .await,
        )
        .await;
        assert_eq!(user.get("project").is_some(), project_scoped, "{user}");
    }
}

const PASSWORD: &str = "violet staircase under the moon";

/// `POST /auth/newuser` with PKCE; returns the login id and the verifier.
async fn new_user(app: &TestApp, email: &str, project_id: Option<&str>) -> (u16, Value, String) {
    let (verifier, challenge) = fhirgate_tests::pkce_pair();
    let mut body = json!({"firstName": "Nia", "lastName": "Okafor", "email": email, "password": PASSWORD,
        "codeChallenge": challenge, "codeChallengeMethod": "S256"});
    if let Some(project_id) = project_id {
        body["projectId"] = json!(project_id);
    }
    let (status, answer) = status_json(app.post_json("auth/newuser", &body).await).await;
    (status, answer, verifier)
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_up_then_new_project_makes_an_owner_admin_with_a_default_client() {
    let (app, smtp) = spawn_with_mail().await;
    let (status, answer, verifier) = new_user(&app, "Founder@Example.com", None).await;
    assert_eq!(status, 200, "{answer}");
    let verification = smtp.next().await;
    assert_eq!(verification.to, vec!["founder@example.com"]);
    verification.link("verifyemail");

    let (status, outcome) = status_json(
        app.post_json(
            "auth/newproject",
            &json!({"login": answer["login"], "projectName": "Startup Clinic"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    let token = exchange(&app, &outcome["code"], &verifier, None).await;
    let root = app.super_admin().await;
    let session = Session {
        token,
        ..root.clone()
    };
    let (status, me) = status_json(
        session
            .request(reqwest::Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["membership"]["admin"], true, "{me}");
    assert_eq!(me["profile"]["resourceType"], "Practitioner", "{me}");
    let project_id = me["project"]["id"].as_str().unwrap().to_string();
    let (_, project) = status_json(root.get(&format!("Project/{project_id}")).await).await;
    assert_eq!(project["name"], "Startup Clinic");
    assert_eq!(
        project["owner"]["reference"],
        format!("User/{}", me["user"]["id"].as_str().unwrap())
    );
    let clients = search(&root, "ClientApplication?_count=10&name=Startup").await;
    assert_eq!(clients.len(), 1, "the default client");
    assert!(clients[0].get("secret").is_none());
    // The new admin administers the project.
    assert_eq!(
        session.create(json!({"resourceType": "Patient"})).await["resourceType"],
        "Patient"
    );

    // The same email again, and a used login.
    let (status, answer, _) = new_user(&app, "founder@example.com", None).await;
    assert_eq!(
        (status, answer["issue"][0]["diagnostics"].as_str()),
        (400, Some("Email already registered"))
    );
    let (status, _) = status_json(
        app.post_json(
            "auth/newproject",
            &json!({"login": outcome["login"], "projectName": "Again"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    let weak = json!({"firstName": "A", "lastName": "B", "email": "weak@example.com", "password": "password"});
    let (status, answer) = status_json(app.post_json("auth/newuser", &weak).await).await;
    assert_eq!(
        (status, answer["issue"][0]["expression"][0].as_str()),
        (400, Some("password")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_up_can_be_closed() {
    let app = TestApp::spawn_with(|config| config.lifecycle.registration_enabled = false).await;
    let (status, answer, _) = new_user(&app, "x@example.com", None).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("FHIRGATE_REGISTRATION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn patients_register_only_where_a_default_patient_policy_allows_it() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let closed = app.project("Closed").await;
    let open = app.project("Open").await;
    let policy = root
        .create(
            json!({"resourceType": "AccessPolicy", "name": "patients", "meta": {"project": open.id},
        "resource": [{"resourceType": "Patient"}]}),
        )
        .await;
    let (_, mut project) = status_json(root.get(&format!("Project/{}", open.id)).await).await;
    project["defaultPatientAccessPolicy"] =
        json!({"reference": format!("AccessPolicy/{}", policy["id"].as_str().unwrap())});
    assert_eq!(
        root.put(&format!("Project/{}", open.id), &project)
            .await
            .status(),
        200
    );

    let (status, answer, _) = new_user(&app, "p@example.com", Some(&closed.id)).await;
    assert_eq!(status, 400);
    assert!(answer["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("does not allow open registration"));

    let (status, answer, verifier) = new_user(&app, "p@example.com", Some(&open.id)).await;
    assert_eq!(status, 200, "{answer}");
    let (status, outcome) = status_json(
        app.post_json(
            "auth/newpatient",
            &json!({"login": answer["login"], "projectId": open.id}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{outcome}");
    let token = exchange(&app, &outcome["code"], &verifier, None).await;
    let session = Session {
        token,
        ..root.clone()
    };
    let (_, me) = status_json(
        session
            .request(reqwest::Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The membership carries the default patient policy: its one entry is
    // the effective policy /auth/me shows.
    assert_eq!(
        me["accessPolicy"]["resource"],
        json!([{"resourceType": "Patient",
            "interaction": ["create", "read", "vread", "update", "patch", "delete", "history", "search"]}]),
        "{me}"
    );
    let memberships = search(&open.admin, "ProjectMembership?profile-type=Patient").await;
    assert_eq!(memberships.len(), 1);
    let users = search(&open.admin, "User?email=p@example.com").await;
    assert_eq!(
        users[0]["project"]["reference"],
        format!("Project/{}", open.id),
        "a project-scoped user"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_the_password_ends_the_other_sessions() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let client_id = app
        .public_client(&project.id, "https://app.example.com/callback", json!({}))
        .await;
    let user = app
        .user(&project.id, "c@example.com", "Practitioner", false)
        .await;
    let first = Session {
        token: sign_in(&app, &client_id, &user.email, &user.password).await,
        ..project.admin.clone()
    };
    let second = Session {
        token: sign_in(&app, &client_id, &user.email, &user.password).await,
        ..project.admin.clone()
    };

    let wrong = first.post_json("auth/changepassword", &json!({"oldPassword": "not it at all", "newPassword": "amber lighthouse beyond the hills"})).await;
    let outcome = assert_outcome(wrong, 400, "Incorrect password").await;
    assert_eq!(outcome["issue"][0]["expression"][0], "oldPassword");
    let weak = first
        .post_json(
            "auth/changepassword",
            &json!({"oldPassword": user.password, "newPassword": "password1"}),
        )
        .await;
    assert_eq!(
        assert_outcome(weak, 400, "").await["issue"][0]["expression"][0],
        "newPassword"
    );
    assert_outcome(
        project
            .admin
            .post_json("auth/changepassword", &json!({}))
            .await,
        403,
        "signing in yourself",
    )
    .await;

    let changed = first.post_json("auth/changepassword", &json!({"oldPassword": user.password, "newPassword": "amber lighthouse beyond the hills"})).await;
    assert_eq!(status_json(changed).await.0, 200);
    assert_eq!(
        first.get("Patient").await.status(),
        200,
        "this session stays"
    );
    assert_outcome(second.get("Patient").await, 401, "revoked").await;
    let (_, challenge) = fhirgate_tests::pkce_pair();
    let (status, answer) = app
        .login(
            &json!({"email": user.email, "password": user.password, "clientId": client_id,
        "scope": "openid", "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
        )
        .await;
    assert_eq!(
        (status, answer["issue"][0]["diagnostics"].as_str()),
        (400, Some("Email or password is invalid")),
        "the old password no longer works"
    );
    sign_in(
        &app,
        &client_id,
        &user.email,
        "amber lighthouse beyond the hills",
    )
    .await;

    // A failed sign-in is recorded after its answer (so that its timing
    // tells nothing): wait for it, a few seconds at most.
    let mut codes = Vec::new();
    for _ in 0..50 {
        let events = search(
            &project.admin,
            "AuditEvent?subtype=https://fhirgate.dev/fhir/CodeSystem/lifecycle|",
        )
        .await;
        codes = events
            .iter()
            .map(|e| e["subtype"][0]["code"].as_str().unwrap().to_string())
            .collect();
        if codes.iter().any(|c| c == "login-failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for code in ["login-succeeded", "login-failed", "password-changed"] {
        assert!(codes.iter().any(|c| c == code), "{code} in {codes:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_change_takes_effect_when_the_new_address_is_verified() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("P").await;
    let client_id = app
        .public_client(&project.id, "https://app.example.com/callback", json!({}))
        .await;
    let user = app
        .user(&project.id, "old@example.com", "Practitioner", false)
        .await;
    app.user(&project.id, "taken@example.com", "Practitioner", false)
        .await;
    let session = Session {
        token: sign_in(&app, &client_id, &user.email, &user.password).await,
        ..project.admin.clone()
    };

    assert_outcome(
        session
            .post_json(
                "auth/changeemail",
                &json!({"email": "taken@example.com", "password": user.password}),
            )
            .await,
        409,
        "Email already registered",
    )
    .await;
    assert_eq!(
        status_json(
            session
                .post_json(
                    "auth/changeemail",
                    &json!({"email": "New@Example.com", "password": user.password}),
                )
                .await
        )
        .await
        .0,
        200
    );
    let mail = smtp.next().await;
    assert_eq!(mail.to, vec!["new@example.com"]);
    let root = app.super_admin().await;
    let (_, stored) = status_json(root.get(&format!("User/{}", user.id)).await).await;
    assert_eq!(
        stored["email"], "old@example.com",
        "nothing changes before verification"
    );
    let (id, secret) = mail.link("verifyemail");
    assert_eq!(
        status_json(
            app.post_json("auth/verifyemail", &json!({"id": id, "secret": secret}))
                .await
        )
        .await
        .0,
        200
    );
    let (_, stored) = status_json(root.get(&format!("User/{}", user.id)).await).await;
    assert_eq!(
        (stored["email"].as_str(), stored["emailVerified"].as_bool()),
        (Some("new@example.com"), Some(true))
    );
    sign_in(&app, &client_id, "new@example.com", &user.password).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn users_mint_their_own_personal_tokens_listed_with_their_sessions() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let client_id = app
        .public_client(&project.id, "https://app.example.com/callback", json!({}))
        .await;
    let user = app
        .user(&project.id, "script@example.com", "Practitioner", false)
        .await;
    let session = Session {
        token: sign_in(&app, &client_id, &user.email, &user.password).await,
        ..project.admin.clone()
    };
    let (status, token) = status_json(
        session
            .post_json("auth/tokens", &json!({"lifetime": 3600}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let script = Session {
        token: token["access_token"].as_str().unwrap().to_string(),
        ..session.clone()
    };
    assert_eq!(script.get("Patient").await.status(), 200);
    let (status, me) = status_json(
        session
            .request(reqwest::Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    let sessions = me["security"]["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{me}"));
    let login_id = token["login"]["reference"]
        .as_str()
        .unwrap()
        .strip_prefix("Login/")
        .unwrap();
    assert!(
        sessions.iter().any(|s| s.to_string().contains(login_id)),
        "{me}"
    );
    // The personal token says who it is, but shows no sessions.
    let (status, seen) = status_json(
        script
            .request(reqwest::Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["user"]["email"], "script@example.com", "{seen}");
    assert!(seen["security"].get("sessions").is_none(), "{seen}");
    let revoke = session
        .post_json("auth/revoke", &json!({"loginId": login_id}))
        .await;
    assert_eq!(revoke.status(), 200);
    assert_outcome(script.get("Patient").await, 401, "revoked").await;
}

/// A personal token minted for an admin's own membership works for FHIR
/// and for nothing else: no admin route, however admin its membership is.
#[tokio::test]
async fn personal_tokens_give_fhir_access_only() {
    let app = TestApp::spawn().await;
    let project = app.project("P").await;
    let (_, me) = status_json(
        project
            .admin
            .request(reqwest::Method::GET, "auth/me")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let membership = me["membership"]["id"].as_str().unwrap();
    let (status, minted) = status_json(
        project
            .admin
            .post_json(
                &format!("admin/projects/{}/members/{membership}/tokens", project.id),
                &json!({"lifetime": 3600}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let personal = Session {
        token: minted["access_token"].as_str().unwrap().to_string(),
        ..project.admin.clone()
    };
    assert_eq!(personal.get("Patient").await.status(), 200);
    assert_outcome(
        personal
            .request(
                reqwest::Method::GET,
                &format!("admin/projects/{}", project.id),
            )
            .send()
            .await
            .unwrap(),
        403,
        "personal access token",
    )
    .await;
    let response = personal
        .post_json(
            &format!("admin/projects/{}/client", project.id),
            &json!({"name": "made with a personal token"}),
        )
        .await;
    assert_outcome(response, 403, "personal access token").await;
    // The same admin signed in as itself may.
    let (status, _) = status_json(
        project
            .admin
            .request(
                reqwest::Method::GET,
                &format!("admin/projects/{}", project.id),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_email_check_is_held_to_the_sign_in_rate_limit() {
    let app = TestApp::spawn_with(|config| config.auth_rate_limit = 3).await;
    let body = json!({"email": "probe@example.com"});
    for _ in 0..3 {
        assert_eq!(
            app.post_json("auth/emailavailable", &body).await.status(),
            200
        );
    }
    let limited = app.post_json("auth/emailavailable", &body).await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_outcome(limited, 429, "Too many").await;
}

/// The user-management guide's own examples: flags sent as strings, and a
/// member promoted with a JSON Patch of its membership.
#[tokio::test]
async fn the_user_management_guides_examples_run_as_written() {
    let (app, smtp) = spawn_with_mail().await;
    let project = app.project("Guide").await;
    let mut body = invitation("Practitioner", "guide@example.com");
    body["sendEmail"] = json!("false");
    body["admin"] = json!("false");
    let membership = invite_ok(&project.admin, &project.id, &body).await;
    assert_eq!(membership["admin"], false, "{membership}");
    smtp.assert_none(std::time::Duration::from_millis(300))
        .await;
    let mut bad = invitation("Practitioner", "other@example.com");
    bad["sendEmail"] = json!("no");
    let (status, outcome) = invite(&project.admin, &project.id, &bad).await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "sendEmail");

    let path = format!(
        "admin/projects/{}/members/{}",
        project.id,
        membership["id"].as_str().unwrap()
    );
    let patch = |operations: Value| {
        project
            .admin
            .request(reqwest::Method::PATCH, &path)
            .header("Content-Type", "application/json-patch+json")
            .body(operations.to_string())
            .send()
    };
    let (status, promoted) = status_json(
        patch(json!([{"op": "replace", "path": "/admin", "value": true}]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{promoted}");
    assert_eq!(promoted["admin"], true);
    // A plain member of the project may not patch memberships.
    let response = project
        .member
        .request(reqwest::Method::PATCH, &path)
        .header("Content-Type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/admin", "value": false}]).to_string())
        .send()
        .await
        .unwrap();
    assert_outcome(response, 403, "Only project admins").await;
    // The same rules as the POST that replaces a membership.
    let (status, outcome) = status_json(
        patch(json!([{"op": "replace", "path": "/user", "value": {"reference": "User/00000000-0000-0000-0000-000000000001"}}]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{outcome}");
    let stored = search(
        &project.admin,
        &format!(
            "ProjectMembership?_id={}",
            membership["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(stored[0]["user"], membership["user"]);
    assert_eq!(stored[0]["admin"], true);
}

/// An admin's Users are its project's: one naming another project is
/// refused and nothing is written; one naming none becomes the project's.
#[tokio::test]
async fn admins_create_users_only_in_their_own_project() {
    let app = TestApp::spawn().await;
    let project = app.project("Mine").await;
    let other = app.project("Theirs").await;
    let response = project
        .admin
        .post(
            "User",
            &json!({"resourceType": "User", "email": "x@example.com", "firstName": "X", "lastName": "Y",
                "project": {"reference": format!("Project/{}", other.id)}}),
        )
        .await;
    assert_outcome(response, 403, "belongs to your project").await;
    let db = app.db().await;
    let users = fhirgate_tests::count(
        &db,
        "SELECT count(*) FROM resource WHERE resource_type = 'User' AND content::jsonb ->> 'email' = 'x@example.com'",
        &[],
    )
    .await;
    assert_eq!(users, 0, "nothing written");
    let created = project
        .admin
        .create(json!({"resourceType": "User", "email": "x@example.com", "firstName": "X", "lastName": "Y"}))
        .await;
    assert_eq!(
        created["project"]["reference"],
        format!("Project/{}", project.id)
    );
}

/// The replaced secret retires: after `FHIRGATE_RETIRING_SECRET_SECONDS`
/// (here one second) only the new one works; a rotation before that keeps
/// the secret it replaces, not older ones.
#[tokio::test]
async fn a_rotated_secret_retires_after_its_grace_period() {
    let app = TestApp::spawn_with(|config| {
        config.retiring_secret = std::time::Duration::from_secs(1);
    })
    .await;
    let project = app.project("P").await;
    let (status, client) = status_json(
        project
            .admin
            .post_json(
                &format!("admin/projects/{}/client", project.id),
                &json!({"name": "rotating"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 201, "{client}");
    let id = client["id"].as_str().unwrap().to_string();
    let first = client["secret"].as_str().unwrap().to_string();
    let token_status = |secret: String| {
        let app = &app;
        let id = id.clone();
        async move {
            app.http
                .post(app.url("oauth2/token"))
                .form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", id.as_str()),
                    ("client_secret", secret.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let rotate = format!("fhir/R4/ClientApplication/{id}/$rotate-secret");
    let rotate_once = || async {
        let (status, rotated) =
            status_json(project.admin.post_json(&rotate, &json!({})).await).await;
        assert_eq!(status, 200, "{rotated}");
        rotated["secret"].as_str().unwrap().to_string()
    };
    let second = rotate_once().await;
    assert_eq!(
        token_status(first.clone()).await,
        200,
        "within the grace period"
    );
    let third = rotate_once().await;
    assert_eq!(
        token_status(first.clone()).await,
        401,
        "only the last replaced secret retires"
    );
    assert_eq!(token_status(second.clone()).await, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(token_status(second).await, 401, "after the grace period");
    assert_eq!(token_status(third).await, 200);
}
