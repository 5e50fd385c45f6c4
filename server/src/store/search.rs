//! Search: a typed [`SearchRequest`] (and the caller's tenant) becomes ONE
//! parameterised SQL statement over `resource` and the index tables, plus one
//! count when `_total` asks and one statement per include level. Filters are
//! nested `EXISTS` over the index tables; chains and `_has` nest further.
//! Paging is keyset (cursor) paging on the sort keys plus the id, so a page
//! never repeats or skips a resource that existed when paging began.

use access_policy::{CompiledPolicy, Interaction, ReadScope, RowFilter, Types};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use fhir_model::search::{
    Filter, Include, Modifier, ParamType, Prefix, Registry, SearchRequest, SearchValue, Sort,
};
use uuid::Uuid;

use super::statistics::ProjectEstimate;
use super::{
    index::{identifier_param, is_full_text, of_type_param, of_type_system},
    Executor, Query, Store, Tenant, Version,
};
use crate::error::{Error, Result};

/// Include levels followed for `:iterate`.
const MAX_INCLUDE_DEPTH: usize = 3;
/// Included resources per page, at most.
const MAX_INCLUDED: i64 = 1000;

/// Where a page starts: after (or, going backwards, before) the row whose
/// sort keys and id these are.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub backwards: bool,
    pub keys: Vec<Option<String>>,
    pub id: Uuid,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let json = serde_json::json!([self.backwards, self.keys, self.id]);
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    pub fn decode(text: &str) -> Result<Cursor> {
        let invalid =
            || Error::BadRequest("_cursor is not valid; follow the Bundle's links".into());
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let (backwards, keys, id): (bool, Vec<Option<String>>, Uuid) =
            serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        Ok(Cursor {
            backwards,
            keys,
            id,
        })
    }
}

pub struct SearchQuery<'a> {
    pub request: &'a SearchRequest,
    pub tenant: Tenant,
    /// The caller's policy: its row filter is part of every statement, so
    /// nothing outside it is matched, counted, included or reached by a chain.
    pub policy: &'a CompiledPolicy,
    pub cursor: Option<Cursor>,
}

pub struct SearchPage {
    pub matches: Vec<Version>,
    pub included: Vec<Version>,
    pub total: Option<i64>,
    /// Cursor for the next page, when there is one.
    pub next: Option<Cursor>,
    /// Cursor for the previous page, when there is one.
    pub previous: Option<Cursor>,
}

/// SQL expressions for the fields a value condition reads: the columns of an
/// index table, or the members of one composite component.
struct Columns {
    system: String,
    code: String,
    text: String,
    normalized: String,
    /// `left(normalized, 3)`, the leading column of the string index, for
    /// an index table's row; `None` for a composite component.
    normalized_head: Option<String>,
    exact: String,
    low: String,
    high: String,
    value: String,
    unit: String,
    target_type: String,
    target_id: String,
    url: String,
}

impl Columns {
    fn table(alias: &str) -> Columns {
        let c = |name: &str| format!("{alias}.{name}");
        Columns {
            system: c("system"),
            code: c("code"),
            text: c("text"),
            normalized: c("normalized"),
            normalized_head: Some(format!("left({alias}.normalized, {STRING_HEAD_CHARS})")),
            exact: c("exact"),
            low: c("low"),
            high: c("high"),
            value: c("value"),
            unit: c("unit"),
            target_type: c("target_type"),
            target_id: c("target_id"),
            url: c("url"),
        }
    }

    fn component(alias: &str, index: usize) -> Columns {
        let text = |name: &str| format!("({alias}.parts->{index}->>'{name}')");
        let cast = |name: &str, sql_type: &str| {
            format!("(({alias}.parts->{index}->>'{name}')::{sql_type})")
        };
        Columns {
            system: text("system"),
            code: text("code"),
            text: text("text"),
            normalized: text("normalized"),
            normalized_head: None,
            exact: text("exact"),
            low: cast("low", "bigint"),
            high: cast("high", "bigint"),
            value: cast("value", "float8"),
            unit: text("unit"),
            target_type: text("target_type"),
            target_id: cast("target_id", "uuid"),
            url: text("url"),
        }
    }
}

/// The index table that holds values of a parameter.
fn table_for(code: &str, kind: ParamType, modifier: &Modifier) -> Option<&'static str> {
    if is_full_text(code) {
        return Some("idx_text");
    }
    Some(match (kind, modifier) {
        (ParamType::Special, _) if code == "near" => "idx_composite",
        (ParamType::Reference, Modifier::Identifier) => "idx_token",
        (ParamType::Token, _) => "idx_token",
        (ParamType::String, _) => "idx_string",
        (ParamType::Date, _) => "idx_date",
        (ParamType::Number, _) => "idx_number",
        (ParamType::Quantity, _) => "idx_quantity",
        (ParamType::Reference, _) => "idx_reference",
        (ParamType::Uri, _) => "idx_uri",
        (ParamType::Composite, _) => "idx_composite",
        (ParamType::Special, _) => return None,
    })
}

/// `LIKE` pattern for a literal prefix.
fn like_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// `column` starts with `prefix`, as a byte-wise range (the `~>=~`/`~<~`
/// operators of the `text_pattern_ops` indexes) rather than `LIKE 'p%'`: a
/// range over parameters keeps its index in a prepared statement's generic
/// plan, so PostgreSQL need not plan the query again on every execution.
fn starts_with(q: &mut Query, column: &str, prefix: String) {
    let upper = prefix_upper_bound(&prefix);
    q.push(&format!("({column} ~>=~ ")).bind(prefix);
    if let Some(upper) = upper {
        q.push(&format!(" AND {column} ~<~ ")).bind(upper);
    }
    q.push(")");
}

/// The least string greater than every string that starts with `prefix`
/// (UTF-8 orders bytes as it orders code points): the last character that
/// can be incremented, incremented, and what follows it dropped. `None` when
/// every string starting with `prefix` is unbounded above (no such character).
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The characters of a normalised string that lead the string index
/// (`idx_string_head`, migration 0010): a prefix of at least this many
/// characters is an equality on them, whose matches the index holds in
/// resource id order, so a search page can stream them.
const STRING_HEAD_CHARS: usize = 3;

fn string_head(normalized: &str) -> String {
    normalized.chars().take(STRING_HEAD_CHARS).collect()
}

/// A normalised string value starts with `prefix` (already normalised):
/// through the index head where the columns have one.
fn string_prefix(q: &mut Query, c: &Columns, prefix: String) {
    match &c.normalized_head {
        Some(head) if prefix.chars().count() >= STRING_HEAD_CHARS => {
            q.push(&format!("{head} = ")).bind(string_head(&prefix));
            q.push(" AND ");
            starts_with(q, &c.normalized, prefix);
        }
        // Shorter than the head: starting with it is the head's range.
        Some(head) => starts_with(q, head, prefix),
        None => starts_with(q, &c.normalized, prefix),
    }
}

/// Lower-cased, accents folded: the same normalisation as the string index.
fn normalize(value: &str) -> String {
    fhir_model::search::extract::normalize(value)
}

fn micros_to_time(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or(if micros < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// Builds the WHERE conditions of a search. Aliases are numbered so nested
/// chains and `_has` never collide.
struct Compiler<'q> {
    q: &'q mut Query,
    next_alias: usize,
    /// The searched types, which a filter of a search over several names as
    /// `Resource`.
    types: &'q [String],
    /// Applied to the resources chains and `_has` reach (not inside the
    /// policy's own criteria).
    policy: Option<&'q CompiledPolicy>,
}

impl Compiler<'_> {
    fn alias(&mut self, prefix: &str) -> String {
        self.next_alias += 1;
        format!("{prefix}{}", self.next_alias)
    }

    /// ` AND (…)`: the rows of `row` that `filter` admits; each branch is its
    /// entry's types and criteria.
    fn row_filter(&mut self, row: &str, filter: &RowFilter<'_>) -> Result<()> {
        let branches = match filter {
            RowFilter::All => return Ok(()),
            RowFilter::Nothing => {
                self.q.push(" AND FALSE");
                return Ok(());
            }
            RowFilter::AnyOf(branches) => branches,
        };
        let policy = self.policy.take();
        self.q.push(" AND (");
        for (n, branch) in branches.iter().enumerate() {
            if n > 0 {
                self.q.push(" OR ");
            }
            self.q.push("(TRUE");
            match branch.types {
                Types::Any => {}
                Types::One(t) => {
                    self.q
                        .push(&format!(" AND {row}.resource_type = "))
                        .bind(t.to_string());
                }
                Types::Ordinary => {
                    let outside: Vec<String> =
                        access_policy::outside_star().map(str::to_string).collect();
                    self.q
                        .push(&format!(" AND {row}.resource_type <> ALL("))
                        .bind(outside)
                        .push(")");
                }
            }
            for filter in branch.filters {
                self.q.push(" AND ");
                self.filter(row, filter)?;
            }
            self.q.push(")");
        }
        self.q.push(")");
        self.policy = policy;
        Ok(())
    }

    /// The policy's row filter for a resource a chain or `_has` reaches.
    fn reached(&mut self, row: &str, resource_type: &str) -> Result<()> {
        let Some(policy) = self.policy else {
            return Ok(());
        };
        let types = [resource_type.to_string()];
        self.row_filter(row, &policy.row_filter(&types, Interaction::Search))
    }

    /// One filter on the resource row aliased `row`.
    fn filter(&mut self, row: &str, filter: &Filter) -> Result<()> {
        match filter {
            Filter::Param {
                resource_type,
                code,
                kind,
                modifier,
                values,
            } => self.param(row, resource_type, code, *kind, modifier, values),
            Filter::Chain {
                resource_type,
                code,
                target_type,
                inner,
            } => {
                let i = self.alias("c");
                let t = self.alias("t");
                self.q.push(&format!(
                    "EXISTS (SELECT 1 FROM idx_reference {i} JOIN resource {t} ON {t}.project_id = {i}.project_id AND {t}.resource_type = {i}.target_type AND {t}.id = {i}.target_id WHERE {i}.project_id = {row}.project_id AND {i}.resource_type = {row}.resource_type AND {i}.resource_id = {row}.id AND "
                ));
                self.reference_rows(&i, resource_type, code);
                self.q
                    .push(&format!(" AND {i}.target_type = "))
                    .bind(target_type.clone())
                    .push(&format!(" AND NOT {t}.deleted"));
                self.reached(&t, target_type)?;
                self.q.push(" AND ");
                self.filter(&t, inner)?;
                self.q.push(")");
                Ok(())
            }
            Filter::Has {
                source_type,
                reference_param,
                inner,
            } => {
                let i = self.alias("h");
                let s = self.alias("s");
                self.q.push(&format!(
                    "EXISTS (SELECT 1 FROM idx_reference {i} JOIN resource {s} ON {s}.project_id = {i}.project_id AND {s}.resource_type = {i}.resource_type AND {s}.id = {i}.resource_id WHERE {i}.project_id = {row}.project_id AND {i}.target_id = {row}.id AND {i}.target_type = {row}.resource_type AND {i}.resource_type = "
                ));
                self.q.bind(source_type.clone()).push(" AND ");
                self.reference_rows(&i, source_type, reference_param);
                self.q.push(&format!(" AND NOT {s}.deleted"));
                self.reached(&s, source_type)?;
                self.q.push(" AND ");
                self.filter(&s, inner)?;
                self.q.push(")");
                Ok(())
            }
            Filter::Compartment {
                compartment_type,
                id,
            } => {
                let Ok(id) = Uuid::parse_str(id) else {
                    // fhirgate ids are UUIDs: nothing is in another id's compartment.
                    self.q.push("FALSE");
                    return Ok(());
                };
                let k = self.alias("k");
                self.q.push(&format!(
                    "EXISTS (SELECT 1 FROM resource_compartment {k} WHERE {k}.project_id = {row}.project_id AND {k}.resource_type = {row}.resource_type AND {k}.resource_id = {row}.id AND {k}.compartment_type = "
                ));
                self.q
                    .bind(compartment_type.clone())
                    .push(&format!(" AND {k}.compartment_id = "))
                    .bind(id)
                    .push(")");
                Ok(())
            }
            Filter::AnyOf(filters) => {
                if filters.is_empty() {
                    self.q.push("FALSE");
                    return Ok(());
                }
                self.q.push("(");
                for (n, f) in filters.iter().enumerate() {
                    if n > 0 {
                        self.q.push(" OR ");
                    }
                    self.filter(row, f)?;
                }
                self.q.push(")");
                Ok(())
            }
        }
    }

    /// The types a filter of `resource_type` is on: the searched ones for
    /// `Resource` (a search over several types).
    fn types_of<'t>(&'t self, resource_type: &'t str) -> Vec<&'t str> {
        if resource_type == "Resource" && !self.types.is_empty() {
            self.types.iter().map(String::as_str).collect()
        } else {
            vec![resource_type]
        }
    }

    /// The condition on the index rows aliased `alias` that hold the
    /// references of `code` of `resource_type` (see [`IndexedRows`]).
    fn reference_rows(&mut self, alias: &str, resource_type: &str, code: &str) {
        let rows = indexed_params(&self.types_of(resource_type), code, &Modifier::None);
        let condition = rows.condition(self.q, alias);
        self.q.push(&condition);
    }

    fn param(
        &mut self,
        row: &str,
        resource_type: &str,
        code: &str,
        kind: ParamType,
        modifier: &Modifier,
        values: &[SearchValue],
    ) -> Result<()> {
        match code {
            "_id" => return self.id_filter(row, modifier, values),
            "_lastUpdated" => return self.last_updated_filter(row, values),
            _ => {}
        }
        let table = table_for(code, kind, modifier).ok_or_else(|| {
            Error::BadRequest(format!("Search parameter '{code}' is not supported"))
        })?;
        let indexed = indexed_params(&self.types_of(resource_type), code, modifier);
        let i = self.alias("i");
        let exists = |q: &mut Query, negate: bool| {
            q.push(&format!(
                "{}EXISTS (SELECT 1 FROM {table} {i} WHERE {i}.project_id = {row}.project_id AND {i}.resource_type = {row}.resource_type AND {i}.resource_id = {row}.id AND ",
                if negate { "NOT " } else { "" }
            ));
            let condition = indexed.condition(q, &i);
            q.push(&condition);
        };
        if let [SearchValue::Missing(missing)] = values {
            exists(self.q, *missing);
            self.q.push(")");
            return Ok(());
        }
        exists(self.q, *modifier == Modifier::Not);
        self.q.push(" AND (");
        let columns = Columns::table(&i);
        for (n, value) in values.iter().enumerate() {
            if n > 0 {
                self.q.push(" OR ");
            }
            self.q.push("(");
            match value {
                SearchValue::Near {
                    latitude,
                    longitude,
                    distance_km,
                } => self.near(&i, *latitude, *longitude, *distance_km),
                SearchValue::Composite(parts) => {
                    for (k, part) in parts.iter().enumerate() {
                        if k > 0 {
                            self.q.push(" AND ");
                        }
                        self.value(
                            &Columns::component(&i, k),
                            ParamType::String,
                            &Modifier::None,
                            part,
                        )?;
                    }
                }
                other => self.value(&columns, kind, modifier, other)?,
            }
            self.q.push(")");
        }
        self.q.push("))");
        Ok(())
    }

    fn id_filter(&mut self, row: &str, modifier: &Modifier, values: &[SearchValue]) -> Result<()> {
        if let [SearchValue::Missing(missing)] = values {
            self.q.push(if *missing { "FALSE" } else { "TRUE" });
            return Ok(());
        }
        let ids: Vec<Uuid> = values
            .iter()
            .filter_map(|v| match v {
                SearchValue::Token {
                    code: Some(code), ..
                } => Uuid::parse_str(code).ok(),
                SearchValue::Text(text) => Uuid::parse_str(text).ok(),
                _ => None,
            })
            .collect();
        let negate = if *modifier == Modifier::Not {
            "NOT "
        } else {
            ""
        };
        self.q
            .push(&format!("{negate}{row}.id = ANY("))
            .bind(ids)
            .push(")");
        Ok(())
    }

    fn last_updated_filter(&mut self, row: &str, values: &[SearchValue]) -> Result<()> {
        self.q.push("(");
        for (n, value) in values.iter().enumerate() {
            if n > 0 {
                self.q.push(" OR ");
            }
            let SearchValue::Date { prefix, low, high } = value else {
                return Err(Error::BadRequest("_lastUpdated takes dates".into()));
            };
            let column = format!("{row}.last_updated");
            let (low, high) = (micros_to_time(*low), micros_to_time(*high));
            self.range(&column, &column, *prefix, low, high, |q, v| {
                q.bind(v);
            });
        }
        self.q.push(")");
        Ok(())
    }

    /// A condition on one value; `columns` say where the indexed fields are.
    fn value(
        &mut self,
        c: &Columns,
        kind: ParamType,
        modifier: &Modifier,
        value: &SearchValue,
    ) -> Result<()> {
        let q = &mut *self.q;
        match value {
            SearchValue::Token { system, code } => {
                let mut parts = 0;
                match system.as_deref() {
                    Some("") => {
                        q.push(&format!("{} IS NULL", c.system));
                        parts += 1;
                    }
                    Some(system) => {
                        q.push(&format!("{} = ", c.system)).bind(system.to_string());
                        parts += 1;
                    }
                    None => {}
                }
                if let Some(code) = code {
                    if parts > 0 {
                        q.push(" AND ");
                    }
                    q.push(&format!("{} = ", c.code)).bind(code.clone());
                    parts += 1;
                }
                if parts == 0 {
                    q.push("TRUE");
                }
            }
            SearchValue::OfType {
                type_system,
                type_code,
                value,
            } => {
                q.push(&format!("{} = ", c.system))
                    .bind(of_type_system(Some(type_system), Some(type_code)))
                    .push(&format!(" AND {} = ", c.code))
                    .bind(value.clone());
            }
            SearchValue::Identifier { system, value } => {
                q.push(&format!("{} = ", c.code)).bind(value.clone());
                if let Some(system) = system {
                    q.push(&format!(" AND {} = ", c.system))
                        .bind(system.clone());
                }
            }
            SearchValue::Text(text) => match modifier {
                Modifier::Text => {
                    q.push(&format!("{} LIKE ", c.text))
                        .bind(format!("{}%", like_escape(&normalize(text))));
                }
                Modifier::Exact => {
                    q.push(&format!("{} = ", c.exact)).bind(text.clone());
                    if let Some(head) = &c.normalized_head {
                        q.push(&format!(" AND {head} = "))
                            .bind(string_head(&normalize(text)));
                    }
                }
                Modifier::Contains => {
                    q.push(&format!("{} LIKE ", c.normalized))
                        .bind(format!("%{}%", like_escape(&normalize(text))));
                }
                Modifier::Below => starts_with(q, &c.value, text.clone()),
                Modifier::Above => {
                    q.bind(text.clone()).push(&format!(" LIKE replace(replace(replace({0}, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%'", c.value));
                }
                _ if kind == ParamType::Uri => {
                    q.push(&format!("{} = ", c.value)).bind(text.clone());
                }
                _ => string_prefix(q, c, normalize(text)),
            },
            SearchValue::Date { prefix, low, high } => {
                self.range(&c.low, &c.high, *prefix, *low, *high, |q, v| {
                    q.bind(v);
                });
            }
            SearchValue::Number {
                prefix,
                value,
                low,
                high,
            } => {
                self.number(&c.value, *prefix, *value, *low, *high);
            }
            SearchValue::Quantity {
                prefix,
                value,
                low,
                high,
                system,
                code,
            } => {
                self.number(&c.value, *prefix, *value, *low, *high);
                let q = &mut *self.q;
                match (system, code) {
                    (Some(system), Some(code)) => {
                        q.push(&format!(" AND {} = ", c.system))
                            .bind(system.clone())
                            .push(&format!(" AND {} = ", c.code))
                            .bind(code.clone());
                    }
                    (Some(system), None) => {
                        q.push(&format!(" AND {} = ", c.system))
                            .bind(system.clone());
                    }
                    (None, Some(code)) => {
                        q.push(&format!(" AND ({0} = ", c.code))
                            .bind(code.clone())
                            .push(&format!(" OR {0} = ", c.unit))
                            .bind(code.clone())
                            .push(")");
                    }
                    (None, None) => {}
                }
            }
            SearchValue::Reference {
                target_type,
                id,
                url,
            } => {
                match (id, url) {
                    (Some(id), _) => match Uuid::parse_str(id) {
                        Ok(uuid) => {
                            q.push(&format!("{} = ", c.target_id)).bind(uuid);
                        }
                        Err(_) => {
                            q.push(&format!("{} = ", c.url)).bind(
                                target_type
                                    .as_ref()
                                    .map_or(id.clone(), |t| format!("{t}/{id}")),
                            );
                        }
                    },
                    (None, Some(url)) => {
                        q.push(&format!("{} = ", c.url)).bind(url.clone());
                    }
                    (None, None) => {
                        q.push("FALSE");
                    }
                }
                let required_type = match modifier {
                    Modifier::Type(t) => Some(t),
                    _ => target_type.as_ref(),
                };
                if let Some(t) = required_type {
                    self.q
                        .push(&format!(" AND {} = ", c.target_type))
                        .bind(t.clone());
                }
            }
            SearchValue::Missing(_) | SearchValue::Composite(_) | SearchValue::Near { .. } => {
                return Err(Error::BadRequest(
                    "A :missing or composite value cannot be nested".into(),
                ));
            }
        }
        Ok(())
    }

    /// Range semantics of the date prefixes (R4 search §3.1.1.4.5): the
    /// indexed range [`low_col`, `high_col`] against the searched [low, high],
    /// both inclusive; a point when the two columns are one (`_lastUpdated`).
    fn range<T: Clone + Send + Sync + tokio_postgres::types::ToSql + 'static>(
        &mut self,
        low_col: &str,
        high_col: &str,
        prefix: Prefix,
        low: T,
        high: T,
        bind: impl Fn(&mut Query, T),
    ) {
        let q = &mut *self.q;
        let cmp = |q: &mut Query, column: &str, op: &str, v: T| {
            q.push(&format!("{column} {op} "));
            bind(q, v);
        };
        // `(reach AND (beyond OR inside))`: the target reaches the value,
        // and passes its far end or lies within it. A point (one column)
        // that reaches the value does one or the other.
        let or_within = |q: &mut Query, [reach, beyond, inside]: [(&str, &str, T); 3]| {
            q.push("(");
            cmp(q, reach.0, reach.1, reach.2);
            if low_col != high_col {
                q.push(" AND (");
                cmp(q, beyond.0, beyond.1, beyond.2);
                q.push(" OR ");
                cmp(q, inside.0, inside.1, inside.2);
                q.push(")");
            }
            q.push(")");
        };
        match prefix {
            Prefix::Ap => {
                // Approximately: the ranges overlap.
                q.push("(");
                cmp(q, low_col, "<=", high.clone());
                q.push(" AND ");
                cmp(q, high_col, ">=", low.clone());
                q.push(")");
            }
            Prefix::Eq => {
                q.push("(");
                cmp(q, low_col, ">=", low.clone());
                q.push(" AND ");
                cmp(q, high_col, "<=", high.clone());
                q.push(")");
            }
            Prefix::Ne => {
                q.push("NOT (");
                cmp(q, low_col, ">=", low.clone());
                q.push(" AND ");
                cmp(q, high_col, "<=", high.clone());
                q.push(")");
            }
            // The range above the value overlaps the target's.
            Prefix::Gt => cmp(q, high_col, ">", high),
            // The range below the value overlaps the target's.
            Prefix::Lt => cmp(q, low_col, "<", low),
            // `gt`, or the value contains the target: the target ends at or
            // after the value's start, and either after its end or starts
            // within it; the first part is a range of the index on the end
            // (`idx_date_high`, which carries the start, migration 0024).
            Prefix::Ge => or_within(
                q,
                [
                    (high_col, ">=", low.clone()),
                    (high_col, ">", high),
                    (low_col, ">=", low),
                ],
            ),
            // `lt`, or the value contains the target, mirrored: a range of
            // the index on the start (`idx_date_value`, which carries the end).
            Prefix::Le => or_within(
                q,
                [
                    (low_col, "<=", high.clone()),
                    (low_col, "<", low),
                    (high_col, "<=", high),
                ],
            ),
            Prefix::Sa => cmp(q, low_col, ">", high),
            Prefix::Eb => cmp(q, high_col, "<", low),
        }
    }

    /// `near`: great-circle (haversine) distance from the stored position
    /// (`[latitude, longitude]` composite parts) within `distance_km`.
    fn near(&mut self, alias: &str, latitude: f64, longitude: f64, distance_km: f64) {
        let lat = Columns::component(alias, 0).value;
        let lon = Columns::component(alias, 1).value;
        let q = &mut *self.q;
        let (p_lat, p_lon, p_dist) = (
            q.placeholder(latitude),
            q.placeholder(longitude),
            q.placeholder(distance_km),
        );
        q.push(&format!(
            "12742.0176 * asin(sqrt(power(sin(radians({lat} - {p_lat}::float8) / 2), 2) + cos(radians({p_lat}::float8)) * cos(radians({lat})) * power(sin(radians({lon} - {p_lon}::float8) / 2), 2))) <= {p_dist}::float8"
        ));
    }

    /// Number and quantity prefixes on an exact indexed value: `eq` uses the
    /// searched value's precision range [low, high).
    fn number(&mut self, column: &str, prefix: Prefix, value: f64, low: f64, high: f64) {
        let q = &mut *self.q;
        match prefix {
            Prefix::Eq => {
                q.push(&format!("({column} >= "))
                    .bind(low)
                    .push(&format!(" AND {column} < "))
                    .bind(high)
                    .push(")");
            }
            Prefix::Ne => {
                q.push(&format!("NOT ({column} >= "))
                    .bind(low)
                    .push(&format!(" AND {column} < "))
                    .bind(high)
                    .push(")");
            }
            Prefix::Gt | Prefix::Sa => {
                q.push(&format!("{column} > ")).bind(value);
            }
            Prefix::Lt | Prefix::Eb => {
                q.push(&format!("{column} < ")).bind(value);
            }
            Prefix::Ge => {
                q.push(&format!("{column} >= ")).bind(value);
            }
            Prefix::Le => {
                q.push(&format!("{column} <= ")).bind(value);
            }
            Prefix::Ap => {
                // Approximately: within 10% of the value.
                let margin = (value * 0.1).abs();
                q.push(&format!("{column} BETWEEN "))
                    .bind(value - margin)
                    .push(" AND ")
                    .bind(value + margin);
            }
        }
    }
}

/// How a sort key orders rows, and its SQL type (to read cursor values back).
struct SortKey {
    expression: String,
    sql_type: &'static str,
    descending: bool,
    /// Whether rows can lack a value (a parameter's), which then sort last.
    /// A column that cannot be NULL is ordered without a `NULLS` clause, so
    /// that its index (`resource_type_updated`, the primary key) serves the
    /// order either way: `DESC NULLS LAST` matches no scan of an index
    /// built `DESC` (nulls first) or `ASC`, and PostgreSQL does not drop the
    /// clause for a `NOT NULL` column. Measured on 10,000 Patients (171,000
    /// Observations): `Observation?_sort=-_lastUpdated` 130 -> 0.2 ms a page.
    nullable: bool,
    /// Compared byte-wise ([`SortColumn::bytewise`]).
    bytewise: bool,
}

/// Where a parameter of one kind keeps the values it sorts by.
struct SortColumn {
    table: &'static str,
    column: &'static str,
    sql_type: &'static str,
    /// Text compared byte-wise (`~<~`): normalised strings, in the order of
    /// their `text_pattern_ops` index whatever the database's collation.
    bytewise: bool,
    /// Whether an index holds the column in order after the parameter, so
    /// that a [`SortDriver`] can walk it.
    ordered_index: bool,
}

/// The column a `kind` parameter sorts by: ascending the smallest value of
/// a resource, descending the largest (for dates the start and the end of
/// their ranges).
fn sort_column(kind: ParamType, descending: bool) -> Option<SortColumn> {
    let (table, column, sql_type, bytewise, ordered_index) = match kind {
        ParamType::String => ("idx_string", "normalized", "text", true, true),
        ParamType::Token => ("idx_token", "code", "text", false, true),
        ParamType::Date if descending => ("idx_date", "high", "bigint", false, true),
        ParamType::Date => ("idx_date", "low", "bigint", false, true),
        ParamType::Number => ("idx_number", "value", "float8", false, true),
        ParamType::Quantity => ("idx_quantity", "value", "float8", false, true),
        ParamType::Reference => ("idx_reference", "url", "text", false, false),
        ParamType::Uri => ("idx_uri", "value", "text", false, false),
        ParamType::Composite | ParamType::Special => return None,
    };
    Some(SortColumn {
        table,
        column,
        sql_type,
        bytewise,
        ordered_index,
    })
}

/// The strict and the inclusive comparison that put a value after another
/// (`greater`: above it), byte-wise for byte-wise text.
fn comparison(greater: bool, bytewise: bool) -> (&'static str, &'static str) {
    match (greater, bytewise) {
        (true, false) => (">", ">="),
        (false, false) => ("<", "<="),
        (true, true) => ("~>~", "~>=~"),
        (false, true) => ("~<~", "~<=~"),
    }
}

/// `ASC`/`DESC`, or for byte-wise text the `text_pattern_ops` operator.
fn direction(descending: bool, bytewise: bool) -> &'static str {
    match (descending, bytewise) {
        (false, false) => "ASC",
        (true, false) => "DESC",
        (false, true) => "USING ~<~",
        (true, true) => "USING ~>~",
    }
}

/// The expression a `_sort` key orders by: a column, or the smallest (largest,
/// descending) indexed value of the parameter for the row.
fn sort_key(q: &mut Query, sort: &Sort, types: &[&str]) -> Result<SortKey> {
    let (expression, sql_type, nullable, bytewise) = match sort.code.as_str() {
        "_id" => ("r.id".to_string(), "uuid", false, false),
        "_lastUpdated" => ("r.last_updated".to_string(), "timestamptz", false, false),
        code => {
            let SortColumn {
                table,
                column,
                sql_type,
                bytewise,
                ..
            } = sort_column(sort.kind, sort.descending)
                .ok_or_else(|| Error::BadRequest(format!("Cannot sort by '{code}'")))?;
            let condition = indexed_params(types, code, &Modifier::None).condition(q, "x");
            let rows = format!(
                "FROM {table} x WHERE x.project_id = r.project_id AND x.resource_type = r.resource_type AND x.resource_id = r.id AND {condition}"
            );
            let expression = if bytewise {
                // min/max would compare in the database's collation.
                let order = direction(sort.descending, true);
                format!("(SELECT x.{column} {rows} ORDER BY x.{column} {order} LIMIT 1)")
            } else {
                let aggregate = if sort.descending { "max" } else { "min" };
                format!("(SELECT {aggregate}(x.{column}) {rows})")
            };
            (expression, sql_type, true, bytewise)
        }
    };
    Ok(SortKey {
        expression,
        sql_type,
        descending: sort.descending,
        nullable,
        bytewise,
    })
}

/// Rows strictly after the cursor row in the order `keys` then `r.id`
/// (every key NULLS LAST in forward order; everything flips going backwards).
fn keyset_condition(q: &mut Query, keys: &[SortKey], cursor: &Cursor) -> Result<()> {
    if cursor.keys.len() != keys.len() {
        return Err(Error::BadRequest(
            "_cursor does not belong to this search; follow the Bundle's links".into(),
        ));
    }
    fn after(
        q: &mut Query,
        keys: &[SortKey],
        values: &[Option<String>],
        id: Uuid,
        backwards: bool,
        id_before: bool,
    ) {
        let Some((key, rest)) = keys.split_first() else {
            q.push(if id_before { "r.id < " } else { "r.id > " })
                .bind(id);
            return;
        };
        let (value, rest_values) = values.split_first().expect("lengths checked");
        let e = &key.expression;
        // Forward: NULLS LAST; backwards the order reverses, so NULLs come
        // first. A key every row has has none to place.
        let nulls_last = !backwards && key.nullable;
        let greater = key.descending == backwards;
        match value {
            None if nulls_last => {
                q.push(&format!("({e} IS NULL AND "));
                after(q, rest, rest_values, id, backwards, id_before);
                q.push(")");
            }
            None => {
                q.push(&format!("({e} IS NOT NULL OR ({e} IS NULL AND "));
                after(q, rest, rest_values, id, backwards, id_before);
                q.push("))");
            }
            Some(v) => {
                let v = q.placeholder(v.clone());
                let (op, or_equal) = comparison(greater, key.bytewise);
                let t = key.sql_type;
                if !key.nullable {
                    // The same bound as a range the key's index can start
                    // at: without it a page walks every row before the
                    // cursor (a previous page of the newest Observations,
                    // 334 ms).
                    q.push(&format!("{e} {or_equal} CAST({v}::text AS {t}) AND "));
                }
                q.push(&format!("({e} {op} CAST({v}::text AS {t}) "));
                if nulls_last {
                    q.push(&format!("OR {e} IS NULL "));
                }
                q.push(&format!("OR ({e} = CAST({v}::text AS {t}) AND "));
                after(q, rest, rest_values, id, backwards, id_before);
                q.push("))");
            }
        }
    }
    q.push(" AND ");
    let id_before = ids_descending(keys) != cursor.backwards;
    after(
        q,
        keys,
        &cursor.keys,
        cursor.id,
        cursor.backwards,
        id_before,
    );
    Ok(())
}

/// Whether rows with equal keys follow in descending id order: as the first
/// key goes, so that one index on the key then the id (the primary key for
/// `_id`, `resource_type_updated` for `_lastUpdated`, migration 0017) serves
/// a single-key order both ways, and a page reads twenty index entries
/// even where thousands of rows share a value (a bulk load's timestamp).
fn ids_descending(keys: &[SortKey]) -> bool {
    keys.first().is_some_and(|key| key.descending)
}

/// Which index rows hold a parameter's values for one resource type.
#[derive(Debug, Clone, PartialEq)]
enum ParamRows {
    /// Rows under these params, whatever they reference: its own, the
    /// derived `:identifier` and `:of-type` params, or the parts of a union
    /// of other parameters ([`fhir_model::search::SearchParam::stored_as`]).
    Params(Vec<String>),
    /// A typed reference view's (`Observation.patient`): its base's rows that
    /// reference its type ([`fhir_model::search::SearchParam::reference_view`]).
    View {
        base: String,
        target_type: &'static str,
    },
}

impl ParamRows {
    fn condition(&self, q: &mut Query, alias: &str) -> String {
        match self {
            ParamRows::Params(params) => match params.as_slice() {
                [one] => format!("{alias}.param = {}", q.placeholder(one.clone())),
                many => format!("{alias}.param = ANY({})", q.placeholder(many.to_vec())),
            },
            ParamRows::View { base, target_type } => format!(
                "{alias}.param = {} AND {alias}.target_type = {}",
                q.placeholder(base.clone()),
                q.placeholder(target_type.to_string())
            ),
        }
    }
}

/// The index rows a filter or sort on a parameter reads, for each type
/// searched (types without the parameter left out).
#[derive(Debug)]
struct IndexedRows(Vec<(String, ParamRows)>);

impl IndexedRows {
    /// The rows every type reads alike, if they do.
    fn uniform(&self) -> Option<&ParamRows> {
        let (_, first) = self.0.first()?;
        self.0
            .iter()
            .all(|(_, rows)| rows == first)
            .then_some(first)
    }

    /// The condition that index rows aliased `alias` are these, in
    /// parentheses: per type (`{alias}.resource_type = $n AND …`, ORed) only
    /// where the types read different rows.
    fn condition(&self, q: &mut Query, alias: &str) -> String {
        if let Some(rows) = self.uniform() {
            return format!("({})", rows.condition(q, alias));
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(resource_type, rows)| {
                format!(
                    "({alias}.resource_type = {} AND {})",
                    q.placeholder(resource_type.clone()),
                    rows.condition(q, alias)
                )
            })
            .collect();
        format!("({})", parts.join(" OR "))
    }

    /// The rows, when they are all in one parameter's index order: one
    /// param, or a typed view's.
    fn in_one_index(self) -> Option<ParamRows> {
        let rows = self.uniform()?.clone();
        match &rows {
            ParamRows::Params(params) if params.len() != 1 => None,
            _ => Some(rows),
        }
    }
}

/// The index rows a filter or sort on `code` of `types` reads.
fn indexed_params(types: &[&str], code: &str, modifier: &Modifier) -> IndexedRows {
    // Rows alike for every type: one entry, whose type no condition names.
    let uniform =
        |param: String| IndexedRows(vec![(String::new(), ParamRows::Params(vec![param]))]);
    match modifier {
        Modifier::Identifier => return uniform(identifier_param(code)),
        Modifier::OfType => return uniform(of_type_param(code)),
        _ => {}
    }
    let by_type: Vec<(String, ParamRows)> = types
        .iter()
        .filter_map(|t| Registry::get().param(t, code))
        .map(|param| {
            let rows = match param.reference_view() {
                Some(view) => ParamRows::View {
                    base: view.base.clone(),
                    target_type: view.target_type.as_str(),
                },
                None => ParamRows::Params(param.stored_as().to_vec()),
            };
            (param.resource_type.clone(), rows)
        })
        .collect();
    if by_type.is_empty() {
        return uniform(code.to_string());
    }
    IndexedRows(by_type)
}

/// A filter whose index holds its matches in resource id order (one value,
/// an equality on every index column before `resource_id`), so a page in
/// the default order walks them from the first and stops after a page
/// instead of collecting and sorting every match. With a prepared
/// statement's generic plan PostgreSQL cannot tell a filter matching
/// thousands from one matching one, and left to itself it collects them
/// (measured on 10,000 Patients: `Observation?code=…|8480-6` 256 ms, driven
/// 1.5 ms).
struct Driver<'f> {
    /// Its position in the request's filters.
    position: usize,
    table: &'static str,
    rows: ParamRows,
    kind: ParamType,
    modifier: &'f Modifier,
    value: &'f SearchValue,
}

/// The filter to drive a default-order page by, if one can: references to
/// one resource first (they match few), then tokens (their index is ordered
/// by code, then resource id, migration 0011), then string prefixes of at
/// least the index head's length.
fn driver<'a>(sq: &SearchQuery<'a>) -> Option<Driver<'a>> {
    if !matches!(sq.tenant, Tenant::Project(_)) || sq.request.types.len() != 1 {
        return None;
    }
    sq.request
        .filters
        .iter()
        .enumerate()
        .filter_map(|(position, filter)| {
            let Filter::Param {
                resource_type,
                code,
                kind,
                modifier,
                values,
            } = filter
            else {
                return None;
            };
            let [value] = values.as_slice() else {
                return None;
            };
            if code.starts_with('_') || is_full_text(code) {
                return None;
            }
            let rank = match (kind, modifier, value) {
                (
                    ParamType::Reference,
                    Modifier::None | Modifier::Type(_),
                    SearchValue::Reference { id: Some(id), .. },
                ) if Uuid::parse_str(id).is_ok() => 0,
                (ParamType::Token, Modifier::None, SearchValue::Token { code: Some(_), .. })
                | (_, Modifier::Identifier, SearchValue::Identifier { .. })
                | (_, Modifier::OfType, SearchValue::OfType { .. }) => 1,
                (ParamType::String, Modifier::None, SearchValue::Text(text))
                    if normalize(text).chars().count() >= STRING_HEAD_CHARS =>
                {
                    2
                }
                _ => return None,
            };
            // Rows of one parameter only are in resource id order.
            let rows = indexed_params(&[resource_type], code, modifier).in_one_index()?;
            Some((
                rank,
                Driver {
                    position,
                    table: table_for(code, *kind, modifier)?,
                    rows,
                    kind: *kind,
                    modifier,
                    value,
                },
            ))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, driver)| driver)
}

/// `FROM resource r WHERE …`: tenant, types, and every filter; with a
/// driver, the resources come from its index rows, in id order (from the
/// cursor on), and the other filters apply to them.
fn where_clause(
    q: &mut Query,
    sq: &SearchQuery<'_>,
    estimate: ProjectEstimate,
    rows: Rows<'_, '_>,
) -> Result<()> {
    let mut compiler = Compiler {
        q,
        next_alias: 0,
        types: &sq.request.types,
        policy: Some(sq.policy),
    };
    let driver = match rows {
        Rows::Driven(d) => Some(d),
        _ => None,
    };
    match (rows, sq.tenant, sq.request.types.as_slice()) {
        (Rows::Valued(s), Tenant::Project(project_id), [only]) => {
            // Each resource once, at its first value in the order.
            let (table, column) = (s.column.table, s.column.column);
            let (earlier, _) = comparison(s.descending, s.column.bytewise);
            compiler
                .q
                .push(&format!(
                    " FROM (SELECT d.resource_id, d.{column} AS v FROM {table} d WHERE d.project_id = "
                ))
                .bind_project(project_id, estimate)
                .push(" AND d.resource_type = ")
                .bind(only.clone())
                .push(" AND d.param = ")
                .bind(s.param.clone())
                .push(&format!(
                    " AND d.{column} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table} e WHERE e.project_id = d.project_id \
                     AND e.resource_type = d.resource_type AND e.resource_id = d.resource_id \
                     AND e.param = d.param AND (e.{column} {earlier} d.{column} \
                     OR (e.{column} = d.{column} AND e.ctid < d.ctid)))) d \
                     JOIN resource r ON r.id = d.resource_id WHERE NOT r.deleted"
                ));
        }
        (Rows::Driven(d), Tenant::Project(project_id), [only]) => {
            compiler
                .q
                .push(&format!(
                    " FROM (SELECT DISTINCT d.resource_id FROM {} d WHERE d.project_id = ",
                    d.table
                ))
                .bind_project(project_id, estimate)
                .push(" AND d.resource_type = ")
                .bind(only.clone())
                .push(" AND ");
            let rows = d.rows.condition(compiler.q, "d");
            compiler.q.push(&rows).push(" AND ");
            compiler.value(&Columns::table("d"), d.kind, d.modifier, d.value)?;
            let backwards = sq.cursor.as_ref().is_some_and(|c| c.backwards);
            if let Some(cursor) = &sq.cursor {
                compiler
                    .q
                    .push(if backwards {
                        " AND d.resource_id < "
                    } else {
                        " AND d.resource_id > "
                    })
                    .bind(cursor.id);
            }
            compiler.q.push(&format!(
                " ORDER BY d.resource_id {}) d JOIN resource r ON r.id = d.resource_id WHERE NOT r.deleted",
                if backwards { "DESC" } else { "ASC" }
            ));
        }
        _ => {
            compiler.q.push(" FROM resource r WHERE NOT r.deleted");
        }
    }
    if let Tenant::Project(project_id) = sq.tenant {
        compiler
            .q
            .push(" AND r.project_id = ")
            .bind_project(project_id, estimate);
    }
    match sq.request.types.as_slice() {
        [] => {}
        [only] => {
            compiler
                .q
                .push(" AND r.resource_type = ")
                .bind(only.clone());
        }
        types => {
            compiler
                .q
                .push(" AND r.resource_type = ANY(")
                .bind(types.to_vec())
                .push(")");
        }
    }
    for (position, filter) in sq.request.filters.iter().enumerate() {
        if driver.is_some_and(|d| d.position == position) {
            continue;
        }
        compiler.q.push(" AND ");
        compiler.filter("r", filter)?;
    }
    compiler.row_filter(
        "r",
        &sq.policy.row_filter(&sq.request.types, Interaction::Search),
    )?;
    // A Binary's securityContext decides who may read it (`fhir::binary`):
    // a caller who may not read everything does not find the Binaries that
    // have one, and reads them by id, where the context is checked.
    let finds_binaries =
        sq.request.types.is_empty() || sq.request.types.iter().any(|t| t == "Binary");
    if finds_binaries {
        let context = "r.content::jsonb #>> '{securityContext,reference}'";
        match sq.policy.read_scope() {
            ReadScope::Everything => {}
            ReadScope::Ordinary => {
                let outside: Vec<String> =
                    access_policy::outside_star().map(str::to_string).collect();
                compiler
                    .q
                    .push(&format!(
                        " AND (r.resource_type <> 'Binary' OR {context} IS NULL \
                         OR split_part({context}, '/', 1) <> ALL("
                    ))
                    .bind(outside)
                    .push("))");
            }
            ReadScope::Less => {
                compiler.q.push(&format!(
                    " AND (r.resource_type <> 'Binary' OR {context} IS NULL)"
                ));
            }
        }
    }
    Ok(())
}

/// ` AND (…)`: the policy's row filter on the resource row `row`.
pub(super) fn row_condition(q: &mut Query, row: &str, filter: &RowFilter<'_>) -> Result<()> {
    Compiler {
        q,
        next_alias: 0,
        types: &[],
        policy: None,
    }
    .row_filter(row, filter)
}

/// Where a page's rows come from.
#[derive(Clone, Copy)]
enum Rows<'a, 'f> {
    /// The resources of the tenant and types.
    All,
    /// A default-order page's filter's index rows, in id order ([`driver`]).
    Driven(&'a Driver<'f>),
    /// A sort parameter's index rows in its order, each resource at its
    /// first value ([`sort_driver`]).
    Valued(&'a SortDriver),
}

/// A `_sort` on one string, token, date, number or quantity parameter, read
/// from the parameter's value index in its order: each resource once, at
/// its smallest value (largest, descending), then the resources without a
/// value, which sort last, in id order. So a page reads its twenty
/// resources from the index instead of computing every match's key and
/// sorting them all (measured on 10,000 Patients and 171,082 Observations:
/// `Observation?_sort=-date` 828 -> 1.5 ms, `Patient?_sort=family` 81 ->
/// 1.2 ms). Dates sort ascending by the start of their range
/// (`idx_date_value`) and descending by its end (`idx_date_high`, migration
/// 0018); strings byte-wise, as their `text_pattern_ops` index holds them.
/// The order is the one [`sort_key`] computes, so a page found with
/// `_offset` (which takes the computed key) agrees with the cursors' pages.
struct SortDriver {
    column: SortColumn,
    param: String,
    descending: bool,
}

fn sort_driver(sq: &SearchQuery<'_>) -> Option<SortDriver> {
    let request = sq.request;
    if !matches!(sq.tenant, Tenant::Project(_)) || request.offset > 0 {
        return None;
    }
    let ([sort], [resource_type]) = (request.sort.as_slice(), request.types.as_slice()) else {
        return None;
    };
    if sort.code.starts_with('_') {
        return None;
    }
    let column = sort_column(sort.kind, sort.descending).filter(|c| c.ordered_index)?;
    // Rows of one parameter only are in its order.
    let ParamRows::Params(params) =
        indexed_params(&[resource_type], &sort.code, &Modifier::None).in_one_index()?
    else {
        return None;
    };
    let [param] = <[String; 1]>::try_from(params).ok()?;
    Some(SortDriver {
        column,
        param,
        descending: sort.descending,
    })
}

/// One statement of a page.
enum Segment<'s> {
    /// Every match, in the request's order.
    Matches,
    /// The matches with a value of the sort parameter, in its order.
    Valued(&'s SortDriver),
    /// The matches without one, in id order.
    Unvalued(&'s SortDriver),
}

/// The statements that fetch one page, run in turn until a page (and one
/// more, to know there is a next) is found: one, or for a [`SortDriver`]
/// the resources with a value and those without, from the cursor's side
/// on; and the number of sort keys the rows carry (`k0`, `k1`, …).
fn page_queries(sq: &SearchQuery<'_>, estimate: ProjectEstimate) -> Result<(Vec<Query>, usize)> {
    if let Some(q) = each_project_page(sq)? {
        return Ok((vec![q], sq.request.sort.len()));
    }
    let Some(sorted) = sort_driver(sq) else {
        let (q, _) = page_query(sq, estimate, Segment::Matches, sq.cursor.as_ref())?;
        return Ok((vec![q], sq.request.sort.len()));
    };
    let (valued, unvalued) = (Segment::Valued(&sorted), Segment::Unvalued(&sorted));
    let segments = match &sq.cursor {
        None => vec![(valued, false), (unvalued, false)],
        Some(c) => match (c.keys.first(), c.backwards) {
            (Some(Some(_)), false) => vec![(valued, true), (unvalued, false)],
            (Some(Some(_)), true) => vec![(valued, true)],
            (_, false) => vec![(unvalued, true)],
            (_, true) => vec![(unvalued, true), (valued, false)],
        },
    };
    let queries = segments
        .into_iter()
        .map(|(segment, from_cursor)| {
            let cursor = sq.cursor.as_ref().filter(|_| from_cursor);
            page_query(sq, estimate, segment, cursor).map(|(q, _)| q)
        })
        .collect::<Result<_>>()?;
    Ok((queries, 1))
}

/// The project column of [`each_project_page`]'s walk over the projects.
pub(super) const EACH_PROJECT: &str = "each_project.project_id";

/// A super admin's page (from the first page or a cursor): each project's
/// page, found as a project's own search finds it (driven by a filter's
/// index, its ids from the indexes first, or sorted: by `_id` and
/// `_lastUpdated` in their index's order, by a parameter with each match's
/// key computed), then the first of them all in the page's order, each key
/// read back from its text (`k0`, …) as its type. Every index leads with
/// `project_id`, so the same statement without a project condition cannot
/// range-scan them and walks whole tables instead. The projects come from a
/// skip scan of `resource`'s primary key, one probe each. `None` with
/// `_offset` (which counts across projects) or in one project.
fn each_project_page(sq: &SearchQuery<'_>) -> Result<Option<Query>> {
    let request = sq.request;
    if sq.tenant != Tenant::AllProjects || request.offset > 0 {
        return Ok(None);
    }
    let one_project = SearchQuery {
        request,
        // Named as EACH_PROJECT in the statement; the id is not used.
        tenant: Tenant::Project(Uuid::nil()),
        policy: sq.policy,
        cursor: sq.cursor.clone(),
    };
    let (mut q, keys) = page_query(
        &one_project,
        ProjectEstimate::EachProject,
        Segment::Matches,
        one_project.cursor.as_ref(),
    )?;
    let backwards = sq.cursor.as_ref().is_some_and(|c| c.backwards);
    let order = page_order(
        &keys,
        ids_descending(&keys),
        backwards,
        |n, key| format!("page.k{n}::{}", key.sql_type),
        "page.id",
    );
    q.sql = format!(
        "WITH RECURSIVE projects (project_id) AS (\
         (SELECT project_id FROM resource ORDER BY project_id LIMIT 1) \
         UNION ALL SELECT (SELECT r.project_id FROM resource r WHERE r.project_id > p.project_id \
         ORDER BY r.project_id LIMIT 1) FROM projects p WHERE p.project_id IS NOT NULL) \
         SELECT page.* FROM projects each_project CROSS JOIN LATERAL ({}) page \
         WHERE each_project.project_id IS NOT NULL ORDER BY {order} LIMIT ",
        q.sql,
    );
    q.bind(request.count as i64 + 1);
    Ok(Some(q))
}

/// The statement that fetches one page of `segment`: the matches in sort
/// order after `cursor`, with each sort key's value as text (`k0`, `k1`, …)
/// for the cursor.
///
/// In the default order (by id) without a driver, the page's ids are found
/// first, from the indexes alone (`resource_live`, and the value indexes,
/// which carry the resource id), and only the page's rows are read: a search
/// matching thousands of resources reads twenty, not thousands, of heap
/// rows. A driven page needs no such step: it reads rows as it walks its
/// driver and stops after a page (measured on an identifier search: 10
/// buffers and no sort, against 18 and a sort with the second step).
fn page_query(
    sq: &SearchQuery<'_>,
    estimate: ProjectEstimate,
    segment: Segment<'_>,
    cursor: Option<&Cursor>,
) -> Result<(Query, Vec<SortKey>)> {
    const COLUMNS: &str =
        "r.project_id, r.resource_type, r.id, r.version_id, r.last_updated, r.content";
    let request = sq.request;
    let by_id = request.sort.is_empty();
    let driver = if by_id { driver(sq) } else { None };
    let ids_first = by_id && driver.is_none();
    let mut q = Query::new(&if ids_first {
        format!("SELECT {COLUMNS} FROM resource r WHERE (r.project_id, r.resource_type, r.id) IN (SELECT r.project_id, r.resource_type, r.id")
    } else {
        format!("SELECT {COLUMNS}")
    });
    let types: Vec<&str> = request.types.iter().map(String::as_str).collect();
    let (keys, ids_desc, rows) = match segment {
        Segment::Matches => {
            let keys: Vec<SortKey> = request
                .sort
                .iter()
                .map(|sort| sort_key(&mut q, sort, &types))
                .collect::<Result<_>>()?;
            let ids_desc = ids_descending(&keys);
            let rows = driver.as_ref().map_or(Rows::All, Rows::Driven);
            (keys, ids_desc, rows)
        }
        Segment::Valued(s) => {
            let key = SortKey {
                expression: "d.v".into(),
                sql_type: s.column.sql_type,
                descending: s.descending,
                nullable: false,
                bytewise: s.column.bytewise,
            };
            (vec![key], s.descending, Rows::Valued(s))
        }
        Segment::Unvalued(s) => {
            q.push(", NULL::text AS k0");
            (Vec::new(), s.descending, Rows::All)
        }
    };
    for (n, key) in keys.iter().enumerate() {
        q.push(&format!(", ({})::text AS k{n}", key.expression));
    }
    where_clause(&mut q, sq, estimate, rows)?;
    // The page's direction is the request's cursor's, also for a segment
    // read from its end (`cursor` None) on the way back to earlier pages.
    let backwards = sq.cursor.as_ref().is_some_and(|c| c.backwards);
    if let Segment::Unvalued(s) = segment {
        let param = q.placeholder(s.param.clone());
        q.push(&format!(
            " AND NOT EXISTS (SELECT 1 FROM {} x WHERE x.project_id = r.project_id \
             AND x.resource_type = r.resource_type AND x.resource_id = r.id AND x.param = {param} \
             AND x.{} IS NOT NULL)",
            s.column.table, s.column.column
        ));
        if let Some(cursor) = cursor {
            q.push(if ids_desc != backwards {
                " AND r.id < "
            } else {
                " AND r.id > "
            })
            .bind(cursor.id);
        }
    } else if let Some(cursor) = cursor {
        keyset_condition(&mut q, &keys, cursor)?;
    }
    q.push(" ORDER BY ").push(&page_order(
        &keys,
        ids_desc,
        backwards,
        |_, key| key.expression.clone(),
        "r.id",
    ));
    let limit = request.count as i64 + 1;
    q.push(" LIMIT ").bind(limit);
    if request.offset > 0 && sq.cursor.is_none() {
        q.push(" OFFSET ").bind(request.offset as i64);
    }
    if ids_first {
        let id_order = page_order(&[], ids_desc, backwards, |_, _| String::new(), "r.id");
        q.push(&format!(") ORDER BY {id_order}"));
    }
    Ok((q, keys))
}

/// A page's order: each key, written as `expression` makes it (from its
/// position and itself), in its direction, then `id`, ascending unless the
/// ids go descending (`ids_desc`); all reversed on the way `backwards`.
fn page_order(
    keys: &[SortKey],
    ids_desc: bool,
    backwards: bool,
    expression: impl Fn(usize, &SortKey) -> String,
    id: &str,
) -> String {
    let mut order = String::new();
    for (n, key) in keys.iter().enumerate() {
        let descending = key.descending != backwards;
        let nulls = match (key.nullable, backwards) {
            (false, _) => "",
            (true, false) => " NULLS LAST",
            (true, true) => " NULLS FIRST",
        };
        order.push_str(&format!(
            "{} {}{nulls}, ",
            expression(n, key),
            direction(descending, key.bytewise),
        ));
    }
    let id_direction = if ids_desc != backwards { "DESC" } else { "ASC" };
    order.push_str(&format!("{id} {id_direction}"));
    order
}

impl Store {
    /// `EXPLAIN (ANALYZE, BUFFERS)` of the statements a search runs, to
    /// check their plans and the pages they read: the page's (those of its
    /// segments that [`run`] gets to) and, when it includes, the first
    /// include level's for the page found.
    pub async fn explain(&self, sq: &SearchQuery<'_>) -> Result<String> {
        let estimate = project_estimate(self, sq).await;
        let (mut statements, _) = page_queries(sq, estimate)?;
        let (_, ran) = page_rows(self, &statements, sq.request.count).await?;
        statements.truncate(ran);
        let matches = run(self, sq).await?.matches;
        statements.extend(include_query(sq, estimate, &matches, 0)?);
        let mut plans = Vec::new();
        for mut q in statements {
            q.sql.insert_str(0, "EXPLAIN (ANALYZE, BUFFERS) ");
            let rows = self.query(&q).await?;
            plans.extend(rows.iter().map(|row| row.get::<_, String>(0)));
        }
        Ok(plans.join("\n"))
    }
}

/// Runs a page's statements in turn until they found `count` rows and one
/// more (to know there is a next page): the rows, and how many statements ran.
async fn page_rows(
    db: &impl Executor,
    statements: &[Query],
    count: usize,
) -> Result<(Vec<tokio_postgres::Row>, usize)> {
    let mut rows = Vec::new();
    let mut ran = 0;
    for q in statements {
        if rows.len() > count {
            break;
        }
        rows.extend(db.query(q).await?);
        ran += 1;
    }
    Ok((rows, ran))
}

/// Runs a search: the count (if asked), the page, the includes.
pub(super) async fn run(db: &impl Executor, sq: &SearchQuery<'_>) -> Result<SearchPage> {
    let request = sq.request;
    let estimate = project_estimate(db, sq).await;
    let total = match request.total {
        fhir_model::search::Total::None => None,
        fhir_model::search::Total::Accurate => {
            let mut q = Query::new("SELECT count(*)");
            where_clause(&mut q, sq, estimate, Rows::All)?;
            Some(db.query(&q).await?[0].get::<_, i64>(0))
        }
        fhir_model::search::Total::Estimate => {
            let mut q = Query::new("EXPLAIN (FORMAT JSON) SELECT 1");
            where_clause(&mut q, sq, estimate, Rows::All)?;
            let plan: serde_json::Value = db.query(&q).await?[0].get(0);
            plan[0]["Plan"]["Plan Rows"]
                .as_f64()
                .map(|rows| rows.round() as i64)
        }
    };
    if request.count == 0 {
        return Ok(SearchPage {
            matches: Vec::new(),
            included: Vec::new(),
            total,
            next: None,
            previous: None,
        });
    }

    let (statements, key_count) = page_queries(sq, estimate)?;
    let backwards = sq.cursor.as_ref().is_some_and(|c| c.backwards);
    let (rows, _) = page_rows(db, &statements, request.count).await?;
    let has_more = rows.len() > request.count;
    let mut page: Vec<(Version, Vec<Option<String>>)> = rows
        .iter()
        .take(request.count)
        .map(|row| {
            let keys = (0..key_count)
                .map(|n| row.get(format!("k{n}").as_str()))
                .collect();
            (Version::from_row(row), keys)
        })
        .collect();
    if backwards {
        page.reverse();
    }
    let cursor_of = |entry: &(Version, Vec<Option<String>>), backwards: bool| Cursor {
        backwards,
        keys: entry.1.clone(),
        id: entry.0.id,
    };
    let (has_next, has_previous) = if backwards {
        (true, has_more)
    } else {
        (has_more, sq.cursor.is_some() || request.offset > 0)
    };
    let next = page
        .last()
        .filter(|_| has_next)
        .map(|e| cursor_of(e, false));
    let previous = page
        .first()
        .filter(|_| has_previous)
        .map(|e| cursor_of(e, true));
    let matches: Vec<Version> = page.into_iter().map(|(v, _)| v).collect();
    let included = includes(db, sq, estimate, &matches).await?;
    Ok(SearchPage {
        matches,
        included,
        total,
        next,
        previous,
    })
}

/// How the statements of `sq` name its project (any way across projects).
async fn project_estimate(db: &impl Executor, sq: &SearchQuery<'_>) -> ProjectEstimate {
    match sq.tenant {
        Tenant::Project(project_id) => db.project_estimate(project_id).await,
        Tenant::AllProjects => ProjectEstimate::Known,
    }
}

/// `_include` and `_revinclude`, one statement per level; `:iterate`
/// ones follow what the previous level found, up to a fixed depth.
async fn includes(
    db: &impl Executor,
    sq: &SearchQuery<'_>,
    estimate: ProjectEstimate,
    matches: &[Version],
) -> Result<Vec<Version>> {
    if sq.request.include.is_empty() && sq.request.revinclude.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen: std::collections::HashSet<(String, Uuid)> = matches
        .iter()
        .map(|v| (v.resource_type.clone(), v.id))
        .collect();
    let mut included = Vec::new();
    let mut frontier: Vec<Version> = matches.to_vec();
    for depth in 0..MAX_INCLUDE_DEPTH {
        let Some(q) = include_query(sq, estimate, &frontier, depth)? else {
            break;
        };
        frontier = db
            .query(&q)
            .await?
            .iter()
            .map(Version::from_row)
            .filter(|v| seen.insert((v.resource_type.clone(), v.id)))
            .collect();
        included.extend(frontier.iter().cloned());
    }
    Ok(included)
}

/// The statement of one include level: what the includes that apply at
/// `depth` reach from `frontier`, or `None` when nothing is to be read.
fn include_query(
    sq: &SearchQuery<'_>,
    estimate: ProjectEstimate,
    frontier: &[Version],
    depth: usize,
) -> Result<Option<Query>> {
    let request = sq.request;
    let applies = |inc: &&Include| depth == 0 || inc.iterate;
    let forward: Vec<&Include> = request.include.iter().filter(applies).collect();
    let reverse: Vec<&Include> = request.revinclude.iter().filter(applies).collect();
    if frontier.is_empty() || (forward.is_empty() && reverse.is_empty()) {
        return Ok(None);
    }
    let mut q = Query::new("");
    let mut parts = 0;
    let mut projects: Vec<Uuid> = frontier.iter().map(|v| v.project_id).collect();
    projects.sort_unstable();
    projects.dedup();
    let ids_of = |resource_type: Option<&str>| -> Vec<Uuid> {
        frontier
            .iter()
            .filter(|v| resource_type.is_none_or(|t| v.resource_type == t))
            .map(|v| v.id)
            .collect()
    };
    for inc in &forward {
        let ids = ids_of(Some(&inc.source_type));
        if ids.is_empty() {
            continue;
        }
        // Driven from the referencing rows, so the plan starts at idx_reference_resource.
        include_select(
            &mut q,
            sq,
            &mut parts,
            "t.resource_type = i.target_type AND t.id = i.target_id",
            (estimate, &projects),
            inc,
            ("i.resource_id", ids),
        )?;
        if let Some(target) = &inc.target_type {
            q.push(" AND i.target_type = ").bind(target.clone());
        }
        q.push(")");
    }
    for inc in &reverse {
        let targets = match &inc.target_type {
            Some(target) => ids_of(Some(target)),
            None => ids_of(None),
        };
        if targets.is_empty() {
            continue;
        }
        // Driven from the referenced ids, through idx_reference_target.
        include_select(
            &mut q,
            sq,
            &mut parts,
            "t.resource_type = i.resource_type AND t.id = i.resource_id",
            (estimate, &projects),
            inc,
            ("i.target_id", targets),
        )?;
        q.push(")");
    }
    if parts == 0 {
        return Ok(None);
    }
    q.push(" LIMIT ").bind(MAX_INCLUDED);
    Ok(Some(q))
}

/// Starts one `UNION ALL` branch: live resources `t` the policy lets the
/// caller search, joined on `join` to the reference rows `i` of `include`
/// whose `column` is one of `ids`, inside the tenant and the `projects` of
/// the resources included from (which, across projects, lets the index that
/// leads with `project_id` drive the plan), the tenant named as `estimate`
/// says. The caller closes the branch.
fn include_select(
    q: &mut Query,
    sq: &SearchQuery<'_>,
    parts: &mut usize,
    join: &str,
    (estimate, projects): (ProjectEstimate, &[Uuid]),
    include: &Include,
    (column, ids): (&str, Vec<Uuid>),
) -> Result<()> {
    if *parts > 0 {
        q.push(" UNION ALL ");
    }
    *parts += 1;
    q.push(&format!(
        "(SELECT t.project_id, t.resource_type, t.id, t.version_id, t.last_updated, t.content FROM idx_reference i JOIN resource t ON t.project_id = i.project_id AND {join} WHERE NOT t.deleted"
    ));
    match sq.tenant {
        Tenant::Project(project_id) => q
            .push(" AND i.project_id = ")
            .bind_project(project_id, estimate),
        Tenant::AllProjects => q
            .push(" AND i.project_id = ANY(")
            .bind(projects.to_vec())
            .push(")"),
    };
    row_condition(q, "t", &sq.policy.row_filter(&[], Interaction::Search))?;
    q.push(" AND i.resource_type = ")
        .bind(include.source_type.clone())
        .push(" AND ");
    let rows = indexed_params(&[&include.source_type], &include.param, &Modifier::None);
    let condition = rows.condition(q, "i");
    q.push(&condition)
        .push(&format!(" AND {column} = ANY("))
        .bind(ids)
        .push(")");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("smi").as_deref(), Some("smj"));
        assert_eq!(prefix_upper_bound("müll").as_deref(), Some("mülm"));
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}").as_deref(),
            Some("a\u{E000}")
        );
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound(""), None);
        // Every string with the prefix sorts below the bound, byte-wise.
        for (prefix, candidate) in [("ab", "ab\u{10FFFF}zz"), ("a\u{7F}", "a\u{7F}\u{80}")] {
            let upper = prefix_upper_bound(prefix).unwrap();
            assert!(
                candidate.as_bytes() < upper.as_bytes(),
                "{candidate:?} < {upper:?}"
            );
            assert!(candidate.as_bytes() >= prefix.as_bytes());
        }
    }
}
