//! The broker topology, as far as the gateway touches it. It declares only what an
//! upstream's `declare:` lists (contract §9: the operator owns topology), and it checks
//! once per connection that an exchange a route publishes to exists: publishing to a
//! missing exchange makes the broker close the channel, and the RPC channel is shared by
//! every request in flight.

use crate::config::AmqpDeclare;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Connection, ExchangeKind};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// A missing exchange is looked for again after this long (a worker may create it).
const RECHECK_MISSING: Duration = Duration::from_secs(1);

/// Declares the durable exchanges and queues of `declare:` and binds them, on a channel
/// of its own. Names must fit AMQP's 255 bytes (checked when the upstream is built).
pub(super) async fn declare(connection: &Connection, declare: &AmqpDeclare) -> lapin::Result<()> {
    let channel = connection.create_channel().await?;
    for exchange in &declare.exchanges {
        let kind = match exchange.kind.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            other => ExchangeKind::Custom(other.to_string()),
        };
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.name.as_str().into(),
                kind,
                options,
                FieldTable::default(),
            )
            .await?;
    }
    for queue in &declare.queues {
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), options, FieldTable::default())
            .await?;
    }
    for binding in &declare.bindings {
        channel
            .queue_bind(
                binding.queue.as_str().into(),
                binding.exchange.as_str().into(),
                binding.routing_key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Refuses names AMQP cannot carry (more than 255 bytes), before anything connects.
pub(super) fn check_names(declare: &AmqpDeclare) -> Result<(), String> {
    let names = declare
        .exchanges
        .iter()
        .map(|e| &e.name)
        .chain(&declare.queues)
        .chain(
            declare
                .bindings
                .iter()
                .flat_map(|b| [&b.queue, &b.exchange, &b.routing_key]),
        );
    for name in names {
        ShortString::try_new(name.as_str()).map_err(|e| format!("declare: `{name}`: {e}"))?;
    }
    Ok(())
}

/// Which exchanges this connection has seen (or not seen) on the broker.
#[derive(Default)]
pub(super) struct Exchanges {
    known: Mutex<HashMap<String, Option<Instant>>>,
}

impl Exchanges {
    /// What is known of `name` without asking the broker: `Ok` when it exists (the
    /// default exchange `""` always does), `Err` when it was missing less than
    /// `RECHECK_MISSING` ago, `None` when the broker must be asked (`ask`).
    pub(super) fn known(&self, name: &str) -> Option<Result<(), String>> {
        if name.is_empty() {
            return Some(Ok(()));
        }
        let known = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied();
        match known? {
            None => Some(Ok(())),
            Some(missing_since) if missing_since.elapsed() < RECHECK_MISSING => {
                Some(Err(format!("exchange `{name}` does not exist")))
            }
            Some(_) => None,
        }
    }

    /// Asks the broker whether `name` exists, and remembers the answer for this
    /// connection. The caller bounds this with its deadline.
    pub(super) async fn ask(&self, connection: &Connection, name: &str) -> Result<(), String> {
        // A passive declare on a throwaway channel: when the exchange is missing, the
        // broker closes that channel, not one that requests share.
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let result = channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                passive,
                FieldTable::default(),
            )
            .await;
        let missing = result.is_err().then(Instant::now);
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), missing);
        // The broker's words (its vhost, its codes) go to the log, not to the client.
        result.map_err(|error| {
            tracing::warn!(exchange = name, %error, "AMQP exchange check failed");
            format!("exchange `{name}` does not exist or is not available")
        })
    }
}
