//! Load balancing over an upstream's endpoints: round-robin, active health checks taking
//! a dead endpoint out of the rotation, and power of two choices with outlier ejection
//! under steady load while a backend is killed and restarted.

mod support;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::gateway::{self, client};
use support::{echo, shop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_health_checks() {
    let (a, b) = (echo::start().await, echo::start().await);
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://{}\", \"http://{}\"] }}\n    balance: round_robin\n    health_check: {{ interval: 100ms, timeout: 200ms }}\n",
        gateway::echo_protos(),
        a.addr,
        b.addr
    );
    let mappings =
        "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n";
    let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
    let http = client();
    for _ in 0..10 {
        assert_eq!(
            http.get(gw.url("/v1/echo/1"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 5, "round-robin");
    assert_eq!(b.calls.load(Ordering::SeqCst), 5, "round-robin");

    // Stop one endpoint: after a health check or two, every request goes to the other.
    drop(b);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    let health = &upstreams["upstreams"][0]["health"];
    assert_eq!(health[0]["healthy"], true, "{upstreams}");
    assert_eq!(health[1]["healthy"], false, "{upstreams}");
    let before = a.calls.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(
            http.get(gw.url("/v1/echo/1"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "no request lands on the dead endpoint"
        );
    }
    assert_eq!(a.calls.load(Ordering::SeqCst) - before, 10);
}

/// The catalog services of `shops` as one upstream (p2c by default), with quick ejection.
fn catalog_config(shops: &[&support::shop::Shop], extra: &str) -> String {
    let endpoints: Vec<String> = shops
        .iter()
        .map(|s| format!("\"http://{}\"", s.catalog))
        .collect();
    format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n  catalog:\n    grpc: {{ endpoints: [{}] }}\n    timeout: 2s\n{extra}",
        gateway::repo().join("descriptors").display(),
        endpoints.join(", ")
    )
}

const CATALOG_ROUTES: &str =
    "routes:\n  - grpc_service: { upstream: catalog, service: shop.catalog.v1.CatalogService }\n";

/// The admin view of `endpoint` in the first upstream.
fn endpoint_entry<'a>(upstreams: &'a serde_json::Value, endpoint: &str) -> &'a serde_json::Value {
    upstreams["upstreams"][0]["endpoints"]
        .as_array()
        .and_then(|list| list.iter().find(|e| e["endpoint"] == endpoint))
        .unwrap_or(&serde_json::Value::Null)
}

async fn wait_for_state(gw: &gateway::TestGateway, endpoint: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
        if endpoint_entry(&upstreams, endpoint)["state"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{endpoint} never became {state}: {upstreams}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Under steady load, one of three backends is killed: its calls fail over at once (a
/// connect error sent nothing, so the call goes to another endpoint even without
/// `retry:`), it is ejected, and no client sees an error from then on; restarted on the
/// same port, it rejoins when the ejection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_under_load_kill_and_restart() {
    let localhost = IpAddr::from([127, 0, 0, 1]);
    let a = shop::start(localhost, None).await.expect("shop a");
    let b = shop::start(localhost, None).await.expect("shop b");
    let c = shop::start(localhost, None).await.expect("shop c");
    let config = catalog_config(
        &[&a, &b, &c],
        "    outlier: { consecutive_failures: 3, base_ejection: 1s, max_ejected_percent: 50 }\n",
    );
    let gw = gateway::start(&config, &[("m.yaml", CATALOG_ROUTES)]).await;
    let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    assert_eq!(upstreams["upstreams"][0]["balance"], "p2c", "{upstreams}");

    // Steady load: four clients in a loop, every outcome kept with its time.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, outcomes, url) = (stop.clone(), outcomes.clone(), gw.url("/v1/products/1"));
        workers.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let status = match http.get(&url).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                outcomes.lock().unwrap().push((Instant::now(), status));
            }
        }));
    }
    let b_endpoint = format!("http://{}", b.catalog);
    support::wait_until("b takes calls", Duration::from_secs(10), || {
        b.counters.catalog.load(Ordering::Relaxed) > 5
    })
    .await;

    // Kill b: listeners and connections go at once, like a crash.
    let b_ports = [b.catalog.port(), 0, 0, 0, 0];
    drop(b);
    wait_for_state(&gw, &b_endpoint, "ejected").await;
    let ejected_at = Instant::now();
    let metrics = gateway::get_text(gw.admin_url("/metrics")).await;
    let line = format!(
        "switchboard_upstream_endpoint_state{{upstream=\"catalog\",endpoint=\"{b_endpoint}\",state=\"ejected\"}} 1"
    );
    assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    assert!(
        metrics.contains("switchboard_upstream_endpoint_ejections_total{upstream=\"catalog\""),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Restart b on the same port: it rejoins once its ejection ends.
    let b = shop::start(localhost, Some(b_ports))
        .await
        .expect("restart shop b on its port");
    support::wait_until("restarted b takes calls", Duration::from_secs(15), || {
        b.counters.catalog.load(Ordering::Relaxed) > 5
    })
    .await;
    wait_for_state(&gw, &b_endpoint, "healthy").await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let outcomes = outcomes.lock().unwrap().clone();
    let after: Vec<u16> = outcomes
        .iter()
        .filter(|(at, _)| *at > ejected_at)
        .map(|(_, status)| *status)
        .collect();
    let errors = after.iter().filter(|s| **s != 200).count();
    assert!(after.len() > 20, "too little load: {} calls", after.len());
    assert_eq!(errors, 0, "client errors after the ejection: {after:?}");
    let upstreams = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    assert!(
        endpoint_entry(&upstreams, &b_endpoint)["ejections"].as_u64() >= Some(1),
        "{upstreams}"
    );
    assert!(a.counters.catalog.load(Ordering::Relaxed) > 0);
    assert!(c.counters.catalog.load(Ordering::Relaxed) > 0);
}
