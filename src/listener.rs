//! The client listener's accept loop, with the limits `axum::serve` cannot set
//! (`limits.header_read_timeout`, `idle_timeout`, `max_connections`, `max_header_bytes`):
//! without them a client trickling one header line every few seconds, or a silent
//! connection, is held for minutes, and enough of them exhaust file descriptors.
//!
//! - at most `max_connections` connections are open; further ones wait in the kernel's
//!   accept queue (fixed at start: a reload does not resize it);
//! - a connection that has not delivered a complete request head within
//!   `header_read_timeout` of being accepted is closed (this covers the protocol sniffing
//!   and the HTTP/2 preface too, which have no timer of their own); HTTP/1 also applies it
//!   to every later request head (hyper's timer), which bounds idle kept-alive HTTP/1
//!   connections to the same time;
//! - a connection with no request in flight for `idle_timeout` is shut down gracefully
//!   (HTTP/2: GOAWAY), and closed outright if it has not finished within
//!   `header_read_timeout` more.
//! - a request head larger than `max_header_bytes` is answered 431 (HTTP/1) or refused by
//!   the HTTP/2 header-list limit.
//!
//! With `tls:` every connection first completes a TLS handshake (1.2 or 1.3), which counts
//! against `max_connections` and must end within `header_read_timeout` of the accept like
//! the first request head; ALPN then decides HTTP/2 or HTTP/1.1 (no sniffing). A client
//! that speaks plaintext to it, or rejects the certificate, ends its own connection only.
//!
//! WebSocket upgrades leave this loop once the connection is handed over (the socket has
//! its own idle and ping limits); HTTP/2 with prior knowledge is sniffed as before.

mod read_ahead;

use crate::config::{GatewayConfig, Limits};
use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// hyper's HTTP/1 read buffer cannot be smaller than this.
pub(crate) const MIN_HEADER_BYTES: u64 = 8 << 10;
/// Beyond this a "header limit" no longer protects anything.
pub(crate) const MAX_HEADER_BYTES: u64 = 1 << 20;

/// What is wrong with the listener limits (and the admin token), if anything: load errors.
pub(crate) fn check(config: &GatewayConfig) -> Vec<String> {
    let mut problems = check_limits(&config.limits);
    if config
        .admin_token
        .as_deref()
        .is_some_and(|token| token.trim().is_empty())
    {
        problems.push("admin_token is empty (is its environment variable set?)".to_string());
    }
    problems
}

fn check_limits(limits: &Limits) -> Vec<String> {
    let mut problems = Vec::new();
    if limits.header_read_timeout.0.is_zero() {
        problems.push("limits.header_read_timeout must be positive".to_string());
    }
    if limits.max_connections == 0 {
        problems.push("limits.max_connections must be at least 1".to_string());
    }
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&limits.max_header_bytes.0) {
        problems.push(format!(
            "limits.max_header_bytes must be between {}KiB and {}KiB",
            MIN_HEADER_BYTES >> 10,
            MAX_HEADER_BYTES >> 10
        ));
    }
    if limits.max_ws_per_client == 0 {
        problems.push("limits.max_ws_per_client must be at least 1".to_string());
    }
    problems
}

/// What the listener calls for every request: the gateway's pipeline (`proxy::handle`),
/// called directly, without a router in between (the pipeline does its own routing).
pub(crate) trait Handler: Clone + Send + Sync + 'static {
    type Future: Future<Output = Response<Body>> + Send + 'static;
    fn call(&self, request: Request<Body>) -> Self::Future;
}

impl<H, F> Handler for H
where
    H: Fn(Request<Body>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    type Future = F;
    fn call(&self, request: Request<Body>) -> F {
        self(request)
    }
}

/// Serves `handler` on `listener` until `stop` turns true, then waits for every connection
/// to finish (each is told to shut down gracefully). `limits` is read for each new
/// connection, so a reload applies to connections accepted after it.
pub(crate) async fn serve(
    listener: TcpListener,
    handler: impl Handler,
    limits: impl Fn() -> Limits + Send + 'static,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let max = limits()
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_error(e).await;
                continue;
            }
        };
        tokio::spawn(connection(
            tcp,
            peer,
            tls.clone(),
            handler.clone(),
            limits(),
            stop.clone(),
            permit,
        ));
    }
    drop(listener);
    // Every connection holds a permit until it ends: all of them back means all done.
    let _ = permits.acquire_many(max as u32).await;
}

/// As hyper 0.14 and `axum::serve` did: a reset while accepting is the client's business;
/// anything else (EMFILE) is logged and the loop pauses so connections can close.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept error");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Which protocols a connection may speak.
#[derive(Clone, Copy)]
enum Protocol {
    /// Plaintext: HTTP/1.1, or HTTP/2 with prior knowledge (sniffed from the preface).
    Sniffed,
    /// TLS with ALPN `h2`.
    Http2,
    /// TLS with ALPN `http/1.1`, or no ALPN (older clients).
    Http1,
}

/// The connection builder for `limits`.
fn builder(limits: &Limits, protocol: Protocol) -> Builder<TokioExecutor> {
    let head = usize::try_from(limits.max_header_bytes.0)
        .unwrap_or(usize::MAX)
        .clamp(MIN_HEADER_BYTES as usize, MAX_HEADER_BYTES as usize);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0)
        // The read buffer is where the head must fit: beyond it hyper answers 431.
        .max_buf_size(head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(head).unwrap_or(u32::MAX))
        // WebSockets over HTTP/2 (RFC 8441), as `axum::serve` offers them.
        .enable_connect_protocol();
    match protocol {
        Protocol::Sniffed => builder,
        Protocol::Http2 => builder.http2_only(),
        Protocol::Http1 => builder.http1_only(),
    }
}

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    started: AtomicBool,
    last_done: Mutex<Instant>,
}

impl Activity {
    fn begin(self: &Arc<Self>) -> InFlight {
        self.started.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long the connection has had nothing in flight.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last_done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

/// One request, from its head until its response body is done (or dropped).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last_done.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One accepted connection: the TLS handshake when the listener has TLS, then HTTP. The
/// permit is held throughout, so handshakes in progress count as connections.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    handler: impl Handler,
    limits: Limits,
    stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let accepted = Instant::now();
    let Some(acceptor) = tls else {
        let io = TokioIo::new(read_ahead::ReadAhead::new(tcp));
        return serve_http(io, Protocol::Sniffed, peer, handler, limits, stop, accepted).await;
    };
    let deadline = accepted + limits.header_read_timeout.0;
    let stream = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            crate::telemetry::record_tls_handshake("ok");
            stream
        }
        Ok(Err(error)) => {
            crate::telemetry::record_tls_handshake("error");
            tracing::debug!(%peer, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            crate::telemetry::record_tls_handshake("timeout");
            tracing::debug!(%peer, "no TLS handshake within header_read_timeout; closing");
            return;
        }
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    serve_http(
        TokioIo::new(stream),
        protocol,
        peer,
        handler,
        limits,
        stop,
        accepted,
    )
    .await;
}

/// Serves HTTP on an open (and, with TLS, handshaken) connection until it ends.
async fn serve_http<I>(
    io: I,
    protocol: Protocol,
    peer: SocketAddr,
    handler: impl Handler,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    accepted: Instant,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        started: AtomicBool::new(false),
        last_done: Mutex::new(accepted),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_flight = activity.begin();
            let mut request = request.map(Body::new);
            // The peer address feeds rate limiting by client address.
            request.extensions_mut().insert(ConnectInfo(peer));
            let method = Answering::of(request.method());
            let response = handler.call(request);
            async move {
                let mut response = response.await;
                method.finish(&mut response);
                // The request stays in flight until its body is sent (or dropped).
                Ok::<_, Infallible>(response.map(|body| InFlightBody {
                    body,
                    _in_flight: in_flight,
                }))
            }
        })
    };
    let builder = builder(&limits, protocol);
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);

    let header_timeout = limits.header_read_timeout.0;
    let idle_timeout = limits.idle_timeout.0;
    let first_head = tokio::time::sleep_until(accepted + header_timeout);
    tokio::pin!(first_head);
    // Set when an idle connection is asked to close: it must be gone by then.
    let hard_close = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(hard_close);
    let mut closing_idle = false;
    let mut first_head_passed = false;
    let mut shutting_down = false;
    // The timers and the stop signal wake the task through a waker of their own, so the
    // connection's many wake-ups (every read, every response) poll only the connection.
    let watchers = Arc::new(Watchers::default());
    let watchers_waker = std::task::Waker::from(watchers.clone());
    loop {
        let idle_check = tokio::time::sleep(idle_timeout.saturating_sub(activity.idle_for()));
        tokio::pin!(idle_check);
        let stop_signal = stop.wait_for(|stop| *stop);
        tokio::pin!(stop_signal);
        // Every watcher is polled at least once per round: some of them are new.
        watchers.woken.store(true, Ordering::Release);
        let event = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            watchers.task.register(cx.waker());
            if !watchers.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let cx = &mut Context::from_waker(&watchers_waker);
            if !shutting_down && stop_signal.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            // The precondition is read when this round starts, which may be before the
            // first request arrived: checked again when the timer fires.
            if !first_head_passed && first_head.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::FirstHeadDue);
            }
            if !shutting_down && !idle_timeout.is_zero() && idle_check.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::IdleDue);
            }
            if closing_idle && hard_close.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::HardCloseDue);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(result) => {
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "client connection ended with an error");
                }
                break;
            }
            Event::Stop => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            Event::FirstHeadDue => {
                if !activity.started.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request head within header_read_timeout; closing");
                    break;
                }
                first_head_passed = true;
            }
            Event::IdleDue => {
                if activity.idle_for() >= idle_timeout {
                    tracing::debug!(%peer, "connection idle; closing");
                    shutting_down = true;
                    closing_idle = true;
                    hard_close.as_mut().reset(Instant::now() + header_timeout);
                    conn.as_mut().graceful_shutdown();
                }
            }
            Event::HardCloseDue => {
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    tracing::debug!(%peer, "idle connection did not close; dropping it");
                    break;
                }
                closing_idle = false;
            }
        }
    }
}

/// What the request's method asks of its response head, as HTTP requires of any server.
#[derive(Clone, Copy)]
enum Answering {
    /// The length of a body with a known size is stated (`content-length`).
    Body,
    /// The headers of the GET answer, and its length, without the body: HTTP/1 would
    /// leave it out itself, HTTP/2 would send it.
    Head,
    /// An extended CONNECT (WebSocket over HTTP/2): a successful answer has no length.
    Connect,
}

impl Answering {
    fn of(method: &Method) -> Self {
        match *method {
            Method::HEAD => Self::Head,
            Method::CONNECT => Self::Connect,
            _ => Self::Body,
        }
    }

    fn finish(self, response: &mut Response<Body>) {
        if let Self::Connect = self {
            return;
        }
        if let (Some(len), false) = (
            response.body().size_hint().exact(),
            response.headers().contains_key(header::CONTENT_LENGTH),
        ) {
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        if let Self::Head = self {
            *response.body_mut() = Body::empty();
        }
    }
}

/// A response body that keeps its request counted as in flight until it is done.
struct InFlightBody {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for InFlightBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// What ended one round of waiting on a connection.
enum Event<E> {
    Ended(Result<(), E>),
    Stop,
    FirstHeadDue,
    IdleDue,
    HardCloseDue,
}

/// The waker of a connection's timers and stop signal: marks them as due a poll, then
/// wakes the connection's task.
#[derive(Default)]
struct Watchers {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl std::task::Wake for Watchers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, ConfigDuration};

    #[test]
    fn limits_that_protect_nothing_are_refused() {
        assert!(check_limits(&Limits::default()).is_empty());
        let bad = Limits {
            header_read_timeout: ConfigDuration(Duration::ZERO),
            max_connections: 0,
            max_header_bytes: ByteSize(1024),
            max_ws_per_client: 0,
            ..Limits::default()
        };
        let problems = check_limits(&bad).join("\n");
        for key in [
            "header_read_timeout",
            "max_connections",
            "max_header_bytes",
            "max_ws_per_client",
        ] {
            assert!(problems.contains(key), "{key} in {problems}");
        }
    }
}
