//! Outgoing mail. Every message is recorded in the outbox table first; with
//! `FHIRGATE_SMTP_URL` set it is then sent over SMTP (lettre), without it it
//! is written to the log, so a developer can follow links locally.

use std::time::Duration;

use lettre::{
    message::{Mailbox, MultiPart},
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use uuid::Uuid;

use crate::{
    config::Lifecycle,
    error::{Error, Result},
    store::{lifecycle::OutboxRow, Store},
};

/// How long one SMTP exchange may take before the send counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A message to one recipient, on behalf of one project.
pub struct Email {
    pub project_id: Uuid,
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// What became of a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An SMTP server accepted it.
    Sent,
    /// No SMTP server is configured: it is in the outbox and the log.
    Outbox,
    /// The SMTP server could not be reached or refused it.
    Failed(String),
}

pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

impl Mailer {
    pub fn new(config: &Lifecycle) -> Result<Mailer> {
        let from = config.email_from.parse().map_err(|e| {
            Error::Config(format!(
                "FHIRGATE_EMAIL_FROM '{}' is not a mailbox ({e}); use 'Name <address@example.com>'",
                config.email_from
            ))
        })?;
        let transport = config
            .smtp_url
            .as_deref()
            .map(|url| {
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map(|builder| builder.timeout(Some(SMTP_TIMEOUT)).build())
                    .map_err(|e| {
                        Error::Config(format!(
                            "FHIRGATE_SMTP_URL is not valid ({e}); expected smtp://host:port or smtps://user:password@host:465"
                        ))
                    })
            })
            .transpose()?;
        Ok(Mailer { transport, from })
    }

    /// Records the message, then delivers it. Only a database failure is an
    /// error; a failed delivery is reported as [`Delivery::Failed`].
    pub async fn send(&self, store: &Store, email: &Email) -> Result<Delivery> {
        let id = Uuid::new_v4();
        store
            .record_outbox(&OutboxRow {
                id,
                project_id: email.project_id,
                recipient: &email.to,
                subject: &email.subject,
                text_body: &email.text,
                html_body: &email.html,
            })
            .await?;
        let Some(transport) = &self.transport else {
            tracing::warn!(
                to = %email.to,
                subject = %email.subject,
                "FHIRGATE_SMTP_URL is not set; the message is in the outbox table:\n{}",
                email.text
            );
            return Ok(Delivery::Outbox);
        };
        let delivery = match self.message(email) {
            Ok(message) => match transport.send(message).await {
                Ok(_) => Delivery::Sent,
                Err(e) => Delivery::Failed(e.to_string()),
            },
            Err(e) => Delivery::Failed(e),
        };
        crate::metrics::job("mail", !matches!(delivery, Delivery::Failed(_)));
        let error = match &delivery {
            Delivery::Failed(reason) => {
                tracing::warn!(to = %email.to, %reason, "sending mail failed");
                Some(reason.clone())
            }
            _ => None,
        };
        store.outbox_result(email.project_id, id, error).await?;
        Ok(delivery)
    }

    fn message(&self, email: &Email) -> std::result::Result<Message, String> {
        let to: Address = email.to.parse().map_err(|e| format!("recipient: {e}"))?;
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(&email.subject)
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| e.to_string())
    }
}

/// Whether `text` is a plain email address (`local@domain`), as a mail
/// server would accept it.
pub fn is_email_address(text: &str) -> bool {
    text.parse::<Address>().is_ok() && text.contains('.')
}

/// A message body in both forms: `paragraphs`, then the link on its own
/// line, then a signature naming the project.
pub fn compose(
    project_id: Uuid,
    project_name: &str,
    to: &str,
    subject: String,
    paragraphs: &[String],
    link: Option<&str>,
) -> Email {
    let signature = format!("— {project_name}, via fhirgate");
    let mut text: Vec<String> = paragraphs.to_vec();
    let mut html: Vec<String> = paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>", escape_html(p)))
        .collect();
    if let Some(link) = link {
        text.push(link.to_string());
        let link = escape_html(link);
        html.push(format!("<p><a href=\"{link}\">{link}</a></p>"));
    }
    text.push(signature.clone());
    html.push(format!("<p>{}</p>", escape_html(&signature)));
    Email {
        project_id,
        to: to.to_string(),
        html: format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{}</title></head><body>{}</body></html>",
            escape_html(&subject),
            html.join("")
        ),
        subject,
        text: text.join("\n\n") + "\n",
    }
}

fn escape_html(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_parts_name_the_project_and_carry_the_link() {
        let email = compose(
            Uuid::nil(),
            "Clinic <A&B>",
            "a@example.com",
            "Welcome".into(),
            &["You were invited.".into()],
            Some("https://app.example/setpassword/1/abc"),
        );
        assert!(email.text.contains("Clinic <A&B>"));
        assert!(email.text.contains("https://app.example/setpassword/1/abc"));
        assert!(email.html.contains("Clinic &lt;A&amp;B&gt;"));
        assert!(email
            .html
            .contains("<a href=\"https://app.example/setpassword/1/abc\">"));
    }

    #[test]
    fn email_addresses() {
        assert!(is_email_address("alice@example.com"));
        assert!(!is_email_address("alice"));
        assert!(!is_email_address("alice@@example.com"));
        assert!(!is_email_address("al ice@example.com"));
    }
}
