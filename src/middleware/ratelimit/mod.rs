//! Rate limiting policies (`rate_limits:`): token bucket, leaky bucket, fixed window;
//! keyed by client address, a claim or a header; counted in memory or in Redis.

mod algorithm;
mod lease;
mod memory;
mod redis;
mod sharded;

pub use algorithm::Decision;

use crate::config::{OnStoreError, RateLimitAlgorithm, RateLimitPolicyConfig};
use crate::error::GatewayError;
use algorithm::Params;
use http::{HeaderMap, HeaderName, HeaderValue};
use lease::{Leases, Local};
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
    /// Admissions per key this instance may take from Redis ahead of need.
    reserve: u64,
    /// What is remembered locally of Redis' answers (refusals, reservations).
    leases: Leases,
    /// `switchboard:rl:<policy>:`, which a key follows in Redis.
    redis_prefix: String,
    on_store_error: OnStoreError,
    /// The config it was built from, so a reload keeps it (and its counters) when same.
    pub config: RateLimitPolicyConfig,
    allowed: Counter,
    limited: Counter,
    store_errors: Counter,
    /// Redis-store decisions made without Redis (a held reservation, a remembered refusal).
    local: Counter,
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
        let limit = match config.algorithm {
            RateLimitAlgorithm::FixedWindow => config.rate,
            _ => burst,
        };
        if config.reserve > limit {
            return Err(format!(
                "rate limit `{name}`: reserve {} is more than the limit ({limit})",
                config.reserve
            ));
        }
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
            reserve: config.reserve,
            leases: Leases::default(),
            redis_prefix: format!("switchboard:rl:{name}:"),
            on_store_error: config.on_store_error,
            config: config.clone(),
            allowed: counter("allowed"),
            limited: counter("limited"),
            store_errors: metrics::counter!("switchboard_ratelimit_store_errors_total", "policy" => name.to_string()),
            local: metrics::counter!("switchboard_ratelimit_local_decisions_total", "policy" => name.to_string()),
        })
    }

    /// Decides one request for `key`. `Ok` carries the headers to add to the response;
    /// `Err` is the 429 (or, with `on_store_error: deny` and Redis down, a 503).
    pub async fn check(&self, key: &str) -> Result<Decision, GatewayError> {
        let decision = match &self.store {
            Store::Memory(store) => store.decide(&self.params, key, monotonic_micros()),
            Store::Redis(store) => self.decide_in_redis(store, key).await?,
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

    /// A decision of the shared counters: from what this instance holds of them when it
    /// can (lease.rs), else in Redis; a store failure follows `on_store_error`.
    async fn decide_in_redis(
        &self,
        store: &redis::RedisStore,
        key: &str,
    ) -> Result<Decision, GatewayError> {
        let now = monotonic_micros();
        let wanted = match self.leases.decide(key, self.limit(), now) {
            Local::Decided(decision) => {
                self.local.increment(1);
                return Ok(decision);
            }
            Local::Ask { wanted } => wanted,
        };
        let demand = redis::Demand {
            reserve: self.reserve,
            wanted: wanted.min(self.reserve),
        };
        // Not `format!`: it cost 740 instructions per decision.
        let mut redis_key = String::with_capacity(self.redis_prefix.len() + key.len());
        redis_key.push_str(&self.redis_prefix);
        redis_key.push_str(key);
        match store.decide(&self.params, &redis_key, demand).await {
            Ok(answer) => {
                self.leases.record(key, &answer, now, self.reserve > 0);
                Ok(answer.decision)
            }
            Err(reason) => {
                self.store_errors.increment(1);
                tracing::warn!(policy = %self.name, %reason, "rate limit store unavailable");
                match self.on_store_error {
                    OnStoreError::Allow => Ok(Decision {
                        allowed: true,
                        limit: self.params.burst,
                        remaining: self.params.burst,
                        reset_micros: 0,
                    }),
                    OnStoreError::Deny => {
                        Err(GatewayError::unavailable("rate limit store unavailable"))
                    }
                }
            }
        }
    }

    /// The `RateLimit-Limit` value.
    fn limit(&self) -> u64 {
        match self.params.kind {
            RateLimitAlgorithm::FixedWindow => self.params.rate,
            _ => self.params.burst,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    pub(super) const URL: &str = "redis://127.0.0.1:6379";
    pub(super) const ALGORITHMS: [RateLimitAlgorithm; 3] = [
        RateLimitAlgorithm::TokenBucket,
        RateLimitAlgorithm::LeakyBucket,
        RateLimitAlgorithm::FixedWindow,
    ];

    pub(super) fn require_redis() {
        let addr = "127.0.0.1:6379".parse().expect("address");
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            panic!(
                "Redis not reachable on 127.0.0.1:6379: start it with `redis-server --daemonize yes --port 6379 --save \"\"` (or scripts/services)"
            );
        }
    }

    /// A policy of `rate` per hour (no refill during a test) on a fresh name.
    fn policy(
        algorithm: RateLimitAlgorithm,
        rate: u64,
        reserve: u64,
    ) -> (String, RateLimitPolicyConfig) {
        let name = format!("test_{}_{}", std::process::id(), fastrand::u64(..));
        let config = RateLimitPolicyConfig {
            algorithm,
            rate,
            per: ConfigDuration(Duration::from_secs(3600)),
            burst: None,
            key: "header.x-k".into(),
            on_store_error: OnStoreError::Deny,
            reserve,
        };
        (name, config)
    }

    fn instance(
        name: &str,
        config: &RateLimitPolicyConfig,
    ) -> (Arc<RateLimiter>, Arc<redis::RedisStore>) {
        let store = Arc::new(redis::RedisStore::new(URL, Duration::from_secs(2)).unwrap());
        let limiter = RateLimiter::new(name, config, Some(store.clone())).unwrap();
        (Arc::new(limiter), store)
    }

    /// Three instances with `reserve: 20` hammer one key of limit 100 concurrently:
    /// together they admit no more than the limit (reserved admissions left the shared
    /// count when granted), and at most what the instances still hold fewer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reserving_instances_never_admit_more_than_the_limit() {
        require_redis();
        for algorithm in ALGORITHMS {
            let (name, config) = policy(algorithm, 100, 20);
            let instances: Vec<_> = (0..3).map(|_| instance(&name, &config)).collect();
            let tasks: Vec<_> = (0..600)
                .map(|i| {
                    let limiter = instances[i % 3].0.clone();
                    tokio::spawn(async move { limiter.check("one-key").await.is_ok() })
                })
                .collect();
            let mut admitted = 0;
            for task in tasks {
                admitted += u64::from(task.await.unwrap());
            }
            assert!(
                (100 - 3 * 20..=100).contains(&admitted),
                "{algorithm:?}: {admitted} admitted"
            );
            let calls: u64 = instances.iter().map(|(_, store)| store.calls()).sum();
            assert!(
                calls < 300,
                "{algorithm:?}: {calls} script calls for 600 decisions"
            );
        }
    }

    /// One instance alone spends every reservation it takes: exactly the limit, with
    /// `RateLimit-Remaining` counting down as if each decision were made in Redis.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_reserving_instance_admits_exactly_the_limit() {
        require_redis();
        let (name, config) = policy(RateLimitAlgorithm::TokenBucket, 50, 10);
        let (limiter, store) = instance(&name, &config);
        let mut remaining = Vec::new();
        for _ in 0..50 {
            remaining.push(
                limiter
                    .check("k")
                    .await
                    .expect("within the limit")
                    .remaining,
            );
        }
        assert_eq!(remaining, (0..50).rev().collect::<Vec<u64>>());
        assert!(limiter.check("k").await.is_err());
        // Sequential decisions: one at a time at first, then growing grants.
        assert!(store.calls() < 20, "{} script calls", store.calls());
    }

    /// A refused key is refused locally until its reset, without asking Redis again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_key_costs_redis_nothing_until_its_reset() {
        require_redis();
        let (name, config) = policy(RateLimitAlgorithm::FixedWindow, 2, 0);
        let (limiter, store) = instance(&name, &config);
        assert!(limiter.check("k").await.is_ok());
        assert!(limiter.check("k").await.is_ok());
        assert_eq!(refusal(limiter.check("k").await), Code::ResourceExhausted);
        let calls = store.calls();
        for _ in 0..100 {
            assert_eq!(refusal(limiter.check("k").await), Code::ResourceExhausted);
        }
        assert_eq!(store.calls(), calls, "answered locally");
        // Another key still goes to Redis.
        assert!(limiter.check("other").await.is_ok());
        assert_eq!(store.calls(), calls + 1);
    }

    fn refusal(result: Result<Decision, GatewayError>) -> Code {
        let mut error = result.expect_err("refused");
        assert!(error.headers_mut().contains_key(http::header::RETRY_AFTER));
        error.code
    }

    #[test]
    fn a_reserve_above_the_limit_is_refused() {
        let (name, config) = policy(RateLimitAlgorithm::TokenBucket, 10, 11);
        let error = RateLimiter::new(&name, &config, None).err().unwrap();
        assert!(
            error.contains("reserve 11 is more than the limit (10)"),
            "{error}"
        );
    }
}
