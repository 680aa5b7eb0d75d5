//! One HTTP/2 connection to a gRPC endpoint, shared by every call to it.
//!
//! Calls go straight to h2 from the caller's task (link.rs): no tower buffer and worker
//! task as with tonic's `Channel`, and no channel or task per call as with hyper's
//! client. The connection opens on first use and reopens after it dies; after a failed
//! attempt, calls fail at once (UNAVAILABLE) until a backoff has passed, so a dead
//! endpoint is not hammered with connection attempts.
//!
//! `https://` endpoints speak TLS (ALPN `h2`) with the upstream's `tls:` settings
//! (`crate::tls::client`).
//!
//! `Connection` is also a tower `Service`, so generated tonic clients (health checks,
//! server reflection) run over it unchanged.
//!
//! Interop with gRPC servers (grpc-go, grpc-java, Envoy) rests on two rules they all
//! share:
//! - Pings: servers answer a client that pings more often than every 5 minutes, or at
//!   all while it has no call open, with GOAWAY `ENHANCE_YOUR_CALM` ("too_many_pings")
//!   and close the connection. Keep-alive pings go out only while calls are open and at
//!   most every `KEEP_ALIVE_INTERVAL` (5 min). Windows are fixed, so no BDP pings either.
//! - GOAWAY: a server going away (max connection age, shutdown) names the last stream it
//!   will process; streams above it, and requests that never reached the wire, were not
//!   processed and are resent on a new connection (safe for any call, as gRPC clients
//!   do); streams below it finish on the old connection.

use super::link::{self, Link, RequestBody, ResponseBody, copy_head};
use super::status::{local_status, unprocessed_status};
use crate::tls::client::ClientTls;
use crate::upstream::backoff::{Backoff, Jitter};
use futures_util::future::BoxFuture;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use rustls::pki_types::ServerName;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::{Code, Status};

/// How long opening a connection (TCP connect and HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 receive windows toward backends (see `handshake`).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// Pause after a failed connection attempt: 20 ms, doubling up to 500 ms.
const RECONNECT: Backoff = Backoff::new(
    Duration::from_millis(20),
    Duration::from_millis(500),
    Jitter::None,
);
/// Not less than the 5 minutes grpc-go and grpc-java servers permit by default
/// (`MinTime`, `permitKeepAliveTime`): more frequent pings earn a GOAWAY.
pub(super) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(300);
pub(super) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a request the server never processed (refused by GOAWAY or
/// REFUSED_STREAM, or never sent) is resent on a fresh connection.
const MAX_UNPROCESSED_RESENDS: u32 = 3;

/// What tonic's `Channel` sent, so backends see the same client.
const USER_AGENT: &str = "tonic/0.14.9";

/// A failed send; `unsent` holds the request when it never reached the connection.
pub struct SendError {
    pub status: Status,
    pub unsent: Option<Request<RequestBody>>,
}

/// A lazily connected HTTP/2 connection to one endpoint; clones share it.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

struct Shared {
    /// The endpoint as configured (`http://host:port`).
    endpoint: String,
    scheme: Scheme,
    authority: Authority,
    /// `host:port` to connect to (resolved by DNS at connect time).
    address: String,
    /// For `https://`: the connector and the name the certificate must carry.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    state: Mutex<State>,
    /// Serialises connection attempts: one call opens, the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    /// Counts the connections opened, so a call retires only the one it failed on.
    generation: u64,
    /// Consecutive failed attempts, and until when no new one is made (and why).
    failures: u32,
    retry_at: Option<(Instant, String)>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("endpoint", &self.shared.endpoint)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection to `endpoint` (`http://host:port`, or `https://host:port` with `tls`);
    /// nothing is opened yet.
    pub fn new(endpoint: &str, tls: Option<&Arc<ClientTls>>) -> Result<Self, String> {
        let uri: Uri = endpoint
            .parse()
            .map_err(|e| format!("invalid endpoint `{endpoint}`: {e}"))?;
        let scheme = uri.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("invalid endpoint `{endpoint}`: no host"))?;
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == Scheme::HTTPS { 443 } else { 80 });
        let address = format!("{}:{port}", authority.host());
        let tls = match (scheme == Scheme::HTTPS, tls) {
            (false, _) => None,
            (true, Some(tls)) => Some((
                tokio_rustls::TlsConnector::from(tls.config.clone()),
                tls.name_for(authority.host())?,
            )),
            (true, None) => return Err(format!("`{endpoint}` needs TLS settings")),
        };
        Ok(Self {
            shared: Arc::new(Shared {
                endpoint: endpoint.to_string(),
                scheme,
                authority,
                address,
                tls,
                state: Mutex::new(State::default()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// A connection to `address` for the service named by `endpoint` (`http://host:port`,
    /// used as `:authority`): one address DNS discovery resolved.
    pub fn for_address(endpoint: &str, address: std::net::SocketAddr) -> Result<Self, String> {
        let mut connection = Self::new(endpoint, None)?;
        let shared = Arc::get_mut(&mut connection.shared)
            .ok_or_else(|| "connection already shared".to_string())?;
        shared.address = address.to_string();
        shared.endpoint = format!("{endpoint} ({address})");
        Ok(connection)
    }

    /// `path` as an absolute URI on this endpoint (HTTP/2 needs `:scheme`/`:authority`).
    pub fn uri(&self, path: http::uri::PathAndQuery) -> Result<Uri, Status> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.shared.scheme.clone());
        parts.authority = Some(self.shared.authority.clone());
        parts.path_and_query = Some(path);
        Uri::from_parts(parts)
            .map_err(|e| local_status(Code::Internal, format!("request URI: {e}")))
    }

    /// Sends one request. The caller bounds the whole call (and so this) with its deadline.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, Status> {
        self.try_send(request).await.map_err(|e| e.status)
    }

    /// Sends one request; a request that never left (no connection, or the connection
    /// closed before it was written) comes back with the error, so it can go elsewhere.
    ///
    /// A request the server never processed is resent on a fresh connection first: one
    /// that never left (the connection was closing), or one refused by GOAWAY or
    /// REFUSED_STREAM. A unary request is kept for that (a copy of its headers; its
    /// message is shared); a streaming one only when it never left.
    pub async fn try_send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        let (parts, mut body) = request.into_parts();
        let mut head = Request::from_parts(parts, ());
        if let header::Entry::Vacant(entry) = head.headers_mut().entry(header::USER_AGENT) {
            entry.insert(HeaderValue::from_static(USER_AGENT));
        }
        let replay = match &body {
            RequestBody::Message(message) => Some(message.clone()),
            RequestBody::Chunks(_) | RequestBody::Stream(_) => None,
        };
        let unsent = |head: Request<()>, body| Some(Request::from_parts(head.into_parts().0, body));
        let mut resends = 0;
        loop {
            let (link, generation) = match self.link().await {
                Ok(link) => link,
                Err(status) => {
                    return Err(SendError {
                        status,
                        unsent: unsent(head, body),
                    });
                }
            };
            let spare = copy_head(&head);
            let pending = match link.start(head, body) {
                Ok(pending) => pending,
                Err((error, returned)) => {
                    // The connection takes no new stream (closing, broken): nothing left.
                    self.retire(generation);
                    (head, body) = (spare, returned);
                    if resends < MAX_UNPROCESSED_RESENDS {
                        resends += 1;
                        tracing::debug!(endpoint = %self.shared.endpoint, %error, resends,
                            "connection takes no new call; sending on a new connection");
                        continue;
                    }
                    let status = local_status(
                        Code::Unavailable,
                        format!("connection to `{}` closed: {error}", self.shared.endpoint),
                    );
                    return Err(SendError {
                        status,
                        unsent: unsent(head, body),
                    });
                }
            };
            let error = match pending.response().await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            if !refused(&error) {
                let cause = format!("request to `{}` failed: {error}", self.shared.endpoint);
                return Err(SendError {
                    status: transport_status(error, cause),
                    unsent: None,
                });
            }
            // The connection is going away: the next call opens a new one.
            self.retire(generation);
            let Some(message) = &replay else {
                // Not processed, but this body cannot be replayed here: the caller may.
                return Err(SendError {
                    status: refused_status(&self.shared.endpoint, &error),
                    unsent: None,
                });
            };
            body = RequestBody::Message(message.clone());
            if resends < MAX_UNPROCESSED_RESENDS {
                resends += 1;
                tracing::debug!(endpoint = %self.shared.endpoint, %error, resends,
                    "request not processed by the server; resending on a new connection");
                head = spare;
                continue;
            }
            return Err(SendError {
                status: refused_status(&self.shared.endpoint, &error),
                unsent: unsent(spare, body),
            });
        }
    }

    /// Opens the connection if it is not open (or reports why it cannot be): a caller
    /// that learns here that the endpoint is down has sent nothing and may go elsewhere.
    pub async fn connect(&self) -> Result<(), Status> {
        self.link().await.map(drop)
    }

    /// Forgets connection `generation` if it is still the current one.
    fn retire(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation == generation {
            state.link = None;
        }
    }

    /// The open connection (and its generation), opening one first if there is none (or
    /// it died).
    async fn link(&self) -> Result<(Link, u64), Status> {
        if let Some(link) = self.current()? {
            return Ok(link);
        }
        // Boxed: connecting (TCP, TLS and HTTP/2 handshakes) is a future of KiBs, which
        // inline would make every call's future as large, connected or not.
        Box::pin(self.open_link()).await
    }

    /// Opens the connection (one attempt at a time), or reports why not.
    async fn open_link(&self) -> Result<(Link, u64), Status> {
        let _attempt = self.shared.connecting.lock().await;
        // Whoever held the lock before may have connected (or failed) meanwhile.
        if let Some(link) = self.current()? {
            return Ok(link);
        }
        let opened = match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(format!("connecting took longer than {CONNECT_TIMEOUT:?}")),
        };
        let mut state = self.lock();
        match opened {
            Ok(link) => {
                state.failures = 0;
                state.retry_at = None;
                state.generation += 1;
                state.link = Some(link.clone());
                Ok((link, state.generation))
            }
            Err(error) => {
                let error = format!("cannot connect to `{}`: {error}", self.shared.endpoint);
                let backoff = RECONNECT.delay(state.failures);
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some((Instant::now() + backoff, error.clone()));
                Err(local_status(Code::Unavailable, error))
            }
        }
    }

    /// A live connection; `None` when one should be opened; an error while backing off.
    fn current(&self) -> Result<Option<(Link, u64)>, Status> {
        let mut state = self.lock();
        if let Some(link) = &state.link {
            if !link.is_closed() {
                return Ok(Some((link.clone(), state.generation)));
            }
            tracing::debug!(endpoint = %self.shared.endpoint, "upstream connection closed; reconnecting");
            state.link = None;
        }
        match &state.retry_at {
            Some((at, error)) if Instant::now() < *at => {
                Err(local_status(Code::Unavailable, error.clone()))
            }
            _ => Ok(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every write is one field.
        self.shared
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn open(&self) -> Result<Link, String> {
        let stream = TcpStream::connect(&self.shared.address)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let Some((connector, name)) = &self.shared.tls else {
            return self.handshake(stream).await;
        };
        let stream = connector
            .connect(name.clone(), stream)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        // A server without ALPN is taken at its word; one that picked another protocol
        // would not understand HTTP/2.
        if let Some(protocol) = stream.get_ref().1.alpn_protocol()
            && protocol != b"h2"
        {
            return Err(format!(
                "TLS: the server chose ALPN `{}`, not h2",
                String::from_utf8_lossy(protocol)
            ));
        }
        self.handshake(stream).await
    }

    /// The HTTP/2 handshake over an open transport, and the task that drives the
    /// connection. Its frames leave in one write per turn of that task (corked.rs).
    ///
    /// Windows are fixed and large, as Envoy's: h2 closes the connection (GOAWAY
    /// ENHANCE_YOUR_CALM "too_many_data_frames") when the small DATA frames it holds
    /// unread cost more than half the connection window, and a busy gateway holds
    /// hundreds of small gRPC answers at once (300 calls in flight broke the 64 KiB
    /// default window every few seconds). The connection window also bounds what one
    /// backend connection can make us buffer.
    async fn handshake<I>(&self, io: I) -> Result<Link, String>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (io, uncork) = super::corked::cork(io);
        let (link, connection) = link::handshake(io, STREAM_WINDOW, CONNECTION_WINDOW)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let endpoint = self.shared.endpoint.clone();
        // The task ends when the peer closes or keep-alive gives up; the link then
        // reports `is_closed` and the next call reconnects.
        let connection = async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "upstream connection ended");
            }
        };
        tokio::spawn(Box::pin(super::corked::drive(connection, uncork)));
        Ok(link)
    }
}

/// The status for a transport failure of a call (a stream reset, a broken connection).
/// A connection that broke (I/O error, GOAWAY) or a stream the server reset with CANCEL
/// is UNAVAILABLE, as gRPC clients report it: tonic would say UNKNOWN (HTTP 500) for the
/// first and CANCELLED (HTTP 499, as if the client had gone away) for the second. Other
/// resets keep gRPC's mapping of their HTTP/2 error code.
pub(crate) fn transport_status(error: h2::Error, cause: String) -> Status {
    let broken = error.is_io() || error.is_go_away();
    let code = match Status::from_error(Box::new(error)).code() {
        _ if broken => Code::Unavailable,
        Code::Cancelled | Code::Unknown => Code::Unavailable,
        code => code,
    };
    local_status(code, cause)
}

/// The status of a request the server refused unprocessed.
fn refused_status(endpoint: &str, error: &h2::Error) -> Status {
    unprocessed_status(format!(
        "`{endpoint}` refused the request unprocessed: {error}"
    ))
}

/// Whether the server refused the stream before processing it: it was above the last
/// stream id of a GOAWAY the server sent (h2 reports those, and requests the closing
/// connection no longer accepted, as a remote GOAWAY), or reset with REFUSED_STREAM.
/// In-flight streams cut by the connection closing report an I/O error instead.
fn refused(error: &h2::Error) -> bool {
    (error.is_go_away() && error.is_remote())
        || (error.is_reset() && error.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// tonic's clients (streaming calls, health, reflection) send through this.
impl tower::Service<Request<tonic::body::Body>> for Connection {
    type Response = Response<ResponseBody>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<ResponseBody>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // Readiness is settled per call in `send` (connect, or fail fast while backing off).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let connection = self.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            // tonic's `Grpc` leaves the origin to the transport, as `Channel` adds it.
            let path = parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            parts.uri = connection.uri(path)?;
            connection
                .send(Request::from_parts(parts, RequestBody::Stream(body)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    //! The keep-alive policy seen from the server: a raw HTTP/2 peer records the PING
    //! frames it receives, over hours of paused time.
    use super::*;
    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const SETTINGS: u8 = 4;
    const PING: u8 = 6;
    const HEADERS: u8 = 1;
    const ACK: u8 = 1;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A server that answers the first request at once (`:status 200`, end of stream)
    /// when `answer` is set, or never; acknowledges pings when `acknowledge` is set, and
    /// reports when each came.
    async fn peer(
        answer: bool,
        acknowledge: bool,
    ) -> (String, mpsc::UnboundedReceiver<tokio::time::Instant>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (pings, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut preface = [0; PREFACE.len()];
            socket.read_exact(&mut preface).await.unwrap();
            assert_eq!(preface, PREFACE);
            socket.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            loop {
                let mut head = [0u8; 9];
                if socket.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & !(1 << 31);
                let mut payload = vec![0; len];
                socket.read_exact(&mut payload).await.unwrap();
                let reply = match kind {
                    SETTINGS if flags & ACK == 0 => frame(SETTINGS, ACK, 0, &[]),
                    PING if flags & ACK == 0 => {
                        let _ = pings.send(tokio::time::Instant::now());
                        if !acknowledge {
                            continue;
                        }
                        frame(PING, ACK, 0, &payload)
                    }
                    // `:status: 200` (static table index 8), END_STREAM | END_HEADERS.
                    HEADERS if answer => frame(HEADERS, 0x5, stream, &[0x88]),
                    _ => continue,
                };
                socket.write_all(&reply).await.unwrap();
            }
        });
        (endpoint, received)
    }

    fn request(connection: &Connection) -> Request<RequestBody> {
        let mut request = Request::new(RequestBody::Message(Bytes::from_static(b"x")));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = connection
            .uri(http::uri::PathAndQuery::from_static("/test.Echo/Get"))
            .unwrap();
        request
    }

    fn drain(
        received: &mut mpsc::UnboundedReceiver<tokio::time::Instant>,
    ) -> Vec<tokio::time::Instant> {
        std::iter::from_fn(|| received.try_recv().ok()).collect()
    }

    /// Hundreds of answers arrive before the calls read them (a busy gateway): each holds
    /// a small DATA frame, which h2 charges against a budget of half the connection
    /// window. With the 64 KiB default, 600 of them closed the connection (GOAWAY
    /// ENHANCE_YOUR_CALM "too_many_data_frames") and failed every call on it.
    #[tokio::test]
    async fn many_unread_small_answers_keep_the_connection() {
        use http_body_util::BodyExt;
        const CALLS: usize = 600;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut server = h2::server::Builder::new()
                .max_concurrent_streams(CALLS as u32)
                .handshake::<_, Bytes>(socket)
                .await
                .unwrap();
            while let Some(Ok((_request, mut respond))) = server.accept().await {
                let mut body = respond.send_response(Response::new(()), false).unwrap();
                body.send_data(Bytes::from_static(b"\0\0\0\0\0"), false)
                    .unwrap();
                body.send_trailers(http::HeaderMap::new()).unwrap();
            }
        });
        let connection = Connection::new(&endpoint, None).unwrap();
        let calls = (0..CALLS).map(|_| connection.send(request(&connection)));
        // Every answer's head first, bodies left unread until all have arrived.
        let answers = futures_util::future::join_all(calls).await;
        for answer in answers {
            let body = answer.unwrap().into_body().collect().await.unwrap();
            assert_eq!(body.to_bytes().len(), 5);
        }
    }

    /// A transport that counts the writes that reach it.
    struct CountingWrites {
        io: TcpStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl tokio::io::AsyncRead for CountingWrites {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for CountingWrites {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let written = std::pin::Pin::new(&mut self.io).poll_write(cx, data);
            if let Poll::Ready(Ok(n)) = written
                && n > 0
            {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            written
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    /// A unary call's HEADERS and its DATA frame leave in one write, so the backend reads
    /// the call at once. h2 gives a stream capacity for DATA only when its connection task
    /// writes the stream's HEADERS; written at the end of that turn, each call took two
    /// writes.
    #[tokio::test]
    async fn a_unary_call_leaves_in_one_write() {
        use http_body_util::BodyExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut server = h2::server::handshake(socket).await.unwrap();
            while let Some(Ok((request, mut respond))) = server.accept().await {
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    while let Some(Ok(data)) = body.data().await {
                        let _ = body.flow_control().release_capacity(data.len());
                    }
                    let mut stream = respond.send_response(Response::new(()), false).unwrap();
                    stream
                        .send_data(Bytes::from_static(b"\0\0\0\0\0"), false)
                        .unwrap();
                    stream.send_trailers(http::HeaderMap::new()).unwrap();
                });
            }
        });
        let connection = Connection::new(&format!("http://{address}"), None).unwrap();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let io = CountingWrites {
            io: TcpStream::connect(address).await.unwrap(),
            writes: writes.clone(),
        };
        let link = connection.handshake(io).await.unwrap();
        let count = || writes.load(std::sync::atomic::Ordering::Relaxed);
        for call in 0..5 {
            // Settings and their acknowledgements are exchanged by now.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let before = count();
            let (parts, body) = request(&connection).into_parts();
            let pending = link.start(Request::from_parts(parts, ()), body);
            let response = pending.ok().unwrap().response().await.unwrap();
            response.into_body().collect().await.unwrap();
            if call > 0 {
                assert_eq!(count() - before, 1, "writes for call {call}");
            }
        }
    }

    /// grpc-go and grpc-java servers send GOAWAY "too_many_pings" after a few pings on a
    /// connection without calls (they permit one per 2 h): an idle connection is silent.
    #[tokio::test(start_paused = true)]
    async fn no_pings_while_idle() {
        let (endpoint, mut pings) = peer(true, true).await;
        let connection = Connection::new(&endpoint, None).unwrap();
        connection.send(request(&connection)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        assert_eq!(drain(&mut pings), vec![], "pings on an idle connection");
        assert!(
            connection.current().unwrap().is_some(),
            "the connection stays open"
        );
    }

    /// While a call is open, pings come no more often than every 5 minutes (the servers'
    /// default `MinTime` / `permitKeepAliveTime`), and the connection is kept.
    #[tokio::test(start_paused = true)]
    async fn pings_during_a_call_are_five_minutes_apart() {
        let (endpoint, mut pings) = peer(false, true).await;
        let connection = Connection::new(&endpoint, None).unwrap();
        let call = tokio::spawn({
            let connection = connection.clone();
            async move { connection.send(request(&connection)).await.map(|_| ()) }
        });
        let start = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(31 * 60)).await;
        let pings = drain(&mut pings);
        assert!(
            (5..=6).contains(&pings.len()),
            "{} pings in 31 min: {:?}",
            pings.len(),
            pings.iter().map(|at| *at - start).collect::<Vec<_>>()
        );
        let mut last = start;
        for at in pings {
            assert!(
                at - last >= KEEP_ALIVE_INTERVAL,
                "a ping {:?} after the last",
                at - last
            );
            last = at;
        }
        assert!(
            !call.is_finished(),
            "the call is still open: pings were answered"
        );
    }

    /// A ping left unanswered past `KEEP_ALIVE_TIMEOUT` ends the connection: the call
    /// on it fails as UNAVAILABLE, and the next call opens a new connection.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_ping_ends_the_connection() {
        let (endpoint, mut pings) = peer(false, false).await;
        let connection = Connection::new(&endpoint, None).unwrap();
        let call = tokio::spawn({
            let connection = connection.clone();
            async move { connection.send(request(&connection)).await.map(|_| ()) }
        });
        tokio::time::sleep(KEEP_ALIVE_INTERVAL + KEEP_ALIVE_TIMEOUT / 2).await;
        assert_eq!(drain(&mut pings).len(), 1, "one ping, not answered yet");
        assert!(!call.is_finished(), "the call waits for the answer");
        tokio::time::sleep(KEEP_ALIVE_TIMEOUT).await;
        let status = call.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            connection.current().unwrap().is_none(),
            "the connection is gone; the next call opens another"
        );
    }
}
