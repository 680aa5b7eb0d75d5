//! DNS discovery (`grpc: { dns: host:port, refresh: 5s }`): the name is resolved every
//! `refresh`, and every A/AAAA address becomes an endpoint. Addresses that disappear
//! drain (see `balancer.rs`); new ones join. A failed or empty answer keeps the last
//! good set (logged and counted): a DNS hiccup must not empty the upstream.
//!
//! The system resolver (`getaddrinfo`, through tokio) by default; with a top-level
//! `resolver: { nameservers: [...] }`, those servers only (hickory, UDP then TCP).

use super::GrpcUpstream;
use crate::config::ResolverConfig;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig as Servers,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::net::{IpAddr, SocketAddr};
use std::sync::Weak;
use std::time::Duration;

/// How often a `dns:` name is resolved again when `refresh` is not set.
pub(crate) const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
/// The shortest `refresh` accepted.
pub(crate) const MIN_REFRESH: Duration = Duration::from_millis(100);
/// Deadline of one resolution with the system resolver, or one query with `resolver:`.
const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// More addresses than this in one answer are cut (each is a connection).
const MAX_ADDRESSES: usize = 64;

/// What a `dns:` upstream resolves: `host:port`, checked at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    pub host: String,
    pub port: u16,
    pub refresh: Duration,
    /// `resolver:` nameservers (empty: the system resolver) and query deadline.
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
}

impl DnsTarget {
    /// `dns` as written (`host:port`, optionally behind `http://`).
    pub fn parse(
        dns: &str,
        refresh: Option<Duration>,
        resolver: Option<&ResolverConfig>,
    ) -> Result<Self, String> {
        let bare = dns.strip_prefix("http://").unwrap_or(dns);
        if bare.contains("://") {
            return Err(format!(
                "`dns: {dns}`: only plaintext (`host:port` or `http://host:port`) is supported"
            ));
        }
        let (host, port) = bare
            .rsplit_once(':')
            .ok_or_else(|| format!("`dns: {dns}` needs a port (`host:port`)"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`dns: {dns}`: `{port}` is not a port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
            return Err(format!("`dns: {dns}` needs a host name"));
        }
        let refresh = refresh.unwrap_or(DEFAULT_REFRESH);
        if refresh < MIN_REFRESH {
            return Err(format!(
                "`refresh` must be at least {}ms",
                MIN_REFRESH.as_millis()
            ));
        }
        let (nameservers, timeout) = match resolver {
            Some(config) => (
                parse_nameservers(config)?,
                config.timeout.map_or(DEFAULT_QUERY_TIMEOUT, |t| t.0),
            ),
            None => (Vec::new(), DEFAULT_QUERY_TIMEOUT),
        };
        Ok(Self {
            host: host.to_string(),
            port,
            refresh,
            nameservers,
            timeout,
        })
    }

    /// The URI calls carry as `:authority` (the name, not the address).
    pub fn authority_uri(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }
}

/// `resolver.nameservers`: `ip` or `ip:port` (53 when absent).
pub(crate) fn parse_nameservers(config: &ResolverConfig) -> Result<Vec<SocketAddr>, String> {
    if config.nameservers.is_empty() {
        return Err("`resolver.nameservers` is empty".into());
    }
    config
        .nameservers
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    format!("`resolver.nameservers`: `{text}` is not an `ip` or `ip:port`")
                })
        })
        .collect()
}

/// Asks the system, or the configured servers.
enum Resolver {
    System,
    Servers(Box<TokioResolver>),
}

impl Resolver {
    fn new(target: &DnsTarget) -> Result<Self, String> {
        if target.nameservers.is_empty() {
            return Ok(Resolver::System);
        }
        let servers = target
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut options = ResolverOpts::default();
        options.timeout = target.timeout;
        options.attempts = 1;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Only the configured servers answer; discovery re-asks them on its own schedule.
        options.use_hosts_file = ResolveHosts::Never;
        hickory_resolver::Resolver::builder_with_config(
            Servers::from_parts(None, Vec::new(), servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map(|r| Resolver::Servers(Box::new(r)))
        .map_err(|e| format!("resolver: {e}"))
    }

    /// The addresses of `target`, sorted and without duplicates; an error for none.
    async fn resolve(&self, target: &DnsTarget) -> Result<Vec<SocketAddr>, String> {
        let mut addresses: Vec<SocketAddr> = match self {
            Resolver::System => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                match tokio::time::timeout(target.timeout, lookup).await {
                    Ok(Ok(found)) => found.take(MAX_ADDRESSES).collect(),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no answer within {:?}", target.timeout)),
                }
            }
            Resolver::Servers(resolver) => {
                resolver.clear_cache();
                // The resolver bounds each query; this bounds the whole lookup (A and AAAA,
                // UDP then TCP).
                let lookup = resolver.lookup_ip(target.host.as_str());
                match tokio::time::timeout(target.timeout.saturating_mul(3), lookup).await {
                    Ok(Ok(found)) => found
                        .iter()
                        .take(MAX_ADDRESSES)
                        .map(|ip| SocketAddr::new(ip, target.port))
                        .collect(),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no answer within {:?}", target.timeout * 3)),
                }
            }
        };
        addresses.sort();
        addresses.dedup();
        if addresses.is_empty() {
            return Err("no addresses in the answer".into());
        }
        Ok(addresses)
    }
}

/// One resolution of `target`, for load-time needs (reflection before the upstream is live).
pub(crate) async fn resolve_once(target: &DnsTarget) -> Result<Vec<SocketAddr>, String> {
    Resolver::new(target)?
        .resolve(target)
        .await
        .map_err(|e| format!("resolving `{}`: {e}", target.host))
}

/// Resolves `target` now and every `refresh`, handing each good answer to the upstream,
/// until the upstream is dropped (a reload replaced it and its last call finished).
pub(crate) async fn run(upstream: Weak<GrpcUpstream>, target: DnsTarget) {
    let Some(name) = upstream.upgrade().map(|u| u.name.clone()) else {
        return;
    };
    // Looked up at each failure (rare), so the recorder installed by then counts it.
    let failed = || {
        metrics::counter!("switchboard_upstream_dns_failures_total", "upstream" => name.clone())
            .increment(1);
    };
    let resolver = match Resolver::new(&target) {
        Ok(resolver) => resolver,
        Err(error) => {
            failed();
            tracing::error!(upstream = %name, %error, "DNS discovery cannot start");
            return;
        }
    };
    let mut failing = false;
    loop {
        let result = resolver.resolve(&target).await;
        let Some(live) = upstream.upgrade() else {
            return;
        };
        match result {
            Ok(addresses) => {
                failing = false;
                live.set_addresses(&target, &addresses);
            }
            Err(error) => {
                failed();
                let kept = live.balancer.endpoints().len();
                // The first failure of a run is a warning; the rest of it, debug.
                if failing {
                    tracing::debug!(upstream = %name, host = %target.host, %error, kept, "DNS resolution failed again");
                } else {
                    tracing::warn!(upstream = %name, host = %target.host, %error, kept, "DNS resolution failed: keeping the last endpoints");
                }
                failing = true;
            }
        }
        drop(live);
        tokio::time::sleep(target.refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    #[test]
    fn targets_and_nameservers() {
        let t = DnsTarget::parse("catalog.internal:50051", None, None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("catalog.internal", 50051));
        assert_eq!(t.refresh, DEFAULT_REFRESH);
        assert_eq!(t.authority_uri(), "http://catalog.internal:50051");
        assert!(t.nameservers.is_empty());
        assert!(
            DnsTarget::parse("http://c:1", Some(Duration::from_secs(1)), None)
                .is_ok_and(|t| t.refresh == Duration::from_secs(1))
        );
        assert!(DnsTarget::parse("catalog.internal", None, None).is_err());
        assert!(DnsTarget::parse("c:port", None, None).is_err());
        assert!(DnsTarget::parse("https://c:1", None, None).is_err());
        assert!(DnsTarget::parse("c:1", Some(Duration::from_millis(1)), None).is_err());

        let resolver = ResolverConfig {
            nameservers: vec!["127.0.0.1:5353".into(), "::1".into()],
            timeout: Some(ConfigDuration(Duration::from_millis(300))),
        };
        let t = DnsTarget::parse("c:1", None, Some(&resolver)).unwrap();
        assert_eq!(
            t.nameservers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(t.timeout, Duration::from_millis(300));
        let bad = ResolverConfig {
            nameservers: vec!["dns.example".into()],
            timeout: None,
        };
        assert!(DnsTarget::parse("c:1", None, Some(&bad)).is_err());
    }
}
