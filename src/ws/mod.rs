//! WebSocket bridges: `websocket:` routes (contract §4, §5, §9).
//!
//! A socket goes through three parts, each in its own module:
//!
//! - [`handshake`]: before the upgrade. Browser tokens into `Authorization` (for the
//!   route's auth policy, which the pipeline (`proxy::handle`) runs first), is it a WebSocket
//!   handshake, may it proceed (shutdown, connection limit), which subprotocol to echo.
//!   Every refusal is a plain HTTP response with a `google.rpc.Status` body, no socket.
//! - [`session`]: the open socket, whatever the backend: frame size limit, keep-alive,
//!   idle timeout, shutdown, metrics, and the close code. It talks to the backend through
//!   two small bounded queues (`crate::queue`): [`Inbound`] frames toward it, [`Outbound`]
//!   messages back.
//! - a backend ([`grpc`]: frames ↔ a streaming call; [`amqp`]: each frame an RPC): turns
//!   inbound frames into calls and answers into JSON, and returns how the exchange ended
//!   ([`Finish`]). It never sees the socket.
//!
//! What a route bridges to ([`WsRoute`], [`Backend`]) is compiled with the other routes in
//! `routing::websocket`; this module adds how it runs. Adding a backend kind: a variant
//! of `Backend` and its compile step there, and an `async fn run(&YourBridge, Exchange)
//! -> Finish` in its own module here.

mod amqp;
mod budget;
mod grpc;
mod handshake;
mod session;

pub(crate) use handshake::{browser_credentials, upgrade};

use crate::error::GatewayError;
use crate::queue;
use crate::routing::RouteTable;
pub(crate) use crate::routing::websocket::{Backend, WsRoute};
use crate::telemetry::WsMetrics;
use axum::extract::ws::Utf8Bytes;
use budget::{Budget, Share};
use bytes::Bytes;
use http::HeaderMap;
use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

impl Backend {
    /// Runs the exchange of one socket until the backend is done with it. Dropping the
    /// future (client gone, shutdown, limits) cancels the backend call. Boxed (the
    /// largest part of a socket's state) as the backend's own future: an async fn around
    /// it would keep a second copy of the exchange for the socket's whole life.
    fn run(&self, exchange: Exchange) -> Pin<Box<dyn Future<Output = Finish> + Send + '_>> {
        match self {
            Backend::Grpc(bridge) => Box::pin(grpc::run(bridge, exchange)),
            Backend::Amqp(bridge) => Box::pin(amqp::run(bridge, exchange)),
        }
    }

    /// Whether the client's `Grpc-Metadata-*` headers go to the backend. AMQP messages
    /// carry no client headers (contract §9), only the trace ids and forwarded claims.
    fn takes_client_metadata(&self) -> bool {
        matches!(self, Backend::Grpc(_))
    }
}

/// A data frame from the client, on its way to the backend.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A text frame (or a binary frame: it must hold JSON too).
    Frame(Frame),
    /// The client sent `{"end": true}`: it has no more messages (gRPC half-close).
    End,
}

/// A client frame's payload, holding its share of the socket's inbound budget until the
/// backend is done with it (dropped).
#[derive(Debug)]
pub(crate) struct Frame {
    payload: Payload,
    _share: Share,
}

#[derive(Debug)]
enum Payload {
    /// UTF-8, checked when the frame was read.
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Payload {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(text) => text.as_bytes(),
            Payload::Binary(bytes) => bytes,
        }
    }
}

impl Frame {
    fn new(payload: Payload, share: Share) -> Self {
        Self {
            payload,
            _share: share,
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        self.payload.as_bytes()
    }

    /// The payload as text, when it came in a text frame.
    pub(crate) fn text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Text(text) => Some(text.as_str()),
            Payload::Binary(_) => None,
        }
    }

    /// The payload, shared (the budget share stays with the frame).
    pub(crate) fn to_bytes(&self) -> Bytes {
        match &self.payload {
            Payload::Text(text) => Bytes::from(text.clone()),
            Payload::Binary(bytes) => bytes.clone(),
        }
    }
}

/// Something for the client, from the backend.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// One answer as JSON: one text frame.
    Message(Utf8Bytes),
    /// Several answers, one text frame each: what a backend had ready at once, in one
    /// buffer (one allocation, one queue entry, one budget share for all).
    Messages(JsonBatch),
    /// A frame the backend could not use: `{"error": <google.rpc.Status>}` is sent and
    /// the socket stays open (contract §9). Boxed: every message is the size of the
    /// largest variant.
    Rejected(Box<GatewayError>),
}

/// JSON documents written one after the other into one buffer, each a text frame.
#[derive(Debug, Default)]
pub(crate) struct JsonBatch {
    text: Vec<u8>,
    /// Where each document ends in `text`.
    ends: Vec<usize>,
}

impl JsonBatch {
    /// Appends one document: `write` appends its JSON to the buffer (and leaves the
    /// buffer as it was when it fails).
    pub(crate) fn push<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        write(&mut self.text)?;
        self.ends.push(self.text.len());
        Ok(())
    }

    /// Room for `bytes` more of JSON.
    pub(crate) fn reserve(&mut self, bytes: usize) {
        self.text.reserve(bytes);
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.text.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The documents as text frames; one that is not UTF-8 (the transcoders write only
    /// UTF-8: this would be a bug) becomes an error frame.
    fn frames(self) -> impl Iterator<Item = Result<Utf8Bytes, GatewayError>> {
        let text = Bytes::from(self.text);
        let mut start = 0;
        self.ends.into_iter().map(move |end| {
            let document = text.slice(start..end);
            start = end;
            Utf8Bytes::try_from(document)
                .map_err(|_| GatewayError::internal("the JSON transcoder wrote invalid UTF-8"))
        })
    }
}

impl Outbound {
    pub(crate) fn rejected(error: GatewayError) -> Self {
        Outbound::Rejected(Box::new(error))
    }
}

/// The receiving end of a socket's client frames. The socket's queues carry boxed items:
/// a queue's buffer keeps the room it grew to, and a pointer is a fraction of a frame.
pub(crate) struct InboundRx(queue::Receiver<Box<Inbound>>);

impl InboundRx {
    pub(crate) async fn recv(&mut self) -> Option<Inbound> {
        self.0.recv().await.map(|item| *item)
    }

    /// The frames waiting (at least one, at most a queue's worth) into `batch`; 0 once
    /// the socket is closing. A busy socket takes its frames in batches.
    #[allow(clippy::vec_box)] // boxed as the queue carries them
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Box<Inbound>>) -> usize {
        let limit = self.0.capacity();
        self.0.recv_many(batch, limit).await
    }
}

/// The sending end of a socket's messages for the client (boxed, as `InboundRx`), and
/// the budget of bytes they may hold (`limits.max_ws_buffered`).
pub(crate) struct OutboundTx {
    sender: queue::Sender<Box<Queued>>,
    budget: Budget,
}

/// A message for the client with its share of the outbound budget.
pub(crate) struct Queued {
    item: Outbound,
    share: Share,
}

/// What an error frame is counted as: its JSON is small and not built yet.
const ERROR_FRAME_BYTES: usize = 256;

impl OutboundTx {
    /// Waits while the client is slow; fails once the socket is closing.
    pub(crate) async fn send(&self, item: Outbound) -> Result<(), Closed> {
        let size = match &item {
            Outbound::Message(json) => json.len(),
            Outbound::Messages(batch) => batch.bytes(),
            Outbound::Rejected(_) => ERROR_FRAME_BYTES,
        };
        let share = self.budget.take(size).await;
        self.sender
            .send(Box::new(Queued { item, share }))
            .await
            .map_err(|_| Closed)
    }
}

/// The socket is closing: nobody reads what is sent any more.
#[derive(Debug)]
pub(crate) struct Closed;

/// How a backend finished: `Ok` closes with 1000; `Err` sends `{"error": <status>}` and
/// closes with 1011 (contract §5).
pub(crate) type Finish = Result<(), GatewayError>;

/// Everything a backend gets for one socket.
pub(crate) struct Exchange {
    /// The table the socket was opened on: JSON options, descriptor pool.
    pub table: Arc<RouteTable>,
    /// Headers to pass on: trace ids, claims from `forward_claims`, and for gRPC
    /// `Grpc-Metadata-*` as metadata and `authorization` when the route forwards it.
    pub metadata: HeaderMap,
    /// Frames from the client. Keep reading until it closes: a backend that stops
    /// reading stops the socket's reader too (that is the backpressure).
    pub inbound: InboundRx,
    /// Messages for the client; `send` waits while the client is slow.
    pub outbound: OutboundTx,
}

/// Gateway-wide WebSocket state that outlives reloads: the number of open sockets (for
/// `limits.max_ws_connections`) and the shutdown signal that closes them with 1001.
pub struct Hub {
    open: AtomicUsize,
    /// Open sockets per client address (`limits.max_ws_per_client`); an address leaves
    /// the map with its last socket.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    shutdown: watch::Sender<bool>,
    /// Woken when the last socket closes.
    all_closed: Notify,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(false),
            all_closed: Notify::new(),
        }
    }
}

impl Hub {
    /// Sockets open (or being opened) right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Tells every socket to close with 1001, and refuses new ones (server shutdown).
    pub fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// Completes once no socket is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A place for one more socket, unless `limit` are open, or `per_client` of
    /// `client`'s (one client must not hold every socket of the gateway).
    fn try_acquire(
        self: &Arc<Self>,
        limit: usize,
        client: IpAddr,
        per_client: usize,
        metrics: &WsMetrics,
    ) -> Result<Permit, Full> {
        {
            let mut clients = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let count = clients.entry(client).or_insert(0);
            if *count >= per_client {
                return Err(Full::Client);
            }
            *count += 1;
        }
        // From here on the permit owns the client's place: dropping it gives it back.
        let mut permit = Permit {
            hub: self.clone(),
            gauge: metrics.connections.clone(),
            client,
            counted: false,
        };
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < limit).then_some(open + 1)
            })
            .map_err(|_| Full::Gateway)?;
        permit.counted = true;
        metrics.connections.increment(1.0);
        Ok(permit)
    }

    /// Sockets `client` holds now.
    pub fn open_for(&self, client: IpAddr) -> usize {
        let clients = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(&client).copied().unwrap_or(0)
    }
}

/// Why no socket place was free.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// `limits.max_ws_connections` are open: 503.
    Gateway,
    /// This client holds `limits.max_ws_per_client`: 429.
    Client,
}

/// One open socket, counted in the hub and the route's gauge until dropped.
pub(crate) struct Permit {
    hub: Arc<Hub>,
    gauge: metrics::Gauge,
    client: IpAddr,
    /// Counted in `open` (and the gauge), not only in `per_client`.
    counted: bool,
}

impl Permit {
    fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.hub.shutdown.subscribe()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        {
            let mut clients = self
                .hub
                .per_client
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = clients.get_mut(&self.client) {
                *count -= 1;
                if *count == 0 {
                    clients.remove(&self.client);
                }
            }
        }
        if !self.counted {
            return;
        }
        self.gauge.decrement(1.0);
        if self.hub.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hub.all_closed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages for a slow client wait for room in the byte budget, however deep the
    /// queue: the backend's stream is held back, not queued without bound.
    #[tokio::test]
    async fn messages_for_a_slow_client_wait_for_the_budget() {
        let (sender, mut receiver) = queue::bounded(128);
        let outbound = OutboundTx {
            sender,
            budget: Budget::new(100),
        };
        let message = |n| Outbound::Message(Utf8Bytes::from("x".repeat(n)));
        outbound.send(message(60)).await.unwrap();
        let second = outbound.send(message(50));
        tokio::pin!(second);
        assert!(futures_util::poll!(second.as_mut()).is_pending());
        // The writer takes the first one and writes it: its bytes come back.
        let first = receiver.recv().await.unwrap();
        assert!(
            futures_util::poll!(second.as_mut()).is_pending(),
            "not yet written"
        );
        drop(first);
        second.await.unwrap();
        assert_eq!(outbound.budget.available(), 50);
    }

    #[test]
    fn one_client_cannot_take_every_socket() {
        let hub = Arc::new(Hub::default());
        let metrics = WsMetrics::new("test");
        let greedy = IpAddr::from([10, 0, 0, 1]);
        let other = IpAddr::from([10, 0, 0, 2]);
        let held: Vec<_> = (0..2)
            .map(|_| hub.try_acquire(10, greedy, 2, &metrics).unwrap())
            .collect();
        assert_eq!(
            hub.try_acquire(10, greedy, 2, &metrics).err(),
            Some(Full::Client)
        );
        let theirs = hub.try_acquire(10, other, 2, &metrics).unwrap();
        assert_eq!((hub.open(), hub.open_for(greedy)), (3, 2));
        drop(held);
        assert_eq!((hub.open(), hub.open_for(greedy)), (1, 0));
        // The gateway-wide limit still holds, and a refusal there leaves no trace.
        assert_eq!(
            hub.try_acquire(1, greedy, 2, &metrics).err(),
            Some(Full::Gateway)
        );
        assert_eq!(hub.open_for(greedy), 0);
        drop(theirs);
        assert_eq!(hub.open(), 0);
    }

    #[test]
    fn a_batch_is_one_text_frame_per_document() {
        let mut batch = JsonBatch::default();
        for document in [
            &b"{\"a\":1}"[..],
            b"{}",
            "{\"text\":\"h\u{e9}\"}".as_bytes(),
        ] {
            batch
                .push(|out| {
                    out.extend_from_slice(document);
                    Ok::<(), ()>(())
                })
                .unwrap();
        }
        // A failed write leaves nothing behind.
        assert!(batch.push(|_| Err(())).is_err());
        assert_eq!(batch.len(), 3);
        let frames: Vec<_> = batch.frames().map(|frame| frame.unwrap()).collect();
        assert_eq!(frames, ["{\"a\":1}", "{}", "{\"text\":\"h\u{e9}\"}"]);

        let mut broken = JsonBatch::default();
        broken
            .push(|out| {
                out.extend_from_slice(b"\"\xff\"");
                Ok::<(), ()>(())
            })
            .unwrap();
        let error = broken.frames().next().unwrap().unwrap_err();
        assert_eq!(error.code, tonic::Code::Internal);
    }
}
