//! Per-key state split into shards behind their own locks, so concurrent decisions on
//! different keys rarely wait for each other. Each store decides how its shards are swept.

use foldhash::fast::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

/// Keys held before a shard first sweeps.
pub(super) const FIRST_SWEEP: usize = 1024;

pub(super) struct Sharded<V> {
    shards: Vec<Mutex<Shard<V>>>,
    /// Keys are addresses or SHA-256 hex (middleware::limit_key), so a fast seeded hash
    /// is enough.
    hasher: RandomState,
}

pub(super) struct Shard<V> {
    pub entries: HashMap<Box<str>, V, RandomState>,
    /// Sweep when the shard holds this many keys.
    pub sweep_above: usize,
    /// And not before then (µs), for stores that pace their sweeps.
    pub next_sweep: i64,
}

impl<V> Sharded<V> {
    pub(super) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::default(),
                        sweep_above: FIRST_SWEEP,
                        next_sweep: 0,
                    })
                })
                .collect(),
            hasher: RandomState::default(),
        }
    }

    /// The shard of `key`, locked.
    pub(super) fn lock(&self, key: &str) -> MutexGuard<'_, Shard<V>> {
        let shard = &self.shards[self.hasher.hash_one(key) as usize % self.shards.len()];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keys currently held.
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }
}
