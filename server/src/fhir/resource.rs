//! Turning what a client sent into what is stored: server-managed `meta`,
//! secrets moved out of the content, validation.

use chrono::{DateTime, SecondsFormat, Utc};
use fhir_model::{Issue, IssueCode, Validator};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::{
    auth::secrets::{hash_client_secret, MIN_CLIENT_SECRET_LEN},
    error::{Error, Result},
};

/// `meta` elements only the server sets.
const SERVER_META: &[&str] = &["versionId", "lastUpdated", "project", "author"];

/// A new resource or version id: a time-ordered UUID (version 7), so that
/// new rows land at the right-hand end of every index keyed by id (the
/// primary keys, history, the index tables' `resource_id` columns) instead
/// of on a random page of each: fewer pages to keep in memory and to write
/// in full after a checkpoint. Its first 48 bits tell the creation time,
/// which the first version's `meta.lastUpdated` tells anyway. Handles that
/// must not be guessed (Login ids, codes, links) stay random (version 4).
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// Identity of the version being written.
pub struct Stamp {
    pub id: Uuid,
    pub version_id: Uuid,
    pub last_updated: DateTime<Utc>,
    pub project_id: Uuid,
    /// Reference written to `meta.author`.
    pub author: String,
}

impl Stamp {
    pub fn new(id: Uuid, project_id: Uuid, author: &str) -> Stamp {
        Stamp {
            id,
            version_id: new_id(),
            last_updated: now_millis(),
            project_id,
            author: author.to_string(),
        }
    }
}

/// A resource ready to store.
pub struct Prepared {
    pub value: Value,
    pub content: String,
    /// `(kind, hash)` pairs to keep in the secret table.
    pub secrets: Vec<(&'static str, String)>,
}

/// FHIR instants carry milliseconds; the stored column keeps exactly the same
/// value so `meta.lastUpdated` and the `Last-Modified` header always agree.
pub fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

pub fn instant(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Resources with more JSON values than this validate on a blocking thread:
/// a large one takes long enough to hold up the other requests of the HTTP
/// worker that received it.
pub(super) const VALIDATE_OFF_WORKER_VALUES: usize = 20_000;

/// Whether `value` holds more than `limit` JSON values (counted only that far).
pub(super) fn more_values_than(value: &Value, limit: usize) -> bool {
    fn count(value: &Value, left: &mut usize) -> bool {
        if *left == 0 {
            return true;
        }
        *left -= 1;
        match value {
            Value::Array(items) => items.iter().any(|item| count(item, left)),
            Value::Object(map) => map.values().any(|item| count(item, left)),
            _ => false,
        }
    }
    let mut left = limit;
    count(value, &mut left)
}

/// Checks `value` against the schema, off the HTTP worker when it is large.
async fn validate(validator: &Validator, value: Value) -> Result<Value> {
    if !more_values_than(&value, VALIDATE_OFF_WORKER_VALUES) {
        validator.validate(&value).map_err(Error::Invalid)?;
        return Ok(value);
    }
    let validator = validator.clone();
    tokio::task::spawn_blocking(move || validator.validate(&value).map(|()| value))
        .await
        .map_err(|e| Error::Internal(format!("validating a resource: {e}")))?
        .map_err(Error::Invalid)
}

/// Validates `resource` and applies the stamp. `resource` must already be a
/// JSON object whose `resourceType` the caller checked.
pub async fn prepare(validator: &Validator, resource: Value, stamp: &Stamp) -> Result<Prepared> {
    let Value::Object(mut fields) = resource else {
        return Err(Error::BadRequest(
            "The body must be a JSON object (a FHIR resource)".into(),
        ));
    };
    let resource_type = fields
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let secrets = take_secrets(&resource_type, &mut fields)?;
    if resource_type == "Subscription" {
        crate::subscriptions::spec::settle_status(&mut fields);
    }
    fields.insert("id".into(), json!(stamp.id.to_string()));
    let mut meta = match fields.remove("meta") {
        Some(Value::Object(meta)) => meta,
        Some(_) => {
            return Err(Error::Invalid(vec![Issue::error(
                IssueCode::Structure,
                "meta must be a JSON object",
            )
            .at(format!("{resource_type}.meta"))]))
        }
        None => Map::new(),
    };
    for key in SERVER_META {
        meta.remove(*key);
    }
    if !meta.is_empty() {
        fields.insert("meta".into(), Value::Object(meta.clone()));
    }
    let mut value = validate(validator, Value::Object(fields)).await?;

    meta.insert("versionId".into(), json!(stamp.version_id.to_string()));
    meta.insert("lastUpdated".into(), json!(instant(&stamp.last_updated)));
    meta.insert("project".into(), json!(stamp.project_id.to_string()));
    meta.insert("author".into(), json!({ "reference": stamp.author }));
    // resourceType, id and meta first, as FHIR JSON is usually written.
    let Value::Object(rest) = value.take() else {
        unreachable!("built as an object above")
    };
    let mut ordered = Map::new();
    ordered.insert("resourceType".into(), json!(resource_type));
    ordered.insert("id".into(), json!(stamp.id.to_string()));
    ordered.insert("meta".into(), Value::Object(meta));
    ordered.extend(
        rest.into_iter()
            .filter(|(k, _)| k != "resourceType" && k != "id" && k != "meta"),
    );
    let value = Value::Object(ordered);
    let content = value.to_string();
    // serde_json writes NUL as \u0000; PostgreSQL text (and FHIR strings) cannot hold it.
    if content.contains("\\u0000") {
        return Err(Error::BadRequest(format!(
            "The {resource_type} contains a NUL character (\\u0000), which FHIR strings may not contain"
        )));
    }
    Ok(Prepared {
        value,
        content,
        secrets,
    })
}

/// Moves secrets out of the content. A ClientApplication's `secret` is kept
/// only as a hash; it is never stored in, or returned with, the resource.
fn take_secrets(
    resource_type: &str,
    fields: &mut Map<String, Value>,
) -> Result<Vec<(&'static str, String)>> {
    if resource_type != "ClientApplication" {
        return Ok(Vec::new());
    }
    match fields.get("secret") {
        Some(Value::String(secret)) if secret.chars().count() >= MIN_CLIENT_SECRET_LEN => {
            let hash = hash_client_secret(secret);
            fields.remove("secret");
            Ok(vec![(crate::auth::client::CLIENT_SECRET, hash)])
        }
        Some(Value::String(_)) => Err(Error::Invalid(vec![Issue::error(
            IssueCode::Value,
            format!("A client secret must be at least {MIN_CLIENT_SECRET_LEN} characters long; use a random string"),
        )
        .at("ClientApplication.secret")])),
        // Left for schema validation to report.
        _ => Ok(Vec::new()),
    }
}

/// Whether two versions say the same thing, ignoring what changes on every
/// write (version, time, author). An update that changes nothing else is a no-op.
pub fn same_content(a: &Value, b: &Value) -> bool {
    fn without_volatile(value: &Value) -> Value {
        let mut value = value.clone();
        if let Some(meta) = value.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            meta.remove("author");
        }
        value
    }
    without_volatile(a) == without_volatile(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp::new(Uuid::new_v4(), Uuid::new_v4(), "Practitioner/abc")
    }

    #[test]
    fn new_ids_are_time_ordered() {
        let ids: Vec<Uuid> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
    }

    #[tokio::test]
    async fn server_meta_replaces_client_meta() {
        let validator = Validator::new().unwrap();
        let stamp = stamp();
        let input = json!({"resourceType": "Patient", "id": "ignored", "active": true,
            "meta": {"versionId": "99", "project": "evil", "tag": [{"code": "x"}]}});
        let prepared = prepare(&validator, input, &stamp).await.unwrap();
        let meta = &prepared.value["meta"];
        assert_eq!(prepared.value["id"], json!(stamp.id.to_string()));
        assert_eq!(meta["versionId"], json!(stamp.version_id.to_string()));
        assert_eq!(meta["project"], json!(stamp.project_id.to_string()));
        assert_eq!(meta["author"]["reference"], "Practitioner/abc");
        assert_eq!(meta["tag"][0]["code"], "x");
        assert!(prepared
            .content
            .starts_with(r#"{"resourceType":"Patient","id":"#));
    }

    #[tokio::test]
    async fn client_secret_is_hashed_and_removed() {
        let validator = Validator::new().unwrap();
        let secret = "0123456789abcdef0123456789abcdef";
        let input = json!({"resourceType": "ClientApplication", "name": "app", "secret": secret});
        let prepared = prepare(&validator, input, &stamp()).await.unwrap();
        assert!(!prepared.content.contains(secret));
        assert!(prepared.value.get("secret").is_none());
        assert_eq!(
            prepared.secrets,
            vec![("client_secret", hash_client_secret(secret))]
        );

        let short = json!({"resourceType": "ClientApplication", "secret": "short"});
        assert!(matches!(
            prepare(&validator, short, &stamp()).await,
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn counting_values_stops_at_the_limit() {
        let value = json!({"a": [1, 2, {"b": true}], "c": "x"});
        // The object, a, 1, 2, the inner object, b, c: 7 values.
        assert!(!more_values_than(&value, 7));
        assert!(more_values_than(&value, 6));
    }

    #[test]
    fn volatile_meta_does_not_count_as_change() {
        let a = json!({"resourceType": "Patient", "meta": {"versionId": "1", "lastUpdated": "x", "author": {}}, "active": true});
        let b = json!({"resourceType": "Patient", "active": true, "meta": {"versionId": "2"}});
        assert!(same_content(&a, &b));
        let c = json!({"resourceType": "Patient", "active": false, "meta": {}});
        assert!(!same_content(&a, &c));
    }
}
