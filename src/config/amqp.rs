//! The AMQP parts of the config files (contract §3, §4, §9): the `amqp:` of an upstream
//! in `switchboard.yaml`, and the `amqp:` target of a route in a mapping file.

use serde::Deserialize;

/// `upstreams.<name>.amqp`: one RabbitMQ connection, shared by every route onto it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpUpstreamConfig {
    /// `amqp://user:password@host:5672/%2f` (`%2f` is the vhost `/`). Query parameters
    /// such as `?heartbeat=30` are honoured; the heartbeat defaults to 10s.
    pub url: String,
    /// Topology the gateway declares after every (re)connect. Absent: none — the operator
    /// and the workers own the topology (contract §9).
    #[serde(default)]
    pub declare: Option<AmqpDeclare>,
    /// TLS settings of an `amqps://` url (system roots without it).
    #[serde(default)]
    pub tls: Option<super::UpstreamTlsConfig>,
}

/// `declare:` — durable exchanges and queues to create when missing, and bindings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpDeclare {
    #[serde(default)]
    pub exchanges: Vec<AmqpExchange>,
    #[serde(default)]
    pub queues: Vec<String>,
    #[serde(default)]
    pub bindings: Vec<AmqpBinding>,
}

/// `{ queue, exchange, routing_key }`: the queue receives what matches on the exchange.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpBinding {
    pub queue: String,
    pub exchange: String,
    #[serde(default)]
    pub routing_key: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpExchange {
    pub name: String,
    /// `direct` (default), `fanout`, `topic` or `headers`.
    #[serde(default = "default_exchange_kind")]
    pub kind: String,
}

fn default_exchange_kind() -> String {
    "direct".into()
}

/// A route's `amqp:` target: request-reply (default) or publish (`reply: false`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AmqpTarget {
    pub upstream: String,
    /// `""` (the default exchange) when absent.
    #[serde(default)]
    pub exchange: String,
    /// May name path variables: `shop.{kind}`.
    pub routing_key: String,
    /// A path variable in `routing_key` may hold `.` (several topic words). Off: a value
    /// with `.` is refused (400), so a client cannot reach other bindings of a topic
    /// exchange. `#` and `*` are refused either way.
    #[serde(default)]
    pub routing_key_allow_dots: bool,
    /// `false`: publish with confirms and answer 202, wait for no reply.
    #[serde(default = "default_reply")]
    pub reply: bool,
    /// Delivery mode 2 (the broker writes the message to disk in durable queues).
    #[serde(default)]
    pub persistent: bool,
    /// Protobuf message (full name) the JSON request body is transcoded to.
    #[serde(default)]
    pub request_type: Option<String>,
    /// Protobuf message (full name) a protobuf reply is transcoded from, to JSON.
    #[serde(default)]
    pub response_type: Option<String>,
}

fn default_reply() -> bool {
    true
}
