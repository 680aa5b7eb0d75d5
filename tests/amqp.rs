//! HTTP → RabbitMQ end to end: a real gateway, the real broker on 127.0.0.1:5672, and
//! small in-test lapin workers. Every test uses queue names of its own, so the tests run
//! in parallel. Without a broker they fail (loudly), they do not skip.

mod support;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::amqp::{
    Answer, BROKER, BROKER_URL, connect, connected, describe, echo, quote, require_broker, unique,
    wait_connected, worker,
};
use support::gateway::{self, TestGateway, client};
use support::proxy::CutProxy;
use support::wait_until;

// ---------------------------------------------------------------------------------------
// Gateway

/// A gateway with one AMQP upstream `upstream` at `url` (timeout 3s) and `routes`, once
/// it is connected to the broker.
async fn gateway_with(upstream: &str, url: &str, routes: &str) -> TestGateway {
    require_broker().await;
    let descriptors = gateway::repo().join("descriptors");
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [mappings/]\nupstreams:\n  {upstream}:\n    amqp: {{ url: \"{url}\" }}\n    timeout: 3s\n",
        descriptors.display()
    );
    let gw = gateway::start(&config, &[("mappings/amqp.yaml", routes)]).await;
    wait_connected(&gw, upstream).await;
    gw
}

async fn gateway(routes: &str) -> TestGateway {
    gateway_with("mq", BROKER_URL, routes).await
}

async fn post(gw: &TestGateway, path: &str, body: &str) -> (u16, String, String) {
    let response = client()
        .post(gw.url(path))
        .header("content-type", "application/json")
        .header("x-trace-id", "trace-amqp-1")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    (status, content_type, response.text().await.expect("body"))
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------
// Request-reply

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trip_returns_the_reply_verbatim() {
    let queue = unique("verbatim");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/v1/shipping/quotes\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: {queue} }}\n"
    ))
    .await;
    let _worker = worker(&queue, |d| Answer {
        body: format!("got {}", String::from_utf8_lossy(&d.data)).into_bytes(),
        content_type: "text/plain; charset=utf-8",
        status: None,
        delay: Duration::ZERO,
    })
    .await;
    let (status, content_type, body) =
        post(&gw, "/v1/shipping/quotes", r#"{"productId":"1"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "text/plain; charset=utf-8");
    assert_eq!(body, r#"got {"productId":"1"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_message_carries_trace_path_and_query_headers() {
    let prefix = unique("headers");
    let queue = format!("{prefix}.shop");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/v1/things/{{kind}}/{{id}}\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: \"{prefix}.{{kind}}\" }}\n"
    ))
    .await;
    let _worker = worker(&queue, echo).await;
    let response = client()
        .post(gw.url("/v1/things/shop/42?color=red&tag=a&tag=b%20c"))
        .header("content-type", "application/json; charset=utf-8")
        .header("x-trace-id", "trace-headers-7")
        .header("x-user-id", "mallory")
        .body(r#"{"x":1}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-trace-id"], "trace-headers-7");
    let seen = parse(&response.text().await.unwrap());
    assert_eq!(seen["body"], r#"{"x":1}"#);
    assert_eq!(seen["routing_key"], queue.as_str());
    // Sent as `amq.rabbitmq.reply-to`; the broker hands workers its own routable form.
    assert!(
        seen["reply_to"]
            .as_str()
            .is_some_and(|r| r.starts_with("amq.rabbitmq.reply-to.")),
        "{seen}"
    );
    assert_eq!(seen["expiration"], "3000", "expiration = the timeout in ms");
    assert_eq!(seen["content_type"], "application/json; charset=utf-8");
    assert!(
        seen["correlation_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{seen}"
    );
    let headers = &seen["headers"];
    assert_eq!(headers["x-trace-id"], "trace-headers-7");
    assert!(headers["traceparent"].as_str().is_some(), "{headers}");
    assert_eq!(headers["x-path-kind"], "shop");
    assert_eq!(headers["x-path-id"], "42");
    assert_eq!(headers["x-query-color"], "red");
    assert_eq!(headers["x-query-tag"], json!(["a", "b c"]));
    assert!(
        headers.get("x-user-id").is_none(),
        "client headers are not forwarded: {headers}"
    );

    // A fresh correlation id per request.
    let again = parse(&post(&gw, "/v1/things/shop/43", "{}").await.2);
    assert_ne!(again["correlation_id"], seen["correlation_id"]);
    assert_eq!(again["headers"]["x-trace-id"], "trace-amqp-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_header_x_status_sets_the_http_status() {
    let queue = unique("status");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/s\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n"
    ))
    .await;
    let _worker = worker(&queue, |d| {
        let status = match &d.data[..] {
            b"int" => Some(AMQPValue::LongInt(404)),
            b"short" => Some(AMQPValue::ShortInt(201)),
            b"text" => Some(AMQPValue::LongString("409".into())),
            b"bad" => Some(AMQPValue::LongString("teapot".into())),
            _ => None,
        };
        Answer {
            status,
            ..Answer::json(json!({ "echo": String::from_utf8_lossy(&d.data) }))
        }
    })
    .await;
    for (body, expected) in [
        ("int", 404),
        ("short", 201),
        ("text", 409),
        ("none", 200),
        ("bad", 500),
    ] {
        let (status, _, reply) = post(&gw, "/s", body).await;
        assert_eq!(status, expected, "{body}: {reply}");
        if expected != 500 {
            assert_eq!(parse(&reply)["echo"], body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_routes_transcode_json_and_protobuf_both_ways() {
    let queue = unique("typed");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/v1/shipping/quotes\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue}, request_type: shop.shipping.v1.QuoteRequest, response_type: shop.shipping.v1.Quote }}\n"
    ))
    .await;
    let worker = worker(&queue, |d| {
        quote(d, json!({ "code": 3, "message": "bad quote request" }))
    })
    .await;

    let (status, content_type, body) = post(
        &gw,
        "/v1/shipping/quotes",
        r#"{"productId":"p-1","destination":"Lyon","quantity":3}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(
        parse(&body),
        json!({ "productId": "p-1", "priceCents": "9007199254740993", "carrier": "Lyon", "days": 3 })
    );

    // A JSON error reply of a typed route passes through as it is.
    let (status, _, body) = post(&gw, "/v1/shipping/quotes", r#"{"productId":"p-1"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(parse(&body)["message"], "bad quote request");

    // JSON that does not fit the message type never reaches the worker.
    let before = worker.received.load(Ordering::SeqCst);
    let (status, _, body) = post(&gw, "/v1/shipping/quotes", r#"{"quantity":"many"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(parse(&body)["code"], 3);
    assert_eq!(worker.received.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_in_time_is_504_and_the_late_reply_is_dropped() {
    let queue = unique("late");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/late\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n    timeout: 300ms\n"
    ))
    .await;
    let _worker = worker(&queue, |d| {
        let slow = &d.data[..] == b"first";
        Answer {
            delay: if slow {
                Duration::from_millis(700)
            } else {
                Duration::ZERO
            },
            ..Answer::json(json!({ "echo": String::from_utf8_lossy(&d.data) }))
        }
    })
    .await;
    let started = Instant::now();
    let (status, _, body) = post(&gw, "/late", "first").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(parse(&body)["code"], 4);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        parse(&post(&gw, "/late", "first").await.2)["code"],
        4,
        "still no reply in time"
    );

    // Let the late replies arrive (and be dropped), then the next request gets its own.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (status, _, body) = post(&gw, "/late", "second").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["echo"], "second");
    assert_eq!(gw.gateway.table().upstreams.amqp["mq"].in_flight(), 0);
}

/// Messages larger than a frame (RabbitMQ's frame_max is 128 KiB) go out and come back in
/// many frames; a reply over the 4 MiB the gateway accepts fails its own request only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_cross_in_frames_and_an_oversized_reply_fails_alone() {
    let queue = unique("large");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/big\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: {queue} }}\n"
    ))
    .await;
    // The reply: the request's bytes, repeated up to the size the request names.
    let _worker = worker(&queue, |d| {
        let size = serde_json::from_slice::<Value>(&d.data)
            .ok()
            .and_then(|v| v["size"].as_u64())
            .unwrap_or(0);
        Answer {
            body: d.data.iter().copied().cycle().take(size as usize).collect(),
            content_type: "application/octet-stream",
            status: None,
            delay: Duration::ZERO,
        }
    })
    .await;
    let request = json!({ "size": 1_500_000, "padding": "x".repeat(300_000) }).to_string();
    let (status, _, body) = post(&gw, "/big", &request).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1_500_000);
    assert!(
        body.bytes()
            .zip(request.bytes().cycle())
            .all(|(a, b)| a == b)
    );

    let (status, _, body) = post(&gw, "/big", &json!({ "size": 5_000_000 }).to_string()).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(parse(&body)["code"], 13, "{body}");
    let (status, _, body) = post(&gw, "/big", &json!({ "size": 11 }).to_string()).await;
    assert_eq!((status, body.as_str()), (200, r#"{"size":11}"#));
}

/// A message's headers travel in one frame: headers too large for it (here a long query
/// string under a small `frame_max`) fail that request with 400, instead of the broker
/// closing a connection every request shares — on the request-reply link and on the
/// publish connection alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_larger_than_a_frame_are_refused_and_the_connections_stay() {
    let queue = unique("frame");
    let gw = gateway_with(
        "mq",
        &format!("{BROKER_URL}?frame_max=4096"),
        &format!(
            "routes:\n  - http: {{ post: \"/q\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: {queue} }}\n  - http: {{ post: \"/p\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: {queue}, reply: false }}\n"
        ),
    )
    .await;
    let _worker = worker(&queue, echo).await;
    let reconnects = gw.gateway.table().upstreams.amqp["mq"].reconnects();
    // Under the gateway's 8 KiB URI limit, over the 4 KiB frame.
    let tag = "t".repeat(6_000);
    for path in ["/q", "/p"] {
        let (status, _, body) = post(&gw, &format!("{path}?tag={tag}"), r#"{"n":1}"#).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(parse(&body)["code"], 3, "{path}: {body}");
        assert!(body.contains("frame size"), "{path}: {body}");
    }
    let (status, _, body) = post(&gw, "/p?tag=short", r#"{"n":2}"#).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = post(&gw, "/q?tag=short", r#"{"n":3}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        gw.gateway.table().upstreams.amqp["mq"].reconnects(),
        reconnects
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_one_connection() {
    let queue = unique("many");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/many/{{n}}\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n"
    ))
    .await;
    // Replies come back in a scrambled order: only the correlation id can match them.
    let _worker = worker(&queue, |d| Answer {
        delay: Duration::from_millis(fastrand::u64(0..50)),
        ..echo(d)
    })
    .await;
    let http = client();
    let started = Instant::now();
    let requests = (0..200).map(|n| {
        let (http, url) = (http.clone(), gw.url(&format!("/many/{n}")));
        tokio::spawn(async move {
            let response = http
                .post(url)
                .body(format!(r#"{{"n":{n}}}"#))
                .send()
                .await
                .expect("request");
            (
                n,
                response.status().as_u16(),
                response.text().await.unwrap(),
            )
        })
    });
    for request in futures_util::future::join_all(requests).await {
        let (n, status, body) = request.expect("task");
        assert_eq!(status, 200, "{n}: {body}");
        let seen = parse(&body);
        assert_eq!(seen["body"], format!(r#"{{"n":{n}}}"#));
        assert_eq!(seen["headers"]["x-path-n"], n.to_string());
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let upstream = &gw.gateway.table().upstreams.amqp["mq"];
    assert_eq!(upstream.in_flight(), 0);
    assert_eq!(upstream.reconnects(), 0, "one connection throughout");
}

// ---------------------------------------------------------------------------------------
// Publish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_answers_202_once_confirmed_and_the_message_is_in_the_queue() {
    let prefix = unique("events");
    let queue = format!("{prefix}.created");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/v1/events/{{kind}}\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"\", routing_key: \"{prefix}.{{kind}}\", reply: false, persistent: true }}\n"
    ))
    .await;
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.as_str().into(), exclusive, FieldTable::default())
        .await
        .unwrap();

    let (status, content_type, body) =
        post(&gw, "/v1/events/created?source=web", r#"{"id":7}"#).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(body, "{}");

    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the confirmed message is in the queue");
    assert_eq!(message.delivery.data, br#"{"id":7}"#);
    let seen = describe(&message.delivery);
    assert_eq!(seen["delivery_mode"], 2, "persistent: {seen}");
    assert_eq!(seen["content_type"], "application/json");
    assert_eq!(seen["reply_to"], Value::Null);
    assert_eq!(seen["headers"]["x-path-kind"], "created");
    assert_eq!(seen["headers"]["x-query-source"], "web");
    assert_eq!(seen["headers"]["x-trace-id"], "trace-amqp-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_messages_are_503_not_lost() {
    let nobody = unique("nobody");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/publish\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {nobody}, reply: false }}\n  - http: {{ post: \"/rpc\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {nobody} }}\n"
    ))
    .await;
    for path in ["/publish", "/rpc"] {
        let started = Instant::now();
        let (status, _, body) = post(&gw, path, "{}").await;
        assert_eq!(status, 503, "{path}: {body}");
        let error = parse(&body);
        assert_eq!(error["code"], 14);
        assert!(
            error["message"].as_str().unwrap().contains("312"),
            "{error}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path}: at once, not at the deadline: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exchange_is_503_and_leaves_other_routes_alone() {
    let queue = unique("alone");
    let missing = unique("no-such-exchange");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/missing\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"{missing}\", routing_key: k, reply: false }}\n  - http: {{ post: \"/rpc\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n"
    ))
    .await;
    let _worker = worker(&queue, echo).await;
    for _ in 0..2 {
        let (status, _, body) = post(&gw, "/missing", "{}").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(&missing), "{body}");
        assert_eq!(post(&gw, "/rpc", "ok").await.0, 200);
    }
    assert_eq!(gw.gateway.table().upstreams.amqp["mq"].reconnects(), 0);
}

/// An exchange deleted after the gateway checked it: the next request makes the broker close
/// the request-reply channel. That request fails at once (503, not at its deadline), the
/// session reconnects by itself, the exchange is found missing (503 naming it), and once it
/// is back requests reach the broker again. (No queue is bound: a request that reaches the
/// exchange comes back unroutable, 312 NO_ROUTE, which tells the three states apart.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_deleted_under_the_link_fails_fast_and_recovers() {
    let exchange = unique("vanishing");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/rpc\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"{exchange}\", routing_key: k }}\n"
    ))
    .await;
    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let create = || async {
        channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Direct,
                Default::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    };
    create().await;
    let (status, _, body) = post(&gw, "/rpc", "one").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("NO_ROUTE"), "published and returned: {body}");

    channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await
        .unwrap();
    let started = Instant::now();
    let (status, _, body) = post(&gw, "/rpc", "two").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("lost"),
        "the channel was closed under it: {body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    wait_until("the gateway reconnects", Duration::from_secs(10), || {
        let table = gw.gateway.table();
        let upstream = &table.upstreams.amqp["mq"];
        upstream.reconnects() >= 1 && upstream.connected()
    })
    .await;
    let (status, _, body) = post(&gw, "/rpc", "three").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("does not exist"), "{body}");
    assert!(
        !body.contains("vhost"),
        "the broker's own words stay in the log: {body}"
    );

    // A missing exchange is asked about again after a second.
    create().await;
    let mut reached = false;
    for _ in 0..30 {
        let (status, _, body) = post(&gw, "/rpc", "four").await;
        assert_eq!(status, 503, "{body}");
        if body.contains("NO_ROUTE") {
            reached = true;
            break;
        }
        assert!(body.contains("does not exist"), "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(reached, "requests reach the exchange again once it is back");
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_creates_the_configured_topology() {
    require_broker().await;
    let (exchange, queue) = (unique("declared-exchange"), unique("declared-queue"));
    let config = format!(
        "mappings: [mappings/]\nupstreams:\n  mq:\n    amqp:\n      url: \"{BROKER_URL}\"\n      declare:\n        exchanges: [{{ name: \"{exchange}\", kind: topic }}]\n        queues: [\"{queue}\"]\n        bindings: [{{ queue: \"{queue}\", exchange: \"{exchange}\", routing_key: \"shop.#\" }}]\n"
    );
    let routes = format!(
        "routes:\n  - http: {{ post: \"/v1/events/{{kind}}\", body: \"*\" }}\n    amqp: {{ upstream: mq, exchange: \"{exchange}\", routing_key: \"shop.{{kind}}\", reply: false }}\n"
    );
    let gw = gateway::start(&config, &[("mappings/amqp.yaml", &routes)]).await;
    wait_until("connected", Duration::from_secs(10), || {
        connected(&gw, "mq")
    })
    .await;
    let (status, _, body) = post(&gw, "/v1/events/order-placed", r#"{"order":1}"#).await;
    assert_eq!(status, 202, "{body}");

    let connection = connect().await;
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("routed through the declared exchange and binding");
    assert_eq!(message.delivery.routing_key.as_str(), "shop.order-placed");
    assert_eq!(message.delivery.data, br#"{"order":1}"#);
    // Durable: clean up after the test.
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = channel
        .exchange_delete(exchange.as_str().into(), Default::default())
        .await;
}

// ---------------------------------------------------------------------------------------
// Broker trouble

/// The broker's URL through `proxy`.
fn proxied_url(proxy: &CutProxy) -> String {
    format!("amqp://guest:guest@{}/%2f", proxy.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_fails_fast_and_recovers_without_restart() {
    let queue = unique("cut");
    let proxy = CutProxy::start(BROKER).await;
    let gw = gateway_with(
        "mq",
        &proxied_url(&proxy),
        &format!(
            "routes:\n  - http: {{ post: \"/q\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n    timeout: 10s\n"
        ),
    )
    .await;
    // The worker talks to the broker directly: only the gateway's connection is cut.
    let _worker = worker(&queue, |d| Answer {
        delay: if &d.data[..] == b"slow" {
            Duration::from_secs(5)
        } else {
            Duration::ZERO
        },
        ..echo(d)
    })
    .await;
    assert_eq!(post(&gw, "/q", "before").await.0, 200);

    // In flight at the cut: 503 at once, not at the 10s deadline.
    let in_flight = {
        let url = gw.url("/q");
        tokio::spawn(async move {
            let response = client().post(url).body("slow").send().await.unwrap();
            (response.status().as_u16(), Instant::now())
        })
    };
    let upstream = gw.gateway.table().upstreams.amqp["mq"].clone();
    wait_until(
        "the slow request is in flight",
        Duration::from_secs(5),
        || upstream.in_flight() == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cut_at = Instant::now();
    proxy.cut();
    let (status, answered_at) = in_flight.await.unwrap();
    assert_eq!(status, 503);
    assert!(
        answered_at - cut_at < Duration::from_secs(2),
        "in-flight failed after {:?}",
        answered_at - cut_at
    );

    // While the broker is away: 503 fast, every time; the state shows it.
    wait_until(
        "the gateway sees the connection gone",
        Duration::from_secs(5),
        || !upstream.connected(),
    )
    .await;
    for _ in 0..5 {
        let started = Instant::now();
        let (status, _, body) = post(&gw, "/q", "while down").await;
        assert_eq!(status, 503, "{body}");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
    let admin = gateway::get_json(gw.admin_url("/admin/upstreams")).await;
    let mq = admin["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "mq")
        .expect("mq listed");
    assert_eq!(mq["connected"], false, "{mq}");
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "readiness does not depend on the broker"
    );

    // Back: the same gateway serves the route again on its own.
    proxy.restore();
    wait_until("the gateway reconnects", Duration::from_secs(15), || {
        upstream.connected()
    })
    .await;
    let (status, _, body) = post(&gw, "/q", "after").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(parse(&body)["body"], "after");
    assert!(upstream.reconnects() >= 1);
    assert_eq!(upstream.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_503_at_once_and_blocks_nothing() {
    require_broker().await;
    // A port nobody listens on.
    let (_held, address) = support::refusing_address();
    let port = address.port();
    let started = Instant::now();
    let descriptors = gateway::repo().join("descriptors");
    let config = format!(
        "descriptors: [\"{}\"]\nmappings: [mappings/]\nupstreams:\n  away:\n    amqp: {{ url: \"amqp://guest:guest@127.0.0.1:{port}/%2f\" }}\n",
        descriptors.display()
    );
    let routes = "routes:\n  - http: { post: \"/q\", body: \"*\" }\n    amqp: { upstream: away, routing_key: q }\n";
    let gw = gateway::start(&config, &[("mappings/amqp.yaml", routes)]).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _, body) = post(&gw, "/q", "{}").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(parse(&body)["code"], 14);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    assert!(!connected(&gw, "away"));
}

// ---------------------------------------------------------------------------------------
// Operations

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_metrics_show_the_broker_state() {
    switchboard::telemetry::prometheus(); // handles made before the recorder record nothing
    let queue = unique("metrics");
    let upstream = format!("mq_{}", fastrand::u32(..));
    let gw = gateway_with(
        &upstream,
        BROKER_URL,
        &format!(
            "routes:\n  - http: {{ post: \"/m\", body: \"*\" }}\n    amqp: {{ upstream: {upstream}, routing_key: {queue} }}\n"
        ),
    )
    .await;
    let _worker = worker(&queue, |d| Answer {
        delay: Duration::from_millis(if &d.data[..] == b"slow" { 800 } else { 0 }),
        ..echo(d)
    })
    .await;
    let slow = {
        let url = gw.url("/m");
        tokio::spawn(async move {
            client()
                .post(url)
                .body("slow")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let handle = gw.gateway.table().upstreams.amqp[&upstream].clone();
    wait_until("a request is in flight", Duration::from_secs(5), || {
        handle.in_flight() == 1
    })
    .await;

    let get_text = |path: &str| gateway::get_text(gw.admin_url(path));
    let admin = parse(&get_text("/admin/upstreams").await);
    let entry = admin["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream.as_str())
        .cloned()
        .expect("listed");
    assert_eq!(entry["protocol"], "amqp");
    assert_eq!(entry["connected"], true);
    assert_eq!(entry["in_flight"], 1);
    assert_eq!(
        entry["url"], "amqp://guest@127.0.0.1:5672/%2F",
        "no password"
    );
    let metrics = get_text("/metrics").await;
    for line in [
        format!("switchboard_amqp_connected{{upstream=\"{upstream}\"}} 1"),
        format!("switchboard_amqp_in_flight{{upstream=\"{upstream}\"}} 1"),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    assert_eq!(slow.await.unwrap(), 200);
    let metrics = get_text("/metrics").await;
    assert!(metrics.contains(&format!(
        "switchboard_amqp_in_flight{{upstream=\"{upstream}\"}} 0"
    )));
    assert!(metrics.contains(&format!(
        "switchboard_upstream_requests_total{{upstream=\"{upstream}\",code=\"Ok\"}} 1"
    )));

    let routes = parse(&get_text("/admin/routes").await);
    assert_eq!(routes["routes"][0]["target"]["kind"], "amqp-rpc");
    assert_eq!(routes["routes"][0]["target"]["routing_key"], queue.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_broker_connection() {
    let queue = unique("reload");
    let gw = gateway(&format!(
        "routes:\n  - http: {{ post: \"/r\", body: \"*\" }}\n    amqp: {{ upstream: mq, routing_key: {queue} }}\n"
    ))
    .await;
    let _worker = worker(&queue, echo).await;
    let before = gw.gateway.table().upstreams.amqp["mq"].clone();
    gw.gateway.reload().await.expect("reload");
    let after = gw.gateway.table().upstreams.amqp["mq"].clone();
    assert!(
        Arc::ptr_eq(&before, &after),
        "the same upstream, the same connection"
    );
    assert!(after.connected());
    assert_eq!(post(&gw, "/r", "x").await.0, 200);
    assert_eq!(after.reconnects(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_amqp_config_is_refused_with_its_line() {
    let dir = gateway::TempDir::new("amqp-check");
    let cases = [
        (
            "amqp: { upstream: nope, routing_key: k }",
            "unknown AMQP upstream `nope`",
        ),
        (
            "amqp: { upstream: mq, routing_key: \"a.{nope}\" }",
            "`{nope}` is not a variable",
        ),
        (
            "amqp: { upstream: mq, routing_key: k, request_type: no.Such }",
            "request_type `no.Such`",
        ),
        (
            "amqp: { upstream: mq, routing_key: k, reply: false, response_type: shop.shipping.v1.Quote }",
            "response_type",
        ),
        (
            "amqp: { upstream: mq, routing_key: k, colour: blue }",
            "colour",
        ),
    ];
    for (n, (target, expected)) in cases.iter().enumerate() {
        dir.write(
            &format!("m{n}/routes.yaml"),
            &format!("routes:\n  - http: {{ post: \"/x/{{id}}\", body: \"*\" }}\n    {target}\n"),
        );
        let config = dir.write(
            &format!("c{n}.yaml"),
            &format!(
                "descriptors: [\"{}\"]\nmappings: [m{n}/]\nupstreams:\n  mq:\n    amqp: {{ url: \"{BROKER_URL}\" }}\n",
                gateway::repo().join("descriptors").display()
            ),
        );
        let errors = match switchboard::Gateway::load(&config).await {
            Ok(_) => panic!("{target}: accepted"),
            Err(errors) => errors.to_string(),
        };
        assert!(errors.contains(expected), "{target}: {errors}");
        assert!(errors.contains("routes.yaml:"), "{target}: {errors}");
    }
    let config = dir.write(
        "bad-url.yaml",
        "upstreams:\n  mq:\n    amqp: { url: \"http://not-amqp\" }\n",
    );
    let errors = switchboard::Gateway::load(&config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(errors.contains("invalid AMQP url"), "{errors}");
    let config = dir.write(
        "retry.yaml",
        &format!("upstreams:\n  mq:\n    amqp: {{ url: \"{BROKER_URL}\" }}\n    retry: {{ attempts: 2 }}\n"),
    );
    let errors = switchboard::Gateway::load(&config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        errors.contains("`retry` applies to gRPC upstreams only"),
        "{errors}"
    );
}
