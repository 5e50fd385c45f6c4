//! History bundles: parameters, keyset paging links, and entries that carry
//! the stored JSON as it is (no re-serialisation of resources).

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::resource::instant;
use crate::{
    error::{Error, Result},
    store::Version,
};

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

/// `_count`, `_since` and the paging cursor of a history request.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryParams {
    pub count: usize,
    pub since: Option<DateTime<Utc>>,
    pub cursor: Option<(DateTime<Utc>, Uuid)>,
}

impl HistoryParams {
    pub fn parse(query: &[(String, String)]) -> Result<HistoryParams> {
        let mut params = HistoryParams {
            count: DEFAULT_COUNT,
            since: None,
            cursor: None,
        };
        for (name, value) in query {
            match name.as_str() {
                "_count" => {
                    params.count = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_COUNT).contains(n))
                        .ok_or_else(|| {
                            Error::BadRequest(format!(
                            "_count must be a whole number from 1 to {MAX_COUNT}, not '{value}'"
                        ))
                        })?
                }
                "_since" => params.since = Some(parse_instant(value)?),
                "_cursor" => params.cursor = Some(parse_cursor(value)?),
                "_format" | "_pretty" => {}
                other => {
                    return Err(Error::BadRequest(format!(
                        "Unknown history parameter '{other}'; supported: _count, _since"
                    )))
                }
            }
        }
        Ok(params)
    }
}

/// `_since`: an instant (`2024-05-01T10:00:00Z`) or a date (midnight UTC).
fn parse_instant(value: &str) -> Result<DateTime<Utc>> {
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        return Ok(date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc());
    }
    Err(Error::BadRequest(format!(
        "_since must be an instant such as 2024-05-01T10:00:00Z or a date such as 2024-05-01, not '{value}'"
    )))
}

/// The cursor is `<microseconds since epoch>.<version id>` of the last entry.
fn format_cursor(version: &Version) -> String {
    format!(
        "{}.{}",
        version.last_updated.timestamp_micros(),
        version.version_id
    )
}

fn parse_cursor(value: &str) -> Result<(DateTime<Utc>, Uuid)> {
    value
        .split_once('.')
        .and_then(|(micros, vid)| {
            let time = DateTime::from_timestamp_micros(micros.parse().ok()?)?;
            Some((time, Uuid::parse_str(vid).ok()?))
        })
        .ok_or_else(|| {
            Error::BadRequest("_cursor is not valid; follow the Bundle's next link".into())
        })
}

#[derive(Serialize)]
struct Link {
    relation: &'static str,
    url: String,
}

#[derive(Serialize)]
struct Request {
    method: &'static str,
    url: String,
}

/// `Bundle.entry.response`: of history entries, and of batch and
/// transaction responses.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Response {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<serde_json::Value>,
}

impl Response {
    pub fn of_status(status: String) -> Response {
        Response {
            status,
            location: None,
            etag: None,
            last_modified: None,
            outcome: None,
        }
    }

    /// A response with the version's ETag and Last-Modified.
    pub fn of_version(status: String, version: &Version) -> Response {
        Response {
            etag: Some(format!("W/\"{}\"", version.version_id)),
            last_modified: Some(instant(&version.last_updated)),
            ..Response::of_status(status)
        }
    }
}

#[derive(Serialize)]
struct Search {
    mode: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Entry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    search: Option<Search>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<Request>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Response>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle<'a> {
    resource_type: &'static str,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    link: Vec<Link>,
    entry: Vec<Entry<'a>>,
}

impl<'a> Bundle<'a> {
    fn new(
        kind: &'static str,
        total: Option<i64>,
        link: Vec<Link>,
        entry: Vec<Entry<'a>>,
    ) -> Bundle<'a> {
        Bundle {
            resource_type: "Bundle",
            id: Uuid::new_v4().to_string(),
            meta: Some(
                serde_json::json!({ "lastUpdated": instant(&super::resource::now_millis()) }),
            ),
            kind,
            total,
            link,
            entry,
        }
    }

    fn render(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::Internal(format!("serialising bundle: {e}")))
    }
}

/// Stored content as a raw JSON value, embedded without re-serialising.
pub(super) fn raw(version: &Version) -> Result<Option<&RawValue>> {
    version.content.as_deref().map(raw_json).transpose()
}

/// JSON text the server wrote (stored content, a rendered Bundle) as a raw
/// JSON value.
pub(super) fn raw_json(text: &str) -> Result<&RawValue> {
    serde_json::from_str::<&RawValue>(text)
        .map_err(|e| Error::Internal(format!("stored or rendered JSON does not parse: {e}")))
}

/// An entry of a batch or transaction response.
pub(super) fn response_entry<'a>(resource: Option<&'a RawValue>, response: Response) -> Entry<'a> {
    Entry {
        full_url: None,
        resource,
        search: None,
        request: None,
        response: Some(response),
    }
}

/// A `batch-response` or `transaction-response` Bundle; stored resources
/// are embedded as the JSON text they are, not parsed and serialised again
/// (a quarter of a transaction's CPU was spent doing that).
pub(super) fn response_bundle(transaction: bool, entry: Vec<Entry<'_>>) -> Result<String> {
    Bundle {
        meta: None,
        ..Bundle::new(
            if transaction {
                "transaction-response"
            } else {
                "batch-response"
            },
            None,
            Vec::new(),
            entry,
        )
    }
    .render()
}

/// A `history` Bundle of one page. `versions` holds up to `count + 1` rows;
/// the extra one only tells that a next page exists.
/// `self_url` is the request's URL without `_cursor`.
pub fn history_bundle(
    fhir_base: &str,
    self_url: &str,
    versions: &[Version],
    count: usize,
) -> Result<String> {
    let page = &versions[..versions.len().min(count)];
    let mut link = vec![Link {
        relation: "self",
        url: self_url.to_string(),
    }];
    if versions.len() > count {
        if let Some(last) = page.last() {
            let separator = if self_url.contains('?') { '&' } else { '?' };
            link.push(Link {
                relation: "next",
                url: format!("{self_url}{separator}_cursor={}", format_cursor(last)),
            });
        }
    }
    let mut entry = Vec::with_capacity(page.len());
    for version in page {
        let path = format!("{}/{}", version.resource_type, version.id);
        let resource = raw(version)?;
        entry.push(Entry {
            full_url: Some(format!("{fhir_base}{path}")),
            search: None,
            request: Some(Request {
                method: if resource.is_some() { "PUT" } else { "DELETE" },
                url: path,
            }),
            response: Some(Response::of_version(
                if resource.is_some() { "200" } else { "204" }.to_string(),
                version,
            )),
            resource,
        });
    }
    Bundle::new("history", None, link, entry).render()
}

/// A page of search results.
pub struct SearchResults<'a> {
    pub fhir_base: &'a str,
    /// `self` link; `next`/`previous` are it plus `_cursor`.
    pub self_url: &'a str,
    pub matches: &'a [Version],
    pub included: &'a [Version],
    pub total: Option<i64>,
    pub next: Option<String>,
    pub previous: Option<String>,
}

/// A `searchset` Bundle: matches, then included resources.
pub fn searchset_bundle(results: &SearchResults<'_>) -> Result<String> {
    let with_cursor = |cursor: &str| {
        let separator = if results.self_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{separator}_cursor={cursor}", results.self_url)
    };
    let mut link = vec![Link {
        relation: "self",
        url: results.self_url.to_string(),
    }];
    if let Some(next) = &results.next {
        link.push(Link {
            relation: "next",
            url: with_cursor(next),
        });
    }
    if let Some(previous) = &results.previous {
        link.push(Link {
            relation: "previous",
            url: with_cursor(previous),
        });
    }
    let mut entry = Vec::with_capacity(results.matches.len() + results.included.len());
    for (versions, mode) in [(results.matches, "match"), (results.included, "include")] {
        for version in versions {
            entry.push(Entry {
                full_url: Some(format!(
                    "{}{}/{}",
                    results.fhir_base, version.resource_type, version.id
                )),
                resource: raw(version)?,
                search: Some(Search { mode }),
                request: None,
                response: None,
            });
        }
    }
    Bundle::new("searchset", results.total, link, entry).render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_history_parameters() {
        let p = HistoryParams::parse(&query(&[("_count", "5"), ("_since", "2024-05-01")])).unwrap();
        assert_eq!(p.count, 5);
        assert_eq!(instant(&p.since.unwrap()), "2024-05-01T00:00:00.000Z");
        let p = HistoryParams::parse(&query(&[("_since", "2024-05-01T10:00:00+02:00")])).unwrap();
        assert_eq!(instant(&p.since.unwrap()), "2024-05-01T08:00:00.000Z");
        for bad in [
            ("_count", "0"),
            ("_count", "1001"),
            ("_count", "x"),
            ("_since", "May"),
            ("_cursor", "1"),
            ("foo", "1"),
        ] {
            assert!(HistoryParams::parse(&query(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursor_round_trips() {
        let version = Version {
            project_id: Uuid::new_v4(),
            resource_type: "Patient".into(),
            id: Uuid::new_v4(),
            version_id: Uuid::new_v4(),
            last_updated: super::super::resource::now_millis(),
            content: None,
        };
        let (time, vid) = parse_cursor(&format_cursor(&version)).unwrap();
        assert_eq!((time, vid), (version.last_updated, version.version_id));
    }

    #[test]
    fn bundle_pages_and_links() {
        let make = |content: Option<&str>| Version {
            project_id: Uuid::new_v4(),
            resource_type: "Patient".into(),
            id: Uuid::new_v4(),
            version_id: Uuid::new_v4(),
            last_updated: super::super::resource::now_millis(),
            content: content.map(str::to_string),
        };
        let versions = vec![
            make(Some(r#"{"resourceType":"Patient"}"#)),
            make(None),
            make(Some("{}")),
        ];
        let json: serde_json::Value = serde_json::from_str(
            &history_bundle(
                "http://x/fhir/R4/",
                "http://x/fhir/R4/_history?_count=2",
                &versions,
                2,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["type"], "history");
        assert_eq!(json["entry"].as_array().unwrap().len(), 2);
        assert_eq!(json["entry"][0]["resource"]["resourceType"], "Patient");
        assert_eq!(json["entry"][1]["request"]["method"], "DELETE");
        assert!(json["entry"][1].get("resource").is_none());
        let next = json["link"][1]["url"].as_str().unwrap();
        assert!(
            next.starts_with("http://x/fhir/R4/_history?_count=2&_cursor="),
            "{next}"
        );
    }
}
