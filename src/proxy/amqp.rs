//! HTTP ↔ AMQP for one route (contract §5): the body (as sent, or JSON transcoded to
//! protobuf), path and query parameters as `x-path-*` / `x-query-*` headers and the trace
//! id go out as one message. The reply comes back verbatim — or as JSON for a typed
//! route — with its `x-status` as the HTTP status; a publish route answers 202 `{}` once
//! the broker confirmed the message.

use super::body::read_limited;
use crate::error::GatewayError;
use crate::middleware::Identity;
use crate::middleware::deadline::effective_timeout;
use crate::routing::RouteTable;
use crate::routing::amqp::AmqpRoute;
use crate::telemetry::trace::TraceContext;
use crate::transcode::parse_query;
use crate::upstream::amqp::{Message, Reply};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use prost::Message as _;
use prost_reflect::DynamicMessage;
use std::collections::BTreeMap;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";
/// Delivery mode of `persistent: true` routes.
const PERSISTENT: u8 = 2;

pub async fn call(
    table: &RouteTable,
    route: &AmqpRoute,
    request: Request<Body>,
    captures: Vec<String>,
    trace: &TraceContext,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    let body = if route.reads_body {
        read_limited(body, &parts.headers, table.limits.max_body.0, route.timeout).await?
    } else {
        Bytes::new()
    };
    let (payload, content_type) = encode_body(table, route, &parts.headers, body)?;
    let timeout = effective_timeout(route.timeout, &parts.headers);
    let routing_key = route
        .routing_key
        .resolve(&captures)
        .map_err(GatewayError::invalid_argument)?;
    let mut properties =
        BasicProperties::default().with_headers(message_headers(route, &parts, &captures, trace)?);
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type);
    }
    if route.persistent {
        properties = properties.with_delivery_mode(PERSISTENT);
    }
    let message = Message {
        exchange: &route.exchange,
        routing_key,
        payload: &payload,
        properties,
    };
    if !route.reply {
        route.upstream.publish(message, timeout).await?;
        let mut response = Response::new(Body::from("{}"));
        *response.status_mut() = StatusCode::ACCEPTED;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        return Ok(response);
    }
    let reply = route.upstream.call(message, timeout).await?;
    reply_response(table, route, reply)
}

/// The payload and its content type: JSON transcoded to protobuf for a typed route,
/// else the body as sent (content type as sent; JSON when the client named none).
fn encode_body(
    table: &RouteTable,
    route: &AmqpRoute,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<(Bytes, Option<ShortString>), GatewayError> {
    if let Some(request_type) = &route.request_type {
        let message = table.json.decode(request_type, &body)?;
        return Ok((message.encode_to_vec().into(), Some(PROTOBUF.into())));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(value) => {
            let text = value
                .to_str()
                .ok()
                .and_then(|t| ShortString::try_new(t).ok());
            Some(text.ok_or_else(|| GatewayError::invalid_argument("invalid Content-Type"))?)
        }
        None if route.reads_body => Some(JSON.into()),
        None => None,
    };
    Ok((body, content_type))
}

/// `x-trace-id`, `traceparent`, the claims the middleware verified (`forward_claims`, e.g.
/// `x-user-id`), `x-path-<var>` and `x-query-<name>` (a repeated query parameter becomes
/// an array of strings). Client headers are not copied, so a client cannot set these.
fn message_headers(
    route: &AmqpRoute,
    parts: &http::request::Parts,
    captures: &[String],
    trace: &TraceContext,
) -> Result<FieldTable, GatewayError> {
    let text = |bytes: &[u8]| AMQPValue::LongString(LongString::from(bytes));
    let mut headers = FieldTable::default();
    headers.insert("x-trace-id".into(), text(trace.trace_id.as_bytes()));
    headers.insert("traceparent".into(), text(trace.traceparent.as_bytes()));
    if let Some(identity) = parts.extensions.get::<Identity>() {
        for (name, value) in &identity.forwarded {
            headers.insert(name.as_str().into(), text(value.as_bytes()));
        }
    }
    for (name, value) in route.path_headers.iter().zip(captures) {
        headers.insert(name.clone(), text(value.as_bytes()));
    }
    if let Some(query) = parts.uri.query() {
        let mut params: BTreeMap<_, Vec<_>> = BTreeMap::new();
        for (name, value) in parse_query(query)? {
            params.entry(name).or_default().push(value);
        }
        for (name, mut values) in params {
            let key = ShortString::try_new(format!("x-query-{name}")).map_err(|_| {
                GatewayError::invalid_argument(format!("query parameter name too long: `{name}`"))
            })?;
            let value = if values.len() == 1 {
                text(values.remove(0).as_bytes())
            } else {
                let items: Vec<_> = values.iter().map(|v| text(v.as_bytes())).collect();
                AMQPValue::FieldArray(FieldArray::from(items))
            };
            headers.insert(key, value);
        }
    }
    Ok(headers)
}

/// The HTTP response for a reply: status from `x-status`, body and content type as the
/// worker sent them — a protobuf reply of a typed route as JSON.
fn reply_response(
    table: &RouteTable,
    route: &AmqpRoute,
    reply: Reply,
) -> Result<Response<Body>, GatewayError> {
    let status = reply_status(&reply)?;
    let content_type = reply.properties.content_type().as_ref().map(|c| c.as_str());
    let (body, content_type) = match (&route.response_type, content_type) {
        (Some(response_type), None | Some(PROTOBUF)) => {
            let message = DynamicMessage::decode(response_type.clone(), reply.body.as_slice())
                .map_err(|e| {
                    GatewayError::internal(format!(
                        "the reply is not a valid `{}`: {e}",
                        response_type.full_name()
                    ))
                })?;
            (table.json.encode(&message)?, Some(JSON))
        }
        _ => (reply.body, content_type),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(c).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// The reply header `x-status` (an integer or a numeric string), 200 without one.
fn reply_status(reply: &Reply) -> Result<StatusCode, GatewayError> {
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
}
