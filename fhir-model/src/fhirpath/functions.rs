//! The function library.

use std::cmp::Ordering;

use base64::Engine;
use serde_json::Value;

use super::eval::{
    bounded, cast, eval, integer_arg, member, singleton, singleton_boolean, union, Frame, Result,
    Seen,
};
use super::parser::{Expr, Func};
use super::types::{has_type, split_reference, Prim, TypeTest};
use super::value::{calendar_unit, Decimal, Precision, Quantity, Temporal, TemporalKind};
use super::{Env, FhirPathError, Node, Val};

fn boolean<'a>(b: bool) -> Result<Vec<Node<'a>>> {
    Ok(vec![Node::boolean(b)])
}

fn one<'a>(value: Val<'a>) -> Result<Vec<Node<'a>>> {
    Ok(vec![Node::computed(value)])
}

fn none<'a>() -> Result<Vec<Node<'a>>> {
    Ok(Vec::new())
}

fn err<T>(message: impl Into<String>) -> Result<T> {
    Err(FhirPathError::eval(message))
}

/// Evaluates a function's argument `expr` on one item, as `$this`.
fn on_item<'a>(
    expr: &Expr,
    item: &Node<'a>,
    index: usize,
    env: &Env<'_, 'a>,
) -> Result<Vec<Node<'a>>> {
    let frame = Frame {
        this: Some(item),
        index: Some(index),
        total: None,
    };
    eval(expr, std::slice::from_ref(item), &frame, env)
}

fn passes<'a>(expr: &Expr, item: &Node<'a>, index: usize, env: &Env<'_, 'a>) -> Result<bool> {
    Ok(singleton_boolean(&on_item(expr, item, index, env)?)? == Some(true))
}

/// The single string of `items`: none when empty, an error for anything else.
fn text<'n>(items: &'n [Node<'_>]) -> Result<Option<std::borrow::Cow<'n, str>>> {
    match singleton(items)? {
        None => Ok(None),
        Some(node) => match node.prim() {
            Some(Prim::String(s)) => Ok(Some(match &node.value {
                Val::Json(Value::String(s)) => std::borrow::Cow::Borrowed(s.as_str()),
                Val::String(s) => std::borrow::Cow::Borrowed(s.as_str()),
                _ => std::borrow::Cow::Owned(s.to_string()),
            })),
            _ => err("expected a string"),
        },
    }
}

fn distinct<'a>(items: &[Node<'a>]) -> Vec<Node<'a>> {
    let mut seen = Seen::default();
    items.iter().filter(|i| seen.insert(i)).cloned().collect()
}

pub fn call<'a>(
    func: Func,
    items: &[Node<'a>],
    args: &[Expr],
    input: &[Node<'a>],
    frame: &Frame<'_, 'a>,
    env: &Env<'_, 'a>,
) -> Result<Vec<Node<'a>>> {
    let arg = |i: usize| eval(&args[i], input, frame, env);
    let string_arg =
        |i: usize| -> Result<Option<String>> { Ok(text(&arg(i)?)?.map(|s| s.into_owned())) };
    match func {
        Func::Empty => boolean(items.is_empty()),
        Func::Exists => match args.first() {
            None => boolean(!items.is_empty()),
            Some(criteria) => {
                for (i, item) in items.iter().enumerate() {
                    if passes(criteria, item, i, env)? {
                        return boolean(true);
                    }
                }
                boolean(false)
            }
        },
        Func::All => {
            for (i, item) in items.iter().enumerate() {
                if !passes(&args[0], item, i, env)? {
                    return boolean(false);
                }
            }
            boolean(true)
        }
        Func::AllTrue | Func::AnyTrue | Func::AllFalse | Func::AnyFalse => {
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                match item.prim() {
                    Some(Prim::Boolean(b)) => values.push(b),
                    _ => return err("allTrue() and its kin take booleans"),
                }
            }
            boolean(match func {
                Func::AllTrue => values.iter().all(|b| *b),
                Func::AnyTrue => values.iter().any(|b| *b),
                Func::AllFalse => values.iter().all(|b| !b),
                _ => values.iter().any(|b| !b),
            })
        }
        Func::SubsetOf | Func::SupersetOf => {
            let other = arg(0)?;
            let (small, big) = if func == Func::SubsetOf {
                (items, &other[..])
            } else {
                (&other[..], items)
            };
            let big = Seen::of(big);
            boolean(small.iter().all(|i| big.contains(i)))
        }
        Func::Count => one(Val::Integer(items.len() as i64)),
        Func::Distinct => Ok(distinct(items)),
        Func::IsDistinct => boolean(distinct(items).len() == items.len()),
        Func::Where => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if passes(&args[0], item, i, env)? {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        Func::Select => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.extend(on_item(&args[0], item, i, env)?);
                env.spend(0, out.len())?;
            }
            Ok(out)
        }
        Func::Repeat => {
            let mut out: Vec<Node<'a>> = Vec::new();
            let mut seen = Seen::default();
            let mut current = items.to_vec();
            while !current.is_empty() {
                let mut next = Vec::new();
                for (i, item) in current.iter().enumerate() {
                    for found in on_item(&args[0], item, i, env)? {
                        if seen.insert(&found) {
                            env.spend(1, out.len() + 1)?;
                            out.push(found.clone());
                            next.push(found);
                        }
                    }
                }
                current = next;
            }
            Ok(out)
        }
        Func::OfType => {
            let Expr::Type(spec) = &args[0] else {
                return err("ofType() takes a type");
            };
            let mut out = Vec::new();
            for item in items {
                if has_type(item, spec, TypeTest::Cast)? {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        Func::Is => {
            let Expr::Type(spec) = &args[0] else {
                return err("is() takes a type");
            };
            match singleton(items)? {
                Some(item) => boolean(has_type(item, spec, TypeTest::Is)?),
                None => none(),
            }
        }
        Func::As => {
            let Expr::Type(spec) = &args[0] else {
                return err("as() takes a type");
            };
            cast(items.to_vec(), spec)
        }
        Func::Single => Ok(singleton(items)?.cloned().into_iter().collect()),
        Func::First => Ok(items.first().cloned().into_iter().collect()),
        Func::Last => Ok(items.last().cloned().into_iter().collect()),
        Func::Tail => Ok(items.iter().skip(1).cloned().collect()),
        Func::Skip | Func::Take => {
            let n = integer_arg(&arg(0)?)?.unwrap_or(0).max(0) as usize;
            Ok(if func == Func::Skip {
                items.iter().skip(n).cloned().collect()
            } else {
                items.iter().take(n).cloned().collect()
            })
        }
        Func::Intersect => {
            let other = Seen::of(&arg(0)?);
            Ok(distinct(items)
                .into_iter()
                .filter(|i| other.contains(i))
                .collect())
        }
        Func::Exclude => {
            let other = Seen::of(&arg(0)?);
            Ok(items
                .iter()
                .filter(|i| !other.contains(i))
                .cloned()
                .collect())
        }
        Func::Union => Ok(union(items.to_vec(), arg(0)?)),
        Func::Combine => {
            let mut out = items.to_vec();
            out.extend(arg(0)?);
            Ok(out)
        }
        Func::Iif => {
            // On a focus (`x.iif(...)`) the arguments see it as `$this`.
            let frame = match (items, items.as_ptr() == input.as_ptr()) {
                ([], _) | (_, true) => *frame,
                ([single], false) => Frame {
                    this: Some(single),
                    index: Some(0),
                    total: None,
                },
                _ => return err("iif() applies to at most one item"),
            };
            let arg = |i: usize| eval(&args[i], items, &frame, env);
            let condition = arg(0)?;
            let truth = match singleton(&condition)? {
                None => false,
                Some(node) => match node.prim() {
                    Some(Prim::Boolean(b)) => b,
                    _ => return err("iif() takes a boolean condition"),
                },
            };
            if truth {
                arg(1)
            } else if args.len() > 2 {
                arg(2)
            } else {
                none()
            }
        }
        Func::ToBoolean | Func::ConvertsToBoolean => convert(func, items, to_boolean),
        Func::ToInteger | Func::ConvertsToInteger => convert(func, items, to_integer),
        Func::ToDecimal | Func::ConvertsToDecimal => convert(func, items, to_decimal),
        Func::ToString | Func::ConvertsToString => convert(func, items, to_string),
        Func::ToDate | Func::ConvertsToDate => {
            convert(func, items, |p| to_temporal(p, TemporalKind::Date))
        }
        Func::ToDateTime | Func::ConvertsToDateTime => {
            convert(func, items, |p| to_temporal(p, TemporalKind::DateTime))
        }
        Func::ToTime | Func::ConvertsToTime => {
            convert(func, items, |p| to_temporal(p, TemporalKind::Time))
        }
        Func::ToQuantity | Func::ConvertsToQuantity => {
            let unit = match args.first() {
                Some(_) => string_arg(0)?,
                None => None,
            };
            convert(func, items, |p| {
                let q = to_quantity(p)?;
                match &unit {
                    None => Some(Val::quantity(q)),
                    Some(unit) => q.convert_to(unit).map(Val::quantity),
                }
            })
        }
        Func::IndexOf => {
            let (Some(s), Some(sub)) = (text(items)?, string_arg(0)?) else {
                return none();
            };
            let at = s.find(&sub).map_or(-1, |b| s[..b].chars().count() as i64);
            one(Val::Integer(at))
        }
        Func::Substring => {
            let Some(s) = text(items)? else {
                return none();
            };
            let Some(start) = integer_arg(&arg(0)?)? else {
                return none();
            };
            let length = match args.get(1) {
                Some(_) => integer_arg(&arg(1)?)?,
                None => None,
            };
            let count = s.chars().count() as i64;
            if start < 0 || start >= count {
                return none();
            }
            let take = length.unwrap_or(count).max(0) as usize;
            one(Val::String(
                s.chars().skip(start as usize).take(take).collect(),
            ))
        }
        Func::StartsWith | Func::EndsWith | Func::Contains => {
            let (Some(s), Some(sub)) = (text(items)?, string_arg(0)?) else {
                return none();
            };
            boolean(match func {
                Func::StartsWith => s.starts_with(&sub),
                Func::EndsWith => s.ends_with(&sub),
                _ => s.contains(&sub),
            })
        }
        Func::Upper | Func::Lower | Func::Trim | Func::Length | Func::ToChars => {
            let Some(s) = text(items)? else {
                return none();
            };
            match func {
                Func::Upper => one(Val::String(s.to_uppercase())),
                Func::Lower => one(Val::String(s.to_lowercase())),
                Func::Trim => one(Val::String(s.trim().to_string())),
                Func::Length => one(Val::Integer(s.chars().count() as i64)),
                _ => Ok(s
                    .chars()
                    .map(|c| Node::computed(Val::String(c.to_string())))
                    .collect()),
            }
        }
        Func::Replace => {
            let (Some(s), Some(pattern), Some(with)) =
                (text(items)?, string_arg(0)?, string_arg(1)?)
            else {
                return none();
            };
            let replaced = if pattern.is_empty() {
                let mut out = with.clone();
                for c in s.chars() {
                    out.push(c);
                    out.push_str(&with);
                }
                out
            } else {
                s.replace(&pattern, &with)
            };
            one(Val::String(bounded(replaced)?))
        }
        Func::Matches | Func::MatchesFull | Func::ReplaceMatches => {
            let (Some(s), Some(pattern)) = (text(items)?, string_arg(0)?) else {
                return none();
            };
            if pattern.is_empty() && func == Func::ReplaceMatches {
                return one(Val::String(s.into_owned()));
            }
            let pattern = if func == Func::MatchesFull {
                format!("^(?:{pattern})$")
            } else {
                pattern
            };
            let regex = regex::RegexBuilder::new(&pattern)
                .size_limit(1 << 20)
                .dot_matches_new_line(true)
                .build()
                .map_err(|e| FhirPathError::eval(format!("bad regular expression: {e}")))?;
            if func != Func::ReplaceMatches {
                return boolean(regex.is_match(&s));
            }
            let Some(with) = string_arg(1)? else {
                return none();
            };
            one(Val::String(bounded(
                regex.replace_all(&s, with.as_str()).into_owned(),
            )?))
        }
        Func::Split => {
            let (Some(s), Some(separator)) = (text(items)?, string_arg(0)?) else {
                return none();
            };
            Ok(s.split(separator.as_str())
                .map(|part| Node::computed(Val::String(part.to_string())))
                .collect())
        }
        Func::Join => {
            let separator = match args.first() {
                Some(_) => string_arg(0)?.unwrap_or_default(),
                None => String::new(),
            };
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                parts.push(text(std::slice::from_ref(item))?.unwrap_or_default());
            }
            one(Val::String(bounded(parts.join(&separator))?))
        }
        Func::Encode | Func::Decode | Func::Escape | Func::Unescape => {
            let (Some(s), Some(format)) = (text(items)?, string_arg(0)?) else {
                return none();
            };
            Ok(codec(func, &s, &format)
                .map(|out| Node::computed(Val::String(out)))
                .into_iter()
                .collect())
        }
        Func::Abs
        | Func::Ceiling
        | Func::Floor
        | Func::Truncate
        | Func::Exp
        | Func::Ln
        | Func::Sqrt
        | Func::Round
        | Func::Log
        | Func::Power => math(func, items, args.len(), &|i| arg(i)),
        Func::Children | Func::Descendants => {
            let mut out = Vec::new();
            let mut current = items.to_vec();
            loop {
                let mut next = Vec::new();
                for item in &current {
                    children(item, &mut next);
                }
                env.spend(next.len(), out.len() + next.len())?;
                if next.is_empty() || func == Func::Children {
                    out.extend(next);
                    return Ok(out);
                }
                out.extend(next.iter().cloned());
                current = next;
            }
        }
        Func::Trace => Ok(items.to_vec()),
        Func::Now => one(Val::Temporal(Temporal::now(TemporalKind::DateTime))),
        Func::TimeOfDay => one(Val::Temporal(Temporal::now(TemporalKind::Time))),
        Func::Today => one(Val::Temporal(Temporal::now(TemporalKind::Date))),
        Func::Aggregate => {
            let mut total = match args.get(1) {
                Some(_) => arg(1)?,
                None => Vec::new(),
            };
            for (i, item) in items.iter().enumerate() {
                let frame = Frame {
                    this: Some(item),
                    index: Some(i),
                    total: Some(&total),
                };
                total = eval(&args[0], std::slice::from_ref(item), &frame, env)?;
            }
            Ok(total)
        }
        Func::Type => Ok(items
            .iter()
            .map(|item| {
                let (namespace, name) = item.type_name();
                Node::computed(Val::TypeInfo {
                    namespace,
                    name: name.into_owned(),
                })
            })
            .collect()),
        Func::Not => Ok(singleton_boolean(items)?
            .map(|b| Node::boolean(!b))
            .into_iter()
            .collect()),
        Func::Extension => {
            let Some(url) = string_arg(0)? else {
                return none();
            };
            let mut out = Vec::new();
            for item in items {
                let mut extensions = Vec::new();
                member(item, "extension", true, &mut extensions);
                out.extend(extensions.into_iter().filter(|ext| match ext.value {
                    Val::Json(value) => value.get("url").and_then(Value::as_str) == Some(&url),
                    _ => false,
                }));
            }
            Ok(out)
        }
        Func::HasValue => boolean(matches!(items, [single] if has_value(single))),
        Func::GetValue => Ok(match items {
            [single] if has_value(single) => vec![single.clone()],
            _ => Vec::new(),
        }),
        Func::Resolve => Ok(items.iter().filter_map(|item| resolve(item, env)).collect()),
        Func::LowBoundary | Func::HighBoundary => {
            let precision = match args.first() {
                Some(_) => integer_arg(&arg(0)?)?,
                None => None,
            };
            let Some(item) = singleton(items)? else {
                return none();
            };
            Ok(boundary(item, precision, func == Func::HighBoundary)
                .map(Node::computed)
                .into_iter()
                .collect())
        }
        Func::Precision => {
            let Some(item) = singleton(items)? else {
                return none();
            };
            let digits = match item.prim() {
                Some(Prim::Decimal(d)) => d.scale() as i64,
                Some(Prim::Integer(_)) => 0,
                Some(Prim::Temporal(t)) => temporal_digits(&t),
                _ => return none(),
            };
            one(Val::Integer(digits))
        }
        Func::Comparable => {
            let (Some(a), other) = (singleton(items)?, arg(0)?) else {
                return none();
            };
            let Some(b) = singleton(&other)? else {
                return none();
            };
            match (a.prim(), b.prim()) {
                (Some(Prim::Quantity(x)), Some(Prim::Quantity(y))) => {
                    boolean(x.compare(&y, false).is_some())
                }
                _ => err("comparable() takes quantities"),
            }
        }
        Func::Sort => sort(items, args, env),
        Func::ConformsTo => {
            let Some(url) = string_arg(0)? else {
                return none();
            };
            // Only the base resource definitions are known (no profiles).
            let Some(base) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
                return err(format!("conformsTo(): profile {url} is not known"));
            };
            if !crate::resource_types::is_known_resource_type(base) {
                return err(format!("conformsTo(): profile {url} is not known"));
            }
            let Some(item) = singleton(items)? else {
                return none();
            };
            let spec = super::parser::TypeSpec {
                namespace: Some("FHIR".into()),
                name: base.to_string(),
            };
            boolean(has_type(item, &spec, TypeTest::Is)?)
        }
        Func::MemberOf | Func::Subsumes | Func::SubsumedBy | Func::HtmlChecks => {
            err("this function needs a terminology or profile service, which fhirgate does not run")
        }
    }
}

/// The `to*` and `convertsTo*` pairs: the conversion of a single item, or
/// whether it converts.
fn convert<'a>(
    func: Func,
    items: &[Node<'a>],
    conversion: impl Fn(&Prim<'_>) -> Option<Val<'a>>,
) -> Result<Vec<Node<'a>>> {
    let Some(item) = singleton(items)? else {
        return none();
    };
    let converted = item.prim().and_then(|p| conversion(&p));
    let asks = matches!(
        func,
        Func::ConvertsToBoolean
            | Func::ConvertsToInteger
            | Func::ConvertsToDecimal
            | Func::ConvertsToString
            | Func::ConvertsToDate
            | Func::ConvertsToDateTime
            | Func::ConvertsToTime
            | Func::ConvertsToQuantity
    );
    if asks {
        boolean(converted.is_some())
    } else {
        Ok(converted.map(Node::computed).into_iter().collect())
    }
}

fn to_boolean<'a>(p: &Prim<'_>) -> Option<Val<'a>> {
    Some(Val::Boolean(match p {
        Prim::Boolean(b) => *b,
        Prim::Integer(1) => true,
        Prim::Integer(0) => false,
        Prim::Decimal(d) if *d == Decimal::from_i64(1) => true,
        Prim::Decimal(d) if d.is_zero() => false,
        Prim::String(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => true,
            "false" | "f" | "no" | "n" | "0" | "0.0" => false,
            _ => return None,
        },
        _ => return None,
    }))
}

fn to_integer<'a>(p: &Prim<'_>) -> Option<Val<'a>> {
    Some(Val::Integer(match p {
        Prim::Integer(n) => *n,
        Prim::Boolean(b) => i64::from(*b),
        Prim::String(s) => {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()?
        }
        _ => return None,
    }))
}

fn to_decimal<'a>(p: &Prim<'_>) -> Option<Val<'a>> {
    Some(Val::Decimal(match p {
        Prim::Integer(n) => Decimal::from_i64(*n),
        Prim::Decimal(d) => *d,
        Prim::Boolean(b) => Decimal::parse(if *b { "1.0" } else { "0.0" })?,
        Prim::String(s) => Decimal::parse(s)?,
        _ => return None,
    }))
}

fn to_string<'a>(p: &Prim<'_>) -> Option<Val<'a>> {
    Some(Val::String(match p {
        Prim::String(s) => s.to_string(),
        Prim::Boolean(b) => b.to_string(),
        Prim::Integer(n) => n.to_string(),
        Prim::Decimal(d) => d.to_string(),
        Prim::Temporal(t) => t.to_string(),
        Prim::Quantity(q) => q.to_string(),
    }))
}

fn to_temporal<'a>(p: &Prim<'_>, kind: TemporalKind) -> Option<Val<'a>> {
    let t = match p {
        Prim::Temporal(t) => *t,
        Prim::String(s) => match kind {
            TemporalKind::Time => Temporal::parse_time(s)?,
            _ => Temporal::parse_date_time(s, TemporalKind::DateTime)?,
        },
        _ => return None,
    };
    match (kind, t.kind) {
        (TemporalKind::Time, TemporalKind::Time) => Some(Val::Temporal(t)),
        (TemporalKind::Time, _) | (_, TemporalKind::Time) => None,
        (TemporalKind::Date, _) => {
            let mut d = t;
            d.kind = TemporalKind::Date;
            d.precision = d.precision.min(Precision::Day);
            d.offset = None;
            Some(Val::Temporal(d))
        }
        _ => {
            let mut d = t;
            d.kind = TemporalKind::DateTime;
            Some(Val::Temporal(d))
        }
    }
}

/// `'5.5 mg'`-style text: a number with an optional quoted UCUM unit or calendar word.
fn to_quantity(p: &Prim<'_>) -> Option<Quantity> {
    let unit_one = |value| {
        Some(Quantity {
            value,
            unit: "1".into(),
        })
    };
    match p {
        Prim::Quantity(q) => Some(q.clone()),
        Prim::Integer(n) => unit_one(Decimal::from_i64(*n)),
        Prim::Decimal(d) => unit_one(*d),
        Prim::Boolean(b) => unit_one(Decimal::parse(if *b { "1.0" } else { "0.0" })?),
        Prim::String(s) => {
            let s = s.trim();
            let (number, rest) = s.split_once(' ').unwrap_or((s, ""));
            let value = Decimal::parse(number)?;
            let rest = rest.trim();
            let unit = if rest.is_empty() {
                "1".to_string()
            } else if let Some(quoted) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\''))
            {
                quoted.to_string()
            } else {
                calendar_unit(rest)?.to_string()
            };
            Some(Quantity { value, unit })
        }
        Prim::Temporal(_) => None,
    }
}

fn math<'a>(
    func: Func,
    items: &[Node<'a>],
    arg_count: usize,
    arg: &dyn Fn(usize) -> Result<Vec<Node<'a>>>,
) -> Result<Vec<Node<'a>>> {
    let Some(item) = singleton(items)? else {
        return none();
    };
    let p = item.prim();
    let number = match &p {
        Some(Prim::Integer(n)) => Decimal::from_i64(*n),
        Some(Prim::Decimal(d)) => *d,
        Some(Prim::Quantity(q)) if func == Func::Abs => {
            return one(Val::quantity(Quantity {
                value: if q.value.compare(Decimal::from_i64(0)) == Ordering::Less {
                    q.value.negated()
                } else {
                    q.value
                },
                unit: q.unit.clone(),
            }))
        }
        _ => return err("math functions take numbers"),
    };
    let integer = matches!(p, Some(Prim::Integer(_)));
    let float = |f: f64| -> Result<Vec<Node<'a>>> {
        Ok(Decimal::from_f64(f)
            .map(|d| Node::computed(Val::Decimal(d)))
            .into_iter()
            .collect())
    };
    match func {
        Func::Abs => {
            let abs = if number.compare(Decimal::from_i64(0)) == Ordering::Less {
                number.negated()
            } else {
                number
            };
            one(if integer {
                Val::Integer(abs.as_integer().unwrap_or_default())
            } else {
                Val::Decimal(abs)
            })
        }
        Func::Ceiling => Ok(number
            .ceiling()
            .map(|n| Node::computed(Val::Integer(n)))
            .into_iter()
            .collect()),
        Func::Floor | Func::Truncate => Ok(number
            .to_integer(func == Func::Floor)
            .map(|n| Node::computed(Val::Integer(n)))
            .into_iter()
            .collect()),
        Func::Exp => float(number.to_f64().exp()),
        Func::Ln => float(number.to_f64().ln()),
        Func::Sqrt => float(number.to_f64().sqrt()),
        Func::Round => {
            let given = if arg_count > 0 { arg(0)? } else { Vec::new() };
            let precision = match integer_arg(&given)? {
                Some(p) if p < 0 => return err("round() takes a precision of 0 or more"),
                Some(p) => p as u32,
                None => 0,
            };
            one(Val::Decimal(number.round_to(precision)))
        }
        Func::Log | Func::Power => {
            let other = arg(0)?;
            let Some(other) = singleton(&other)? else {
                return none();
            };
            let (other_number, other_integer) = match other.prim() {
                Some(Prim::Integer(n)) => (Decimal::from_i64(n), true),
                Some(Prim::Decimal(d)) => (d, false),
                _ => return err("math functions take numbers"),
            };
            if func == Func::Log {
                return float(number.to_f64().ln() / other_number.to_f64().ln());
            }
            if integer && other_integer {
                let (Some(base), Some(exp)) = (number.as_integer(), other_number.as_integer())
                else {
                    return none();
                };
                if exp >= 0 {
                    return Ok(u32::try_from(exp)
                        .ok()
                        .and_then(|e| base.checked_pow(e))
                        .map(|n| Node::computed(Val::Integer(n)))
                        .into_iter()
                        .collect());
                }
            }
            float(number.to_f64().powf(other_number.to_f64()))
        }
        _ => none(),
    }
}

fn children<'a>(item: &Node<'a>, out: &mut Vec<Node<'a>>) {
    let Val::Json(Value::Object(map)) = item.value else {
        return;
    };
    for key in map.keys() {
        if key.starts_with('_') || key == "resourceType" {
            continue;
        }
        let mut found = Vec::new();
        member(item, key, true, &mut found);
        if found.is_empty() {
            // A choice form by its full name, or data the schema does not know.
            if let Some(value) = map.get(key) {
                match value {
                    Value::Array(values) => out.extend(values.iter().map(|v| Node::json(v, None))),
                    other => out.push(Node::json(other, None)),
                }
            }
        }
        out.extend(found);
    }
}

fn has_value(node: &Node<'_>) -> bool {
    match &node.value {
        Val::Json(value) => !matches!(value, Value::Null | Value::Object(_) | Value::Array(_)),
        Val::TypeInfo { .. } => false,
        _ => true,
    }
}

/// `resolve()`: a contained resource (`#id`), an entry of the Bundle being
/// evaluated, or a stand-in typed with the resource type the reference
/// names (the Reference itself), so `resolve() is Patient` works without
/// a server.
fn resolve<'a>(node: &Node<'a>, env: &Env<'_, 'a>) -> Option<Node<'a>> {
    let Val::Json(value) = node.value else {
        return None;
    };
    if value.get("resourceType").is_some() {
        return Some(Node::resource(value));
    }
    let reference = match value {
        Value::String(s) => Some(s.as_str()),
        _ => value.get("reference").and_then(Value::as_str),
    };
    if let Some(reference) = reference {
        if let Some(found) = find_local(reference, env.resource) {
            return Some(Node::json(
                found,
                found.get("resourceType").and_then(Value::as_str),
            ));
        }
    }
    let target = match reference {
        Some(reference) => split_reference(reference).map(|(t, _)| t),
        None => value
            .get("type")
            .and_then(Value::as_str)
            .filter(|t| crate::resource_types::is_known_resource_type(t)),
    }?;
    Some(Node::json(value, Some(target)))
}

/// A resource `reference` names within `root`: contained, or a Bundle entry.
fn find_local<'a>(reference: &str, root: &'a Value) -> Option<&'a Value> {
    if let Some(id) = reference.strip_prefix('#') {
        return root
            .get("contained")?
            .as_array()?
            .iter()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(id));
    }
    let entries = root.get("entry")?.as_array()?;
    let by_type_id = split_reference(reference);
    entries.iter().find_map(|entry| {
        let resource = entry.get("resource")?;
        let full_url = entry.get("fullUrl").and_then(Value::as_str);
        let hit = full_url == Some(reference)
            || by_type_id.is_some_and(|(t, id)| {
                resource.get("resourceType").and_then(Value::as_str) == Some(t)
                    && resource.get("id").and_then(Value::as_str) == Some(id)
            });
        hit.then_some(resource)
    })
}

fn temporal_digits(t: &Temporal) -> i64 {
    let date = match t.precision {
        Precision::Year => 4,
        Precision::Month => 6,
        Precision::Day => 8,
        Precision::Hour => 10,
        Precision::Minute => 12,
        Precision::Second => 14,
        Precision::Millisecond => 17,
    };
    if t.kind == TemporalKind::Time {
        date - 8
    } else {
        date
    }
}

/// `lowBoundary()`/`highBoundary()` of a decimal, date, dateTime or time.
fn boundary<'a>(item: &Node<'a>, precision: Option<i64>, high: bool) -> Option<Val<'a>> {
    match item.prim()? {
        Prim::Decimal(d) => Some(Val::Decimal(
            d.boundary(precision.unwrap_or(8).try_into().ok()?, high)?,
        )),
        Prim::Integer(n) => Some(Val::Decimal(
            Decimal::from_i64(n).boundary(precision.unwrap_or(8).try_into().ok()?, high)?,
        )),
        Prim::Quantity(q) => Some(Val::quantity(Quantity {
            value: q
                .value
                .boundary(precision.unwrap_or(8).try_into().ok()?, high)?,
            unit: q.unit,
        })),
        Prim::Temporal(t) => Some(Val::Temporal(t.boundary(precision, high)?)),
        _ => None,
    }
}

/// `encode`/`decode` (`base64`, `urlbase64`, `hex`) and `escape`/`unescape`
/// (`html`, `json`).
fn codec(func: Func, s: &str, format: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    match (func, format) {
        (Func::Encode, "base64") => Some(STANDARD.encode(s)),
        (Func::Encode, "urlbase64") => Some(URL_SAFE.encode(s)),
        (Func::Encode, "hex") => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        (Func::Decode, "base64") => String::from_utf8(STANDARD.decode(s).ok()?).ok(),
        (Func::Decode, "urlbase64") => String::from_utf8(URL_SAFE.decode(s).ok()?).ok(),
        (Func::Decode, "hex") => {
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()
        }
        (Func::Escape, "html") => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        (Func::Unescape, "html") => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        (Func::Escape, "json") => {
            let quoted = serde_json::to_string(s).ok()?;
            Some(quoted[1..quoted.len() - 1].to_string())
        }
        (Func::Unescape, "json") => {
            let unquoted = s.replace('"', "\\\"").replace("\\\\\"", "\\\"");
            serde_json::from_str(&format!("\"{unquoted}\"")).ok()
        }
        _ => None,
    }
}

/// `sort(key, ...)`: by each key in turn, `-key` descending; no key sorts
/// the items themselves.
fn sort<'a>(items: &[Node<'a>], args: &[Expr], env: &Env<'_, 'a>) -> Result<Vec<Node<'a>>> {
    let keys: Vec<(&Expr, bool)> = args
        .iter()
        .map(|arg| match arg {
            Expr::Negate(inner) => (inner.as_ref(), true),
            other => (other, false),
        })
        .collect();
    let mut keyed = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let mut values = Vec::with_capacity(keys.len());
        for (key, _) in &keys {
            values.push(on_item(key, item, i, env)?);
        }
        keyed.push((values, item.clone()));
    }
    let mut failure = None;
    let order = |a: &Node<'_>, b: &Node<'_>| -> Ordering {
        super::eval::compare(a, b)
            .ok()
            .flatten()
            .unwrap_or(Ordering::Equal)
    };
    keyed.sort_by(|(ka, a), (kb, b)| {
        if keys.is_empty() {
            return order(a, b);
        }
        for ((x, y), (_, descending)) in ka.iter().zip(kb).zip(&keys) {
            // Items without the key come first, in either direction.
            let ordering = match (x.first(), y.first()) {
                (Some(x), Some(y)) => {
                    if super::eval::compare(x, y).is_err() {
                        failure = Some(());
                    }
                    let ordering = order(x, y);
                    if *descending {
                        ordering.reverse()
                    } else {
                        ordering
                    }
                }
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        Ordering::Equal
    });
    if failure.is_some() {
        return err("sort(): keys that cannot be compared");
    }
    Ok(keyed.into_iter().map(|(_, item)| item).collect())
}
