//! Ready for Citus (docs/scaling.md): every SQL statement a project's
//! caller causes names its project, so a distributed database can route it
//! to one node. The server logs each statement's text under the target
//! `fhirgate::sql`; this test drives a broad set of requests as a project's
//! clients (CRUD, searches of many kinds, Bundles, history, Binary, admin,
//! auth) and checks every statement they ran.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;

use std::collections::BTreeMap;

use common::{start_logging, Admin, Api, Logs, Member, TestDatabase};
use reqwest::Method;
use serde_json::{json, Value};

/// Statements that find their project from a globally unique key before
/// anything names it, with why; docs/scaling.md ("Statements that cross
/// projects") says what Citus does with each. A statement not listed here
/// that names no project fails the test.
const WITHOUT_PROJECT: &[(&str, &str)] = &[
    (
        "FROM resource r WHERE resource_type = $1 AND id = $2",
        "a client (sign-in), Login (logout) or server-scoped User (auth/me) by its id",
    ),
    (
        "FROM resource_secret WHERE resource_type = $1 AND resource_id = $2",
        "a client's secret at sign-in, by the client's id",
    ),
    (
        "WHERE l.resource_type = 'Login' AND l.id = $1",
        "a token's Login with its membership, project, user and client: the session",
    ),
    (
        "SELECT pg_advisory_xact_lock(",
        "the lock of a conditional write: no table, the key holds the project",
    ),
    (
        "JOIN unnest($1::text[]) WITH ORDINALITY AS scope(reference, position)",
        "a User by email at sign-in: the email names no project",
    ),
    (
        "WITH RECURSIVE projects (project_id) AS",
        "a server-scoped User's rows in every project: by email (invitation), its memberships (sign-in), its Logins (auth/me)",
    ),
    (
        "FROM login_lockout WHERE key = $1",
        "the sign-in lockout of an email",
    ),
    (
        "FROM user_mfa WHERE user_id = $1",
        "a User's second factor, by the User's id",
    ),
    (
        "FROM login_secret WHERE digest = $1",
        "an authorization code or refresh token by its digest",
    ),
    (
        "UPDATE login_secret SET used_at = now() WHERE digest = $1",
        "spending that code or token",
    ),
    (
        "FROM pg_stats WHERE",
        "the planner's statistics of resource.project_id (a catalog, read for plans only)",
    ),
];

/// Statements of background jobs that work across projects on purpose,
/// with why each is safe on Citus (docs/scaling.md, "Background jobs").
const MAINTENANCE: &[(&str, &str)] = &[
    (
        "DELETE FROM export_job WHERE completed_at < now()",
        "expired exports of every project: a reference table",
    ),
    (
        "WHERE id = (SELECT id FROM export_job",
        "claiming the oldest waiting export (FOR UPDATE SKIP LOCKED): a reference table",
    ),
    (
        "UPDATE export_job SET lease_until = now()",
        "renewing a job's lease by its id",
    ),
    (
        "UPDATE export_job SET status = $3, transaction_time = $4",
        "ending a job by its id",
    ),
    (
        "DELETE FROM export_output WHERE job_id = $1",
        "a job's output, by the job's id (its distribution key)",
    ),
    (
        "INSERT INTO export_output (job_id, resource_type, seq, lines, bytes)",
        "a job's output, by the job's id",
    ),
    ("SELECT now()", "the export snapshot's time: no table"),
    (
        "ANALYZE resource, resource_compartment",
        "statistics: Citus analyzes every shard",
    ),
    (
        "SELECT pg_try_advisory_xact_lock($1)",
        "the fan-out turn: no table",
    ),
    (
        "FROM subscription_event ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
        "claiming events of any project: a reference table",
    ),
    (
        "DELETE FROM subscription_event WHERE seq = ANY($1)",
        "forgetting claimed events by their keys: a reference table",
    ),
    (
        "WITH v AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[])",
        "versions by keys that carry their project: each shard answers its keys",
    ),
    (
        "SELECT pg_notify($1, $2)",
        "waking the delivery dispatchers: no table",
    ),
    (
        "DELETE FROM subscription_lease",
        "giving back (or expiring) a queue's lease by its subscription: a reference table, as the queue is",
    ),
    (
        "WITH RECURSIVE queue AS (",
        "claiming the due heads of delivery queues (FOR UPDATE SKIP LOCKED): a reference table",
    ),
    (
        "UPDATE subscription_lease SET until",
        "renewing a queue's lease by its subscription: a reference table, as the queue is",
    ),
    (
        "UPDATE subscription_delivery SET attempts = attempts +",
        "recording attempts by their keys: a reference table",
    ),
    (
        "last_error = 'no websocket client was bound to the subscription'",
        "cleanup of unclaimed websocket notifications: a reference table",
    ),
    (
        "DELETE FROM subscription_delivery",
        "cleanup of finished deliveries: a reference table",
    ),
];

/// Whether `sql` names one project: `project_id = <parameter>` (possibly
/// qualified, possibly hidden from the planner as `(SELECT $n::uuid)`), or
/// it only inserts rows, each of which carries its `project_id` (the rows
/// of one write come from `UNNEST` of arrays of values).
fn names_a_project(sql: &str) -> bool {
    let flat = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    let equality = flat.match_indices("project_id = ").any(|(at, matched)| {
        let rest = &flat[at + matched.len()..];
        rest.starts_with('$') || rest.starts_with("(SELECT $")
    });
    let inserts: Vec<&str> = flat.split("INSERT INTO ").skip(1).collect();
    let rows_carry_project = !inserts.is_empty()
        && inserts.iter().all(|insert| {
            insert
                .split_once('(')
                .and_then(|(_, columns)| columns.split_once(')'))
                .is_some_and(|(columns, _)| columns.split(", ").any(|c| c == "project_id"))
        });
    // Rows of a table matched on `project_id` to the values given (`x`,
    // their index rows `n`) or to the rows updated from them (`w`).
    let matched_to_values = |clause: &str| {
        [
            "= x.project_id",
            "= n.project_id",
            "= w.project_id",
            "JOIN w USING (project_id",
        ]
        .iter()
        .any(|matched| clause.contains(matched))
    };
    let writes_values = flat.starts_with("WITH x AS (SELECT * FROM UNNEST(");
    // Reading a table (not the values being written) needs the equality.
    let reads_a_table = flat.split(" FROM ").skip(1).any(|rest| {
        let name = rest.split([' ', ')']).next().unwrap_or_default();
        let values = if writes_values {
            // The values read whole (`FROM x)`, `FROM w`), or a table
            // matched to them; `FROM x WHERE` is an UPDATE's own condition.
            ((name == "x" || name == "w") && !rest.starts_with("x WHERE"))
                || matched_to_values(rest)
        } else {
            rest.starts_with('x')
        };
        // `IS NOT DISTINCT FROM n.code` names a column.
        let column = name.contains('.');
        !(column || values || rest.starts_with("UNNEST("))
    });
    equality || ((rows_carry_project || writes_values) && !reads_a_table)
}

#[test]
fn the_check_tells_statements_apart() {
    assert!(names_a_project(
        "SELECT 1 FROM resource WHERE project_id = $1 AND id = $2"
    ));
    assert!(names_a_project(
        "SELECT 1 FROM resource r WHERE r.project_id = (SELECT $3::uuid)"
    ));
    assert!(names_a_project(
        "INSERT INTO resource (project_id, id) VALUES ($1, $2)"
    ));
    assert!(!names_a_project("SELECT 1 FROM resource WHERE id = $1"));
    assert!(!names_a_project(
        "SELECT 1 FROM resource r JOIN x h ON h.project_id = r.project_id"
    ));
    assert!(!names_a_project("DELETE FROM login_lockout WHERE key = $1"));
    let update = |matched: &str| {
        format!(
            "WITH x AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[]) AS x (project_id, id)), \
             w AS (UPDATE resource r SET id = x.id FROM x WHERE {matched} RETURNING r.project_id, r.id), \
             d0 AS (DELETE FROM idx_token o USING w WHERE o.project_id = w.project_id AND o.resource_id = w.id) \
             SELECT id FROM w"
        )
    };
    assert!(names_a_project(&update(
        "r.project_id = x.project_id AND r.id = x.id"
    )));
    assert!(!names_a_project(&update("r.id = x.id")));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_statement_of_a_project_caller_names_its_project() {
    let database = TestDatabase::new();
    let admin = Admin::generated();
    let mut env = vec![
        ("FHIRGATE_LOG_LEVEL", "info,fhirgate::sql=trace"),
        // The statistics job runs after the few creates below.
        ("FHIRGATE_ANALYZE_AFTER", "3"),
        ("FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE", "1"),
    ];
    env.extend(admin.env());
    let mut running = start_logging(&database.url, Logs::Kept, &env);
    let root = Api::sign_in(&running, &admin.client_id, &admin.client_secret).await;
    let project = root.new_project("clinic").await;
    let Member {
        membership,
        client_id,
        secret,
        ..
    } = root
        .project_client(&running, &project, json!({"admin": true}))
        .await;

    // From here on every request is the project admin's, tagged so that
    // its statements can be told from the set-up's and background work's.
    let http = reqwest::Client::new();
    let sent = std::cell::Cell::new(0);
    let tag = || {
        sent.set(sent.get() + 1);
        format!("checked-{}", sent.get())
    };
    let token: Value = http
        .post(running.url("oauth2/token"))
        .header("X-Request-Id", tag())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let api = Api {
        http: http.clone(),
        base_url: running.url(""),
        token: token.clone(),
    };
    let call = async |method: Method,
                      path: &str,
                      body: Option<Value>,
                      headers: &[(&str, &str)]|
           -> Value {
        let mut request = api
            .request(method.clone(), path)
            .header("X-Request-Id", tag());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            let patch = body.is_array();
            request = request
                .header(
                    "Content-Type",
                    if patch {
                        "application/json-patch+json"
                    } else {
                        "application/fhir+json"
                    },
                )
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status < 400, "{method} {path}: {status} {body}");
        body
    };

    let patient = call(
        Method::POST,
        "fhir/R4/Patient",
        Some(json!({"resourceType": "Patient",
        "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974-12-25",
        "identifier": [{"system": "urn:mrn", "value": "12345"}]})),
        &[],
    )
    .await;
    let id = patient["id"].as_str().unwrap().to_string();
    let observation = call(Method::POST, "fhir/R4/Observation", Some(json!({"resourceType": "Observation",
        "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": "2024-01-01",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})), &[]).await;
    let observation_id = observation["id"].as_str().unwrap().to_string();
    let version = patient["meta"]["versionId"].as_str().unwrap().to_string();
    for path in [
        format!("fhir/R4/Patient/{id}"),
        format!("fhir/R4/Patient/{id}/_history/{version}"),
        "fhir/R4/Patient?name=chal".into(),
        "fhir/R4/Patient?birthdate=ge1970&_sort=-birthdate&_total=accurate".into(),
        "fhir/R4/Patient?identifier=urn:mrn|12345&_elements=name".into(),
        format!("fhir/R4/Observation?subject=Patient/{id}&_include=Observation:subject"),
        "fhir/R4/Observation?subject:Patient.name=chalmers&code=http://loinc.org|8867-4".into(),
        "fhir/R4/Observation?value-quantity=gt60|http://unitsofmeasure.org|/min&date=2024".into(),
        "fhir/R4/Patient?_has:Observation:subject:code=8867-4&_revinclude=Observation:subject"
            .into(),
        "fhir/R4/Patient?_summary=count".into(),
        "fhir/R4/Patient?_content=peter".into(),
        "fhir/R4?_type=Patient,Observation&_lastUpdated=gt2000-01-01".into(),
        format!("fhir/R4/Patient/{id}/Observation"),
        format!("fhir/R4/Patient/{id}/_history"),
        "fhir/R4/Patient/_history".into(),
        "fhir/R4/_history".into(),
        format!("admin/projects/{project}"),
        format!(
            "admin/projects/{project}/members/{}",
            membership["id"].as_str().unwrap()
        ),
        "auth/me".into(),
    ] {
        call(Method::GET, &path, None, &[]).await;
    }
    // Answered from the caller the server remembers: no statement, which
    // the count below must not expect.
    let userinfo = api
        .request(Method::GET, "oauth2/userinfo")
        .header("X-Request-Id", "checked-quiet-userinfo")
        .send()
        .await
        .unwrap();
    assert_eq!(userinfo.status(), 200);
    let mut updated = patient.clone();
    updated["gender"] = json!("male");
    call(
        Method::PUT,
        &format!("fhir/R4/Patient/{id}"),
        Some(updated),
        &[],
    )
    .await;
    call(
        Method::PATCH,
        &format!("fhir/R4/Patient/{id}"),
        Some(json!([{"op": "add", "path": "/active", "value": true}])),
        &[],
    )
    .await;
    call(
        Method::POST,
        "fhir/R4/Patient",
        Some(json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "12345"}]})),
        &[("If-None-Exist", "identifier=urn:mrn|12345")],
    )
    .await;
    call(
        Method::PUT,
        "fhir/R4/Patient?identifier=urn:mrn|777",
        Some(json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:mrn", "value": "777"}]})),
        &[],
    )
    .await;
    for kind in ["batch", "transaction"] {
        call(Method::POST, "fhir/R4", Some(json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Patient", "name": [{"family": kind}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
              "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": format!("Patient/{id}")}},
            {"request": {"method": "GET", "url": "Patient?name=chal"}},
            {"request": {"method": "DELETE", "url": format!("Observation/{observation_id}")}}
        ]})), &[]).await;
    }
    let binary = http
        .post(running.url("fhir/R4/Binary"))
        .bearer_auth(&token)
        .header("X-Request-Id", tag())
        .header("Content-Type", "text/plain")
        .body("some bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(binary.status(), 201);
    let binary: Value = binary.json().await.unwrap();
    call(
        Method::GET,
        &format!("fhir/R4/Binary/{}", binary["id"].as_str().unwrap()),
        None,
        &[],
    )
    .await;
    call(Method::DELETE, &format!("fhir/R4/Patient/{id}"), None, &[]).await;

    // A Subscription whose notifications a local endpoint takes: the
    // fan-out and delivery jobs run for the next write.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/hook", hook.local_addr().unwrap());
    let (delivered, mut notified) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = hook.accept().await {
            let mut request = vec![0; 64 * 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            let _ = delivered.send(());
        }
    });
    call(Method::POST, "fhir/R4/Subscription", Some(json!({"resourceType": "Subscription",
        "status": "active", "reason": "tenancy", "criteria": "Observation",
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}})), &[]).await;
    call(
        Method::POST,
        "fhir/R4/Observation",
        Some(json!({"resourceType": "Observation",
        "status": "final", "code": {"text": "notified"}})),
        &[],
    )
    .await;
    tokio::time::timeout(std::time::Duration::from_secs(30), notified.recv())
        .await
        .expect("the subscription's notification arrives")
        .unwrap();

    // $export: kick-off, status until complete, one file.
    let kicked_off = api
        .request(Method::GET, "fhir/R4/$export")
        .header("X-Request-Id", tag())
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kicked_off.status(), 202);
    let status_url = kicked_off.headers()["Content-Location"]
        .to_str()
        .unwrap()
        .to_string();
    let manifest: Value = loop {
        let status = api
            .http
            .get(&status_url)
            .bearer_auth(&token)
            .header("X-Request-Id", tag())
            .send()
            .await
            .unwrap();
        match status.status().as_u16() {
            200 => break status.json().await.unwrap(),
            202 => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            other => panic!("$export-status: {other}"),
        }
    };
    let file = manifest["output"][0]["url"].as_str().unwrap();
    let download = api
        .http
        .get(file)
        .bearer_auth(&token)
        .header("X-Request-Id", tag())
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert!(!download.bytes().await.unwrap().is_empty());

    // Password sign-in of a member the project admin invites, who is also
    // a member of a second project (so that it picks one with
    // /auth/profile), then its code exchange and /auth/me.
    let email = "member@example.com";
    let password = "a long enough password";
    let invited = call(
        Method::POST,
        &format!("admin/projects/{project}/invite"),
        Some(
            json!({"resourceType": "Practitioner", "firstName": "Mem", "lastName": "Ber",
            "email": email, "password": password, "sendEmail": false}),
        ),
        &[],
    )
    .await;
    // The invitation answers the new membership.
    let user = invited["user"]["reference"].as_str().unwrap();
    let other = root.new_project("other").await;
    let profile = root
        .create(json!({"resourceType": "Practitioner", "meta": {"project": other}}))
        .await;
    root.create(
        json!({"resourceType": "ProjectMembership", "meta": {"project": other},
        "project": {"reference": format!("Project/{other}")}, "user": {"reference": user},
        "profile": {"reference": format!("Practitioner/{}", profile["id"].as_str().unwrap())}}),
    )
    .await;
    let verifier = "a-verifier-of-at-least-forty-three-characters-0123456789";
    let challenge = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier))
    };
    let anonymous = async |path: &str, body: Value| -> Value {
        let response = http
            .post(running.url(path))
            .header("X-Request-Id", tag())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{path}: {body}");
        body
    };
    let signed_in = anonymous(
        "auth/login",
        json!({"email": email, "password": password, "scope": "openid",
            "codeChallenge": challenge, "codeChallengeMethod": "S256"}),
    )
    .await;
    let chosen = signed_in["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["project"]["reference"] == format!("Project/{project}"))
        .expect("the clinic's membership is offered");
    let picked = anonymous(
        "auth/profile",
        json!({"login": signed_in["login"], "profile": chosen["id"]}),
    )
    .await;
    let exchanged: Value = http
        .post(running.url("oauth2/token"))
        .header("X-Request-Id", tag())
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", picked["code"].as_str().unwrap()),
            ("code_verifier", verifier),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let member = Api {
        http: http.clone(),
        base_url: running.url(""),
        token: exchanged["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("a token: {exchanged}"))
            .to_string(),
    };
    let me = member
        .request(Method::GET, "auth/me")
        .header("X-Request-Id", tag())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // The reset link is mailed after the answer, still as the request's work.
    let reset = http
        .post(running.url("auth/resetpassword"))
        .header("X-Request-Id", tag())
        .json(&json!({"email": email, "projectId": project}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 200);

    // The statistics job: ANALYZE ran once a project passed 3 creates.
    let db = database.connect().await;
    let mut waited = 0;
    while !db
        .query_one(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = 'idx_text'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        waited += 1;
        assert!(
            waited < 300,
            "the statistics job analyzes the search tables"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    call(Method::POST, "oauth2/logout", None, &[]).await;

    running.terminate();
    let (status, _) = running.wait_with_stderr();
    assert!(status.success());
    let mut by_request: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut by_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in running.log.take().unwrap().try_iter() {
        let line: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if line["target"] != "fhirgate::sql" {
            continue;
        }
        let sql = line["fields"]["sql"].as_str().unwrap().to_string();
        // The request's or job's span, the outermost one.
        let outermost = &line["spans"][0];
        if outermost["name"] == "job" {
            let job = outermost["job"].as_str().unwrap().to_string();
            by_job.entry(job).or_default().push(sql);
            continue;
        }
        let request = outermost["id"].as_str().unwrap_or("").to_string();
        if request.starts_with("checked-") {
            by_request.entry(request).or_default().push(sql);
        }
    }
    assert_eq!(
        by_request
            .keys()
            .filter(|request| !request.starts_with("checked-quiet"))
            .count(),
        sent.get(),
        "every request ran statements and was logged: {:?}",
        by_request.keys()
    );
    assert_every_statement_names_a_project("requests", &by_request, &[WITHOUT_PROJECT]);

    // Every background job the requests above set off ran, and each of its
    // statements names its project or is a documented maintenance one.
    for job in [
        "export",
        "statistics",
        "subscription-fanout",
        "subscription-delivery",
    ] {
        assert!(
            by_job.contains_key(job),
            "the {job} job ran statements: {:?}",
            by_job.keys()
        );
    }
    assert_every_statement_names_a_project(
        "background jobs",
        &by_job,
        &[WITHOUT_PROJECT, MAINTENANCE],
    );
}

/// Fails naming each statement (by the request or job that ran it) that
/// names no project and is not among `exceptions`.
fn assert_every_statement_names_a_project(
    of: &str,
    by_owner: &BTreeMap<String, Vec<String>>,
    exceptions: &[&[(&str, &str)]],
) {
    let mut unrouted: Vec<String> = by_owner
        .iter()
        .flat_map(|(owner, statements)| statements.iter().map(move |sql| (owner, sql)))
        .filter(|(_, sql)| {
            !names_a_project(sql)
                && !exceptions
                    .iter()
                    .flat_map(|list| list.iter())
                    .any(|(needle, _)| sql.contains(needle))
        })
        .map(|(owner, sql)| format!("{owner}: {sql}"))
        .collect();
    unrouted.sort();
    unrouted.dedup();
    assert!(
        unrouted.is_empty(),
        "{} statements of {of} name no project:\n{}",
        unrouted.len(),
        unrouted.join("\n")
    );
}
