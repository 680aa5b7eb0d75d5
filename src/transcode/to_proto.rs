//! JSON → protobuf wire bytes in one pass over the JSON text, following a [`Plan`]: no
//! `DynamicMessage`, no per-field allocation (nested messages are written in place and
//! their length patched in afterwards).
//!
//! The reader is made for this one job: a serde visitor chain over serde_json spent more
//! time on its own plumbing than on the transcoding (a UTF-8 check per string, byte-wise
//! string scans, a `memcmp` call per key compared). Here the whole text is checked as
//! UTF-8 once, strings are scanned eight bytes at a time and borrowed unless they hold
//! escapes, keys are looked up in the plan's small name tables without hashing their bytes.
//!
//! It reads the JSON grammar as serde_json does (numbers to the same `u64`/`i64`/`f64`
//! values, the same escapes, the same nesting limit) and converts values as
//! prost-reflect's JSON mapping does (`prost_reflect::dynamic::serde::de::kind`: the same
//! number, string and base64 rules), but gives up on anything unusual — an unknown key, a
//! repeated key, two members of one oneof, an unknown enum name, a timestamp prost-reflect
//! would refuse, any syntax error — with [`Refused`], which the caller answers by running
//! prost-reflect on the same input. So the result and the error messages are always
//! prost-reflect's; this path only has to be right on the input it takes, which the
//! differential tests and the `json_to_proto` fuzz target check.

use super::json_text::next_special;
use super::plan::{FieldPlan, Plan, Scalar};
use prost::encoding::{encode_varint, encoded_len_varint};
use std::borrow::Cow;
use std::fmt;

/// This input is left to prost-reflect; the reason is for tests and debugging only.
#[derive(Debug)]
pub(super) struct Refused(&'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// serde_json's nesting limit (objects and arrays): deeper input is refused here as it is
/// there.
const MAX_DEPTH: usize = 127;

/// Appends the protobuf encoding of the JSON object `json` (a message of the plan's root
/// type) to `out`. On error `out` holds garbage past its original length.
#[cfg(test)]
pub(super) fn encode(plan: &Plan, json: &[u8], out: &mut Vec<u8>) -> Result<(), Refused> {
    // One UTF-8 check for the whole text: every string in it is then valid too (a quote
    // never splits a character).
    let text = std::str::from_utf8(json).map_err(|_| Refused("invalid UTF-8"))?;
    encode_text(plan, text, out)
}

/// `encode` for text already known to be UTF-8 (a WebSocket text frame is checked when
/// it is read).
pub(super) fn encode_text(plan: &Plan, text: &str, out: &mut Vec<u8>) -> Result<(), Refused> {
    let mut reader = Reader {
        text,
        json: text.as_bytes(),
        at: 0,
        depth: 0,
    };
    reader.message(plan, 0, out)?;
    match reader.next_token() {
        None => Ok(()),
        Some(_) => Err(Refused("trailing characters")),
    }
}

struct Reader<'a> {
    text: &'a str,
    /// `text` as bytes.
    json: &'a [u8],
    at: usize,
    depth: usize,
}

/// A scalar JSON value, as serde_json hands it to a visitor.
enum Token<'a> {
    Str(Cow<'a, str>),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.json.get(self.at).copied()
    }

    /// The next byte that is not whitespace, not consumed.
    fn next_token(&mut self) -> Option<u8> {
        while let Some(&byte) = self.json.get(self.at) {
            if !matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    fn eat(&mut self, byte: u8) -> Result<(), Refused> {
        if self.next_token() != Some(byte) {
            return Err(Refused("unexpected character"));
        }
        self.at += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Refused> {
        if !self.json[self.at..].starts_with(word) {
            return Err(Refused("unexpected word"));
        }
        self.at += word.len();
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Refused> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Refused("nested too deep"));
        }
        Ok(())
    }

    /// An object: the fields of message `index`, written to `out` as they come.
    fn message(&mut self, plan: &Plan, index: usize, out: &mut Vec<u8>) -> Result<(), Refused> {
        self.eat(b'{')?;
        self.enter()?;
        let message = &plan.messages[index];
        if self.next_token() == Some(b'}') {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        // Fields, then oneofs, already given.
        let mut seen = Seen::new(message.fields.len() + message.oneofs);
        // Clients mostly write fields in the order the message declares them: the key
        // of the field after the last one is tried first, as bytes (`"name":`), before
        // a key is read and looked up.
        let mut next_field = 0;
        loop {
            if self.next_token() != Some(b'"') {
                return Err(Refused("expected a key"));
            }
            let index = match message.fields.get(next_field) {
                Some(field)
                    if field.json_key_is_own
                        && self.json[self.at..].starts_with(&field.json_key) =>
                {
                    self.at += field.json_key.len(); // the colon included
                    next_field
                }
                _ => {
                    let key = self.string()?;
                    let index = message
                        .field(key.as_bytes())
                        .ok_or(Refused("unknown field"))?;
                    self.eat(b':')?;
                    index
                }
            };
            if !seen.insert(index) {
                return Err(Refused("repeated field"));
            }
            next_field = index + 1;
            let field = &message.fields[index];
            if self.field(plan, field, out)?
                && let Some(oneof) = field.oneof
                && !seen.insert(message.fields.len() + oneof)
            {
                return Err(Refused("two members of one oneof"));
            }
            match self.next_token() {
                Some(b',') => self.at += 1,
                Some(b'}') => break,
                _ => return Err(Refused("expected , or }")),
            }
        }
        self.at += 1;
        self.depth -= 1;
        Ok(())
    }

    /// One field's value; `false` for `null`, which leaves the field unset.
    fn field(
        &mut self,
        plan: &Plan,
        field: &FieldPlan,
        out: &mut Vec<u8>,
    ) -> Result<bool, Refused> {
        match self.next_token() {
            Some(b'n') => {
                self.literal(b"null")?;
                return Ok(false);
            }
            Some(b'[') if field.repeated => self.list(plan, field, out)?,
            _ if field.repeated => return Err(Refused("expected a list")),
            _ => self.value(plan, field, out, field.presence)?,
        }
        Ok(true)
    }

    /// The elements of a repeated field: packed (one length-delimited record) for numeric
    /// kinds unless the field says otherwise, one record each for the rest.
    fn list(&mut self, plan: &Plan, field: &FieldPlan, out: &mut Vec<u8>) -> Result<(), Refused> {
        self.at += 1; // '['
        self.enter()?;
        let mark = out.len();
        let packed = field.packed.then(|| {
            key(out, field.number, 2);
            begin_length(out)
        });
        if self.next_token() == Some(b']') {
            self.at += 1;
        } else {
            loop {
                if packed.is_some() {
                    self.number(field.scalar, plan)?.0.write(out);
                } else {
                    self.value(plan, field, out, true)?;
                }
                match self.next_token() {
                    Some(b',') => self.at += 1,
                    Some(b']') => {
                        self.at += 1;
                        break;
                    }
                    _ => return Err(Refused("expected , or ]")),
                }
            }
        }
        match packed {
            // Every element writes at least one byte.
            Some(start) if out.len() > start => end_length(out, start),
            Some(_) => out.truncate(mark), // an empty list is no record at all
            None => {}
        }
        self.depth -= 1;
        Ok(())
    }

    /// One value of a field, with its key. Outside a list, a field without presence
    /// holding its default value is not written (as prost-reflect's encoder does not).
    fn value(
        &mut self,
        plan: &Plan,
        field: &FieldPlan,
        out: &mut Vec<u8>,
        keep_default: bool,
    ) -> Result<(), Refused> {
        match field.scalar {
            Scalar::Message(index) => {
                key(out, field.number, 2);
                let start = begin_length(out);
                self.message(plan, index, out)?;
                end_length(out, start);
            }
            Scalar::Timestamp => {
                let text = self.string_value()?;
                let (seconds, nanos) =
                    timestamp(&text).ok_or(Refused("a timestamp prost-reflect refuses"))?;
                key(out, field.number, 2);
                let start = begin_length(out);
                if seconds != 0 {
                    key(out, 1, 0);
                    varint(out, seconds as u64);
                }
                if nanos != 0 {
                    key(out, 2, 0);
                    varint(out, i64::from(nanos) as u64);
                }
                end_length(out, start);
            }
            Scalar::String => {
                let text = self.string_value()?;
                if keep_default || !text.is_empty() {
                    key(out, field.number, 2);
                    varint(out, text.len() as u64);
                    out.extend_from_slice(text.as_bytes());
                }
            }
            Scalar::Bytes => {
                let bytes = base64(&self.string_value()?)?;
                if keep_default || !bytes.is_empty() {
                    key(out, field.number, 2);
                    varint(out, bytes.len() as u64);
                    out.extend_from_slice(&bytes);
                }
            }
            scalar => {
                let (number, is_default) = self.number(scalar, plan)?;
                if keep_default || !is_default {
                    key(out, field.number, scalar.wire_type());
                    number.write(out);
                }
            }
        }
        Ok(())
    }

    /// A numeric (or bool, or enum) value of `scalar`: its wire form, and whether it is
    /// the default.
    fn number(&mut self, scalar: Scalar, plan: &Plan) -> Result<(Number, bool), Refused> {
        let token = self.scalar()?;
        Ok(match scalar {
            Scalar::Double => {
                let v = double(token)?;
                (Number::Bits64(v.to_bits()), v == 0.0)
            }
            Scalar::Float => {
                let v = float(token)?;
                (Number::Bits32(v.to_bits()), v == 0.0)
            }
            Scalar::Int32 => {
                let v = integer::<i32>(token)?;
                (Number::Varint(i64::from(v) as u64), v == 0)
            }
            Scalar::Sint32 => {
                let v = integer::<i32>(token)?;
                (
                    Number::Varint(u64::from(((v << 1) ^ (v >> 31)) as u32)),
                    v == 0,
                )
            }
            Scalar::Sfixed32 => {
                let v = integer::<i32>(token)?;
                (Number::Bits32(v as u32), v == 0)
            }
            Scalar::Int64 => {
                let v = integer::<i64>(token)?;
                (Number::Varint(v as u64), v == 0)
            }
            Scalar::Sint64 => {
                let v = integer::<i64>(token)?;
                (Number::Varint(((v << 1) ^ (v >> 63)) as u64), v == 0)
            }
            Scalar::Sfixed64 => {
                let v = integer::<i64>(token)?;
                (Number::Bits64(v as u64), v == 0)
            }
            Scalar::Uint32 => {
                let v = integer::<u32>(token)?;
                (Number::Varint(u64::from(v)), v == 0)
            }
            Scalar::Fixed32 => {
                let v = integer::<u32>(token)?;
                (Number::Bits32(v), v == 0)
            }
            Scalar::Uint64 => {
                let v = integer::<u64>(token)?;
                (Number::Varint(v), v == 0)
            }
            Scalar::Fixed64 => {
                let v = integer::<u64>(token)?;
                (Number::Bits64(v), v == 0)
            }
            Scalar::Bool => {
                let Token::Bool(v) = token else {
                    return Err(Refused("expected a boolean"));
                };
                (Number::Varint(u64::from(v)), !v)
            }
            Scalar::Enum(index) => {
                let v = enum_number(token, plan, index)?;
                (Number::Varint(i64::from(v) as u64), v == 0)
            }
            Scalar::String | Scalar::Bytes | Scalar::Message(_) | Scalar::Timestamp => {
                return Err(Refused("not a number"));
            }
        })
    }

    /// A string, a number or a boolean.
    fn scalar(&mut self) -> Result<Token<'a>, Refused> {
        match self.next_token() {
            Some(b'"') => Ok(Token::Str(self.string()?)),
            Some(b't') => self.literal(b"true").map(|()| Token::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Token::Bool(false)),
            Some(b'-' | b'0'..=b'9') => self.json_number(),
            _ => Err(Refused("expected a value")),
        }
    }

    /// A JSON string, where only a string will do.
    fn string_value(&mut self) -> Result<Cow<'a, str>, Refused> {
        if self.next_token() != Some(b'"') {
            return Err(Refused("expected a string"));
        }
        self.string()
    }

    /// The string whose opening quote is at `self.at`: borrowed from the input unless it
    /// holds escapes. A raw control character is refused, as serde_json refuses it.
    fn string(&mut self) -> Result<Cow<'a, str>, Refused> {
        let start = self.at + 1;
        let end = next_special(self.json, start);
        if self.json.get(end) == Some(&b'"') {
            self.at = end + 1;
            return self.slice(start, end).map(Cow::Borrowed);
        }
        let mut decoded = String::with_capacity(end - start + 16);
        let (mut from, mut end) = (start, end);
        loop {
            decoded.push_str(self.slice(from, end)?);
            match self.json.get(end) {
                Some(b'"') => {
                    self.at = end + 1;
                    return Ok(Cow::Owned(decoded));
                }
                Some(b'\\') => {
                    let escape = self.json.get(end + 1).copied();
                    from = end + 2;
                    decoded.push(match escape {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\x08',
                        Some(b'f') => '\x0c',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => self.unicode_escape(&mut from)?,
                        _ => return Err(Refused("invalid escape")),
                    });
                    end = next_special(self.json, from);
                }
                _ => return Err(Refused("unterminated string or control character")),
            }
        }
    }

    fn slice(&self, start: usize, end: usize) -> Result<&'a str, Refused> {
        // Both ends are at ASCII characters (quotes, backslashes, escapes' ends).
        self.text
            .get(start..end)
            .ok_or(Refused("not at a character boundary"))
    }

    /// The character of `\uXXXX` (the hex digits at `at`, moved past), a surrogate pair
    /// taking a second escape; a lone surrogate is refused, as serde_json refuses it.
    fn unicode_escape(&self, at: &mut usize) -> Result<char, Refused> {
        let hex = |at: &mut usize| -> Result<u32, Refused> {
            let digits = self.json.get(*at..*at + 4).ok_or(Refused("short escape"))?;
            *at += 4;
            digits.iter().try_fold(0, |value, &digit| {
                let digit = char::from(digit)
                    .to_digit(16)
                    .ok_or(Refused("invalid hex escape"))?;
                Ok(value << 4 | digit)
            })
        };
        let first = hex(at)?;
        let code = match first {
            0xD800..=0xDBFF => {
                if self.json.get(*at..*at + 2) != Some(b"\\u") {
                    return Err(Refused("lone surrogate"));
                }
                *at += 2;
                let second = hex(at)?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(Refused("lone surrogate"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            code => code,
        };
        char::from_u32(code).ok_or(Refused("lone surrogate"))
    }

    /// A JSON number, read as serde_json reads it: an integer to `u64` (or `i64` when
    /// negative) when it fits, anything else to the nearest `f64` (out of range refused).
    fn json_number(&mut self) -> Result<Token<'a>, Refused> {
        let start = self.at;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.at += 1;
        }
        let mut significand: u64 = 0;
        let mut float = false;
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(Refused("leading zero"));
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(digit @ b'0'..=b'9') = self.peek() {
                    self.at += 1;
                    match significand
                        .checked_mul(10)
                        .and_then(|s| s.checked_add(u64::from(digit - b'0')))
                    {
                        Some(s) => significand = s,
                        None => float = true,
                    }
                }
            }
            _ => return Err(Refused("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.digits()?;
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.digits()?;
            float = true;
        }
        if float {
            // Correctly rounded, as serde_json's `float_roundtrip` parser is; serde_json
            // refuses what overflows and reads what underflows as zero, so does `parse`.
            let value: f64 = self
                .slice(start, self.at)?
                .parse()
                .map_err(|_| Refused("invalid number"))?;
            if value.is_infinite() {
                return Err(Refused("number out of range"));
            }
            return Ok(Token::F64(value));
        }
        if !negative {
            return Ok(Token::U64(significand));
        }
        // serde_json's rule: `-0` and what does not fit an `i64` are floats.
        let value = (significand as i64).wrapping_neg();
        Ok(if value >= 0 {
            Token::F64(-(significand as f64))
        } else {
            Token::I64(value)
        })
    }

    /// One or more digits.
    fn digits(&mut self) -> Result<(), Refused> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        if self.at == start {
            return Err(Refused("invalid number"));
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
            Number::Varint(v) => varint(out, v),
            Number::Bits32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Number::Bits64(v) => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
}

/// prost's `encode_varint` writes through `BufMut` one byte at a time with a capacity
/// check each; pushing to the `Vec` is 3% fewer instructions for the whole transcoding.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    varint(out, u64::from(number) << 3 | u64::from(wire_type));
}

/// Reserves one byte for a length that is not known yet; returns where the data starts.
fn begin_length(out: &mut Vec<u8>) -> usize {
    out.push(0);
    out.len()
}

/// Writes the length of the data from `start` into the byte reserved before it, moving
/// the data up when the length needs more than one byte.
fn end_length(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
        return;
    }
    let n = encoded_len_varint(len as u64);
    let end = out.len();
    out.resize(end + n - 1, 0);
    out.copy_within(start..end, start + n - 1);
    encode_varint(len as u64, &mut &mut out[start - 1..start - 1 + n]);
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

// --- prost-reflect's JSON mapping of scalar values -------------------------------------

fn double(token: Token) -> Result<f64, Refused> {
    match token {
        Token::F64(v) => Ok(v),
        Token::I64(v) => Ok(v as f64),
        Token::U64(v) => Ok(v as f64),
        Token::Str(v) => match v.parse::<f64>() {
            Ok(value) => Ok(value),
            Err(_) if v == "Infinity" => Ok(f64::INFINITY),
            Err(_) if v == "-Infinity" => Ok(f64::NEG_INFINITY),
            Err(_) if v == "NaN" => Ok(f64::NAN),
            Err(_) => Err(Refused("invalid double")),
        },
        Token::Bool(_) => Err(Refused("expected a double")),
    }
}

fn float(token: Token) -> Result<f32, Refused> {
    match token {
        Token::F64(v) if v < f64::from(f32::MIN) || v > f64::from(f32::MAX) => {
            Err(Refused("float value out of range"))
        }
        Token::F64(v) => Ok(v as f32),
        Token::I64(v) => Ok(v as f32),
        Token::U64(v) => Ok(v as f32),
        Token::Str(v) => match v.parse::<f32>() {
            Ok(value) => Ok(value),
            Err(_) if v == "Infinity" => Ok(f32::INFINITY),
            Err(_) if v == "-Infinity" => Ok(f32::NEG_INFINITY),
            Err(_) if v == "NaN" => Ok(f32::NAN),
            Err(_) => Err(Refused("invalid float")),
        },
        Token::Bool(_) => Err(Refused("expected a float")),
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

/// An integer of type `T` from a JSON number (integral floats included, as prost-reflect
/// takes them) or a decimal string.
fn integer<T: Integer>(token: Token) -> Result<T, Refused> {
    const OUT_OF_RANGE: Refused = Refused("integer out of range");
    match token {
        Token::Str(v) => v.parse().map_err(|_| Refused("invalid integer")),
        Token::I64(v) => T::try_from(v).map_err(|_| OUT_OF_RANGE),
        Token::U64(v) => T::try_from(v).map_err(|_| OUT_OF_RANGE),
        Token::F64(v) if v.fract() != 0.0 => Err(Refused("expected integer value")),
        Token::F64(v) if v < T::MIN || v > T::MAX => Err(Refused("float value out of range")),
        Token::F64(v) => Ok(T::from_f64(v)),
        Token::Bool(_) => Err(Refused("expected an integer")),
    }
}

/// An enum value by name or number. An unknown name is refused here even when unknown
/// fields are ignored: prost-reflect then drops the value, which the fallback does.
fn enum_number(token: Token, plan: &Plan, index: usize) -> Result<i32, Refused> {
    match token {
        Token::Str(name) => plan.enums[index]
            .number(name.as_bytes())
            .ok_or(Refused("unknown enum value")),
        Token::I64(v) => i32::try_from(v).map_err(|_| Refused("enum value out of range")),
        Token::U64(v) => i32::try_from(v).map_err(|_| Refused("enum value out of range")),
        Token::F64(_) | Token::Bool(_) => Err(Refused("expected an enum name or number")),
    }
}

/// Base64, standard or URL-safe alphabet, padded or not (as prost-reflect reads it).
fn base64(text: &str) -> Result<Vec<u8>, Refused> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::{DecodeError, Engine, alphabet};
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    match STANDARD.decode(text) {
        Ok(bytes) => Ok(bytes),
        Err(DecodeError::InvalidByte(_, b'-' | b'_')) => {
            URL_SAFE.decode(text).map_err(|_| Refused("invalid base64"))
        }
        Err(_) => Err(Refused("invalid base64")),
    }
}
