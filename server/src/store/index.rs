//! Writing search-index rows: the rows of one resource or of many (a
//! transaction's new resources), each row with its owner's project, type and
//! id, inserted into every index table by one statement.

use fhir_model::search::IndexValue;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

type Texts = Vec<String>;
type OptionalTexts = Vec<Option<String>>;

/// Whose rows: the owner columns of one index table.
#[derive(Default)]
struct Owners {
    project_id: Vec<Uuid>,
    resource_type: Texts,
    resource_id: Vec<Uuid>,
}

/// Column arrays for `UNNEST`, one vector per column, named `<table>_<column>`,
/// and each table's owners (in [`TABLES`] order).
#[derive(Default)]
pub(super) struct IndexRows {
    owners: [Owners; TABLES.len()],
    /// The most rows one resource has, per table.
    most: [usize; TABLES.len()],
    token_param: Texts,
    token_system: OptionalTexts,
    token_code: OptionalTexts,
    token_text: OptionalTexts,
    string_param: Texts,
    string_normalized: Texts,
    string_exact: Texts,
    date_param: Texts,
    date_low: Vec<i64>,
    date_high: Vec<i64>,
    number_param: Texts,
    number_value: Vec<f64>,
    quantity_param: Texts,
    quantity_value: Vec<f64>,
    quantity_system: OptionalTexts,
    quantity_code: OptionalTexts,
    quantity_unit: OptionalTexts,
    reference_param: Texts,
    reference_target_type: OptionalTexts,
    reference_target_id: Vec<Option<Uuid>>,
    reference_url: Texts,
    uri_param: Texts,
    uri_value: Texts,
    composite_param: Texts,
    composite_parts: Vec<Value>,
    text_param: Texts,
    text_normalized: Texts,
    compartment_type: Texts,
    compartment_id: Vec<Uuid>,
}

/// Full-text parameters, kept in `idx_text` (no btree on their values).
pub fn is_full_text(param: &str) -> bool {
    matches!(param, "_text" | "_content")
}

/// Longest value, in bytes, kept in a btree-indexed column: PostgreSQL
/// refuses index rows over about 2.7 kB, and no search value is that long.
const MAX_INDEXED_BYTES: usize = 1024;

fn capped(value: &str) -> String {
    if value.len() <= MAX_INDEXED_BYTES {
        return value.to_string();
    }
    let mut end = MAX_INDEXED_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].to_string()
}

fn capped_option(value: &Option<String>) -> Option<String> {
    value.as_deref().map(capped)
}

/// Token rows for the `:of-type` and reference `:identifier` modifiers live
/// in idx_token under a derived parameter name.
pub fn of_type_param(param: &str) -> String {
    format!("{param}:of-type")
}

pub fn identifier_param(param: &str) -> String {
    format!("{param}:identifier")
}

/// `type-system|type-code`, the `system` column of an `:of-type` row.
pub fn of_type_system(type_system: Option<&str>, type_code: Option<&str>) -> String {
    format!(
        "{}|{}",
        type_system.unwrap_or_default(),
        type_code.unwrap_or_default()
    )
}

impl IndexRows {
    /// Adds the rows of one resource; its compartments come from its references.
    pub(super) fn add(
        &mut self,
        project_id: Uuid,
        resource_type: &str,
        id: Uuid,
        values: &[IndexValue],
    ) {
        let before = self.lengths();
        for value in values {
            self.push(value);
        }
        if !values.is_empty() {
            let compartments = fhir_model::search::compartments(
                fhir_model::search::Registry::get(),
                resource_type,
                &id.to_string(),
                values,
            );
            for (compartment_type, compartment_id) in compartments {
                // fhirgate ids are UUIDs; a reference to anything else names no stored resource.
                if let Ok(compartment_id) = Uuid::parse_str(&compartment_id) {
                    self.compartment_type.push(compartment_type);
                    self.compartment_id.push(compartment_id);
                }
            }
        }
        let after = self.lengths();
        for (((owners, most), before), after) in self
            .owners
            .iter_mut()
            .zip(&mut self.most)
            .zip(before)
            .zip(after)
        {
            let added = after - before;
            *most = (*most).max(added);
            owners
                .project_id
                .extend(std::iter::repeat_n(project_id, added));
            owners
                .resource_type
                .extend(std::iter::repeat_n(resource_type.to_string(), added));
            owners.resource_id.extend(std::iter::repeat_n(id, added));
        }
    }

    /// The tables with rows, a bit each in [`TABLES`] order: a statement
    /// inserts into those alone, since every table it names is opened with
    /// all its indexes whether rows come or not.
    pub(super) fn tables_with_rows(&self) -> usize {
        self.lengths()
            .iter()
            .enumerate()
            .filter(|(_, rows)| **rows > 0)
            .map(|(table, _)| 1 << table)
            .sum()
    }

    /// Rows per table, in [`TABLES`] order.
    fn lengths(&self) -> [usize; TABLES.len()] {
        [
            self.token_param.len(),
            self.string_param.len(),
            self.date_param.len(),
            self.number_param.len(),
            self.quantity_param.len(),
            self.reference_param.len(),
            self.uri_param.len(),
            self.composite_param.len(),
            self.text_param.len(),
            self.compartment_type.len(),
        ]
    }

    fn push(&mut self, value: &IndexValue) {
        match value {
            IndexValue::Token {
                param,
                system,
                code,
                text,
            } => {
                self.token_param.push(param.clone());
                self.token_system.push(capped_option(system));
                self.token_code.push(capped_option(code));
                self.token_text.push(text.clone());
            }
            IndexValue::IdentifierOfType {
                param,
                type_system,
                type_code,
                value,
            } => {
                self.token_param.push(of_type_param(param));
                self.token_system.push(Some(of_type_system(
                    type_system.as_deref(),
                    type_code.as_deref(),
                )));
                self.token_code.push(Some(value.clone()));
                self.token_text.push(None);
            }
            IndexValue::ReferenceIdentifier {
                param,
                system,
                value,
            } => {
                self.token_param.push(identifier_param(param));
                self.token_system.push(system.clone());
                self.token_code.push(Some(value.clone()));
                self.token_text.push(None);
            }
            // Full text is only ever matched as a substring of its
            // normalized form (`_text` and `_content` take no `:exact`).
            IndexValue::String {
                param, normalized, ..
            } if is_full_text(param) => {
                self.text_param.push(param.clone());
                self.text_normalized.push(normalized.clone());
            }
            IndexValue::String {
                param,
                normalized,
                exact,
            } => {
                self.string_param.push(param.clone());
                self.string_normalized.push(capped(normalized));
                self.string_exact.push(exact.clone());
            }
            IndexValue::Date { param, low, high } => {
                self.date_param.push(param.clone());
                self.date_low.push(*low);
                self.date_high.push(*high);
            }
            IndexValue::Number { param, value } => {
                self.number_param.push(param.clone());
                self.number_value.push(*value);
            }
            IndexValue::Quantity {
                param,
                value,
                system,
                code,
                unit,
            } => {
                self.quantity_param.push(param.clone());
                self.quantity_value.push(*value);
                self.quantity_system.push(system.clone());
                self.quantity_code.push(code.clone());
                self.quantity_unit.push(unit.clone());
            }
            IndexValue::Reference {
                param,
                url,
                target_type,
                target_id,
            } => {
                // The type stays even where the id is no UUID (and so names
                // no stored resource): a typed view such as
                // `Observation.patient` reads its base's rows by type.
                let id = target_id.as_deref().and_then(|id| Uuid::parse_str(id).ok());
                self.reference_param.push(param.clone());
                self.reference_target_type.push(target_type.clone());
                self.reference_target_id.push(id);
                self.reference_url.push(url.clone());
            }
            IndexValue::Uri { param, value } => {
                self.uri_param.push(param.clone());
                self.uri_value.push(capped(value));
            }
            IndexValue::Composite { param, parts } => {
                self.composite_param.push(param.clone());
                self.composite_parts
                    .push(Value::Array(parts.iter().map(composite_part).collect()));
            }
        }
    }

    /// The arrays in the order [`insert_ctes`] numbers them: per table with
    /// rows, its owners, then its value columns.
    pub(super) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let values: [Vec<&(dyn ToSql + Sync)>; TABLES.len()] = [
            vec![
                &self.token_param,
                &self.token_system,
                &self.token_code,
                &self.token_text,
            ],
            vec![
                &self.string_param,
                &self.string_normalized,
                &self.string_exact,
            ],
            vec![&self.date_param, &self.date_low, &self.date_high],
            vec![&self.number_param, &self.number_value],
            vec![
                &self.quantity_param,
                &self.quantity_value,
                &self.quantity_system,
                &self.quantity_code,
                &self.quantity_unit,
            ],
            vec![
                &self.reference_param,
                &self.reference_target_type,
                &self.reference_target_id,
                &self.reference_url,
            ],
            vec![&self.uri_param, &self.uri_value],
            vec![&self.composite_param, &self.composite_parts],
            vec![&self.text_param, &self.text_normalized],
            vec![&self.compartment_type, &self.compartment_id],
        ];
        let tables = self.tables_with_rows();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::new();
        for (n, (owners, values)) in self.owners.iter().zip(values).enumerate() {
            if tables & (1 << n) == 0 {
                continue;
            }
            params.push(&owners.project_id);
            params.push(&owners.resource_type);
            params.push(&owners.resource_id);
            params.extend(values);
        }
        params
    }
}

/// A composite component as JSON, with the same field names as the index
/// table columns so that search conditions read them alike.
fn composite_part(value: &IndexValue) -> Value {
    match value {
        IndexValue::Token {
            system, code, text, ..
        } => json!({"system": system, "code": code, "text": text}),
        IndexValue::String {
            normalized, exact, ..
        } => json!({"normalized": normalized, "exact": exact}),
        IndexValue::Date { low, high, .. } => json!({"low": low, "high": high}),
        IndexValue::Number { value, .. } => json!({"value": value}),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
            ..
        } => {
            json!({"value": value, "system": system, "code": code, "unit": unit})
        }
        IndexValue::Reference {
            url,
            target_type,
            target_id,
            ..
        } => {
            json!({"url": url, "target_type": target_type, "target_id": target_id})
        }
        IndexValue::Uri { value, .. } => json!({"value": value}),
        IndexValue::IdentifierOfType { .. }
        | IndexValue::ReferenceIdentifier { .. }
        | IndexValue::Composite { .. } => Value::Null,
    }
}

/// Each index table with its value columns and their array types, in the
/// order of [`IndexRows::params`].
pub(super) const TABLES: [(&str, &[(&str, &str)]); 10] = [
    (
        "idx_token",
        &[
            ("param", "text"),
            ("system", "text"),
            ("code", "text"),
            ("text", "text"),
        ],
    ),
    (
        "idx_string",
        &[("param", "text"), ("normalized", "text"), ("exact", "text")],
    ),
    (
        "idx_date",
        &[("param", "text"), ("low", "int8"), ("high", "int8")],
    ),
    ("idx_number", &[("param", "text"), ("value", "float8")]),
    (
        "idx_quantity",
        &[
            ("param", "text"),
            ("value", "float8"),
            ("system", "text"),
            ("code", "text"),
            ("unit", "text"),
        ],
    ),
    (
        "idx_reference",
        &[
            ("param", "text"),
            ("target_type", "text"),
            ("target_id", "uuid"),
            ("url", "text"),
        ],
    ),
    ("idx_uri", &[("param", "text"), ("value", "text")]),
    ("idx_composite", &[("param", "text"), ("parts", "jsonb")]),
    ("idx_text", &[("param", "text"), ("normalized", "text")]),
    (
        "resource_compartment",
        &[("compartment_type", "text"), ("compartment_id", "uuid")],
    ),
];

/// How many sets of tables [`IndexRows::tables_with_rows`] can name.
pub(super) const TABLE_SETS: usize = 1 << TABLES.len();

/// One table's rows in a statement: its number in [`TABLES`], name and
/// value columns, and its `UNNEST` of the [`IndexRows::params`] arrays as
/// `n (project_id, resource_type, resource_id, <columns>)`.
struct Unnest {
    n: usize,
    table: &'static str,
    columns: &'static [(&'static str, &'static str)],
    rows: String,
}

impl Unnest {
    /// The tables of `tables` (a [`IndexRows::tables_with_rows`]), their
    /// arrays numbered from `$first`.
    fn of(first: usize, tables: usize) -> Vec<Unnest> {
        let mut next = first;
        TABLES
            .iter()
            .enumerate()
            .filter(|(n, _)| tables & (1 << n) != 0)
            .map(|(n, (table, columns))| {
                let arrays: Vec<String> = [("", "uuid"), ("", "text"), ("", "uuid")]
                    .iter()
                    .chain(columns.iter())
                    .map(|(_, kind)| {
                        next += 1;
                        format!("${}::{kind}[]", next - 1)
                    })
                    .collect();
                Unnest {
                    n,
                    table,
                    columns,
                    rows: format!(
                        "UNNEST({}) AS n (project_id, resource_type, resource_id, {})",
                        arrays.join(", "),
                        column_names(columns).join(", ")
                    ),
                }
            })
            .collect()
    }

    /// `INSERT` of the rows that `condition` (joins, `WHERE`) admits.
    fn insert(&self, condition: &str) -> String {
        // A resource is in a compartment once, however many references lead there.
        let distinct = if self.table == "resource_compartment" {
            "DISTINCT "
        } else {
            ""
        };
        format!(
            "i{} AS (INSERT INTO {} (project_id, resource_type, resource_id, {}) \
             SELECT {distinct}n.* FROM {}{condition})",
            self.n,
            self.table,
            column_names(self.columns).join(", "),
            self.rows,
        )
    }

    /// Row `o` of the table and row `n` of the arrays have the same values.
    fn same_values(&self) -> String {
        self.columns
            .iter()
            .map(|(c, _)| format!("o.{c} IS NOT DISTINCT FROM n.{c}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    }
}

fn column_names(columns: &[(&'static str, &str)]) -> Vec<&'static str> {
    columns.iter().map(|(name, _)| *name).collect()
}

/// `INSERT`s into the tables of `tables` (a [`IndexRows::tables_with_rows`])
/// of the rows of [`IndexRows::params`], numbered from `$first`.
pub(super) fn insert_ctes(first: usize, tables: usize) -> Vec<String> {
    Unnest::of(first, tables)
        .iter()
        .map(|unnest| unnest.insert(""))
        .collect()
}

/// Most rows of one table that an update compares with the stored ones
/// (each stored row is compared with each new one of its resource); when a
/// resource has more, the statement replaces all rows. Below it every parameter has fewer values
/// than extraction de-duplicates, so the rows compared are sets.
const MOST_ROWS_COMPARED: usize = 256;

/// Replaces the index rows of the resources an `UPDATE` CTE `w` returns
/// (`project_id, resource_type, id`) by their rows in `rows` (whose
/// [`IndexRows::params`] are numbered from `$first`; rows of resources not
/// in `w` are left out). Usually only the rows that differ are touched: an
/// update changes a few values, and each row kept saves a heap row, its
/// btree entries and their WAL. Both sides see the rows as the statement
/// began.
pub(super) fn replace_ctes(first: usize, rows: &IndexRows) -> Vec<String> {
    let compare = compared(rows);
    let unnests = Unnest::of(first, rows.tables_with_rows());
    let updated = "o.project_id = w.project_id AND o.resource_type = w.resource_type AND o.resource_id = w.id";
    let same_owner = "o.project_id = n.project_id AND o.resource_type = n.resource_type AND o.resource_id = n.resource_id";
    let new_of_updated = " JOIN w ON n.project_id = w.project_id AND n.resource_type = w.resource_type AND n.resource_id = w.id";
    let mut ctes = Vec::new();
    for (n, (table, _)) in TABLES.iter().enumerate() {
        let delete_all = format!("d{n} AS (DELETE FROM {table} o USING w WHERE {updated})");
        match unnests.iter().find(|unnest| unnest.n == n) {
            None => ctes.push(delete_all),
            Some(unnest) if !compare => {
                ctes.push(delete_all);
                ctes.push(unnest.insert(new_of_updated));
            }
            Some(unnest) => {
                let same = unnest.same_values();
                ctes.push(format!(
                    "d{n} AS (DELETE FROM {table} o USING w WHERE {updated} \
                     AND NOT EXISTS (SELECT 1 FROM {} WHERE {same_owner} AND {same}))",
                    unnest.rows
                ));
                ctes.push(unnest.insert(&format!(
                    "{new_of_updated} WHERE NOT EXISTS (SELECT 1 FROM {table} o WHERE {same_owner} AND {same})"
                )));
            }
        }
    }
    ctes
}

/// Which statement text [`replace_ctes`] makes for `rows`: the tables with
/// rows, and whether they are compared.
pub(super) fn replace_shape(rows: &IndexRows) -> usize {
    rows.tables_with_rows() | (usize::from(compared(rows)) << TABLES.len())
}

fn compared(rows: &IndexRows) -> bool {
    rows.most.iter().all(|n| *n <= MOST_ROWS_COMPARED)
}

#[cfg(test)]
mod tests {
    use fhir_model::search::Registry;

    /// Migration 0019 removed the rows of every typed reference view the
    /// registry knows; a view it does not list would read rows that a
    /// database migrated before it still holds under the view's own code.
    #[test]
    fn migration_0019_lists_every_typed_reference_view() {
        let migration = include_str!("../../../migrations/0019_typed_reference_views.sql");
        let mut listed = 0;
        for resource_type in fhir_model::resource_types::all_resource_types() {
            for param in Registry::get().params_for(resource_type) {
                if let Some(view) = param.reference_view() {
                    let row = format!(
                        "('{resource_type}', '{}', '{}', '{}')",
                        param.code, view.base, view.target_type
                    );
                    assert!(migration.contains(&row), "migration 0019 lacks {row}");
                    listed += 1;
                }
            }
        }
        assert_eq!(migration.matches("    ('").count(), listed);
    }

    /// Migration 0020 removed the rows of every parameter stored as one other
    /// (same expression); the Observation `combo-*` unions went in 0014.
    #[test]
    fn migration_0020_lists_every_parameter_stored_as_its_twin() {
        let migration = include_str!("../../../migrations/0020_identical_parameters.sql");
        for resource_type in fhir_model::resource_types::all_resource_types() {
            for param in Registry::get().params_for(resource_type) {
                if param.is_stored() || param.stored_as().len() != 1 {
                    continue;
                }
                for name in [resource_type, param.code.as_str()] {
                    assert!(
                        migration.contains(&format!("'{name}'")),
                        "migration 0020 lacks {resource_type}.{}",
                        param.code
                    );
                }
            }
        }
    }
}
