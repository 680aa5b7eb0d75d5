//! RabbitMQ (AMQP 0-9-1) upstreams. Each upstream keeps one connection, owned by a
//! background task that connects, watches and reconnects it with capped, jittered
//! exponential backoff. Requests use the current session, or fail at once with 503 while
//! there is none: connecting never blocks a config load, and no request waits for it.
//!
//! A session is one connection with two long-lived channels:
//! - the RPC channel, which also carries the one direct reply-to consumer (`rpc`);
//! - the publish channel for `reply: false` routes, in confirm mode (`publish`).
//!
//! No channel and no queue is created per request.

pub mod message;
mod publish;
mod rpc;
mod topology;

use crate::config::{AmqpDeclare, AmqpUpstreamConfig};
use crate::error::GatewayError;
use crate::telemetry::UpstreamMetrics;
use crate::tls::client::ClientTls;
use crate::upstream::backoff::{Backoff, Jitter};
use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Connection, ConnectionProperties, Event};
use metrics::{Counter, Gauge, counter, gauge};
use publish::Publisher;
use rpc::Replies;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long connecting, opening the channels and declaring may take in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnects after a failure or a lost connection: 100 ms doubling up to 5 s, with jitter
/// (50–100%) so that many gateways do not reconnect in step after a broker restart.
const RECONNECT: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(5),
    Jitter::Down,
);
/// Heartbeat asked for when the URL names none: a silent broker is noticed within ~20s.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// How often the session is checked besides on lapin's error events.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often abandoned publisher confirms are collected (see `Publisher::sweep`).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// One AMQP upstream. Dropping it (a reload removed or changed it) closes its connection.
pub struct AmqpUpstream {
    pub name: String,
    /// The config it was built from, so a reload can keep it (and its connection).
    pub config: AmqpUpstreamConfig,
    /// What the `tls:` files held when it was built (`tls::client::fingerprint`).
    pub tls_files: u64,
    /// The URL without its password, for the admin API and logs.
    pub display_url: String,
    shared: Arc<Shared>,
    /// The connection task's inputs until [`AmqpUpstream::start`] spawns it.
    pending: std::sync::Mutex<Option<PendingStart>>,
    _stop: oneshot::Sender<()>,
}

struct PendingStart {
    uri: AMQPUri,
    declare: Option<AmqpDeclare>,
    tls: Option<Arc<BrokerTls>>,
    stopped: oneshot::Receiver<()>,
}

/// How an `amqps://` connection is secured: our rustls config (ring, `tls:` roots and
/// client certificate) and the name the broker's certificate must carry.
struct BrokerTls {
    config: Arc<rustls::ClientConfig>,
    server_name: String,
}

impl std::fmt::Debug for AmqpUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpUpstream")
            .field("name", &self.name)
            .field("url", &self.display_url)
            .finish()
    }
}

/// What requests and the connection task share.
struct Shared {
    name: String,
    session: ArcSwapOption<Session>,
    in_flight: AtomicUsize,
    reconnects: AtomicU64,
    metrics: AmqpMetrics,
}

/// A reply to a request, as the worker sent it.
#[derive(Debug)]
pub struct Reply {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// A message to send. `properties` carries what the route decides (content type,
/// headers, delivery mode); the upstream adds what request-reply needs.
pub struct Message<'a> {
    pub exchange: &'a ShortString,
    pub routing_key: ShortString,
    pub payload: &'a [u8],
    pub properties: BasicProperties,
}

impl AmqpUpstream {
    /// Checks the URL and names; connects nothing yet (see [`AmqpUpstream::start`]), so
    /// `switchboard check` stays offline.
    pub fn new(name: &str, config: &AmqpUpstreamConfig) -> Result<Self, String> {
        let mut uri: AMQPUri = config
            .url
            .parse()
            .map_err(|e| format!("upstream `{name}`: invalid AMQP url: {e}"))?;
        let tls = match uri.scheme {
            AMQPScheme::AMQPS => {
                let tls = ClientTls::load(config.tls.as_ref(), &[])
                    .and_then(|tls| {
                        let server_name = tls.name_for(&uri.authority.host)?.to_str().into_owned();
                        Ok(BrokerTls {
                            config: tls.config,
                            server_name,
                        })
                    })
                    .map_err(|e| format!("upstream `{name}`: {e}"))?;
                Some(Arc::new(tls))
            }
            AMQPScheme::AMQP if config.tls.is_some() => {
                return Err(format!(
                    "upstream `{name}`: `tls` is set but the url is not `amqps://`"
                ));
            }
            AMQPScheme::AMQP => None,
        };
        if let Some(declare) = &config.declare {
            topology::check_names(declare).map_err(|e| format!("upstream `{name}`: {e}"))?;
        }
        uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
        let display_url = format!(
            "{}://{}@{}:{}/{}",
            if tls.is_some() { "amqps" } else { "amqp" },
            uri.authority.userinfo.username,
            uri.authority.host,
            uri.authority.port,
            percent_encoding::utf8_percent_encode(&uri.vhost, percent_encoding::NON_ALPHANUMERIC)
        );
        let shared = Arc::new(Shared {
            name: name.to_string(),
            session: ArcSwapOption::empty(),
            in_flight: AtomicUsize::new(0),
            reconnects: AtomicU64::new(0),
            metrics: AmqpMetrics::new(name),
        });
        let (stop, stopped) = oneshot::channel();
        Ok(Self {
            name: name.to_string(),
            config: config.clone(),
            tls_files: crate::tls::client::fingerprint(config.tls.as_ref()),
            display_url,
            shared,
            pending: std::sync::Mutex::new(Some(PendingStart {
                uri,
                declare: config.declare.clone(),
                tls,
                stopped,
            })),
            _stop: stop,
        })
    }

    /// Starts connecting (and reconnecting) in the background; once. Needs a tokio
    /// runtime: the serving gateway calls it when a table goes live.
    pub fn start(&self) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(PendingStart {
            uri,
            declare,
            tls,
            stopped,
        }) = pending
        {
            tokio::spawn(maintain(self.shared.clone(), uri, declare, tls, stopped));
        }
    }

    pub fn connected(&self) -> bool {
        self.shared.session.load().is_some()
    }

    /// Requests sent and not answered (RPC) or not yet confirmed (publish).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// Connections made after the first one.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    /// Request-reply: publishes with `reply_to` = direct reply-to, a fresh
    /// `correlation_id` and `expiration` = `timeout`, then waits for the reply.
    /// 503 when disconnected, refused or cut off; 504 when no reply came in time.
    pub async fn call(
        &self,
        message: Message<'_>,
        timeout: Duration,
    ) -> Result<Reply, GatewayError> {
        self.measured(timeout, self.call_within(message, timeout))
            .await
    }

    /// Publish without reply: `Ok` once the broker confirmed the message.
    pub async fn publish(
        &self,
        message: Message<'_>,
        timeout: Duration,
    ) -> Result<(), GatewayError> {
        self.measured(timeout, self.publish_within(message)).await
    }

    /// Runs one call under the deadline, counted in flight and in the metrics.
    async fn measured<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<T, GatewayError>>,
    ) -> Result<T, GatewayError> {
        let started = Instant::now();
        let _in_flight = self.shared.track();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::deadline_exceeded(format!(
                "upstream `{}` did not answer within {timeout:?}",
                self.name
            ))),
        };
        let code = result.as_ref().map_or_else(|e| e.code, |_| tonic::Code::Ok);
        self.shared.metrics.calls.record(code, started.elapsed());
        result
    }

    async fn call_within(
        &self,
        message: Message<'_>,
        timeout: Duration,
    ) -> Result<Reply, GatewayError> {
        let session = self.session()?;
        self.check_exchange(&session, message.exchange).await?;
        let mut pending = session.replies.register().ok_or_else(|| self.lost())?;
        let properties = message
            .properties
            .with_reply_to(rpc::REPLY_TO.into())
            .with_correlation_id(pending.correlation_id.clone())
            .with_expiration(timeout.as_millis().to_string().into());
        session
            .rpc
            .enqueue(
                message.exchange,
                message.routing_key,
                message.payload,
                properties,
            )
            .await
            .map_err(|e| self.broker_error(e))?;
        pending.reply().await.map_err(|no_reply| match no_reply {
            rpc::NoReply::Lost => self.lost(),
            rpc::NoReply::Returned(refused) => self.unavailable(refused.to_string()),
        })
    }

    async fn publish_within(&self, message: Message<'_>) -> Result<(), GatewayError> {
        let session = self.session()?;
        self.check_exchange(&session, message.exchange).await?;
        self.send(
            &session.publish,
            message.exchange,
            message.routing_key,
            message.payload,
            message.properties,
        )
        .await
    }

    /// Publishes, and waits for the broker's confirm.
    async fn send(
        &self,
        publisher: &Publisher,
        exchange: &ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), GatewayError> {
        let confirmation = publisher
            .publish(exchange, routing_key, payload, properties)
            .await
            .map_err(|e| self.broker_error(e))?
            .await
            .map_err(|e| self.broker_error(e))?;
        publish::accepted(confirmation).map_err(|refused| self.unavailable(format!("{refused}")))
    }

    async fn check_exchange(
        &self,
        session: &Session,
        exchange: &ShortString,
    ) -> Result<(), GatewayError> {
        session
            .exchanges
            .check(&session.connection, exchange.as_str())
            .await
            .map_err(|e| self.unavailable(e))
    }

    /// The live session, or 503 at once.
    fn session(&self) -> Result<Arc<Session>, GatewayError> {
        let session = self
            .shared
            .session
            .load_full()
            .ok_or_else(|| self.unavailable("not connected to the broker".into()))?;
        if session.connection.status().blocked() {
            return Err(self.unavailable("the broker blocks publishing (resource alarm)".into()));
        }
        Ok(session)
    }

    fn unavailable(&self, why: String) -> GatewayError {
        GatewayError::unavailable(format!("upstream `{}`: {why}", self.name))
    }

    fn lost(&self) -> GatewayError {
        self.unavailable("the connection to the broker was lost".into())
    }

    /// The broker's own text may name hosts and internals: it goes to the log only.
    fn broker_error(&self, error: lapin::Error) -> GatewayError {
        self.unavailable("broker error".into())
            .with_origin(crate::error::Origin::Upstream)
            .with_cause(error.to_string())
    }
}

impl Shared {
    fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.metrics.in_flight.increment(1.0);
        InFlight(self)
    }
}

/// Counts one request in flight while it lives.
struct InFlight<'a>(&'a Shared);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.in_flight.decrement(1.0);
    }
}

struct AmqpMetrics {
    connected: Gauge,
    in_flight: Gauge,
    reconnects: Counter,
    /// The same per-upstream RED metrics as gRPC upstreams (outcome as a gRPC code).
    calls: UpstreamMetrics,
}

impl AmqpMetrics {
    fn new(upstream: &str) -> Self {
        let label = upstream.to_string();
        Self {
            connected: gauge!("switchboard_amqp_connected", "upstream" => label.clone()),
            in_flight: gauge!("switchboard_amqp_in_flight", "upstream" => label.clone()),
            reconnects: counter!("switchboard_amqp_reconnects_total", "upstream" => label),
            calls: UpstreamMetrics::new(upstream),
        }
    }
}

type Events = Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>;

/// One connection and its long-lived channels.
struct Session {
    connection: Connection,
    rpc: Publisher,
    replies: Arc<Replies>,
    publish: Publisher,
    exchanges: topology::Exchanges,
    /// The reply consumer, the return collector and the confirm sweeper, stopped with
    /// the session.
    tasks: Vec<JoinHandle<()>>,
}

impl Session {
    async fn open(
        name: &str,
        uri: &AMQPUri,
        declare: Option<&AmqpDeclare>,
        tls: Option<&Arc<BrokerTls>>,
    ) -> lapin::Result<(Arc<Session>, Events)> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("switchboard {name}").into());
        let connection = match tls {
            None => Connection::connect_uri(uri.clone(), properties).await?,
            Some(tls) => connect_tls(uri, tls.clone(), properties).await?,
        };
        // Listen before anything can fail, or the error event is not kept for us.
        let events: Events = Box::pin(connection.events_listener());
        if let Some(declare) = declare {
            topology::declare(&connection, declare).await?;
        }
        let rpc = Publisher::open(&connection, false).await?;
        // Direct reply-to: consume (no_ack) on the channel that publishes, before it does.
        let consumer = rpc
            .channel
            .basic_consume(
                rpc::REPLY_TO.into(),
                ShortString::default(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let publish = Publisher::open(&connection, true).await?;
        let replies = Arc::new(Replies::new());
        let consumer_task = tokio::spawn(rpc::consume_replies(consumer, replies.clone()));
        let returns = tokio::spawn(rpc::collect_returns(rpc.channel.clone(), replies.clone()));
        let publish_channel = publish.channel.clone();
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                publish::sweep(&publish_channel).await;
            }
        });
        let session = Session {
            connection,
            rpc,
            replies,
            publish,
            exchanges: topology::Exchanges::default(),
            tasks: vec![consumer_task, returns, sweeper],
        };
        Ok((Arc::new(session), events))
    }

    /// Why the session cannot serve any more, if it cannot.
    fn broken(&self) -> Option<&'static str> {
        if !self.connection.status().connected() {
            Some("connection closed")
        } else if !self.rpc.channel.status().connected() {
            Some("RPC channel closed")
        } else if !self.publish.channel.status().connected() {
            Some("publish channel closed")
        } else if self.replies.is_closed() {
            Some("reply consumer stopped")
        } else {
            None
        }
    }

    /// Returns when the session broke, with the reason. lapin reports channel errors as
    /// connection events too (a probe channel closed by a passive declare is one); only
    /// the state of the session's own connection and channels decides.
    async fn watch(&self, mut events: Events) -> String {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Event::Error(error)) => {
                        if let Some(why) = self.broken() {
                            return format!("{why}: {error}");
                        }
                        tracing::debug!(%error, "AMQP error event on a channel the session does not need");
                    }
                    Some(_) => {}
                    None => return "connection closed".into(),
                },
                _ = tick.tick() => {
                    if let Some(why) = self.broken() {
                        return why.into();
                    }
                }
            }
        }
    }

    /// Fails the requests still waiting, and closes the connection if it is still open.
    async fn close(&self) {
        self.replies.close();
        let bye = self.connection.close(200, "switchboard closing".into());
        let _ = tokio::time::timeout(Duration::from_secs(2), bye).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The connection task of one upstream: connect, serve until the session breaks, back
/// off, again — until the upstream is dropped.
async fn maintain(
    shared: Arc<Shared>,
    uri: AMQPUri,
    declare: Option<AmqpDeclare>,
    tls: Option<Arc<BrokerTls>>,
    mut stop: oneshot::Receiver<()>,
) {
    let name = shared.name.clone();
    let mut failures: u32 = 0;
    let mut ever_connected = false;
    // A new upstream of the same name (its config changed) starts from "not connected".
    shared.metrics.connected.set(0.0);
    loop {
        let opening = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Session::open(&name, &uri, declare.as_ref(), tls.as_ref()),
        );
        let opened = tokio::select! {
            _ = &mut stop => return,
            opened = opening => opened,
        };
        let error = match opened {
            Ok(Ok((session, events))) => {
                if ever_connected {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.reconnects.increment(1);
                }
                ever_connected = true;
                failures = 0;
                shared.session.store(Some(session.clone()));
                shared.metrics.connected.set(1.0);
                tracing::info!(upstream = %name, "connected to the AMQP broker");
                let reason = tokio::select! {
                    _ = &mut stop => {
                        shared.session.store(None);
                        session.close().await;
                        return;
                    }
                    reason = session.watch(events) => reason,
                };
                shared.session.store(None);
                // Requests still waiting for a reply fail now, not at their deadline; a
                // connection that is still up (a channel failed) is closed, not leaked.
                session.close().await;
                shared.metrics.connected.set(0.0);
                tracing::warn!(upstream = %name, %reason, "lost the AMQP connection; reconnecting");
                None
            }
            Ok(Err(error)) => Some(error.to_string()),
            Err(_) => Some(format!("no connection within {CONNECT_TIMEOUT:?}")),
        };
        if let Some(error) = error {
            if failures == 0 {
                tracing::warn!(upstream = %name, %error, "cannot connect to the AMQP broker; retrying with backoff");
            } else {
                tracing::debug!(upstream = %name, %error, failures, "AMQP connect attempt failed");
            }
        }
        let delay = RECONNECT.delay(failures);
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Opens an `amqps://` connection through lapin's transport hook: a plain TCP stream to
/// the broker, then a TLS handshake with our rustls config (lapin's own `amqps://` path
/// would build a config of its own, with roots and a provider we do not choose).
async fn connect_tls(
    uri: &AMQPUri,
    tls: Arc<BrokerTls>,
    properties: ConnectionProperties,
) -> lapin::Result<Connection> {
    use lapin::tcp::{AMQPUriTcpExt, RustlsConnector};
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri.clone(),
        runtime,
        async move |mut uri: AMQPUri, runtime| {
            // The TCP part only: TLS is added below.
            uri.scheme = AMQPScheme::AMQP;
            let plain = uri.connect_async(&runtime).await?;
            let connector = RustlsConnector::from(tls.config.clone());
            let secured = plain.into_rustls(&connector, &tls.server_name).await?;
            Ok::<_, lapin::Error>(secured)
        },
        properties,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_refused_at_load() {
        let config = |url: &str| AmqpUpstreamConfig {
            url: url.into(),
            declare: None,
            tls: None,
        };
        assert!(AmqpUpstream::new("x", &config("http://nope")).is_err());
        let tls_on_plain = AmqpUpstreamConfig {
            tls: Some(Default::default()),
            ..config("amqp://h/%2f")
        };
        let error = AmqpUpstream::new("x", &tls_on_plain).unwrap_err();
        assert!(error.contains("amqps"), "{error}");
        let ok = AmqpUpstream::new("x", &config("amqp://u:secret@127.0.0.1:1/%2f")).unwrap();
        assert!(!ok.display_url.contains("secret"), "{}", ok.display_url);
        assert!(!ok.connected());
    }
}
