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
    /// JSON names and proto names → index in `fields` (prost-reflect looks a key up by
    /// JSON name first).
    json_names: NameIndex,
    proto_names: NameIndex,
    /// Field number → index in `fields` + 1 (0: unknown), for numbers below
    /// `DENSE_NUMBERS`: a wire record finds its field in one load, where a binary search
    /// costs a mispredicted branch per step.
    by_number: Box<[u16]>,
    /// How many oneofs (synthetic ones of `optional` fields included).
    pub oneofs: usize,
    /// Whether a field is repeated.
    pub has_lists: bool,
}

/// Field numbers below this are looked up in `MessagePlan::by_number` (most messages
/// number their fields from 1 up); higher ones by binary search.
const DENSE_NUMBERS: u32 = 128;

#[derive(Debug)]
pub(super) struct FieldPlan {
    pub number: u32,
    pub json_name: Box<str>,
    pub proto_name: Box<str>,
    /// `"jsonName":` and `"proto_name":`, escaped, ready to write.
    pub json_key: Box<[u8]>,
    pub proto_key: Box<[u8]>,
    /// A JSON key written exactly as `json_key` names this field: no earlier field has
    /// the same JSON name (the JSON reader may then match the key's bytes at once).
    pub json_key_is_own: bool,
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
    /// Name → index in `by_number`.
    by_name: NameIndex,
}

impl EnumPlan {
    pub(super) fn name(&self, number: i32) -> Option<&str> {
        self.by_number
            .binary_search_by_key(&number, |(n, _)| *n)
            .ok()
            .map(|i| &*self.by_number[i].1)
    }

    /// The number of the value named `name`.
    pub(super) fn number(&self, name: &[u8]) -> Option<i32> {
        let index = self.by_name.get(name)?;
        Some(self.by_number[index].0)
    }
}

impl MessagePlan {
    /// The field a JSON object key names: by JSON name first, then by proto name.
    pub(super) fn field(&self, key: &[u8]) -> Option<usize> {
        self.json_names
            .get(key)
            .or_else(|| self.proto_names.get(key))
    }

    /// The field numbered `number`, if the message has one.
    pub(super) fn field_by_number(&self, number: u32) -> Option<usize> {
        match self.by_number.get(number as usize) {
            Some(&slot) => (slot as usize).checked_sub(1),
            None if number < DENSE_NUMBERS => None,
            None => self.fields.binary_search_by_key(&number, |f| f.number).ok(),
        }
    }
}

/// `MessagePlan::by_number` for fields sorted by number.
fn numbers_below_dense(fields: &[FieldPlan]) -> Box<[u16]> {
    let dense = fields.iter().take_while(|f| f.number < DENSE_NUMBERS);
    let len = dense.clone().last().map_or(0, |f| f.number as usize + 1);
    let mut table = vec![0u16; len];
    for (index, field) in dense.enumerate() {
        // At most DENSE_NUMBERS fields are below it: the index fits.
        table[field.number as usize] = index as u16 + 1;
    }
    table.into_boxed_slice()
}

/// Names looked up by the JSON reader: a small open-addressing table over a cheap hash
/// of a name's length and first and last eight bytes, compared in the same integers
/// (names of up to 16 bytes never need their bytes compared).
#[derive(Debug)]
struct NameIndex {
    names: Vec<IndexedName>,
    /// Positions in `names` plus one (0: empty); a power of two long, at most half full.
    slots: Box<[u32]>,
    shift: u32,
}

#[derive(Debug)]
struct IndexedName {
    len: usize,
    ends: (u64, u64),
    name: Box<[u8]>,
}

/// The first and the last eight bytes of `name` (overlapping when shorter than 16),
/// zero-padded below eight, as integers.
fn ends(name: &[u8]) -> (u64, u64) {
    match (name.first_chunk::<8>(), name.last_chunk::<8>()) {
        (Some(first), Some(last)) => (u64::from_le_bytes(*first), u64::from_le_bytes(*last)),
        _ => {
            let short = name
                .iter()
                .rev()
                .fold(0, |value, &byte| value << 8 | u64::from(byte));
            (short, short)
        }
    }
}

impl NameIndex {
    fn new<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        let names: Vec<IndexedName> = names
            .map(|name| IndexedName {
                len: name.len(),
                ends: ends(name.as_bytes()),
                name: name.as_bytes().into(),
            })
            .collect();
        let size = (2 * names.len()).next_power_of_two().max(2);
        let mut index = NameIndex {
            slots: vec![0; size].into_boxed_slice(),
            shift: 64 - size.trailing_zeros(),
            names: Vec::new(),
        };
        for name in names {
            // A repeated name keeps its first position (it still takes its own).
            let fresh = index.get(&name.name).is_none();
            let mut slot = index.slot(name.len, name.ends);
            index.names.push(name);
            if fresh {
                while index.slots[slot] != 0 {
                    slot = (slot + 1) & (size - 1);
                }
                index.slots[slot] = index.names.len() as u32;
            }
        }
        index
    }

    fn slot(&self, len: usize, (first, last): (u64, u64)) -> usize {
        const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
        let mixed = first ^ last.rotate_left(29) ^ len as u64;
        (mixed.wrapping_mul(GOLDEN) >> self.shift) as usize
    }

    /// The position of `name` among the names given to `new`.
    fn get(&self, name: &[u8]) -> Option<usize> {
        let (len, ends) = (name.len(), ends(name));
        let mask = self.slots.len() - 1;
        let mut slot = self.slot(len, ends);
        loop {
            let position = (self.slots[slot] as usize).checked_sub(1)?;
            let candidate = &self.names[position];
            if candidate.len == len
                && candidate.ends == ends
                && (len <= 16 || *candidate.name == *name)
            {
                return Some(position);
            }
            slot = (slot + 1) & mask;
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
                json_key_is_own: false, // known once all are indexed, below
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
        let json_names = NameIndex::new(fields.iter().map(|f| &*f.json_name));
        for (position, field) in fields.iter_mut().enumerate() {
            field.json_key_is_own = json_names.get(field.json_name.as_bytes()) == Some(position);
        }
        self.messages[index] = Some(MessagePlan {
            json_names,
            proto_names: NameIndex::new(fields.iter().map(|f| &*f.proto_name)),
            by_number: numbers_below_dense(&fields),
            has_lists: fields.iter().any(|f| f.repeated),
            fields,
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
        let by_name = NameIndex::new(by_number.iter().map(|(_, name)| &**name));
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

#[cfg(test)]
mod tests {
    use super::NameIndex;

    #[test]
    fn name_index_finds_each_name_and_nothing_else() {
        let mut rng = fastrand::Rng::with_seed(3);
        for count in [0, 1, 2, 3, 7, 16, 17, 100, 600] {
            let mut names: Vec<String> = (0..count)
                .map(|_| {
                    let len = rng.usize(0..24);
                    (0..len).map(|_| rng.alphabetic()).collect()
                })
                .collect();
            // Names the integers alone do not tell apart: same length and ends.
            names.push("abcdefgh-1-ijklmnop".into());
            names.push("abcdefgh-2-ijklmnop".into());
            names.push("short".into());
            names.push("short".into()); // a repeat keeps the first position
            let index = NameIndex::new(names.iter().map(String::as_str));
            for name in &names {
                let first = names.iter().position(|n| n == name).unwrap();
                assert_eq!(index.get(name.as_bytes()), Some(first), "{name:?}");
            }
            for absent in ["abcdefgh-3-ijklmnop", "shorT", "shor", "short\0", "\u{e9}"] {
                if !names.iter().any(|n| n == absent) {
                    assert_eq!(index.get(absent.as_bytes()), None, "{absent:?}");
                }
            }
        }
    }
}
