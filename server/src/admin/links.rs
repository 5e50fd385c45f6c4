//! Single-use links: invitations and password resets (which set a password)
//! and email verification. The secret is random, stored as a digest, compared
//! in constant time, and a link works once, until it expires.

use access_policy::RowFilter;
use chrono::Utc;
use serde_json::json;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    audit::{self, Event},
    normalize_email, users, Found, UserScope,
};
use crate::{
    app::AppState,
    auth::secrets::{client_secret_matches, hash_client_secret, random_token},
    email::{compose, Email},
    error::{Error, Result},
    fhir::{self, parse_id},
    store::{
        lifecycle::{RequestKind, SecurityRequest},
        Tenant, Tx,
    },
};

/// Creates a link of `kind` for `user` (earlier open links of that kind stop
/// working) and returns its URL. `project_id` names the project the link is
/// sent for; `email` is the address a verification link confirms.
pub async fn create(
    state: &AppState,
    tx: &Tx,
    kind: RequestKind,
    user: &Found,
    project_id: Uuid,
    email: Option<String>,
) -> Result<String> {
    let lifecycle = &state.config.lifecycle;
    let lifetime = match kind {
        RequestKind::Invite => lifecycle.invite_link_lifetime,
        RequestKind::Reset => lifecycle.reset_link_lifetime,
        RequestKind::VerifyEmail => lifecycle.verify_link_lifetime,
    };
    let secret = random_token(32);
    let request = SecurityRequest {
        id: Uuid::new_v4(),
        user_project_id: user.version.project_id,
        user_id: user.version.id,
        project_id,
        kind,
        secret_hash: hash_client_secret(&secret),
        email,
        expires_at: Utc::now()
            + chrono::Duration::from_std(lifetime)
                .map_err(|e| Error::Internal(format!("link lifetime: {e}")))?,
        used_at: None,
    };
    tx.retire_security_requests(request.user_project_id, request.user_id, kind)
        .await?;
    tx.insert_security_request(&request).await?;
    let page = match kind {
        RequestKind::VerifyEmail => "verifyemail",
        RequestKind::Invite | RequestKind::Reset => "setpassword",
    };
    let app = lifecycle.app_base_url.as_deref().unwrap_or(&state.base_url);
    Ok(format!(
        "{app}{page}/{}/{secret}{}",
        request.id,
        project_query(user)
    ))
}

/// `?project=<id>` for a project-scoped user, whose sign-in names the
/// project (the console's sign-in page passes it on); nothing for others.
pub fn project_query(user: &Found) -> String {
    let project = user.version.project_id;
    if project.is_nil() {
        String::new()
    } else {
        format!("?project={project}")
    }
}

/// Checks a presented link. Unknown ids and wrong secrets get the same answer
/// after the same work.
async fn redeem(
    state: &AppState,
    id: &str,
    secret: &str,
    kinds: &[RequestKind],
) -> Result<SecurityRequest> {
    let invalid = || Error::BadRequest("This link is not valid; ask for a new one".into());
    let request = match parse_id(id) {
        Some(id) => state.store.security_request(id).await?,
        None => None,
    };
    if !client_secret_matches(secret, request.as_ref().map(|r| r.secret_hash.as_str())) {
        return Err(invalid());
    }
    let request = request
        .filter(|r| kinds.contains(&r.kind))
        .ok_or_else(invalid)?;
    if request.used_at.is_some() {
        return Err(Error::BadRequest(
            "This link has already been used; ask for a new one".into(),
        ));
    }
    if request.expires_at <= Utc::now() {
        return Err(Error::BadRequest(
            "This link has expired; ask for a new one".into(),
        ));
    }
    Ok(request)
}

/// Marks the link used inside `tx`; of two racing uses, one wins.
async fn consume(tx: &Tx, request: &SecurityRequest) -> Result<()> {
    if tx.consume_security_request(request).await? {
        Ok(())
    } else {
        Err(Error::BadRequest(
            "This link has already been used; ask for a new one".into(),
        ))
    }
}

/// `POST /auth/setpassword {id, secret, password}`: an invitation or reset
/// link sets the password, proves the email address and ends the user's
/// sessions.
pub async fn set_password(state: &AppState, id: &str, secret: &str, password: &str) -> Result<()> {
    users::check_new_password(password, "password")?;
    let request = redeem(
        state,
        id,
        secret,
        &[RequestKind::Invite, RequestKind::Reset],
    )
    .await?;
    fhir::atomically(state, async |tx| {
        consume(tx, &request).await?;
        let user_ref = format!("User/{}", request.user_id);
        let (user, _) = fhir::modify(
            state,
            tx,
            Tenant::Project(request.user_project_id),
            "User",
            request.user_id,
            &user_ref,
            |user| {
                user["emailVerified"] = json!(true);
                Ok(())
            },
        )
        .await?
        .ok_or_else(|| Error::BadRequest("This link's user no longer exists".into()))?;
        users::set_password(tx, &user, password, "password").await?;
        // Other links to set a password are void once one was used.
        for kind in [RequestKind::Invite, RequestKind::Reset] {
            tx.retire_security_requests(request.user_project_id, request.user_id, kind)
                .await?;
        }
        users::revoke_logins(state, tx, &user_ref, users::Sessions::All).await?;
        audit::record(
            state,
            tx,
            request.project_id,
            Event::PasswordReset,
            &user_ref,
            &user_ref,
        )
        .await
    })
    .await
}

/// `POST /auth/verifyemail {id, secret}`: confirms the address; for a pending
/// email change, the new address takes effect now.
pub async fn verify_email(state: &AppState, id: &str, secret: &str) -> Result<()> {
    let request = redeem(state, id, secret, &[RequestKind::VerifyEmail]).await?;
    fhir::atomically(state, async |tx| {
        consume(tx, &request).await?;
        let user_ref = format!("User/{}", request.user_id);
        let tenant = Tenant::Project(request.user_project_id);
        let (_, user) = fhir::modify(
            state,
            tx,
            tenant,
            "User",
            request.user_id,
            &user_ref,
            |user| {
                if let Some(email) = &request.email {
                    user["email"] = json!(email);
                }
                user["emailVerified"] = json!(true);
                Ok(())
            },
        )
        .await?
        .ok_or_else(|| Error::BadRequest("This link's user no longer exists".into()))?;
        if let Some(email) = &request.email {
            // The address may have been taken since the change was asked for.
            super::lock_identity(tx, UserScope::of(&user), email).await?;
            let holders = users::find_by_email(tx, UserScope::of(&user), email).await?;
            if holders.is_some_and(|h| h.version.id != request.user_id) {
                return Err(Error::Conflict(format!(
                    "{email} is already registered to another account"
                )));
            }
        }
        audit::record(
            state,
            tx,
            request.project_id,
            Event::EmailVerified,
            &user_ref,
            &user_ref,
        )
        .await
    })
    .await
}

/// What an anonymous request for mail (reset, resend verification) names.
pub struct MailRequest {
    pub email: String,
    pub project_id: Option<Uuid>,
}

impl MailRequest {
    /// The user it names: project-scoped when a project is given, else server-scoped.
    fn scope(&self) -> UserScope {
        self.project_id
            .map_or(UserScope::Server, UserScope::Project)
    }
}

/// Whether no account in the request's scope uses the address.
pub async fn email_available(state: &AppState, request: &MailRequest) -> Result<bool> {
    let tx = state.store.begin().await?;
    let taken = users::find_by_email(&tx, request.scope(), &request.email).await?;
    tx.commit().await?;
    Ok(taken.is_none())
}

/// `POST /auth/resetpassword` and resending verification: the work happens
/// after the response, so neither its content nor its timing tells whether
/// the email belongs to an account.
pub fn spawn_mail_request(
    state: actix_web::web::Data<AppState>,
    request: MailRequest,
    kind: RequestKind,
) {
    // Still the request's work: its log lines and statements carry its id.
    tokio::spawn(
        async move {
            if let Err(e) = mail_link(&state, &request, kind).await {
                tracing::error!(error = %e, kind = kind.as_str(), "could not send a link");
            }
        }
        .in_current_span(),
    );
}

async fn mail_link(state: &AppState, request: &MailRequest, kind: RequestKind) -> Result<()> {
    let email = normalize_email(&request.email);
    let prepared = fhir::atomically(state, async |tx| {
        let Some(user) = users::find_by_email(tx, request.scope(), &email).await? else {
            return Ok(None);
        };
        if kind == RequestKind::VerifyEmail && user.value["emailVerified"] == json!(true) {
            return Ok(None);
        }
        let project_id = request.project_id.unwrap_or(user.version.project_id);
        let link = create(state, tx, kind, &user, project_id, None).await?;
        Ok(Some((project_id, link)))
    })
    .await?;
    let Some((project_id, link)) = prepared else {
        return Ok(());
    };
    let project = project_name(state, project_id).await?;
    let message = match kind {
        RequestKind::VerifyEmail => verification_email(project_id, &project, &email, &link),
        _ => compose(
            project_id,
            &project,
            &email,
            format!("Reset your password for {project}"),
            &[
                format!("Someone asked to reset the password of your {project} account."),
                "Follow this link to choose a new password. It works once and expires soon; if you did not ask for it, ignore this message.".into(),
            ],
            Some(&link),
        ),
    };
    state.mailer.send(&state.store, &message).await?;
    Ok(())
}

/// The message that asks a user to confirm an address.
pub fn verification_email(project_id: Uuid, project: &str, email: &str, link: &str) -> Email {
    compose(
        project_id,
        project,
        email,
        format!("Confirm your email address for {project}"),
        &[format!(
            "Follow this link to confirm that {email} is your address for {project}."
        )],
        Some(link),
    )
}

/// A project's name for messages; the server's own users get "fhirgate".
pub async fn project_name(state: &AppState, project_id: Uuid) -> Result<String> {
    let stored = state
        .store
        .read(
            Tenant::Project(project_id),
            "Project",
            project_id,
            &RowFilter::All,
        )
        .await?;
    Ok(match stored.and_then(|v| fhir::parse_stored(&v).ok()) {
        Some(project) => project["name"].as_str().unwrap_or("fhirgate").to_string(),
        None => "fhirgate".to_string(),
    })
}
