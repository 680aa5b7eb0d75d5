//! One open HTTP/2 connection to a backend, driven with h2 directly: calls are started
//! from the caller's own task, and their answers come back to it.
//!
//! hyper's client, used before, put three things between a call and h2: a channel to
//! its connection task, a task per call that waited for the response, and for a body
//! not sent at once (every unary body: a new stream gets send capacity only when its
//! HEADERS are written) a task that piped it. Here a unary call hands its headers and its
//! one framed message to h2 in the caller's task ([`Link::start`]) and awaits h2's
//! response future there: no channel, no task per call. A WebSocket's messages go the
//! same way: the socket's task writes each chunk into the stream itself
//! ([`RequestChunks`]), waiting for flow control there. Only the bodies of tonic's own
//! clients (health checks, reflection) get a task that pipes them ([`pipe`]).
//!
//! The connection's task ([`run`]) polls h2's connection and sends keep-alive pings by
//! the rules in connection.rs: only while calls are open, at most every
//! `KEEP_ALIVE_INTERVAL`; a ping unanswered within `KEEP_ALIVE_TIMEOUT` ends the
//! connection (its open calls fail as UNAVAILABLE, the next call reconnects).

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame};
use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A request body: one framed unary message, or whatever a streaming caller sends.
pub enum RequestBody {
    /// Sent with the headers, in the caller's task; cheap to keep for a resend.
    Message(Bytes),
    /// Written chunk by chunk by the caller, from its own task ([`RequestChunks`]).
    Chunks(ChunkBody),
    /// Piped by a task of its own as the body yields it, within flow control.
    Stream(tonic::body::Body),
}

/// What the calls on a connection and its task know of each other.
#[derive(Default)]
struct Liveness {
    /// Calls started and not yet over (their answer dropped): pings go out only then.
    open_calls: AtomicUsize,
    /// The connection's task has ended: no call can start on it any more.
    closed: AtomicBool,
}

/// A handle on one open connection; clones share it.
#[derive(Clone)]
pub(super) struct Link {
    sender: SendRequest<Bytes>,
    liveness: Arc<Liveness>,
}

/// A call whose request h2 has taken: its response, once the server answers.
pub(super) struct PendingResponse {
    response: ResponseFuture,
    call: OpenCall,
}

/// Counts a call as open while it lives (its response awaited, then its body read), and
/// stops what still sends its request body when the caller lets the call go.
struct OpenCall {
    liveness: Arc<Liveness>,
    request: Sending,
}

/// What sends the rest of a call's request body.
enum Sending {
    /// Nothing: it went with the headers.
    Done,
    /// Its writer, and the task that writes with it, if any ([`pipe`]).
    Chunks(ChunkFeed, Option<tokio::task::AbortHandle>),
}

impl OpenCall {
    fn new(liveness: &Arc<Liveness>) -> Self {
        liveness.open_calls.fetch_add(1, Ordering::Relaxed);
        Self {
            liveness: liveness.clone(),
            request: Sending::Done,
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.liveness.open_calls.fetch_sub(1, Ordering::Relaxed);
        // The answer is over or abandoned: what is left of the request is moot. Its
        // stream is let go, and h2 resets it (CANCEL) if it is still open.
        match &self.request {
            Sending::Done => {}
            Sending::Chunks(feed, pipe) => {
                feed.close();
                if let Some(pipe) = pipe {
                    pipe.abort();
                }
            }
        }
    }
}

impl Link {
    /// Whether the connection is gone (closed by either side, or keep-alive gave up).
    pub(super) fn is_closed(&self) -> bool {
        self.liveness.closed.load(Ordering::Acquire)
    }

    /// Hands a request to h2; fails, with the body given back, when the connection
    /// takes no new stream (it is closing, broken, or out of stream ids): then nothing
    /// left and the request can go on another connection.
    pub(super) fn start(
        &self,
        head: Request<()>,
        body: RequestBody,
    ) -> Result<PendingResponse, (h2::Error, RequestBody)> {
        // A fresh clone has no stream of its own waiting to open, which is all h2's
        // `poll_ready` waits for; `send_request` makes its other checks itself.
        let mut sender = self.sender.clone();
        let end_of_stream = matches!(&body, RequestBody::Message(message) if message.is_empty());
        let (response, mut stream) = match sender.send_request(head, end_of_stream) {
            Ok(started) => started,
            Err(error) => return Err((error, body)),
        };
        let mut call = OpenCall::new(&self.liveness);
        match body {
            RequestBody::Message(message) if end_of_stream => drop(message),
            // h2 holds it until the stream may send it: when the connection's task writes
            // the HEADERS, in the same write (corked.rs).
            RequestBody::Message(message) => {
                if let Err(error) = stream.send_data(message, true) {
                    tracing::debug!(%error, "request message not taken by h2");
                }
            }
            RequestBody::Chunks(mut body) => {
                if let Some(feed) = body.0.take() {
                    feed.start(stream);
                    call.request = Sending::Chunks(feed, None);
                }
            }
            RequestBody::Stream(body) => {
                let (chunks, feed) = RequestChunks::with(Some(stream), 1);
                let task = tokio::spawn(Box::pin(pipe(body, chunks)));
                call.request = Sending::Chunks(feed, Some(task.abort_handle()));
            }
        }
        Ok(PendingResponse { response, call })
    }
}

impl PendingResponse {
    /// The response head, its body to read as it comes.
    pub(super) async fn response(self) -> Result<Response<ResponseBody>, h2::Error> {
        let Self { response, call } = self;
        let (parts, stream) = response.await?.into_parts();
        Ok(Response::from_parts(
            parts,
            ResponseBody {
                stream,
                state: BodyState::Data,
                _call: call,
            },
        ))
    }
}

/// A response body as it arrives: DATA frames, then trailers. Each frame read gives its
/// bytes back to the flow-control windows, so the server may send more.
pub struct ResponseBody {
    stream: RecvStream,
    state: BodyState,
    _call: OpenCall,
}

#[derive(Clone, Copy, PartialEq)]
enum BodyState {
    Data,
    Trailers,
    Done,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if self.state == BodyState::Data {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only for a stream already closed, which needs no window.
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Some(Err(error)));
                }
                None => self.state = BodyState::Trailers,
            }
        }
        if self.state == BodyState::Done {
            return Poll::Ready(None);
        }
        let trailers = ready!(self.stream.poll_trailers(cx));
        self.state = BodyState::Done;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }
}

/// Writes a streaming call's request body from the caller's task: chunks of framed
/// messages. `end` half-closes the stream (END_STREAM); dropped before that (the client
/// left), the stream is reset with CANCEL, so the backend sees a cancelled call rather
/// than a finished request.
///
/// Flow control: a chunk waits until the stream has some send capacity, then goes whole
/// (h2 holds what the window does not allow yet), so one chunk per stream waits in h2 at
/// most, and capacity is claimed only with a chunk in hand: a quiet stream pins none of
/// the connection's window. Before the call has started, `early` chunks may wait for it.
pub(crate) struct RequestChunks {
    feed: ChunkFeed,
    ended: bool,
}

/// The request body of [`RequestChunks`], which `Link::start` connects to the stream;
/// dropped unstarted (the call never left), it tells the writer the call is over.
pub struct ChunkBody(Option<ChunkFeed>);

impl Drop for ChunkBody {
    fn drop(&mut self) {
        if let Some(feed) = self.0.take() {
            feed.close();
        }
    }
}

/// What a writer and its call's stream share.
#[derive(Clone)]
struct ChunkFeed(Arc<Mutex<Feed>>);

struct Feed {
    /// The call's stream, once it has started (and until it is over).
    stream: Option<SendStream<Bytes>>,
    /// Chunks written before the call started, at most `early_limit`.
    early: VecDeque<Bytes>,
    early_limit: usize,
    /// `end` was called.
    ended: bool,
    /// The writer left before the end: the stream is reset, now or when it starts.
    abandoned: bool,
    /// The call is over (its answer dropped): writes fail.
    closed: bool,
    /// The writer, while it waits for the call to start or for capacity.
    writer: Option<Waker>,
}

/// The request stream is over: nothing more can be sent on it.
#[derive(Debug)]
pub(crate) struct Closed;

impl RequestChunks {
    /// A writer and the body it writes; `early` chunks may wait for the call to start.
    pub(crate) fn new(early: usize) -> (Self, RequestBody) {
        let (chunks, feed) = Self::with(None, early);
        (chunks, RequestBody::Chunks(ChunkBody(Some(feed))))
    }

    /// A writer on `stream` (or on the stream its call will start), and what it shares
    /// with the call.
    fn with(stream: Option<SendStream<Bytes>>, early: usize) -> (Self, ChunkFeed) {
        let feed = ChunkFeed(Arc::new(Mutex::new(Feed {
            stream,
            early: VecDeque::new(),
            early_limit: early.max(1),
            ended: false,
            abandoned: false,
            closed: false,
            writer: None,
        })));
        let chunks = Self {
            feed: feed.clone(),
            ended: false,
        };
        (chunks, feed)
    }

    /// Sends `chunk` (framed messages) once the stream may take it. Fails once the
    /// stream is over (ended, reset, or the call finished).
    pub(crate) async fn send(&self, chunk: Bytes) -> Result<(), Closed> {
        if self.ended {
            return Err(Closed);
        }
        let mut chunk = Some(chunk);
        poll_fn(|cx| {
            let mut feed = self.feed.lock();
            if feed.closed {
                return Poll::Ready(Err(Closed));
            }
            let Some(stream) = feed.stream.as_mut() else {
                if feed.early.len() < feed.early_limit {
                    feed.early.extend(chunk.take());
                    return Poll::Ready(Ok(()));
                }
                feed.writer = Some(cx.waker().clone());
                return Poll::Pending;
            };
            while stream.capacity() == 0 {
                stream.reserve_capacity(1);
                match stream.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(_)) | None) => {
                        feed.closed = true;
                        return Poll::Ready(Err(Closed));
                    }
                    Poll::Pending => {
                        // `close` wakes it too: the call may end while it waits.
                        feed.writer = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
            }
            let Some(chunk) = chunk.take() else {
                return Poll::Ready(Ok(()));
            };
            Poll::Ready(stream.send_data(chunk, false).map_err(|_| Closed))
        })
        .await
    }

    /// No more messages: the stream ends once the chunks sent so far have gone.
    pub(crate) fn end(&mut self) {
        self.ended = true;
        let mut feed = self.feed.lock();
        feed.ended = true;
        if let Some(stream) = feed.stream.as_mut() {
            // Fails only for a stream already over.
            let _ = stream.send_data(Bytes::new(), true);
        }
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.ended
    }
}

impl Drop for RequestChunks {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut feed = self.feed.lock();
        feed.abandoned = true;
        feed.early.clear();
        if let Some(stream) = feed.stream.as_mut() {
            stream.send_reset(Reason::CANCEL);
        }
    }
}

impl ChunkFeed {
    fn lock(&self) -> MutexGuard<'_, Feed> {
        // Every change leaves the feed consistent: a panicking holder leaves it usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The call has started on `stream`: the chunks written so far go to h2 (which holds
    /// them until the stream opens), and the writer writes straight to it from now on.
    fn start(&self, mut stream: SendStream<Bytes>) {
        let mut feed = self.lock();
        if feed.abandoned {
            stream.send_reset(Reason::CANCEL);
            feed.closed = true;
            return;
        }
        for chunk in feed.early.drain(..) {
            // Fails only for a stream already over, which the next write learns.
            let _ = stream.send_data(chunk, false);
        }
        if feed.ended {
            let _ = stream.send_data(Bytes::new(), true);
        }
        feed.stream = Some(stream);
        if let Some(writer) = feed.writer.take() {
            writer.wake();
        }
    }

    /// The call is over: its stream is let go, a waiting writer learns it.
    fn close(&self) {
        let mut feed = self.lock();
        feed.closed = true;
        feed.stream = None;
        feed.early.clear();
        if let Some(writer) = feed.writer.take() {
            writer.wake();
        }
    }
}

/// Writes a body that yields its chunks itself (tonic's clients) with `chunks`, as the
/// body yields them. A body that fails resets the stream (CANCEL, when `chunks` goes
/// unended): the server sees an abandoned call, not a finished request. Trailers are
/// not sent: a gRPC request has none.
async fn pipe<B>(mut body: B, mut chunks: RequestChunks)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(chunk) = frame.into_data()
                    && !chunk.is_empty()
                    && chunks.send(chunk).await.is_err()
                {
                    return; // The call is over.
                }
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "request body failed; the stream is cancelled");
                return;
            }
            None => return chunks.end(),
        }
    }
}

/// The HTTP/2 handshake over `io`; the connection's own future (to spawn, see [`run`])
/// and the link calls start on.
pub(super) async fn handshake<T>(
    io: T,
    stream_window: u32,
    connection_window: u32,
) -> Result<
    (
        Link,
        impl Future<Output = Result<(), String>> + Send + 'static,
    ),
    h2::Error,
>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(stream_window)
        .initial_connection_window_size(connection_window)
        // What hyper's client set: bounds on what a backend can make us hold (its
        // header lists; what one stream may have waiting to be sent), no server push,
        // and a cap on streams a misbehaving peer makes us reset.
        .max_header_list_size(16 * 1024)
        .max_send_buffer_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .initial_max_send_streams(100)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<T, Bytes>(io)
        .await?;
    let liveness = Arc::new(Liveness::default());
    let link = Link {
        sender,
        liveness: liveness.clone(),
    };
    Ok((link, run(connection, liveness)))
}

/// Drives the connection until it ends, sending keep-alive pings while calls are open;
/// marks the link closed when it ends.
async fn run<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    liveness: Arc<Liveness>,
) -> Result<(), String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut keep_alive = connection.ping_pong().map(KeepAlive::new);
    let ended = poll_fn(|cx| {
        if let Poll::Ready(result) = Pin::new(&mut connection).poll(cx) {
            return Poll::Ready(result.map_err(|e| e.to_string()));
        }
        match &mut keep_alive {
            Some(keep_alive) => keep_alive.poll(cx, &liveness),
            None => Poll::Pending,
        }
    })
    .await;
    liveness.closed.store(true, Ordering::Release);
    ended
}

/// The keep-alive pings of one connection.
struct KeepAlive {
    pings: PingPong,
    /// When the next ping is due, or (while `awaiting`) when its answer is overdue.
    timer: Pin<Box<Sleep>>,
    awaiting: bool,
}

impl KeepAlive {
    fn new(pings: PingPong) -> Self {
        Self {
            pings,
            timer: Box::pin(tokio::time::sleep(super::connection::KEEP_ALIVE_INTERVAL)),
            awaiting: false,
        }
    }

    fn restart(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
    }

    /// Pending while the connection is well; an error when a ping went unanswered.
    fn poll(&mut self, cx: &mut Context<'_>, liveness: &Liveness) -> Poll<Result<(), String>> {
        use super::connection::{KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT};
        loop {
            if self.awaiting {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.awaiting = false;
                        self.restart(KEEP_ALIVE_INTERVAL);
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error.to_string())),
                    Poll::Pending => {}
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.awaiting {
                return Poll::Ready(Err(format!(
                    "no answer to a keep-alive ping within {KEEP_ALIVE_TIMEOUT:?}"
                )));
            }
            if liveness.open_calls.load(Ordering::Relaxed) == 0 {
                self.restart(KEEP_ALIVE_INTERVAL);
                continue;
            }
            if let Err(error) = self.pings.send_ping(Ping::opaque()) {
                return Poll::Ready(Err(error.to_string()));
            }
            self.awaiting = true;
            self.restart(KEEP_ALIVE_TIMEOUT);
        }
    }
}

/// Copies a request's head (method, URI, version, headers), to resend it.
pub(super) fn copy_head(head: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::net::{TcpListener, TcpStream};

    /// An h2 server on a small window: hands each request and its responder to `serve`.
    async fn server<F, Fut>(serve: F) -> std::net::SocketAddr
    where
        F: Fn(Request<RecvStream>, h2::server::SendResponse<Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::Builder::new()
                .initial_window_size(16 * 1024)
                .handshake::<_, Bytes>(socket)
                .await
                .unwrap();
            while let Some(Ok((request, respond))) = connection.accept().await {
                tokio::spawn(serve(request, respond));
            }
        });
        address
    }

    async fn link_to(address: std::net::SocketAddr) -> Link {
        let socket = TcpStream::connect(address).await.unwrap();
        let (link, connection) = handshake(socket, 1 << 20, 1 << 20).await.unwrap();
        tokio::spawn(connection);
        link
    }

    fn head() -> Request<()> {
        Request::post("http://backend/test.Echo/Stream")
            .body(())
            .unwrap()
    }

    fn streamed<S>(chunks: S) -> RequestBody
    where
        S: futures_util::Stream<Item = Bytes> + Send + 'static,
    {
        use futures_util::StreamExt;
        let frames = chunks.map(|chunk| Ok::<_, tonic::Status>(Frame::data(chunk)));
        RequestBody::Stream(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
    }

    /// A streamed body larger than the server's window arrives whole and in order, and
    /// ends the stream; the answer comes back with its trailers.
    #[tokio::test]
    async fn a_streamed_body_arrives_whole_within_flow_control() {
        let address = server(count_bytes).await;
        let link = link_to(address).await;
        let chunks: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 10_000])).collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let pending = link
            .start(head(), streamed(futures_util::stream::iter(chunks)))
            .ok()
            .unwrap();
        let response = pending.response().await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), expected);
    }

    /// A server that answers each request's headers, reads none of its body, and reports
    /// how each stream was reset.
    async fn resetting_server() -> (
        std::net::SocketAddr,
        tokio::sync::mpsc::UnboundedReceiver<Reason>,
    ) {
        let (resets, reset) = tokio::sync::mpsc::unbounded_channel();
        let address = server(move |_request, mut respond| {
            let resets = resets.clone();
            async move {
                let mut stream = respond.send_response(Response::new(()), false).unwrap();
                let reason = poll_fn(|cx| stream.poll_reset(cx)).await.unwrap();
                let _ = resets.send(reason);
            }
        })
        .await;
        (address, reset)
    }

    /// A caller that lets a streaming call go (its answer dropped) while its request
    /// body is still open: the pipe stops and the server sees the stream reset with
    /// CANCEL, as when a gRPC client abandons a call.
    #[tokio::test]
    async fn an_abandoned_call_is_reset_with_cancel() {
        let (address, mut reset) = resetting_server().await;
        let link = link_to(address).await;
        let pending = link
            .start(head(), streamed(futures_util::stream::pending()))
            .ok()
            .unwrap();
        let response = pending.response().await.unwrap();
        assert_eq!(link.liveness.open_calls.load(Ordering::Relaxed), 1);
        drop(response);
        assert_eq!(link.liveness.open_calls.load(Ordering::Relaxed), 0);
        let reason = tokio::time::timeout(Duration::from_secs(10), reset.recv()).await;
        assert_eq!(reason.unwrap(), Some(Reason::CANCEL));
    }

    /// The server's side of a streamed request: every byte until the end, sent back,
    /// then trailers with `grpc-status: 0`.
    async fn count_bytes(
        request: Request<RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let mut body = request.into_body();
        let mut received = Vec::new();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            received.extend_from_slice(&data);
        }
        let mut stream = respond.send_response(Response::new(()), false).unwrap();
        stream.send_data(Bytes::from(received), false).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        stream.send_trailers(trailers).unwrap();
    }

    /// Chunks written before the call starts wait for it; with those written after, the
    /// backend gets them all, in order, through a window smaller than their sum, and the
    /// end of the stream after them.
    #[tokio::test]
    async fn written_chunks_arrive_in_order_then_the_end() {
        let address = server(count_bytes).await;
        let link = link_to(address).await;
        let (mut chunks, body) = RequestChunks::new(2);
        let all: Vec<Bytes> = (0..10u8).map(|i| Bytes::from(vec![i; 10_000])).collect();
        chunks.send(all[0].clone()).await.unwrap();
        chunks.send(all[1].clone()).await.unwrap();
        let pending = link.start(head(), body).ok().unwrap();
        let writing = tokio::spawn({
            let rest = all[2..].to_vec();
            async move {
                for chunk in rest {
                    chunks.send(chunk).await.unwrap();
                }
                chunks.end();
                assert!(chunks.send(Bytes::from_static(b"late")).await.is_err());
            }
        });
        let response = pending.response().await.unwrap();
        let received = response.into_body().collect().await.unwrap().to_bytes();
        writing.await.unwrap();
        let expected: Vec<u8> = all.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(received, expected);
    }

    /// A writer that leaves without ending the stream (the client went away) resets it
    /// with CANCEL; one that waits for flow control when the call ends learns it.
    #[tokio::test]
    async fn a_writer_that_leaves_cancels_and_one_left_waiting_is_told() {
        // The server reads nothing: requests stay within its 16 KiB window.
        let (address, mut reset) = resetting_server().await;
        let link = link_to(address).await;

        let (chunks, body) = RequestChunks::new(1);
        let pending = link.start(head(), body).ok().unwrap();
        let response = pending.response().await.unwrap();
        drop(chunks);
        let reason = tokio::time::timeout(Duration::from_secs(10), reset.recv()).await;
        assert_eq!(reason.unwrap(), Some(Reason::CANCEL));
        drop(response);

        let (chunks, body) = RequestChunks::new(1);
        let pending = link.start(head(), body).ok().unwrap();
        let response = pending.response().await.unwrap();
        let writing = tokio::spawn(async move {
            loop {
                if chunks.send(Bytes::from(vec![7u8; 8_192])).await.is_err() {
                    return chunks;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!writing.is_finished(), "the writer waits for the window");
        drop(response);
        let chunks = tokio::time::timeout(Duration::from_secs(10), writing).await;
        assert!(
            chunks.is_ok(),
            "the waiting writer was told the call is over"
        );
    }

    /// A call that never starts (no connection) tells its writer at once.
    #[tokio::test]
    async fn a_call_that_never_starts_tells_its_writer() {
        let (chunks, body) = RequestChunks::new(2);
        chunks.send(Bytes::from_static(b"early")).await.unwrap();
        drop(body);
        assert!(chunks.send(Bytes::from_static(b"more")).await.is_err());
    }
}
