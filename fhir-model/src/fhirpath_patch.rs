//! FHIRPath Patch (<https://hl7.org/fhir/R4/fhirpatch.html>) over `serde_json::Value`.
//!
//! A patch is a `Parameters` resource whose parameters are all named `operation`; each one has
//! `part`s `type`, `path` and, depending on the type, `name`, `value`, `index`, `source` and
//! `destination`. [`apply`] reads the whole document first (so a malformed patch changes
//! nothing), then applies the operations in order to a copy of the resource and only writes the
//! copy back when every operation succeeded: a patch applies completely or not at all.
//!
//! # Operations
//!
//! * `add` — `path` must match exactly one element (an object); `value` is added to it as the
//!   child `name`. If that child is already a list the value is appended; if it is absent the
//!   value is set as a single value; if it already holds a single value the operation fails (the
//!   spec allows `add` on non-repeating elements only while they do not exist yet). This module
//!   does not know which FHIR elements repeat, so adding the *first* entry of a repeating element
//!   that is absent (say the first `Patient.identifier`) stores a single value: use `insert` with
//!   `index` 0 for that, which always creates a list.
//! * `insert` — `path` names a list (it must end in an element name, e.g. `Patient.identifier`
//!   or `Patient.name[0].given`) whose containing element must be exactly one; `value` goes in
//!   at `index` (0 ≤ `index` ≤ length). An absent list is created by inserting at index 0.
//! * `delete` — removes the element `path` matches; matching nothing is not an error, matching
//!   more than one is. Lists and objects left empty by the removal are removed too (FHIR allows
//!   neither), as is the `_name` extension sibling of a removed primitive.
//! * `replace` — `path` must match exactly one element, which becomes `value`.
//! * `move` — `path` names a list as for `insert`; the item at `source` is taken out and put back
//!   at `destination` (both 0-based and below the list's length; `destination` counts in the
//!   list as it is after the removal, which is the same as before it for a list of fixed length).
//!
//! # Values
//!
//! The value of a `value` part is its single `value[x]` member (`valueString`, `valueCoding`,
//! `valueHumanName`, ...) or its `resource` member, taken as is. A complex value may instead be
//! given as nested `part`s: each nested part becomes a member named after the part's `name`,
//! holding the nested part's value (found the same way, recursively); a name given more than
//! once becomes a list, a name given once a single value.
//!
//! # Paths
//!
//! A path is any FHIRPath expression (the engine of [`crate::fhirpath`]) that selects elements of
//! the resource: `Patient.identifier.where(system = 'urn:a').value`, `name.given.last()`,
//! `telecom.where(value.startsWith('555')).skip(1)`. A leading resource type must be the patched
//! resource's. A path that computes a value instead (`name.exists()`) is an error. `insert` and
//! `move` need the path to end in an element name, the list they change.
//!
//! # Errors
//!
//! Operations are numbered from 1 in messages, which name the operation's type and path:
//! `operation 2 (replace Patient.birthDate): the path matches no element`.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

use crate::fhirpath::{Expression, Val};

/// Why a FHIRPath Patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed: not a `Parameters` resource, a missing or
    /// mistyped part, an unknown operation type, a path that is not FHIRPath.
    #[error("invalid FHIRPath Patch: {0}")]
    Invalid(String),
    /// The patch is well formed but cannot be applied to this resource: a path that matches
    /// nothing or too much, an index out of range, a type that does not fit.
    #[error("FHIRPath Patch cannot be applied: {0}")]
    Unprocessable(String),
}

/// Applies the FHIRPath Patch `parameters` to `resource`. On error `resource` is left unchanged.
pub fn apply(resource: &mut Value, parameters: &Value) -> Result<(), PatchError> {
    let operations = parse_parameters(parameters)?;
    let mut working = resource.clone();
    for operation in &operations {
        operation.apply_to(&mut working)?;
    }
    *resource = working;
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// The patch document
// ----------------------------------------------------------------------------------------------

const PART_NAMES: [&str; 7] = [
    "type",
    "path",
    "name",
    "value",
    "index",
    "source",
    "destination",
];

struct Operation {
    /// "operation N (type path)", the start of every message about this operation.
    label: String,
    path: Expression,
    /// The path as written, for the check against the resource's type.
    source: String,
    action: Action,
}

enum Action {
    Add { name: String, value: Value },
    Insert { value: Value, index: usize },
    Delete,
    Replace { value: Value },
    Move { source: usize, destination: usize },
}

fn parse_parameters(parameters: &Value) -> Result<Vec<Operation>, PatchError> {
    let Some(document) = parameters.as_object() else {
        return Err(PatchError::Invalid(
            "the patch body must be a Parameters resource (a JSON object)".into(),
        ));
    };
    match document.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "the patch body must be a Parameters resource, not {other}"
            )))
        }
        None => {
            return Err(PatchError::Invalid(
                "the patch body must be a Parameters resource, but it has no resourceType".into(),
            ))
        }
    }
    let parameter = match document.get("parameter") {
        None => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(PatchError::Invalid(
                "Parameters.parameter must be a list".into(),
            ))
        }
    };
    parameter
        .iter()
        .enumerate()
        .map(|(i, p)| parse_operation(i + 1, p))
        .collect()
}

fn parse_operation(number: usize, parameter: &Value) -> Result<Operation, PatchError> {
    let invalid = |msg: String| PatchError::Invalid(format!("operation {number}: {msg}"));
    let Some(object) = parameter.as_object() else {
        return Err(invalid("is not a JSON object".into()));
    };
    match object.get("name").and_then(Value::as_str) {
        Some("operation") => {}
        Some(other) => {
            return Err(invalid(format!(
                "the parameter is named '{other}', but every parameter of a FHIRPath Patch \
                 must be named 'operation'"
            )))
        }
        None => {
            return Err(invalid(
                "the parameter has no name; it must be named 'operation'".into(),
            ))
        }
    }
    let Some(parts) = object.get("part").and_then(Value::as_array) else {
        return Err(invalid(
            "has no 'part' list; it needs at least a 'type' and a 'path' part".into(),
        ));
    };
    let mut found: BTreeMap<&str, &Value> = BTreeMap::new();
    for (i, part) in parts.iter().enumerate() {
        let Some(name) = part.get("name").and_then(Value::as_str) else {
            return Err(invalid(format!("part {} has no name", i + 1)));
        };
        if !PART_NAMES.contains(&name) {
            return Err(invalid(format!(
                "unknown part '{name}'; the parts of an operation are {}",
                PART_NAMES.join(", ")
            )));
        }
        if found.insert(name, part).is_some() {
            return Err(invalid(format!("part '{name}' is given more than once")));
        }
    }
    let type_code = string_part(&found, "type", &["valueCode", "valueString"]).map_err(invalid)?;
    let path_text = string_part(&found, "path", &["valueString"]).map_err(invalid)?;

    let label = format!("operation {number} ({type_code} {path_text})");
    let invalid = |msg: String| PatchError::Invalid(format!("{label}: {msg}"));
    let path =
        Expression::parse(path_text).map_err(|e| invalid(format!("cannot read the path: {e}")))?;
    let value = || -> Result<Value, PatchError> {
        let part = found
            .get("value")
            .ok_or_else(|| invalid("needs a 'value' part".into()))?;
        part_value(part).map_err(|e| invalid(format!("the 'value' part {e}")))
    };
    let integer = |name: &str| -> Result<usize, PatchError> {
        let part = found
            .get(name)
            .ok_or_else(|| invalid(format!("needs an '{name}' part")))?;
        match part.get("valueInteger") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(u) => usize::try_from(u)
                    .map_err(|_| invalid(format!("the '{name}' part is too large"))),
                None => Err(invalid(format!(
                    "the '{name}' part must be a non-negative integer, not {n}"
                ))),
            },
            _ => Err(invalid(format!("the '{name}' part needs a valueInteger"))),
        }
    };
    let list_path = || -> Result<(), PatchError> {
        match path.split_last_name() {
            Some(_) => Ok(()),
            None => Err(invalid(
                "the path must name a list, ending in an element name (like Patient.identifier)"
                    .into(),
            )),
        }
    };

    let action = match type_code {
        "add" => {
            let name = string_part(&found, "name", &["valueString"]).map_err(invalid)?;
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(format!(
                    "the 'name' part must be a single element name, not '{name}'"
                )));
            }
            Action::Add {
                name: name.to_owned(),
                value: value()?,
            }
        }
        "insert" => {
            list_path()?;
            Action::Insert {
                value: value()?,
                index: integer("index")?,
            }
        }
        "delete" => Action::Delete,
        "replace" => Action::Replace { value: value()? },
        "move" => {
            list_path()?;
            Action::Move {
                source: integer("source")?,
                destination: integer("destination")?,
            }
        }
        other => {
            return Err(invalid(format!(
                "unknown operation type '{other}'; expected add, insert, delete, replace or move"
            )))
        }
    };
    Ok(Operation {
        label,
        path,
        source: path_text.to_owned(),
        action,
    })
}

/// The string held by part `name` in one of `keys`.
fn string_part<'a>(
    found: &BTreeMap<&str, &'a Value>,
    name: &str,
    keys: &[&str],
) -> Result<&'a str, String> {
    let part = found
        .get(name)
        .ok_or_else(|| format!("has no '{name}' part"))?;
    keys.iter()
        .find_map(|key| part.get(*key).and_then(Value::as_str))
        .ok_or_else(|| format!("the '{name}' part needs a {}", keys.join(" or ")))
}

fn is_value_key(key: &str) -> bool {
    key.strip_prefix("value")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
}

/// The value a `part` carries: its single `value[x]` or `resource` member, or an object built
/// from its nested parts. Errors complete the sentence "the 'value' part ...".
fn part_value(part: &Value) -> Result<Value, String> {
    let object = part.as_object().ok_or("is not a JSON object")?;
    let mut values = object
        .iter()
        .filter(|(key, _)| is_value_key(key) || *key == "resource");
    match (values.next(), values.next()) {
        (Some((_, value)), None) => return Ok(value.clone()),
        (Some((a, _)), Some((b, _))) => {
            return Err(format!("has more than one value ({a} and {b})"))
        }
        (None, _) => {}
    }
    let parts = match object.get("part") {
        Some(Value::Array(parts)) if !parts.is_empty() => parts,
        _ => return Err("has no value[x] member and no nested parts".into()),
    };
    let mut built = Map::new();
    for (i, sub) in parts.iter().enumerate() {
        let name = sub
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("has a nested part {} without a name", i + 1))?;
        let value = part_value(sub).map_err(|e| format!("has a nested part '{name}' that {e}"))?;
        match built.get_mut(name) {
            Some(Value::Array(list)) => list.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                built.insert(name.to_owned(), value);
            }
        }
    }
    Ok(Value::Object(built))
}

// ----------------------------------------------------------------------------------------------
// Locations and resolution
// ----------------------------------------------------------------------------------------------

/// One step of a concrete location inside the resource.
#[derive(Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

type Location = Vec<Seg>;

fn get<'a>(root: &'a Value, location: &[Seg]) -> Option<&'a Value> {
    location.iter().try_fold(root, |value, seg| match seg {
        Seg::Key(key) => value.get(key.as_str()),
        Seg::Index(i) => value.get(*i),
    })
}

fn get_mut<'a>(root: &'a mut Value, location: &[Seg]) -> Option<&'a mut Value> {
    location.iter().try_fold(root, |value, seg| match seg {
        Seg::Key(key) => value.get_mut(key.as_str()),
        Seg::Index(i) => value.get_mut(*i),
    })
}

/// The locations of the elements `path` selects, in its order. The FHIRPath
/// engine answers references into the resource; each is found again by its
/// address, so that the patch can change it. A path that computes a value
/// (`name.exists()`, `'x'`) selects no element and is an error.
fn resolve(root: &Value, path: &Expression) -> Result<Vec<Location>, String> {
    let mut wanted: Vec<*const Value> = Vec::new();
    for node in path.evaluate(root).map_err(|e| e.to_string())? {
        match node.value {
            Val::Json(element) => wanted.push(element),
            _ => {
                return Err(
                    "the path computes a value instead of selecting elements of the resource"
                        .into(),
                )
            }
        }
    }
    let mut found: Vec<Option<Location>> = vec![None; wanted.len()];
    if !wanted.is_empty() {
        find_addresses(root, &mut Vec::new(), &wanted, &mut found);
    }
    // An element without a place in the resource (a primitive known only by
    // its `_name` extension) cannot be changed here.
    Ok(found.into_iter().flatten().collect())
}

fn find_addresses(
    value: &Value,
    location: &mut Location,
    wanted: &[*const Value],
    found: &mut [Option<Location>],
) {
    for (i, address) in wanted.iter().enumerate() {
        if std::ptr::eq(*address, value) {
            found[i] = Some(location.clone());
        }
    }
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                location.push(Seg::Key(key.clone()));
                find_addresses(child, location, wanted, found);
                location.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                location.push(Seg::Index(i));
                find_addresses(child, location, wanted, found);
                location.pop();
            }
        }
        _ => {}
    }
}

/// Removes the element at `location` (with its `_name` extension sibling), then any list or
/// object the removal left empty, up to but not including the resource itself.
fn remove(root: &mut Value, location: &[Seg]) {
    let Some((last, parent_location)) = location.split_last() else {
        return;
    };
    match (get_mut(root, parent_location), last) {
        (Some(Value::Object(object)), Seg::Key(key)) => {
            object.remove(key);
            object.remove(&format!("_{key}"));
        }
        (Some(Value::Array(list)), Seg::Index(i)) if *i < list.len() => {
            list.remove(*i);
            if let Some((Seg::Key(key), grandparent)) = parent_location.split_last() {
                let extension_key = format!("_{key}");
                if let Some(Value::Object(object)) = get_mut(root, grandparent) {
                    if let Some(Value::Array(extensions)) = object.get_mut(&extension_key) {
                        if *i < extensions.len() {
                            extensions.remove(*i);
                        }
                        if extensions.iter().all(Value::is_null) {
                            object.remove(&extension_key);
                        }
                    }
                }
            }
        }
        _ => return,
    }
    let emptied = match get(root, parent_location) {
        Some(Value::Object(object)) => object.is_empty(),
        Some(Value::Array(list)) => list.is_empty(),
        _ => false,
    };
    if emptied && !parent_location.is_empty() {
        remove(root, parent_location);
    }
}

// ----------------------------------------------------------------------------------------------
// Applying operations
// ----------------------------------------------------------------------------------------------

impl Operation {
    fn fail(&self, message: impl std::fmt::Display) -> PatchError {
        PatchError::Unprocessable(format!("{}: {message}", self.label))
    }

    fn apply_to(&self, root: &mut Value) -> Result<(), PatchError> {
        let Some(resource_type) = root.as_object().map(|o| o.get("resourceType")) else {
            return Err(self.fail("the resource to patch is not a JSON object"));
        };
        if let Some(wanted) = self.path.leading_type() {
            if resource_type.and_then(Value::as_str) != Some(wanted) {
                return Err(self.fail(format!(
                    "the path starts with {wanted}, but the resource is {}",
                    resource_type
                        .and_then(Value::as_str)
                        .map_or_else(|| "of unknown type".to_owned(), |t| format!("a {t}"))
                )));
            }
        }
        // Checked against the resource's type: a misspelt element is a
        // mistake in the patch, not a path that happens to match nothing.
        if let Some(resource_type) = resource_type.and_then(Value::as_str) {
            Expression::parse_strict(&self.source, resource_type, &[])
                .map_err(|e| PatchError::Invalid(format!("{}: {e}", self.label)))?;
        }
        match &self.action {
            Action::Add { name, value } => self.add(root, name, value),
            Action::Insert { value, index } => self.insert(root, value, *index),
            Action::Delete => self.delete(root),
            Action::Replace { value } => {
                let location = self.single(root)?;
                match get_mut(root, &location) {
                    Some(target) if !location.is_empty() => {
                        *target = value.clone();
                        Ok(())
                    }
                    _ => Err(self.fail("replace cannot replace the whole resource")),
                }
            }
            Action::Move {
                source,
                destination,
            } => self.move_item(root, *source, *destination),
        }
    }

    fn resolve(&self, root: &Value, path: &Expression) -> Result<Vec<Location>, PatchError> {
        resolve(root, path).map_err(|e| self.fail(e))
    }

    /// The one location the path matches.
    fn single(&self, root: &Value) -> Result<Location, PatchError> {
        let mut locations = self.resolve(root, &self.path)?;
        match locations.len() {
            0 => Err(self.fail("the path matches no element")),
            1 => Ok(locations.remove(0)),
            n => Err(self.fail(format!(
                "the path matches {n} elements but must match exactly one; narrow it with an \
                 index, first() or where()"
            ))),
        }
    }

    fn add(&self, root: &mut Value, name: &str, value: &Value) -> Result<(), PatchError> {
        let location = self.single(root)?;
        let Some(Value::Object(target)) = get_mut(root, &location) else {
            return Err(self.fail(format!(
                "the path matches a primitive value, which cannot have a child element '{name}'"
            )));
        };
        match target.get_mut(name) {
            None | Some(Value::Null) => {
                target.insert(name.to_owned(), value.clone());
                Ok(())
            }
            Some(Value::Array(list)) => {
                list.push(value.clone());
                Ok(())
            }
            Some(_) => Err(self.fail(format!(
                "element '{name}' already has a value and is not a list; use replace to change it"
            ))),
        }
    }

    fn delete(&self, root: &mut Value) -> Result<(), PatchError> {
        let locations = self.resolve(root, &self.path)?;
        match locations.as_slice() {
            [] => Ok(()),
            [location] if location.is_empty() => {
                Err(self.fail("delete cannot delete the whole resource"))
            }
            [location] => {
                remove(root, location);
                Ok(())
            }
            many => Err(self.fail(format!(
                "the path matches {} elements, but delete removes only one; narrow it with an \
                 index, first() or where()",
                many.len()
            ))),
        }
    }

    /// The object holding the list the path names, and the list's element name.
    fn list_owner<'a>(
        &self,
        root: &'a mut Value,
    ) -> Result<(&'a mut Map<String, Value>, &str), PatchError> {
        let Some((owner_path, name)) = self.path.split_last_name() else {
            return Err(self.fail("the path must end in the name of a list"));
        };
        let mut owners = match &owner_path {
            Some(owner_path) => self.resolve(root, owner_path)?,
            None => vec![Vec::new()],
        };
        let owner = match owners.len() {
            0 => {
                return Err(self.fail(format!(
                    "no element matches the path to hold the list '{name}'"
                )))
            }
            1 => owners.remove(0),
            n => {
                return Err(self.fail(format!(
                    "the path matches {n} lists named '{name}' but must match exactly one; narrow \
                     it with an index, first() or where()"
                )))
            }
        };
        match get_mut(root, &owner) {
            Some(Value::Object(object)) => Ok((object, name)),
            _ => Err(self.fail(format!(
                "the element that should hold the list '{name}' is a primitive value"
            ))),
        }
    }

    fn insert(&self, root: &mut Value, value: &Value, index: usize) -> Result<(), PatchError> {
        let (owner, name) = self.list_owner(root)?;
        let length = match owner.get_mut(name) {
            None | Some(Value::Null) if index == 0 => {
                owner.insert(name.to_owned(), Value::Array(vec![value.clone()]));
                return Ok(());
            }
            None | Some(Value::Null) => {
                return Err(self.fail(format!(
                    "index {index} is out of range: the list '{name}' is empty, so the index \
                     must be 0"
                )))
            }
            Some(Value::Array(list)) if index <= list.len() => {
                list.insert(index, value.clone());
                list.len()
            }
            Some(Value::Array(list)) => {
                return Err(self.fail(format!(
                    "index {index} is out of range: the list '{name}' has {} items, so the \
                     index must be at most {}",
                    list.len(),
                    list.len()
                )))
            }
            Some(_) => return Err(self.fail(format!("'{name}' holds a single value, not a list"))),
        };
        if let Some(Value::Array(extensions)) = owner.get_mut(&format!("_{name}")) {
            if extensions.len() + 1 == length {
                extensions.insert(index, Value::Null);
            }
        }
        Ok(())
    }

    fn move_item(
        &self,
        root: &mut Value,
        source: usize,
        destination: usize,
    ) -> Result<(), PatchError> {
        let (owner, name) = self.list_owner(root)?;
        let length = match owner.get(name) {
            Some(Value::Array(list)) => list.len(),
            None | Some(Value::Null) => 0,
            Some(_) => return Err(self.fail(format!("'{name}' holds a single value, not a list"))),
        };
        for (what, index) in [("source", source), ("destination", destination)] {
            if index >= length {
                return Err(self.fail(format!(
                    "{what} index {index} is out of range: the list '{name}' has {length} items"
                )));
            }
        }
        for key in [name.to_owned(), format!("_{name}")] {
            if let Some(Value::Array(list)) = owner.get_mut(&key) {
                if list.len() == length {
                    let item = list.remove(source);
                    list.insert(destination, item);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Vec<Value>) -> Value {
        json!({ "name": "operation", "part": parts })
    }

    fn patch(operations: Vec<Value>) -> Value {
        json!({ "resourceType": "Parameters", "parameter": operations })
    }

    fn part(name: &str, key: &str, value: Value) -> Value {
        let mut object = Map::new();
        object.insert("name".into(), json!(name));
        object.insert(key.into(), value);
        Value::Object(object)
    }

    fn kind(code: &str) -> Value {
        part("type", "valueCode", json!(code))
    }

    fn path(text: &str) -> Value {
        part("path", "valueString", json!(text))
    }

    fn int(name: &str, value: i64) -> Value {
        part(name, "valueInteger", json!(value))
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "birthDate": "1970-01-01",
            "identifier": [
                { "system": "urn:a", "value": "1" },
                { "system": "urn:b", "value": "2" },
                { "system": "urn:c", "value": "3" }
            ],
            "telecom": [
                { "system": "email", "value": "x@example.org" },
                { "system": "phone", "value": "555-1234" }
            ],
            "name": [
                { "family": "Smith", "given": ["Ann", "Beth"] },
                { "family": "Jones", "use": "maiden" }
            ]
        })
    }

    fn applied(operations: Vec<Value>) -> Result<Value, PatchError> {
        let mut resource = patient();
        apply(&mut resource, &patch(operations)).map(|()| resource)
    }

    fn unprocessable(operations: Vec<Value>) -> String {
        match applied(operations) {
            Err(PatchError::Unprocessable(message)) => message,
            other => panic!("expected Unprocessable, got {other:?}"),
        }
    }

    fn invalid(body: &Value) -> String {
        match apply(&mut patient(), body) {
            Err(PatchError::Invalid(message)) => message,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn fhirpath_patch_replace_primitive() {
        let result = applied(vec![op(vec![
            kind("replace"),
            path("Patient.birthDate"),
            part("value", "valueDate", json!("1980-02-03")),
        ])])
        .unwrap();
        assert_eq!(result["birthDate"], "1980-02-03");
    }

    #[test]
    fn fhirpath_patch_replace_through_where() {
        let result = applied(vec![op(vec![
            kind("replace"),
            path("Patient.telecom.where(system='phone').value"),
            part("value", "valueString", json!("555-9999")),
        ])])
        .unwrap();
        assert_eq!(result["telecom"][1]["value"], "555-9999");
        assert_eq!(result["telecom"][0]["value"], "x@example.org");
    }

    #[test]
    fn fhirpath_patch_replace_complex_value() {
        let result = applied(vec![op(vec![
            kind("replace"),
            path("Patient.identifier.where(system = 'urn:b')"),
            part(
                "value",
                "valueIdentifier",
                json!({ "system": "urn:z", "value": "26" }),
            ),
        ])])
        .unwrap();
        assert_eq!(
            result["identifier"][1],
            json!({ "system": "urn:z", "value": "26" })
        );
    }

    #[test]
    fn fhirpath_patch_replace_errors() {
        let message = unprocessable(vec![op(vec![
            kind("replace"),
            path("Patient.gender"),
            part("value", "valueCode", json!("female")),
        ])]);
        assert_eq!(
            message,
            "operation 1 (replace Patient.gender): the path matches no element"
        );
        let message = unprocessable(vec![op(vec![
            kind("replace"),
            path("Patient.identifier.system"),
            part("value", "valueUri", json!("urn:x")),
        ])]);
        assert!(message.contains("matches 3 elements"), "{message}");
    }

    #[test]
    fn fhirpath_patch_add() {
        let result = applied(vec![
            op(vec![
                kind("add"),
                path("Patient"),
                part("name", "valueString", json!("gender")),
                part("value", "valueCode", json!("female")),
            ]),
            op(vec![
                kind("add"),
                path("Patient"),
                part("name", "valueString", json!("identifier")),
                part(
                    "value",
                    "valueIdentifier",
                    json!({ "system": "urn:d", "value": "4" }),
                ),
            ]),
            op(vec![
                kind("add"),
                path("Patient.name.first()"),
                part("name", "valueString", json!("given")),
                part("value", "valueString", json!("Cleo")),
            ]),
        ])
        .unwrap();
        assert_eq!(result["gender"], "female");
        assert_eq!(result["identifier"][3]["system"], "urn:d");
        assert_eq!(result["name"][0]["given"], json!(["Ann", "Beth", "Cleo"]));
    }

    #[test]
    fn fhirpath_patch_add_nested_parts() {
        let result = applied(vec![op(vec![
            kind("add"),
            path("Patient"),
            part("name", "valueString", json!("contact")),
            json!({ "name": "value", "part": [
                { "name": "gender", "valueCode": "male" },
                { "name": "name", "part": [
                    { "name": "family", "valueString": "Doe" },
                    { "name": "given", "valueString": "J" },
                    { "name": "given", "valueString": "K" }
                ]}
            ]}),
        ])])
        .unwrap();
        assert_eq!(
            result["contact"],
            json!({ "gender": "male", "name": { "family": "Doe", "given": ["J", "K"] } })
        );
    }

    #[test]
    fn fhirpath_patch_add_errors() {
        let message = unprocessable(vec![op(vec![
            kind("add"),
            path("Patient"),
            part("name", "valueString", json!("birthDate")),
            part("value", "valueDate", json!("2000-01-01")),
        ])]);
        assert!(message.contains("already has a value"), "{message}");
        let message = unprocessable(vec![op(vec![
            kind("add"),
            path("Patient.birthDate"),
            part("name", "valueString", json!("x")),
            part("value", "valueString", json!("y")),
        ])]);
        assert!(message.contains("primitive"), "{message}");
    }

    #[test]
    fn fhirpath_patch_insert() {
        let result = applied(vec![
            op(vec![
                kind("insert"),
                path("Patient.identifier"),
                part("value", "valueIdentifier", json!({ "value": "first" })),
                int("index", 0),
            ]),
            op(vec![
                kind("insert"),
                path("Patient.identifier"),
                part("value", "valueIdentifier", json!({ "value": "last" })),
                int("index", 4),
            ]),
            op(vec![
                kind("insert"),
                path("Patient.name[1].given"),
                part("value", "valueString", json!("Mia")),
                int("index", 0),
            ]),
        ])
        .unwrap();
        let values: Vec<&Value> = result["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["value"])
            .collect();
        assert_eq!(
            values,
            [
                &json!("first"),
                &json!("1"),
                &json!("2"),
                &json!("3"),
                &json!("last")
            ]
        );
        assert_eq!(result["name"][1]["given"], json!(["Mia"]));
    }

    #[test]
    fn fhirpath_patch_insert_errors() {
        let message = unprocessable(vec![op(vec![
            kind("insert"),
            path("Patient.identifier"),
            part("value", "valueIdentifier", json!({ "value": "x" })),
            int("index", 4),
        ])]);
        assert!(message.contains("index 4 is out of range"), "{message}");
        let message = unprocessable(vec![op(vec![
            kind("insert"),
            path("Patient.name.given"),
            part("value", "valueString", json!("x")),
            int("index", 0),
        ])]);
        assert!(message.contains("matches 2 lists"), "{message}");
        let message = invalid(&patch(vec![op(vec![
            kind("insert"),
            path("Patient.identifier[0]"),
            part("value", "valueIdentifier", json!({ "value": "x" })),
            int("index", 0),
        ])]));
        assert!(message.contains("must name a list"), "{message}");
    }

    #[test]
    fn fhirpath_patch_delete() {
        let result = applied(vec![
            op(vec![
                kind("delete"),
                path("Patient.identifier.where(system = 'urn:b')"),
            ]),
            op(vec![kind("delete"), path("Patient.telecom[0]")]),
            op(vec![kind("delete"), path("Patient.gender")]),
            op(vec![kind("delete"), path("Patient.name.last().use")]),
        ])
        .unwrap();
        assert_eq!(result["identifier"].as_array().unwrap().len(), 2);
        assert_eq!(result["identifier"][1]["system"], "urn:c");
        assert_eq!(
            result["telecom"],
            json!([{ "system": "phone", "value": "555-1234" }])
        );
        assert_eq!(result["name"][1], json!({ "family": "Jones" }));
    }

    #[test]
    fn fhirpath_patch_delete_prunes_empty_containers() {
        let mut resource = json!({
            "resourceType": "Patient",
            "name": [{ "given": ["Ann"], "_given": [{ "id": "g" }] }],
            "telecom": [{ "value": "1" }]
        });
        apply(
            &mut resource,
            &patch(vec![
                op(vec![
                    kind("delete"),
                    path("Patient.name.given.where($this = 'Ann')"),
                ]),
                op(vec![kind("delete"), path("Patient.telecom.value")]),
            ]),
        )
        .unwrap();
        assert_eq!(resource, json!({ "resourceType": "Patient" }));
    }

    #[test]
    fn fhirpath_patch_delete_many_is_an_error() {
        let message = unprocessable(vec![op(vec![kind("delete"), path("Patient.identifier")])]);
        assert!(message.contains("matches 3 elements"), "{message}");
    }

    #[test]
    fn fhirpath_patch_move() {
        let result = applied(vec![op(vec![
            kind("move"),
            path("Patient.identifier"),
            int("source", 2),
            int("destination", 0),
        ])])
        .unwrap();
        let systems: Vec<&Value> = result["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["system"])
            .collect();
        assert_eq!(systems, [&json!("urn:c"), &json!("urn:a"), &json!("urn:b")]);
    }

    #[test]
    fn fhirpath_patch_move_out_of_range() {
        let message = unprocessable(vec![op(vec![
            kind("move"),
            path("Patient.identifier"),
            int("source", 0),
            int("destination", 3),
        ])]);
        assert_eq!(
            message,
            "operation 1 (move Patient.identifier): destination index 3 is out of range: the \
             list 'identifier' has 3 items"
        );
    }

    #[test]
    fn fhirpath_patch_path_forms() {
        let replace = |text: &str| {
            let mut resource = patient();
            apply(
                &mut resource,
                &patch(vec![op(vec![
                    kind("replace"),
                    path(text),
                    part("value", "valueString", json!("X")),
                ])]),
            )
            .map(|()| resource)
        };
        assert_eq!(
            replace("Patient.identifier[1].value").unwrap()["identifier"][1]["value"],
            "X"
        );
        assert_eq!(
            replace("Patient.identifier.last().value").unwrap()["identifier"][2]["value"],
            "X"
        );
        assert_eq!(
            replace("identifier.first().value").unwrap()["identifier"][0]["value"],
            "X"
        );
        assert_eq!(
            replace("Patient.name.given[1]").unwrap()["name"][0]["given"][1],
            "X"
        );
        assert_eq!(
            replace("Patient.name.where(given = 'Ann').family").unwrap_err(),
            PatchError::Unprocessable(
                "operation 1 (replace Patient.name.where(given = 'Ann').family): the path matches \
                 no element"
                    .into()
            ),
            "a where() field with two values compares as empty"
        );
        assert_eq!(
            replace("Patient.identifier.where(system != 'urn:a').where(value = '3').value")
                .unwrap()["identifier"][2]["value"],
            "X"
        );
        assert_eq!(replace("Patient.`birthDate`").unwrap()["birthDate"], "X");
        let wrong_type = replace("Observation.status").unwrap_err();
        assert!(
            wrong_type.to_string().contains("the resource is a Patient"),
            "{wrong_type}"
        );
        let computed = replace("Patient.name.exists()").unwrap_err();
        assert!(
            matches!(computed, PatchError::Unprocessable(ref m) if m.contains("computes a value")),
            "{computed}"
        );
        // The whole FHIRPath language selects, not only a subset.
        assert_eq!(
            replace(
                "Patient.identifier.where(value.startsWith('2') or system = 'urn:c').skip(1).value"
            )
            .unwrap()["identifier"][2]["value"],
            "X"
        );
        assert_eq!(
            replace("Patient.name.given.where($this.length() > 3 and $this != 'Bess')").unwrap()
                ["name"][0]["given"][1],
            "X"
        );
        assert!(matches!(
            replace("Patient.name[").unwrap_err(),
            PatchError::Invalid(_)
        ));
        assert!(matches!(
            replace("Patient.name.where(use = )").unwrap_err(),
            PatchError::Invalid(_)
        ));
    }

    #[test]
    fn fhirpath_patch_paths_are_checked_against_the_resource_type() {
        let mut resource = patient();
        let misspelt = apply(
            &mut resource,
            &patch(vec![op(vec![
                kind("replace"),
                path("Patient.birthdate"),
                part("value", "valueDate", json!("2000-01-01")),
            ])]),
        )
        .unwrap_err();
        assert_eq!(
            misspelt,
            PatchError::Invalid(
                "operation 1 (replace Patient.birthdate): FHIRPath error: Patient has no element \
                 'birthdate'"
                    .into()
            )
        );
        assert_eq!(resource, patient());
    }

    #[test]
    fn fhirpath_patch_is_atomic() {
        let mut resource = patient();
        let error = apply(
            &mut resource,
            &patch(vec![
                op(vec![kind("delete"), path("Patient.birthDate")]),
                op(vec![
                    kind("replace"),
                    path("Patient.gender"),
                    part("value", "valueCode", json!("male")),
                ]),
            ]),
        )
        .unwrap_err();
        assert!(error
            .to_string()
            .starts_with("FHIRPath Patch cannot be applied: operation 2 (replace Patient.gender)"));
        assert_eq!(resource, patient());
    }

    #[test]
    fn fhirpath_patch_invalid_documents() {
        assert!(invalid(&json!({ "resourceType": "Patient" })).contains("not Patient"));
        assert!(invalid(&json!([])).contains("Parameters"));
        let bad_type = invalid(&patch(vec![op(vec![kind("upsert"), path("Patient.x")])]));
        assert_eq!(
            bad_type,
            "operation 1 (upsert Patient.x): unknown operation type 'upsert'; expected add, \
             insert, delete, replace or move"
        );
        assert!(invalid(&patch(vec![op(vec![kind("delete")])])).contains("has no 'path' part"));
        assert!(invalid(&patch(vec![op(vec![path("Patient.x")])])).contains("has no 'type' part"));
        assert!(invalid(&patch(vec![op(vec![
            kind("replace"),
            path("Patient.birthDate")
        ])]))
        .contains("needs a 'value' part"));
        assert!(invalid(&patch(vec![op(vec![
            kind("move"),
            path("Patient.identifier"),
            int("source", -1),
            int("destination", 0)
        ])]))
        .contains("non-negative"));
        assert!(invalid(&patch(vec![json!({ "name": "op", "part": [] })])).contains("named 'op'"));
        assert!(invalid(&patch(vec![op(vec![
            kind("delete"),
            path("Patient.x"),
            part("pathh", "valueString", json!("y"))
        ])]))
        .contains("unknown part 'pathh'"));
        assert!(invalid(&patch(vec![op(vec![
            kind("replace"),
            path("Patient.birthDate"),
            json!({ "name": "value", "valueDate": "2000", "valueString": "x" })
        ])]))
        .contains("more than one value"));
    }

    #[test]
    fn fhirpath_patch_path_syntax_errors_name_the_position() {
        let message = invalid(&patch(vec![op(vec![
            kind("delete"),
            path("Patient.name.where(use = 'old'"),
        ])]));
        assert!(
            message.contains("FHIRPath syntax error at character 30"),
            "{message}"
        );
    }

    #[test]
    fn fhirpath_patch_empty_parameters_is_a_no_op() {
        let mut resource = patient();
        apply(&mut resource, &json!({ "resourceType": "Parameters" })).unwrap();
        assert_eq!(resource, patient());
    }
}
