//! FHIRPath (N1, with the FHIR R4 additions) over `serde_json::Value`.
//!
//! An expression is parsed once into an [`Expression`] and evaluated many
//! times. Evaluation borrows the resource: a node reached by navigation is a
//! reference into the JSON ([`Val::Json`]) typed from the FHIR schema
//! (`Patient.birthDate` is a `date`); only computed values (booleans,
//! numbers, strings, dates, quantities) are owned. Integers stay integers,
//! decimals keep their scale, dates and times keep their precision.
//!
//! Invalid expressions fail to parse with the character offset of the
//! problem; expressions that go wrong on the data (a collection where one
//! item is required, an unknown type) fail to evaluate. Work is bounded:
//! nesting depth at parse time, and during evaluation the size of every
//! collection and the total number of items produced.
//!
//! The official FHIRPath R4 suite runs in `tests/fhirpath_suite.rs`.

mod eval;
mod functions;
mod lexer;
pub(crate) mod model;
mod parser;
mod reach;
mod types;
pub mod value;

use std::borrow::Cow;
use std::cell::Cell;

use serde_json::Value;

pub use reach::Reach;
pub use types::{infer_complex_type, reference_type, split_reference};
pub use value::{Decimal, Quantity, Temporal};

use parser::Expr;

/// Why an expression did not parse or could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirPathError {
    /// Not FHIRPath: `position` is the character offset of the problem.
    #[error("FHIRPath syntax error at character {position}: {message}")]
    Syntax { position: usize, message: String },
    /// Valid syntax that strict mode refuses for the type it is meant for.
    #[error("FHIRPath error: {0}")]
    Semantic(String),
    /// Valid FHIRPath that cannot be evaluated on this input.
    #[error("FHIRPath evaluation error: {0}")]
    Evaluation(String),
}

impl FhirPathError {
    pub(crate) fn eval(message: impl Into<String>) -> Self {
        FhirPathError::Evaluation(message.into())
    }
}

/// Most items any one collection may hold, and most items one evaluation
/// may produce in total: beyond them evaluation stops with an error, so a
/// `repeat()` or `descendants()` over a large input stays bounded.
pub const MAX_COLLECTION: usize = 100_000;
pub const MAX_WORK: u64 = 10_000_000;

/// A value of a result collection.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// An element of the resource (or a variable), not copied. A primitive
    /// with only an extension (`_birthDate`) is `Null`.
    Json(&'a Value),
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(String),
    /// A date, dateTime or time.
    Temporal(Temporal),
    /// Boxed: quantities are rare, and every node is as large as its largest value.
    Quantity(Box<Quantity>),
    /// The result of `type()`.
    TypeInfo {
        namespace: &'static str,
        name: String,
    },
}

/// One item of a result collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    pub value: Val<'a>,
    /// The FHIR type of a value of the resource, by its schema definition
    /// (`Quantity`, `dateTime`, `Patient`, `Patient_Contact` for a backbone
    /// element), or for the result of `resolve()` on a Reference the type
    /// it points at. `None` for computed (System) values and elements the
    /// schema does not know.
    pub fhir_type: Option<&'a str>,
    /// A primitive's `_name` sibling: its id and extensions.
    pub(crate) extras: Option<&'a Value>,
    /// The schema definition navigation continues in.
    pub(crate) definition: Option<&'static model::Definition>,
}

impl Val<'_> {
    pub(crate) fn quantity(q: Quantity) -> Self {
        Val::Quantity(Box::new(q))
    }
}

impl<'a> Node<'a> {
    pub fn json(value: &'a Value, fhir_type: Option<&'a str>) -> Self {
        Node {
            value: Val::Json(value),
            fhir_type,
            extras: None,
            definition: None,
        }
    }

    pub(crate) fn computed(value: Val<'a>) -> Self {
        Node {
            value,
            fhir_type: None,
            extras: None,
            definition: None,
        }
    }

    pub(crate) fn boolean(b: bool) -> Self {
        Node::computed(Val::Boolean(b))
    }

    /// A resource: typed by its `resourceType`.
    pub(crate) fn resource(value: &'a Value) -> Self {
        let resource_type = value.get("resourceType").and_then(Value::as_str);
        Node {
            definition: resource_type.and_then(|t| model::model().definition(t)),
            ..Node::json(value, resource_type)
        }
    }

    /// The value as JSON: borrowed for an element of the resource, built
    /// for a computed value (a date as its text, a quantity as a Quantity).
    pub fn to_json(&self) -> Cow<'a, Value> {
        match &self.value {
            Val::Json(value) => Cow::Borrowed(value),
            Val::Boolean(b) => Cow::Owned(Value::Bool(*b)),
            Val::Integer(n) => Cow::Owned(Value::from(*n)),
            Val::Decimal(d) => Cow::Owned(
                d.as_integer()
                    .filter(|_| d.scale() == 0)
                    .map(Value::from)
                    .unwrap_or_else(|| Value::from(d.to_f64())),
            ),
            Val::String(s) => Cow::Owned(Value::String(s.clone())),
            Val::Temporal(t) => Cow::Owned(Value::String(t.to_string())),
            Val::Quantity(q) => Cow::Owned(serde_json::json!({
                "value": q.value.to_f64(),
                "unit": q.unit,
            })),
            Val::TypeInfo { namespace, name } => {
                Cow::Owned(serde_json::json!({"namespace": namespace, "name": name}))
            }
        }
    }
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Expr,
    /// Whether evaluation must look for primitives' extensions (`_name`).
    extras: bool,
}

/// What an evaluation can refer to besides its input.
pub(crate) struct Env<'e, 'a> {
    resource: &'a Value,
    context: &'e Node<'a>,
    variables: &'a [(&'a str, &'a Value)],
    extras: bool,
    /// Items left to produce before the evaluation is stopped.
    budget: Cell<u64>,
}

impl Expression {
    pub fn parse(source: &str) -> Result<Expression, FhirPathError> {
        let mut root = parser::parse(source)?;
        parser::annotate(&mut root, None, &mut parser::Checks::default());
        Ok(Expression::from_root(root))
    }

    /// Parses in FHIRPath's strict mode, for an expression that will be
    /// evaluated on a `context_type` (a resource type), where the
    /// `variables` (`current`, `before`, ...) hold resources of that type:
    /// what cannot be right for that type (an element it does not have, a
    /// choice element by its JSON name, another resource type) is an error
    /// now rather than an empty result later.
    pub fn parse_strict(
        source: &str,
        context_type: &str,
        variables: &[&str],
    ) -> Result<Expression, FhirPathError> {
        let mut root = parser::parse(source)?;
        let context = model::model().definition(context_type);
        let mut checks = parser::Checks {
            typed_variables: variables,
            variable_type: context,
            problems: Vec::new(),
        };
        parser::annotate(&mut root, context, &mut checks);
        match checks.problems.into_iter().next() {
            Some(problem) => Err(FhirPathError::Semantic(problem)),
            None => Ok(Expression::from_root(root)),
        }
    }

    fn from_root(root: Expr) -> Expression {
        Expression {
            extras: parser::observes_extensions(&root),
            root,
        }
    }

    /// For a path that ends in an element name (`Patient.name[0].given`):
    /// the expression for the element holding it (`None`: the input itself)
    /// and that name. FHIRPath Patch names the list of `insert` and `move`
    /// this way.
    pub fn split_last_name(&self) -> Option<(Option<Expression>, &str)> {
        match &self.root {
            Expr::Member {
                base: Some(base),
                name,
                ..
            } => Some((Some(Expression::from_root((**base).clone())), name)),
            // A leading capitalised name is a type filter, not an element.
            Expr::Member {
                base: None, name, ..
            } if !name.starts_with(|c: char| c.is_ascii_uppercase()) => Some((None, name)),
            _ => None,
        }
    }

    /// The type a path starts with (`Patient` in `Patient.name.given`).
    pub fn leading_type(&self) -> Option<&str> {
        let mut expr = &self.root;
        loop {
            expr = match expr {
                Expr::Member {
                    base: Some(base), ..
                }
                | Expr::Call {
                    base: Some(base), ..
                }
                | Expr::Indexer(base, _) => base,
                Expr::Member {
                    base: None, name, ..
                } if name.starts_with(|c: char| c.is_ascii_uppercase()) => return Some(name),
                _ => return None,
            }
        }
    }

    /// Evaluates with `resource` as both the root resource and the context.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Result<Vec<Node<'a>>, FhirPathError> {
        self.evaluate_on(&Node::resource(resource), resource)
    }

    /// Evaluates relative to `context` (e.g. a composite's element), with
    /// `resource` as `%resource`.
    pub fn evaluate_on<'a>(
        &self,
        context: &Node<'a>,
        resource: &'a Value,
    ) -> Result<Vec<Node<'a>>, FhirPathError> {
        self.run(context, resource, &[])
    }

    /// Evaluates on `resource` with named variables (`("current", &value)`
    /// answers `%current`); a variable not given is the empty collection.
    pub fn evaluate_with<'a>(
        &self,
        resource: &'a Value,
        variables: &'a [(&'a str, &'a Value)],
    ) -> Result<Vec<Node<'a>>, FhirPathError> {
        self.run(&Node::resource(resource), resource, variables)
    }

    fn run<'a>(
        &self,
        context: &Node<'a>,
        resource: &'a Value,
        variables: &'a [(&'a str, &'a Value)],
    ) -> Result<Vec<Node<'a>>, FhirPathError> {
        let env = Env {
            resource,
            context,
            variables,
            extras: self.extras,
            budget: Cell::new(MAX_WORK),
        };
        eval::eval(
            &self.root,
            std::slice::from_ref(context),
            &eval::Frame::default(),
            &env,
        )
    }

    /// Evaluates to a boolean as FHIRPath does for a condition: `Ok(None)`
    /// when the result is empty; an error when it is not a single boolean
    /// (or a single item, which counts as true).
    pub fn test<'a>(
        &self,
        resource: &'a Value,
        variables: &'a [(&'a str, &'a Value)],
    ) -> Result<Option<bool>, FhirPathError> {
        eval::singleton_boolean(&self.evaluate_with(resource, variables)?)
    }

    /// What this expression reads of the resource it is evaluated on: its
    /// result's elements ([`Reach::focus`]) are read by whoever uses it.
    pub fn reach(&self) -> Reach {
        self.reach_from(&[String::new()])
    }

    /// What this expression reads when evaluated on elements at `focus`
    /// (a composite's components are relative to its element).
    pub fn reach_from(&self, focus: &[String]) -> Reach {
        reach::reach_from(&self.root, focus)
    }
}

#[cfg(test)]
mod tests;
