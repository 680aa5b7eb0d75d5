//! `cache:` as written in `switchboard.yaml` (the store) and on a route (the policy), and
//! the route policy compiled at load time.

use crate::config::{ByteSize, ConfigDuration, DEFAULT_TIMEOUT};
use crate::routing::Target;
use http::{HeaderName, Method};
use metrics::Counter;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Top-level `cache:`: where entries live and how many.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// `memory` (default) or a `redis://` URL shared by every gateway instance.
    #[serde(default = "default_store")]
    pub store: String,
    /// Memory store: at most this many entries (default 10000).
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// Memory store: at most this many bytes of keys and bodies (default 256MiB).
    #[serde(default)]
    pub max_bytes: Option<ByteSize>,
    /// Larger answers are passed through, not stored (default 1MiB).
    #[serde(default)]
    pub max_entry_bytes: Option<ByteSize>,
    /// Deadline of one Redis call (default 100ms).
    #[serde(default)]
    pub store_timeout: Option<ConfigDuration>,
    /// Distinct keys being fetched at once that later requests may wait for (default 10000).
    #[serde(default)]
    pub max_inflight: Option<usize>,
}

fn default_store() -> String {
    "memory".into()
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            store: default_store(),
            max_entries: None,
            max_bytes: None,
            max_entry_bytes: None,
            store_timeout: None,
            max_inflight: None,
        }
    }
}

pub(super) const DEFAULT_MAX_ENTRIES: u64 = 10_000;
pub(super) const DEFAULT_MAX_BYTES: u64 = 256 << 20;
pub(super) const DEFAULT_MAX_ENTRY_BYTES: u64 = 1 << 20;
pub(super) const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(100);
pub(super) const DEFAULT_MAX_INFLIGHT: usize = 10_000;

/// A route's `cache: { ttl, stale_if_error, vary, client_bypass }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheSpec {
    pub ttl: ConfigDuration,
    /// After `ttl`, how long an entry may still answer when the backend fails.
    #[serde(default)]
    pub stale_if_error: Option<ConfigDuration>,
    /// Request headers whose values are part of the key.
    #[serde(default)]
    pub vary: Vec<String>,
    /// Honour a client's `Cache-Control: no-cache` (default: ignore it).
    #[serde(default)]
    pub client_bypass: bool,
}

/// At most this many `vary` headers: each is hashed on every request.
const MAX_VARY: usize = 16;

/// A route's cache policy, compiled.
pub struct RouteCache {
    pub route: Arc<str>,
    pub ttl: Duration,
    pub stale_if_error: Duration,
    pub vary: Vec<HeaderName>,
    pub client_bypass: bool,
    /// The route's deadline: how long a coalesced request waits for the one that leads.
    pub timeout: Duration,
    pub(super) metrics: RouteCacheMetrics,
}

pub(super) struct RouteCacheMetrics {
    pub hit: Counter,
    pub miss: Counter,
    pub stale: Counter,
    pub coalesced: Counter,
}

impl RouteCache {
    /// Checks the policy against its route: GET only, and an answer that is one body.
    /// `authenticates`: the route verifies tokens, so the key can hold the user.
    pub fn compile(
        spec: &RouteCacheSpec,
        name: &str,
        method: &Method,
        target: &Target,
        authenticates: bool,
    ) -> Result<Self, String> {
        if *method != Method::GET {
            return Err(format!(
                "`cache` applies to GET routes only (this route is {method})"
            ));
        }
        let timeout = match target {
            Target::WebSocket(_) => {
                return Err("`cache` cannot apply to a websocket route".into());
            }
            Target::Grpc(grpc) if grpc.server_streaming => {
                return Err("`cache` cannot apply to a server-streaming route".into());
            }
            // The backend may answer per caller, but the key would not say who called.
            Target::Grpc(grpc) if grpc.forward_authorization && !authenticates => {
                return Err(
                    "`cache` with `forward_authorization: true` needs `auth: required` or `optional`"
                        .into(),
                );
            }
            Target::Grpc(grpc) => grpc.timeout,
            Target::Amqp(amqp) => amqp.timeout,
            // Static and composed routes: the default deadline bounds a coalesced wait.
            _ => DEFAULT_TIMEOUT,
        };
        if spec.ttl.0.is_zero() {
            return Err("`cache.ttl` must be more than 0".into());
        }
        if spec.vary.len() > MAX_VARY {
            return Err(format!("`cache.vary` names at most {MAX_VARY} headers"));
        }
        let mut vary = Vec::new();
        for name in &spec.vary {
            match HeaderName::try_from(name.to_ascii_lowercase()) {
                Ok(header) => vary.push(header),
                Err(_) => return Err(format!("`cache.vary`: `{name}` is not a header name")),
            }
        }
        let counter = |result: &'static str| metrics::counter!("switchboard_cache_requests_total", "route" => name.to_string(), "result" => result);
        Ok(Self {
            route: name.into(),
            ttl: spec.ttl.0,
            stale_if_error: spec.stale_if_error.map(|d| d.0).unwrap_or_default(),
            vary,
            client_bypass: spec.client_bypass,
            timeout,
            metrics: RouteCacheMetrics {
                hit: counter("hit"),
                miss: counter("miss"),
                stale: counter("stale"),
                coalesced: metrics::counter!("switchboard_cache_coalesced_total", "route" => name.to_string()),
            },
        })
    }

    /// How long an entry is kept: its fresh life plus the stale window.
    pub fn keep_for(&self) -> Duration {
        self.ttl.saturating_add(self.stale_if_error)
    }
}

impl RouteCache {
    /// For `/admin/routes`.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "ttl_ms": self.ttl.as_millis() as u64,
            "stale_if_error_ms": self.stale_if_error.as_millis() as u64,
            "vary": self.vary.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
            "client_bypass": self.client_bypass,
        })
    }
}
