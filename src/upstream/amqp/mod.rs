//! RabbitMQ (AMQP 0-9-1) upstreams. Each upstream keeps one connection, owned by a
//! background task (`session::maintain`) that connects, watches and reconnects it with
//! capped, jittered exponential backoff. Requests use the current session, or fail at once with 503 while
//! there is none: connecting never blocks a config load, and no request waits for it.
//!
//! A session is two connections:
//! - the RPC link (`link`), request-reply on one channel that also carries the one direct
//!   reply-to consumer (`rpc`), run on the gateway's runtime;
//! - lapin's connection: the publish channel for `reply: false` routes, in confirm mode
//!   (`publish`), topology declarations and exchange checks (`topology`).
//!
//! No channel and no queue is created per request.

mod link;
pub(crate) mod message;
mod publish;
mod rpc;
mod session;
mod topology;

use crate::config::{AmqpDeclare, AmqpUpstreamConfig};
use crate::error::GatewayError;
use crate::telemetry::UpstreamMetrics;
use crate::tls::client::ClientTls;
use arc_swap::ArcSwapOption;
use lapin::BasicProperties;
use lapin::types::ShortString;
use lapin::uri::{AMQPScheme, AMQPUri};
use metrics::{Counter, Gauge, counter, gauge};
use publish::Publisher;
use session::{Session, maintain};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Heartbeat asked for when the URL names none: a silent broker is noticed within ~20s.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;

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

/// A message whose headers (the client's query parameters and path values among them)
/// do not fit one frame of the connection.
fn oversized(frame_max: usize) -> GatewayError {
    GatewayError::invalid_argument(format!(
        "the message's headers do not fit the broker's frame size ({frame_max} bytes)"
    ))
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
        self.call_until(message, Instant::now() + timeout, timeout)
            .await
    }

    /// [`AmqpUpstream::call`] for a request whose deadline is already running: the
    /// wait ends at `deadline`; the message expires `expiration` after it was sent.
    pub async fn call_until(
        &self,
        message: Message<'_>,
        deadline: Instant,
        expiration: Duration,
    ) -> Result<Reply, GatewayError> {
        // The call's future is made here, not passed in: an async fn keeps the futures it
        // is given apart from the ones it awaits, so a wrapper taking it would hold it
        // twice (and copy both whenever it moves).
        let started = Instant::now();
        let _in_flight = self.shared.track();
        let result = tokio::time::timeout_at(deadline, self.call_within(message, expiration)).await;
        self.measured(started, deadline, result)
    }

    /// Publish without reply: `Ok` once the broker confirmed the message, by `deadline`.
    pub async fn publish(
        &self,
        message: Message<'_>,
        deadline: Instant,
    ) -> Result<(), GatewayError> {
        let started = Instant::now();
        let _in_flight = self.shared.track();
        let result = tokio::time::timeout_at(deadline, self.publish_within(message)).await;
        self.measured(started, deadline, result)
    }

    /// The outcome of one call run until `deadline` (its one timer), counted in the
    /// metrics.
    fn measured<T>(
        &self,
        started: Instant,
        deadline: Instant,
        result: Result<Result<T, GatewayError>, tokio::time::error::Elapsed>,
    ) -> Result<T, GatewayError> {
        let result = result.unwrap_or_else(|_| {
            Err(GatewayError::deadline_exceeded(format!(
                "upstream `{}` did not answer within {:?}",
                self.name,
                deadline.saturating_duration_since(started)
            )))
        });
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
            .link
            .publish(
                message.exchange,
                &message.routing_key,
                message.payload,
                &properties,
            )
            .map_err(|unsent| match unsent {
                link::Unsent::Closed => self.lost(),
                link::Unsent::Backlogged => {
                    self.unavailable("the broker is not reading what was sent".into())
                }
                link::Unsent::Unencodable => {
                    GatewayError::internal("an AMQP message the codec cannot encode")
                }
                link::Unsent::Oversized { frame_max } => oversized(frame_max),
            })?;
        pending.reply().await.map_err(|no_reply| match no_reply {
            rpc::NoReply::Lost => self.lost(),
            rpc::NoReply::Failed(failed @ rpc::Failed::Refused(_)) => {
                self.unavailable(failed.to_string())
            }
            rpc::NoReply::Failed(failed @ rpc::Failed::TooLarge) => GatewayError::new(
                tonic::Code::Internal,
                format!("upstream `{}`: {failed}", self.name),
            )
            .with_origin(crate::error::Origin::Upstream),
        })
    }

    async fn publish_within(&self, message: Message<'_>) -> Result<(), GatewayError> {
        let session = self.session()?;
        let frame_max = session.connection.configuration().frame_max() as usize;
        if !link::header_fits(&message.properties, frame_max) {
            return Err(oversized(frame_max));
        }
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
        let known = match session.exchanges.known(exchange.as_str()) {
            Some(known) => known,
            // Once per exchange and connection; boxed, so that every request's future
            // does not carry (and copy) lapin's.
            None => {
                Box::pin(
                    session
                        .exchanges
                        .ask(&session.connection, exchange.as_str()),
                )
                .await
            }
        };
        known.map_err(|e| self.unavailable(e))
    }

    /// The live session, or 503 at once.
    fn session(&self) -> Result<Arc<Session>, GatewayError> {
        let session = self
            .shared
            .session
            .load_full()
            .ok_or_else(|| self.unavailable("not connected to the broker".into()))?;
        if session.connection.status().blocked() || session.link.is_blocked() {
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
