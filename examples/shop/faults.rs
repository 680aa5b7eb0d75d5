//! Misbehaviour on demand, for tests of what the gateway does when a backend is slow or
//! failing: a delay before answering and/or a forced gRPC error, for every call of a
//! service or only for one key (a product id, a SKU). Off unless a test sets it; the demo
//! never does.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

/// The faults of the services that take part in compositions.
#[derive(Debug, Default)]
pub struct Faults {
    pub catalog: Fault,
    pub reviews: Fault,
    pub inventory: Fault,
}

/// What one service does wrong: `all` applies to every call, `by_key` overrides it.
#[derive(Debug, Default)]
pub struct Fault {
    settings: Mutex<Settings>,
    /// Calls inside `apply` now, and the most there ever were at once.
    active: AtomicU64,
    peak: AtomicU64,
    /// When each call (by key) arrived, oldest first; bounded.
    arrivals: Mutex<Vec<(String, Instant)>>,
}

/// Arrivals kept per service (a test needs the last few).
const MAX_ARRIVALS: usize = 1024;

#[derive(Debug, Default)]
struct Settings {
    all: Option<Behaviour>,
    by_key: HashMap<String, Behaviour>,
}

#[derive(Debug, Clone, Copy)]
struct Behaviour {
    delay: Duration,
    error: Option<Code>,
}

impl Fault {
    /// Every call waits `delay`, then fails with `error` (if any).
    pub fn set(&self, delay: Duration, error: Option<Code>) {
        self.lock().all = Some(Behaviour { delay, error });
    }

    /// Calls for `key` wait `delay`, then fail with `error` (if any).
    pub fn set_for(&self, key: &str, delay: Duration, error: Option<Code>) {
        self.lock()
            .by_key
            .insert(key.to_owned(), Behaviour { delay, error });
    }

    pub fn clear(&self) {
        *self.lock() = Settings::default();
    }

    /// When each call arrived, with its key, oldest first.
    pub fn arrivals(&self) -> Vec<(String, Instant)> {
        self.arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The most calls that were waiting in `apply` at the same time.
    pub fn peak_concurrency(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Called first by a handler: waits and/or fails as configured for `key`.
    pub async fn apply(&self, key: &str) -> Result<(), Status> {
        {
            let mut arrivals = self.arrivals.lock().unwrap_or_else(|e| e.into_inner());
            if arrivals.len() < MAX_ARRIVALS {
                arrivals.push((key.to_owned(), Instant::now()));
            }
        }
        let behaviour = {
            let settings = self.lock();
            settings.by_key.get(key).copied().or(settings.all)
        };
        let now = self.active.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        let _active = Active(&self.active);
        let Some(behaviour) = behaviour else {
            return Ok(());
        };
        if !behaviour.delay.is_zero() {
            tokio::time::sleep(behaviour.delay).await;
        }
        match behaviour.error {
            Some(code) => Err(Status::new(code, "injected failure")),
            None => Ok(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Counts a call out of `apply` however it ends (also when the client went away).
struct Active<'a>(&'a AtomicU64);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
