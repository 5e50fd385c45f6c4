//! SMART scopes as the policy engine takes them: per resource type (or `*`),
//! the interactions granted and an optional search that narrows them.
//!
//! The scopes themselves are parsed by [`crate::scopes`].

use crate::{
    scopes::{Permissions, Scope},
    Interaction,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeGrant {
    /// A resource type, or `*`.
    pub resource_type: String,
    pub interactions: Vec<Interaction>,
    /// A search (`category=laboratory`) that narrows the grant.
    pub query: Option<String>,
}

/// What a SMART permission set allows, as interactions: v2 `r` covers the
/// read-like interactions on one resource, `s` search.
fn interactions(permissions: Permissions) -> Vec<Interaction> {
    use Interaction::*;
    let mut out = Vec::new();
    if permissions.create {
        out.push(Create);
    }
    if permissions.read {
        out.extend([Read, Vread, History]);
    }
    if permissions.update {
        out.extend([Update, Patch]);
    }
    if permissions.delete {
        out.push(Delete);
    }
    if permissions.search {
        out.push(Search);
    }
    out
}

/// Whether a scope string leaves a membership's access whole: no SMART
/// resource scope, or one that grants every interaction on every type.
pub fn is_full_access(scope: &str) -> bool {
    let grants = parse_scope(scope);
    grants.is_empty()
        || grants.iter().any(|g| {
            g.resource_type == "*"
                && g.query.is_none()
                && crate::Interaction::ALL
                    .iter()
                    .all(|i| g.interactions.contains(i))
        })
}

/// The resource grants of a space-separated scope string (a Login's, checked
/// when it was granted); other scopes (openid, offline_access, …) grant and
/// narrow nothing.
pub fn parse_scope(scope: &str) -> Vec<ScopeGrant> {
    scope
        .split_whitespace()
        .filter_map(|token| match Scope::parse(token) {
            Ok(Scope::Resource(resource)) => Some(ScopeGrant {
                resource_type: resource.resource_type.unwrap_or_else(|| "*".into()),
                interactions: interactions(resource.permissions),
                query: resource.query,
            }),
            _ => None,
        })
        .filter(|grant| !grant.interactions.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowed_scopes_are_not_full_access() {
        assert!(is_full_access("openid profile offline_access"));
        assert!(is_full_access("openid user/*.*"));
        assert!(is_full_access("system/*.cruds"));
        assert!(!is_full_access("openid patient/Observation.rs"));
        assert!(!is_full_access("user/*.rs"));
        assert!(!is_full_access("user/*.cruds?category=laboratory"));
    }

    #[test]
    fn reads_v1_and_v2_scopes() {
        let grants = parse_scope("openid patient/Observation.read user/*.* system/Patient.rs?gender=female offline_access x/y.z");
        assert_eq!(grants.len(), 3);
        assert_eq!(grants[0].resource_type, "Observation");
        assert!(!grants[0].interactions.iter().any(|i| i.is_write()));
        assert_eq!(grants[1].interactions.len(), 8);
        assert_eq!(grants[2].query.as_deref(), Some("gender=female"));
        assert!(grants[2].interactions.contains(&Interaction::Search));
        assert!(!grants[2].interactions.contains(&Interaction::Update));
        assert!(parse_scope("patient/Observation.q").is_empty());
    }
}
