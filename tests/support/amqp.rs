//! RabbitMQ for the tests: the broker on 127.0.0.1:5672 (which must be running: these
//! tests fail loudly without it), unique names, and small in-test lapin workers.

use super::gateway::TestGateway;
use super::shop::pb::shop::shipping::v1::{Quote, QuoteRequest};
use super::wait_until;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use prost::Message as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;

pub const BROKER: &str = "127.0.0.1:5672";
pub const BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Fails the test when no broker listens: these tests exist to run against one.
pub async fn require_broker() {
    let reachable = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(BROKER)).await;
    if !matches!(reachable, Ok(Ok(_))) {
        panic!(
            "RabbitMQ not reachable on 127.0.0.1:5672: start it with `rabbitmq-server -detached` (or scripts/services)"
        );
    }
}

/// A queue or key name no other test (or run) uses.
pub fn unique(tag: &str) -> String {
    format!(
        "sbtest.{tag}.{}.{:08x}",
        std::process::id(),
        fastrand::u32(..)
    )
}

// ---------------------------------------------------------------------------------------
// Test workers

/// What a test worker sends back for one request.
pub struct Answer {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub status: Option<AMQPValue>,
    pub delay: Duration,
}

impl Answer {
    pub fn json(value: Value) -> Self {
        Self {
            body: value.to_string().into_bytes(),
            content_type: "application/json",
            status: None,
            delay: Duration::ZERO,
        }
    }
}

/// A worker on a connection of its own: it declares `queue` (exclusive, so it goes away
/// with the test) and answers each request with `respond`. It stops when dropped.
pub struct Worker {
    pub received: Arc<AtomicUsize>,
    _connection: Connection,
}

pub async fn connect() -> Connection {
    Connection::connect(BROKER_URL, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ")
}

pub async fn worker(
    queue: &str,
    respond: impl Fn(&Delivery) -> Answer + Send + Sync + 'static,
) -> Worker {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), exclusive, FieldTable::default())
        .await
        .expect("declare the worker queue");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            ShortString::default(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let received = Arc::new(AtomicUsize::new(0));
    let (counter, replies, respond) = (received.clone(), channel.clone(), Arc::new(respond));
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let (channel, respond) = (replies.clone(), respond.clone());
            tokio::spawn(async move {
                let answer = respond(&delivery);
                tokio::time::sleep(answer.delay).await;
                let Some(reply_to) = delivery.properties.reply_to().clone() else {
                    return;
                };
                let mut properties =
                    BasicProperties::default().with_content_type(answer.content_type.into());
                if let Some(id) = delivery.properties.correlation_id() {
                    properties = properties.with_correlation_id(id.clone());
                }
                if let Some(status) = answer.status {
                    let mut headers = FieldTable::default();
                    headers.insert("x-status".into(), status);
                    properties = properties.with_headers(headers);
                }
                let _ = channel
                    .basic_publish(
                        ShortString::default(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &answer.body,
                        properties,
                    )
                    .await;
            });
        }
    });
    Worker {
        received,
        _connection: connection,
    }
}

/// Everything the worker saw of a request, as JSON.
pub fn describe(delivery: &Delivery) -> Value {
    let p = &delivery.properties;
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.to_string());
    let headers: serde_json::Map<String, Value> = p
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_json(v)))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "body": String::from_utf8_lossy(&delivery.data),
        "routing_key": delivery.routing_key.as_str(),
        "correlation_id": text(p.correlation_id()),
        "reply_to": text(p.reply_to()),
        "expiration": text(p.expiration()),
        "content_type": text(p.content_type()),
        "delivery_mode": p.delivery_mode(),
        "headers": headers,
    })
}

pub fn amqp_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into(),
        AMQPValue::ShortString(s) => s.as_str().into(),
        AMQPValue::FieldArray(items) => items.as_slice().iter().map(amqp_json).collect(),
        other => format!("{other:?}").into(),
    }
}

/// Whether the gateway's AMQP upstream `upstream` is connected to the broker.
pub fn connected(gw: &TestGateway, upstream: &str) -> bool {
    gw.gateway.table().upstreams.amqp[upstream].connected()
}

/// Waits (up to 10 s) until the gateway's AMQP upstream `upstream` is connected.
pub async fn wait_connected(gw: &TestGateway, upstream: &str) {
    wait_until(
        "the gateway connects to RabbitMQ",
        Duration::from_secs(10),
        || connected(gw, upstream),
    )
    .await;
}

/// A shipping-quote service: a protobuf `QuoteRequest` with a positive quantity gets a
/// protobuf `Quote`; anything else gets `x-status: 400` with `refusal` as its JSON body.
pub fn quote(delivery: &Delivery, refusal: Value) -> Answer {
    let protobuf = delivery
        .properties
        .content_type()
        .as_ref()
        .is_some_and(|c| c.as_str() == "application/x-protobuf");
    match QuoteRequest::decode(&delivery.data[..]) {
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
            ..Answer::json(refusal)
        },
    }
}

/// Echoes what it received.
pub fn echo(delivery: &Delivery) -> Answer {
    Answer::json(describe(delivery))
}
