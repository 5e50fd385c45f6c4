//! Validation of resources against the R4 JSON schema plus fhirgate's administrative types.
//!
//! One schema covers every type, dispatching on `resourceType`, so the definitions all types
//! share (Element, Extension, CodeableConcept, …) are compiled once: compiled per type, each
//! type cost about 16 MB, and a server that had seen a dozen types held 200 MB of schemas.
//! It is compiled on first use (under 100 ms); after that a resource validates in
//! microseconds without taking a lock.

mod choices;

pub use choices::forms as choice_forms;
mod messages;

use std::sync::{Arc, OnceLock};

use jsonschema::{Draft, Registry};
use serde_json::{json, Map, Value};

use crate::resource_types::{all_resource_types, type_index};
use crate::{Error, Issue, IssueCode, Severity};

/// The HL7 R4 schema, trimmed by `data/vendor.py`.
pub(crate) const R4_SCHEMA: &str = include_str!("../data/fhir.schema.json");
/// Hand-written schemas for the administrative types; `$ref`s point into the R4 definitions.
const ADMIN_SCHEMA: &str = include_str!("../data/admin.schema.json");
/// Where the merged schema document lives in the registry. Only a name: nothing is fetched.
const SCHEMA_URI: &str = "https://fhirgate.invalid/fhir.schema.json";
/// The R4 schema is written for draft 6; draft 7 adds only what the dispatch needs (`if`/`then`).
const DRAFT: Draft = Draft::Draft7;

/// Validates resources of every known type. Clones share one schema, so a
/// clone can move to another thread (a large resource validates off the
/// thread that serves requests).
#[derive(Clone)]
pub struct Validator {
    schemas: Arc<Schemas>,
}

struct Schemas {
    /// The merged schema document, indexed once so the compile can resolve `$ref`s
    /// without copying the definitions.
    registry: Registry<'static>,
    compiled: OnceLock<jsonschema::Validator>,
}

impl Validator {
    /// Parses the embedded schemas. Nothing is compiled yet.
    pub fn new() -> Result<Self, Error> {
        let registry = Registry::new()
            .draft(DRAFT)
            .retrieve_known_draft_meta_schemas(false)
            .add(SCHEMA_URI, schema_document()?)
            .and_then(|builder| builder.prepare())
            .map_err(|e| Error::Schema(e.to_string()))?;
        Ok(Validator {
            schemas: Arc::new(Schemas {
                registry,
                compiled: OnceLock::new(),
            }),
        })
    }

    /// Checks `resource` against the schema of the type its `resourceType` names, reporting
    /// every problem found.
    pub fn validate(&self, resource: &Value) -> Result<(), Vec<Issue>> {
        let resource_type = resource_type_of(resource).map_err(|issue| vec![issue])?;
        let schema = self.schema().map_err(|e| {
            vec![Issue {
                severity: Severity::Fatal,
                ..Issue::error(IssueCode::Exception, e.to_string())
            }]
        })?;
        if !schema.is_valid(resource) {
            return Err(messages::issues(
                resource_type,
                schema.iter_errors(resource),
            ));
        }
        let choices = choices::issues(resource_type, resource);
        if choices.is_empty() {
            Ok(())
        } else {
            Err(choices)
        }
    }

    /// The compiled schema, compiled on first use. Two threads racing on the first use may
    /// both compile it; one result is kept.
    fn schema(&self) -> Result<&jsonschema::Validator, Error> {
        if let Some(schema) = self.schemas.compiled.get() {
            return Ok(schema);
        }
        // Each type's definition applies when `resourceType` names it (not the document's
        // root `oneOf`, which would report a single useless error).
        let branches: Vec<Value> = all_resource_types()
            .map(|resource_type| {
                json!({
                    "if": {"properties": {"resourceType": {"const": resource_type}}},
                    "then": {"$ref": format!("{SCHEMA_URI}#/definitions/{resource_type}")}
                })
            })
            .collect();
        let schema = jsonschema::options()
            .with_draft(DRAFT)
            .with_registry(&self.schemas.registry)
            .build(&json!({ "allOf": branches }))
            .map_err(|e| Error::Schema(e.to_string()))?;
        Ok(self.schemas.compiled.get_or_init(|| schema))
    }
}

/// The known type a resource claims to be.
fn resource_type_of(resource: &Value) -> Result<&str, Issue> {
    let Some(object) = resource.as_object() else {
        return Err(Issue::error(
            IssueCode::Structure,
            "A resource must be a JSON object",
        ));
    };
    match object.get("resourceType") {
        None => Err(Issue::error(
            IssueCode::Required,
            "Missing resourceType: say what the resource is, e.g. \"resourceType\": \"Patient\"",
        )),
        Some(Value::String(name)) => type_index(name).map(|_| name.as_str()).ok_or_else(|| {
            Issue::error(
                IssueCode::NotSupported,
                format!("Unknown resourceType '{name}'"),
            )
        }),
        Some(other) => Err(Issue::error(
            IssueCode::Structure,
            format!("resourceType must be a string, not {other}"),
        )),
    }
}

/// The R4 definitions with the administrative ones merged in, tightened where R4 is loose.
pub(crate) fn schema_document() -> Result<Value, Error> {
    let mut document = parse(R4_SCHEMA)?;
    let admin = parse(ADMIN_SCHEMA)?;
    let (Some(definitions), Some(admin_definitions)) = (
        document["definitions"].as_object_mut(),
        admin["definitions"].as_object(),
    ) else {
        return Err(Error::Schema("no definitions object".into()));
    };
    for (name, definition) in admin_definitions {
        if definitions
            .insert(name.clone(), definition.clone())
            .is_some()
        {
            return Err(Error::Schema(format!("{name} is defined twice")));
        }
    }
    tighten(definitions);
    Ok(document)
}

fn parse(text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::Schema(e.to_string()))
}

/// The R4 schema lets a complex element be any JSON value (its definitions have `properties`
/// but no `"type": "object"`), and an integer be any number (its pattern only constrains
/// strings). Close both gaps so such content is rejected rather than stored.
fn tighten(definitions: &mut Map<String, Value>) {
    ref_inline_primitives(definitions);
    for definition in definitions.values_mut() {
        if let Some(definition) = definition.as_object_mut() {
            if definition.contains_key("properties") && !definition.contains_key("type") {
                definition.insert("type".into(), json!("object"));
            }
        }
    }
    for (name, minimum) in [
        ("integer", None),
        ("positiveInt", Some(1)),
        ("unsignedInt", Some(0)),
    ] {
        if let Some(definition) = definitions.get_mut(name).and_then(Value::as_object_mut) {
            definition.insert("multipleOf".into(), json!(1));
            if let Some(minimum) = minimum {
                definition.insert("minimum".into(), json!(minimum));
            }
        }
    }
}

/// Choice elements such as `multipleBirthInteger` copy their primitive's schema instead of
/// `$ref`-ing it. Point them at the definition, so the integer rules above cover them and
/// messages can name the primitive from the schema path.
fn ref_inline_primitives(definitions: &mut Map<String, Value>) {
    let primitives: Vec<(String, Value)> = definitions
        .iter()
        .filter(|(name, _)| name.starts_with(|c: char| c.is_ascii_lowercase()))
        .filter_map(|(name, definition)| Some((name.clone(), definition.get("pattern")?.clone())))
        .collect();
    let properties = definitions
        .values_mut()
        .filter_map(|definition| definition.get_mut("properties")?.as_object_mut());
    for properties in properties {
        for (element, schema) in properties.iter_mut() {
            let Some(pattern) = schema.get("pattern") else {
                continue;
            };
            let primitive = primitives.iter().find(|(name, primitive_pattern)| {
                primitive_pattern == pattern && is_choice_of(element, name)
            });
            if let Some((name, _)) = primitive {
                *schema = json!({ "$ref": format!("#/definitions/{name}") });
            }
        }
    }
}

/// Whether `element` is the `primitive` form of a choice, as `valueDateTime` is of `dateTime`
/// (and, by name alone, of `time`: callers also compare the patterns).
fn is_choice_of(element: &str, primitive: &str) -> bool {
    let mut chars = primitive.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let suffix = format!("{}{}", first.to_ascii_uppercase(), chars.as_str());
    element.len() > suffix.len() && element.ends_with(&suffix)
}

/// Turns a JSON pointer into a FHIRPath-style location: `/name/0/given` on a Patient is
/// `Patient.name[0].given`, and the empty pointer is `Patient`. A missing leading `/` is
/// tolerated.
pub fn pointer_to_expression(resource_type: &str, pointer: &str) -> String {
    let mut expression = resource_type.to_owned();
    if pointer.is_empty() {
        return expression;
    }
    for segment in pointer.strip_prefix('/').unwrap_or(pointer).split('/') {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            expression.push('[');
            expression.push_str(segment);
            expression.push(']');
        } else {
            expression.push('.');
            expression.push_str(&segment.replace("~1", "/").replace("~0", "~"));
        }
    }
    expression
}

#[cfg(test)]
mod tests;
