//! WebSocket → RabbitMQ end to end: a real tokio-tungstenite client, a real gateway, the
//! real broker on 127.0.0.1:5672 and in-test lapin workers. Each frame is one RPC; answers
//! come back in request order; a failed frame gets an error frame and the socket stays
//! open. Without a broker these tests fail (loudly), they do not skip.

mod support;

use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::amqp::{
    Answer, BROKER_URL, describe, quote, require_broker, unique, wait_connected, worker,
};
use support::gateway::{self, TestGateway};
use support::wait_until;
use support::ws::{self, Socket, close_code, send, send_text};

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
        wait_connected(&gw, "mq").await;
    }
    gw
}

async fn gateway(routes: &str) -> TestGateway {
    gateway_at(BROKER_URL, "", routes).await
}

/// The path of [`quote_route`].
const PATH: &str = "/ws/q";

/// A `websocket:` route at [`PATH`] onto `routing_key`, with `more` keys in its `amqp:`
/// and `route` lines for the route itself.
fn quote_route(routing_key: &str, more: &str, route: &str) -> String {
    format!(
        "routes:\n  - websocket: \"{PATH}\"\n    amqp: {{ upstream: mq, routing_key: {routing_key}{more} }}\n{route}"
    )
}

/// How long a reply may take: a round trip through the broker.
const REPLY_WITHIN: Duration = Duration::from_secs(10);

/// The next data frame as JSON (pings skipped), within [`REPLY_WITHIN`].
async fn next_json(socket: &mut Socket) -> Value {
    ws::next_json_within(socket, REPLY_WITHIN).await
}

/// The `google.rpc.Status` of the next frame, which must be an error frame.
async fn next_error(socket: &mut Socket) -> Value {
    ws::next_error_within(socket, REPLY_WITHIN).await
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
    let mut socket = ws::connect_with(&gw, PATH, &[("x-trace-id", "trace-ws-amqp-1")]).await;
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

    let routes = gateway::get_json(gw.admin_url("/admin/routes")).await;
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
    let mut socket = ws::connect(&gw, PATH).await;
    let total = WINDOW + 8;
    for n in 0..total {
        send(&mut socket, json!({ "n": n })).await;
    }
    wait_until("the window fills", Duration::from_secs(5), || {
        worker.received.load(Ordering::SeqCst) >= WINDOW
    })
    .await;
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
        quote(
            d,
            json!({ "code": 3, "message": "bad quote request", "details": [] }),
        )
    })
    .await;
    let mut socket = ws::connect(&gw, PATH).await;
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
    let mut socket = ws::connect(&gw, PATH).await;
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
    let mut socket = ws::connect(&gw, PATH).await;
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
    let queue = unique("ws-claims");
    let auth = ws::jwt_auth();
    let gw = gateway_at(
        BROKER_URL,
        &auth,
        &quote_route(&queue, "", "    auth: required\n"),
    )
    .await;
    let _worker = worker(&queue, |d| Answer::json(describe(d))).await;
    let bearer = format!("Bearer {}", ws::token("ann"));
    let mut socket = ws::connect_with(
        &gw,
        PATH,
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
    let (_held, address) = support::refusing_address();
    let port = address.port();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let gw = gateway_at(&url, "", &quote_route("q", "", "")).await;
    let mut socket = ws::connect(&gw, PATH).await;
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
    gateway::assert_refused(
        &config,
        &[
            "m.yaml:3: `reply: false` does not apply to a `websocket:` route",
            "m.yaml:5: `forward_authorization` does not apply to `amqp:` routes",
            "m.yaml:8: unknown AMQP upstream `nobody`",
            "m.yaml:10: request_type `shop.Nope` is not a message",
            "m.yaml:12: route has more than one target",
        ],
    )
    .await;
}
