//! The AccessPolicy resource, in Medplum's shape, read from its JSON and
//! validated when it is saved: a criteria string, a FHIRPath constraint or a
//! CIDR range that cannot be used is an error then, never ignored later.

use fhir_model::resource_types::is_known_resource_type;
use fhir_model::search::fhirpath::Expression;
use fhir_model::search::{parse_search, Filter, Registry};
use serde_json::Value;

use crate::ip::IpRule;
use crate::params::placeholders;
use crate::{Interaction, PolicyError};

/// One `AccessPolicy.resource[]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceRule {
    /// A resource type, or `*` for every ordinary (non-administrative) type.
    pub resource_type: String,
    /// `Type?search`, parameters substituted.
    pub criteria: Option<String>,
    /// `interaction[]`; `None` means all of them (only the reads when `readonly`).
    pub interactions: Option<Vec<Interaction>>,
    /// Medplum's older switch: only the read interactions.
    pub readonly: bool,
    pub hidden_fields: Vec<String>,
    pub readonly_fields: Vec<String>,
    /// FHIRPath expressions over `%before` and `%after`.
    pub write_constraints: Vec<String>,
    /// `compartment`: a reference this entry is restricted to (Medplum's older form).
    pub compartment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccessPolicy {
    pub resources: Vec<ResourceRule>,
    /// `compartment`: a reference every entry is restricted to.
    pub compartment: Option<String>,
    pub ip_rules: Vec<IpRule>,
}

fn strings(value: &Value, path: &str) -> Result<Vec<String>, PolicyError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(n, item)| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| PolicyError::new(format!("{path}[{n}]"), "must be a string"))
            })
            .collect(),
        _ => Err(PolicyError::new(path, "must be an array of strings")),
    }
}

impl AccessPolicy {
    /// Reads an AccessPolicy's JSON (parameters already substituted). Shapes
    /// only; [`validate`] also checks what the strings say.
    pub fn from_json(policy: &Value) -> Result<AccessPolicy, PolicyError> {
        let mut resources = Vec::new();
        let entries = match &policy["resource"] {
            Value::Null => &[][..],
            Value::Array(items) => items,
            _ => {
                return Err(PolicyError::new(
                    "AccessPolicy.resource",
                    "must be an array",
                ))
            }
        };
        for (n, entry) in entries.iter().enumerate() {
            let path = format!("AccessPolicy.resource[{n}]");
            let resource_type = entry["resourceType"]
                .as_str()
                .ok_or_else(|| PolicyError::new(format!("{path}.resourceType"), "is required"))?
                .to_string();
            let interactions = match &entry["interaction"] {
                Value::Null => None,
                value => Some(
                    strings(value, &format!("{path}.interaction"))?
                        .iter()
                        .enumerate()
                        .map(|(k, text)| {
                            Interaction::parse(text).ok_or_else(|| {
                                PolicyError::new(
                                    format!("{path}.interaction[{k}]"),
                                    format!("'{text}' is not an interaction (create, read, vread, update, patch, delete, history, search)"),
                                )
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let write_constraints = match &entry["writeConstraint"] {
                Value::Null => Vec::new(),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(k, e)| {
                        e["expression"].as_str().map(str::to_string).ok_or_else(|| {
                            PolicyError::new(
                                format!("{path}.writeConstraint[{k}].expression"),
                                "is required (a FHIRPath expression over %before and %after)",
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?,
                _ => {
                    return Err(PolicyError::new(
                        format!("{path}.writeConstraint"),
                        "must be an array",
                    ))
                }
            };
            resources.push(ResourceRule {
                resource_type,
                criteria: entry["criteria"].as_str().map(str::to_string),
                interactions,
                readonly: entry["readonly"] == Value::Bool(true),
                hidden_fields: strings(&entry["hiddenFields"], &format!("{path}.hiddenFields"))?,
                readonly_fields: strings(
                    &entry["readonlyFields"],
                    &format!("{path}.readonlyFields"),
                )?,
                write_constraints,
                compartment: entry["compartment"]["reference"]
                    .as_str()
                    .map(str::to_string),
            });
        }
        let ip_rules = match &policy["ipAccessRule"] {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(n, rule)| {
                    IpRule::from_json(rule, &format!("AccessPolicy.ipAccessRule[{n}]"))
                })
                .collect::<Result<_, _>>()?,
            _ => {
                return Err(PolicyError::new(
                    "AccessPolicy.ipAccessRule",
                    "must be an array",
                ))
            }
        };
        Ok(AccessPolicy {
            resources,
            compartment: policy["compartment"]["reference"]
                .as_str()
                .map(str::to_string),
            ip_rules,
        })
    }
}

impl ResourceRule {
    /// The interactions this entry allows.
    pub fn allowed(&self) -> Vec<Interaction> {
        match (&self.interactions, self.readonly) {
            (Some(list), false) => list.clone(),
            (Some(list), true) => list.iter().copied().filter(|i| !i.is_write()).collect(),
            (None, false) => Interaction::ALL.to_vec(),
            (None, true) => Interaction::READS.to_vec(),
        }
    }
}

/// Result parameters: they shape a response and select nothing.
const NOT_CRITERIA: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_cursor",
    "_format",
    "_pretty",
    "_type",
];

/// The filters of a criteria string for `resource_type` (`None`: a `*` entry,
/// resolved as a search over all types). A criteria names its entry's type
/// (`Observation?…`, or `*?…` / any type for a `*` entry).
pub(crate) fn criteria_filters(
    criteria: &str,
    rule_type: &str,
    resource_type: Option<&str>,
) -> Result<Vec<Filter>, String> {
    let (prefix, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    if rule_type != "*" && prefix != rule_type {
        return Err(format!(
            "criteria must start with '{rule_type}?', the entry's resourceType, not '{prefix}?'"
        ));
    }
    if rule_type == "*" && prefix != "*" && !is_known_resource_type(prefix) {
        return Err(format!("'{prefix}' is not a resource type"));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| format!("criteria is not a query string: {e}"))?;
    if let Some((name, _)) = pairs.iter().find(|(name, _)| {
        let base = name.split(':').next().unwrap_or_default();
        NOT_CRITERIA.contains(&base)
    }) {
        return Err(format!(
            "'{name}' shapes results and cannot restrict access; use search parameters only"
        ));
    }
    let request =
        parse_search(Registry::get(), resource_type, &pairs, false).map_err(|e| e.to_string())?;
    Ok(request.filters)
}

/// Values tried for a `%name` placeholder while validating, where the real
/// one is only known per membership: a reference to the type the name says
/// (`%organization`), else to the usual profile types.
fn trial_values(name: &str) -> Vec<String> {
    const DUMMY: &str = "00000000-0000-4000-8000-000000000000";
    let mut chars = name.chars();
    let capitalised: String = chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default();
    let mut types = vec![capitalised.as_str()];
    types.extend([
        "Patient",
        "Practitioner",
        "RelatedPerson",
        "Organization",
        "Device",
    ]);
    types
        .into_iter()
        .filter(|t| is_known_resource_type(t))
        .map(|t| format!("{t}/{DUMMY}"))
        .collect()
}

/// `text` with every `%name.id` replaced by a dummy id and every `%name` by
/// `value_for(name)`; `%before`/`%after` are never placeholders here.
fn with_trial(text: &str, choice: usize) -> String {
    let mut out = String::new();
    let mut last = 0;
    for (start, end, name, wants_id) in placeholders(text) {
        out.push_str(&text[last..start]);
        if wants_id {
            out.push_str("00000000-0000-4000-8000-000000000000");
        } else {
            let values = trial_values(name);
            out.push_str(
                values
                    .get(choice)
                    .or(values.last())
                    .map_or("", |v| v.as_str()),
            );
        }
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

/// Checks a criteria string that may still hold placeholders.
fn check_criteria(criteria: &str, rule_type: &str) -> Result<(), String> {
    let resource_type = (rule_type != "*").then_some(rule_type);
    if placeholders(criteria).is_empty() {
        return criteria_filters(criteria, rule_type, resource_type).map(|_| ());
    }
    let mut first_error = None;
    for choice in 0..6 {
        match criteria_filters(&with_trial(criteria, choice), rule_type, resource_type) {
            Ok(_) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_default())
}

/// Dot paths: names separated by dots, nothing empty.
fn check_field(field: &str) -> Result<(), String> {
    let valid = !field.is_empty()
        && field.split('.').all(|part| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{field}' is not a field path (element names separated by dots, e.g. 'address.line')"
        ))
    }
}

/// Checks an AccessPolicy before it is saved, naming the first element at fault.
pub fn validate(policy: &Value) -> Result<(), PolicyError> {
    crate::based_on::check_shape(policy)?;
    let parsed = AccessPolicy::from_json(policy)?;
    for (n, rule) in parsed.resources.iter().enumerate() {
        let path = format!("AccessPolicy.resource[{n}]");
        if rule.resource_type != "*" && !is_known_resource_type(&rule.resource_type) {
            return Err(PolicyError::new(
                format!("{path}.resourceType"),
                format!("'{}' is not a resource type (or '*')", rule.resource_type),
            ));
        }
        if let Some(criteria) = &rule.criteria {
            check_criteria(criteria, &rule.resource_type).map_err(|message| {
                PolicyError::new(
                    format!("{path}.criteria"),
                    format!("criteria '{criteria}' cannot be used: {message}"),
                )
            })?;
        }
        for (kind, fields) in [
            ("hiddenFields", &rule.hidden_fields),
            ("readonlyFields", &rule.readonly_fields),
        ] {
            for (k, field) in fields.iter().enumerate() {
                check_field(field)
                    .map_err(|m| PolicyError::new(format!("{path}.{kind}[{k}]"), m))?;
            }
        }
        for (k, expression) in rule.write_constraints.iter().enumerate() {
            let parsed = match rule.resource_type.as_str() {
                "*" => Expression::parse(expression),
                resource_type => {
                    Expression::parse_strict(expression, resource_type, &["before", "after"])
                }
            };
            parsed.map_err(|e| {
                PolicyError::new(
                    format!("{path}.writeConstraint[{k}].expression"),
                    format!("'{expression}' is not a FHIRPath expression fhirgate evaluates: {e}"),
                )
            })?;
        }
    }
    let compartments = parsed
        .resources
        .iter()
        .enumerate()
        .map(|(n, r)| {
            (
                format!("AccessPolicy.resource[{n}].compartment"),
                &r.compartment,
            )
        })
        .chain([("AccessPolicy.compartment".to_string(), &parsed.compartment)]);
    for (path, compartment) in compartments {
        let Some(compartment) = compartment else {
            continue;
        };
        let trial = with_trial(compartment, 0);
        let ok = trial
            .split_once('/')
            .is_some_and(|(t, id)| is_known_resource_type(t) && !id.is_empty());
        if !ok {
            return Err(PolicyError::new(
                path,
                format!("'{compartment}' is not a reference such as Patient/123 or %patient"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(policy: Value) -> PolicyError {
        validate(&policy).expect_err("invalid")
    }

    #[test]
    fn accepts_medplum_shaped_policies() {
        let policy = json!({
            "resourceType": "AccessPolicy",
            "compartment": {"reference": "%patient"},
            "resource": [
                {"resourceType": "Patient", "criteria": "Patient?_id=%patient.id", "readonly": true},
                {"resourceType": "Observation", "criteria": "Observation?subject=%patient&status=final",
                 "interaction": ["read", "search"], "hiddenFields": ["note", "performer.display"]},
                {"resourceType": "*", "criteria": "*?_compartment=%patient"},
                {"resourceType": "Organization", "criteria": "Organization?_id=%organization.id"},
                {"resourceType": "Encounter", "writeConstraint": [
                    {"language": "text/fhirpath", "expression": "%before.status = 'finished' implies %after.status = 'finished'"}]}
            ],
            "ipAccessRule": [{"name": "office", "value": "10.0.0.0/8", "action": "allow"},
                             {"value": "2001:db8::/32", "action": "block"}]
        });
        validate(&policy).unwrap();
        let parsed = AccessPolicy::from_json(&policy).unwrap();
        assert_eq!(parsed.resources.len(), 5);
        assert_eq!(parsed.resources[0].allowed(), Interaction::READS.to_vec());
        assert_eq!(
            parsed.resources[1].allowed(),
            vec![Interaction::Read, Interaction::Search]
        );
        assert_eq!(parsed.ip_rules.len(), 2);
    }

    #[test]
    fn bad_criteria_are_named() {
        let e = error_of(json!({"resource": [
            {"resourceType": "Patient"},
            {"resourceType": "Observation", "criteria": "Observation?nosuch=1"}]}));
        assert_eq!(e.path, "AccessPolicy.resource[1].criteria");
        assert!(e.message.contains("Observation?nosuch=1"), "{e}");
        assert!(e.message.contains("nosuch"), "{e}");
        for (criteria, words) in [
            ("Patient?name=x", "must start with 'Observation?'"),
            ("Observation?_count=5", "shapes results"),
            ("Observation?date=notadate", "date"),
            ("Observation?subject:Nope.name=x", "Nope"),
        ] {
            let e = error_of(
                json!({"resource": [{"resourceType": "Observation", "criteria": criteria}]}),
            );
            assert!(e.message.contains(words), "{criteria}: {e}");
        }
    }

    #[test]
    fn other_mistakes_are_named() {
        for (policy, path) in [
            (
                json!({"resource": [{"resourceType": "Nope"}]}),
                "AccessPolicy.resource[0].resourceType",
            ),
            (
                json!({"resource": [{"resourceType": "Patient", "interaction": ["read", "nuke"]}]}),
                "AccessPolicy.resource[0].interaction[1]",
            ),
            (
                json!({"resource": [{"resourceType": "Patient", "hiddenFields": ["a..b"]}]}),
                "AccessPolicy.resource[0].hiddenFields[0]",
            ),
            (
                json!({"resource": [{"resourceType": "Patient", "writeConstraint": [{"expression": "status ^ 2"}]}]}),
                "AccessPolicy.resource[0].writeConstraint[0].expression",
            ),
            (
                json!({"ipAccessRule": [{"value": "10.0.0.0/33", "action": "allow"}]}),
                "AccessPolicy.ipAccessRule[0].value",
            ),
            (
                json!({"ipAccessRule": [{"value": "10.0.0.0/8", "action": "maybe"}]}),
                "AccessPolicy.ipAccessRule[0].action",
            ),
            (
                json!({"compartment": {"reference": "nothing"}}),
                "AccessPolicy.compartment",
            ),
        ] {
            assert_eq!(error_of(policy).path, path);
        }
    }

    #[test]
    fn a_write_constraint_is_checked_against_its_resource_type() {
        let error = error_of(json!({"resource": [{"resourceType": "Observation",
            "writeConstraint": [{"expression": "%after.stauts = 'final'"}]}]}));
        assert_eq!(
            error.message,
            "'%after.stauts = 'final'' is not a FHIRPath expression fhirgate evaluates: FHIRPath \
             error: Observation has no element 'stauts'"
        );
        assert!(validate(&json!({"resourceType": "AccessPolicy", "resource": [{
            "resourceType": "Observation",
            "writeConstraint": [{"expression": "%before.status = 'final' implies %after.status = 'final'"}]}]}))
        .is_ok());
    }

    #[test]
    fn a_write_constraint_that_does_not_parse_names_the_position() {
        let error = error_of(json!({"resource": [{"resourceType": "Observation",
            "writeConstraint": [{"expression": "%after.status = 'final' and (status"}]}]}));
        assert_eq!(
            error.path,
            "AccessPolicy.resource[0].writeConstraint[0].expression"
        );
        assert!(
            error.message.contains("at character 35"),
            "{}",
            error.message
        );
    }
}
