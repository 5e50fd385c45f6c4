//! Search query parsing: a query string -> [`SearchRequest`].
//! OWNER: helper B.
//!
//! Follows the R4 search page (<https://hl7.org/fhir/R4/search.html>):
//! repeated parameters are ANDed (one [`Filter`] each), comma-separated
//! values ORed; `\,` `\|` `\$` `\\` escape the separators. Names may carry a
//! modifier (`code:not`), chain through references (`subject:Patient.name`,
//! any depth up to [`MAX_NESTING`]) or reverse-chain (`_has:Observation:subject:code`).

#[cfg(test)]
mod tests;
mod value;

use std::collections::HashSet;

use super::{
    Filter, Include, Modifier, ParamInfo, ParamLookup, ParamType, SearchRequest, Sort, Summary,
    Total, DEFAULT_COUNT, MAX_COUNT, MAX_OFFSET,
};
use crate::resource_types::{is_known_resource_type, is_valid_id};
use value::{modifier_for, parse_values, split_unescaped};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    /// A problem with one parameter: 400, naming it.
    #[error("{message}")]
    Param { param: String, message: String },
}

/// How many chain links and `_has` levels one parameter may nest.
pub const MAX_NESTING: usize = 5;

/// Result parameters that R4 defines and fhirgate does not implement.
const UNSUPPORTED: &[&str] = &["_contained", "_containedType", "_filter", "_list", "_query"];

/// String parameters searched by the words they contain (`_text`: the
/// narrative, `_content`: the whole resource); they take no modifier but
/// `:missing`.
const FULL_TEXT: &[&str] = &["_text", "_content"];

/// A reference parameter may only point at one of its target types (any,
/// when it lists none).
fn check_target(
    param: &str,
    what: &str,
    targets: &[String],
    target: &str,
) -> Result<(), SearchError> {
    if targets.is_empty() || targets.iter().any(|x| x == target) {
        return Ok(());
    }
    Err(error(
        param,
        format!(
            "{what} cannot refer to {target}; it refers to {}",
            targets.join(", ")
        ),
    ))
}

fn error(param: &str, message: impl Into<String>) -> SearchError {
    SearchError::Param {
        param: param.to_string(),
        message: message.into(),
    }
}

/// A failed parameter; `ignorable` when lenient handling may drop it
/// (unknown or unsupported parameters, not malformed ones).
struct Failure {
    error: SearchError,
    ignorable: bool,
}

impl From<SearchError> for Failure {
    fn from(error: SearchError) -> Failure {
        Failure {
            error,
            ignorable: false,
        }
    }
}

fn unknown(param: &str, message: impl Into<String>) -> Failure {
    Failure {
        error: error(param, message),
        ignorable: true,
    }
}

/// The types a parameter name is resolved against.
enum Scope {
    /// A type search, or a chain or `_has` target.
    Type(String),
    /// A system search: `_type`'s types (empty: all types, resolved against `Resource`).
    System(Vec<String>),
}

impl Scope {
    fn single(&self) -> Option<&str> {
        match self {
            Scope::Type(t) => Some(t),
            Scope::System(types) => match types.as_slice() {
                [t] => Some(t),
                _ => None,
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Scope::Type(t) => t.clone(),
            Scope::System(types) if types.is_empty() => "all resource types".to_string(),
            Scope::System(types) => types.join(", "),
        }
    }

    /// The parameter `code` here: the resource type to name in the filter and its definition.
    fn resolve(
        &self,
        lookup: &dyn ParamLookup,
        param: &str,
        code: &str,
    ) -> Result<Option<(String, ParamInfo)>, SearchError> {
        let types = match self {
            Scope::Type(t) => return Ok(lookup.lookup(t, code).map(|info| (t.clone(), info))),
            Scope::System(types) => types,
        };
        match types.as_slice() {
            [] => {
                return Ok(lookup
                    .lookup("Resource", code)
                    .map(|info| ("Resource".to_string(), info)))
            }
            [t] => return Ok(lookup.lookup(t, code).map(|info| (t.clone(), info))),
            _ => {}
        }
        let mut first: Option<ParamInfo> = None;
        for t in types {
            let Some(info) = lookup.lookup(t, code) else {
                return Ok(None);
            };
            match &first {
                Some(f) if f.kind != info.kind => {
                    return Err(error(
                        param,
                        format!(
                            "Search parameter '{code}' has different types in {}; search one type at a time",
                            types.join(", ")
                        ),
                    ))
                }
                Some(_) => {}
                None => first = Some(info),
            }
        }
        Ok(first.map(|info| ("Resource".to_string(), info)))
    }
}

/// Parses `query` for a search on `resource_type` (`None`: system search,
/// where `_type` picks the types). With `lenient` (`Prefer: handling=lenient`)
/// unknown parameters are ignored and left out of `canonical_query`.
pub fn parse_search(
    lookup: &dyn ParamLookup,
    resource_type: Option<&str>,
    query: &[(String, String)],
    lenient: bool,
) -> Result<SearchRequest, SearchError> {
    let scope = match resource_type {
        Some(t) => {
            if let Some((name, _)) = query.iter().find(|(n, _)| n == "_type") {
                return Err(error(
                    name,
                    format!("_type is for system searches (GET [base]?_type=...); this search is already on {t}"),
                ));
            }
            Scope::Type(t.to_string())
        }
        None => {
            let mut values = query.iter().filter(|(n, _)| n == "_type").map(|(_, v)| v);
            let types = match (values.next(), values.next()) {
                (Some(_), Some(_)) => return Err(error("_type", "_type may appear only once")),
                (Some(v), None) => parse_types(v)?,
                (None, _) => Vec::new(),
            };
            Scope::System(types)
        }
    };
    let mut parser = Parser {
        lookup,
        request: SearchRequest {
            types: match &scope {
                Scope::Type(t) => vec![t.clone()],
                Scope::System(types) => types.clone(),
            },
            filters: Vec::new(),
            sort: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            total: Total::None,
            summary: Summary::False,
            elements: Vec::new(),
            include: Vec::new(),
            revinclude: Vec::new(),
            cursor: None,
            canonical_query: Vec::new(),
        },
        scope,
        seen: HashSet::new(),
    };
    for (name, value) in query {
        match parser.parameter(name, value) {
            Ok(Keep::Yes) => parser
                .request
                .canonical_query
                .push((name.clone(), value.clone())),
            Ok(Keep::No) => {}
            Err(Failure {
                ignorable: true, ..
            }) if lenient => {}
            Err(failure) => return Err(failure.error),
        }
    }
    if parser.request.count == 0 {
        parser.request.summary = Summary::Count;
    }
    Ok(parser.request)
}

/// The filter for a compartment search, `[compartment_type]/[id]/[resource_type]`
/// or `_compartment=[compartment_type]/[id]`: the resource is in the
/// compartment of that resource. With a `resource_type`, it must be one that
/// can be in such a compartment; without (system search, `*` policies), any.
pub fn compartment_filter(
    lookup: &dyn ParamLookup,
    compartment_type: &str,
    id: &str,
    resource_type: Option<&str>,
) -> Result<Filter, SearchError> {
    let param = "_compartment";
    if !is_known_resource_type(compartment_type) {
        return Err(error(
            param,
            format!("'{compartment_type}' is not a resource type"),
        ));
    }
    if !is_valid_id(id) {
        return Err(error(
            param,
            format!("'{id}' is not a valid {compartment_type} id"),
        ));
    }
    if let Some(resource_type) = resource_type {
        if resource_type != compartment_type
            && lookup
                .compartment_params(compartment_type, resource_type)
                .is_empty()
        {
            return Err(error(
                param,
                format!("{resource_type} resources are not in the {compartment_type} compartment"),
            ));
        }
    }
    Ok(Filter::Compartment {
        compartment_type: compartment_type.to_string(),
        id: id.to_string(),
    })
}

fn parse_types(value: &str) -> Result<Vec<String>, SearchError> {
    let mut types: Vec<String> = Vec::new();
    for t in value.split(',').map(str::trim) {
        if !is_known_resource_type(t) {
            return Err(error(
                "_type",
                format!("_type: '{t}' is not a resource type (use a comma-separated list such as Patient,Practitioner)"),
            ));
        }
        if !types.iter().any(|x| x == t) {
            types.push(t.to_string());
        }
    }
    Ok(types)
}

/// Whether a parameter goes into `canonical_query`.
enum Keep {
    Yes,
    No,
}

struct Parser<'a> {
    lookup: &'a dyn ParamLookup,
    request: SearchRequest,
    scope: Scope,
    /// Result parameters that may appear only once and have.
    seen: HashSet<String>,
}

impl Parser<'_> {
    fn parameter(&mut self, name: &str, value: &str) -> Result<Keep, Failure> {
        let (base, modifier) = match name.split_once(':') {
            Some((b, m)) => (b, Some(m)),
            None => (name, None),
        };
        let once = |seen: &mut HashSet<String>| -> Result<(), Failure> {
            if seen.insert(base.to_string()) {
                Ok(())
            } else {
                Err(error(name, format!("{base} may appear only once")).into())
            }
        };
        match (base, modifier) {
            ("_include" | "_revinclude", None | Some("iterate" | "recurse")) => {
                let include =
                    self.include(name, base == "_revinclude", modifier.is_some(), value)?;
                if base == "_include" {
                    self.request.include.push(include);
                } else {
                    self.request.revinclude.push(include);
                }
            }
            ("_include" | "_revinclude", Some(m)) => {
                return Err(error(
                    name,
                    format!("'{name}': {base} takes only the :iterate modifier, not :{m}"),
                )
                .into())
            }
            (
                "_count" | "_offset" | "_sort" | "_total" | "_summary" | "_elements" | "_type"
                | "_compartment" | "_cursor" | "_format" | "_pretty",
                Some(m),
            ) => {
                return Err(error(
                    name,
                    format!("'{name}': {base} takes no modifiers, not :{m}"),
                )
                .into())
            }
            ("_format" | "_pretty", None) => return Ok(Keep::No),
            ("_cursor", None) => {
                once(&mut self.seen)?;
                self.request.cursor = Some(value.to_string());
                return Ok(Keep::No);
            }
            // Checked before the other parameters.
            ("_type", None) => {}
            ("_count", None) => {
                once(&mut self.seen)?;
                let count = value.trim().parse::<usize>().map_err(|_| {
                    error(
                        name,
                        format!(
                            "_count must be a whole number from 0 to {MAX_COUNT}, not '{value}'"
                        ),
                    )
                })?;
                self.request.count = count.min(MAX_COUNT);
            }
            ("_offset", None) => {
                once(&mut self.seen)?;
                let offset = value.trim().parse::<usize>().map_err(|_| {
                    error(
                        name,
                        format!(
                            "_offset must be a whole number from 0 to {MAX_OFFSET}, not '{value}'"
                        ),
                    )
                })?;
                if offset > MAX_OFFSET {
                    return Err(error(
                        name,
                        format!("_offset may be at most {MAX_OFFSET}; follow the Bundle's next links to page further"),
                    )
                    .into());
                }
                self.request.offset = offset;
            }
            ("_sort", None) => {
                once(&mut self.seen)?;
                self.request.sort = self.sort(name, value)?;
            }
            ("_total", None) => {
                once(&mut self.seen)?;
                self.request.total = match value {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => {
                        return Err(error(
                            name,
                            format!("_total must be none, estimate or accurate, not '{value}'"),
                        )
                        .into())
                    }
                };
            }
            ("_summary", None) => {
                once(&mut self.seen)?;
                self.request.summary = match value {
                    "true" => Summary::True,
                    "false" => Summary::False,
                    "count" => Summary::Count,
                    "data" => Summary::Data,
                    "text" => Summary::Text,
                    _ => {
                        return Err(error(
                            name,
                            format!(
                                "_summary must be true, false, count, data or text, not '{value}'"
                            ),
                        )
                        .into())
                    }
                };
            }
            ("_elements", None) => {
                once(&mut self.seen)?;
                self.request.elements = elements(name, value)?;
            }
            ("_compartment", None) => {
                let filter = self.compartment(name, value)?;
                self.request.filters.push(filter);
            }
            (b, _) if UNSUPPORTED.contains(&b) => {
                return Err(unknown(name, format!("The {b} parameter is not supported")))
            }
            _ => {
                let filter = self.filter(&self.scope, name, name, value, 0)?;
                self.request.filters.push(filter);
            }
        }
        Ok(Keep::Yes)
    }

    /// `name` (what is left of the parameter `param` after the links already
    /// read) on `scope`.
    fn filter(
        &self,
        scope: &Scope,
        param: &str,
        name: &str,
        value: &str,
        depth: usize,
    ) -> Result<Filter, Failure> {
        if depth > MAX_NESTING {
            return Err(error(
                param,
                format!("'{param}' nests chains or _has more than {MAX_NESTING} levels deep"),
            )
            .into());
        }
        if let Some(rest) = name.strip_prefix("_has:") {
            return self.has(scope, param, rest, value, depth);
        }
        if name == "_has" {
            return Err(error(
                param,
                "_has needs the form _has:Type:reference:parameter=value",
            )
            .into());
        }
        if let Some((link, rest)) = name.split_once('.') {
            return self.chain(scope, param, link, rest, value, depth);
        }
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (name, None),
        };
        let (resource_type, info) = self.resolve(scope, param, code)?;
        // `near` is the only special parameter R4 defines.
        if info.kind == ParamType::Special && code != "near" {
            return Err(unknown(
                param,
                format!("The special search parameter '{code}' is not supported"),
            ));
        }
        let full_text = FULL_TEXT.contains(&code);
        let modifier = match modifier {
            Some(m) if full_text && m != "missing" => {
                let message = format!(
                    "Search parameter '{param}': {code} takes no modifier but :missing, not :{m}"
                );
                return Err(error(param, message).into());
            }
            _ => modifier_for(info.kind, modifier, &info.targets)
                .map_err(|m| error(param, format!("Search parameter '{param}': {m}")))?,
        };
        let values = parse_values(info.kind, &modifier, &info.targets, &info.components, value)
            .map_err(|m| error(param, format!("Search parameter '{param}': {m}")))?;
        // Full-text values match anywhere in the indexed text.
        let modifier = match modifier {
            Modifier::None if full_text => Modifier::Contains,
            other => other,
        };
        Ok(Filter::Param {
            resource_type,
            code: code.to_string(),
            kind: info.kind,
            modifier,
            values,
        })
    }

    fn resolve(
        &self,
        scope: &Scope,
        param: &str,
        code: &str,
    ) -> Result<(String, ParamInfo), Failure> {
        scope.resolve(self.lookup, param, code)?.ok_or_else(|| {
            let message = if code == param {
                format!("Unknown search parameter '{code}' for {}", scope.describe())
            } else {
                format!(
                    "Unknown search parameter '{code}' for {} (in '{param}')",
                    scope.describe()
                )
            };
            unknown(param, message)
        })
    }

    /// `link.rest`, `link` being `code` or `code:Type`.
    fn chain(
        &self,
        scope: &Scope,
        param: &str,
        link: &str,
        rest: &str,
        value: &str,
        depth: usize,
    ) -> Result<Filter, Failure> {
        let (code, explicit) = match link.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (link, None),
        };
        let (resource_type, info) = self.resolve(scope, param, code)?;
        if info.kind != ParamType::Reference {
            return Err(error(
                param,
                format!(
                    "'{code}' is a {} parameter; only reference parameters can be chained (in '{param}')",
                    info.kind.as_str()
                ),
            )
            .into());
        }
        let target_type = match (explicit, info.targets.as_slice()) {
            (Some(t), targets) => {
                if !is_known_resource_type(t) {
                    return Err(error(param, format!("'{t}' in '{param}' is not a resource type")).into());
                }
                if !targets.is_empty() && !targets.iter().any(|x| x == t) {
                    return Err(error(
                        param,
                        format!("'{code}' cannot refer to {t}; it refers to {} (in '{param}')", targets.join(", ")),
                    )
                    .into());
                }
                t.to_string()
            }
            (None, [only]) => only.clone(),
            (None, []) => {
                return Err(error(
                    param,
                    format!("'{code}' can refer to any resource type; name one in '{param}', e.g. {code}:Patient.{rest}"),
                )
                .into())
            }
            (None, targets) => {
                return Err(error(
                    param,
                    format!(
                        "'{code}' can refer to {}; name the type to chain through in '{param}', e.g. {code}:{}.{rest}",
                        targets.join(", "),
                        targets[0]
                    ),
                )
                .into())
            }
        };
        if rest.is_empty() {
            return Err(error(param, format!("'{param}' needs a parameter after the '.'")).into());
        }
        let inner = self.filter(
            &Scope::Type(target_type.clone()),
            param,
            rest,
            value,
            depth + 1,
        )?;
        Ok(Filter::Chain {
            resource_type,
            code: code.to_string(),
            target_type,
            inner: Box::new(inner),
        })
    }

    /// After `_has:`: `Type:reference:rest`.
    fn has(
        &self,
        scope: &Scope,
        param: &str,
        spec: &str,
        value: &str,
        depth: usize,
    ) -> Result<Filter, Failure> {
        let mut parts = spec.splitn(3, ':');
        let (Some(source), Some(reference), Some(rest)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(error(
                param,
                format!("'{param}' must have the form _has:Type:reference:parameter"),
            )
            .into());
        };
        if !is_known_resource_type(source) {
            return Err(error(
                param,
                format!("'{source}' in '{param}' is not a resource type"),
            )
            .into());
        }
        let source_scope = Scope::Type(source.to_string());
        let (_, info) = self.resolve(&source_scope, param, reference)?;
        if info.kind != ParamType::Reference {
            return Err(error(
                param,
                format!(
                    "'{reference}' of {source} is a {} parameter, not a reference (in '{param}')",
                    info.kind.as_str()
                ),
            )
            .into());
        }
        if let Some(t) = scope.single() {
            check_target(param, &format!("{source}.{reference}"), &info.targets, t)?;
        }
        if rest.is_empty() {
            return Err(error(
                param,
                format!("'{param}' needs a parameter of {source} at the end"),
            )
            .into());
        }
        let inner = self.filter(&source_scope, param, rest, value, depth + 1)?;
        Ok(Filter::Has {
            source_type: source.to_string(),
            reference_param: reference.to_string(),
            inner: Box::new(inner),
        })
    }

    fn sort(&self, param: &str, value: &str) -> Result<Vec<Sort>, Failure> {
        let mut keys = Vec::new();
        for key in value.split(',').map(str::trim) {
            let (descending, code) = match key.strip_prefix('-') {
                Some(code) => (true, code),
                None => (false, key),
            };
            if code.is_empty() {
                return Err(error(param, format!("_sort has an empty key in '{value}'")).into());
            }
            if code.contains(['.', ':']) {
                return Err(error(param, format!("_sort by '{code}' is not supported: sort by a parameter of the searched type")).into());
            }
            let kind = match (self.scope.resolve(self.lookup, param, code)?, code) {
                (Some((_, info)), _) => info.kind,
                (None, "_id") => ParamType::Token,
                (None, "_lastUpdated") => ParamType::Date,
                (None, _) => {
                    return Err(error(
                        param,
                        format!(
                            "_sort: unknown search parameter '{code}' for {}",
                            self.scope.describe()
                        ),
                    )
                    .into())
                }
            };
            if matches!(kind, ParamType::Composite | ParamType::Special) {
                return Err(error(
                    param,
                    format!(
                        "_sort: '{code}' is a {} parameter, which cannot be sorted by",
                        kind.as_str()
                    ),
                )
                .into());
            }
            keys.push(Sort {
                code: code.to_string(),
                kind,
                descending,
            });
        }
        Ok(keys)
    }

    /// `Source:param[:Target]`.
    fn include(
        &self,
        param: &str,
        reverse: bool,
        iterate: bool,
        value: &str,
    ) -> Result<Include, Failure> {
        let usage = format!("{param} must be Type:parameter or Type:parameter:TargetType");
        if value.split(':').any(|p| p == "*") {
            return Err(error(param, format!("{param}=*... (wildcard) is not supported; name each parameter, e.g. Observation:subject")).into());
        }
        let parts: Vec<&str> = value.split(':').collect();
        let (source, code, target) = match parts.as_slice() {
            [s, c] => (*s, *c, None),
            [s, c, t] => (*s, *c, Some(*t)),
            _ => return Err(error(param, format!("{usage}, not '{value}'")).into()),
        };
        if !is_known_resource_type(source) {
            return Err(error(param, format!("{usage}: '{source}' is not a resource type")).into());
        }
        if !reverse && !iterate {
            let searched = match &self.scope {
                Scope::Type(t) => Some(vec![t.clone()]),
                Scope::System(types) if !types.is_empty() => Some(types.clone()),
                Scope::System(_) => None,
            };
            if let Some(types) = searched.filter(|types| !types.iter().any(|t| t == source)) {
                return Err(error(
                    param,
                    format!("{param}={value} starts from {source}, which is not searched ({}); use _include:iterate to include from included resources", types.join(", ")),
                )
                .into());
            }
        }
        let Some(info) = self.lookup.lookup(source, code) else {
            return Err(error(
                param,
                format!("{param}: unknown search parameter '{code}' for {source}"),
            )
            .into());
        };
        if info.kind != ParamType::Reference {
            return Err(error(
                param,
                format!(
                    "{param}: '{code}' of {source} is a {} parameter, not a reference",
                    info.kind.as_str()
                ),
            )
            .into());
        }
        if let Some(t) = target {
            if !is_known_resource_type(t) {
                return Err(error(param, format!("{usage}: '{t}' is not a resource type")).into());
            }
            check_target(
                param,
                &format!("{param}: {source}.{code}"),
                &info.targets,
                t,
            )?;
        }
        if reverse && !iterate {
            if let Some(t) = self.scope.single() {
                if !info.targets.is_empty() && !info.targets.iter().any(|x| x == t) {
                    return Err(error(
                        param,
                        format!(
                            "{param}: {source}.{code} cannot refer to {t}; it refers to {}",
                            info.targets.join(", ")
                        ),
                    )
                    .into());
                }
            }
        }
        Ok(Include {
            source_type: source.to_string(),
            param: code.to_string(),
            target_type: target.map(str::to_string),
            iterate,
        })
    }

    /// `Type/id`.
    fn compartment(&self, param: &str, value: &str) -> Result<Filter, Failure> {
        let Some((compartment_type, id)) = value.split_once('/') else {
            return Err(error(
                param,
                format!("_compartment must be Type/id (e.g. Patient/123), not '{value}'"),
            )
            .into());
        };
        Ok(compartment_filter(
            self.lookup,
            compartment_type,
            id,
            self.scope.single(),
        )?)
    }
}

fn elements(param: &str, value: &str) -> Result<Vec<String>, SearchError> {
    split_unescaped(value, ',')
        .into_iter()
        .map(str::trim)
        .map(|element| {
            let valid = !element.is_empty()
                && element.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if valid {
                Ok(element.to_string())
            } else {
                Err(error(param, format!("_elements must be a comma-separated list of element names, and '{element}' is not one")))
            }
        })
        .collect()
}
