//! gRPC backends: a balancer over each upstream's endpoints (fixed, or discovered by
//! DNS), each endpoint a small pool of HTTP/2 connections, called with dynamic messages.

pub(crate) mod balancer;
pub(crate) mod connection;
mod corked;
pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod link;
pub(crate) mod outlier;
pub(crate) mod status;
pub(crate) mod stream;
pub(crate) mod unary;

pub(crate) use connection::Connection;

use crate::config::{Balance, GrpcUpstreamConfig, OutlierConfig, ResolverConfig, UpstreamConfig};
use crate::telemetry::UpstreamMetrics;
use crate::upstream::breaker::{CircuitBreaker, Permit};
use crate::upstream::retry::RetryPolicy;
use balancer::{Balancer, Endpoint, Lease};
use bytes::Bytes;
use discovery::DnsTarget;
use http::HeaderMap;
use http::uri::PathAndQuery;
use link::RequestBody;
use outlier::Outcome;
use smallvec::SmallVec;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use stream::ResponseMessages;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status};

/// Endpoints one call may try when the request could not be sent (connect errors): the
/// first and up to two others. Nothing reached a backend, so this is safe for every call.
const UNSENT_TRIES: usize = 3;

/// Endpoints a call already failed to reach.
type Tried = SmallVec<[Arc<Endpoint>; 2]>;

/// How many times opening a server stream the server refused unprocessed is retried.
const MAX_STREAM_RESENDS: u32 = 3;

/// One gRPC upstream: its endpoints and the policies of its calls.
#[derive(Debug)]
pub struct GrpcUpstream {
    pub name: String,
    /// The config it was built from, so a reload can keep it when nothing changed.
    pub config: GrpcUpstreamConfig,
    pub balancer: Balancer,
    /// What DNS discovery resolves (`dns:` upstreams).
    pub dns: Option<DnsTarget>,
    connections_per_endpoint: usize,
    pub metrics: UpstreamMetrics,
    /// Kept across reloads with the upstream, so its state survives them.
    pub breaker: Option<Arc<CircuitBreaker>>,
    pub retry: Option<RetryPolicy>,
    pub health_check: Option<crate::config::HealthCheckConfig>,
    /// Background work (health checks, discovery) was started: once per upstream,
    /// however many tables share it.
    started: AtomicBool,
    /// What the `tls:` files held when it was built (`tls::client::fingerprint`).
    tls_files: u64,
}

/// The TLS settings of `https://` endpoints (system roots when `tls:` is absent); `tls:`
/// with no `https://` endpoint is a mistake worth a load error.
fn client_tls(
    config: &GrpcUpstreamConfig,
    endpoints: &[String],
) -> Result<Option<Arc<crate::tls::client::ClientTls>>, String> {
    let https = endpoints.iter().any(|e| e.starts_with("https://"));
    if !https {
        if config.tls.is_some() {
            return Err("`tls` is set but no endpoint is `https://`".into());
        }
        return Ok(None);
    }
    crate::tls::client::ClientTls::load(config.tls.as_ref(), &[b"h2"])
        .map(|tls| Some(Arc::new(tls)))
}

impl GrpcUpstream {
    pub fn new(
        name: &str,
        config: &GrpcUpstreamConfig,
        policies: &UpstreamConfig,
        resolver: Option<&ResolverConfig>,
    ) -> Result<Self, String> {
        let prefix = |e: String| format!("upstream `{name}`: {e}");
        let dns = match &config.dns {
            Some(_) if !config.endpoints.is_empty() => {
                return Err(prefix("`endpoints` and `dns` exclude each other".into()));
            }
            Some(dns) => {
                Some(DnsTarget::parse(dns, config.refresh.map(|r| r.0), resolver).map_err(prefix)?)
            }
            None if config.refresh.is_some() => {
                return Err(prefix("`refresh` applies to `dns` only".into()));
            }
            None if config.endpoints.is_empty() => {
                return Err(format!("upstream `{name}` has no `endpoints` (or `dns`)"));
            }
            None => None,
        };
        let outlier = policies.outlier.clone().unwrap_or_default();
        if outlier.max_ejected_percent > 100 {
            return Err(prefix(
                "`outlier.max_ejected_percent` is at most 100".into(),
            ));
        }
        if outlier.base_ejection.0.is_zero() {
            return Err(prefix("`outlier.base_ejection` must be more than 0".into()));
        }
        let tls = client_tls(config, &config.endpoints).map_err(prefix)?;
        let per_endpoint = config.connections_per_endpoint.max(1);
        let endpoints = config
            .endpoints
            .iter()
            .map(|uri| {
                let connections = (0..per_endpoint)
                    .map(|_| Connection::new(uri, tls.as_ref()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(prefix)?;
                Ok(Arc::new(Endpoint::new(uri.clone(), connections)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            balancer: Balancer::new(name, policies.balance, outlier, endpoints),
            dns,
            connections_per_endpoint: per_endpoint,
            metrics: UpstreamMetrics::new(name),
            breaker: policies
                .circuit_breaker
                .as_ref()
                .map(|b| CircuitBreaker::new(name, b).map(Arc::new))
                .transpose()?,
            retry: policies.retry.as_ref().map(RetryPolicy::new),
            health_check: policies.health_check.clone(),
            started: AtomicBool::new(false),
            tls_files: crate::tls::client::fingerprint(config.tls.as_ref()),
        })
    }

    /// Whether this upstream was built from exactly these settings (reload reuse).
    pub fn same_settings(
        &self,
        config: &UpstreamConfig,
        resolver: Option<&ResolverConfig>,
    ) -> bool {
        let dns = match &self.config.dns {
            Some(dns) => DnsTarget::parse(dns, self.config.refresh.map(|r| r.0), resolver).ok(),
            None => None,
        };
        config.grpc.as_ref() == Some(&self.config)
            && dns == self.dns
            && self.breaker.as_ref().map(|b| &b.config) == config.circuit_breaker.as_ref()
            && self.retry.as_ref().map(|r| &r.config) == config.retry.as_ref()
            && self.health_check.as_ref() == config.health_check.as_ref()
            && self.balancer.policy == config.balance
            && self.balancer.detector.config == config.outlier.clone().unwrap_or_default()
            && config.grpc.as_ref().is_some_and(|grpc| {
                self.tls_files == crate::tls::client::fingerprint(grpc.tls.as_ref())
            })
    }

    /// The balancing policy and ejection settings in force.
    pub fn balance(&self) -> (Balance, &OutlierConfig) {
        (self.balancer.policy, &self.balancer.detector.config)
    }

    /// Starts the background work of a live upstream: health checks, DNS discovery.
    /// Both hold only a weak reference and stop once the upstream is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(config) = self.health_check.clone() {
            tokio::spawn(health::run(Arc::downgrade(self), config));
        }
        if let Some(target) = self.dns.clone() {
            tokio::spawn(discovery::run(Arc::downgrade(self), target));
        }
    }

    /// Applies a DNS answer: known addresses keep their endpoint, new ones join, the
    /// others drain.
    pub fn set_addresses(&self, target: &DnsTarget, addresses: &[SocketAddr]) {
        let current = self.balancer.endpoints();
        let names: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        if current.iter().map(|e| &e.name).eq(names.iter()) {
            return;
        }
        let draining = self.balancer.draining();
        let authority = target.authority_uri();
        let list: Vec<Arc<Endpoint>> = addresses
            .iter()
            .zip(names)
            .filter_map(|(address, name)| {
                if let Some(known) = current.iter().chain(&draining).find(|e| e.name == name) {
                    return Some(known.clone());
                }
                let connections = (0..self.connections_per_endpoint)
                    .map(|_| Connection::for_address(&authority, *address))
                    .collect::<Result<Vec<_>, _>>();
                match connections {
                    Ok(connections) => Some(Arc::new(Endpoint::new(name, connections))),
                    Err(error) => {
                        tracing::error!(upstream = %self.name, %address, %error, "resolved address left out");
                        None
                    }
                }
            })
            .collect();
        let joined: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
        tracing::info!(upstream = %self.name, host = %target.host, endpoints = ?joined, "DNS answer changed the endpoints");
        self.balancer.replace(list);
    }

    /// A connection for one-off calls at load time (descriptors by reflection): the
    /// first endpoint, or for a `dns:` upstream not yet live, the first address a
    /// resolution finds now.
    pub async fn any_connection(&self) -> Result<Connection, String> {
        if let Some(endpoint) = self.balancer.endpoints().first() {
            return Ok(endpoint.first_connection().clone());
        }
        let Some(target) = &self.dns else {
            return Err("no endpoints".into());
        };
        let addresses = discovery::resolve_once(target).await?;
        let first = addresses
            .first()
            .ok_or_else(|| format!("`{}` resolved to no address", target.host))?;
        Connection::for_address(&target.authority_uri(), *first)
    }

    /// An endpoint for the next call, connected: endpoints that cannot be reached are
    /// counted as failures and skipped (nothing was sent to them).
    pub async fn connected(&self) -> Result<Lease, Status> {
        let mut tried = Tried::new();
        loop {
            let Some(lease) = self.balancer.pick(&tried) else {
                return Err(self.no_endpoint());
            };
            match lease.connection().connect().await {
                Ok(()) => return Ok(lease),
                Err(status) => {
                    self.balancer.report(lease.endpoint(), Outcome::Failed);
                    if tried.len() + 1 >= UNSENT_TRIES
                        || self.balancer.endpoints().len() <= tried.len() + 1
                    {
                        return Err(status);
                    }
                    tried.push(lease.endpoint().clone());
                }
            }
        }
    }

    /// Every endpoint as it stands now: those in the list, then those draining.
    pub fn endpoint_views(&self) -> Vec<EndpointView> {
        let clock = &self.balancer.clock;
        self.balancer
            .endpoints()
            .iter()
            .chain(self.balancer.draining().iter())
            .map(|e| EndpointView {
                name: e.name.clone(),
                state: e.state(clock),
                healthy: e.is_healthy(),
                in_flight: e.in_flight(),
                ejections: e.outlier.ejections(),
                consecutive_failures: e.outlier.consecutive_failures(),
            })
            .collect()
    }

    fn no_endpoint(&self) -> Status {
        status::local_status(
            tonic::Code::Unavailable,
            format!(
                "upstream `{}` has no endpoint (DNS not resolved yet?)",
                self.name
            ),
        )
    }

    fn late(&self) -> Status {
        Status::deadline_exceeded(format!("upstream `{}` did not answer in time", self.name))
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
            // Boxed: the call's future is KiBs, and `timeout` would copy it (twice) inline.
            let result = match tokio::time::timeout(
                remaining,
                Box::pin(self.send_unary(&call.path, this_try, &framed, deadline)),
            )
            .await
            {
                // A backend that ran out of the time we sent it may answer CANCELLED (tonic
                // does), and that answer can reach us in the same turn as our own timer: at
                // or past the deadline it is the deadline.
                Ok(Err(status))
                    if status.code() == tonic::Code::Cancelled && Instant::now() >= deadline =>
                {
                    Err(self.late())
                }
                Ok(result) => result,
                Err(_) => Err(self.late()),
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

    /// One attempt of a unary call. A request that could not be sent (no connection to
    /// the endpoint picked) goes to another endpoint at once, whatever the method: the
    /// backend never saw it.
    async fn send_unary(
        &self,
        path: &PathAndQuery,
        mut headers: HeaderMap,
        framed: &Bytes,
        deadline: Instant,
    ) -> Result<Response<Bytes>, Status> {
        let mut tried = Tried::new();
        loop {
            let Some(lease) = self.balancer.pick(&tried) else {
                return Err(self.no_endpoint());
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = unary::call(
                lease.connection(),
                path.clone(),
                headers,
                framed.clone(),
                remaining,
            )
            .await;
            let outcome = match &result {
                Ok(_) => Outcome::Answered,
                Err(e) => Outcome::of(e.status.code()),
            };
            self.balancer.report(lease.endpoint(), outcome);
            match result {
                Ok(response) => return Ok(response),
                Err(unary::CallError {
                    status,
                    unsent: Some(unsent),
                }) if tried.len() + 1 < UNSENT_TRIES
                    && self.balancer.endpoints().len() > tried.len() + 1 =>
                {
                    tracing::debug!(upstream = %self.name, endpoint = %lease.endpoint().name, cause = %status.message(), "request not sent: trying another endpoint");
                    headers = unsent;
                    tried.push(lease.endpoint().clone());
                }
                Err(error) => return Err(error.status),
            }
        }
    }

    /// Opens a streaming call over framed bytes (`stream`): the response headers and the
    /// response messages, each as its encoded bytes. The breaker admits it, and its
    /// outcome is the opening's; in-stream errors are the caller's. A request body that
    /// can be sent again (one framed message: server streaming) is, on a new
    /// connection, when the server refused the stream unprocessed (GOAWAY).
    pub(crate) async fn open_stream(
        &self,
        path: &PathAndQuery,
        metadata: HeaderMap,
        mut body: RequestBody,
        client_deadline: bool,
    ) -> Result<(HeaderMap, ResponseMessages), Status> {
        let permit = self.admit()?;
        let started = Instant::now();
        let replayable = match &body {
            RequestBody::Message(message) => Some(message.clone()),
            RequestBody::Chunks(_) | RequestBody::Stream(_) => None,
        };
        let mut resends = 0;
        // The outcome, and the endpoint it says something about (none: no connection).
        let (result, lease) = loop {
            let lease = match self.connected().await {
                Ok(lease) => lease,
                Err(status) => break (Err(status), None),
            };
            let result =
                stream::open(lease.connection(), path.clone(), metadata.clone(), body).await;
            match (result, &replayable) {
                (Err(status), Some(message))
                    if status::is_unprocessed(&status) && resends < MAX_STREAM_RESENDS =>
                {
                    resends += 1;
                    body = RequestBody::Message(message.clone());
                }
                (result, _) => break (result, Some(lease)),
            }
        };
        let code = self.record(&result, started, permit, client_deadline);
        if let Some(lease) = lease {
            self.balancer.report(lease.endpoint(), Outcome::of(code));
        }
        result
    }

    /// Opens a server stream with the one framed request message of `call` and waits for
    /// its first message (`None`: the stream ended without one), which callers bound by
    /// the route's deadline. No `grpc-timeout` is sent: a stream outlives that deadline,
    /// and servers that bind handlers to the deadline (grpc-go, grpc-java) would cut it.
    pub(crate) async fn open_server_stream(
        &self,
        call: Call,
    ) -> Result<(HeaderMap, ResponseMessages, Option<Bytes>), Status> {
        let body = RequestBody::Message(call.framed);
        let metadata = call.metadata.into_headers();
        let opened = self.open_stream(&call.path, metadata, body, call.client_deadline);
        let (headers, mut messages) = opened.await?;
        let first = messages.next().await?;
        Ok((headers, messages, first))
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

/// One endpoint for the admin API and metrics.
#[derive(Debug, Clone)]
pub struct EndpointView {
    pub name: String,
    pub state: balancer::State,
    /// The active health checks' verdict (true without `health_check`).
    pub healthy: bool,
    pub in_flight: usize,
    pub ejections: u64,
    pub consecutive_failures: u32,
}

/// One backend call as the proxy prepared it.
pub struct Call {
    pub path: PathAndQuery,
    pub metadata: MetadataMap,
    /// The request message with its gRPC prefix (`unary::frame`, `unary::finish_frame`).
    pub framed: Bytes,
    pub timeout: Duration,
    /// The client shortened the deadline: running out of it is not the backend's fault.
    pub client_deadline: bool,
    /// Safe to retry (GET, or a route marked `idempotent`).
    pub idempotent: bool,
}
