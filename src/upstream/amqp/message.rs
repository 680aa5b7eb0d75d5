//! What the gateway's AMQP messages look like, whichever front door they come through
//! (an HTTP route in `proxy::amqp`, a WebSocket frame in `ws::amqp`): the payload of a
//! typed route (JSON → protobuf), the header table, the properties a route decides, and
//! how a reply reads back (`x-status`, protobuf → JSON).

use super::Reply;
use crate::error::GatewayError;
use crate::transcode::{JsonCodec, MessageType};
use http::{HeaderName, HeaderValue, StatusCode};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

pub(crate) const PROTOBUF: &str = "application/x-protobuf";
pub(crate) const JSON: &str = "application/json";
/// Delivery mode of `persistent: true` routes.
const PERSISTENT: u8 = 2;

/// A JSON request of a typed route as protobuf bytes; bad JSON is INVALID_ARGUMENT and
/// never reaches the broker.
pub(crate) fn typed_payload(
    json: &JsonCodec,
    request_type: &MessageType,
    body: &[u8],
) -> Result<Vec<u8>, GatewayError> {
    let mut payload = Vec::with_capacity(body.len());
    json.json_to_proto(request_type, body, &mut payload)?;
    Ok(payload)
}

/// Whether a content type announces protobuf (or gRPC) bytes: `application/x-protobuf`,
/// `application/protobuf`, `application/vnd.google.protobuf`, `application/grpc…`, with
/// any parameters and in any case.
pub(crate) fn is_protobuf_type(content_type: &str) -> bool {
    const APPLICATION: &str = "application/";
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    // Compared in place: this runs for every AMQP request with a body.
    let Some(subtype) = essence
        .get(..APPLICATION.len())
        .filter(|prefix| prefix.eq_ignore_ascii_case(APPLICATION))
        .map(|_| &essence.as_bytes()[APPLICATION.len()..])
    else {
        return false;
    };
    subtype
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"grpc"))
        || subtype
            .windows(8)
            .any(|window| window.eq_ignore_ascii_case(b"protobuf"))
}

/// An AMQP header value carrying text (or bytes) as a long string.
pub(crate) fn text(bytes: &[u8]) -> AMQPValue {
    AMQPValue::LongString(LongString::from(bytes))
}

/// Headers as an AMQP header table, every value a long string: the trace ids and the
/// claims the middleware forwards (`forward_claims`).
pub(crate) fn header_table<'a>(
    headers: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(name.as_str().into(), text(value.as_bytes()));
    }
    table
}

/// The properties a route decides: headers, content type, delivery mode. The upstream
/// adds what request-reply needs (`reply_to`, `correlation_id`, `expiration`).
pub(crate) fn properties(
    headers: FieldTable,
    content_type: Option<ShortString>,
    persistent: bool,
) -> BasicProperties {
    let mut properties = BasicProperties::default().with_headers(headers);
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type);
    }
    if persistent {
        properties = properties.with_delivery_mode(PERSISTENT);
    }
    properties
}

/// The reply body for the client and its content type: a protobuf reply (content type
/// `application/x-protobuf` or none) of a typed route as JSON; anything else verbatim
/// (e.g. a JSON error from the worker).
pub(crate) fn reply_body(
    json: &JsonCodec,
    response_type: Option<&MessageType>,
    reply: Reply,
) -> Result<(Vec<u8>, Option<ShortString>), GatewayError> {
    let content_type = reply.properties.content_type().clone();
    match (
        response_type,
        content_type.as_ref().map(ShortString::as_str),
    ) {
        (Some(response_type), None | Some(PROTOBUF)) => Ok((
            json.proto_to_json(response_type, &reply.body)?,
            Some(JSON.into()),
        )),
        _ => Ok((reply.body, content_type)),
    }
}

/// The reply header `x-status` (an integer or a numeric string), 200 without one.
pub(crate) fn reply_status(reply: &Reply) -> Result<StatusCode, GatewayError> {
    let Some(value) = reply
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-status"))
    else {
        return Ok(StatusCode::OK);
    };
    status_from(value).ok_or_else(|| {
        GatewayError::internal(format!(
            "the reply header x-status is not an HTTP status: {value:?}"
        ))
    })
}

fn status_from(value: &AMQPValue) -> Option<StatusCode> {
    let number: i64 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    };
    u16::try_from(number)
        .ok()
        .filter(|n| (200..=599).contains(n))
        .and_then(|n| StatusCode::from_u16(n).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protobuf_content_types_are_recognised() {
        for yes in [
            "application/x-protobuf",
            "Application/X-Protobuf; proto=shop.v1.Quote",
            "application/protobuf",
            "application/vnd.google.protobuf",
            "application/grpc+proto",
        ] {
            assert!(is_protobuf_type(yes), "{yes}");
        }
        for no in [
            "application/json",
            "text/plain",
            "application/octet-stream",
            "text/x-protobuf",
            "application/grp",
            "applicatio",
            "",
            "é",
            "applicationé/protobuf",
        ] {
            assert!(!is_protobuf_type(no), "{no}");
        }
    }

    #[test]
    fn x_status_takes_integers_and_numeric_strings() {
        assert_eq!(
            status_from(&AMQPValue::LongInt(404)),
            Some(StatusCode::NOT_FOUND)
        );
        assert_eq!(
            status_from(&AMQPValue::ShortUInt(201)),
            Some(StatusCode::CREATED)
        );
        assert_eq!(
            status_from(&AMQPValue::LongLongInt(503)),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        let text = AMQPValue::LongString(" 400 ".into());
        assert_eq!(status_from(&text), Some(StatusCode::BAD_REQUEST));
        for bad in [
            AMQPValue::LongString("teapot".into()),
            AMQPValue::LongInt(99),
            AMQPValue::LongInt(600),
            AMQPValue::LongLongInt(-1),
            AMQPValue::Boolean(true),
        ] {
            assert_eq!(status_from(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_tables_carry_text_values() {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-trace-id", HeaderValue::from_static("t-1"));
        headers.insert("x-user-id", HeaderValue::from_static("ann"));
        let table = header_table(&headers);
        assert_eq!(table.inner().get("x-trace-id"), Some(&text(b"t-1")));
        assert_eq!(table.inner().get("x-user-id"), Some(&text(b"ann")));
    }
}
