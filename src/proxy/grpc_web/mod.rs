//! gRPC-Web → gRPC (phase 12 for `grpc_web:` routes). The request's one message frame is
//! passed through to the backend as it is (no transcoding); the answer comes back as
//! message frames and a trailer frame, in binary or base64 text as the client asked.
//!
//! Unary calls go through the upstream's unary path (breaker, retries when the route is
//! `idempotent`, the deadline as `grpc-timeout`); server streams as the HTTP/JSON ones do
//! (the deadline covers opening and the first message). Failures before the first byte of
//! the answer are trailers-only responses, rendered by the pipeline's rescue
//! ([`GatewayError::into_grpc_web_response`]); failures after it end the body with a
//! trailer frame carrying the status.

pub(crate) mod framing;

use super::body::read_limited;
use crate::error::{GatewayError, Origin};
use crate::middleware::Identity;
use crate::middleware::deadline::Deadline;
use crate::routing::RouteTable;
use crate::routing::grpc_web::{GrpcWebCall, GrpcWebRoute};
use crate::telemetry::trace::TraceContext;
use crate::upstream::grpc::Call;
use crate::upstream::grpc::status::{is_local, is_protocol_header, status_to_error};
use crate::upstream::grpc::stream::ResponseMessages;
use crate::upstream::grpc::unary::Trailers;
use crate::upstream::metadata::{ClientMetadata, grpc_metadata};
use axum::body::Body;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use framing::Mode;
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use std::sync::Arc;
use tonic::Code;
use tonic::metadata::MetadataMap;

static GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");

pub(crate) async fn call(
    table: &Arc<RouteTable>,
    route: &GrpcWebRoute,
    request: Request<Body>,
    captures: Vec<String>,
    trace: &TraceContext,
    deadline: Deadline,
) -> Result<Response<Body>, GatewayError> {
    let mode = Mode::of_request(request.headers())?;
    let path = match &route.call {
        GrpcWebCall::Unary { path } | GrpcWebCall::ServerStreaming { path } => path,
        GrpcWebCall::Unimplemented => return Err(unimplemented(route, &captures)),
    };
    if request
        .headers()
        .get(&GRPC_ENCODING)
        .is_some_and(|e| e != "identity")
    {
        return Err(GatewayError::new(
            Code::Unimplemented,
            "compressed grpc-web requests are not supported",
        ));
    }

    let (parts, body) = request.into_parts();
    let limit = table.limits.max_body.0;
    let body = read_limited(body, &parts.headers, mode.body_limit(limit), deadline)
        .await
        .map_err(|error| match error.http_status().as_u16() {
            // gRPC's word for a message over the limit.
            413 => GatewayError::new(Code::ResourceExhausted, error.message),
            _ => error,
        })?;
    let body = match mode {
        Mode::Binary => body,
        Mode::Text => framing::decode_text(&body)?,
    };
    let framed = framing::single_message(body, limit)?;
    let metadata = grpc_metadata(
        &parts.headers,
        trace,
        parts.extensions.get::<Identity>(),
        ClientMetadata {
            grpc_metadata: false,
            authorization: route.forward_authorization,
            plain_headers: true,
        },
    )?;
    let call = Call {
        path: path.clone(),
        metadata: MetadataMap::from_headers(metadata),
        framed,
        // What is left after reading the body: one budget for the whole request.
        timeout: deadline.remaining(),
        client_deadline: deadline.client_set,
        idempotent: route.idempotent,
    };
    let upstream = &route.upstream;
    let to_error = |status: tonic::Status| status_error(&status, table, deadline.client_set);

    if let GrpcWebCall::Unary { .. } = &route.call {
        let (metadata, message, extensions) =
            upstream.unary(call).await.map_err(to_error)?.into_parts();
        let trailers = extensions.get::<Trailers>().map(|t| &t.0);
        let mut headers = metadata.into_headers();
        // The merged metadata holds the trailers after the headers: they go in the
        // trailer frame, not twice.
        for name in trailers.into_iter().flat_map(HeaderMap::keys) {
            headers.remove(name);
        }
        let message = framing::data_frame(&message)?;
        let end = framing::trailer_frame(Code::Ok, "", trailers);
        let mut frames = BytesMut::with_capacity(message.len() + end.len());
        frames.extend_from_slice(&message);
        frames.extend_from_slice(&end);
        let mut response = Response::new(Body::from(mode.encode(frames.freeze())));
        response_headers(mode, &headers, response.headers_mut());
        return Ok(response);
    }

    // The deadline covers opening the stream and its first message; after that the stream
    // lives as long as the backend and the client keep it open.
    let opened = upstream.open_server_stream(call);
    let (headers, messages, first) = tokio::time::timeout_at(deadline.instant(), opened)
        .await
        .map_err(|_| {
            deadline.exceeded(format!(
                "upstream `{}` did not answer within {:?}",
                upstream.name, deadline.budget
            ))
        })?
        .map_err(to_error)?;
    let mut response = Response::new(Body::from_stream(stream_body(
        table.clone(),
        mode,
        first,
        messages,
    )));
    response_headers(mode, &headers, response.headers_mut());
    Ok(response)
}

/// UNIMPLEMENTED for a method name the route does not serve, saying why when the
/// service has it (client or bidi streaming, which gRPC-Web cannot carry).
fn unimplemented(route: &GrpcWebRoute, captures: &[String]) -> GatewayError {
    let name = captures.first().map(String::as_str).unwrap_or("");
    let service = route.service.full_name();
    let message = match route.service.methods().find(|m| m.name() == name) {
        Some(method) if method.is_client_streaming() => format!(
            "`{service}/{name}` is client- or bidi-streaming, which gRPC-Web cannot carry; a websocket: route can serve it"
        ),
        _ => format!("unknown method `{name}` of `{service}`"),
    };
    GatewayError::new(Code::Unimplemented, message)
}

/// A backend status as a gRPC-Web client reads it. The gateway's own statuses keep their
/// cause for the log ([`status_to_error`]); the backend's travel as gRPC does: details
/// in their binary form, metadata as plain headers (not JSON and `Grpc-Metadata-*`).
fn status_error(status: &tonic::Status, table: &RouteTable, client_deadline: bool) -> GatewayError {
    let mut error = status_to_error(status, &table.schema.pool, &table.json);
    // The client's own short deadline ran out: not the backend's failure.
    if client_deadline && error.code == Code::DeadlineExceeded {
        error = error.with_origin(Origin::Client);
    }
    if !is_local(status) {
        error.headers = None;
        let headers = error.headers_mut();
        append_metadata(status.metadata().as_ref(), headers);
        if !status.details().is_empty()
            && let Ok(value) = HeaderValue::from_str(
                &base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.details()),
            )
        {
            headers.insert(GRPC_STATUS_DETAILS.clone(), value);
        }
    }
    error
}

/// Backend metadata onto the response, without the names of the protocol.
fn append_metadata(metadata: &HeaderMap, out: &mut HeaderMap) {
    for (name, value) in metadata {
        if !is_protocol_header(name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
}

fn response_headers(mode: Mode, metadata: &HeaderMap, out: &mut HeaderMap) {
    append_metadata(metadata, out);
    out.insert(header::CONTENT_TYPE, mode.content_type());
}

/// The body of a server stream: a data frame per message (each its own base64 chunk in
/// text mode), then the trailer frame with the final status. Dropping it (client gone)
/// drops the gRPC stream, which cancels the call at the backend.
fn stream_body(
    table: Arc<RouteTable>,
    mode: Mode,
    first: Option<Bytes>,
    messages: ResponseMessages,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    // `Some(first)`: a message to send; `None`: the stream has ended, the trailers follow.
    futures_util::stream::unfold(Some((messages, Some(first))), move |state| {
        let table = table.clone();
        async move {
            let (mut messages, first) = state?;
            let next = match first {
                Some(first) => Ok(first),
                None => messages.next().await,
            };
            let (frame, state) = match next {
                Ok(Some(message)) => match framing::data_frame(&message) {
                    Ok(frame) => (frame, Some((messages, None))),
                    Err(error) => (error_trailer(&error), None),
                },
                Ok(None) => (
                    framing::trailer_frame(Code::Ok, "", messages.trailers()),
                    None,
                ),
                // After the first message the deadline no longer applies (see `call`).
                Err(status) => (error_trailer(&status_error(&status, &table, false)), None),
            };
            Some((Ok(mode.encode(frame)), state))
        }
    })
}

/// The trailer frame of a stream that failed after it started (the status line is sent).
fn error_trailer(error: &GatewayError) -> Bytes {
    if let Some(cause) = &error.cause {
        tracing::warn!(code = ?error.code, origin = ?error.origin, %cause, "{}", error.message);
    }
    framing::trailer_frame(error.code, &error.message, error.headers.as_deref())
}
