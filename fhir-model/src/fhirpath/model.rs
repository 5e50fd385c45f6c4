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

/// A schema definition: a resource, a data type, a primitive, or a
/// backbone element (`Patient_Contact`).
pub struct Definition {
    pub name: &'static str,
    /// `ResourceList`: any resource, typed by its `resourceType`.
    pub holds_resources: bool,
    primitive: bool,
    /// Set once, after every definition exists (elements refer to each other).
    elements: OnceLock<FastMap<&'static str, Element>>,
}

impl std::fmt::Debug for Definition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for Definition {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Definition {
    /// Element `name`.
    pub fn element(&'static self, name: &str) -> Option<&'static Element> {
        self.elements.get()?.get(name)
    }

    /// Every element, for walks over the schema.
    pub fn elements(&'static self) -> impl Iterator<Item = (&'static str, &'static Element)> {
        self.elements
            .get()
            .into_iter()
            .flat_map(|elements| elements.iter().map(|(k, v)| (*k, v)))
    }

    /// A primitive type (`string`, `dateTime`): its values are JSON scalars.
    pub fn is_primitive(&self) -> bool {
        self.primitive
    }
}

/// What an element of a definition holds.
#[derive(Debug)]
pub enum Element {
    /// One type (`ResourceList` for a resource in place).
    Plain(&'static Definition),
    /// A choice element's JSON names with their types (`valueQuantity`, `Quantity`).
    Choice(Vec<(&'static str, &'static Definition)>),
}

#[derive(Default)]
pub struct Model {
    definitions: FastMap<&'static str, &'static Definition>,
}

const CHOICE_ELEMENTS: &str = include_str!("../../data/choice-elements.json");

fn leak(s: &str) -> &'static str {
    // The model lives for the whole process (a static): its names do too.
    Box::leak(s.to_string().into_boxed_str())
}

/// A choice form's type from its suffix: `valueDateTime` of `value` is `dateTime`.
fn form_type(form: &str, element: &str, model: &Model) -> Option<&'static Definition> {
    let suffix = form.strip_prefix(element)?;
    let mut chars = suffix.chars();
    let first = chars.next()?;
    let primitive = format!("{}{}", first.to_ascii_lowercase(), chars.as_str());
    let found = [primitive.as_str(), suffix]
        .into_iter()
        .find_map(|name| model.definition(name));
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
            let name = leak(name);
            let definition: &'static Definition = Box::leak(Box::new(Definition {
                name,
                holds_resources: name == "ResourceList",
                primitive: name.starts_with(|c: char| c.is_ascii_lowercase()),
                elements: OnceLock::new(),
            }));
            model.definitions.insert(name, definition);
        }
        let choices: Value = serde_json::from_str(CHOICE_ELEMENTS).unwrap_or_default();
        for (name, definition) in &definitions {
            let mut elements = FastMap::default();
            for (element, property) in definition["properties"].as_object().into_iter().flatten() {
                let item = property.get("items").unwrap_or(property);
                let type_name = if item.get("enum").is_some() {
                    Some("code")
                } else {
                    item["$ref"].as_str().and_then(|r| r.rsplit('/').next())
                };
                if let Some(target) = type_name.and_then(|t| model.definition(t)) {
                    elements.insert(leak(element), Element::Plain(target));
                }
            }
            for (element, forms) in choices[name.as_str()].as_object().into_iter().flatten() {
                let forms = forms
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter_map(|form| Some((leak(form), form_type(form, element, &model)?)))
                    .collect();
                elements.insert(leak(element), Element::Choice(forms));
            }
            if let Some(definition) = model.definition(name) {
                let _ = definition.elements.set(elements);
            }
        }
        model
    })
}

impl Model {
    pub fn definition(&self, name: &str) -> Option<&'static Definition> {
        self.definitions.get(name).copied()
    }

    pub fn is_definition(&self, name: &str) -> bool {
        self.definitions.contains_key(name)
    }
}
