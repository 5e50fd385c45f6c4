//! One parameter's value string -> [`SearchValue`]s, by parameter type and
//! modifier. Errors are plain messages; the caller names the parameter.

use super::super::{Modifier, ParamType, Prefix, SearchValue};
use crate::resource_types::{is_known_resource_type, is_valid_id};

/// Splits `s` at each `sep` that is not escaped by a backslash. The parts
/// keep their escapes; [`unescape`] the leaves.
pub(super) fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Resolves the search escapes `\,` `\|` `\$` `\\`; any other backslash stays.
pub(super) fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next @ (',' | '|' | '$' | '\\'))) => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// The modifier `name` (the text after `:`) checked against the parameter's type.
pub(super) fn modifier_for(
    kind: ParamType,
    name: Option<&str>,
    targets: &[String],
) -> Result<Modifier, String> {
    let Some(name) = name else {
        return Ok(Modifier::None);
    };
    let modifier = match (kind, name) {
        (_, "missing") => Modifier::Missing,
        (ParamType::String, "exact") => Modifier::Exact,
        (ParamType::String, "contains") => Modifier::Contains,
        (ParamType::Token, "not") => Modifier::Not,
        (ParamType::Token, "text") => Modifier::Text,
        (ParamType::Token, "of-type") => Modifier::OfType,
        (ParamType::Token, "above" | "below" | "in" | "not-in")
        | (ParamType::Reference, "above" | "below") => {
            return Err(format!(
                "the :{name} modifier is not supported (terminology and hierarchy searches are not available)"
            ))
        }
        (ParamType::Reference, "identifier") => Modifier::Identifier,
        (ParamType::Reference, t) if is_known_resource_type(t) => {
            if !targets.is_empty() && !targets.iter().any(|x| x == t) {
                return Err(format!(
                    "the :{t} modifier names a type this parameter cannot refer to (it refers to {})",
                    targets.join(", ")
                ));
            }
            Modifier::Type(t.to_string())
        }
        (ParamType::Uri, "below") => Modifier::Below,
        (ParamType::Uri, "above") => Modifier::Above,
        _ => {
            let valid = match kind {
                ParamType::String => ":exact, :contains, :missing",
                ParamType::Token => ":not, :text, :of-type, :missing",
                ParamType::Reference => ":[type], :identifier, :missing",
                ParamType::Uri => ":below, :above, :missing",
                _ => ":missing",
            };
            return Err(format!(
                "':{name}' is not a valid modifier for a {} parameter (valid: {valid})",
                kind.as_str()
            ));
        }
    };
    Ok(modifier)
}

/// All values of one parameter occurrence: comma-separated, ORed.
pub(super) fn parse_values(
    kind: ParamType,
    modifier: &Modifier,
    targets: &[String],
    components: &[ParamType],
    raw: &str,
) -> Result<Vec<SearchValue>, String> {
    if *modifier == Modifier::Missing {
        return match raw {
            "true" => Ok(vec![SearchValue::Missing(true)]),
            "false" => Ok(vec![SearchValue::Missing(false)]),
            _ => Err(format!(
                "with :missing the value must be true or false, not '{raw}'"
            )),
        };
    }
    if raw.is_empty() {
        return Err("the value is empty".to_string());
    }
    split_unescaped(raw, ',')
        .into_iter()
        .map(|part| {
            if part.is_empty() {
                Err(format!(
                    "'{raw}' has an empty value between commas (escape a literal comma as \\,)"
                ))
            } else {
                parse_value(kind, modifier, targets, components, part)
            }
        })
        .collect()
}

fn parse_value(
    kind: ParamType,
    modifier: &Modifier,
    targets: &[String],
    components: &[ParamType],
    raw: &str,
) -> Result<SearchValue, String> {
    match kind {
        ParamType::String | ParamType::Uri => Ok(SearchValue::Text(unescape(raw))),
        ParamType::Token => match modifier {
            Modifier::Text => Ok(SearchValue::Text(unescape(raw))),
            Modifier::OfType => parse_of_type(raw),
            _ => parse_token(raw),
        },
        ParamType::Reference => parse_reference(raw, modifier, targets),
        ParamType::Date => {
            let (prefix, rest) = split_prefix(raw);
            let (low, high) = parse_date_range(rest).map_err(|why| {
                format!(
                    "'{raw}' is not a valid date ({why}); use YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.fff]][Z|+hh:mm], optionally after a prefix such as ge"
                )
            })?;
            Ok(SearchValue::Date { prefix, low, high })
        }
        ParamType::Number => {
            let (prefix, rest) = split_prefix(raw);
            let (value, low, high) = parse_number(rest).ok_or_else(|| not_a_number(raw))?;
            Ok(SearchValue::Number {
                prefix,
                value,
                low,
                high,
            })
        }
        ParamType::Quantity => parse_quantity(raw),
        ParamType::Composite => parse_composite(components, raw),
        ParamType::Special => parse_near(raw),
    }
}

/// Kilometres per unit of the `near` distance units fhirgate accepts.
const NEAR_UNITS: &[(&str, f64)] = &[
    ("km", 1.0),
    ("m", 0.001),
    ("[mi_i]", 1.609_344),
    ("mi", 1.609_344),
];
/// The `near` distance when the query gives none (R4 leaves it to the server).
const NEAR_DEFAULT_KM: f64 = 10.0;

/// `latitude|longitude[|distance[|units]]`, the only special parameter (`near`).
fn parse_near(raw: &str) -> Result<SearchValue, String> {
    let usage = "use latitude|longitude|distance|units, e.g. 42.37|-72.52|5|km (distance and units optional, 10 km by default; units km, m, [mi_i] or mi)";
    let parts = split_unescaped(raw, '|');
    let (latitude, longitude, distance, units) = match parts.as_slice() {
        [lat, lon] => (*lat, *lon, "", ""),
        [lat, lon, distance] => (*lat, *lon, *distance, ""),
        [lat, lon, distance, units] => (*lat, *lon, *distance, *units),
        _ => return Err(format!("'{raw}' is not a position; {usage}")),
    };
    let number = |s: &str, what: &str, low: f64, high: f64| {
        parse_number(s)
            .map(|(value, _, _)| value)
            .filter(|v| (low..=high).contains(v))
            .ok_or_else(|| format!("'{s}' is not a valid {what}; {usage}"))
    };
    let latitude = number(latitude, "latitude (-90 to 90)", -90.0, 90.0)?;
    let longitude = number(longitude, "longitude (-180 to 180)", -180.0, 180.0)?;
    let per_km = if units.is_empty() {
        1.0
    } else {
        let units = unescape(units);
        NEAR_UNITS
            .iter()
            .find(|(name, _)| *name == units)
            .map(|(_, km)| *km)
            .ok_or_else(|| format!("'{units}' is not a distance unit fhirgate knows; {usage}"))?
    };
    let distance_km = if distance.is_empty() {
        NEAR_DEFAULT_KM
    } else {
        number(distance, "distance (a number, 0 or more)", 0.0, f64::MAX)? * per_km
    };
    Ok(SearchValue::Near {
        latitude,
        longitude,
        distance_km,
    })
}

fn parse_token(raw: &str) -> Result<SearchValue, String> {
    match split_unescaped(raw, '|').as_slice() {
        [code] => Ok(SearchValue::Token { system: None, code: Some(unescape(code)) }),
        ["", ""] => Err("'|' alone is not a token; use code, system|code, |code or system|".to_string()),
        [system, code] => Ok(SearchValue::Token {
            system: Some(unescape(system)),
            code: (!code.is_empty()).then(|| unescape(code)),
        }),
        _ => Err(format!(
            "'{raw}' is not a token: use code, system|code, |code or system| (escape a literal | as \\|)"
        )),
    }
}

fn parse_of_type(raw: &str) -> Result<SearchValue, String> {
    match split_unescaped(raw, '|').as_slice() {
        [type_system, type_code, value]
            if !type_system.is_empty() && !type_code.is_empty() && !value.is_empty() =>
        {
            Ok(SearchValue::OfType {
                type_system: unescape(type_system),
                type_code: unescape(type_code),
                value: unescape(value),
            })
        }
        _ => Err(format!(
            "with :of-type the value must be type-system|type-code|value, all three present, not '{raw}'"
        )),
    }
}

fn parse_reference(
    raw: &str,
    modifier: &Modifier,
    targets: &[String],
) -> Result<SearchValue, String> {
    if *modifier == Modifier::Identifier {
        return match split_unescaped(raw, '|').as_slice() {
            [value] => Ok(SearchValue::Identifier {
                system: None,
                value: unescape(value),
            }),
            [system, value] if !value.is_empty() => Ok(SearchValue::Identifier {
                system: Some(unescape(system)),
                value: unescape(value),
            }),
            _ => Err(format!(
                "with :identifier the value must be value or system|value, not '{raw}'"
            )),
        };
    }
    let full = unescape(raw);
    // A version-specific reference finds the resource, whatever its version.
    let value = full
        .split_once("/_history/")
        .map_or(full.as_str(), |(r, _)| r);
    let (target_type, id, url) = if value.contains("://") || value.starts_with("urn:") {
        let mut segments = value.rsplit('/');
        match (segments.next(), segments.next()) {
            (Some(id), Some(t)) if is_known_resource_type(t) && is_valid_id(id) => (
                Some(t.to_string()),
                Some(id.to_string()),
                Some(value.to_string()),
            ),
            _ => (None, None, Some(value.to_string())),
        }
    } else if let Some((t, id)) = value.split_once('/') {
        if !is_known_resource_type(t) {
            return Err(format!(
                "'{t}' in '{value}' is not a resource type; use Type/id, id or an absolute URL"
            ));
        }
        if !is_valid_id(id) {
            return Err(format!(
                "'{id}' in '{value}' is not a valid id; use Type/id, id or an absolute URL"
            ));
        }
        (Some(t.to_string()), Some(id.to_string()), None)
    } else if is_valid_id(value) {
        (None, Some(value.to_string()), None)
    } else {
        return Err(format!(
            "'{value}' is not a reference: use Type/id, id (letters, digits, '-' and '.', at most 64) or an absolute URL"
        ));
    };
    if let Modifier::Type(required) = modifier {
        if id.is_none() || target_type.as_ref().is_some_and(|t| t != required) {
            return Err(format!(
                "with :{required} the value must be the id of a {required}, not '{value}'"
            ));
        }
        return Ok(SearchValue::Reference {
            target_type: Some(required.clone()),
            id,
            url,
        });
    }
    if let Some(t) = &target_type {
        if !targets.is_empty() && !targets.contains(t) {
            return Err(format!(
                "'{value}' is a {t}, but this parameter refers to {} only",
                targets.join(", ")
            ));
        }
    }
    Ok(SearchValue::Reference {
        target_type,
        id,
        url,
    })
}

fn parse_quantity(raw: &str) -> Result<SearchValue, String> {
    let (prefix, rest) = split_prefix(raw);
    let (number, system, code) = match split_unescaped(rest, '|').as_slice() {
        [number] => (*number, None, None),
        [number, system, code] => (
            *number,
            (!system.is_empty()).then(|| unescape(system)),
            (!code.is_empty()).then(|| unescape(code)),
        ),
        _ => {
            return Err(format!(
                "'{raw}' is not a quantity: use [prefix]number, [prefix]number|system|code or [prefix]number||unit"
            ))
        }
    };
    let (value, low, high) = parse_number(number).ok_or_else(|| not_a_number(raw))?;
    Ok(SearchValue::Quantity {
        prefix,
        value,
        low,
        high,
        system,
        code,
    })
}

fn parse_composite(components: &[ParamType], raw: &str) -> Result<SearchValue, String> {
    let parts = split_unescaped(raw, '$');
    if components.is_empty() || parts.len() != components.len() {
        return Err(format!(
            "'{raw}' has {} $-separated part(s), but this composite parameter has {} components",
            parts.len(),
            components.len()
        ));
    }
    parts
        .iter()
        .zip(components)
        .map(|(part, kind)| {
            if part.is_empty() {
                Err(format!("'{raw}' has an empty component"))
            } else {
                parse_value(*kind, &Modifier::None, &[], &[], part)
            }
        })
        .collect::<Result<_, _>>()
        .map(SearchValue::Composite)
}

/// A leading `eq`, `ne`, `gt`, `lt`, `ge`, `le`, `sa`, `eb` or `ap`.
fn split_prefix(s: &str) -> (Prefix, &str) {
    let prefix = match s.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, s),
    };
    (prefix, &s[2..])
}

/// A decimal as `(value, low, high)`: the range `[low, high)` its precision
/// implies, half a unit of the last given digit either side (`100` ->
/// [99.5, 100.5), `100.0` -> [99.95, 100.05), `1e2` -> [50, 150)).
fn parse_number(s: &str) -> Option<(f64, f64, f64)> {
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = mantissa.strip_prefix(['-', '+']).unwrap_or(mantissa);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || (digits.contains('.') && !all_digits(frac)) {
        return None;
    }
    let exponent: i32 = match exponent {
        Some(e) if all_digits(e.strip_prefix(['-', '+']).unwrap_or(e)) => e.parse().ok()?,
        Some(_) => return None,
        None => 0,
    };
    let value: f64 = s.parse().ok()?;
    let half = 0.5 * 10f64.powi(exponent - i32::try_from(frac.len()).ok()?);
    (value.is_finite() && half.is_finite()).then_some((value, value - half, value + half))
}

fn not_a_number(raw: &str) -> String {
    format!("'{raw}' is not a number (e.g. 100, -2.5, 1e2, optionally after a prefix such as gt)")
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Reads a FHIR date/dateTime/instant of any precision as the inclusive UTC
/// range of microseconds it covers. Times without a zone are read as UTC; a
/// space before the zone offset is read as `+` (an unencoded `+` in a URL).
pub(super) fn parse_date_range(s: &str) -> Result<(i64, i64), &'static str> {
    let mut cursor = Cursor {
        s: s.as_bytes(),
        pos: 0,
    };
    let year = cursor.digits(4).ok_or("the year must have four digits")?;
    if year == 0 {
        return Err("there is no year 0000");
    }
    let mut month = 1;
    let mut day = 1;
    let mut time = (0, 0, 0, 0); // hour, minute, second, microsecond
    let span: i64;
    if !cursor.eat(b'-') {
        span = if is_leap(year) { 366 } else { 365 } * MICROS_PER_DAY;
    } else {
        month = cursor.digits(2).ok_or("the month must have two digits")?;
        if !(1..=12).contains(&month) {
            return Err("the month must be 01 to 12");
        }
        if !cursor.eat(b'-') {
            span = days_in_month(year, month) * MICROS_PER_DAY;
        } else {
            day = cursor.digits(2).ok_or("the day must have two digits")?;
            if !(1..=days_in_month(year, month)).contains(&day) {
                return Err("that day does not exist in that month");
            }
            if !cursor.eat(b'T') {
                span = MICROS_PER_DAY;
            } else {
                let hour = cursor.digits(2).filter(|h| *h < 24);
                let hour = hour.ok_or("the hour must be 00 to 23")?;
                if !cursor.eat(b':') {
                    return Err("a time needs at least hours and minutes");
                }
                let minute = cursor.digits(2).filter(|m| *m < 60);
                let minute = minute.ok_or("the minutes must be 00 to 59")?;
                let (second, micros, precision) = if cursor.eat(b':') {
                    let second = cursor.digits(2).filter(|s| *s < 60);
                    let second = second.ok_or("the seconds must be 00 to 59")?;
                    if cursor.eat(b'.') {
                        let (micros, precision) = cursor
                            .fraction()
                            .ok_or("a decimal point needs digits after it")?;
                        (second, micros, precision)
                    } else {
                        (second, 0, MICROS_PER_SECOND)
                    }
                } else {
                    (0, 0, 60 * MICROS_PER_SECOND)
                };
                span = precision;
                time = (hour, minute, second, micros);
                let offset = cursor
                    .zone()
                    .ok_or("the time zone must be Z, +hh:mm or -hh:mm, at most 14:00")?;
                time.3 -= offset * 60 * MICROS_PER_SECOND;
            }
        }
    }
    if cursor.pos != s.len() {
        return Err("unexpected characters at the end");
    }
    let (hour, minute, second, micros) = time;
    let low = days_from_civil(year, month, day) * MICROS_PER_DAY
        + ((hour * 60 + minute) * 60 + second) * MICROS_PER_SECOND
        + micros;
    Ok((low, low + span - 1))
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.s.get(self.pos) == Some(&b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// Exactly `n` ASCII digits.
    fn digits(&mut self, n: usize) -> Option<i64> {
        let chunk = self.s.get(self.pos..self.pos + n)?;
        if !chunk.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(
            chunk
                .iter()
                .fold(0, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    }

    /// Fraction digits after `.`: (microseconds, the span the precision implies).
    /// Digits beyond microseconds are dropped.
    fn fraction(&mut self) -> Option<(i64, i64)> {
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let digits = &self.s[start..self.pos];
        if digits.is_empty() {
            return None;
        }
        let kept = &digits[..digits.len().min(6)];
        let mut micros = kept.iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0'));
        let mut span = 1;
        for _ in kept.len()..6 {
            micros *= 10;
            span *= 10;
        }
        Some((micros, span))
    }

    /// The zone offset in minutes east of UTC; none given means UTC.
    fn zone(&mut self) -> Option<i64> {
        if self.pos == self.s.len() || self.eat(b'Z') {
            return Some(0);
        }
        let sign = match self.s.get(self.pos) {
            Some(b'+' | b' ') => 1,
            Some(b'-') => -1,
            _ => return None,
        };
        self.pos += 1;
        let hours = self.digits(2)?;
        if !self.eat(b':') {
            return None;
        }
        let minutes = self.digits(2).filter(|m| *m < 60)?;
        let offset = hours * 60 + minutes;
        (offset <= 14 * 60).then_some(sign * offset)
    }
}
