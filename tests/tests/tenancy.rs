//! Tenant isolation and the built-in rules for administrative resources.

use fhirgate_tests::{assert_outcome, status_json, TestApp};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn projects_cannot_see_or_touch_each_others_resources() {
    let app = TestApp::spawn().await;
    let a = app.project("A").await;
    let b = app.project("B").await;
    let patient = a
        .member
        .create(json!({"resourceType": "Patient", "active": true}))
        .await;
    let id = patient["id"].as_str().unwrap();
    let vid = patient["meta"]["versionId"].as_str().unwrap();
    let path = format!("Patient/{id}");

    for intruder in [&b.member, &b.admin] {
        assert_outcome(intruder.get(&path).await, 404, "not found").await;
        assert_outcome(
            intruder.get(&format!("{path}/_history/{vid}")).await,
            404,
            "not found",
        )
        .await;
        assert_outcome(
            intruder.get(&format!("{path}/_history")).await,
            404,
            "not found",
        )
        .await;
        assert_outcome(intruder.delete(&path).await, 404, "not found").await;
        assert_outcome(
            intruder
                .patch(
                    &path,
                    &json!([{"op": "add", "path": "/active", "value": false}]),
                )
                .await,
            404,
            "not found",
        )
        .await;
        // An update cannot reach it either, and cannot create a twin.
        assert_outcome(intruder.put(&path, &patient).await, 405, "does not exist").await;
        for history in ["Patient/_history", "_history"] {
            let (_, bundle) = status_json(intruder.get(history).await).await;
            assert!(
                !bundle.to_string().contains(id),
                "{history} leaked project A's patient"
            );
        }
    }
    // Project A still sees its unchanged resource.
    let (status, same) = status_json(a.member.get(&path).await).await;
    assert_eq!((status, &same), (200, &patient));

    // Rows carry the project, and the query filter is what separates them.
    let db = app.db().await;
    let row = db
        .query_one(
            "SELECT project_id::text FROM resource WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), a.id);

    // The super admin crosses projects.
    let root = app.super_admin().await;
    assert_eq!(root.get(&path).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_resources_follow_roles() {
    let app = TestApp::spawn().await;
    let project = app.project("roles").await;
    let membership = json!({
        "resourceType": "ProjectMembership",
        "project": {"reference": format!("Project/{}", project.id)},
        "user": {"reference": "ClientApplication/00000000-0000-4000-8000-000000000000"},
        "profile": {"reference": "ClientApplication/00000000-0000-4000-8000-000000000000"},
        "admin": true
    });
    // Members cannot make themselves admins, or see who is in the project.
    assert_outcome(
        project.member.post("ProjectMembership", &membership).await,
        403,
        "ProjectMembership",
    )
    .await;
    assert_outcome(
        project.member.get("ProjectMembership/_history").await,
        403,
        "history",
    )
    .await;
    assert_outcome(
        project.member.get(&format!("Project/{}", project.id)).await,
        403,
        "Project",
    )
    .await;
    // Project admins manage memberships but not projects, logins or keys.
    assert_eq!(
        project
            .admin
            .post("ProjectMembership", &membership)
            .await
            .status(),
        201
    );
    assert_eq!(
        project
            .admin
            .get(&format!("Project/{}", project.id))
            .await
            .status(),
        200
    );
    assert_outcome(
        project
            .admin
            .post(
                "Project",
                &json!({"resourceType": "Project", "name": "mine"}),
            )
            .await,
        403,
        "create on Project",
    )
    .await;
    assert_outcome(project.admin.get("Login/_history").await, 403, "Login").await;
    // A membership must point at the project it is stored in.
    let mut foreign = membership.clone();
    foreign["project"]["reference"] = json!(format!("Project/{}", uuid::Uuid::new_v4()));
    let outcome = assert_outcome(
        project.admin.post("ProjectMembership", &foreign).await,
        400,
        "must be",
    )
    .await;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "ProjectMembership.project"
    );
    // System history hides what the caller may not read.
    let (_, bundle) = status_json(project.member.get("_history?_count=100").await).await;
    assert!(
        !bundle.to_string().contains("\"ProjectMembership\""),
        "member saw memberships: {bundle}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_secrets_are_never_returned_or_stored_in_clear() {
    let app = TestApp::spawn().await;
    let project = app.project("secrets").await;
    let secret = fhirgate_tests::random_secret();
    let response = project
        .admin
        .fhir(Method::POST, "ClientApplication")
        .json(&json!({"resourceType": "ClientApplication", "name": "app", "secret": secret}))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(&secret) && !text.contains("secret"),
        "{text}"
    );
    let client: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = client["id"].as_str().unwrap();
    for path in [
        format!("ClientApplication/{id}"),
        format!("ClientApplication/{id}/_history"),
        "_history".into(),
    ] {
        let body = project.admin.get(&path).await.text().await.unwrap();
        assert!(!body.contains(&secret), "{path} returned the secret");
    }
    let db = app.db().await;
    let leaks: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM resource WHERE content LIKE '%' || $1 || '%')
                  + (SELECT count(*) FROM resource_history WHERE content LIKE '%' || $1 || '%')",
            &[&secret],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        leaks, 0,
        "the secret must not be stored in resource content"
    );
    let hash: String = db
        .query_one(
            "SELECT hash FROM resource_secret WHERE resource_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(hash.starts_with("sha256:") && !hash.contains(&secret));

    // Short secrets are refused.
    let outcome = assert_outcome(
        project
            .admin
            .post(
                "ClientApplication",
                &json!({"resourceType": "ClientApplication", "secret": "short"}),
            )
            .await,
        400,
        "at least 32",
    )
    .await;
    assert_eq!(
        outcome["issue"][0]["expression"][0],
        "ClientApplication.secret"
    );
}
