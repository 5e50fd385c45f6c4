//! SMART App Launch scopes, v1 (`patient/Observation.read`) and v2
//! (`patient/Observation.rs`, `user/*.cruds?category=…`), plus the OpenID and
//! launch scopes. Parsing, rendering, and the intersection of what a client
//! asks for with what it may have.

use std::fmt;

/// Whose data a resource scope speaks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    fn parse(s: &str) -> Option<Context> {
        match s {
            "patient" => Some(Context::Patient),
            "user" => Some(Context::User),
            "system" => Some(Context::System),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// SMART v2 permissions: create, read, update, delete, search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Permissions {
    pub create: bool,
    pub read: bool,
    pub update: bool,
    pub delete: bool,
    pub search: bool,
}

impl Permissions {
    const LETTERS: [char; 5] = ['c', 'r', 'u', 'd', 's'];

    fn flags(&self) -> [bool; 5] {
        [
            self.create,
            self.read,
            self.update,
            self.delete,
            self.search,
        ]
    }

    fn from_flags(f: [bool; 5]) -> Permissions {
        Permissions {
            create: f[0],
            read: f[1],
            update: f[2],
            delete: f[3],
            search: f[4],
        }
    }

    /// v1 `read`, `write`, `*`, or v2 letters in the order `cruds`.
    fn parse(s: &str) -> Option<(Permissions, bool)> {
        let v1 = match s {
            "read" => Some([false, true, false, false, true]),
            "write" => Some([true, false, true, true, false]),
            "*" => Some([true; 5]),
            _ => None,
        };
        if let Some(flags) = v1 {
            return Some((Permissions::from_flags(flags), false));
        }
        // v2: each letter at most once, in the canonical order.
        let mut flags = [false; 5];
        let mut next = 0;
        for c in s.chars() {
            let at = Self::LETTERS[next..].iter().position(|l| *l == c)? + next;
            flags[at] = true;
            next = at + 1;
        }
        (!s.is_empty()).then_some((Permissions::from_flags(flags), true))
    }

    pub fn intersect(self, other: Permissions) -> Permissions {
        let (a, b) = (self.flags(), other.flags());
        Permissions::from_flags(std::array::from_fn(|i| a[i] && b[i]))
    }

    pub fn union(self, other: Permissions) -> Permissions {
        let (a, b) = (self.flags(), other.flags());
        Permissions::from_flags(std::array::from_fn(|i| a[i] || b[i]))
    }

    pub fn is_empty(&self) -> bool {
        !self.flags().contains(&true)
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (on, letter) in self.flags().iter().zip(Self::LETTERS) {
            if *on {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// `context/Type.permissions[?query]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    pub permissions: Permissions,
    /// v2 search-parameter restriction (`?category=laboratory`), as written.
    pub query: Option<String>,
    /// The token as written, kept when it is granted unchanged so a v1
    /// client gets back the v1 scope it asked for.
    raw: Option<String>,
}

impl ResourceScope {
    /// Whether `allowed` speaks of the same context and of this type (or any).
    fn covered_by(&self, allowed: &ResourceScope) -> bool {
        self.context == allowed.context
            && (allowed.resource_type.is_none() || allowed.resource_type == self.resource_type)
            && (allowed.query.is_none() || allowed.query == self.query)
    }
}

impl fmt::Display for ResourceScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(raw) = &self.raw {
            return f.write_str(raw);
        }
        let resource_type = self.resource_type.as_deref().unwrap_or("*");
        write!(
            f,
            "{}/{resource_type}.{}",
            self.context.as_str(),
            self.permissions
        )?;
        if let Some(query) = &self.query {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Resource(ResourceScope),
    /// `launch` (EHR launch) or `launch/patient`, `launch/encounter`.
    Launch(Option<String>),
    OpenId,
    FhirUser,
    Profile,
    Email,
    OfflineAccess,
    OnlineAccess,
    /// Any other token (a server's own scopes): kept as it is.
    Other(String),
}

impl Scope {
    pub fn parse(token: &str) -> Result<Scope, ScopeError> {
        let invalid = |why: &str| ScopeError {
            token: token.to_string(),
            message: why.to_string(),
        };
        if token.is_empty()
            || !token
                .chars()
                .all(|c| c == '!' || ('#'..='[').contains(&c) || (']'..='~').contains(&c))
        {
            return Err(invalid(
                "scope tokens are printable ASCII without spaces, '\"' or '\\'",
            ));
        }
        Ok(match token {
            "openid" => Scope::OpenId,
            "fhirUser" => Scope::FhirUser,
            "profile" => Scope::Profile,
            "email" => Scope::Email,
            "offline_access" => Scope::OfflineAccess,
            "online_access" => Scope::OnlineAccess,
            "launch" => Scope::Launch(None),
            _ => {
                if let Some(what) = token.strip_prefix("launch/") {
                    return Ok(Scope::Launch(Some(what.to_string())));
                }
                let Some((context, rest)) = token.split_once('/') else {
                    return Ok(Scope::Other(token.to_string()));
                };
                let Some(context) = Context::parse(context) else {
                    return Ok(Scope::Other(token.to_string()));
                };
                let (target, query) = match rest.split_once('?') {
                    Some((target, query)) => (target, Some(query.to_string())),
                    None => (rest, None),
                };
                let (resource_type, permissions) = target.rsplit_once('.').ok_or_else(|| {
                    invalid(
                        "a resource scope is context/Type.permissions, e.g. patient/Observation.rs",
                    )
                })?;
                let (permissions, v2) = Permissions::parse(permissions).ok_or_else(|| {
                    invalid("permissions are read, write, * (SMART v1) or letters of cruds in that order (SMART v2)")
                })?;
                let valid_type = resource_type == "*"
                    || (resource_type.starts_with(|c: char| c.is_ascii_uppercase())
                        && resource_type.chars().all(|c| c.is_ascii_alphanumeric()));
                if !valid_type {
                    return Err(invalid("the resource type must be a FHIR type name or *"));
                }
                if query.is_some() && !v2 {
                    return Err(invalid(
                        "a ?query restriction needs SMART v2 permissions (cruds)",
                    ));
                }
                Scope::Resource(ResourceScope {
                    context,
                    resource_type: (resource_type != "*").then(|| resource_type.to_string()),
                    permissions,
                    query,
                    raw: Some(token.to_string()),
                })
            }
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource(r) => r.fmt(f),
            Scope::Launch(None) => f.write_str("launch"),
            Scope::Launch(Some(what)) => write!(f, "launch/{what}"),
            Scope::OpenId => f.write_str("openid"),
            Scope::FhirUser => f.write_str("fhirUser"),
            Scope::Profile => f.write_str("profile"),
            Scope::Email => f.write_str("email"),
            Scope::OfflineAccess => f.write_str("offline_access"),
            Scope::OnlineAccess => f.write_str("online_access"),
            Scope::Other(token) => f.write_str(token),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeError {
    pub token: String,
    pub message: String,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "scope '{}': {}", self.token, self.message)
    }
}

/// A space-separated scope string (RFC 6749 §3.3), duplicates dropped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeSet(pub Vec<Scope>);

impl ScopeSet {
    pub fn parse(scope: &str) -> Result<ScopeSet, ScopeError> {
        let mut scopes: Vec<Scope> = Vec::new();
        for token in scope.split(' ').filter(|t| !t.is_empty()) {
            let parsed = Scope::parse(token)?;
            if !scopes.contains(&parsed) {
                scopes.push(parsed);
            }
        }
        Ok(ScopeSet(scopes))
    }

    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn resource_scopes(&self) -> impl Iterator<Item = &ResourceScope> {
        self.0.iter().filter_map(|s| match s {
            Scope::Resource(r) => Some(r),
            _ => None,
        })
    }

    /// What of `self` (requested) `allowed` grants: a non-resource scope if
    /// `allowed` has it; a resource scope narrowed to the permissions the
    /// allowed scopes of its context and type give together. Scopes left with
    /// no permission are dropped.
    pub fn intersect(&self, allowed: &ScopeSet) -> ScopeSet {
        let mut granted = Vec::new();
        for scope in &self.0 {
            match scope {
                Scope::Resource(requested) => {
                    let permitted = allowed
                        .resource_scopes()
                        .filter(|a| requested.covered_by(a))
                        .fold(Permissions::default(), |acc, a| acc.union(a.permissions));
                    let permissions = requested.permissions.intersect(permitted);
                    if permissions.is_empty() {
                        continue;
                    }
                    let mut narrowed = requested.clone();
                    if permissions != requested.permissions {
                        narrowed.permissions = permissions;
                        narrowed.raw = None;
                    }
                    granted.push(Scope::Resource(narrowed));
                }
                other if allowed.contains(other) => granted.push(other.clone()),
                _ => {}
            }
        }
        ScopeSet(granted)
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            scope.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> ScopeSet {
        ScopeSet::parse(s).unwrap()
    }

    #[test]
    fn parses_v1_and_v2() {
        let Scope::Resource(r) = Scope::parse("patient/Observation.read").unwrap() else {
            panic!()
        };
        assert_eq!(r.context, Context::Patient);
        assert_eq!(r.resource_type.as_deref(), Some("Observation"));
        assert_eq!(r.permissions.to_string(), "rs");
        let Scope::Resource(r) = Scope::parse("user/*.cruds").unwrap() else {
            panic!()
        };
        assert_eq!(r.resource_type, None);
        assert_eq!(r.permissions.to_string(), "cruds");
        let Scope::Resource(r) = Scope::parse("system/*.write").unwrap() else {
            panic!()
        };
        assert_eq!(r.permissions.to_string(), "cud");
        let Scope::Resource(r) =
            Scope::parse("patient/Observation.rs?category=laboratory").unwrap()
        else {
            panic!()
        };
        assert_eq!(r.query.as_deref(), Some("category=laboratory"));
        assert_eq!(
            Scope::parse("launch/patient").unwrap(),
            Scope::Launch(Some("patient".into()))
        );
        assert_eq!(Scope::parse("openid").unwrap(), Scope::OpenId);
        assert_eq!(Scope::parse("fhirUser").unwrap(), Scope::FhirUser);
        assert_eq!(
            Scope::parse("offline_access").unwrap(),
            Scope::OfflineAccess
        );
        assert_eq!(
            Scope::parse("custom:thing").unwrap(),
            Scope::Other("custom:thing".into())
        );
    }

    #[test]
    fn refuses_malformed_resource_scopes() {
        for bad in [
            "patient/Observation",
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "user/observation.read",
            "patient/Observation.read?code=1",
            "bad\"token",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_and_drops_duplicates() {
        let s = "openid fhirUser patient/Observation.read user/*.cruds launch/patient openid";
        assert_eq!(
            set(s).to_string(),
            "openid fhirUser patient/Observation.read user/*.cruds launch/patient"
        );
    }

    #[test]
    fn intersection_narrows_to_what_the_client_may_have() {
        let allowed = set("openid patient/Observation.r patient/*.s user/Patient.cruds");
        let granted = set(
            "openid fhirUser patient/Observation.read patient/Condition.rs user/Patient.read system/*.read",
        )
        .intersect(&allowed);
        assert_eq!(
            granted.to_string(),
            "openid patient/Observation.read patient/Condition.s user/Patient.read"
        );
        // A query-restricted allowance covers only that query.
        let allowed = set("patient/Observation.rs?category=laboratory");
        assert!(set("patient/Observation.rs").intersect(&allowed).is_empty());
        assert_eq!(
            set("patient/Observation.r?category=laboratory")
                .intersect(&allowed)
                .to_string(),
            "patient/Observation.r?category=laboratory"
        );
    }
}
