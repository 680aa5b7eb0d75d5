//! Switchboard: a protocol-translating API gateway. HTTP/JSON in front, gRPC behind.
//!
//! A request goes `server` → `proxy::handle` → `routing::RouteTable::lookup` → a target
//! (`upstream::grpc`, static) with `transcode` doing JSON ↔ protobuf on the way. The
//! table is compiled by `routing::compile` from `config` + `schema`, and swapped whole
//! on reload by `gateway::Gateway`.

// Time through tokio (pausable in tests) and no blocking sleeps: see clippy.toml.
#![warn(clippy::disallowed_methods)]

pub mod admin;
pub mod cache;
pub mod compose;
pub mod config;
pub mod error;
pub mod gateway;
pub mod listener;
pub mod middleware;
pub mod openapi;
pub mod proxy;
pub mod redis_connection;
pub mod routing;
pub mod schema;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod transcode;
pub mod upstream;
pub mod ws;

pub use error::GatewayError;
pub use gateway::Gateway;
pub use server::Server;
