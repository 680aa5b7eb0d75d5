//! The request pipeline end to end (src/proxy/mod.rs): the order of its phases, the one
//! deadline per request, the backend metadata only the gateway sets, and errors that keep
//! internal causes out of client answers. Each test here failed before the pipeline.

mod support;

use serde_json::Value;
use std::sync::atomic::Ordering;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client};

const ROUTES: &str = r#"
routes:
  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }
  - http: { post: "/ping:check", body: "*" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
  - http: { get: "/guarded/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    auth: required
    rate_limit: per_ip
"#;

const SECTIONS: &str = r#"
auth:
  jwt:
    issuer: https://auth.test
    audiences: [shop-api]
    algorithms: [HS256]
    secret: a-long-enough-test-secret-0123456789
    forward_claims: { sub: x-user-id }
rate_limits:
  store: memory
  policies:
    per_ip: { algorithm: fixed_window, rate: 2, per: 1m, key: client_ip }
"#;

async fn setup(upstream_extra: &str) -> (EchoServer, TestGateway) {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{SECTIONS}\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, upstream_extra),
    );
    let gw = gateway::start(&config, &[("m.yaml", ROUTES)]).await;
    (echo, gw)
}

async fn get(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = client().get(gw.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

fn last_metadata(echo: &EchoServer) -> http::HeaderMap {
    echo.last_metadata
        .lock()
        .unwrap()
        .clone()
        .expect("the backend saw a call")
}

/// A client's own short deadline is its choice: the 504s it causes never open the
/// breaker for everyone else. A zero or malformed deadline is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_deadlines_never_open_the_breaker() {
    let breaker = "    timeout: 5s\n    circuit_breaker: { failure_ratio: 0.5, min_requests: 4, window: 10s, open_for: 30s, half_open_requests: 1 }\n";
    let (echo, gw) = setup(breaker).await;
    for _ in 0..8 {
        let (status, body) = get(
            &gw,
            "/v1/echo/1",
            &[
                ("x-request-timeout", "30ms"),
                ("grpc-metadata-x-echo-delay-ms", "400"),
            ],
        )
        .await;
        assert_eq!((status, body["code"].as_i64()), (504, Some(4)), "{body}");
    }
    let (status, body) = get(&gw, "/v1/echo/1", &[]).await;
    assert_eq!(status, 200, "breaker stayed closed: {body}");

    let calls = echo.calls.load(Ordering::SeqCst);
    for (name, value) in [
        ("x-request-timeout", "0"),
        ("grpc-timeout", "1n"),
        ("grpc-timeout", "soon"),
    ] {
        let (status, body) = get(&gw, "/v1/echo/1", &[(name, value)]).await;
        assert_eq!(
            (status, body["code"].as_i64()),
            (400, Some(3)),
            "{name}: {value}"
        );
    }
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls,
        "refused before the backend"
    );

    // Backend-caused deadlines still count: the breaker does its job.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (status, _) = get(&gw, "/v1/echo/1", &[("grpc-metadata-x-echo-fail", "4")]).await;
        statuses.push(status);
    }
    assert_eq!(statuses[..3], [504, 504, 504], "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&503),
        "the breaker opened: {statuses:?}"
    );
    let (status, body) = get(&gw, "/v1/echo/1", &[]).await;
    assert_eq!((status, body["code"].as_i64()), (503, Some(14)), "{body}");
}

/// A server stream outlives the route deadline, so it is sent no `grpc-timeout`
/// (grpc-go and grpc-java servers would cut it); unary calls still carry one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_no_grpc_timeout() {
    let (echo, gw) = setup("    timeout: 2s\n").await;
    let response = client()
        .get(gw.url("/v1/echo/1/stream?small=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(last_metadata(&echo).get("grpc-timeout").is_none());

    let (status, _) = get(&gw, "/v1/echo/1", &[]).await;
    assert_eq!(status, 200);
    assert!(last_metadata(&echo).get("grpc-timeout").is_some());
}

/// `/ping:check`: a one-segment path with a custom verb is served, not 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_segment_path_with_a_verb_is_routed() {
    let (_echo, gw) = setup("").await;
    let response = client()
        .post(gw.url("/ping:check"))
        .body(r#"{"id":"p"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["id"], "p");
}

/// Only the gateway sets `authorization` and the trace toward a backend: a client's
/// `Grpc-Metadata-Authorization` is a forged token and never arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_authorization_metadata_never_reaches_the_backend() {
    let (echo, gw) = setup("").await;
    let (status, _) = get(
        &gw,
        "/v1/echo/1",
        &[
            ("grpc-metadata-authorization", "Bearer forged"),
            ("grpc-metadata-x-trace-id", "forged"),
            ("grpc-metadata-x-tenant", "t1"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let metadata = last_metadata(&echo);
    assert!(metadata.get("authorization").is_none(), "{metadata:?}");
    assert_ne!(metadata["x-trace-id"], "forged");
    assert_eq!(metadata["x-tenant"], "t1", "ordinary metadata still passes");
}

/// An unreachable backend is a 503 whose body names no address: that goes to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_name_no_internal_address() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", closed, ""),
    );
    let gw = gateway::start(
        &config,
        &[(
            "m.yaml",
            "routes:\n  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService }\n",
        )],
    )
    .await;
    for _ in 0..2 {
        let response = client().get(gw.url("/v1/echo/1")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("x-trace-id"));
        let body = response.text().await.unwrap();
        assert!(!body.contains("127.0.0.1"), "{body}");
        assert!(!body.contains(&closed.port().to_string()), "{body}");
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status["code"], 14);
    }
}

/// Limits keyed by the client address run before the token check: a flood of bad
/// tokens is rate limited instead of costing a signature check each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_limits_run_before_authentication() {
    let (echo, gw) = setup("").await;
    let bad = [("authorization", "Bearer not.a.token")];
    let (first, _) = get(&gw, "/guarded/1", &bad).await;
    let (second, _) = get(&gw, "/guarded/1", &bad).await;
    assert_eq!((first, second), (401, 401));
    let response = client()
        .get(gw.url("/guarded/1"))
        .header("authorization", "Bearer not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["ratelimit-remaining"], "0");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 0);
}
