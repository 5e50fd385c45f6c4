//! Types of nodes: the FHIR type names and their hierarchy, the System
//! types of computed values, `is`/`as`/`ofType`, and the System value a
//! FHIR primitive stands for.

use std::borrow::Cow;

use serde_json::Value;

use super::model::model;
use super::parser::TypeSpec;
use super::value::{Decimal, Quantity, Temporal, TemporalKind};
use super::{FhirPathError, Node, Val};
use crate::resource_types::is_known_resource_type;

/// A node's value as a System value, when it is a primitive or a quantity.
#[derive(Debug, Clone, PartialEq)]
pub enum Prim<'x> {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(&'x str),
    Temporal(Temporal),
    Quantity(Quantity),
}

fn is_integer_type(t: &str) -> bool {
    matches!(t, "integer" | "positiveInt" | "unsignedInt")
}

pub fn is_quantity_type(t: &str) -> bool {
    matches!(
        t,
        "Quantity" | "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity"
    )
}

pub fn number_prim(n: &serde_json::Number, integer: bool) -> Option<Prim<'static>> {
    if integer || n.is_i64() && !n.to_string().contains('.') {
        if let Some(i) = n.as_i64() {
            return Some(Prim::Integer(i));
        }
    }
    Decimal::parse(&n.to_string()).map(Prim::Decimal)
}

/// The System value of a FHIR `Quantity`.
pub fn json_quantity(value: &Value) -> Option<Quantity> {
    let number = value.get("value")?.as_number()?;
    let value_dec = Decimal::parse(&number.to_string())?;
    let unit = value
        .get("code")
        .or_else(|| value.get("unit"))
        .and_then(Value::as_str)
        .unwrap_or("1");
    Some(Quantity {
        value: value_dec,
        unit: unit.to_string(),
    })
}

impl<'a> Node<'a> {
    /// The value as a System primitive (or quantity), if it is one.
    pub(crate) fn prim(&self) -> Option<Prim<'_>> {
        Some(match &self.value {
            Val::Json(value) => match value {
                Value::Bool(b) => Prim::Boolean(*b),
                Value::Number(n) => number_prim(n, self.fhir_type.is_some_and(is_integer_type))?,
                Value::String(s) => {
                    let kind = match self.fhir_type {
                        Some("date") => Some(TemporalKind::Date),
                        Some("dateTime") | Some("instant") => Some(TemporalKind::DateTime),
                        Some("time") => {
                            return Some(
                                Temporal::parse_time(s).map_or(Prim::String(s), Prim::Temporal),
                            )
                        }
                        _ => None,
                    };
                    match kind.and_then(|k| Temporal::parse_date_time(s, k)) {
                        Some(t) => Prim::Temporal(t),
                        None => Prim::String(s),
                    }
                }
                Value::Object(_) => {
                    let quantity = match self.fhir_type {
                        Some(t) => is_quantity_type(t),
                        None => infer_complex_type(value) == Some("Quantity"),
                    };
                    if !quantity {
                        return None;
                    }
                    Prim::Quantity(json_quantity(value)?)
                }
                _ => return None,
            },
            Val::Boolean(b) => Prim::Boolean(*b),
            Val::Integer(n) => Prim::Integer(*n),
            Val::Decimal(d) => Prim::Decimal(*d),
            Val::String(s) => Prim::String(s),
            Val::Temporal(t) => Prim::Temporal(*t),
            Val::Quantity(q) => Prim::Quantity((**q).clone()),
            Val::TypeInfo { .. } => return None,
        })
    }

    /// `(namespace, name)` of the node's type.
    pub(crate) fn type_name(&self) -> (&'static str, Cow<'a, str>) {
        let system = |name: &'static str| ("System", Cow::Borrowed(name));
        match &self.value {
            Val::Json(value) => {
                if let Some(t) = self.fhir_type {
                    return ("FHIR", Cow::Borrowed(display_type(t)));
                }
                match value {
                    Value::Bool(_) => system("Boolean"),
                    Value::Number(n) => match number_prim(n, false) {
                        Some(Prim::Integer(_)) => system("Integer"),
                        _ => system("Decimal"),
                    },
                    Value::String(_) => system("String"),
                    Value::Object(map) => match map.get("resourceType").and_then(Value::as_str) {
                        Some(t) => ("FHIR", Cow::Borrowed(t)),
                        None => (
                            "FHIR",
                            Cow::Borrowed(infer_complex_type(value).unwrap_or("Element")),
                        ),
                    },
                    _ => system("Any"),
                }
            }
            Val::Boolean(_) => system("Boolean"),
            Val::Integer(_) => system("Integer"),
            Val::Decimal(_) => system("Decimal"),
            Val::String(_) => system("String"),
            Val::Temporal(t) => system(match t.kind {
                TemporalKind::Date => "Date",
                TemporalKind::DateTime => "DateTime",
                TemporalKind::Time => "Time",
            }),
            Val::Quantity(_) => system("Quantity"),
            Val::TypeInfo { .. } => system("TypeInfo"),
        }
    }
}

/// A definition's name as a FHIR type: a backbone element is a `BackboneElement`.
fn display_type(definition: &str) -> &str {
    if definition.contains('_') {
        "BackboneElement"
    } else {
        definition
    }
}

const SYSTEM_TYPES: &[&str] = &[
    "Any", "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity",
];

/// The FHIR System type a FHIR primitive is implicitly, for `ofType(DateTime)` on a `dateTime`.
fn system_of_primitive(t: &str) -> Option<&'static str> {
    Some(match t {
        "boolean" => "Boolean",
        "integer" | "positiveInt" | "unsignedInt" => "Integer",
        "decimal" => "Decimal",
        "date" => "Date",
        "dateTime" | "instant" => "DateTime",
        "time" => "Time",
        "string" | "code" | "id" | "markdown" | "uri" | "url" | "canonical" | "uuid" | "oid"
        | "base64Binary" | "xhtml" => "String",
        _ => return None,
    })
}

fn is_fhir_type(name: &str) -> bool {
    model().is_definition(name)
        || is_known_resource_type(name)
        || matches!(
            name,
            "Resource"
                | "DomainResource"
                | "BackboneElement"
                | "Element"
                | "Age"
                | "Count"
                | "Distance"
                | "Duration"
                | "SimpleQuantity"
                | "MoneyQuantity"
        )
}

/// The parent of a FHIR type in the R4 type hierarchy.
fn fhir_parent(name: &str) -> Option<&'static str> {
    Some(match name {
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "uuid" | "oid" => "uri",
        "positiveInt" | "unsignedInt" => "integer",
        "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity" => {
            "Quantity"
        }
        "Bundle" | "Binary" | "Parameters" | "DomainResource" => "Resource",
        "Resource" | "Element" => return None,
        "BackboneElement" => "Element",
        _ if is_known_resource_type(name) => "DomainResource",
        _ if name.starts_with(|c: char| c.is_ascii_uppercase()) => "Element",
        _ => return None,
    })
}

/// How a type test compares: `is` accepts subtypes; `as` and `ofType`
/// want the primitive type exactly (a `code` is not `as(string)`) but
/// accept subtypes of complex types and a System name for its primitives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum TypeTest {
    Is,
    Cast,
}

/// Whether `node` is of the type `spec` names; an unknown type is an error.
pub fn has_type(node: &Node<'_>, spec: &TypeSpec, test: TypeTest) -> Result<bool, FhirPathError> {
    let name = spec.name.as_str();
    let fhir = is_fhir_type(name);
    let namespace = match spec.namespace.as_deref() {
        Some(ns @ ("FHIR" | "System")) => ns,
        Some(other) => {
            return Err(FhirPathError::eval(format!(
                "unknown type namespace {other}"
            )))
        }
        None if fhir => "FHIR",
        None if SYSTEM_TYPES.contains(&name) => "System",
        None => return Err(FhirPathError::eval(format!("unknown type {name}"))),
    };
    if namespace == "FHIR" && !fhir || namespace == "System" && !SYSTEM_TYPES.contains(&name) {
        return Ok(false);
    }
    let (actual_ns, actual) = node.type_name();
    if actual_ns != namespace {
        let lenient = test == TypeTest::Cast
            && spec.namespace.is_none()
            && actual_ns == "FHIR"
            && system_of_primitive(&actual) == Some(name);
        return Ok(lenient);
    }
    if namespace == "System" {
        return Ok(actual == name || name == "Any");
    }
    let mut current: &str = &actual;
    let mut primitive_step = false;
    loop {
        if current == name {
            return Ok(test == TypeTest::Is || !primitive_step);
        }
        match fhir_parent(current) {
            Some(parent) => {
                primitive_step |= current.starts_with(|c: char| c.is_ascii_lowercase());
                current = parent;
            }
            None => return Ok(false),
        }
    }
}

const CONTACT_POINT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];

/// The complex FHIR type a JSON object most likely is, from its members
/// (for elements the schema does not type, such as a variable's).
pub fn infer_complex_type(value: &Value) -> Option<&'static str> {
    let map = value.as_object()?;
    let has = |key: &str| map.contains_key(key);
    let string = |key: &str| map.get(key).and_then(Value::as_str);
    Some(if has("coding") {
        "CodeableConcept"
    } else if has("reference") || string("type").is_some() && (has("identifier") || has("display"))
    {
        "Reference"
    } else if has("family") || has("given") || has("prefix") || has("suffix") {
        "HumanName"
    } else if has("line")
        || has("city")
        || has("district")
        || has("state")
        || has("postalCode")
        || has("country")
    {
        "Address"
    } else if has("start") || has("end") {
        "Period"
    } else if has("low") || has("high") {
        "Range"
    } else if has("numerator") || has("denominator") {
        "Ratio"
    } else if map.get("value").is_some_and(Value::is_number) {
        if has("currency") {
            "Money"
        } else {
            "Quantity"
        }
    } else if string("value").is_some() {
        if string("system").is_some_and(|s| CONTACT_POINT_SYSTEMS.contains(&s))
            || has("rank")
            || (!has("system") && !has("type") && !has("assigner") && has("use"))
        {
            "ContactPoint"
        } else {
            "Identifier"
        }
    } else if has("code") || has("system") {
        "Coding"
    } else if has("event") || has("repeat") {
        "Timing"
    } else {
        return None;
    })
}

/// The resource type a reference string points at: `Patient/1`,
/// `Patient/1/_history/2`, or an absolute URL ending so.
pub fn reference_type(reference: &str) -> Option<&str> {
    split_reference(reference).map(|(t, _)| t)
}

/// `(type, id)` of a relative or absolute reference whose tail is
/// `Type/id` (optionally followed by `/_history/version`).
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut segments = reference.rsplit('/');
    let mut last = segments.next()?;
    let mut before = segments.next()?;
    if before == "_history" {
        last = segments.next()?;
        before = segments.next()?;
    }
    (is_known_resource_type(before) && crate::resource_types::is_valid_id(last))
        .then_some((before, last))
}

/// FHIR data types a choice element can carry, by their suffix in JSON
/// (`valueDateTime`), for objects the schema does not type.
const CHOICE_TYPES: &[(&str, &str)] = &[
    ("Address", "Address"),
    ("Age", "Age"),
    ("Annotation", "Annotation"),
    ("Attachment", "Attachment"),
    ("Base64Binary", "base64Binary"),
    ("Boolean", "boolean"),
    ("Canonical", "canonical"),
    ("Code", "code"),
    ("CodeableConcept", "CodeableConcept"),
    ("Coding", "Coding"),
    ("ContactDetail", "ContactDetail"),
    ("ContactPoint", "ContactPoint"),
    ("Contributor", "Contributor"),
    ("Count", "Count"),
    ("DataRequirement", "DataRequirement"),
    ("Date", "date"),
    ("DateTime", "dateTime"),
    ("Decimal", "decimal"),
    ("Distance", "Distance"),
    ("Dosage", "Dosage"),
    ("Duration", "Duration"),
    ("Expression", "Expression"),
    ("HumanName", "HumanName"),
    ("Id", "id"),
    ("Identifier", "Identifier"),
    ("Instant", "instant"),
    ("Integer", "integer"),
    ("Markdown", "markdown"),
    ("Meta", "Meta"),
    ("Money", "Money"),
    ("Oid", "oid"),
    ("ParameterDefinition", "ParameterDefinition"),
    ("Period", "Period"),
    ("PositiveInt", "positiveInt"),
    ("Quantity", "Quantity"),
    ("Range", "Range"),
    ("Ratio", "Ratio"),
    ("Reference", "Reference"),
    ("RelatedArtifact", "RelatedArtifact"),
    ("SampledData", "SampledData"),
    ("Signature", "Signature"),
    ("String", "string"),
    ("Time", "time"),
    ("Timing", "Timing"),
    ("TriggerDefinition", "TriggerDefinition"),
    ("UnsignedInt", "unsignedInt"),
    ("Uri", "uri"),
    ("Url", "url"),
    ("UsageContext", "UsageContext"),
    ("Uuid", "uuid"),
];

pub fn choice_type(suffix: &str) -> Option<&'static str> {
    CHOICE_TYPES
        .binary_search_by(|(s, _)| (*s).cmp(suffix))
        .ok()
        .map(|i| CHOICE_TYPES[i].1)
}
