//! What the targets share: the echo fixture's message type (every field kind, nested,
//! recursive, well-known types) and the default JSON options.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;
use switchboard::config::JsonConfig;
use switchboard::schema::Schema;
use switchboard::transcode::{JsonCodec, MessageType};

pub struct Fixture {
    pub schema: Schema,
    pub echo: MessageType,
    pub codec: JsonCodec,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let protos = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/protos"
        ));
        let schema = Schema::load(&[protos], &[]).expect("echo fixture protos load");
        let desc = schema
            .pool
            .get_message_by_name("test.echo.v1.EchoMessage")
            .expect("EchoMessage");
        Fixture {
            echo: MessageType::new(desc),
            codec: JsonCodec::new(&JsonConfig::default()),
            schema,
        }
    })
}
