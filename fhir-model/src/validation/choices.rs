//! A choice element (`deceased[x]`) takes one of its types: JSON schema
//! lets `deceasedBoolean` and `deceasedDateTime` sit side by side, and a
//! policy that hides or protects one variant would not see the other.
//! The groups are read from the R4 schema: the properties of one definition
//! that share a name and differ by a type suffix.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use serde_json::Value;

use crate::{Issue, IssueCode};

/// For each property name that is a variant of a choice element, the
/// variants of its group (one definition's `deceasedBoolean`,
/// `deceasedDateTime`), and the element's name (`deceased`).
struct Choices {
    groups: HashMap<String, (String, HashSet<String>)>,
}

fn choices() -> &'static Choices {
    static CHOICES: OnceLock<Choices> = OnceLock::new();
    CHOICES.get_or_init(|| {
        let schema: Value = serde_json::from_str(super::R4_SCHEMA).unwrap_or_default();
        let definitions = schema["definitions"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let type_suffixes: HashSet<String> = definitions.keys().map(|t| capitalised(t)).collect();
        let mut groups = HashMap::new();
        for definition in definitions.values() {
            let Some(properties) = definition["properties"].as_object() else {
                continue;
            };
            let mut by_base: HashMap<&str, HashSet<String>> = HashMap::new();
            for name in properties.keys().filter(|n| !n.starts_with('_')) {
                for (at, c) in name.char_indices().skip(1) {
                    if c.is_ascii_uppercase() && type_suffixes.contains(&name[at..]) {
                        by_base.entry(&name[..at]).or_default().insert(name.clone());
                    }
                }
            }
            for (base, variants) in by_base.into_iter().filter(|(_, v)| v.len() > 1) {
                for variant in &variants {
                    groups.insert(variant.clone(), (base.to_string(), variants.clone()));
                }
            }
        }
        Choices { groups }
    })
}

/// Every form of the choice element that `name` is a form of
/// (`deceasedDateTime` → `deceasedBoolean`, `deceasedDateTime`); empty
/// when `name` is not one.
pub fn variants(name: &str) -> Vec<&'static str> {
    choices()
        .groups
        .get(name)
        .map(|(_, variants)| variants.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

fn capitalised(name: &str) -> String {
    let mut chars = name.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// One issue for each object anywhere in `resource` that holds two
/// variants of one choice element.
pub fn issues(resource_type: &str, resource: &Value) -> Vec<Issue> {
    let mut found = Vec::new();
    walk(resource, &mut vec![Step::Key(resource_type)], &mut found);
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

fn walk<'a>(value: &'a Value, path: &mut Vec<Step<'a>>, found: &mut Vec<Issue>) {
    match value {
        Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                path.push(Step::Index(n));
                walk(item, path, found);
                path.pop();
            }
        }
        Value::Object(map) => {
            let groups = &choices().groups;
            let mut reported: Vec<&str> = Vec::new();
            for key in map.keys() {
                let Some((base, variants)) = groups.get(key) else {
                    continue;
                };
                if reported.contains(&base.as_str()) {
                    continue;
                }
                let mut present: Vec<&str> = map
                    .keys()
                    .filter(|k| variants.contains(*k))
                    .map(String::as_str)
                    .collect();
                if present.len() > 1 {
                    present.sort_unstable();
                    reported.push(base);
                    found.push(
                        Issue::error(
                            IssueCode::Structure,
                            format!(
                                "{} are forms of the one choice element {base}[x]: send only one",
                                present.join(" and ")
                            ),
                        )
                        .at(format!("{}.{base}[x]", path_text(path))),
                    );
                }
            }
            for (key, child) in map {
                if matches!(child, Value::Object(_) | Value::Array(_)) {
                    path.push(Step::Key(key));
                    walk(child, path, found);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}
