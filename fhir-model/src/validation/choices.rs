//! A choice element (`deceased[x]`) takes one of its types: JSON schema
//! lets `deceasedBoolean` and `deceasedDateTime` sit side by side, and a
//! policy that hides or protects one form would not see the other.
//!
//! The choice elements of each definition are vendored
//! (`data/choice-elements.json`, see `data/README.md`); the walk follows
//! the schema's definitions so that elements which only look alike in
//! another definition (Encounter's `reasonCode` and `reasonReference`) are
//! left alone.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::{Issue, IssueCode};

const CHOICE_ELEMENTS: &str = include_str!("../../data/choice-elements.json");

/// One schema definition as the walk needs it.
#[derive(Default)]
struct Definition {
    /// Element name → the definition of its values (arrays' items too).
    children: HashMap<String, String>,
    /// Choice element name → its JSON names.
    choices: Vec<(String, Vec<String>)>,
}

fn definitions() -> &'static HashMap<String, Definition> {
    static DEFINITIONS: OnceLock<HashMap<String, Definition>> = OnceLock::new();
    DEFINITIONS.get_or_init(|| {
        let schema = super::schema_document().unwrap_or_default();
        let mut out: HashMap<String, Definition> = HashMap::new();
        for (name, definition) in schema["definitions"].as_object().into_iter().flatten() {
            let children = definition["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(element, property)| {
                    let reference = property["$ref"]
                        .as_str()
                        .or(property["items"]["$ref"].as_str())?;
                    let target = reference.rsplit('/').next()?;
                    Some((element.clone(), target.to_string()))
                })
                .collect();
            out.insert(
                name.clone(),
                Definition {
                    children,
                    choices: Vec::new(),
                },
            );
        }
        let choices: Value = serde_json::from_str(CHOICE_ELEMENTS).unwrap_or_default();
        for (name, elements) in choices.as_object().into_iter().flatten() {
            let definition = out.entry(name.clone()).or_default();
            for (element, forms) in elements.as_object().into_iter().flatten() {
                let forms = forms
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect();
                definition.choices.push((element.clone(), forms));
            }
        }
        out
    })
}

/// The definition of the values of `element` in `definition` (a contained
/// resource's by its `resourceType`).
fn child_definition<'a>(definition: &str, element: &str, value: &'a Value) -> Option<&'a str> {
    let target = definitions().get(definition)?.children.get(element)?;
    match target.as_str() {
        "ResourceList" => value["resourceType"].as_str(),
        other => Some(other),
    }
}

/// Every form of the choice element that the element at `path` (dot path
/// from `resource_type`, `component.valueQuantity`) is a form of, as the
/// same path to each form; empty when it is not one.
pub fn forms(resource_type: &str, path: &str) -> Vec<String> {
    let mut definition = resource_type.to_string();
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    };
    for step in parent.into_iter().flat_map(|p| p.split('.')) {
        match definitions()
            .get(&definition)
            .and_then(|d| d.children.get(step))
        {
            Some(next) => definition = next.clone(),
            None => return Vec::new(),
        }
    }
    let Some(found) = definitions().get(&definition) else {
        return Vec::new();
    };
    found
        .choices
        .iter()
        .find(|(_, forms)| forms.iter().any(|f| f == last))
        .map(|(_, forms)| {
            forms
                .iter()
                .map(|form| match parent {
                    Some(parent) => format!("{parent}.{form}"),
                    None => form.clone(),
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
    let Some(known) = definitions().get(definition) else {
        return;
    };
    for (element, forms) in &known.choices {
        let present: Vec<&str> = forms
            .iter()
            .filter(|f| map.contains_key(f.as_str()))
            .map(String::as_str)
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
