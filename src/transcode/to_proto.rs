//! JSON → protobuf wire bytes in one pass over the JSON text, following a [`Plan`]: no
//! `DynamicMessage`, no per-field allocation (nested messages are written in place and
//! their length patched in afterwards).
//!
//! It accepts what prost-reflect accepts (the same number, string and base64 rules; the
//! visitors below mirror `prost_reflect::dynamic::serde::de::kind`), but gives up on
//! anything unusual — an unknown key, a repeated key, two members of one oneof, an unknown
//! enum name, a timestamp prost-reflect would refuse, any parse error — with an error the caller answers by running prost-reflect
//! on the same input. So the result and the error messages are always prost-reflect's;
//! this path only has to be right on the input it takes.

use super::plan::{FieldPlan, MessagePlan, Plan, Scalar};
use prost::encoding::encode_varint;
use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Appends the protobuf encoding of the JSON object `json` (a message of the plan's root
/// type) to `out`. On error `out` holds garbage past its original length.
pub(super) fn encode(plan: &Plan, json: &[u8], out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    Message {
        plan,
        index: 0,
        out,
    }
    .deserialize(&mut deserializer)?;
    deserializer.end()
}

/// The fields of one message, written to `out` as they come.
struct Message<'a> {
    plan: &'a Plan,
    index: usize,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Message<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Message<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let message = &self.plan.messages[self.index];
        // Fields, then oneofs, already given.
        let mut seen = Seen::new(message.fields.len() + message.oneofs);
        while let Some(key) = map.next_key_seed(Key(message))? {
            let Some(index) = key else {
                return Err(A::Error::custom("unknown field"));
            };
            if !seen.insert(index) {
                return Err(A::Error::custom("repeated field"));
            }
            let field = &message.fields[index];
            let set = map.next_value_seed(Field {
                plan: self.plan,
                field,
                out: &mut *self.out,
            })?;
            if set
                && let Some(oneof) = field.oneof
                && !seen.insert(message.fields.len() + oneof)
            {
                return Err(A::Error::custom("two members of one oneof"));
            }
        }
        Ok(())
    }
}

/// Which fields (and oneofs) an object has set so far.
enum Seen {
    Few(u128),
    Many(Vec<bool>),
}

impl Seen {
    fn new(len: usize) -> Self {
        if len <= 128 {
            Seen::Few(0)
        } else {
            Seen::Many(vec![false; len])
        }
    }

    /// `false` when `index` was already there.
    fn insert(&mut self, index: usize) -> bool {
        match self {
            Seen::Few(bits) => {
                let bit = 1u128 << index;
                let fresh = *bits & bit == 0;
                *bits |= bit;
                fresh
            }
            Seen::Many(flags) => !std::mem::replace(&mut flags[index], true),
        }
    }
}

/// An object key → the index of the field it names, without allocating.
struct Key<'a>(&'a MessagePlan);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.field(key))
    }
}

/// One field's value (`null` leaves the field unset). `true` when the field was set.
struct Field<'a> {
    plan: &'a Plan,
    field: &'a FieldPlan,
    out: &'a mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field value")
    }

    fn visit_none<E: Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        let Field { plan, field, out } = self;
        if field.repeated {
            deserializer.deserialize_seq(List { plan, field, out })?;
        } else {
            Value {
                plan,
                field,
                out,
                in_list: false,
            }
            .deserialize(deserializer)?;
        }
        Ok(true)
    }
}

/// The elements of a repeated field: packed (one length-delimited record) for numeric
/// kinds unless the field says otherwise, one record each for the rest.
struct List<'a> {
    plan: &'a Plan,
    field: &'a FieldPlan,
    out: &'a mut Vec<u8>,
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let List { plan, field, out } = self;
        if field.packed {
            let mark = out.len();
            key(out, field.number, 2);
            let start = begin_length(out);
            let mut count = 0;
            while let Some(number) = seq.next_element_seed(NumberSeed(field.scalar, plan))? {
                number.0.write(out);
                count += 1;
            }
            if count == 0 {
                out.truncate(mark); // an empty list is no record at all
            } else {
                end_length(out, start);
            }
        } else {
            while seq
                .next_element_seed(Value {
                    plan,
                    field,
                    out: &mut *out,
                    in_list: true,
                })?
                .is_some()
            {}
        }
        Ok(())
    }
}

/// One value of a field, with its key. Outside a list, a field without presence holding
/// its default value is not written (as prost-reflect's encoder does not).
struct Value<'a> {
    plan: &'a Plan,
    field: &'a FieldPlan,
    out: &'a mut Vec<u8>,
    in_list: bool,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let Value {
            plan,
            field,
            out,
            in_list,
        } = self;
        let keep_default = in_list || field.presence;
        match field.scalar {
            Scalar::Message(index) => {
                key(out, field.number, 2);
                let start = begin_length(out);
                Message {
                    plan,
                    index,
                    out: &mut *out,
                }
                .deserialize(deserializer)?;
                end_length(out, start);
            }
            Scalar::Timestamp => {
                let text = deserializer.deserialize_str(StrVisitor)?;
                let (seconds, nanos) = timestamp(&text)
                    .ok_or_else(|| D::Error::custom("a timestamp prost-reflect refuses"))?;
                key(out, field.number, 2);
                let start = begin_length(out);
                if seconds != 0 {
                    key(out, 1, 0);
                    encode_varint(seconds as u64, out);
                }
                if nanos != 0 {
                    key(out, 2, 0);
                    encode_varint(i64::from(nanos) as u64, out);
                }
                end_length(out, start);
            }
            Scalar::String => {
                let text = deserializer.deserialize_string(StrVisitor)?;
                if keep_default || !text.is_empty() {
                    key(out, field.number, 2);
                    encode_varint(text.len() as u64, out);
                    out.extend_from_slice(text.as_bytes());
                }
            }
            Scalar::Bytes => {
                let bytes = deserializer.deserialize_str(BytesVisitor)?;
                if keep_default || !bytes.is_empty() {
                    key(out, field.number, 2);
                    encode_varint(bytes.len() as u64, out);
                    out.extend_from_slice(&bytes);
                }
            }
            scalar => {
                let (number, is_default) = NumberSeed(scalar, plan).deserialize(deserializer)?;
                if keep_default || !is_default {
                    key(out, field.number, scalar.wire_type());
                    number.write(out);
                }
            }
        }
        Ok(())
    }
}

/// A numeric (or bool, or enum) value in its wire form.
#[derive(Clone, Copy)]
enum Number {
    Varint(u64),
    Bits32(u32),
    Bits64(u64),
}

impl Number {
    fn write(self, out: &mut Vec<u8>) {
        match self {
            Number::Varint(v) => encode_varint(v, out),
            Number::Bits32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Number::Bits64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// Reads one numeric value of `scalar`: its wire form, and whether it is the default.
struct NumberSeed<'a>(Scalar, &'a Plan);

impl<'de> DeserializeSeed<'de> for NumberSeed<'_> {
    type Value = (Number, bool);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Ok(match self.0 {
            Scalar::Double => {
                let v = d.deserialize_any(DoubleVisitor)?;
                (Number::Bits64(v.to_bits()), v == 0.0)
            }
            Scalar::Float => {
                let v = d.deserialize_any(FloatVisitor)?;
                (Number::Bits32(v.to_bits()), v == 0.0)
            }
            Scalar::Int32 => {
                let v = d.deserialize_any(IntVisitor::<i32>::new())?;
                (Number::Varint(i64::from(v) as u64), v == 0)
            }
            Scalar::Sint32 => {
                let v = d.deserialize_any(IntVisitor::<i32>::new())?;
                (
                    Number::Varint(u64::from(((v << 1) ^ (v >> 31)) as u32)),
                    v == 0,
                )
            }
            Scalar::Sfixed32 => {
                let v = d.deserialize_any(IntVisitor::<i32>::new())?;
                (Number::Bits32(v as u32), v == 0)
            }
            Scalar::Int64 => {
                let v = d.deserialize_any(IntVisitor::<i64>::new())?;
                (Number::Varint(v as u64), v == 0)
            }
            Scalar::Sint64 => {
                let v = d.deserialize_any(IntVisitor::<i64>::new())?;
                (Number::Varint(((v << 1) ^ (v >> 63)) as u64), v == 0)
            }
            Scalar::Sfixed64 => {
                let v = d.deserialize_any(IntVisitor::<i64>::new())?;
                (Number::Bits64(v as u64), v == 0)
            }
            Scalar::Uint32 => {
                let v = d.deserialize_any(IntVisitor::<u32>::new())?;
                (Number::Varint(u64::from(v)), v == 0)
            }
            Scalar::Fixed32 => {
                let v = d.deserialize_any(IntVisitor::<u32>::new())?;
                (Number::Bits32(v), v == 0)
            }
            Scalar::Uint64 => {
                let v = d.deserialize_any(IntVisitor::<u64>::new())?;
                (Number::Varint(v), v == 0)
            }
            Scalar::Fixed64 => {
                let v = d.deserialize_any(IntVisitor::<u64>::new())?;
                (Number::Bits64(v), v == 0)
            }
            Scalar::Bool => {
                let v = d.deserialize_any(BoolVisitor)?;
                (Number::Varint(u64::from(v)), !v)
            }
            Scalar::Enum(index) => {
                let v = d.deserialize_any(EnumVisitor(&self.1.enums[index].by_name))?;
                (Number::Varint(i64::from(v) as u64), v == 0)
            }
            Scalar::String | Scalar::Bytes | Scalar::Message(_) | Scalar::Timestamp => {
                return Err(D::Error::custom("not a number"));
            }
        })
    }
}

fn key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    encode_varint(u64::from(number) << 3 | u64::from(wire_type), out);
}

/// Reserves one byte for a length that is not known yet; returns where the data starts.
fn begin_length(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len()
}

/// Writes the length of the data from `start` into the byte reserved before it, making
/// room when the length needs more than one byte.
fn end_length(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let mut varint = Vec::with_capacity(10);
    encode_varint(len as u64, &mut varint);
    out[start - 1] = varint[0];
    out.splice(start..start, varint[1..].iter().copied());
}

/// The seconds and nanos of an RFC 3339 timestamp, when prost-reflect accepts it: its
/// strict syntax check (`validate_strict_rfc3339`), prost-types' parser, its range.
fn timestamp(text: &str) -> Option<(i64, i32)> {
    /// Unix seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const RANGE: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    if !strict_rfc3339(text.as_bytes()) {
        return None;
    }
    let parsed: prost_types::Timestamp = text.parse().ok()?;
    RANGE
        .contains(&parsed.seconds)
        .then_some((parsed.seconds, parsed.nanos))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, nothing around it.
fn strict_rfc3339(b: &[u8]) -> bool {
    let mut at = 0;
    let digits = |at: &mut usize, n: usize| {
        let ok = b.len() >= *at + n && b[*at..*at + n].iter().all(u8::is_ascii_digit);
        *at += n;
        ok
    };
    let char = |at: &mut usize, c: u8| {
        let ok = b.get(*at) == Some(&c);
        *at += 1;
        ok
    };
    let date_time = digits(&mut at, 4)
        && char(&mut at, b'-')
        && digits(&mut at, 2)
        && char(&mut at, b'-')
        && digits(&mut at, 2)
        && char(&mut at, b'T')
        && digits(&mut at, 2)
        && char(&mut at, b':')
        && digits(&mut at, 2)
        && char(&mut at, b':')
        && digits(&mut at, 2);
    if !date_time {
        return false;
    }
    if b.get(at) == Some(&b'.') {
        at += 1;
        let fraction = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
        if fraction == 0 {
            return false;
        }
        at += fraction;
    }
    match b.get(at) {
        Some(b'Z') => at + 1 == b.len(),
        Some(b'+' | b'-') => {
            at += 1;
            digits(&mut at, 2) && char(&mut at, b':') && digits(&mut at, 2) && at == b.len()
        }
        _ => false,
    }
}

// --- the visitors of prost-reflect's JSON mapping --------------------------------------

struct DoubleVisitor;

impl Visitor<'_> for DoubleVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a 64-bit floating point value")
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<f64, E> {
        match v.parse::<f64>() {
            Ok(value) => Ok(value),
            Err(_) if v == "Infinity" => Ok(f64::INFINITY),
            Err(_) if v == "-Infinity" => Ok(f64::NEG_INFINITY),
            Err(_) if v == "NaN" => Ok(f64::NAN),
            Err(e) => Err(E::custom(e)),
        }
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a 32-bit floating point value")
    }

    fn visit_f32<E: Error>(self, v: f32) -> Result<f32, E> {
        Ok(v)
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<f32, E> {
        if v < f64::from(f32::MIN) || v > f64::from(f32::MAX) {
            Err(E::custom("float value out of range"))
        } else {
            Ok(v as f32)
        }
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<f32, E> {
        Ok(v as f32)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<f32, E> {
        Ok(v as f32)
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<f32, E> {
        match v.parse::<f32>() {
            Ok(value) => Ok(value),
            Err(_) if v == "Infinity" => Ok(f32::INFINITY),
            Err(_) if v == "-Infinity" => Ok(f32::NEG_INFINITY),
            Err(_) if v == "NaN" => Ok(f32::NAN),
            Err(e) => Err(E::custom(e)),
        }
    }
}

/// An integer of type `T` from a JSON number (integral floats included, as prost-reflect
/// takes them) or a decimal string.
struct IntVisitor<T>(std::marker::PhantomData<T>);

impl<T> IntVisitor<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// The integer types of the protobuf JSON mapping, with their range as `f64`.
trait Integer: Sized + std::str::FromStr + TryFrom<i64> + TryFrom<u64> {
    const MIN: f64;
    const MAX: f64;
    fn from_f64(v: f64) -> Self;
}

macro_rules! integer {
    ($($t:ty),*) => {$(
        impl Integer for $t {
            const MIN: f64 = <$t>::MIN as f64;
            const MAX: f64 = <$t>::MAX as f64;
            fn from_f64(v: f64) -> Self {
                v as $t
            }
        }
    )*};
}
integer!(i32, i64, u32, u64);

impl<T: Integer> Visitor<'_> for IntVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or decimal string")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(|_| E::custom("invalid integer"))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom("integer out of range"))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<T, E> {
        if v.fract() != 0.0 {
            return Err(E::custom("expected integer value"));
        }
        if v < T::MIN || v > T::MAX {
            return Err(E::custom("float value out of range"));
        }
        Ok(T::from_f64(v))
    }
}

struct BoolVisitor;

impl Visitor<'_> for BoolVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a boolean")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<bool, E> {
        Ok(v)
    }
}

/// A string, borrowed from the input when it has no escapes.
struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Base64, standard or URL-safe alphabet, padded or not (as prost-reflect reads it).
struct BytesVisitor;

impl Visitor<'_> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a base64-encoded string")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Vec<u8>, E> {
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        use base64::{DecodeError, Engine, alphabet};
        const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::Indifferent);
        const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
        const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
        match STANDARD.decode(v) {
            Ok(bytes) => Ok(bytes),
            Err(DecodeError::InvalidByte(_, b'-' | b'_')) => {
                URL_SAFE.decode(v).map_err(|e| E::custom(e))
            }
            Err(e) => Err(E::custom(e)),
        }
    }
}

/// An enum value by name or number. An unknown name is an error here even when unknown
/// fields are ignored: prost-reflect then drops the value, which the fallback does.
struct EnumVisitor<'a>(&'a std::collections::HashMap<Box<str>, i32>);

impl Visitor<'_> for EnumVisitor<'_> {
    type Value = i32;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or integer")
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<i32, E> {
        self.0
            .get(v)
            .copied()
            .ok_or_else(|| E::custom("unknown enum value"))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<i32, E> {
        i32::try_from(v).map_err(E::custom)
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<i32, E> {
        i32::try_from(v).map_err(E::custom)
    }
}
