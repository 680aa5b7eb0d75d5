//! Duplicate object keys in JSON text. The proto3 JSON mapping (and the protobuf
//! conformance suite) reject `{"title":"a","title":"b"}`, but serde_json and prost-reflect
//! keep the last value, so a gateway in front of a validator could be made to see one
//! value while the backend sees another. The byte-level transcoder already refuses them
//! (it falls back on any repeated field); this check runs before every parse that does
//! not go through it.
//!
//! Depth is bounded by serde_json's own recursion limit (128), as for every other parse.

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// `Err` naming the first key given twice in one object (or the parse error).
pub fn check(json: &[u8]) -> Result<(), serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    Any.deserialize(&mut deserializer)?;
    deserializer.end()
}

/// Any JSON value; objects are checked for repeated keys, recursively.
struct Any;

impl<'de> DeserializeSeed<'de> for Any {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Any {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Any)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if seen.contains(&key) {
                return Err(A::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value_seed(Any)?;
            seen.insert(key);
        }
        Ok(())
    }
}

/// An object key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"title":"a","title":"b"}"#,
            r#"{"a":{"x":1,"y":2,"x":3}}"#,
            r#"[{"k":1},{"k":1,"k":2}]"#,
            // The same key once escaped, once not.
            r#"{"title":1,"t\u0069tle":2}"#,
        ] {
            let error = check(bad.as_bytes()).unwrap_err().to_string();
            assert!(error.contains("duplicate key"), "{bad}: {error}");
        }
        for good in [
            r#"{"title":"a","name":"b"}"#,
            r#"[{"k":1},{"k":2}]"#,
            r#"{"a":{"k":1},"b":{"k":1}}"#,
            "3",
            "null",
        ] {
            assert!(check(good.as_bytes()).is_ok(), "{good}");
        }
        assert!(check(b"{\"a\":1} x").is_err());
    }

    #[test]
    fn nesting_is_bounded_by_the_parser() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(check(deep.as_bytes()).is_err());
    }
}
