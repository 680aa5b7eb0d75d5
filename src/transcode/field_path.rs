//! Dotted field paths (`book.author.name`) resolved against descriptors, and setting a
//! field from its text form (path variables and query parameters are text).

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use std::fmt;

/// The most fields a path may go through. Query keys are client data: on a type that nests
/// itself (`message Node { Node c = 1; }`) each step is one more level of recursion when
/// the message is encoded, dropped or rendered, so an unbounded `c.c.c…` key overflowed the
/// stack. prost refuses to decode more than 100 levels; this stays well below that.
pub const MAX_FIELD_PATH_DEPTH: usize = 32;

/// A resolved path of fields from a message type down to one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    pub fields: Vec<FieldDescriptor>,
}

impl FieldPath {
    /// Resolves `a.b.c` (proto or JSON names at each step). Every step but the last must
    /// be a singular message field.
    pub fn resolve(desc: &MessageDescriptor, path: &str) -> Result<Self, String> {
        let mut fields = Vec::new();
        let mut current = desc.clone();
        // Counted before splitting, so a hostile key costs no allocation per step.
        if path.bytes().filter(|b| *b == b'.').count() >= MAX_FIELD_PATH_DEPTH {
            return Err(format!(
                "field path is deeper than {MAX_FIELD_PATH_DEPTH} fields"
            ));
        }
        let parts: Vec<&str> = path.split('.').collect();
        for (i, name) in parts.iter().enumerate() {
            let field = current
                .get_field_by_name(name)
                .or_else(|| current.get_field_by_json_name(name))
                .ok_or_else(|| {
                    format!("message `{}` has no field `{name}`", current.full_name())
                })?;
            if i + 1 < parts.len() {
                match field.kind() {
                    Kind::Message(m) if !field.is_list() && !field.is_map() => current = m,
                    _ => {
                        return Err(format!(
                            "field `{}` of `{}` is not a singular message, so `{path}` cannot go through it",
                            field.name(),
                            current.full_name()
                        ));
                    }
                }
            }
            fields.push(field);
        }
        Ok(Self { fields })
    }

    pub fn last(&self) -> &FieldDescriptor {
        self.fields
            .last()
            .expect("a field path has at least one field")
    }

    /// Whether `other` is this path or lies under it.
    pub fn covers(&self, other: &FieldPath) -> bool {
        other.fields.len() >= self.fields.len()
            && other.fields[..self.fields.len()] == self.fields[..]
    }

    /// The message holding the last field, created on the way if absent.
    pub fn parent_mut<'m>(&self, message: &'m mut DynamicMessage) -> &'m mut DynamicMessage {
        let mut current = message;
        for field in &self.fields[..self.fields.len() - 1] {
            current = match current.get_field_mut(field) {
                Value::Message(m) => m,
                _ => unreachable!("FieldPath::resolve only goes through message fields"),
            };
        }
        current
    }

    /// Reads the value at this path, if every message on the way is set.
    pub fn get<'m>(&self, message: &'m DynamicMessage) -> Option<std::borrow::Cow<'m, Value>> {
        let mut current = message;
        for field in &self.fields[..self.fields.len() - 1] {
            if !current.has_field(field) {
                return None;
            }
            current = match current.get_field(field) {
                std::borrow::Cow::Borrowed(Value::Message(m)) => m,
                _ => return None,
            };
        }
        Some(current.get_field(self.last()))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(field.name())?;
        }
        Ok(())
    }
}

/// Sets the field at `path` from text; a repeated field gets the value appended.
pub fn set_field_from_str(
    message: &mut DynamicMessage,
    path: &FieldPath,
    text: &str,
) -> Result<(), String> {
    let field = path.last().clone();
    if field.is_map() {
        return Err(format!(
            "map field `{path}` cannot be set from a path or query parameter"
        ));
    }
    let value = value_from_str(&field.kind(), text).map_err(|e| format!("field `{path}`: {e}"))?;
    let parent = path.parent_mut(message);
    if field.is_list() {
        match parent.get_field_mut(&field) {
            Value::List(items) => items.push(value),
            _ => unreachable!("a repeated field holds a list"),
        }
    } else {
        parent.set_field(&field, value);
    }
    Ok(())
}

/// A scalar, enum or well-known-type value from its text form.
fn value_from_str(kind: &Kind, text: &str) -> Result<Value, String> {
    let bad = |what: &str| format!("`{text}` is not a valid {what}");
    Ok(match kind {
        Kind::String => Value::String(text.to_string()),
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return Err(bad("bool (true or false)")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| bad("int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| bad("int64"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| bad("uint32"))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| bad("uint64"))?),
        Kind::Double => Value::F64(parse_float(text).ok_or_else(|| bad("number"))?),
        Kind::Float => Value::F32(parse_float(text).ok_or_else(|| bad("number"))? as f32),
        Kind::Bytes => {
            let engines = [
                base64::engine::general_purpose::STANDARD,
                base64::engine::general_purpose::URL_SAFE,
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ];
            let bytes = engines
                .iter()
                .find_map(|e| e.decode(text).ok())
                .ok_or_else(|| bad("base64 string"))?;
            Value::Bytes(bytes.into())
        }
        Kind::Enum(desc) => {
            if let Some(v) = desc.get_value_by_name(text) {
                Value::EnumNumber(v.number())
            } else if let Ok(n) = text.parse::<i32>() {
                Value::EnumNumber(n)
            } else {
                return Err(format!(
                    "`{text}` is not a value of enum `{}`",
                    desc.full_name()
                ));
            }
        }
        Kind::Message(desc) => Value::Message(well_known_from_str(desc, text)?),
    })
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok().filter(|f: &f64| f.is_finite()),
    }
}

/// Well-known types that have a text form: Timestamp, Duration, FieldMask, the wrappers.
fn well_known_from_str(desc: &MessageDescriptor, text: &str) -> Result<DynamicMessage, String> {
    match desc.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask" => {
            DynamicMessage::deserialize(desc.clone(), serde_json::Value::String(text.to_string()))
                .map_err(|e| format!("`{text}` is not a valid {}: {e}", desc.name()))
        }
        name if name.starts_with("google.protobuf.")
            && name.ends_with("Value")
            && desc.get_field_by_name("value").is_some() =>
        {
            let inner = desc.get_field_by_name("value").expect("checked above");
            let mut message = DynamicMessage::new(desc.clone());
            message.set_field(&inner, value_from_str(&inner.kind(), text)?);
            Ok(message)
        }
        other => Err(format!("message type `{other}` cannot be set from text")),
    }
}

/// Whether a field can be bound from text at all (for load-time checks).
pub fn settable_from_text(field: &FieldDescriptor) -> bool {
    if field.is_map() {
        return false;
    }
    match field.kind() {
        Kind::Message(desc) => {
            let name = desc.full_name();
            matches!(
                name,
                "google.protobuf.Timestamp"
                    | "google.protobuf.Duration"
                    | "google.protobuf.FieldMask"
            ) || (name.starts_with("google.protobuf.")
                && name.ends_with("Value")
                && desc.get_field_by_name("value").is_some())
        }
        _ => true,
    }
}
