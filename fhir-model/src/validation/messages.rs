//! Turns jsonschema's errors into issues a person can act on.

use std::collections::HashSet;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{JsonType, ValidationError};
use serde_json::Value;

use super::pointer_to_expression;
use crate::{Issue, IssueCode};

/// One issue per problem, in the order found, without duplicates.
pub(super) fn issues<'a>(
    resource_type: &str,
    errors: impl Iterator<Item = ValidationError<'a>>,
) -> Vec<Issue> {
    let mut flat = Vec::new();
    for error in errors {
        flatten(error, &mut flat);
    }
    // A string where FHIR wants a boolean or number also fails that primitive's pattern;
    // the type error says all there is to say.
    let mistyped: HashSet<String> = flat
        .iter()
        .filter(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }))
        .map(|e| e.instance_path().as_str().to_owned())
        .collect();
    let mut seen = HashSet::new();
    flat.iter()
        .filter(|e| {
            !(matches!(e.kind(), ValidationErrorKind::Pattern { .. })
                && mistyped.contains(e.instance_path().as_str()))
        })
        .flat_map(|e| describe(resource_type, e))
        .filter(|issue| seen.insert(issue.clone()))
        .collect()
}

/// A `oneOf` over resource types (contained resources, Bundle entries) fails as a whole; when
/// exactly one branch accepted the `resourceType`, that branch's errors are the ones to report.
fn flatten<'a>(error: ValidationError<'a>, out: &mut Vec<ValidationError<'a>>) {
    let Some(index) = accepted_branch(error.kind()) else {
        out.push(error);
        return;
    };
    if let ValidationErrorKind::OneOfNotValid { mut context }
    | ValidationErrorKind::AnyOf { mut context } = error.into_parts().kind
    {
        for inner in context.swap_remove(index) {
            flatten(inner, out);
        }
    }
}

/// The only branch of a failed `oneOf`/`anyOf` whose `const`s (such as `resourceType`) matched.
fn accepted_branch(kind: &ValidationErrorKind) -> Option<usize> {
    let (ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context }) =
        kind
    else {
        return None;
    };
    let mut accepted = context.iter().enumerate().filter(|(_, errors)| {
        !errors
            .iter()
            .any(|e| matches!(e.kind(), ValidationErrorKind::Constant { .. }))
    });
    match (accepted.next(), accepted.next()) {
        (Some((index, _)), None) => Some(index),
        _ => None,
    }
}

/// The issues one schema error stands for (several for several unknown elements).
fn describe(resource_type: &str, error: &ValidationError<'_>) -> Vec<Issue> {
    let at = pointer_to_expression(resource_type, error.instance_path().as_str());
    let value = error.instance();
    // The FHIR primitive whose definition raised the error, with what a valid value looks like.
    let primitive = primitive_of(error.schema_path().as_str())
        .and_then(|name| Some((name, primitive_hint(name)?)));
    let issue = match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            return unexpected
                .iter()
                .map(|name| {
                    Issue::error(
                        IssueCode::Structure,
                        format!("Unknown element '{name}' in {at}"),
                    )
                    .at(format!("{at}.{name}"))
                })
                .collect();
        }
        ValidationErrorKind::Required { property } => {
            let element = format!("{at}.{}", property.as_str().unwrap_or_default());
            return vec![Issue::error(
                IssueCode::Required,
                format!("Missing required element {element}"),
            )
            .at(element)];
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_noun(*t).to_owned(),
                TypeKind::Multiple(set) => {
                    set.iter().map(type_noun).collect::<Vec<_>>().join(" or ")
                }
            };
            let found = type_noun(JsonType::from(value.as_ref()));
            let mut text = format!("Expected {expected} at {at}, found {found}");
            if let Some((name, hint)) = primitive {
                text.push_str(&format!(" ({name}: {hint})"));
            }
            Issue::error(IssueCode::Structure, text)
        }
        ValidationErrorKind::Enum { options } => {
            let options = match options.as_ref() {
                Value::Array(options) => options.iter().map(show).collect::<Vec<_>>().join(", "),
                other => show(other),
            };
            Issue::error(
                IssueCode::Value,
                format!(
                    "Invalid value '{}' for {at}: expected one of {options}",
                    show(value)
                ),
            )
        }
        ValidationErrorKind::Constant { expected_value } => Issue::error(
            IssueCode::Value,
            format!(
                "Invalid value '{}' for {at}: expected '{}'",
                show(value),
                show(expected_value)
            ),
        ),
        ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
            let text = match value.get("resourceType").and_then(Value::as_str) {
                Some(name) => format!("Unknown resourceType '{name}' at {at}"),
                None => format!("{at} matches none of the allowed kinds of content"),
            };
            Issue::error(IssueCode::Structure, text)
        }
        ValidationErrorKind::Pattern { .. }
        | ValidationErrorKind::Minimum { .. }
        | ValidationErrorKind::MultipleOf { .. } => {
            let text = match primitive {
                Some((primitive, hint)) => {
                    format!("Invalid {primitive} '{}' at {at}: {hint}", show(value))
                }
                None => format!("Invalid value '{}' at {at}: {error}", show(value)),
            };
            Issue::error(IssueCode::Value, text)
        }
        _ => Issue::error(
            IssueCode::Invalid,
            format!("Invalid content at {at}: {error}"),
        ),
    };
    vec![issue.at(at)]
}

/// The FHIR primitive whose definition raised an error, from a schema path such as
/// `/definitions/date/pattern` (primitives are the lower-case definitions).
fn primitive_of(schema_path: &str) -> Option<&str> {
    let mut segments = schema_path.strip_prefix("/definitions/")?.split('/');
    let name = segments.next()?;
    let is_keyword_of_definition = segments.next().is_some() && segments.next().is_none();
    (is_keyword_of_definition && name.starts_with(|c: char| c.is_ascii_lowercase())).then_some(name)
}

/// What a valid value of a FHIR primitive looks like.
fn primitive_hint(primitive: &str) -> Option<&'static str> {
    Some(match primitive {
        "date" => "use YYYY, YYYY-MM or YYYY-MM-DD, e.g. 1990-12-31",
        "dateTime" => {
            "use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss with a time zone, \
             e.g. 2015-02-07T13:28:17+02:00"
        }
        "instant" => "use YYYY-MM-DDThh:mm:ss with a time zone, e.g. 2015-02-07T13:28:17.239Z",
        "time" => "use hh:mm:ss, e.g. 13:28:17",
        "id" => "use 1 to 64 letters, digits, '-' or '.'",
        "code" => "use text without leading, trailing or repeated whitespace, e.g. final",
        "uri" | "url" | "canonical" => "must not contain whitespace",
        "oid" => "use urn:oid: and dotted numbers, e.g. urn:oid:1.2.3.4",
        "uuid" => "use urn:uuid: and a lower-case UUID",
        "string" | "markdown" => "must not be empty",
        "boolean" => "use true or false, without quotes",
        "decimal" => "use a JSON number, e.g. 1.5",
        "integer" => "use a whole JSON number, e.g. 42",
        "positiveInt" => "use a whole JSON number of 1 or more",
        "unsignedInt" => "use a whole JSON number of 0 or more",
        _ => return None,
    })
}

fn type_noun(t: JsonType) -> &'static str {
    match t {
        JsonType::Null => "null",
        JsonType::Boolean => "a boolean",
        JsonType::Integer => "an integer",
        JsonType::Number => "a number",
        JsonType::String => "a string",
        JsonType::Array => "an array",
        JsonType::Object => "an object",
    }
}

/// A value as quoted in a message: strings without JSON quotes, long values cut short.
fn show(value: &Value) -> String {
    const MAX_CHARS: usize = 60;
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}
