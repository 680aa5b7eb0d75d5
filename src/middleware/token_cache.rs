//! Verified-token cache: a client sends the same bearer token with every request, and
//! checking an RS256 signature costs hundreds of microseconds with a pure-Rust backend —
//! several times the whole rest of a proxied call. A token that verified once is the same
//! bytes with the same claims until it expires, so its claims are kept here (like Envoy's
//! `jwt_cache_config`).
//!
//! Invariants:
//! - only tokens that passed full verification (signature, `alg`, `iss`, `aud`) go in;
//! - a hit is still checked against the clock: `exp`/`nbf` with the configured leeway, so a
//!   cached token expires exactly when an uncached one would;
//! - an entry lives at most `ttl`, which bounds how long a token stays accepted after its
//!   key is withdrawn from a JWKS URL (a changed key set also clears the cache at once);
//! - at most `max_entries` tokens are held: when full, expired entries go first, then an
//!   arbitrary eighth of the rest (the map's iteration order), so memory is bounded under
//!   many distinct tokens without an LRU's per-hit bookkeeping.

use super::auth::Claims;
use foldhash::fast::RandomState;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

pub struct TokenCache {
    max_entries: usize,
    ttl: Duration,
    /// Seconds of clock skew allowed on `exp` and `nbf` (the verifier's leeway).
    leeway: u64,
    /// Keyed by the whole token (hundreds of bytes): SipHash cost 1.5k instructions per
    /// lookup. Only verified tokens go in, so clients cannot choose colliding keys.
    entries: Mutex<HashMap<Box<str>, Entry, RandomState>>,
}

struct Entry {
    claims: Claims,
    /// Unix seconds from which the token is valid (`nbf` − leeway).
    valid_from: u64,
    /// Unix seconds until which the token is valid (`exp` + leeway).
    valid_until: u64,
    cached_at: Instant,
}

impl Entry {
    fn usable(&self, now: u64, ttl: Duration) -> bool {
        self.valid_from <= now && now <= self.valid_until && self.cached_at.elapsed() < ttl
    }
}

impl TokenCache {
    /// A cache of up to `max_entries` tokens; `None` when `max_entries` is 0 (disabled).
    pub fn new(max_entries: usize, ttl: Duration, leeway: u64) -> Option<Self> {
        (max_entries > 0).then(|| Self {
            max_entries,
            ttl,
            leeway,
            entries: Mutex::new(HashMap::default()),
        })
    }

    /// The claims of `token` if it verified before and is still valid now.
    pub fn get(&self, token: &str) -> Option<Claims> {
        let now = unix_now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(token)
            .filter(|entry| entry.usable(now, self.ttl))
            .map(|entry| entry.claims.clone())
    }

    /// Remembers a token that has just been verified.
    pub fn insert(&self, token: &str, claims: &Claims) {
        let Some(exp) = claims.get("exp").and_then(seconds) else {
            return; // verification requires `exp`; without one there is no safe lifetime
        };
        let entry = Entry {
            claims: claims.clone(),
            valid_from: claims
                .get("nbf")
                .and_then(seconds)
                .map_or(0, |nbf| nbf.saturating_sub(self.leeway)),
            valid_until: exp.saturating_add(self.leeway),
            cached_at: Instant::now(),
        };
        let now = unix_now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max_entries {
            entries.retain(|_, entry| entry.usable(now, self.ttl));
        }
        if entries.len() >= self.max_entries {
            let evict: Vec<Box<str>> = entries
                .keys()
                .take((self.max_entries / 8).max(1))
                .cloned()
                .collect();
            for key in evict {
                entries.remove(&key);
            }
        }
        entries.insert(token.into(), entry);
    }

    /// Forgets every token (the signing keys changed).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A NumericDate claim as whole seconds (it may be a float).
fn seconds(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};
    use std::sync::Arc;

    fn claims(value: Value) -> Claims {
        match value {
            Value::Object(map) => Arc::new(map),
            _ => Arc::new(Map::new()),
        }
    }

    #[test]
    fn hits_until_the_token_expires() {
        let cache = TokenCache::new(10, Duration::from_secs(60), 0).unwrap();
        let now = unix_now();
        cache.insert("valid", &claims(json!({"sub": "a", "exp": now + 100})));
        cache.insert("expired", &claims(json!({"sub": "b", "exp": now - 1})));
        cache.insert(
            "early",
            &claims(json!({"sub": "c", "exp": now + 100, "nbf": now + 50})),
        );
        cache.insert("no-exp", &claims(json!({"sub": "d"})));
        assert_eq!(cache.get("valid").unwrap()["sub"], "a");
        assert!(cache.get("expired").is_none());
        assert!(cache.get("early").is_none());
        assert!(cache.get("no-exp").is_none());
        assert!(cache.get("unknown").is_none());
    }

    #[test]
    fn leeway_applies_as_in_verification() {
        let cache = TokenCache::new(10, Duration::from_secs(60), 30).unwrap();
        let now = unix_now();
        cache.insert("just-expired", &claims(json!({"exp": now - 10})));
        assert!(cache.get("just-expired").is_some());
    }

    #[test]
    fn entries_live_at_most_ttl() {
        let cache = TokenCache::new(10, Duration::ZERO, 0).unwrap();
        cache.insert("t", &claims(json!({"exp": unix_now() + 100})));
        assert!(cache.get("t").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_ttl_on_the_runtime_clock() {
        let cache = TokenCache::new(10, Duration::from_secs(60), 0).unwrap();
        cache.insert("t", &claims(json!({"exp": unix_now() + 3600})));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(cache.get("t").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(cache.get("t").is_none());
    }

    #[test]
    fn stays_bounded_under_many_tokens() {
        let cache = TokenCache::new(64, Duration::from_secs(60), 0).unwrap();
        let exp = unix_now() + 100;
        for i in 0..10_000 {
            cache.insert(&format!("token-{i}"), &claims(json!({"exp": exp})));
            assert!(cache.len() <= 64);
        }
        // The newest token is always kept.
        assert!(cache.get("token-9999").is_some());
        cache.clear();
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn zero_entries_disables_it() {
        assert!(TokenCache::new(0, Duration::from_secs(60), 0).is_none());
    }
}
