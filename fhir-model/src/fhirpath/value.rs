//! Computed FHIRPath values: Decimal keeping its scale, partial dates and
//! times, and quantities with UCUM or calendar units.

use std::cmp::Ordering;
use std::fmt;

/// Most digits after the point a computed decimal keeps.
const MAX_SCALE: u32 = 16;

/// A decimal as `mantissa / 10^scale`: `1.50` keeps its two digits.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    mantissa: i128,
    scale: u32,
}

fn pow10(n: u32) -> Option<i128> {
    10i128.checked_pow(n)
}

impl Decimal {
    pub fn from_i64(n: i64) -> Self {
        Decimal {
            mantissa: n as i128,
            scale: 0,
        }
    }

    /// Parses `-12.340` (and, for JSON numbers, exponent forms).
    pub fn parse(text: &str) -> Option<Self> {
        if text.contains(['e', 'E']) {
            let f: f64 = text.parse().ok()?;
            return Self::parse(&format!("{f}"));
        }
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if digits.contains('.') && frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if int.len() + frac.len() > 36 {
            return None;
        }
        let mantissa: i128 = format!("{int}{frac}").parse().ok()?;
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: frac.len() as u32,
        })
    }

    pub fn from_f64(f: f64) -> Option<Self> {
        f.is_finite().then(|| Self::parse(&format!("{f}")))?
    }

    pub fn to_f64(self) -> f64 {
        self.mantissa as f64 / 10f64.powi(self.scale as i32)
    }

    pub fn scale(self) -> u32 {
        self.scale
    }

    /// The value as an integer, when it has no fractional part.
    pub fn as_integer(self) -> Option<i64> {
        let unit = pow10(self.scale)?;
        (self.mantissa % unit == 0)
            .then(|| i64::try_from(self.mantissa / unit).ok())
            .flatten()
    }

    fn rescale(self, scale: u32) -> Option<i128> {
        self.mantissa
            .checked_mul(pow10(scale.checked_sub(self.scale)?)?)
    }

    fn aligned(a: Self, b: Self) -> Option<(i128, i128, u32)> {
        let scale = a.scale.max(b.scale);
        Some((a.rescale(scale)?, b.rescale(scale)?, scale))
    }

    pub fn compare(self, other: Self) -> Ordering {
        match Self::aligned(self, other) {
            Some((a, b, _)) => a.cmp(&b),
            None => self
                .to_f64()
                .partial_cmp(&other.to_f64())
                .unwrap_or(Ordering::Equal),
        }
    }

    /// Drops digits beyond [`MAX_SCALE`], rounding half away from zero.
    fn bounded(mut self) -> Self {
        while self.scale > MAX_SCALE {
            self = self.round_to(self.scale - 1);
        }
        self
    }

    pub fn plus(self, other: Self) -> Option<Self> {
        let (a, b, scale) = Self::aligned(self, other)?;
        Some(Decimal {
            mantissa: a.checked_add(b)?,
            scale,
        })
    }

    pub fn negated(self) -> Self {
        Decimal {
            mantissa: -self.mantissa,
            scale: self.scale,
        }
    }

    pub fn minus(self, other: Self) -> Option<Self> {
        self.plus(other.negated())
    }

    pub fn times(self, other: Self) -> Option<Self> {
        Some(
            Decimal {
                mantissa: self.mantissa.checked_mul(other.mantissa)?,
                scale: self.scale + other.scale,
            }
            .bounded(),
        )
    }

    /// `self / other` to [`MAX_SCALE`] digits, trailing zeros dropped; `None` for division by zero.
    pub fn divided_by(self, other: Self) -> Option<Self> {
        if other.mantissa == 0 {
            return None;
        }
        // a/10^sa / (b/10^sb) = a * 10^(sb + k - sa) / b / 10^k
        let k = MAX_SCALE;
        let shift = (other.scale + k).checked_sub(self.scale)?;
        let numerator = self.mantissa.checked_mul(pow10(shift)?)?;
        Some(
            Decimal {
                mantissa: numerator / other.mantissa,
                scale: k,
            }
            .trimmed(),
        )
    }

    /// Without trailing zeros after the point.
    pub fn trimmed(mut self) -> Self {
        while self.scale > 0 && self.mantissa % 10 == 0 {
            self.mantissa /= 10;
            self.scale -= 1;
        }
        self
    }

    pub fn is_zero(self) -> bool {
        self.mantissa == 0
    }

    /// Rounded half away from zero to `scale` digits after the point.
    pub fn round_to(self, scale: u32) -> Self {
        if scale >= self.scale {
            return self;
        }
        let Some(unit) = pow10(self.scale - scale) else {
            return Decimal::from_i64(0);
        };
        let quotient = self.mantissa / unit;
        let remainder = (self.mantissa % unit).abs();
        let up = remainder * 2 >= unit;
        let mantissa = if up {
            quotient + self.mantissa.signum()
        } else {
            quotient
        };
        Decimal { mantissa, scale }
    }

    /// Toward zero (`truncate()`), or toward negative infinity (`floor()`).
    pub fn to_integer(self, floor: bool) -> Option<i64> {
        let unit = pow10(self.scale)?;
        let mut q = self.mantissa / unit;
        if floor && self.mantissa % unit != 0 && self.mantissa < 0 {
            q -= 1;
        }
        i64::try_from(q).ok()
    }

    pub fn ceiling(self) -> Option<i64> {
        let unit = pow10(self.scale)?;
        let mut q = self.mantissa / unit;
        if self.mantissa % unit != 0 && self.mantissa > 0 {
            q += 1;
        }
        i64::try_from(q).ok()
    }

    /// `lowBoundary()`/`highBoundary()`: the edge of the range a decimal
    /// of this scale stands for (`1.587` is `[1.5865, 1.5875]`), given to
    /// `precision` digits (floored or ceiled when fewer than it has);
    /// `None` beyond 28 digits.
    pub fn boundary(self, precision: u32, high: bool) -> Option<Self> {
        if precision > 28 {
            return None;
        }
        let half = Decimal {
            mantissa: 5,
            scale: self.scale + 1,
        };
        let edge = if high {
            self.plus(half)?
        } else {
            self.minus(half)?
        };
        if precision >= edge.scale {
            return Some(Decimal {
                mantissa: edge.rescale(precision)?,
                scale: precision,
            });
        }
        let unit = pow10(edge.scale - precision)?;
        let mut mantissa = edge.mantissa.div_euclid(unit);
        if high && edge.mantissa.rem_euclid(unit) != 0 {
            mantissa += 1;
        }
        Some(Decimal {
            mantissa,
            scale: precision,
        })
    }
}

impl PartialEq for Decimal {
    fn eq(&self, other: &Self) -> bool {
        Decimal::compare(*self, *other) == Ordering::Equal
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

// ---------------------------------------------------------------- dates and times

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalKind {
    Date,
    DateTime,
    Time,
}

/// A date, dateTime or time known to some precision, with an optional
/// timezone offset in minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    pub kind: TemporalKind,
    pub precision: Precision,
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
    pub offset: Option<i32>,
}

fn digits(text: &str, n: usize) -> Option<(u32, &str)> {
    if text.len() < n || !text.as_bytes()[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((text[..n].parse().ok()?, &text[n..]))
}

pub(crate) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian).
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i32, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

impl Temporal {
    fn empty(kind: TemporalKind) -> Self {
        Temporal {
            kind,
            precision: Precision::Year,
            year: 1,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millisecond: 0,
            offset: None,
        }
    }

    /// A FHIR/FHIRPath date or dateTime text without the `@`: `2014`,
    /// `2014-01`, `2014-01-25T14:30:14.559+02:00`, `2014-01-25T` (a
    /// dateTime of day precision). `date_only` rejects a time part.
    pub fn parse_date_time(text: &str, kind: TemporalKind) -> Option<Self> {
        let mut t = Temporal::empty(kind);
        let (year, mut rest) = digits(text, 4)?;
        t.year = year as i32;
        if let Some(r) = rest.strip_prefix('-') {
            let (month, r) = digits(r, 2)?;
            t.month = month;
            t.precision = Precision::Month;
            rest = r;
            if let Some(r) = rest.strip_prefix('-') {
                let (day, r) = digits(r, 2)?;
                t.day = day;
                t.precision = Precision::Day;
                rest = r;
            }
        }
        if !(1..=12).contains(&t.month)
            || t.day < 1
            || t.day > days_in_month(i64::from(t.year), t.month)
        {
            return None;
        }
        if let Some(r) = rest.strip_prefix('T') {
            if kind == TemporalKind::Date {
                return None;
            }
            t.kind = TemporalKind::DateTime;
            if r.is_empty() {
                return Some(t);
            }
            rest = t.parse_time_part(r)?;
            if !rest.is_empty() {
                rest = t.parse_offset(rest)?;
            }
        }
        rest.is_empty().then_some(t)
    }

    /// `14:30`, `14:30:14.559` without the leading `T`.
    pub fn parse_time(text: &str) -> Option<Self> {
        let mut t = Temporal::empty(TemporalKind::Time);
        let rest = t.parse_time_part(text)?;
        rest.is_empty().then_some(t)
    }

    fn parse_time_part<'t>(&mut self, text: &'t str) -> Option<&'t str> {
        let (hour, mut rest) = digits(text, 2)?;
        self.hour = hour;
        self.precision = Precision::Hour;
        if let Some(r) = rest.strip_prefix(':') {
            let (minute, r) = digits(r, 2)?;
            self.minute = minute;
            self.precision = Precision::Minute;
            rest = r;
            if let Some(r) = rest.strip_prefix(':') {
                let (second, r) = digits(r, 2)?;
                self.second = second;
                self.precision = Precision::Second;
                rest = r;
                if let Some(r) = rest.strip_prefix('.') {
                    let len = r.bytes().take_while(u8::is_ascii_digit).count();
                    if len == 0 {
                        return None;
                    }
                    let frac = &r[..len.min(3)];
                    self.millisecond = format!("{frac:0<3}").parse().ok()?;
                    self.precision = Precision::Millisecond;
                    rest = &r[len..];
                }
            }
        }
        (self.hour < 24 && self.minute < 60 && self.second < 60).then_some(rest)
    }

    fn parse_offset<'t>(&mut self, text: &'t str) -> Option<&'t str> {
        if let Some(r) = text.strip_prefix('Z') {
            self.offset = Some(0);
            return Some(r);
        }
        let sign = match text.as_bytes().first()? {
            b'+' => 1,
            b'-' => -1,
            _ => return None,
        };
        let (h, r) = digits(&text[1..], 2)?;
        let r = r.strip_prefix(':')?;
        let (m, r) = digits(r, 2)?;
        self.offset = Some(sign * (h * 60 + m) as i32);
        Some(r)
    }

    /// Milliseconds since the epoch of the fields as written (no offset applied).
    fn local_millis(&self) -> i64 {
        let days = days_from_civil(i64::from(self.year), self.month, self.day);
        ((days * 24 + i64::from(self.hour)) * 60 + i64::from(self.minute)) * 60_000
            + i64::from(self.second) * 1000
            + i64::from(self.millisecond)
    }

    fn set_from_millis(&mut self, millis: i64) {
        let days = millis.div_euclid(86_400_000);
        let mut rest = millis.rem_euclid(86_400_000);
        let (y, m, d) = civil_from_days(days);
        self.year = y;
        self.month = m;
        self.day = d;
        self.hour = (rest / 3_600_000) as u32;
        rest %= 3_600_000;
        self.minute = (rest / 60_000) as u32;
        rest %= 60_000;
        self.second = (rest / 1000) as u32;
        self.millisecond = (rest % 1000) as u32;
    }

    /// The same instant in UTC, when it has a time and an offset.
    fn in_utc(&self) -> Temporal {
        match self.offset {
            Some(offset)
                if self.precision >= Precision::Hour && self.kind != TemporalKind::Time =>
            {
                let mut t = *self;
                t.set_from_millis(self.local_millis() - i64::from(offset) * 60_000);
                t.offset = Some(0);
                t
            }
            _ => *self,
        }
    }

    fn components(&self) -> [(Precision, i64); 6] {
        let seconds = i64::from(self.second) * 1000 + i64::from(self.millisecond);
        [
            (Precision::Year, i64::from(self.year)),
            (Precision::Month, i64::from(self.month)),
            (Precision::Day, i64::from(self.day)),
            (Precision::Hour, i64::from(self.hour)),
            (Precision::Minute, i64::from(self.minute)),
            (Precision::Second, seconds),
        ]
    }

    fn effective(p: Precision) -> Precision {
        // Seconds and milliseconds are one precision for comparison.
        p.min(Precision::Second)
    }

    /// Ordering by the FHIRPath rules: `None` when the values are known to
    /// different precisions and agree as far as both go.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        let date_like = |k| k != TemporalKind::Time;
        if date_like(self.kind) != date_like(other.kind) {
            return None;
        }
        let timed = |t: &Temporal| t.precision >= Precision::Hour && t.kind != TemporalKind::Time;
        if timed(self) && timed(other) && self.offset.is_some() != other.offset.is_some() {
            // One in a known zone, one local: unknown.
            return None;
        }
        let (a, b) = (self.in_utc(), other.in_utc());
        let (pa, pb) = (Self::effective(a.precision), Self::effective(b.precision));
        let skip = if self.kind == TemporalKind::Time {
            3
        } else {
            0
        };
        for ((p, x), (_, y)) in a.components().into_iter().zip(b.components()).skip(skip) {
            let (has_a, has_b) = (p <= pa, p <= pb);
            match (has_a, has_b) {
                (true, true) => match x.cmp(&y) {
                    Ordering::Equal => {}
                    other => return Some(other),
                },
                (false, false) => return Some(Ordering::Equal),
                _ => return None,
            }
        }
        Some(Ordering::Equal)
    }

    /// Adds `amount` of a calendar `unit` (`year` ... `millisecond`).
    pub fn plus_calendar(&self, amount: i64, unit: &str) -> Option<Temporal> {
        let mut t = *self;
        match unit {
            "year" => {
                t.year = i32::try_from(i64::from(t.year) + amount).ok()?;
                t.day = t.day.min(days_in_month(i64::from(t.year), t.month));
            }
            "month" => {
                let total = i64::from(t.year) * 12 + i64::from(t.month) - 1 + amount;
                t.year = i32::try_from(total.div_euclid(12)).ok()?;
                t.month = total.rem_euclid(12) as u32 + 1;
                t.day = t.day.min(days_in_month(i64::from(t.year), t.month));
            }
            _ => {
                let millis = match unit {
                    "week" => 7 * 86_400_000,
                    "day" => 86_400_000,
                    "hour" => 3_600_000,
                    "minute" => 60_000,
                    "second" => 1000,
                    "millisecond" => 1,
                    _ => return None,
                };
                let delta = amount.checked_mul(millis)?;
                if t.kind == TemporalKind::Time {
                    let day = 86_400_000;
                    let base =
                        t.local_millis() - days_from_civil(i64::from(t.year), t.month, t.day) * day;
                    let shifted = (base + delta).rem_euclid(day);
                    let (y, m, d) = (t.year, t.month, t.day);
                    t.set_from_millis(days_from_civil(i64::from(y), m, d) * day + shifted);
                } else {
                    t.set_from_millis(t.local_millis().checked_add(delta)?);
                }
            }
        }
        (1..=9999).contains(&t.year).then_some(t)
    }
}

impl Temporal {
    /// The current date, dateTime or time (UTC).
    pub fn now(kind: TemporalKind) -> Temporal {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut t = Temporal::empty(kind);
        t.set_from_millis(millis);
        match kind {
            TemporalKind::Date => t.precision = Precision::Day,
            TemporalKind::DateTime => {
                t.precision = Precision::Millisecond;
                t.offset = Some(0);
            }
            TemporalKind::Time => t.precision = Precision::Millisecond,
        }
        t
    }

    /// The earliest (or latest) value this partial value may stand for, to
    /// `digits` of precision (`8` for a date to the day, `17` for a
    /// dateTime to the millisecond, `9` for a time).
    pub fn boundary(&self, digits: Option<i64>, high: bool) -> Option<Temporal> {
        let time = self.kind == TemporalKind::Time;
        let digits = digits.unwrap_or(match self.kind {
            TemporalKind::Date => 8,
            TemporalKind::DateTime => 17,
            TemporalKind::Time => 9,
        });
        let precision = match (time, digits) {
            (false, 4) => Precision::Year,
            (false, 6) => Precision::Month,
            (false, 8) => Precision::Day,
            (false, 10) | (true, 2) => Precision::Hour,
            (false, 12) | (true, 4) => Precision::Minute,
            (false, 14) | (true, 6) => Precision::Second,
            (false, 17) | (true, 9) => Precision::Millisecond,
            _ => return None,
        };
        if self.kind == TemporalKind::Date && precision > Precision::Day {
            return None;
        }
        let mut t = *self;
        let p = self.precision;
        if p < Precision::Month {
            t.month = if high { 12 } else { 1 };
        }
        if p < Precision::Day {
            t.day = if high {
                days_in_month(i64::from(t.year), t.month)
            } else {
                1
            };
        }
        if p < Precision::Hour {
            t.hour = if high { 23 } else { 0 };
        }
        if p < Precision::Minute {
            t.minute = if high { 59 } else { 0 };
        }
        if p < Precision::Second {
            t.second = if high { 59 } else { 0 };
        }
        if p < Precision::Millisecond {
            t.millisecond = if high { 999 } else { 0 };
        }
        if self.kind == TemporalKind::DateTime
            && self.offset.is_none()
            && precision >= Precision::Hour
        {
            // Unknown zone: the widest range, from +14:00 to -12:00.
            t.offset = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        t.precision = precision;
        Some(t)
    }
}

impl fmt::Display for Temporal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.precision;
        if self.kind != TemporalKind::Time {
            write!(f, "{:04}", self.year)?;
            if p >= Precision::Month {
                write!(f, "-{:02}", self.month)?;
            }
            if p >= Precision::Day {
                write!(f, "-{:02}", self.day)?;
            }
            if self.kind == TemporalKind::Date || p <= Precision::Day {
                return Ok(());
            }
            write!(f, "T")?;
        }
        write!(f, "{:02}", self.hour)?;
        if p >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if p >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if p >= Precision::Millisecond {
            write!(f, ".{:03}", self.millisecond)?;
        }
        match self.offset {
            Some(0) => write!(f, "Z"),
            Some(o) => write!(
                f,
                "{}{:02}:{:02}",
                if o < 0 { '-' } else { '+' },
                o.abs() / 60,
                o.abs() % 60
            ),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------- quantities

#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub value: Decimal,
    /// A UCUM code, or a calendar keyword in the singular (`day`, `year`).
    pub unit: String,
}

/// Calendar duration keywords, singular and plural, to their singular.
pub fn calendar_unit(word: &str) -> Option<&'static str> {
    Some(match word {
        "year" | "years" => "year",
        "month" | "months" => "month",
        "week" | "weeks" => "week",
        "day" | "days" => "day",
        "hour" | "hours" => "hour",
        "minute" | "minutes" => "minute",
        "second" | "seconds" => "second",
        "millisecond" | "milliseconds" => "millisecond",
        _ => return None,
    })
}

/// The calendar unit a UCUM time unit corresponds to.
pub fn ucum_calendar(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "a" => "year",
        "mo" => "month",
        "wk" => "week",
        "d" => "day",
        "h" => "hour",
        "min" => "minute",
        "s" => "second",
        "ms" => "millisecond",
        _ => return None,
    })
}

/// A unit as a factor of its dimension's base unit, for comparing
/// quantities written in different units (`1 'g' = 1000 'mg'`).
fn unit_factor(unit: &str) -> Option<(&'static str, Decimal)> {
    let d = |s: &str| Decimal::parse(s).expect("constant");
    Some(match unit {
        "g" => ("g", d("1")),
        "mg" => ("g", d("0.001")),
        "ug" => ("g", d("0.000001")),
        "kg" => ("g", d("1000")),
        "m" => ("m", d("1")),
        "cm" => ("m", d("0.01")),
        "mm" => ("m", d("0.001")),
        "km" => ("m", d("1000")),
        "[in_i]" => ("m", d("0.0254")),
        "[ft_i]" => ("m", d("0.3048")),
        "[lb_av]" => ("g", d("453.59237")),
        "[oz_av]" => ("g", d("28.349523125")),
        "L" | "l" => ("L", d("1")),
        "dL" => ("L", d("0.1")),
        "mL" => ("L", d("0.001")),
        "ms" | "millisecond" => ("s", d("0.001")),
        "s" | "second" => ("s", d("1")),
        "min" | "minute" => ("s", d("60")),
        "h" | "hour" => ("s", d("3600")),
        "d" | "day" => ("s", d("86400")),
        "wk" | "week" => ("s", d("604800")),
        "1" => ("1", d("1")),
        _ => return None,
    })
}

impl Quantity {
    /// The value in its dimension's base unit, or as written.
    fn canonical(&self) -> (String, Decimal) {
        match unit_factor(&self.unit).and_then(|(base, f)| Some((base, self.value.times(f)?))) {
            Some((base, value)) => (base.to_string(), value),
            None => (self.unit.clone(), self.value),
        }
    }

    /// Ordering when comparable. Calendar years and months only compare with
    /// themselves (`1 year` is not a definite duration); `equivalent`
    /// relaxes that to their UCUM counterparts.
    pub fn compare(&self, other: &Quantity, equivalent: bool) -> Option<Ordering> {
        let indefinite = |u: &str| matches!(u, "year" | "month");
        let (mut a, mut b) = (self.clone(), other.clone());
        if indefinite(&a.unit) || indefinite(&b.unit) {
            if equivalent {
                for q in [&mut a, &mut b] {
                    q.unit = match q.unit.as_str() {
                        "year" => "a".into(),
                        "month" => "mo".into(),
                        _ => continue,
                    };
                }
            }
            if a.unit != b.unit {
                return None;
            }
        }
        let ((ua, va), (ub, vb)) = (a.canonical(), b.canonical());
        (ua == ub).then(|| va.compare(vb))
    }
}

impl Quantity {
    /// The same quantity in `unit`, when both units measure one dimension.
    pub fn convert_to(&self, unit: &str) -> Option<Quantity> {
        if self.unit == unit {
            return Some(self.clone());
        }
        let (from_base, from) = unit_factor(&self.unit)?;
        let (to_base, to) = unit_factor(unit)?;
        if from_base != to_base {
            return None;
        }
        Some(Quantity {
            value: self.value.times(from)?.divided_by(to)?,
            unit: unit.to_string(),
        })
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if calendar_unit(&self.unit).is_some() {
            let plural = if self.value == Decimal::from_i64(1) {
                ""
            } else {
                "s"
            };
            write!(f, "{} {}{}", self.value, self.unit, plural)
        } else {
            write!(f, "{} '{}'", self.value, self.unit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_scale_and_compute_exactly() {
        let d = |s| Decimal::parse(s).unwrap();
        assert_eq!(d("1.50").to_string(), "1.50");
        assert_eq!(d("0.1").plus(d("0.2")).unwrap(), d("0.3"));
        assert_eq!(d("-0.05").to_string(), "-0.05");
        assert_eq!(
            d("1").divided_by(d("3")).unwrap().to_string(),
            "0.3333333333333333"
        );
        assert_eq!(d("2.5").round_to(0).to_string(), "3");
        assert_eq!(d("-1.5").to_integer(true), Some(-2));
        assert!(Decimal::parse("1.").is_none());
    }

    #[test]
    fn partial_dates_compare_by_precision() {
        let dt = |s| Temporal::parse_date_time(s, TemporalKind::DateTime).unwrap();
        assert_eq!(dt("2012-04").compare(&dt("2012-04-15")), None);
        assert_eq!(
            dt("2012-03").compare(&dt("2012-04-15")),
            Some(Ordering::Less)
        );
        assert_eq!(
            dt("2017-11-05T01:30:00.0-04:00").compare(&dt("2017-11-05T05:30:00Z")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            dt("2014-01-25T14:30:14.559+02:00").to_string(),
            "2014-01-25T14:30:14.559+02:00"
        );
        let d = Temporal::parse_date_time("1973-12-25", TemporalKind::Date).unwrap();
        assert_eq!(d.plus_calendar(7, "day").unwrap().to_string(), "1974-01-01");
    }
}
