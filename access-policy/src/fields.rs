//! Dot paths into resources (`address.line`), through arrays at any level:
//! hidden fields are removed from what is returned, readonly ones put back
//! to their stored values on write.

use serde_json::Value;

/// Removes the field at `path` everywhere it occurs.
pub fn remove(value: &mut Value, path: &str) {
    let segments: Vec<&str> = path.split('.').collect();
    remove_at(value, &segments);
}

fn remove_at(value: &mut Value, path: &[&str]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| remove_at(item, path)),
        Value::Object(map) => match path {
            [] => {}
            [last] => {
                map.remove(*last);
            }
            [first, rest @ ..] => {
                if let Some(child) = map.get_mut(*first) {
                    remove_at(child, rest);
                }
            }
        },
        _ => {}
    }
}

/// Gives `new` the value `old` has at `path` (or none, where `old` has
/// none). Arrays are matched element by element, in order, as a client
/// that sends back what it read keeps them.
pub fn restore(new: &mut Value, old: Option<&Value>, path: &str) {
    let segments: Vec<&str> = path.split('.').collect();
    restore_at(new, old, &segments);
}

fn restore_at(new: &mut Value, old: Option<&Value>, path: &[&str]) {
    if let Value::Array(items) = new {
        for (n, item) in items.iter_mut().enumerate() {
            restore_at(item, old.and_then(|o| o.get(n)), path);
        }
        return;
    }
    let (Value::Object(map), Some((first, rest))) = (new, path.split_first()) else {
        return;
    };
    let old_child = old.and_then(|o| o.get(*first));
    if rest.is_empty() {
        match old_child {
            Some(value) => {
                map.insert(first.to_string(), value.clone());
            }
            None => {
                map.remove(*first);
            }
        }
        return;
    }
    match map.get_mut(*first) {
        Some(child) => restore_at(child, old_child, rest),
        None => {
            if let Some(kept) = old_child.and_then(|o| only(o, rest)) {
                map.insert(first.to_string(), kept);
            }
        }
    }
}

/// `value` cut down to what lies on `path`; `None` when nothing does.
fn only(value: &Value, path: &[&str]) -> Option<Value> {
    match value {
        Value::Array(items) => {
            let kept: Vec<Value> = items.iter().filter_map(|item| only(item, path)).collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        Value::Object(map) => {
            let (first, rest) = path.split_first()?;
            let child = map.get(*first)?;
            let kept = if rest.is_empty() {
                child.clone()
            } else {
                only(child, rest)?
            };
            let mut out = serde_json::Map::new();
            out.insert(first.to_string(), kept);
            Some(Value::Object(out))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removes_through_arrays() {
        let mut p = json!({"resourceType": "Patient", "birthDate": "1970",
            "address": [{"line": ["1 Main"], "city": "X"}, {"city": "Y", "line": ["2"]}]});
        remove(&mut p, "address.line");
        remove(&mut p, "birthDate");
        remove(&mut p, "nothing.here");
        assert_eq!(
            p,
            json!({"resourceType": "Patient", "address": [{"city": "X"}, {"city": "Y"}]})
        );
    }

    #[test]
    fn restores_stored_values() {
        let old = json!({"birthDate": "1970", "address": [{"line": ["1 Main"], "city": "X"}],
            "contact": [{"name": {"family": "F", "given": ["G"]}}]});
        // What a client read (fields hidden) and changed.
        let mut new = json!({"address": [{"city": "Z"}], "birthDate": "2000",
            "contact": [{"name": {"given": ["H"]}}]});
        restore(&mut new, Some(&old), "address.line");
        restore(&mut new, Some(&old), "birthDate");
        restore(&mut new, Some(&old), "contact.name.family");
        assert_eq!(
            new,
            json!({"address": [{"city": "Z", "line": ["1 Main"]}], "birthDate": "1970",
                "contact": [{"name": {"given": ["H"], "family": "F"}}]})
        );
        // A parent the client left out keeps only the protected part.
        let mut bare = json!({});
        restore(&mut bare, Some(&old), "address.line");
        assert_eq!(bare, json!({"address": [{"line": ["1 Main"]}]}));
        // Nothing stored: nothing may be set.
        let mut set = json!({"birthDate": "1", "address": [{"line": ["x"]}]});
        restore(&mut set, Some(&json!({})), "birthDate");
        restore(&mut set, Some(&json!({})), "address.line");
        assert_eq!(set, json!({"address": [{}]}));
    }
}
