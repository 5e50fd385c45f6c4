//! What people do for themselves: sign up (`/auth/newuser`), make a project
//! or become a patient with the new account, change their password or email,
//! and mint personal access tokens.

use access_policy::RowFilter;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    audit::{self, Event},
    field_issue, links, lock_identity, members, normalize_email, reference, users, Found,
    UserScope, SERVER_TENANT,
};
use crate::{
    app::AppState,
    auth::{
        login::{self, choose_membership, start_registration, LoginOutcome, LoginRequest},
        password,
        secrets::random_token,
        Caller,
    },
    email::is_email_address,
    error::{Error, Result},
    fhir::{self, insert, parse_id, resource::Stamp},
    store::{lifecycle::RequestKind, Tenant, Tx, Version},
};

/// `POST /auth/newuser`: a new User with a password and an email to verify,
/// and a Login waiting for `/auth/newproject` or `/auth/newpatient`.
pub async fn register(state: &AppState, body: &Value, request: &LoginRequest) -> Result<Uuid> {
    let text = |name: &str| body[name].as_str().map(str::trim).unwrap_or_default();
    let mut issues = Vec::new();
    for name in ["firstName", "lastName"] {
        if text(name).is_empty() {
            issues.push(field_issue(name, format!("{name} is required")));
        }
    }
    let email = normalize_email(text("email"));
    if !is_email_address(&email) {
        issues.push(field_issue("email", "email must be a valid email address"));
    }
    let password = body["password"].as_str().unwrap_or_default();
    if let Err(e) =
        password::check_new_password(password, &[&email, text("firstName"), text("lastName")])
    {
        issues.push(field_issue("password", e.to_string()));
    }
    if !issues.is_empty() {
        return Err(Error::Invalid(issues));
    }
    let params = request.params(state, "password").await?;
    let scope = match body["projectId"].as_str() {
        Some(id) => {
            let project = open_project(state, id).await?;
            UserScope::Project(project.0)
        }
        None => UserScope::Server,
    };
    let context = match scope {
        UserScope::Project(id) => id,
        UserScope::Server => SERVER_TENANT,
    };
    let (user, link) = fhir::atomically(state, async |tx| {
        lock_identity(tx, scope, &email).await?;
        if users::find_by_email(tx, scope, &email).await?.is_some() {
            return Err(Error::Invalid(vec![field_issue(
                "email",
                "Email already registered",
            )]));
        }
        let mut user = json!({
            "resourceType": "User", "firstName": text("firstName"), "lastName": text("lastName"),
            "email": email, "emailVerified": false
        });
        if let UserScope::Project(id) = scope {
            user["project"] = reference("Project", id);
        }
        let id = fhir::resource::new_id();
        let user_ref = format!("User/{id}");
        let (version, value) = insert(
            &state.validator,
            tx,
            user,
            &Stamp::new(id, scope.tenant_id(), &user_ref),
        )
        .await?;
        users::set_password(tx, &version, password, "password").await?;
        audit::record(state, tx, context, Event::UserCreated, &user_ref, &user_ref).await?;
        let user = Found { version, value };
        let link = links::create(state, tx, RequestKind::VerifyEmail, &user, context, None).await?;
        Ok((user, link))
    })
    .await?;
    let project = links::project_name(state, context).await?;
    let message = links::verification_email(context, &project, &email, &link);
    state.mailer.send(&state.store, &message).await?;
    start_registration(state, &user.version, &params).await
}

/// 403 unless sign-up is open (`FHIRGATE_REGISTRATION`).
pub fn check_registration_open(state: &AppState) -> Result<()> {
    if state.config.lifecycle.registration_enabled {
        Ok(())
    } else {
        Err(Error::Forbidden(
            "Sign-up is closed on this server (FHIRGATE_REGISTRATION=closed); ask a project admin for an invitation".into(),
        ))
    }
}

/// A project that takes sign-ups: it names a default patient AccessPolicy.
async fn open_project(state: &AppState, id: &str) -> Result<(Uuid, Value)> {
    let refuse = || {
        Error::BadRequest(format!(
            "Project {id} does not allow open registration (it has no defaultPatientAccessPolicy)"
        ))
    };
    let uuid = parse_id(id).ok_or_else(refuse)?;
    let project = state
        .store
        .read(Tenant::Project(uuid), "Project", uuid, &RowFilter::All)
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(refuse)?;
    let value = fhir::parse_stored(&project)?;
    if value["defaultPatientAccessPolicy"]["reference"]
        .as_str()
        .is_none()
    {
        return Err(refuse());
    }
    Ok((uuid, value))
}

/// The user of a Login still waiting for its membership, locked in `tx`.
async fn pending_user(tx: &Tx, login_id: &str) -> Result<Found> {
    let invalid =
        || Error::BadRequest("Login not found, already used or expired; sign in again".into());
    let id = parse_id(login_id).ok_or_else(invalid)?;
    let login = login::lock_login(tx, id).await?.ok_or_else(invalid)?;
    if !login::is_pending(&login.content) {
        return Err(invalid());
    }
    let user_id = crate::auth::reference_id(&login.content["user"], "User").ok_or_else(invalid)?;
    let user = tx
        .lock_current(Tenant::AllProjects, "User", user_id, &RowFilter::All)
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(invalid)?;
    Found::new(user)
}

/// A profile of `resource_type` named and reachable like the user.
fn profile_of(resource_type: &str, user: &Value) -> Value {
    json!({
        "resourceType": resource_type,
        "name": [{"given": [user["firstName"]], "family": user["lastName"]}],
        "telecom": [{"system": "email", "value": user["email"]}]
    })
}

/// Adds `user`'s membership to `project_id` with a new profile, returning its id.
async fn add_person(
    state: &AppState,
    tx: &Tx,
    project_id: Uuid,
    user: &Found,
    profile_type: &str,
    extra: Value,
) -> Result<Uuid> {
    let user_ref = user.reference();
    let profile_id = fhir::resource::new_id();
    let stamp = Stamp::new(profile_id, project_id, &user_ref);
    insert(
        &state.validator,
        tx,
        profile_of(profile_type, &user.value),
        &stamp,
    )
    .await?;
    let mut membership = json!({
        "resourceType": "ProjectMembership",
        "project": reference("Project", project_id),
        "user": {"reference": user_ref},
        "profile": reference(profile_type, profile_id)
    });
    if let (Some(fields), Some(extra)) = (membership.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    let id = fhir::resource::new_id();
    insert(
        &state.validator,
        tx,
        membership,
        &Stamp::new(id, project_id, &user_ref),
    )
    .await?;
    audit::record(
        state,
        tx,
        project_id,
        Event::MembershipAdded,
        &user_ref,
        &format!("ProjectMembership/{id}"),
    )
    .await?;
    Ok(id)
}

/// `POST /auth/newproject {login, projectName}`: a Project owned by the new
/// user, their admin membership with a Practitioner profile, and a default
/// ClientApplication; then the Login's code.
pub async fn new_project(state: &AppState, login_id: &str, name: &str) -> Result<LoginOutcome> {
    if name.trim().is_empty() {
        return Err(Error::Invalid(vec![field_issue(
            "projectName",
            "projectName is required",
        )]));
    }
    let membership = fhir::atomically(state, async |tx| {
        let user = pending_user(tx, login_id).await?;
        if UserScope::of(&user.value) != UserScope::Server {
            return Err(Error::BadRequest(
                "A project-scoped user cannot make projects; sign up without a projectId".into(),
            ));
        }
        let user_ref = user.reference();
        let project_id = fhir::resource::new_id();
        let project = json!({"resourceType": "Project", "name": name.trim(), "owner": {"reference": user_ref}});
        insert(&state.validator, tx, project, &Stamp::new(project_id, project_id, &user_ref)).await?;
        let membership = add_person(state, tx, project_id, &user, "Practitioner", json!({"admin": true})).await?;
        let client_id = fhir::resource::new_id();
        let client = json!({
            "resourceType": "ClientApplication", "name": format!("{} Default Client", name.trim()),
            "description": "Made with the project; rotate its secret with $rotate-secret before use",
            "secret": random_token(32)
        });
        insert(&state.validator, tx, client, &Stamp::new(client_id, project_id, &user_ref)).await?;
        let client_ref = format!("ClientApplication/{client_id}");
        members::add_for(state, tx, &user_ref, project_id, &client_ref, &Value::Null).await?;
        Ok(membership)
    })
    .await?;
    choose_membership(state, login_id, &membership.to_string(), None, None).await
}

/// `POST /auth/newpatient {login, projectId}`: a Patient profile and a
/// membership under the project's default patient AccessPolicy.
pub async fn new_patient(
    state: &AppState,
    login_id: &str,
    project_id: &str,
) -> Result<LoginOutcome> {
    let (project_id, project) = open_project(state, project_id).await?;
    let membership = fhir::atomically(state, async |tx| {
        let user = pending_user(tx, login_id).await?;
        if !matches!(UserScope::of(&user.value), UserScope::Server)
            && UserScope::of(&user.value) != UserScope::Project(project_id)
        {
            return Err(Error::BadRequest(
                "This user belongs to another project".into(),
            ));
        }
        lock_identity(tx, UserScope::Project(project_id), &user.reference()).await?;
        let existing = fhir::search::find_in(
            tx,
            Tenant::Project(project_id),
            "ProjectMembership",
            &[("user", &user.reference())],
        )
        .await?;
        if !existing.is_empty() {
            return Err(Error::Conflict(
                "User is already a member of this project".into(),
            ));
        }
        let policy = json!({"accessPolicy": project["defaultPatientAccessPolicy"]});
        add_person(state, tx, project_id, &user, "Patient", policy).await
    })
    .await?;
    choose_membership(state, login_id, &membership.to_string(), None, None).await
}

/// The signed-in User behind a caller, for an action on the user's own
/// account: only from a session the user started (clients and bots have no
/// account; a minted or scope-limited token may not act on one).
async fn caller_user(state: &AppState, caller: &Caller) -> Result<Version> {
    caller.require_own_session()?;
    let not_user = || Error::Forbidden("Only a signed-in user can do this".into());
    let id = caller
        .user
        .strip_prefix("User/")
        .and_then(parse_id)
        .ok_or_else(not_user)?;
    state
        .store
        .read(Tenant::AllProjects, "User", id, &RowFilter::All)
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(not_user)
}

/// 400 on `field` unless `password` is the user's current one.
async fn check_current_password(
    state: &AppState,
    user: &Version,
    password: &str,
    field: &str,
) -> Result<()> {
    let stored = state.store.secret_hash("User", user.id, "password").await?;
    if password.is_empty() || !password::verify(password, stored).await?.ok {
        return Err(Error::Invalid(vec![field_issue(
            field,
            "Incorrect password: give your current password",
        )]));
    }
    Ok(())
}

/// `POST /auth/changepassword {oldPassword, newPassword}`: ends the user's
/// other sessions.
pub async fn change_password(state: &AppState, caller: &Caller, body: &Value) -> Result<()> {
    let user = caller_user(state, caller).await?;
    let old = body["oldPassword"].as_str().unwrap_or_default();
    let new = body["newPassword"].as_str().unwrap_or_default();
    check_current_password(state, &user, old, "oldPassword").await?;
    users::check_new_password(new, "newPassword")?;
    fhir::atomically(state, async |tx| {
        users::set_password(tx, &user, new, "newPassword").await?;
        users::revoke_logins(
            state,
            tx,
            &caller.user,
            users::Sessions::AllBut(caller.login_id),
        )
        .await?;
        audit::record(
            state,
            tx,
            caller.project_id,
            Event::PasswordChanged,
            &caller.user,
            &caller.user,
        )
        .await
    })
    .await
}

/// `POST /auth/changeemail {email}`: mails a verification link to the new
/// address; the change takes effect when it is followed.
pub async fn change_email(state: &AppState, caller: &Caller, body: &Value) -> Result<()> {
    let user = caller_user(state, caller).await?;
    // A stolen session alone must not be enough to move the account.
    check_current_password(
        state,
        &user,
        body["password"].as_str().unwrap_or_default(),
        "password",
    )
    .await?;
    let user = Found::new(user)?;
    let email = normalize_email(body["email"].as_str().unwrap_or_default());
    if !is_email_address(&email) {
        return Err(Error::Invalid(vec![field_issue(
            "email",
            "email must be a valid email address",
        )]));
    }
    if user.value["email"] == json!(email) {
        return Err(Error::Invalid(vec![field_issue(
            "email",
            "This is already the account's email",
        )]));
    }
    let scope = UserScope::of(&user.value);
    let link = fhir::atomically(state, async |tx| {
        lock_identity(tx, scope, &email).await?;
        if users::find_by_email(tx, scope, &email).await?.is_some() {
            return Err(users::email_taken());
        }
        links::create(
            state,
            tx,
            RequestKind::VerifyEmail,
            &user,
            caller.project_id,
            Some(email.clone()),
        )
        .await
    })
    .await?;
    let project = links::project_name(state, caller.project_id).await?;
    let message = links::verification_email(caller.project_id, &project, &email, &link);
    state.mailer.send(&state.store, &message).await?;
    Ok(())
}

/// The caller's own membership, for a personal access token.
pub async fn own_membership(state: &AppState, caller: &Caller) -> Result<Version> {
    caller_user(state, caller).await?;
    state
        .store
        .read(
            Tenant::Project(caller.project_id),
            "ProjectMembership",
            caller.membership_id,
            &RowFilter::All,
        )
        .await?
        .filter(|v| !v.is_deleted())
        .ok_or_else(|| Error::Unauthorized("Your membership no longer exists".into()))
}
