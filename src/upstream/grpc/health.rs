//! Active health checks (`health_check:`): grpc.health.v1 `Check` on each endpoint every
//! `interval`. An endpoint that does not answer SERVING leaves the rotation until it
//! does again. Without `health_check`, every endpoint counts as healthy.

use super::Connection;
use super::GrpcUpstream;
use crate::config::HealthCheckConfig;
use futures_util::future::join_all;
use std::sync::Weak;
use std::time::Duration;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Checks every endpoint each interval until the upstream is dropped (after a reload
/// that replaced it and the last request that used it). The endpoints are those in the
/// list at each round, so endpoints DNS discovery adds are checked too.
pub(crate) async fn run(upstream: Weak<GrpcUpstream>, config: HealthCheckConfig) {
    let timeout = config
        .timeout
        .map(|t| t.0)
        .unwrap_or(config.interval.0.min(Duration::from_secs(2)));
    let mut ticker = tokio::time::interval(config.interval.0.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(endpoints) = upstream.upgrade().map(|u| u.balancer.endpoints()) else {
            return;
        };
        let results = join_all(
            endpoints
                .iter()
                .map(|e| check(e.first_connection().clone(), &config.service, timeout)),
        )
        .await;
        let Some(live) = upstream.upgrade() else {
            return;
        };
        for (endpoint, healthy) in endpoints.iter().zip(results) {
            if endpoint.set_healthy(healthy) {
                if healthy {
                    tracing::info!(upstream = %live.name, endpoint = %endpoint.name, "endpoint healthy again: back in the balancer");
                } else {
                    tracing::warn!(upstream = %live.name, endpoint = %endpoint.name, "endpoint unhealthy: out of the balancer");
                }
            }
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
