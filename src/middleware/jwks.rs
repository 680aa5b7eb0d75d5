//! A JWKS fetched over HTTPS (`auth.jwt.jwks: https://…`): kept for `jwks_ttl`, refetched
//! early when a token names a key it does not have.
//!
//! Every path here is driven by unauthenticated clients (any token names any `kid`), so
//! each is bounded:
//! - one fetch at a time; a caller waits for it at most [`FETCH_TIMEOUT`] (plus the lock),
//!   never for a queue of fetches;
//! - at most one fetch per `jwks_min_refresh`, whether the last one succeeded or failed:
//!   after a failure callers get the keys already held (or 503) at once;
//! - the body is capped at [`MAX_JWKS_BYTES`], redirects are not followed, and `http://`
//!   URLs are refused at load unless `jwks_allow_http: true`.

use super::auth::{KeyMaps, invalid, parse_jwks, pick};
use crate::error::GatewayError;
use crate::middleware::jwt_keys::VerifyingKey;
use crate::middleware::token_cache::TokenCache;
use jsonwebtoken::Algorithm;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long one JWKS fetch may take, connection to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest JWKS document read. Real ones are a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 << 10;

pub struct RemoteJwks {
    url: String,
    ttl: Duration,
    min_refresh: Duration,
    client: reqwest::Client,
    state: RwLock<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Emptied on every fetch: tokens are checked against the new key set.
    tokens: Option<Arc<TokenCache>>,
}

#[derive(Default)]
struct State {
    keys: Option<(KeyMaps, Instant)>,
    /// When the last fetch ended, whatever its outcome (the rate limit).
    last_attempt: Option<Instant>,
}

impl RemoteJwks {
    /// `url` must be `https://`, or `http://` with `allow_http`.
    pub fn new(
        url: String,
        allow_http: bool,
        ttl: Duration,
        min_refresh: Duration,
        tokens: Option<Arc<TokenCache>>,
    ) -> Result<Self, String> {
        if url.starts_with("http://") && !allow_http {
            return Err(format!(
                "jwks `{url}` is plain http: keys could be swapped in transit; use https, or \
                 set `jwks_allow_http: true` (e.g. a sidecar on localhost)"
            ));
        }
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            // A redirect could lead the gateway anywhere (including plain http).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("jwks client: {e}"))?;
        Ok(Self {
            url,
            ttl,
            min_refresh,
            client,
            state: RwLock::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            tokens,
        })
    }

    pub async fn key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Arc<VerifyingKey>, GatewayError> {
        let (cached, age) = self.lookup(alg, kid);
        if let Some(key) = cached
            .as_ref()
            .filter(|_| age.is_some_and(|a| a < self.ttl))
        {
            return Ok(key.clone());
        }
        if self.attempted_recently() {
            return self.without_fetch(cached, kid);
        }
        // One fetch at a time. A caller waits for the one in flight (itself bounded by
        // FETCH_TIMEOUT), then sees its outcome instead of fetching again.
        let Ok(_one_fetch) = tokio::time::timeout(
            FETCH_TIMEOUT + Duration::from_secs(1),
            self.fetch_lock.lock(),
        )
        .await
        else {
            return self.without_fetch(cached, kid);
        };
        let (cached, _) = self.lookup(alg, kid);
        if self.attempted_recently() {
            return self.without_fetch(cached, kid);
        }
        let fetched = self.fetch().await;
        // Stamped when the fetch ends, under the lock: callers that waited for this one
        // see it as recent and use its outcome instead of fetching again.
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt = Some(Instant::now());
        match fetched {
            Ok(keys) => {
                let found = pick(&keys.0, &keys.1, alg, kid);
                self.state.write().unwrap_or_else(|e| e.into_inner()).keys =
                    Some((keys, Instant::now()));
                if let Some(tokens) = &self.tokens {
                    tokens.clear();
                }
                found
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; keeping the keys we have");
                self.without_fetch(cached, kid)
            }
        }
    }

    /// The answer when no fetch may happen now: the key held (even if stale), else 401
    /// for an unknown kid of a known set, else 503 (no keys at all yet).
    fn without_fetch(
        &self,
        cached: Option<Arc<VerifyingKey>>,
        kid: Option<&str>,
    ) -> Result<Arc<VerifyingKey>, GatewayError> {
        if let Some(key) = cached {
            return Ok(key);
        }
        let have_keys = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys
            .is_some();
        if have_keys {
            Err(invalid(format!("no key for kid {kid:?}")))
        } else {
            // The URL and the cause are in the log, not in the client's answer.
            Err(GatewayError::unavailable("signing keys are not available"))
        }
    }

    fn attempted_recently(&self) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .last_attempt
            .is_some_and(|at| at.elapsed() < self.min_refresh)
    }

    /// The cached key (if any) and the age of the cached set.
    fn lookup(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> (Option<Arc<VerifyingKey>>, Option<Duration>) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        match state.keys.as_ref() {
            Some((keys, fetched)) => (
                pick(&keys.0, &keys.1, alg, kid).ok(),
                Some(fetched.elapsed()),
            ),
            None => (None, None),
        }
    }

    async fn fetch(&self) -> Result<KeyMaps, String> {
        let mut response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body).map_err(|_| "JWKS is not UTF-8".to_string())?;
        parse_jwks(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_an_explicit_opt_in() {
        let ttl = Duration::from_secs(300);
        let min = Duration::from_secs(30);
        let url = "http://keys.example/jwks.json".to_string();
        let error = RemoteJwks::new(url.clone(), false, ttl, min, None)
            .err()
            .unwrap();
        assert!(error.contains("jwks_allow_http"), "{error}");
        assert!(RemoteJwks::new(url, true, ttl, min, None).is_ok());
        assert!(RemoteJwks::new("https://keys.example/j".into(), false, ttl, min, None).is_ok());
    }
}
