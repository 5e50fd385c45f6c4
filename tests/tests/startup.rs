//! Start-up: database creation, migrations applied once even when instances
//! race, the super-admin bootstrap, and the health check.

use fhirgate_server::{prepare_database, store::connect::MIGRATIONS, Config};
use fhirgate_tests::{connect, count, postgres_server, status_json, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_reports_the_database() {
    let app = TestApp::spawn().await;
    let (status, body) =
        status_json(app.http.get(app.url("healthcheck")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert_eq!(body["postgres"], true);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    // Take the database away: the server stays up and says so.
    let admin = connect(&format!("{}/postgres", postgres_server())).await;
    admin
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", app.database))
        .await
        .unwrap();
    let (status, body) =
        status_json(app.http.get(app.url("healthcheck")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert_eq!(
        (body["ok"].as_bool(), body["postgres"].as_bool()),
        (Some(false), Some(false))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn instances_starting_together_migrate_and_bootstrap_once() {
    let database = format!("fhirgate_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{database}", postgres_server());
    let validator = fhir_model::Validator::new().unwrap();
    let config = Config::for_database(&url);
    let starts = (0..4).map(|_| prepare_database(&config, &validator));
    for result in futures_util::future::join_all(starts).await {
        result.expect("every instance starts");
    }
    let db = connect(&url).await;
    let applied: i64 = db
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied as usize, MIGRATIONS.len());
    let names: Vec<String> = db
        .query("SELECT name FROM schema_migrations ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        names,
        MIGRATIONS
            .iter()
            .map(|m| m.name.to_string())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM resource WHERE resource_type = 'Project'",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM resource WHERE resource_type = 'User'",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM resource WHERE resource_type = 'ClientApplication'",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM resource WHERE resource_type = 'ProjectMembership'",
            &[]
        )
        .await,
        2
    );
    assert_eq!(count(&db, "SELECT count(*) FROM signing_key", &[]).await, 1);
    // The password is an Argon2id hash outside the User resource.
    let hash: String = db
        .query_one(
            "SELECT hash FROM resource_secret WHERE kind = 'password'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(hash.starts_with("$argon2id$"));
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM resource WHERE content LIKE '%argon2%'",
            &[]
        )
        .await,
        0
    );

    // A later start changes nothing.
    prepare_database(&config, &validator).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM resource", &[]).await, 6);
    drop(db);
    let admin = connect(&format!("{}/postgres", postgres_server())).await;
    admin
        .batch_execute(&format!("DROP DATABASE \"{database}\" WITH (FORCE)"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn super_admin_resources_are_linked() {
    let app = TestApp::spawn().await;
    let root = app.super_admin().await;
    let (_, projects) = status_json(root.get("Project/_history").await).await;
    let project = &projects["entry"][0]["resource"];
    assert_eq!(project["superAdmin"], true);
    let project_ref = format!("Project/{}", project["id"].as_str().unwrap());
    let (_, memberships) = status_json(root.get("ProjectMembership/_history").await).await;
    let memberships = memberships["entry"].as_array().unwrap();
    assert_eq!(memberships.len(), 2);
    for entry in memberships {
        assert_eq!(
            entry["resource"]["project"]["reference"],
            serde_json::json!(project_ref)
        );
        assert_eq!(entry["resource"]["admin"], true);
    }
    let user_membership = memberships
        .iter()
        .find(|m| {
            m["resource"]["user"]["reference"]
                .as_str()
                .unwrap()
                .starts_with("User/")
        })
        .unwrap();
    let profile = user_membership["resource"]["profile"]["reference"]
        .as_str()
        .unwrap();
    assert!(profile.starts_with("Practitioner/"));
    let (status, practitioner) = status_json(root.get(profile).await).await;
    assert_eq!(status, 200);
    assert_eq!(practitioner["telecom"][0]["value"], "admin@example.com");
    let user_path = user_membership["resource"]["user"]["reference"]
        .as_str()
        .unwrap();
    let body = root.get(user_path).await.text().await.unwrap();
    assert!(
        body.contains("admin@example.com")
            && !body.contains("argon2")
            && !body.contains("password")
    );
}
