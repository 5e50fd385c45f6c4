//! `POST /admin/projects/:projectId/invite`: add a person to a project,
//! creating their User and profile when needed, and tell them by email.

use access_policy::RowFilter;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    audit::{self, Event},
    check_policies, field_issue, links, lock_identity, normalize_email, reference, users,
    AdminProject, Found, UserScope,
};
use crate::{
    app::AppState,
    auth::Caller,
    email::{compose, is_email_address, Delivery, Email},
    error::{Error, Result},
    fhir::{self, insert, resource::Stamp, search::find_in},
    store::{lifecycle::RequestKind, Tenant, Tx},
};

/// The profile types a person can have in a project.
const PROFILE_TYPES: &[&str] = &["Patient", "Practitioner", "RelatedPerson"];

/// Membership template fields the invitation may set; the rest (project,
/// user, invitedBy) are the server's.
const TEMPLATE_FIELDS: &[&str] = &[
    "admin",
    "accessPolicy",
    "access",
    "externalId",
    "profile",
    "userName",
    "identifier",
    "active",
    "endDate",
    "userConfiguration",
];

/// A boolean as JSON `true`/`false`, or as the strings `"true"`/`"false"`
/// that Medplum's user-management guide sends in its examples.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

/// A validated invitation.
#[derive(Debug)]
pub struct InviteRequest {
    pub resource_type: String,
    pub first_name: String,
    pub last_name: String,
    pub email: Option<String>,
    pub external_id: Option<String>,
    pub scope: UserScope,
    pub password: Option<String>,
    pub send_email: bool,
    pub membership: Map<String, Value>,
    pub upsert: bool,
    pub force_new_membership: bool,
}

impl InviteRequest {
    /// Checks every field, reporting each invalid one as its own issue.
    pub fn parse(body: &Value, project_id: Uuid) -> Result<InviteRequest> {
        let mut issues = Vec::new();
        let text = |name: &str| body[name].as_str().map(str::trim).filter(|s| !s.is_empty());
        let resource_type = text("resourceType").unwrap_or_default();
        if !PROFILE_TYPES.contains(&resource_type) {
            issues.push(field_issue(
                "resourceType",
                "resourceType must be Patient, Practitioner or RelatedPerson",
            ));
        }
        for name in ["firstName", "lastName"] {
            if text(name).is_none() {
                issues.push(field_issue(name, format!("{name} is required")));
            }
        }
        let email = text("email").map(normalize_email);
        if email.as_deref().is_some_and(|e| !is_email_address(e)) {
            issues.push(field_issue("email", "email must be a valid email address"));
        }
        let external_id = text("externalId").map(str::to_string);
        if email.is_none() && external_id.is_none() {
            issues.push(field_issue(
                "email",
                "Either email or externalId is required",
            ));
        }
        let project_scope = match body["scope"].as_str() {
            None => false,
            Some("project") => true,
            Some("server") => false,
            Some(_) => {
                issues.push(field_issue("scope", "scope must be 'project' or 'server'"));
                false
            }
        };
        let password = match &body["password"] {
            Value::Null => None,
            Value::String(p) => {
                if let Err(Error::Invalid(problems)) = users::check_new_password(p, "password") {
                    issues.extend(problems);
                }
                Some(p.clone())
            }
            _ => {
                issues.push(field_issue("password", "password must be a string"));
                None
            }
        };
        let mut flag = |name: &str, default: bool| match &body[name] {
            Value::Null => default,
            value => boolean(value).unwrap_or_else(|| {
                issues.push(field_issue(name, format!("{name} must be true or false")));
                default
            }),
        };
        let send_email = flag("sendEmail", true);
        let upsert = flag("upsert", false);
        let force_new_membership = flag("forceNewMembership", false);
        // Medplum's older top-level `admin` and `accessPolicy` still work.
        let mut membership = match &body["membership"] {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            _ => {
                issues.push(field_issue(
                    "membership",
                    "membership must be a JSON object",
                ));
                Map::new()
            }
        };
        for legacy in ["admin", "accessPolicy"] {
            if !body[legacy].is_null() && !membership.contains_key(legacy) {
                membership.insert(legacy.into(), body[legacy].clone());
            }
        }
        if let Some(admin) = membership.get_mut("admin") {
            match boolean(admin) {
                Some(b) => *admin = Value::Bool(b),
                None => issues.push(field_issue("admin", "admin must be true or false")),
            }
        }
        for key in membership.keys() {
            if !TEMPLATE_FIELDS.contains(&key.as_str()) {
                issues.push(field_issue(
                    &format!("membership.{key}"),
                    format!("membership.{key} cannot be set by an invitation"),
                ));
            }
        }
        if !issues.is_empty() {
            return Err(Error::Invalid(issues));
        }
        let scope = if resource_type == "Patient" || external_id.is_some() || project_scope {
            UserScope::Project(project_id)
        } else {
            UserScope::Server
        };
        Ok(InviteRequest {
            resource_type: resource_type.to_string(),
            first_name: text("firstName").unwrap_or_default().to_string(),
            last_name: text("lastName").unwrap_or_default().to_string(),
            email,
            external_id,
            scope,
            password,
            send_email,
            membership,
            upsert,
            force_new_membership,
        })
    }

    /// What identifies the person: the email, else the external id.
    fn identity(&self) -> &str {
        self.email
            .as_deref()
            .or(self.external_id.as_deref())
            .unwrap_or_default()
    }
}

/// What an invitation produced.
pub struct Invited {
    pub membership: String,
    /// Why the email could not be sent, if it could not.
    pub email_problem: Option<String>,
}

/// Runs an invitation: one transaction for the user, profile and membership,
/// then the email (a failure to send keeps what was created).
pub async fn invite(
    state: &AppState,
    caller: &Caller,
    project: &AdminProject,
    request: InviteRequest,
) -> Result<Invited> {
    let (membership, message) = fhir::atomically(state, async |tx| {
        lock_identity(tx, request.scope, request.identity()).await?;
        invite_in(state, caller, tx, project, &request).await
    })
    .await?;
    let email_problem = match message {
        Some(message) => match state.mailer.send(&state.store, &message).await? {
            Delivery::Failed(reason) => Some(reason),
            Delivery::Sent | Delivery::Outbox => None,
        },
        None => None,
    };
    Ok(Invited {
        membership,
        email_problem,
    })
}

async fn invite_in(
    state: &AppState,
    caller: &Caller,
    tx: &Tx,
    project: &AdminProject,
    request: &InviteRequest,
) -> Result<(String, Option<Email>)> {
    let template = Value::Object(request.membership.clone());
    check_policies(tx, project.id, &template, "membership.").await?;
    let user = match (&request.email, &request.external_id) {
        (Some(email), _) => users::find_by_email(tx, request.scope, email).await?,
        (None, Some(external_id)) => {
            users::find_by_external_id(tx, project.id, external_id).await?
        }
        (None, None) => None,
    };
    if !request.force_new_membership {
        check_other_scope(tx, project.id, request).await?;
    }
    let existing = match &user {
        Some(user) if !request.force_new_membership => {
            membership_of(tx, project.id, &user.reference()).await?
        }
        _ => None,
    };
    if existing.is_some() && !request.upsert {
        return Err(conflict());
    }
    if existing
        .as_ref()
        .is_some_and(|e| e.version.id == caller.membership_id && !caller.is_super_admin())
    {
        return Err(Error::Forbidden(
            "An invitation cannot change your own membership: ask another admin of the project"
                .into(),
        ));
    }
    let profile = match &existing {
        Some(existing) => {
            let current = &existing.value["profile"];
            if request
                .membership
                .get("profile")
                .is_some_and(|p| p["reference"] != current["reference"])
            {
                return Err(Error::Conflict(
                    "The existing membership has another profile; an upsert cannot change it"
                        .into(),
                ));
            }
            current["reference"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        }
        None => profile_for(state, caller, tx, project, request).await?,
    };
    if let Some(external_id) = request.membership.get("externalId").and_then(Value::as_str) {
        let same = find_in(
            tx,
            Tenant::Project(project.id),
            "ProjectMembership",
            &[("external-id", external_id)],
        )
        .await?;
        if same
            .iter()
            .any(|m| existing.as_ref().is_none_or(|e| e.version.id != m.id))
        {
            return Err(Error::Conflict(format!(
                "A membership with externalId '{external_id}' already exists in this project"
            )));
        }
    }
    // An address nobody has proven (a sign-up never verified, an invitation
    // never accepted) is no one's account yet: the invitation must not go to
    // whoever registered it first. Its password and sessions end, and the
    // mail carries a link to set a password, as for a new user.
    let unproven = request.email.is_some()
        && user
            .as_ref()
            .is_some_and(|u| u.value["emailVerified"] == json!(false));
    let new_user = user.is_none() || unproven;
    let user = match user {
        Some(user) => {
            if unproven {
                reset_credentials(state, tx, &user).await?;
            }
            user
        }
        None => create_user(state, caller, tx, project, request).await?,
    };
    let user_ref = user.reference();
    let membership = match existing {
        Some(existing) => {
            let (version, _) = fhir::modify(
                state,
                tx,
                Tenant::Project(project.id),
                "ProjectMembership",
                existing.version.id,
                &caller.profile,
                |membership| {
                    for (key, value) in &request.membership {
                        membership[key] = value.clone();
                    }
                    Ok(())
                },
            )
            .await?
            .ok_or_else(conflict)?;
            audit::record(
                state,
                tx,
                project.id,
                Event::MembershipChanged,
                &caller.profile,
                &existing.reference(),
            )
            .await?;
            version
        }
        None => {
            let mut membership = request.membership.clone();
            membership.insert("resourceType".into(), json!("ProjectMembership"));
            membership.insert("project".into(), json!({"reference": project.reference()}));
            membership.insert("user".into(), json!({"reference": user_ref}));
            membership.insert("profile".into(), json!({"reference": profile}));
            membership.insert("invitedBy".into(), json!({"reference": caller.profile}));
            let id = fhir::resource::new_id();
            let stamp = Stamp::new(id, project.id, &caller.profile);
            let (version, _) =
                insert(&state.validator, tx, Value::Object(membership), &stamp).await?;
            let membership_ref = format!("ProjectMembership/{id}");
            audit::record(
                state,
                tx,
                project.id,
                Event::MembershipAdded,
                &caller.profile,
                &membership_ref,
            )
            .await?;
            version
        }
    };
    audit::record(
        state,
        tx,
        project.id,
        Event::UserInvited,
        &caller.profile,
        &user_ref,
    )
    .await?;
    let message = match &request.email {
        Some(email) if request.send_email => {
            Some(invitation_email(state, tx, project, &user, new_user, email).await?)
        }
        _ => None,
    };
    Ok((membership.content.unwrap_or_default(), message))
}

fn conflict() -> Error {
    Error::Conflict("User is already a member of this project".into())
}

/// The user's (first) membership in the project.
async fn membership_of(tx: &Tx, project_id: Uuid, user: &str) -> Result<Option<Found>> {
    find_in(
        tx,
        Tenant::Project(project_id),
        "ProjectMembership",
        &[("user", user)],
    )
    .await?
    .into_iter()
    .next()
    .map(Found::new)
    .transpose()
}

/// 409 when a user with the same email but the other scope is already a
/// member: the same person would get two logins into one project.
async fn check_other_scope(tx: &Tx, project_id: Uuid, request: &InviteRequest) -> Result<()> {
    let Some(email) = &request.email else {
        return Ok(());
    };
    let other = match request.scope {
        UserScope::Server => UserScope::Project(project_id),
        UserScope::Project(_) => UserScope::Server,
    };
    if let Some(user) = users::find_by_email(tx, other, email).await? {
        if membership_of(tx, project_id, &user.reference())
            .await?
            .is_some()
        {
            return Err(conflict());
        }
    }
    Ok(())
}

/// The profile reference: the one the template names (checked), an existing
/// profile with the same email in the project, or a new one.
async fn profile_for(
    state: &AppState,
    caller: &Caller,
    tx: &Tx,
    project: &AdminProject,
    request: &InviteRequest,
) -> Result<String> {
    let tenant = Tenant::Project(project.id);
    if let Some(profile) = request.membership.get("profile") {
        let text = profile["reference"].as_str().unwrap_or_default();
        let (kind, id) = text.split_once('/').unwrap_or_default();
        if kind != request.resource_type {
            return Err(Error::Invalid(vec![field_issue(
                "membership.profile",
                format!(
                    "membership.profile must be a {}, as resourceType says",
                    request.resource_type
                ),
            )]));
        }
        let exists = match fhir::parse_id(id) {
            Some(id) => tx
                .lock_current(tenant, kind, id, &RowFilter::All)
                .await?
                .is_some_and(|v| !v.is_deleted()),
            None => false,
        };
        if !exists {
            return Err(Error::Invalid(vec![field_issue(
                "membership.profile",
                "Profile does not belong to project",
            )]));
        }
        return Ok(text.to_string());
    }
    if let Some(email) = &request.email {
        let found = find_in(tx, tenant, &request.resource_type, &[("email", email)]).await?;
        if let Some(profile) = found.first() {
            return Ok(format!("{}/{}", profile.resource_type, profile.id));
        }
    }
    if request.resource_type == "RelatedPerson" {
        return Err(Error::Invalid(vec![field_issue(
            "membership.profile",
            "A RelatedPerson needs the Patient it relates to: create the RelatedPerson first and name it in membership.profile",
        )]));
    }
    let mut profile = json!({
        "resourceType": request.resource_type,
        "name": [{"given": [request.first_name], "family": request.last_name}]
    });
    if let Some(email) = &request.email {
        let use_ = if request.resource_type == "Practitioner" {
            "work"
        } else {
            "home"
        };
        profile["telecom"] = json!([{"system": "email", "use": use_, "value": email}]);
    }
    let id = fhir::resource::new_id();
    insert(
        &state.validator,
        tx,
        profile,
        &Stamp::new(id, project.id, &caller.profile),
    )
    .await?;
    Ok(format!("{}/{id}", request.resource_type))
}

async fn create_user(
    state: &AppState,
    caller: &Caller,
    tx: &Tx,
    project: &AdminProject,
    request: &InviteRequest,
) -> Result<Found> {
    let mut user = json!({
        "resourceType": "User",
        "firstName": request.first_name,
        "lastName": request.last_name,
    });
    if let Some(email) = &request.email {
        user["email"] = json!(email);
        user["emailVerified"] = json!(false);
    }
    if let Some(external_id) = &request.external_id {
        user["externalId"] = json!(external_id);
    }
    if let UserScope::Project(id) = request.scope {
        user["project"] = reference("Project", id);
    }
    let id = fhir::resource::new_id();
    let stamp = Stamp::new(id, request.scope.tenant_id(), &caller.profile);
    let (version, value) = insert(&state.validator, tx, user, &stamp).await?;
    if let Some(password) = &request.password {
        users::set_password(tx, &version, password, "password").await?;
    }
    audit::record(
        state,
        tx,
        project.id,
        Event::UserCreated,
        &caller.profile,
        &format!("User/{id}"),
    )
    .await?;
    Ok(Found { version, value })
}

/// Ends what an unproven account's registrant could use: its password and
/// its sessions. The invitation's own password is not given to it: the
/// account may have memberships elsewhere, and only the owner of the address
/// sets its password (through the emailed link, or a reset).
async fn reset_credentials(state: &AppState, tx: &Tx, user: &Found) -> Result<()> {
    tx.delete_secret(user.version.project_id, "User", user.version.id, "password")
        .await?;
    users::revoke_logins(state, tx, &user.reference(), users::Sessions::All).await
}

/// A new user gets a link to set their password; an existing one a welcome.
async fn invitation_email(
    state: &AppState,
    tx: &Tx,
    project: &AdminProject,
    user: &Found,
    new_user: bool,
    email: &str,
) -> Result<Email> {
    let name = project.name();
    if new_user {
        let link = links::create(state, tx, RequestKind::Invite, user, project.id, None).await?;
        return Ok(compose(
            project.id,
            name,
            email,
            format!("You are invited to {name}"),
            &[
                format!("You were invited to {name}."),
                "Follow this link to choose your password and create your account. It works once and expires in a few days.".into(),
            ],
            Some(&link),
        ));
    }
    let app = state
        .config
        .lifecycle
        .app_base_url
        .as_deref()
        .unwrap_or(&state.base_url);
    Ok(compose(
        project.id,
        name,
        email,
        format!("Welcome to {name}"),
        &[
            format!("You were added to {name}."),
            format!("The next time you sign in, you will see {name} as an option."),
        ],
        Some(&format!("{app}signin{}", links::project_query(user))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<InviteRequest> {
        InviteRequest::parse(&body, Uuid::nil())
    }

    #[test]
    fn scope_follows_the_rules() {
        let base = json!({"resourceType": "Practitioner", "firstName": "A", "lastName": "B", "email": "A@Example.com"});
        let request = parse(base.clone()).unwrap();
        assert_eq!(request.scope, UserScope::Server);
        assert_eq!(request.email.as_deref(), Some("a@example.com"));
        let mut patient = base.clone();
        patient["resourceType"] = json!("Patient");
        assert_eq!(
            parse(patient).unwrap().scope,
            UserScope::Project(Uuid::nil())
        );
        let mut external = base.clone();
        external["externalId"] = json!("x-1");
        assert_eq!(
            parse(external).unwrap().scope,
            UserScope::Project(Uuid::nil())
        );
        let mut scoped = base;
        scoped["scope"] = json!("project");
        assert_eq!(
            parse(scoped).unwrap().scope,
            UserScope::Project(Uuid::nil())
        );
    }

    #[test]
    fn every_invalid_field_is_its_own_issue() {
        let Err(Error::Invalid(issues)) = parse(json!({
            "resourceType": "Device", "email": "not-an-email", "scope": "galaxy",
            "sendEmail": "yes", "password": "short", "membership": {"project": "x"}
        })) else {
            panic!("expected invalid");
        };
        let fields: Vec<String> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        for field in [
            "resourceType",
            "firstName",
            "lastName",
            "email",
            "scope",
            "sendEmail",
            "password",
            "membership.project",
        ] {
            assert!(fields.iter().any(|f| f == field), "{field} in {fields:?}");
        }
    }

    /// The user-management guide sends its flags as strings.
    #[test]
    fn flags_may_be_the_strings_true_and_false() {
        let request = parse(json!({
            "resourceType": "Practitioner", "firstName": "A", "lastName": "B",
            "email": "a@example.com", "sendEmail": "false", "admin": "true", "upsert": "true"
        }))
        .unwrap();
        assert!(!request.send_email);
        assert!(request.upsert);
        assert_eq!(request.membership["admin"], json!(true));
        let Err(Error::Invalid(issues)) = parse(json!({
            "resourceType": "Practitioner", "firstName": "A", "lastName": "B",
            "email": "a@example.com", "sendEmail": "no", "membership": {"admin": 1}
        })) else {
            panic!("expected invalid");
        };
        let fields: Vec<String> = issues.iter().filter_map(|i| i.expression.clone()).collect();
        assert_eq!(fields, vec!["sendEmail", "admin"]);
    }
}
