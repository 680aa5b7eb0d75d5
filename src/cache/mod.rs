//! The response cache of GET routes (`cache:` on a route, the store under top-level
//! `cache:`). [`ResponseCache::serve`] wraps "run the target" for any target: it answers
//! from the store while an entry is fresh, lets one request per key reach the backend
//! while the others wait for its answer (coalescing), stores 200 answers, and serves an
//! expired entry (`x-cache: stale`) when the backend fails within `stale_if_error`.
//!
//! The store is memory (moka, bounded by entries and bytes) or Redis (shared between
//! instances). A failing Redis is a miss: the request goes to the backend, counted in
//! `switchboard_cache_store_errors_total`.

mod config;
mod key;
mod memory;
mod redis;

pub(crate) use config::{CacheConfig, RouteCache, RouteCacheSpec};
pub(crate) use key::CacheKey;

use crate::error::GatewayError;
use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use metrics::Counter;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

/// The header a composed answer carries when some of its parts fell back.
const DEGRADED: &str = "x-degraded";
/// One stored answer: what is needed to rebuild the response.
#[derive(Debug)]
pub(crate) struct Entry {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// Route name and `path?query`, for purging.
    pub route: Arc<str>,
    pub text: Arc<str>,
}

impl Entry {
    /// Bytes this entry holds (body and key text), for the memory bound.
    fn size(&self) -> u64 {
        (self.body.len() + self.text.len() + self.route.len()) as u64
    }
}

/// An entry read back from a store, with how long ago it was stored.
#[derive(Clone)]
pub(crate) struct Stored {
    pub entry: Arc<Entry>,
    pub age: Duration,
}

enum Store {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

/// What a request that led a fetch hands to the requests that waited for it.
#[derive(Clone)]
enum Shared {
    /// A fresh answer from the backend (stored when it is a 200).
    Fresh(Arc<Entry>),
    /// The backend failed and this expired entry answers instead.
    Stale(Arc<Entry>, Duration),
    /// The backend failed and nothing may stand in for it.
    Failed(GatewayError),
    /// The backend refused the request (404, 400, …): the same refusal for everyone.
    Refused(GatewayError),
    /// The answer could not be shared (too large to buffer): fetch for yourself.
    Alone,
}

type InFlight = HashMap<[u8; 32], (u64, watch::Receiver<Option<Shared>>)>;

/// The store plus the in-flight map of one configuration; reused across reloads while
/// the top-level `cache:` section stays the same.
pub struct ResponseCache {
    store: Store,
    config: CacheConfig,
    max_entry_bytes: usize,
    max_inflight: usize,
    inflight: Mutex<InFlight>,
    next_flight: std::sync::atomic::AtomicU64,
    store_errors: Counter,
}

/// One request's cache lookup, prepared before the target consumes the request.
pub struct Lookup {
    /// `None`: the request must not share answers (an authenticated user without `sub`,
    /// a request with a body).
    key: Option<CacheKey>,
    /// The client asked for `no-cache` on a route that honours it.
    bypass: bool,
    /// This request's deadline, for waiting on another request's fetch.
    deadline: Duration,
}

impl RouteCache {
    /// Prepares the lookup of `request`. `claims` are the verified token's, present
    /// only when the route authenticates and a token was given.
    pub fn lookup<B>(
        &self,
        request: &Request<B>,
        claims: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Lookup {
        let user = match claims {
            None => Some(None),
            Some(claims) => claims.get("sub").and_then(|s| s.as_str()).map(Some),
        };
        let bypass = self.client_bypass && asks_no_cache(request.headers());
        let deadline =
            crate::middleware::deadline::effective_timeout(self.timeout, request.headers());
        // A GET with a body: the backend may read it, the key does not; not shared.
        let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
            || request
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|n| n.as_bytes() != b"0");
        let key = user.filter(|_| !has_body).map(|user| {
            CacheKey::build(
                &self.route,
                request.uri().path(),
                request.uri().query(),
                user,
                &self.vary,
                request.headers(),
            )
        });
        Lookup {
            key,
            bypass,
            deadline,
        }
    }
}

/// `Cache-Control: no-cache` (any of its comma-separated directives).
fn asks_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
}

/// 5xx, unavailable, deadline, open breaker: failures an expired entry may cover.
fn is_failure(status: StatusCode) -> bool {
    status.is_server_error()
}

impl ResponseCache {
    /// The cache of a configuration, reusing `previous` (and its entries) when the
    /// top-level section did not change.
    pub fn build(
        config: Option<&CacheConfig>,
        previous: Option<&Arc<ResponseCache>>,
    ) -> Result<Arc<Self>, String> {
        let config = config.cloned().unwrap_or_default();
        if let Some(previous) = previous.filter(|p| p.config == config) {
            return Ok(previous.clone());
        }
        let store = match config.store.as_str() {
            "memory" | "" => Store::Memory(memory::MemoryStore::new(
                config.max_entries.unwrap_or(config::DEFAULT_MAX_ENTRIES),
                config.max_bytes.map_or(config::DEFAULT_MAX_BYTES, |b| b.0),
            )),
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Store::Redis(redis::RedisStore::new(
                    url,
                    config
                        .store_timeout
                        .map_or(config::DEFAULT_STORE_TIMEOUT, |d| d.0),
                )?)
            }
            other => {
                return Err(format!(
                    "cache.store `{other}`: use `memory` or a redis:// URL"
                ));
            }
        };
        Ok(Arc::new(Self {
            store,
            max_entry_bytes: usize::try_from(
                config
                    .max_entry_bytes
                    .map_or(config::DEFAULT_MAX_ENTRY_BYTES, |b| b.0),
            )
            .unwrap_or(usize::MAX),
            max_inflight: config.max_inflight.unwrap_or(config::DEFAULT_MAX_INFLIGHT),
            config,
            inflight: Mutex::default(),
            next_flight: Default::default(),
            store_errors: metrics::counter!("switchboard_cache_store_errors_total"),
        }))
    }

    async fn get(&self, key: &CacheKey) -> Option<Stored> {
        match &self.store {
            Store::Memory(memory) => memory.get(&key.digest).await,
            Store::Redis(redis) => match redis.get(&key.route, &key.digest).await {
                Ok(stored) => stored,
                Err(error) => {
                    self.store_errors.increment(1);
                    tracing::warn!(%error, "cache store read failed; going to the backend");
                    None
                }
            },
        }
    }

    async fn put(&self, key: &CacheKey, entry: Arc<Entry>, keep_for: Duration) {
        match &self.store {
            Store::Memory(memory) => memory.put(key.digest, entry, keep_for).await,
            Store::Redis(redis) => {
                if let Err(error) = redis.put(&key.digest, &entry, keep_for).await {
                    self.store_errors.increment(1);
                    tracing::warn!(%error, "cache store write failed");
                }
            }
        }
    }

    /// Removes entries: all, those of one route, and/or those whose `path?query` starts
    /// with `key_prefix`. Returns how many.
    pub async fn purge(
        &self,
        route: Option<&str>,
        key_prefix: Option<&str>,
    ) -> Result<u64, String> {
        match &self.store {
            Store::Memory(memory) => Ok(memory
                .purge(|entry| {
                    route.is_none_or(|r| *entry.route == *r)
                        && key_prefix.is_none_or(|p| entry.text.starts_with(p))
                })
                .await),
            Store::Redis(redis) => redis
                .purge(route, key_prefix, Duration::from_secs(10))
                .await
                .inspect_err(|_| self.store_errors.increment(1)),
        }
    }

    /// Answers a request of a cached route: from the store, from another request's
    /// fetch of the same key, or by running `target` (and storing its 200 answer).
    pub async fn serve<F>(
        &self,
        route: &RouteCache,
        lookup: Lookup,
        target: F,
    ) -> Result<Response<Body>, GatewayError>
    where
        F: Future<Output = Result<Response<Body>, GatewayError>>,
    {
        let Some(key) = lookup.key else {
            return with_miss_headers(route, target.await);
        };
        let mut stale = None;
        if !lookup.bypass {
            match self.get(&key).await {
                Some(stored) if stored.age < route.ttl => {
                    route.metrics.hit.increment(1);
                    return Ok(respond(&stored.entry, "hit", stored.age, route.ttl));
                }
                Some(stored) if stored.age < route.keep_for() => stale = Some(stored),
                _ => {}
            }
        }
        // Lead the fetch of this key, or wait for the request that leads it.
        let flight = match self.join(&key.digest) {
            Flight::Follow(mut receiver) => {
                route.metrics.coalesced.increment(1);
                let waited =
                    tokio::time::timeout(lookup.deadline, receiver.wait_for(Option::is_some)).await;
                let shared = match waited {
                    Ok(Ok(shared)) => shared.clone(),
                    // The leader went away (its client left) before answering.
                    Ok(Err(_)) => Some(Shared::Alone),
                    Err(_) => Some(Shared::Failed(GatewayError::deadline_exceeded(
                        "no answer within the deadline",
                    ))),
                };
                match shared {
                    Some(Shared::Fresh(entry)) => {
                        route.metrics.miss.increment(1);
                        return Ok(respond(&entry, "miss", Duration::ZERO, route.ttl));
                    }
                    Some(Shared::Stale(entry, age)) => {
                        route.metrics.stale.increment(1);
                        return Ok(respond(&entry, "stale", age, route.ttl));
                    }
                    Some(Shared::Failed(error)) => {
                        return self.failed(route, stale, Err(error));
                    }
                    Some(Shared::Refused(error)) => return with_miss_headers(route, Err(error)),
                    Some(Shared::Alone) | None => None,
                }
            }
            Flight::Lead(guard) => Some(guard),
            Flight::Full => None,
        };

        let result = target.await;
        let (shared, result) = match result {
            // A composed answer with parts that fell back (`x-degraded`) is served but not
            // stored: the cache would otherwise keep the degraded page after recovery.
            Ok(response)
                if response.status() == StatusCode::OK
                    && !response.headers().contains_key(DEGRADED) =>
            {
                match self.buffer(response, &key, lookup.deadline).await {
                    Ok(entry) => {
                        route.metrics.miss.increment(1);
                        self.put(&key, entry.clone(), route.keep_for()).await;
                        let response = respond(&entry, "miss", Duration::ZERO, route.ttl);
                        (Shared::Fresh(entry), Ok(response))
                    }
                    Err(passed) => (Shared::Alone, with_miss_headers(route, passed)),
                }
            }
            Ok(response) if is_failure(response.status()) => {
                let answer = self.failed(route, stale.clone(), Ok(response));
                (shared_failure(&stale, &answer), answer)
            }
            Err(error) if is_failure(error.http_status()) => {
                let answer = self.failed(route, stale.clone(), Err(error.clone()));
                let shared = match &stale {
                    Some(stored) => Shared::Stale(stored.entry.clone(), stored.age),
                    None => Shared::Failed(error),
                };
                (shared, answer)
            }
            Err(error) => (
                Shared::Refused(error.clone()),
                with_miss_headers(route, Err(error)),
            ),
            // Other answers (3xx, 2xx but 200, a degraded 200, a 4xx body from an AMQP
            // reply) are not buffered: the waiting requests fetch for themselves.
            other => (Shared::Alone, with_miss_headers(route, other)),
        };
        if let Some(guard) = flight {
            guard.publish(shared);
        }
        result
    }

    /// The backend failed: the stale entry if there is one, else the failure itself.
    fn failed(
        &self,
        route: &RouteCache,
        stale: Option<Stored>,
        failure: Result<Response<Body>, GatewayError>,
    ) -> Result<Response<Body>, GatewayError> {
        match stale {
            Some(stored) => {
                route.metrics.stale.increment(1);
                Ok(respond(&stored.entry, "stale", stored.age, route.ttl))
            }
            None => with_miss_headers(route, failure),
        }
    }

    /// Reads a 200 answer's body (bounded) into an entry. Too large: the response is
    /// handed back whole (what was read, then the rest) to pass through unstored.
    async fn buffer(
        &self,
        response: Response<Body>,
        key: &CacheKey,
        deadline: Duration,
    ) -> Result<Arc<Entry>, Result<Response<Body>, GatewayError>> {
        let (parts, mut body) = response.into_parts();
        let mut read = BytesMut::new();
        let collect = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| ())?;
                if let Ok(data) = frame.into_data() {
                    if read.len() + data.len() > self.max_entry_bytes {
                        read.extend_from_slice(&data);
                        return Err(());
                    }
                    read.extend_from_slice(&data);
                }
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, collect).await {
            Ok(Ok(())) => Ok(Arc::new(Entry {
                status: parts.status,
                content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
                body: read.freeze(),
                route: key.route.clone(),
                text: key.text.clone(),
            })),
            Ok(Err(())) if read.len() > self.max_entry_bytes => {
                let first = futures_util::stream::once(std::future::ready(Ok::<_, axum::Error>(
                    read.freeze(),
                )));
                let rest = body.into_data_stream();
                let body = Body::from_stream(futures_util::StreamExt::chain(first, rest));
                Err(Ok(Response::from_parts(parts, body)))
            }
            Ok(Err(())) => Err(Err(GatewayError::unavailable(
                "the backend answer broke off",
            ))),
            Err(_) => Err(Err(GatewayError::deadline_exceeded(
                "the backend answer did not arrive within the deadline",
            ))),
        }
    }

    fn join(&self, digest: &[u8; 32]) -> Flight<'_> {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, receiver)) = inflight.get(digest) {
            return Flight::Follow(receiver.clone());
        }
        if inflight.len() >= self.max_inflight {
            return Flight::Full;
        }
        let id = self
            .next_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = watch::channel(None);
        inflight.insert(*digest, (id, receiver));
        Flight::Lead(FlightGuard {
            cache: self,
            digest: *digest,
            id,
            sender,
        })
    }
}

fn shared_failure(stale: &Option<Stored>, answer: &Result<Response<Body>, GatewayError>) -> Shared {
    match (stale, answer) {
        (Some(stored), _) => Shared::Stale(stored.entry.clone(), stored.age),
        // A 5xx response with a body of its own (an AMQP reply): not shareable.
        _ => Shared::Alone,
    }
}

enum Flight<'a> {
    Lead(FlightGuard<'a>),
    Follow(watch::Receiver<Option<Shared>>),
    /// Too many keys in flight: fetch without coalescing.
    Full,
}

/// The leader's claim on a key; dropping it (answered or cancelled) frees the key.
struct FlightGuard<'a> {
    cache: &'a ResponseCache,
    digest: [u8; 32],
    id: u64,
    sender: watch::Sender<Option<Shared>>,
}

impl FlightGuard<'_> {
    fn publish(self, shared: Shared) {
        self.sender.send_replace(Some(shared));
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut inflight = self
            .cache
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(&self.digest)
            .is_some_and(|(id, _)| *id == self.id)
        {
            inflight.remove(&self.digest);
        }
    }
}

/// A response rebuilt from an entry, with `x-cache`, `Age` and `Cache-Control`.
fn respond(entry: &Entry, result: &'static str, age: Duration, ttl: Duration) -> Response<Body> {
    let mut response = Response::new(Body::from(entry.body.clone()));
    *response.status_mut() = entry.status;
    let headers = response.headers_mut();
    if let Some(content_type) = &entry.content_type {
        headers.insert(header::CONTENT_TYPE, content_type.clone());
    }
    headers.insert("x-cache", HeaderValue::from_static(result));
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    let remaining = ttl.saturating_sub(age).as_secs();
    if let Ok(value) = HeaderValue::try_from(format!("max-age={remaining}")) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    response
}

fn add_miss(headers: &mut HeaderMap) {
    headers.insert("x-cache", HeaderValue::from_static("miss"));
    headers.insert(header::AGE, HeaderValue::from(0u32));
}

/// An answer that was not stored: `x-cache: miss` and `Age: 0` all the same.
fn with_miss_headers(
    route: &RouteCache,
    result: Result<Response<Body>, GatewayError>,
) -> Result<Response<Body>, GatewayError> {
    route.metrics.miss.increment(1);
    match result {
        Ok(mut response) => {
            add_miss(response.headers_mut());
            Ok(response)
        }
        Err(mut error) => {
            add_miss(error.headers_mut());
            Err(error)
        }
    }
}
