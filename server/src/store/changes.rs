//! Committed changes that cached sessions depend on. They arrive twice: from
//! this instance's own [`super::Tx::commit`] at once (so a revocation works on
//! the next request here), and from every instance through PostgreSQL's
//! `NOTIFY` on [`CHANNEL`], sent by the trigger of
//! `migrations/0007_session_changes.sql` when the writing transaction commits.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Config as PgConfig, NoTls};
use uuid::Uuid;

/// The notification channel of the trigger.
pub const CHANNEL: &str = "fhirgate_sessions";

/// `application_name` of the listening connection (visible in `pg_stat_activity`).
pub const LISTENER_NAME: &str = "fhirgate change listener";

/// The resource types a session is built from: their writes notify.
const SESSION_TYPES: [&str; 7] = [
    "Login",
    "ProjectMembership",
    "Project",
    "User",
    "AccessPolicy",
    "ClientApplication",
    "Bot",
];

/// The payload `migrations/0040_signing_key_changes.sql` announces.
const SIGNING_KEYS_PAYLOAD: &str = "SigningKey";

/// What a committed write may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// One Login (signed in, refreshed, revoked).
    Login(Uuid),
    /// The signing keys (another instance rotated).
    SigningKeys,
    /// Anything else sessions depend on (membership, user, project, policy,
    /// client), or changes may have been missed.
    Everything,
}

impl Change {
    /// The change a write of this resource makes, if sessions depend on it.
    pub fn of(resource_type: &str, id: Uuid) -> Option<Change> {
        match resource_type {
            "Login" => Some(Change::Login(id)),
            t if SESSION_TYPES.contains(&t) => Some(Change::Everything),
            _ => None,
        }
    }

    /// The change a notification's payload (`Type/id`, or `*`) announces.
    fn of_payload(payload: &str) -> Change {
        if payload == SIGNING_KEYS_PAYLOAD {
            return Change::SigningKeys;
        }
        payload
            .split_once('/')
            .and_then(|(kind, id)| Change::of(kind, Uuid::parse_str(id).ok()?))
            .unwrap_or(Change::Everything)
    }
}

/// Whoever keeps state derived from sessions.
pub trait ChangeObserver: Send + Sync {
    fn changed(&self, change: Change);
    /// Whether other instances' changes are being heard. While they are not,
    /// nothing derived from the database may be remembered.
    fn hearing(&self, hearing: bool);
}

/// Listens on [`CHANNEL`] on a connection of its own until the observer is
/// gone, reconnecting after a second whenever the connection fails.
pub fn spawn_listener(config: PgConfig, observer: Weak<dyn ChangeObserver>) {
    tokio::spawn(async move {
        loop {
            let reason = listen(&config, &observer).await;
            let Some(current) = observer.upgrade() else {
                return;
            };
            current.hearing(false);
            drop(current);
            tracing::warn!(%reason, "not hearing session changes; cached sessions are off until the listener reconnects");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

/// One listening connection; returns why it ended.
async fn listen(config: &PgConfig, observer: &Weak<dyn ChangeObserver>) -> String {
    listen_on(
        config,
        CHANNEL,
        LISTENER_NAME,
        // Whatever changed before LISTEN took effect was not heard.
        || {
            observer
                .upgrade()
                .map(|current| current.hearing(true))
                .is_some()
        },
        |payload| match observer.upgrade() {
            Some(current) => {
                current.changed(Change::of_payload(payload));
                true
            }
            None => false,
        },
    )
    .await
}

/// Listens on `channel` on a connection of its own (`application_name`
/// `name`): `listening` once LISTEN took effect, then `heard` with each
/// notification's payload, until either returns false (the listener's owner
/// is gone) or the connection fails. Returns why it ended.
pub(super) async fn listen_on(
    config: &PgConfig,
    channel: &str,
    name: &str,
    listening: impl FnOnce() -> bool,
    mut heard: impl FnMut(&str) -> bool,
) -> String {
    let mut config = config.clone();
    config.application_name(name);
    let (client, mut connection) = match config.connect(NoTls).await {
        Ok(pair) => pair,
        Err(e) => return format!("cannot connect: {e}"),
    };
    // Notifications come out of the connection's own stream, which must be
    // polled for any statement on `client` to complete.
    let (notifications, mut received) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let driver = tokio::spawn(async move {
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if notifications.send(n.payload().to_string()).is_err() {
                        return "listener stopped".to_string();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_string()
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {channel}")).await {
        driver.abort();
        return format!("LISTEN failed: {e}");
    }
    if !listening() {
        return "server stopped".into();
    }
    while let Some(payload) = received.recv().await {
        if !heard(&payload) {
            return "server stopped".into();
        }
    }
    drop(client);
    driver
        .await
        .unwrap_or_else(|e| format!("listener task failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        let id = Uuid::new_v4();
        assert_eq!(
            Change::of_payload(&format!("Login/{id}")),
            Change::Login(id)
        );
        assert_eq!(
            Change::of_payload(&format!("AccessPolicy/{id}")),
            Change::Everything
        );
        assert_eq!(Change::of_payload("*"), Change::Everything);
        assert_eq!(Change::of_payload("SigningKey"), Change::SigningKeys);
        assert_eq!(Change::of_payload("Login/not-a-uuid"), Change::Everything);
        assert_eq!(Change::of("Patient", id), None);
    }
}
