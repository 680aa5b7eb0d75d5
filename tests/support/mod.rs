//! Shared by the integration tests: the echo test server, the demo shop, a gateway, the
//! broker, a WebSocket client, a DNS server and waiting for a condition.
//! Each test binary uses a subset, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod amqp;
pub mod chromium;
pub mod dns;
pub mod echo;
pub mod grpc_go;
pub mod proxy;

// `#[path]` on a non-inline `mod` resolves relative to this file's directory (tests/support/).
#[path = "../../examples/shop/mod.rs"]
pub mod shop;

pub mod gateway;
pub mod ws;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An address on 127.0.0.1 where connections are refused, held for as long as the
/// returned socket lives: the socket is bound but does not listen, so the kernel answers
/// a connect with a reset and no other socket (a gateway another test starts at the same
/// time) can take the port. (Binding a listener and dropping it frees the port for
/// anyone: a test once reached another test's gateway there.)
pub fn refusing_address() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind 127.0.0.1:0");
    let address = socket.local_addr().expect("its address");
    (socket, address)
}

/// Waits up to `within` for `condition`, checking every 20 ms; fails the test after.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
