//! Signing in: password checks with lockout, the Login resource that records
//! a sign-in, choosing a membership, and the authorization code that the
//! client redeems at the token endpoint.

use access_policy::scopes::{Scope, ScopeSet};
use access_policy::RowFilter;
use actix_web::web;
use chrono::{Duration as TimeDelta, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    client::{find_client, Client},
    mfa::{self, Enrolment, SecondFactor},
    password,
    secrets::{hash_client_secret, random_token},
};
use crate::{
    admin::audit,
    app::AppState,
    error::{Error, Result},
    fhir::{self, resource::Stamp},
    store::{
        identity::{LockoutPolicy, NewSecret, SecretKind},
        Tenant, Tx, Version,
    },
};

/// Longest lockout, however many failures.
const MAX_LOCKOUT_SECONDS: f64 = 24.0 * 3600.0;
/// How long a Login may wait for its membership to be chosen.
const PENDING_LOGIN_MINUTES: i64 = 10;
const INVALID_CREDENTIALS: &str = "Email or password is invalid";

/// What a sign-in records on its Login, as the client sent it.
#[derive(Debug, Default, Clone)]
pub struct LoginContext {
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    /// The authorize request's redirect_uri, which the token request must repeat.
    pub redirect_uri: Option<String>,
    pub remember: bool,
    pub remote_address: Option<String>,
    pub user_agent: Option<String>,
}

/// What a client sends to start a sign-in (`POST /auth/login`, the sign-in page).
#[derive(Debug, Default, Clone)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
    pub project_id: Option<String>,
    pub client_id: Option<String>,
    pub scope: String,
    pub context: LoginContext,
}

/// The checked parts of a sign-in that every way of signing in shares.
#[derive(Debug, Clone)]
pub struct LoginParams {
    pub client: Option<Client>,
    /// The granted scope.
    pub scope: String,
    /// `password`, `external`, … (Login.authMethod).
    pub auth_method: &'static str,
    pub context: LoginContext,
    /// The client signs people in to any of their projects (the console's),
    /// not only to its own.
    pub any_project: bool,
}

/// A membership a user can choose.
#[derive(Debug, Clone)]
pub struct Membership {
    pub id: Uuid,
    pub project_id: Uuid,
    pub content: Value,
}

/// The result of a sign-in: a code, or a choice of memberships first.
#[derive(Debug)]
pub enum LoginOutcome {
    Code {
        login_id: Uuid,
        code: String,
    },
    Choose {
        login_id: Uuid,
        memberships: Vec<Membership>,
    },
    /// The password was right; a second factor comes next
    /// (`/auth/mfa/verify`), or enrolment first when `enrolment` is given
    /// (`/auth/mfa/login-enroll`).
    SecondFactor {
        login_id: Uuid,
        enrolment: Option<Enrolment>,
    },
}

impl LoginOutcome {
    /// Medplum's `/auth/login` response shape.
    pub fn to_json(&self, projects: &[(Uuid, String)]) -> Value {
        match self {
            LoginOutcome::Code { login_id, code } => json!({"login": login_id, "code": code}),
            LoginOutcome::SecondFactor {
                login_id,
                enrolment: None,
            } => json!({"login": login_id, "mfaRequired": true}),
            LoginOutcome::SecondFactor {
                login_id,
                enrolment: Some(enrolment),
            } => json!({
                "login": login_id,
                "mfaEnrollRequired": true,
                "enrollUri": enrolment.uri,
                "enrollQrCode": enrolment.qr_code,
            }),
            LoginOutcome::Choose {
                login_id,
                memberships,
            } => json!({
                "login": login_id,
                "memberships": memberships.iter().map(|m| {
                    let name = projects.iter().find(|(id, _)| *id == m.project_id).map(|(_, n)| n.clone());
                    json!({
                        "id": m.id,
                        "project": {"reference": format!("Project/{}", m.project_id), "display": name},
                        "profile": m.content["profile"],
                    })
                }).collect::<Vec<_>>()
            }),
        }
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::BadRequest(message.into())
}

impl LoginRequest {
    /// Checks the client, PKCE and scope of the request. `/auth/login` and
    /// `/auth/newuser` answer with the code itself, not through a redirect,
    /// so, as in Medplum, they may go without a challenge; one that is given
    /// is checked, and its verifier is then required at the token endpoint.
    /// (`/oauth2/authorize` requires PKCE itself, unless the client opts out.)
    pub async fn params(&self, state: &AppState, auth_method: &'static str) -> Result<LoginParams> {
        let client = match &self.client_id {
            Some(id) if !id.is_empty() => Some(
                find_client(state, id)
                    .await?
                    .ok_or_else(|| bad("Client not found or not active"))?,
            ),
            _ => None,
        };
        let context = &self.context;
        if context.code_challenge.is_some() || context.code_challenge_method.is_some() {
            check_pkce(
                client.as_ref(),
                context.code_challenge.as_deref(),
                context.code_challenge_method.as_deref(),
            )?;
        }
        if let (Some(uri), Some(client)) = (&context.redirect_uri, &client) {
            if !client.allows_redirect(uri) {
                return Err(bad("redirect_uri is not registered for this client"));
            }
        }
        let scope = grant_scope(&self.scope, client.as_ref())?;
        let any_project = client
            .as_ref()
            .is_some_and(|c| state.signs_in_to_any_project(c));
        Ok(LoginParams {
            any_project,
            client,
            scope,
            auth_method,
            context: context.clone(),
        })
    }
}

/// PKCE (RFC 7636) is required, with S256, unless the client sets
/// `pkceOptional` (which also permits `plain`).
pub fn check_pkce(
    client: Option<&Client>,
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<()> {
    let optional = client.is_some_and(Client::pkce_optional);
    match (challenge.filter(|c| !c.is_empty()), method) {
        (None, None) if optional => Ok(()),
        (None, _) => Err(bad(
            "codeChallenge (PKCE, RFC 7636) is required: send an S256 challenge of a random verifier",
        )),
        (Some(c), _) if !(43..=128).contains(&c.len()) => Err(bad(
            "codeChallenge must be 43 to 128 characters (base64url of the verifier's SHA-256)",
        )),
        (Some(_), Some("S256")) => Ok(()),
        (Some(_), Some("plain")) if optional => Ok(()),
        (Some(_), Some("plain")) => Err(bad(
            "codeChallengeMethod 'plain' is refused; use S256",
        )),
        (Some(_), _) => Err(bad("codeChallengeMethod must be S256")),
    }
}

/// Parses the requested scope and keeps what the client may have.
pub fn grant_scope(requested: &str, client: Option<&Client>) -> Result<String> {
    let requested = ScopeSet::parse(requested).map_err(|e| bad(e.to_string()))?;
    if requested.is_empty() {
        return Err(bad("scope is required, e.g. 'openid'"));
    }
    let granted = match client.and_then(Client::allowed_scope) {
        Some(allowed) => requested.intersect(&allowed),
        None => requested,
    };
    if granted.is_empty() {
        return Err(bad(
            "None of the requested scopes is allowed for this client",
        ));
    }
    Ok(granted.to_string())
}

/// `POST /auth/login` and the sign-in page: checks the password (with
/// lockout) and starts a Login.
pub async fn password_login(
    state: &web::Data<AppState>,
    request: &LoginRequest,
) -> Result<LoginOutcome> {
    let email = request.email.trim();
    if email.is_empty() || !email.contains('@') {
        return Err(bad("Invalid email"));
    }
    if request.password.is_empty() {
        return Err(bad("Invalid password"));
    }
    let params = request.params(state, "password").await?;
    let project_id = match (&request.project_id, &params.client) {
        (Some(p), _) if !p.is_empty() => {
            Some(fhir::parse_id(p).ok_or_else(|| bad("projectId is not a valid id"))?)
        }
        (_, Some(client)) if !params.any_project => Some(client.project_id),
        _ => None,
    };
    if let (Some(p), Some(client)) = (project_id, &params.client) {
        if client.project_id != p && !params.any_project {
            return Err(bad("The client does not belong to this project"));
        }
    }
    let key = lockout_key(project_id, email);
    if let Some(until) = state.store.locked_until(&key).await? {
        crate::metrics::login("locked");
        return Err(locked(until));
    }
    let user = find_user(state, email, project_id).await?;
    // The same statements whether or not the email is known: an unknown one
    // looks up the nil id's password and verifies against a dummy hash.
    let stored = state
        .store
        .secret_hash(
            "User",
            user.as_ref().map_or(Uuid::nil(), |u| u.id),
            "password",
        )
        .await?;
    let verified = password::verify(&request.password, stored).await?;
    let user = match user {
        Some(user) if verified.ok => user,
        known => {
            let locked_until = count_failure(state, &key).await?;
            if let Some(user) = known {
                // Recorded after the answer, so that a known email's failure
                // takes as long as an unknown one's.
                let state = state.clone();
                let events = match locked_until {
                    Some(_) => vec![audit::Event::LoginFailed, audit::Event::LoginLocked],
                    None => vec![audit::Event::LoginFailed],
                };
                actix_web::rt::spawn(async move {
                    if let Err(e) = record_failed_login(&state, &user, project_id, &events).await {
                        tracing::warn!(user = %user.id, "could not record a failed sign-in: {e}");
                    }
                });
            }
            return Err(failure_answer(locked_until, INVALID_CREDENTIALS));
        }
    };
    if let Some(rehash) = verified.rehash {
        let tx = state.store.begin().await?;
        tx.set_secret(user.project_id, "User", user.id, "password", &rehash)
            .await?;
        tx.commit().await?;
    }
    let memberships = memberships_of(state, &format!("User/{}", user.id), project_id).await?;
    if memberships.is_empty() {
        return Err(no_membership());
    }
    match mfa::required(state, user.id, email, &memberships).await? {
        SecondFactor::NotNeeded => crate::metrics::login("succeeded"),
        // The lockout count stands until the second factor is proven: a
        // password alone must not reset what wrong codes added up.
        SecondFactor::Verify => {
            return second_factor_login(state, &user, &params, project_id, None).await
        }
        SecondFactor::Enrol(enrolment) => {
            return second_factor_login(state, &user, &params, project_id, Some(enrolment)).await
        }
    }
    state.store.clear_login_failures(&key).await?;
    let projects: Vec<Uuid> = memberships.iter().map(|m| m.project_id).collect();
    let outcome = start_login(state, &user, memberships, &params).await?;
    audit::record_login(state, user.id, &projects, &[audit::Event::LoginSucceeded]).await?;
    Ok(outcome)
}

/// Counts a failed proof (password or code) against `key`; when that locks
/// it, until when.
async fn count_failure(state: &AppState, key: &str) -> Result<Option<chrono::DateTime<Utc>>> {
    let policy = LockoutPolicy {
        threshold: state.config.lockout_threshold as i32,
        base_seconds: state.config.lockout_period.as_secs_f64(),
        max_seconds: MAX_LOCKOUT_SECONDS,
    };
    crate::metrics::login("failed");
    let locked_until = state.store.record_login_failure(key, policy).await?;
    if locked_until.is_some() {
        metrics::counter!(crate::metrics::LOCKOUTS).increment(1);
    }
    Ok(locked_until)
}

/// The answer to a failed proof: the lockout, or `message`.
fn failure_answer(locked_until: Option<chrono::DateTime<Utc>>, message: &str) -> Error {
    match locked_until {
        Some(until) => locked(until),
        None => bad(message),
    }
}

fn no_membership() -> Error {
    bad("This user has no active project membership; ask a project admin to invite them")
}

/// A Login waiting for the second factor: no membership and no code until
/// `/auth/mfa/verify` (or `login-enroll`) proves it. It remembers the project
/// the sign-in was limited to, which also scopes the lockout.
async fn second_factor_login(
    state: &AppState,
    user: &Version,
    params: &LoginParams,
    project_id: Option<Uuid>,
    enrolment: Option<Enrolment>,
) -> Result<LoginOutcome> {
    let (login_id, stamp, mut login) = new_login(user, params);
    login["mfaRequired"] = Value::Bool(true);
    if let Some(project_id) = project_id {
        login["project"] = json!({"reference": format!("Project/{project_id}")});
    }
    fhir::atomically(state, async |tx| {
        fhir::insert(&state.validator, tx, login, &stamp).await
    })
    .await?;
    crate::metrics::login("second_factor_asked");
    Ok(LoginOutcome::SecondFactor {
        login_id,
        enrolment,
    })
}

/// `POST /auth/mfa/verify` (`enrol` false) and `POST /auth/mfa/login-enroll`
/// (`enrol` true), and the authorize page's code step: proves the second
/// factor of a Login that waits for it, then continues the sign-in as a
/// password alone would have. Wrong codes count toward the password lockout.
pub async fn verify_second_factor(
    state: &AppState,
    login_id: &str,
    token: &str,
    enrol: bool,
    client: Option<&Client>,
    redirect_uri: Option<&str>,
) -> Result<(LoginOutcome, Option<Vec<String>>)> {
    let invalid_login = || bad("Login not found, already used or expired; sign in again");
    let login_id = fhir::parse_id(login_id).ok_or_else(invalid_login)?;
    if token.trim().is_empty() {
        return Err(bad(
            "token (the code from the authenticator app) is required",
        ));
    }
    let tx = state.store.begin().await?;
    let mut login = lock_login(&tx, login_id).await?.ok_or_else(invalid_login)?;
    let other_client = client.is_some_and(|c| {
        login.content["client"]["reference"].as_str() != Some(c.reference().as_str())
    });
    if !is_pending(&login.content) || !awaits_second_factor(&login.content) || other_client {
        return Err(invalid_login());
    }
    let user_ref = login.content["user"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let user_id = super::reference_id(&login.content["user"], "User").ok_or_else(invalid_login)?;
    let user = super::read_live(state, Tenant::AllProjects, "User", user_id)
        .await?
        .ok_or_else(invalid_login)?;
    let restrict = login.content["project"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Project/"))
        .and_then(fhir::parse_id);
    let key = lockout_key(restrict, user["email"].as_str().unwrap_or_default());
    if let Some(until) = state.store.locked_until(&key).await? {
        crate::metrics::login("locked");
        return Err(locked(until));
    }
    let (proven, recovery_codes) = if enrol {
        match mfa::enrol(state, user_id, token).await {
            Ok(codes) => (true, Some(codes)),
            Err(Error::BadRequest(_)) => (false, None),
            Err(e) => return Err(e),
        }
    } else {
        (mfa::check_code(state, user_id, token).await?, None)
    };
    if !proven {
        return Err(failure_answer(
            count_failure(state, &key).await?,
            "Invalid code: enter the six digits the authenticator app shows, or a recovery code",
        ));
    }
    state.store.clear_login_failures(&key).await?;
    crate::metrics::login("succeeded");
    login.content["mfaVerified"] = Value::Bool(true);
    let memberships = memberships_of(state, &user_ref, restrict).await?;
    let projects: Vec<Uuid> = memberships.iter().map(|m| m.project_id).collect();
    let project_id = login.project_id;
    let outcome = match memberships.as_slice() {
        [] => return Err(no_membership()),
        [membership] => {
            set_membership(&mut login.content, membership);
            save_login(state, &tx, login_id, login).await?;
            let code = issue_code(state, &tx, project_id, login_id, redirect_uri).await?;
            LoginOutcome::Code { login_id, code }
        }
        _ => {
            save_login(state, &tx, login_id, login).await?;
            LoginOutcome::Choose {
                login_id,
                memberships,
            }
        }
    };
    tx.commit().await?;
    audit::record_login(state, user_id, &projects, &[audit::Event::LoginSucceeded]).await?;
    Ok((outcome, recovery_codes))
}

/// Whether a Login still needs its second factor proven.
fn awaits_second_factor(login: &Value) -> bool {
    login["mfaRequired"] == Value::Bool(true) && login["mfaVerified"] != Value::Bool(true)
}

/// `login-failed` (and `login-locked`) AuditEvents in each project the user
/// is a member of.
async fn record_failed_login(
    state: &AppState,
    user: &Version,
    project_id: Option<Uuid>,
    events: &[audit::Event],
) -> Result<()> {
    let memberships = memberships_of(state, &format!("User/{}", user.id), project_id).await?;
    let projects: Vec<Uuid> = memberships.iter().map(|m| m.project_id).collect();
    audit::record_login(state, user.id, &projects, events).await
}

/// Lockout is keyed by where the email is looked up and the email itself,
/// whether or not such a user exists.
fn lockout_key(project_id: Option<Uuid>, email: &str) -> String {
    let scope = project_id.map_or_else(|| "server".to_string(), |p| p.to_string());
    format!("{scope}:{}", email.to_lowercase())
}

fn locked(until: chrono::DateTime<Utc>) -> Error {
    // Rounded up: a client that waits this long is no longer locked.
    let millis = (until - Utc::now()).num_milliseconds().max(1) as u64;
    let seconds = millis.div_ceil(1000);
    Error::TooManyRequests {
        message: format!(
            "Too many failed sign-in attempts for this email; try again after {} ({seconds} seconds)",
            fhir::resource::instant(&until)
        ),
        retry_after_secs: seconds,
    }
}

/// A project-scoped user of `project_id` with this email, else a
/// server-scoped user (no `User.project`).
pub async fn find_user(
    state: &AppState,
    email: &str,
    project_id: Option<Uuid>,
) -> Result<Option<Version>> {
    // One statement whatever the scope and whether or not the email is
    // known, so the time taken tells nothing.
    let mut scopes: Vec<String> = project_id
        .map(|p| format!("Project/{p}"))
        .into_iter()
        .collect();
    scopes.push(String::new());
    Ok(state
        .store
        .users_by_email(&scopes, email)
        .await?
        .into_iter()
        .next())
}

fn parse(version: &Version) -> Option<Value> {
    serde_json::from_str(version.content.as_deref()?).ok()
}

/// The usable memberships (active, not past their end date) whose `user` is
/// `user_ref`, in one project if given.
pub async fn memberships_of(
    state: &AppState,
    user_ref: &str,
    project_id: Option<Uuid>,
) -> Result<Vec<Membership>> {
    let tenant = project_id.map_or(Tenant::AllProjects, Tenant::Project);
    let found =
        fhir::search::find(state, tenant, "ProjectMembership", &[("user", user_ref)]).await?;
    let now = Utc::now();
    Ok(found
        .iter()
        .filter_map(|v| {
            let content = parse(v)?;
            super::membership_usable(&content, now).then_some(Membership {
                id: v.id,
                project_id: v.project_id,
                content,
            })
        })
        .collect())
}

/// Records a Login for `user` and, with one membership, sets it and issues a
/// code; with several, the caller lets the user choose (`/auth/profile`).
/// Every way of signing in (password, a new user, a new project) ends here.
pub async fn start_login(
    state: &AppState,
    user: &Version,
    memberships: Vec<Membership>,
    params: &LoginParams,
) -> Result<LoginOutcome> {
    if memberships.is_empty() {
        return Err(no_membership());
    }
    let (login_id, stamp, mut login) = new_login(user, params);
    let tx = state.store.begin().await?;
    let outcome = if let [membership] = memberships.as_slice() {
        set_membership(&mut login, membership);
        fhir::insert(&state.validator, &tx, login, &stamp).await?;
        let code = issue_code(
            state,
            &tx,
            user.project_id,
            login_id,
            params.context.redirect_uri.as_deref(),
        )
        .await?;
        LoginOutcome::Code { login_id, code }
    } else {
        fhir::insert(&state.validator, &tx, login, &stamp).await?;
        LoginOutcome::Choose {
            login_id,
            memberships,
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// A Login for `user` before a membership is chosen (`granted: false`).
fn new_login(user: &Version, params: &LoginParams) -> (Uuid, Stamp, Value) {
    let login_id = Uuid::new_v4();
    let user_ref = format!("User/{}", user.id);
    let stamp = Stamp::new(login_id, user.project_id, &user_ref);
    let mut login = json!({
        "resourceType": "Login",
        "user": {"reference": user_ref},
        "authMethod": params.auth_method,
        "authTime": fhir::resource::instant(&stamp.last_updated),
        "scope": params.scope,
        "granted": false,
        "remember": params.context.remember,
    });
    let context = &params.context;
    let optional = [
        ("nonce", &context.nonce),
        ("codeChallenge", &context.code_challenge),
        ("codeChallengeMethod", &context.code_challenge_method),
        ("remoteAddress", &context.remote_address),
        ("userAgent", &context.user_agent),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            login[name] = json!(value);
        }
    }
    if let Some(client) = &params.client {
        login["client"] = json!({"reference": client.reference()});
        if !params.any_project {
            login["project"] = json!({"reference": format!("Project/{}", client.project_id)});
        }
    }
    (login_id, stamp, login)
}

/// Records a Login for a user who has no membership yet (a new account):
/// `/auth/newproject` or `/auth/newpatient` then makes one and picks it.
pub async fn start_registration(
    state: &AppState,
    user: &Version,
    params: &LoginParams,
) -> Result<Uuid> {
    let (login_id, stamp, login) = new_login(user, params);
    fhir::atomically(state, async |tx| {
        fhir::insert(&state.validator, tx, login, &stamp).await
    })
    .await?;
    Ok(login_id)
}

fn set_membership(login: &mut Value, membership: &Membership) {
    login["membership"] = json!({"reference": format!("ProjectMembership/{}", membership.id)});
    login["project"] = json!({"reference": format!("Project/{}", membership.project_id)});
    if let Some(profile) = membership.content["profile"]["reference"].as_str() {
        if let Some((kind, _)) = profile.split_once('/') {
            login["profileType"] = json!(kind);
        }
    }
}

/// A fresh authorization code for a Login: a random secret whose digest is
/// kept, valid for `FHIRGATE_CODE_LIFETIME`, redeemable once.
async fn issue_code(
    state: &AppState,
    tx: &Tx,
    project_id: Uuid,
    login_id: Uuid,
    redirect_uri: Option<&str>,
) -> Result<String> {
    let code = random_token(32);
    let lifetime = time_delta(state.config.code_lifetime)?;
    tx.insert_login_secret(&NewSecret {
        digest: &hash_client_secret(&code),
        kind: SecretKind::Code,
        project_id,
        login_id,
        redirect_uri,
        expires_at: Utc::now() + lifetime,
    })
    .await?;
    Ok(code)
}

/// A Login as stored.
pub struct LoginRecord {
    pub project_id: Uuid,
    pub content: Value,
}

/// Reads a Login by id (locked when in a transaction).
pub async fn lock_login(tx: &Tx, login_id: Uuid) -> Result<Option<LoginRecord>> {
    let Some(version) = tx
        .lock_current(Tenant::AllProjects, "Login", login_id, &RowFilter::All)
        .await?
    else {
        return Ok(None);
    };
    Ok(parse(&version).map(|content| LoginRecord {
        project_id: version.project_id,
        content,
    }))
}

/// Writes a changed Login as a new version.
pub async fn save_login(
    state: &AppState,
    tx: &Tx,
    login_id: Uuid,
    record: LoginRecord,
) -> Result<()> {
    let author = record.content["user"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let stamp = Stamp::new(login_id, record.project_id, &author);
    fhir::overwrite(&state.validator, tx, record.content, &stamp).await?;
    Ok(())
}

/// `POST /auth/profile` and the chooser page: the user picks one of the
/// memberships offered. From the authorize flow, `client` is the client of
/// the request, which must be the one the sign-in started with.
pub async fn choose_membership(
    state: &AppState,
    login_id: &str,
    membership_id: &str,
    client: Option<&Client>,
    redirect_uri: Option<&str>,
) -> Result<LoginOutcome> {
    let invalid_login = || bad("Login not found, already used or expired; sign in again");
    let login_id = fhir::parse_id(login_id).ok_or_else(invalid_login)?;
    let membership_id = fhir::parse_id(membership_id).ok_or_else(|| bad("Profile not found"))?;
    let tx = state.store.begin().await?;
    let mut login = lock_login(&tx, login_id).await?.ok_or_else(invalid_login)?;
    let other_client = client.is_some_and(|c| {
        login.content["client"]["reference"].as_str() != Some(c.reference().as_str())
    });
    if !is_pending(&login.content) || awaits_second_factor(&login.content) || other_client {
        return Err(invalid_login());
    }
    let user_ref = login.content["user"]["reference"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let restrict = login.content["project"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Project/"))
        .and_then(fhir::parse_id);
    let membership = memberships_of(state, &user_ref, restrict)
        .await?
        .into_iter()
        .find(|m| m.id == membership_id)
        .ok_or_else(|| bad("Profile not found"))?;
    set_membership(&mut login.content, &membership);
    let project_id = login.project_id;
    save_login(state, &tx, login_id, login).await?;
    let code = issue_code(state, &tx, project_id, login_id, redirect_uri).await?;
    tx.commit().await?;
    Ok(LoginOutcome::Code { login_id, code })
}

/// Whether a Login still waits for its membership: recent, not revoked, not
/// granted, none chosen.
pub fn is_pending(login: &Value) -> bool {
    let auth_time = login["authTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let fresh =
        auth_time.is_some_and(|t| Utc::now() - t < TimeDelta::minutes(PENDING_LOGIN_MINUTES));
    fresh
        && login["revoked"] != Value::Bool(true)
        && login["granted"] != Value::Bool(true)
        && login.get("membership").is_none()
}

/// Revokes a Login: its tokens fail on their next use, its secrets are spent.
pub async fn revoke_login(state: &AppState, tx: &Tx, login_id: Uuid) -> Result<()> {
    let Some(mut login) = lock_login(tx, login_id).await? else {
        return Ok(());
    };
    let project_id = login.project_id;
    tx.spend_login_secrets(project_id, login_id).await?;
    if login.content["revoked"] != Value::Bool(true) {
        login.content["revoked"] = Value::Bool(true);
        let user = login.content["user"]["reference"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        save_login(state, tx, login_id, login).await?;
        audit::record(
            state,
            tx,
            project_id,
            audit::Event::TokenRevoked,
            &user,
            &format!("Login/{login_id}"),
        )
        .await?;
    }
    Ok(())
}

/// Whether the scope string holds `scope`.
pub fn has_scope(scope: &str, wanted: &Scope) -> bool {
    ScopeSet::parse(scope).is_ok_and(|s| s.contains(wanted))
}

/// The live sessions of a user (Medplum's `security.sessions`): granted,
/// unrevoked Logins, newest first.
pub async fn sessions_of(state: &AppState, user_ref: &str) -> Result<Vec<Value>> {
    let logins = fhir::search::find(
        state,
        Tenant::AllProjects,
        "Login",
        &[
            ("user", user_ref),
            ("_sort", "-_lastUpdated"),
            ("_count", "100"),
        ],
    )
    .await?;
    let horizon = Utc::now() - time_delta(state.config.refresh_token_lifetime)?;
    Ok(logins
        .iter()
        .filter(|v| v.last_updated > horizon)
        .filter_map(|v| {
            let login = parse(v)?;
            let live =
                login["granted"] == Value::Bool(true) && login["revoked"] != Value::Bool(true);
            live.then(|| {
                json!({
                    "id": v.id,
                    "lastUpdated": fhir::resource::instant(&v.last_updated),
                    "authTime": login["authTime"],
                    "authMethod": login["authMethod"],
                    "remoteAddress": login["remoteAddress"],
                    "userAgent": login["userAgent"],
                    "client": login["client"],
                })
            })
        })
        .collect())
}

/// A configured duration as a chrono duration (they fit: both are bounded by config parsing).
pub fn time_delta(duration: std::time::Duration) -> Result<TimeDelta> {
    TimeDelta::from_std(duration)
        .map_err(|e| Error::Internal(format!("duration {duration:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_is_s256_unless_the_client_relaxes_it() {
        let challenge = "a".repeat(43);
        assert!(check_pkce(None, Some(&challenge), Some("S256")).is_ok());
        assert!(check_pkce(None, None, None).is_err());
        assert!(check_pkce(None, Some(&challenge), Some("plain")).is_err());
        assert!(check_pkce(None, Some("short"), Some("S256")).is_err());
        assert!(check_pkce(None, Some(&challenge), None).is_err());
        let relaxed = Client {
            id: Uuid::new_v4(),
            project_id: Uuid::new_v4(),
            content: json!({"pkceOptional": true, "scope": "openid patient/*.rs"}),
            has_secret: false,
        };
        assert!(check_pkce(Some(&relaxed), None, None).is_ok());
        assert!(check_pkce(Some(&relaxed), Some(&challenge), Some("plain")).is_ok());
        assert_eq!(
            grant_scope("openid user/*.rs patient/Observation.read", Some(&relaxed)).unwrap(),
            "openid patient/Observation.read"
        );
        assert!(grant_scope("user/*.rs", Some(&relaxed)).is_err());
        assert!(grant_scope("", None).is_err());
    }

    #[test]
    fn lockout_keys_do_not_depend_on_the_account() {
        let project = Uuid::new_v4();
        assert_eq!(
            lockout_key(Some(project), "Alice@Example.com"),
            format!("{project}:alice@example.com")
        );
        assert_eq!(lockout_key(None, "a@b.c"), "server:a@b.c");
    }
}
