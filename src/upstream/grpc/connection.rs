//! One HTTP/2 connection to a gRPC endpoint, shared by every call to it.
//!
//! Calls go straight to hyper's `SendRequest` (a cheap clone per call): no tower buffer
//! and worker task in between as with tonic's `Channel`, so a call costs one task hop
//! less. The connection opens on first use and reopens after it dies; after a failed
//! attempt, calls fail at once (UNAVAILABLE) until a backoff has passed, so a dead
//! endpoint is not hammered with connection attempts.
//!
//! `Connection` is also a tower `Service`, so `tonic::client::Grpc` and generated
//! clients (streaming calls, health checks, reflection) run over it unchanged.

use super::coalesce::Coalesce;
use super::status::local_status;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tonic::{Code, Status};

/// A request body: one framed unary message, or whatever tonic streams.
pub type RequestBody = Either<Full<Bytes>, tonic::body::Body>;

/// How long opening a connection (TCP connect and HTTP/2 preface) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause after a failed connection attempt; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What tonic's `Channel` sent, so backends see the same client.
const USER_AGENT: &str = "tonic/0.14.9";

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
    state: Mutex<State>,
    /// Serialises connection attempts: one call opens, the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    sender: Option<SendRequest<RequestBody>>,
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
    /// A connection to `endpoint` (`http://host:port`); nothing is opened yet.
    pub fn new(endpoint: &str) -> Result<Self, String> {
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
        Ok(Self {
            shared: Arc::new(Shared {
                endpoint: endpoint.to_string(),
                scheme,
                authority,
                address,
                state: Mutex::new(State::default()),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
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
        mut request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Status> {
        if let header::Entry::Vacant(entry) = request.headers_mut().entry(header::USER_AGENT) {
            entry.insert(HeaderValue::from_static(USER_AGENT));
        }
        let mut sender = self.sender().await?;
        sender.send_request(request).await.map_err(|e| {
            if e.is_canceled() || sender.is_closed() {
                // The connection went away under the call; the next call reconnects.
                local_status(
                    Code::Unavailable,
                    format!("connection to `{}` closed: {e}", self.shared.endpoint),
                )
            } else {
                let cause = format!("request to `{}` failed: {e}", self.shared.endpoint);
                local_status(Status::from_error(Box::new(e)).code(), cause)
            }
        })
    }

    /// The open connection's sender, opening one first if there is none (or it died).
    async fn sender(&self) -> Result<SendRequest<RequestBody>, Status> {
        if let Some(sender) = self.current()? {
            return Ok(sender);
        }
        let _attempt = self.shared.connecting.lock().await;
        // Whoever held the lock before may have connected (or failed) meanwhile.
        if let Some(sender) = self.current()? {
            return Ok(sender);
        }
        let opened = match tokio::time::timeout(CONNECT_TIMEOUT, self.open()).await {
            Ok(result) => result,
            Err(_) => Err(format!("connecting took longer than {CONNECT_TIMEOUT:?}")),
        };
        let mut state = self.lock();
        match opened {
            Ok(sender) => {
                state.failures = 0;
                state.retry_at = None;
                state.sender = Some(sender.clone());
                Ok(sender)
            }
            Err(error) => {
                let error = format!("cannot connect to `{}`: {error}", self.shared.endpoint);
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << state.failures.min(8))
                    .min(MAX_BACKOFF);
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some((Instant::now() + backoff, error.clone()));
                Err(local_status(Code::Unavailable, error))
            }
        }
    }

    /// A live sender; `None` when a connection should be opened; an error while backing off.
    fn current(&self) -> Result<Option<SendRequest<RequestBody>>, Status> {
        let mut state = self.lock();
        if let Some(sender) = &state.sender {
            if !sender.is_closed() {
                return Ok(Some(sender.clone()));
            }
            tracing::debug!(endpoint = %self.shared.endpoint, "upstream connection closed; reconnecting");
            state.sender = None;
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

    async fn open(&self) -> Result<SendRequest<RequestBody>, String> {
        if self.shared.scheme == Scheme::HTTPS {
            return Err("https endpoints need TLS, which this gateway does not support".into());
        }
        let stream = TcpStream::connect(&self.shared.address)
            .await
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        // No adaptive window: its BDP pings cost the backend a PING (and the gateway a
        // PONG) per round trip under load; hyper's fixed windows (2 MiB per stream, 5 MiB
        // per connection) already cover the 4 MiB message limit on a local network.
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(Coalesce::new(stream)))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let endpoint = self.shared.endpoint.clone();
        // The connection task ends when the peer closes or keep-alive gives up; senders
        // then report `is_closed` and the next call reconnects.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// tonic's clients (streaming calls, health, reflection) send through this.
impl tower::Service<Request<tonic::body::Body>> for Connection {
    type Response = Response<Incoming>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<Incoming>, Status>>;

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
                .send(Request::from_parts(parts, Either::Right(body)))
                .await
        })
    }
}
