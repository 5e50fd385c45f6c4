//! Who is calling: bearer tokens, the Login behind them, the membership and
//! project it speaks for, and the client-credentials grant that issues them.

pub mod admission;
pub mod client;
pub mod keys;
pub mod login;
pub mod mfa;
pub mod password;
pub mod policies;
pub mod secrets;
pub mod sessions;
pub mod token;
pub mod totp;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use access_policy::{CompiledPolicy, PolicyInput, Role};
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    app::AppState,
    error::{Error, Result},
    store::Tenant,
};

/// `Login.authMethod` of a token minted by `/auth/tokens` or an admin.
pub const PERSONAL_TOKEN: &str = "personal-token";

/// `Login.authMethod`s of a user signing in themselves.
const SIGN_IN_METHODS: &[&str] = &["password"];

/// The claims of a fhirgate access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// Empty when the user signed in without a client.
    pub client_id: String,
    pub login_id: String,
    pub scope: String,
    pub profile: String,
}

/// The authenticated caller of a request. A revoked login or a removed
/// membership stops working at once: see [`sessions`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The project of the caller's membership (its tenant).
    pub project_id: Uuid,
    pub role: Role,
    /// Reference to the caller's profile (`Practitioner/…`, `ClientApplication/…`),
    /// recorded as `meta.author` on what it writes.
    pub profile: String,
    /// The Login this request's token belongs to (a session).
    pub login_id: Uuid,
    /// `User/…` or `ClientApplication/…`: who signed in.
    pub user: String,
    pub membership_id: Uuid,
    /// The client the token was issued to, if any.
    pub client_id: Option<String>,
    /// The granted scope (SMART scopes are parsed with `access_policy::scopes`).
    pub scope: String,
    /// How the Login was made (`Login.authMethod`): `password` by the user
    /// signing in, `client`, `external` (a client's assertion), or
    /// `personal-token` (minted).
    pub auth_method: String,
    /// The membership's access policies, project settings and login scopes,
    /// compiled once for this request.
    pub policy: Arc<CompiledPolicy>,
    /// The AccessPolicies the caller's own membership names and those they
    /// are based on: a caller may not rewrite the rules that bind it.
    pub own_policies: Vec<Uuid>,
}

impl Caller {
    /// The rows this caller may see: its project, or every project for super admins.
    pub fn tenant(&self) -> Tenant {
        match self.role {
            Role::SuperAdmin => Tenant::AllProjects,
            _ => Tenant::Project(self.project_id),
        }
    }

    pub fn is_super_admin(&self) -> bool {
        self.role == Role::SuperAdmin
    }

    /// A turn among this caller's requests that can hold a database
    /// connection for long (searches, history, Bundles, conditional writes:
    /// [`admission`]), held until dropped; super admins need none. Reads by
    /// id and single writes are short and bounded, and take no turn.
    pub async fn take_turn(
        &self,
        state: &AppState,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>> {
        if self.is_super_admin() {
            return Ok(None);
        }
        state.admission.admit(self.membership_id).await.map(Some)
    }

    /// Account and administration routes act with the whole of a
    /// membership's access: a token narrowed by SMART resource scopes, or a
    /// personal token (minted for FHIR access), may not use them.
    pub fn require_full_access(&self) -> Result<()> {
        if self.auth_method == PERSONAL_TOKEN {
            return Err(Error::Forbidden(
                "A personal access token gives FHIR access only; account and administration routes need a token from signing in".into(),
            ));
        }
        if !access_policy::is_full_access(&self.scope) {
            return Err(Error::Forbidden(format!(
                "This token's scope '{}' is narrower than your access; account and administration routes need a token without SMART resource scopes",
                self.scope
            )));
        }
        Ok(())
    }

    /// Only the user acts on the user's account (email, password, tokens,
    /// sessions): the Login must be one the user made by signing in, or a
    /// refresh of it; not a client's, an assertion's or a minted one.
    pub fn require_own_session(&self) -> Result<()> {
        self.require_full_access()?;
        if !self.user.starts_with("User/") || !SIGN_IN_METHODS.contains(&self.auth_method.as_str())
        {
            return Err(Error::Forbidden(
                "Only a session you started by signing in yourself may act on your account; this token was not".into(),
            ));
        }
        Ok(())
    }

    /// The caller a bearer token stands for: remembered, or loaded from the
    /// database (see [`sessions`] for why a remembered one is current).
    /// `address` is the connection's, checked against the policy's IP rules.
    pub async fn from_bearer(
        state: &AppState,
        token: &str,
        address: Option<IpAddr>,
    ) -> Result<Caller> {
        let claims: AccessClaims = state.keys.verify(token, &state.base_url).await?;
        let login_id = Uuid::parse_str(&claims.login_id).map_err(|_| revoked())?;
        let key = sessions::SessionKey {
            login_id,
            scope: claims.scope.clone(),
            client_id: claims.client_id.clone(),
        };
        let caller = match state.sessions.get(&key) {
            Some(caller) => caller,
            None => {
                let generation = state.sessions.generation();
                let (caller, membership_ends) = Caller::load(state, claims, login_id).await?;
                if let Some(generation) = generation {
                    state
                        .sessions
                        .remember(generation, key, caller.clone(), membership_ends);
                }
                caller
            }
        };
        if let Some(address) = address {
            if !caller.policy.allows_address(address) {
                return Err(Error::Forbidden(format!(
                    "Your access policy does not allow requests from {address}"
                )));
            }
        }
        Ok(caller)
    }

    /// The caller a Login stands for outside a request, with the scope and
    /// client its token had: a background export reads as the caller who
    /// asked would, and stops being able to once that Login is revoked.
    pub async fn for_login(
        state: &AppState,
        login_id: Uuid,
        scope: &str,
        client_id: &str,
    ) -> Result<Caller> {
        let claims = AccessClaims {
            iss: String::new(),
            sub: String::new(),
            aud: String::new(),
            iat: 0,
            exp: 0,
            client_id: client_id.to_string(),
            login_id: login_id.to_string(),
            scope: scope.to_string(),
            profile: String::new(),
        };
        Ok(Caller::load(state, claims, login_id).await?.0)
    }

    /// Reads the token's Login, membership, Project and user (one statement)
    /// and the membership's AccessPolicies (one more), and compiles the
    /// policy. Also returns when the membership ends, if it does.
    async fn load(
        state: &AppState,
        claims: AccessClaims,
        login_id: Uuid,
    ) -> Result<(Caller, Option<chrono::DateTime<chrono::Utc>>)> {
        let session = state.store.session(login_id).await?.ok_or_else(revoked)?;
        let parse = |content: &str| {
            serde_json::from_str::<Value>(content)
                .map_err(|e| Error::Internal(format!("stored session {login_id} is not JSON: {e}")))
        };
        let login = parse(&session.login)?;
        if login["revoked"] == Value::Bool(true) || login["granted"] != Value::Bool(true) {
            return Err(revoked());
        }
        let membership_id =
            reference_id(&login["membership"], "ProjectMembership").ok_or_else(revoked)?;
        let (project_id, membership) = session.membership.as_ref().ok_or_else(revoked)?;
        let (project_id, membership) = (*project_id, parse(membership)?);
        // A deleted user's sessions end with it, a client's with the client.
        if !session.user_live
            || !session.client_live
            || !membership_usable(&membership, chrono::Utc::now())
            || membership["user"]["reference"] != login["user"]["reference"]
        {
            return Err(revoked());
        }
        let user = login["user"]["reference"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let project = parse(session.project.as_deref().ok_or_else(revoked)?)?;
        let profile = membership["profile"]["reference"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let scopes = access_policy::parse_scope(&claims.scope);
        let (role, policy, own_policies) =
            membership_access(state, project_id, &project, &membership, &scopes).await?;
        let caller = Caller {
            project_id,
            role,
            profile,
            login_id,
            user,
            membership_id,
            client_id: (!claims.client_id.is_empty()).then_some(claims.client_id),
            scope: claims.scope,
            auth_method: login["authMethod"].as_str().unwrap_or_default().to_string(),
            policy: Arc::new(policy),
            own_policies,
        };
        Ok((caller, membership_end(&membership)))
    }
}

/// What a membership of `project` may do: its role, its compiled policies
/// (narrowed by SMART `scopes`, if any), and the policies it may not edit.
pub async fn membership_access(
    state: &AppState,
    project_id: Uuid,
    project: &Value,
    membership: &Value,
    scopes: &[access_policy::ScopeGrant],
) -> Result<(Role, CompiledPolicy, Vec<Uuid>)> {
    let role = if project["superAdmin"] == Value::Bool(true) {
        Role::SuperAdmin
    } else if membership["admin"] == Value::Bool(true) {
        Role::ProjectAdmin
    } else {
        Role::Member
    };
    let profile = membership["profile"]["reference"]
        .as_str()
        .unwrap_or_default();
    let (policies, own_policies) =
        policies::membership_policies(&state.store, project_id, membership).await?;
    let policy = CompiledPolicy::compile(&PolicyInput {
        role,
        profile,
        policies,
        policy_required: setting_is_true(project, "policyRequired"),
        scopes,
    });
    for problem in policy.problems() {
        tracing::warn!(membership = %membership["id"], "access policy entry grants nothing: {problem}");
    }
    Ok((role, policy, own_policies))
}

fn revoked() -> Error {
    Error::Unauthorized("Access token has been revoked; sign in again".into())
}

/// `Project.setting[]` `{name, valueBoolean: true}`.
fn setting_is_true(project: &Value, name: &str) -> bool {
    project["setting"].as_array().is_some_and(|settings| {
        settings
            .iter()
            .any(|s| s["name"] == name && s["valueBoolean"] == Value::Bool(true))
    })
}

/// A live (not deleted) resource's parsed content.
pub async fn read_live(
    state: &AppState,
    tenant: Tenant,
    resource_type: &str,
    id: Uuid,
) -> Result<Option<Value>> {
    let content = state
        .store
        .read(tenant, resource_type, id, &access_policy::RowFilter::All)
        .await?
        .and_then(|version| version.content);
    content
        .map(|content| {
            serde_json::from_str(&content).map_err(|e| {
                Error::Internal(format!("stored {resource_type}/{id} is not JSON: {e}"))
            })
        })
        .transpose()
}

/// Whether a membership works at `now`: not deactivated (`active: false`) and
/// not past its end ([`membership_end`]).
pub fn membership_usable(membership: &Value, now: chrono::DateTime<chrono::Utc>) -> bool {
    membership["active"] != Value::Bool(false)
        && membership_end(membership).is_none_or(|end| now < end)
}

/// When a membership stops working: its `endDate` (fhirgate's extension; a
/// date means through that day, UTC). An end this server cannot read (a year
/// or year-month) ends nothing early.
fn membership_end(membership: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    let end = membership["endDate"].as_str()?;
    chrono::DateTime::parse_from_rfc3339(end)
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(end, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.succ_opt())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        })
}

/// The id of a `{"reference": "Type/<uuid>"}` of the expected type.
pub fn reference_id(reference: &Value, resource_type: &str) -> Option<Uuid> {
    let (kind, id) = reference["reference"].as_str()?.split_once('/')?;
    (kind == resource_type)
        .then(|| Uuid::parse_str(id).ok())
        .flatten()
}

impl FromRequest for Caller {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Caller>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        // The connection's address, or the client a trusted proxy names.
        let address = state.as_ref().and_then(|state| {
            crate::http::client_address::client_address(
                req.headers(),
                req.peer_addr(),
                &state.config.trusted_proxies,
            )
        });
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let req = req.clone();
        Box::pin(async move {
            let state = state.ok_or_else(|| Error::Internal("application state missing".into()))?;
            let header = header.ok_or_else(|| {
                Error::Unauthorized(
                    "Authentication required: send 'Authorization: Bearer <access token>'".into(),
                )
            })?;
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Error::Unauthorized(
                        "The Authorization header must be 'Bearer <access token>'".into(),
                    )
                })?;
            let caller = Caller::from_bearer(&state, token, address).await?;
            req.extensions_mut()
                .insert(crate::http::read_your_writes::Writer(caller.membership_id));
            Ok(caller)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn memberships_end() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-06-15T12:00:00Z")
            .unwrap()
            .to_utc();
        assert!(membership_usable(&json!({}), now));
        assert!(!membership_usable(&json!({"active": false}), now));
        assert!(membership_usable(&json!({"endDate": "2026-06-15"}), now));
        assert!(!membership_usable(&json!({"endDate": "2026-06-14"}), now));
        assert!(!membership_usable(
            &json!({"endDate": "2026-06-15T11:59:59Z"}),
            now
        ));
        assert!(membership_usable(
            &json!({"endDate": "2026-06-15T12:00:01+00:00"}),
            now
        ));
    }
}
