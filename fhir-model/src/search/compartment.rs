//! Which compartments a resource is in, from the vendored compartment
//! definitions: computed on write and stored, so `_compartment` is one
//! indexed lookup whatever the resource's type.

use super::{IndexValue, ParamLookup};

/// Compartment types with a vendored definition.
pub const COMPARTMENT_TYPES: &[&str] = &["Patient"];

/// `(compartment_type, id)` for every compartment the resource is in: a
/// compartment resource is in its own, and any resource is in the
/// compartment of each resource its compartment parameters refer to.
pub fn compartments(
    lookup: &dyn ParamLookup,
    resource_type: &str,
    id: &str,
    index: &[IndexValue],
) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    for compartment_type in COMPARTMENT_TYPES {
        if resource_type == *compartment_type {
            found.push((compartment_type.to_string(), id.to_string()));
        }
        let params = lookup.compartment_params(compartment_type, resource_type);
        for value in index {
            let IndexValue::Reference {
                param,
                target_type: Some(target_type),
                target_id: Some(target_id),
                ..
            } = value
            else {
                continue;
            };
            let pair = (target_type.clone(), target_id.clone());
            if target_type == compartment_type && params.contains(param) && !found.contains(&pair) {
                found.push(pair);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{extract, Registry};
    use serde_json::json;

    #[test]
    fn observations_are_in_their_subjects_and_performers_compartments() {
        let registry = Registry::get();
        let observation = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Patient/p2"}, {"reference": "Practitioner/d1"}],
            "focus": [{"reference": "Patient/p3"}]
        });
        let index = extract(registry, &observation);
        let mut got = compartments(registry, "Observation", "o1", &index);
        got.sort();
        assert_eq!(
            got,
            vec![
                ("Patient".to_string(), "p1".to_string()),
                ("Patient".to_string(), "p2".to_string())
            ]
        );
        let patient = json!({"resourceType": "Patient", "id": "p1"});
        let index = extract(registry, &patient);
        assert_eq!(
            compartments(registry, "Patient", "p1", &index),
            vec![("Patient".to_string(), "p1".to_string())]
        );
        let org = json!({"resourceType": "Organization", "id": "x"});
        assert!(compartments(registry, "Organization", "x", &extract(registry, &org)).is_empty());
    }
}
