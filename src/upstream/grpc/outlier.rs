//! Passive outlier ejection (`outlier:`): an endpoint whose calls fail
//! `consecutive_failures` times in a row leaves the rotation for `base_ejection` × its
//! ejection multiplier (at most `max_ejection`). The multiplier grows by one with every
//! ejection and drops by one for each `base_ejection` the endpoint then stays in
//! rotation, so a flapping endpoint stays out longer and a recovered one is forgiven.
//!
//! Every read on the hot path is one atomic load: an endpoint that was never ejected
//! is never compared with the clock. Times are milliseconds since the balancer's epoch
//! (tokio's clock, so tests can pause it).

use crate::config::OutlierConfig;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// What a finished call says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (with any status but UNAVAILABLE).
    Answered,
    /// Connect error, broken connection, or UNAVAILABLE.
    Failed,
    /// Says nothing about the endpoint (e.g. the call's own deadline ran out).
    Neutral,
}

impl Outcome {
    /// Judged by code, not text: UNAVAILABLE is what connect errors, broken connections
    /// and a backend shedding load all report.
    pub fn of(code: tonic::Code) -> Self {
        match code {
            tonic::Code::Unavailable => Outcome::Failed,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Outcome::Neutral,
            _ => Outcome::Answered,
        }
    }
}

/// The outlier state of one endpoint.
#[derive(Debug, Default)]
pub struct EndpointOutlier {
    consecutive: AtomicU32,
    /// Ejected until this time (ms since the epoch); 0 = never ejected.
    ejected_until: AtomicU64,
    ejections: AtomicU64,
    /// Current multiplier of `base_ejection` (changed under the detector's lock).
    multiplier: AtomicU32,
}

impl EndpointOutlier {
    pub fn is_ejected(&self, clock: &Clock) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock.now_ms() < until
    }

    /// How many times this endpoint was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Failures in a row so far.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }
}

/// Milliseconds on tokio's clock since a fixed start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            // One millisecond back, so that no real time is 0 (the "never" value).
            epoch: Instant::now()
                .checked_sub(Duration::from_millis(1))
                .unwrap_or_else(Instant::now),
        }
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The ejection policy of one upstream.
#[derive(Debug)]
pub struct Detector {
    pub config: OutlierConfig,
    /// Ejection decisions look at every endpoint: one at a time.
    deciding: std::sync::Mutex<()>,
}

/// Why an endpoint over the threshold stayed in rotation.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Ejected(Duration),
    /// Below the threshold, already ejected, or ejection is off.
    Stays,
    /// Ejecting it would exceed `max_ejected_percent` or empty the rotation.
    CapReached,
}

impl Detector {
    pub fn new(config: OutlierConfig) -> Self {
        Self {
            config,
            deciding: std::sync::Mutex::new(()),
        }
    }

    /// How many of `total` endpoints may be ejected at once: the configured share, at
    /// least one (when ejection is on), and never all of them.
    pub fn max_ejected(&self, total: usize) -> usize {
        if self.config.consecutive_failures == 0 || self.config.max_ejected_percent == 0 {
            return 0;
        }
        let share = total * self.config.max_ejected_percent.min(100) as usize / 100;
        share.max(1).min(total.saturating_sub(1))
    }

    /// Records a call's outcome on `endpoint`, one of `all` (the endpoints in rotation),
    /// and ejects it when this failure is one too many.
    pub fn report<'a>(
        &self,
        endpoint: &EndpointOutlier,
        outcome: Outcome,
        all: impl Iterator<Item = &'a EndpointOutlier>,
        clock: &Clock,
    ) -> Decision {
        match outcome {
            Outcome::Neutral => return Decision::Stays,
            Outcome::Answered => {
                // Read first: successes on a healthy endpoint do not write a shared line.
                if endpoint.consecutive.load(Ordering::Relaxed) != 0 {
                    endpoint.consecutive.store(0, Ordering::Relaxed);
                }
                return Decision::Stays;
            }
            Outcome::Failed => {}
        }
        let threshold = self.config.consecutive_failures;
        let failures = endpoint.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || failures < threshold || endpoint.is_ejected(clock) {
            return Decision::Stays;
        }
        let _one_at_a_time = self.deciding.lock().unwrap_or_else(|e| e.into_inner());
        // Another call may have ejected it while this one waited.
        if endpoint.is_ejected(clock) {
            return Decision::Stays;
        }
        let (mut total, mut ejected) = (0, 0);
        for other in all {
            total += 1;
            ejected += usize::from(other.is_ejected(clock));
        }
        if ejected + 1 > self.max_ejected(total) {
            return Decision::CapReached;
        }
        let now = clock.now_ms();
        let base = u64::try_from(self.config.base_ejection.0.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let max = u64::try_from(self.config.max_ejection.0.as_millis()).unwrap_or(u64::MAX);
        // Forgiveness: one step of the multiplier per base period back in rotation.
        let returned_at = endpoint.ejected_until.load(Ordering::Relaxed);
        let previous = endpoint.multiplier.load(Ordering::Relaxed);
        let forgiven = if returned_at == 0 {
            0
        } else {
            u32::try_from(now.saturating_sub(returned_at) / base).unwrap_or(u32::MAX)
        };
        let multiplier = previous.saturating_sub(forgiven).saturating_add(1);
        let millis = base
            .saturating_mul(u64::from(multiplier))
            .min(max.max(base));
        endpoint.multiplier.store(multiplier, Ordering::Relaxed);
        endpoint
            .ejected_until
            .store(now.saturating_add(millis).max(1), Ordering::Relaxed);
        endpoint.ejections.fetch_add(1, Ordering::Relaxed);
        endpoint.consecutive.store(0, Ordering::Relaxed);
        Decision::Ejected(Duration::from_millis(millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn detector(failures: u32, percent: u32) -> Detector {
        Detector::new(OutlierConfig {
            consecutive_failures: failures,
            base_ejection: ConfigDuration(Duration::from_secs(10)),
            max_ejection: ConfigDuration(Duration::from_secs(25)),
            max_ejected_percent: percent,
        })
    }

    fn fail(d: &Detector, eps: &[EndpointOutlier], i: usize, clock: &Clock) -> Decision {
        d.report(&eps[i], Outcome::Failed, eps.iter(), clock)
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_for_a_growing_capped_time() {
        let clock = Clock::new();
        let d = detector(3, 50);
        let eps: Vec<EndpointOutlier> = (0..2).map(|_| EndpointOutlier::default()).collect();
        assert_eq!(fail(&d, &eps, 0, &clock), Decision::Stays);
        // A success in between starts the count again.
        d.report(&eps[0], Outcome::Answered, eps.iter(), &clock);
        assert_eq!(fail(&d, &eps, 0, &clock), Decision::Stays);
        assert_eq!(fail(&d, &eps, 0, &clock), Decision::Stays);
        // A deadline says nothing about the endpoint.
        d.report(&eps[0], Outcome::Neutral, eps.iter(), &clock);
        assert_eq!(
            fail(&d, &eps, 0, &clock),
            Decision::Ejected(Duration::from_secs(10))
        );
        assert!(eps[0].is_ejected(&clock));
        assert_eq!(eps[0].ejections(), 1);

        tokio::time::advance(Duration::from_millis(9_990)).await;
        assert!(eps[0].is_ejected(&clock));
        tokio::time::advance(Duration::from_millis(20)).await;
        assert!(!eps[0].is_ejected(&clock), "back after base × 1");

        // Failing again at once: ejected for base × 2.
        for _ in 0..2 {
            assert_eq!(fail(&d, &eps, 0, &clock), Decision::Stays);
        }
        assert_eq!(
            fail(&d, &eps, 0, &clock),
            Decision::Ejected(Duration::from_secs(20))
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!eps[0].is_ejected(&clock));
        // Third time: base × 3 = 30s, capped at max_ejection (25s).
        for _ in 0..2 {
            fail(&d, &eps, 0, &clock);
        }
        assert_eq!(
            fail(&d, &eps, 0, &clock),
            Decision::Ejected(Duration::from_secs(25))
        );
        assert_eq!(eps[0].ejections(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_multiplier_is_forgiven_while_in_rotation() {
        let clock = Clock::new();
        let d = detector(1, 50);
        let eps: Vec<EndpointOutlier> = (0..2).map(|_| EndpointOutlier::default()).collect();
        assert_eq!(
            fail(&d, &eps, 0, &clock),
            Decision::Ejected(Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            fail(&d, &eps, 0, &clock),
            Decision::Ejected(Duration::from_secs(20))
        );
        // Back at 30s; two base periods in rotation bring the multiplier from 2 to 0.
        tokio::time::advance(Duration::from_secs(20 + 20)).await;
        assert_eq!(
            fail(&d, &eps, 0, &clock),
            Decision::Ejected(Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_share_nor_the_last_endpoint() {
        let clock = Clock::new();
        // 50% of 3 is 1: the second failing endpoint stays.
        let d = detector(1, 50);
        let eps: Vec<EndpointOutlier> = (0..3).map(|_| EndpointOutlier::default()).collect();
        assert!(matches!(fail(&d, &eps, 0, &clock), Decision::Ejected(_)));
        assert_eq!(fail(&d, &eps, 1, &clock), Decision::CapReached);
        assert!(!eps[1].is_ejected(&clock));
        // Once the first is back, the second may go.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(fail(&d, &eps, 1, &clock), Decision::Ejected(_)));

        // 100% still keeps one endpoint in rotation; a single endpoint is never ejected.
        let all = detector(1, 100);
        let two: Vec<EndpointOutlier> = (0..2).map(|_| EndpointOutlier::default()).collect();
        assert!(matches!(fail(&all, &two, 0, &clock), Decision::Ejected(_)));
        assert_eq!(fail(&all, &two, 1, &clock), Decision::CapReached);
        let one = [EndpointOutlier::default()];
        assert_eq!(fail(&all, &one, 0, &clock), Decision::CapReached);
        assert_eq!(all.max_ejected(1), 0);
        // A small share still allows one.
        assert_eq!(detector(1, 10).max_ejected(3), 1);
        assert_eq!(detector(0, 50).max_ejected(4), 0, "0 failures: off");
        assert_eq!(detector(1, 50).max_ejected(10), 5);
    }

    #[test]
    fn outcomes_by_code() {
        assert_eq!(Outcome::of(tonic::Code::Unavailable), Outcome::Failed);
        assert_eq!(Outcome::of(tonic::Code::NotFound), Outcome::Answered);
        assert_eq!(Outcome::of(tonic::Code::Internal), Outcome::Answered);
        assert_eq!(Outcome::of(tonic::Code::DeadlineExceeded), Outcome::Neutral);
    }
}
