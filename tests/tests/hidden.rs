//! Hidden and readonly fields of an AccessPolicy: never used to answer a
//! search, never shown by a write's response (REST or Bundle), and a
//! delete followed by a put needs the create right and keeps readonly fields.

use base64::Engine;
use fhirgate_tests::{assert_outcome, status_json, Session, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

/// A member of `project_id` whose membership names a new AccessPolicy `body`.
async fn member_with(app: &TestApp, admin: &Session, project_id: &str, body: Value) -> Session {
    let policy = admin.create(body).await;
    let reference = format!("AccessPolicy/{}", policy["id"].as_str().unwrap());
    let root = app.super_admin().await;
    app.client_with(
        &root,
        project_id,
        json!({"accessPolicy": {"reference": reference}}),
        None,
    )
    .await
}

fn id(resource: &Value) -> &str {
    resource["id"].as_str().expect("id")
}

/// A Bundle PATCH entry: a JSON Patch document as a Binary.
fn patch_entry(url: &str, operations: &Value) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(operations.to_string());
    json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": data}, "request": {"method": "PATCH", "url": url}})
}

#[tokio::test(flavor = "multi_thread")]
async fn hidden_fields_never_answer_searches() {
    let app = TestApp::spawn().await;
    let project = app.project("hidden-search").await;
    let admin = &project.admin;
    let org = admin
        .create(json!({"resourceType": "Organization", "name": "x"}))
        .await;
    let gp = admin
        .create(json!({"resourceType": "Practitioner", "name": [{"family": "x"}]}))
        .await;
    let patient = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "x"}],
            "birthDate": "1970-01-02", "deceasedDateTime": "2020-05-01",
            "managingOrganization": {"reference": format!("Organization/{}", id(&org))},
            "generalPractitioner": [{"reference": format!("Practitioner/{}", id(&gp))}],
            "meta": {"tag": [{"code": "x"}]}}))
        .await;
    admin
        .create(json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1"}], "text": "x"},
            "effectiveDateTime": "2020-02-03", "valueQuantity": {"value": 5}}))
        .await;
    let member = member_with(
        &app,
        admin,
        &project.id,
        json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Patient", "hiddenFields": ["birthDate", "managingOrganization",
                "generalPractitioner", "deceasedDateTime", "text", "meta.tag"]},
            {"resourceType": "Organization"},
            {"resourceType": "Practitioner"},
            {"resourceType": "Observation", "hiddenFields": ["effectiveDateTime", "valueQuantity"]}
        ]}),
    )
    .await;

    let has = format!(
        "Organization?_has:Patient:organization:_id={}",
        id(&patient)
    );
    let refused = [
        ("Patient?organization.name=x", "managingOrganization"),
        (
            "Patient?general-practitioner:Practitioner.name=x",
            "generalPractitioner",
        ),
        (has.as_str(), "managingOrganization"),
        (
            "Patient?_include=Patient:organization",
            "managingOrganization",
        ),
        (
            "Organization?_revinclude=Patient:organization",
            "managingOrganization",
        ),
        ("Patient?death-date=2020", "deceasedDateTime"),
        ("Patient?deceased=true", "deceasedDateTime"),
        ("Patient?_text=x", "text"),
        ("Patient?_tag=x", "meta.tag"),
        ("Observation?date=2020", "effectiveDateTime"),
        ("Observation?_sort=date", "effectiveDateTime"),
        ("Observation?value-quantity=5", "valueQuantity"),
        (
            "Observation?code-value-quantity=http://loinc.org|1$5",
            "valueQuantity",
        ),
    ];
    for (query, field) in refused {
        let (status, body) = status_json(member.get(query).await).await;
        assert_eq!(status, 403, "{query}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{query}: {body}");
        let text = body["issue"][0]["diagnostics"].as_str().unwrap_or_default();
        let needle = format!("reads {field}, which your access policy hides");
        assert!(
            text.contains(&needle),
            "{query}: expected '{needle}' in '{text}'"
        );
    }
    // The admin, without hidden fields, gets answers to the same searches.
    for (query, _) in refused {
        assert_eq!(admin.get(query).await.status(), 200, "admin: {query}");
    }

    // Searches on visible fields still work.
    for (query, expected) in [
        ("Patient?name=x", 1),
        ("Patient?_lastUpdated=gt2000-01-01", 1),
        ("Observation?code=1", 1),
        ("Observation?value-string=x", 0),
    ] {
        let (status, body) = status_json(member.get(query).await).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["type"], "searchset", "{query}: {body}");
        let found = body["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(found, expected, "{query}: {body}");
        let text = body.to_string();
        assert!(
            !text.contains("1970-01-02") && !text.contains("effectiveDateTime"),
            "{query} shows a hidden field: {text}"
        );
    }

    // Conditional writes whose criteria use a hidden field are refused and change nothing.
    assert_outcome(
        member.delete("Patient?death-date=2020").await,
        403,
        "deceasedDateTime",
    )
    .await;
    assert_outcome(
        member
            .put(
                "Patient?deceased=true",
                &json!({"resourceType": "Patient", "name": [{"family": "y"}]}),
            )
            .await,
        403,
        "deceasedDateTime",
    )
    .await;
    let (status, stored) = status_json(admin.get(&format!("Patient/{}", id(&patient))).await).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["meta"]["versionId"], patient["meta"]["versionId"]);
    let (_, all) = status_json(admin.get("Patient?_total=accurate").await).await;
    assert_eq!(all["total"], 1, "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn if_none_exist_match_is_returned_without_hidden_fields() {
    let app = TestApp::spawn().await;
    let project = app.project("hidden-ifnoneexist").await;
    let admin = &project.admin;
    let patient = admin
        .create(
            json!({"resourceType": "Patient", "name": [{"family": "Known"}],
            "birthDate": "1970-01-02"}),
        )
        .await;
    let member = member_with(
        &app,
        admin,
        &project.id,
        json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Patient", "hiddenFields": ["birthDate"]}]}),
    )
    .await;
    for kind in ["batch", "transaction"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [{
            "resource": {"resourceType": "Patient", "name": [{"family": "New"}],
                "birthDate": "1999-09-09"},
            "request": {"method": "POST", "url": "Patient",
                "ifNoneExist": format!("_id={}", id(&patient))}}]});
        let (status, response) = status_json(member.post("", &bundle).await).await;
        assert_eq!(status, 200, "{kind}: {response}");
        let entry = &response["entry"][0];
        assert!(
            entry["response"]["status"]
                .as_str()
                .unwrap_or_default()
                .starts_with("200"),
            "{kind}: {response}"
        );
        assert_eq!(entry["resource"]["id"], patient["id"], "{kind}: {response}");
        assert_eq!(entry["resource"]["name"][0]["family"], "Known");
        let text = response.to_string();
        assert!(
            !text.contains("birthDate") && !text.contains("1970-01-02"),
            "{kind} shows a hidden field: {text}"
        );
    }
    let (_, all) = status_json(admin.get("Patient?_total=accurate").await).await;
    assert_eq!(all["total"], 1, "no Patient was created: {all}");
    // The field is stored: its absence above is redaction, not loss.
    let (_, stored) = status_json(admin.get(&format!("Patient/{}", id(&patient))).await).await;
    assert_eq!(stored["birthDate"], "1970-01-02", "{stored}");
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_then_put_needs_create_and_keeps_readonly_fields() {
    let app = TestApp::spawn().await;
    let project = app.project("hidden-recreate").await;
    let admin = &project.admin;
    let patient = admin
        .create(json!({"resourceType": "Patient", "active": true,
            "identifier": [{"system": "urn:mrn", "value": "original"}],
            "name": [{"family": "Before"}]}))
        .await;
    let path = format!("Patient/{}", id(&patient));
    let policy = |interaction: Value| {
        json!({"resourceType": "AccessPolicy", "resource": [{"resourceType": "Patient",
            "interaction": interaction, "readonlyFields": ["identifier", "active"]}]})
    };
    let no_create = member_with(
        &app,
        admin,
        &project.id,
        policy(json!(["read", "search", "update", "delete"])),
    )
    .await;
    let (status, body) = status_json(no_create.delete(&path).await).await;
    assert!(status == 200 || status == 204, "delete: {status} {body}");
    let replacement = json!({"resourceType": "Patient", "id": id(&patient), "active": false,
        "identifier": [{"system": "urn:mrn", "value": "replaced"}],
        "name": [{"family": "After"}]});
    let (status, body) = status_json(no_create.put(&path, &replacement).await).await;
    assert_eq!(status, 403, "put without create: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let (status, body) = status_json(admin.get(&path).await).await;
    assert_eq!(status, 410, "still deleted: {body}");

    let with_create = member_with(
        &app,
        admin,
        &project.id,
        policy(json!(["create", "read", "search", "update", "delete"])),
    )
    .await;
    let (status, body) = status_json(with_create.put(&path, &replacement).await).await;
    assert!(
        status == 200 || status == 201,
        "put with create: {status} {body}"
    );
    let (status, stored) = status_json(admin.get(&path).await).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["name"][0]["family"], "After", "{stored}");
    assert_eq!(stored["active"], true, "{stored}");
    assert_eq!(stored["identifier"], patient["identifier"], "{stored}");
}

#[tokio::test(flavor = "multi_thread")]
async fn write_responses_never_show_hidden_fields() {
    let app = TestApp::spawn().await;
    let project = app.project("hidden-writes").await;
    let member = member_with(
        &app,
        &project.admin,
        &project.id,
        json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Patient", "hiddenFields": ["birthDate"]}]}),
    )
    .await;
    let body =
        json!({"resourceType": "Patient", "name": [{"family": "W"}], "birthDate": "1980-03-04"});
    let check = |what: &str, status: u16, expected: u16, text: &str| {
        assert_eq!(status, expected, "{what}: {text}");
        assert!(
            !text.contains("birthDate") && !text.contains("1980-03-04"),
            "{what} shows a hidden field: {text}"
        );
    };
    for prefer in [None, Some("return=representation")] {
        let send = |method: Method, path: &str, content_type: &str, payload: String| {
            let mut request = member
                .fhir(method, path)
                .header("Content-Type", content_type)
                .body(payload);
            if let Some(prefer) = prefer {
                request = request.header("Prefer", prefer);
            }
            request.send()
        };
        let response = send(
            Method::POST,
            "Patient",
            "application/fhir+json",
            body.to_string(),
        )
        .await
        .unwrap();
        let (status, created) = status_json(response).await;
        check(
            &format!("create {prefer:?}"),
            status,
            201,
            &created.to_string(),
        );
        assert_eq!(created["name"][0]["family"], "W", "{created}");
        let path = format!("Patient/{}", id(&created));
        let mut update = body.clone();
        update["id"] = json!(id(&created));
        let response = send(
            Method::PUT,
            &path,
            "application/fhir+json",
            update.to_string(),
        )
        .await
        .unwrap();
        let (status, updated) = status_json(response).await;
        check(
            &format!("update {prefer:?}"),
            status,
            200,
            &updated.to_string(),
        );
        assert_eq!(updated["resourceType"], "Patient", "{updated}");
        let operations = json!([{"op": "add", "path": "/birthDate", "value": "1980-03-04"}]);
        let response = send(
            Method::PATCH,
            &path,
            "application/json-patch+json",
            operations.to_string(),
        )
        .await
        .unwrap();
        let (status, patched) = status_json(response).await;
        check(
            &format!("patch {prefer:?}"),
            status,
            200,
            &patched.to_string(),
        );
        assert_eq!(patched["resourceType"], "Patient", "{patched}");
    }

    // The same writes through a transaction Bundle (which may write each
    // resource only once: PUT one Patient, PATCH another).
    let put_target = member.create(json!({"resourceType": "Patient"})).await;
    let patch_target = member.create(json!({"resourceType": "Patient"})).await;
    let mut update = body.clone();
    update["id"] = json!(id(&put_target));
    let put_url = format!("Patient/{}", id(&put_target));
    let patch_url = format!("Patient/{}", id(&patch_target));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:2b1c9a4e-0f1d-4c55-9d37-6a1e8f0c7b21", "resource": body,
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": update, "request": {"method": "PUT", "url": put_url}},
        patch_entry(&patch_url, &json!([{"op": "add", "path": "/birthDate", "value": "1980-03-04"}]))
    ]});
    let (status, response) = status_json(member.post("", &bundle).await).await;
    check("transaction", status, 200, &response.to_string());
    let entries = response["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 3, "{response}");
    for entry in entries {
        assert_eq!(entry["resource"]["resourceType"], "Patient", "{response}");
    }
}

/// A choice element takes one form: a body with two is refused, and a
/// member cannot add a second form beside one its policy hides (the hidden
/// form protects the element, so nothing about it shows either).
#[tokio::test(flavor = "multi_thread")]
async fn a_hidden_choice_form_cannot_be_shadowed_by_another() {
    let app = TestApp::spawn().await;
    let project = app.project("choices").await;
    let admin = &project.admin;
    let (status, body) = status_json(
        admin
            .post(
                "Patient",
                &json!({"resourceType": "Patient", "deceasedBoolean": true, "deceasedDateTime": "2020-01-01"}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["issue"][0]["expression"][0], "Patient.deceased[x]",
        "{body}"
    );

    let patient = admin
        .create(json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}))
        .await;
    let reference = format!("Patient/{}", id(&patient));
    let member = member_with(
        &app,
        admin,
        &project.id,
        json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Patient", "hiddenFields": ["deceasedDateTime"]}]}),
    )
    .await;
    let (status, body) = status_json(
        member
            .patch(
                &reference,
                &json!([{"op": "add", "path": "/deceasedBoolean", "value": false},
                        {"op": "add", "path": "/gender", "value": "female"}]),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.get("deceasedBoolean").is_none() && body.get("deceasedDateTime").is_none(),
        "{body}"
    );
    let (_, stored) = status_json(admin.get(&reference).await).await;
    assert_eq!(stored["deceasedDateTime"], "2020-01-01", "{stored}");
    assert!(stored.get("deceasedBoolean").is_none(), "{stored}");
    assert_eq!(stored["gender"], "female", "the rest of the patch applied");
}
