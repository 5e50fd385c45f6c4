//! Search interactions: type, system (`_type`) and compartment search. The
//! query is parsed in fhir-model, compiled to one SQL statement in the store,
//! and answered as a `searchset` Bundle.

use access_policy::{CompiledPolicy, Interaction};
use fhir_model::search::{
    self, parse_search, Filter, Registry, SearchError, SearchRequest, Summary,
};
use serde_json::{json, Value};

use super::{authorize, bundle, parse_id, redact};
use crate::{
    app::AppState,
    auth::Caller,
    config::Limits,
    error::{Error, Result},
    store::{
        search::{Cursor, SearchQuery},
        Reads, Tenant, Tx, Version,
    },
};

/// Where a search was asked: `GET /Type`, `GET /` (system) or `GET /Patient/id/Type`.
pub struct SearchScope<'a> {
    pub resource_type: Option<&'a str>,
    pub compartment: Option<(&'a str, &'a str)>,
}

impl From<SearchError> for Error {
    fn from(error: SearchError) -> Error {
        let SearchError::Param { param, message } = &error;
        Error::Invalid(vec![fhir_model::Issue::error(
            fhir_model::IssueCode::Invalid,
            message.clone(),
        )
        .at(param.clone())])
    }
}

/// A search through `db`: the pool, or a transaction's own view.
pub async fn search(
    state: &AppState,
    db: &impl Reads,
    caller: &Caller,
    scope: &SearchScope<'_>,
    query: &[(String, String)],
    lenient: bool,
    self_path: &str,
) -> Result<String> {
    if let Some(resource_type) = scope.resource_type {
        authorize(caller, resource_type, Interaction::Search)?;
    }
    let registry = Registry::get();
    check_pair_count(query, &state.config.limits)?;
    let mut request = parse_search(registry, scope.resource_type, query, lenient)?;
    check_limits(&request, &state.config.limits)?;
    if request.summary == Summary::Count {
        request.count = 0;
        if request.total == search::Total::None {
            request.total = search::Total::Accurate;
        }
    }
    for resource_type in request
        .types
        .iter()
        .chain(request.include.iter().map(|i| &i.source_type))
    {
        authorize(caller, resource_type, Interaction::Search)?;
    }
    if let Some((compartment_type, id)) = scope.compartment {
        let resource_type = scope.resource_type.unwrap_or_default();
        authorize(caller, compartment_type, Interaction::Read)?;
        let types = [compartment_type.to_string()];
        let readable = caller.policy.row_filter(&types, Interaction::Read);
        let exists = match parse_id(id) {
            Some(uuid) => db
                .read(caller.tenant(), compartment_type, uuid, &readable)
                .await?
                .is_some_and(|v| !v.is_deleted()),
            None => false,
        };
        if !exists {
            return Err(Error::NotFound(format!(
                "{compartment_type}/{id} not found"
            )));
        }
        request.filters.push(search::parse::compartment_filter(
            registry,
            compartment_type,
            id,
            Some(resource_type),
        )?);
    }
    check_hidden_conditions(caller, &request)?;
    let cursor = request.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = db
        .search(&SearchQuery {
            request: &request,
            tenant: caller.tenant(),
            policy: &caller.policy,
            cursor,
        })
        .await?;
    let matches = shape(caller, &request, page.matches)?;
    let included = shape(caller, &request, page.included)?;
    let mut self_url = format!("{}{}", state.base_url, self_path.trim_start_matches('/'));
    if !request.canonical_query.is_empty() {
        self_url.push('?');
        self_url
            .push_str(&serde_urlencoded::to_string(&request.canonical_query).unwrap_or_default());
    }
    bundle::searchset_bundle(&bundle::SearchResults {
        fhir_base: &format!("{}fhir/R4/", state.base_url),
        self_url: &self_url,
        matches: &matches,
        included: &included,
        total: page.total,
        next: page.next.map(|c| c.encode()),
        previous: page.previous.map(|c| c.encode()),
    })
}

/// Parameters that shape the result rather than select (`_count`, `_sort`,
/// `_include`, …): a query may carry this many beyond its conditions.
const RESULT_PARAMETERS: usize = 32;

/// Refuses a query with far more parameters than conditions are allowed,
/// before parsing it.
pub fn check_pair_count(query: &[(String, String)], limits: &Limits) -> Result<()> {
    let max = limits.max_search_conditions + RESULT_PARAMETERS;
    if query.len() > max {
        return Err(Error::BadRequest(format!(
            "This search has {} parameters; at most {max} are allowed (FHIRGATE_MAX_SEARCH_CONDITIONS plus {RESULT_PARAMETERS} result parameters)",
            query.len()
        )));
    }
    Ok(())
}

/// Bounds on what one search asks of the database: its conditions (each
/// value, chain and `_has` link, include), sort keys and `_elements`.
pub fn check_limits(request: &SearchRequest, limits: &Limits) -> Result<()> {
    let conditions = request.filters.iter().map(conditions_of).sum::<usize>()
        + request.include.len()
        + request.revinclude.len();
    let checks = [
        (
            conditions,
            limits.max_search_conditions,
            "conditions (values of parameters, chain and _has links, includes)",
            "FHIRGATE_MAX_SEARCH_CONDITIONS",
        ),
        (
            request.sort.len(),
            limits.max_sort_keys,
            "_sort keys",
            "FHIRGATE_MAX_SORT_KEYS",
        ),
        (
            request.elements.len(),
            limits.max_elements,
            "_elements entries",
            "FHIRGATE_MAX_ELEMENTS",
        ),
    ];
    for (count, max, what, variable) in checks {
        if count > max {
            return Err(Error::BadRequest(format!(
                "This search has {count} {what}; at most {max} are allowed ({variable})"
            )));
        }
    }
    Ok(())
}

fn conditions_of(filter: &Filter) -> usize {
    match filter {
        Filter::Param { values, .. } => values.len().max(1),
        Filter::Chain { inner, .. } | Filter::Has { inner, .. } => 1 + conditions_of(inner),
        Filter::AnyOf(filters) => filters.iter().map(conditions_of).sum(),
        Filter::Compartment { .. } => 1,
    }
}

/// A search may not match on, sort by, or include through a field the
/// caller's policy hides: whether it matched, where it sorted, or what came
/// with it would tell the value.
pub fn check_hidden_conditions(caller: &Caller, request: &SearchRequest) -> Result<()> {
    let sorted = |resource_type: &String| {
        request
            .sort
            .iter()
            .find_map(|sort| caller.policy.hidden_parameter(resource_type, &sort.code))
    };
    let included = || {
        request
            .include
            .iter()
            .chain(&request.revinclude)
            .find_map(|include| {
                caller
                    .policy
                    .hidden_parameter(&include.source_type, &include.param)
            })
    };
    let hidden = caller
        .policy
        .hidden_condition(&request.filters)
        .or_else(|| request.types.iter().find_map(sorted))
        .or_else(included);
    match hidden {
        Some((param, field)) => Err(Error::Forbidden(format!(
            "Search parameter '{param}' reads {field}, which your access policy hides"
        ))),
        None => Ok(()),
    }
}

/// The top-level elements a response keeps, by `_summary` and `_elements`
/// (FHIR §3.1.1.5.9–10); `None` keeps everything.
fn kept_elements(request: &SearchRequest, resource_type: &str) -> Option<Vec<String>> {
    match request.summary {
        Summary::Text => Some(vec!["text".into()]),
        Summary::True => {
            fhir_model::summary::summary_elements(resource_type).map(<[String]>::to_vec)
        }
        _ if !request.elements.is_empty() => Some(request.elements.clone()),
        _ => None,
    }
}

/// Removes what the caller's policy hides, then applies `_summary` and
/// `_elements`: keeps what was asked for plus the mandatory elements, and
/// marks the result SUBSETTED.
fn shape(caller: &Caller, request: &SearchRequest, versions: Vec<Version>) -> Result<Vec<Version>> {
    let drop_text = request.summary == Summary::Data;
    versions
        .into_iter()
        .map(|version| {
            let mut version = redact(caller, version)?;
            let keep = kept_elements(request, &version.resource_type);
            let Some(content) = version.content.as_deref().filter(|_| keep.is_some() || drop_text) else {
                return Ok(version);
            };
            let mut value: Value = serde_json::from_str(content)
                .map_err(|e| Error::Internal(format!("stored resource is not JSON: {e}")))?;
            if let Some(object) = value.as_object_mut() {
                match &keep {
                    Some(keep) => object.retain(|k, _| matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.iter().any(|e| e == k)),
                    None => {
                        object.remove("text");
                    }
                }
                let meta = object.entry("meta").or_insert_with(|| json!({}));
                let tags = meta.as_object_mut().map(|m| m.entry("tag").or_insert_with(|| json!([])));
                if let Some(Value::Array(tags)) = tags {
                    tags.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}));
                }
            }
            version.content = Some(value.to_string());
            Ok(version)
        })
        .collect()
}

/// PostgreSQL text cannot hold NUL, and no FHIR value contains one.
pub fn without_nul(pairs: Vec<(String, String)>) -> Result<Vec<(String, String)>> {
    match pairs
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        Some((name, _)) => Err(Error::BadRequest(format!(
            "Parameter '{name}' contains a NUL character (%00), which no FHIR value may contain"
        ))),
        None => Ok(pairs),
    }
}

/// The live resources of one type matching `query` (search syntax), for the
/// server's own look-ups (users by email, memberships of a user).
pub async fn find(
    state: &AppState,
    tenant: Tenant,
    resource_type: &str,
    query: &[(&str, &str)],
) -> Result<Vec<Version>> {
    let request = lookup(resource_type, query)?;
    Ok(state
        .store
        .search(&lookup_query(&request, tenant))
        .await?
        .matches)
}

/// The server's own lookups inside a write transaction (seeing its writes):
/// every live match of `query`, up to the largest page.
pub async fn find_in(
    tx: &Tx,
    tenant: Tenant,
    resource_type: &str,
    query: &[(&str, &str)],
) -> Result<Vec<Version>> {
    let request = lookup(resource_type, query)?;
    Ok(tx.search(&lookup_query(&request, tenant)).await?.matches)
}

/// `query` as a search request; without a `_count`, the largest page.
fn lookup(resource_type: &str, query: &[(&str, &str)]) -> Result<SearchRequest> {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !pairs.iter().any(|(k, _)| k == "_count") {
        pairs.push(("_count".into(), "1000".into()));
    }
    Ok(parse_search(
        Registry::get(),
        Some(resource_type),
        &pairs,
        false,
    )?)
}

/// The server's own lookups see everything in their tenant.
fn lookup_query(request: &SearchRequest, tenant: Tenant) -> SearchQuery<'_> {
    static UNRESTRICTED: std::sync::LazyLock<CompiledPolicy> =
        std::sync::LazyLock::new(CompiledPolicy::unrestricted);
    SearchQuery {
        request,
        tenant,
        policy: &UNRESTRICTED,
        cursor: None,
    }
}
