//! Picking an endpoint for each call: power of two choices on calls in flight (default)
//! or round-robin, over the endpoints in rotation — not failing active health checks,
//! not ejected as outliers (`outlier.rs`).
//!
//! The endpoint list sits behind an `ArcSwap`: DNS discovery swaps in a new list while
//! calls pick from the old one without a lock. An endpoint that leaves the list drains:
//! calls already on it keep their `Arc` (and its connection) until they finish; new
//! calls no longer see it.

use super::Connection;
use super::outlier::{Clock, Decision, Detector, EndpointOutlier, Outcome};
use crate::config::{Balance, OutlierConfig};
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One backend address with its connections and its standing in the balancer.
#[derive(Debug)]
pub struct Endpoint {
    /// How it shows in logs, the admin API and metric labels: the configured URI, or
    /// `ip:port` for a resolved address.
    pub name: String,
    connections: Box<[Connection]>,
    next_connection: AtomicUsize,
    in_flight: AtomicUsize,
    /// The last active health check's verdict (true without `health_check`).
    healthy: AtomicBool,
    /// Left the list (DNS stopped naming it): finishing its calls, taking no new ones.
    draining: AtomicBool,
    pub outlier: EndpointOutlier,
}

/// An endpoint's standing, as the admin API and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    Unhealthy,
    Ejected,
    Draining,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Healthy,
        State::Unhealthy,
        State::Ejected,
        State::Draining,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Ejected => "ejected",
            State::Draining => "draining",
        }
    }
}

impl Endpoint {
    /// An endpoint over `connections` (at least one).
    pub fn new(name: String, connections: Vec<Connection>) -> Self {
        Self {
            name,
            connections: connections.into_boxed_slice(),
            next_connection: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            outlier: EndpointOutlier::default(),
        }
    }

    /// The connection health checks use.
    pub fn first_connection(&self) -> &Connection {
        &self.connections[0]
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records an active health check; true when the verdict changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn state(&self, clock: &Clock) -> State {
        if self.draining.load(Ordering::Relaxed) {
            State::Draining
        } else if self.outlier.is_ejected(clock) {
            State::Ejected
        } else if !self.is_healthy() {
            State::Unhealthy
        } else {
            State::Healthy
        }
    }

    fn in_rotation(&self, clock: &Clock) -> bool {
        self.is_healthy() && !self.outlier.is_ejected(clock)
    }
}

/// A call's hold on an endpoint (and one of its connections): counted in flight until
/// dropped.
#[derive(Debug)]
pub struct Lease {
    endpoint: Arc<Endpoint>,
    connection: usize,
}

impl Lease {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        let n = endpoint.connections.len();
        let connection = if n == 1 {
            0
        } else {
            endpoint.next_connection.fetch_add(1, Ordering::Relaxed) % n
        };
        Self {
            endpoint,
            connection,
        }
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    pub fn connection(&self) -> &Connection {
        &self.endpoint.connections[self.connection]
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one upstream and how calls are spread over them.
#[derive(Debug)]
pub struct Balancer {
    pub upstream: String,
    pub policy: Balance,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Endpoints that left the list, while calls still hold them (for the admin view).
    draining: Mutex<Vec<Weak<Endpoint>>>,
    next: AtomicUsize,
    pub detector: Detector,
    pub clock: Clock,
}

impl Balancer {
    pub fn new(
        upstream: &str,
        policy: Balance,
        outlier: OutlierConfig,
        endpoints: Vec<Arc<Endpoint>>,
    ) -> Self {
        Self {
            upstream: upstream.to_string(),
            policy,
            endpoints: ArcSwap::from_pointee(endpoints),
            draining: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            detector: Detector::new(outlier),
            clock: Clock::new(),
        }
    }

    /// The endpoints in the list now.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Endpoints that left the list but still have calls in flight.
    pub fn draining(&self) -> Vec<Arc<Endpoint>> {
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.retain(|weak| weak.strong_count() > 0);
        draining.iter().filter_map(Weak::upgrade).collect()
    }

    /// Replaces the list. Endpoints named in both keep their state and connections;
    /// those that left drain.
    pub fn replace(&self, endpoints: Vec<Arc<Endpoint>>) {
        let old = self.endpoints.swap(Arc::new(endpoints));
        let new = self.endpoints.load();
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        for endpoint in old.iter() {
            if !new.iter().any(|e| Arc::ptr_eq(e, endpoint)) {
                endpoint.draining.store(true, Ordering::Relaxed);
                tracing::info!(upstream = %self.upstream, endpoint = %endpoint.name, in_flight = endpoint.in_flight(), "endpoint left: draining");
                draining.push(Arc::downgrade(endpoint));
            }
        }
        for endpoint in new.iter() {
            endpoint.draining.store(false, Ordering::Relaxed);
        }
        draining.retain(|weak| {
            weak.upgrade()
                .is_some_and(|e| e.draining.load(Ordering::Relaxed))
        });
    }

    /// An endpoint for the next call, avoiding `tried` (endpoints this call already
    /// failed on). Endpoints in rotation first; when none is, any endpoint (failing
    /// open beats refusing everything). `None` when the list is empty or all were tried.
    pub fn pick(&self, tried: &[Arc<Endpoint>]) -> Option<Lease> {
        let list = self.endpoints.load();
        let fresh = |e: &Arc<Endpoint>| !tried.iter().any(|t| Arc::ptr_eq(t, e));
        let usable = |e: &Arc<Endpoint>| e.in_rotation(&self.clock) && fresh(e);
        let chosen = match self.policy {
            Balance::P2c => self.two_choices(&list, usable),
            Balance::RoundRobin => self.round_robin(&list, usable),
        }
        .or_else(|| self.round_robin(&list, fresh))?;
        Some(Lease::new(chosen.clone()))
    }

    /// Two endpoints at random, the one with fewer calls in flight.
    fn two_choices<'a>(
        &self,
        list: &'a [Arc<Endpoint>],
        usable: impl Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = list.len();
        match n {
            0 => return None,
            1 => return list.first().filter(|e| usable(e)),
            _ => {}
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (first, second) = (&list[a], &list[b]);
        match (usable(first), usable(second)) {
            (true, true) if second.in_flight() < first.in_flight() => Some(second),
            (true, _) => Some(first),
            (false, true) => Some(second),
            // Both out: the first usable one from a random start.
            (false, false) => (1..n).map(|k| &list[(a + k) % n]).find(|e| usable(e)),
        }
    }

    fn round_robin<'a>(
        &self,
        list: &'a [Arc<Endpoint>],
        usable: impl Fn(&Arc<Endpoint>) -> bool,
    ) -> Option<&'a Arc<Endpoint>> {
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| &list[(start + k) % n]).find(|e| usable(e))
    }

    /// Records what a call on `endpoint` came to; ejects it when it failed once too often.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        if outcome == Outcome::Answered && endpoint.outlier.consecutive_failures() == 0 {
            return;
        }
        let list = self.endpoints.load();
        if endpoint.draining.load(Ordering::Relaxed) {
            return;
        }
        let decision = self.detector.report(
            &endpoint.outlier,
            outcome,
            list.iter().map(|e| &e.outlier),
            &self.clock,
        );
        match decision {
            Decision::Ejected(duration) => tracing::warn!(
                upstream = %self.upstream,
                endpoint = %endpoint.name,
                ?duration,
                ejections = endpoint.outlier.ejections(),
                "endpoint ejected after consecutive failures"
            ),
            Decision::CapReached => tracing::debug!(
                upstream = %self.upstream,
                endpoint = %endpoint.name,
                "endpoint failing but not ejected: max_ejected_percent reached"
            ),
            Decision::Stays => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use std::time::Duration;

    fn endpoint(name: &str) -> Arc<Endpoint> {
        let connection = Connection::new(&format!("http://{name}"), None).unwrap();
        Arc::new(Endpoint::new(name.to_string(), vec![connection]))
    }

    fn balancer(policy: Balance, names: &[&str]) -> Balancer {
        let outlier = OutlierConfig {
            consecutive_failures: 2,
            base_ejection: ConfigDuration(Duration::from_secs(10)),
            ..OutlierConfig::default()
        };
        Balancer::new(
            "test",
            policy,
            outlier,
            names.iter().map(|n| endpoint(n)).collect(),
        )
    }

    fn picks(b: &Balancer, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| b.pick(&[]).unwrap().endpoint().name.clone())
            .collect()
    }

    #[test]
    fn round_robin_takes_turns() {
        let b = balancer(Balance::RoundRobin, &["a:1", "b:1", "c:1"]);
        assert_eq!(
            picks(&b, 6),
            ["a:1", "b:1", "c:1", "a:1", "b:1", "c:1"].map(String::from)
        );
    }

    #[test]
    fn two_choices_prefers_fewer_in_flight() {
        // With two endpoints both are always sampled: a busy one is never picked.
        let b = balancer(Balance::P2c, &["a:1", "b:1"]);
        let held = b.pick(&[]).unwrap();
        let busy = held.endpoint().name.clone();
        for _ in 0..20 {
            let lease = b.pick(&[]).unwrap();
            assert_ne!(
                lease.endpoint().name,
                busy,
                "the busier endpoint is avoided"
            );
        }
        drop(held);
        assert!(b.endpoints().iter().all(|e| e.in_flight() == 0));
        let seen = picks(&b, 50);
        assert!(seen.iter().any(|n| n == "a:1") && seen.iter().any(|n| n == "b:1"));
    }

    #[test]
    fn in_flight_counts_leases() {
        let b = balancer(Balance::P2c, &["a:1"]);
        let one = b.pick(&[]).unwrap();
        let two = b.pick(&[]).unwrap();
        assert_eq!(one.endpoint().in_flight(), 2);
        drop(one);
        assert_eq!(two.endpoint().in_flight(), 1);
        drop(two);
        assert_eq!(b.endpoints()[0].in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_and_ejected_endpoints_leave_the_rotation() {
        let b = balancer(Balance::P2c, &["a:1", "b:1", "c:1"]);
        let list = b.endpoints();
        list[0].set_healthy(false);
        b.report(&list[1], Outcome::Failed);
        b.report(&list[1], Outcome::Failed);
        assert_eq!(list[1].state(&b.clock), State::Ejected);
        assert_eq!(list[0].state(&b.clock), State::Unhealthy);
        assert!(picks(&b, 50).iter().all(|n| n == "c:1"));
        // Everything out: fail open rather than refuse.
        list[2].set_healthy(false);
        assert_eq!(picks(&b, 10).len(), 10);
        // The ejection ends by itself.
        list[0].set_healthy(true);
        list[2].set_healthy(true);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(list[1].state(&b.clock), State::Healthy);
        let seen = picks(&b, 100);
        assert!(seen.iter().any(|n| n == "b:1"), "b is back");
    }

    #[test]
    fn tried_endpoints_are_avoided() {
        let b = balancer(Balance::P2c, &["a:1", "b:1"]);
        let list = b.endpoints();
        for _ in 0..20 {
            let lease = b.pick(std::slice::from_ref(&list[0])).unwrap();
            assert_eq!(lease.endpoint().name, "b:1");
        }
        assert!(b.pick(&list).is_none(), "all tried");
    }

    #[test]
    fn replaced_endpoints_drain_and_survivors_keep_their_state() {
        let b = balancer(Balance::RoundRobin, &["a:1", "b:1"]);
        let list = b.endpoints();
        let held = b.pick(std::slice::from_ref(&list[1])).unwrap();
        assert_eq!(held.endpoint().name, "a:1");
        list[1].set_healthy(false);
        // `a` leaves, `c` joins, `b` stays (same Arc).
        b.replace(vec![list[1].clone(), endpoint("c:1")]);
        assert_eq!(held.endpoint().state(&b.clock), State::Draining);
        assert_eq!(b.draining().len(), 1);
        assert!(
            picks(&b, 10).iter().all(|n| n == "c:1"),
            "b unhealthy, a gone"
        );
        assert!(!b.endpoints()[0].is_healthy(), "b kept its state");
        drop(held);
        drop(list);
        assert!(b.draining().is_empty(), "drained once its calls ended");
    }
}
