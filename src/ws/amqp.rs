//! The AMQP backend of a socket: every frame is one request-reply RPC onto the route's
//! routing key, sent as an HTTP route onto the same target would send it (trace and
//! claim headers, JSON → protobuf for a typed route, `expiration` = the timeout). Up to
//! [`MAX_IN_FLIGHT`] calls are out at once; answers go back in the order the frames came,
//! so a quick reply waits for the slower ones before it.
//!
//! Frames are independent calls, so one that fails — not JSON (for its type), no reply
//! in time, broker down, a worker's error `x-status`, a reply that is not text — gets an
//! error frame `{"error": <google.rpc.Status>}` in its place and the socket stays open.
//! `{"end": true}`: no more requests; the socket closes with 1000 once every answer is
//! out. The route `timeout` (else the upstream's) bounds each call, not the socket.

use super::{Exchange, Finish, Frame, Inbound, Outbound};
use crate::error::{GatewayError, code_for_http_status, code_from_i32};
use crate::routing::RouteTable;
use crate::routing::websocket::AmqpBridge;
use crate::upstream::amqp::Message;
use crate::upstream::amqp::message::{self, JSON, PROTOBUF};
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use http::StatusCode;
use lapin::types::FieldTable;

/// RPCs one socket may have waiting for their reply. When as many are out, the socket's
/// frames are not read (backpressure onto the client through TCP), which bounds what a
/// socket holds: this window, plus the session's inbound and outbound buffers.
pub(super) const MAX_IN_FLIGHT: usize = 32;

impl AmqpBridge {
    /// One frame's RPC: the reply as the text of a frame, or why there is none.
    async fn call(
        &self,
        table: &RouteTable,
        headers: FieldTable,
        frame: Bytes,
    ) -> Result<Utf8Bytes, GatewayError> {
        let route = &self.route;
        let (payload, content_type) = match &route.request_type {
            Some(request_type) => (
                Bytes::from(message::typed_payload(&table.json, request_type, &frame)?),
                PROTOBUF,
            ),
            None => {
                // Published as `application/json`: bad input never reaches a worker.
                serde_json::from_slice::<serde::de::IgnoredAny>(&frame).map_err(|e| {
                    GatewayError::invalid_argument(format!("the frame is not JSON: {e}"))
                })?;
                (frame, JSON)
            }
        };
        let message = Message {
            exchange: &route.exchange,
            routing_key: self.routing_key.clone(),
            payload: &payload,
            properties: message::properties(headers, Some(content_type.into()), route.persistent),
        };
        let reply = route.upstream.call(message, route.timeout).await?;
        let status = message::reply_status(&reply)?;
        let (body, _) = message::reply_body(&table.json, route.response_type.as_ref(), reply)?;
        if status.is_client_error() || status.is_server_error() {
            return Err(worker_error(status, &body));
        }
        String::from_utf8(body).map(Utf8Bytes::from).map_err(|_| {
            GatewayError::internal("the reply is not UTF-8 text: a text frame cannot carry it")
        })
    }
}

pub(super) async fn run(bridge: &AmqpBridge, exchange: Exchange) -> Finish {
    let Exchange {
        table,
        metadata,
        mut inbound,
        outbound,
    } = exchange;
    // The socket's trace ids and forwarded claims, the same for every frame.
    let headers = message::header_table(&metadata);
    let answer = |frame: Frame| {
        let (table, headers) = (&table, headers.clone());
        async move {
            // The frame (its budget share) is held until the reply.
            let reply = bridge.call(table, headers, frame.to_bytes()).await;
            drop(frame);
            match reply {
                Ok(text) => Outbound::Message(text),
                Err(error) => {
                    tracing::debug!(%error, "websocket AMQP call failed");
                    Outbound::rejected(error)
                }
            }
        }
    };
    // Runs the calls concurrently, yields their answers in the order they were pushed.
    let mut in_flight = FuturesOrdered::new();
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            item = inbound.recv(), if reading && in_flight.len() < MAX_IN_FLIGHT => match item {
                Some(Inbound::Frame(frame)) => in_flight.push_back(answer(frame)),
                // `{"end": true}` (or the reader is gone): answer what was asked, then end.
                Some(Inbound::End) | None => reading = false,
            },
            Some(answer) = in_flight.next() => {
                // Waiting here while the client is slow is the backpressure on replies.
                if outbound.send(answer).await.is_err() {
                    break; // The socket is closing.
                }
            }
        }
    }
    Ok(())
}

/// A worker's error reply (`x-status` 4xx/5xx) as the error of its frame: a
/// `google.rpc.Status` body is kept as it is, any other body becomes the message.
fn worker_error(status: StatusCode, body: &[u8]) -> GatewayError {
    #[derive(serde::Deserialize)]
    struct RpcStatus {
        code: i32,
        #[serde(default)]
        message: String,
        #[serde(default)]
        details: Vec<serde_json::Value>,
    }
    if let Ok(rpc) = serde_json::from_slice::<RpcStatus>(body) {
        return GatewayError::new(code_from_i32(rpc.code), rpc.message).with_details(rpc.details);
    }
    let text = String::from_utf8_lossy(body);
    let message = if text.trim().is_empty() {
        format!("the worker answered with status {}", status.as_u16())
    } else {
        text.into_owned()
    };
    GatewayError::new(code_for_http_status(status), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_errors_keep_a_status_body_or_map_the_http_status() {
        let status = worker_error(
            StatusCode::BAD_REQUEST,
            br#"{"code": 3, "message": "quantity must be positive", "details": []}"#,
        );
        assert_eq!(status.code, tonic::Code::InvalidArgument);
        assert_eq!(status.message, "quantity must be positive");
        let plain = worker_error(StatusCode::NOT_FOUND, b"no such product");
        assert_eq!(plain.code, tonic::Code::NotFound);
        assert_eq!(plain.message, "no such product");
        let empty = worker_error(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(empty.code, tonic::Code::Unavailable);
        assert!(empty.message.contains("503"), "{}", empty.message);
    }
}
