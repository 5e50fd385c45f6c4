//! The FHIR type of every element, from the vendored schemas: FHIRPath
//! navigation types each node it reaches (`Patient.gender` is a `code`,
//! `Observation.value` finds `valueQuantity` as a `Quantity`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use serde_json::Value;

/// FNV-1a: element lookups hash short names on every navigation step.
#[derive(Default)]
pub struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = hash;
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// What an element of a definition holds.
#[derive(Debug)]
pub enum Element {
    /// One type: a definition name (`HumanName`, `Patient_Contact`,
    /// `code`, or `ResourceList` for a resource in place).
    Plain(&'static str),
    /// A choice element's JSON names with their types (`valueQuantity`, `Quantity`).
    Choice(Vec<(&'static str, &'static str)>),
}

#[derive(Default)]
pub struct Model {
    definitions: FastMap<&'static str, FastMap<&'static str, Element>>,
}

const CHOICE_ELEMENTS: &str = include_str!("../../data/choice-elements.json");

fn leak(s: &str) -> &'static str {
    // The model lives for the whole process (a static): its names do too.
    Box::leak(s.to_string().into_boxed_str())
}

/// A choice form's type from its suffix: `valueDateTime` of `value` is `dateTime`.
fn form_type(form: &str, element: &str, model: &Model) -> Option<&'static str> {
    let suffix = form.strip_prefix(element)?;
    let mut chars = suffix.chars();
    let first = chars.next()?;
    let primitive = format!("{}{}", first.to_ascii_lowercase(), chars.as_str());
    let found = [primitive.as_str(), suffix]
        .into_iter()
        .find_map(|name| model.definitions.get_key_value(name).map(|(k, _)| *k));
    found
}

pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let schema = crate::validation::schema_document().unwrap_or_default();
        let mut model = Model::default();
        let definitions = schema["definitions"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for name in definitions.keys() {
            model.definitions.insert(leak(name), FastMap::default());
        }
        for (name, definition) in &definitions {
            let mut elements = FastMap::default();
            for (element, property) in definition["properties"].as_object().into_iter().flatten() {
                let item = property.get("items").unwrap_or(property);
                let type_name = if item.get("enum").is_some() {
                    Some("code")
                } else {
                    item["$ref"].as_str().and_then(|r| r.rsplit('/').next())
                };
                let Some(type_name) = type_name else {
                    continue;
                };
                let Some((type_name, _)) = model.definitions.get_key_value(type_name) else {
                    continue;
                };
                elements.insert(leak(element), Element::Plain(type_name));
            }
            let key = model
                .definitions
                .get_key_value(name.as_str())
                .map(|(k, _)| *k);
            if let Some(key) = key {
                model.definitions.insert(key, elements);
            }
        }
        let choices: Value = serde_json::from_str(CHOICE_ELEMENTS).unwrap_or_default();
        for (name, elements) in choices.as_object().into_iter().flatten() {
            for (element, forms) in elements.as_object().into_iter().flatten() {
                let forms: Vec<_> = forms
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|form| Some((leak(form), form_type(form, element, &model)?)))
                    .collect();
                if let Some(definition) = model.definitions.get_mut(name.as_str()) {
                    definition.insert(leak(element), Element::Choice(forms));
                }
            }
        }
        model
    })
}

impl Model {
    /// Element `name` of `definition`.
    pub fn element(&'static self, definition: &str, name: &str) -> Option<&'static Element> {
        self.definitions.get(definition)?.get(name)
    }

    pub fn is_definition(&self, name: &str) -> bool {
        self.definitions.contains_key(name)
    }

    /// A definition's elements, for walks over the schema.
    pub fn elements(
        &'static self,
        definition: &str,
    ) -> impl Iterator<Item = (&'static str, &'static Element)> {
        self.definitions
            .get(definition)
            .into_iter()
            .flat_map(|elements| elements.iter().map(|(k, v)| (*k, v)))
    }
}
