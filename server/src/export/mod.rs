//! Bulk Data `$export` (SMART Bulk Data Access IG 2.0): the kick-off
//! records a job; any instance's [`worker`] runs it as the caller who asked
//! (policy and hidden fields applied) from one database snapshot, writing
//! NDJSON into PostgreSQL chunk by chunk; the status URL answers 202 with
//! progress until the manifest is ready. PostgreSQL is the only shared
//! state, so a job outlives the instance that began it.

pub mod worker;

use access_policy::Interaction;
use chrono::{DateTime, Utc};
use fhir_model::resource_types::{
    all_resource_types, is_admin_resource_type, is_known_resource_type,
};
use fhir_model::search::{Filter, Registry};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    app::AppState,
    auth::Caller,
    error::{Error, Result},
    fhir::{self, parse_id, resource::instant},
    store::export::{ExportJob, ExportScope, NewExportJob},
};

/// The output formats the IG names for NDJSON.
const OUTPUT_FORMATS: &[&str] = &["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Which resources a kick-off asked for, as stored with the job.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportParams {
    /// `None`: every type the caller may read (administrative ones only when named).
    pub types: Option<Vec<String>>,
    pub since: Option<DateTime<Utc>>,
    /// `None`: the whole project; `Some(None)`: every patient; `Some(Some(ids))`: a Group's.
    pub patients: Option<Option<Vec<Uuid>>>,
    /// `_typeFilter` queries (`Observation?status=final`): a type with
    /// some exports the resources that match any of its own.
    pub type_filters: Vec<String>,
}

/// A `_typeFilter` query's type and filters; only search parameters
/// (no sorting, includes or `_elements`).
fn type_filter(query: &str) -> Result<(String, Vec<Filter>)> {
    let bad = |why: String| Error::BadRequest(format!("_typeFilter '{query}': {why}"));
    let (resource_type, search) = query
        .split_once('?')
        .ok_or_else(|| bad("expected Type?parameters".into()))?;
    if !is_known_resource_type(resource_type) {
        return Err(bad(format!("'{resource_type}' is not a resource type")));
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(search).map_err(|e| bad(e.to_string()))?;
    let request =
        fhir_model::search::parse_search(Registry::get(), Some(resource_type), &pairs, false)
            .map_err(|e| bad(e.to_string()))?;
    if !request.sort.is_empty()
        || !request.include.is_empty()
        || !request.revinclude.is_empty()
        || !request.elements.is_empty()
    {
        return Err(bad("only search parameters may narrow an export".into()));
    }
    Ok((resource_type.to_string(), request.filters))
}

/// The queries of one `_typeFilter` value: split at commas that start a
/// new `Type?` (a comma inside a query separates values of a parameter).
fn split_type_filters(value: &str) -> Vec<String> {
    let mut queries: Vec<String> = Vec::new();
    for segment in value.split(',') {
        let starts_query = segment
            .split_once('?')
            .is_some_and(|(t, _)| is_known_resource_type(t.trim()));
        match queries.last_mut() {
            Some(last) if !starts_query => {
                last.push(',');
                last.push_str(segment);
            }
            _ => queries.push(segment.trim().to_string()),
        }
    }
    queries
}

impl ExportParams {
    /// Parses the kick-off's query; what this server cannot honour is a 400
    /// that names it, rather than an export of something else.
    pub fn parse(query: &[(String, String)]) -> Result<ExportParams> {
        let mut params = ExportParams {
            types: None,
            since: None,
            patients: None,
            type_filters: Vec::new(),
        };
        for (name, value) in query {
            match name.as_str() {
                "_outputFormat" if OUTPUT_FORMATS.contains(&value.as_str()) => {}
                "_outputFormat" => {
                    return Err(Error::BadRequest(format!(
                        "_outputFormat '{value}' is not supported; use {}",
                        OUTPUT_FORMATS.join(", ")
                    )))
                }
                "_type" => {
                    let mut types = params.types.take().unwrap_or_default();
                    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        if !is_known_resource_type(t) {
                            return Err(Error::BadRequest(format!(
                                "_type names '{t}', which is not a resource type"
                            )));
                        }
                        types.push(t.to_string());
                    }
                    params.types = Some(types);
                }
                "_typeFilter" => {
                    for query in split_type_filters(value) {
                        type_filter(&query)?;
                        params.type_filters.push(query);
                    }
                }
                "_since" => {
                    let since = DateTime::parse_from_rfc3339(value).map_err(|_| {
                        Error::BadRequest(format!(
                            "_since '{value}' is not a FHIR instant (e.g. 2026-01-01T00:00:00Z)"
                        ))
                    })?;
                    params.since = Some(since.with_timezone(&Utc));
                }
                other => {
                    return Err(Error::BadRequest(format!(
                        "The $export parameter '{other}' is not supported here; supported: _type, _since, _typeFilter, _outputFormat"
                    )))
                }
            }
        }
        Ok(params)
    }

    fn to_json(&self) -> Value {
        json!({
            "types": self.types,
            "since": self.since.as_ref().map(instant),
            // `Some(None)` and `None` would both be null.
            "level": match &self.patients {
                None => "system",
                Some(None) => "patient",
                Some(Some(_)) => "group",
            },
            "patients": self.patients,
            "typeFilters": self.type_filters,
        })
    }

    fn from_json(value: &Value) -> Result<ExportParams> {
        let bad = |what: &str| Error::Internal(format!("stored export job: bad {what}"));
        let since = match value["since"].as_str() {
            Some(since) => Some(
                DateTime::parse_from_rfc3339(since)
                    .map_err(|_| bad("since"))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        Ok(ExportParams {
            types: serde_json::from_value(value["types"].clone()).map_err(|_| bad("types"))?,
            since,
            patients: match value["level"].as_str() {
                Some("system") => None,
                Some("patient") => Some(None),
                Some("group") => Some(Some(
                    serde_json::from_value(value["patients"].clone())
                        .map_err(|_| bad("patients"))?,
                )),
                _ => return Err(bad("level")),
            },
            type_filters: serde_json::from_value(value["typeFilters"].clone())
                .map_err(|_| bad("typeFilters"))?,
        })
    }

    /// The types to export for `caller`, in order.
    fn types_for(&self, caller: &Caller) -> Vec<String> {
        let candidates: Vec<String> = match &self.types {
            Some(types) => types.clone(),
            None => all_resource_types()
                .filter(|t| !is_admin_resource_type(t))
                .map(str::to_string)
                .collect(),
        };
        candidates
            .into_iter()
            .filter(|t| caller.policy.allows(t, Interaction::Search))
            .collect()
    }

    /// Each `_typeFilter` of `resource_type`, as filters.
    fn filters_of(&self, resource_type: &str) -> Result<Vec<Vec<Filter>>> {
        let mut filters = Vec::new();
        for query in &self.type_filters {
            let (t, query_filters) = type_filter(query)?;
            if t == resource_type {
                filters.push(query_filters);
            }
        }
        Ok(filters)
    }

    fn scope(&self) -> ExportScope {
        match &self.patients {
            None => ExportScope::System,
            Some(patients) => ExportScope::Patients(patients.clone()),
        }
    }
}

/// What the kick-off exports.
pub enum Level<'a> {
    System,
    Patient,
    Group(&'a str),
}

/// Records a job and returns its id.
pub async fn kick_off(
    state: &AppState,
    caller: &Caller,
    level: Level<'_>,
    query: &[(String, String)],
    request: &str,
) -> Result<Uuid> {
    let mut params = ExportParams::parse(query)?;
    params.patients = match level {
        Level::System => None,
        Level::Patient => Some(None),
        Level::Group(id) => Some(Some(group_members(state, caller, id).await?)),
    };
    let id = Uuid::new_v4();
    state
        .store
        .create_export_job(&NewExportJob {
            id,
            project_id: caller.project_id,
            membership_id: caller.membership_id,
            login_id: caller.login_id,
            scope: &caller.scope,
            client_id: caller.client_id.as_deref().unwrap_or_default(),
            request,
            params: &params.to_json(),
        })
        .await?;
    Ok(id)
}

/// The Patients a Group the caller may read lists as members.
async fn group_members(state: &AppState, caller: &Caller, id: &str) -> Result<Vec<Uuid>> {
    let group = fhir::read(&state.store, caller, "Group", id).await?;
    let group = fhir::parse_stored(&group)?;
    Ok(group["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["entity"]["reference"].as_str())
        .filter_map(|r| r.strip_prefix("Patient/"))
        .filter_map(parse_id)
        .collect())
}

/// A job of the caller's (same project and membership), else 404: another
/// caller learns nothing, not even that it exists.
pub async fn job_of(state: &AppState, caller: &Caller, id: &str) -> Result<ExportJob> {
    let missing = || Error::NotFound(format!("Export job {id} not found"));
    let uuid = Uuid::parse_str(id).map_err(|_| missing())?;
    match state.store.export_job(caller.project_id, uuid).await? {
        Some(job) if job.membership_id == caller.membership_id => Ok(job),
        _ => Err(missing()),
    }
}

/// Where a job's status is polled.
pub fn status_url(base_url: &str, id: Uuid) -> String {
    format!("{base_url}fhir/R4/$export-status/{id}")
}

/// Where one type's NDJSON of a job is downloaded.
pub fn output_url(base_url: &str, id: Uuid, resource_type: &str) -> String {
    format!("{base_url}fhir/R4/$export-output/{id}/{resource_type}.ndjson")
}

/// The manifest of a complete job.
pub async fn manifest(state: &AppState, job: &ExportJob) -> Result<Value> {
    let output: Vec<Value> = state
        .store
        .export_files(job.project_id, job.id)
        .await?
        .into_iter()
        .map(|(resource_type, count)| {
            json!({
                "type": resource_type,
                "url": output_url(&state.base_url, job.id, &resource_type),
                "count": count,
            })
        })
        .collect();
    Ok(json!({
        "transactionTime": job.transaction_time.as_ref().map(instant),
        "request": job.request,
        "requiresAccessToken": true,
        "output": output,
        "error": [],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_survive_the_job_row() {
        let query = vec![
            ("_type".to_string(), "Patient,Observation".to_string()),
            ("_since".to_string(), "2026-01-02T03:04:05.678Z".to_string()),
            (
                "_typeFilter".to_string(),
                "Observation?status=final,amended,Patient?gender=female".to_string(),
            ),
        ];
        let parsed = ExportParams::parse(&query).unwrap();
        assert_eq!(
            parsed.type_filters,
            ["Observation?status=final,amended", "Patient?gender=female"]
        );
        let group = Uuid::new_v4();
        for patients in [None, Some(None), Some(Some(vec![group]))] {
            let params = ExportParams {
                patients,
                ..parsed.clone()
            };
            assert_eq!(ExportParams::from_json(&params.to_json()).unwrap(), params);
        }
    }
}
