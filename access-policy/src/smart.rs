//! SMART scopes as the policy engine takes them: per resource type (or `*`),
//! the interactions granted and an optional search that narrows them.
//!
//! `parse_scope` is a minimal stand-in until the full scope parser
//! (`scopes.rs`) is connected: it reads `patient|user|system/<Type|*>.<perm>`
//! with v1 permissions (`read`, `write`, `*`) or v2 letters (`cruds`) and an
//! optional `?query`; anything else (openid, offline_access, …) grants nothing
//! and narrows nothing.

use crate::Interaction;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeGrant {
    /// A resource type, or `*`.
    pub resource_type: String,
    pub interactions: Vec<Interaction>,
    /// A search (`category=laboratory`) that narrows the grant.
    pub query: Option<String>,
}

fn permissions(text: &str) -> Option<Vec<Interaction>> {
    use Interaction::*;
    match text {
        "*" => return Some(Interaction::ALL.to_vec()),
        "read" => return Some(Interaction::READS.to_vec()),
        "write" => return Some(vec![Create, Update, Patch, Delete]),
        _ => {}
    }
    let mut out = Vec::new();
    for letter in text.chars() {
        match letter {
            'c' => out.push(Create),
            'r' => out.extend([Read, Vread, History]),
            'u' => out.extend([Update, Patch]),
            'd' => out.push(Delete),
            's' => out.push(Search),
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The resource grants of a space-separated scope string.
pub fn parse_scope(scope: &str) -> Vec<ScopeGrant> {
    scope
        .split_whitespace()
        .filter_map(|token| {
            let (context, rest) = token.split_once('/')?;
            if !matches!(context, "patient" | "user" | "system") {
                return None;
            }
            let (rest, query) = match rest.split_once('?') {
                Some((r, q)) => (r, Some(q.to_string())),
                None => (rest, None),
            };
            let (resource_type, perm) = rest.rsplit_once('.')?;
            Some(ScopeGrant {
                resource_type: resource_type.to_string(),
                interactions: permissions(perm)?,
                query,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
