//! Load balancing over an upstream's endpoints: round-robin, and active health checks
//! taking a dead endpoint out of the rotation.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;
use support::echo;
use support::gateway::{self, client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_and_health_checks() {
    let (a, b) = (echo::start().await, echo::start().await);
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://{}\", \"http://{}\"] }}\n    health_check: {{ interval: 100ms, timeout: 200ms }}\n",
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
