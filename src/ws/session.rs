//! One open socket, whatever its backend. Four things run side by side in the socket's
//! task until one of them decides how it ends:
//!
//! - the reader: client frames → `Inbound` queue (bounded: when the backend is slow,
//!   the reader waits, the kernel buffer fills, and TCP slows the client down);
//! - the writer: `Outbound` queue → frames, batched per flush, plus keep-alive pings;
//! - the backend, between the two queues;
//! - the watchdog: idle timeout, unanswered pings, token expiry; and the shutdown signal.
//!
//! Then the close: an error frame if there is something to say, the close code, and a
//! bounded wait for the client's close reply.

use super::budget::Budget;
use super::handshake::Admission;
use super::{
    Exchange, Finish, Frame, Inbound, InboundRx, Outbound, OutboundTx, Payload, Queued, WsRoute,
};
use crate::error::GatewayError;
use crate::queue;
use crate::routing::{RouteTable, Target};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use http::HeaderMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Client frames waiting for the backend, and backend messages waiting for the client.
/// Deep enough that a busy socket moves messages in large batches (one read, one DATA
/// frame, one write for many: 11% less gateway CPU per message than at 32); the bytes
/// they hold are bounded by the socket's budgets (`budget.rs`), the count only bounds
/// the bookkeeping. A queue allocates its buffer only once something waits in it.
const INBOUND_BUFFER: usize = 128;
const OUTBOUND_BUFFER: usize = 128;
/// At most this many frames are written per flush.
const MAX_BATCH: usize = 128;
/// How long the final frames and the client's close reply may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Close codes (RFC 6455 §7.4.1).
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const INTERNAL: u16 = 1011;

/// What `handshake` prepared for the socket.
pub(super) struct Session {
    pub table: Arc<RouteTable>,
    pub index: usize,
    pub admission: Admission,
    pub metadata: HeaderMap,
}

/// How a socket ends.
#[derive(Debug)]
enum End {
    /// The backend finished: `Ok` → 1000, `Err` → error frame + 1011.
    Backend(Finish),
    /// A policy refusal after the upgrade: error frame + 1008.
    Policy(GatewayError),
    /// A client frame over `limits.max_ws_frame`: 1009.
    TooBig,
    /// `limits.ws_idle_timeout` without a data frame either way: 1001.
    Idle,
    /// The gateway is shutting down: 1001.
    Shutdown,
    /// The client sent a close frame (answered by tungstenite).
    ClientClosed,
    /// The connection broke, or pings went unanswered: nobody to talk to.
    ClientGone,
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Runs the socket to its end. The socket is split here, before the task's future is
/// made: an async fn keeps its arguments for its whole life, and the unsplit socket is
/// 368 bytes that an idle socket would hold for nothing.
pub(super) fn run(socket: WebSocket, session: Session) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    serve(sink, stream, session)
}

async fn serve(mut sink: Sink, mut stream: Stream, session: Session) {
    let route = &session.table.routes[session.index];
    let Target::WebSocket(ws) = &route.target else {
        return;
    };
    let admission = &session.admission;
    let mut shutdown = admission.permit.shutdown_signal();
    let started = Instant::now();
    let activity = Activity::new(started);
    let limits = &session.table.limits;
    let buffered = limits.max_ws_buffered.0.max(limits.max_ws_frame.0);
    let budget = Budget::new(buffered);
    let idle_timeout = nonzero(limits.ws_idle_timeout.0);
    let ping_interval = nonzero(limits.ws_ping_interval.0);
    tracing::debug!("websocket open");

    let (inbound_tx, inbound_rx) = queue::bounded(INBOUND_BUFFER);
    let (outbound_tx, mut outbound_rx) = queue::bounded(OUTBOUND_BUFFER);
    let exchange = Exchange {
        table: session.table.clone(),
        metadata: session.metadata,
        inbound: InboundRx(inbound_rx),
        outbound: OutboundTx {
            sender: outbound_tx,
            budget: Budget::new(buffered),
        },
    };

    // Everything here is dropped when the `select!` returns: an unfinished backend call
    // is cancelled then. The reader and the writer are pinned here and lent to the parts
    // that run them: a future passed by value to an async fn and pinned there takes its
    // size twice in the socket's state.
    let end = {
        let reader = std::pin::pin!(read(
            &mut stream,
            inbound_tx,
            ws,
            admission,
            &activity,
            &budget
        ));
        let writer = std::pin::pin!(write(
            &mut sink,
            &mut outbound_rx,
            ws,
            ping_interval,
            &activity
        ));
        tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => End::Shutdown,
            end = noting_yields(reader, &activity) => end,
            end = relay(ws.backend.run(exchange), writer) => end,
            end = watchdog(&activity, idle_timeout, ping_interval, admission.expires_at) => end,
        }
    };

    let code = close(&mut sink, &mut stream, &end, ws).await;
    tracing::info!(
        target: "switchboard::access",
        close = code,
        end = ?end,
        seconds = started.elapsed().as_secs_f64(),
        "websocket closed"
    );
}

/// Runs the backend and the writer; ends when the writer has sent everything the
/// backend produced (→ the backend's result), or cannot write (→ the client is gone).
async fn relay<W: Future<Output = Result<(), axum::Error>>>(
    mut backend: impl Future<Output = Finish> + Unpin,
    mut writer: std::pin::Pin<&mut W>,
) -> End {
    let mut finished = None;
    loop {
        tokio::select! {
            result = &mut backend, if finished.is_none() => finished = Some(result),
            written = writer.as_mut() => return match (written, finished) {
                (Err(_), _) => End::ClientGone,
                (Ok(()), Some(result)) => End::Backend(result),
                // The outbound queue only closes when the backend is done.
                (Ok(()), None) => End::Backend(backend.await),
            },
        }
    }
}

/// Client frames → `inbound`, until the client closes or breaks a limit.
async fn read(
    stream: &mut Stream,
    inbound: queue::Sender<Box<Inbound>>,
    ws: &WsRoute,
    admission: &Admission,
    activity: &Activity,
    budget: &Budget,
) -> End {
    loop {
        let payload = match stream.next().await {
            None => return End::ClientGone,
            Some(Err(error)) if is_too_big(&error) => return End::TooBig,
            Some(Err(error)) => {
                tracing::debug!(%error, "websocket read failed");
                return End::ClientGone;
            }
            Some(Ok(Message::Close(_))) => return End::ClientClosed,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                activity.seen();
                continue;
            }
            Some(Ok(Message::Text(text))) => Payload::Text(text),
            Some(Ok(Message::Binary(bytes))) => Payload::Binary(bytes),
        };
        activity.data_in();
        ws.metrics.frames_in.increment(1);
        if let Some(policy) = &admission.frame_policy
            && let Err(refusal) = policy()
        {
            return End::Policy(refusal);
        }
        // Waiting here is the backpressure; it is not a silent peer.
        activity.waiting.store(true, Ordering::Relaxed);
        let frame = if is_end_marker(payload.as_bytes()) {
            Inbound::End
        } else {
            let share = budget.take(payload.as_bytes().len()).await;
            Inbound::Frame(Frame::new(payload, share))
        };
        let sent = inbound.send(Box::new(frame)).await;
        activity.waiting.store(false, Ordering::Relaxed);
        if sent.is_err() {
            // The backend is done; `relay` is about to end the socket.
            std::future::pending::<()>().await;
        }
    }
}

/// `reader`, noting in `activity` each time it gives way (returns `Pending`): until it
/// does, the frames it reads came in together, and one clock reading dates them all.
async fn noting_yields<F: Future>(
    mut reader: std::pin::Pin<&mut F>,
    activity: &Activity,
) -> F::Output {
    std::future::poll_fn(|cx| {
        let poll = reader.as_mut().poll(cx);
        if poll.is_pending() {
            activity.reader_yielded.store(true, Ordering::Relaxed);
        }
        poll
    })
    .await
}

/// `outbound` → frames, batched per flush; pings every `ping_interval`. Returns `Ok`
/// once the backend is done and everything it sent is written.
async fn write(
    sink: &mut Sink,
    outbound: &mut queue::Receiver<Box<Queued>>,
    ws: &WsRoute,
    ping_interval: Option<Duration>,
    activity: &Activity,
) -> Result<(), axum::Error> {
    let mut ping = ping_interval.map(|every| {
        let mut interval = tokio::time::interval_at(Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    // Taken in batches: each receive takes the queue's lock once per batch instead of
    // once per message. Empty until the first message
    // (an idle socket allocates nothing for it).
    let mut batch = Vec::new();
    loop {
        // Pings first: a busy stream must not starve them, or the watchdog would take
        // a healthy client for dead.
        tokio::select! {
            biased;
            _ = tick(&mut ping) => {
                activity.pinged();
                sink.send(Message::Ping(Bytes::new())).await?;
                continue;
            }
            received = outbound.recv_many(&mut batch, MAX_BATCH) => if received == 0 {
                return sink.flush().await;
            },
        };
        // Written into the buffer first: that gives their budget back, so a backend
        // that waited for room can go on during the turn below.
        let mut written = feed_all(sink, &mut batch).await?;
        // One turn for everything else that is ready before writing — the backend's next
        // answers, the upstream connection's tasks — so that what they produce now leaves
        // in this write: each write to the socket costs the kernel's whole TCP path.
        tokio::task::yield_now().await;
        // Only what is there now (a closed queue adds nothing; the loop ends above).
        let _ = outbound.recv_many(&mut batch, MAX_BATCH).now_or_never();
        written += feed_all(sink, &mut batch).await?;
        sink.flush().await?;
        ws.metrics.frames_out.increment(written as u64);
        activity.data();
    }
}

/// The batch into the writer's buffer; each message's share of the budget goes back once
/// it is copied there. Returns how many there were.
#[allow(clippy::vec_box)] // boxed as the queue carries them
async fn feed_all(sink: &mut Sink, batch: &mut Vec<Box<Queued>>) -> Result<usize, axum::Error> {
    let mut count = 0;
    for queued in batch.drain(..) {
        let Queued { item, share } = *queued;
        count += match item {
            Outbound::Message(json) => {
                sink.feed(Message::Text(json)).await?;
                1
            }
            Outbound::Rejected(error) => {
                sink.feed(error_frame(&error)).await?;
                1
            }
            Outbound::Messages(batch) => {
                let frames = batch.len();
                for text in batch.frames() {
                    let frame = match text {
                        Ok(json) => Message::Text(json),
                        Err(error) => {
                            tracing::error!(%error, "websocket frame not sent");
                            error_frame(&error)
                        }
                    };
                    sink.feed(frame).await?;
                }
                frames
            }
        };
        drop(share);
    }
    Ok(count)
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// `{"error": <google.rpc.Status>}`.
fn error_frame(error: &GatewayError) -> Message {
    let json = serde_json::json!({ "error": error.to_json() }).to_string();
    Message::Text(Utf8Bytes::from(json))
}

/// Ends the socket when it is idle, its client stopped answering pings, or its
/// admission expired.
async fn watchdog(
    activity: &Activity,
    idle_timeout: Option<Duration>,
    ping_interval: Option<Duration>,
    expires_at: Option<Instant>,
) -> End {
    loop {
        let now = Instant::now();
        if expires_at.is_some_and(|at| now >= at) {
            return End::Policy(
                GatewayError::new(tonic::Code::Unauthenticated, "the token has expired")
                    .with_status(http::StatusCode::UNAUTHORIZED),
            );
        }
        let idle_at = idle_timeout.map(|timeout| activity.last_data() + timeout);
        if idle_at.is_some_and(|at| now >= at) {
            return End::Idle;
        }
        if let Some(interval) = ping_interval
            && let Some(sent) = activity.unanswered_ping()
            && now >= sent + interval
            && !activity.waiting.load(Ordering::Relaxed)
        {
            return End::ClientGone;
        }
        let next = [idle_at, ping_interval.map(|p| now + p), expires_at]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// Sends what is left to say and the close frame, then waits (bounded) for the
/// client's close reply so that the connection ends cleanly. Returns the close code
/// (0 when the socket ended without one from us).
async fn close(sink: &mut Sink, stream: &mut Stream, end: &End, ws: &WsRoute) -> u16 {
    let (error, code, reason) = match end {
        End::Backend(Ok(())) => (None, NORMAL, ""),
        End::Backend(Err(error)) => (Some(error), INTERNAL, "backend error"),
        End::Policy(error) => (Some(error), POLICY, "policy"),
        End::TooBig => (None, TOO_BIG, "frame too large"),
        End::Idle => (None, GOING_AWAY, "idle timeout"),
        End::Shutdown => (None, GOING_AWAY, "server shutting down"),
        End::ClientClosed => {
            // Let tungstenite's close reply go out.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
            return 0;
        }
        End::ClientGone => return 0,
    };
    let goodbye = async {
        if let Some(error) = error {
            sink.feed(error_frame(error)).await?;
            ws.metrics.frames_out.increment(1);
        }
        sink.send(Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        })))
        .await?;
        // Read until the client's close reply, so that unread client data does not
        // turn our close into a reset.
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
    code
}

/// `{"end": true}`, the client's "no more messages".
fn is_end_marker(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EndMarker {
        end: bool,
    }
    payload.len() <= 32
        && serde_json::from_slice::<EndMarker>(payload).is_ok_and(|marker| marker.end)
}

fn is_too_big(error: &axum::Error) -> bool {
    use std::error::Error;
    matches!(
        error
            .source()
            .and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// When the client was last heard from, in milliseconds since the socket opened, shared
/// by the reader, the writer and the watchdog (all in the socket's one task).
struct Activity {
    started: Instant,
    /// Any frame from the client (pongs included).
    seen_ms: AtomicU64,
    /// A data frame either way.
    data_ms: AtomicU64,
    /// The last ping sent (0: none yet).
    ping_ms: AtomicU64,
    /// The reader waits for the backend: the client's silence is ours.
    waiting: AtomicBool,
    /// The reader gave way since it last read the clock (see `noting_yields`).
    reader_yielded: AtomicBool,
}

impl Activity {
    fn new(started: Instant) -> Self {
        Self {
            started,
            seen_ms: AtomicU64::new(0),
            data_ms: AtomicU64::new(0),
            ping_ms: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            reader_yielded: AtomicBool::new(true),
        }
    }

    fn now_ms(&self) -> u64 {
        // Never 0, so that 0 can mean "never".
        (self.started.elapsed().as_millis() as u64).max(1)
    }

    fn seen(&self) {
        self.seen_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A data frame from the client: seen, and activity. The clock is read for the first
    /// frame after the reader gave way; the frames it reads in the same go (at most a
    /// task's cooperative budget of them, a fraction of a millisecond) share that time.
    fn data_in(&self) {
        if !self.reader_yielded.swap(false, Ordering::Relaxed) {
            return;
        }
        let now = self.now_ms();
        self.seen_ms.store(now, Ordering::Relaxed);
        self.data_ms.store(now, Ordering::Relaxed);
    }

    fn data(&self) {
        self.data_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn pinged(&self) {
        self.ping_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    fn last_data(&self) -> Instant {
        self.started + Duration::from_millis(self.data_ms.load(Ordering::Relaxed))
    }

    /// When the oldest ping not followed by any client frame was sent.
    fn unanswered_ping(&self) -> Option<Instant> {
        let ping = self.ping_ms.load(Ordering::Relaxed);
        let seen = self.seen_ms.load(Ordering::Relaxed);
        (ping > 0 && ping > seen).then(|| self.started + Duration::from_millis(ping))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns: for an async fn, its future, without making one.
    fn future_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle socket's memory is mostly its task's future (BENCHMARKS.md, "An idle
    /// WebSocket's memory"). rustc keeps an async fn's arguments, and a future pinned
    /// inside the fn it was passed to, in slots of their own: written that way, the
    /// session's future was 3.4 KiB; as it is, about 2. This fails if it grows back.
    #[test]
    fn a_sockets_state_stays_small() {
        let serve: fn(Sink, Stream, Session) -> _ = serve;
        let size = future_size(serve);
        assert!(size <= 2_600, "the session's future is {size} bytes");
    }

    #[test]
    fn end_marker_is_exact() {
        assert!(is_end_marker(br#"{"end": true}"#));
        assert!(is_end_marker(br#" {"end":true} "#));
        assert!(!is_end_marker(br#"{"end": false}"#));
        assert!(!is_end_marker(br#"{"end": true, "text": "x"}"#));
        assert!(!is_end_marker(br#"{"text": "end"}"#));
        assert!(!is_end_marker(b"not json"));
    }

    const SHORT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn watchdog_closes_idle_sockets() {
        let activity = Activity::new(Instant::now());
        activity.data();
        let end = tokio::time::timeout(
            Duration::from_secs(2),
            watchdog(&activity, Some(SHORT), None, None),
        )
        .await;
        assert!(matches!(end, Ok(End::Idle)));
    }

    #[tokio::test]
    async fn watchdog_drops_silent_peers_but_not_backpressured_ones() {
        let activity = Activity::new(Instant::now());
        activity.pinged();
        activity.waiting.store(true, Ordering::Relaxed);
        let waiting =
            tokio::time::timeout(SHORT * 6, watchdog(&activity, None, Some(SHORT), None)).await;
        assert!(waiting.is_err(), "a reader waiting on the backend is alive");
        activity.waiting.store(false, Ordering::Relaxed);
        let end = tokio::time::timeout(
            Duration::from_secs(2),
            watchdog(&activity, None, Some(SHORT), None),
        )
        .await;
        assert!(matches!(end, Ok(End::ClientGone)));
        activity.seen();
        let answered =
            tokio::time::timeout(SHORT * 4, watchdog(&activity, None, Some(SHORT), None)).await;
        assert!(answered.is_err(), "a pong answers the ping");
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_reads_the_clock_again_once_it_has_given_way() {
        let activity = Activity::new(Instant::now());
        activity.data_in();
        let first = activity.data_ms.load(Ordering::Relaxed);
        assert!(first > 0, "the first frame is dated");
        // Frames read in the same go share that time.
        assert!(!activity.reader_yielded.load(Ordering::Relaxed));
        noting_yields(std::pin::pin!(tokio::time::sleep(SHORT)), &activity).await;
        assert!(activity.reader_yielded.load(Ordering::Relaxed));
        // The first frame after a wait has its own time.
        activity.data_in();
        let second = activity.data_ms.load(Ordering::Relaxed);
        // (Paused time: exactly the wait; the first was at 0, kept as 1 ms.)
        assert_eq!(second, SHORT.as_millis() as u64, "{first} → {second}");
        assert_eq!(activity.seen_ms.load(Ordering::Relaxed), second);
    }

    #[tokio::test]
    async fn watchdog_enforces_expiry_with_a_policy_close() {
        let activity = Activity::new(Instant::now());
        let at = Instant::now() + SHORT;
        let end = tokio::time::timeout(
            Duration::from_secs(2),
            watchdog(&activity, None, None, Some(at)),
        )
        .await;
        assert!(matches!(end, Ok(End::Policy(e)) if e.code == tonic::Code::Unauthenticated));
    }
}
