//! Read replicas with read-your-writes (issue 30, item 7), against a real
//! streaming replica (`pg_basebackup -R` of a private cluster): a caller
//! reads its own writes at once even while the replica's replay is paused,
//! another caller's reads do go to the (lagging) replica, the position a
//! write answers in `X-Fhirgate-Lsn` carries the guarantee to a caller that
//! did not write here, and with the replica down reads fall back to the primary.

#[allow(dead_code)] // Uses part of the shared harness.
mod common;
#[allow(dead_code)]
mod postgres_cluster;
#[allow(dead_code)]
mod traffic;

use std::time::{Duration, Instant};

use common::{client_token, start_logging, Admin, Logs, Running};
use postgres_cluster::Cluster;
use serde_json::Value;
use traffic::{send, Reply};

const DATABASE: &str = "fhirgate";

struct Setup {
    /// Runs as long as the test.
    _primary: Cluster,
    replica: Cluster,
    running: Running,
    /// The super admin's client: the writer.
    writer: String,
    /// A second client of the same project: a caller that did not write.
    other: String,
    http: reqwest::Client,
}

async fn setup() -> Setup {
    let primary = Cluster::start();
    // The database exists before the replica is copied, so that the
    // replica has it from its first moment.
    primary
        .connect("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
        .await
        .unwrap();
    let replica = Cluster::replica_of(&primary);
    let admin = Admin::generated();
    let read_url = replica.url(DATABASE);
    let mut env = admin.env().to_vec();
    env.extend([
        ("FHIRGATE_READ_DATABASE_URL", read_url.as_str()),
        ("FHIRGATE_LOG_LEVEL", "info"),
    ]);
    let running = start_logging(&primary.url(DATABASE), Logs::Read, &env);
    let http = traffic::client(Duration::from_secs(30));
    let writer = client_token(&running, &admin.client_id, &admin.client_secret).await;
    let project = send(http.get(running.url("auth/me")).bearer_auth(&writer)).await;
    let project_id = project.body["project"]["id"]
        .as_str()
        .expect("project")
        .to_string();
    let client = send(
        http.post(running.url(&format!("admin/projects/{project_id}/client")))
            .bearer_auth(&writer)
            .json(&serde_json::json!({ "name": "reader" })),
    )
    .await;
    assert_eq!(client.status, Some(201), "{client:?}");
    let other = client_token(
        &running,
        client.body["id"].as_str().unwrap(),
        client.body["secret"].as_str().unwrap(),
    )
    .await;
    let setup = Setup {
        _primary: primary,
        replica,
        running,
        writer,
        other,
        http,
    };
    wait_for_health(&setup, true).await;
    setup
}

impl Setup {
    fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .get(self.running.url(&format!("fhir/R4/{path}")))
            .bearer_auth(token)
    }

    async fn create(&self, mark: &str) -> Reply {
        let reply = send(
            self.http
                .post(self.running.url("fhir/R4/Patient"))
                .bearer_auth(&self.writer)
                .json(&traffic::patient(mark)),
        )
        .await;
        assert_eq!(reply.status, Some(201), "{reply:?}");
        reply
    }

    async fn replay(&self, run: bool) {
        let sql = if run {
            "SELECT pg_wal_replay_resume()"
        } else {
            "SELECT pg_wal_replay_pause()"
        };
        self.replica
            .connect("postgres")
            .await
            .batch_execute(sql)
            .await
            .unwrap();
    }
}

/// Waits until `/healthcheck` reports the replica as `up`.
async fn wait_for_health(setup: &Setup, up: bool) {
    let start = Instant::now();
    loop {
        let health = send(setup.http.get(setup.running.url("healthcheck"))).await;
        if health.body["replica"] == up {
            assert_eq!(health.status, Some(200), "{health:?}");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica never reported {up}: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every read form of one created Patient, as `token` sees it: read, vread,
/// search by its mark, instance history.
async fn reads(setup: &Setup, token: &str, created: &Reply, lsn: Option<&str>) -> Vec<Reply> {
    let id = created.body["id"].as_str().unwrap();
    let vid = created.body["meta"]["versionId"].as_str().unwrap();
    let mark = created.body["identifier"][0]["value"].as_str().unwrap();
    let with_lsn = |request: reqwest::RequestBuilder| match lsn {
        Some(lsn) => request.header("X-Fhirgate-Lsn", lsn),
        None => request,
    };
    let paths = [
        format!("Patient/{id}"),
        format!("Patient/{id}/_history/{vid}"),
        format!("Patient?identifier={}|{mark}", traffic::MARK_SYSTEM),
        format!("Patient/{id}/_history"),
    ];
    let mut replies = Vec::new();
    for path in paths {
        replies.push(send(with_lsn(setup.get(&path, token))).await);
    }
    replies
}

/// Whether each read found the Patient.
fn found(replies: &[Reply]) -> Vec<bool> {
    replies
        .iter()
        .map(|r| match r.body["resourceType"].as_str() {
            Some("Patient") => r.status == Some(200),
            Some("Bundle") => r.body["entry"].as_array().is_some_and(|e| !e.is_empty()),
            _ => false,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_reads_its_writes_from_a_lagging_replica_and_others_read_the_replica() {
    let setup = setup().await;
    setup.replay(false).await;

    for _ in 0..5 {
        let mark = uuid::Uuid::new_v4().to_string();
        let created = setup.create(&mark).await;
        // The writer sees its write at once, in every read form.
        let own = reads(&setup, &setup.writer, &created, None).await;
        assert_eq!(found(&own), [true; 4], "{own:#?}");
        // Another caller reads the paused replica, which has not got it.
        let others = reads(&setup, &setup.other, &created, None).await;
        assert_eq!(found(&others), [false; 4], "{others:#?}");
        assert_eq!(others[0].status, Some(404));
    }

    // The position a write answers carries the guarantee to any caller
    // (another instance, say), even while replay stays paused.
    let created = setup.create(&uuid::Uuid::new_v4().to_string()).await;
    let lsn = lsn_of(&setup, &created).await;
    let told = reads(&setup, &setup.other, &created, Some(&lsn)).await;
    assert_eq!(found(&told), [true; 4], "{told:#?}");

    // Once replay runs again, the other caller finds everything on the replica.
    setup.replay(true).await;
    let start = Instant::now();
    while found(&reads(&setup, &setup.other, &created, None).await) != [true; 4] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "replica never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Updates `created` and returns the `X-Fhirgate-Lsn` the update answers.
async fn lsn_of(setup: &Setup, created: &Reply) -> String {
    let mut resource: Value = created.body.clone();
    resource["gender"] = "female".into();
    let id = resource["id"].as_str().unwrap().to_string();
    let response = setup
        .http
        .put(setup.running.url(&format!("fhir/R4/Patient/{id}")))
        .bearer_auth(&setup.writer)
        .json(&resource)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response
        .headers()
        .get("x-fhirgate-lsn")
        .expect("a write answers X-Fhirgate-Lsn")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_fall_back_to_the_primary_while_the_replica_is_down() {
    let setup = setup().await;
    let before = setup.create(&uuid::Uuid::new_v4().to_string()).await;
    setup.replica.stop();
    // Reads keep working, for a caller that wrote and one that did not,
    // before and after the server notices.
    for _ in 0..2 {
        let created = setup.create(&uuid::Uuid::new_v4().to_string()).await;
        for token in [&setup.writer, &setup.other] {
            for reply in [&before, &created] {
                let replies = reads(&setup, token, reply, None).await;
                assert_eq!(found(&replies), [true; 4], "{replies:#?}");
            }
        }
        wait_for_health(&setup, false).await;
    }
    // Back: the other caller reads the replica again (it lags while paused).
    setup.replica.boot();
    wait_for_health(&setup, true).await;
    setup.replay(false).await;
    let created = setup.create(&uuid::Uuid::new_v4().to_string()).await;
    let others = reads(&setup, &setup.other, &created, None).await;
    assert_eq!(found(&others), [false; 4], "{others:#?}");
}
