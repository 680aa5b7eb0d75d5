//! Protobuf wire bytes → JSON, following a [`Plan`], byte for byte what prost-reflect
//! writes (fields in number order, 64-bit integers as strings, enums by name, bytes as
//! padded standard base64, floats as serde_json prints them) without building a
//! `DynamicMessage`.
//!
//! Each message is read once into a short list of (field, value range) entries, then
//! written in field order. What it does not handle the way prost-reflect's decoder would
//! — a singular message field split over several records (a merge), two members of one
//! oneof, a wire type that does not fit the field, groups, bad UTF-8, a truncated
//! record — makes it give up (`Unsupported`), and the caller runs prost-reflect.

use super::json_text;
use super::plan::{FieldPlan, MessagePlan, Plan, Scalar};
use crate::rfc3339;
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use prost::encoding::decode_varint;
use smallvec::SmallVec;

/// The JSON options of `JsonCodec` that shape the output.
#[derive(Clone, Copy, Debug)]
pub(super) struct Options {
    pub proto_names: bool,
    pub emit_defaults: bool,
    pub enum_numbers: bool,
}

/// Nesting deeper than this is left to prost-reflect, whose decoder refuses it (prost's
/// recursion limit): a backend must not be able to exhaust the gateway's stack.
const MAX_DEPTH: u32 = 100;

/// This input is for prost-reflect to handle.
#[derive(Debug)]
pub(super) struct Unsupported;

/// Appends the JSON form of `bytes` (a message of the plan's root type) to `out`. On error
/// `out` holds garbage past its original length.
pub(super) fn write(
    plan: &Plan,
    bytes: &[u8],
    options: &Options,
    out: &mut Vec<u8>,
) -> Result<(), Unsupported> {
    message(plan, 0, bytes, options, out, 0)
}

/// One record of a known field: its field index and where its value lies in the input.
#[derive(Clone, Copy)]
struct Entry {
    field: usize,
    /// Length-delimited (for a numeric field: packed).
    delimited: bool,
    start: usize,
    end: usize,
}

fn message(
    plan: &Plan,
    index: usize,
    bytes: &[u8],
    options: &Options,
    out: &mut Vec<u8>,
    depth: u32,
) -> Result<(), Unsupported> {
    if depth >= MAX_DEPTH {
        return Err(Unsupported);
    }
    let message = &plan.messages[index];
    if !message.has_lists {
        let mark = out.len();
        if in_order(plan, message, bytes, options, out, depth)? {
            return Ok(());
        }
        out.truncate(mark);
    }
    // Filled in place: returned by value, the inline array would be copied out.
    let mut entries = SmallVec::new();
    read_entries(message, bytes, &mut entries)?;

    out.push(b'{');
    let mut first = true;
    let mut oneofs_set = 0u128;
    let mut cursor = 0;
    for (index, field) in message.fields.iter().enumerate() {
        let begin = cursor;
        while cursor < entries.len() && entries[cursor].field == index {
            cursor += 1;
        }
        let records = &entries[begin..cursor];
        if let (Some(oneof), false) = (field.oneof, records.is_empty()) {
            let bit = 1u128.checked_shl(oneof as u32).ok_or(Unsupported)?;
            if oneofs_set & bit != 0 {
                return Err(Unsupported); // the decoder would keep only the last member
            }
            oneofs_set |= bit;
        }

        if field.repeated {
            if records.is_empty() && !options.emit_defaults {
                continue;
            }
            write_key(out, field, options, &mut first);
            out.push(b'[');
            let mut first_element = true;
            for record in records {
                let mut data = &bytes[record.start..record.end];
                let packed = record.delimited && field.scalar.wire_type() != 2;
                loop {
                    let value = if packed {
                        if data.is_empty() {
                            break;
                        }
                        read_value(field.scalar, &mut data)?
                    } else {
                        read_whole(field.scalar, data)?
                    };
                    if !first_element {
                        out.push(b',');
                    }
                    first_element = false;
                    write_value(plan, value, options, out, depth)?;
                    if !packed {
                        break;
                    }
                }
            }
            out.push(b']');
            continue;
        }

        let Some(last) = records.last() else {
            defaults(
                plan,
                std::slice::from_ref(field),
                options,
                out,
                &mut first,
                depth,
            )?;
            continue;
        };
        if let Scalar::Message(_) | Scalar::Timestamp = field.scalar
            && records.len() > 1
        {
            return Err(Unsupported); // several records of one message merge
        }
        // Singular scalars: the last record wins, as in the decoder.
        let value = read_whole(field.scalar, &bytes[last.start..last.end])?;
        if !field.presence && !options.emit_defaults && value.is_default() {
            continue;
        }
        write_key(out, field, options, &mut first);
        write_value(plan, value, options, out, depth)?;
    }
    out.push(b'}');
    Ok(())
}

/// `message` for a message without repeated fields, in one pass: as protobuf encoders
/// write them, each field comes once and in the order of field numbers, which is the
/// order of the JSON keys, so each record is written as it is read (and the defaults of
/// the fields between, when they are emitted). `Ok(false)` when a record comes out of
/// that order: the caller starts over, sorting the records first.
fn in_order(
    plan: &Plan,
    message: &MessagePlan,
    bytes: &[u8],
    options: &Options,
    out: &mut Vec<u8>,
    depth: u32,
) -> Result<bool, Unsupported> {
    out.push(b'{');
    let mut first = true;
    let mut oneofs_set = 0u128;
    // Fields below this one are done.
    let mut next_field = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(entry) = next_entry(message, bytes, &mut rest)? else {
            continue;
        };
        if entry.field < next_field {
            return Ok(false);
        }
        let skipped = &message.fields[next_field..entry.field];
        defaults(plan, skipped, options, out, &mut first, depth)?;
        next_field = entry.field + 1;
        let field = &message.fields[entry.field];
        if let Some(oneof) = field.oneof {
            let bit = 1u128.checked_shl(oneof as u32).ok_or(Unsupported)?;
            if oneofs_set & bit != 0 {
                return Err(Unsupported); // the decoder would keep only the last member
            }
            oneofs_set |= bit;
        }
        let value = read_whole(field.scalar, &bytes[entry.start..entry.end])?;
        if !field.presence && !options.emit_defaults && value.is_default() {
            continue;
        }
        write_key(out, field, options, &mut first);
        write_value(plan, value, options, out, depth)?;
    }
    let skipped = &message.fields[next_field..];
    defaults(plan, skipped, options, out, &mut first, depth)?;
    out.push(b'}');
    Ok(true)
}

/// The default values of `fields` (absent from the input and not lists), when they are
/// emitted: those of fields without presence. Inlined: most records follow the one
/// before, with nothing in between, and a call for an empty slice cost more than the rest.
#[inline(always)]
fn defaults(
    plan: &Plan,
    fields: &[FieldPlan],
    options: &Options,
    out: &mut Vec<u8>,
    first: &mut bool,
    depth: u32,
) -> Result<(), Unsupported> {
    if !options.emit_defaults {
        return Ok(());
    }
    for field in fields.iter().filter(|field| !field.presence) {
        write_key(out, field, options, first);
        write_value(plan, default_value(field.scalar), options, out, depth)?;
    }
    Ok(())
}

/// The records of known fields, sorted by field (stably: the wire order stays within a
/// field). Unknown fields are skipped, as prost-reflect's JSON leaves them out.
fn read_entries(
    message: &MessagePlan,
    bytes: &[u8],
    entries: &mut SmallVec<[Entry; 16]>,
) -> Result<(), Unsupported> {
    let mut sorted = true;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Some(entry) = next_entry(message, bytes, &mut rest)? else {
            continue;
        };
        if entries.last().is_some_and(|e| e.field > entry.field) {
            sorted = false;
        }
        entries.push(entry);
    }
    if !sorted {
        entries.sort_by_key(|e| e.field);
    }
    Ok(())
}

/// The record at the front of `rest` (a tail of `bytes`), moved past; `None` for a
/// field the message does not know.
#[inline(always)]
fn next_entry(
    message: &MessagePlan,
    bytes: &[u8],
    rest: &mut &[u8],
) -> Result<Option<Entry>, Unsupported> {
    let key = decode_varint(rest).map_err(|_| Unsupported)?;
    let number = u32::try_from(key >> 3).map_err(|_| Unsupported)?;
    let wire_type = (key & 7) as u8;
    let mut start = bytes.len() - rest.len();
    let len = match wire_type {
        0 => {
            decode_varint(rest).map_err(|_| Unsupported)?;
            0
        }
        1 => 8,
        5 => 4,
        2 => {
            let len = decode_varint(rest).map_err(|_| Unsupported)?;
            start = bytes.len() - rest.len();
            usize::try_from(len).map_err(|_| Unsupported)?
        }
        _ => return Err(Unsupported), // groups
    };
    *rest = rest.get(len..).ok_or(Unsupported)?;
    let end = bytes.len() - rest.len();
    let Some(field) = message.field_by_number(number) else {
        return Ok(None);
    };
    let plan = &message.fields[field];
    let delimited = wire_type == 2;
    if wire_type != plan.scalar.wire_type() && !(delimited && plan.repeated) {
        return Err(Unsupported);
    }
    Ok(Some(Entry {
        field,
        delimited,
        start,
        end,
    }))
}

/// A decoded value, before it is written.
#[derive(Clone, Copy)]
enum Value<'a> {
    I32(i32),
    I64(i64),
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(&'a str),
    /// A string of ASCII that needs no escapes (checked once, for UTF-8 and JSON alike).
    Ascii(&'a [u8]),
    Bytes(&'a [u8]),
    Enum(usize, i32),
    Message(usize, &'a [u8]),
    Timestamp(&'a [u8]),
}

impl Value<'_> {
    fn is_default(&self) -> bool {
        match *self {
            Value::I32(v) => v == 0,
            Value::I64(v) => v == 0,
            Value::U32(v) => v == 0,
            Value::U64(v) => v == 0,
            Value::F32(v) => v == 0.0,
            Value::F64(v) => v == 0.0,
            Value::Bool(v) => !v,
            Value::Str(v) => v.is_empty(),
            Value::Ascii(v) => v.is_empty(),
            Value::Bytes(v) => v.is_empty(),
            Value::Enum(_, v) => v == 0,
            Value::Message(..) | Value::Timestamp(_) => false,
        }
    }
}

fn default_value(scalar: Scalar) -> Value<'static> {
    match scalar {
        Scalar::Double => Value::F64(0.0),
        Scalar::Float => Value::F32(0.0),
        Scalar::Int32 | Scalar::Sint32 | Scalar::Sfixed32 => Value::I32(0),
        Scalar::Int64 | Scalar::Sint64 | Scalar::Sfixed64 => Value::I64(0),
        Scalar::Uint32 | Scalar::Fixed32 => Value::U32(0),
        Scalar::Uint64 | Scalar::Fixed64 => Value::U64(0),
        Scalar::Bool => Value::Bool(false),
        Scalar::String => Value::Str(""),
        Scalar::Bytes => Value::Bytes(&[]),
        Scalar::Enum(index) => Value::Enum(index, 0),
        // Message fields have presence: never written when absent.
        Scalar::Message(index) => Value::Message(index, &[]),
        Scalar::Timestamp => Value::Timestamp(&[]),
    }
}

/// A value that must use all of `data` (the range of one record).
// Inlined, as `read_value` and `write_value`: a `Value` returned through memory is read
// back in pieces other than those it was written in, and the CPU stalls on each.
#[inline(always)]
fn read_whole(scalar: Scalar, data: &[u8]) -> Result<Value<'_>, Unsupported> {
    match scalar {
        Scalar::String if json_text::is_ascii_unescaped(data) => Ok(Value::Ascii(data)),
        Scalar::String => std::str::from_utf8(data)
            .map(Value::Str)
            .map_err(|_| Unsupported),
        Scalar::Bytes => Ok(Value::Bytes(data)),
        Scalar::Message(index) => Ok(Value::Message(index, data)),
        Scalar::Timestamp => Ok(Value::Timestamp(data)),
        _ => {
            let mut rest = data;
            let value = read_value(scalar, &mut rest)?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(Unsupported)
            }
        }
    }
}

/// One numeric value from the front of `data` (its natural encoding).
#[inline(always)]
fn read_value<'a>(scalar: Scalar, data: &mut &'a [u8]) -> Result<Value<'a>, Unsupported> {
    let varint = |data: &mut &[u8]| decode_varint(data).map_err(|_| Unsupported);
    let fixed32 = |data: &mut &[u8]| -> Result<u32, Unsupported> {
        let (head, tail) = data.split_first_chunk::<4>().ok_or(Unsupported)?;
        *data = tail;
        Ok(u32::from_le_bytes(*head))
    };
    let fixed64 = |data: &mut &[u8]| -> Result<u64, Unsupported> {
        let (head, tail) = data.split_first_chunk::<8>().ok_or(Unsupported)?;
        *data = tail;
        Ok(u64::from_le_bytes(*head))
    };
    Ok(match scalar {
        Scalar::Int32 => Value::I32(varint(data)? as i32),
        Scalar::Int64 => Value::I64(varint(data)? as i64),
        Scalar::Uint32 => Value::U32(varint(data)? as u32),
        Scalar::Uint64 => Value::U64(varint(data)?),
        Scalar::Sint32 => {
            let v = varint(data)? as u32;
            Value::I32(((v >> 1) as i32) ^ -((v & 1) as i32))
        }
        Scalar::Sint64 => {
            let v = varint(data)?;
            Value::I64(((v >> 1) as i64) ^ -((v & 1) as i64))
        }
        Scalar::Bool => Value::Bool(varint(data)? != 0),
        Scalar::Enum(index) => Value::Enum(index, varint(data)? as i32),
        Scalar::Fixed32 => Value::U32(fixed32(data)?),
        Scalar::Sfixed32 => Value::I32(fixed32(data)? as i32),
        Scalar::Float => Value::F32(f32::from_bits(fixed32(data)?)),
        Scalar::Fixed64 => Value::U64(fixed64(data)?),
        Scalar::Sfixed64 => Value::I64(fixed64(data)? as i64),
        Scalar::Double => Value::F64(f64::from_bits(fixed64(data)?)),
        Scalar::String | Scalar::Bytes | Scalar::Message(_) | Scalar::Timestamp => {
            return Err(Unsupported);
        }
    })
}

fn write_key(out: &mut Vec<u8>, field: &FieldPlan, options: &Options, first: &mut bool) {
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.extend_from_slice(if options.proto_names {
        &field.proto_key
    } else {
        &field.json_key
    });
}

/// Writes one value; `depth` is that of the message holding it.
#[inline(always)]
fn write_value(
    plan: &Plan,
    value: Value<'_>,
    options: &Options,
    out: &mut Vec<u8>,
    depth: u32,
) -> Result<(), Unsupported> {
    let mut digits = itoa::Buffer::new();
    match value {
        Value::I32(v) => out.extend_from_slice(digits.format(v).as_bytes()),
        Value::U32(v) => out.extend_from_slice(digits.format(v).as_bytes()),
        Value::I64(v) => quoted(out, digits.format(v).as_bytes()),
        Value::U64(v) => quoted(out, digits.format(v).as_bytes()),
        Value::F32(v) if v.is_finite() => {
            serde_json::to_writer(&mut *out, &v).map_err(|_| Unsupported)?;
        }
        Value::F64(v) if v.is_finite() => {
            serde_json::to_writer(&mut *out, &v).map_err(|_| Unsupported)?;
        }
        Value::F32(v) => non_finite(out, f64::from(v)),
        Value::F64(v) => non_finite(out, v),
        Value::Bool(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
        Value::Str(v) => json_text::write_string(out, v),
        Value::Ascii(v) => {
            out.reserve(v.len() + 2);
            out.push(b'"');
            out.extend_from_slice(v);
            out.push(b'"');
        }
        Value::Bytes(v) => {
            out.push(b'"');
            let start = out.len();
            out.resize(
                start + base64::encoded_len(v.len(), true).ok_or(Unsupported)?,
                0,
            );
            BASE64_STANDARD
                .encode_slice(v, &mut out[start..])
                .map_err(|_| Unsupported)?;
            out.push(b'"');
        }
        Value::Enum(index, number) => match plan.enums[index].name(number) {
            Some(name) if !options.enum_numbers => quoted(out, name.as_bytes()),
            _ => out.extend_from_slice(digits.format(number).as_bytes()),
        },
        Value::Message(index, data) => message(plan, index, data, options, out, depth + 1)?,
        Value::Timestamp(data) => timestamp(data, out)?,
    }
    Ok(())
}

/// RFC 3339 as prost-reflect writes it (`prost_types::Timestamp`'s `Display`), within
/// the range it accepts (years 1 to 9999; beyond, it fails, and so does the fallback):
/// no fraction, or 3, 6 or 9 digits of it.
fn timestamp(data: &[u8], out: &mut Vec<u8>) -> Result<(), Unsupported> {
    use prost::Message as _;
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    let mut timestamp = prost_types::Timestamp::decode(data).map_err(|_| Unsupported)?;
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&timestamp.seconds) {
        return Err(Unsupported);
    }
    timestamp.normalize(); // nanos within 0..1e9, as `Display` does first
    let nanos = u64::try_from(timestamp.nanos).map_err(|_| Unsupported)?;
    out.push(b'"');
    rfc3339::date_time(out, timestamp.seconds);
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if digits > 0 {
        out.push(b'.');
        rfc3339::padded(out, fraction, digits);
    }
    out.extend_from_slice(b"Z\"");
    Ok(())
}

fn quoted(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

fn non_finite(out: &mut Vec<u8>, v: f64) {
    out.extend_from_slice(if v.is_nan() {
        b"\"NaN\""
    } else if v > 0.0 {
        b"\"Infinity\""
    } else {
        b"\"-Infinity\""
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn timestamps_as_prost_writes_them() {
        let nanos = [
            0,
            1,
            999_999_999,
            5_000_000,
            120_000,
            -1,
            -1_500_000_000,
            2_000_000_007,
        ];
        let mut cases: Vec<(i64, i32)> = nanos.iter().map(|n| (0, *n)).collect();
        cases.extend([
            (-62_135_596_800, 0),
            (253_402_300_799, 999_999_999),
            (-1, 0),
        ]);
        for _ in 0..5_000 {
            let n = nanos[fastrand::usize(..nanos.len())];
            let n = if fastrand::bool() {
                n
            } else {
                fastrand::i32(..)
            };
            cases.push((fastrand::i64(-62_135_596_800..=253_402_300_799), n));
        }
        for (seconds, nanos) in cases {
            let value = prost_types::Timestamp { seconds, nanos };
            let mut out = Vec::new();
            assert!(
                timestamp(&value.encode_to_vec(), &mut out).is_ok(),
                "{value:?}"
            );
            assert_eq!(String::from_utf8(out).unwrap(), format!("\"{value}\""));
        }
        let out_of_range = prost_types::Timestamp {
            seconds: 253_402_300_800,
            nanos: 0,
        };
        assert!(timestamp(&out_of_range.encode_to_vec(), &mut Vec::new()).is_err());
    }
}
