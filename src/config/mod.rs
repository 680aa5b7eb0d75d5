//! The gateway configuration file (`switchboard.yaml`, contract §3) and the route files
//! it points to (contract §4): their serde shapes and how they are read. Nothing here
//! knows about descriptors; `routing::compile` turns these into a route table.

mod amqp;
mod env;
mod load;
pub mod mapping;
mod units;

pub use amqp::{AmqpBinding, AmqpDeclare, AmqpExchange, AmqpTarget, AmqpUpstreamConfig};
pub use env::{expand_env, expand_yaml};
pub(crate) use load::collect_files;
pub use load::{LoadError, LoadErrors, Location, SectionLines, SourceText, load_gateway_config};
pub use units::{ByteSize, ConfigDuration};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default per-call deadline when neither route nor upstream sets one (contract §9).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// `switchboard.yaml`, after `${ENV}` expansion and with relative paths resolved.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin API (`/admin/*`) requires, when set (`${ADMIN_TOKEN}`).
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub descriptors: Vec<PathBuf>,
    #[serde(default)]
    pub mappings: Vec<PathBuf>,
    #[serde(default)]
    pub json: JsonConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub upstreams: BTreeMap<String, serde_saphyr::Spanned<UpstreamConfig>>,
    /// How long SIGINT/SIGTERM waits for in-flight requests before exiting.
    #[serde(default)]
    pub shutdown_grace: Option<ConfigDuration>,
    /// TLS termination on `listen` (`crate::tls::server`).
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    #[serde(default)]
    pub cors: Option<CorsConfig>,
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub rate_limits: Option<RateLimitsConfig>,
    /// The response cache store (`crate::cache`).
    #[serde(default)]
    pub cache: Option<crate::cache::CacheConfig>,
    /// Peers whose `X-Forwarded-For` is believed (CIDRs or single addresses).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Span export (`crate::telemetry::otlp`); off when absent.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// The DNS servers `dns:` upstreams are resolved with (default: the system resolver).
    #[serde(default)]
    pub resolver: Option<ResolverConfig>,

    /// The folder of the config file; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file itself, for error messages and reload.
    #[serde(skip)]
    pub path: PathBuf,
    /// Where its sections begin, for errors found when they are built.
    #[serde(skip)]
    pub lines: SectionLines,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}

impl GatewayConfig {
    pub fn shutdown_grace(&self) -> Duration {
        self.shutdown_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30))
    }
}

/// `telemetry:`: where spans go. Nothing is built or sent without `otlp`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// `telemetry.otlp`: an OTLP/HTTP collector (protobuf bodies), e.g.
/// `http://127.0.0.1:4318`; `/v1/traces` is added when the URL has no path.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    pub endpoint: String,
}

/// `tls:` — the listener's certificate chain and private key (PEM files).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The leaf certificate first, then the intermediates.
    pub cert: PathBuf,
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC) private key of the leaf.
    pub key: PathBuf,
}

/// `tls:` of an upstream (gRPC `https://` endpoints, `amqps://`): how the gateway checks
/// the backend's certificate and which one it presents (mTLS).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM file of the CAs to trust instead of the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM) for mTLS; needs `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name checked against the backend's certificate (and sent as SNI) instead of the
    /// endpoint's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl UpstreamTlsConfig {
    /// Relative paths resolved against `base` (the config file's folder).
    pub(crate) fn resolve(&mut self, base: &std::path::Path) {
        for path in [&mut self.ca, &mut self.cert, &mut self.key]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// The files it names, for the file watch.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.ca, &self.cert, &self.key].into_iter().flatten()
    }
}

/// Proto3 JSON mapping options (contract §3 `json:`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonConfig {
    /// Emit fields that hold their default value (0, "", false, empty lists).
    pub emit_defaults: bool,
    /// Emit proto field names (`page_size`) instead of lowerCamelCase (`pageSize`).
    pub use_proto_names: bool,
    /// Emit enums as numbers instead of names.
    pub enums_as_ints: bool,
    /// Accept (and drop) request fields the message type does not have. Off: 400.
    pub ignore_unknown_fields: bool,
}

impl Default for JsonConfig {
    fn default() -> Self {
        Self {
            emit_defaults: true,
            use_proto_names: false,
            enums_as_ints: false,
            ignore_unknown_fields: false,
        }
    }
}

/// Request size limits (contract §3 `limits:`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_body: ByteSize,
    pub max_ws_frame: ByteSize,
    pub max_ws_connections: usize,
    /// Longest request path + query accepted; longer is 414.
    pub max_uri: ByteSize,
    /// A WebSocket with no data frame either way for this long is closed (1001); 0 = never.
    pub ws_idle_timeout: ConfigDuration,
    /// The gateway pings every WebSocket this often and drops a client that has not
    /// answered a ping one interval later; 0 = no pings.
    pub ws_ping_interval: ConfigDuration,
    /// A client must send a request's whole head (line + headers) within this; HTTP/1
    /// counts the wait for the next request of a kept-alive connection too.
    pub header_read_timeout: ConfigDuration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: ConfigDuration,
    /// Open client connections; more wait to be accepted (fixed at start).
    pub max_connections: usize,
    /// Largest request head (request line + headers); larger is 431.
    pub max_header_bytes: ByteSize,
    /// WebSockets one client address may hold at once; more are refused (429).
    pub max_ws_per_client: usize,
    /// Bytes one socket may hold in each direction: client frames queued for the backend
    /// or being handled by it (e.g. AMQP calls in flight), during which the socket is not
    /// read; and backend messages waiting to be written to the client, during which the
    /// backend's stream is not read. At least one `max_ws_frame`.
    pub max_ws_buffered: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: ByteSize(4 << 20),
            max_ws_frame: ByteSize(256 << 10),
            max_ws_connections: 10_000,
            max_uri: ByteSize(8 << 10),
            ws_idle_timeout: ConfigDuration(Duration::from_secs(300)),
            ws_ping_interval: ConfigDuration(Duration::from_secs(30)),
            header_read_timeout: ConfigDuration(Duration::from_secs(10)),
            idle_timeout: ConfigDuration(Duration::from_secs(60)),
            max_connections: 20_000,
            max_header_bytes: ByteSize(32 << 10),
            max_ws_per_client: 64,
            max_ws_buffered: ByteSize(1 << 20),
        }
    }
}

/// One named backend (contract §3 `upstreams:`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(default)]
    pub grpc: Option<GrpcUpstreamConfig>,
    #[serde(default)]
    pub amqp: Option<AmqpUpstreamConfig>,
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    #[serde(default)]
    pub circuit_breaker: Option<BreakerConfig>,
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// How calls are spread over the endpoints (gRPC upstreams).
    #[serde(default)]
    pub balance: Balance,
    /// Passive outlier ejection (gRPC upstreams); defaults apply when absent.
    #[serde(default)]
    pub outlier: Option<OutlierConfig>,
}

/// `balance:` on an upstream.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices: the endpoint with fewer calls in flight of two picked at random.
    #[default]
    P2c,
    RoundRobin,
}

/// `outlier:` on a gRPC upstream: an endpoint whose calls fail `consecutive_failures`
/// times in a row (connect errors, UNAVAILABLE) leaves the rotation for
/// `base_ejection` × the number of times it was ejected, at most `max_ejection`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Failures in a row that eject an endpoint; 0 turns ejection off.
    pub consecutive_failures: u32,
    pub base_ejection: ConfigDuration,
    /// Longest ejection, however often an endpoint was ejected.
    pub max_ejection: ConfigDuration,
    /// At most this share of the endpoints is ejected at once (at least one may be,
    /// never the last one in rotation).
    pub max_ejected_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection: ConfigDuration(Duration::from_secs(10)),
            max_ejection: ConfigDuration(Duration::from_secs(300)),
            max_ejected_percent: 50,
        }
    }
}

/// `resolver:` (top level): the DNS servers for `dns:` upstreams.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResolverConfig {
    /// `ip` or `ip:port` (port 53 when absent), asked over UDP (TCP for long answers).
    pub nameservers: Vec<String>,
    /// Deadline of one query (default 2s).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrpcUpstreamConfig {
    /// `http://host:port` URIs, each one endpoint.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `host:port` re-resolved every `refresh`: each A/AAAA address is one endpoint
    /// (alternative to `endpoints`).
    #[serde(default)]
    pub dns: Option<String>,
    /// How often `dns` is resolved again (default 5s).
    #[serde(default)]
    pub refresh: Option<ConfigDuration>,
    /// Fetch descriptors from the server's reflection service at start-up.
    #[serde(default)]
    pub reflection: bool,
    /// HTTP/2 connections opened to each endpoint (requests are spread over them).
    #[serde(default = "default_connections")]
    pub connections_per_endpoint: usize,
    /// TLS settings of `https://` endpoints (system roots without it).
    #[serde(default)]
    pub tls: Option<UpstreamTlsConfig>,
}

fn default_connections() -> usize {
    1
}

/// `auth:` — how tokens are verified.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`, when set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The token's `aud` must name one of these, when set.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accept tokens without checking `iss` (no `issuer`). Off: a missing `issuer` is a
    /// load error, so the check is never off by omission.
    #[serde(default)]
    pub allow_any_issuer: bool,
    /// Accept tokens without checking `aud` (no `audiences`). Off: an empty or missing
    /// `audiences` is a load error.
    #[serde(default)]
    pub allow_any_audience: bool,
    /// Accepted algorithms (pinned: a token naming another is refused).
    pub algorithms: Vec<String>,
    /// JWKS for asymmetric algorithms: a file path, or an http(s) URL (cached, refreshed).
    #[serde(default)]
    pub jwks: Option<String>,
    /// Shared secret for HS256/384/512.
    #[serde(default)]
    pub secret: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 0s).
    #[serde(default)]
    pub leeway: Option<ConfigDuration>,
    /// Claim name → header/metadata name set from a verified token.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// A JWKS URL is fetched again after this long (default 5m), and at most once per
    /// `jwks_min_refresh` (default 30s) when a token names an unknown `kid`.
    #[serde(default)]
    pub jwks_ttl: Option<ConfigDuration>,
    #[serde(default)]
    pub jwks_min_refresh: Option<ConfigDuration>,
    /// Accept an `http://` JWKS URL (keys fetched without TLS). Off: refused at load.
    #[serde(default)]
    pub jwks_allow_http: bool,
    /// How many verified tokens to remember (default 10000; 0 verifies every request).
    #[serde(default)]
    pub token_cache: Option<usize>,
}

/// `rate_limits:` — named policies and where their counters live.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// `memory` (default) or a `redis://` URL shared by every gateway instance.
    #[serde(default = "default_store")]
    pub store: String,
    /// Deadline of one Redis decision (default 100ms).
    #[serde(default)]
    pub store_timeout: Option<ConfigDuration>,
    #[serde(default)]
    pub policies: BTreeMap<String, RateLimitPolicyConfig>,
}

fn default_store() -> String {
    "memory".into()
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitAlgorithm {
    TokenBucket,
    LeakyBucket,
    FixedWindow,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicyConfig {
    pub algorithm: RateLimitAlgorithm,
    /// Requests per `per`.
    pub rate: u64,
    pub per: ConfigDuration,
    /// Bucket capacity (token and leaky bucket; default `rate`).
    #[serde(default)]
    pub burst: Option<u64>,
    /// `client_ip`, `claims.<name>` or `header.<name>`.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// With a Redis store: admissions per key an instance may take ahead of need and
    /// spend without a round trip (0: every decision is made in Redis).
    #[serde(default)]
    pub reserve: u64,
}

fn default_key() -> String {
    "client_ip".into()
}

/// `cors:` — browsers on these origins may call the gateway.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://shop.example`), or `*` for any.
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Default: the methods of the route table for the requested path.
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default)]
    pub max_age: Option<ConfigDuration>,
}

/// `retry:` on an upstream — idempotent calls only, UNAVAILABLE / connect errors only.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts after the first.
    pub attempts: u32,
    /// First backoff; doubles each retry, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: ConfigDuration,
    /// Retries may add at most this share of extra load (default 0.2).
    #[serde(default = "default_budget")]
    pub budget: f64,
}

fn default_backoff() -> ConfigDuration {
    ConfigDuration(Duration::from_millis(25))
}

fn default_budget() -> f64 {
    0.2
}

/// `circuit_breaker:` on an upstream.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    pub failure_ratio: f64,
    pub min_requests: u64,
    pub window: ConfigDuration,
    pub open_for: ConfigDuration,
    #[serde(default = "default_half_open")]
    pub half_open_requests: u32,
    /// Count INTERNAL answers as failures too (default false).
    #[serde(default)]
    pub trip_on_internal: bool,
}

fn default_half_open() -> u32 {
    1
}

/// `health_check:` on a gRPC upstream: grpc.health.v1 `Check` per endpoint every
/// `interval`; endpoints that are not SERVING leave the balancer until they are again.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub interval: ConfigDuration,
    /// Deadline of one check (default: the interval, at most 2s).
    #[serde(default)]
    pub timeout: Option<ConfigDuration>,
    /// Service name to check (default "": the whole server).
    #[serde(default)]
    pub service: String,
}
