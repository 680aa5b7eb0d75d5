//! Protobuf bytes from a backend → JSON. Whatever the bytes, no panic; output is valid
//! JSON, and the same JSON (as a value) as prost-reflect's when that decodes them.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fixture = common::fixture();
    let Ok(json) = fixture.codec.proto_to_json(&fixture.echo, data) else {
        return;
    };
    let got: serde_json::Value = serde_json::from_slice(&json).expect("output is JSON");
    if let Ok(message) = fixture.echo.decode(data) {
        // The reference's JSON text, read back like ours: a `float` field is written as
        // the shortest float32 text on both sides, which a `Value` built straight from the
        // message (widened to f64) would not equal.
        let text = fixture.codec.encode(&message).expect("reference JSON");
        let expected: serde_json::Value = serde_json::from_slice(&text).expect("reference is JSON");
        assert_eq!(got, expected, "transcoder and reference disagree");
    }
});
