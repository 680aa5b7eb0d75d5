//! DNS discovery: a `dns:` upstream resolved through `resolver: { nameservers }` (a DNS
//! server in the test whose answers change): new addresses join, removed ones drain
//! (their calls in flight finish), a failed resolution keeps the last good set.

mod support;

use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::dns::DnsServer;
use support::gateway::{self, client};
use support::shop;

const ROUTES: &str =
    "routes:\n  - grpc_service: { upstream: catalog, service: shop.catalog.v1.CatalogService }\n";

/// (endpoint, state) of the catalog upstream, in the admin view's order.
async fn endpoints(gw: &gateway::TestGateway) -> Vec<(String, String)> {
    let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    upstreams["upstreams"][0]["endpoints"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|e| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (text(&e["endpoint"]), text(&e["state"]))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_endpoints(gw: &gateway::TestGateway, expected: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = endpoints(gw).await;
        if seen
            .iter()
            .map(|(e, s)| (e.as_str(), s.as_str()))
            .eq(expected.iter().copied())
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "endpoints {seen:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_follow_the_dns_answers() {
    let one = IpAddr::from([127, 0, 0, 1]);
    let two = IpAddr::from([127, 0, 0, 2]);
    // Two catalog backends on the same port of two loopback addresses: one name, two A
    // records, as a headless service would have.
    let a = shop::start(one, None).await.expect("shop on 127.0.0.1");
    let port = a.catalog.port();
    let b = shop::start(two, Some([port, 0, 0, 0, 0]))
        .await
        .expect("shop on 127.0.0.2 (the whole of 127.0.0.0/8 is loopback on Linux)");
    let dns = DnsServer::start(&[one]).await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nresolver: {{ nameservers: [\"{}\"], timeout: 500ms }}\nupstreams:\n  catalog:\n    grpc: {{ dns: \"catalog.shop.test:{port}\", refresh: 100ms }}\n    timeout: 5s\n",
        gateway::repo().join("descriptors").display(),
        dns.addr,
    );
    let gw = gateway::start(&config, &[("m.yaml", ROUTES)]).await;
    let (ep_a, ep_b) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    wait_for_endpoints(&gw, &[(ep_a.as_str(), "healthy")]).await;
    let http = client();
    let get = |path: &'static str| {
        let request = http.get(gw.url(path));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    for _ in 0..10 {
        assert_eq!(get("/v1/products/1").await, 200);
    }
    assert_eq!(a.counters.catalog.load(Ordering::SeqCst), 10);
    assert_eq!(b.counters.catalog.load(Ordering::SeqCst), 0);

    // A second address joins.
    dns.set(&[one, two]);
    wait_for_endpoints(
        &gw,
        &[(ep_a.as_str(), "healthy"), (ep_b.as_str(), "healthy")],
    )
    .await;
    for _ in 0..40 {
        assert_eq!(get("/v1/products/1").await, 200);
    }
    assert!(
        b.counters.catalog.load(Ordering::SeqCst) > 0,
        "the new endpoint takes calls"
    );

    // The first one leaves while a slow call is on it: it drains, and the call finishes.
    a.faults
        .catalog
        .set_for("2", Duration::from_millis(1500), None);
    b.faults
        .catalog
        .set_for("2", Duration::from_millis(1500), None);
    let slow = tokio::spawn({
        let request = http.get(gw.url("/v1/products/2"));
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let arrived = |s: &shop::Shop| s.faults.catalog.arrivals().iter().any(|(k, _)| k == "2");
    support::wait_until("the slow call arrives", Duration::from_secs(5), || {
        arrived(&a) || arrived(&b)
    })
    .await;
    let slow_on_a = arrived(&a);
    let (stays, leaves, stays_shop, leaves_shop) = if slow_on_a {
        (&ep_b, &ep_a, &b, &a)
    } else {
        (&ep_a, &ep_b, &a, &b)
    };
    dns.set(&[if slow_on_a { two } else { one }]);
    wait_for_endpoints(
        &gw,
        &[(stays.as_str(), "healthy"), (leaves.as_str(), "draining")],
    )
    .await;
    let before = leaves_shop.counters.catalog.load(Ordering::SeqCst);
    let stays_before = stays_shop.counters.catalog.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get("/v1/products/1").await, 200);
    }
    assert_eq!(
        leaves_shop.counters.catalog.load(Ordering::SeqCst),
        before,
        "a draining endpoint takes no new calls"
    );
    assert_eq!(
        stays_shop.counters.catalog.load(Ordering::SeqCst) - stays_before,
        10
    );
    assert_eq!(slow.await.unwrap(), 200, "the call in flight finished");
    wait_for_endpoints(&gw, &[(stays.as_str(), "healthy")]).await;

    // DNS fails: the last good set stays, and the failures are counted. (The binary
    // installs the metrics recorder at start-up; in-process, the first scrape does.)
    gateway::get_text(gw.admin_url("/metrics")).await;
    dns.fail(true);
    let queries = dns.queries.load(Ordering::SeqCst);
    support::wait_until("a few failed resolutions", Duration::from_secs(5), || {
        dns.queries.load(Ordering::SeqCst) > queries + 4
    })
    .await;
    assert_eq!(
        endpoints(&gw).await,
        [(stays.clone(), "healthy".to_string())]
    );
    assert_eq!(get("/v1/products/1").await, 200);
    let metrics = gateway::get_text(gw.admin_url("/metrics")).await;
    let failures = metrics
        .lines()
        .find(|l| l.starts_with("switchboard_upstream_dns_failures_total{upstream=\"catalog\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "{metrics}");
    // And the endpoint series follow the live set.
    assert!(
        metrics.contains(&format!(
            "switchboard_upstream_endpoint_in_flight{{upstream=\"catalog\",endpoint=\"{stays}\"}} 0"
        )),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&format!("endpoint=\"{leaves}\"")),
        "{metrics}"
    );
    dns.fail(false);
}

/// A `dns:` upstream is refused at load when it is malformed or combined with `endpoints`.
#[tokio::test]
async fn bad_dns_settings_are_refused() {
    let dir = gateway::TempDir::new("dns-refused");
    let path = dir.write(
        "switchboard.yaml",
        "resolver: { nameservers: [\"not-an-ip\"] }\nupstreams:\n  a:\n    grpc: { dns: \"a.test\" }\n  b:\n    grpc: { dns: \"b.test:1\", endpoints: [\"http://127.0.0.1:1\"] }\n  c:\n    grpc: { endpoints: [\"http://127.0.0.1:1\"], refresh: 1s }\n  d:\n    grpc: { endpoints: [\"http://127.0.0.1:1\"] }\n    outlier: { max_ejected_percent: 150 }\n",
    );
    gateway::assert_refused(
        &path,
        &[
            "`resolver.nameservers`: `not-an-ip`",
            "`dns: a.test` needs a port",
            "`endpoints` and `dns` exclude each other",
            "`refresh` applies to `dns` only",
            "`outlier.max_ejected_percent` is at most 100",
        ],
    )
    .await;
}
