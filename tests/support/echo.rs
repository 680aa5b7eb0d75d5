//! The echo test backend (`test.echo.v1.EchoService`, behaviour specified at the top of
//! `tests/fixtures/protos/echo/v1/echo.proto`): unary methods return their request, so a
//! test sees exactly what the gateway sent; metadata steers delays and failures.
//!
//! Header echoing, the `x-echo-trailer` trailer, call counting and metadata capture live in
//! a wrapper around the generated server ([`Observe`]), because tonic has no API for a
//! handler to set trailers on a successful response.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

use super::shop::grpc::{self, error_info, status_with_details};
use pb::test::echo::v1::EchoMessage;
use pb::test::echo::v1::echo_service_server::{EchoService, EchoServiceServer};

/// Generated echo types. `google.rpc` detail types are the shop's: `shop::pb::google::rpc`.
pub mod pb {
    #![allow(clippy::all)]

    /// Encoded `FileDescriptorSet` of echo.proto and its imports (custom options kept).
    pub const ECHO_DESCRIPTOR: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

    pub mod test {
        pub mod echo {
            pub mod v1 {
                tonic::include_proto!("test.echo.v1");
            }
        }
    }
}

pub const SERVICE: &str = "test.echo.v1.EchoService";
/// Request metadata: answer with this gRPC code (message "forced").
pub const FAIL_HEADER: &str = "x-echo-fail";
/// Request metadata: sleep this many milliseconds before answering.
pub const DELAY_HEADER: &str = "x-echo-delay-ms";
/// Response trailer set on every call (in the headers of a trailers-only error response).
pub const TRAILER: &str = "x-echo-trailer";
/// Gap between two messages of `Stream`.
pub const STREAM_INTERVAL: Duration = Duration::from_millis(20);

/// A running echo server on 127.0.0.1. Dropping it stops the server.
#[derive(Debug)]
pub struct EchoServer {
    pub addr: SocketAddr,
    /// Echo RPCs received (reflection and health calls are not counted).
    pub calls: Arc<AtomicU64>,
    /// `Stream` and `Chat` calls whose client went away before the stream ended.
    pub stream_cancelled: Arc<AtomicU64>,
    /// Request headers of the latest echo RPC, as received (gRPC metadata plus HTTP/2
    /// headers such as `content-type`, `te`, `grpc-timeout`).
    pub last_metadata: Arc<Mutex<Option<HeaderMap>>>,
    _shutdown: watch::Sender<()>,
}

/// Starts an echo server on a free port of 127.0.0.1.
///
/// # Panics
/// If the listener cannot be bound or the server cannot be set up: test setup.
pub async fn start() -> EchoServer {
    let incoming =
        TcpIncoming::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind echo listener");
    let addr = incoming.local_addr().expect("echo listener address");
    let calls = Arc::new(AtomicU64::new(0));
    let stream_cancelled = Arc::new(AtomicU64::new(0));
    let last_metadata = Arc::new(Mutex::new(None));
    let service = Observe {
        inner: EchoServiceServer::new(Echo {
            stream_cancelled: stream_cancelled.clone(),
        }),
        calls: calls.clone(),
        last_metadata: last_metadata.clone(),
    };
    let (shutdown, stop) = watch::channel(());
    grpc::spawn(
        incoming,
        Routes::new(service),
        SERVICE,
        pb::ECHO_DESCRIPTOR,
        stop,
    )
    .await
    .expect("start echo server");
    EchoServer {
        addr,
        calls,
        stream_cancelled,
        last_metadata,
        _shutdown: shutdown,
    }
}

/// The status of a forced failure: `code`, `message` and an ErrorInfo
/// `{reason: "FORCED", domain: "echo.test"}`.
fn forced(code: Code, message: &str) -> Status {
    status_with_details(code, message, vec![error_info("FORCED", "echo.test", &[])])
}

/// Applies `x-echo-delay-ms`, then `x-echo-fail`.
async fn steer<T>(request: &Request<T>) -> Result<(), Status> {
    let metadata = request.metadata();
    let number = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let delay = number(DELAY_HEADER).and_then(|ms| u64::try_from(ms).ok());
    let fail = number(FAIL_HEADER).and_then(|code| i32::try_from(code).ok());
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match fail {
        Some(code) if code != 0 => Err(forced(Code::from(code), "forced")),
        _ => Ok(()),
    }
}

/// The handlers proper; everything header-related is in [`Observe`].
#[derive(Debug)]
struct Echo {
    stream_cancelled: Arc<AtomicU64>,
}

impl Echo {
    async fn echo(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        steer(&request).await?;
        Ok(Response::new(request.into_inner()))
    }
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoMessage, Status>> + Send>>;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn get(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn get_book(
        &self,
        request: Request<EchoMessage>,
    ) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn create(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn update(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn cancel(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn get_nested(
        &self,
        request: Request<EchoMessage>,
    ) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn get_nested_only(
        &self,
        request: Request<EchoMessage>,
    ) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    async fn delete(&self, request: Request<EchoMessage>) -> Result<Response<()>, Status> {
        steer(&request).await?;
        Ok(Response::new(()))
    }

    type StreamStream = EchoStream;

    /// `small` copies with `big` = 1..=small, [`STREAM_INTERVAL`] apart, then the status
    /// `fail_code` ("stream failed") when it is not 0. A client that goes away is noticed
    /// within one interval and counted in `stream_cancelled`.
    async fn stream(
        &self,
        request: Request<EchoMessage>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        steer(&request).await?;
        let message = request.into_inner();
        let count = i64::from(message.small.max(0));
        let fail_code = message.fail_code;
        let cancelled = self.stream_cancelled.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for sequence in 1..=count {
                if sequence > 1 {
                    tokio::select! {
                        () = tx.closed() => {
                            cancelled.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        () = tokio::time::sleep(STREAM_INTERVAL) => {}
                    }
                }
                let copy = EchoMessage {
                    big: sequence,
                    ..message.clone()
                };
                if tx.send(Ok(copy)).await.is_err() {
                    cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            if fail_code != 0 {
                let status = forced(Code::from(fail_code), "stream failed");
                if tx.send(Err(status)).await.is_err() {
                    cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn plain(&self, request: Request<EchoMessage>) -> Result<Response<EchoMessage>, Status> {
        self.echo(request).await
    }

    /// The last message with `small` = how many arrived; a message with `fail_code` not 0
    /// fails the call with that code ("collect failed").
    async fn collect(
        &self,
        request: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<EchoMessage>, Status> {
        steer(&request).await?;
        let mut inbound = request.into_inner();
        let (mut last, mut count) = (EchoMessage::default(), 0);
        while let Some(message) = inbound.message().await? {
            if message.fail_code != 0 {
                return Err(forced(Code::from(message.fail_code), "collect failed"));
            }
            count += 1;
            last = message;
        }
        Ok(Response::new(EchoMessage {
            small: count,
            ..last
        }))
    }

    type ChatStream = EchoStream;

    /// Each message back as it arrives; a message with `fail_code` not 0 ends the stream
    /// with that code ("chat failed"). The replies end when the client half-closes; a
    /// client that goes away before they end is counted in `stream_cancelled`.
    async fn chat(
        &self,
        request: Request<Streaming<EchoMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        steer(&request).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // tonic shows a cancelled request stream as its normal end (`Ok(None)`):
                // cancellation is observed on the reply side, by `CountedIfDropped`.
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = inbound.message() => next,
                };
                let reply = match next {
                    Ok(Some(message)) if message.fail_code != 0 => {
                        Err(forced(Code::from(message.fail_code), "chat failed"))
                    }
                    Ok(Some(message)) => Ok(message),
                    Ok(None) | Err(_) => return,
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(CountedIfDropped {
            inner: ReceiverStream::new(rx),
            ended: false,
            cancelled: self.stream_cancelled.clone(),
        })))
    }
}

/// A reply stream that counts itself in `cancelled` when it is dropped before its end:
/// the client went away (reset the stream) while replies could still come.
struct CountedIfDropped {
    inner: ReceiverStream<Result<EchoMessage, Status>>,
    ended: bool,
    cancelled: Arc<AtomicU64>,
}

impl Stream for CountedIfDropped {
    type Item = Result<EchoMessage, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(None) = next {
            self.ended = true;
        }
        next
    }
}

impl Drop for CountedIfDropped {
    fn drop(&mut self) {
        if !self.ended {
            self.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Wraps the generated server: counts calls, records request headers, copies `x-*` and
/// `traceparent` request headers back as `x-echo-<name>` response headers, and adds the
/// `x-echo-trailer: done` trailer.
#[derive(Clone)]
struct Observe {
    inner: EchoServiceServer<Echo>,
    calls: Arc<AtomicU64>,
    last_metadata: Arc<Mutex<Option<HeaderMap>>>,
}

impl NamedService for Observe {
    const NAME: &'static str = <EchoServiceServer<Echo> as NamedService>::NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for Observe {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::Relaxed);
        *self
            .last_metadata
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(request.headers().clone());
        let echoed: Vec<(HeaderName, HeaderValue)> = request
            .headers()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with("x-") || name.as_str() == "traceparent")
            .filter_map(|(name, value)| {
                let echo_name = HeaderName::try_from(format!("x-echo-{name}")).ok()?;
                Some((echo_name, value.clone()))
            })
            .collect();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            let headers = response.headers_mut();
            for (name, value) in echoed {
                headers.append(name, value);
            }
            // A trailers-only response (an error before any message) has no trailers frame:
            // its status lives in the headers, and so does our trailer.
            if headers.contains_key("grpc-status") {
                headers.insert(TRAILER, HeaderValue::from_static("done"));
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(WithTrailer { inner: body })))
        })
    }
}

/// A response body that adds `x-echo-trailer: done` to the trailers frame.
struct WithTrailer {
    inner: tonic::body::Body,
}

impl http_body::Body for WithTrailer {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx).map(|frame| {
            frame.map(|result| {
                result.map(|mut frame| {
                    if let Some(trailers) = frame.trailers_mut() {
                        trailers.insert(TRAILER, HeaderValue::from_static("done"));
                    }
                    frame
                })
            })
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
