//! The in-process store: moka (TinyLFU admission, LRU eviction) bounded by entries and
//! bytes at once. Freshness is measured with tokio's clock, so tests can pause time;
//! moka's own per-entry expiry only reclaims entries once their stale window is over.

use super::{Entry, Stored};
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone)]
struct Slot {
    entry: Arc<Entry>,
    stored: Instant,
    keep_for: Duration,
}

struct KeepFor;

impl Expiry<[u8; 32], Slot> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        slot: &Slot,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(slot.keep_for)
    }

    fn expire_after_update(
        &self,
        _key: &[u8; 32],
        slot: &Slot,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.keep_for)
    }
}

pub(super) struct MemoryStore {
    cache: Cache<[u8; 32], Slot>,
}

/// Bookkeeping per entry beyond its key text and body (what moka itself keeps, roughly).
const OVERHEAD: u64 = 160;

impl MemoryStore {
    /// Every entry weighs at least `max_bytes / max_entries`, so that the one weighted
    /// capacity bounds both the bytes and the number of entries.
    pub(super) fn new(max_entries: u64, max_bytes: u64) -> Self {
        let max_entries = max_entries.max(1);
        let max_bytes = max_bytes.max(max_entries);
        let floor = max_bytes / max_entries;
        let evictions = metrics::counter!("switchboard_cache_evictions_total");
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |key: &[u8; 32], slot: &Slot| {
                let bytes = slot.entry.size() + key.len() as u64 + OVERHEAD;
                u32::try_from(bytes.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(KeepFor)
            .eviction_listener(move |_key, _slot, cause| {
                if cause == RemovalCause::Size {
                    evictions.increment(1);
                }
            })
            .build();
        Self { cache }
    }

    /// The entry and its age, unless it is past `keep_for`.
    pub(super) async fn get(&self, key: &[u8; 32]) -> Option<Stored> {
        let slot = self.cache.get(key).await?;
        let age = slot.stored.elapsed();
        if age >= slot.keep_for {
            self.cache.invalidate(key).await;
            return None;
        }
        Some(Stored {
            entry: slot.entry,
            age,
        })
    }

    pub(super) async fn put(&self, key: [u8; 32], entry: Arc<Entry>, keep_for: Duration) {
        let slot = Slot {
            entry,
            stored: Instant::now(),
            keep_for,
        };
        self.cache.insert(key, slot).await;
        self.report();
    }

    /// Removes the entries `matches` selects; returns how many.
    pub(super) async fn purge(&self, matches: impl Fn(&Entry) -> bool) -> u64 {
        let keys: Vec<[u8; 32]> = self
            .cache
            .iter()
            .filter(|(_, slot)| matches(&slot.entry))
            .map(|(key, _)| *key)
            .collect();
        for key in &keys {
            self.cache.invalidate(key).await;
        }
        self.cache.run_pending_tasks().await;
        self.report();
        keys.len() as u64
    }

    fn report(&self) {
        metrics::gauge!("switchboard_cache_entries").set(self.cache.entry_count() as f64);
        metrics::gauge!("switchboard_cache_bytes").set(self.cache.weighted_size() as f64);
    }

    #[cfg(test)]
    pub(super) async fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;

    fn entry(route: &str, text: &str, body: &'static [u8]) -> Arc<Entry> {
        Arc::new(Entry {
            status: StatusCode::OK,
            content_type: None,
            body: Bytes::from_static(body),
            route: route.into(),
            text: text.into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn age_grows_with_time_and_the_entry_goes_after_keep_for() {
        let store = MemoryStore::new(10, 1 << 20);
        store
            .put([1; 32], entry("r", "/a", b"{}"), Duration::from_secs(10))
            .await;
        assert_eq!(store.get(&[1; 32]).await.unwrap().age, Duration::ZERO);
        tokio::time::advance(Duration::from_secs(4)).await;
        let stored = store.get(&[1; 32]).await.unwrap();
        assert_eq!(stored.age, Duration::from_secs(4));
        assert_eq!(stored.entry.body.as_ref(), b"{}");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(store.get(&[1; 32]).await.is_none());
        assert!(store.get(&[2; 32]).await.is_none());
    }

    #[tokio::test]
    async fn bounded_by_entries() {
        let store = MemoryStore::new(5, 1 << 30);
        for i in 0..50u8 {
            store
                .put([i; 32], entry("r", "/a", b"x"), Duration::from_secs(60))
                .await;
        }
        assert!(store.entry_count().await <= 5);
    }

    #[tokio::test]
    async fn bounded_by_bytes() {
        static BIG: [u8; 4096] = [b'x'; 4096];
        // Room for about four bodies of 4 KiB, however many entries are allowed.
        let store = MemoryStore::new(10_000, 18 << 10);
        for i in 0..40u8 {
            store
                .put([i; 32], entry("r", "/a", &BIG), Duration::from_secs(60))
                .await;
        }
        let count = store.entry_count().await;
        assert!((1..=4).contains(&count), "{count} entries");
    }

    #[tokio::test]
    async fn purge_by_predicate() {
        let store = MemoryStore::new(100, 1 << 20);
        store
            .put(
                [1; 32],
                entry("a", "/v1/p/1", b"1"),
                Duration::from_secs(60),
            )
            .await;
        store
            .put(
                [2; 32],
                entry("a", "/v1/p/2", b"2"),
                Duration::from_secs(60),
            )
            .await;
        store
            .put(
                [3; 32],
                entry("b", "/v1/q/1", b"3"),
                Duration::from_secs(60),
            )
            .await;
        assert_eq!(store.purge(|e| e.text.starts_with("/v1/p/1")).await, 1);
        assert!(store.get(&[1; 32]).await.is_none());
        assert!(store.get(&[2; 32]).await.is_some());
        assert_eq!(store.purge(|e| &*e.route == "a").await, 1);
        assert_eq!(store.purge(|_| true).await, 1);
        assert!(store.get(&[3; 32]).await.is_none());
    }
}
