//! JSON request bodies → protobuf. The byte-level transcoder and prost-reflect (the
//! reference) must agree: both accept or both refuse, and accepted bodies encode the
//! same message.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use prost_reflect::DynamicMessage;

fuzz_target!(|data: &[u8]| {
    let fixture = common::fixture();
    let mut wire = Vec::new();
    let fast = fixture.codec.json_to_proto(&fixture.echo, data, &mut wire);
    let reference = fixture.codec.decode(fixture.echo.descriptor(), data);
    match (fast, reference) {
        (Ok(()), Ok(expected)) => {
            let got = DynamicMessage::decode(fixture.echo.descriptor().clone(), &wire[..])
                .expect("the transcoder's output decodes");
            // Compared as JSON values (straight from the messages, no text in between):
            // map entries may leave in any order, and a proto3 field set to its default
            // equals an absent one. (Never through `Debug`: prost-reflect's recurses
            // through the descriptor pool until the stack overflows.)
            let to_value = |m: &DynamicMessage| fixture.codec.to_value(m).expect("JSON");
            assert!(
                to_value(&got) == to_value(&expected),
                "transcoder and reference disagree on {}",
                String::from_utf8_lossy(data)
            );
        }
        (Err(_), Err(_)) => {}
        (fast, reference) => panic!(
            "acceptance differs: transcoder {:?}, reference {:?}",
            fast.map_err(|e| e.to_string()),
            reference.map(|_| ()).map_err(|e| e.to_string())
        ),
    }
});
