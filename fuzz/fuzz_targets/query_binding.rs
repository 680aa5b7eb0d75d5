//! Query strings bound onto a request message (field paths, repeated fields, every scalar
//! kind, nesting, depth limits): errors are fine, panics and stack overflows are not. A
//! message that binds must encode.
#![no_main]

#[path = "../common/mod.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use prost_reflect::DynamicMessage;
use switchboard::transcode::QueryBinding;

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = common::fixture();
    let desc = fixture.echo.descriptor();
    for strict in [false, true] {
        let binding = QueryBinding {
            bound: Vec::new(),
            body_is_whole: false,
            strict,
        };
        let mut message = DynamicMessage::new(desc.clone());
        if binding.apply(desc, &mut message, query).is_ok() {
            fixture
                .codec
                .encode(&message)
                .expect("a bound message encodes as JSON");
        }
    }
});
