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

use std::time::{Duration, Instant};

/// Waits up to `within` for `condition`, checking every 20 ms; fails the test after.
pub async fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
