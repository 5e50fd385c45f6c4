//! What an expression can look at in the resource it starts on, worked
//! out from the expression alone.

use super::parser::{Expr, Func};

/// Element paths from the resource root (`address.city`; a choice element
/// by its name without the type, `deceased`; `""` for the resource itself).
/// An element counts as read when its values decide something: the
/// result, a comparison, a condition of `where()` or `exists()`, a
/// function's argument; passing through `meta` on the way to `meta.tag`
/// reads only `meta.tag`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reach {
    /// The elements read on the way (a condition's, a comparison's).
    pub reads: Vec<String>,
    /// Where the result stands (the elements it returns); empty for a
    /// computed value (a boolean, a literal) or another resource (`resolve()`).
    pub focus: Vec<String>,
}

pub fn reach_from(root: &Expr, focus: &[String]) -> Reach {
    let mut reads = Vec::new();
    let focus = reach(root, focus, &mut reads);
    reads.sort();
    reads.dedup();
    Reach { reads, focus }
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
    let mut chars = type_name.chars();
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

/// The values at `expr`'s focus decide something: they are read.
fn read(expr: &Expr, focus: &[String], reads: &mut Vec<String>) {
    let at = reach(expr, focus, reads);
    reads.extend(at);
}

/// The focus of `expr` evaluated on elements at `focus`, adding what it
/// reads to `reads`.
fn reach(expr: &Expr, focus: &[String], reads: &mut Vec<String>) -> Vec<String> {
    match expr {
        Expr::Empty | Expr::Literal(_) | Expr::Index | Expr::Total | Expr::Type(_) => Vec::new(),
        Expr::External(name) => match name.as_str() {
            "resource" | "rootResource" => vec![String::new()],
            "context" => focus.to_vec(),
            _ => Vec::new(),
        },
        Expr::This => focus.to_vec(),
        Expr::Member { base, name, .. } => {
            let from = match base {
                Some(base) => reach(base, focus, reads),
                None => focus.to_vec(),
            };
            // A capitalised name is a type filter (`Patient.name`, `Resource.meta`).
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                return from;
            }
            from.iter().map(|p| child_path(p, name)).collect()
        }
        Expr::Call { base, func, args } => {
            let from = match base {
                Some(base) => reach(base, focus, reads),
                None => focus.to_vec(),
            };
            call(*func, from, args, focus, reads)
        }
        Expr::Indexer(base, index) => {
            read(index, focus, reads);
            reach(base, focus, reads)
        }
        Expr::Binary(super::parser::BinOp::Union, left, right) => {
            let mut out = reach(left, focus, reads);
            out.extend(reach(right, focus, reads));
            out
        }
        Expr::As(inner, spec) => typed(&reach(inner, focus, reads), &spec.name),
        Expr::Is(inner, _) | Expr::Negate(inner) => {
            read(inner, focus, reads);
            Vec::new()
        }
        Expr::Binary(_, left, right) => {
            read(left, focus, reads);
            read(right, focus, reads);
            Vec::new()
        }
    }
}

fn call(
    func: Func,
    from: Vec<String>,
    args: &[Expr],
    focus: &[String],
    reads: &mut Vec<String>,
) -> Vec<String> {
    match func {
        // Subsets of the input: the focus stays.
        Func::First
        | Func::Last
        | Func::Single
        | Func::Tail
        | Func::Distinct
        | Func::Trace
        | Func::GetValue
        | Func::Skip
        | Func::Take
        | Func::Intersect
        | Func::Exclude => {
            for arg in args {
                read(arg, focus, reads);
            }
            from
        }
        Func::Where => {
            read(&args[0], &from, reads);
            from
        }
        Func::Select | Func::Repeat => {
            let mut out = reach(&args[0], &from, reads);
            if func == Func::Repeat {
                out.extend(from);
            }
            out
        }
        Func::Union | Func::Combine => {
            let mut out = from;
            out.extend(reach(&args[0], focus, reads));
            out
        }
        Func::Iif => {
            read(&args[0], focus, reads);
            args[1..]
                .iter()
                .flat_map(|arg| reach(arg, focus, reads))
                .collect()
        }
        Func::Exists | Func::All | Func::Aggregate => {
            match args.first() {
                Some(condition) => read(condition, &from, reads),
                None => reads.extend(from),
            }
            for arg in args.iter().skip(1) {
                read(arg, focus, reads);
            }
            Vec::new()
        }
        Func::Extension => from.iter().map(|p| child_path(p, "extension")).collect(),
        Func::OfType | Func::As => match &args[0] {
            Expr::Type(spec) => typed(&from, &spec.name),
            _ => from,
        },
        // Another resource, or all of the input: read as a whole.
        _ => {
            reads.extend(from);
            for arg in args {
                read(arg, focus, reads);
            }
            Vec::new()
        }
    }
}
