//! The demo shop's shipping-quote worker on RabbitMQ: answers request-reply messages the
//! gateway sends on `POST /v1/shipping/quotes`.
//!
//! ```text
//! cargo run --example shipping_worker -- [--url amqp://guest:guest@127.0.0.1:5672/%2f] [--queue shipping.quote]
//! ```
//!
//! The worker owns its topology: it declares its (durable) queue itself. A request is
//! `shop.shipping.v1.QuoteRequest` and the reply a `Quote`: as protobuf when the request's
//! content type is `application/x-protobuf`, as JSON otherwise. A request it cannot read
//! gets a JSON `google.rpc.Status` with the reply header `x-status: 400`. The reply goes
//! to the request's `reply_to` with its `correlation_id`. `AMQP_URL` sets the default URL.

#[path = "shop/mod.rs"]
mod shop;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use prost::Message as _;
use shop::pb::shop::shipping::v1::{Quote, QuoteRequest};
use std::process::ExitCode;

const USAGE: &str = "usage: shipping_worker [--url AMQP_URL] [--queue NAME]";
const PROTOBUF: &str = "application/x-protobuf";
/// Requests handled at once (the broker's prefetch window).
const PREFETCH: u16 = 256;

struct Args {
    url: String,
    queue: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: std::env::var("AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        queue: "shipping.quote".into(),
    };
    let mut argv = std::env::args().skip(1);
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--queue" => args.queue = value()?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shipping_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), lapin::Error> {
    let connection = connect(&args.url).await?;
    let channel = connection.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(args.queue.as_str().into(), durable, FieldTable::default())
        .await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            args.queue.as_str().into(),
            "shipping_worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "shipping_worker: answering quotes on queue `{}`",
        args.queue
    );
    let mut stop = std::pin::pin!(shutdown_signal());
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = &mut stop => break,
        };
        let Some(delivery) = delivery else { break };
        let channel = channel.clone();
        // Handled concurrently (up to the prefetch window), each on its own task.
        tokio::spawn(async move {
            match delivery {
                Ok(delivery) => {
                    if let Err(e) = answer(&channel, &delivery).await {
                        eprintln!("shipping_worker: cannot answer: {e}");
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) => eprintln!("shipping_worker: delivery failed: {e}"),
            }
        });
    }
    let bye = connection.close(200, "bye".into());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), bye).await;
    Ok(())
}

/// SIGINT (Ctrl-C) or SIGTERM (`docker stop`).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Connects, retrying for a minute: under docker compose the broker starts with the worker.
async fn connect(url: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name("shipping_worker".into());
    let mut attempts = 0;
    loop {
        match Connection::connect(url, properties.clone()).await {
            Ok(connection) => return Ok(connection),
            Err(e) if attempts < 60 => {
                if attempts == 0 {
                    eprintln!("shipping_worker: cannot connect yet ({e}); retrying");
                }
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Sends the reply of one request to its `reply_to`; a request without one is dropped.
async fn answer(channel: &Channel, delivery: &lapin::message::Delivery) -> lapin::Result<()> {
    let properties = &delivery.properties;
    let Some(reply_to) = properties.reply_to().clone() else {
        return Ok(());
    };
    let protobuf = properties
        .content_type()
        .as_ref()
        .is_some_and(|c| c.as_str() == PROTOBUF);
    let (body, content_type, status) = match read_request(&delivery.data, protobuf) {
        Ok(request) => {
            let quote = quote(&request);
            if protobuf {
                (quote.encode_to_vec(), PROTOBUF, None)
            } else {
                (quote_json(&quote).into_bytes(), "application/json", None)
            }
        }
        Err(message) => {
            let status = serde_json::json!({ "code": 3, "message": message, "details": [] });
            (
                status.to_string().into_bytes(),
                "application/json",
                Some(400),
            )
        }
    };
    let mut reply = BasicProperties::default().with_content_type(content_type.into());
    if let Some(correlation_id) = properties.correlation_id() {
        reply = reply.with_correlation_id(correlation_id.clone());
    }
    if let Some(status) = status {
        let mut headers = FieldTable::default();
        headers.insert("x-status".into(), AMQPValue::LongInt(status));
        reply = reply.with_headers(headers);
    }
    channel
        .basic_publish(
            ShortString::default(),
            reply_to,
            BasicPublishOptions::default(),
            &body,
            reply,
        )
        .await?;
    Ok(())
}

/// The request as protobuf or JSON (proto or JSON field names), checked.
fn read_request(body: &[u8], protobuf: bool) -> Result<QuoteRequest, String> {
    let request = if protobuf {
        QuoteRequest::decode(body).map_err(|e| format!("not a QuoteRequest: {e}"))?
    } else {
        let json: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
        let text = |camel: &str, snake: &str| {
            json.get(camel)
                .or_else(|| json.get(snake))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        QuoteRequest {
            product_id: text("productId", "product_id"),
            destination: text("destination", "destination"),
            quantity: json
                .get("quantity")
                .and_then(serde_json::Value::as_i64)
                .and_then(|q| i32::try_from(q).ok())
                .unwrap_or(1),
        }
    };
    if request.product_id.is_empty() {
        return Err("productId is required".into());
    }
    if request.quantity <= 0 {
        return Err("quantity must be positive".into());
    }
    Ok(request)
}

/// A made-up but deterministic tariff: a base price, per item, and by distance.
fn quote(request: &QuoteRequest) -> Quote {
    let far = request.destination.len() as i64 > 8;
    Quote {
        product_id: request.product_id.clone(),
        price_cents: 499 + 150 * i64::from(request.quantity) + if far { 900 } else { 0 },
        carrier: if far { "SeaFreight" } else { "QuickShip" }.into(),
        days: if far { 9 } else { 2 },
    }
}

/// The proto3 JSON form of a `Quote` (int64 as a string, like the gateway writes it).
fn quote_json(quote: &Quote) -> String {
    serde_json::json!({
        "productId": quote.product_id,
        "priceCents": quote.price_cents.to_string(),
        "carrier": quote.carrier,
        "days": quote.days,
    })
    .to_string()
}
