//! JSON ↔ protobuf following the proto3 JSON mapping, plus the HttpRule bindings that
//! fill request fields from path variables and the query string. Everything that can be
//! resolved at load time (field paths, transcoding plans) is.
//!
//! Two ways through: prost-reflect's `DynamicMessage` (any message, and the reference),
//! and for plain proto3 messages a byte-to-byte transcoder (`plan`, `to_proto`,
//! `to_json`) that skips building a `DynamicMessage` and falls back to prost-reflect on
//! any input it does not handle, so both give the same results and errors.

#[cfg(test)]
mod differential_tests;
mod duplicates;
mod field_path;
pub(crate) mod json_text;
mod plan;
mod query;
mod to_json;
mod to_proto;

pub use duplicates::check as check_duplicate_keys;
pub use field_path::{FieldPath, MAX_FIELD_PATH_DEPTH, set_field_from_str, settable_from_text};
pub use query::{QueryBinding, parse_query};

use crate::config::JsonConfig;
use crate::error::GatewayError;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use std::sync::Arc;

/// The JSON options of one configuration, prepared once.
#[derive(Clone)]
pub struct JsonCodec {
    deserialize: DeserializeOptions,
    serialize: SerializeOptions,
    to_json: to_json::Options,
}

/// A message type ready for transcoding: its descriptor and, when it is plain proto3, its
/// byte-level plan (compiled here, at load time).
#[derive(Clone, Debug)]
pub struct MessageType {
    descriptor: MessageDescriptor,
    plan: Option<Arc<plan::Plan>>,
}

impl MessageType {
    pub fn new(descriptor: MessageDescriptor) -> Self {
        let plan = plan::compile(&descriptor).map(Arc::new);
        Self { descriptor, plan }
    }

    pub fn descriptor(&self) -> &MessageDescriptor {
        &self.descriptor
    }

    /// Whether the byte-level transcoder handles this type (else prost-reflect does).
    pub fn has_plan(&self) -> bool {
        self.plan.is_some()
    }

    /// Encoded bytes from a backend as a `DynamicMessage`; bytes that are not a valid
    /// message of this type are INTERNAL (the backend broke its contract).
    pub fn decode(&self, bytes: &[u8]) -> Result<DynamicMessage, GatewayError> {
        DynamicMessage::decode(self.descriptor.clone(), bytes).map_err(|e| {
            GatewayError::internal(format!(
                "backend sent an invalid {}: {e}",
                self.descriptor.full_name()
            ))
        })
    }
}

impl std::fmt::Debug for JsonCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JsonCodec")
    }
}

impl JsonCodec {
    pub fn new(config: &JsonConfig) -> Self {
        Self {
            deserialize: DeserializeOptions::new()
                .deny_unknown_fields(!config.ignore_unknown_fields),
            serialize: SerializeOptions::new()
                .skip_default_fields(!config.emit_defaults)
                .use_proto_field_name(config.use_proto_names)
                .use_enum_numbers(config.enums_as_ints)
                .stringify_64_bit_integers(true),
            to_json: to_json::Options {
                proto_names: config.use_proto_names,
                emit_defaults: config.emit_defaults,
                enum_numbers: config.enums_as_ints,
            },
        }
    }

    /// Appends the protobuf encoding of the JSON `body` (a `ty` message) to `out`. An
    /// empty body is the empty message. Errors are 400 INVALID_ARGUMENT, as `decode`'s.
    pub fn json_to_proto(
        &self,
        ty: &MessageType,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        match std::str::from_utf8(body) {
            Ok(text) => self.json_text_to_proto(ty, text, out),
            // prost-reflect says why.
            Err(_) => self.decode_to_proto(ty, body, out),
        }
    }

    /// `json_to_proto` for a body already known to be UTF-8 (a WebSocket text frame).
    pub fn json_text_to_proto(
        &self,
        ty: &MessageType,
        text: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let start = out.len();
        if let Some(plan) = &ty.plan {
            let blank = text.bytes().all(|byte| byte.is_ascii_whitespace());
            if blank || to_proto::encode_text(plan, text, out).is_ok() {
                return Ok(());
            }
            out.truncate(start);
        }
        self.decode_to_proto(ty, text.as_bytes(), out)
    }

    /// `json_to_proto` through prost-reflect's `DynamicMessage`.
    fn decode_to_proto(
        &self,
        ty: &MessageType,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let message = self.decode(&ty.descriptor, body)?;
        message
            .encode(out)
            .map_err(|e| GatewayError::internal(format!("cannot encode the request: {e}")))
    }

    /// The JSON form of the protobuf `bytes` (a `ty` message). Bytes that are not a valid
    /// `ty` are INTERNAL (the backend broke its contract).
    pub fn proto_to_json(&self, ty: &MessageType, bytes: &[u8]) -> Result<Vec<u8>, GatewayError> {
        let mut out = Vec::with_capacity(2 * bytes.len() + 16);
        self.proto_to_json_into(ty, bytes, &mut out)?;
        Ok(out)
    }

    /// `proto_to_json`, appended to `out` (which keeps its length on error).
    pub fn proto_to_json_into(
        &self,
        ty: &MessageType,
        bytes: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let start = out.len();
        if let Some(plan) = &ty.plan {
            if to_json::write(plan, bytes, &self.to_json, out).is_ok() {
                return Ok(());
            }
            out.truncate(start);
        }
        let written = ty
            .decode(bytes)
            .and_then(|message| self.encode_into(&message, out));
        if written.is_err() {
            out.truncate(start);
        }
        written
    }

    /// Parses a JSON body into a message of type `desc`. An empty body is the empty
    /// message. Errors are 400 INVALID_ARGUMENT with the parser's reason.
    pub fn decode(
        &self,
        desc: &MessageDescriptor,
        body: &[u8],
    ) -> Result<DynamicMessage, GatewayError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(DynamicMessage::new(desc.clone()));
        }
        // prost-reflect keeps the last of repeated keys; the proto3 JSON mapping refuses them.
        duplicates::check(body)
            .map_err(|e| GatewayError::invalid_argument(format!("invalid JSON body: {e}")))?;
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let message = DynamicMessage::deserialize_with_options(
            desc.clone(),
            &mut deserializer,
            &self.deserialize,
        )
        .map_err(|e| GatewayError::invalid_argument(format!("invalid JSON body: {e}")))?;
        deserializer
            .end()
            .map_err(|e| GatewayError::invalid_argument(format!("invalid JSON body: {e}")))?;
        Ok(message)
    }

    /// Parses a JSON value into a message of type `desc`.
    pub fn decode_value(
        &self,
        desc: &MessageDescriptor,
        value: serde_json::Value,
    ) -> Result<DynamicMessage, GatewayError> {
        DynamicMessage::deserialize_with_options(desc.clone(), value, &self.deserialize)
            .map_err(|e| GatewayError::invalid_argument(format!("invalid JSON: {e}")))
    }

    /// Writes `message` as JSON into `out`.
    pub fn encode_into(
        &self,
        message: &DynamicMessage,
        out: &mut Vec<u8>,
    ) -> Result<(), GatewayError> {
        let mut serializer = serde_json::Serializer::new(out);
        message
            .serialize_with_options(&mut serializer, &self.serialize)
            .map_err(|e| GatewayError::internal(format!("cannot encode response as JSON: {e}")))
    }

    pub fn encode(&self, message: &DynamicMessage) -> Result<Vec<u8>, GatewayError> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(message, &mut out)?;
        Ok(out)
    }

    pub fn to_value(&self, message: &DynamicMessage) -> Result<serde_json::Value, GatewayError> {
        message
            .serialize_with_options(serde_json::value::Serializer, &self.serialize)
            .map_err(|e| GatewayError::internal(format!("cannot encode response as JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> JsonCodec {
        JsonCodec::new(&JsonConfig::default())
    }

    fn status_desc() -> MessageDescriptor {
        crate::schema::Schema::builtin().status
    }

    #[test]
    fn decodes_and_refuses_garbage() {
        let desc = status_desc();
        let msg = codec()
            .decode(&desc, br#"{"code": 3, "message": "x"}"#)
            .unwrap();
        assert_eq!(codec().to_value(&msg).unwrap()["code"], 3);
        assert!(codec().decode(&desc, br#"{"code": 3} trailing"#).is_err());
        assert!(codec().decode(&desc, br#"{"code": "three"}"#).is_err());
        assert!(codec().decode(&desc, br#"{"nope": 1}"#).is_err());
        assert!(codec().decode(&desc, b"\xff\xfe").is_err());
        assert!(codec().decode(&desc, b"  ").is_ok());
        let lenient = JsonCodec::new(&JsonConfig {
            ignore_unknown_fields: true,
            ..Default::default()
        });
        assert!(lenient.decode(&desc, br#"{"nope": 1}"#).is_ok());
    }

    #[test]
    fn emits_defaults_per_config() {
        let desc = status_desc();
        let msg = DynamicMessage::new(desc);
        let with = codec().to_value(&msg).unwrap();
        assert_eq!(with["code"], 0);
        let without = JsonCodec::new(&JsonConfig {
            emit_defaults: false,
            ..Default::default()
        })
        .to_value(&msg)
        .unwrap();
        assert!(without.get("code").is_none());
    }
}
