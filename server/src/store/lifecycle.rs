//! SQL of the user lifecycle: single-use links and the mail outbox.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Executor, Query, Store, Tx};
use crate::error::Result;

/// What a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Invite,
    Reset,
    VerifyEmail,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Invite => "invite",
            RequestKind::Reset => "reset",
            RequestKind::VerifyEmail => "verify-email",
        }
    }

    fn parse(text: &str) -> Option<RequestKind> {
        [
            RequestKind::Invite,
            RequestKind::Reset,
            RequestKind::VerifyEmail,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }
}

/// One row of `user_security_request`.
#[derive(Debug, Clone)]
pub struct SecurityRequest {
    pub id: Uuid,
    pub user_project_id: Uuid,
    pub user_id: Uuid,
    pub project_id: Uuid,
    pub kind: RequestKind,
    pub secret_hash: String,
    pub email: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

/// A composed message as recorded in the outbox.
pub struct OutboxRow<'a> {
    pub id: Uuid,
    pub project_id: Uuid,
    pub recipient: &'a str,
    pub subject: &'a str,
    pub text_body: &'a str,
    pub html_body: &'a str,
}

impl Store {
    /// A link by its id. The id alone proves nothing; the caller compares the
    /// secret. Links are looked up before the tenant is known (the person
    /// following one is not signed in), as client ids are.
    pub async fn security_request(&self, id: Uuid) -> Result<Option<SecurityRequest>> {
        let mut q = Query::new(
            "SELECT id, user_project_id, user_id, project_id, kind, secret_hash, email, expires_at, used_at
             FROM user_security_request WHERE id = ",
        );
        q.bind(id);
        Ok(self.query(&q).await?.first().and_then(|row| {
            Some(SecurityRequest {
                id: row.get(0),
                user_project_id: row.get(1),
                user_id: row.get(2),
                project_id: row.get(3),
                kind: RequestKind::parse(row.get(4))?,
                secret_hash: row.get(5),
                email: row.get(6),
                expires_at: row.get(7),
                used_at: row.get(8),
            })
        }))
    }

    pub async fn record_outbox(&self, row: &OutboxRow<'_>) -> Result<()> {
        let mut q = Query::new(
            "INSERT INTO email_outbox (id, project_id, recipient, subject, text_body, html_body) VALUES (",
        );
        q.bind(row.id)
            .push(", ")
            .bind(row.project_id)
            .push(", ")
            .bind(row.recipient.to_string())
            .push(", ")
            .bind(row.subject.to_string())
            .push(", ")
            .bind(row.text_body.to_string())
            .push(", ")
            .bind(row.html_body.to_string())
            .push(")");
        self.query(&q).await?;
        Ok(())
    }

    /// Records how delivery of an outbox message ended.
    pub async fn outbox_result(
        &self,
        project_id: Uuid,
        id: Uuid,
        error: Option<String>,
    ) -> Result<()> {
        let mut q = Query::new("UPDATE email_outbox SET sent_at = CASE WHEN ");
        let error = q.placeholder(error);
        q.push(&format!(
            "{error}::text IS NULL THEN now() END, error = {error} WHERE project_id = "
        ))
        .bind(project_id)
        .push(" AND id = ")
        .bind(id);
        self.query(&q).await?;
        Ok(())
    }
}

impl Tx {
    pub async fn insert_security_request(&self, request: &SecurityRequest) -> Result<()> {
        let mut q = Query::new(
            "INSERT INTO user_security_request (id, user_project_id, user_id, project_id, kind, secret_hash, email, expires_at) VALUES (",
        );
        q.bind(request.id)
            .push(", ")
            .bind(request.user_project_id)
            .push(", ")
            .bind(request.user_id)
            .push(", ")
            .bind(request.project_id)
            .push(", ")
            .bind(request.kind.as_str().to_string())
            .push(", ")
            .bind(request.secret_hash.clone())
            .push(", ")
            .bind(request.email.clone())
            .push(", ")
            .bind(request.expires_at)
            .push(")");
        self.query(&q).await?;
        Ok(())
    }

    /// Marks a link used. False when it already was: of two requests racing
    /// with the same link, exactly one wins.
    pub async fn consume_security_request(&self, request: &SecurityRequest) -> Result<bool> {
        let mut q = Query::new(
            "UPDATE user_security_request SET used_at = now() WHERE used_at IS NULL AND user_project_id = ",
        );
        q.bind(request.user_project_id)
            .push(" AND id = ")
            .bind(request.id)
            .push(" RETURNING id");
        Ok(!self.query(&q).await?.is_empty())
    }

    /// Ends every open link of one kind for a user (a new reset link replaces
    /// the old ones; a used one makes the others pointless).
    pub async fn retire_security_requests(
        &self,
        user_project_id: Uuid,
        user_id: Uuid,
        kind: RequestKind,
    ) -> Result<()> {
        let mut q = Query::new(
            "UPDATE user_security_request SET used_at = now() WHERE used_at IS NULL AND user_project_id = ",
        );
        q.bind(user_project_id)
            .push(" AND user_id = ")
            .bind(user_id)
            .push(" AND kind = ")
            .bind(kind.as_str().to_string());
        self.query(&q).await?;
        Ok(())
    }
}
