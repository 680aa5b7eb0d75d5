//! Backends behind the gateway, one module per protocol. The registry keeps upstreams
//! (and their open connections) across reloads when their config did not change.
//! Building an upstream is pure; [`Upstreams::start`] is the one place that spawns its
//! background work.

pub(crate) mod amqp;
pub(crate) mod backoff;
pub(crate) mod breaker;
pub(crate) mod grpc;
pub(crate) mod metadata;
pub(crate) mod retry;

use crate::config::{GatewayConfig, LoadErrors, Location};
use amqp::AmqpUpstream;
use grpc::GrpcUpstream;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The upstreams of one configuration, by name.
#[derive(Debug, Default)]
pub struct Upstreams {
    pub grpc: HashMap<String, Arc<GrpcUpstream>>,
    pub amqp: HashMap<String, Arc<AmqpUpstream>>,
    /// Per-upstream `timeout`, when set.
    pub timeouts: HashMap<String, Duration>,
}

impl Upstreams {
    /// Builds the upstreams of `config`, reusing those of `previous` whose config is the
    /// same (so a reload keeps warm connections).
    pub fn build(config: &GatewayConfig, previous: Option<&Upstreams>) -> Result<Self, LoadErrors> {
        let mut errors = LoadErrors::default();
        let mut upstreams = Upstreams::default();
        if let Some(resolver) = &config.resolver
            && let Err(e) = grpc::discovery::parse_nameservers(resolver)
        {
            errors.push(Location::new(&config.path, 0), e);
        }
        for (name, spanned) in &config.upstreams {
            let location = Location::new(&config.path, spanned.referenced.line());
            let upstream = &spanned.value;
            if let Some(timeout) = upstream.timeout {
                upstreams.timeouts.insert(name.clone(), timeout.0);
            }
            if let Some(amqp) = &upstream.amqp {
                if upstream.grpc.is_some() {
                    errors.push(
                        location,
                        format!("upstream `{name}` has both `grpc:` and `amqp:`"),
                    );
                    continue;
                }
                for (present, key) in [
                    (upstream.retry.is_some(), "retry"),
                    (upstream.circuit_breaker.is_some(), "circuit_breaker"),
                    (upstream.health_check.is_some(), "health_check"),
                    (upstream.outlier.is_some(), "outlier"),
                ] {
                    if present {
                        let message =
                            format!("upstream `{name}`: `{key}` applies to gRPC upstreams only");
                        errors.push(location.clone(), message);
                    }
                }
                // Same `amqp:` as before: keep it, and its live connection.
                let reused = previous
                    .and_then(|p| p.amqp.get(name))
                    .filter(|old| {
                        old.config == *amqp
                            && old.tls_files == crate::tls::client::fingerprint(amqp.tls.as_ref())
                    })
                    .cloned();
                match reused
                    .map(Ok)
                    .unwrap_or_else(|| AmqpUpstream::new(name, amqp).map(Arc::new))
                {
                    Ok(u) => {
                        upstreams.amqp.insert(name.clone(), u);
                    }
                    Err(e) => errors.push(location, e),
                }
                continue;
            }
            let Some(grpc) = &upstream.grpc else {
                if upstream.amqp.is_none() {
                    errors.push(
                        location,
                        format!("upstream `{name}` needs `grpc:` (or `amqp:`)"),
                    );
                }
                continue;
            };
            let reused = previous
                .and_then(|p| p.grpc.get(name))
                .filter(|old| old.same_settings(upstream, config.resolver.as_ref()))
                .cloned();
            let built = reused.map(Ok).unwrap_or_else(|| {
                GrpcUpstream::new(name, grpc, upstream, config.resolver.as_ref()).map(Arc::new)
            });
            match built {
                Ok(u) => {
                    upstreams.grpc.insert(name.clone(), u);
                }
                Err(e) => errors.push(location, e),
            }
        }
        errors.into_result(upstreams)
    }

    /// Starts what runs in the background: AMQP connections, gRPC health checks and DNS
    /// discovery.
    /// Building opens nothing, so `switchboard check` stays offline; the serving gateway
    /// calls this when a table goes live (upstreams kept from the previous table are
    /// already running: starting is once per upstream).
    pub fn start(&self) {
        for upstream in self.amqp.values() {
            upstream.start();
        }
        for upstream in self.grpc.values() {
            upstream.start();
        }
    }
}
