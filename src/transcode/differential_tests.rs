//! The byte-level transcoder against prost-reflect, which is the reference: random
//! messages of a type with every kind of field, through both, must give the same JSON
//! text and the same protobuf message; unusual inputs must fall back and still agree.

use super::*;
use crate::schema::Schema;
use prost_reflect::{Kind, Value};

const PROTO: &str = r#"
syntax = "proto3";
package difftest.v1;
import "google/protobuf/timestamp.proto";
import "google/protobuf/duration.proto";

enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }

message Inner {
  string name = 1;
  int32 n = 2;
  Inner child = 3;
  repeated Inner kids = 4;
}

message All {
  double d = 1;
  float f = 2;
  int32 i32 = 3;
  int64 i64 = 4;
  uint32 u32 = 5;
  uint64 u64 = 6;
  sint32 s32 = 7;
  sint64 s64 = 8;
  fixed32 fx32 = 9;
  fixed64 fx64 = 10;
  sfixed32 sf32 = 11;
  sfixed64 sf64 = 12;
  bool b = 13;
  string s = 14;
  bytes by = 15;
  Color color = 16;
  Inner inner = 17;
  repeated int32 ri32 = 18;
  repeated string rs = 19;
  repeated Inner rinner = 20;
  repeated Color rcolor = 21;
  repeated double rd = 22;
  repeated sint64 rs64 = 23;
  repeated bytes rby = 24;
  optional int32 oi32 = 25;
  optional string os = 26;
  oneof choice {
    string text = 27;
    Inner nested = 28;
    int64 num = 29;
  }
  repeated int32 unpacked = 30 [packed = false];
  string camel_case_name = 31;
  int32 late = 35;
  int32 early = 34;
  repeated fixed32 rfx32 = 36;
  repeated bool rb = 37;
  google.protobuf.Timestamp at = 38;
  repeated google.protobuf.Timestamp ats = 39;
}

// No repeated field anywhere: the one-pass writer's case (`to_json::in_order`).
message Flat {
  string name = 1;
  int64 count = 2;
  double ratio = 3;
  bool on = 4;
  bytes blob = 5;
  Color color = 6;
  Flat child = 7;
  optional uint32 maybe = 8;
  oneof pick {
    string word = 9;
    Flat other = 10;
  }
  google.protobuf.Timestamp at = 11;
  sint32 last = 12;
}

message WithMap { map<string, int32> m = 1; }
message WithTimestamp { google.protobuf.Timestamp at = 1; }
message WithDuration { google.protobuf.Duration d = 1; }
message HoldsMap { WithMap inside = 1; }
"#;

fn schema() -> Schema {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-difftest-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("difftest.proto"), PROTO).unwrap();
    let schema = Schema::load(std::slice::from_ref(&dir), &[]).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    schema
}

fn all_type(schema: &Schema) -> MessageType {
    MessageType::new(schema.pool.get_message_by_name("difftest.v1.All").unwrap())
}

/// `All` and a codec with the default JSON options, as most tests here use them.
fn all_type_and_default_codec() -> (MessageType, JsonCodec) {
    (all_type(&schema()), JsonCodec::new(&JsonConfig::default()))
}

fn configs() -> Vec<JsonConfig> {
    let mut configs = Vec::new();
    for emit_defaults in [true, false] {
        for use_proto_names in [false, true] {
            for enums_as_ints in [false, true] {
                configs.push(JsonConfig {
                    emit_defaults,
                    use_proto_names,
                    enums_as_ints,
                    ignore_unknown_fields: false,
                });
            }
        }
    }
    configs
}

fn random_value(kind: &Kind, rng: &mut fastrand::Rng, depth: u32) -> Value {
    let pick = rng.u8(..10);
    match kind {
        Kind::Double => Value::F64(
            [
                0.0,
                -0.0,
                1.5,
                -2.25e-300,
                1e300,
                f64::NAN,
                f64::INFINITY,
                0.1,
            ][rng.usize(..8)],
        ),
        Kind::Float => Value::F32(
            [
                0.0,
                -0.0,
                1.5,
                3.4e38,
                f32::NEG_INFINITY,
                f32::NAN,
                0.1,
                1e-40,
            ][rng.usize(..8)],
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32([0, -1, 1, i32::MIN, i32::MAX, rng.i32(..)][usize::from(pick % 6)])
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64([0, -1, 1, i64::MIN, i64::MAX, rng.i64(..)][usize::from(pick % 6)])
        }
        Kind::Uint32 | Kind::Fixed32 => {
            Value::U32([0, 1, u32::MAX, rng.u32(..)][usize::from(pick % 4)])
        }
        Kind::Uint64 | Kind::Fixed64 => {
            Value::U64([0, 1, u64::MAX, rng.u64(..)][usize::from(pick % 4)])
        }
        Kind::Bool => Value::Bool(rng.bool()),
        Kind::String => Value::String(
            [
                "",
                "plain",
                "quote \" backslash \\ tab \t nl \n",
                "ünïcödé ✓ 𝄞",
                "\u{1}\u{1f}",
                &"long ".repeat(40),
            ][rng.usize(..6)]
            .to_owned(),
        ),
        Kind::Bytes => {
            let len = [0, 1, 2, 3, 200][rng.usize(..5)];
            Value::Bytes((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>().into())
        }
        Kind::Enum(_) => Value::EnumNumber([0, 1, 2, 7, -3][rng.usize(..5)]),
        Kind::Message(desc) if desc.full_name() == "google.protobuf.Timestamp" => {
            // Within RFC 3339's years 1..=9999, at every precision the output can take.
            let seconds = [
                -62_135_596_800,
                0,
                1_700_000_000,
                253_402_300_799,
                rng.i64(-62_135_596_800..=253_402_300_799),
            ];
            let nanos = [
                0,
                1,
                500_000_000,
                123_000,
                999_999_999,
                rng.i32(0..1_000_000_000),
            ];
            let timestamp = prost_types::Timestamp {
                seconds: seconds[rng.usize(..seconds.len())],
                nanos: nanos[rng.usize(..nanos.len())],
            };
            let mut message = DynamicMessage::new(desc.clone());
            message.transcode_from(&timestamp).unwrap();
            Value::Message(message)
        }
        Kind::Message(desc) => Value::Message(random_message(desc, rng, depth + 1)),
    }
}

fn random_message(desc: &MessageDescriptor, rng: &mut fastrand::Rng, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(desc.clone());
    for field in desc.fields() {
        if depth > 3 && matches!(field.kind(), Kind::Message(_)) {
            continue;
        }
        if !rng.bool() {
            continue;
        }
        let value = if field.is_list() {
            let len = rng.usize(..4);
            Value::List(
                (0..len)
                    .map(|_| random_value(&field.kind(), rng, depth))
                    .collect(),
            )
        } else {
            random_value(&field.kind(), rng, depth)
        };
        message.set_field(&field, value);
    }
    message
}

fn reference_json(codec: &JsonCodec, message: &DynamicMessage) -> String {
    String::from_utf8(codec.encode(message).unwrap()).unwrap()
}

/// The message's fields in reverse order (the records of one field keep theirs): still the
/// same message for a decoder.
fn reversed_records(bytes: &[u8]) -> Vec<u8> {
    let mut records = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let before = rest;
        let key = prost::encoding::decode_varint(&mut rest).unwrap();
        match key & 7 {
            0 => drop(prost::encoding::decode_varint(&mut rest).unwrap()),
            1 => rest = &rest[8..],
            5 => rest = &rest[4..],
            2 => {
                let len = prost::encoding::decode_varint(&mut rest).unwrap() as usize;
                rest = &rest[len..];
            }
            _ => unreachable!(),
        }
        records.push((key >> 3, &before[..before.len() - rest.len()]));
    }
    records.sort_by_key(|(number, _)| std::cmp::Reverse(*number));
    records
        .into_iter()
        .flat_map(|(_, record)| record.to_vec())
        .collect()
}

#[test]
fn plans_only_plain_proto3_messages() {
    let schema = schema();
    let ty = |name: &str| MessageType::new(schema.pool.get_message_by_name(name).unwrap());
    assert!(ty("difftest.v1.All").has_plan());
    assert!(ty("difftest.v1.Inner").has_plan());
    assert!(ty("difftest.v1.Flat").has_plan());
    assert!(ty("difftest.v1.WithTimestamp").has_plan());
    assert!(!ty("difftest.v1.WithMap").has_plan());
    assert!(!ty("difftest.v1.WithDuration").has_plan());
    assert!(!ty("difftest.v1.HoldsMap").has_plan());
    assert!(!ty("google.protobuf.Timestamp").has_plan());
}

#[test]
fn random_messages_transcode_as_prost_reflect_does() {
    random_messages_agree("difftest.v1.All");
}

#[test]
fn random_messages_without_lists_transcode_as_prost_reflect_does() {
    random_messages_agree("difftest.v1.Flat");
}

/// A record repeated, as a decoder reads it: the last value of a scalar wins, messages
/// merge (which the byte-level writer leaves to prost-reflect), and a second record of one
/// oneof replaces the first member.
#[test]
fn repeated_records_of_a_message_without_lists_agree() {
    let schema = schema();
    let ty = MessageType::new(schema.pool.get_message_by_name("difftest.v1.Flat").unwrap());
    let codecs: Vec<JsonCodec> = configs().iter().map(JsonCodec::new).collect();
    let mut rng = fastrand::Rng::with_seed(0xd0b1e);
    for round in 0..300 {
        let first = random_message(ty.descriptor(), &mut rng, 0).encode_to_vec();
        let second = random_message(ty.descriptor(), &mut rng, 0).encode_to_vec();
        let input = [first.as_slice(), &second].concat();
        let message = DynamicMessage::decode(ty.descriptor().clone(), input.as_slice()).unwrap();
        for codec in &codecs {
            let ours = codec.proto_to_json(&ty, &input).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                reference_json(codec, &message),
                "round {round}"
            );
        }
    }
}

fn random_messages_agree(type_name: &str) {
    let schema = schema();
    let ty = MessageType::new(schema.pool.get_message_by_name(type_name).unwrap());
    let plan = ty.plan.as_deref().unwrap();
    let codecs: Vec<JsonCodec> = configs().iter().map(JsonCodec::new).collect();
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for round in 0..400 {
        let bytes = random_message(ty.descriptor(), &mut rng, 0).encode_to_vec();
        // What a backend's bytes decode to (an in-memory -0.0 is not encoded, for one).
        let message = DynamicMessage::decode(ty.descriptor().clone(), bytes.as_slice()).unwrap();
        for (codec, config) in codecs.iter().zip(configs()) {
            // protobuf → JSON, records in order and reversed.
            let expected = reference_json(codec, &message);
            for input in [bytes.clone(), reversed_records(&bytes)] {
                let mut fast = Vec::new();
                to_json::write(plan, &input, &codec.to_json, &mut fast)
                    .unwrap_or_else(|_| panic!("round {round}: fast path refused {message:?}"));
                assert_eq!(
                    String::from_utf8(fast).unwrap(),
                    expected,
                    "round {round}, {config:?}"
                );
            }
            // JSON → protobuf: the same message as prost-reflect parses (timestamps too).
            let mut encoded = Vec::new();
            to_proto::encode(plan, expected.as_bytes(), &mut encoded)
                .unwrap_or_else(|e| panic!("round {round}: fast path refused {expected}: {e}"));
            let ours = DynamicMessage::decode(ty.descriptor().clone(), encoded.as_slice()).unwrap();
            let reference = codec.decode(ty.descriptor(), expected.as_bytes()).unwrap();
            assert_eq!(
                ours.encode_to_vec(),
                reference.encode_to_vec(),
                "round {round}, {config:?}: {expected}"
            );
        }
    }
}

/// Runs both paths of `JsonCodec` on `json` and checks they agree: same message, or the
/// same error.
fn agree(codec: &JsonCodec, ty: &MessageType, json: &str) -> Result<DynamicMessage, String> {
    let mut bytes = Vec::new();
    let ours = codec
        .json_to_proto(ty, json.as_bytes(), &mut bytes)
        .map(|()| DynamicMessage::decode(ty.descriptor().clone(), bytes.as_slice()).unwrap());
    let reference = codec.decode(ty.descriptor(), json.as_bytes());
    match (ours, reference) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.encode_to_vec(), b.encode_to_vec(), "{json}");
            Ok(a)
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.message, b.message, "{json}");
            Err(a.message)
        }
        (a, b) => panic!("{json}: fast {a:?} vs reference {b:?}"),
    }
}

/// Found by fuzzing (proto_to_json): a double written to JSON and read back must be the
/// same double. serde_json's default float parser is off by one ulp on some inputs, such
/// as the shortest form of this one (`float_roundtrip` in Cargo.toml fixes it); a client's
/// value would have reached the backend changed.
#[test]
fn doubles_round_trip_through_json_exactly() {
    let (ty, codec) = all_type_and_default_codec();
    let mut rng = fastrand::Rng::with_seed(7);
    let found = f64::from_bits(0x2901_1896_6105_285b);
    let doubles = [found, 3.554407780026545e-111, f64::MIN_POSITIVE, 1e308, 0.1]
        .into_iter()
        .chain((0..2000).map(|_| f64::from_bits(rng.u64(..)).abs()))
        .filter(|d| d.is_finite());
    for double in doubles {
        let json = format!(r#"{{"d":{}}}"#, serde_json::to_string(&double).unwrap());
        let message = agree(&codec, &ty, &json).unwrap();
        let got = message.get_field_by_name("d").unwrap().as_f64().unwrap();
        assert_eq!(got.to_bits(), double.to_bits(), "{json}");
    }
}

#[test]
fn json_inputs_agree_with_prost_reflect() {
    let schema = schema();
    let ty = all_type(&schema);
    let strict = JsonCodec::new(&JsonConfig::default());
    let lenient = JsonCodec::new(&JsonConfig {
        ignore_unknown_fields: true,
        ..Default::default()
    });
    let ok = [
        r#"{}"#,
        r#"  "#,
        r#"{"i32": "-5", "i64": 12, "u64": "18446744073709551615", "d": "NaN", "f": "-Infinity"}"#,
        r#"{"i32": 3.0, "u32": 1e3, "d": 1e-7, "f": 2, "sf64": "-9223372036854775808"}"#,
        r#"{"s": "esc \" \\ \u00e9 \ud834\udd1e", "by": "-_8=", "rby": ["AQID", "AQI", ""]}"#,
        r#"{"color": "GREEN", "rcolor": ["RED", 2, 9], "camelCaseName": "x", "camel_case_name": "y"}"#,
        r#"{"inner": {"name": "a", "child": {"n": 2, "kids": [{}, {"name": "k"}]}}}"#,
        r#"{"inner": null, "s": null, "ri32": null, "oi32": 0, "os": ""}"#,
        r#"{"text": "t"}"#,
        r#"{"nested": {}, "text": null}"#,
        r#"{"unpacked": [1, -2, 3], "ri32": [], "rd": [0.5, "Infinity"], "rb": [true, false]}"#,
        r#"{"late": 1, "early": 2, "rfx32": [4294967295]}"#,
    ];
    for json in ok {
        agree(&strict, &ty, json).unwrap_or_else(|e| panic!("{json}: {e}"));
    }
    // Long nested data: lengths that need more than one byte.
    let long = format!(
        r#"{{"inner": {{"name": "{}", "kids": [{{"name": "{}"}}]}}, "rs": ["{}"]}}"#,
        "n".repeat(300),
        "k".repeat(20000),
        "s".repeat(128)
    );
    agree(&strict, &ty, &long).unwrap();

    let refused = [
        r#"{"nope": 1}"#,
        r#"{"i32": 1, "i_32": 2}"#,
        r#"{"text": "a", "num": 1}"#,
        r#"{"i32": 1.5}"#,
        r#"{"i32": 3000000000}"#,
        r#"{"u32": -1}"#,
        r#"{"f": 1e39}"#,
        r#"{"b": "true"}"#,
        r#"{"color": "BLUE"}"#,
        r#"{"by": "not base64!"}"#,
        r#"{"ri32": [1, null]}"#,
        r#"{"inner": []}"#,
        r#"[]"#,
        r#"{"s": "x"} trailing"#,
        r#"{"s": "x""#,
        // A key given twice (the proto3 JSON mapping refuses it; serde would keep the last).
        r#"{"i32": 1, "i32": 2}"#,
        r#"{"inner": {"n": 1}, "inner": {"name": "b"}}"#,
        r#"{"inner": {"name": "a", "name": "b"}}"#,
        r#"{"s": "a", "s": "b"}"#,
    ];
    for json in refused {
        assert!(agree(&strict, &ty, json).is_err(), "{json} was accepted");
    }
    // What only a lenient codec takes (the fast path refuses, prost-reflect accepts).
    for json in [
        r#"{"nope": {"deep": [1]}, "s": "kept"}"#,
        r#"{"color": "BLUE", "i32": 4}"#,
    ] {
        agree(&lenient, &ty, json).unwrap();
    }
}

/// The JSON reader of the fast path against serde_json (through prost-reflect): the
/// grammar's corners, numbers at the edges of `u64`/`i64`/`f64`, escapes and nesting.
/// Every input must agree; `taken` says whether the fast path reads it itself (a fast
/// path that refused everything would agree too).
#[test]
fn json_reader_edges_agree_with_prost_reflect() {
    let (ty, codec) = all_type_and_default_codec();
    let plan = ty.plan.as_deref().unwrap();
    let check = |json: &str, taken: bool| {
        let mut fast = Vec::new();
        let result = to_proto::encode(plan, json.as_bytes(), &mut fast);
        assert_eq!(result.is_ok(), taken, "{json}: fast path {result:?}");
        let _ = agree(&codec, &ty, json);
    };
    let taken = [
        " \t\r\n{ \"i32\" \n:\t1 , \"s\":\"x\" } \n",
        r#"{"i64": 9223372036854775807, "u64": 18446744073709551615, "sf64": -9223372036854775808}"#,
        r#"{"d": 18446744073709551616, "f": 123456789012345678901234567890}"#,
        r#"{"d": -9223372036854775809, "i32": -0, "i64": -9223372036854775808}"#,
        r#"{"d": -0, "f": -0.0, "rd": [-0, 0e0, 0E-0, 1E+2]}"#,
        r#"{"d": 1e-400, "f": -1e-400, "rd": [0e99999, 2.5e-324, 4.9e-324]}"#,
        r#"{"d": 1.7976931348623157e308, "rd": [2.2250738585072011e-308, 0.30000000000000004]}"#,
        r#"{"d": 9007199254740993, "f": 16777217, "rd": [9007199254740993.0]}"#,
        r#"{"i64": 1e18, "u32": 4294967295.0, "i32": -2147483648.0, "s64": null}"#,
        r#"{"i64": "1", "u64": "+7", "i32": "-0"}"#,
        r#"{"s": "\"\\\/\b\f\n\r\t\u0000\u001f\u00e9\u20AC\ud834\udd1e", "rs": ["\u0041", "é€𝄞"]}"#,
        r#"{"\u0069\u0033\u0032": 4, "camel_case_name": "proto name", "late": 1}"#,
        r#"{"by": "\u0041QID", "rby": ["", "AA==", "_-8"], "color": "\u0052ED"}"#,
        r#"{"at": "2026-12-02T10:00:00.5\u005a"}"#,
        r#"{"rinner": [{}, {"kids": [{"kids": [{}]}]}], "inner": {"child": null}}"#,
    ];
    for json in taken {
        check(json, true);
    }
    let refused = [
        r#"{"i32": 01}"#,
        r#"{"i32": -}"#,
        r#"{"i32": +1}"#,
        r#"{"d": .5}"#,
        r#"{"d": 1.}"#,
        r#"{"d": 1e}"#,
        r#"{"d": 1e+}"#,
        r#"{"d": 1e400}"#,
        r#"{"d": -1e400}"#,
        r#"{"d": NaN}"#,
        r#"{"d": Infinity}"#,
        r#"{"i32": 1,}"#,
        r#"{"ri32": [1,]}"#,
        r#"{"ri32": [,1]}"#,
        r#"{,"i32": 1}"#,
        r#"{"i32" 1}"#,
        r#"{"i32": 1 "s": "x"}"#,
        r#"{i32: 1}"#,
        r#"{'i32': 1}"#,
        r#"{"s": "tab	inside"}"#,
        "{\"s\": \"new\nline\"}",
        r#"{"s": "\x41"}"#,
        r#"{"s": "\u12"}"#,
        r#"{"s": "\uD834"}"#,
        r#"{"s": "\uD834x"}"#,
        r#"{"s": "\uD834\u0041"}"#,
        r#"{"s": "\uDD1E"}"#,
        r#"{"s": "\uZZZZ"}"#,
        r#"{"s": "\"#,
        r#"{"s": "open"#,
        r#"{"b": tru}"#,
        r#"{"b": nul}"#,
        r#"{"b": True}"#,
        r#"{"inner": nulls}"#,
        r#"{"s": "x"}}"#,
        r#"{"s": "x"} {}"#,
        r#"{"i32": 1} x"#,
        r#"{"color": 1.5}"#,
        r#"{"color": true}"#,
        r#"{"i32": true}"#,
        r#"{"d": false}"#,
        r#"{"s": 1}"#,
        r#"{"rs": "x"}"#,
        r#"{"ri32": [[1]]}"#,
        r#"{"inner": {"kids": {}}}"#,
        "",
        "null",
        "{",
        "}",
    ];
    for json in refused {
        check(json, false);
    }
    // Invalid UTF-8, inside and outside strings.
    for bytes in [
        &b"{\"s\": \"\xff\"}"[..],
        b"{\"s\": \"\xc3\"}",
        b"{\xe2\x82\"s\": 1}",
    ] {
        let mut fast = Vec::new();
        assert!(to_proto::encode(plan, bytes, &mut fast).is_err());
        assert!(codec.json_to_proto(&ty, bytes, &mut fast).is_err());
    }
    // Nesting: serde_json stops at 128 levels of objects and arrays; so does the reader.
    for depth in [1usize, 60, 126, 127, 128, 129, 5000] {
        let json = format!(
            r#"{{"inner": {}{{}}{}}}"#,
            r#"{"child": "#.repeat(depth.saturating_sub(2)),
            "}".repeat(depth.saturating_sub(2))
        );
        let mut fast = Vec::new();
        let taken = to_proto::encode(plan, json.as_bytes(), &mut fast).is_ok();
        assert_eq!(taken, depth <= 127, "depth {depth}");
        let parses = serde_json::from_str::<serde_json::Value>(&json).is_ok();
        assert_eq!(taken, parses, "depth {depth}");
        // (Deeper than prost's decoding limit, 100, the bytes cannot be compared.)
        if depth < 100 {
            agree(&codec, &ty, &json).unwrap();
        }
    }
    // Random numbers in every form serde_json reads, into every numeric kind.
    let mut rng = fastrand::Rng::with_seed(11);
    let digits = |rng: &mut fastrand::Rng, n: usize| -> String {
        (0..n).map(|_| char::from(b'0' + rng.u8(0..10))).collect()
    };
    for _ in 0..3000 {
        let mut number = String::new();
        if rng.bool() {
            number.push('-');
        }
        let int_len = rng.usize(1..25);
        let int = digits(&mut rng, int_len);
        number.push_str(int.trim_start_matches('0'));
        if number.is_empty() || number == "-" {
            number.push('0');
        }
        if rng.u8(0..3) == 0 {
            let frac_len = rng.usize(1..25);
            number.push('.');
            number.push_str(&digits(&mut rng, frac_len));
        }
        if rng.u8(0..3) == 0 {
            number.push_str(["e", "E", "e+", "e-", "E-"][rng.usize(0..5)]);
            number.push_str(&rng.i32(0..400).to_string());
        }
        let name = [
            "d", "f", "i32", "i64", "u32", "u64", "s64", "fx32", "sf64", "color",
        ][rng.usize(0..10)];
        let _ = agree(&codec, &ty, &format!(r#"{{"{name}": {number}}}"#));
        let _ = agree(&codec, &ty, &format!(r#"{{"rd": [{number}, "{number}"]}}"#));
    }
}

/// Timestamps in requests: the fast path takes what prost-reflect accepts (same seconds
/// and nanos) and leaves everything else to it (same error).
#[test]
fn json_timestamps_agree_with_prost_reflect() {
    let (ty, codec) = all_type_and_default_codec();
    let plan = ty.plan.as_deref().unwrap();
    let accepted = [
        "2026-12-02T10:00:00Z",
        "1970-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999999Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999999Z",
        "2026-12-02T10:00:00.5Z",
        "2026-12-02T10:00:00.123456Z",
        "2026-12-02T10:00:00+05:30",
        "2026-12-02T10:00:00.25-08:00",
        "2024-02-29T12:00:00Z",
    ];
    for text in accepted {
        for json in [
            format!(r#"{{"at": "{text}"}}"#),
            format!(r#"{{"ats": ["{text}", "{text}"], "i32": 1}}"#),
        ] {
            let mut fast = Vec::new();
            to_proto::encode(plan, json.as_bytes(), &mut fast)
                .unwrap_or_else(|e| panic!("fast path refused {json}: {e}"));
            let reference = agree(&codec, &ty, &json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let fast = DynamicMessage::decode(ty.descriptor().clone(), fast.as_slice()).unwrap();
            assert_eq!(fast.encode_to_vec(), reference.encode_to_vec(), "{json}");
        }
    }
    let refused = [
        "2026-12-02t10:00:00Z",
        "2026-12-02 10:00:00Z",
        "2026-12-02T10:00Z",
        "2026-12-02T10:00:00",
        "2026-12-02T10:00:00.Z",
        "2026-12-02T10:00:00z",
        "2026-12-02T10:00:00+0530",
        "2026-12-02T10:00:00Z ",
        " 2026-12-02T10:00:00Z",
        "2026-13-02T10:00:00Z",
        "2026-02-30T10:00:00Z",
        "2023-02-29T10:00:00Z",
        "2026-12-02T24:00:00Z",
        "2026-12-02T10:00:60Z",
        "2026-12-02T10:00:00.1234567891Z",
        "0000-12-31T23:59:59Z",
        "9999-12-31T23:59:59-01:00",
        "+2026-12-02T10:00:00Z",
        "",
    ];
    for text in refused {
        let json = format!(r#"{{"at": "{text}"}}"#);
        let mut fast = Vec::new();
        let taken = to_proto::encode(plan, json.as_bytes(), &mut fast).is_ok();
        let result = agree(&codec, &ty, &json);
        assert!(
            !taken || result.is_ok(),
            "{json}: the fast path took what prost-reflect refuses"
        );
    }
    for json in [
        r#"{"at": 12}"#,
        r#"{"at": {}}"#,
        r#"{"at": null}"#,
        r#"{"ats": [null]}"#,
    ] {
        let _ = agree(&codec, &ty, json);
    }
}

#[test]
fn unusual_wire_input_falls_back_and_agrees() {
    let (ty, codec) = all_type_and_default_codec();
    let check = |bytes: &[u8]| {
        let result = codec.proto_to_json(&ty, bytes);
        let reference = DynamicMessage::decode(ty.descriptor().clone(), bytes)
            .map_err(|e| e.to_string())
            .and_then(|message| codec.encode(&message).map_err(|e| e.message));
        match reference {
            Ok(json) => assert_eq!(result.unwrap(), json),
            Err(_) => assert!(result.is_err()),
        }
    };
    let inner = |name: &str, n: u8| {
        let mut record = vec![0x0a, name.len() as u8];
        record.extend_from_slice(name.as_bytes());
        record.extend_from_slice(&[0x10, n]);
        record
    };
    let field = |number: u8, payload: &[u8]| {
        let mut record = vec![number << 3 | 2, payload.len() as u8];
        record.extend_from_slice(payload);
        record
    };
    // Field 17 (inner) twice: the decoder merges the two records.
    check(&[field(17, &inner("a", 1)), field(17, &inner("", 5))].concat());
    // Two members of the oneof: the last one wins.
    check(&[field(27, b"text"), field(28, &inner("x", 1))].concat());
    // An int32 written twice: the last one wins.
    check(&[0x18, 0x01, 0x18, 0x02]);
    // Packed and unpacked records of one repeated field.
    check(&[0x92, 0x01, 0x02, 0x01, 0x02, 0x90, 0x01, 0x03]);
    // An unknown field, and an unknown field as a group.
    check(&[0xf8, 0x06, 0x01, 0x18, 0x07]);
    check(&[0xfb, 0x06, 0xfc, 0x06, 0x18, 0x07]);
    // Nested deeper than prost's recursion limit (Inner.child, field 3 of Inner, inside
    // All.inner): refused on both paths, without exhausting the stack.
    for depth in [98, 99, 100, 101, 5000] {
        let mut nested = inner("leaf", 1);
        for _ in 0..depth {
            let mut record = vec![0x1a];
            prost::encoding::encode_varint(nested.len() as u64, &mut record);
            record.extend_from_slice(&nested);
            nested = record;
        }
        let mut bytes = vec![0x8a, 0x01];
        prost::encoding::encode_varint(nested.len() as u64, &mut bytes);
        bytes.extend_from_slice(&nested);
        check(&bytes);
    }
    // A timestamp beyond year 9999 (field 38: seconds = 10^12), and two records of one
    // timestamp (merged by the decoder).
    let mut far = vec![0x08];
    prost::encoding::encode_varint(1_000_000_000_000, &mut far);
    check(&[vec![0xb2, 0x02, far.len() as u8], far].concat());
    check(&[0xb2, 0x02, 0x02, 0x08, 0x05, 0xb2, 0x02, 0x02, 0x10, 0x07]);
    // Wrong wire type, truncated records, bad UTF-8: errors on both paths.
    check(&[0x1d, 0, 0, 0, 0]);
    check(&[0x72, 0x05, b'a']);
    check(&[0x72, 0x01, 0xff]);
    check(&[0x18]);
}

/// The demo shop's types, which the benchmarks and the README's examples go through, take
/// the byte-level path: a change that made them fall back would go unnoticed otherwise.
#[test]
fn demo_shop_types_have_plans() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("descriptors/shop");
    let schema = Schema::load(&[dir], &[]).unwrap();
    for name in [
        "shop.catalog.v1.GetProductRequest",
        "shop.catalog.v1.Product",
        "shop.catalog.v1.ListProductsResponse",
        "shop.catalog.v1.PriceUpdate",
        "shop.orders.v1.PlaceOrderRequest",
        "shop.orders.v1.Order",
        "shop.reviews.v1.ListReviewsResponse",
        "shop.inventory.v1.Stock",
        "shop.chat.v1.ChatMessage",
        "shop.shipping.v1.QuoteRequest",
        "shop.shipping.v1.Quote",
    ] {
        let desc = schema.pool.get_message_by_name(name).unwrap();
        assert!(MessageType::new(desc).has_plan(), "{name} has no plan");
    }
}
