//! Tokens of a FHIRPath expression, each with its character offset.

use super::FhirPathError;

#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    Ident(String),
    /// A backtick-delimited identifier: never a keyword.
    Quoted(String),
    Str(String),
    /// A number as written (`1`, `1.50`).
    Number(String),
    /// A date, dateTime or time literal without its `@`.
    DateTime(String),
    Time(String),
    /// `%name`, `%`name``, `%'name'`.
    External(String),
    /// `$this`, `$index`, `$total`.
    Special(String),
    Symbol(&'static str),
}

#[derive(Debug, Clone)]
pub struct Spanned {
    pub token: Token,
    /// Character offset in the expression.
    pub at: usize,
}

const SYMBOLS: &[&str] = &[
    "!=", "!~", "<=", ">=", ".", ",", "(", ")", "[", "]", "{", "}", "|", "=", "~", "<", ">", "+",
    "-", "*", "/", "&",
];

pub fn syntax(at: usize, message: impl Into<String>) -> FhirPathError {
    FhirPathError::Syntax {
        position: at,
        message: message.into(),
    }
}

pub fn lex(source: &str) -> Result<Vec<Spanned>, FhirPathError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    let starts = |i: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, c)| chars.get(i + k) == Some(&c))
    };
    while i < chars.len() {
        let c = chars[i];
        let at = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if starts(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if starts(i, "/*") {
            i += 2;
            while i < chars.len() && !starts(i, "*/") {
                i += 1;
            }
            if i >= chars.len() {
                return Err(syntax(at, "unterminated comment"));
            }
            i += 2;
            continue;
        }
        let token = match c {
            '\'' | '`' => {
                let (text, next) = quoted(&chars, i)?;
                i = next;
                if c == '`' {
                    Token::Quoted(text)
                } else {
                    Token::Str(text)
                }
            }
            '%' => {
                i += 1;
                match chars.get(i) {
                    Some('`') | Some('\'') => {
                        let (text, next) = quoted(&chars, i)?;
                        i = next;
                        Token::External(text)
                    }
                    _ => {
                        let mut name = word(&chars, &mut i, false);
                        // `%vs-name`, `%ext-name`
                        if (name == "vs" || name == "ext") && chars.get(i) == Some(&'-') {
                            name.push_str(&word(&chars, &mut i, true));
                        }
                        if name.is_empty() {
                            return Err(syntax(at, "`%` must be followed by a name"));
                        }
                        Token::External(name)
                    }
                }
            }
            '$' => {
                i += 1;
                let name = word(&chars, &mut i, false);
                if !matches!(name.as_str(), "this" | "index" | "total") {
                    return Err(syntax(at, format!("unknown variable `${name}`")));
                }
                Token::Special(name)
            }
            '@' => {
                i += 1;
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric()
                        || matches!(chars[i], '-' | ':' | '.' | '+'))
                {
                    // `.` only inside a fraction of seconds.
                    if chars[i] == '.' && !chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                        break;
                    }
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                match text.strip_prefix('T') {
                    Some(time) => Token::Time(time.to_string()),
                    None => Token::DateTime(text),
                }
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
                Token::Number(chars[start..i].iter().collect())
            }
            c if c.is_alphabetic() || c == '_' => Token::Ident(word(&chars, &mut i, false)),
            _ => {
                let symbol = SYMBOLS
                    .iter()
                    .find(|s| starts(i, s))
                    .ok_or_else(|| syntax(at, format!("unexpected character `{c}`")))?;
                i += symbol.len();
                Token::Symbol(symbol)
            }
        };
        tokens.push(Spanned { token, at });
    }
    Ok(tokens)
}

fn word(chars: &[char], i: &mut usize, allow_dash: bool) -> String {
    let start = *i;
    while *i < chars.len()
        && (chars[*i].is_alphanumeric() || chars[*i] == '_' || allow_dash && chars[*i] == '-')
    {
        *i += 1;
    }
    chars[start..*i].iter().collect()
}

/// A `'string'` or `` `identifier` `` starting at `start`, with escapes
/// (including `\uXXXX`) resolved; returns the text and the offset after it.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), FhirPathError> {
    let quote = chars[start];
    let mut text = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None => return Err(syntax(start, "unterminated literal")),
            Some(&ch) if ch == quote => return Ok((text, i + 1)),
            Some('\\') => {
                let escaped = match chars.get(i + 1) {
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some('f') => '\u{c}',
                    Some('u') => {
                        let hex: String = chars.iter().skip(i + 2).take(4).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| hex.len() == 4)
                            .and_then(char::from_u32)
                            .ok_or_else(|| syntax(i, "bad \\u escape"))?;
                        i += 4;
                        code
                    }
                    Some(&other @ ('\\' | '\'' | '"' | '`' | '/')) => other,
                    Some(other) => return Err(syntax(i, format!("unknown escape `\\{other}`"))),
                    None => return Err(syntax(start, "unterminated literal")),
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
}
