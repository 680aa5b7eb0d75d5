//! The RPC link: request-reply traffic on an AMQP connection of its own, driven by two
//! tasks on the gateway's runtime.
//!
//! Why not lapin for this connection: lapin runs every connection from a thread of its
//! own, so each request crossed threads twice (the publish wakes lapin's thread, which
//! writes what it has; the reply's readiness wakes it again, and it wakes the consumer
//! task): 1.7 futex calls and 2 context switches per request, a third of the gateway's
//! CPU per call (BENCHMARKS.md, "AMQP RPC on a link of its own"). Here a publish is encoded straight
//! into the link's outbox by the request's task; the writer task takes everything queued
//! during its turn and writes it at once, and the reader task parses every reply a read
//! brought and hands each to its request (`Replies`). lapin keeps the other connection
//! (topology, confirmed publishes, exchange checks), where none of this matters.
//!
//! The wire format comes from `amq-protocol` (lapin's own codec). The link speaks just
//! what request-reply needs: the handshake, one channel (1), a `no_ack` consumer on the
//! direct reply-to pseudo-queue, `basic.publish` (mandatory), deliveries and returns,
//! heartbeats, `connection.blocked`, and the broker closing the channel or connection,
//! after which the link is closed for good and the session reconnects.
//!
//! Everything the broker sends is bounded: frames by the negotiated `frame_max`, a reply
//! body by [`MAX_REPLY`], silence by twice the heartbeat.

mod handshake;
#[cfg(test)]
mod tests;
mod wire;

use super::publish::Refused;
use super::rpc::{Failed, Replies};
use super::{BrokerTls, Reply};
use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, connection};
use amq_protocol::types::ShortString;
use amq_protocol::uri::{AMQPScheme, AMQPUri};
use handshake::{FRAME_MIN_SIZE, handshake, method, refusal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use wire::{
    FRAME_HEADER, FrameReader, HEARTBEAT, Incoming, body_frame, encode, header_frame, publish_frame,
};

/// The largest reply body accepted (as for gRPC responses); a larger one fails its request.
pub(super) const MAX_REPLY: u64 = 4 * 1024 * 1024;
/// Publishes waiting for the socket beyond this are refused (503) rather than queued: the
/// broker is not reading.
const OUTBOX_LIMIT: usize = 8 * 1024 * 1024;
/// The longest one write to the broker may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The outbox's buffer is given back past this size once written.
const KEEP_CAPACITY: usize = 64 * 1024;
/// The channel the link uses.
const CHANNEL: u16 = 1;

/// Why the link cannot take a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unsent {
    /// The link is closed (the session is reconnecting).
    Closed,
    /// The broker has not read what was already sent.
    Backlogged,
    /// A value of the message cannot be encoded.
    Unencodable,
    /// The message's properties (its headers) do not fit in one frame.
    Oversized { frame_max: usize },
}

/// Why the link failed to open or stopped.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the broker closed the {what}: {code} {text}")]
    ClosedByBroker {
        what: &'static str,
        code: u16,
        text: String,
    },
    #[error("no frame from the broker for {0:?}")]
    Silent(Duration),
    /// Closed as we asked.
    #[error("closed")]
    Closed,
}

fn protocol(message: impl Into<String>) -> LinkError {
    LinkError::Protocol(message.into())
}

/// An open RPC link. Dropping it stops its tasks.
pub(super) struct Link {
    shared: Arc<Shared>,
    tasks: [JoinHandle<()>; 2],
}

/// What requests and the link's two tasks share.
struct Shared {
    outbox: Mutex<Outbox>,
    /// Wakes the writer: frames were queued.
    queued: Notify,
    replies: Arc<Replies>,
    frame_max: usize,
    /// The broker's resource alarm is on (`connection.blocked`).
    blocked: AtomicBool,
    /// The reader stopped: nothing more comes from the broker.
    ended: AtomicBool,
    reader_ended: Notify,
}

struct Outbox {
    frames: Vec<u8>,
    closed: bool,
}

impl Link {
    /// Connects (TLS for `amqps://`), opens the connection and channel 1, and starts
    /// consuming direct replies. `name` is shown in the broker's connection list.
    pub(super) async fn open(
        uri: &AMQPUri,
        tls: Option<&BrokerTls>,
        name: &str,
        replies: Arc<Replies>,
    ) -> Result<Link, LinkError> {
        let tcp = tokio::net::TcpStream::connect((uri.authority.host.as_str(), uri.authority.port))
            .await?;
        tcp.set_nodelay(true)?;
        match (&uri.scheme, tls) {
            (AMQPScheme::AMQPS, Some(tls)) => {
                let server_name = rustls::pki_types::ServerName::try_from(tls.server_name.clone())
                    .map_err(|e| protocol(format!("server name: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let stream = connector.connect(server_name, tcp).await?;
                Self::start(stream, uri, name, replies).await
            }
            (AMQPScheme::AMQPS, None) => Err(protocol("amqps:// without a TLS configuration")),
            (AMQPScheme::AMQP, _) => Self::start(tcp, uri, name, replies).await,
        }
    }

    async fn start<S>(
        mut stream: S,
        uri: &AMQPUri,
        name: &str,
        replies: Arc<Replies>,
    ) -> Result<Link, LinkError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut reader = FrameReader::new(FRAME_MIN_SIZE as usize);
        let tuned = handshake(&mut stream, &mut reader, uri, name).await?;
        reader.opened(tuned.frame_max as usize);
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Outbox {
                frames: Vec::new(),
                closed: false,
            }),
            queued: Notify::new(),
            replies,
            frame_max: tuned.frame_max as usize,
            blocked: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            reader_ended: Notify::new(),
        });
        let (read_half, write_half) = tokio::io::split(stream);
        let idle = tuned.heartbeat.map(|h| h * 2);
        let reading = tokio::spawn(read_loop(shared.clone(), read_half, reader, idle));
        let writing = tokio::spawn(write_loop(shared.clone(), write_half, tuned.heartbeat));
        Ok(Link {
            shared,
            tasks: [reading, writing],
        })
    }

    /// Queues a `mandatory` publish on the link's channel; it leaves with the writer's next
    /// write. The reply (or the return) arrives through `Replies`.
    pub(super) fn publish(
        &self,
        exchange: &ShortString,
        routing_key: &ShortString,
        payload: &[u8],
        properties: &BasicProperties,
    ) -> Result<(), Unsent> {
        let mut outbox = self.shared.outbox();
        if outbox.closed {
            return Err(Unsent::Closed);
        }
        if outbox.frames.len() > OUTBOX_LIMIT {
            return Err(Unsent::Backlogged);
        }
        // Written straight into the outbox (no buffer of its own to fill and copy); a
        // value that cannot be encoded (names are checked at load, so none should be)
        // takes back what it wrote and fails this request only.
        let frames = &mut outbox.frames;
        let start = frames.len();
        let header_size = publish_frame(
            frames,
            CHANNEL,
            exchange.as_str(),
            routing_key.as_str(),
            true,
        )
        .and_then(|()| {
            let header_start = frames.len();
            header_frame(frames, CHANNEL, payload.len() as u64, properties)
                .map(|()| frames.len() - header_start)
        });
        // The header frame must fit the negotiated frame size, else the broker closes the
        // whole connection: its table carries the client's query parameters.
        let refused = match header_size {
            Err(_) => Some(Unsent::Unencodable),
            Ok(size) if size > self.shared.frame_max => Some(Unsent::Oversized {
                frame_max: self.shared.frame_max,
            }),
            Ok(_) => None,
        };
        if let Some(refused) = refused {
            frames.truncate(start);
            return Err(refused);
        }
        for chunk in payload.chunks(self.shared.frame_max - FRAME_HEADER - 1) {
            body_frame(frames, CHANNEL, chunk);
        }
        drop(outbox);
        if start == 0 {
            self.shared.queued.notify_one();
        }
        Ok(())
    }

    pub(super) fn is_closed(&self) -> bool {
        self.shared.outbox().closed || self.tasks.iter().any(JoinHandle::is_finished)
    }

    /// Returns once nothing more can come from the broker (the reader stopped).
    pub(super) async fn ended(&self) {
        // Registered before looking, so the reader's notice cannot slip in between.
        let ended = self.shared.reader_ended.notified();
        if !self.shared.ended.load(Ordering::Acquire) {
            ended.await;
        }
    }

    pub(super) fn is_blocked(&self) -> bool {
        self.shared.blocked.load(Ordering::Relaxed)
    }

    /// Says goodbye to the broker (`connection.close`) and waits a little for its answer.
    pub(super) async fn close(&self) {
        let close = AMQPFrame::Method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: 200,
                reply_text: "switchboard closing".into(),
                class_id: 0,
                method_id: 0,
            })),
        );
        self.shared.send_last(&close);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ended()).await;
    }
}

/// Whether a message with these properties has a content header frame that fits
/// `frame_max` — for the other connection's publishes (lapin does not check, and the
/// broker closes a connection sent a larger frame).
pub(super) fn header_fits(properties: &BasicProperties, frame_max: usize) -> bool {
    let mut frame = Vec::with_capacity(256);
    header_frame(&mut frame, CHANNEL, 0, properties).is_ok() && frame.len() <= frame_max
}

impl Drop for Link {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.shared.replies.close();
    }
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame even past the limit (answers the broker needs), if still open.
    fn send(&self, frame: &AMQPFrame) {
        let Ok(encoded) = encode(Vec::new(), frame) else {
            return;
        };
        let mut outbox = self.outbox();
        if !outbox.closed {
            outbox.frames.extend_from_slice(&encoded);
            drop(outbox);
            self.queued.notify_one();
        }
    }

    /// Queues a last frame and closes the outbox to publishes.
    fn send_last(&self, frame: &AMQPFrame) {
        self.send(frame);
        self.shut();
    }

    /// No publish is taken any more, and the requests waiting for a reply fail now.
    fn shut(&self) {
        self.outbox().closed = true;
        self.replies.close();
    }
}

/// A delivery or a return, between its method frame and the end of its body.
struct Content {
    kind: ContentKind,
    properties: Option<BasicProperties>,
    size: u64,
    received: u64,
    /// Kept unless the body is larger than [`MAX_REPLY`] (then only counted).
    body: Vec<u8>,
}

enum ContentKind {
    Reply,
    Returned { code: u16, text: String },
}

impl Content {
    fn new(kind: ContentKind) -> Self {
        Self {
            kind,
            properties: None,
            size: 0,
            received: 0,
            body: Vec::new(),
        }
    }

    fn oversized(&self) -> bool {
        self.size > MAX_REPLY
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut stream: R,
    mut reader: FrameReader,
    idle: Option<Duration>,
) {
    let Err(error) = read_frames(&shared, &mut stream, &mut reader, idle).await;
    match &error {
        LinkError::ClosedByBroker { .. } => tracing::warn!(%error, "AMQP RPC link closed"),
        LinkError::Closed => {}
        _ => tracing::debug!(%error, "AMQP RPC link stopped"),
    }
    shared.shut();
    shared.ended.store(true, Ordering::Release);
    shared.reader_ended.notify_waiters();
}

/// Reads and handles frames until something ends the link.
async fn read_frames<R: AsyncRead + Unpin>(
    shared: &Shared,
    stream: &mut R,
    reader: &mut FrameReader,
    idle: Option<Duration>,
) -> Result<std::convert::Infallible, LinkError> {
    let mut content = None;
    loop {
        // Every frame already read first; the clock only runs while waiting for more.
        while let Some(incoming) = reader.parse()? {
            on_frame(shared, incoming, &mut content)?;
        }
        match idle {
            Some(idle) => tokio::time::timeout(idle, reader.fill(stream))
                .await
                .unwrap_or(Err(LinkError::Silent(idle)))?,
            None => reader.fill(stream).await?,
        }
    }
}

fn on_frame(
    shared: &Shared,
    incoming: Incoming,
    content: &mut Option<Content>,
) -> Result<(), LinkError> {
    let frame = match incoming {
        Incoming::Body {
            channel: CHANNEL,
            bytes,
        } => return on_body(shared, &bytes, content),
        Incoming::Body { .. } => return Err(protocol("a body frame on an unknown channel")),
        Incoming::Deliver { channel: CHANNEL } if content.is_none() => {
            *content = Some(Content::new(ContentKind::Reply));
            return Ok(());
        }
        Incoming::Deliver { .. } => return Err(protocol("a delivery out of place")),
        Incoming::Skipped {
            channel: CHANNEL, ..
        } if content.is_some() => {
            return Err(protocol("a method inside a message"));
        }
        Incoming::Skipped {
            channel,
            class,
            method,
        } => {
            tracing::debug!(channel, class, method, "AMQP RPC link ignored a method");
            return Ok(());
        }
        Incoming::Frame(frame) => frame,
    };
    match frame {
        AMQPFrame::Heartbeat => Ok(()),
        AMQPFrame::Header(CHANNEL, header) => {
            let Some(open) = content.as_mut().filter(|c| c.properties.is_none()) else {
                return Err(protocol("a content header out of place"));
            };
            open.size = header.body_size;
            if !open.oversized() {
                open.body.reserve_exact(header.body_size as usize);
            }
            open.properties = Some(header.properties);
            if header.body_size == 0 {
                finish(shared, content);
            }
            Ok(())
        }
        // A channel's content frames are contiguous; channel 0 may still speak in between.
        AMQPFrame::Method(CHANNEL, _) if content.is_some() => {
            Err(protocol("a method inside a message"))
        }
        AMQPFrame::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) => {
            *content = Some(Content::new(ContentKind::Reply));
            Ok(())
        }
        AMQPFrame::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Return(returned))) => {
            *content = Some(Content::new(ContentKind::Returned {
                code: returned.reply_code,
                text: returned.reply_text.to_string(),
            }));
            Ok(())
        }
        AMQPFrame::Method(CHANNEL, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
            shared.send_last(&method(
                CHANNEL,
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
            ));
            Err(refusal(
                AMQPClass::Channel(channel::AMQPMethod::Close(close)),
                "",
            ))
        }
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close))) => {
            shared.send_last(&method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            ));
            Err(refusal(
                AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                "",
            ))
        }
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => {
            Err(LinkError::Closed)
        }
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Blocked(blocked))) => {
            tracing::warn!(reason = %blocked.reason, "the broker blocks publishing on the RPC link");
            shared.blocked.store(true, Ordering::Relaxed);
            Ok(())
        }
        AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))) => {
            shared.blocked.store(false, Ordering::Relaxed);
            Ok(())
        }
        AMQPFrame::Method(CHANNEL, AMQPClass::Basic(basic::AMQPMethod::Cancel(_))) => {
            Err(protocol("the broker cancelled the reply consumer"))
        }
        other => {
            tracing::debug!(frame = ?other, "AMQP RPC link ignored a frame");
            Ok(())
        }
    }
}

fn on_body(shared: &Shared, bytes: &[u8], content: &mut Option<Content>) -> Result<(), LinkError> {
    let Some(open) = content.as_mut().filter(|c| c.properties.is_some()) else {
        return Err(protocol("a body frame out of place"));
    };
    open.received += bytes.len() as u64;
    if open.received > open.size {
        return Err(protocol("a body longer than its header said"));
    }
    if !open.oversized() {
        open.body.extend_from_slice(bytes);
    }
    if open.received == open.size {
        finish(shared, content);
    }
    Ok(())
}

/// A whole message arrived: it goes to the request waiting for it, if any.
fn finish(shared: &Shared, content: &mut Option<Content>) {
    let Some(done) = content.take() else { return };
    let oversized = done.oversized();
    let Content {
        kind,
        properties: Some(properties),
        body,
        ..
    } = done
    else {
        return;
    };
    match (kind, oversized) {
        (ContentKind::Reply, false) => shared.replies.deliver(Reply { body, properties }),
        (ContentKind::Reply, true) => shared.replies.fail(&properties, Failed::TooLarge),
        (ContentKind::Returned { code, text }, _) => shared.replies.fail(
            &properties,
            Failed::Refused(Refused::Returned { code, text }),
        ),
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut stream: W,
    heartbeat: Option<Duration>,
) {
    let mut batch = Vec::new();
    let error: std::io::Error = loop {
        let woken = match heartbeat {
            // Something every half heartbeat keeps the broker from giving up on us.
            Some(heartbeat) => tokio::time::timeout(heartbeat / 2, shared.queued.notified())
                .await
                .is_ok(),
            None => {
                shared.queued.notified().await;
                true
            }
        };
        if woken {
            // Let the requests that run in this turn queue theirs too: one write for all.
            tokio::task::yield_now().await;
        }
        let last = {
            let mut outbox = shared.outbox();
            std::mem::swap(&mut outbox.frames, &mut batch);
            outbox.closed
        };
        if batch.is_empty() {
            if woken && !last {
                continue; // already written with an earlier batch
            }
            batch.extend_from_slice(&HEARTBEAT);
        }
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&batch).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(error)) => break error,
            Err(_) => break std::io::ErrorKind::TimedOut.into(),
        }
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
        if last {
            // The broker answers our `close` (or we answered its own): nothing follows.
            return;
        }
    };
    tracing::debug!(%error, "AMQP RPC link cannot write");
    shared.shut();
}
