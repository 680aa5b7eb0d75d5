//! A circuit breaker per upstream. Closed: calls pass and outcomes are counted over a
//! rolling window; when at least `min_requests` were seen and the failure share reaches
//! `failure_ratio`, it opens. Open: calls fail at once with 503 UNAVAILABLE, never
//! touching the backend. After `open_for` it is half-open: `half_open_requests` probes go
//! through; if they all succeed it closes, the first failure opens it again.

use crate::config::BreakerConfig;
use crate::error::GatewayError;
use metrics::{Counter, Gauge};
use std::sync::{Arc, Mutex};
use std::time::Duration;
// tokio's clock, so tests can pause and advance time instead of sleeping.
use tokio::time::Instant;
use tonic::Code;

/// Buckets of the rolling window.
const BUCKETS: u32 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
pub struct CircuitBreaker {
    pub config: BreakerConfig,
    inner: Mutex<Inner>,
    state_gauge: Gauge,
    rejected: Counter,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// (bucket index, successes, failures), oldest first.
    window: Vec<(u64, u64, u64)>,
    opened_at: Instant,
    probes_in_flight: u32,
    probe_successes: u32,
    epoch: Instant,
}

/// Whether an outcome counts against the backend. Client errors never do.
pub(crate) fn is_failure(code: Code, trip_on_internal: bool) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
        || (trip_on_internal && code == Code::Internal)
}

impl CircuitBreaker {
    pub fn new(upstream: &str, config: &BreakerConfig) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&config.failure_ratio) || config.failure_ratio == 0.0 {
            return Err(format!(
                "upstream `{upstream}`: circuit_breaker.failure_ratio must be in (0, 1]"
            ));
        }
        // No probe could ever be let through, so an opened breaker would never close.
        if config.half_open_requests == 0 {
            return Err(format!(
                "upstream `{upstream}`: circuit_breaker.half_open_requests must be at least 1"
            ));
        }
        if config.window.0.is_zero() {
            return Err(format!(
                "upstream `{upstream}`: circuit_breaker.window must be positive"
            ));
        }
        let breaker = Self {
            config: config.clone(),
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                window: Vec::with_capacity(BUCKETS as usize + 1),
                opened_at: Instant::now(),
                probes_in_flight: 0,
                probe_successes: 0,
                epoch: Instant::now(),
            }),
            state_gauge: metrics::gauge!("switchboard_circuit_state", "upstream" => upstream.to_string()),
            rejected: metrics::counter!("switchboard_circuit_rejected_total", "upstream" => upstream.to_string()),
        };
        breaker.state_gauge.set(0.0);
        Ok(breaker)
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.advance(&mut inner);
        inner.state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bucket_len(&self) -> Duration {
        self.config.window.0 / BUCKETS
    }

    /// Open → half-open once `open_for` has passed.
    fn advance(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open && inner.opened_at.elapsed() >= self.config.open_for.0
        {
            self.set_state(inner, BreakerState::HalfOpen);
            inner.probes_in_flight = 0;
            inner.probe_successes = 0;
        }
    }

    fn set_state(&self, inner: &mut Inner, state: BreakerState) {
        if inner.state != state {
            tracing::warn!(
                from = inner.state.as_str(),
                to = state.as_str(),
                "circuit breaker state change"
            );
        }
        inner.state = state;
        self.state_gauge.set(match state {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        });
    }

    /// Asks to make a call: a permit, or 503 when open (or half-open with all probes out).
    pub fn acquire(self: &Arc<Self>) -> Result<Permit, GatewayError> {
        let mut inner = self.lock();
        self.advance(&mut inner);
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::HalfOpen
                if inner.probes_in_flight + inner.probe_successes
                    < self.config.half_open_requests =>
            {
                inner.probes_in_flight += 1;
                true
            }
            _ => {
                self.rejected.increment(1);
                return Err(GatewayError::unavailable(
                    "circuit breaker is open: upstream failing",
                ));
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            probe,
            done: false,
        })
    }

    fn record(&self, probe: bool, failure: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            if inner.state != BreakerState::HalfOpen {
                return;
            }
            if failure {
                inner.opened_at = Instant::now();
                self.set_state(&mut inner, BreakerState::Open);
            } else {
                inner.probe_successes += 1;
                if inner.probe_successes >= self.config.half_open_requests {
                    inner.window.clear();
                    self.set_state(&mut inner, BreakerState::Closed);
                }
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            return;
        }
        let bucket =
            (inner.epoch.elapsed().as_nanos() / self.bucket_len().as_nanos().max(1)) as u64;
        inner
            .window
            .retain(|(b, _, _)| b + (BUCKETS as u64) > bucket);
        match inner.window.last_mut() {
            Some((b, ok, bad)) if *b == bucket => {
                if failure {
                    *bad += 1
                } else {
                    *ok += 1
                }
            }
            _ => inner
                .window
                .push((bucket, u64::from(!failure), u64::from(failure))),
        }
        let (ok, bad) = inner
            .window
            .iter()
            .fold((0, 0), |(o, f), (_, ok, bad)| (o + ok, f + bad));
        let total = ok + bad;
        if total >= self.config.min_requests
            && total > 0
            && bad as f64 / total as f64 >= self.config.failure_ratio
        {
            inner.opened_at = Instant::now();
            inner.window.clear();
            self.set_state(&mut inner, BreakerState::Open);
        }
    }
}

/// One admitted call. Report its outcome with `success`/`failure`; a permit dropped
/// without an outcome (the client went away) counts as neither.
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    probe: bool,
    done: bool,
}

impl Permit {
    pub fn record(mut self, code: Code) {
        self.done = true;
        let failure = is_failure(code, self.breaker.config.trip_on_internal);
        self.breaker.record(self.probe, failure);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done && self.probe {
            let mut inner = self.breaker.lock();
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    fn breaker(open_for_ms: u64) -> Arc<CircuitBreaker> {
        Arc::new(
            CircuitBreaker::new(
                "t",
                &BreakerConfig {
                    failure_ratio: 0.5,
                    min_requests: 4,
                    window: ConfigDuration(Duration::from_secs(10)),
                    open_for: ConfigDuration(Duration::from_millis(open_for_ms)),
                    half_open_requests: 2,
                    trip_on_internal: false,
                },
            )
            .unwrap(),
        )
    }

    #[test]
    fn a_breaker_that_could_never_close_is_refused() {
        let config = BreakerConfig {
            failure_ratio: 0.5,
            min_requests: 4,
            window: ConfigDuration(Duration::from_secs(10)),
            open_for: ConfigDuration(Duration::from_secs(1)),
            half_open_requests: 0,
            trip_on_internal: false,
        };
        let error = CircuitBreaker::new("t", &config).err().unwrap();
        assert!(
            error.contains("half_open_requests must be at least 1"),
            "{error}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn walks_through_all_states() {
        let b = breaker(50);
        for code in [
            Code::Ok,
            Code::Unavailable,
            Code::NotFound,
            Code::DeadlineExceeded,
        ] {
            b.acquire().unwrap().record(code);
        }
        assert_eq!(b.state(), BreakerState::Open, "2 of 4 failed");
        assert!(b.acquire().is_err());
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let (p1, p2) = (b.acquire().unwrap(), b.acquire().unwrap());
        assert!(b.acquire().is_err(), "only two probes");
        p1.record(Code::Ok);
        p2.record(Code::Unavailable);
        assert_eq!(b.state(), BreakerState::Open, "a failed probe reopens");
        tokio::time::advance(Duration::from_millis(60)).await;
        b.acquire().unwrap().record(Code::Ok);
        b.acquire().unwrap().record(Code::Ok);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn client_errors_never_trip_and_min_requests_holds() {
        let b = breaker(50);
        for _ in 0..20 {
            b.acquire().unwrap().record(Code::InvalidArgument);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let b = breaker(50);
        for _ in 0..3 {
            b.acquire().unwrap().record(Code::Unavailable);
        }
        assert_eq!(b.state(), BreakerState::Closed, "below min_requests");
    }
}
