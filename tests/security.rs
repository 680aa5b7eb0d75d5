//! The holes of issue 11, each reproduced against a real gateway (real echo backend,
//! real RabbitMQ, raw sockets where a polite client would not misbehave) and shown closed.
//! Every test here fails on the code before the fixes (2aadebb): most by the old
//! behaviour, some because the config keys they set did not exist.

mod support;

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use lapin::options::BasicGetOptions;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::echo::{self, EchoServer};
use support::gateway::{self, TempDir, TestGateway, client, raw_request, repo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ROUTES: &str = r#"
routes:
  - grpc_service: { upstream: echo, service: test.echo.v1.EchoService, unannotated: post }
  - http: { put: "/v1/labels/{id}", body: "labels" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Plain }
  - websocket: "/ws/echo/chat"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
  - websocket: "/ws/private/chat"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
    auth: required
"#;

const SECRET: &str = "a-long-enough-test-secret-0123456789";

fn auth_section() -> String {
    format!(
        "auth:\n  jwt:\n    issuer: https://auth.test\n    audiences: [api]\n    algorithms: [HS256]\n    secret: {SECRET}\n"
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(exp: u64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u1", "iss": "https://auth.test", "aud": "api", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn setup(limits: &str, extra: &str) -> (EchoServer, TestGateway) {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nlimits: {{ {limits} }}\n{}{extra}\nupstreams:\n{}",
        gateway::echo_protos(),
        auth_section(),
        gateway::grpc_upstream("echo", echo.addr, "    timeout: 5s\n"),
    );
    let gw = gateway::start(&config, &[("m.yaml", ROUTES)]).await;
    (echo, gw)
}

async fn get(gw: &TestGateway, path: &str) -> (u16, Value) {
    let response = client().get(gw.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn post_json(gw: &TestGateway, path: &str, body: &str) -> (u16, Value) {
    let response = client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response (e.g. 408) before the close is fine: keep reading.
            Ok(Ok(_)) => continue,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Item 2: field paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_query_field_path_is_400_not_a_crash() {
    let (_echo, gw) = setup("max_uri: 128KiB, max_header_bytes: 256KiB", "").await;
    // `Nested` nests itself: 5,000 levels overflowed the stack (process abort) before.
    let deep = format!("/v1/echo/1?nested.{}name=x", "child.".repeat(5000));
    let (status, body) = get(&gw, &deep).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 3, "{body}");
    // Just under the bound still works, and so does the gateway.
    let fine = format!("/v1/echo/1?nested.{}name=x", "child.".repeat(30));
    let (status, body) = get(&gw, &fine).await;
    assert_eq!(status, 200, "{body}");
    let mut level = &body["nested"];
    for _ in 0..30 {
        level = &level["child"];
    }
    assert_eq!(level["name"], "x", "{body}");
}

// ---------------------------------------------------------------------------------------
// Item 3: slowloris and header size

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let (_echo, gw) = setup("max_header_bytes: 16KiB", "").await;
    let big = "a".repeat(20 << 10);
    let request =
        format!("GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let (status, _, _) = raw_request(gw.addr, request.as_bytes()).await;
    assert_eq!(status, 431);
    let fits = format!(
        "GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 << 10)
    );
    let (status, _, _) = raw_request(gw.addr, fits.as_bytes()).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_dropped() {
    let (_echo, gw) = setup("header_read_timeout: 1s, idle_timeout: 1s", "").await;
    let started = Instant::now();

    // Silent: connects, sends nothing.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    // Trickling: one header line every 300 ms, never the end of the head.
    let mut trickle = TcpStream::connect(gw.addr).await.unwrap();
    trickle
        .write_all(b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if trickle
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return Some(Instant::now());
            }
        }
        None
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(4)).await,
        "silent connection kept"
    );
    let cut = trickler
        .await
        .unwrap()
        .expect("trickling connection kept for 6s");
    assert!(
        cut - started < Duration::from_secs(4),
        "cut after {:?}",
        cut - started
    );

    // Idle between requests: one request, then nothing.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut idle, Duration::from_secs(4)).await,
        "idle connection kept"
    );

    // The gateway serves normally after.
    assert_eq!(get(&gw, "/v1/echo/1").await.0, 200);
}

/// One response off a kept-alive HTTP/1.1 connection: its status, or `None` when the
/// gateway closed the connection instead of answering.
async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

/// The header-read timeout bounds request heads, not a busy connection's life: a
/// kept-alive connection used steadily for several times `header_read_timeout` (with
/// short idle gaps between requests) is never cut mid-traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_keep_alive_connections_outlive_the_header_timeout() {
    let (_echo, gw) = setup("header_read_timeout: 500ms, idle_timeout: 5s", "").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_millis(2000) {
        let status = keep_alive_get(&mut stream, "/v1/echo/1").await;
        assert_eq!(
            status,
            Some(200),
            "connection cut after {:?} and {answered} answers",
            started.elapsed()
        );
        answered += 1;
        // An idle gap between requests, as a real client leaves.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered > 10, "{answered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_freed_by_the_timeouts() {
    let (_echo, gw) = setup("max_connections: 2, header_read_timeout: 1s", "").await;
    let _a = TcpStream::connect(gw.addr).await.unwrap();
    let _b = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A third waits for a place: the two silent ones hold both until their timeout.
    let started = Instant::now();
    let (status, _, _) = raw_request(
        gw.addr,
        b"GET /v1/echo/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(status, 200);
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "served after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let (_echo, gw) = setup("", "").await;
    let addr = gw.addr;
    let slow = tokio::spawn(
        client()
            .get(gw.url("/v1/echo/slow"))
            .header("grpc-metadata-x-echo-delay-ms", "800")
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(gw); // asks the server to shut down
    let response = slow.await.unwrap().expect("the in-flight request finished");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_still_works_under_the_new_listener() {
    let (_echo, gw) = setup("", "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gw.url("/v1/echo/7")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

// ---------------------------------------------------------------------------------------
// Items 4, 5: metadata

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_forge_gateway_owned_metadata() {
    let (echo, gw) = setup("", "").await;
    let response = client()
        .get(gw.url("/v1/echo/1"))
        .header("x-trace-id", "trace-real")
        .header("grpc-metadata-authorization", "Bearer forged")
        .header(
            "grpc-metadata-connection",
            "te, content-type, grpc-timeout, x-trace-id",
        )
        .header("grpc-metadata-host", "internal.example")
        .header("grpc-metadata-te", "gzip")
        .header("grpc-metadata-x-trace-id", "forged")
        .header("grpc-metadata-traceparent", "forged")
        .header("grpc-metadata-grpc-timeout", "1n")
        .header("grpc-metadata-proxy-authorization", "forged")
        .header("grpc-metadata-x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    assert!(seen.get("authorization").is_none(), "{seen:?}");
    assert!(seen.get("connection").is_none(), "{seen:?}");
    assert!(seen.get("proxy-authorization").is_none(), "{seen:?}");
    assert!(seen.get("host").is_none(), "{seen:?}");
    assert_eq!(seen["te"], "trailers");
    assert_eq!(seen["x-trace-id"], "trace-real");
    assert_ne!(seen["traceparent"], "forged");
    assert_ne!(
        seen.get("grpc-timeout").map(|v| v.as_bytes()),
        Some(&b"1n"[..])
    );
    assert_eq!(seen["x-tenant"], "acme");

    // A binary value that is not base64 never reaches the backend.
    let calls = echo.calls.load(Ordering::SeqCst);
    let response = client()
        .get(gw.url("/v1/echo/1"))
        .header("grpc-metadata-blob-bin", "not base64!")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(echo.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_metadata_cannot_forge_authorization() {
    let (echo, gw) = setup("", "").await;
    let mut request = format!("ws://{}/ws/echo/chat", gw.addr)
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "grpc-metadata-authorization",
        "Bearer forged".parse().unwrap(),
    );
    headers.insert("grpc-metadata-connection", "te".parse().unwrap());
    headers.insert("grpc-metadata-x-tenant", "acme".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(Message::text(json!({"id": "1"}).to_string()))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(answer.is_text(), "{answer:?}");
    let seen = echo.last_metadata.lock().unwrap().clone().unwrap();
    assert!(seen.get("authorization").is_none(), "{seen:?}");
    assert!(seen.get("connection").is_none(), "{seen:?}");
    assert_eq!(seen["x-tenant"], "acme");
}

// ---------------------------------------------------------------------------------------
// Item 13: duplicate keys

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_json_keys_are_400() {
    let (echo, gw) = setup("", "").await;
    let calls = echo.calls.load(Ordering::SeqCst);
    for (path, body) in [
        ("/v1/echo", r#"{"id":"a","id":"b"}"#),
        ("/v1/echo", r#"{"nested":{"name":"a","name":"b"}}"#),
        // Any in the body goes the prost-reflect way: checked there too.
        ("/v1/echo", r#"{"id":"a","extra":{"k":1,"k":2}}"#),
    ] {
        let (status, body) = post_json(&gw, path, body).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["code"], 3, "{body}");
    }
    // A map as the body field (parsed as a JSON value before prost-reflect sees it).
    let response = client()
        .put(gw.url("/v1/labels/1"))
        .header("content-type", "application/json")
        .body(r#"{"a":"1","a":"2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        calls,
        "nothing reached the backend"
    );
    let (status, body) = post_json(&gw, "/v1/echo", r#"{"id":"a","nested":{"name":"b"}}"#).await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------------------------------
// Item 15: risky settings

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risky_settings_are_refused_at_load() {
    let echo = echo::start().await;
    let dir = TempDir::new("risky");
    dir.write("m.yaml", ROUTES);
    let base = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n",
        gateway::echo_protos()
    );
    let upstream = format!(
        "upstreams:\n  echo:\n    grpc: {{ endpoints: [\"http://{}\"] }}\n",
        echo.addr
    );
    let breaker = "    circuit_breaker: { failure_ratio: 0.5, min_requests: 5, window: 10s, open_for: 1s, half_open_requests: 0 }\n";
    let path = dir.write("a.yaml", &format!("{base}{upstream}{breaker}"));
    gateway::assert_refused(&path, &["half_open_requests must be at least 1"]).await;

    let no_checks = format!(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secret: {SECRET}\n    audiences: []\n"
    );
    let path = dir.write("b.yaml", &format!("{base}{no_checks}{upstream}"));
    gateway::assert_refused(&path, &["allow_any_issuer"]).await;
    let path = dir.write(
        "c.yaml",
        &format!("{base}{no_checks}    issuer: https://auth.test\n{upstream}"),
    );
    gateway::assert_refused(&path, &["allow_any_audience"]).await;
    let opted_out =
        format!("{no_checks}    allow_any_issuer: true\n    allow_any_audience: true\n");
    let path = dir.write("d.yaml", &format!("{base}{opted_out}{upstream}"));
    assert!(switchboard::Gateway::load(&path).await.is_ok());

    let path = dir.write(
        "e.yaml",
        &format!("{base}limits: {{ max_header_bytes: 1KiB, max_connections: 0 }}\n{upstream}"),
    );
    gateway::assert_refused(&path, &["max_header_bytes", "max_connections"]).await;
}

// ---------------------------------------------------------------------------------------
// Item 10: WebSocket

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_1008_when_its_token_expires() {
    let (_echo, gw) = setup("", "").await;
    let token = hs256(now() + 2);
    let mut request = format!("ws://{}/ws/private/chat", gw.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let opened = Instant::now();
    let code = loop {
        let message = tokio::time::timeout(Duration::from_secs(6), socket.next())
            .await
            .expect("closed within 6s")
            .expect("a frame")
            .expect("no error");
        match message {
            Message::Close(Some(frame)) => break u16::from(frame.code),
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["error"]["code"], 16, "{frame}");
            }
            _ => {}
        }
    };
    assert_eq!(code, 1008);
    assert!(opened.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_socket() {
    let (_echo, gw) = setup("max_ws_per_client: 2", "").await;
    let url = format!("ws://{}/ws/echo/chat", gw.addr);
    let (first, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let (_second, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
        }
        other => panic!("a third socket was not refused: {:?}", other.map(|_| ())),
    }
    drop(first);
    // The place comes back when a socket closes.
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(url.as_str()).await {
            reopened = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened.is_some(),
        "the closed socket's place was not freed"
    );
}

// ---------------------------------------------------------------------------------------
// Item 7: JWKS

/// A JWKS endpoint that answers with `status` and `body` after `delay`, counting hits.
async fn jwks_server(status: u16, body: String, delay: Duration) -> (String, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let app = {
        let hits = hits.clone();
        axum::Router::new()
            .route(
                "/jwks.json",
                axum::routing::get(move || {
                    let (hits, body) = (hits.clone(), body.clone());
                    async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        (http::StatusCode::from_u16(status).unwrap(), body)
                    }
                }),
            )
            .route(
                "/moved",
                axum::routing::get(|| async { axum::response::Redirect::temporary("/jwks.json") }),
            )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, hits)
}

fn rs256_token() -> String {
    let key = std::fs::read(repo().join("tests/fixtures/keys/rsa.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    encode(
        &header,
        &json!({"sub": "u", "iss": "https://auth.test", "aud": "api", "exp": now() + 300}),
        &EncodingKey::from_rsa_pem(&key).unwrap(),
    )
    .unwrap()
}

fn jwks_auth(url: &str, extra: &str) -> String {
    format!(
        "auth:\n  jwt:\n    issuer: https://auth.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: \"{url}\"\n    jwks_min_refresh: 30s\n{extra}"
    )
}

const PRIVATE: &str = r#"
routes:
  - http: { get: "/private/{id}" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
    auth: required
"#;

async fn jwks_gateway(echo: &EchoServer, auth: &str) -> TestGateway {
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{auth}upstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
    );
    gateway::start(&config, &[("m.yaml", PRIVATE)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_jwks_is_not_fetched_by_every_request() {
    let echo = echo::start().await;
    let (base, hits) = jwks_server(500, "down".into(), Duration::from_millis(1500)).await;
    let url = format!("{base}/jwks.json");
    let gw = jwks_gateway(&echo, &jwks_auth(&url, "    jwks_allow_http: true\n")).await;
    let token = rs256_token();
    let started = Instant::now();
    let calls = (0..4).map(|_| {
        let request = client().get(gw.url("/private/1")).bearer_auth(&token);
        async move { request.send().await.unwrap() }
    });
    let responses = futures_util::future::join_all(calls).await;
    let took = started.elapsed();
    for response in responses {
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        let text = body.to_string();
        assert!(
            !text.contains("127.0.0.1") && !text.contains("jwks.json"),
            "{text}"
        );
    }
    // One fetch for all of them (they waited for it, then shared its failure), in about
    // one fetch's time — not one fetch each, one after the other.
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // Failures are rate-limited like successes: no refetch within jwks_min_refresh.
    let started = Instant::now();
    let response = client()
        .get(gw.url("/private/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_during_a_jwks_fetch_share_it() {
    let echo = echo::start().await;
    let jwks = std::fs::read_to_string(repo().join("tests/fixtures/keys/jwks.json")).unwrap();
    let (base, hits) = jwks_server(200, jwks, Duration::from_millis(500)).await;
    let url = format!("{base}/jwks.json");
    let gw = jwks_gateway(&echo, &jwks_auth(&url, "    jwks_allow_http: true\n")).await;
    let token = rs256_token();
    let calls = (0..4).map(|_| {
        let request = client().get(gw.url("/private/1")).bearer_auth(&token);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert_eq!(statuses, [200, 200, 200, 200]);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_redirects_big_bodies_and_plain_http_are_refused() {
    let echo = echo::start().await;
    let jwks = std::fs::read_to_string(repo().join("tests/fixtures/keys/jwks.json")).unwrap();
    let (base, hits) = jwks_server(200, jwks, Duration::ZERO).await;
    let token = rs256_token();

    // Plain http without the opt-in: a load error.
    let dir = TempDir::new("jwks-http");
    let path = dir.write(
        "switchboard.yaml",
        &format!(
            "{}upstreams:\n{}",
            jwks_auth(&format!("{base}/jwks.json"), ""),
            gateway::grpc_upstream("echo", echo.addr, "")
        ),
    );
    gateway::assert_refused(&path, &["jwks_allow_http"]).await;

    // A redirect is not followed.
    let gw = jwks_gateway(
        &echo,
        &jwks_auth(&format!("{base}/moved"), "    jwks_allow_http: true\n"),
    )
    .await;
    let response = client()
        .get(gw.url("/private/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");

    // A body over the cap is refused.
    let huge = format!("{{\"keys\": [], \"pad\": \"{}\"}}", "x".repeat(1 << 20));
    let (big_base, big_hits) = jwks_server(200, huge, Duration::ZERO).await;
    let gw = jwks_gateway(
        &echo,
        &jwks_auth(
            &format!("{big_base}/jwks.json"),
            "    jwks_allow_http: true\n",
        ),
    )
    .await;
    let response = client()
        .get(gw.url("/private/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(big_hits.load(Ordering::SeqCst), 1);

    // And the well-behaved endpoint works.
    let gw = jwks_gateway(
        &echo,
        &jwks_auth(&format!("{base}/jwks.json"), "    jwks_allow_http: true\n"),
    )
    .await;
    let response = client()
        .get(gw.url("/private/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

// ---------------------------------------------------------------------------------------
// Item 6: AMQP routing keys and content types

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_pick_routing_keys_or_protobuf_content() {
    use support::amqp::{BROKER_URL, connect, require_broker, unique, wait_connected};
    require_broker().await;
    let exchange = unique("sec-topic");
    let (admin_q, eu_q) = (unique("sec-admin"), unique("sec-eu"));
    let config = format!(
        "mappings: [m.yaml]\nupstreams:\n  mq:\n    amqp:\n      url: \"{BROKER_URL}\"\n      declare:\n        exchanges: [{{ name: \"{exchange}\", kind: topic }}]\n        queues: [\"{admin_q}\", \"{eu_q}\"]\n        bindings: [{{ queue: \"{admin_q}\", exchange: \"{exchange}\", routing_key: \"*.admin.#\" }}, {{ queue: \"{eu_q}\", exchange: \"{exchange}\", routing_key: \"zone.eu.*\" }}]\n"
    );
    let routes = format!(
        "routes:\n  - http: {{ post: \"/v1/events/{{kind}}\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"{exchange}\", routing_key: \"shop.{{kind}}\", reply: false }}\n  - http: {{ post: \"/v1/zones/{{zone}}\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"{exchange}\", routing_key: \"zone.{{zone}}\", routing_key_allow_dots: true, reply: false }}\n"
    );
    let gw = gateway::start(&config, &[("m.yaml", &routes)]).await;
    wait_connected(&gw, "mq").await;

    for path in [
        "/v1/events/admin.delete",
        "/v1/events/admin.%23",
        "/v1/events/%23",
        "/v1/events/a%2A",
    ] {
        let (status, body) = post_json(&gw, path, r#"{"x":1}"#).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    // The route that allows dots takes several words, but never a wildcard.
    let (status, body) = post_json(&gw, "/v1/zones/eu.paris", r#"{"x":1}"#).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = post_json(&gw, "/v1/zones/eu.%23", r#"{"x":1}"#).await;
    assert_eq!(status, 400);

    // An untyped route does not let the client call its bytes protobuf.
    let response = client()
        .post(gw.url("/v1/events/created"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0x0a, 0x01, 0x41])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let admin = channel
        .basic_get(admin_q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(admin.is_none(), "a client reached the admin binding");
    let eu = channel
        .basic_get(eu_q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the allowed dotted key was routed");
    assert_eq!(eu.delivery.routing_key.as_str(), "zone.eu.paris");
    for queue in [&admin_q, &eu_q] {
        let _ = channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await;
    }
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

// ---------------------------------------------------------------------------------------
// Item 9: admin listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_cross_site_and_rebound_requests() {
    let (_echo, gw) = setup("", "admin_token: s3cret-admin\n").await;
    let admin = |path: &str| format!("http://{}{}", gw.admin, path);
    // A cross-site form post (text/plain needs no preflight).
    let response = client()
        .post(admin("/admin/reload"))
        .bearer_auth("s3cret-admin")
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // DNS rebinding: the page's own name in Host.
    let (status, _, _) = raw_request(
        gw.admin,
        b"GET /admin/routes HTTP/1.1\r\nHost: evil.example:9901\r\nAuthorization: Bearer s3cret-admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 421);
    // No token.
    let response = client().get(admin("/admin/routes")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // Probes stay open; the operator's curl works.
    let response = client().get(admin("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .post(admin("/admin/reload"))
        .bearer_auth("s3cret-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
