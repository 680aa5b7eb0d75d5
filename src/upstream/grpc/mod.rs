//! gRPC backends: one pool of HTTP/2 channels per upstream, balanced round-robin over its
//! endpoints, called with dynamic messages.

mod codec;
pub mod health;
pub mod status;

pub use codec::DynamicCodec;

use crate::config::{GrpcUpstreamConfig, UpstreamConfig};
use crate::telemetry::UpstreamMetrics;
use crate::upstream::breaker::{CircuitBreaker, Permit};
use crate::upstream::retry::RetryPolicy;
use http::uri::PathAndQuery;
use prost_reflect::DynamicMessage;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// How long opening a TCP connection to a backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The channels of one gRPC upstream. Channels connect lazily and reconnect by
/// themselves; cloning a `Channel` shares its connection.
#[derive(Debug)]
pub struct GrpcUpstream {
    pub name: String,
    pub endpoints: Vec<String>,
    /// The config it was built from, so a reload can keep it when nothing changed.
    pub config: GrpcUpstreamConfig,
    channels: Vec<Channel>,
    next: AtomicUsize,
    pub metrics: UpstreamMetrics,
    /// Kept across reloads with the upstream, so its state survives them.
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub retry: Option<RetryPolicy>,
    /// Which endpoints the balancer may use (all, without `health_check`).
    pub health: health::EndpointHealth,
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
        let mut channels = Vec::with_capacity(endpoints.len() * per_endpoint);
        for _ in 0..per_endpoint {
            for uri in &endpoints {
                let endpoint = Endpoint::from_shared(uri.clone())
                    .map_err(|e| format!("upstream `{name}`: invalid endpoint `{uri}`: {e}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true)
                    .http2_adaptive_window(true);
                channels.push(endpoint.connect_lazy());
            }
        }
        let health = health::EndpointHealth::new(name, &endpoints, policies.health_check.clone());
        Ok(Self {
            name: name.to_string(),
            endpoints,
            config: config.clone(),
            channels,
            next: AtomicUsize::new(0),
            metrics: UpstreamMetrics::new(name),
            breaker: policies
                .circuit_breaker
                .as_ref()
                .map(|b| CircuitBreaker::new(name, b).map(Arc::new))
                .transpose()?,
            retry: policies.retry.as_ref().map(RetryPolicy::new),
            health,
        })
    }

    /// Whether this upstream was built from exactly these settings (reload reuse).
    pub fn same_settings(&self, config: &UpstreamConfig) -> bool {
        config.grpc.as_ref() == Some(&self.config)
            && self.breaker.as_ref().map(|b| &b.config) == config.circuit_breaker.as_ref()
            && self.retry.as_ref().map(|r| &r.config) == config.retry.as_ref()
            && self.health.config.as_ref() == config.health_check.as_ref()
    }

    /// The next channel, round-robin over healthy endpoints (over all of them when none
    /// is known healthy: failing open beats refusing everything).
    pub fn channel(&self) -> Channel {
        let n = self.channels.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| self.health.is_healthy(i % self.endpoints.len()))
            .map(|i| self.channels[i].clone())
            .unwrap_or_else(|| self.channels[start % n].clone())
    }

    /// Checks every endpoint's grpc.health.v1 status on the configured interval, for as
    /// long as this upstream is in use (the task holds only a weak reference).
    pub fn start_health_checks(self: &Arc<Self>) {
        let Some(config) = self.health.config.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let channels: Vec<Channel> = self.channels[..self.endpoints.len()].to_vec();
        tokio::spawn(health::run(weak, channels, config));
    }

    async fn ready(&self) -> Result<tonic::client::Grpc<Channel>, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("upstream `{}` not ready: {e}", self.name)))?;
        Ok(grpc)
    }

    /// A unary call with the upstream's policies: the circuit breaker admits it, the
    /// deadline bounds it (sent as `grpc-timeout` and enforced here), and an idempotent
    /// call is retried on UNAVAILABLE within the deadline and the retry budget.
    pub async fn unary(&self, call: Call) -> Result<Response<DynamicMessage>, Status> {
        let deadline = Instant::now() + call.timeout;
        let retry = self.retry.as_ref().filter(|_| call.idempotent);
        if let Some(retry) = retry {
            retry.deposit();
        }
        let mut attempt = 0;
        // Without retries the message is moved into the one attempt, not cloned.
        let mut message = Some(call.message);
        loop {
            let permit = self.admit()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let this_try = match retry {
                Some(_) => message.clone(),
                None => message.take(),
            }
            .ok_or_else(|| Status::internal("request message already sent"))?;
            let mut request = Request::from_parts(
                call.metadata.clone(),
                tonic::Extensions::default(),
                this_try,
            );
            request.set_timeout(remaining);
            let started = Instant::now();
            let result = match tokio::time::timeout(
                remaining,
                self.send_unary(call.path.clone(), call.codec.clone(), request),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "upstream `{}` did not answer in time",
                    self.name
                ))),
            };
            let code = self.record(&result, started, permit);
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
        let mut request =
            Request::from_parts(call.metadata, tonic::Extensions::default(), call.message);
        request.set_timeout(call.timeout);
        let started = Instant::now();
        let result = match self.ready().await {
            Ok(mut grpc) => grpc.server_streaming(request, call.path, call.codec).await,
            Err(status) => Err(status),
        }
        .map_err(deadline_as_deadline);
        self.record(&result, started, permit);
        result
    }

    /// Counts an outcome in the metrics and reports it to the breaker.
    fn record<T>(
        &self,
        result: &Result<T, Status>,
        started: Instant,
        permit: Option<Permit>,
    ) -> tonic::Code {
        let code = result
            .as_ref()
            .map(|_| tonic::Code::Ok)
            .unwrap_or_else(|s| s.code());
        self.metrics.record(code, started.elapsed());
        if let Some(permit) = permit {
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

    async fn send_unary(
        &self,
        path: PathAndQuery,
        codec: DynamicCodec,
        request: Request<DynamicMessage>,
    ) -> Result<Response<DynamicMessage>, Status> {
        match self.ready().await {
            Ok(mut grpc) => grpc.unary(request, path, codec).await,
            Err(status) => Err(status),
        }
        .map_err(deadline_as_deadline)
    }
}

/// One backend call as the proxy prepared it.
pub struct Call {
    pub path: PathAndQuery,
    pub codec: DynamicCodec,
    pub metadata: MetadataMap,
    pub message: DynamicMessage,
    pub timeout: Duration,
    /// Safe to retry (GET, or a route marked `idempotent`).
    pub idempotent: bool,
}

/// tonic reports its own `grpc-timeout` expiry as CANCELLED ("Timeout expired"); for the
/// client that is a deadline, 504 DEADLINE_EXCEEDED, not 499.
fn deadline_as_deadline(status: Status) -> Status {
    if status.code() == tonic::Code::Cancelled
        && status.message() == tonic::TimeoutExpired(()).to_string()
    {
        Status::deadline_exceeded("upstream deadline exceeded")
    } else {
        status
    }
}
