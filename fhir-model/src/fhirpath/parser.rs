//! FHIRPath grammar (N1) into an [`Expr`] tree, with the operators'
//! precedence and every function's arity checked at parse time.

use super::lexer::{lex, syntax, Spanned, Token};
use super::model::{model, Definition, Element};
use super::value::{calendar_unit, Decimal, Quantity, Temporal, TemporalKind};
use super::FhirPathError;

/// Deepest nesting of parentheses and arguments an expression may have,
/// the longest expression, and the deepest tree it may parse into: beyond
/// them is a syntax error, so neither parsing nor evaluation (which recurse
/// over the tree) can exhaust the stack.
pub const MAX_NESTING: usize = 64;
pub const MAX_LENGTH: usize = 8192;
pub const MAX_DEPTH: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(String),
    Temporal(Temporal),
    Quantity(Quantity),
}

/// A type name, `FHIR.Patient`, `System.Boolean` or just `Patient`.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeSpec {
    pub namespace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Mul,
    Div,
    IntDiv,
    Mod,
    Add,
    Sub,
    Concat,
    Union,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    Equiv,
    NotEquiv,
    In,
    Contains,
    And,
    Or,
    Xor,
    Implies,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `{}`
    Empty,
    Literal(Literal),
    This,
    Index,
    Total,
    /// `%name`: `resource`, `context`, `ucum`, ... or a caller's variable.
    External(String),
    /// A child element, or at the start of a path a type name filtering
    /// the input (`Patient.name`); `base: None` applies to the input.
    Member {
        base: Option<Box<Expr>>,
        name: String,
        /// The element, when the parent's type is known from the expression.
        resolved: Option<Resolved>,
    },
    Call {
        base: Option<Box<Expr>>,
        func: Func,
        args: Vec<Expr>,
    },
    /// A type argument (`ofType(Quantity)`), only ever an argument.
    Type(TypeSpec),
    Indexer(Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Is(Box<Expr>, TypeSpec),
    As(Box<Expr>, TypeSpec),
}

macro_rules! functions {
    ($($variant:ident = $name:literal ($min:literal, $max:literal)),* $(,)?) => {
        /// Every function of FHIRPath and its FHIR additions.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Func { $($variant),* }

        impl Func {
            /// The function and its least and most arguments.
            fn lookup(name: &str) -> Option<(Func, usize, usize)> {
                match name {
                    $($name => Some((Func::$variant, $min, $max)),)*
                    _ => None,
                }
            }

            /// The function's name as FHIRPath writes it.
            pub fn name(self) -> &'static str {
                match self {
                    $(Func::$variant => $name,)*
                }
            }
        }
    };
}

functions! {
    Empty = "empty"(0, 0), Exists = "exists"(0, 1), All = "all"(1, 1),
    AllTrue = "allTrue"(0, 0), AnyTrue = "anyTrue"(0, 0), AllFalse = "allFalse"(0, 0),
    AnyFalse = "anyFalse"(0, 0), SubsetOf = "subsetOf"(1, 1), SupersetOf = "supersetOf"(1, 1),
    Count = "count"(0, 0), Distinct = "distinct"(0, 0), IsDistinct = "isDistinct"(0, 0),
    Where = "where"(1, 1), Select = "select"(1, 1), Repeat = "repeat"(1, 1),
    OfType = "ofType"(1, 1), Single = "single"(0, 0), First = "first"(0, 0), Last = "last"(0, 0),
    Tail = "tail"(0, 0), Skip = "skip"(1, 1), Take = "take"(1, 1), Intersect = "intersect"(1, 1),
    Exclude = "exclude"(1, 1), Union = "union"(1, 1), Combine = "combine"(1, 1),
    Iif = "iif"(2, 3), ToBoolean = "toBoolean"(0, 0), ConvertsToBoolean = "convertsToBoolean"(0, 0),
    ToInteger = "toInteger"(0, 0), ConvertsToInteger = "convertsToInteger"(0, 0),
    ToDate = "toDate"(0, 0), ConvertsToDate = "convertsToDate"(0, 0),
    ToDateTime = "toDateTime"(0, 0), ConvertsToDateTime = "convertsToDateTime"(0, 0),
    ToDecimal = "toDecimal"(0, 0), ConvertsToDecimal = "convertsToDecimal"(0, 0),
    ToQuantity = "toQuantity"(0, 1), ConvertsToQuantity = "convertsToQuantity"(0, 1),
    ToString = "toString"(0, 0), ConvertsToString = "convertsToString"(0, 0),
    ToTime = "toTime"(0, 0), ConvertsToTime = "convertsToTime"(0, 0),
    IndexOf = "indexOf"(1, 1), Substring = "substring"(1, 2), StartsWith = "startsWith"(1, 1),
    EndsWith = "endsWith"(1, 1), Contains = "contains"(1, 1), Upper = "upper"(0, 0),
    Lower = "lower"(0, 0), Replace = "replace"(2, 2), Matches = "matches"(1, 1),
    ReplaceMatches = "replaceMatches"(2, 2), Length = "length"(0, 0), ToChars = "toChars"(0, 0),
    Split = "split"(1, 1), Join = "join"(0, 1), Trim = "trim"(0, 0), Encode = "encode"(1, 1),
    Decode = "decode"(1, 1), Escape = "escape"(1, 1), Unescape = "unescape"(1, 1),
    Abs = "abs"(0, 0), Ceiling = "ceiling"(0, 0), Exp = "exp"(0, 0), Floor = "floor"(0, 0),
    Ln = "ln"(0, 0), Log = "log"(1, 1), Power = "power"(1, 1), Round = "round"(0, 1),
    Sqrt = "sqrt"(0, 0), Truncate = "truncate"(0, 0), Children = "children"(0, 0),
    Descendants = "descendants"(0, 0), Trace = "trace"(1, 2), Now = "now"(0, 0),
    TimeOfDay = "timeOfDay"(0, 0), Today = "today"(0, 0), Aggregate = "aggregate"(1, 2),
    Is = "is"(1, 1), As = "as"(1, 1), Type = "type"(0, 0), Not = "not"(0, 0),
    Extension = "extension"(1, 1), HasValue = "hasValue"(0, 0), GetValue = "getValue"(0, 0),
    Resolve = "resolve"(0, 0), LowBoundary = "lowBoundary"(0, 1),
    HighBoundary = "highBoundary"(0, 1), Precision = "precision"(0, 0),
    Comparable = "comparable"(1, 1), MemberOf = "memberOf"(1, 1),
    Subsumes = "subsumes"(1, 1), SubsumedBy = "subsumedBy"(1, 1),
    ConformsTo = "conformsTo"(1, 1), HtmlChecks = "htmlChecks"(0, 0),
    MatchesFull = "matchesFull"(1, 1), Sort = "sort"(0, 8),
}

pub fn parse(source: &str) -> Result<Expr, FhirPathError> {
    let end = source.chars().count();
    if end > MAX_LENGTH {
        return Err(syntax(
            MAX_LENGTH,
            format!("longer than {MAX_LENGTH} characters"),
        ));
    }
    let tokens = lex(source)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        depth: 0,
        end,
    };
    let expr = parser.expression()?;
    if let Some(extra) = parser.tokens.get(parser.pos) {
        return Err(syntax(
            extra.at,
            format!("unexpected {}", describe(&extra.token)),
        ));
    }
    if depth(&expr) > MAX_DEPTH {
        return Err(syntax(0, format!("more than {MAX_DEPTH} steps deep")));
    }
    Ok(expr)
}

/// The depth of the tree, without recursion (the tree may be deep: that
/// is what is being checked).
fn depth(root: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(root, 1)];
    while let Some((expr, level)) = stack.pop() {
        deepest = deepest.max(level);
        let children: Vec<&Expr> = match expr {
            Expr::Member { base, .. } => base.iter().map(|b| b.as_ref()).collect(),
            Expr::Call { base, args, .. } => {
                base.iter().map(|b| b.as_ref()).chain(args.iter()).collect()
            }
            Expr::Indexer(a, b) | Expr::Binary(_, a, b) => vec![a, b],
            Expr::Negate(inner) | Expr::Is(inner, _) | Expr::As(inner, _) => vec![inner],
            _ => Vec::new(),
        };
        stack.extend(children.into_iter().map(|child| (child, level + 1)));
    }
    deepest
}

fn describe(token: &Token) -> String {
    match token {
        Token::Ident(s) => format!("`{s}`"),
        Token::Quoted(s) => format!("`{s}`"),
        Token::Str(s) => format!("'{s}'"),
        Token::Number(s) => format!("number {s}"),
        Token::DateTime(s) => format!("@{s}"),
        Token::Time(s) => format!("@T{s}"),
        Token::External(s) => format!("%{s}"),
        Token::Special(s) => format!("${s}"),
        Token::Symbol(s) => format!("`{s}`"),
    }
}

struct Parser {
    tokens: Vec<Spanned>,
    pos: usize,
    depth: usize,
    /// Offset of the end of the expression, for errors at the end.
    end: usize,
}

/// Binary operators by precedence level, loosest first.
const LEVELS: &[&[(&str, BinOp)]] = &[
    &[("implies", BinOp::Implies)],
    &[("or", BinOp::Or), ("xor", BinOp::Xor)],
    &[("and", BinOp::And)],
    &[("in", BinOp::In), ("contains", BinOp::Contains)],
    &[
        ("=", BinOp::Eq),
        ("~", BinOp::Equiv),
        ("!=", BinOp::Ne),
        ("!~", BinOp::NotEquiv),
    ],
    &[
        ("<=", BinOp::Le),
        ("<", BinOp::Lt),
        (">=", BinOp::Ge),
        (">", BinOp::Gt),
    ],
    &[("|", BinOp::Union)],
    // is/as sit here (see `binary`).
    &[],
    &[("+", BinOp::Add), ("-", BinOp::Sub), ("&", BinOp::Concat)],
    &[
        ("*", BinOp::Mul),
        ("/", BinOp::Div),
        ("div", BinOp::IntDiv),
        ("mod", BinOp::Mod),
    ],
];

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|t| &t.token)
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |t| t.at)
    }

    fn is_symbol(&self, symbol: &str) -> bool {
        matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol)
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(s)) if s == keyword)
    }

    fn expect(&mut self, symbol: &str) -> Result<(), FhirPathError> {
        if self.is_symbol(symbol) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{symbol}`")))
        }
    }

    fn unexpected(&self, wanted: &str) -> FhirPathError {
        let found = match self.peek() {
            Some(token) => describe(token),
            None => "the end of the expression".into(),
        };
        syntax(self.at(), format!("expected {wanted}, found {found}"))
    }

    fn expression(&mut self) -> Result<Expr, FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(syntax(
                self.at(),
                format!("nested deeper than {MAX_NESTING} levels"),
            ));
        }
        let expr = self.binary(0);
        self.depth -= 1;
        expr
    }

    fn operator(&self, level: usize) -> Option<BinOp> {
        LEVELS[level].iter().find_map(|(text, op)| {
            let hit = if text.starts_with(char::is_alphabetic) {
                self.is_keyword(text)
            } else {
                self.is_symbol(text)
            };
            hit.then_some(*op)
        })
    }

    fn binary(&mut self, level: usize) -> Result<Expr, FhirPathError> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.binary(level + 1)?;
        loop {
            if LEVELS[level].is_empty() {
                // The type operators: `x is T`, `x as T`.
                if self.is_keyword("is") || self.is_keyword("as") {
                    let is = self.is_keyword("is");
                    self.pos += 1;
                    let spec = self.type_specifier()?;
                    left = if is {
                        Expr::Is(Box::new(left), spec)
                    } else {
                        Expr::As(Box::new(left), spec)
                    };
                    continue;
                }
                return Ok(left);
            }
            let Some(op) = self.operator(level) else {
                return Ok(left);
            };
            self.pos += 1;
            let right = self.binary(level + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, FhirPathError> {
        if self.is_symbol("-") || self.is_symbol("+") {
            let negate = self.is_symbol("-");
            self.pos += 1;
            self.depth += 1;
            if self.depth > MAX_NESTING {
                return Err(syntax(
                    self.at(),
                    format!("nested deeper than {MAX_NESTING} levels"),
                ));
            }
            let operand = self.unary();
            self.depth -= 1;
            let operand = operand?;
            return Ok(match (negate, operand) {
                (false, operand) => operand,
                (true, Expr::Literal(Literal::Integer(n))) => Expr::Literal(Literal::Integer(-n)),
                (true, Expr::Literal(Literal::Decimal(d))) => {
                    Expr::Literal(Literal::Decimal(d.negated()))
                }
                (true, operand) => Expr::Negate(Box::new(operand)),
            });
        }
        self.postfix()
    }

    fn type_specifier(&mut self) -> Result<TypeSpec, FhirPathError> {
        let first = self.identifier()?;
        if self.is_symbol(".") {
            self.pos += 1;
            let name = self.identifier()?;
            return Ok(TypeSpec {
                namespace: Some(first),
                name,
            });
        }
        Ok(TypeSpec {
            namespace: None,
            name: first,
        })
    }

    fn identifier(&mut self) -> Result<String, FhirPathError> {
        match self.peek() {
            Some(Token::Ident(name)) | Some(Token::Quoted(name)) => {
                let name = name.clone();
                self.pos += 1;
                Ok(name)
            }
            _ => Err(self.unexpected("an identifier")),
        }
    }

    fn postfix(&mut self) -> Result<Expr, FhirPathError> {
        let mut expr = self.term()?;
        loop {
            if self.is_symbol(".") {
                self.pos += 1;
                expr = self.invocation(Some(expr))?;
            } else if self.is_symbol("[") {
                self.pos += 1;
                let index = self.expression()?;
                self.expect("]")?;
                expr = Expr::Indexer(Box::new(expr), Box::new(index));
            } else {
                return Ok(expr);
            }
        }
    }

    fn term(&mut self) -> Result<Expr, FhirPathError> {
        let at = self.at();
        let Some(token) = self.peek().cloned() else {
            return Err(self.unexpected("an expression"));
        };
        let literal = |l| Ok(Expr::Literal(l));
        match token {
            Token::Symbol("(") => {
                self.pos += 1;
                let inner = self.expression()?;
                self.expect(")")?;
                Ok(inner)
            }
            Token::Symbol("{") => {
                self.pos += 1;
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Token::Str(text) => {
                self.pos += 1;
                literal(Literal::String(text))
            }
            Token::Number(text) => {
                self.pos += 1;
                self.number(&text, at)
            }
            Token::DateTime(text) => {
                self.pos += 1;
                let kind = if text.contains('T') {
                    TemporalKind::DateTime
                } else {
                    TemporalKind::Date
                };
                let value = Temporal::parse_date_time(&text, kind)
                    .ok_or_else(|| syntax(at, format!("`@{text}` is not a date or dateTime")))?;
                literal(Literal::Temporal(value))
            }
            Token::Time(text) => {
                self.pos += 1;
                let value = Temporal::parse_time(&text)
                    .ok_or_else(|| syntax(at, format!("`@T{text}` is not a time")))?;
                literal(Literal::Temporal(value))
            }
            Token::External(name) => {
                self.pos += 1;
                Ok(Expr::External(name))
            }
            Token::Special(name) => {
                self.pos += 1;
                Ok(match name.as_str() {
                    "this" => Expr::This,
                    "index" => Expr::Index,
                    _ => Expr::Total,
                })
            }
            Token::Ident(name) if name == "true" || name == "false" => {
                self.pos += 1;
                literal(Literal::Boolean(name == "true"))
            }
            Token::Ident(_) | Token::Quoted(_) => self.invocation(None),
            Token::Symbol(_) => Err(self.unexpected("an expression")),
        }
    }

    /// A number, or with a unit after it a quantity (`4 'mg'`, `7 days`).
    fn number(&mut self, text: &str, at: usize) -> Result<Expr, FhirPathError> {
        let decimal =
            Decimal::parse(text).ok_or_else(|| syntax(at, format!("bad number `{text}`")))?;
        let unit = match self.peek() {
            Some(Token::Str(unit)) => Some(unit.clone()),
            Some(Token::Ident(word)) => calendar_unit(word).map(str::to_string),
            _ => None,
        };
        if let Some(unit) = unit {
            self.pos += 1;
            return Ok(Expr::Literal(Literal::Quantity(Quantity {
                value: decimal,
                unit,
            })));
        }
        if text.contains('.') {
            return Ok(Expr::Literal(Literal::Decimal(decimal)));
        }
        text.parse()
            .map(|n| Expr::Literal(Literal::Integer(n)))
            .map_err(|_| syntax(at, format!("integer `{text}` is too large")))
    }

    /// A member name or a function call, applied to `base` (or the input).
    fn invocation(&mut self, base: Option<Expr>) -> Result<Expr, FhirPathError> {
        let at = self.at();
        let quoted = matches!(self.peek(), Some(Token::Quoted(_)));
        let name = self.identifier()?;
        let base = base.map(Box::new);
        if quoted || !self.is_symbol("(") {
            return Ok(Expr::Member {
                base,
                name,
                resolved: None,
            });
        }
        self.pos += 1;
        let mut args = Vec::new();
        if !self.is_symbol(")") {
            loop {
                args.push(self.expression()?);
                if self.is_symbol(",") {
                    self.pos += 1;
                } else {
                    break;
                }
            }
        }
        self.expect(")")?;
        let (func, min, max) =
            Func::lookup(&name).ok_or_else(|| syntax(at, format!("unknown function {name}()")))?;
        if args.len() < min || args.len() > max {
            let wanted = if min == max {
                format!("{min}")
            } else {
                format!("{min} to {max}")
            };
            return Err(syntax(
                at,
                format!("{name}() takes {wanted} argument(s), got {}", args.len()),
            ));
        }
        if matches!(func, Func::OfType | Func::Is | Func::As) {
            let spec = type_argument(&args[0])
                .ok_or_else(|| syntax(at, format!("{name}() takes a type name")))?;
            args = vec![Expr::Type(spec)];
        }
        if func == Func::Extension && !matches!(args[0], Expr::Literal(Literal::String(_))) {
            // A URL computed from the data would make extensions unsearchable.
            if !matches!(args[0], Expr::External(_)) {
                return Err(syntax(at, "extension() takes a URL string"));
            }
        }
        Ok(Expr::Call { base, func, args })
    }
}

/// `Quantity`, `FHIR.Quantity` or `` FHIR.`Patient` `` written as an argument.
fn type_argument(arg: &Expr) -> Option<TypeSpec> {
    match arg {
        Expr::Member {
            base: None, name, ..
        } => Some(TypeSpec {
            namespace: None,
            name: name.clone(),
        }),
        Expr::Member {
            base: Some(namespace),
            name,
            ..
        } => match namespace.as_ref() {
            Expr::Member {
                base: None,
                name: ns,
                ..
            } => Some(TypeSpec {
                namespace: Some(ns.clone()),
                name: name.clone(),
            }),
            _ => None,
        },
        _ => None,
    }
}

/// Whether evaluating `expr` can tell a primitive's extensions (its `_name`
/// sibling) apart: it asks for extensions or ids, walks all children, or
/// counts items (a primitive with only extensions is an item without a
/// value). Search parameters mostly do not, and skip the lookups.
pub fn observes_extensions(expr: &Expr) -> bool {
    match expr {
        Expr::Member { base, name, .. } => {
            name == "extension" || name == "id" || base.as_deref().is_some_and(observes_extensions)
        }
        Expr::Call { base, func, args } => {
            matches!(
                func,
                Func::Extension
                    | Func::HasValue
                    | Func::GetValue
                    | Func::Children
                    | Func::Descendants
                    | Func::Exists
                    | Func::Empty
                    | Func::Count
                    | Func::Single
                    | Func::IsDistinct
                    | Func::Trace
            ) || base.as_deref().is_some_and(observes_extensions)
                || args.iter().any(observes_extensions)
        }
        Expr::Indexer(a, b) | Expr::Binary(_, a, b) => {
            observes_extensions(a) || observes_extensions(b)
        }
        Expr::Negate(inner) | Expr::Is(inner, _) | Expr::As(inner, _) => observes_extensions(inner),
        Expr::Empty
        | Expr::Literal(_)
        | Expr::This
        | Expr::Index
        | Expr::Total
        | Expr::External(_)
        | Expr::Type(_) => false,
    }
}

/// A member step's element, found while parsing: `(parent, element)`.
#[derive(Clone, Copy)]
pub struct Resolved(pub &'static Definition, pub &'static Element);

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}.{:?}", self.0, self.1)
    }
}

impl PartialEq for Resolved {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0) && std::ptr::eq(self.1, other.1)
    }
}

/// What strict mode knows while annotating (variables typed like the
/// context, e.g. `%current` and `%previous`), and the problems it finds:
/// elements a type does not have, a choice element by its JSON name, a
/// path on the wrong resource type, an ordered function on `children()`,
/// a literal that is not a boolean as `iif()`'s criterion.
#[derive(Default)]
pub struct Checks<'v> {
    pub typed_variables: &'v [&'v str],
    pub variable_type: Option<&'static Definition>,
    pub problems: Vec<String>,
}

/// Types what it can of `expr` from the expression alone (a path starting
/// with a resource type, `Patient.name.given`, or the `context` type given),
/// recording each member step's element so evaluation need not look it up,
/// and noting what strict mode refuses in `checks`; returns the type of the
/// result where known. Evaluation checks the recorded parent against the
/// node's actual type, so a wrong guess only costs a lookup.
pub fn annotate(
    expr: &mut Expr,
    context: Option<&'static Definition>,
    checks: &mut Checks,
) -> Option<&'static Definition> {
    match expr {
        Expr::Member {
            base,
            name,
            resolved,
        } => {
            let parent = match base {
                Some(base) => annotate(base, context, checks),
                None if name.starts_with(|c: char| c.is_ascii_uppercase()) => {
                    if let Some(context) = context.filter(|c| c.name != name.as_str()) {
                        if context.element(name).is_none() {
                            checks.problems.push(format!(
                                "the expression starts with {name}, but it is evaluated on {}",
                                context.name
                            ));
                        }
                    }
                    return model().definition(name);
                }
                None => context,
            }?;
            let Some(element) = parent.element(name) else {
                if !parent.is_primitive() && !parent.holds_resources {
                    checks
                        .problems
                        .push(format!("{} has no element '{name}'", parent.name));
                }
                return None;
            };
            if let Some(choice) = choice_of_form(parent, name) {
                checks.problems.push(format!(
                    "'{name}' is how JSON spells the choice element '{choice}'; FHIRPath writes \
                     {choice}.ofType(...)"
                ));
            }
            *resolved = Some(Resolved(parent, element));
            match element {
                Element::Plain(d) if !d.holds_resources => Some(d),
                _ => None,
            }
        }
        Expr::Call { base, func, args } => {
            let input = match base {
                Some(base) => annotate(base, context, checks),
                None => context,
            };
            if matches!(
                func,
                Func::First | Func::Last | Func::Tail | Func::Skip | Func::Take
            ) && base.as_deref().is_some_and(is_unordered)
            {
                checks.problems.push(format!(
                    "{}() needs an ordered collection, and children() and descendants() are not \
                     ordered",
                    func.name()
                ));
            }
            if *func == Func::Iif
                && matches!(args.first(), Some(Expr::Literal(l)) if !matches!(l, Literal::Boolean(_)))
            {
                checks
                    .problems
                    .push("iif()'s criterion must be a boolean".into());
            }
            let lambda = matches!(
                func,
                Func::Where
                    | Func::Select
                    | Func::Exists
                    | Func::All
                    | Func::Repeat
                    | Func::Aggregate
                    | Func::Sort
            );
            for arg in args.iter_mut() {
                annotate(arg, if lambda { input } else { context }, checks);
            }
            match func {
                Func::Where
                | Func::First
                | Func::Last
                | Func::Single
                | Func::Tail
                | Func::Skip
                | Func::Take
                | Func::Distinct
                | Func::Trace
                | Func::Intersect
                | Func::Exclude => input,
                Func::OfType | Func::As => match args.first() {
                    Some(Expr::Type(spec)) => model().definition(&spec.name),
                    _ => None,
                },
                _ => None,
            }
        }
        Expr::Indexer(base, index) => {
            annotate(index, context, checks);
            if is_unordered(base) {
                checks.problems.push(
                    "an indexer needs an ordered collection, and children() and descendants() \
                     are not ordered"
                        .into(),
                );
            }
            annotate(base, context, checks)
        }
        Expr::As(inner, spec) => {
            annotate(inner, context, checks);
            model().definition(&spec.name)
        }
        Expr::Is(inner, _) | Expr::Negate(inner) => {
            annotate(inner, context, checks);
            None
        }
        Expr::Binary(_, left, right) => {
            annotate(left, context, checks);
            annotate(right, context, checks);
            None
        }
        Expr::This => context,
        Expr::External(name) if checks.typed_variables.contains(&name.as_str()) => {
            checks.variable_type
        }
        Expr::Empty
        | Expr::Literal(_)
        | Expr::Index
        | Expr::Total
        | Expr::External(_)
        | Expr::Type(_) => None,
    }
}

/// `children()` or `descendants()`, whose order FHIRPath leaves undefined.
fn is_unordered(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Call {
            func: Func::Children | Func::Descendants,
            ..
        }
    )
}

/// The choice element `form` is a JSON name of (`value` for `valueQuantity`).
fn choice_of_form(parent: &'static Definition, form: &str) -> Option<&'static str> {
    parent.elements().find_map(|(name, element)| match element {
        Element::Choice(forms) if forms.iter().any(|(f, _)| *f == form) => Some(name),
        _ => None,
    })
}
