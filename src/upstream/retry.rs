//! Retries for idempotent calls: only on UNAVAILABLE (which includes connect errors),
//! with jittered exponential backoff, within the caller's deadline, and within a budget
//! so that retries add at most a set share of load — a failing backend is not hammered.

use crate::config::RetryConfig;
use crate::upstream::backoff::{Backoff, Jitter};
use std::sync::Mutex;
use std::time::Duration;
use tonic::Code;

#[derive(Debug)]
pub struct RetryPolicy {
    pub config: RetryConfig,
    budget: Mutex<f64>,
}

/// Retries the budget always allows, so a quiet upstream can still retry.
const BUDGET_FLOOR: f64 = 10.0;
/// The budget saves up at most this many retries.
const BUDGET_CAP: f64 = 100.0;

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            config: config.clone(),
            budget: Mutex::new(BUDGET_FLOOR),
        }
    }

    /// Every first attempt earns `budget` of a retry.
    pub fn deposit(&self) {
        let mut balance = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        *balance = (*balance + self.config.budget).min(BUDGET_CAP);
    }

    /// Whether attempt number `retry` (1-based) may happen after `code`, spending budget.
    pub fn should_retry(&self, retry: u32, code: Code) -> bool {
        if code != Code::Unavailable || retry > self.config.attempts {
            return false;
        }
        let mut balance = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if *balance < 1.0 {
            return false;
        }
        *balance -= 1.0;
        true
    }

    /// Backoff before retry number `retry` (1-based): base × 2^(retry−1), ±50% jitter.
    pub fn backoff(&self, retry: u32) -> Duration {
        let base = self.config.backoff.0;
        Backoff::new(base, base.saturating_mul(1 << 10), Jitter::Around)
            .delay(retry.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    #[test]
    fn only_unavailable_and_within_attempts_and_budget() {
        let policy = RetryPolicy::new(&RetryConfig {
            attempts: 2,
            backoff: ConfigDuration(Duration::from_millis(10)),
            budget: 0.0,
        });
        assert!(!policy.should_retry(1, Code::Internal));
        assert!(!policy.should_retry(1, Code::DeadlineExceeded));
        assert!(policy.should_retry(1, Code::Unavailable));
        assert!(!policy.should_retry(3, Code::Unavailable));
        // The floor of the budget runs out without deposits.
        let spent = (0..20)
            .filter(|_| policy.should_retry(1, Code::Unavailable))
            .count();
        assert_eq!(spent, 9);
        let b = policy.backoff(2);
        assert!(
            b >= Duration::from_millis(10) && b <= Duration::from_millis(30),
            "{b:?}"
        );
    }
}
