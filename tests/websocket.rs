//! WebSocket ↔ gRPC streaming end to end: a real tokio-tungstenite client, a real gateway,
//! the demo shop's chat service and the echo backend (bidi `Chat`, client-streaming
//! `Collect`, server-streaming `Stream`).

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::echo::{self, EchoServer};
use support::gateway::{self, TestGateway, client, repo};
use support::shop::{self, Shop};
use support::ws::{self, close_code, connect, next_json, send, ws_url};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

const MAPPINGS: &str = r#"
routes:
  - websocket: "/ws/chat"
    grpc: { upstream: chat, method: shop.chat.v1.ChatService/Converse }
  - websocket: "/ws/echo/chat"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
    forward_authorization: true
  - websocket: "/ws/echo/stream"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Stream }
  - websocket: "/ws/echo/collect"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Collect }
"#;

struct Setup {
    echo: EchoServer,
    _shop: Shop,
    gw: TestGateway,
}

/// Echo + the demo shop behind a gateway with `limits` (a YAML flow mapping body).
async fn setup_with(limits: &str) -> Setup {
    let echo = echo::start().await;
    let shop = shop::start(Ipv4Addr::LOCALHOST.into(), None)
        .await
        .expect("start shop");
    let config = format!(
        "descriptors: [\"{}\", \"{}\"]\nmappings: [m.yaml]\nlimits: {{ {limits} }}\nupstreams:\n{}{}",
        repo().join("descriptors").display(),
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
        gateway::grpc_upstream("chat", shop.chat, ""),
    );
    let gw = gateway::start(&config, &[("m.yaml", MAPPINGS)]).await;
    Setup {
        echo,
        _shop: shop,
        gw,
    }
}

async fn setup() -> Setup {
    setup_with("max_ws_frame: 1KiB").await
}

/// Waits up to 5 s for `condition`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_round_trips_with_interleaving() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/chat").await;
    // Several in flight before reading anything: both directions flow independently.
    for i in 1..=5 {
        send(
            &mut socket,
            json!({"user": "ann", "text": format!("hi {i}"), "sequence": i}),
        )
        .await;
    }
    for i in 1..=5 {
        let reply = next_json(&mut socket).await;
        assert_eq!(reply["user"], "support");
        assert_eq!(reply["text"], format!("echo: hi {i}"));
        assert_eq!(reply["sequence"], i.to_string(), "int64 as a string");
    }
    for i in 6..=8 {
        send(
            &mut socket,
            json!({"text": format!("again {i}"), "sequence": i}),
        )
        .await;
        assert_eq!(
            next_json(&mut socket).await["text"],
            format!("echo: again {i}")
        );
    }
    // Half-close: the chat service ends its replies, the gateway closes normally.
    send(&mut socket, json!({"end": true})).await;
    assert_eq!(close_code(&mut socket).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_sockets_and_frames() {
    // Handles are made when routes compile: the recorder must exist first.
    switchboard::telemetry::prometheus();
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
        gateway::echo_protos(),
        gateway::grpc_upstream("echo", echo.addr, ""),
    );
    let mappings = r#"
routes:
  - websocket: "/ws/metered"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
    name: ws-metered
"#;
    let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
    let metrics = || gateway::get_text(gw.admin_url("/metrics"));
    let value = |metrics: &str, name: &str, labels: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    let mut socket = connect(&gw, "/ws/metered").await;
    for i in 0..3 {
        send(&mut socket, json!({"id": i.to_string()})).await;
        next_json(&mut socket).await;
    }
    socket.send(Message::text("bad")).await.unwrap();
    next_json(&mut socket).await;
    let text = metrics().await;
    let open = value(
        &text,
        "switchboard_ws_connections",
        r#"route="/ws/metered""#,
    );
    assert_eq!(open, Some(1.0), "{text}");
    let frames_in = r#"route="/ws/metered",direction="in""#;
    let frames_out = r#"route="/ws/metered",direction="out""#;
    assert_eq!(
        value(&text, "switchboard_ws_frames_total", frames_in),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "switchboard_ws_frames_total", frames_out),
        Some(4.0),
        "{text}"
    );
    drop(socket);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics().await;
        if value(
            &text,
            "switchboard_ws_connections",
            r#"route="/ws/metered""#,
        ) == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauge never went down: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_runs_to_completion_and_closes_normally() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/echo/stream").await;
    send(&mut socket, json!({"id": "s", "small": 10})).await;
    assert_eq!(next_json(&mut socket).await["big"], "1");
    // A second request is refused in-band; the stream goes on (9 more, 20 ms apart).
    send(&mut socket, json!({"id": "again"})).await;
    let mut messages = Vec::new();
    let mut refusals = Vec::new();
    while messages.len() < 9 {
        let frame = next_json(&mut socket).await;
        if frame.get("error").is_some() {
            refusals.push(frame);
        } else {
            messages.push(frame);
        }
    }
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0]["error"]["code"], 9);
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(message["id"], "s");
        assert_eq!(message["big"], (i + 2).to_string());
    }
    assert_eq!(close_code(&mut socket).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stream_answers_once_then_closes_normally() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/echo/collect").await;
    for name in ["a", "b", "c"] {
        send(&mut socket, json!({"id": "c", "name": name})).await;
    }
    send(&mut socket, json!({"end": true})).await;
    let answer = next_json(&mut socket).await;
    assert_eq!(answer["name"], "c", "the last message");
    assert_eq!(answer["small"], 3, "the number of messages");
    assert_eq!(close_code(&mut socket).await, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_error_sends_an_error_frame_and_closes_with_1011() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/echo/chat").await;
    send(&mut socket, json!({"id": "ok"})).await;
    assert_eq!(next_json(&mut socket).await["id"], "ok");
    send(&mut socket, json!({"id": "bad", "failCode": 9})).await;
    let error = next_json(&mut socket).await;
    assert_eq!(error["error"]["code"], 9, "{error}");
    assert_eq!(error["error"]["message"], "chat failed");
    assert_eq!(error["error"]["details"][0]["reason"], "FORCED");
    assert_eq!(close_code(&mut socket).await, 1011);

    // Client streaming: the status instead of the answer.
    let mut socket = connect(&s.gw, "/ws/echo/collect").await;
    send(&mut socket, json!({"failCode": 5})).await;
    assert_eq!(next_json(&mut socket).await["error"]["code"], 5);
    assert_eq!(close_code(&mut socket).await, 1011);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_an_error_frame_and_the_socket_stays_open() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/echo/chat").await;
    for bad in ["not json", r#"{"nope": 1}"#, r#"{"small": "three"}"#] {
        socket.send(Message::text(bad)).await.unwrap();
        let error = next_json(&mut socket).await;
        assert_eq!(error["error"]["code"], 3, "{bad}: {error}");
    }
    send(&mut socket, json!({"id": "still here"})).await;
    assert_eq!(next_json(&mut socket).await["id"], "still here");
    // Server streaming: a bad first frame is refused, the next good one is the request.
    let mut socket = connect(&s.gw, "/ws/echo/stream").await;
    socket.send(Message::text("{")).await.unwrap();
    assert_eq!(next_json(&mut socket).await["error"]["code"], 3);
    send(&mut socket, json!({"id": "s", "small": 1})).await;
    assert_eq!(next_json(&mut socket).await["id"], "s");
    assert_eq!(close_code(&mut socket).await, 1000);
    assert_eq!(
        s.echo.calls.load(Ordering::SeqCst),
        2,
        "bad frames never reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_with_1009() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/echo/chat").await;
    let big = json!({"name": "x".repeat(2048)});
    send(&mut socket, big).await;
    assert_eq!(close_code(&mut socket).await, 1009);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_before_the_upgrade() {
    let s = setup_with("max_ws_connections: 2").await;
    let first = connect(&s.gw, "/ws/chat").await;
    let _second = connect(&s.gw, "/ws/chat").await;
    let refused = tokio_tungstenite::connect_async(ws_url(&s.gw, "/ws/chat")).await;
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("the third socket should be refused: {refused:?}");
    };
    assert_eq!(response.status(), 503);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["code"], 14, "{body}");

    // A closed socket frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio_tungstenite::connect_async(ws_url(&s.gw, "/ws/chat")).await {
            Ok(_) => break,
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the place was not freed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_cancels_the_backend_call() {
    let s = setup().await;
    // Server streaming: 1000 messages, 20 ms apart; the client leaves after two.
    let mut socket = connect(&s.gw, "/ws/echo/stream").await;
    send(&mut socket, json!({"id": "s", "small": 1000})).await;
    next_json(&mut socket).await;
    next_json(&mut socket).await;
    drop(socket);
    eventually("the backend never saw the stream cancelled", || {
        s.echo.stream_cancelled.load(Ordering::SeqCst) == 1
    })
    .await;

    // Bidi: the client closes (a close frame this time) without half-closing first.
    let mut socket = connect(&s.gw, "/ws/echo/chat").await;
    send(&mut socket, json!({"id": "x"})).await;
    next_json(&mut socket).await;
    socket.close(None).await.unwrap();
    eventually("the backend never saw the bidi call cancelled", || {
        s.echo.stream_cancelled.load(Ordering::SeqCst) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_sockets_with_1001() {
    let s = setup().await;
    let mut socket = connect(&s.gw, "/ws/chat").await;
    send(&mut socket, json!({"text": "hello"})).await;
    assert_eq!(next_json(&mut socket).await["text"], "echo: hello");
    let Setup { gw, _shop, echo } = s;
    drop(gw); // Fires the server's shutdown.
    assert_eq!(close_code(&mut socket).await, 1001);
    drop((_shop, echo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_pinged_then_closed() {
    let s = setup_with("ws_idle_timeout: 600ms, ws_ping_interval: 100ms").await;
    let mut socket = connect(&s.gw, "/ws/chat").await;
    let ping = tokio::time::timeout(Duration::from_secs(2), socket.next())
        .await
        .expect("a frame within 2s");
    assert!(matches!(ping, Some(Ok(Message::Ping(_)))), "{ping:?}");
    assert_eq!(close_code(&mut socket).await, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_token_reaches_the_backend_as_authorization() {
    let s = setup().await;
    // `new WebSocket(url, ["bearer", token])`: the gateway answers with `bearer`.
    let mut request = ws_url(&s.gw, "/ws/echo/chat")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "bearer, tok.en-1".parse().unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    send(&mut socket, json!({"id": "a"})).await;
    next_json(&mut socket).await;
    let seen = |s: &Setup| {
        s.echo
            .last_metadata
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|h| h.get("authorization").cloned())
    };
    assert_eq!(seen(&s).unwrap(), "Bearer tok.en-1");

    // `?access_token=`, for clients that cannot offer subprotocols.
    let mut socket = connect(&s.gw, "/ws/echo/chat?access_token=t2").await;
    send(&mut socket, json!({"id": "b"})).await;
    next_json(&mut socket).await;
    assert_eq!(seen(&s).unwrap(), "Bearer t2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_websocket_route_is_426() {
    let s = setup().await;
    let response = client().get(s.gw.url("/ws/chat")).send().await.unwrap();
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert_eq!(response.json::<Value>().await.unwrap()["code"], 3);
    let response = client().post(s.gw.url("/ws/chat")).send().await.unwrap();
    assert_eq!(response.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_websocket_routes_are_refused_at_load() {
    let dir = gateway::TempDir::new("ws-check");
    dir.write(
        "m.yaml",
        r#"
routes:
  - websocket: "/ws/unary"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Get }
  - websocket: "/ws/both"
    http: { get: "/ws/both" }
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
  - websocket: "/ws/{id}"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
  - websocket: "/ws/missing"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Nope }
  - websocket: "/ws/taken"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
  - http: { get: "/ws/taken" }
    static: { status: 200 }
"#,
    );
    let config = dir.write(
        "switchboard.yaml",
        &format!(
            "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n{}",
            gateway::echo_protos(),
            gateway::grpc_upstream("echo", "127.0.0.1:9".parse().unwrap(), ""),
        ),
    );
    gateway::assert_refused(
        &config,
        &[
            "m.yaml:3: `test.echo.v1.EchoService.Get` is unary",
            "m.yaml:5: `http` does not apply to a `websocket:` route",
            "m.yaml:8: websocket route `/ws/{id}`: path variables are not supported",
            "m.yaml:10: unknown gRPC method `test.echo.v1.EchoService/Nope`",
            "m.yaml:14: route `GET /ws/taken` conflicts with the route defined at",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refuses_before_the_upgrade_and_takes_browser_tokens() {
    let echo = echo::start().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{}upstreams:\n{}",
        gateway::echo_protos(),
        ws::jwt_auth(),
        gateway::grpc_upstream("echo", echo.addr, ""),
    );
    let mappings = r#"
routes:
  - websocket: "/ws/private"
    grpc: { upstream: echo, method: test.echo.v1.EchoService/Chat }
    auth: required
"#;
    let gw = gateway::start(&config, &[("m.yaml", mappings)]).await;
    let token = ws::token("ann");

    // No token: a plain 401 with a google.rpc.Status body, no socket.
    let refused = tokio_tungstenite::connect_async(ws_url(&gw, "/ws/private")).await;
    let Err(tungstenite::Error::Http(response)) = refused else {
        panic!("the upgrade should be refused: {refused:?}");
    };
    assert_eq!(response.status(), 401);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["code"], 16, "{body}");

    // The subprotocol pair; the verified claim reaches the backend.
    let mut request = ws_url(&gw, "/ws/private").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("bearer, {token}").parse().unwrap(),
    );
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "bearer");
    send(&mut socket, json!({"id": "a"})).await;
    assert_eq!(next_json(&mut socket).await["id"], "a");
    let user = echo
        .last_metadata
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|h| h.get("x-user-id").cloned());
    assert_eq!(user.unwrap(), "ann");

    // `?access_token=`.
    let path = format!("/ws/private?access_token={token}");
    let mut socket = connect(&gw, &path).await;
    send(&mut socket, json!({"id": "b"})).await;
    assert_eq!(next_json(&mut socket).await["id"], "b");
}
