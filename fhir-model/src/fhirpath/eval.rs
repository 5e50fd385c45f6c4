//! Evaluation: navigation over the JSON and the operators.

use std::cmp::Ordering;

use serde_json::{Map, Value};

use super::functions::call;
use super::model::{model, Definition, Element};
use super::parser::{BinOp, Expr, Literal};
use super::types::{choice_type, has_type, Prim, TypeTest};
use super::value::{ucum_calendar, Decimal, Quantity, Temporal, TemporalKind};
use super::{Env, FhirPathError, Node, Val, MAX_COLLECTION};

pub type Result<T> = std::result::Result<T, FhirPathError>;

/// `$this`, `$index` and `$total` where a function's argument is evaluated.
#[derive(Default, Clone, Copy)]
pub struct Frame<'f, 'a> {
    pub this: Option<&'f Node<'a>>,
    pub index: Option<usize>,
    pub total: Option<&'f [Node<'a>]>,
}

impl<'a> Env<'_, 'a> {
    /// Counts `produced` items (and one step) against the evaluation's
    /// budget, for a collection now `size` long.
    pub fn spend(&self, produced: usize, size: usize) -> Result<()> {
        let left = self.budget.get().checked_sub(produced as u64 + 1);
        match left {
            Some(left) if size <= MAX_COLLECTION => {
                self.budget.set(left);
                Ok(())
            }
            _ => Err(FhirPathError::eval(format!(
                "the expression does too much work (more than {MAX_COLLECTION} items in one collection or {} in all)",
                super::MAX_WORK
            ))),
        }
    }
}

pub fn eval<'a>(
    expr: &Expr,
    input: &[Node<'a>],
    frame: &Frame<'_, 'a>,
    env: &Env<'_, 'a>,
) -> Result<Vec<Node<'a>>> {
    let out = eval_inner(expr, input, frame, env)?;
    // Only collections that grow can multiply work: single items are free.
    if out.len() > 1 {
        env.spend(out.len(), out.len())?;
    }
    Ok(out)
}

fn literal<'a>(literal: &Literal) -> Node<'a> {
    Node::computed(match literal {
        Literal::Boolean(b) => Val::Boolean(*b),
        Literal::Integer(n) => Val::Integer(*n),
        Literal::Decimal(d) => Val::Decimal(*d),
        Literal::String(s) => Val::String(s.clone()),
        Literal::Temporal(t) => Val::Temporal(*t),
        Literal::Quantity(q) => Val::Quantity(Box::new(q.clone())),
    })
}

fn string_node<'a>(s: &str) -> Node<'a> {
    Node::computed(Val::String(s.to_string()))
}

fn external<'a>(name: &str, env: &Env<'_, 'a>) -> Vec<Node<'a>> {
    match name {
        "resource" | "rootResource" => vec![Node::resource(env.resource)],
        "context" => vec![env.context.clone()],
        "ucum" => vec![string_node("http://unitsofmeasure.org")],
        "sct" => vec![string_node("http://snomed.info/sct")],
        "loinc" => vec![string_node("http://loinc.org")],
        _ => {
            if let Some(id) = name.strip_prefix("vs-") {
                return vec![string_node(&format!("http://hl7.org/fhir/ValueSet/{id}"))];
            }
            if let Some(id) = name.strip_prefix("ext-") {
                return vec![string_node(&format!(
                    "http://hl7.org/fhir/StructureDefinition/{id}"
                ))];
            }
            env.variables
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, value)| Node::resource(value))
                .collect()
        }
    }
}

fn eval_inner<'a>(
    expr: &Expr,
    input: &[Node<'a>],
    frame: &Frame<'_, 'a>,
    env: &Env<'_, 'a>,
) -> Result<Vec<Node<'a>>> {
    Ok(match expr {
        Expr::Empty => Vec::new(),
        Expr::Literal(l) => vec![literal(l)],
        Expr::This => match frame.this {
            Some(this) => vec![this.clone()],
            None => input.to_vec(),
        },
        Expr::Index => frame
            .index
            .map(|i| Node::computed(Val::Integer(i as i64)))
            .into_iter()
            .collect(),
        Expr::Total => frame.total.map(<[Node]>::to_vec).unwrap_or_default(),
        Expr::External(name) => external(name, env),
        Expr::Type(spec) => {
            return Err(FhirPathError::eval(format!(
                "type {} used as a value",
                spec.name
            )))
        }
        Expr::Member {
            base,
            name,
            resolved,
        } => {
            let base_items;
            let items = match base {
                Some(base) => {
                    base_items = eval(base, input, frame, env)?;
                    &base_items[..]
                }
                None => input,
            };
            let mut out = Vec::new();
            for item in items {
                let known = resolved
                    .filter(|r| item.definition.is_some_and(|d| std::ptr::eq(d, r.0)))
                    .map(|r| r.1);
                match known {
                    Some(element) => typed_member(item, name, element, env.extras, &mut out),
                    None => member(item, name, env.extras, &mut out),
                }
            }
            out
        }
        Expr::Call { base, func, args } => {
            let base_items;
            let items = match base {
                Some(base) => {
                    base_items = eval(base, input, frame, env)?;
                    &base_items[..]
                }
                None => match frame.this {
                    Some(this) => std::slice::from_ref(this),
                    None => input,
                },
            };
            call(*func, items, args, input, frame, env)?
        }
        Expr::Indexer(base, index) => {
            let items = eval(base, input, frame, env)?;
            let index = eval(index, input, frame, env)?;
            match integer_arg(&index)? {
                Some(i) if i >= 0 => items.into_iter().nth(i as usize).into_iter().collect(),
                _ => Vec::new(),
            }
        }
        Expr::Negate(operand) => {
            let items = eval(operand, input, frame, env)?;
            let Some(item) = singleton(&items)? else {
                return Ok(Vec::new());
            };
            vec![Node::computed(match item.prim() {
                Some(Prim::Integer(n)) => Val::Integer(n.checked_neg().ok_or_else(overflow)?),
                Some(Prim::Decimal(d)) => Val::Decimal(d.negated()),
                Some(Prim::Quantity(q)) => Val::quantity(Quantity {
                    value: q.value.negated(),
                    unit: q.unit,
                }),
                _ => {
                    return Err(FhirPathError::eval(
                        "unary minus needs a number or a quantity",
                    ))
                }
            })]
        }
        Expr::Is(base, spec) => {
            let items = eval(base, input, frame, env)?;
            match singleton(&items)? {
                Some(item) => vec![Node::boolean(has_type(item, spec, TypeTest::Is)?)],
                None => Vec::new(),
            }
        }
        Expr::As(base, spec) => {
            let items = eval(base, input, frame, env)?;
            cast(items, spec)?
        }
        Expr::Binary(op, left, right) => binary(*op, left, right, input, frame, env)?,
    })
}

/// `as`: a single item of the type, or nothing; more than one item is an error.
pub fn cast<'a>(items: Vec<Node<'a>>, spec: &super::parser::TypeSpec) -> Result<Vec<Node<'a>>> {
    if items.len() > 1 {
        return Err(FhirPathError::eval(format!(
            "`as {}` applies to one item, not {}",
            spec.name,
            items.len()
        )));
    }
    let mut out = Vec::new();
    for item in items {
        if has_type(&item, spec, TypeTest::Cast)? {
            out.push(item);
        }
    }
    Ok(out)
}

fn overflow() -> FhirPathError {
    FhirPathError::eval("integer overflow")
}

/// The one item of `items`, none, or an error for more.
pub fn singleton<'n, 'a>(items: &'n [Node<'a>]) -> Result<Option<&'n Node<'a>>> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(FhirPathError::eval(format!(
            "expected one item, got a collection of {}",
            items.len()
        ))),
    }
}

/// A collection as a condition: empty is unknown, a single boolean is
/// itself, any other single item is true; more items are an error.
pub fn singleton_boolean(items: &[Node<'_>]) -> Result<Option<bool>> {
    Ok(singleton(items)?.map(|item| match item.prim() {
        Some(Prim::Boolean(b)) => b,
        _ => true,
    }))
}

/// An integer argument (`skip(2)`, `[0]`).
pub fn integer_arg(items: &[Node<'_>]) -> Result<Option<i64>> {
    match singleton(items)?.map(Node::prim) {
        None => Ok(None),
        Some(Some(Prim::Integer(n))) => Ok(Some(n)),
        Some(_) => Err(FhirPathError::eval("expected an integer")),
    }
}

// ---------------------------------------------------------------- navigation

/// Nodes for `value` (each item of a list), of type `definition`; a
/// resource in place is typed by its `resourceType`.
fn child<'a>(
    value: &'a Value,
    extras: Option<&'a Value>,
    definition: Option<&'static Definition>,
    out: &mut Vec<Node<'a>>,
) {
    let node = |value: &'a Value, extras: Option<&'a Value>| {
        let known = definition.filter(|d| !d.holds_resources);
        match known {
            Some(d) => Node {
                value: Val::Json(value),
                fhir_type: Some(d.name),
                extras,
                definition: Some(d),
            },
            None if value.is_object() => Node {
                extras,
                ..Node::resource(value)
            },
            None => Node {
                extras,
                ..Node::json(value, None)
            },
        }
    };
    match value {
        Value::Array(items) => {
            let extras = extras.and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                let extra = extras.and_then(|e| e.get(i)).filter(|e| !e.is_null());
                if item.is_null() && extra.is_none() {
                    continue;
                }
                out.push(node(item, extra));
            }
        }
        Value::Null if extras.is_none() => {}
        _ => out.push(node(value, extras)),
    }
}

const NULL: Value = Value::Null;

/// `map[key]`, with its `_key` sibling when the element is a primitive and
/// `extras` asks for it.
fn element<'a>(
    map: &'a Map<String, Value>,
    key: &str,
    definition: Option<&'static Definition>,
    extras: bool,
    out: &mut Vec<Node<'a>>,
) {
    let primitive = extras && definition.is_none_or(|d| d.is_primitive());
    let extras = if primitive {
        let mut buffer = [0u8; 64];
        match key.len() < buffer.len() {
            true => {
                buffer[0] = b'_';
                buffer[1..=key.len()].copy_from_slice(key.as_bytes());
                let underscored = std::str::from_utf8(&buffer[..=key.len()]).unwrap_or_default();
                map.get(underscored)
            }
            false => map.get(&format!("_{key}")),
        }
    } else {
        None
    };
    match map.get(key) {
        Some(value) => child(value, extras, definition, out),
        None => {
            if let Some(extras) = extras {
                match extras {
                    // Items of a list of primitives that only have extensions.
                    Value::Array(_) => child(extras, Some(extras), definition, out),
                    _ => child(&NULL, Some(extras), definition, out),
                }
            }
        }
    }
}

/// Child `name` of `node`, typed by the schema: a plain element, each
/// present form of a choice element (`value` finds `valueQuantity`), or a
/// type name naming the node's own resource type (`Patient.name`).
///
/// `extras` attaches a primitive's `_name` sibling (its extensions) and
/// finds primitives that have only that; expressions that cannot observe
/// either skip the lookup (see [`super::parser::observes_extensions`]).
pub fn member<'a>(node: &Node<'a>, name: &str, extras: bool, out: &mut Vec<Node<'a>>) {
    let map = match &node.value {
        Val::Json(Value::Object(map)) => map,
        Val::Json(_) => {
            // A primitive's `id` and `extension` live in its `_name` sibling.
            if let (Some(Value::Object(sibling)), "id" | "extension") = (node.extras, name) {
                let definition = model().definition("Element");
                match definition.and_then(|d| d.element(name)) {
                    Some(Element::Plain(t)) => element(sibling, name, Some(t), extras, out),
                    _ => element(sibling, name, None, extras, out),
                }
            }
            return;
        }
        Val::TypeInfo {
            namespace,
            name: type_name,
        } => {
            match name {
                "namespace" => out.push(string_node(namespace)),
                "name" => out.push(string_node(type_name)),
                _ => {}
            }
            return;
        }
        _ => return,
    };
    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
        if let Some(Value::String(resource_type)) = map.get("resourceType") {
            if resource_type == name || name == "Resource" || name == "DomainResource" {
                out.push(node.clone());
            }
            return;
        }
    }
    if let Some(definition) = node.definition {
        match definition.element(name) {
            Some(found) => typed_member(node, name, found, extras, out),
            // Not an element of this type: data the schema does not know.
            None => {
                if let Some(value) = map.get(name) {
                    child(value, None, None, out);
                }
            }
        }
        return;
    }
    untyped_member(map, name, extras, out);
}

/// Child `name` of an object node whose type has `element` by that name.
fn typed_member<'a>(
    node: &Node<'a>,
    name: &str,
    element_type: &'static Element,
    extras: bool,
    out: &mut Vec<Node<'a>>,
) {
    let Val::Json(Value::Object(map)) = &node.value else {
        return member(node, name, extras, out);
    };
    match element_type {
        Element::Plain(t) => element(map, name, Some(t), extras, out),
        Element::Choice(forms) => {
            // An object holds a few of a choice's many forms (Observation's
            // `value` has eleven): scan its keys rather than look each up.
            for key in map.keys() {
                if key.len() > name.len() && key.starts_with(name) {
                    if let Some((form, t)) = forms.iter().find(|(f, _)| f == key) {
                        element(map, form, Some(t), extras, out);
                    }
                }
            }
        }
    }
}

/// A child where the schema does not say: by name, or as a choice form by suffix.
fn untyped_member<'a>(
    map: &'a Map<String, Value>,
    name: &str,
    extras: bool,
    out: &mut Vec<Node<'a>>,
) {
    if map.contains_key(name) {
        return element(map, name, None, extras, out);
    }
    for (key, value) in map {
        if let Some(suffix) = key.strip_prefix(name) {
            if let Some(t) = choice_type(suffix) {
                child(value, None, model().definition(t), out);
            }
        }
    }
}

// ---------------------------------------------------------------- operators

fn binary<'a>(
    op: BinOp,
    left: &Expr,
    right: &Expr,
    input: &[Node<'a>],
    frame: &Frame<'_, 'a>,
    env: &Env<'_, 'a>,
) -> Result<Vec<Node<'a>>> {
    let l = eval(left, input, frame, env)?;
    // `and`/`or`/`implies` decide on the left alone when they can.
    match op {
        BinOp::And | BinOp::Or | BinOp::Implies => {
            let a = singleton_boolean(&l)?;
            let short = match op {
                BinOp::And => a == Some(false),
                BinOp::Or => a == Some(true),
                _ => a == Some(false),
            };
            if short {
                return Ok(vec![Node::boolean(op != BinOp::And)]);
            }
            let b = singleton_boolean(&eval(right, input, frame, env)?)?;
            let result = match op {
                BinOp::And => match (a, b) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                },
                BinOp::Or => match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
                _ => match (a, b) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                },
            };
            return Ok(result.map(Node::boolean).into_iter().collect());
        }
        _ => {}
    }
    let r = eval(right, input, frame, env)?;
    Ok(match op {
        BinOp::Xor => match (singleton_boolean(&l)?, singleton_boolean(&r)?) {
            (Some(a), Some(b)) => vec![Node::boolean(a != b)],
            _ => Vec::new(),
        },
        BinOp::Union => union(l, r),
        BinOp::Eq | BinOp::Ne => {
            if l.is_empty() || r.is_empty() {
                return Ok(Vec::new());
            }
            let mut result = Some(l.len() == r.len());
            if l.len() == r.len() {
                for (a, b) in l.iter().zip(&r) {
                    match equal(a, b) {
                        Some(true) => {}
                        other => {
                            result = other;
                            break;
                        }
                    }
                }
            }
            result
                .map(|e| Node::boolean(e == (op == BinOp::Eq)))
                .into_iter()
                .collect()
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            // Each item of one side is compared with each of the other.
            env.spend(l.len().saturating_mul(r.len()), 0)?;
            let e = collections_equivalent(&l, &r);
            vec![Node::boolean(e == (op == BinOp::Equiv))]
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let (Some(a), Some(b)) = (singleton(&l)?, singleton(&r)?) else {
                return Ok(Vec::new());
            };
            match compare(a, b)? {
                Some(ordering) => vec![Node::boolean(match op {
                    BinOp::Lt => ordering == Ordering::Less,
                    BinOp::Le => ordering != Ordering::Greater,
                    BinOp::Gt => ordering == Ordering::Greater,
                    _ => ordering != Ordering::Less,
                })],
                None => Vec::new(),
            }
        }
        BinOp::In | BinOp::Contains => {
            let (item, collection) = if op == BinOp::In { (&l, &r) } else { (&r, &l) };
            match singleton(item)? {
                None => Vec::new(),
                Some(item) => vec![Node::boolean(
                    collection.iter().any(|c| equal(item, c) == Some(true)),
                )],
            }
        }
        BinOp::Concat => {
            let text = |items: &[Node<'_>]| -> Result<String> {
                Ok(match singleton(items)?.map(Node::prim) {
                    None => String::new(),
                    Some(Some(Prim::String(s))) => s.to_string(),
                    Some(_) => return Err(FhirPathError::eval("& joins strings")),
                })
            };
            vec![Node::computed(Val::String(bounded(
                text(&l)? + &text(&r)?,
            )?))]
        }
        _ => {
            let (Some(a), Some(b)) = (singleton(&l)?, singleton(&r)?) else {
                return Ok(Vec::new());
            };
            arithmetic(op, a, b)?.into_iter().collect()
        }
    })
}

/// Longest string an expression may build (`aggregate($total & $this)`
/// would otherwise copy ever longer strings).
pub const MAX_STRING: usize = 1 << 20;

pub fn bounded(s: String) -> Result<String> {
    if s.len() > MAX_STRING {
        return Err(FhirPathError::eval(format!(
            "a string longer than {MAX_STRING} bytes"
        )));
    }
    Ok(s)
}

/// `a | b`: both, without duplicates.
pub fn union<'a>(left: Vec<Node<'a>>, right: Vec<Node<'a>>) -> Vec<Node<'a>> {
    let total = left.len() + right.len();
    if total <= 16 {
        // Few items (search parameters' unions): compare without building keys.
        let mut out: Vec<Node<'a>> = Vec::with_capacity(total);
        for node in left.into_iter().chain(right) {
            if !out.iter().any(|seen| same(seen, &node)) {
                out.push(node);
            }
        }
        return out;
    }
    let mut seen = Seen::default();
    left.into_iter()
        .chain(right)
        .filter(|node| seen.insert(node))
        .collect()
}

/// What makes two items the same for `|`, `distinct()`, `repeat()` and
/// the set functions, as a hashable key so they stay linear: an object
/// of the resource by its address, any other value by its `=` identity
/// (numbers by their value, so `1` and `1.0` are one).
#[derive(Hash, PartialEq, Eq)]
enum Key {
    Element(usize),
    Value(String),
}

fn key(node: &Node<'_>) -> Key {
    if let Val::Json(value @ (Value::Object(_) | Value::Array(_))) = node.value {
        return Key::Element(value as *const Value as usize);
    }
    Key::Value(match node.prim() {
        Some(Prim::Integer(n)) => format!("n{}", Decimal::from_i64(n)),
        Some(Prim::Decimal(d)) => format!("n{}", d.trimmed()),
        Some(Prim::String(s)) => format!("s{s}"),
        Some(Prim::Boolean(b)) => format!("b{b}"),
        Some(Prim::Temporal(t)) => format!("t{t}"),
        Some(Prim::Quantity(q)) => format!("q{q}"),
        None => format!("{:?}", node.value),
    })
}

/// [`key`] equality without the key.
fn same(a: &Node<'_>, b: &Node<'_>) -> bool {
    match (&a.value, &b.value) {
        (Val::Json(x), Val::Json(y)) if std::ptr::eq(*x, *y) => true,
        (Val::Json(Value::Object(_) | Value::Array(_)), _)
        | (_, Val::Json(Value::Object(_) | Value::Array(_))) => false,
        _ => equal(a, b) == Some(true),
    }
}

/// Keys met so far.
#[derive(Default)]
pub struct Seen(std::collections::HashSet<Key>);

impl Seen {
    /// Whether `node` is new (and now seen).
    pub fn insert(&mut self, node: &Node<'_>) -> bool {
        self.0.insert(key(node))
    }

    pub fn contains(&self, node: &Node<'_>) -> bool {
        self.0.contains(&key(node))
    }

    pub fn of(nodes: &[Node<'_>]) -> Seen {
        let mut seen = Seen::default();
        for node in nodes {
            seen.insert(node);
        }
        seen
    }
}

/// Integers, decimals and quantities as one numeric kind for mixed operations.
fn as_decimal(p: &Prim<'_>) -> Option<Decimal> {
    match p {
        Prim::Integer(n) => Some(Decimal::from_i64(*n)),
        Prim::Decimal(d) => Some(*d),
        _ => None,
    }
}

/// A string compared with a date: the string read as the same kind.
fn as_temporal(s: &str, like: &Temporal) -> Option<Temporal> {
    match like.kind {
        TemporalKind::Time => Temporal::parse_time(s.strip_prefix('T').unwrap_or(s)),
        kind => Temporal::parse_date_time(s, kind)
            .or_else(|| Temporal::parse_date_time(s, TemporalKind::DateTime)),
    }
}

/// `=` of two items: `None` when unknown (dates of different precision).
pub fn equal(a: &Node<'_>, b: &Node<'_>) -> Option<bool> {
    let (pa, pb) = (a.prim(), b.prim());
    let (Some(pa), Some(pb)) = (pa, pb) else {
        return Some(match (&a.value, &b.value) {
            (Val::Json(x), Val::Json(y)) => std::ptr::eq(*x, *y) || x == y,
            (Val::TypeInfo { .. }, Val::TypeInfo { .. }) => a.value == b.value,
            _ => false,
        });
    };
    Some(match (&pa, &pb) {
        (Prim::String(x), Prim::String(y)) => x == y,
        (Prim::Boolean(x), Prim::Boolean(y)) => x == y,
        (Prim::Temporal(x), Prim::Temporal(y)) => {
            if (x.kind == TemporalKind::Time) != (y.kind == TemporalKind::Time) {
                return Some(false);
            }
            return x.compare(y).map(|o| o == Ordering::Equal);
        }
        (Prim::Temporal(t), Prim::String(s)) | (Prim::String(s), Prim::Temporal(t)) => {
            match as_temporal(s, t) {
                Some(other) => return t.compare(&other).map(|o| o == Ordering::Equal),
                None => false,
            }
        }
        (Prim::Quantity(x), Prim::Quantity(y)) => {
            return x.compare(y, false).map(|o| o == Ordering::Equal)
        }
        _ => match (as_decimal(&pa), as_decimal(&pb)) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    })
}

fn normalize_text(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// `~` of two items.
pub fn equivalent(a: &Node<'_>, b: &Node<'_>) -> bool {
    let (Some(pa), Some(pb)) = (a.prim(), b.prim()) else {
        return match (&a.value, &b.value) {
            (Val::Json(x), Val::Json(y)) => json_equivalent(x, y),
            _ => false,
        };
    };
    match (&pa, &pb) {
        (Prim::String(x), Prim::String(y)) => normalize_text(x) == normalize_text(y),
        (Prim::Temporal(x), Prim::Temporal(y)) => x.compare(y) == Some(Ordering::Equal),
        (Prim::Quantity(x), Prim::Quantity(y)) => match y.convert_to(&x.unit) {
            // At the precision of the less precise of the two.
            Some(y) => {
                let scale = x.value.scale().min(y.value.scale());
                x.value.round_to(scale) == y.value.round_to(scale)
            }
            None => x.compare(y, true) == Some(Ordering::Equal),
        },
        _ => match (as_decimal(&pa), as_decimal(&pb)) {
            (Some(x), Some(y)) => {
                let scale = x.scale().min(y.scale());
                x.round_to(scale) == y.round_to(scale)
            }
            _ => pa == pb,
        },
    }
}

fn json_equivalent(x: &Value, y: &Value) -> bool {
    match (x, y) {
        (Value::String(a), Value::String(b)) => normalize_text(a) == normalize_text(b),
        (Value::Object(a), Value::Object(b)) => {
            let keys = |m: &Map<String, Value>| m.keys().filter(|k| k.as_str() != "id").count();
            keys(a) == keys(b)
                && a.iter()
                    .filter(|(k, _)| k.as_str() != "id")
                    .all(|(k, v)| b.get(k).is_some_and(|w| json_equivalent(v, w)))
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| json_equivalent(v, w))
        }
        _ => x == y,
    }
}

/// Collections are equivalent when each item of one has an equivalent in the other.
pub fn collections_equivalent(l: &[Node<'_>], r: &[Node<'_>]) -> bool {
    l.len() == r.len()
        && l.iter().all(|a| r.iter().any(|b| equivalent(a, b)))
        && r.iter().all(|b| l.iter().any(|a| equivalent(a, b)))
}

/// Ordering of two items; `None` when unknown; an error when they cannot be compared.
pub fn compare(a: &Node<'_>, b: &Node<'_>) -> Result<Option<Ordering>> {
    let incomparable = || FhirPathError::eval("these values cannot be compared");
    let (Some(pa), Some(pb)) = (a.prim(), b.prim()) else {
        return Err(incomparable());
    };
    Ok(match (&pa, &pb) {
        (Prim::String(x), Prim::String(y)) => Some(x.cmp(y)),
        (Prim::Temporal(x), Prim::Temporal(y)) => x.compare(y),
        (Prim::Temporal(t), Prim::String(s)) => match as_temporal(s, t) {
            Some(other) => t.compare(&other),
            None => return Err(incomparable()),
        },
        (Prim::String(s), Prim::Temporal(t)) => match as_temporal(s, t) {
            Some(other) => other.compare(t),
            None => return Err(incomparable()),
        },
        (Prim::Quantity(x), Prim::Quantity(y)) => x.compare(y, false),
        _ => match (as_decimal(&pa), as_decimal(&pb)) {
            (Some(x), Some(y)) => Some(x.compare(y)),
            _ => return Err(incomparable()),
        },
    })
}

fn quantity_product(op: BinOp, a: &Quantity, b: &Quantity) -> Option<Quantity> {
    let unit = |u: &str| {
        if u == "1" {
            String::new()
        } else {
            u.to_string()
        }
    };
    let (ua, ub) = (unit(&a.unit), unit(&b.unit));
    let (value, unit) = if op == BinOp::Mul {
        (
            a.value.times(b.value)?,
            match (ua.is_empty(), ub.is_empty()) {
                (true, _) => ub,
                (_, true) => ua,
                _ => format!("{ua}.{ub}"),
            },
        )
    } else {
        (
            a.value.divided_by(b.value)?,
            if ua == ub {
                "1".into()
            } else if ub.is_empty() {
                ua
            } else {
                format!("{ua}/{ub}")
            },
        )
    };
    Some(Quantity {
        value,
        unit: if unit.is_empty() { "1".into() } else { unit },
    })
}

fn arithmetic<'a>(op: BinOp, a: &Node<'a>, b: &Node<'a>) -> Result<Option<Node<'a>>> {
    let unsupported = || FhirPathError::eval("operands of the wrong types for arithmetic");
    let (Some(pa), Some(pb)) = (a.prim(), b.prim()) else {
        return Err(unsupported());
    };
    let value = match (&pa, &pb) {
        (Prim::Integer(x), Prim::Integer(y)) if op != BinOp::Div => match op {
            BinOp::Add => x.checked_add(*y).map(Val::Integer),
            BinOp::Sub => x.checked_sub(*y).map(Val::Integer),
            BinOp::Mul => x.checked_mul(*y).map(Val::Integer),
            BinOp::IntDiv => x.checked_div(*y).map(Val::Integer),
            BinOp::Mod => x.checked_rem(*y).map(Val::Integer),
            _ => return Err(unsupported()),
        },
        (Prim::String(x), Prim::String(y)) if op == BinOp::Add => {
            Some(Val::String(bounded(format!("{x}{y}"))?))
        }
        (Prim::Temporal(t), Prim::Quantity(q)) if matches!(op, BinOp::Add | BinOp::Sub) => {
            let unit = super::value::calendar_unit(&q.unit)
                .or_else(|| ucum_calendar(&q.unit).filter(|u| !matches!(*u, "year" | "month")))
                .ok_or_else(|| FhirPathError::eval(format!("cannot add '{}' to a date", q.unit)))?;
            let amount = q.value.to_integer(false).ok_or_else(overflow)?;
            let amount = if op == BinOp::Sub { -amount } else { amount };
            t.plus_calendar(amount, unit).map(Val::Temporal)
        }
        (Prim::Quantity(x), Prim::Quantity(y)) => match op {
            BinOp::Add | BinOp::Sub => {
                let y_value = if op == BinOp::Sub {
                    y.value.negated()
                } else {
                    y.value
                };
                if x.unit == y.unit {
                    x.value.plus(y_value).map(|v| {
                        Val::quantity(Quantity {
                            value: v,
                            unit: x.unit.clone(),
                        })
                    })
                } else {
                    return Ok(None);
                }
            }
            BinOp::Mul | BinOp::Div => quantity_product(op, x, y).map(Val::quantity),
            _ => return Err(unsupported()),
        },
        (Prim::Quantity(q), n) | (n, Prim::Quantity(q))
            if matches!(op, BinOp::Mul | BinOp::Div) =>
        {
            let n = as_decimal(n).ok_or_else(unsupported)?;
            let number_first = !matches!(pa, Prim::Quantity(_));
            let scalar = Quantity {
                value: n,
                unit: "1".into(),
            };
            let (x, y) = if number_first {
                (&scalar, q)
            } else {
                (q, &scalar)
            };
            quantity_product(op, x, y).map(Val::quantity)
        }
        _ => {
            let (Some(x), Some(y)) = (as_decimal(&pa), as_decimal(&pb)) else {
                return Err(unsupported());
            };
            match op {
                BinOp::Add => x.plus(y).map(Val::Decimal),
                BinOp::Sub => x.minus(y).map(Val::Decimal),
                BinOp::Mul => x.times(y).map(Val::Decimal),
                BinOp::Div => x.divided_by(y).map(Val::Decimal),
                BinOp::IntDiv => x
                    .divided_by(y)
                    .and_then(|q| q.to_integer(false))
                    .map(Val::Integer),
                BinOp::Mod => {
                    if y.is_zero() {
                        None
                    } else {
                        let q = x
                            .divided_by(y)
                            .and_then(|q| q.to_integer(false))
                            .ok_or_else(overflow)?;
                        y.times(Decimal::from_i64(q))
                            .and_then(|p| x.minus(p))
                            .map(Val::Decimal)
                    }
                }
                _ => return Err(unsupported()),
            }
        }
    };
    Ok(value.map(Node::computed))
}
