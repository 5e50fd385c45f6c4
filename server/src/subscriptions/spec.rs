//! What a Subscription resource asks for: its criteria (a search, matched
//! with the search engine's semantics), Medplum's extensions, and its
//! channel. Parsed when the Subscription is written (to settle its status)
//! and again wherever it is used.

use chrono::{DateTime, Utc};
use fhir_model::search::{fhirpath::Expression, parse_search, Filter, Registry};
use serde_json::{json, Map, Value};

pub const SUPPORTED_INTERACTION: &str =
    "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction";
pub const FHIRPATH_CRITERIA: &str =
    "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression";
pub const SECRET: &str = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret";
pub const MAX_ATTEMPTS: &str =
    "https://medplum.com/fhir/StructureDefinition/subscription-max-attempts";

/// Medplum's default number of attempts per notification.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// More attempts than this are not honoured: with exponential backoff the
/// last would come days later.
const MOST_ATTEMPTS: u32 = 18;

#[derive(Debug, Clone, PartialEq)]
pub enum Channel {
    RestHook {
        endpoint: String,
        /// `channel.header` entries, `Name: value`.
        headers: Vec<(String, String)>,
        /// `channel.payload`; `None` (absent or empty): no body.
        payload: Option<String>,
    },
    Websocket,
}

#[derive(Debug)]
pub struct Spec {
    pub resource_type: String,
    pub filters: Vec<Filter>,
    /// Interactions that notify: create and update unless the extension says.
    pub interactions: Vec<String>,
    pub fhirpath: Option<Expression>,
    pub secret: Option<String>,
    pub max_attempts: u32,
    pub channel: Channel,
    pub end: Option<DateTime<Utc>>,
    pub active: bool,
}

impl Spec {
    /// Reads a stored or incoming Subscription; `Err` says what is wrong.
    pub fn parse(subscription: &Value) -> Result<Spec, String> {
        let criteria = subscription["criteria"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or("Subscription.criteria is missing; give a search such as Observation?code=…")?;
        let (resource_type, filters) = parse_criteria(criteria)?;
        let values = |url| extensions(subscription, url);
        let mut interactions: Vec<String> = values(SUPPORTED_INTERACTION)
            .filter_map(|e| e["valueCode"].as_str().map(str::to_string))
            .collect();
        if let Some(bad) = interactions
            .iter()
            .find(|i| !["create", "update", "delete"].contains(&i.as_str()))
        {
            return Err(format!(
                "{SUPPORTED_INTERACTION} must be create, update or delete, not '{bad}'"
            ));
        }
        if interactions.is_empty() {
            interactions = vec!["create".into(), "update".into()];
        }
        let fhirpath = values(FHIRPATH_CRITERIA)
            .find_map(|e| e["valueString"].as_str())
            .map(|source| {
                Expression::parse_strict(source, &resource_type, &["current", "previous"]).map_err(
                    |e| format!("{FHIRPATH_CRITERIA} is not FHIRPath this server evaluates: {e}"),
                )
            })
            .transpose()?;
        let secret = values(SECRET)
            .find_map(|e| e["valueString"].as_str())
            .map(str::to_string);
        let max_attempts = match values(MAX_ATTEMPTS).find_map(|e| e.get("valueInteger")) {
            None => DEFAULT_MAX_ATTEMPTS,
            Some(n) => n
                .as_u64()
                .filter(|n| (1..=u64::from(MOST_ATTEMPTS)).contains(n))
                .map(|n| n as u32)
                .ok_or(format!(
                    "{MAX_ATTEMPTS} must be between 1 and {MOST_ATTEMPTS}"
                ))?,
        };
        let channel = parse_channel(&subscription["channel"])?;
        let end = match subscription["end"].as_str() {
            None => None,
            Some(end) => Some(
                DateTime::parse_from_rfc3339(end)
                    .map_err(|_| format!("Subscription.end '{end}' is not an instant"))?
                    .to_utc(),
            ),
        };
        Ok(Spec {
            resource_type,
            filters,
            interactions,
            fhirpath,
            secret,
            max_attempts,
            channel,
            end,
            active: subscription["status"] == "active",
        })
    }

    /// Whether a write made by `interaction` at `at` notifies at all (before
    /// the criteria are looked at).
    pub fn listens(&self, interaction: &str, at: DateTime<Utc>) -> bool {
        self.listens_at_all(at) && self.interactions.iter().any(|i| i == interaction)
    }

    /// Active and not past its `end` at `at`.
    pub fn listens_at_all(&self, at: DateTime<Utc>) -> bool {
        self.active && self.end.is_none_or(|end| at < end)
    }

    /// The FHIRPath condition on `%current` and `%previous` (an empty object
    /// for a create, as Medplum gives it), true without one; an expression
    /// that fails to evaluate on this resource does not hold.
    pub fn condition_holds(&self, current: &Value, previous: Option<&Value>) -> bool {
        let Some(expression) = &self.fhirpath else {
            return true;
        };
        let empty = json!({});
        let previous = previous.unwrap_or(&empty);
        let variables = [("current", current), ("previous", previous)];
        matches!(expression.test(current, &variables), Ok(Some(true)))
    }
}

/// The extensions with `url` of a resource.
fn extensions<'a>(resource: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    resource["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["url"] == url)
}

/// `Type?query` into the type and the search's filters.
fn parse_criteria(criteria: &str) -> Result<(String, Vec<Filter>), String> {
    let (resource_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    if !fhir_model::resource_types::is_known_resource_type(resource_type) {
        return Err(format!(
            "Subscription.criteria '{criteria}' does not start with a resource type"
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| format!("Subscription.criteria '{criteria}' is not a search: {e}"))?;
    let request = parse_search(Registry::get(), Some(resource_type), &pairs, false)
        .map_err(|e| format!("Subscription.criteria '{criteria}': {e}"))?;
    Ok((resource_type.to_string(), request.filters))
}

fn parse_channel(channel: &Value) -> Result<Channel, String> {
    match channel["type"].as_str() {
        Some("rest-hook") => {
            let endpoint = channel["endpoint"]
                .as_str()
                .ok_or("a rest-hook Subscription needs channel.endpoint")?;
            let url = reqwest::Url::parse(endpoint)
                .map_err(|e| format!("channel.endpoint '{endpoint}' is not a URL: {e}"))?;
            if !["http", "https"].contains(&url.scheme()) || url.host_str().is_none() {
                return Err(format!(
                    "channel.endpoint '{endpoint}' must be an https:// (or http://) URL"
                ));
            }
            let headers = channel["header"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|header| {
                    header
                        .split_once(':')
                        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
                        .filter(|(name, _)| {
                            reqwest::header::HeaderName::try_from(name.as_str()).is_ok()
                        })
                        .ok_or(format!("channel.header '{header}' must be 'Name: value'"))
                })
                .collect::<Result<_, _>>()?;
            Ok(Channel::RestHook {
                endpoint: endpoint.to_string(),
                headers,
                payload: channel["payload"]
                    .as_str()
                    .filter(|p| !p.is_empty())
                    .map(str::to_string),
            })
        }
        Some("websocket") => Ok(Channel::Websocket),
        Some(other) => Err(format!(
            "channel.type '{other}' is not delivered by fhirgate; use rest-hook or websocket"
        )),
        None => Err("Subscription.channel.type is missing".into()),
    }
}

/// On every write of a Subscription: `requested` (or `active`) becomes
/// `active` when the server can deliver it, `error` with the reason in
/// `Subscription.error` when it cannot; `off` and `error` stay.
pub fn settle_status(fields: &mut Map<String, Value>) {
    let status = fields.get("status").and_then(Value::as_str);
    if !matches!(status, Some("requested") | Some("active")) {
        return;
    }
    match Spec::parse(&Value::Object(fields.clone())) {
        Ok(_) => {
            fields.insert("status".into(), json!("active"));
            fields.remove("error");
        }
        Err(reason) => {
            fields.insert("status".into(), json!("error"));
            fields.insert("error".into(), json!(reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(criteria: &str, extension: Value) -> Value {
        json!({
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "test",
            "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": "https://example.com/hook", "payload": "application/fhir+json"},
            "extension": extension
        })
    }

    fn settled(value: Value) -> Value {
        let Value::Object(mut fields) = value else {
            unreachable!()
        };
        settle_status(&mut fields);
        Value::Object(fields)
    }

    #[test]
    fn criteria_that_parse_activate() {
        let s = settled(subscription(
            "Observation?code=http://loinc.org|8867-4&subject=Patient/123",
            json!([]),
        ));
        assert_eq!(s["status"], "active");
        let spec = Spec::parse(&s).unwrap();
        assert_eq!(spec.resource_type, "Observation");
        assert_eq!(spec.filters.len(), 2);
        assert_eq!(spec.interactions, vec!["create", "update"]);
        assert_eq!(spec.max_attempts, DEFAULT_MAX_ATTEMPTS);
    }

    #[test]
    fn criteria_that_do_not_parse_are_an_error_with_the_reason() {
        let s = settled(subscription("Observation?nonsense=1", json!([])));
        assert_eq!(s["status"], "error");
        assert!(s["error"].as_str().unwrap().contains("nonsense"), "{s}");
        let s = settled(subscription("NotAType?x=1", json!([])));
        assert_eq!(s["status"], "error");
    }

    #[test]
    fn extensions() {
        let spec = Spec::parse(&subscription(
            "Patient",
            json!([
                {"url": SUPPORTED_INTERACTION, "valueCode": "delete"},
                {"url": SECRET, "valueString": "s3cret"},
                {"url": MAX_ATTEMPTS, "valueInteger": 5},
                {"url": FHIRPATH_CRITERIA, "valueString": "%previous.active = false and %current.active = true"}
            ]),
        ))
        .unwrap();
        assert_eq!(spec.interactions, vec!["delete"]);
        assert_eq!(spec.secret.as_deref(), Some("s3cret"));
        assert_eq!(spec.max_attempts, 5);
        let now = Utc::now();
        assert!(!spec.listens("create", now), "inactive until settled");
        let before = json!({"resourceType": "Patient", "active": false});
        let after = json!({"resourceType": "Patient", "active": true});
        assert!(spec.condition_holds(&after, Some(&before)));
        assert!(!spec.condition_holds(&before, Some(&after)));
        assert!(!spec.condition_holds(&after, None));
    }

    #[test]
    fn bad_channels_and_extensions_say_why() {
        let mut s = subscription("Patient", json!([{"url": MAX_ATTEMPTS, "valueInteger": 0}]));
        assert!(Spec::parse(&s).unwrap_err().contains("between 1"));
        s["extension"] = json!([]);
        s["channel"]["endpoint"] = json!("ftp://example.com/x");
        assert!(Spec::parse(&s).unwrap_err().contains("https://"));
        s["channel"] = json!({"type": "email", "endpoint": "mailto:x@example.com"});
        assert!(Spec::parse(&s)
            .unwrap_err()
            .contains("rest-hook or websocket"));
    }

    #[test]
    fn an_ended_subscription_does_not_listen() {
        let mut s = settled(subscription("Patient", json!([])));
        s["end"] = json!("2020-01-01T00:00:00Z");
        let spec = Spec::parse(&s).unwrap();
        assert!(!spec.listens("create", Utc::now()));
    }
}
