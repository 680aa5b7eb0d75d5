//! The three limiting algorithms as pure functions over a per-key state, in integer
//! microseconds. The memory store runs these; the Redis store runs the same arithmetic in
//! Lua (redis.rs) so that every instance decides alike.

/// One key's counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum State {
    /// Token bucket: tokens left (fractional) at `last`.
    Bucket { tokens: f64, last: i64 },
    /// Leaky bucket as GCRA: the theoretical arrival time of the next request.
    Gcra { tat: i64 },
    /// Fixed window: requests counted in the window starting at `start`.
    Window { start: i64, count: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The `RateLimit-Limit` value.
    pub limit: u64,
    pub remaining: u64,
    /// Microseconds until a request would be allowed (0 if one would be now).
    pub reset_micros: i64,
}

/// Shape of a policy in the units the algorithms use.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub kind: crate::config::RateLimitAlgorithm,
    /// Requests per window.
    pub rate: u64,
    pub per_micros: i64,
    /// Bucket capacity.
    pub burst: u64,
}

impl Params {
    /// Microseconds per token (buckets).
    pub fn interval(&self) -> f64 {
        self.per_micros as f64 / self.rate.max(1) as f64
    }
}

/// Decides one request at `now`, updating `state` (None = a fresh key). Returns the new
/// state and when it may be forgotten (it then equals a fresh key).
pub(super) fn decide(params: &Params, state: Option<State>, now: i64) -> (Decision, State, i64) {
    use crate::config::RateLimitAlgorithm::*;
    match params.kind {
        TokenBucket => token_bucket(params, state, now),
        LeakyBucket => gcra(params, state, now),
        FixedWindow => fixed_window(params, state, now),
    }
}

fn token_bucket(p: &Params, state: Option<State>, now: i64) -> (Decision, State, i64) {
    let capacity = p.burst as f64;
    let interval = p.interval();
    let (tokens, last) = match state {
        Some(State::Bucket { tokens, last }) => (tokens, last),
        _ => (capacity, now),
    };
    let mut tokens = (tokens + (now - last).max(0) as f64 / interval).min(capacity);
    let allowed = tokens >= 1.0;
    if allowed {
        tokens -= 1.0;
    }
    let reset = if tokens >= 1.0 {
        0
    } else {
        ((1.0 - tokens) * interval).ceil() as i64
    };
    let full_at = now + ((capacity - tokens) * interval).ceil() as i64;
    let decision = Decision {
        allowed,
        limit: p.burst,
        remaining: tokens.floor() as u64,
        reset_micros: reset,
    };
    (decision, State::Bucket { tokens, last: now }, full_at)
}

fn gcra(p: &Params, state: Option<State>, now: i64) -> (Decision, State, i64) {
    let interval = p.interval().ceil() as i64;
    let capacity = p.burst as i64 * interval;
    let tat = match state {
        Some(State::Gcra { tat }) => tat.max(now),
        _ => now,
    };
    let next = tat + interval;
    if next - now <= capacity {
        let remaining = ((capacity - (next - now)) / interval).max(0) as u64;
        let reset = (next + interval - capacity - now).max(0);
        let decision = Decision {
            allowed: true,
            limit: p.burst,
            remaining,
            reset_micros: reset,
        };
        (decision, State::Gcra { tat: next }, next)
    } else {
        let decision = Decision {
            allowed: false,
            limit: p.burst,
            remaining: 0,
            reset_micros: next - now - capacity,
        };
        (decision, State::Gcra { tat }, tat)
    }
}

fn fixed_window(p: &Params, state: Option<State>, now: i64) -> (Decision, State, i64) {
    let start = now - now.rem_euclid(p.per_micros);
    let count = match state {
        Some(State::Window { start: s, count }) if s == start => count,
        _ => 0,
    };
    let allowed = count < p.rate;
    let count = if allowed { count + 1 } else { count };
    let remaining = p.rate.saturating_sub(count);
    let end = start + p.per_micros;
    let reset = if remaining > 0 { 0 } else { end - now };
    let decision = Decision {
        allowed,
        limit: p.rate,
        remaining,
        reset_micros: reset,
    };
    (decision, State::Window { start, count }, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateLimitAlgorithm;

    fn run(kind: RateLimitAlgorithm, burst: u64, times: &[i64]) -> Vec<bool> {
        let params = Params {
            kind,
            rate: 10,
            per_micros: 1_000_000,
            burst,
        };
        let mut state = None;
        times
            .iter()
            .map(|&t| {
                let (d, s, _) = decide(&params, state, t);
                state = Some(s);
                d.allowed
            })
            .collect()
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let at_once = run(RateLimitAlgorithm::TokenBucket, 3, &[0, 0, 0, 0]);
        assert_eq!(at_once, [true, true, true, false]);
        // One token every 100ms.
        assert_eq!(
            run(
                RateLimitAlgorithm::TokenBucket,
                1,
                &[0, 50_000, 100_000, 150_000, 200_000]
            ),
            [true, false, true, false, true]
        );
    }

    #[test]
    fn leaky_bucket_rejects_when_full_and_drains_steadily() {
        assert_eq!(
            run(
                RateLimitAlgorithm::LeakyBucket,
                2,
                &[0, 0, 0, 100_000, 100_000]
            ),
            [true, true, false, true, false]
        );
    }

    #[test]
    fn fixed_window_counts_per_window() {
        let mut times = vec![0; 10];
        times.push(999_999);
        times.push(1_000_000);
        let result = run(RateLimitAlgorithm::FixedWindow, 0, &times);
        assert!(result[..10].iter().all(|a| *a));
        assert!(!result[10]);
        assert!(result[11], "a new window");
    }

    #[test]
    fn reset_is_time_until_next_allowed() {
        let params = Params {
            kind: RateLimitAlgorithm::TokenBucket,
            rate: 1,
            per_micros: 1_000_000,
            burst: 1,
        };
        let (first, state, _) = decide(&params, None, 0);
        assert!(first.allowed);
        assert_eq!(first.remaining, 0);
        assert_eq!(first.reset_micros, 1_000_000);
        let (second, _, _) = decide(&params, Some(state), 400_000);
        assert!(!second.allowed);
        assert_eq!(second.reset_micros, 600_000);
    }
}
