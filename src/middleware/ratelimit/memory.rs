//! In-process counters: a sharded map of per-key states. Every state carries the time at
//! which it equals a fresh key; a shard sweeps those out when it has grown, so many
//! distinct keys (one per client IP…) cannot grow memory without bound.

use super::algorithm::{Decision, Params, State, decide};
use super::sharded::{FIRST_SWEEP, Sharded};

const SHARDS: usize = 32;

pub struct MemoryStore {
    /// Each key's state and when it equals a fresh key again.
    states: Sharded<(State, i64)>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            states: Sharded::new(SHARDS),
        }
    }
}

impl MemoryStore {
    pub fn decide(&self, params: &Params, key: &str, now: i64) -> Decision {
        let mut shard = self.states.lock(key);
        let decision = match shard.entries.get_mut(key) {
            Some(slot) => {
                let previous = (slot.1 > now).then_some(slot.0);
                let (decision, state, expires) = decide(params, previous, now);
                *slot = (state, expires);
                decision
            }
            None => {
                let (decision, state, expires) = decide(params, None, now);
                shard.entries.insert(key.into(), (state, expires));
                decision
            }
        };
        if shard.entries.len() > shard.sweep_above {
            shard.entries.retain(|_, (_, expires)| *expires > now);
            shard.sweep_above = (shard.entries.len() * 2).max(FIRST_SWEEP);
        }
        decision
    }

    /// Keys currently held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.states.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitAlgorithm;

    #[test]
    fn many_keys_do_not_accumulate() {
        let store = MemoryStore::default();
        let params = Params {
            kind: RateLimitAlgorithm::FixedWindow,
            rate: 5,
            per_micros: 1_000,
            burst: 5,
        };
        for i in 0..200_000i64 {
            // Each key is used once; time moves on, so old keys expire.
            store.decide(&params, &format!("client-{i}"), i * 10);
        }
        assert!(store.len() < 100_000, "{} keys kept", store.len());
    }
}
