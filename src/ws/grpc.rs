//! The gRPC backend of a socket: each client frame is one request message (JSON →
//! protobuf), each response message one text frame. Bidi, client- and server-streaming
//! methods all go through `Grpc::streaming`; they differ only in where the request
//! stream comes from:
//!
//! - bidi and client streaming: every frame, until `{"end": true}` half-closes;
//! - server streaming: the first frame that parses; later frames are refused in-band.
//!
//! The call opens when the socket does (a bidi server may speak first) and lives as long
//! as the socket: the route `timeout` does not apply, idle and keep-alive limits do.
//!
//! Messages cross as encoded bytes (`RawCodec`): frames are transcoded JSON → protobuf
//! and responses protobuf → JSON by `transcode::MessageType`, without building a
//! `DynamicMessage` for plain proto3 types.

use super::{Exchange, Finish, Inbound, InboundRx, Outbound, OutboundTx};
use crate::error::GatewayError;
use crate::routing::RouteTable;
use crate::routing::websocket::GrpcBridge;
use crate::upstream::grpc::status::status_to_error;
use bytes::Bytes;
use futures_util::future::{Either, select};
use futures_util::stream::Stream;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;
use tonic::{CancellationHandle, Status, Streaming};

/// Request messages waiting for HTTP/2 flow control toward the backend. Each keeps its
/// frame's share of the socket's budget until tonic takes it, so the budget bounds their
/// bytes; the count lets a busy socket's messages leave in large DATA frames.
const REQUEST_BUFFER: usize = 128;

impl GrpcBridge {
    /// Opens the call (connect + response headers), if the upstream's circuit breaker
    /// admits it. The opening is what metrics and the breaker count; in-stream errors
    /// reach the client in-band.
    async fn open<S>(&self, request: tonic::Request<S>) -> Result<Streaming<Bytes>, Status>
    where
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let permit = match &self.upstream.breaker {
            Some(breaker) => Some(
                breaker
                    .acquire()
                    .map_err(|refused| Status::unavailable(refused.message))?,
            ),
            None => None,
        };
        let started = tokio::time::Instant::now();
        let lease = match self.upstream.connected().await {
            Ok(lease) => lease,
            Err(status) => {
                self.upstream
                    .metrics
                    .record(status.code(), started.elapsed());
                if let Some(permit) = permit {
                    permit.record(status.code());
                }
                return Err(status);
            }
        };
        let mut grpc = tonic::client::Grpc::new(lease.connection().clone());
        let result = match grpc.ready().await {
            Ok(()) => grpc
                .streaming(request, self.path.clone(), self.codec)
                .await
                .map(tonic::Response::into_inner),
            Err(e) => Err(Status::unavailable(format!(
                "upstream `{}` not ready: {e}",
                self.upstream.name
            ))),
        };
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.upstream.metrics.record(code, started.elapsed());
        self.upstream.balancer.report(
            lease.endpoint(),
            crate::upstream::grpc::outlier::Outcome::of(code),
        );
        if let Some(permit) = permit {
            permit.record(code);
        }
        result
    }
}

pub(super) async fn run(bridge: &GrpcBridge, exchange: Exchange) -> Finish {
    let Exchange {
        table,
        metadata,
        mut inbound,
        outbound,
    } = exchange;
    let decode = |frame: &Bytes| {
        let mut message = Vec::with_capacity(frame.len());
        table
            .json
            .json_to_proto(&bridge.input, frame, &mut message)
            .map(|()| Bytes::from(message))
    };

    if bridge.method.is_client_streaming() {
        let (sender, receiver) = mpsc::channel(REQUEST_BUFFER);
        let mut request = grpc_request(metadata, RequestStream::new(receiver));
        let requests = Requests {
            cancel: Some(request.cancellation_handle()),
            sender: Some(sender),
        };
        let feeding = Box::pin(feed(inbound, requests, &outbound, decode));
        relay(
            bridge,
            Box::pin(bridge.open(request)),
            &table,
            &outbound,
            feeding,
        )
        .await
    } else {
        let Some(first) = first_request(&mut inbound, &outbound, decode).await else {
            return Ok(()); // The client left, or ended, before asking anything.
        };
        let call = Box::pin(bridge.open(grpc_request(metadata, tokio_stream::once(first))));
        relay(
            bridge,
            call,
            &table,
            &outbound,
            Box::pin(refuse_more(inbound, &outbound)),
        )
        .await
    }
}

fn grpc_request<S>(metadata: http::HeaderMap, requests: S) -> tonic::Request<S> {
    tonic::Request::from_parts(
        MetadataMap::from_headers(metadata),
        tonic::Extensions::default(),
        requests,
    )
}

/// The sending side of a request stream. `{"end": true}` drops the sender: the stream
/// ends normally (HTTP/2 END_STREAM, a half-close). Dropped before that — the client
/// left — it cancels first (RST_STREAM CANCEL), so the backend sees a cancelled call
/// rather than a client that finished sending.
struct Requests {
    /// Encoded request messages, boxed: the channel allocates a block of 32 slots up
    /// front, per socket, and a pointer is a fraction of a `Request`.
    sender: Option<mpsc::Sender<Box<Request>>>,
    cancel: Option<CancellationHandle>,
}

impl Requests {
    fn end(&mut self) {
        self.cancel = None;
        self.sender = None;
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        // Runs before the fields drop: the cancellation is seen before the end of input.
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
    }
}

/// One request message, and the client frame it was made of: the frame's share of the
/// socket's budget is given back when tonic takes the message.
struct Request {
    message: Bytes,
    _frame: Bytes,
}

/// The request messages, as tonic reads them: taken from the channel a batch at a time
/// (a bounded channel gives its room back under a lock, once per receive call).
struct RequestStream {
    receiver: mpsc::Receiver<Box<Request>>,
    /// Received, in reverse order: the next message is the last. Boxed as the channel
    /// carries them.
    #[allow(clippy::vec_box)]
    batch: Vec<Box<Request>>,
}

impl RequestStream {
    fn new(receiver: mpsc::Receiver<Box<Request>>) -> Self {
        Self {
            receiver,
            batch: Vec::new(),
        }
    }
}

impl Stream for RequestStream {
    type Item = Bytes;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = self.get_mut();
        if this.batch.is_empty() {
            let received = ready!(this.receiver.poll_recv_many(
                cx,
                &mut this.batch,
                REQUEST_BUFFER
            ));
            if received == 0 {
                return Poll::Ready(None);
            }
            this.batch.reverse();
        }
        // The frame, and with it its share of the budget, goes with the box.
        Poll::Ready(this.batch.pop().map(|request| request.message))
    }
}

/// Response messages → `outbound` until the response stream ends, while `input` takes
/// care of the client's frames. `call` and `input` come boxed, so that the socket's state
/// holds them once (and the call's opening state is freed once it is open).
async fn relay(
    bridge: &GrpcBridge,
    call: impl Future<Output = Result<Streaming<Bytes>, Status>> + Unpin,
    table: &RouteTable,
    outbound: &OutboundTx,
    input: impl Future<Output = ()> + Unpin,
) -> Finish {
    let to_error = |status: Status| status_to_error(&status, &table.schema.pool, &table.json);
    let responses = std::pin::pin!(async {
        let mut stream = call.await.map_err(to_error)?;
        // The next message is read only once the previous one is queued for the socket:
        // a slow client leaves the rest in HTTP/2 flow control.
        while let Some(message) = stream.message().await.map_err(to_error)? {
            let json = table.json.proto_to_json(&bridge.output, &message)?;
            let json = String::from_utf8(json)
                .map_err(|_| GatewayError::internal("the JSON transcoder wrote invalid UTF-8"))?;
            let frame = Outbound::json(json);
            if outbound.send(frame).await.is_err() {
                break; // The socket is closing.
            }
        }
        Ok(())
    });
    match select(responses, input).await {
        Either::Left((finish, _)) => finish,
        // The client's side is over; answers may still come.
        Either::Right(((), responses)) => responses.await,
    }
}

/// Client frames → request messages, until the socket closes. `{"end": true}` ends the
/// request stream (half-close); a frame that does not parse, or comes after the end, is
/// refused with an error frame and the socket stays open.
async fn feed(
    mut inbound: InboundRx,
    mut requests: Requests,
    outbound: &OutboundTx,
    decode: impl Fn(&Bytes) -> Result<Bytes, GatewayError>,
) {
    let mut batch = Vec::new();
    while inbound.recv_many(&mut batch).await > 0 {
        for item in batch.drain(..) {
            let refusal = match (*item, &requests.sender) {
                (Inbound::End, _) => {
                    requests.end();
                    continue;
                }
                (Inbound::Frame(_), None) => ended(),
                (Inbound::Frame(frame), Some(sender)) => match decode(&frame) {
                    Ok(message) => {
                        // Fails only when the call is over; `relay` is finishing then.
                        let request = Request {
                            message,
                            _frame: frame,
                        };
                        let _ = super::send(sender, Box::new(request)).await;
                        continue;
                    }
                    Err(error) => error,
                },
            };
            if outbound.send(Outbound::rejected(refusal)).await.is_err() {
                return;
            }
        }
    }
}

/// The first frame that parses; bad ones are refused in-band. `None` when the client
/// leaves or sends `{"end": true}` first.
async fn first_request(
    inbound: &mut InboundRx,
    outbound: &OutboundTx,
    decode: impl Fn(&Bytes) -> Result<Bytes, GatewayError>,
) -> Option<Bytes> {
    loop {
        match inbound.recv().await? {
            Inbound::End => return None,
            Inbound::Frame(frame) => match decode(&frame) {
                Ok(message) => return Some(message),
                Err(error) => outbound.send(Outbound::rejected(error)).await.ok()?,
            },
        }
    }
}

/// A server-streaming method takes one request: later frames are refused in-band.
async fn refuse_more(mut inbound: InboundRx, outbound: &OutboundTx) {
    while let Some(item) = inbound.recv().await {
        if let Inbound::Frame(_) = item
            && outbound.send(Outbound::rejected(ended())).await.is_err()
        {
            return;
        }
    }
}

fn ended() -> GatewayError {
    GatewayError::new(
        tonic::Code::FailedPrecondition,
        "the request stream has ended: no more messages on this socket",
    )
}
