//! Plumbing shared by the shop services and the echo test backend: serving with reflection
//! and health, and building statuses with `google.rpc` details.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::{Message, Name};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::{Code, Status};
use tonic_health::ServingStatus;

use super::pb::google::rpc;

/// Serves `routes` on `incoming`, next to gRPC reflection (v1 and v1alpha, answering from
/// `descriptor`, an encoded `FileDescriptorSet`) and `grpc.health.v1` reporting `service` as
/// SERVING, until the sender of `shutdown` is dropped.
///
/// Stopping is abrupt, like a crashed backend: the listener closes and every open
/// connection is dropped at once (tonic's own shutdown is graceful, and an HTTP/2 client
/// may still get answers on its old connection for a moment after the GOAWAY).
///
/// Reflection lists only `service`, health and reflection itself, even when `descriptor`
/// describes more services than this listener serves.
pub async fn spawn(
    incoming: TcpIncoming,
    routes: Routes,
    service: &str,
    descriptor: &'static [u8],
    shutdown: watch::Receiver<()>,
) -> std::io::Result<()> {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(descriptor)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Both versions' descriptors in both servers, so each can describe every name it lists.
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            .with_service_name(service)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection")
    };
    let reflection_v1 = reflection().build_v1().map_err(std::io::Error::other)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(std::io::Error::other)?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status(service, ServingStatus::Serving)
        .await;

    let router = Server::builder()
        .add_routes(routes)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(health);
    let name = service.to_owned();
    let kill = shutdown.clone();
    let incoming = incoming.map(move |accepted| {
        accepted.map(|io| Killable {
            io,
            killed: Box::pin(stopped(kill.clone())),
            dead: false,
        })
    });
    tokio::spawn(async move {
        if let Err(error) = router
            .serve_with_incoming_shutdown(incoming, stopped(shutdown))
            .await
        {
            eprintln!("{name}: server failed: {error}");
        }
    });
    Ok(())
}

/// Resolves once the sender of `shutdown` is dropped (`changed` then fails).
async fn stopped(mut shutdown: watch::Receiver<()>) {
    while shutdown.changed().await.is_ok() {}
}

/// A server-side connection that fails all I/O once the shop shuts down, so hyper drops it
/// instead of draining it.
struct Killable {
    io: TcpStream,
    killed: Pin<Box<dyn Future<Output = ()> + Send>>,
    dead: bool,
}

impl Killable {
    /// Errors once shut down; otherwise registers the waker so the pending read wakes up
    /// (and fails) when the shutdown comes.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.dead && self.killed.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        if self.dead {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "server stopped",
            ))
        } else {
            Ok(())
        }
    }
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Killable {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// Packs `msg` into an `Any` with the standard `type.googleapis.com/` type URL.
pub fn any<M: Name>(msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// A status whose `grpc-status-details-bin` carries a `google.rpc.Status` with `details`,
/// the rich error model the gateway translates into JSON error bodies.
pub fn status_with_details(
    code: Code,
    message: impl Into<String>,
    details: Vec<prost_types::Any>,
) -> Status {
    let message = message.into();
    let status = rpc::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, Bytes::from(status.encode_to_vec()))
}

/// A `google.rpc.ErrorInfo` packed as `Any`.
pub fn error_info(reason: &str, domain: &str, metadata: &[(&str, &str)]) -> prost_types::Any {
    any(&rpc::ErrorInfo {
        reason: reason.to_owned(),
        domain: domain.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
}
