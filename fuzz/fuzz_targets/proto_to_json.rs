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
        let expected = fixture.codec.to_value(&message).expect("reference JSON");
        assert_eq!(got, expected, "transcoder and reference disagree");
    }
});
