//! One lazily opened Redis connection, shared by the stores that live in Redis (rate-limit
//! counters, cached responses). Every connect and call is bounded by the store's timeout;
//! after a failed connect, callers skip Redis for a moment instead of each waiting for a
//! connect of their own (their store then applies its own failure policy).

use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::time::Instant;

/// How long after a failed connect callers fail fast before the next attempt.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct RedisConnection {
    client: redis::Client,
    slot: tokio::sync::Mutex<Slot>,
    /// Connect and response timeout.
    pub timeout: Duration,
}

#[derive(Default)]
struct Slot {
    manager: Option<ConnectionManager>,
    failed_at: Option<Instant>,
}

impl RedisConnection {
    /// Checks the URL; connects on first use.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid redis URL `{url}`: {e}"))?;
        Ok(Self {
            client,
            slot: tokio::sync::Mutex::new(Slot::default()),
            timeout,
        })
    }

    /// The shared connection (the manager reconnects by itself once it exists).
    pub(crate) async fn get(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.slot.lock().await;
        if let Some(manager) = &slot.manager {
            return Ok(manager.clone());
        }
        if slot
            .failed_at
            .is_some_and(|at| at.elapsed() < RECONNECT_AFTER)
        {
            return Err("redis unreachable (waiting before reconnecting)".into());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        match ConnectionManager::new_with_config(self.client.clone(), config).await {
            Ok(manager) => {
                slot.manager = Some(manager.clone());
                slot.failed_at = None;
                Ok(manager)
            }
            Err(e) => {
                slot.failed_at = Some(Instant::now());
                Err(e.to_string())
            }
        }
    }
}
