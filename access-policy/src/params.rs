//! Policy parameters: `%name` becomes the parameter's value (a reference
//! such as `Patient/123`, or a string) and `%name.id` the id it ends with.

/// One named value an access entry supplies to its policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    pub name: String,
    /// `Type/id` for a reference parameter, otherwise the string.
    pub value: String,
}

impl Parameter {
    pub fn new(name: &str, value: &str) -> Parameter {
        Parameter {
            name: name.to_string(),
            value: value.to_string(),
        }
    }
}

/// The `%name` and `%name.id` placeholders in `text`, in order, as
/// `(start, end, name, wants_id)`. A name is letters, digits, `_` and `-`.
pub(crate) fn placeholders(text: &str) -> Vec<(usize, usize, &str, bool)> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i + 1;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b'-')
        {
            end += 1;
        }
        // `%2F` and the like are percent-encoding, not parameters.
        let name = &text[start + 1..end];
        if name.is_empty() || (name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit())) {
            i = end.max(i + 1);
            continue;
        }
        let wants_id = text[end..].starts_with(".id")
            && !text[end + 3..]
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        if wants_id {
            end += 3;
        }
        found.push((start, end, name, wants_id));
        i = end;
    }
    found
}

/// Replaces every placeholder whose name a parameter has; others stay.
pub fn substitute(text: &str, parameters: &[Parameter]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end, name, wants_id) in placeholders(text) {
        let Some(parameter) = parameters.iter().find(|p| p.name == name) else {
            continue;
        };
        out.push_str(&text[last..start]);
        if wants_id {
            out.push_str(parameter.value.rsplit('/').next().unwrap_or_default());
        } else {
            out.push_str(&parameter.value);
        }
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_references_and_ids() {
        let params = [
            Parameter::new("patient", "Patient/p1"),
            Parameter::new("org", "Organization/o1"),
        ];
        assert_eq!(
            substitute("Observation?subject=%patient", &params),
            "Observation?subject=Patient/p1"
        );
        assert_eq!(
            substitute("Patient?_id=%patient.id&organization=%org", &params),
            "Patient?_id=p1&organization=Organization/o1"
        );
        // Longer names are not prefixes of shorter ones; unknown ones stay.
        assert_eq!(
            substitute("x=%patients&y=%other.id", &params),
            "x=%patients&y=%other.id"
        );
        assert_eq!(
            substitute("%patient.identifier", &params),
            "Patient/p1.identifier"
        );
        // Percent-encoded bytes are left alone.
        assert_eq!(substitute("a=%2F%patient", &params), "a=%2FPatient/p1");
    }
}
