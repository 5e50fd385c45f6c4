//! Input generators for the property tests (`props.rs`) and the HTTP fuzz
//! test (`fuzz.rs`): mostly plausible FHIR (known element names, dates,
//! quantities, FHIRPath tokens) so that inputs get past the first check,
//! mixed with arbitrary text so that they also break it.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Element names parsers and extraction look at.
const KEYS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "name",
    "given",
    "family",
    "birthDate",
    "gender",
    "identifier",
    "system",
    "value",
    "code",
    "coding",
    "display",
    "subject",
    "reference",
    "valueQuantity",
    "unit",
    "comparator",
    "effectiveDateTime",
    "effectivePeriod",
    "start",
    "end",
    "extension",
    "url",
    "valueString",
    "component",
    "telecom",
    "address",
    "status",
    "entry",
    "resource",
    "request",
    "method",
    "fullUrl",
    "type",
    "parameter",
    "part",
    "valueInteger",
    "valueCode",
    "issued",
    "text",
    "div",
    "contained",
    "_birthDate",
    "active",
    "period",
    "low",
    "high",
];

/// Strings that search values, dates, quantities and references are made of.
const WORDS: &[&str] = &[
    "",
    "Patient",
    "Observation",
    "Patient/1",
    "Patient/00000000-0000-0000-0000-000000000001",
    "2020",
    "2020-01",
    "2020-01-01",
    "2020-02-30",
    "2020-01-01T10:00:00Z",
    "2020-01-01T10:00:00.123+05:30",
    "2020-13-45T25:61:61.999+99:99",
    "-0001-01-01",
    "9999-12-31T23:59:59.999999999Z",
    "1e309",
    "-0",
    "1.5",
    "9223372036854775808",
    "NaN",
    "http://loinc.org",
    "http://unitsofmeasure.org",
    "mg",
    "kg",
    "|",
    "||",
    "a|b|c",
    "$",
    "%",
    "\u{0}",
    "é",
    "🙂",
    "'",
    "\"",
    "\\",
    "*",
    ":",
    ",",
    ".",
    "..",
    "[0]",
    "ge2020",
    "lt1.5|x|mg",
    "ap5",
    "sa",
    "eb",
    "5.4|http://unitsofmeasure.org|mg",
    "urn:uuid:1",
    "#x",
];

/// A string from [`WORDS`], a combination of them, or arbitrary text.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_string),
        2 => prop::collection::vec(prop::sample::select(WORDS), 0..4).prop_map(|w| w.concat()),
        2 => any::<String>(),
        1 => "[ -~]{0,40}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        text().prop_map(Value::String),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => text(),
    ]
}

/// Any JSON value, a few levels deep, with FHIR-ish keys.
pub fn json() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Resource types, known or not.
pub fn resource_type() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(&[
            "Patient", "Observation", "Encounter", "Bundle", "Parameters", "AccessPolicy",
            "ProjectMembership", "Binary", "DocumentReference", "Condition",
        ][..]).prop_map(str::to_string),
        1 => text(),
    ]
}

/// A JSON object with a `resourceType`, otherwise anything.
pub fn resource() -> impl Strategy<Value = Value> {
    (resource_type(), json()).prop_map(|(resource_type, body)| {
        let mut resource = match body {
            Value::Object(fields) => Value::Object(fields),
            other => json!({ "value": other }),
        };
        resource["resourceType"] = Value::String(resource_type);
        resource
    })
}

const FHIRPATH_TOKENS: &[&str] = &[
    "Patient",
    "name",
    "given",
    "family",
    "birthDate",
    "identifier",
    "value",
    "system",
    "code",
    "coding",
    "extension",
    ".",
    "where(",
    "exists()",
    "empty()",
    "=",
    "!=",
    "~",
    "<",
    ">=",
    "'x'",
    "'2020-01-01'",
    "1",
    "1.5",
    "-3",
    "9999999999999999999999",
    "@2020-01-01",
    "@2020-01-01T10:00:00Z",
    "@T12:00",
    "@2020-13-45",
    "10 'mg'",
    "5 days",
    "true",
    "and",
    "or",
    "xor",
    "implies",
    "|",
    "[0]",
    "[-1]",
    "[99999999999]",
    "first()",
    "last()",
    "tail()",
    "resolve()",
    "ofType(",
    "Quantity",
    "is",
    "as",
    "%resource",
    "%context",
    "$this",
    "$index",
    "$total",
    "(",
    ")",
    "{",
    "}",
    "+",
    "-",
    "*",
    "/",
    "div",
    "mod",
    "&",
    "contains",
    "in",
    "count()",
    "iif(",
    ",",
    "substring(",
    "startsWith(",
    "matches(",
    "replaceMatches(",
    "extension(",
    "'http://x'",
    "select(",
    "all(",
    "repeat(",
    "children()",
    "descendants()",
    "today()",
    "now()",
    "toInteger()",
    "toString()",
    "toDecimal()",
    "toQuantity(",
    "join(",
    "split(",
    "length()",
    "aggregate(",
    "combine(",
    "union(",
    "exclude(",
    "intersect(",
    "single()",
    "skip(",
    "take(",
    "distinct()",
    "not()",
    "upper()",
    "lower()",
    "indexOf(",
    "trim()",
    "memberOf(",
    "`",
    "'",
    "\\",
    "//",
    "/*",
    "*/",
    " ",
];

/// FHIRPath-like text: tokens of the language in any order, or anything.
pub fn fhirpath() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(prop::sample::select(FHIRPATH_TOKENS), 0..14)
            .prop_map(|tokens| tokens.concat()),
        2 => prop::collection::vec(prop::sample::select(FHIRPATH_TOKENS), 0..10)
            .prop_map(|tokens| tokens.join(" ")),
        1 => any::<String>(),
    ]
}

/// A FHIRPath Patch `Parameters` resource, its parts mostly well formed.
pub fn fhirpath_patch() -> impl Strategy<Value = Value> {
    let part = (
        prop::sample::select(
            &[
                "type",
                "path",
                "name",
                "value",
                "index",
                "source",
                "destination",
                "x",
            ][..],
        ),
        prop_oneof![
            prop::sample::select(&["add", "insert", "delete", "replace", "move", "upsert"][..])
                .prop_map(|t| json!({"valueCode": t})),
            fhirpath().prop_map(|p| json!({"valueString": p})),
            any::<i32>().prop_map(|i| json!({"valueInteger": i})),
            json().prop_map(|v| json!({"valueString": v})),
            json().prop_map(|v| json!({"valueHumanName": v})),
            json().prop_map(|v| json!({"part": v})),
        ],
    )
        .prop_map(|(name, mut value)| {
            value["name"] = json!(name);
            value
        });
    prop::collection::vec(prop::collection::vec(part, 0..6), 0..4).prop_map(|operations| {
        json!({"resourceType": "Parameters", "parameter": operations.into_iter()
            .map(|parts| json!({"name": "operation", "part": parts}))
            .collect::<Vec<_>>()})
    })
}

/// A JSON Patch document, its operations mostly well formed.
pub fn json_patch() -> impl Strategy<Value = Value> {
    let path = prop_oneof![
        prop::collection::vec(
            prop_oneof![
                key(),
                "[0-9]{1,3}".prop_map(String::from),
                Just("-".to_string())
            ],
            0..4
        )
        .prop_map(|steps| steps.iter().map(|s| format!("/{s}")).collect::<String>()),
        text(),
    ];
    let operation = (
        prop::sample::select(&["add", "remove", "replace", "move", "copy", "test", "x"][..]),
        path.clone(),
        path,
        json(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        );
    prop_oneof![
        4 => prop::collection::vec(operation, 0..6).prop_map(Value::Array),
        1 => json(),
    ]
}

/// Search parameter names: common ones, with modifiers and chains, or anything.
pub fn search_name() -> impl Strategy<Value = String> {
    let base = prop::sample::select(
        &[
            "name",
            "family",
            "birthdate",
            "date",
            "value-quantity",
            "code",
            "subject",
            "patient",
            "identifier",
            "_id",
            "_lastUpdated",
            "_sort",
            "_count",
            "_include",
            "_revinclude",
            "_elements",
            "_summary",
            "_total",
            "_type",
            "_has",
            "_text",
            "_content",
            "_filter",
            "component-code-value-quantity",
            "code-value-quantity",
            "general-practitioner",
            "_security",
            "_tag",
            "_profile",
            "_source",
            "_list",
            "_offset",
            "_cursor",
            "_at",
            "_since",
            "value-date",
            "phonetic",
            "address",
            "telecom",
            "active",
            "gender",
        ][..],
    );
    let suffix = prop::sample::select(
        &[
            "",
            ":exact",
            ":contains",
            ":missing",
            ":not",
            ":text",
            ":above",
            ":below",
            ":in",
            ":of-type",
            ":identifier",
            ":Patient",
            ".name",
            ":Patient.name",
            ":Observation:subject:code",
            ":iterate",
            ":x",
            "::",
            ".",
            ":Patient.organization.name",
        ][..],
    );
    prop_oneof![
        6 => (base, suffix).prop_map(|(b, s)| format!("{b}{s}")),
        1 => text(),
    ]
}

/// A search query: name/value pairs.
pub fn search_query() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((search_name(), text()), 0..6)
}

/// A Bundle of type batch or transaction (or not), with entries of any method and URL.
pub fn bundle() -> impl Strategy<Value = Value> {
    let entry = (
        prop::sample::select(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "TRACE", ""][..]),
        prop_oneof![
            resource_type(),
            (resource_type(), text()).prop_map(|(t, id)| format!("{t}/{id}")),
            (resource_type(), search_query()).prop_map(|(t, q)| format!(
                "{t}?{}",
                serde_urlencoded::to_string(&q).unwrap_or_default()
            )),
            text(),
        ],
        prop::option::of(resource()),
        prop::option::of(text()),
        prop::option::of(prop_oneof![Just("urn:uuid:1".to_string()), text()]),
    )
        .prop_map(|(method, url, resource, condition, full_url)| {
            let mut entry = json!({"request": {"method": method, "url": url}});
            if let Some(resource) = resource {
                entry["resource"] = resource;
            }
            if let Some(condition) = condition {
                entry["request"]["ifNoneExist"] = json!(condition);
            }
            if let Some(full_url) = full_url {
                entry["fullUrl"] = json!(full_url);
            }
            entry
        });
    (
        prop::sample::select(&["batch", "transaction", "searchset", ""][..]),
        prop::collection::vec(prop_oneof![4 => entry, 1 => json()], 0..5),
    )
        .prop_map(
            |(kind, entries)| json!({"resourceType": "Bundle", "type": kind, "entry": entries}),
        )
}
