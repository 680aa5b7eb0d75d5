//! HTTP ↔ AMQP for one route (contract §5): the body (as sent, or JSON transcoded to
//! protobuf), path and query parameters as `x-path-*` / `x-query-*` headers and the trace
//! id go out as one message. The reply comes back verbatim — or as JSON for a typed
//! route — with its `x-status` as the HTTP status; a publish route answers 202 `{}` once
//! the broker confirmed the message.

use super::body::read_limited;
use crate::error::GatewayError;
use crate::middleware::Identity;
use crate::middleware::deadline::Deadline;
use crate::routing::RouteTable;
use crate::routing::amqp::AmqpRoute;
use crate::telemetry::spans::amqp_span;
use crate::telemetry::trace::TraceContext;
use crate::transcode::parse_query;
use crate::upstream::amqp::message::{self, JSON, PROTOBUF, text};
use crate::upstream::amqp::{Message, Reply};
use crate::upstream::metadata::gateway_headers;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use std::collections::BTreeMap;

pub(super) async fn call(
    table: &RouteTable,
    route: &AmqpRoute,
    request: Request<Body>,
    captures: Vec<String>,
    trace: &TraceContext,
    deadline: Deadline,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    let body = if route.reads_body {
        read_limited(body, &parts.headers, table.limits.max_body.0, deadline).await?
    } else {
        Bytes::new()
    };
    let (payload, content_type) = encode_body(table, route, &parts.headers, body)?;
    // The message's `expiration` is the request's whole budget (the route timeout, or
    // the client's shorter one); the wait for the broker ends with the request deadline.
    let timeout = deadline.budget;
    let routing_key = route
        .routing_key
        .resolve(&captures)
        .map_err(GatewayError::invalid_argument)?;
    let mut headers = message_headers(route, &parts, &captures, trace)?;
    let span = trace.backend(|| {
        amqp_span(
            &route.upstream.name,
            route.exchange.as_str(),
            routing_key.as_str(),
            route.reply,
        )
    });
    if let Some(traceparent) = span.own_traceparent() {
        headers.insert("traceparent".into(), text(traceparent.as_bytes()));
    }
    let properties = message::properties(headers, content_type, route.persistent);
    let message = Message {
        exchange: &route.exchange,
        routing_key,
        payload: &payload,
        properties,
    };
    // The upstream's timer ends the wait at the request's deadline (one timer per call);
    // its DEADLINE_EXCEEDED becomes the request's own (whose origin may be the client).
    let in_time = |error: GatewayError, what: &str| match error.code {
        tonic::Code::DeadlineExceeded => deadline.exceeded(what),
        _ => error,
    };
    if !route.reply {
        // Boxed: a publish waits for the broker's confirm through lapin, whose future is
        // larger than the whole request-reply path; inline, every RPC's state would be
        // that large too.
        let published = Box::pin(route.upstream.publish(message, deadline.instant()))
            .await
            .map_err(|e| in_time(e, "the broker did not confirm in time"));
        span.finish(&published);
        published?;
        let mut response = Response::new(Body::from("{}"));
        *response.status_mut() = StatusCode::ACCEPTED;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
        return Ok(response);
    }
    let reply = route
        .upstream
        .call_until(message, deadline.instant(), timeout)
        .await
        .map_err(|e| in_time(e, "no reply in time"));
    span.finish(&reply);
    reply_response(table, route, reply?)
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
        let payload = message::typed_payload(&table.json, request_type, &body)?;
        return Ok((payload.into(), Some(PROTOBUF.into())));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        Some(value) => {
            let text = value
                .to_str()
                .ok()
                .and_then(|t| ShortString::try_new(t).ok());
            let text =
                text.ok_or_else(|| GatewayError::invalid_argument("invalid Content-Type"))?;
            // Workers decode protobuf by content type: on a route that declares no
            // `request_type` the client must not make its bytes pass for a protobuf message.
            if message::is_protobuf_type(text.as_str()) {
                return Err(GatewayError::invalid_argument(
                    "this route takes no protobuf bodies (it declares no request_type)",
                )
                .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE));
            }
            Some(text)
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
    let mut headers =
        message::header_table(gateway_headers(trace, parts.extensions.get::<Identity>()));
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
    let status = message::reply_status(&reply)?;
    let (body, content_type) =
        message::reply_body(&table.json, route.response_type.as_ref(), reply)?;
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Some(value) = content_type.and_then(|c| HeaderValue::from_str(c.as_str()).ok()) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
