//! Backends shared by the integration tests: the echo test server and the demo shop.
//! Each test binary uses a subset, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod amqp;
pub mod echo;

// `#[path]` on a non-inline `mod` resolves relative to this file's directory (tests/support/).
#[path = "../../examples/shop/mod.rs"]
pub mod shop;

pub mod gateway;
