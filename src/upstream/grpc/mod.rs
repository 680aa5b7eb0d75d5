//! gRPC backends: one pool of HTTP/2 connections per upstream, balanced round-robin over
//! its endpoints, called with dynamic messages.

mod coalesce;
mod codec;
pub mod connection;
pub mod health;
pub mod status;
pub mod unary;

pub use codec::{DynamicCodec, RawCodec};
pub use connection::Connection;

use crate::config::{GrpcUpstreamConfig, UpstreamConfig};
use crate::telemetry::UpstreamMetrics;
use crate::upstream::breaker::{CircuitBreaker, Permit};
use crate::upstream::retry::RetryPolicy;
use bytes::Bytes;
use http::uri::PathAndQuery;
use prost_reflect::DynamicMessage;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// The connections of one gRPC upstream. They connect lazily and reconnect by
/// themselves; cloning a `Connection` shares it.
#[derive(Debug)]
pub struct GrpcUpstream {
    pub name: String,
    pub endpoints: Vec<String>,
    /// The config it was built from, so a reload can keep it when nothing changed.
    pub config: GrpcUpstreamConfig,
    connections: Vec<Connection>,
    next: AtomicUsize,
    pub metrics: UpstreamMetrics,
    /// Kept across reloads with the upstream, so its state survives them.
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub retry: Option<RetryPolicy>,
    /// Which endpoints the balancer may use (all, without `health_check`).
    pub health: health::EndpointHealth,
    /// Health checks were started (once per upstream, however many tables share it).
    health_started: std::sync::atomic::AtomicBool,
}

impl GrpcUpstream {
    pub fn new(
        name: &str,
        config: &GrpcUpstreamConfig,
        policies: &UpstreamConfig,
    ) -> Result<Self, String> {
        let mut endpoints: Vec<String> = config.endpoints.clone();
        if let Some(dns) = &config.dns {
            endpoints.push(if dns.contains("://") {
                dns.clone()
            } else {
                format!("http://{dns}")
            });
        }
        if endpoints.is_empty() {
            return Err(format!("upstream `{name}` has no `endpoints` (or `dns`)"));
        }
        let per_endpoint = config.connections_per_endpoint.max(1);
        let mut connections = Vec::with_capacity(endpoints.len() * per_endpoint);
        for _ in 0..per_endpoint {
            for uri in &endpoints {
                connections
                    .push(Connection::new(uri).map_err(|e| format!("upstream `{name}`: {e}"))?);
            }
        }
        let health = health::EndpointHealth::new(name, &endpoints, policies.health_check.clone());
        Ok(Self {
            name: name.to_string(),
            endpoints,
            config: config.clone(),
            connections,
            next: AtomicUsize::new(0),
            metrics: UpstreamMetrics::new(name),
            breaker: policies
                .circuit_breaker
                .as_ref()
                .map(|b| CircuitBreaker::new(name, b).map(Arc::new))
                .transpose()?,
            retry: policies.retry.as_ref().map(RetryPolicy::new),
            health,
            health_started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether this upstream was built from exactly these settings (reload reuse).
    pub fn same_settings(&self, config: &UpstreamConfig) -> bool {
        config.grpc.as_ref() == Some(&self.config)
            && self.breaker.as_ref().map(|b| &b.config) == config.circuit_breaker.as_ref()
            && self.retry.as_ref().map(|r| &r.config) == config.retry.as_ref()
            && self.health.config.as_ref() == config.health_check.as_ref()
    }

    /// The next connection, round-robin over healthy endpoints (over all of them when
    /// none is known healthy: failing open beats refusing everything).
    pub fn connection(&self) -> &Connection {
        let n = self.connections.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| self.health.is_healthy(i % self.endpoints.len()))
            .map(|i| &self.connections[i])
            .unwrap_or_else(|| &self.connections[start % n])
    }

    /// Checks every endpoint's grpc.health.v1 status on the configured interval, for as
    /// long as this upstream is in use (the task holds only a weak reference).
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(config) = self.health.config.clone() else {
            return;
        };
        if self.health_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let connections = self.connections[..self.endpoints.len()].to_vec();
        tokio::spawn(health::run(weak, connections, config));
    }

    /// A unary call with the upstream's policies: the circuit breaker admits it, the
    /// deadline bounds it (sent as `grpc-timeout` and enforced here: one timer per
    /// attempt), and an idempotent call is retried on UNAVAILABLE within the deadline and
    /// the retry budget. The response message comes back encoded, for the caller to
    /// transcode.
    pub async fn unary(&self, call: Call) -> Result<Response<Bytes>, Status> {
        let deadline = Instant::now() + call.timeout;
        let retry = self.retry.as_ref().filter(|_| call.idempotent);
        if let Some(retry) = retry {
            retry.deposit();
        }
        let mut attempt = 0;
        // Encoded once; a retry resends the same bytes.
        let framed = call.framed;
        // Without retries the metadata is moved into the one attempt, not cloned.
        let mut metadata = Some(call.metadata.into_headers());
        loop {
            let permit = self.admit()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let this_try = match retry {
                Some(_) => metadata.clone(),
                None => metadata.take(),
            }
            .ok_or_else(|| Status::internal("request metadata already sent"))?;
            let started = Instant::now();
            let result = match tokio::time::timeout(
                remaining,
                unary::call(
                    self.connection(),
                    call.path.clone(),
                    this_try,
                    framed.clone(),
                    remaining,
                ),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "upstream `{}` did not answer in time",
                    self.name
                ))),
            };
            let code = self.record(&result, started, permit, call.client_deadline);
            let Some(retry) = retry else { return result };
            attempt += 1;
            if result.is_ok() || !retry.should_retry(attempt, code) {
                return result;
            }
            // Retry only when another attempt as long as this one still fits.
            let backoff = retry.backoff(attempt);
            if Instant::now() + backoff + started.elapsed() >= deadline {
                return result;
            }
            tracing::debug!(upstream = %self.name, attempt, ?backoff, "retrying after UNAVAILABLE");
            tokio::time::sleep(backoff).await;
        }
    }

    /// Opens a server stream (the breaker admits it; its outcome is the opening's).
    pub async fn server_streaming(
        &self,
        call: Call,
    ) -> Result<Response<Streaming<DynamicMessage>>, Status> {
        let permit = self.admit()?;
        // The message without its gRPC prefix: tonic frames it again.
        let message = call.framed.slice(unary::FRAME_PREFIX.len()..);
        // No `grpc-timeout`: a stream outlives the route deadline (which the caller
        // enforces on opening it and its first message), and servers that bind handlers
        // to the deadline (grpc-go, grpc-java) would cut it.
        let request = Request::from_parts(call.metadata, tonic::Extensions::default(), message);
        let started = Instant::now();
        let mut grpc = tonic::client::Grpc::new(self.connection().clone());
        let result = grpc.server_streaming(request, call.path, call.codec).await;
        self.record(&result, started, permit, call.client_deadline);
        result
    }

    /// Counts an outcome in the metrics and reports it to the breaker. A deadline the
    /// client shortened that ran out says nothing about the backend: the permit is
    /// released without an outcome.
    fn record<T>(
        &self,
        result: &Result<T, Status>,
        started: Instant,
        permit: Option<Permit>,
        client_deadline: bool,
    ) -> tonic::Code {
        let code = result
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics.record(code, started.elapsed());
        if let Some(permit) = permit
            && !(client_deadline && code == tonic::Code::DeadlineExceeded)
        {
            permit.record(code);
        }
        code
    }

    /// A breaker permit, or UNAVAILABLE at once when the breaker is open.
    fn admit(&self) -> Result<Option<Permit>, Status> {
        match &self.breaker {
            Some(breaker) => breaker
                .acquire()
                .map(Some)
                .map_err(|e| Status::unavailable(e.message)),
            None => Ok(None),
        }
    }
}

/// One backend call as the proxy prepared it.
pub struct Call {
    pub path: PathAndQuery,
    pub codec: DynamicCodec,
    pub metadata: MetadataMap,
    /// The request message with its gRPC prefix (`unary::frame`, `unary::finish_frame`).
    pub framed: Bytes,
    pub timeout: Duration,
    /// The client shortened the deadline: running out of it is not the backend's fault.
    pub client_deadline: bool,
    /// Safe to retry (GET, or a route marked `idempotent`).
    pub idempotent: bool,
}
