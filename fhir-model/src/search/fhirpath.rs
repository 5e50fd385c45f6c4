//! A FHIRPath evaluator for the subset search-parameter expressions use.
//! OWNER: helper A.
//!
//! Expressions are parsed once into an [`Expression`] and evaluated over
//! `serde_json::Value` without a schema. Supported: paths (a leading type
//! name such as `Observation`, `Resource` or `DomainResource` selects the
//! resource), array flattening, choice elements (`value` finds
//! `valueQuantity` and remembers the type), `[n]` indexers, `|` unions,
//! `=`/`!=`, `and`/`or`/`xor`, `is`/`as` operators and functions, string,
//! `implies`, number and boolean literals, `%resource`/`%context`/`$this`,
//! caller-supplied variables (`%before`, `%after`: [`Expression::evaluate_with`]), and the
//! functions `where`, `exists`, `empty`, `not`, `first`, `last`, `resolve`,
//! `ofType`, `as`, `is`, `extension`, `startsWith`, `contains`, `hasValue`,
//! `count`. Anything else is a parse error, never a panic.

use std::borrow::Cow;
use std::fmt;

use serde_json::Value;

use crate::resource_types::is_known_resource_type;

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FhirPathError(pub String);

impl fmt::Display for FhirPathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FHIRPath: {}", self.0)
    }
}

impl std::error::Error for FhirPathError {}

/// One item of a result collection: a JSON value, with its FHIR type when the
/// evaluation knows it (from a choice suffix, `resolve()` or a computed boolean).
#[derive(Debug, Clone, PartialEq)]
pub struct Node<'a> {
    pub value: Cow<'a, Value>,
    /// Canonical FHIR type name (`Quantity`, `dateTime`, `boolean`, ...), or
    /// for the result of `resolve()` the referenced resource type.
    pub fhir_type: Option<&'a str>,
}

impl<'a> Node<'a> {
    fn borrowed(value: &'a Value, fhir_type: Option<&'a str>) -> Self {
        Node {
            value: Cow::Borrowed(value),
            fhir_type,
        }
    }

    fn boolean(b: bool) -> Self {
        Node {
            value: Cow::Owned(Value::Bool(b)),
            fhir_type: Some("boolean"),
        }
    }
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expression {
    root: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Literal(Value),
    /// `%resource`, `%rootResource`.
    Resource,
    /// `%context`, `$this`: the input collection.
    This,
    /// Any other `%name`: supplied by the caller; empty when not supplied.
    Variable(String),
    /// An identifier: a child element (choice-aware) or, when capitalised, a
    /// resource type filter. `base: None` applies to the input collection.
    Member {
        base: Option<Box<Expr>>,
        name: String,
    },
    Call {
        base: Option<Box<Expr>>,
        func: Func,
    },
    Index {
        base: Box<Expr>,
        index: usize,
    },
    Union(Vec<Expr>),
    Is(Box<Expr>, String),
    As(Box<Expr>, String),
    Equals {
        left: Box<Expr>,
        right: Box<Expr>,
        negate: bool,
    },
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Xor(Box<Expr>, Box<Expr>),
    Implies(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Func {
    Where(Box<Expr>),
    Exists(Option<Box<Expr>>),
    Empty,
    Not,
    First,
    Last,
    Count,
    HasValue,
    Resolve,
    OfType(String),
    As(String),
    Is(String),
    Extension(String),
    StartsWith(Box<Expr>),
    Contains(Box<Expr>),
}

impl Expression {
    pub fn parse(source: &str) -> Result<Expression, FhirPathError> {
        let tokens = lex(source)?;
        let mut parser = Parser { tokens, pos: 0 };
        let root = parser.expression()?;
        if parser.pos != parser.tokens.len() {
            return Err(FhirPathError(format!(
                "unexpected {:?} in `{source}`",
                parser.tokens[parser.pos]
            )));
        }
        Ok(Expression { root })
    }

    /// Evaluates with `resource` as both the root resource and the context.
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Node<'a>> {
        self.evaluate_on(Node::borrowed(resource, None), resource)
    }

    /// Evaluates relative to `context` (e.g. a composite's element), with
    /// `resource` as `%resource`.
    pub fn evaluate_on<'a>(&self, context: Node<'a>, resource: &'a Value) -> Vec<Node<'a>> {
        let env = Env {
            resource,
            variables: &[],
        };
        eval(&self.root, &[context], &env)
    }

    /// Evaluates on `resource` with named variables (`("before", &value)`
    /// answers `%before`); a variable not given is the empty collection.
    pub fn evaluate_with<'a>(
        &self,
        resource: &'a Value,
        variables: &'a [(&'a str, &'a Value)],
    ) -> Vec<Node<'a>> {
        let env = Env {
            resource,
            variables,
        };
        eval(&self.root, &[Node::borrowed(resource, None)], &env)
    }

    /// Evaluates to a boolean as FHIRPath does for a condition: `None` when
    /// the result is empty.
    pub fn test<'a>(
        &self,
        resource: &'a Value,
        variables: &'a [(&'a str, &'a Value)],
    ) -> Option<bool> {
        truth(&self.evaluate_with(resource, variables))
    }
}

/// What evaluating an expression can look at in the resource it starts on,
/// worked out from the expression alone (no data): element paths from the
/// resource root (`address.city`; a choice element by its name without the
/// type, `deceased`; `""` for the resource itself). An element counts as read
/// when its values decide something: the result, a comparison, a condition
/// of `where()` or `exists()`, a function's argument; passing through
/// `meta` on the way to `meta.tag` reads only `meta.tag`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reach {
    /// The elements read on the way (a condition's, a comparison's).
    pub reads: Vec<String>,
    /// Where the result stands (the elements it returns); empty for a
    /// computed value (a boolean, a literal) or another resource (`resolve()`).
    pub focus: Vec<String>,
}

impl Expression {
    /// What this expression reads of the resource it is evaluated on: its
    /// result's elements ([`Reach::focus`]) are read by whoever uses it.
    pub fn reach(&self) -> Reach {
        self.reach_from(&[String::new()])
    }

    /// What this expression reads when evaluated on elements at `focus`
    /// (a composite's components are relative to its element).
    pub fn reach_from(&self, focus: &[String]) -> Reach {
        let mut reads = Vec::new();
        let focus = reach(&self.root, focus, &mut reads);
        reads.sort();
        reads.dedup();
        Reach { reads, focus }
    }
}

fn child_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// Elements narrowed to one type: a choice element to its variant
/// (`value as Quantity` is `valueQuantity`), which still lies within an
/// element that is not a choice for [`Reach`]'s users, who match variants
/// to their element.
fn typed(focus: &[String], type_name: &str) -> Vec<String> {
    let name = type_name.rsplit('.').next().unwrap_or(type_name);
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return focus.to_vec();
    };
    let suffix: String = first.to_uppercase().chain(chars).collect();
    focus
        .iter()
        .map(|p| {
            if p.is_empty() {
                p.clone()
            } else {
                format!("{p}{suffix}")
            }
        })
        .collect()
}

/// The focus of `expr` evaluated on elements at `focus`, adding what it
/// reads to `reads`.
fn reach(expr: &Expr, focus: &[String], reads: &mut Vec<String>) -> Vec<String> {
    // The values at `expr`'s focus decide something: they are read.
    let read = |expr: &Expr, focus: &[String], reads: &mut Vec<String>| {
        let at = reach(expr, focus, reads);
        reads.extend(at);
    };
    let base_focus = |base: &Option<Box<Expr>>, reads: &mut Vec<String>| match base {
        Some(base) => reach(base, focus, reads),
        None => focus.to_vec(),
    };
    match expr {
        Expr::Literal(_) | Expr::Variable(_) => Vec::new(),
        Expr::Resource => vec![String::new()],
        Expr::This => focus.to_vec(),
        Expr::Member { base, name } => {
            let from = base_focus(base, reads);
            // A capitalised name is a type filter (`Patient.name`, `Resource.meta`).
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                return from;
            }
            from.iter().map(|p| child_path(p, name)).collect()
        }
        Expr::Call { base, func } => {
            let from = base_focus(base, reads);
            match func {
                Func::Where(condition) => {
                    read(condition, &from, reads);
                    from
                }
                Func::Exists(condition) => {
                    match condition {
                        Some(condition) => read(condition, &from, reads),
                        None => reads.extend(from),
                    }
                    Vec::new()
                }
                Func::StartsWith(argument) | Func::Contains(argument) => {
                    reads.extend(from);
                    read(argument, focus, reads);
                    Vec::new()
                }
                Func::Extension(_) => from.iter().map(|p| child_path(p, "extension")).collect(),
                // Another resource: nothing more of this one.
                Func::Resolve => {
                    reads.extend(from);
                    Vec::new()
                }
                Func::Empty | Func::Not | Func::Count | Func::HasValue | Func::Is(_) => {
                    reads.extend(from);
                    Vec::new()
                }
                Func::OfType(type_name) | Func::As(type_name) => typed(&from, type_name),
                Func::First | Func::Last => from,
            }
        }
        Expr::Index { base, .. } => reach(base, focus, reads),
        Expr::Union(items) => items
            .iter()
            .flat_map(|item| reach(item, focus, reads))
            .collect(),
        Expr::As(inner, type_name) => typed(&reach(inner, focus, reads), type_name),
        Expr::Is(inner, _) => {
            read(inner, focus, reads);
            Vec::new()
        }
        Expr::Equals { left, right, .. }
        | Expr::And(left, right)
        | Expr::Or(left, right)
        | Expr::Xor(left, right)
        | Expr::Implies(left, right) => {
            read(left, focus, reads);
            read(right, focus, reads);
            Vec::new()
        }
    }
}

/// What an evaluation can refer to besides its input: `%resource` and variables.
struct Env<'a> {
    resource: &'a Value,
    variables: &'a [(&'a str, &'a Value)],
}

// ---------------------------------------------------------------- lexing

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// A backtick-delimited identifier: never a keyword.
    Quoted(String),
    Str(String),
    Num(f64),
    Var(String),
    Dot,
    Comma,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Pipe,
    Eq,
    Ne,
}

fn lex(source: &str) -> Result<Vec<Token>, FhirPathError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let err = |msg: String| Err(FhirPathError(format!("{msg} in `{source}`")));
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '.' => {
                tokens.push(Token::Dot);
                i += 1;
            }
            ',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            '(' => {
                tokens.push(Token::LParen);
                i += 1;
            }
            ')' => {
                tokens.push(Token::RParen);
                i += 1;
            }
            '[' => {
                tokens.push(Token::LBracket);
                i += 1;
            }
            ']' => {
                tokens.push(Token::RBracket);
                i += 1;
            }
            '|' => {
                tokens.push(Token::Pipe);
                i += 1;
            }
            '=' => {
                tokens.push(Token::Eq);
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push(Token::Ne);
                i += 2;
            }
            '\'' | '`' => {
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return err("unterminated literal".into()),
                        Some(&ch) if ch == quote => {
                            i += 1;
                            break;
                        }
                        Some('\\') => {
                            let escaped = match chars.get(i + 1) {
                                Some('n') => '\n',
                                Some('t') => '\t',
                                Some('r') => '\r',
                                Some(&other) => other,
                                None => return err("unterminated literal".into()),
                            };
                            text.push(escaped);
                            i += 2;
                        }
                        Some(&ch) => {
                            text.push(ch);
                            i += 1;
                        }
                    }
                }
                tokens.push(if quote == '`' {
                    Token::Quoted(text)
                } else {
                    Token::Str(text)
                });
            }
            '%' | '$' => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name.len() < 2 {
                    return err(format!("bad variable `{name}`"));
                }
                tokens.push(Token::Var(name));
            }
            c if c.is_ascii_digit() => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                if chars.get(i) == Some(&'.') && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                {
                    i += 1;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
                let text: String = chars[start..i].iter().collect();
                match text.parse() {
                    Ok(n) => tokens.push(Token::Num(n)),
                    Err(_) => return err(format!("bad number `{text}`")),
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push(Token::Ident(chars[start..i].iter().collect()));
            }
            other => return err(format!("unexpected character `{other}`")),
        }
    }
    Ok(tokens)
}

// ---------------------------------------------------------------- parsing

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn peek_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(name)) if name == keyword)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn expect(&mut self, expected: Token) -> Result<(), FhirPathError> {
        match self.next() {
            Some(token) if token == expected => Ok(()),
            other => Err(FhirPathError(format!(
                "expected {expected:?}, found {other:?}"
            ))),
        }
    }

    // Precedence, loosest first: implies, or/xor, and, =/!=, |, is/as, path.
    fn expression(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.or()?;
        while self.peek_keyword("implies") {
            self.pos += 1;
            left = Expr::Implies(Box::new(left), Box::new(self.or()?));
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.and()?;
        loop {
            if self.peek_keyword("or") {
                self.pos += 1;
                left = Expr::Or(Box::new(left), Box::new(self.and()?));
            } else if self.peek_keyword("xor") {
                self.pos += 1;
                left = Expr::Xor(Box::new(left), Box::new(self.and()?));
            } else {
                return Ok(left);
            }
        }
    }

    fn and(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.equality()?;
        while self.peek_keyword("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.equality()?));
        }
        Ok(left)
    }

    fn equality(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.union()?;
        loop {
            let negate = match self.peek() {
                Some(Token::Eq) => false,
                Some(Token::Ne) => true,
                _ => return Ok(left),
            };
            self.pos += 1;
            let right = self.union()?;
            left = Expr::Equals {
                left: Box::new(left),
                right: Box::new(right),
                negate,
            };
        }
    }

    fn union(&mut self) -> Result<Expr, FhirPathError> {
        let first = self.type_expression()?;
        if self.peek() != Some(&Token::Pipe) {
            return Ok(first);
        }
        let mut members = vec![first];
        while self.peek() == Some(&Token::Pipe) {
            self.pos += 1;
            members.push(self.type_expression()?);
        }
        Ok(Expr::Union(members))
    }

    fn type_expression(&mut self) -> Result<Expr, FhirPathError> {
        let mut left = self.postfix()?;
        loop {
            if self.peek_keyword("is") {
                self.pos += 1;
                left = Expr::Is(Box::new(left), self.type_specifier()?);
            } else if self.peek_keyword("as") {
                self.pos += 1;
                left = Expr::As(Box::new(left), self.type_specifier()?);
            } else {
                return Ok(left);
            }
        }
    }

    /// `Type`, `FHIR.Type` or `System.Type`: the last name.
    fn type_specifier(&mut self) -> Result<String, FhirPathError> {
        let mut name = self.identifier()?;
        while self.peek() == Some(&Token::Dot) {
            self.pos += 1;
            name = self.identifier()?;
        }
        Ok(name)
    }

    fn identifier(&mut self) -> Result<String, FhirPathError> {
        match self.next() {
            Some(Token::Ident(name)) | Some(Token::Quoted(name)) => Ok(name),
            other => Err(FhirPathError(format!(
                "expected an identifier, found {other:?}"
            ))),
        }
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.pos += 1;
                    expr = self.invocation(Some(expr))?;
                }
                Some(Token::LBracket) => {
                    self.pos += 1;
                    let index = match self.next() {
                        Some(Token::Num(n)) if n >= 0.0 && n.fract() == 0.0 => n as usize,
                        other => {
                            return Err(FhirPathError(format!(
                                "only literal indexes are supported, found {other:?}"
                            )))
                        }
                    };
                    self.expect(Token::RBracket)?;
                    expr = Expr::Index {
                        base: Box::new(expr),
                        index,
                    };
                }
                _ => return Ok(expr),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        match self.peek().cloned() {
            Some(Token::LParen) => {
                self.pos += 1;
                let inner = self.expression()?;
                self.expect(Token::RParen)?;
                Ok(inner)
            }
            Some(Token::Str(text)) => {
                self.pos += 1;
                Ok(Expr::Literal(Value::String(text)))
            }
            Some(Token::Num(n)) => {
                self.pos += 1;
                let number = serde_json::Number::from_f64(n)
                    .ok_or_else(|| FhirPathError(format!("bad number {n}")))?;
                Ok(Expr::Literal(Value::Number(number)))
            }
            Some(Token::Var(name)) => {
                self.pos += 1;
                match name.as_str() {
                    "%resource" | "%rootResource" => Ok(Expr::Resource),
                    "%context" | "$this" => Ok(Expr::This),
                    _ => match name.strip_prefix('%') {
                        Some(var) if !var.is_empty() => Ok(Expr::Variable(var.to_string())),
                        _ => Err(FhirPathError(format!("unsupported variable `{name}`"))),
                    },
                }
            }
            Some(Token::Ident(name)) if name == "true" || name == "false" => {
                self.pos += 1;
                Ok(Expr::Literal(Value::Bool(name == "true")))
            }
            Some(Token::Ident(_)) | Some(Token::Quoted(_)) => self.invocation(None),
            other => Err(FhirPathError(format!("unexpected {other:?}"))),
        }
    }

    /// A member name or a function call, applied to `base` (or the input).
    fn invocation(&mut self, base: Option<Expr>) -> Result<Expr, FhirPathError> {
        let quoted = matches!(self.peek(), Some(Token::Quoted(_)));
        let name = self.identifier()?;
        let base = base.map(Box::new);
        if quoted || self.peek() != Some(&Token::LParen) {
            return Ok(Expr::Member { base, name });
        }
        self.pos += 1;
        let mut args = Vec::new();
        if self.peek() != Some(&Token::RParen) {
            loop {
                args.push(self.expression()?);
                if self.peek() == Some(&Token::Comma) {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        self.expect(Token::RParen)?;
        let func = function(&name, args)?;
        Ok(match func {
            Func::As(type_name) => {
                Expr::As(base.unwrap_or_else(|| Box::new(Expr::This)), type_name)
            }
            Func::Is(type_name) => {
                Expr::Is(base.unwrap_or_else(|| Box::new(Expr::This)), type_name)
            }
            func => Expr::Call { base, func },
        })
    }
}

fn function(name: &str, mut args: Vec<Expr>) -> Result<Func, FhirPathError> {
    let arity = |n: usize, args: &[Expr]| {
        if args.len() == n {
            Ok(())
        } else {
            Err(FhirPathError(format!(
                "{name}() takes {n} argument(s), got {}",
                args.len()
            )))
        }
    };
    // A type argument is written as a bare identifier: `ofType(Quantity)`.
    let type_arg = |args: &mut Vec<Expr>| -> Result<String, FhirPathError> {
        arity(1, args)?;
        match args.pop() {
            Some(Expr::Member { base: None, name }) => Ok(name),
            Some(Expr::Member {
                base: Some(namespace),
                name,
            }) if matches!(*namespace, Expr::Member { base: None, .. }) => Ok(name),
            other => Err(FhirPathError(format!(
                "expected a type name, got {other:?}"
            ))),
        }
    };
    let one = |args: &mut Vec<Expr>| -> Result<Box<Expr>, FhirPathError> {
        arity(1, args)?;
        Ok(Box::new(args.pop().expect("arity checked")))
    };
    Ok(match name {
        "where" => Func::Where(one(&mut args)?),
        "exists" => {
            if args.is_empty() {
                Func::Exists(None)
            } else {
                Func::Exists(Some(one(&mut args)?))
            }
        }
        "empty" => arity(0, &args).map(|_| Func::Empty)?,
        "not" => arity(0, &args).map(|_| Func::Not)?,
        "first" => arity(0, &args).map(|_| Func::First)?,
        "last" => arity(0, &args).map(|_| Func::Last)?,
        "count" => arity(0, &args).map(|_| Func::Count)?,
        "hasValue" => arity(0, &args).map(|_| Func::HasValue)?,
        "resolve" => arity(0, &args).map(|_| Func::Resolve)?,
        "ofType" => Func::OfType(type_arg(&mut args)?),
        "as" => Func::As(type_arg(&mut args)?),
        "is" => Func::Is(type_arg(&mut args)?),
        "extension" => match *one(&mut args)? {
            Expr::Literal(Value::String(url)) => Func::Extension(url),
            other => {
                return Err(FhirPathError(format!(
                    "extension() takes a string literal, got {other:?}"
                )))
            }
        },
        "startsWith" => Func::StartsWith(one(&mut args)?),
        "contains" => Func::Contains(one(&mut args)?),
        _ => return Err(FhirPathError(format!("unsupported function {name}()"))),
    })
}

// ---------------------------------------------------------------- evaluation

fn eval<'a>(expr: &Expr, input: &[Node<'a>], env: &Env<'a>) -> Vec<Node<'a>> {
    match expr {
        Expr::Literal(value) => vec![Node {
            value: Cow::Owned(value.clone()),
            fhir_type: None,
        }],
        Expr::Resource => vec![Node::borrowed(env.resource, None)],
        Expr::Variable(name) => env
            .variables
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, value)| Node::borrowed(value, None))
            .collect(),
        Expr::This => input.to_vec(),
        Expr::Member { base, name } => {
            let base_items;
            let items = match base {
                Some(base) => {
                    base_items = eval(base, input, env);
                    &base_items[..]
                }
                None => input,
            };
            let mut out = Vec::new();
            for item in items {
                member(item, name, &mut out);
            }
            out
        }
        Expr::Call { base, func } => {
            let base_items;
            let items = match base {
                Some(base) => {
                    base_items = eval(base, input, env);
                    &base_items[..]
                }
                None => input,
            };
            call(func, items, env)
        }
        Expr::Index { base, index } => eval(base, input, env)
            .into_iter()
            .nth(*index)
            .into_iter()
            .collect(),
        Expr::Union(members) => {
            let mut out: Vec<Node<'a>> = Vec::new();
            for member in members {
                for node in eval(member, input, env) {
                    if !out.iter().any(|seen| same_node(seen, &node)) {
                        out.push(node);
                    }
                }
            }
            out
        }
        Expr::Is(base, type_name) => {
            let items = eval(base, input, env);
            match items.as_slice() {
                [single] => vec![Node::boolean(is_type(single, type_name))],
                _ => Vec::new(),
            }
        }
        Expr::As(base, type_name) => eval(base, input, env)
            .into_iter()
            .filter(|node| is_type(node, type_name))
            .collect(),
        Expr::Equals {
            left,
            right,
            negate,
        } => {
            let left = eval(left, input, env);
            let right = eval(right, input, env);
            if left.is_empty() || right.is_empty() {
                return Vec::new();
            }
            let equal = left.len() == right.len()
                && left
                    .iter()
                    .zip(&right)
                    .all(|(l, r)| values_equal(&l.value, &r.value));
            vec![Node::boolean(equal != *negate)]
        }
        Expr::And(left, right) => {
            let (l, r) = (
                truth(&eval(left, input, env)),
                truth(&eval(right, input, env)),
            );
            match (l, r) {
                (Some(false), _) | (_, Some(false)) => vec![Node::boolean(false)],
                (Some(true), Some(true)) => vec![Node::boolean(true)],
                _ => Vec::new(),
            }
        }
        Expr::Or(left, right) => {
            let (l, r) = (
                truth(&eval(left, input, env)),
                truth(&eval(right, input, env)),
            );
            match (l, r) {
                (Some(true), _) | (_, Some(true)) => vec![Node::boolean(true)],
                (Some(false), Some(false)) => vec![Node::boolean(false)],
                _ => Vec::new(),
            }
        }
        Expr::Implies(left, right) => {
            match (
                truth(&eval(left, input, env)),
                truth(&eval(right, input, env)),
            ) {
                (Some(false), _) | (_, Some(true)) => vec![Node::boolean(true)],
                (Some(true), Some(false)) => vec![Node::boolean(false)],
                _ => Vec::new(),
            }
        }
        Expr::Xor(left, right) => {
            match (
                truth(&eval(left, input, env)),
                truth(&eval(right, input, env)),
            ) {
                (Some(l), Some(r)) => vec![Node::boolean(l != r)],
                _ => Vec::new(),
            }
        }
    }
}

/// Union de-duplication: the same JSON value reached twice (by address), or
/// equal computed values.
fn same_node(a: &Node<'_>, b: &Node<'_>) -> bool {
    match (&a.value, &b.value) {
        (Cow::Borrowed(x), Cow::Borrowed(y)) => std::ptr::eq(*x, *y),
        (x, y) => x == y,
    }
}

/// A collection as a boolean: empty is unknown, a single boolean is itself,
/// any other non-empty collection is true.
fn truth(items: &[Node<'_>]) -> Option<bool> {
    match items {
        [] => None,
        [single] => Some(single.value.as_bool().unwrap_or(true)),
        _ => Some(true),
    }
}

fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn push_value<'a>(value: &'a Value, fhir_type: Option<&'a str>, out: &mut Vec<Node<'a>>) {
    match value {
        Value::Array(items) => out.extend(items.iter().map(|v| Node::borrowed(v, fhir_type))),
        Value::Null => {}
        other => out.push(Node::borrowed(other, fhir_type)),
    }
}

/// Child `name` of `node`: the element itself, a choice element
/// (`value` -> `valueQuantity`), or, for a capitalised name, the node itself
/// when it is a resource of that type.
fn member<'a>(node: &Node<'a>, name: &str, out: &mut Vec<Node<'a>>) {
    let Cow::Borrowed(value) = node.value else {
        return;
    };
    let Value::Object(map) = value else {
        return;
    };
    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
        if let Some(Value::String(resource_type)) = map.get("resourceType") {
            if resource_type == name || name == "Resource" || name == "DomainResource" {
                out.push(node.clone());
                return;
            }
        }
    }
    if let Some(child) = map.get(name) {
        push_value(child, None, out);
        return;
    }
    for (key, child) in map {
        if let Some(suffix) = key.strip_prefix(name) {
            if let Some(fhir_type) = choice_type(suffix) {
                push_value(child, Some(fhir_type), out);
            }
        }
    }
}

fn call<'a>(func: &Func, items: &[Node<'a>], env: &Env<'a>) -> Vec<Node<'a>> {
    match func {
        Func::Where(criteria) => items
            .iter()
            .filter(|item| {
                let result = eval(criteria, std::slice::from_ref(*item), env);
                truth(&result) == Some(true)
            })
            .cloned()
            .collect(),
        Func::Exists(None) => vec![Node::boolean(!items.is_empty())],
        Func::Exists(Some(criteria)) => {
            vec![Node::boolean(items.iter().any(|item| {
                truth(&eval(criteria, std::slice::from_ref(item), env)) == Some(true)
            }))]
        }
        Func::Empty => vec![Node::boolean(items.is_empty())],
        Func::Not => match truth(items) {
            Some(b) => vec![Node::boolean(!b)],
            None => Vec::new(),
        },
        Func::First => items.first().cloned().into_iter().collect(),
        Func::Last => items.last().cloned().into_iter().collect(),
        Func::Count => vec![Node {
            value: Cow::Owned(Value::from(items.len())),
            fhir_type: Some("integer"),
        }],
        Func::HasValue => vec![Node::boolean(matches!(
            items,
            [single] if !single.value.is_object() && !single.value.is_array()
        ))],
        Func::Resolve => items.iter().filter_map(resolve).collect(),
        Func::OfType(type_name) => items
            .iter()
            .filter(|node| is_type(node, type_name))
            .cloned()
            .collect(),
        // `as`/`is` are rewritten into `Expr::As`/`Expr::Is` while parsing.
        Func::As(_) | Func::Is(_) => Vec::new(),
        Func::Extension(url) => {
            let mut out = Vec::new();
            for item in items {
                let mut extensions = Vec::new();
                member(item, "extension", &mut extensions);
                out.extend(extensions.into_iter().filter(|ext| {
                    ext.value.get("url").and_then(Value::as_str) == Some(url.as_str())
                }));
            }
            out
        }
        Func::StartsWith(arg) | Func::Contains(arg) => {
            let [item] = items else {
                return Vec::new();
            };
            let needle = eval(arg, items, env);
            let (Some(text), [needle]) = (item.value.as_str(), needle.as_slice()) else {
                return Vec::new();
            };
            let Some(needle) = needle.value.as_str() else {
                return Vec::new();
            };
            let hit = if matches!(func, Func::StartsWith(_)) {
                text.starts_with(needle)
            } else {
                text.contains(needle)
            };
            vec![Node::boolean(hit)]
        }
    }
}

/// `resolve()` without a server: a Reference becomes a node typed with the
/// resource type its `reference` (or `type`) names; the value stays the Reference.
fn resolve<'a>(node: &Node<'a>) -> Option<Node<'a>> {
    let Cow::Borrowed(value) = node.value else {
        return None;
    };
    if let Some(Value::String(resource_type)) = value.get("resourceType") {
        return Some(Node::borrowed(value, Some(resource_type.as_str())));
    }
    let target = match value.get("reference").and_then(Value::as_str) {
        Some(reference) => reference_type(reference),
        None => value
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| is_known_resource_type(t)),
    }?;
    Some(Node::borrowed(value, Some(target)))
}

/// The resource type a reference string points at: `Patient/1`,
/// `Patient/1/_history/2`, or an absolute URL ending so.
pub fn reference_type(reference: &str) -> Option<&str> {
    split_reference(reference).map(|(t, _)| t)
}

/// `(type, id)` of a relative or absolute reference whose tail is
/// `Type/id` (optionally followed by `/_history/version`).
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let reference = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut segments = reference.rsplit('/');
    let mut last = segments.next()?;
    let mut before = segments.next()?;
    if before == "_history" {
        last = segments.next()?;
        before = segments.next()?;
    }
    (is_known_resource_type(before) && crate::resource_types::is_valid_id(last))
        .then_some((before, last))
}

/// FHIR data types a choice element can carry, by their suffix in JSON
/// (`valueDateTime`), with the canonical type name.
const CHOICE_TYPES: &[(&str, &str)] = &[
    ("Address", "Address"),
    ("Age", "Age"),
    ("Annotation", "Annotation"),
    ("Attachment", "Attachment"),
    ("Base64Binary", "base64Binary"),
    ("Boolean", "boolean"),
    ("Canonical", "canonical"),
    ("Code", "code"),
    ("CodeableConcept", "CodeableConcept"),
    ("Coding", "Coding"),
    ("ContactDetail", "ContactDetail"),
    ("ContactPoint", "ContactPoint"),
    ("Contributor", "Contributor"),
    ("Count", "Count"),
    ("DataRequirement", "DataRequirement"),
    ("Date", "date"),
    ("DateTime", "dateTime"),
    ("Decimal", "decimal"),
    ("Distance", "Distance"),
    ("Dosage", "Dosage"),
    ("Duration", "Duration"),
    ("Expression", "Expression"),
    ("HumanName", "HumanName"),
    ("Id", "id"),
    ("Identifier", "Identifier"),
    ("Instant", "instant"),
    ("Integer", "integer"),
    ("Markdown", "markdown"),
    ("Meta", "Meta"),
    ("Money", "Money"),
    ("Oid", "oid"),
    ("ParameterDefinition", "ParameterDefinition"),
    ("Period", "Period"),
    ("PositiveInt", "positiveInt"),
    ("Quantity", "Quantity"),
    ("Range", "Range"),
    ("Ratio", "Ratio"),
    ("Reference", "Reference"),
    ("RelatedArtifact", "RelatedArtifact"),
    ("SampledData", "SampledData"),
    ("Signature", "Signature"),
    ("String", "string"),
    ("Time", "time"),
    ("Timing", "Timing"),
    ("TriggerDefinition", "TriggerDefinition"),
    ("UnsignedInt", "unsignedInt"),
    ("Uri", "uri"),
    ("Url", "url"),
    ("UsageContext", "UsageContext"),
    ("Uuid", "uuid"),
];

fn choice_type(suffix: &str) -> Option<&'static str> {
    CHOICE_TYPES
        .binary_search_by(|(s, _)| (*s).cmp(suffix))
        .ok()
        .map(|i| CHOICE_TYPES[i].1)
}

/// Whether `actual` is `wanted` or one of its specialisations (names compared
/// ignoring case, so `System.DateTime` matches `dateTime`).
fn type_matches(actual: &str, wanted: &str) -> bool {
    if actual.eq_ignore_ascii_case(wanted) {
        return true;
    }
    let parent = match actual {
        "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity" => {
            "Quantity"
        }
        "code" | "id" | "markdown" => "string",
        "url" | "canonical" | "uuid" | "oid" => "uri",
        "positiveInt" | "unsignedInt" => "integer",
        _ => return false,
    };
    parent.eq_ignore_ascii_case(wanted)
}

/// `node is type_name`: by the known type, else by the JSON shape.
fn is_type(node: &Node<'_>, type_name: &str) -> bool {
    if let Some(actual) = node.fhir_type {
        return type_matches(actual, type_name);
    }
    match &*node.value {
        Value::String(_) => matches!(
            type_name.to_ascii_lowercase().as_str(),
            "string"
                | "code"
                | "id"
                | "markdown"
                | "uri"
                | "url"
                | "canonical"
                | "uuid"
                | "oid"
                | "date"
                | "datetime"
                | "instant"
                | "time"
                | "base64binary"
        ),
        Value::Bool(_) => type_name.eq_ignore_ascii_case("boolean"),
        Value::Number(n) => {
            type_name.eq_ignore_ascii_case("decimal")
                || (n.is_i64() || n.is_u64())
                    && matches!(
                        type_name,
                        "integer" | "Integer" | "positiveInt" | "unsignedInt"
                    )
        }
        Value::Object(map) => {
            if let Some(Value::String(resource_type)) = map.get("resourceType") {
                return resource_type == type_name
                    || type_name == "Resource"
                    || type_name == "DomainResource";
            }
            infer_complex_type(&node.value).is_some_and(|t| type_matches(t, type_name))
        }
        _ => false,
    }
}

const CONTACT_POINT_SYSTEMS: &[&str] = &["phone", "fax", "email", "pager", "url", "sms", "other"];

/// The complex FHIR type a JSON object most likely is, from its members.
pub fn infer_complex_type(value: &Value) -> Option<&'static str> {
    let map = value.as_object()?;
    let has = |key: &str| map.contains_key(key);
    let string = |key: &str| map.get(key).and_then(Value::as_str);
    Some(if has("coding") {
        "CodeableConcept"
    } else if has("reference") || string("type").is_some() && (has("identifier") || has("display"))
    {
        "Reference"
    } else if has("family") || has("given") || has("prefix") || has("suffix") {
        "HumanName"
    } else if has("line")
        || has("city")
        || has("district")
        || has("state")
        || has("postalCode")
        || has("country")
    {
        "Address"
    } else if has("start") || has("end") {
        "Period"
    } else if has("low") || has("high") {
        "Range"
    } else if has("numerator") || has("denominator") {
        "Ratio"
    } else if map.get("value").is_some_and(Value::is_number) {
        if has("currency") {
            "Money"
        } else {
            "Quantity"
        }
    } else if string("value").is_some() {
        if string("system").is_some_and(|s| CONTACT_POINT_SYSTEMS.contains(&s))
            || has("rank")
            || (!has("system") && !has("type") && !has("assigner") && has("use"))
        {
            "ContactPoint"
        } else {
            "Identifier"
        }
    } else if has("code") || has("system") {
        "Coding"
    } else if has("event") || has("repeat") {
        "Timing"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_str<'a>(expr: &str, resource: &'a Value) -> Vec<Node<'a>> {
        Expression::parse(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .evaluate(resource)
    }

    fn values(expr: &str, resource: &Value) -> Vec<Value> {
        eval_str(expr, resource)
            .into_iter()
            .map(|n| n.value.into_owned())
            .collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "name": [
                {"family": "Smith", "given": ["Ann", "Marie"]},
                {"family": "Jones"}
            ],
            "telecom": [
                {"system": "phone", "value": "555"},
                {"system": "email", "value": "a@b.c"}
            ],
            "deceasedBoolean": false,
            "generalPractitioner": [{"reference": "Practitioner/9"}, {"reference": "Organization/2"}],
            "extension": [{"url": "http://x/race", "valueString": "r"}],
            "link": [{"other": {"reference": "https://h/fhir/R4/RelatedPerson/7/_history/2"}}]
        })
    }

    #[test]
    fn paths_flatten_arrays_and_skip_missing() {
        let p = patient();
        assert_eq!(
            values("Patient.name.given", &p),
            vec![json!("Ann"), json!("Marie")]
        );
        assert_eq!(
            values("Patient.name.family", &p),
            vec![json!("Smith"), json!("Jones")]
        );
        assert!(values("Patient.photo.url", &p).is_empty());
        assert!(values("Observation.code", &p).is_empty());
        assert_eq!(values("Resource.id", &p), vec![json!("p1")]);
        assert_eq!(values("DomainResource.id", &p), vec![json!("p1")]);
        assert_eq!(values("Patient.name[1].family", &p), vec![json!("Jones")]);
        assert_eq!(
            values("Patient.name.first().family", &p),
            vec![json!("Smith")]
        );
        assert_eq!(
            values("Patient.name.last().family", &p),
            vec![json!("Jones")]
        );
    }

    #[test]
    fn choice_elements_carry_their_type() {
        let obs = json!({
            "resourceType": "Observation",
            "valueQuantity": {"value": 5, "unit": "mg"},
            "effectivePeriod": {"start": "2020"},
            "component": [
                {"valueCodeableConcept": {"text": "x"}},
                {"valueString": "y"}
            ]
        });
        let nodes = eval_str("Observation.value", &obs);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].fhir_type, Some("Quantity"));
        assert_eq!(
            eval_str("Observation.effective", &obs)[0].fhir_type,
            Some("Period")
        );
        let types: Vec<_> = eval_str("Observation.component.value", &obs)
            .into_iter()
            .map(|n| n.fhir_type)
            .collect();
        assert_eq!(types, vec![Some("CodeableConcept"), Some("string")]);
        // Element names that merely start like a type are not choices.
        let enc = json!({"resourceType": "Encounter", "classHistory": [{"class": {"code": "x"}}]});
        assert!(eval_str("Encounter.class", &enc).is_empty());
    }

    #[test]
    fn of_type_as_and_is() {
        let obs = json!({
            "resourceType": "Observation",
            "valueQuantity": {"value": 5},
            "component": [{"valueString": "s"}, {"valueDateTime": "2020"}]
        });
        assert_eq!(
            eval_str("(Observation.value.ofType(Quantity))", &obs).len(),
            1
        );
        assert!(eval_str("Observation.value.ofType(CodeableConcept)", &obs).is_empty());
        assert_eq!(eval_str("Observation.value as Quantity", &obs).len(), 1);
        assert_eq!(eval_str("Observation.value.as(Quantity)", &obs).len(), 1);
        assert_eq!(
            values("Observation.value is Quantity", &obs),
            vec![json!(true)]
        );
        assert_eq!(
            values("Observation.value.is(FHIR.Range)", &obs),
            vec![json!(false)]
        );
        assert_eq!(
            values("Observation.component.value.ofType(string)", &obs),
            vec![json!("s")]
        );
        // System type names match FHIR primitives.
        assert_eq!(
            values(
                "Observation.component.value.ofType(DateTime) | Observation.component.value.ofType(Period)",
                &obs
            ),
            vec![json!("2020")]
        );
        // Untyped nodes are matched by shape.
        let p = json!({"resourceType": "Patient", "name": [{"family": "X"}], "gender": "male"});
        assert_eq!(eval_str("Patient.name.ofType(HumanName)", &p).len(), 1);
        assert_eq!(eval_str("Patient.gender.ofType(code)", &p).len(), 1);
        assert!(eval_str("Patient.gender.ofType(boolean)", &p).is_empty());
        // Age is a Quantity.
        let c = json!({"resourceType": "Condition", "onsetAge": {"value": 3}});
        assert_eq!(eval_str("Condition.onset.ofType(Quantity)", &c).len(), 1);
    }

    #[test]
    fn where_with_equality_and_logic() {
        let p = patient();
        assert_eq!(
            values("Patient.telecom.where(system='email')", &p),
            vec![json!({"system": "email", "value": "a@b.c"})]
        );
        assert_eq!(
            values("Patient.telecom.where(system != 'email').value", &p),
            vec![json!("555")]
        );
        assert_eq!(
            values(
                "Patient.telecom.where(system='email' or system='phone').value",
                &p
            ),
            vec![json!("555"), json!("a@b.c")]
        );
        assert!(values("Patient.telecom.where(system='email' and value='555')", &p).is_empty());
        assert_eq!(
            values("Patient.telecom.where(value.exists()).count()", &p),
            vec![json!(2)]
        );
        assert_eq!(
            values("Patient.name.where(given.empty()).family", &p),
            vec![json!("Jones")]
        );
        assert_eq!(
            values("Patient.name.where(given.exists().not()).family", &p),
            vec![json!("Jones")]
        );
        assert_eq!(
            values("Patient.name.exists(family = 'Jones')", &p),
            vec![json!(true)]
        );
        assert_eq!(
            values("Patient.telecom.where(value.startsWith('55')).system", &p),
            vec![json!("phone")]
        );
        assert_eq!(
            values("Patient.telecom.where(value.contains('@')).system", &p),
            vec![json!("email")]
        );
        assert_eq!(
            values("Patient.active.exists() xor Patient.id.exists()", &p),
            vec![json!(true)]
        );
    }

    #[test]
    fn deceased_expression_is_three_valued() {
        let expr = "Patient.deceased.exists() and Patient.deceased != false";
        assert_eq!(values(expr, &patient()), vec![json!(false)]);
        let dead = json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"});
        assert_eq!(values(expr, &dead), vec![json!(true)]);
        let alive = json!({"resourceType": "Patient"});
        assert_eq!(values(expr, &alive), vec![json!(false)]);
    }

    #[test]
    fn resolve_checks_the_reference_type() {
        let p = patient();
        assert_eq!(
            values(
                "Patient.generalPractitioner.where(resolve() is Practitioner)",
                &p
            ),
            vec![json!({"reference": "Practitioner/9"})]
        );
        assert_eq!(
            eval_str("Patient.link.other.where(resolve() is RelatedPerson)", &p).len(),
            1
        );
        assert_eq!(
            values("Patient.generalPractitioner.resolve() is Organization", &p),
            Vec::<Value>::new(),
            "is on two items is empty"
        );
        assert_eq!(
            eval_str(
                "Patient.generalPractitioner.where((resolve() is Organization).not())",
                &p
            )
            .len(),
            1
        );
        assert!(split_reference("#c1").is_none());
        assert!(split_reference("urn:uuid:1").is_none());
        assert_eq!(split_reference("Patient/1"), Some(("Patient", "1")));
        assert!(split_reference("Nope/1").is_none());
    }

    #[test]
    fn unions_extensions_and_variables() {
        let p = patient();
        assert_eq!(
            values("Patient.name.family | Patient.name.given", &p),
            vec![json!("Smith"), json!("Jones"), json!("Ann"), json!("Marie")]
        );
        // The same element twice appears once.
        assert_eq!(values("Patient.id | Resource.id", &p), vec![json!("p1")]);
        assert_eq!(
            values("Patient.extension('http://x/race').value", &p),
            vec![json!("r")]
        );
        assert_eq!(values("%resource.id", &p), vec![json!("p1")]);
        let expr = Expression::parse("family | %resource.id").unwrap();
        let name = &p["name"][1];
        let got: Vec<Value> = expr
            .evaluate_on(Node::borrowed(name, None), &p)
            .into_iter()
            .map(|n| n.value.into_owned())
            .collect();
        assert_eq!(got, vec![json!("Jones"), json!("p1")]);
        assert_eq!(
            values("(Patient.name.family).first() | `Patient`.id", &p),
            vec![json!("Smith"), json!("p1")]
        );
    }

    #[test]
    fn parse_errors_not_panics() {
        for bad in [
            "",
            "Patient.",
            "Patient.name.frobnicate()",
            "Patient.where(",
            "Patient.name[x]",
            "'open",
            "Patient.name.ofType('x')",
            "Patient.name ^ 2",
            "Patient.extension(url)",
            "first(1)",
        ] {
            assert!(Expression::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn variables_and_implies() {
        let before = json!({"resourceType": "Observation", "status": "final"});
        let after = json!({"resourceType": "Observation", "status": "amended"});
        let vars = [("before", &before), ("after", &after)];
        let test = |expr: &str| Expression::parse(expr).unwrap().test(&after, &vars);
        assert_eq!(test("%before.status = 'final'"), Some(true));
        assert_eq!(test("%after.status = status"), Some(true));
        assert_eq!(
            test("%before.status = 'final' implies %after.status = 'final'"),
            Some(false)
        );
        assert_eq!(test("%before.exists().not() implies false"), Some(true));
        assert_eq!(test("%nothing.exists()"), Some(false));
        assert!(Expression::parse("%").is_err());
    }
}
