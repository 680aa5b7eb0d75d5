//! Active health checks (`health_check:`): grpc.health.v1 `Check` on each endpoint every
//! `interval`. An endpoint that does not answer SERVING leaves the round-robin until it
//! does again. Without `health_check`, every endpoint counts as healthy.

use super::Connection;
use super::GrpcUpstream;
use crate::config::HealthCheckConfig;
use futures_util::future::join_all;
use metrics::Gauge;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug)]
pub struct EndpointHealth {
    pub config: Option<HealthCheckConfig>,
    endpoints: Vec<String>,
    healthy: Vec<AtomicBool>,
    gauges: Vec<Gauge>,
}

impl EndpointHealth {
    pub fn new(upstream: &str, endpoints: &[String], config: Option<HealthCheckConfig>) -> Self {
        let gauges: Vec<Gauge> = endpoints
            .iter()
            .map(|e| metrics::gauge!("switchboard_upstream_endpoint_healthy", "upstream" => upstream.to_string(), "endpoint" => e.clone()))
            .collect();
        for gauge in &gauges {
            gauge.set(1.0);
        }
        Self {
            config,
            endpoints: endpoints.to_vec(),
            healthy: endpoints.iter().map(|_| AtomicBool::new(true)).collect(),
            gauges,
        }
    }

    pub fn is_healthy(&self, endpoint: usize) -> bool {
        self.healthy
            .get(endpoint)
            .is_none_or(|h| h.load(Ordering::Relaxed))
    }

    fn set(&self, upstream: &str, endpoint: usize, healthy: bool) {
        let was = self.healthy[endpoint].swap(healthy, Ordering::Relaxed);
        if was != healthy {
            let endpoint_name = &self.endpoints[endpoint];
            if healthy {
                tracing::info!(%upstream, endpoint = %endpoint_name, "endpoint healthy again: back in the balancer");
            } else {
                tracing::warn!(%upstream, endpoint = %endpoint_name, "endpoint unhealthy: out of the balancer");
            }
        }
        self.gauges[endpoint].set(if healthy { 1.0 } else { 0.0 });
    }

    /// (endpoint, healthy) for the admin API.
    pub fn snapshot(&self) -> Vec<(String, bool)> {
        self.endpoints
            .iter()
            .cloned()
            .zip(self.healthy.iter().map(|h| h.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Checks every endpoint each interval until the upstream is dropped (after a reload
/// that replaced it and the last request that used it).
pub async fn run(
    upstream: Weak<GrpcUpstream>,
    connections: Vec<Connection>,
    config: HealthCheckConfig,
) {
    let timeout = config
        .timeout
        .map(|t| t.0)
        .unwrap_or(config.interval.0.min(Duration::from_secs(2)));
    let mut ticker = tokio::time::interval(config.interval.0.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let results = join_all(
            connections
                .iter()
                .map(|c| check(c.clone(), &config.service, timeout)),
        )
        .await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        for (endpoint, healthy) in results.into_iter().enumerate() {
            upstream.health.set(&upstream.name, endpoint, healthy);
        }
    }
}

async fn check(connection: Connection, service: &str, timeout: Duration) -> bool {
    let mut client = HealthClient::new(connection);
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    matches!(
        tokio::time::timeout(timeout, client.check(request)).await,
        Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32
    )
}
