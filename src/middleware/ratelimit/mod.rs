//! Rate limiting policies (`rate_limits:`): token bucket, leaky bucket, fixed window;
//! keyed by client address, a claim or a header; counted in memory or in Redis.

mod algorithm;
mod memory;
mod redis;

pub use algorithm::Decision;

use crate::config::{OnStoreError, RateLimitAlgorithm, RateLimitPolicyConfig};
use crate::error::GatewayError;
use algorithm::Params;
use http::{HeaderMap, HeaderName, HeaderValue};
use metrics::Counter;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tonic::Code;

/// What a policy counts by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Claim(String),
    Header(HeaderName),
}

impl LimitKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "client_ip" {
            Ok(Self::ClientIp)
        } else if let Some(claim) = text.strip_prefix("claims.").filter(|c| !c.is_empty()) {
            Ok(Self::Claim(claim.to_string()))
        } else if let Some(header) = text.strip_prefix("header.") {
            HeaderName::try_from(header.to_ascii_lowercase())
                .map(Self::Header)
                .map_err(|_| format!("`{header}` is not a header name"))
        } else {
            Err(format!(
                "rate limit key `{text}`: use client_ip, claims.<name> or header.<name>"
            ))
        }
    }
}

pub enum Store {
    Memory(memory::MemoryStore),
    Redis(Arc<redis::RedisStore>),
}

impl Store {
    /// `memory`, or a `redis://` URL (one connection shared by all policies).
    pub fn from_config(
        store: &str,
        timeout: Duration,
    ) -> Result<Option<Arc<redis::RedisStore>>, String> {
        match store {
            "memory" | "" => Ok(None),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(Some(Arc::new(redis::RedisStore::new(url, timeout)?)))
            }
            other => Err(format!(
                "rate_limits.store `{other}`: use `memory` or a redis:// URL"
            )),
        }
    }
}

/// One named policy, ready to decide.
pub struct RateLimiter {
    pub name: String,
    pub key: LimitKey,
    params: Params,
    store: Store,
    on_store_error: OnStoreError,
    /// The config it was built from, so a reload keeps it (and its counters) when same.
    pub config: RateLimitPolicyConfig,
    allowed: Counter,
    limited: Counter,
    store_errors: Counter,
}

impl RateLimiter {
    pub fn new(
        name: &str,
        config: &RateLimitPolicyConfig,
        redis: Option<Arc<redis::RedisStore>>,
    ) -> Result<Self, String> {
        if config.rate == 0 {
            return Err(format!("rate limit `{name}`: rate must be at least 1"));
        }
        let per_micros = i64::try_from(config.per.0.as_micros())
            .unwrap_or(i64::MAX)
            .max(1);
        let burst = config.burst.unwrap_or(config.rate).max(1);
        let store = match redis {
            Some(redis) => Store::Redis(redis),
            None => Store::Memory(memory::MemoryStore::default()),
        };
        let counter = |result: &'static str| metrics::counter!("switchboard_ratelimit_decisions_total", "policy" => name.to_string(), "result" => result);
        Ok(Self {
            name: name.to_string(),
            key: LimitKey::parse(&config.key).map_err(|e| format!("rate limit `{name}`: {e}"))?,
            params: Params {
                kind: config.algorithm,
                rate: config.rate,
                per_micros,
                burst,
            },
            store,
            on_store_error: config.on_store_error,
            config: config.clone(),
            allowed: counter("allowed"),
            limited: counter("limited"),
            store_errors: metrics::counter!("switchboard_ratelimit_store_errors_total", "policy" => name.to_string()),
        })
    }

    /// Decides one request for `key`. `Ok` carries the headers to add to the response;
    /// `Err` is the 429 (or, with `on_store_error: deny` and Redis down, a 503).
    pub async fn check(&self, key: &str) -> Result<Decision, GatewayError> {
        let decision = match &self.store {
            Store::Memory(store) => store.decide(&self.params, key, monotonic_micros()),
            Store::Redis(store) => {
                let redis_key = format!("switchboard:rl:{}:{key}", self.name);
                match store.decide(&self.params, &redis_key).await {
                    Ok(decision) => decision,
                    Err(reason) => {
                        self.store_errors.increment(1);
                        tracing::warn!(policy = %self.name, %reason, "rate limit store unavailable");
                        return match self.on_store_error {
                            OnStoreError::Allow => Ok(Decision {
                                allowed: true,
                                limit: self.params.burst,
                                remaining: self.params.burst,
                                reset_micros: 0,
                            }),
                            OnStoreError::Deny => {
                                Err(GatewayError::unavailable("rate limit store unavailable"))
                            }
                        };
                    }
                }
            }
        };
        if decision.allowed {
            self.allowed.increment(1);
            Ok(decision)
        } else {
            self.limited.increment(1);
            let mut error = GatewayError::new(
                Code::ResourceExhausted,
                format!("rate limit `{}` exceeded", self.name),
            );
            let seconds = reset_seconds(decision.reset_micros).max(1);
            error
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
            add_headers(&decision, error.headers_mut());
            Err(error)
        }
    }

    pub fn algorithm(&self) -> RateLimitAlgorithm {
        self.params.kind
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds until a request
/// would be allowed).
pub fn add_headers(decision: &Decision, headers: &mut HeaderMap) {
    // Constant names: a `&str` name is parsed and checked on every insert.
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    headers.insert(LIMIT, HeaderValue::from(decision.limit));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        RESET,
        HeaderValue::from(reset_seconds(decision.reset_micros)),
    );
}

/// Whole seconds, rounded up.
fn reset_seconds(micros: i64) -> u64 {
    (micros.max(0) as u64).div_ceil(1_000_000)
}

/// Microseconds on a monotonic clock (memory counters never go back in time).
fn monotonic_micros() -> i64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as i64
}
