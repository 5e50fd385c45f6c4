//! How much JSON a request may carry before it is parsed into a tree: a
//! body of a few megabytes can hold millions of values, and a tree of them
//! costs ten times the body or more. Counting with a visitor that keeps
//! nothing costs no memory, so a body past the limits is refused before it
//! is parsed.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The most JSON values a body may hold, and the most items in one array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonBounds {
    pub max_values: usize,
    pub max_array_length: usize,
}

/// Which bound a body passes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundsError {
    #[error("The body holds more than {0} JSON values (FHIRGATE_MAX_JSON_VALUES); split it into smaller requests")]
    TooManyValues(usize),
    #[error("An array in the body has more than {0} items (FHIRGATE_MAX_ARRAY_LENGTH)")]
    ArrayTooLong(usize),
}

/// Checks `body` against `bounds` without building it. JSON that does not
/// parse passes: the parser that follows reports where it is wrong.
pub fn check(body: &[u8], bounds: JsonBounds) -> Result<(), BoundsError> {
    let mut counter = Counter {
        bounds,
        values: 0,
        exceeded: None,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // Nesting deeper than serde_json's recursion limit is its own error.
    let _ = CountSeed(&mut counter).deserialize(&mut deserializer);
    match counter.exceeded {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

struct Counter {
    bounds: JsonBounds,
    values: usize,
    exceeded: Option<BoundsError>,
}

impl Counter {
    /// Counts one value; `Err` stops the parse once a bound is passed.
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        self.values += 1;
        if self.values > self.bounds.max_values {
            return self.stop(BoundsError::TooManyValues(self.bounds.max_values));
        }
        Ok(())
    }

    fn stop<E: de::Error>(&mut self, error: BoundsError) -> Result<(), E> {
        let message = error.to_string();
        self.exceeded = Some(error);
        Err(E::custom(message))
    }
}

struct CountSeed<'c>(&'c mut Counter);

impl<'de> DeserializeSeed<'de> for CountSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(CountVisitor(self.0))
    }
}

struct CountVisitor<'c>(&'c mut Counter);

impl<'de> Visitor<'de> for CountVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.0.count()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.0.count()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.0.count()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.0.count()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.0.count()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.count()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        self.0.count()?;
        let mut length = 0;
        while items.next_element_seed(CountSeed(self.0))?.is_some() {
            length += 1;
            if length > self.0.bounds.max_array_length {
                let max = self.0.bounds.max_array_length;
                return self.0.stop(BoundsError::ArrayTooLong(max));
            }
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        self.0.count()?;
        while entries.next_key::<IgnoredAny>()?.is_some() {
            entries.next_value_seed(CountSeed(self.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: JsonBounds = JsonBounds {
        max_values: 10,
        max_array_length: 3,
    };

    #[test]
    fn counts_every_value() {
        // Object, string, array, two numbers, object, boolean: 7 values.
        let body = br#"{"a": "x", "b": [1, 2], "c": {"d": true}}"#;
        assert_eq!(check(body, BOUNDS), Ok(()));
        let tight = JsonBounds {
            max_values: 6,
            ..BOUNDS
        };
        assert_eq!(check(body, tight), Err(BoundsError::TooManyValues(6)));
    }

    #[test]
    fn long_arrays_are_refused_at_any_depth() {
        assert_eq!(check(br#"{"a": [1, 2, 3]}"#, BOUNDS), Ok(()));
        assert_eq!(
            check(br#"{"a": {"b": [1, 2, 3, 4]}}"#, BOUNDS),
            Err(BoundsError::ArrayTooLong(3))
        );
    }

    #[test]
    fn malformed_json_is_left_to_the_parser() {
        assert_eq!(check(b"{\"a\": ", BOUNDS), Ok(()));
        assert_eq!(check(b"", BOUNDS), Ok(()));
    }
}
