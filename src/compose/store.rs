//! `fallback: cached`: the last good result of each step per request key, bounded in
//! entries, bytes and age, so a degraded answer can reuse what a backend said recently.

use moka::future::Cache;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of keys and results kept per route.
const MAX_BYTES: u64 = 16 * 1024 * 1024;
/// A result older than this is not served as a fallback.
const TTL: Duration = Duration::from_secs(600);
/// A result larger than this is not kept (one entry must not evict everything else).
const MAX_ENTRY_BYTES: usize = 1024 * 1024;

pub struct StepStore {
    entries: Cache<String, Arc<Value>>,
}

impl Default for StepStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StepStore {
    pub fn new() -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(MAX_BYTES)
                .weigher(|key: &String, value: &Arc<Value>| {
                    let size = key.len() + approx_size(value);
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .time_to_live(TTL)
                .build(),
        }
    }

    /// Remembers `value` as the last good result of `step` for `key`.
    pub async fn put(&self, step: &str, key: &str, value: &Value, size_hint: usize) {
        if size_hint > MAX_ENTRY_BYTES {
            return;
        }
        self.entries
            .insert(entry_key(step, key), Arc::new(value.clone()))
            .await;
    }

    pub async fn get(&self, step: &str, key: &str) -> Option<Arc<Value>> {
        self.entries.get(&entry_key(step, key)).await
    }
}

fn entry_key(step: &str, key: &str) -> String {
    format!("{step}\u{0}{key}")
}

/// Roughly the bytes a JSON value takes as text (bounded walk: the value is already
/// bounded by the backend's message size).
fn approx_size(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| approx_size(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + approx_size(v))
                .sum::<usize>()
        }
    }
}
