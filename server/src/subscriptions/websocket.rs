//! websocket notifications in the protocol `@medplum/core`'s
//! `SubscriptionManager` speaks: the client gets a binding token from
//! `Subscription/{id}/$get-ws-binding-token`, connects to
//! `/ws/subscriptions-r4`, sends `{"type": "bind-with-token", "payload":
//! {"token": …}}`, and receives a handshake, heartbeats and
//! event-notification Bundles (type `history`, a SubscriptionStatus first,
//! the resource second); `{"type": "ping"}` is answered `{"type": "pong"}`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::web;
use actix_ws::Message;
use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    fhir,
    store::subscriptions::Delivery,
};

/// Where clients connect, as `@medplum/core` derives it from the base URL.
pub const PATH: &str = "/ws/subscriptions-r4";
/// How long a binding token may be used to bind.
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// How often bound clients get a heartbeat Bundle.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The claims of a binding token. Without an access token's `scope` and
/// `profile` it is no access token, and an access token is no binding token.
#[derive(Debug, Serialize, Deserialize)]
struct BindingClaims {
    iss: String,
    sub: String,
    iat: i64,
    exp: i64,
    subscription_id: String,
    login_id: String,
    project_id: String,
}

/// A socket's number and where its outgoing messages go.
type Socket = (u64, mpsc::UnboundedSender<String>);

/// The sockets of this instance, by the subscriptions they are bound to.
#[derive(Default)]
pub struct Sockets {
    bound: Mutex<HashMap<Uuid, Vec<Socket>>>,
    next_socket: AtomicU64,
}

impl Sockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Vec<Socket>>> {
        self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The subscriptions a client here is bound to.
    pub fn bound(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    /// Sends `message` to every client bound to `subscription`; false if
    /// none is.
    pub fn send(&self, subscription: Uuid, message: &str) -> bool {
        let mut bound = self.lock();
        let Some(sockets) = bound.get_mut(&subscription) else {
            return false;
        };
        sockets.retain(|(_, socket)| socket.send(message.to_string()).is_ok());
        let sent = !sockets.is_empty();
        if !sent {
            bound.remove(&subscription);
        }
        sent
    }

    fn bind(&self, subscription: Uuid, socket: u64, sender: &mpsc::UnboundedSender<String>) {
        let mut bound = self.lock();
        let sockets = bound.entry(subscription).or_default();
        if !sockets.iter().any(|(id, _)| *id == socket) {
            sockets.push((socket, sender.clone()));
        }
    }

    fn unbind(&self, subscription: Option<Uuid>, socket: u64) {
        let mut bound = self.lock();
        bound.retain(|id, sockets| {
            if subscription.is_none_or(|s| s == *id) {
                sockets.retain(|(s, _)| *s != socket);
            }
            !sockets.is_empty()
        });
    }
}

/// `Subscription/{id}/$get-ws-binding-token`: Parameters with a token that
/// binds a websocket to a Subscription the caller may read.
pub async fn binding_token(state: &AppState, caller: &Caller, id: &str) -> Result<Value> {
    let version = fhir::read(&state.store, caller, "Subscription", id).await?;
    let subscription = fhir::parse_stored(&version)?;
    if subscription["channel"]["type"] != "websocket" {
        return Err(Error::BadRequest(format!(
            "Subscription/{} has channel.type '{}'; a binding token is for websocket subscriptions",
            version.id,
            subscription["channel"]["type"].as_str().unwrap_or_default()
        )));
    }
    let now = Utc::now();
    let expires = now + TOKEN_LIFETIME;
    let token = state.keys.sign(&BindingClaims {
        iss: state.base_url.clone(),
        sub: caller.profile.clone(),
        iat: now.timestamp(),
        exp: expires.timestamp(),
        subscription_id: version.id.to_string(),
        login_id: caller.login_id.to_string(),
        project_id: version.project_id.to_string(),
    })?;
    let websocket_url = format!(
        "{}{}",
        state
            .base_url
            .replacen("http", "ws", 1)
            .trim_end_matches('/'),
        PATH
    );
    Ok(json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "token", "valueString": token},
            {"name": "expiration", "valueDateTime": fhir::resource::instant(&expires)},
            {"name": "subscription", "valueString": version.id.to_string()},
            {"name": "websocket-url", "valueUrl": websocket_url}
        ]
    }))
}

/// Serves one connected client until it goes away.
pub async fn serve(
    state: web::Data<AppState>,
    mut session: actix_ws::Session,
    mut messages: actix_ws::MessageStream,
) {
    let sockets = &state.subscriptions.sockets;
    let socket = sockets.next_socket.fetch_add(1, Ordering::Relaxed);
    let (sender, mut outgoing) = mpsc::unbounded_channel::<String>();
    let mut bound: Vec<Uuid> = Vec::new();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        let sent = tokio::select! {
            message = messages.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    match respond(&state, socket, &sender, &mut bound, &text).await {
                        Some(reply) => session.text(reply).await,
                        None => Ok(()),
                    }
                }
                Some(Ok(Message::Ping(bytes))) => session.pong(&bytes).await,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => Ok(()),
            },
            Some(notification) = outgoing.recv() => session.text(notification).await,
            _ = heartbeat.tick(), if !bound.is_empty() => {
                session.text(heartbeat_bundle(&bound).to_string()).await
            }
        };
        if sent.is_err() {
            break;
        }
    }
    sockets.unbind(None, socket);
    let _ = session.close(None).await;
}

/// The reply to one client message, if it gets one.
async fn respond(
    state: &AppState,
    socket: u64,
    sender: &mpsc::UnboundedSender<String>,
    bound: &mut Vec<Uuid>,
    text: &str,
) -> Option<String> {
    let message: Value = match serde_json::from_str(text) {
        Ok(message) => message,
        Err(_) => return Some(outcome("The message is not JSON")),
    };
    let token = message["payload"]["token"].as_str();
    match (message["type"].as_str(), token) {
        (Some("ping"), _) => Some(json!({"type": "pong"}).to_string()),
        (Some("bind-with-token"), Some(token)) => match verify(state, token).await {
            Ok(subscription) => {
                state.subscriptions.sockets.bind(subscription, socket, sender);
                if !bound.contains(&subscription) {
                    bound.push(subscription);
                }
                // What waited for a client goes out now.
                state.subscriptions.wake();
                Some(status_bundle("handshake", &[subscription]).to_string())
            }
            Err(e) => Some(outcome(&e.to_string())),
        },
        (Some("unbind-from-token"), Some(token)) => match verify(state, token).await {
            Ok(subscription) => {
                state.subscriptions.sockets.unbind(Some(subscription), socket);
                bound.retain(|s| *s != subscription);
                None
            }
            Err(e) => Some(outcome(&e.to_string())),
        },
        _ => Some(outcome(
            "Expected {\"type\": \"bind-with-token\" or \"unbind-from-token\", \"payload\": {\"token\": …}} or {\"type\": \"ping\"}",
        )),
    }
}

/// The subscription a binding token names, if the token is valid and the
/// subscription still exists.
async fn verify(state: &AppState, token: &str) -> Result<Uuid> {
    let invalid = || Error::Unauthorized("Token failed to validate. Check token expiry.".into());
    let claims: BindingClaims = state
        .keys
        .verify(token, &state.base_url)
        .await
        .map_err(|_| invalid())?;
    let subscription = Uuid::parse_str(&claims.subscription_id).map_err(|_| invalid())?;
    let project = Uuid::parse_str(&claims.project_id).map_err(|_| invalid())?;
    crate::auth::read_live(
        state,
        crate::store::Tenant::Project(project),
        "Subscription",
        subscription,
    )
    .await?
    .ok_or_else(|| Error::NotFound(format!("Subscription/{subscription} no longer exists")))?;
    Ok(subscription)
}

fn outcome(message: &str) -> String {
    fhir_model::operation_outcome(&[fhir_model::Issue::error(
        fhir_model::IssueCode::Invalid,
        message.to_string(),
    )])
    .to_string()
}

/// A Bundle of one SubscriptionStatus of `kind` per subscription.
fn status_bundle(kind: &str, subscriptions: &[Uuid]) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": Uuid::new_v4().to_string(),
        "type": "history",
        "timestamp": fhir::resource::instant(&Utc::now()),
        "entry": subscriptions.iter().map(|id| json!({
            "resource": {
                "resourceType": "SubscriptionStatus",
                "id": Uuid::new_v4().to_string(),
                "status": "active",
                "type": kind,
                "subscription": {"reference": format!("Subscription/{id}")}
            }
        })).collect::<Vec<_>>()
    })
}

fn heartbeat_bundle(subscriptions: &[Uuid]) -> Value {
    status_bundle("heartbeat", subscriptions)
}

/// The event-notification Bundle of one delivery: its SubscriptionStatus,
/// then the resource (`content`, as the author may read it).
pub fn notification(base_url: &str, delivery: &Delivery, content: &str) -> String {
    let resource: Value = serde_json::from_str(content).unwrap_or(Value::Null);
    let reference = format!("{}/{}", delivery.resource_type, delivery.resource_id);
    let timestamp = fhir::resource::instant(&Utc::now());
    json!({
        "resourceType": "Bundle",
        "id": Uuid::new_v4().to_string(),
        "type": "history",
        "timestamp": timestamp,
        "entry": [
            {"resource": {
                "resourceType": "SubscriptionStatus",
                "id": Uuid::new_v4().to_string(),
                "status": "active",
                "type": "event-notification",
                "subscription": {"reference": format!("Subscription/{}", delivery.subscription_id)},
                "notificationEvent": [{
                    "eventNumber": delivery.seq.to_string(),
                    "timestamp": timestamp,
                    "focus": {"reference": reference}
                }]
            }},
            {"resource": resource, "fullUrl": format!("{base_url}fhir/R4/{reference}")}
        ]
    })
    .to_string()
}
