//! Unary calls as one framed body. The request message is encoded with its 5-byte gRPC
//! prefix into one buffer and sent as a body of known size, so HEADERS and DATA (with
//! END_STREAM) leave in one write and no streaming body has to be driven; the response
//! body is collected and its one message returned as bytes (the caller transcodes it).
//! Statuses, trailers-only responses and metadata follow what tonic's client does, so
//! callers see the same results.

use super::connection::Connection;
use super::link::{RequestBody, ResponseBody};
use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::DynamicMessage;
use std::time::Duration;
use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status};

/// tonic's default limit for a received message.
pub(super) const MAX_RESPONSE_MESSAGE: usize = 4 * 1024 * 1024;
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub(super) const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
/// Metadata names that belong to the protocol (tonic strips them from requests too).
const RESERVED: [HeaderName; 3] = [
    GRPC_STATUS,
    GRPC_MESSAGE,
    HeaderName::from_static("grpc-message-type"),
];

/// An encoded request message behind room for its gRPC prefix: write the message after
/// `FRAME_PREFIX` placeholder bytes, then `finish_frame`.
pub(crate) const FRAME_PREFIX: [u8; 5] = [0; 5];

/// Fills in the gRPC prefix of a buffer begun with `FRAME_PREFIX` (uncompressed).
pub(crate) fn finish_frame(mut buf: Vec<u8>) -> Result<Bytes, Status> {
    finish_frame_at(&mut buf, 0)?;
    Ok(Bytes::from(buf))
}

/// Fills in the prefix of the last message in `buf`, begun at `start` with
/// `FRAME_PREFIX` (uncompressed): several framed messages can share one buffer.
pub(crate) fn finish_frame_at(buf: &mut [u8], start: usize) -> Result<(), Status> {
    let len = buf.len().saturating_sub(start + FRAME_PREFIX.len());
    let prefix = u32::try_from(len)
        .map_err(|_| Status::internal(format!("request message too large: {len} bytes")))?;
    buf[start + 1..start + FRAME_PREFIX.len()].copy_from_slice(&prefix.to_be_bytes());
    Ok(())
}

/// `message` with the gRPC length prefix (uncompressed), ready to send (and resend).
pub(crate) fn frame(message: &DynamicMessage) -> Result<Bytes, Status> {
    let len = message.encoded_len();
    let prefix = u32::try_from(len)
        .map_err(|_| Status::internal(format!("request message too large: {len} bytes")))?;
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(prefix);
    message
        .encode(&mut buf)
        .map_err(|e| Status::internal(format!("cannot encode request: {e}")))?;
    Ok(buf.freeze())
}

/// A failed unary call; `unsent` gives the request metadata back when the request never
/// left the gateway (no connection), so the call can be tried on another endpoint.
#[derive(Debug)]
pub(crate) struct CallError {
    pub status: Status,
    pub unsent: Option<HeaderMap>,
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        Self {
            status,
            unsent: None,
        }
    }
}

/// One unary call on `connection`: `timeout` travels as `grpc-timeout` (the caller
/// enforces it). The response carries headers and trailers as metadata, like tonic's.
pub(crate) async fn call(
    connection: &Connection,
    path: http::uri::PathAndQuery,
    mut metadata: HeaderMap,
    framed: Bytes,
    timeout: Duration,
) -> Result<Response<Bytes>, CallError> {
    for name in RESERVED {
        metadata.remove(name);
    }
    metadata.insert(header::TE, HeaderValue::from_static("trailers"));
    metadata.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    metadata.insert(GRPC_TIMEOUT, grpc_timeout(timeout));
    let mut request = Request::new(RequestBody::Message(framed));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = connection.uri(path)?;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = metadata;

    let response = connection.try_send(request).await.map_err(|e| CallError {
        status: e.status,
        unsent: e.unsent.map(|request| request.into_parts().0.headers),
    })?;
    Ok(read_response(response).await?)
}

/// The one message of a unary response, or the status it ended with.
async fn read_response(response: http::Response<ResponseBody>) -> Result<Response<Bytes>, Status> {
    let (parts, body) = response.into_parts();
    let headers = parts.headers;
    if let Some(encoding) = headers.get(GRPC_ENCODING)
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    // Trailers-only: the status is in the headers (its metadata too) and there is no message.
    if let Some(code) = status_code(&headers) {
        return Err(match code {
            Code::Ok => Status::internal("Missing response message."),
            _ => status_from(headers),
        });
    }

    let (data, trailers) = collect(body).await?;
    let message = match message_bytes(data) {
        Ok(Some(message)) => message,
        Ok(None) => {
            return Err(match trailer_error(trailers, parts.status) {
                Some(status) => with_metadata(status, headers),
                None => Status::internal("Missing response message."),
            });
        }
        Err(status) => return Err(with_metadata(status, headers)),
    };
    let mut metadata = headers;
    let mut extensions = tonic::Extensions::default();
    match trailers {
        Some(trailers) => {
            if status_code(&trailers) != Some(Code::Ok) {
                let status = trailer_error(Some(trailers), parts.status)
                    .unwrap_or_else(|| Status::unknown("invalid grpc-status trailer"));
                return Err(status);
            }
            // Callers that keep headers and trailers apart (gRPC-Web) find the trailers
            // here; the common answer has none besides the status, and no copy is made.
            if trailers
                .keys()
                .any(|name| *name != GRPC_STATUS && *name != GRPC_MESSAGE)
            {
                extensions.insert(Trailers(trailers.clone()));
            }
            metadata.extend(trailers);
        }
        None => {
            if let Some(status) = trailer_error(None, parts.status) {
                return Err(status);
            }
        }
    }
    Ok(Response::from_parts(
        MetadataMap::from_headers(metadata),
        message,
        extensions,
    ))
}

/// The trailers of a unary answer, when they carry more than its status; its metadata
/// holds them too, after the headers.
#[derive(Clone, Debug)]
pub(crate) struct Trailers(pub HeaderMap);

/// The whole response body (one chunk in the common case: no copy) and its trailers.
async fn collect(mut body: ResponseBody) -> Result<(Bytes, Option<HeaderMap>), Status> {
    let mut data = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let cause = format!("reading the response failed: {e}");
            super::connection::transport_status(e, cause)
        })?;
        match frame.into_data() {
            Ok(chunk) if data.is_empty() && joined.is_none() => data = chunk,
            Ok(chunk) => {
                let buf = joined.get_or_insert_with(|| BytesMut::from(&data[..]));
                if buf.len() + chunk.len() > MAX_RESPONSE_MESSAGE + 5 {
                    return Err(too_large(buf.len() + chunk.len()));
                }
                buf.put(chunk);
            }
            Err(frame) => {
                if let Ok(map) = frame.into_trailers() {
                    match &mut trailers {
                        Some(existing) => existing.extend(map),
                        None => trailers = Some(map),
                    }
                }
            }
        }
    }
    Ok((joined.map(BytesMut::freeze).unwrap_or(data), trailers))
}

/// The first message of a response body, encoded; `None` when there is none.
fn message_bytes(mut data: Bytes) -> Result<Option<Bytes>, Status> {
    if data.is_empty() {
        return Ok(None);
    }
    match framed_len(&data)? {
        Some(len) if len <= data.len() => {
            data.truncate(len);
            data.advance(FRAME_PREFIX.len());
            Ok(Some(data))
        }
        _ => Err(Status::internal("Unexpected EOF decoding stream.")),
    }
}

/// The length of the framed message at the start of `buf` (prefix included), once its
/// prefix is there. Compressed messages are refused (no `grpc-encoding` is accepted),
/// and so are messages larger than tonic's default limit.
pub(super) fn framed_len(buf: &[u8]) -> Result<Option<usize>, Status> {
    let Some(prefix) = buf.first_chunk::<5>() else {
        return Ok(None);
    };
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1)"
            )));
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > MAX_RESPONSE_MESSAGE {
        return Err(too_large(len));
    }
    Ok(Some(prefix.len() + len))
}

fn too_large(len: usize) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {len} bytes, the limit is: {MAX_RESPONSE_MESSAGE} bytes"
    ))
}

/// The error a response ends with: its `grpc-status` if not OK, else one inferred from
/// the HTTP status when `grpc-status` is missing (tonic's table).
pub(super) fn trailer_error(trailers: Option<HeaderMap>, http: StatusCode) -> Option<Status> {
    if let Some(trailers) = trailers
        && let Some(code) = status_code(&trailers)
    {
        return (code != Code::Ok).then(|| status_from(trailers));
    }
    let code = match http {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        StatusCode::OK => {
            return Some(Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status (possible truncation by a proxy or load balancer)",
            ));
        }
        _ => Code::Unknown,
    };
    Some(Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            http.as_u16()
        ),
    ))
}

pub(super) fn status_code(map: &HeaderMap) -> Option<Code> {
    map.get(GRPC_STATUS).map(|v| Code::from_bytes(v.as_bytes()))
}

/// A status from `grpc-status`, `grpc-message` and `grpc-status-details-bin`; the other
/// entries become its metadata. Unlike `Status::from_header_map`, bad base64 in the
/// details does not panic: the details are dropped.
pub(super) fn status_from(mut map: HeaderMap) -> Status {
    let code = status_code(&map).unwrap_or(Code::Unknown);
    // Only the gateway marks its own statuses; a backend cannot pass for it.
    map.remove(super::status::LOCAL_MARK);
    map.remove(GRPC_STATUS);
    let (code, message) = match map.remove(GRPC_MESSAGE) {
        Some(value) => match percent_encoding::percent_decode(value.as_bytes()).decode_utf8() {
            Ok(message) => (code, message.into_owned()),
            Err(e) => (
                Code::Unknown,
                format!("Error deserializing status message header: {e}"),
            ),
        },
        None => (code, String::new()),
    };
    let details = map
        .remove(GRPC_STATUS_DETAILS)
        .and_then(|value| DETAILS_BASE64.decode(value.as_bytes()).ok())
        .map(Bytes::from)
        .unwrap_or_default();
    Status::with_details_and_metadata(code, message, details, MetadataMap::from_headers(map))
}

/// tonic adds the response headers to a status that ends a body without a message.
fn with_metadata(mut status: Status, mut headers: HeaderMap) -> Status {
    headers.remove(super::status::LOCAL_MARK);
    status.metadata_mut().as_mut().extend(headers);
    status
}

/// Base64 as gRPC sends it: standard alphabet, padding optional.
const DETAILS_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// `grpc-timeout`: the most precise unit whose value fits in 8 digits (as tonic writes it).
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let secs = u128::from(timeout.as_secs());
    let (value, unit) = [
        (timeout.as_nanos(), b'n'),
        (timeout.as_micros(), b'u'),
        (timeout.as_millis(), b'm'),
        (secs, b'S'),
        (secs / 60, b'M'),
    ]
    .into_iter()
    .find(|(value, _)| *value <= MAX)
    .unwrap_or(((secs / 3600).min(MAX), b'H'));
    // At most 8 digits and the unit.
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(value).as_bytes();
    let mut text = [0u8; 9];
    text[..digits.len()].copy_from_slice(digits);
    text[digits.len()] = unit;
    let mut value = HeaderValue::from_bytes(&text[..=digits.len()])
        .unwrap_or_else(|_| HeaderValue::from_static("99999999H"));
    // What is left of the deadline differs on every call: HPACK "never indexed", so it
    // does not churn the connection's header table (see `telemetry::trace::trace_header`).
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(grpc_timeout(Duration::from_millis(500)), "500000u");
        assert_eq!(grpc_timeout(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout(Duration::from_secs(3600)), "3600000m");
        assert_eq!(grpc_timeout(Duration::from_nanos(7)), "7n");
        assert_eq!(grpc_timeout(Duration::from_secs(u64::MAX)), "99999999H");
    }

    #[test]
    fn status_from_trailers() {
        let mut map = HeaderMap::new();
        map.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        map.insert(GRPC_MESSAGE, HeaderValue::from_static("no%20such"));
        map.insert(GRPC_STATUS_DETAILS, HeaderValue::from_static("AQID"));
        map.insert("x-extra", HeaderValue::from_static("1"));
        let status = trailer_error(Some(map), StatusCode::OK).unwrap();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no such");
        assert_eq!(status.details(), &[1, 2, 3][..]);
        assert_eq!(status.metadata().get("x-extra").unwrap(), "1");
        assert!(status.metadata().get("grpc-status").is_none());

        let mut bad = HeaderMap::new();
        bad.insert(GRPC_STATUS, HeaderValue::from_static("13"));
        bad.insert(GRPC_STATUS_DETAILS, HeaderValue::from_static("!!"));
        assert!(
            status_from(bad).details().is_empty(),
            "bad base64: no panic"
        );
    }

    #[test]
    fn missing_status_follows_http() {
        let status = trailer_error(None, StatusCode::SERVICE_UNAVAILABLE).unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            trailer_error(None, StatusCode::OK).unwrap().code(),
            Code::Unknown
        );
    }
}
