//! Response shaping: what a JSON answer looks like (`Shape`, known at load from the
//! descriptors), field selections over it (`Mask`: `response: { fields: [...] }` and the
//! client's `?fields=` partial-response parameter), and trimming an answer to a mask.
//!
//! `?fields=` follows Google's partial-response syntax: `a,b/c,d(e,f(g))`; `.` also
//! separates nested names. A path the answer cannot contain is an error (400), checked
//! against the shape, so a field that is merely absent in one answer is not "unknown".

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Longest `?fields=` value, entries and nesting accepted: the parameter is client input.
const MAX_FIELDS_LEN: usize = 4096;
const MAX_ENTRIES: usize = 256;
const MAX_DEPTH: usize = 16;

/// The form of a JSON value, as far as the descriptors tell.
#[derive(Debug, Clone)]
pub enum Shape {
    /// Anything (untyped AMQP replies, well-known types, maps).
    Any,
    Scalar,
    Message(MessageDescriptor),
    List(Box<Shape>),
    /// Named members in order (the composed answer: step name → result).
    Object(Vec<(String, Shape)>),
}

impl Shape {
    /// The shape of a field's JSON value.
    pub fn of_field(field: &FieldDescriptor) -> Shape {
        if field.is_map() {
            return Shape::Any;
        }
        let single = match field.kind() {
            Kind::Message(m) if m.full_name().starts_with("google.protobuf.") => Shape::Any,
            Kind::Message(m) => Shape::Message(m),
            _ => Shape::Scalar,
        };
        if field.is_list() {
            Shape::List(Box::new(single))
        } else {
            single
        }
    }

    /// The member `name` (proto or JSON name for messages), as emitted, and its shape.
    /// Lists are transparent: a name on a list selects in every element.
    pub fn child(&self, name: &str, proto_names: bool) -> Result<(String, Shape), String> {
        match self {
            Shape::Any => Ok((name.to_string(), Shape::Any)),
            Shape::Scalar => Err(format!("`{name}`: the value it is in has no fields")),
            Shape::List(inner) => {
                let (emitted, shape) = inner.child(name, proto_names)?;
                Ok((emitted, shape))
            }
            Shape::Message(desc) => {
                let field = desc
                    .get_field_by_name(name)
                    .or_else(|| desc.get_field_by_json_name(name))
                    .ok_or_else(|| format!("`{name}` is not a field of `{}`", desc.full_name()))?;
                let emitted = if proto_names {
                    field.name().to_string()
                } else {
                    field.json_name().to_string()
                };
                Ok((emitted, Shape::of_field(&field)))
            }
            Shape::Object(members) => members
                .iter()
                .find(|(n, _)| n == name)
                .map(|(n, s)| (n.clone(), s.clone()))
                .ok_or_else(|| {
                    let known: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
                    format!("`{name}` is not one of {}", known.join(", "))
                }),
        }
    }

    /// The shape after keeping only `mask`.
    pub fn project(&self, mask: &Mask) -> Shape {
        match self {
            Shape::List(inner) => Shape::List(Box::new(inner.project(mask))),
            Shape::Any | Shape::Scalar => self.clone(),
            _ => Shape::Object(
                mask.0
                    .iter()
                    .map(|(name, sub)| {
                        let child = self
                            .child(name, false)
                            .map(|(_, s)| s)
                            .unwrap_or(Shape::Any);
                        let child = match sub {
                            Some(sub) => child.project(sub),
                            None => child,
                        };
                        (name.clone(), child)
                    })
                    .collect(),
            ),
        }
    }
}

/// A selection of members; `None` keeps a member whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mask(pub Vec<(String, Option<Mask>)>);

impl Mask {
    /// Adds one path (names in order); a whole member absorbs its sub-selections.
    pub fn insert(&mut self, path: &[String]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let position = self.0.iter().position(|(n, _)| n == first);
        match (position, rest.is_empty()) {
            (Some(i), true) => self.0[i].1 = None,
            (Some(i), false) => {
                if let Some(sub) = &mut self.0[i].1 {
                    sub.insert(rest);
                }
            }
            (None, true) => self.0.push((first.clone(), None)),
            (None, false) => {
                let mut sub = Mask::default();
                sub.insert(rest);
                self.0.push((first.clone(), Some(sub)));
            }
        }
    }

    /// Every selected path as `a.b.c`.
    pub fn paths(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, sub) in &self.0 {
            match sub {
                Some(sub) => out.extend(sub.paths().into_iter().map(|p| format!("{name}.{p}"))),
                None => out.push(name.clone()),
            }
        }
        out
    }

    /// Paths written as `a.b.c`.
    pub fn from_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut mask = Mask::default();
        for path in paths {
            let segments: Vec<String> = path.split('.').map(|s| s.trim().to_string()).collect();
            if segments.iter().any(String::is_empty) {
                return Err(format!("field path `{path}` has an empty segment"));
            }
            mask.insert(&segments);
        }
        Ok(mask)
    }

    /// Google partial-response syntax: `a,b/c,d(e,f(g))` (`.` works like `/`).
    pub fn parse_param(text: &str) -> Result<Self, String> {
        if text.len() > MAX_FIELDS_LEN {
            return Err(format!("`fields` longer than {MAX_FIELDS_LEN} characters"));
        }
        let mut parser = Parser {
            bytes: text.as_bytes(),
            at: 0,
            entries: 0,
        };
        let mask = parser.list(0)?;
        if parser.at != parser.bytes.len() {
            return Err(format!(
                "`fields`: unexpected `{}` at {}",
                text[parser.at..].chars().next().unwrap_or(' '),
                parser.at
            ));
        }
        Ok(mask)
    }

    /// This mask with every name checked against `shape` and written as emitted.
    pub fn validate(&self, shape: &Shape, proto_names: bool) -> Result<Mask, String> {
        let mut out = Vec::with_capacity(self.0.len());
        for (name, sub) in &self.0 {
            let (emitted, child) = shape.child(name, proto_names)?;
            let sub = match sub {
                Some(sub) => Some(
                    sub.validate(&child, proto_names)
                        .map_err(|e| format!("in `{name}`: {e}"))?,
                ),
                None => None,
            };
            out.push((emitted, sub));
        }
        Ok(Mask(out))
    }

    /// Keeps only the selected members of `value` (arrays: in every element), in the
    /// value's own order (a message's fields in field order), not the mask's.
    pub fn apply(&self, value: Value) -> Value {
        match value {
            Value::Object(map) => {
                // A long mask is looked up by hash: keys × entries would grow quadratically.
                let index: Option<HashMap<&str, Option<&Mask>>> = (self.0.len() > 16).then(|| {
                    self.0
                        .iter()
                        .map(|(n, sub)| (n.as_str(), sub.as_ref()))
                        .collect()
                });
                let selected = |name: &str| match &index {
                    Some(index) => index.get(name).copied(),
                    None => self
                        .0
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, sub)| sub.as_ref()),
                };
                let mut out = Map::new();
                for (name, v) in map {
                    if let Some(sub) = selected(&name) {
                        let v = match sub {
                            Some(sub) => sub.apply(v),
                            None => v,
                        };
                        out.insert(name, v);
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.apply(v)).collect()),
            other => other,
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    at: usize,
    entries: usize,
}

impl Parser<'_> {
    /// `entry (',' entry)*` up to the end or a `)`.
    fn list(&mut self, depth: usize) -> Result<Mask, String> {
        if depth > MAX_DEPTH {
            return Err(format!("`fields` nested deeper than {MAX_DEPTH} levels"));
        }
        let mut mask = Mask::default();
        loop {
            let path = self.path()?;
            self.entries += 1;
            if self.entries > MAX_ENTRIES {
                return Err(format!("`fields` has more than {MAX_ENTRIES} entries"));
            }
            if self.peek() == Some(b'(') {
                self.at += 1;
                let sub = self.list(depth + 1)?;
                if self.peek() != Some(b')') {
                    return Err("`fields`: `(` without `)`".into());
                }
                self.at += 1;
                for (name, inner) in sub.0 {
                    let mut full = path.clone();
                    full.push(name);
                    merge(&mut mask, &full, inner);
                }
            } else {
                mask.insert(&path);
            }
            match self.peek() {
                Some(b',') => self.at += 1,
                _ => return Ok(mask),
            }
        }
    }

    /// `name (('/' | '.') name)*`
    fn path(&mut self) -> Result<Vec<String>, String> {
        let mut path = Vec::new();
        loop {
            let start = self.at;
            while let Some(c) = self.peek() {
                if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
                    self.at += 1;
                } else {
                    break;
                }
            }
            if self.at == start {
                return Err(format!("`fields`: a field name is missing at {start}"));
            }
            // Only ASCII was consumed, so this slice is valid UTF-8.
            path.push(String::from_utf8_lossy(&self.bytes[start..self.at]).into_owned());
            match self.peek() {
                Some(b'/' | b'.') => self.at += 1,
                _ => return Ok(path),
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }
}

/// Adds `path` with the sub-selection `inner` (`None`: whole) to `mask`.
fn merge(mask: &mut Mask, path: &[String], inner: Option<Mask>) {
    match inner {
        None => mask.insert(path),
        Some(inner) => {
            for (name, sub) in inner.0 {
                let mut full = path.to_vec();
                full.push(name);
                merge(mask, &full, sub);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn google_partial_response_syntax() {
        let mask =
            Mask::parse_param("product(name,price/units),reviews,a.b(c(d,e)),product.id").unwrap();
        assert_eq!(
            mask.paths(),
            [
                "product.name",
                "product.price.units",
                "product.id",
                "reviews",
                "a.b.c.d",
                "a.b.c.e"
            ]
        );
        // A whole member absorbs its parts, whichever comes first.
        let mask = Mask::parse_param("a/b,a,a(c)").unwrap();
        assert_eq!(mask.paths(), ["a"]);
        for bad in [
            "", "a,", "a(b", "a)b", "a(,b)", "a//b", "a b", "(a)", "a(b))",
        ] {
            assert!(Mask::parse_param(bad).is_err(), "{bad:?} should be refused");
        }
        let deep = format!("{}x{}", "a(".repeat(40), ")".repeat(40));
        assert!(Mask::parse_param(&deep).unwrap_err().contains("deeper"));
        let many = vec!["a"; 300].join(",");
        assert!(Mask::parse_param(&many).unwrap_err().contains("entries"));
    }

    #[test]
    fn apply_trims_objects_and_every_list_element() {
        let value = json!({
            "product": {"name": "n", "price": {"units": "1", "nanos": 0}, "sku": "s"},
            "reviews": {"reviews": [{"rating": 5, "text": "t"}, {"rating": 3}]},
            "other": 1
        });
        let mask = Mask::from_paths([
            "product.name",
            "product.price.units",
            "reviews.reviews.rating",
        ])
        .unwrap();
        assert_eq!(
            mask.apply(value),
            json!({
                "product": {"name": "n", "price": {"units": "1"}},
                "reviews": {"reviews": [{"rating": 5}, {"rating": 3}]}
            })
        );
    }

    /// Members keep the answer's order (a message's field order), whatever the mask's
    /// order, through the short mask's scan and the long mask's index alike.
    #[test]
    fn apply_keeps_the_answers_order() {
        let value = json!({"units": "1", "nanos": 5, "currency": "EUR", "z": 0});
        let text = |mask: &Mask| serde_json::to_string(&mask.apply(value.clone())).unwrap();
        let short = Mask::from_paths(["z", "nanos", "units"]).unwrap();
        assert_eq!(text(&short), r#"{"units":"1","nanos":5,"z":0}"#);
        let mut long: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        long.extend(["z", "nanos", "units"].map(String::from));
        let long = Mask::from_paths(long.iter().map(String::as_str)).unwrap();
        assert_eq!(text(&long), r#"{"units":"1","nanos":5,"z":0}"#);
    }

    #[test]
    fn validation_uses_the_shape() {
        let shape = Shape::Object(vec![
            ("a".into(), Shape::Any),
            ("n".into(), Shape::Scalar),
            (
                "l".into(),
                Shape::List(Box::new(Shape::Object(vec![("x".into(), Shape::Scalar)]))),
            ),
        ]);
        assert!(
            Mask::parse_param("a(anything),n,l/x")
                .unwrap()
                .validate(&shape, false)
                .is_ok()
        );
        assert!(
            Mask::parse_param("nope")
                .unwrap()
                .validate(&shape, false)
                .is_err()
        );
        assert!(
            Mask::parse_param("n/x")
                .unwrap()
                .validate(&shape, false)
                .is_err()
        );
        assert!(
            Mask::parse_param("l/y")
                .unwrap()
                .validate(&shape, false)
                .is_err()
        );
    }
}
