//! A choice element (`deceased[x]`) takes one of its types: JSON schema
//! lets `deceasedBoolean` and `deceasedDateTime` sit side by side, and a
//! policy that hides or protects one form would not see the other.
//!
//! The choice elements of each definition are vendored
//! (`data/choice-elements.json`, see `data/README.md`); the walk follows
//! the schema's definitions so that elements which only look alike in
//! another definition (Encounter's `reasonCode` and `reasonReference`) are
//! left alone.

use serde_json::Value;

use crate::fhirpath::model::{model, Definition, Element};
use crate::{Issue, IssueCode};

/// The definition of the values of `element` in `definition` (a contained
/// resource's by its `resourceType`).
fn child_definition<'a>(definition: &str, element: &str, value: &'a Value) -> Option<&'a str> {
    match model().definition(definition)?.element(element)? {
        Element::Plain(d) if d.holds_resources => value["resourceType"].as_str(),
        Element::Plain(other) => Some(other.name),
        Element::Choice(_) => None,
    }
}

/// The choice elements of `definition` with their JSON names and types.
fn choices(
    definition: &str,
) -> impl Iterator<Item = (&'static str, &'static [(&'static str, &'static Definition)])> {
    model()
        .definition(definition)
        .into_iter()
        .flat_map(Definition::elements)
        .filter_map(|(name, element)| match element {
            Element::Choice(forms) => Some((name, forms.as_slice())),
            Element::Plain(_) => None,
        })
}

/// Every form of the choice element that the element at `path` (dot path
/// from `resource_type`, `component.valueQuantity`) is a form of, as the
/// same path to each form; empty when it is not one.
pub fn forms(resource_type: &str, path: &str) -> Vec<String> {
    let mut definition = resource_type;
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    };
    for step in parent.into_iter().flat_map(|p| p.split('.')) {
        match model().definition(definition).and_then(|d| d.element(step)) {
            Some(Element::Plain(next)) => definition = next.name,
            _ => return Vec::new(),
        }
    }
    choices(definition)
        .find(|(_, forms)| forms.iter().any(|(f, _)| *f == last))
        .map(|(_, forms)| {
            forms
                .iter()
                .map(|(form, _)| match parent {
                    Some(parent) => format!("{parent}.{form}"),
                    None => form.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One issue for each object anywhere in `resource` that holds two forms
/// of one choice element.
pub fn issues(resource_type: &str, resource: &Value) -> Vec<Issue> {
    let mut found = Vec::new();
    walk(
        resource,
        resource_type,
        &mut vec![Step::Key(resource_type)],
        &mut found,
    );
    found
}

/// Where the walk is; made into text only for an issue (writes validate
/// every resource, and most have none).
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn path_text(path: &[Step<'_>]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) if text.is_empty() => text.push_str(key),
            Step::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Step::Index(n) => text.push_str(&format!("[{n}]")),
        }
    }
    text
}

fn walk<'a>(value: &'a Value, definition: &str, path: &mut Vec<Step<'a>>, found: &mut Vec<Issue>) {
    let Value::Object(map) = value else {
        return;
    };
    for (element, forms) in choices(definition) {
        let present: Vec<&str> = forms
            .iter()
            .filter(|(f, _)| map.contains_key(*f))
            .map(|(f, _)| *f)
            .collect();
        if present.len() > 1 {
            found.push(
                Issue::error(
                    IssueCode::Structure,
                    format!(
                        "{} are forms of the one choice element {element}[x]: send only one",
                        present.join(" and ")
                    ),
                )
                .at(format!("{}.{element}[x]", path_text(path))),
            );
        }
    }
    for (key, child) in map {
        match child {
            Value::Object(_) => {
                if let Some(next) = child_definition(definition, key, child) {
                    path.push(Step::Key(key));
                    walk(child, next, path, found);
                    path.pop();
                }
            }
            Value::Array(items) => {
                path.push(Step::Key(key));
                for (n, item) in items.iter().enumerate() {
                    if let Some(next) = child_definition(definition, key, item) {
                        path.push(Step::Index(n));
                        walk(item, next, path, found);
                        path.pop();
                    }
                }
                path.pop();
            }
            _ => {}
        }
    }
}
