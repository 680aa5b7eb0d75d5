//! The shared store: entries in Redis, so that every gateway instance answers from the
//! same cache. One hash per entry (`m`: metadata JSON, `b`: body) with a TTL of the
//! entry's fresh life plus its stale window. Every call runs under a short deadline; a
//! failure is the caller's cue to go to the backend (never a 5xx).

use super::{Entry, Stored};
use crate::redis_connection::RedisConnection;
use http::{HeaderValue, StatusCode};
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Every key starts with this; then a hash of the route name, then the entry's digest,
/// so that purging one route is a SCAN of its own prefix.
const PREFIX: &str = "switchboard:cache:v1:";
pub(super) struct RedisStore {
    connection: RedisConnection,
    timeout: Duration,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    /// Route name.
    r: String,
    /// `path?query`.
    t: String,
    /// Status.
    s: u16,
    /// Content type.
    c: Option<String>,
    /// Stored at, milliseconds since the Unix epoch (instances share the wall clock).
    at: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn route_prefix(route: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(route.as_bytes());
    format!("{PREFIX}{}:", super::key::hex(&digest[..8]))
}

fn redis_key(route: &str, digest: &[u8; 32]) -> String {
    format!("{}{}", route_prefix(route), super::key::hex(digest))
}

impl RedisStore {
    pub(super) fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        Ok(Self {
            connection: RedisConnection::new(url, timeout)?,
            timeout,
        })
    }

    /// Runs `call` on a connection within the store deadline.
    async fn run<T>(
        &self,
        deadline: Duration,
        call: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let work = async {
            let mut connection = self.connection.get().await?;
            call(&mut connection).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(deadline, work)
            .await
            .map_err(|_| format!("redis did not answer within {deadline:?}"))?
    }

    pub(super) async fn get(
        &self,
        route: &str,
        digest: &[u8; 32],
    ) -> Result<Option<Stored>, String> {
        let key = redis_key(route, digest);
        let (meta, body): (Option<String>, Option<Vec<u8>>) = self
            .run(self.timeout, async |c| {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("m")
                    .arg("b")
                    .query_async(c)
                    .await
            })
            .await?;
        let (Some(meta), Some(body)) = (meta, body) else {
            return Ok(None);
        };
        // An entry this build cannot read (another version wrote it) counts as absent.
        let Ok(meta) = serde_json::from_str::<Meta>(&meta) else {
            return Ok(None);
        };
        let Ok(status) = StatusCode::from_u16(meta.s) else {
            return Ok(None);
        };
        Ok(Some(Stored {
            age: Duration::from_millis(now_ms().saturating_sub(meta.at)),
            entry: Arc::new(Entry {
                status,
                content_type: meta.c.and_then(|c| HeaderValue::try_from(c).ok()),
                body: body.into(),
                route: meta.r.into(),
                text: meta.t.into(),
            }),
        }))
    }

    pub(super) async fn put(
        &self,
        digest: &[u8; 32],
        entry: &Entry,
        keep_for: Duration,
    ) -> Result<(), String> {
        let key = redis_key(&entry.route, digest);
        let meta = Meta {
            r: entry.route.to_string(),
            t: entry.text.to_string(),
            s: entry.status.as_u16(),
            c: entry
                .content_type
                .as_ref()
                .and_then(|c| c.to_str().ok())
                .map(str::to_string),
            at: now_ms(),
        };
        let meta = serde_json::to_string(&meta).map_err(|e| e.to_string())?;
        let keep_ms = u64::try_from(keep_for.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.run(self.timeout, async |c| {
            redis::pipe()
                .atomic()
                .cmd("DEL")
                .arg(&key)
                .ignore()
                .cmd("HSET")
                .arg(&key)
                .arg("m")
                .arg(&meta)
                .arg("b")
                .arg(entry.body.as_ref())
                .ignore()
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(keep_ms)
                .ignore()
                .query_async::<()>(c)
                .await
        })
        .await
    }

    /// Removes the entries of `route` (all routes when `None`) whose key text starts
    /// with `key_prefix`. An admin operation: SCAN in batches, under a longer deadline.
    pub(super) async fn purge(
        &self,
        route: Option<&str>,
        key_prefix: Option<&str>,
        deadline: Duration,
    ) -> Result<u64, String> {
        let pattern = format!(
            "{}*",
            route.map_or_else(|| PREFIX.to_string(), route_prefix)
        );
        self.run(deadline, async |c| {
            let mut cursor: u64 = 0;
            let mut purged = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500)
                    .query_async(c)
                    .await?;
                let selected = match key_prefix {
                    None => keys,
                    Some(prefix) => {
                        let mut selected = Vec::new();
                        for key in keys {
                            let meta: Option<String> =
                                redis::cmd("HGET").arg(&key).arg("m").query_async(c).await?;
                            let text = meta
                                .and_then(|m| serde_json::from_str::<Meta>(&m).ok())
                                .map(|m| m.t);
                            if text.is_some_and(|t| t.starts_with(prefix)) {
                                selected.push(key);
                            }
                        }
                        selected
                    }
                };
                if !selected.is_empty() {
                    let removed: u64 = redis::cmd("DEL").arg(&selected).query_async(c).await?;
                    purged += removed;
                }
                cursor = next;
                if cursor == 0 {
                    return Ok(purged);
                }
            }
        })
        .await
    }
}
