//! Switchboard: a protocol-translating API gateway. HTTP/JSON in front, gRPC behind.
//!
//! A request goes `server` → `proxy::handle` → `routing::RouteTable::lookup` → a target
//! (`upstream::grpc`, static) with `transcode` doing JSON ↔ protobuf on the way. The
//! table is compiled by `routing::compile` from `config` + `schema`, and swapped whole
//! on reload by `gateway::Gateway`.

// Time through tokio (pausable in tests) and no blocking sleeps: see clippy.toml.
#![warn(clippy::disallowed_methods)]
// `pub` only for what the binary, the tests and the benches use; the rest is `pub(crate)`,
// so the compiler reports what nothing uses. (Not in Cargo.toml's `[lints]`: in a binary,
// tests and examples every `pub` is unreachable.)
#![warn(unreachable_pub)]

pub(crate) mod admin;
pub(crate) mod cache;
pub(crate) mod compose;
pub mod config;
pub mod error;
pub mod gateway;
pub(crate) mod listener;
pub mod middleware;
pub mod openapi;
pub(crate) mod proxy;
pub(crate) mod queue;
pub(crate) mod redis_connection;
pub(crate) mod rfc3339;
pub mod routing;
pub mod schema;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod transcode;
pub(crate) mod upstream;
pub(crate) mod ws;

pub use error::GatewayError;
pub use gateway::Gateway;
pub use server::Server;
