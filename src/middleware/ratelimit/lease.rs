//! What one instance remembers of the keys Redis decided, so that some decisions need no
//! round trip:
//!
//! - **Refusals.** A key Redis refused stays refused here until the reset Redis gave: no
//!   instance can admit it before then (admissions only come back with time), so this is
//!   exact, and a client flooding past its limit costs Redis nothing.
//! - **Reservations** (`reserve: N` on the policy). When Redis admits more than the
//!   decisions that were waiting (at most N more per key), this instance spends the rest
//!   itself, within [`LEASE_FOR`] and never past a fixed window's end. They left the
//!   shared count when Redis granted them, so across instances a key gets at most its
//!   limit plus what the instances hold at that moment (≤ N each); one that lapses unspent
//!   is lost (the key gets fewer, never more). How many a key asks for follows its use:
//!   none at one decision a second or fewer; after a grant it spent within its time,
//!   twice what it spent; after one that lapsed, what it spent; never more than N.
//!
//! Times are the caller's clock read before it asked Redis, so a refusal or a reservation
//! ends here no later than it would in Redis.

use super::algorithm::Decision;
use super::redis::Answer;
use super::sharded::{FIRST_SWEEP, Sharded};

/// How long reserved admissions may be spent (µs).
pub(super) const LEASE_FOR: i64 = 1_000_000;
/// Keys remembered per policy, at most; beyond that a new key is decided in Redis each
/// time (keys are chosen by clients: memory must not follow them).
const MAX_KEYS: usize = 65_536;
const SHARDS: usize = 16;
const SHARD_KEYS: usize = MAX_KEYS / SHARDS;
/// A full shard sweeps at most this often (µs): a flood of new keys must not make every
/// decision scan it.
const SWEEP_EVERY: i64 = 100_000;

pub(super) struct Leases {
    leases: Sharded<Lease>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    /// Reserved admissions not spent yet.
    tokens: u64,
    /// Until when `tokens` may be spent (and the grant counts as recent).
    until: i64,
    /// Decisions answered from the current grant.
    used: u64,
    /// What Redis had left after the grant (with `tokens`, the remaining reported).
    shared_remaining: u64,
    /// When Redis had nothing left: when it would again.
    empty_until: i64,
    /// Refused here until then.
    refused_until: i64,
}

impl Lease {
    /// When this entry says nothing any more.
    fn expires(&self) -> i64 {
        self.until.max(self.refused_until)
    }
}

/// What this instance can say about a decision by itself.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Local {
    Decided(Decision),
    /// Ask Redis, wanting this many admissions beyond the decision itself.
    Ask {
        wanted: u64,
    },
}

impl Default for Leases {
    fn default() -> Self {
        Self {
            leases: Sharded::new(SHARDS),
        }
    }
}

impl Leases {
    /// Decides from what is remembered of `key`, or says how much to ask Redis for.
    pub(super) fn decide(&self, key: &str, limit: u64, now: i64) -> Local {
        let mut shard = self.leases.lock(key);
        let Some(lease) = shard.entries.get_mut(key) else {
            return Local::Ask { wanted: 0 };
        };
        // Held admissions go first: they are this instance's to spend, even when a later
        // answer found Redis empty.
        if lease.until <= now || lease.tokens == 0 {
            return if lease.refused_until > now {
                Local::Decided(Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset_micros: lease.refused_until - now,
                })
            } else if lease.until <= now {
                // Lapsed: ask for what it used while it lasted.
                Local::Ask { wanted: lease.used }
            } else {
                // Spent before its time was up: demand is above the last grant.
                Local::Ask {
                    wanted: 2 * (lease.used + 1),
                }
            };
        }
        lease.tokens -= 1;
        lease.used += 1;
        let remaining = lease.shared_remaining + lease.tokens;
        let reset_micros = if remaining == 0 {
            (lease.empty_until - now).max(0)
        } else {
            0
        };
        Local::Decided(Decision {
            allowed: true,
            limit,
            remaining,
            reset_micros,
        })
    }

    /// Remembers what Redis answered for `key` (asked at `asked_at`): a refusal, and with
    /// `reserving`, the grant.
    pub(super) fn record(&self, key: &str, answer: &Answer, asked_at: i64, reserving: bool) {
        let refused = !answer.decision.allowed && answer.decision.reset_micros > 0;
        let grant = answer.grant.filter(|_| reserving);
        if !refused && grant.is_none() {
            return;
        }
        let mut shard = self.leases.lock(key);
        let lease = match shard.entries.get_mut(key) {
            Some(lease) => lease,
            None => {
                if shard.entries.len() >= shard.sweep_above && asked_at >= shard.next_sweep {
                    shard.entries.retain(|_, lease| lease.expires() > asked_at);
                    shard.sweep_above = (shard.entries.len() * 2).clamp(FIRST_SWEEP, SHARD_KEYS);
                    shard.next_sweep = asked_at + SWEEP_EVERY;
                }
                if shard.entries.len() >= SHARD_KEYS {
                    return;
                }
                shard.entries.entry(key.into()).or_default()
            }
        };
        if refused {
            lease.refused_until = lease
                .refused_until
                .max(asked_at + answer.decision.reset_micros);
        }
        if let Some(grant) = grant {
            let life = match grant.valid_micros {
                0 => LEASE_FOR,
                window_left => window_left.min(LEASE_FOR),
            };
            // Admissions still held from an earlier grant (answers may cross) are kept
            // only while that grant lasts: they stay within what Redis gave.
            let held = if lease.until > asked_at {
                lease.tokens
            } else {
                0
            };
            *lease = Lease {
                tokens: held + grant.tokens,
                until: if held > 0 {
                    lease.until.min(asked_at + life)
                } else {
                    asked_at + life
                },
                used: 0,
                shared_remaining: grant.remaining,
                empty_until: asked_at + grant.reset_micros,
                refused_until: lease.refused_until,
            };
        }
    }

    /// Keys remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.leases.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::middleware::ratelimit::redis::Grant;

    fn answer(allowed: bool, reset_micros: i64, grant: Option<Grant>) -> Answer {
        Answer {
            decision: Decision {
                allowed,
                limit: 10,
                remaining: 0,
                reset_micros,
            },
            grant,
        }
    }

    fn grant(tokens: u64, remaining: u64, valid_micros: i64) -> Option<Grant> {
        Some(Grant {
            tokens,
            remaining,
            reset_micros: 0,
            valid_micros,
        })
    }

    fn allowed(local: Local) -> Option<(u64, i64)> {
        match local {
            Local::Decided(d) if d.allowed => Some((d.remaining, d.reset_micros)),
            _ => None,
        }
    }

    #[test]
    fn a_refusal_holds_until_its_reset_only() {
        let leases = Leases::default();
        leases.record("k", &answer(false, 500, None), 1_000, false);
        assert_eq!(
            leases.decide("k", 10, 1_200),
            Local::Decided(Decision {
                allowed: false,
                limit: 10,
                remaining: 0,
                reset_micros: 300
            })
        );
        assert_eq!(leases.decide("k", 10, 1_500), Local::Ask { wanted: 0 });
        assert_eq!(leases.decide("other", 10, 1_200), Local::Ask { wanted: 0 });
    }

    #[test]
    fn grants_are_kept_only_when_reserving() {
        let leases = Leases::default();
        leases.record("k", &answer(true, 0, grant(3, 5, 0)), 0, false);
        assert_eq!(
            leases.len(),
            0,
            "no reserve: nothing remembered of an admission"
        );
        assert_eq!(leases.decide("k", 10, 1), Local::Ask { wanted: 0 });
    }

    #[test]
    fn reserved_admissions_are_spent_then_asked_for_again() {
        let leases = Leases::default();
        leases.record("k", &answer(true, 0, grant(3, 5, 0)), 0, true);
        // Remaining counts what Redis has left and what this instance still holds.
        assert_eq!(allowed(leases.decide("k", 10, 10)), Some((7, 0)));
        assert_eq!(allowed(leases.decide("k", 10, 20)), Some((6, 0)));
        assert_eq!(allowed(leases.decide("k", 10, 30)), Some((5, 0)));
        // Spent within its life: ask for more than was used.
        assert_eq!(leases.decide("k", 10, 40), Local::Ask { wanted: 8 });
    }

    #[test]
    fn reserved_admissions_lapse() {
        let leases = Leases::default();
        leases.record("k", &answer(true, 0, grant(3, 5, 0)), 0, true);
        assert!(allowed(leases.decide("k", 10, 10)).is_some());
        // Past LEASE_FOR: not spent any more; asks for what it used.
        assert_eq!(leases.decide("k", 10, LEASE_FOR), Local::Ask { wanted: 1 });
        // A fixed window's admissions end with the window, sooner than LEASE_FOR.
        leases.record("w", &answer(true, 0, grant(3, 5, 400)), 100, true);
        assert!(allowed(leases.decide("w", 10, 499)).is_some());
        assert_eq!(leases.decide("w", 10, 500), Local::Ask { wanted: 1 });
    }

    #[test]
    fn the_last_reserved_admission_reports_the_reset() {
        let leases = Leases::default();
        let grant = Some(Grant {
            tokens: 1,
            remaining: 0,
            reset_micros: 900,
            valid_micros: 0,
        });
        leases.record("k", &answer(true, 0, grant), 100, true);
        assert_eq!(allowed(leases.decide("k", 10, 400)), Some((0, 600)));
    }

    #[test]
    fn keys_are_bounded() {
        let leases = Leases::default();
        for i in 0..(MAX_KEYS as i64 * 3) {
            // Each refusal lasts long: nothing can be swept.
            leases.record(
                &format!("k{i}"),
                &answer(false, i64::MAX / 4, None),
                i,
                false,
            );
        }
        assert!(leases.len() <= MAX_KEYS, "{} keys", leases.len());
        // Short refusals are swept as keys come.
        let leases = Leases::default();
        for i in 0..200_000i64 {
            leases.record(&format!("k{i}"), &answer(false, 5, None), i * 10, false);
        }
        assert!(leases.len() < 40_000, "{} keys", leases.len());
    }
}
