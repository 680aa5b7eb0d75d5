//! The gRPC backend of a socket: each client frame is one request message (JSON →
//! protobuf), each response message one text frame. Bidi, client- and server-streaming
//! methods are all one streaming call; they differ only in where the request stream
//! comes from:
//!
//! - bidi and client streaming: every frame, until `{"end": true}` half-closes;
//! - server streaming: the first frame that parses; later frames are refused in-band.
//!
//! The call opens when the socket does (a bidi server may speak first) and lives as long
//! as the socket: the route `timeout` does not apply, idle and keep-alive limits do.
//!
//! Messages cross as bytes (`upstream::grpc::stream`): the frames a socket has ready are
//! transcoded JSON → protobuf straight into one chunk of framed messages (one DATA frame
//! for many), and the response messages of a DATA frame protobuf → JSON into one batch
//! of text frames, by `transcode::MessageType` (no `DynamicMessage` for plain proto3
//! types).

use super::{Exchange, Finish, Frame, Inbound, InboundRx, JsonBatch, Outbound, OutboundTx};
use crate::error::GatewayError;
use crate::routing::RouteTable;
use crate::routing::websocket::GrpcBridge;
use crate::upstream::grpc::link::RequestBody;
use crate::upstream::grpc::status::status_to_error;
use crate::upstream::grpc::stream::{RequestChunks, ResponseMessages};
use crate::upstream::grpc::unary::{FRAME_PREFIX, finish_frame_at};
use bytes::Bytes;
use futures_util::future::{Either, select};
use http::HeaderMap;
use tonic::Status;

/// Chunks of request messages waiting for HTTP/2 flow control toward the backend. A
/// chunk holds the frames it was made of, and with them their share of the socket's
/// budget, so the budget bounds their bytes.
const REQUEST_CHUNKS: usize = 4;
/// Response messages gathered into one batch for the socket, at most. When more are
/// waiting, the socket's task gives way after each batch (see `relay`), so a batch this
/// size is also how soon a burst's first answers leave.
const MAX_BATCH_MESSAGES: usize = 64;
const MAX_BATCH_BYTES: usize = 64 << 10;

impl GrpcBridge {
    /// Opens the call (connect + response headers), if the upstream's circuit breaker
    /// admits it. The opening is what metrics and the breaker count; in-stream errors
    /// reach the client in-band.
    async fn open(
        &self,
        metadata: HeaderMap,
        body: RequestBody,
    ) -> Result<ResponseMessages, Status> {
        let opened = self.upstream.open_stream(&self.path, metadata, body, false);
        opened.await.map(|(_headers, messages)| messages)
    }
}

pub(super) async fn run(bridge: &GrpcBridge, exchange: Exchange) -> Finish {
    let Exchange {
        table,
        metadata,
        mut inbound,
        outbound,
    } = exchange;
    let encode = |frame: &Frame, out: &mut Vec<u8>| encode_framed(&table, bridge, frame, out);

    if bridge.method.is_client_streaming() {
        let (requests, body) = RequestChunks::new(REQUEST_CHUNKS);
        let feeding = Box::pin(feed(inbound, requests, &outbound, encode));
        relay(
            bridge,
            Box::pin(bridge.open(metadata, body)),
            &table,
            &outbound,
            feeding,
        )
        .await
    } else {
        let Some(first) = first_request(&mut inbound, &outbound, encode).await else {
            return Ok(()); // The client left, or ended, before asking anything.
        };
        let body = RequestBody::Message(first);
        relay(
            bridge,
            Box::pin(bridge.open(metadata, body)),
            &table,
            &outbound,
            Box::pin(refuse_more(inbound, &outbound)),
        )
        .await
    }
}

/// Appends the JSON of `frame` to `out` as a framed request message (gRPC prefix, then
/// the protobuf encoding); `out` keeps its length on error.
fn encode_framed(
    table: &RouteTable,
    bridge: &GrpcBridge,
    frame: &Frame,
    out: &mut Vec<u8>,
) -> Result<(), GatewayError> {
    let start = out.len();
    out.extend_from_slice(&FRAME_PREFIX);
    let encoded = match frame.text() {
        Some(text) => table.json.json_text_to_proto(&bridge.input, text, out),
        None => table.json.json_to_proto(&bridge.input, frame.bytes(), out),
    };
    let framed = encoded.and_then(|()| {
        finish_frame_at(out, start).map_err(|status| GatewayError::internal(status.message()))
    });
    if framed.is_err() {
        out.truncate(start);
    }
    framed
}

/// Response messages → `outbound` until the response stream ends, while `input` takes
/// care of the client's frames. `call` and `input` come boxed, so that the socket's state
/// holds them once (and the call's opening state is freed once it is open).
async fn relay(
    bridge: &GrpcBridge,
    call: impl Future<Output = Result<ResponseMessages, Status>> + Unpin,
    table: &RouteTable,
    outbound: &OutboundTx,
    input: impl Future<Output = ()> + Unpin,
) -> Finish {
    let to_error = |status: Status| status_to_error(&status, &table.schema.pool, &table.json);
    let responses = std::pin::pin!(async {
        let mut messages = call.await.map_err(to_error)?;
        // The next messages are read only once the previous ones are queued for the
        // socket: a slow client leaves the rest in HTTP/2 flow control.
        while let Some(first) = messages.next().await.map_err(to_error)? {
            // The first message, and every other one already received, in one batch. JSON
            // takes about twice the bytes of protobuf.
            let mut batch = JsonBatch::default();
            let received = first.len() + messages.buffered();
            batch.reserve((2 * received + 64).min(MAX_BATCH_BYTES));
            let mut next = Ok(Some(first));
            let ended = loop {
                let message = match next {
                    Ok(Some(message)) => message,
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(to_error(status)),
                };
                let written =
                    batch.push(|out| table.json.proto_to_json_into(&bridge.output, &message, out));
                if let Err(error) = written {
                    break Err(error);
                }
                if batch.len() >= MAX_BATCH_MESSAGES || batch.bytes() >= MAX_BATCH_BYTES {
                    break Ok(());
                }
                next = messages.ready();
            };
            // What came before an error still reaches the client, then the error.
            if !batch.is_empty() && outbound.send(Outbound::Messages(batch)).await.is_err() {
                break; // The socket is closing.
            }
            ended?;
            // More already received: let the writer send this batch first (and other
            // sockets on this thread have their turn). Going on would hold every answer
            // of a burst until the last is transcoded, while the client sits idle with
            // nothing to read; given way, the client reads and answers this batch while
            // the next is transcoded (at window 256, 45% → 48% of a direct stream's
            // messages per second, BENCHMARKS.md).
            if messages.buffered() > 0 {
                tokio::task::yield_now().await;
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

/// A chunk of framed request messages, holding the client frames they were made of:
/// their share of the socket's budget is given back when HTTP/2 is done with the chunk.
struct Chunk {
    messages: Vec<u8>,
    _frames: Vec<Frame>,
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.messages
    }
}

/// Client frames → request messages, until the socket closes: the frames waiting are
/// transcoded into one chunk. `{"end": true}` ends the request stream (half-close); a
/// frame that does not parse, or comes after the end, is refused with an error frame
/// and the socket stays open.
async fn feed(
    mut inbound: InboundRx,
    mut requests: RequestChunks,
    outbound: &OutboundTx,
    encode: impl Fn(&Frame, &mut Vec<u8>) -> Result<(), GatewayError>,
) {
    let mut batch = Vec::new();
    let mut messages = Vec::new();
    let mut frames = Vec::new();
    while inbound.recv_many(&mut batch).await > 0 {
        // Protobuf is smaller than its JSON: room for the whole batch at once.
        let room: usize = batch
            .iter()
            .map(|item| match &**item {
                Inbound::Frame(frame) => FRAME_PREFIX.len() + frame.bytes().len(),
                Inbound::End => 0,
            })
            .sum();
        messages.reserve(room);
        for item in batch.drain(..) {
            let refusal = match *item {
                Inbound::End => {
                    send_chunk(&requests, &mut messages, &mut frames).await;
                    requests.end();
                    continue;
                }
                Inbound::Frame(_) if requests.has_ended() => ended(),
                Inbound::Frame(frame) => match encode(&frame, &mut messages) {
                    Ok(()) => {
                        frames.push(frame);
                        continue;
                    }
                    Err(error) => error,
                },
            };
            if outbound.send(Outbound::rejected(refusal)).await.is_err() {
                return;
            }
        }
        send_chunk(&requests, &mut messages, &mut frames).await;
    }
}

/// Sends the messages gathered, if any.
async fn send_chunk(requests: &RequestChunks, messages: &mut Vec<u8>, frames: &mut Vec<Frame>) {
    if messages.is_empty() {
        return;
    }
    let chunk = Chunk {
        messages: std::mem::take(messages),
        _frames: std::mem::take(frames),
    };
    // Fails only when the call is over; `relay` is finishing then.
    let _ = requests.send(Bytes::from_owner(chunk)).await;
}

/// The first frame that parses, framed; bad ones are refused in-band. `None` when the
/// client leaves or sends `{"end": true}` first.
async fn first_request(
    inbound: &mut InboundRx,
    outbound: &OutboundTx,
    encode: impl Fn(&Frame, &mut Vec<u8>) -> Result<(), GatewayError>,
) -> Option<Bytes> {
    loop {
        match inbound.recv().await? {
            Inbound::End => return None,
            Inbound::Frame(frame) => {
                let mut message = Vec::new();
                match encode(&frame, &mut message) {
                    Ok(()) => return Some(Bytes::from(message)),
                    Err(error) => outbound.send(Outbound::rejected(error)).await.ok()?,
                }
            }
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
