//! Transcoding plans: a message type resolved once, at load time, into what the byte-level
//! transcoders (`to_proto`, `to_json`) need: fields sorted by number, their wire form,
//! their JSON keys already escaped, enum names by number and by name.
//!
//! Only plain proto3 messages get a plan: scalars, enums, nested messages (recursion
//! included), repeated fields, oneofs, `optional`, and `google.protobuf.Timestamp` (as
//! common in responses as it is simple). A message that holds, anywhere below it, a map,
//! a group, another well-known type (`google.protobuf.*`, each with its own JSON form),
//! `NullValue`, an enum with aliases, or comes from a proto2 file, has none, and goes
//! through prost-reflect's `DynamicMessage` instead.

use prost_reflect::{EnumDescriptor, Kind, MessageDescriptor, Syntax};
use std::collections::HashMap;

/// The plan of one message type and of every message type below it. `messages[0]` is
/// the root; `Scalar::Message` refers to others by index (so recursion is a cycle of
/// indexes, not of pointers).
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) messages: Vec<MessagePlan>,
    pub(super) enums: Vec<EnumPlan>,
}

#[derive(Debug)]
pub(super) struct MessagePlan {
    /// Sorted by field number: the order of prost-reflect's JSON output.
    pub fields: Vec<FieldPlan>,
    /// JSON names, then proto names → index in `fields` (prost-reflect looks a key up
    /// by JSON name first). Only for messages with many fields; a scan is faster below.
    by_key: Option<HashMap<Box<str>, usize>>,
    /// How many oneofs (synthetic ones of `optional` fields included).
    pub oneofs: usize,
}

#[derive(Debug)]
pub(super) struct FieldPlan {
    pub number: u32,
    pub json_name: Box<str>,
    pub proto_name: Box<str>,
    /// `"jsonName":` and `"proto_name":`, escaped, ready to write.
    pub json_key: Box<[u8]>,
    pub proto_key: Box<[u8]>,
    pub scalar: Scalar,
    pub repeated: bool,
    /// Repeated and packed on the wire (proto3's default for numeric kinds).
    pub packed: bool,
    /// Explicit presence (`optional`, oneof members, messages): written even when it
    /// holds the default value, and never invented when absent.
    pub presence: bool,
    pub oneof: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
    /// Index in `Plan::enums`.
    Enum(usize),
    /// Index in `Plan::messages`.
    Message(usize),
    /// `google.protobuf.Timestamp`: an RFC 3339 string in JSON.
    Timestamp,
}

#[derive(Debug)]
pub(super) struct EnumPlan {
    /// Sorted by number; numbers are unique (enums with aliases get no plan).
    pub by_number: Vec<(i32, Box<str>)>,
    pub by_name: HashMap<Box<str>, i32>,
}

impl EnumPlan {
    pub(super) fn name(&self, number: i32) -> Option<&str> {
        self.by_number
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|i| &*self.by_number[i].1)
    }
}

/// Above this many fields a message looks keys up in a hash map rather than by scanning.
const SCAN_LIMIT: usize = 12;

impl MessagePlan {
    /// The field a JSON object key names: by JSON name first, then by proto name.
    pub(super) fn field(&self, key: &str) -> Option<usize> {
        match &self.by_key {
            Some(map) => map.get(key).copied(),
            None => self
                .fields
                .iter()
                .position(|f| &*f.json_name == key)
                .or_else(|| self.fields.iter().position(|f| &*f.proto_name == key)),
        }
    }
}

impl Scalar {
    /// The wire type of one value.
    pub(super) fn wire_type(self) -> u8 {
        match self {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => 1,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => 5,
            Scalar::String | Scalar::Bytes | Scalar::Message(_) | Scalar::Timestamp => 2,
            _ => 0,
        }
    }
}

/// The plan of `desc`, or `None` when it (or a type below it) needs prost-reflect.
pub(super) fn compile(desc: &MessageDescriptor) -> Option<Plan> {
    let mut builder = Builder::default();
    builder.message(desc)?;
    Some(Plan {
        messages: builder.messages.into_iter().collect::<Option<_>>()?,
        enums: builder.enums,
    })
}

#[derive(Default)]
struct Builder {
    /// `None` while a message is being built (so a recursive reference finds its index).
    messages: Vec<Option<MessagePlan>>,
    message_index: HashMap<String, usize>,
    enums: Vec<EnumPlan>,
    enum_index: HashMap<String, usize>,
}

impl Builder {
    fn message(&mut self, desc: &MessageDescriptor) -> Option<usize> {
        if let Some(&index) = self.message_index.get(desc.full_name()) {
            return Some(index);
        }
        if desc.full_name().starts_with("google.protobuf.")
            || desc.is_map_entry()
            || desc.parent_file().syntax() != Syntax::Proto3
            || desc.extension_ranges().len() > 0
        {
            return None;
        }
        let index = self.messages.len();
        self.messages.push(None);
        self.message_index
            .insert(desc.full_name().to_owned(), index);

        let oneofs: Vec<String> = desc.oneofs().map(|o| o.full_name().to_owned()).collect();
        let mut fields = Vec::with_capacity(desc.fields().len());
        for field in desc.fields() {
            if field.is_map() || field.is_group() {
                return None;
            }
            let scalar = match field.kind() {
                Kind::Double => Scalar::Double,
                Kind::Float => Scalar::Float,
                Kind::Int32 => Scalar::Int32,
                Kind::Int64 => Scalar::Int64,
                Kind::Uint32 => Scalar::Uint32,
                Kind::Uint64 => Scalar::Uint64,
                Kind::Sint32 => Scalar::Sint32,
                Kind::Sint64 => Scalar::Sint64,
                Kind::Fixed32 => Scalar::Fixed32,
                Kind::Fixed64 => Scalar::Fixed64,
                Kind::Sfixed32 => Scalar::Sfixed32,
                Kind::Sfixed64 => Scalar::Sfixed64,
                Kind::Bool => Scalar::Bool,
                Kind::String => Scalar::String,
                Kind::Bytes => Scalar::Bytes,
                Kind::Enum(e) => Scalar::Enum(self.enumeration(&e)?),
                Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
                    Scalar::Timestamp
                }
                Kind::Message(m) => Scalar::Message(self.message(&m)?),
            };
            let oneof = field
                .containing_oneof()
                .and_then(|o| oneofs.iter().position(|name| name == o.full_name()));
            fields.push(FieldPlan {
                number: field.number(),
                json_key: key(field.json_name()),
                proto_key: key(field.name()),
                json_name: field.json_name().into(),
                proto_name: field.name().into(),
                scalar,
                repeated: field.is_list(),
                packed: field.is_list() && field.is_packed(),
                presence: field.supports_presence(),
                oneof,
            });
        }
        fields.sort_by_key(|f| f.number);
        let by_key = (fields.len() > SCAN_LIMIT).then(|| {
            let mut map = HashMap::new();
            for (i, f) in fields.iter().enumerate() {
                map.insert(f.proto_name.clone(), i);
            }
            for (i, f) in fields.iter().enumerate() {
                map.insert(f.json_name.clone(), i);
            }
            map
        });
        self.messages[index] = Some(MessagePlan {
            fields,
            by_key,
            oneofs: oneofs.len(),
        });
        Some(index)
    }

    fn enumeration(&mut self, desc: &EnumDescriptor) -> Option<usize> {
        if let Some(&index) = self.enum_index.get(desc.full_name()) {
            return Some(index);
        }
        if desc.full_name().starts_with("google.protobuf.") {
            return None;
        }
        let mut by_number: Vec<(i32, Box<str>)> = desc
            .values()
            .map(|v| (v.number(), v.name().into()))
            .collect();
        by_number.sort_by_key(|(n, _)| *n);
        if by_number.windows(2).any(|w| w[0].0 == w[1].0) {
            return None; // aliases: which name prost-reflect prints is its business
        }
        let by_name = by_number
            .iter()
            .map(|(n, name)| (name.clone(), *n))
            .collect();
        let index = self.enums.len();
        self.enums.push(EnumPlan { by_number, by_name });
        self.enum_index.insert(desc.full_name().to_owned(), index);
        Some(index)
    }
}

/// `"name":`, JSON-escaped.
fn key(name: &str) -> Box<[u8]> {
    let mut out = serde_json::to_vec(name).unwrap_or_default();
    out.push(b':');
    out.into_boxed_slice()
}
