//! The shared middleware of every route. The order a request meets it in is written
//! once, in the request pipeline (`crate::proxy`); this module holds the pieces.
//!
//! `Middleware` holds what one configuration shares (token verifier, limiters, CORS,
//! trusted proxies) and is reused across reloads where its config did not change, so
//! counters and key caches survive. `RoutePolicy` is what one route asks of it.

pub mod auth;
pub mod client_ip;
pub mod cors;
pub mod deadline;
pub mod jwks;
mod jwt_claims;
mod jwt_keys;
pub mod ratelimit;
pub mod token_cache;

use crate::config::mapping::AuthMode;
use crate::config::{GatewayConfig, LoadErrors, Location};
use crate::error::GatewayError;
use auth::{Claims, JwtVerifier};
use client_ip::Cidr;
use http::{HeaderMap, HeaderName, HeaderValue};
use ratelimit::{Decision, LimitKey, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use tonic::Code;

/// What one configuration's routes share.
#[derive(Default)]
pub struct Middleware {
    pub jwt: Option<Arc<JwtVerifier>>,
    pub limiters: HashMap<String, Arc<RateLimiter>>,
    pub cors: Option<cors::Cors>,
    pub trusted_proxies: Vec<Cidr>,
    /// Header names only the gateway may set (forward_claims targets), also as
    /// `grpc-metadata-<name>`: stripped from every client request.
    pub reserved_headers: Vec<HeaderName>,
    jwt_config: Option<crate::config::JwtConfig>,
    store: Option<String>,
}

impl Middleware {
    pub fn build(
        config: &GatewayConfig,
        previous: Option<&Middleware>,
    ) -> Result<Self, LoadErrors> {
        let mut errors = LoadErrors::default();
        let at = |line: u64| Location::new(&config.path, line);
        let lines = &config.lines;
        let mut middleware = Middleware::default();

        if let Some(auth) = &config.auth {
            let reused = previous
                .filter(|p| p.jwt_config.as_ref() == Some(&auth.jwt))
                .and_then(|p| p.jwt.clone())
                // A JWKS file may have changed under the same config: read it again.
                .filter(|verifier| verifier.keys_refresh_themselves());
            match reused
                .map(Ok)
                .unwrap_or_else(|| JwtVerifier::new(&auth.jwt, &config.base_dir).map(Arc::new))
            {
                Ok(verifier) => {
                    for (_, name) in &verifier.forward_claims {
                        middleware.reserved_headers.push(name.clone());
                        if let Ok(metadata) = HeaderName::try_from(format!("grpc-metadata-{name}"))
                        {
                            middleware.reserved_headers.push(metadata);
                        }
                    }
                    middleware.jwt = Some(verifier);
                    middleware.jwt_config = Some(auth.jwt.clone());
                }
                Err(e) => errors.push(at(lines.auth), format!("auth.jwt: {e}")),
            }
        }

        if let Some(limits) = &config.rate_limits {
            let timeout = limits
                .store_timeout
                .map(|d| d.0)
                .unwrap_or(std::time::Duration::from_millis(100));
            let same_store =
                previous.is_some_and(|p| p.store.as_deref() == Some(limits.store.as_str()));
            match ratelimit::Store::from_config(&limits.store, timeout) {
                Ok(redis) => {
                    for (name, policy) in &limits.policies {
                        let reused = previous
                            .filter(|_| same_store)
                            .and_then(|p| p.limiters.get(name))
                            .filter(|old| old.config == *policy)
                            .cloned();
                        match reused.map(Ok).unwrap_or_else(|| {
                            RateLimiter::new(name, policy, redis.clone()).map(Arc::new)
                        }) {
                            Ok(limiter) => {
                                middleware.limiters.insert(name.clone(), limiter);
                            }
                            Err(e) => errors.push(
                                at(lines
                                    .policies
                                    .get(name)
                                    .copied()
                                    .unwrap_or(lines.rate_limits)),
                                e,
                            ),
                        }
                    }
                }
                Err(e) => errors.push(at(lines.rate_limits), e),
            }
            middleware.store = Some(limits.store.clone());
        }

        if let Some(cors) = &config.cors {
            match cors::Cors::new(cors) {
                Ok(cors) => middleware.cors = Some(cors),
                Err(e) => errors.push(at(lines.cors), format!("cors: {e}")),
            }
        }
        for text in &config.trusted_proxies {
            match Cidr::parse(text) {
                Ok(cidr) => middleware.trusted_proxies.push(cidr),
                Err(e) => errors.push(at(lines.trusted_proxies), format!("trusted_proxies: {e}")),
            }
        }
        errors.into_result(middleware)
    }

    /// The client address of a request (the peer, or X-Forwarded-For via trusted proxies).
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        client_ip::client_ip(peer, headers, &self.trusted_proxies)
    }
}

/// What one route asks of the middleware.
#[derive(Default)]
pub struct RoutePolicy {
    pub auth: AuthMode,
    pub scopes: Vec<String>,
    pub rate_limit: Option<Arc<RateLimiter>>,
}

/// Who the caller is, for the backend: set in the request extensions after admission.
#[derive(Clone, Default)]
pub struct Identity {
    pub claims: Option<Claims>,
    /// Headers / metadata to send to the backend (from `forward_claims`).
    pub forwarded: Vec<(HeaderName, HeaderValue)>,
}

impl Middleware {
    /// Removes the headers only the gateway may set (`forward_claims` targets, also as
    /// `grpc-metadata-<name>`), whatever the route's auth mode: nothing later may read a
    /// client's own `x-user-id`.
    pub fn strip_reserved(&self, headers: &mut HeaderMap) {
        for name in &self.reserved_headers {
            headers.remove(name);
        }
    }
}

impl RoutePolicy {
    /// The route's rate limit when its key needs no verified token (client address, a
    /// header): checked before authentication, so a flood of bad tokens is limited
    /// before each costs a signature check.
    pub async fn limit_before_auth(
        &self,
        middleware: &Middleware,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Option<Decision>, GatewayError> {
        match &self.rate_limit {
            Some(limiter) if !matches!(limiter.key, LimitKey::Claim(_)) => {
                let key = limit_key(&limiter.key, None, headers)
                    .unwrap_or_else(|| middleware.client_ip(peer, headers).to_string());
                limiter.check(&key).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The route's rate limit when it is keyed by a claim: needs the verified token (no
    /// token: the client address, as for every key without a value).
    pub async fn limit_after_auth(
        &self,
        middleware: &Middleware,
        identity: &Identity,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Option<Decision>, GatewayError> {
        match &self.rate_limit {
            Some(limiter) if matches!(limiter.key, LimitKey::Claim(_)) => {
                let key = limit_key(&limiter.key, identity.claims.as_deref(), headers)
                    .unwrap_or_else(|| middleware.client_ip(peer, headers).to_string());
                limiter.check(&key).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Verifies the bearer token as the route's auth mode asks, then its scopes (403
    /// when one is missing). Anonymous where the mode allows it.
    pub async fn authenticate(
        &self,
        middleware: &Middleware,
        headers: &HeaderMap,
    ) -> Result<Identity, GatewayError> {
        if self.auth == AuthMode::None {
            return Ok(Identity::default());
        }
        let Some(verifier) = &middleware.jwt else {
            return Err(GatewayError::internal(
                "route needs auth but no auth is configured",
            ));
        };
        let token = match bearer_token(headers) {
            Some(token) => token,
            None if self.auth == AuthMode::Optional => return Ok(Identity::default()),
            None => return Err(auth::invalid("missing bearer token")),
        };
        let claims = verifier.verify(token).await?;
        let granted = auth::scopes(&claims);
        if let Some(missing) = self.scopes.iter().find(|s| !granted.contains(&s.as_str())) {
            return Err(GatewayError::new(
                Code::PermissionDenied,
                format!("token lacks scope `{missing}`"),
            ));
        }
        let forwarded = verifier
            .forward_claims
            .iter()
            .filter_map(|(claim, name)| {
                Some((name.clone(), auth::claim_header_value(claims.get(claim)?)?))
            })
            .collect();
        Ok(Identity {
            claims: Some(claims),
            forwarded,
        })
    }
}

/// `Authorization: Bearer <token>`.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// The rate-limit key of a request; `None` falls back to the client address.
fn limit_key(
    key: &LimitKey,
    claims: Option<&serde_json::Map<String, serde_json::Value>>,
    headers: &HeaderMap,
) -> Option<String> {
    match key {
        LimitKey::ClientIp => None,
        LimitKey::Claim(name) => match claims?.get(name)? {
            serde_json::Value::String(s) => Some(hashed_key("claim", s.as_bytes())),
            other => Some(hashed_key("claim", other.to_string().as_bytes())),
        },
        LimitKey::Header(name) => headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| hashed_key("header", v.as_bytes())),
    }
}

/// `<kind>:<hex SHA-256>`: whatever a client puts in the header (up to the header limit),
/// a key costs 71 bytes in memory and in Redis. A cryptographic hash, so that a client
/// cannot craft a value that shares another client's bucket.
fn hashed_key(kind: &str, value: &[u8]) -> String {
    use sha2::Digest;
    // By table, not `write!("{:02x}")`: formatting 32 bytes cost 8k instructions, more
    // than the hash (callgrind, per rate-limited request).
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = sha2::Sha256::digest(value);
    let mut key = String::with_capacity(kind.len() + 1 + 64);
    key.push_str(kind);
    key.push(':');
    for byte in digest {
        key.push(char::from(HEX[usize::from(byte >> 4)]));
        key.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_claim_keys_have_a_fixed_size() {
        let key = LimitKey::Header(HeaderName::from_static("x-api-key"));
        let mut headers = HeaderMap::new();
        let huge = "k".repeat(100_000);
        headers.insert("x-api-key", huge.parse().unwrap());
        let long = limit_key(&key, None, &headers).unwrap();
        headers.insert("x-api-key", "a".parse().unwrap());
        let short = limit_key(&key, None, &headers).unwrap();
        assert_eq!(long.len(), "header:".len() + 64);
        assert_eq!(short.len(), long.len());
        assert_ne!(short, long);
        // The same value is the same bucket, under the same name as in earlier releases
        // (Redis counters outlive an upgrade): lowercase hex of SHA-256("a").
        assert_eq!(limit_key(&key, None, &headers).unwrap(), short);
        assert_eq!(
            short,
            "header:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb"
        );

        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), serde_json::Value::String("x".repeat(10_000)));
        let claim = limit_key(&LimitKey::Claim("sub".into()), Some(&claims), &headers).unwrap();
        assert_eq!(claim.len(), "claim:".len() + 64);
    }
}
