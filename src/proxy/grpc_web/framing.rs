//! gRPC-Web on the wire: content types, the 5-byte frame prefix (flag, big-endian
//! length), the trailer frame (flag 0x80, an HTTP/1-style header block), and text mode
//! (the same bytes in base64; a body may be several padded chunks, one per write).
//!
//! Length prefixes come from clients and are checked against the bytes actually
//! received, never used to size a buffer.

use crate::error::{GatewayError, grpc_message_value};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header};
use tonic::Code;

const FLAG_DATA: u8 = 0x00;
const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_TRAILER: u8 = 0x80;
const PREFIX: usize = 5;

/// Binary frames, or the same frames in base64 (`application/grpc-web-text`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Binary,
    Text,
}

impl Mode {
    /// The mode a request's content type names, loosely (any `application/grpc-web*`):
    /// decides whether its errors are answered in gRPC-Web form.
    pub(crate) fn of(headers: &HeaderMap) -> Option<Mode> {
        let value = headers.get(header::CONTENT_TYPE)?.as_bytes();
        let starts = |prefix: &[u8]| {
            value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        };
        if starts(b"application/grpc-web-text") {
            Some(Mode::Text)
        } else if starts(b"application/grpc-web") {
            Some(Mode::Binary)
        } else {
            None
        }
    }

    /// The mode of a request a gRPC-Web route serves: protobuf messages only
    /// (`application/grpc-web[-text][+proto]`, parameters ignored).
    pub(crate) fn of_request(headers: &HeaderMap) -> Result<Mode, GatewayError> {
        let value = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = value.split(';').next().unwrap_or("").trim();
        let lower = essence.to_ascii_lowercase();
        match lower.as_str() {
            "application/grpc-web" | "application/grpc-web+proto" => Ok(Mode::Binary),
            "application/grpc-web-text" | "application/grpc-web-text+proto" => Ok(Mode::Text),
            _ => Err(GatewayError::invalid_argument(format!(
                "content type `{essence}` is not served here: use application/grpc-web(+proto) or application/grpc-web-text(+proto)"
            ))
            .with_status(http::StatusCode::UNSUPPORTED_MEDIA_TYPE)),
        }
    }

    /// The response content type.
    pub(crate) fn content_type(self) -> HeaderValue {
        match self {
            Mode::Binary => HeaderValue::from_static("application/grpc-web+proto"),
            Mode::Text => HeaderValue::from_static("application/grpc-web-text+proto"),
        }
    }

    /// Bytes as this mode sends them: as they are, or one padded base64 chunk.
    pub(crate) fn encode(self, frames: Bytes) -> Bytes {
        match self {
            Mode::Binary => frames,
            Mode::Text => Bytes::from(STANDARD.encode(&frames)),
        }
    }

    /// How many bytes of request body hold at most `limit` bytes of frames: the base64
    /// of `limit` bytes, plus room for the padding of a few chunks.
    pub(crate) fn body_limit(self, limit: u64) -> u64 {
        match self {
            Mode::Binary => limit,
            Mode::Text => limit.div_ceil(3).saturating_mul(4).saturating_add(64),
        }
    }
}

/// A text-mode body → its bytes. The body may be several base64 chunks, each padded
/// (clients encode per write), so it is decoded one padded run of 4-byte quanta at a time.
pub(crate) fn decode_text(body: &[u8]) -> Result<Bytes, GatewayError> {
    let bad = || GatewayError::invalid_argument("grpc-web-text body is not valid base64");
    if !body.len().is_multiple_of(4) {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(body.len() / 4 * 3);
    let mut start = 0;
    for end in (4..=body.len()).step_by(4) {
        // A quantum ending in `=` ends a chunk (or the body).
        if body[end - 1] == b'=' || end == body.len() {
            STANDARD
                .decode_vec(&body[start..end], &mut out)
                .map_err(|_| bad())?;
            start = end;
        }
    }
    Ok(Bytes::from(out))
}

/// The request's one message, still framed (flag 0, length, message) as the gRPC
/// backend takes it. The prefix must describe exactly the bytes that follow it: a
/// prefix larger than `limit` is refused before anything else, one that disagrees with
/// the body (short, long, or a second frame behind it) is INVALID_ARGUMENT.
pub(crate) fn single_message(body: Bytes, limit: u64) -> Result<Bytes, GatewayError> {
    if body.len() < PREFIX {
        return Err(GatewayError::invalid_argument(
            "grpc-web request body holds no complete message frame",
        ));
    }
    let declared = u32::from_be_bytes([body[1], body[2], body[3], body[4]]);
    if u64::from(declared) > limit {
        return Err(GatewayError::new(
            Code::ResourceExhausted,
            format!("request message of {declared} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    match body[0] {
        FLAG_DATA => {}
        FLAG_COMPRESSED => {
            return Err(GatewayError::new(
                Code::Unimplemented,
                "compressed grpc-web messages are not supported",
            ));
        }
        flag => {
            return Err(GatewayError::invalid_argument(format!(
                "grpc-web request frame has flag {flag:#04x}; a request carries one data frame"
            )));
        }
    }
    let received = body.len() - PREFIX;
    if received as u64 != u64::from(declared) {
        return Err(GatewayError::invalid_argument(format!(
            "grpc-web frame length prefix says {declared} bytes but {received} follow it; a request carries exactly one message"
        )));
    }
    Ok(body)
}

/// A data frame around an encoded message.
pub(crate) fn data_frame(message: &[u8]) -> Result<Bytes, GatewayError> {
    let len = u32::try_from(message.len())
        .map_err(|_| GatewayError::internal("response message longer than 4 GiB"))?;
    let mut frame = BytesMut::with_capacity(PREFIX + message.len());
    frame.put_u8(FLAG_DATA);
    frame.put_u32(len);
    frame.put_slice(message);
    Ok(frame.freeze())
}

/// The trailer frame that ends every answer with a body: `grpc-status`, `grpc-message`,
/// then `metadata` (the backend's trailers; values are visible ASCII already, `-bin`
/// ones base64), each as `name:value\r\n`.
pub(crate) fn trailer_frame(code: Code, message: &str, metadata: Option<&HeaderMap>) -> Bytes {
    let mut block = Vec::with_capacity(64);
    block.extend_from_slice(b"grpc-status:");
    block.extend_from_slice((code as i32).to_string().as_bytes());
    block.extend_from_slice(b"\r\ngrpc-message:");
    block.extend_from_slice(grpc_message_value(message).as_bytes());
    block.extend_from_slice(b"\r\n");
    for (name, value) in metadata.into_iter().flatten() {
        if is_status_name(name.as_str()) {
            continue;
        }
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = BytesMut::with_capacity(PREFIX + block.len());
    frame.put_u8(FLAG_TRAILER);
    // A header block is far below 4 GiB: backend trailers are bounded by HTTP/2.
    frame.put_u32(u32::try_from(block.len()).unwrap_or(u32::MAX));
    frame.put_slice(&block);
    frame.freeze()
}

fn is_status_name(name: &str) -> bool {
    matches!(name, "grpc-status" | "grpc-message")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, len: u32, payload: &[u8]) -> Bytes {
        let mut out = vec![flag];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        Bytes::from(out)
    }

    #[test]
    fn content_types() {
        let mut headers = HeaderMap::new();
        for (value, mode) in [
            ("application/grpc-web", Mode::Binary),
            ("application/grpc-web+proto", Mode::Binary),
            ("Application/GRPC-Web-Text", Mode::Text),
            ("application/grpc-web-text+proto; charset=utf-8", Mode::Text),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(Mode::of_request(&headers).unwrap(), mode, "{value}");
            assert_eq!(Mode::of(&headers), Some(mode), "{value}");
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc-web+json"),
        );
        assert_eq!(Mode::of(&headers), Some(Mode::Binary));
        let error = Mode::of_request(&headers).unwrap_err();
        assert_eq!(error.http_status().as_u16(), 415);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(Mode::of(&headers), None);
    }

    #[test]
    fn text_bodies_in_several_padded_chunks() {
        let whole = b"\x00\x00\x00\x00\x03abc";
        let chunked = format!(
            "{}{}",
            STANDARD.encode(&whole[..4]),
            STANDARD.encode(&whole[4..])
        );
        assert!(chunked.matches('=').count() >= 2, "{chunked}");
        assert_eq!(&decode_text(chunked.as_bytes()).unwrap()[..], whole);
        assert_eq!(
            &decode_text(STANDARD.encode(whole).as_bytes()).unwrap()[..],
            whole
        );
        assert!(decode_text(b"AAA").is_err());
        assert!(decode_text(b"A=AA").is_err());
        assert!(decode_text(b"!!!!").is_err());
        assert!(decode_text(b"").unwrap().is_empty());
    }

    #[test]
    fn one_frame_exactly_as_long_as_its_prefix() {
        let good = frame(0, 3, b"abc");
        assert_eq!(single_message(good.clone(), 10).unwrap(), good);
        // Hostile prefixes: far larger than the limit, larger or smaller than the body.
        let huge = single_message(frame(0, u32::MAX, b"abc"), 10).unwrap_err();
        assert_eq!(huge.code, Code::ResourceExhausted);
        let long = single_message(frame(0, 9, b"abc"), 10).unwrap_err();
        assert_eq!(long.code, Code::InvalidArgument);
        let short = single_message(frame(0, 2, b"abc"), 10).unwrap_err();
        assert_eq!(short.code, Code::InvalidArgument);
        assert!(single_message(Bytes::from_static(b"\x00\x00"), 10).is_err());
        let compressed = single_message(frame(1, 3, b"abc"), 10).unwrap_err();
        assert_eq!(compressed.code, Code::Unimplemented);
        let trailer = single_message(frame(0x80, 3, b"abc"), 10).unwrap_err();
        assert_eq!(trailer.code, Code::InvalidArgument);
    }

    #[test]
    fn trailer_frame_layout() {
        let mut metadata = HeaderMap::new();
        metadata.insert("x-served-by", HeaderValue::from_static("catalog-1"));
        metadata.insert("grpc-status", HeaderValue::from_static("0"));
        let frame = trailer_frame(Code::NotFound, "no 50% off", Some(&metadata));
        assert_eq!(frame[0], 0x80);
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len, frame.len() - 5);
        assert_eq!(
            std::str::from_utf8(&frame[5..]).unwrap(),
            "grpc-status:5\r\ngrpc-message:no 50%25 off\r\nx-served-by:catalog-1\r\n"
        );
        let data = data_frame(b"xy").unwrap();
        assert_eq!(&data[..], b"\x00\x00\x00\x00\x02xy");
    }
}
