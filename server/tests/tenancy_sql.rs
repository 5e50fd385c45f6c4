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
    // Reading a table (not the values being inserted) needs the equality.
    let reads_a_table = flat
        .split(" FROM ")
        .skip(1)
        .any(|rest| !rest.starts_with("UNNEST(") && !rest.starts_with("x"));
    equality || (rows_carry_project && !reads_a_table)
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
}

#[tokio::test(flavor = "multi_thread")]
async fn every_statement_of_a_project_caller_names_its_project() {
    let database = TestDatabase::new();
    let admin = Admin::generated();
    let mut env = vec![("FHIRGATE_LOG_LEVEL", "info,fhirgate::sql=trace")];
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
    call(Method::POST, "oauth2/logout", None, &[]).await;

    running.terminate();
    let (status, _) = running.wait_with_stderr();
    assert!(status.success());
    let mut by_request: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in running.log.take().unwrap().try_iter() {
        let line: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if line["target"] != "fhirgate::sql" {
            continue;
        }
        // The request's span, the outermost one.
        let request = line["spans"][0]["id"].as_str().unwrap_or("").to_string();
        if request.starts_with("checked-") {
            let sql = line["fields"]["sql"].as_str().unwrap().to_string();
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
    let mut unrouted = Vec::new();
    for (request, statements) in &by_request {
        for sql in statements {
            let known = WITHOUT_PROJECT
                .iter()
                .any(|(needle, _)| sql.contains(needle));
            if !names_a_project(sql) && !known {
                unrouted.push(format!("{request}: {sql}"));
            }
        }
    }
    unrouted.sort();
    unrouted.dedup();
    assert!(
        unrouted.is_empty(),
        "{} statements name no project:\n{}",
        unrouted.len(),
        unrouted.join("\n")
    );
}
