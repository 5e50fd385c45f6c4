//! `AccessPolicy.basedOn` (Medplum's shape: `basedOn: [{"reference":
//! "AccessPolicy/<id>"}]`): a policy's entries are merged with those of the
//! policies it is based on, and theirs, recursively. Each policy reached
//! compiles with the parameters of the membership entry that named the first
//! one, so `%patient` and the like resolve per membership. A cycle is refused
//! when a policy is saved ([`cycle`]); one already stored (written around the
//! server) is walked once and ends there.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::PolicyError;

/// The policies a caller's policy and what it is based on count, at most:
/// a longer chain is followed no further.
pub const MAX_POLICIES: usize = 32;

const PREFIX: &str = "AccessPolicy/";

/// The ids of the policies `policy` is directly based on, in order.
pub fn bases(policy: &Value) -> Vec<&str> {
    policy["basedOn"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|base| base["reference"].as_str()?.strip_prefix(PREFIX))
        .collect()
}

/// `basedOn` must be an array of `{"reference": "AccessPolicy/<id>"}`.
pub(crate) fn check_shape(policy: &Value) -> Result<(), PolicyError> {
    let entries = match &policy["basedOn"] {
        Value::Null => return Ok(()),
        Value::Array(entries) => entries,
        _ => {
            return Err(PolicyError::new(
                "AccessPolicy.basedOn",
                "must be an array of references to AccessPolicies",
            ))
        }
    };
    for (n, entry) in entries.iter().enumerate() {
        let named = entry["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix(PREFIX))
            .is_some_and(|id| !id.is_empty() && !id.contains('/'));
        if !named {
            return Err(PolicyError::new(
                format!("AccessPolicy.basedOn[{n}]"),
                "must be {\"reference\": \"AccessPolicy/<id>\"}",
            ));
        }
    }
    Ok(())
}

/// `root` and every policy it reaches through `basedOn`, `stored` giving the
/// policies by id: depth first, each once, at most [`MAX_POLICIES`]. Ids
/// that `stored` lacks (deleted, or never there) are listed too: they grant
/// nothing, but they still bind whoever they would apply to.
pub fn closure<'a>(root: &'a str, stored: &'a HashMap<String, Value>) -> Vec<&'a str> {
    let mut reached = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if reached.len() == MAX_POLICIES {
            break;
        }
        if !seen.insert(id) {
            continue;
        }
        reached.push(id);
        if let Some(policy) = stored.get(id) {
            // Reversed onto the stack: the first base is walked first.
            stack.extend(bases(policy).into_iter().rev());
        }
    }
    reached
}

/// Why `policy`, about to be saved as `AccessPolicy/<id>`, cannot be: the
/// chain of `basedOn` that leads from it back to itself (the ids, first and
/// last `id`), `stored` giving the other policies by id. `None` when there
/// is no such chain.
pub fn cycle(id: &str, policy: &Value, stored: &HashMap<String, Value>) -> Option<Vec<String>> {
    // Depth first, each path kept; a policy already explored leads nowhere new.
    let mut explored = HashSet::new();
    let mut stack: Vec<Vec<&str>> = bases(policy)
        .into_iter()
        .rev()
        .map(|base| vec![id, base])
        .collect();
    while let Some(path) = stack.pop() {
        let last = *path.last().expect("paths are never empty");
        if last == id {
            return Some(path.iter().map(|s| s.to_string()).collect());
        }
        if !explored.insert(last) {
            continue;
        }
        for base in stored
            .get(last)
            .map(bases)
            .unwrap_or_default()
            .into_iter()
            .rev()
        {
            let mut longer = path.clone();
            longer.push(base);
            stack.push(longer);
        }
    }
    None
}

/// The message naming a cycle [`cycle`] found.
pub fn describe_cycle(path: &[String]) -> String {
    let chain: Vec<String> = path.iter().map(|id| format!("{PREFIX}{id}")).collect();
    format!(
        "basedOn makes a cycle: {}; a policy cannot be based on itself, directly or through others",
        chain.join(", which is based on ")
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn based_on(ids: &[&str]) -> Value {
        json!({"resourceType": "AccessPolicy", "basedOn": ids.iter().map(|id| json!({"reference": format!("AccessPolicy/{id}")})).collect::<Vec<_>>()})
    }

    fn stored(edges: &[(&str, &[&str])]) -> HashMap<String, Value> {
        edges
            .iter()
            .map(|(id, bases)| (id.to_string(), based_on(bases)))
            .collect()
    }

    #[test]
    fn closures_walk_bases_depth_first_once_each() {
        let policies = stored(&[
            ("a", &["b", "c"]),
            ("b", &["d"]),
            ("c", &["d", "gone"]),
            ("d", &[]),
        ]);
        assert_eq!(closure("a", &policies), ["a", "b", "d", "c", "gone"]);
        assert_eq!(closure("d", &policies), ["d"]);
        // A stored cycle ends where it closes.
        let looping = stored(&[("x", &["y"]), ("y", &["x"])]);
        assert_eq!(closure("x", &looping), ["x", "y"]);
        // A chain longer than the bound is cut.
        let ids: Vec<String> = (0..100).map(|n| n.to_string()).collect();
        let chain: HashMap<String, Value> = (0..99)
            .map(|n| (ids[n].clone(), based_on(&[&ids[n + 1]])))
            .collect();
        assert_eq!(closure("0", &chain).len(), MAX_POLICIES);
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        let policies = stored(&[("b", &["c"]), ("c", &["d"]), ("d", &[]), ("e", &["e"])]);
        assert_eq!(cycle("a", &based_on(&["b"]), &policies), None);
        assert_eq!(
            cycle("d", &based_on(&["b"]), &policies),
            Some(vec!["d".into(), "b".into(), "c".into(), "d".into()])
        );
        assert_eq!(
            cycle("a", &based_on(&["a"]), &policies),
            Some(vec!["a".into(), "a".into()])
        );
        // A cycle elsewhere that does not pass through the policy saved is
        // not its own, and the walk still ends.
        assert_eq!(cycle("a", &based_on(&["e", "b"]), &policies), None);
        assert_eq!(
            describe_cycle(&["d".into(), "b".into(), "d".into()]),
            "basedOn makes a cycle: AccessPolicy/d, which is based on AccessPolicy/b, which is based on AccessPolicy/d; a policy cannot be based on itself, directly or through others"
        );
    }

    #[test]
    fn based_on_must_name_access_policies() {
        assert!(check_shape(&json!({})).is_ok());
        assert!(check_shape(&based_on(&["x"])).is_ok());
        for bad in [
            json!({"basedOn": {"reference": "AccessPolicy/x"}}),
            json!({"basedOn": [{"reference": "Patient/x"}]}),
            json!({"basedOn": [{"reference": "AccessPolicy/"}]}),
            json!({"basedOn": ["AccessPolicy/x"]}),
        ] {
            assert!(check_shape(&bad).is_err(), "{bad}");
        }
    }
}
