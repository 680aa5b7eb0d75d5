//! `fallback: cached`: the last good result of each step per request key, bounded in
//! entries, bytes and age, so a degraded answer can reuse what a backend said recently.

use bytes::Bytes;
use moka::future::Cache;
use std::time::Duration;

/// Bytes of keys and results kept per route.
const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// A result older than this is not served as a fallback.
const TTL: Duration = Duration::from_secs(600);
/// A result larger than this is not kept (one entry must not evict everything else).
const MAX_ENTRY_BYTES: usize = 1024 * 1024;

pub(super) struct StepStore {
    /// The step's result as JSON text, as the answer shows it.
    entries: Cache<String, Bytes>,
}

impl Default for StepStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StepStore {
    pub(super) fn new() -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|key: &String, text: &Bytes| {
                    let size = key.len() + text.len();
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .time_to_live(TTL)
                .build(),
        }
    }

    /// Remembers `text` (JSON) as the last good result of `step` for `key`.
    pub(super) async fn put(&self, step: &str, key: &str, text: &Bytes) {
        if text.len() > MAX_ENTRY_BYTES {
            return;
        }
        self.entries
            .insert(entry_key(step, key), text.clone())
            .await;
    }

    pub(super) async fn get(&self, step: &str, key: &str) -> Option<Bytes> {
        self.entries.get(&entry_key(step, key)).await
    }
}

fn entry_key(step: &str, key: &str) -> String {
    format!("{step}\u{0}{key}")
}
