//! Exponential backoff, shared by reconnects (gRPC connections, AMQP sessions) and by
//! retries: `first` × 2^attempt, capped, then jittered so that many callers (or many
//! gateways after a broker restart) do not come back in step.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

/// How much of the computed delay is actually waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Jitter {
    /// Exactly the delay.
    None,
    /// 50–100% of it: never longer than the cap.
    Down,
    /// 50–150% of it: spread around the delay.
    Around,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration, jitter: Jitter) -> Self {
        Self { first, max, jitter }
    }

    /// The pause before attempt `attempt` (0: after the first failure).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        // 2^16 × any sensible `first` is past every cap; beyond it only overflow changes.
        let delay = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        match self.jitter {
            Jitter::None => delay,
            Jitter::Down => delay.mul_f64(0.5 + fastrand::f64() * 0.5),
            Jitter::Around => delay.mul_f64(0.5 + fastrand::f64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff::new(20 * MS, 500 * MS, Jitter::None);
        let delays: Vec<_> = (0..7).map(|a| backoff.delay(a).as_millis()).collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(backoff.delay(u32::MAX), 500 * MS);
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let down = Backoff::new(100 * MS, 5000 * MS, Jitter::Down);
        let around = Backoff::new(100 * MS, 5000 * MS, Jitter::Around);
        for attempt in 0..40 {
            let exact = Backoff::new(100 * MS, 5000 * MS, Jitter::None).delay(attempt);
            let d = down.delay(attempt);
            assert!(d >= exact / 2 && d <= exact, "{attempt}: {d:?}");
            let a = around.delay(attempt);
            assert!(a >= exact / 2 && a <= exact * 3 / 2, "{attempt}: {a:?}");
        }
    }
}
