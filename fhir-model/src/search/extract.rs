//! Index extraction: resource JSON -> the [`IndexValue`] rows it is findable by.
//! OWNER: helper A.
//!
//! Each parameter's expression (parsed once, in the registry) selects nodes;
//! each node becomes rows by its FHIR type, known from a choice suffix or
//! inferred from its JSON shape, and the parameter's type. `_id` and
//! `_lastUpdated` are left to the server, which indexes its own columns.

use serde_json::Value;

use super::fhirpath::{infer_complex_type, split_reference, Node, Val};
use super::{IndexValue, ParamType, Registry, SearchParam};
use crate::fhirpath::value::{days_from_civil, days_in_month};

/// Most combinations one composite element may yield.
const MAX_COMPOSITE_COMBINATIONS: usize = 64;
/// Above this many values for one parameter, duplicates are kept (the
/// quadratic de-duplication is skipped).
const MAX_DEDUP: usize = 256;

/// Every index value of `resource` for every parameter of its type.
pub fn extract(registry: &Registry, resource: &Value) -> Vec<IndexValue> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Typed once, evaluated on by every parameter.
    let root = Node::resource(resource);
    for param in registry.params_for(resource_type) {
        // A union of other parameters is found through their rows.
        if param.code == "_id" || param.code == "_lastUpdated" || !param.is_stored() {
            continue;
        }
        let start = out.len();
        let Some(expression) = param.compiled() else {
            let text = match param.code.as_str() {
                "_text" => narrative(resource),
                "_content" => content(resource),
                _ => continue,
            };
            push_full_text(&param.code, &text, &mut out);
            continue;
        };
        // An expression that fails on this resource indexes nothing for its parameter.
        let nodes = expression.evaluate_on(&root, resource).unwrap_or_default();
        if param.kind == ParamType::Composite {
            for node in nodes {
                composite(param, node, resource, &mut out);
            }
        } else if resource_type == "ProjectMembership" && param.code == "profile-type" {
            for node in &nodes {
                if let Some(target_type) = reference_target_type(&node.to_json()) {
                    out.push(IndexValue::Token {
                        param: param.code.clone(),
                        system: None,
                        code: Some(target_type.to_string()),
                        text: None,
                    });
                }
            }
        } else if param.kind == ParamType::Special && param.code == "near" {
            for node in &nodes {
                out.extend(position(&param.code, &node.to_json()));
            }
        } else {
            for node in &nodes {
                values_of(param.kind, &param.code, node, &mut out);
            }
            if param.reference_view().is_some() {
                // Its references are its base's rows; its identifiers stay.
                let mut own = out.split_off(start);
                own.retain(|v| !matches!(v, IndexValue::Reference { .. }));
                out.append(&mut own);
            }
        }
        dedup_from(&mut out, start);
    }
    out
}

/// Removes repeated values among `out[start..]`, keeping the first.
fn dedup_from(out: &mut Vec<IndexValue>, start: usize) {
    let count = out.len() - start;
    if !(2..=MAX_DEDUP).contains(&count) {
        return;
    }
    let mut kept = start;
    for i in start..out.len() {
        if !out[start..kept].contains(&out[i]) {
            out.swap(kept, i);
            kept += 1;
        }
    }
    out.truncate(kept);
}

fn composite<'a>(
    param: &SearchParam,
    element: Node<'a>,
    resource: &'a Value,
    out: &mut Vec<IndexValue>,
) {
    let mut combinations: Vec<Vec<IndexValue>> = vec![Vec::new()];
    for ((kind, _), expression) in param.components.iter().zip(param.compiled_components()) {
        let mut values = Vec::new();
        for node in expression
            .evaluate_on(&element, resource)
            .unwrap_or_default()
        {
            values_of(*kind, &param.code, &node, &mut values);
        }
        values.retain(|v| {
            !matches!(
                v,
                IndexValue::IdentifierOfType { .. } | IndexValue::ReferenceIdentifier { .. }
            )
        });
        if values.is_empty() {
            return;
        }
        let mut next = Vec::new();
        'outer: for combination in &combinations {
            for value in &values {
                if next.len() == MAX_COMPOSITE_COMBINATIONS {
                    break 'outer;
                }
                let mut parts = combination.clone();
                parts.push(value.clone());
                next.push(parts);
            }
        }
        combinations = next;
    }
    out.extend(combinations.into_iter().map(|parts| IndexValue::Composite {
        param: param.code.clone(),
        parts,
    }));
}

/// The node's FHIR type: known, or inferred from the JSON.
fn node_type<'a>(node: &Node<'a>) -> Option<&'a str> {
    node.fhir_type.or_else(|| match node.value {
        Val::Json(Value::Object(map)) if map.contains_key("resourceType") => Some("Resource"),
        Val::Json(value @ Value::Object(_)) => infer_complex_type(value),
        _ => None,
    })
}

fn is_quantity(fhir_type: &str) -> bool {
    matches!(
        fhir_type,
        "Quantity" | "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity"
    )
}

fn string_member<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn values_of(kind: ParamType, param: &str, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    match kind {
        ParamType::Token => token(param, node, out),
        ParamType::String => string(param, node, out),
        ParamType::Date => date(param, node, out),
        ParamType::Number => {
            if let Some(value) = node.to_json().as_f64() {
                out.push(IndexValue::Number {
                    param: param.to_string(),
                    value,
                });
            }
        }
        ParamType::Quantity => quantity(param, node, out),
        ParamType::Reference => reference(param, node, out),
        ParamType::Uri => {
            if let Some(value) = node.to_json().as_str().filter(|s| !s.is_empty()) {
                out.push(IndexValue::Uri {
                    param: param.to_string(),
                    value: value.to_string(),
                });
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn token(param: &str, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    let plain = |code: String| IndexValue::Token {
        param: param.to_string(),
        system: None,
        code: Some(code),
        text: None,
    };
    let json = node.to_json();
    let value = &*json;
    match value {
        Value::Bool(b) => out.push(plain(b.to_string())),
        Value::String(s) if !s.is_empty() => out.push(plain(s.clone())),
        Value::Number(n) => out.push(plain(n.to_string())),
        Value::Object(_) => match node_type(node) {
            Some("CodeableConcept") => codeable_concept(param, value, out),
            // A CodeableConcept with text only has no shape of its own.
            None if value.get("text").is_some() => codeable_concept(param, value, out),
            Some("Coding") => coding(param, value, None, out),
            Some("Identifier") => identifier(param, value, out),
            Some("ContactPoint") => {
                if let Some(code) = string_member(value, "value") {
                    out.push(plain(code.to_string()));
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn codeable_concept(param: &str, value: &Value, out: &mut Vec<IndexValue>) {
    let text = string_member(value, "text");
    let codings = value.get("coding").and_then(Value::as_array);
    match codings {
        Some(codings) if !codings.is_empty() => {
            for c in codings {
                coding(param, c, text, out);
            }
        }
        _ => {
            if let Some(text) = text {
                out.push(IndexValue::Token {
                    param: param.to_string(),
                    system: None,
                    code: None,
                    text: Some(normalize(text)),
                });
            }
        }
    }
}

fn coding(param: &str, value: &Value, text: Option<&str>, out: &mut Vec<IndexValue>) {
    let system = string_member(value, "system");
    let code = string_member(value, "code");
    let text = text.or_else(|| string_member(value, "display"));
    if system.is_none() && code.is_none() && text.is_none() {
        return;
    }
    out.push(IndexValue::Token {
        param: param.to_string(),
        system: system.map(str::to_string),
        code: code.map(str::to_string),
        text: text.map(normalize),
    });
}

fn identifier(param: &str, value: &Value, out: &mut Vec<IndexValue>) {
    let system = string_member(value, "system");
    let Some(code) = string_member(value, "value") else {
        if let Some(system) = system {
            out.push(IndexValue::Token {
                param: param.to_string(),
                system: Some(system.to_string()),
                code: None,
                text: None,
            });
        }
        return;
    };
    let id_type = value.get("type");
    out.push(IndexValue::Token {
        param: param.to_string(),
        system: system.map(str::to_string),
        code: Some(code.to_string()),
        text: id_type
            .and_then(|t| string_member(t, "text"))
            .map(normalize),
    });
    let codings = id_type
        .and_then(|t| t.get("coding"))
        .and_then(Value::as_array);
    for c in codings.into_iter().flatten() {
        out.push(IndexValue::IdentifierOfType {
            param: param.to_string(),
            type_system: string_member(c, "system").map(str::to_string),
            type_code: string_member(c, "code").map(str::to_string),
            value: code.to_string(),
        });
    }
}

fn push_string(param: &str, text: &str, out: &mut Vec<IndexValue>) {
    if text.is_empty() {
        return;
    }
    out.push(IndexValue::String {
        param: param.to_string(),
        normalized: normalize(text),
        exact: text.to_string(),
    });
}

/// The strings of `value[key]`, a string or an array of them.
fn push_strings(param: &str, value: &Value, key: &str, out: &mut Vec<IndexValue>) {
    match value.get(key) {
        Some(Value::String(s)) => push_string(param, s, out),
        Some(Value::Array(items)) => {
            for item in items.iter().filter_map(Value::as_str) {
                push_string(param, item, out);
            }
        }
        _ => {}
    }
}

fn string(param: &str, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    let json = node.to_json();
    let value = &*json;
    let keys: &[&str] = match value {
        Value::String(s) => return push_string(param, s, out),
        Value::Object(_) => match node_type(node) {
            Some("HumanName") => &["family", "given", "prefix", "suffix", "text"],
            Some("Address") => &[
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
                "text",
            ],
            // HumanName or Address with text only.
            None => &["text"],
            _ => return,
        },
        _ => return,
    };
    for key in keys {
        push_strings(param, value, key, out);
    }
}

fn date(param: &str, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    let mut push = |low: i64, high: i64| {
        out.push(IndexValue::Date {
            param: param.to_string(),
            low,
            high,
        })
    };
    let json = node.to_json();
    let value = &*json;
    match value {
        Value::String(s) => {
            if let Some((low, high)) = date_range(s) {
                push(low, high);
            }
        }
        Value::Object(_) => match node_type(node) {
            Some("Period") => {
                let bound = |key: &str| value.get(key).and_then(Value::as_str).map(date_range);
                match (bound("start"), bound("end")) {
                    (None, None) | (Some(None), _) | (_, Some(None)) => {}
                    (start, end) => push(
                        start.flatten().map_or(i64::MIN, |(low, _)| low),
                        end.flatten().map_or(i64::MAX, |(_, high)| high),
                    ),
                }
            }
            Some("Timing") => {
                let events = value.get("event").and_then(Value::as_array);
                for event in events.into_iter().flatten().filter_map(Value::as_str) {
                    if let Some((low, high)) = date_range(event) {
                        push(low, high);
                    }
                }
            }
            _ => {}
        },
        _ => {}
    }
}

fn quantity_value(param: &str, fhir_type: &str, value: &Value) -> Option<IndexValue> {
    let number = value.get("value")?.as_f64()?;
    let text = |key: &str| string_member(value, key).map(str::to_string);
    Some(if fhir_type == "Money" {
        IndexValue::Quantity {
            param: param.to_string(),
            value: number,
            system: text("currency").map(|_| "urn:iso:std:iso:4217".to_string()),
            code: text("currency"),
            unit: None,
        }
    } else {
        IndexValue::Quantity {
            param: param.to_string(),
            value: number,
            system: text("system"),
            code: text("code"),
            unit: text("unit"),
        }
    })
}

fn quantity(param: &str, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    let json = node.to_json();
    let value = &*json;
    if let Some(number) = value.as_f64() {
        out.push(IndexValue::Quantity {
            param: param.to_string(),
            value: number,
            system: None,
            code: None,
            unit: None,
        });
        return;
    }
    match node_type(node) {
        Some("Money") => out.extend(quantity_value(param, "Money", value)),
        Some(t) if is_quantity(t) => out.extend(quantity_value(param, t, value)),
        Some("Range") => {
            for bound in ["low", "high"] {
                if let Some(b) = value.get(bound) {
                    out.extend(quantity_value(param, "Quantity", b));
                }
            }
        }
        _ => {}
    }
}

fn reference(param: &str, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    let json = node.to_json();
    let value = &*json;
    match value {
        // canonical, uri: the URL alone.
        Value::String(url) if !url.is_empty() => out.push(IndexValue::Reference {
            param: param.to_string(),
            url: url.clone(),
            target_type: None,
            target_id: None,
        }),
        Value::Object(map) => {
            if let (Some(Value::String(resource_type)), Some(Value::String(id))) =
                (map.get("resourceType"), map.get("id"))
            {
                // A resource in place, as in `Bundle.entry[0].resource`.
                out.push(IndexValue::Reference {
                    param: param.to_string(),
                    url: format!("{resource_type}/{id}"),
                    target_type: Some(resource_type.clone()),
                    target_id: Some(id.clone()),
                });
                return;
            }
            if let Some(url) = string_member(value, "reference") {
                let (target_type, target_id) = match split_reference(url) {
                    Some((t, id)) => (Some(t.to_string()), Some(id.to_string())),
                    None => (None, None),
                };
                out.push(IndexValue::Reference {
                    param: param.to_string(),
                    url: url.to_string(),
                    target_type,
                    target_id,
                });
            }
            if let Some(identifier) = value.get("identifier") {
                if let Some(id_value) = string_member(identifier, "value") {
                    out.push(IndexValue::ReferenceIdentifier {
                        param: param.to_string(),
                        system: string_member(identifier, "system").map(str::to_string),
                        value: id_value.to_string(),
                    });
                }
            }
        }
        _ => {}
    }
}

/// The resource type a Reference points at (`reference`, else `type`).
fn reference_target_type(value: &Value) -> Option<&str> {
    match string_member(value, "reference") {
        Some(url) => split_reference(url).map(|(t, _)| t),
        None => string_member(value, "type"),
    }
}

/// `near`: a Location.position as [latitude, longitude], both required.
fn position(param: &str, value: &Value) -> Option<IndexValue> {
    let coordinate = |key: &str| {
        value.get(key)?.as_f64().map(|value| IndexValue::Number {
            param: param.to_string(),
            value,
        })
    };
    Some(IndexValue::Composite {
        param: param.to_string(),
        parts: vec![coordinate("latitude")?, coordinate("longitude")?],
    })
}

// ---------------------------------------------------------------- full text

/// Most characters of text one `_text` or `_content` row holds.
const MAX_FULL_TEXT: usize = 4_000;

/// `_text` and `_content`: one string row (normalised text cut at
/// [`MAX_FULL_TEXT`] characters too, as folding may lengthen it).
fn push_full_text(param: &str, text: &str, out: &mut Vec<IndexValue>) {
    if !text.is_empty() {
        out.push(IndexValue::String {
            param: param.to_string(),
            normalized: normalize(text).chars().take(MAX_FULL_TEXT).collect(),
            exact: text.to_string(),
        });
    }
}

/// Text with whitespace collapsed to single spaces, trimmed, and cut at
/// [`MAX_FULL_TEXT`] characters.
#[derive(Default)]
struct Words {
    text: String,
    /// Characters in `text`, or [`MAX_FULL_TEXT`] once no more fit.
    chars: usize,
    /// A space is due before the next character.
    space: bool,
}

impl Words {
    fn full(&self) -> bool {
        self.chars >= MAX_FULL_TEXT
    }

    fn push(&mut self, c: char) {
        if c.is_whitespace() {
            self.space = true;
            return;
        }
        if self.full() {
            return;
        }
        if self.space && !self.text.is_empty() {
            if self.chars + 1 == MAX_FULL_TEXT {
                // No room for a word after the space.
                self.chars = MAX_FULL_TEXT;
                return;
            }
            self.text.push(' ');
            self.chars += 1;
        }
        self.space = false;
        self.text.push(c);
        self.chars += 1;
    }

    fn push_str(&mut self, s: &str) {
        for c in s.chars() {
            if self.full() {
                return;
            }
            self.push(c);
        }
    }
}

/// Inline XHTML elements, which do not separate words.
const INLINE_ELEMENTS: &[&str] = &[
    "a", "abbr", "b", "big", "cite", "code", "em", "i", "small", "span", "strong", "sub", "sup",
    "tt", "u",
];

/// The words of the narrative (`text.div`): tags stripped, the XML entities
/// and character references resolved, whitespace collapsed.
fn narrative(resource: &Value) -> String {
    let Some(div) = resource
        .get("text")
        .and_then(|text| text.get("div"))
        .and_then(Value::as_str)
    else {
        return String::new();
    };
    let mut words = Words::default();
    let mut rest = div;
    while let Some(c) = rest.chars().next() {
        if words.full() {
            break;
        }
        match c {
            '<' => {
                let (tag, after) = skip_markup(rest);
                let name = tag
                    .trim_start_matches(['<', '/'])
                    .split(|c: char| c.is_whitespace() || c == '/' || c == '>')
                    .next()
                    .unwrap_or("");
                let name = name.rsplit(':').next().unwrap_or(name);
                if !INLINE_ELEMENTS.iter().any(|e| e.eq_ignore_ascii_case(name)) {
                    words.push(' ');
                }
                rest = after;
            }
            '&' => {
                let (decoded, after) = entity(rest);
                words.push(decoded);
                rest = after;
            }
            c => {
                words.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    words.text
}

/// At a `<`: the markup (a tag, comment, CDATA section or declaration) and
/// what follows it. Quoted attribute values may hold `>`.
fn skip_markup(s: &str) -> (&str, &str) {
    for (open, close) in [("<!--", "-->"), ("<![CDATA[", "]]>")] {
        if let Some(inside) = s.strip_prefix(open) {
            let end = inside
                .find(close)
                .map_or(s.len(), |i| open.len() + i + close.len());
            return s.split_at(end);
        }
    }
    let mut quote = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return s.split_at(i + 1),
            _ => {}
        }
    }
    (s, "")
}

/// At a `&`: the character an entity or character reference stands for
/// (the `&` itself when it is not one) and what follows it.
fn entity(s: &str) -> (char, &str) {
    let after_amp = &s[1..];
    let decoded = after_amp
        .char_indices()
        .take(12)
        .find(|&(_, c)| c == ';')
        .and_then(|(end, _)| {
            let c = match &after_amp[..end] {
                "amp" => '&',
                "lt" => '<',
                "gt" => '>',
                "quot" => '"',
                "apos" => '\'',
                "nbsp" => ' ',
                name => {
                    let number = name.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)?
                }
            };
            Some((c, &after_amp[end + 1..]))
        });
    decoded.unwrap_or(('&', after_amp))
}

/// Keys `_content` leaves out wherever they occur: ids, metadata, the type
/// name, and base64 payloads (`data` of Binary, Attachment and Signature).
const CONTENT_SKIPPED: &[&str] = &["id", "meta", "resourceType", "data"];

/// Every string value of the resource in document order, space-separated
/// (whitespace collapsed, cut at [`MAX_FULL_TEXT`] characters); the
/// narrative (`text.div`) and [`CONTENT_SKIPPED`] keys left out.
fn content(resource: &Value) -> String {
    fn walk(value: &Value, parent: Option<&str>, words: &mut Words) {
        if words.full() {
            return;
        }
        match value {
            Value::String(s) => {
                words.push(' ');
                words.push_str(s);
            }
            Value::Array(items) => {
                for item in items {
                    walk(item, parent, words);
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    let skipped = CONTENT_SKIPPED.contains(&key.as_str())
                        || (key == "div" && parent == Some("text"));
                    if !skipped {
                        walk(item, Some(key), words);
                    }
                }
            }
            _ => {}
        }
    }
    let mut words = Words::default();
    walk(resource, None, &mut words);
    words.text
}

// ---------------------------------------------------------------- dates

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// The inclusive microsecond range (UTC) a FHIR date, dateTime or instant
/// covers at its precision: `1990` is all of 1990, `2020-05-01T10:00+02:00`
/// the minute 08:00 UTC. Without a zone the time is read as UTC. `None` when
/// the text is not a valid date.
pub fn date_range(text: &str) -> Option<(i64, i64)> {
    let b = text.as_bytes();
    let digits = |from: usize, len: usize| -> Option<u32> {
        let part = b.get(from..from + len)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'))
        })
    };
    let year = i64::from(digits(0, 4)?);
    if b.len() == 4 {
        return Some((
            days_from_civil(year, 1, 1) * MICROS_PER_DAY,
            days_from_civil(year + 1, 1, 1) * MICROS_PER_DAY - 1,
        ));
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = digits(5, 2).filter(|m| (1..=12).contains(m))?;
    if b.len() == 7 {
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return Some((
            days_from_civil(year, month, 1) * MICROS_PER_DAY,
            days_from_civil(next_year, next_month, 1) * MICROS_PER_DAY - 1,
        ));
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = digits(8, 2).filter(|d| (1..=days_in_month(year, month)).contains(d))?;
    let day_start = days_from_civil(year, month, day) * MICROS_PER_DAY;
    if b.len() == 10 {
        return Some((day_start, day_start + MICROS_PER_DAY - 1));
    }
    if b.get(10) != Some(&b'T') || b.get(13) != Some(&b':') {
        return None;
    }
    let hour = i64::from(digits(11, 2).filter(|h| *h < 24)?);
    let minute = i64::from(digits(14, 2).filter(|m| *m < 60)?);
    let mut pos = 16;
    let mut second = 0;
    let mut micros = 0;
    let mut step = 60 * MICROS_PER_SECOND;
    if b.get(pos) == Some(&b':') {
        second = i64::from(digits(pos + 1, 2).filter(|s| *s < 60)?);
        pos += 3;
        step = MICROS_PER_SECOND;
        if b.get(pos) == Some(&b'.') {
            pos += 1;
            let start = pos;
            while b.get(pos).is_some_and(u8::is_ascii_digit) {
                pos += 1;
            }
            let count = pos - start;
            if count == 0 {
                return None;
            }
            let kept = count.min(6);
            let fraction = i64::from(digits(start, kept)?);
            let scale = 10i64.pow(6 - kept as u32);
            micros = fraction * scale;
            step = scale;
        }
    }
    let offset = match b.get(pos) {
        None => 0,
        Some(b'Z') if b.len() == pos + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == pos + 6 && b[pos + 3] == b':' => {
            let hours = i64::from(digits(pos + 1, 2).filter(|h| *h <= 14)?);
            let minutes = i64::from(digits(pos + 4, 2).filter(|m| *m < 60)?);
            let seconds = (hours * 60 + minutes) * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    let low =
        day_start + ((hour * 60 + minute) * 60 + second - offset) * MICROS_PER_SECOND + micros;
    Some((low, low + step - 1))
}

// ---------------------------------------------------------------- strings

/// Search normalisation of strings: lower case, accents removed (combining
/// marks dropped; Latin-1 and Latin Extended-A letters folded to ASCII, e.g.
/// `é` -> `e`, `ß` -> `ss`, `Ł` -> `l`). Query values must be normalised the
/// same way.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else if ('\u{300}'..='\u{36f}').contains(&c) {
            // Combining diacritical marks (decomposed accents).
        } else if let Some(folded) = fold_latin(c) {
            out.push_str(folded);
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

fn fold_latin(c: char) -> Option<&'static str> {
    Some(match c as u32 {
        0xC0..=0xC5 | 0xE0..=0xE5 | 0x100..=0x105 => "a",
        0xC6 | 0xE6 => "ae",
        0xC7 | 0xE7 | 0x106..=0x10D => "c",
        0xD0 | 0xF0 | 0x10E..=0x111 => "d",
        0xC8..=0xCB | 0xE8..=0xEB | 0x112..=0x11B => "e",
        0x11C..=0x123 => "g",
        0x124..=0x127 => "h",
        0xCC..=0xCF | 0xEC..=0xEF | 0x128..=0x131 => "i",
        0x132..=0x133 => "ij",
        0x134..=0x135 => "j",
        0x136..=0x138 => "k",
        0x139..=0x142 => "l",
        0xD1 | 0xF1 | 0x143..=0x14B => "n",
        0xD2..=0xD6 | 0xD8 | 0xF2..=0xF6 | 0xF8 | 0x14C..=0x151 => "o",
        0x152..=0x153 => "oe",
        0x154..=0x159 => "r",
        0x15A..=0x161 | 0x17F => "s",
        0xDF => "ss",
        0x162..=0x167 => "t",
        0xDE | 0xFE => "th",
        0xD9..=0xDC | 0xF9..=0xFC | 0x168..=0x173 => "u",
        0x174..=0x175 => "w",
        0xDD | 0xFD | 0xFF | 0x176..=0x178 => "y",
        0x179..=0x17E => "z",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const YEAR_1990: i64 = 631_152_000 * MICROS_PER_SECOND;
    const YEAR_1991: i64 = 662_688_000 * MICROS_PER_SECOND;

    fn of<'v>(values: &'v [IndexValue], param: &str) -> Vec<&'v IndexValue> {
        values.iter().filter(|v| v.param() == param).collect()
    }

    fn token(
        param: &str,
        system: Option<&str>,
        code: Option<&str>,
        text: Option<&str>,
    ) -> IndexValue {
        IndexValue::Token {
            param: param.into(),
            system: system.map(Into::into),
            code: code.map(Into::into),
            text: text.map(Into::into),
        }
    }

    fn strings(values: &[IndexValue], param: &str) -> Vec<(String, String)> {
        of(values, param)
            .into_iter()
            .map(|v| match v {
                IndexValue::String {
                    normalized, exact, ..
                } => (normalized.clone(), exact.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "meta": {
                "lastUpdated": "2024-01-01T00:00:00Z",
                "tag": [{"system": "http://t", "code": "x"}],
                "profile": ["http://p/Patient"]
            },
            "identifier": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}], "text": "Medical record"},
                "system": "http://hospital/mrn",
                "value": "12345"
            }],
            "active": true,
            "name": [{"use": "official", "family": "Müller", "given": ["José", "Ann"], "prefix": ["Dr"], "text": "Dr José Ann Müller"}],
            "telecom": [
                {"system": "phone", "value": "+1 555 0100", "use": "home"},
                {"system": "email", "value": "jose@example.org"}
            ],
            "gender": "male",
            "birthDate": "1990",
            "address": [{"line": ["1 Rue Éluard", "Apt 2"], "city": "Lyon", "postalCode": "69001", "country": "FR"}],
            "generalPractitioner": [
                {"reference": "Practitioner/pr1"},
                {"reference": "https://other.org/fhir/R4/Organization/o1/_history/3"},
                {"identifier": {"system": "http://npi", "value": "999"}},
                {"reference": "#c1"}
            ]
        })
    }

    fn observation() -> Value {
        json!({
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {
                "coding": [
                    {"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"},
                    {"system": "http://snomed.info/sct", "code": "75367002"}
                ],
                "text": "Blood Pressure"
            },
            "subject": {"reference": "Patient/p1", "display": "José"},
            "performer": [{"reference": "Practitioner/pr1"}],
            "effectiveDateTime": "2020-05-01T10:00:00+02:00",
            "valueQuantity": {"value": 120.5, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
            "component": [
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                    "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
                },
                {
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                    "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
                }
            ]
        })
    }

    #[test]
    fn patient_values() {
        let values = extract(Registry::get(), &patient());
        assert!(of(&values, "_id").is_empty());
        assert!(of(&values, "_lastUpdated").is_empty());
        assert_eq!(
            of(&values, "_tag"),
            vec![&token("_tag", Some("http://t"), Some("x"), None)]
        );
        assert_eq!(
            of(&values, "_profile"),
            vec![&IndexValue::Uri {
                param: "_profile".into(),
                value: "http://p/Patient".into()
            }]
        );
        assert_eq!(
            of(&values, "identifier"),
            vec![
                &token(
                    "identifier",
                    Some("http://hospital/mrn"),
                    Some("12345"),
                    Some("medical record")
                ),
                &IndexValue::IdentifierOfType {
                    param: "identifier".into(),
                    type_system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
                    type_code: Some("MR".into()),
                    value: "12345".into(),
                }
            ]
        );
        let name = strings(&values, "name");
        let normalized: Vec<&str> = name.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            normalized,
            vec!["muller", "jose", "ann", "dr", "dr jose ann muller"]
        );
        assert_eq!(name[0].1, "Müller");
        assert_eq!(
            strings(&values, "family"),
            vec![("muller".to_string(), "Müller".to_string())]
        );
        assert_eq!(strings(&values, "given").len(), 2);
        assert_eq!(
            of(&values, "gender"),
            vec![&token("gender", None, Some("male"), None)]
        );
        assert_eq!(
            of(&values, "active"),
            vec![&token("active", None, Some("true"), None)]
        );
        assert_eq!(
            of(&values, "email"),
            vec![&token("email", None, Some("jose@example.org"), None)]
        );
        assert_eq!(
            of(&values, "phone"),
            vec![&token("phone", None, Some("+1 555 0100"), None)]
        );
        assert_eq!(of(&values, "telecom").len(), 2);
        assert_eq!(
            of(&values, "birthdate"),
            vec![&IndexValue::Date {
                param: "birthdate".into(),
                low: YEAR_1990,
                high: YEAR_1991 - 1
            }]
        );
        let address: Vec<String> = strings(&values, "address")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            address,
            vec!["1 rue eluard", "apt 2", "lyon", "69001", "fr"]
        );
        assert_eq!(strings(&values, "address-city").len(), 1);
        assert_eq!(
            of(&values, "general-practitioner"),
            vec![
                &IndexValue::Reference {
                    param: "general-practitioner".into(),
                    url: "Practitioner/pr1".into(),
                    target_type: Some("Practitioner".into()),
                    target_id: Some("pr1".into()),
                },
                &IndexValue::Reference {
                    param: "general-practitioner".into(),
                    url: "https://other.org/fhir/R4/Organization/o1/_history/3".into(),
                    target_type: Some("Organization".into()),
                    target_id: Some("o1".into()),
                },
                &IndexValue::ReferenceIdentifier {
                    param: "general-practitioner".into(),
                    system: Some("http://npi".into()),
                    value: "999".into(),
                },
                &IndexValue::Reference {
                    param: "general-practitioner".into(),
                    url: "#c1".into(),
                    target_type: None,
                    target_id: None,
                },
            ]
        );
        // `deceased` is false for a patient without a deceased element.
        assert_eq!(
            of(&values, "deceased"),
            vec![&token("deceased", None, Some("false"), None)]
        );
    }

    #[test]
    fn a_typed_reference_view_keeps_its_identifiers_only() {
        let observation = json!({
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"type": "Patient", "identifier": {"system": "urn:mrn", "value": "7"}}
        });
        let values = extract(Registry::get(), &observation);
        let identifier = |param: &str| {
            values.iter().any(|v| {
                matches!(v, IndexValue::ReferenceIdentifier { param: p, value, .. } if p == param && value == "7")
            })
        };
        assert!(identifier("subject") && identifier("patient"));
        assert!(!values
            .iter()
            .any(|v| matches!(v, IndexValue::Reference { param, .. } if param == "patient")));
    }

    #[test]
    fn observation_values() {
        let values = extract(Registry::get(), &observation());
        assert_eq!(
            of(&values, "code"),
            vec![
                &token(
                    "code",
                    Some("http://loinc.org"),
                    Some("85354-9"),
                    Some("blood pressure")
                ),
                &token(
                    "code",
                    Some("http://snomed.info/sct"),
                    Some("75367002"),
                    Some("blood pressure")
                ),
            ]
        );
        let subject = of(&values, "subject");
        assert_eq!(subject.len(), 1);
        assert!(
            matches!(subject[0], IndexValue::Reference { target_type: Some(t), target_id: Some(id), .. } if t == "Patient" && id == "p1")
        );
        // `patient` is `subject` where it is a Patient: found through the
        // `subject` value above, never written twice.
        assert!(of(&values, "patient").is_empty());
        assert_eq!(of(&values, "performer").len(), 1);
        // 2020-05-01T10:00:00+02:00 is 08:00:00 UTC, a one-second range.
        let low = (days_from_civil(2020, 5, 1) * 86_400 + 8 * 3600) * MICROS_PER_SECOND;
        assert_eq!(
            of(&values, "date"),
            vec![&IndexValue::Date {
                param: "date".into(),
                low,
                high: low + MICROS_PER_SECOND - 1
            }]
        );
        assert_eq!(
            of(&values, "value-quantity"),
            vec![&IndexValue::Quantity {
                param: "value-quantity".into(),
                value: 120.5,
                system: Some("http://unitsofmeasure.org".into()),
                code: Some("mm[Hg]".into()),
                unit: Some("mmHg".into()),
            }]
        );
        assert_eq!(of(&values, "component-value-quantity").len(), 2);
        let cvq = of(&values, "component-code-value-quantity");
        assert_eq!(cvq.len(), 2);
        let IndexValue::Composite { parts, .. } = cvq[1] else {
            panic!("{:?}", cvq[1]);
        };
        assert_eq!(
            parts[0],
            token(
                "component-code-value-quantity",
                Some("http://loinc.org"),
                Some("8462-4"),
                None
            )
        );
        assert!(matches!(parts[1], IndexValue::Quantity { value, .. } if value == 80.0));
        // code-value-quantity: two codings x one value.
        assert_eq!(of(&values, "code-value-quantity").len(), 2);
        assert!(of(&values, "code-value-concept").is_empty());
        // combo-code is code | component-code: searched through their rows
        // (two codings plus two component codings), not indexed again.
        assert!(of(&values, "combo-code").is_empty());
        assert_eq!(
            of(&values, "code").len() + of(&values, "component-code").len(),
            4
        );
        assert!(of(&values, "combo-code-value-quantity").is_empty());
    }

    #[test]
    fn open_effective_period_and_encounter_period() {
        let obs = json!({
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "effectivePeriod": {"start": "2021-03"}
        });
        let values = extract(Registry::get(), &obs);
        assert_eq!(
            of(&values, "date"),
            vec![&IndexValue::Date {
                param: "date".into(),
                low: days_from_civil(2021, 3, 1) * MICROS_PER_DAY,
                high: i64::MAX
            }]
        );
        assert_eq!(
            of(&values, "code"),
            vec![&token("code", None, None, Some("x"))]
        );
        let encounter = json!({
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "period": {"start": "2021-03-04T10:00:00Z", "end": "2021-03-04T11:30:00.5Z"}
        });
        let values = extract(Registry::get(), &encounter);
        let start = (days_from_civil(2021, 3, 4) * 86_400 + 10 * 3600) * MICROS_PER_SECOND;
        let end = start + 90 * 60 * MICROS_PER_SECOND + 500_000 + 100_000 - 1;
        assert_eq!(
            of(&values, "date"),
            vec![&IndexValue::Date {
                param: "date".into(),
                low: start,
                high: end
            }]
        );
        assert_eq!(
            of(&values, "class"),
            vec![&token(
                "class",
                Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"),
                Some("AMB"),
                None
            )]
        );
        // An open start.
        let encounter = json!({"resourceType": "Encounter", "period": {"end": "2021"}});
        let values = extract(Registry::get(), &encounter);
        assert_eq!(
            of(&values, "date"),
            vec![&IndexValue::Date {
                param: "date".into(),
                low: i64::MIN,
                high: days_from_civil(2022, 1, 1) * MICROS_PER_DAY - 1
            }]
        );
    }

    #[test]
    fn project_membership_values() {
        let membership = json!({
            "resourceType": "ProjectMembership",
            "project": {"reference": "Project/pj1"},
            "user": {"reference": "User/u1"},
            "profile": {"reference": "Practitioner/pr1"},
            "admin": true,
            "accessPolicy": {"reference": "AccessPolicy/ap1"},
            "access": [{"policy": {"reference": "AccessPolicy/ap2"}}],
            "externalId": "ext-1",
            "userName": "Zoë"
        });
        let values = extract(Registry::get(), &membership);
        assert_eq!(
            of(&values, "profile-type"),
            vec![&token("profile-type", None, Some("Practitioner"), None)]
        );
        assert_eq!(
            of(&values, "admin"),
            vec![&token("admin", None, Some("true"), None)]
        );
        assert!(of(&values, "active").is_empty());
        assert_eq!(of(&values, "access-policy").len(), 2);
        assert_eq!(
            of(&values, "external-id"),
            vec![&token("external-id", None, Some("ext-1"), None)]
        );
        assert_eq!(
            strings(&values, "user-name"),
            vec![("zoe".to_string(), "Zoë".to_string())]
        );
        for code in ["project", "user", "profile"] {
            assert_eq!(of(&values, code).len(), 1, "{code}");
        }
        let user = json!({
            "resourceType": "User",
            "firstName": "Ann",
            "lastName": "Lee",
            "email": "ann@example.org"
        });
        let values = extract(Registry::get(), &user);
        assert_eq!(strings(&values, "name").len(), 2);
        assert_eq!(
            of(&values, "email"),
            vec![&token("email", None, Some("ann@example.org"), None)]
        );
    }

    #[test]
    fn other_shapes() {
        let registry = Registry::get();
        // Range quantities, a CodeableConcept context, a canonical reference, a uri.
        let plan = json!({
            "resourceType": "PlanDefinition",
            "status": "active",
            "url": "http://example.org/pd",
            "useContext": [
                {"code": {"code": "age"}, "valueRange": {"low": {"value": 18, "unit": "a"}, "high": {"value": 65, "unit": "a"}}},
                {"code": {"code": "focus"}, "valueCodeableConcept": {"coding": [{"code": "x"}]}}
            ],
            "library": ["http://example.org/Library/lib"]
        });
        let values = extract(registry, &plan);
        assert_eq!(of(&values, "context-quantity").len(), 2);
        assert_eq!(
            of(&values, "context"),
            vec![&token("context", None, Some("x"), None)]
        );
        assert_eq!(
            of(&values, "url"),
            vec![&IndexValue::Uri {
                param: "url".into(),
                value: "http://example.org/pd".into()
            }]
        );
        assert_eq!(
            of(&values, "depends-on"),
            vec![&IndexValue::Reference {
                param: "depends-on".into(),
                url: "http://example.org/Library/lib".into(),
                target_type: None,
                target_id: None
            }]
        );
        // context-type-quantity: composite of a token and a Range.
        assert_eq!(of(&values, "context-type-quantity").len(), 2);
        assert_eq!(of(&values, "context-type-value").len(), 1);

        // Money as a quantity; numbers.
        let item = json!({
            "resourceType": "ChargeItem",
            "priceOverride": {"value": 12.5, "currency": "EUR"},
            "factorOverride": 0.5
        });
        let values = extract(registry, &item);
        assert_eq!(
            of(&values, "price-override"),
            vec![&IndexValue::Quantity {
                param: "price-override".into(),
                value: 12.5,
                system: Some("urn:iso:std:iso:4217".into()),
                code: Some("EUR".into()),
                unit: None
            }]
        );
        assert_eq!(
            of(&values, "factor-override"),
            vec![&IndexValue::Number {
                param: "factor-override".into(),
                value: 0.5
            }]
        );
        // Timing events.
        let request = json!({
            "resourceType": "CarePlan",
            "activity": [{"detail": {"scheduledTiming": {"event": ["2020-01-01"]}}}]
        });
        let values = extract(registry, &request);
        assert_eq!(of(&values, "activity-date").len(), 1);
        // Not a resource: nothing.
        assert!(extract(registry, &json!({"a": 1})).is_empty());
        assert!(extract(registry, &json!({"resourceType": "Nope"})).is_empty());
    }

    #[test]
    fn narrative_text() {
        let narrated = json!({
            "resourceType": "Patient",
            "text": {
                "status": "generated",
                "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">\n  <p>Jos&#233; <b>M</b>üller&amp;Co</p><!-- a <p> comment --><table><tr><td title=\"a>b\">Heart&nbsp;attack</td><td>&#x41;&lt;&unknown;</td></tr></table>\n</div>"
            }
        });
        assert_eq!(
            strings(&extract(Registry::get(), &narrated), "_text"),
            vec![(
                "jose muller&co heart attack a<&unknown;".to_string(),
                "José Müller&Co Heart attack A<&unknown;".to_string()
            )]
        );
        // No narrative, or an empty one: no row.
        assert!(of(&extract(Registry::get(), &patient()), "_text").is_empty());
        let empty = json!({"resourceType": "Patient", "text": {"div": "<div> </div>"}});
        assert!(of(&extract(Registry::get(), &empty), "_text").is_empty());
        // Bundle is not a DomainResource: no _text parameter.
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "text": {"div": "<div>x</div>"}});
        assert!(of(&extract(Registry::get(), &bundle), "_text").is_empty());
    }

    #[test]
    fn whole_resource_content() {
        let observation = json!({
            "resourceType": "Observation",
            "id": "o1",
            "meta": {"versionId": "3", "source": "http://src"},
            "text": {"status": "generated", "div": "<div>narrative</div>"},
            "status": "final",
            "code": {"coding": [{"id": "c1", "system": "http://loinc.org", "code": "8480-6"}], "text": "Systolic  \n BP"},
            "valueQuantity": {"value": 120, "unit": "mmHg"},
            "_status": {"extension": [{"url": "http://x", "valueString": "ÉTAT"}]},
            "contained": [{"resourceType": "Patient", "id": "p", "name": [{"family": "Lee"}]}],
            "note": [{"text": ""}, {"text": "ok"}],
            "presentedForm": [{"contentType": "text/plain", "data": "aGVsbG8="}]
        });
        let values = extract(Registry::get(), &observation);
        let exact = "generated final http://loinc.org 8480-6 Systolic BP mmHg http://x ÉTAT Lee ok text/plain";
        assert_eq!(
            strings(&values, "_content"),
            vec![(normalize(exact), exact.to_string())]
        );
        // Every type has _content, Bundle included.
        let bundle = json!({"resourceType": "Bundle", "type": "collection"});
        assert_eq!(
            strings(&extract(Registry::get(), &bundle), "_content"),
            vec![("collection".to_string(), "collection".to_string())]
        );
        let bare = json!({"resourceType": "Basic", "id": "b"});
        assert!(of(&extract(Registry::get(), &bare), "_content").is_empty());
    }

    #[test]
    fn full_text_is_capped() {
        let words: Vec<String> = (0..2000).map(|i| format!("Wörd{i}")).collect();
        let basic = json!({
            "resourceType": "Basic",
            "code": {"text": words.join("\n")},
            "text": {"div": format!("<div><p>{}</p></div>", words.join("</p><p>"))}
        });
        let values = extract(Registry::get(), &basic);
        for param in ["_text", "_content"] {
            let rows = strings(&values, param);
            let [(normalized, exact)] = rows.as_slice() else {
                panic!("{param}: {rows:?}");
            };
            assert_eq!(exact.chars().count(), MAX_FULL_TEXT, "{param}");
            assert!(exact.starts_with("Wörd0 Wörd1 "), "{param}");
            assert!(!exact.ends_with(' '), "{param}");
            assert_eq!(normalized.chars().count(), MAX_FULL_TEXT, "{param}");
            assert!(normalized.starts_with("word0 word1 "), "{param}");
        }
        // A space is not left dangling at the cut.
        let mut words = Words::default();
        words.push_str(&"a".repeat(MAX_FULL_TEXT - 1));
        words.push_str(" b");
        assert_eq!(words.text, "a".repeat(MAX_FULL_TEXT - 1));
        assert!(words.full());
        words.push_str("c");
        assert_eq!(words.text.len(), MAX_FULL_TEXT - 1);
    }

    #[test]
    fn location_position_for_near() {
        let location = json!({
            "resourceType": "Location",
            "name": "Clinic",
            "position": {"longitude": -72.519854, "latitude": 42.373222, "altitude": 0}
        });
        let values = extract(Registry::get(), &location);
        assert_eq!(
            of(&values, "near"),
            vec![&IndexValue::Composite {
                param: "near".into(),
                parts: vec![
                    IndexValue::Number {
                        param: "near".into(),
                        value: 42.373222
                    },
                    IndexValue::Number {
                        param: "near".into(),
                        value: -72.519854
                    },
                ],
            }]
        );
        for position in [
            json!({"latitude": 42.3}),
            json!({"longitude": 1}),
            json!({"latitude": "42", "longitude": 1}),
            json!({}),
        ] {
            let location = json!({"resourceType": "Location", "position": position});
            let values = extract(Registry::get(), &location);
            assert!(of(&values, "near").is_empty(), "{position}");
        }
    }

    #[test]
    fn dates_at_every_precision() {
        let day = |y, m, d| days_from_civil(y, m, d) * MICROS_PER_DAY;
        assert_eq!(date_range("1990"), Some((YEAR_1990, YEAR_1991 - 1)));
        assert_eq!(date_range("1970-01-01"), Some((0, MICROS_PER_DAY - 1)));
        assert_eq!(
            date_range("2024-02"),
            Some((day(2024, 2, 1), day(2024, 3, 1) - 1))
        );
        assert_eq!(
            date_range("2024-12"),
            Some((day(2024, 12, 1), day(2025, 1, 1) - 1))
        );
        assert_eq!(
            date_range("2024-02-29"),
            Some((day(2024, 2, 29), day(2024, 3, 1) - 1))
        );
        assert_eq!(date_range("2023-02-29"), None);
        assert_eq!(
            date_range("1970-01-01T00:01Z"),
            Some((60 * MICROS_PER_SECOND, 120 * MICROS_PER_SECOND - 1))
        );
        assert_eq!(
            date_range("1970-01-01T00:00:01-01:00"),
            Some((3601 * MICROS_PER_SECOND, 3602 * MICROS_PER_SECOND - 1))
        );
        assert_eq!(
            date_range("1970-01-01T00:00:00.25Z"),
            Some((250_000, 259_999))
        );
        assert_eq!(
            date_range("1970-01-01T00:00:00.1234567Z"),
            Some((123_456, 123_456))
        );
        assert_eq!(date_range("1969-12-31"), Some((-MICROS_PER_DAY, -1)));
        for bad in [
            "",
            "199",
            "1990-13",
            "1990-1",
            "1990-01-01T25:00Z",
            "x",
            "1990-01-01T10:00:00+2",
            "1990-01-01 10:00",
        ] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn normalization_folds_accents() {
        assert_eq!(normalize("Ångström ÉLÈVE"), "angstrom eleve");
        assert_eq!(normalize("Straße Łódź Œuvre"), "strasse lodz oeuvre");
        assert_eq!(normalize("e\u{301}cole"), "ecole");
        assert_eq!(normalize("ΣΟΦΊΑ"), "σοφία");
    }

    #[test]
    fn every_type_extracts_without_panicking() {
        let registry = Registry::get();
        let mut total = 0;
        for resource_type in crate::resource_types::all_resource_types() {
            // A grab bag of shapes under the names expressions commonly use.
            let resource = json!({
                "resourceType": resource_type,
                "id": "x1",
                "meta": {"tag": [{"code": "t"}], "source": "http://s"},
                "identifier": [{"system": "http://i", "value": "1"}],
                "status": "active",
                "code": {"coding": [{"system": "http://c", "code": "c"}]},
                "subject": {"reference": "Patient/p1"},
                "patient": {"reference": "Patient/p1"},
                "name": [{"family": "F", "given": ["G"]}],
                "date": "2020-01-01",
                "period": {"start": "2020"},
                "valueQuantity": {"value": 1},
                "useContext": [{"code": {"code": "x"}, "valueQuantity": {"value": 1}}],
                "url": "http://u",
                "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}],
                "telecom": [{"system": "email", "value": "a@b"}],
                "component": [{"code": {"text": "x"}, "valueString": "s"}],
                "text": {"div": "<div/>"},
                "effectiveTiming": {"event": ["2020"]},
                "occurrenceDateTime": "not a date",
                "onsetAge": {"value": 3}
            });
            total += extract(registry, &resource).len();
        }
        assert!(total > 500, "{total}");
    }

    #[test]
    fn timing() {
        let registry = Registry::get();
        let patient = patient();
        let observation = observation();
        let rounds = 2000;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(extract(registry, &patient));
        }
        let per_patient = start.elapsed() / rounds;
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(extract(registry, &observation));
        }
        let per_observation = start.elapsed() / rounds;
        eprintln!("extract: Patient {per_patient:?}, Observation {per_observation:?}");
    }
}
