//! Subscriptions end to end: a real HTTP receiver and a real websocket
//! client against the real server. Matching, headers and signatures,
//! FHIRPath conditions, retries, rolled-back writes, two instances on one
//! database, the author's access policy, and private endpoints.

use std::time::Duration;

use fhirgate_tests::{
    receiver::{Received, Receiver},
    status_json, Session, TestApp,
};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

const INTERACTION: &str =
    "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction";
const SECRET: &str = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret";
const MAX_ATTEMPTS: &str = "https://medplum.com/fhir/StructureDefinition/subscription-max-attempts";
const FHIRPATH: &str = "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression";

/// Notifications arrive within this (they take milliseconds; the margin is
/// for a loaded machine).
const WITHIN: Duration = Duration::from_secs(20);
/// How long to wait to show that nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(1500);

async fn app() -> TestApp {
    TestApp::spawn_with(|config| config.subscription_allow_private = true).await
}

fn id(resource: &Value) -> &str {
    resource["id"].as_str().expect("id")
}

/// A rest-hook Subscription to `receiver` with `extension`s.
fn rest_hook(criteria: &str, receiver: &Receiver, extension: Value) -> Value {
    json!({
        "resourceType": "Subscription", "status": "requested", "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": format!("{}hook", receiver.url),
            "payload": "application/fhir+json", "header": ["Authorization: Bearer receiver-token"]},
        "extension": extension
    })
}

fn observation(code: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]}})
}

fn hmac_hex(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The AuditEvents of a subscription's attempts, oldest first, once there
/// are `count` (they commit just after the receiver has answered).
async fn attempts(session: &Session, subscription: &Value, count: usize) -> Vec<Value> {
    let path = format!(
        "AuditEvent?entity=Subscription/{}&_sort=_lastUpdated",
        id(subscription)
    );
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let (status, bundle) = status_json(session.get(&path).await).await;
        assert_eq!(status, 200, "{bundle}");
        let audits: Vec<Value> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .collect();
        if audits.len() >= count || std::time::Instant::now() > deadline {
            assert_eq!(audits.len(), count, "{audits:#?}");
            return audits;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Subscription once its status is `error` (as it is after `WITHIN`).
async fn in_error(session: &Session, subscription: &Value) -> Value {
    let path = format!("Subscription/{}", id(subscription));
    let deadline = std::time::Instant::now() + WITHIN;
    loop {
        let (_, stored) = status_json(session.get(&path).await).await;
        if stored["status"] == "error" || std::time::Instant::now() > deadline {
            return stored;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn interactions(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.header("X-Medplum-Interaction").unwrap_or("?").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_hooks_notify_matching_writes_with_headers_and_signature() {
    let app = app().await;
    let project = app.project("subscriptions-rest-hook").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    let subscription = admin
        .create(rest_hook(
            "Observation?code=http://loinc.org|8867-4",
            &receiver,
            json!([
                {"url": INTERACTION, "valueCode": "create"},
                {"url": INTERACTION, "valueCode": "update"},
                {"url": INTERACTION, "valueCode": "delete"},
                {"url": SECRET, "valueString": "shared-secret"}
            ]),
        ))
        .await;
    assert_eq!(subscription["status"], "active", "{subscription}");

    admin.create(observation("1234-5")).await;
    let heart_rate = admin.create(observation("8867-4")).await;
    let mut changed = heart_rate.clone();
    changed["status"] = json!("amended");
    let (status, _) = status_json(
        admin
            .put(&format!("Observation/{}", id(&heart_rate)), &changed)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        admin
            .delete(&format!("Observation/{}", id(&heart_rate)))
            .await
            .status(),
        200
    );

    receiver.wait_for(3, WITHIN).await;
    let received = receiver.settle(QUIET).await;
    assert_eq!(
        interactions(&received),
        ["create", "update", "delete"],
        "in the order of the writes, the other code never"
    );
    for notification in &received {
        assert_eq!(notification.path, "/hook");
        assert_eq!(
            notification.header("X-Medplum-Subscription"),
            Some(id(&subscription))
        );
        assert_eq!(
            notification.header("Authorization"),
            Some("Bearer receiver-token")
        );
        assert!(notification
            .header("Content-Type")
            .unwrap()
            .starts_with("application/fhir+json"));
        assert_eq!(
            notification.header("X-Signature"),
            Some(hmac_hex("shared-secret", &notification.body).as_str()),
            "the receiver verifies the signature"
        );
        assert_eq!(notification.json()["id"], heart_rate["id"]);
    }
    assert_eq!(received[1].json()["status"], "amended");
    assert_eq!(received[0].header("X-Medplum-Deleted-Resource"), None);
    assert_eq!(
        received[2].header("X-Medplum-Deleted-Resource"),
        Some(format!("Observation/{}", id(&heart_rate)).as_str())
    );

    // Each attempt is an AuditEvent of the subscription's project.
    let audits = attempts(admin, &subscription, 3).await;
    assert!(audits
        .iter()
        .all(|a| a["outcome"] == "0" && a["outcomeDesc"] == "HTTP 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn default_interactions_empty_payload_and_criteria_errors() {
    let app = app().await;
    let project = app.project("subscriptions-defaults").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    let mut without_payload = rest_hook("Patient?family=smith", &receiver, json!([]));
    without_payload["channel"]
        .as_object_mut()
        .unwrap()
        .remove("payload");
    admin.create(without_payload).await;

    let smith = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Smith"}]}))
        .await;
    admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Jones"}]}))
        .await;
    assert_eq!(
        admin
            .delete(&format!("Patient/{}", id(&smith)))
            .await
            .status(),
        200
    );
    receiver.wait_for(1, WITHIN).await;
    let received = receiver.settle(QUIET).await;
    assert_eq!(
        interactions(&received),
        ["create"],
        "create and update by default, not delete; Jones never"
    );
    assert_eq!(received[0].body, "", "no payload: no body");
    assert_eq!(received[0].header("Content-Type"), None);

    let broken = admin
        .create(rest_hook(
            "Patient?no-such-parameter=1",
            &receiver,
            json!([]),
        ))
        .await;
    assert_eq!(broken["status"], "error");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("no-such-parameter"),
        "{broken}"
    );
    let misspelt = admin
        .create(rest_hook(
            "Patient",
            &receiver,
            json!([{"url": FHIRPATH, "valueString": "%current.actve = true"}]),
        ))
        .await;
    assert_eq!(misspelt["status"], "error");
    assert!(
        misspelt["error"]
            .as_str()
            .unwrap()
            .contains("Patient has no element 'actve'"),
        "{misspelt}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fhirpath_criteria_compare_previous_and_current() {
    let app = app().await;
    let project = app.project("subscriptions-fhirpath").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    admin
        .create(rest_hook(
            "Patient",
            &receiver,
            json!([{"url": FHIRPATH, "valueString": "%previous.active = false and %current.active = true"}]),
        ))
        .await;
    let mut patient = admin
        .create(json!({"resourceType": "Patient", "active": false}))
        .await;
    patient["name"] = json!([{"family": "Still inactive"}]);
    let (status, patient) = status_json(
        admin
            .put(&format!("Patient/{}", id(&patient)), &patient)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    let mut activated = patient.clone();
    activated["active"] = json!(true);
    let (status, _) = status_json(
        admin
            .put(&format!("Patient/{}", id(&patient)), &activated)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    receiver.wait_for(1, WITHIN).await;
    let received = receiver.settle(QUIET).await;
    assert_eq!(received.len(), 1, "only the activation: {received:#?}");
    assert_eq!(received[0].json()["active"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_retry_with_backoff_then_the_status_says_why() {
    let app = app().await;
    let project = app.project("subscriptions-retry").await;
    let admin = &project.admin;

    let flaky = Receiver::failing_first(2).await;
    let subscription = admin.create(rest_hook("Patient", &flaky, json!([]))).await;
    admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Retry"}]}))
        .await;
    let received = flaky.wait_for(3, WITHIN).await;
    let gaps: Vec<Duration> = received
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    assert!(
        gaps[0] >= Duration::from_millis(900) && gaps[1] >= Duration::from_millis(1900),
        "exponential backoff: {gaps:?}"
    );
    assert!(received.iter().all(|r| r.body == received[0].body));
    let audits = attempts(admin, &subscription, 3).await;
    let outcomes: Vec<&str> = audits
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["4", "4", "0"], "{audits:#?}");
    let (_, subscription) = status_json(
        admin
            .get(&format!("Subscription/{}", id(&subscription)))
            .await,
    )
    .await;
    assert_eq!(subscription["status"], "active");

    let dead = Receiver::failing_first(usize::MAX).await;
    let doomed = admin
        .create(rest_hook(
            "Observation",
            &dead,
            json!([{"url": MAX_ATTEMPTS, "valueInteger": 2}]),
        ))
        .await;
    admin.create(observation("1")).await;
    dead.wait_for(2, WITHIN).await;
    let doomed = in_error(admin, &doomed).await;
    assert_eq!(doomed["status"], "error", "{doomed}");
    assert!(
        doomed["error"].as_str().unwrap().contains("failed 2 times")
            && doomed["error"].as_str().unwrap().contains("500"),
        "{doomed}"
    );
    admin.create(observation("2")).await;
    assert_eq!(
        dead.settle(QUIET).await.len(),
        2,
        "an errored subscription notifies no more"
    );
}

/// While a receiver takes its time, the worker sending to it holds no
/// transaction open (nor the row locks of one): it holds a lease on the
/// subscription's queue instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_receiver_holds_no_transaction_open() {
    let app = app().await;
    let project = app.project("subscriptions-slow-receiver").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/hook", listener.local_addr().unwrap());
    project
        .admin
        .create(json!({"resourceType": "Subscription", "status": "active", "reason": "test",
            "criteria": "Observation",
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}}))
        .await;
    project.admin.create(observation("8867-4")).await;
    // The POST arrives and is never answered.
    let (held, _) = tokio::time::timeout(WITHIN, listener.accept())
        .await
        .expect("the notification arrives")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let db = app.db().await;
    let open: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1
               AND state LIKE 'idle in transaction%' AND now() - state_change > interval '500 ms'",
            &[&app.database],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "a transaction stayed open while the POST waited");
    let leases: i64 = db
        .query_one(
            "SELECT count(*) FROM subscription_lease WHERE until > now()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leases, 1, "the queue is leased while its POST waits");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_write_notifies_nothing() {
    let app = app().await;
    let project = app.project("subscriptions-rollback").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    admin
        .create(rest_hook("Patient", &receiver, json!([])))
        .await;
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Never"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "not a date"},
         "request": {"method": "POST", "url": "Patient"}}
    ]});
    let (status, _) = status_json(admin.post("", &failing).await).await;
    assert_eq!(status, 400);
    admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "Kept"}]}))
        .await;
    receiver.wait_for(1, WITHIN).await;
    let received = receiver.settle(QUIET).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json()["name"][0]["family"], "Kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_deliver_each_notification_once_in_order() {
    let app = app().await;
    let base_url = app.base_url.clone();
    let second = app
        .another_instance(|config| {
            config.subscription_allow_private = true;
            config.base_url = Some(base_url);
        })
        .await;
    let project = app.project("subscriptions-two-instances").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    admin
        .create(rest_hook("Patient", &receiver, json!([])))
        .await;
    // Writes through both instances.
    let through_second = Session {
        base_url: second.local_url.clone(),
        ..admin.clone()
    };
    let mut ids = Vec::new();
    for n in 0..40 {
        let via = if n % 2 == 0 { admin } else { &through_second };
        let patient = via
            .create(json!({"resourceType": "Patient", "name": [{"family": format!("P{n}")}]}))
            .await;
        ids.push(id(&patient).to_string());
    }
    receiver.wait_for(40, WITHIN).await;
    let received = receiver.settle(QUIET).await;
    let delivered: Vec<String> = received
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered, ids, "each once, in the order of the writes");
    drop(second);
}

/// 120 notifications queued at once take three batches of one lease (renewed
/// between them): each goes out once, in the queue's order.
#[tokio::test(flavor = "multi_thread")]
async fn a_queue_longer_than_a_batch_goes_out_once_in_order() {
    let app = app().await;
    let project = app.project("subscriptions-long-queue").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    let subscription = admin
        .create(rest_hook("Patient", &receiver, json!([])))
        .await;
    let entries: Vec<Value> = (0..120)
        .map(|n| {
            json!({"resource": {"resourceType": "Patient", "name": [{"family": format!("P{n}")}]},
                   "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    let (status, _) = status_json(
        admin
            .post(
                "",
                &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 200);
    receiver.wait_for(120, WITHIN).await;
    let delivered: Vec<String> = receiver
        .settle(QUIET)
        .await
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    let subscription_id: uuid::Uuid = id(&subscription).parse().unwrap();
    let queued: Vec<String> = app
        .db()
        .await
        .query(
            "SELECT resource_id::text FROM subscription_delivery WHERE subscription_id = $1
             AND outcome = 'delivered' ORDER BY seq",
            &[&subscription_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(queued.len(), 120, "every notification recorded delivered");
    assert_eq!(delivered, queued, "each once, in the queue's order");
}

/// A member whose policy lets it read only final Observations, without
/// their value.
async fn restricted_member(app: &TestApp, project: &fhirgate_tests::TestProject) -> Session {
    let policy = project
        .admin
        .create(json!({"resourceType": "AccessPolicy", "resource": [
            {"resourceType": "Observation", "criteria": "Observation?status=final",
             "hiddenFields": ["valueString"]},
            {"resourceType": "Subscription"}
        ]}))
        .await;
    let root = app.super_admin().await;
    app.client_with(
        &root,
        &project.id,
        json!({"accessPolicy": {"reference": format!("AccessPolicy/{}", id(&policy))}}),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_author_receives_only_what_its_policy_lets_it_read() {
    let app = app().await;
    let project = app.project("subscriptions-policy").await;
    let admin = &project.admin;
    let member = restricted_member(&app, &project).await;
    let receiver = Receiver::start().await;
    member
        .create(rest_hook("Observation", &receiver, json!([])))
        .await;
    let mut preliminary = observation("1");
    preliminary["status"] = json!("preliminary");
    preliminary["valueString"] = json!("secret value");
    admin.create(preliminary).await;
    let mut visible = observation("2");
    visible["valueString"] = json!("secret value");
    let visible = admin.create(visible).await;
    receiver.wait_for(1, WITHIN).await;
    let received = receiver.settle(QUIET).await;
    assert_eq!(
        received.len(),
        1,
        "never the preliminary one: {received:#?}"
    );
    let body = received[0].json();
    assert_eq!(body["id"], visible["id"]);
    assert!(
        body.get("valueString").is_none(),
        "hidden field removed: {body}"
    );

    // Its membership ends: nothing more reaches it.
    let db = app.db().await;
    let membership: uuid::Uuid = db
        .query_one(
            "SELECT id FROM resource WHERE resource_type = 'ProjectMembership' AND content::jsonb -> 'profile' ->> 'reference' = $1",
            &[&format!(
                "ClientApplication/{}",
                member.credentials.client_id
            )],
        )
        .await
        .unwrap()
        .get(0);
    let root = app.super_admin().await;
    let (status, mut stored) =
        status_json(root.get(&format!("ProjectMembership/{membership}")).await).await;
    assert_eq!(status, 200);
    stored["active"] = json!(false);
    let (status, _) = status_json(
        root.put(&format!("ProjectMembership/{membership}"), &stored)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    admin.create(observation("3")).await;
    assert_eq!(
        receiver.settle(QUIET).await.len(),
        1,
        "a revoked membership stops delivery"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn private_endpoints_are_refused_without_the_variable() {
    let app = TestApp::spawn().await;
    let project = app.project("subscriptions-private").await;
    let admin = &project.admin;
    let receiver = Receiver::start().await;
    let subscription = admin
        .create(rest_hook(
            "Patient",
            &receiver,
            json!([{"url": MAX_ATTEMPTS, "valueInteger": 1}]),
        ))
        .await;
    admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "x"}]}))
        .await;
    let stored = in_error(admin, &subscription).await;
    assert_eq!(stored["status"], "error", "{stored}");
    assert!(
        stored["error"]
            .as_str()
            .unwrap()
            .contains("FHIRGATE_SUBSCRIPTION_ALLOW_PRIVATE"),
        "{stored}"
    );
    assert!(
        receiver.received().is_empty(),
        "the receiver was never called"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_clients_bind_with_a_token_and_receive_notifications() {
    let app = app().await;
    let project = app.project("subscriptions-websocket").await;
    let admin = &project.admin;
    // As `MedplumClient.subscribeToCriteria` does: the client creates the
    // Subscription, gets a binding token, binds.
    let subscription = admin
        .create(json!({"resourceType": "Subscription", "status": "active",
            "reason": "WebSocket subscription", "criteria": "Patient?family=ws",
            "channel": {"type": "websocket"}}))
        .await;
    let (status, parameters) = status_json(
        admin
            .fhir(
                Method::GET,
                &format!("Subscription/{}/$get-ws-binding-token", id(&subscription)),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{parameters}");
    let parameter = |name: &str| {
        parameters["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {parameters}"))
    };
    let token = parameter("token")["valueString"]
        .as_str()
        .unwrap()
        .to_string();
    let url = parameter("websocket-url")["valueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("ws://") && url.ends_with("/ws/subscriptions-r4"),
        "{url}"
    );
    // The token binds; it is no access token.
    let misuse = admin
        .http
        .get(admin.url("fhir/R4/Patient"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(misuse.status(), 401);

    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    socket_send(
        &mut socket,
        json!({"type": "bind-with-token", "payload": {"token": token}}),
    )
    .await;
    let handshake = next_json(&mut socket).await;
    assert_eq!(handshake["type"], "history");
    assert_eq!(handshake["entry"][0]["resource"]["type"], "handshake");
    socket_send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));

    admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "other"}]}))
        .await;
    let patient = admin
        .create(json!({"resourceType": "Patient", "name": [{"family": "ws"}]}))
        .await;
    let notification = loop {
        let bundle = next_json(&mut socket).await;
        if bundle["entry"][0]["resource"]["type"] == "event-notification" {
            break bundle;
        }
    };
    let status = &notification["entry"][0]["resource"];
    assert_eq!(status["resourceType"], "SubscriptionStatus");
    assert_eq!(
        status["subscription"]["reference"],
        format!("Subscription/{}", id(&subscription))
    );
    assert_eq!(
        status["notificationEvent"][0]["focus"]["reference"],
        format!("Patient/{}", id(&patient))
    );
    assert_eq!(notification["entry"][1]["resource"]["id"], patient["id"]);
    socket.close(None).await.unwrap();
}

/// The next text message, as JSON.
async fn next_json<S>(socket: &mut S) -> Value
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    loop {
        let message = tokio::time::timeout(WITHIN, socket.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("message");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

async fn socket_send<S>(socket: &mut S, message: Value)
where
    S: futures_util::Sink<tokio_tungstenite::tungstenite::Message> + Unpin,
    S::Error: std::fmt::Debug,
{
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            message.to_string().into(),
        ))
        .await
        .unwrap();
}

const LIFECYCLE: &str = "https://fhirgate.dev/fhir/CodeSystem/lifecycle";

fn subtypes(audit: &Value) -> Vec<String> {
    audit["subtype"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["system"], LIFECYCLE);
            c["code"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_events_are_subscribable_by_their_codes() {
    let app = app().await;
    let project = app.project("subscriptions-lifecycle").await;
    let admin = &project.admin;
    let enlisted = Receiver::start().await;
    let revoked = Receiver::start().await;
    admin
        .create(rest_hook(
            &format!("AuditEvent?subtype={LIFECYCLE}|patient-enlisted"),
            &enlisted,
            json!([]),
        ))
        .await;
    admin
        .create(rest_hook(
            &format!("AuditEvent?subtype={LIFECYCLE}|token-revoked"),
            &revoked,
            json!([]),
        ))
        .await;

    // A Practitioner's invitation is no enlistment; a Patient's is.
    for (resource_type, email) in [
        ("Practitioner", "doctor@example.com"),
        ("Patient", "patient@example.com"),
    ] {
        let (status, membership) = status_json(
            admin
                .post_json(
                    &format!("admin/projects/{}/invite", project.id),
                    &json!({"resourceType": resource_type, "firstName": "Ada",
                        "lastName": "Lovelace", "email": email, "sendEmail": false}),
                )
                .await,
        )
        .await;
        assert_eq!(status, 200, "{membership}");
    }
    enlisted.wait_for(1, WITHIN).await;
    let received = enlisted.settle(QUIET).await;
    assert_eq!(received.len(), 1, "{received:#?}");
    let audit = received[0].json();
    assert_eq!(subtypes(&audit), ["membership-added", "patient-enlisted"]);
    let entities: Vec<&str> = audit["entity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"]["reference"].as_str().unwrap())
        .collect();
    assert!(
        entities[0].starts_with("ProjectMembership/") && entities[1].starts_with("Patient/"),
        "{audit}"
    );

    // Signing out revokes the member's Login.
    let response = app
        .http
        .post(app.url("oauth2/logout"))
        .bearer_auth(&project.member.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    revoked.wait_for(1, WITHIN).await;
    let audit = revoked.settle(QUIET).await[0].json();
    assert_eq!(subtypes(&audit), ["token-revoked"]);
    assert!(audit["entity"][0]["what"]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Login/"));
}
