//! WebSocket → RabbitMQ end to end: a real tokio-tungstenite client, a real gateway, the
//! real broker on 127.0.0.1:5672 and in-test lapin workers. Each frame is one RPC; answers
//! come back in request order; a failed frame gets an error frame and the socket stays
//! open. Without a broker these tests fail (loudly), they do not skip.

mod support;

use futures_util::{SinkExt, StreamExt};
use lapin::types::AMQPValue;
use prost::Message as _;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::amqp::{Answer, BROKER_URL, describe, require_broker, unique, worker};
use support::gateway::{self, TestGateway, client};
use support::shop::pb::shop::shipping::v1::{Quote, QuoteRequest};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The per-socket window of RPCs in flight (`ws::amqp::MAX_IN_FLIGHT`).
const WINDOW: usize = 32;

/// A gateway with the AMQP upstream `mq` at `url` (timeout 3s), `extra` config lines and
/// `routes`, once it is connected to the broker (when `url` is the real one).
async fn gateway_at(url: &str, extra: &str, routes: &str) -> TestGateway {
    require_broker().await;
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [m.yaml]\n{extra}upstreams:\n  mq:\n    amqp: {{ url: \"{url}\" }}\n    timeout: 3s\n",
        gateway::repo().join("descriptors").display()
    );
    let gw = gateway::start(&config, &[("m.yaml", routes)]).await;
    if url == BROKER_URL {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gw.gateway.table().upstreams.amqp["mq"].connected() {
            assert!(
                Instant::now() < deadline,
                "the gateway connects to RabbitMQ"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    gw
}

async fn gateway(routes: &str) -> TestGateway {
    gateway_at(BROKER_URL, "", routes).await
}

/// A `websocket:` route at `/ws/q` onto `routing_key`, with `more` keys in its `amqp:`
/// and `route` lines for the route itself.
fn quote_route(routing_key: &str, more: &str, route: &str) -> String {
    format!(
        "routes:\n  - websocket: \"/ws/q\"\n    amqp: {{ upstream: mq, routing_key: {routing_key}{more} }}\n{route}"
    )
}

async fn connect(gw: &TestGateway, headers: &[(&'static str, &str)]) -> Socket {
    let mut request = format!("ws://{}/ws/q", gw.addr)
        .into_client_request()
        .expect("request");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("header value"));
    }
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

async fn send_text(socket: &mut Socket, text: &str) {
    socket
        .send(Message::text(text.to_string()))
        .await
        .expect("send frame");
}

async fn send(socket: &mut Socket, value: Value) {
    send_text(socket, &value.to_string()).await;
}

/// The next data frame as JSON (pings skipped), within 10 s.
async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10s")
            .expect("socket still open")
            .expect("no socket error");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("frame is JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The `google.rpc.Status` of the next frame, which must be an error frame.
async fn next_error(socket: &mut Socket) -> Value {
    let frame = next_json(socket).await;
    assert!(
        frame["error"]["code"].is_number(),
        "not an error frame: {frame}"
    );
    frame["error"].clone()
}

/// Reads until the close frame and returns its code, within 5 s.
async fn close_code(socket: &mut Socket) -> u16 {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a close frame within 5s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Text(text))) => panic!("unexpected frame before close: {text}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// The request a test worker saw, from the `describe` JSON it echoed back.
fn request_of(reply: &Value) -> Value {
    serde_json::from_str(reply["body"].as_str().expect("echoed body")).expect("JSON body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_back_in_request_order_while_several_are_in_flight() {
    let queue = unique("ws-order");
    let gw = gateway(&quote_route(&queue, "", "")).await;
    // The first request is answered last: every later one is answered at once.
    let worker = worker(&queue, |d| {
        let n = serde_json::from_slice::<Value>(&d.data).unwrap_or_default()["n"]
            .as_u64()
            .unwrap_or_default();
        Answer {
            delay: Duration::from_millis(if n == 0 { 800 } else { 0 }),
            ..Answer::json(describe(d))
        }
    })
    .await;
    let mut socket = connect(&gw, &[("x-trace-id", "trace-ws-amqp-1")]).await;
    for n in 0..5 {
        send(&mut socket, json!({ "n": n })).await;
    }
    let first = next_json(&mut socket).await;
    // The slow first reply came only after the worker had every request: all were in
    // flight at once, and the four quick replies were held back behind it.
    assert_eq!(worker.received.load(Ordering::SeqCst), 5);
    assert_eq!(request_of(&first)["n"], 0, "{first}");
    for n in 1..5 {
        let reply = next_json(&mut socket).await;
        assert_eq!(request_of(&reply)["n"], n, "{reply}");
    }
    assert_eq!(first["content_type"], "application/json");
    assert_eq!(
        first["expiration"], "3000",
        "expiration = the timeout in ms"
    );
    assert_eq!(first["headers"]["x-trace-id"], "trace-ws-amqp-1");
    assert!(first["headers"]["traceparent"].is_string(), "{first}");

    // `{"end": true}`: what is in flight is answered, then the socket closes normally.
    send(&mut socket, json!({ "n": 0 })).await;
    send(&mut socket, json!({ "end": true })).await;
    assert_eq!(request_of(&next_json(&mut socket).await)["n"], 0);
    assert_eq!(close_code(&mut socket).await, 1000);

    let routes: Value = client()
        .get(gw.admin_url("/admin/routes"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let target = &routes["routes"][0]["target"];
    assert_eq!(target["kind"], "websocket-amqp", "{routes}");
    assert_eq!(target["routing_key"], queue.as_str());
    assert_eq!(target["timeout_ms"], 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_stops_reading_frames_until_replies_come_back() {
    let queue = unique("ws-window");
    let gw = gateway(&quote_route(&queue, "", "")).await;
    let worker = worker(&queue, |d| Answer {
        delay: Duration::from_millis(1000),
        ..Answer::json(describe(d))
    })
    .await;
    let mut socket = connect(&gw, &[]).await;
    let total = WINDOW + 8;
    for n in 0..total {
        send(&mut socket, json!({ "n": n })).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while worker.received.load(Ordering::SeqCst) < WINDOW {
        assert!(Instant::now() < deadline, "the window fills");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        worker.received.load(Ordering::SeqCst),
        WINDOW,
        "no more than the window is in flight"
    );
    for n in 0..total {
        assert_eq!(request_of(&next_json(&mut socket).await)["n"], n);
    }
    assert_eq!(worker.received.load(Ordering::SeqCst), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_frames_are_protobuf_on_the_wire_and_bad_ones_get_error_frames() {
    let queue = unique("ws-typed");
    let types =
        ", request_type: shop.shipping.v1.QuoteRequest, response_type: shop.shipping.v1.Quote";
    let gw = gateway(&quote_route(&queue, types, "")).await;
    let worker = worker(&queue, |d| {
        let protobuf = d
            .properties
            .content_type()
            .as_ref()
            .is_some_and(|c| c.as_str() == "application/x-protobuf");
        match QuoteRequest::decode(&d.data[..]) {
            Ok(request) if protobuf && request.quantity > 0 => Answer {
                body: Quote {
                    product_id: request.product_id,
                    price_cents: 9_007_199_254_740_993,
                    carrier: request.destination,
                    days: request.quantity,
                }
                .encode_to_vec(),
                content_type: "application/x-protobuf",
                status: None,
                delay: Duration::ZERO,
            },
            _ => Answer {
                status: Some(AMQPValue::LongInt(400)),
                ..Answer::json(json!({ "code": 3, "message": "bad quote request", "details": [] }))
            },
        }
    })
    .await;
    let mut socket = connect(&gw, &[]).await;
    let quote = json!({ "productId": "p-1", "destination": "Lyon", "quantity": 3 });
    send(&mut socket, quote.clone()).await;
    assert_eq!(
        next_json(&mut socket).await,
        json!({ "productId": "p-1", "priceCents": "9007199254740993", "carrier": "Lyon", "days": 3 })
    );

    // Frames that are not a QuoteRequest in JSON never reach the worker.
    send_text(&mut socket, "not json").await;
    assert_eq!(next_error(&mut socket).await["code"], 3);
    send(&mut socket, json!({ "productId": "p-1", "colour": "blue" })).await;
    assert_eq!(next_error(&mut socket).await["code"], 3);
    assert_eq!(worker.received.load(Ordering::SeqCst), 1);

    // The worker's own refusal (`x-status: 400` with a google.rpc.Status body).
    send(&mut socket, json!({ "productId": "p-1", "quantity": 0 })).await;
    let refused = next_error(&mut socket).await;
    assert_eq!(refused["code"], 3, "{refused}");
    assert_eq!(refused["message"], "bad quote request");

    // The socket is still open and serving.
    send(&mut socket, quote).await;
    assert_eq!(next_json(&mut socket).await["productId"], "p-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_an_error_frame_and_the_socket_stays_usable() {
    let queue = unique("ws-timeout");
    let gw = gateway(&quote_route(&queue, "", "    timeout: 300ms\n")).await;
    let _worker = worker(&queue, |d| Answer {
        delay: Duration::from_millis(if d.data.starts_with(br#"{"slow""#) {
            1500
        } else {
            0
        }),
        ..Answer::json(describe(d))
    })
    .await;
    let mut socket = connect(&gw, &[]).await;
    // The slow one's error frame comes first: errors keep their place in the order.
    send(&mut socket, json!({ "slow": true })).await;
    send(&mut socket, json!({ "fast": 1 })).await;
    let started = Instant::now();
    let timeout = next_error(&mut socket).await;
    assert_eq!(timeout["code"], 4, "DEADLINE_EXCEEDED: {timeout}");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(request_of(&next_json(&mut socket).await)["fast"], 1);
    // The late reply is dropped; the socket goes on.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    send(&mut socket, json!({ "fast": 2 })).await;
    assert_eq!(request_of(&next_json(&mut socket).await)["fast"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untyped_frames_must_be_json_and_replies_must_be_text() {
    let queue = unique("ws-untyped");
    let gw = gateway(&quote_route(&queue, "", "")).await;
    let worker = worker(&queue, |d| {
        if d.data.starts_with(br#"{"binary""#) {
            Answer {
                body: vec![0xff, 0xfe, 0x00],
                content_type: "application/octet-stream",
                status: None,
                delay: Duration::ZERO,
            }
        } else {
            Answer::json(describe(d))
        }
    })
    .await;
    let mut socket = connect(&gw, &[]).await;
    send_text(&mut socket, "{not json").await;
    assert_eq!(next_error(&mut socket).await["code"], 3);
    assert_eq!(
        worker.received.load(Ordering::SeqCst),
        0,
        "bad input never reaches a worker"
    );

    send(&mut socket, json!({ "binary": true })).await;
    let not_text = next_error(&mut socket).await;
    assert_eq!(not_text["code"], 13, "{not_text}");

    // Published verbatim as JSON.
    let frame = r#"{"productId": "1",  "quantity": 2}"#;
    send_text(&mut socket, frame).await;
    let reply = next_json(&mut socket).await;
    assert_eq!(reply["body"], frame);
    assert_eq!(reply["content_type"], "application/json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_carry_verified_claims_but_no_client_headers() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    const SECRET: &str = "a-long-enough-test-secret-0123456789";
    let queue = unique("ws-claims");
    let auth = format!(
        "auth:\n  jwt:\n    algorithms: [HS256]\n    secret: {SECRET}\n    forward_claims: {{ sub: x-user-id }}\n"
    );
    let gw = gateway_at(
        BROKER_URL,
        &auth,
        &quote_route(&queue, "", "    auth: required\n"),
    )
    .await;
    let _worker = worker(&queue, |d| Answer::json(describe(d))).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 300;
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "ann", "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bearer = format!("Bearer {token}");
    let mut socket = connect(
        &gw,
        &[
            ("authorization", bearer.as_str()),
            ("x-user-id", "mallory"),
            ("grpc-metadata-x-color", "red"),
        ],
    )
    .await;
    send(&mut socket, json!({})).await;
    let headers = next_json(&mut socket).await["headers"].clone();
    assert_eq!(headers["x-user-id"], "ann", "{headers}");
    assert!(headers.get("x-color").is_none(), "{headers}");
    assert!(headers.get("authorization").is_none(), "{headers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_an_unavailable_frame_per_request() {
    // A port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let gw = gateway_at(&url, "", &quote_route("q", "", "")).await;
    let mut socket = connect(&gw, &[]).await;
    for _ in 0..2 {
        let started = Instant::now();
        send(&mut socket, json!({})).await;
        assert_eq!(next_error(&mut socket).await["code"], 14, "UNAVAILABLE");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "at once, not at the deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_websocket_amqp_routes_are_refused_at_load() {
    let dir = gateway::TempDir::new("ws-amqp-check");
    dir.write(
        "m.yaml",
        r#"
routes:
  - websocket: "/ws/publish"
    amqp: { upstream: mq, routing_key: k, reply: false }
  - websocket: "/ws/auth"
    amqp: { upstream: mq, routing_key: k }
    forward_authorization: true
  - websocket: "/ws/nobody"
    amqp: { upstream: nobody, routing_key: k }
  - websocket: "/ws/type"
    amqp: { upstream: mq, routing_key: k, request_type: shop.Nope }
  - websocket: "/ws/both"
    amqp: { upstream: mq, routing_key: k }
    grpc: { upstream: mq, method: shop.chat.v1.ChatService/Converse }
"#,
    );
    let config = dir.write(
        "switchboard.yaml",
        &format!(
            "descriptors: [\"{}\"]\nmappings: [m.yaml]\nupstreams:\n  mq:\n    amqp: {{ url: \"{BROKER_URL}\" }}\n",
            gateway::repo().join("descriptors").display()
        ),
    );
    let Err(errors) = switchboard::Gateway::load(&config).await else {
        panic!("the config should be refused");
    };
    let text = errors.to_string();
    for expected in [
        "m.yaml:3: `reply: false` does not apply to a `websocket:` route",
        "m.yaml:5: `forward_authorization` does not apply to `amqp:` routes",
        "m.yaml:8: unknown AMQP upstream `nobody`",
        "m.yaml:10: request_type `shop.Nope` is not a message",
        "m.yaml:12: route has more than one target",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}
