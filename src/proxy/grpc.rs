//! HTTP/JSON → gRPC: build the request message from path, query and body, call the
//! backend with a deadline, and turn the answer (or the stream) back into HTTP/JSON.

use super::body::read_limited;
use crate::error::GatewayError;
use crate::middleware::Identity;
use crate::middleware::deadline::Deadline;
use crate::routing::{BodyRule, GrpcRoute, RouteTable};
use crate::telemetry::spans::{grpc_code, grpc_span};
use crate::telemetry::trace::{BackendSpan, TraceContext};
use crate::transcode::MessageType;
use crate::transcode::set_field_from_str;
use crate::upstream::grpc::status::{append_metadata_headers, status_to_error};
use crate::upstream::grpc::stream::ResponseMessages;
use crate::upstream::grpc::{Call, unary};
use crate::upstream::metadata::{ClientMetadata, grpc_metadata};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use prost_reflect::{DynamicMessage, Kind, Value};
use std::sync::Arc;
use tonic::metadata::MetadataMap;

const JSON: HeaderValue = HeaderValue::from_static("application/json");

static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

pub(super) async fn call(
    table: &Arc<RouteTable>,
    route: &GrpcRoute,
    request: Request<Body>,
    captures: Vec<String>,
    trace: &TraceContext,
    deadline: Deadline,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    // A bad `?fields=` is refused before the backend is called.
    let partial = partial_response_mask(table, route, &parts)?;
    let framed = build_request(table, route, &parts, body, captures, deadline).await?;
    let mut span = trace.backend(|| grpc_span(&route.upstream.name, &route.method));
    let mut metadata = grpc_metadata(
        &parts.headers,
        trace,
        parts.extensions.get::<Identity>(),
        ClientMetadata {
            grpc_metadata: true,
            authorization: route.forward_authorization,
            plain_headers: false,
        },
    )?;
    if let Some(traceparent) = span.own_traceparent() {
        metadata.insert(TRACEPARENT.clone(), traceparent.clone());
    }
    // What is left after reading the body: one budget for the whole request.
    let timeout = deadline.remaining();
    let call = Call {
        path: route.path.clone(),
        metadata: MetadataMap::from_headers(metadata),
        framed,
        timeout,
        client_deadline: deadline.client_set,
        idempotent: route.idempotent,
    };

    if route.server_streaming {
        // Boxed: a stream's opening is a large future, and held inline it would make every
        // unary call's future as large (copied whole where it moves).
        return Box::pin(server_stream(table, route, &parts, call, span, deadline)).await;
    }
    let response = route.upstream.unary(call).await;
    span.attribute(|| grpc_code(&response));
    span.finish(&response);
    let response = response.map_err(|status| upstream_error(table, status, deadline))?;
    let (metadata, message, _) = response.into_parts();
    let mut body = encode_response(table, route, &message)?;
    if let Some(mask) = partial {
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| GatewayError::internal(e.to_string()))?;
        body = serde_json::to_vec(&mask.apply(value))
            .map_err(|e| GatewayError::internal(e.to_string()))?;
    }
    let mut response = Response::new(Body::from(body));
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    append_metadata_headers(&metadata.into_headers(), response.headers_mut());
    Ok(response)
}

/// A backend's status as the client's error.
fn upstream_error(table: &RouteTable, status: tonic::Status, deadline: Deadline) -> GatewayError {
    let error = status_to_error(&status, &table.schema.pool, &table.json);
    // The client's own short deadline ran out: not the backend's failure.
    if deadline.client_set && error.code == tonic::Code::DeadlineExceeded {
        error.with_origin(crate::error::Origin::Client)
    } else {
        error
    }
}

/// A server-streaming call: NDJSON, or SSE when the client accepts `text/event-stream`.
async fn server_stream(
    table: &Arc<RouteTable>,
    route: &GrpcRoute,
    parts: &http::request::Parts,
    call: Call,
    mut span: BackendSpan<'_>,
    deadline: Deadline,
) -> Result<Response<Body>, GatewayError> {
    let upstream = &route.upstream;
    let sse = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    // The deadline covers opening the stream and its first message; after that the stream
    // lives as long as the backend and the client keep it open.
    let opened = upstream.open_server_stream(call);
    // The span covers opening the stream: the call is made, the rest is the client's.
    let opened = tokio::time::timeout_at(deadline.instant(), opened).await;
    if let Ok(result) = &opened {
        span.attribute(|| grpc_code(result));
    }
    let opened = match opened {
        Ok(result) => result.map_err(|status| upstream_error(table, status, deadline)),
        Err(_) => Err(deadline.exceeded(format!(
            "upstream `{}` did not answer within {:?}",
            upstream.name, deadline.budget
        ))),
    };
    span.finish(&opened);
    let (metadata, messages, first) = opened?;
    let framing = if sse { Framing::Sse } else { Framing::NdJson };
    let mut response = Response::new(Body::from_stream(stream_body(
        StreamWriter {
            table: table.clone(),
            output: route.output.clone(),
            framing,
        },
        first,
        messages,
    )));
    let headers = response.headers_mut();
    match framing {
        Framing::Sse => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        }
        Framing::NdJson => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
        }
    }
    append_metadata_headers(&metadata, headers);
    Ok(response)
}

/// The request message, framed for gRPC: straight from the JSON body when the body is the
/// whole message and nothing else sets fields (the byte-level transcoder), else through a
/// `DynamicMessage` built by `build_message`.
async fn build_request(
    table: &RouteTable,
    route: &GrpcRoute,
    parts: &http::request::Parts,
    body: Body,
    captures: Vec<String>,
    deadline: Deadline,
) -> Result<Bytes, GatewayError> {
    let framed = if matches!(route.body, BodyRule::Whole)
        && route.path_fields.is_empty()
        && parts.uri.query().is_none_or(str::is_empty)
    {
        let json = read_limited(body, &parts.headers, table.limits.max_body.0, deadline).await?;
        let mut framed = Vec::with_capacity(unary::FRAME_PREFIX.len() + json.len());
        framed.extend_from_slice(&unary::FRAME_PREFIX);
        table.json.json_to_proto(&route.input, &json, &mut framed)?;
        unary::finish_frame(framed)
    } else if let Some(framed) = path_only_frame(route, parts, &captures) {
        framed
    } else {
        unary::frame(&build_message(table, route, parts, body, captures, deadline).await?)
    };
    framed.map_err(|status| GatewayError::internal(status.message().to_owned()))
}

/// The framed request of a route whose message is only path variables bound to top-level
/// string fields (`GET /v1/products/{id}`), written as wire records: the bytes
/// `build_message` + `unary::frame` produce (fields in number order; a string variable is
/// never empty), without building a `DynamicMessage`. `None` for any other route.
fn path_only_frame(
    route: &GrpcRoute,
    parts: &http::request::Parts,
    captures: &[String],
) -> Option<Result<Bytes, tonic::Status>> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    if !matches!(route.body, BodyRule::None)
        || !parts.uri.query().is_none_or(str::is_empty)
        || route.path_fields.len() != captures.len()
    {
        return None;
    }
    let mut last_number = 0;
    let mut len = unary::FRAME_PREFIX.len();
    for (path, value) in route.path_fields.iter().zip(captures) {
        let [field] = &path.fields[..] else {
            return None;
        };
        if field.is_list() || !matches!(field.kind(), Kind::String) || value.is_empty() {
            return None;
        }
        // Number order, as a `DynamicMessage` encodes them.
        if field.number() <= last_number {
            return None;
        }
        last_number = field.number();
        len += key_len(field.number()) + encoded_len_varint(value.len() as u64) + value.len();
    }
    let mut framed = Vec::with_capacity(len);
    framed.extend_from_slice(&unary::FRAME_PREFIX);
    for (path, value) in route.path_fields.iter().zip(captures) {
        encode_key(path.last().number(), WireType::LengthDelimited, &mut framed);
        encode_varint(value.len() as u64, &mut framed);
        framed.extend_from_slice(value.as_bytes());
    }
    Some(unary::finish_frame(framed))
}

/// Path variables, query parameters and body → the request message.
async fn build_message(
    table: &RouteTable,
    route: &GrpcRoute,
    parts: &http::request::Parts,
    body: Body,
    captures: Vec<String>,
    deadline: Deadline,
) -> Result<DynamicMessage, GatewayError> {
    let input = route.method.input();
    let mut message = match &route.body {
        BodyRule::None => DynamicMessage::new(input.clone()),
        BodyRule::Whole => {
            let bytes =
                read_limited(body, &parts.headers, table.limits.max_body.0, deadline).await?;
            table.json.decode(&input, &bytes)?
        }
        BodyRule::Field(path) => {
            let bytes =
                read_limited(body, &parts.headers, table.limits.max_body.0, deadline).await?;
            let mut message = DynamicMessage::new(input.clone());
            let field = path.last();
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                let value = match field.kind().as_message() {
                    Some(desc) if !field.is_list() && !field.is_map() => {
                        Value::Message(table.json.decode(desc, &bytes)?)
                    }
                    _ => {
                        // Lists, maps and scalars: parse as the field inside its message.
                        crate::transcode::check_duplicate_keys(&bytes).map_err(|e| {
                            GatewayError::invalid_argument(format!("invalid JSON body: {e}"))
                        })?;
                        let json: serde_json::Value =
                            serde_json::from_slice(&bytes).map_err(|e| {
                                GatewayError::invalid_argument(format!("invalid JSON body: {e}"))
                            })?;
                        let wrapped = serde_json::json!({ field.json_name(): json });
                        table
                            .json
                            .decode_value(&input, wrapped)?
                            .get_field(field)
                            .into_owned()
                    }
                };
                message.set_field(field, value);
            }
            message
        }
    };
    for (path, value) in route.path_fields.iter().zip(captures) {
        set_field_from_str(&mut message, path, &value).map_err(GatewayError::invalid_argument)?;
    }
    if let Some(query) = parts.uri.query() {
        if route.partial_response {
            // `fields` selects what the client sees; it is not a request field.
            let rest: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split('=').next() != Some("fields"))
                .collect();
            route.query.apply(&input, &mut message, &rest.join("&"))?;
        } else {
            route.query.apply(&input, &mut message, query)?;
        }
    }
    Ok(message)
}

/// `partial_response: true`: the client's `?fields=` mask over the unary answer (streams
/// are sent whole), checked against the response type.
fn partial_response_mask(
    table: &RouteTable,
    route: &GrpcRoute,
    parts: &http::request::Parts,
) -> Result<Option<crate::compose::shape::Mask>, GatewayError> {
    use crate::compose::shape::{Mask, Shape};
    if !route.partial_response || route.server_streaming {
        return Ok(None);
    }
    let Some(query) = parts.uri.query() else {
        return Ok(None);
    };
    let query: Vec<(String, String)> = crate::transcode::parse_query(query)?
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let proto_names = table.config.json.use_proto_names;
    let mut shape = match &route.response_body {
        Some(path) => Shape::of_field(path.last()),
        None => Shape::Message(route.output.descriptor().clone()),
    };
    if let Some(fields) = &route.response_fields
        && let Ok(mask) = Mask::from_paths(fields.iter().map(String::as_str))
    {
        shape = shape.project(&mask);
    }
    crate::compose::execute::fields_mask(&query, &shape, proto_names)
}

/// The JSON body of a response: the message (transcoded from its bytes), its
/// `response_body` field, or the backend-for-frontend subset of its fields.
fn encode_response(
    table: &RouteTable,
    route: &GrpcRoute,
    encoded: &Bytes,
) -> Result<Vec<u8>, GatewayError> {
    if route.response_body.is_none() && route.response_fields.is_none() {
        return table.json.proto_to_json(&route.output, encoded);
    }
    let message = route.output.decode(encoded)?;
    if let Some(path) = &route.response_body {
        let field = path.last();
        // A singular message field: encode it directly.
        if !field.is_list()
            && !field.is_map()
            && let Value::Message(inner) = message.get_field(field).as_ref()
        {
            return table.json.encode(inner);
        }
        let mut whole = table.json.to_value(&message)?;
        let key = if table.config.json.use_proto_names {
            field.name()
        } else {
            field.json_name()
        };
        let value = whole
            .get_mut(key)
            .map(serde_json::Value::take)
            .unwrap_or(serde_json::Value::Null);
        return serde_json::to_vec(&value).map_err(|e| GatewayError::internal(e.to_string()));
    }
    // `response_fields`: the backend-for-frontend subset (paths checked at load).
    let mut whole = table.json.to_value(&message)?;
    if let Some(fields) = &route.response_fields {
        let mask = crate::compose::shape::Mask::from_paths(fields.iter().map(String::as_str))
            .map_err(GatewayError::internal)?;
        whole = mask.apply(whole);
    }
    serde_json::to_vec(&whole).map_err(|e| GatewayError::internal(e.to_string()))
}

#[derive(Clone, Copy)]
enum Framing {
    NdJson,
    Sse,
}

impl Framing {
    /// Before and after each message's JSON.
    fn around(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Framing::NdJson => (b"", b"\n"),
            Framing::Sse => (b"data: ", b"\n\n"),
        }
    }

    /// The in-band end of a stream that failed after it started (contract §5).
    fn error(self, error: &GatewayError, out: &mut Vec<u8>) {
        let status = error.to_json();
        match self {
            Framing::NdJson => {
                let line = serde_json::json!({ "error": status });
                if serde_json::to_writer(&mut *out, &line).is_ok() {
                    out.push(b'\n');
                }
            }
            Framing::Sse => {
                out.extend_from_slice(b"event: error\ndata: ");
                out.extend_from_slice(status.to_string().as_bytes());
                out.extend_from_slice(b"\n\n");
            }
        }
    }
}

/// A stream's response messages as NDJSON lines or SSE events.
struct StreamWriter {
    table: Arc<RouteTable>,
    output: MessageType,
    framing: Framing,
}

impl StreamWriter {
    /// Appends one message; `Err` after writing the in-band error that ends the stream.
    fn message(&self, message: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
        let (before, after) = self.framing.around();
        let start = out.len();
        out.extend_from_slice(before);
        match self
            .table
            .json
            .proto_to_json_into(&self.output, message, out)
        {
            Ok(()) => {
                out.extend_from_slice(after);
                Ok(())
            }
            Err(error) => {
                out.truncate(start);
                self.framing.error(&error, out);
                Err(())
            }
        }
    }

    /// Appends the in-band error for a stream the backend ended with `status`.
    fn failed(&self, status: &tonic::Status, out: &mut Vec<u8>) {
        let table = &self.table;
        let error = status_to_error(status, &table.schema.pool, &table.json);
        self.framing.error(&error, out);
    }
}

/// Messages gathered into one body chunk, at most: those that arrived together (one
/// DATA frame from the backend) leave in one write to the client.
const MAX_CHUNK_MESSAGES: usize = 128;
const MAX_CHUNK_BYTES: usize = 64 << 10;

/// The response body of a server stream. Dropping it (client gone) drops the gRPC
/// stream, which cancels the call at the backend.
fn stream_body(
    writer: StreamWriter,
    first: Option<Bytes>,
    messages: ResponseMessages,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    // No first message: the stream has already ended, well.
    let state = first.map(|first| (writer, Some(first), messages));
    futures_util::stream::unfold(state, |state| async move {
        let (writer, mut first, mut messages) = state?;
        let next = match first.take() {
            Some(message) => Ok(Some(message)),
            None => messages.next().await,
        };
        let mut out = Vec::new();
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(status) => {
                writer.failed(&status, &mut out);
                return Some((Ok(Bytes::from(out)), None));
            }
        };
        out.reserve(2 * message.len() + 16);
        if writer.message(&message, &mut out).is_err() {
            return Some((Ok(Bytes::from(out)), None));
        }
        for _ in 1..MAX_CHUNK_MESSAGES {
            if out.len() >= MAX_CHUNK_BYTES {
                break;
            }
            match messages.ready() {
                Ok(Some(message)) => {
                    if writer.message(&message, &mut out).is_err() {
                        return Some((Ok(Bytes::from(out)), None));
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    writer.failed(&status, &mut out);
                    return Some((Ok(Bytes::from(out)), None));
                }
            }
        }
        Some((Ok(Bytes::from(out)), Some((writer, None, messages))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Target;
    use std::time::Duration;

    /// The wire-record fast path sends exactly what the `DynamicMessage` path sends, on
    /// every route of the demo configuration that takes it.
    #[tokio::test]
    async fn path_only_frames_are_the_bytes_a_dynamic_message_encodes() {
        let gateway = crate::gateway::Gateway::load(std::path::Path::new("switchboard.yaml"))
            .await
            .unwrap();
        let table = gateway.table();
        let mut checked = 0;
        for route in &table.routes {
            let Target::Grpc(grpc) = &route.target else {
                continue;
            };
            let (parts, ()) = Request::get("/any").body(()).unwrap().into_parts();
            let captures: Vec<String> = (0..grpc.path_fields.len())
                .map(|i| format!("välue {i}/ü"))
                .collect();
            let Some(fast) = path_only_frame(grpc, &parts, &captures) else {
                continue;
            };
            let slow = build_message(
                &table,
                grpc,
                &parts,
                Body::empty(),
                captures.clone(),
                Deadline::after(Duration::from_secs(1)),
            )
            .await
            .unwrap();
            assert_eq!(
                fast.unwrap(),
                unary::frame(&slow).unwrap(),
                "{}",
                route.name
            );
            // A query string sets fields too: not for the fast path.
            let (with_query, ()) = Request::get("/any?x=1").body(()).unwrap().into_parts();
            assert!(path_only_frame(grpc, &with_query, &captures).is_none());
            checked += 1;
        }
        assert!(
            checked >= 3,
            "only {checked} demo routes took the fast path"
        );
    }
}
