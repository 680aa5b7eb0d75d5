//! The connection supervisor of an AMQP upstream: one task per upstream ([`maintain`])
//! opens a [`Session`] (lapin's connection with its publish channel, and the RPC link),
//! publishes it for requests to use, watches it, and on a failure takes it away at once
//! (waiting requests fail, new ones get 503) and reconnects with backoff.

use super::link::{Link, LinkError};
use super::publish::{self, Publisher};
use super::rpc::Replies;
use super::{BrokerTls, Shared, topology};
use crate::config::AmqpDeclare;
use crate::upstream::backoff::{Backoff, Jitter};
use futures_util::StreamExt;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, Event};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long connecting, opening the channels and declaring may take in all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnects after a failure or a lost connection: 100 ms doubling up to 5 s, with jitter
/// (50–100%) so that many gateways do not reconnect in step after a broker restart.
const RECONNECT: Backoff = Backoff::new(
    Duration::from_millis(100),
    Duration::from_secs(5),
    Jitter::Down,
);
/// How often the session is checked besides on lapin's error events.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often abandoned publisher confirms are collected (see `Publisher::sweep`).
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("RPC link: {0}")]
    Link(#[from] LinkError),
}

type Events = Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>;

/// The broker connections of an upstream: lapin's (topology, exchange checks, confirmed
/// publishes) and the RPC link (request-reply, see `link`). Either failing ends both.
pub(super) struct Session {
    pub(super) connection: Connection,
    pub(super) link: Link,
    pub(super) replies: Arc<Replies>,
    pub(super) publish: Publisher,
    pub(super) exchanges: topology::Exchanges,
    /// The confirm sweeper, stopped with the session.
    sweeper: JoinHandle<()>,
}

impl Session {
    async fn open(
        name: &str,
        uri: &AMQPUri,
        declare: Option<&AmqpDeclare>,
        tls: Option<&Arc<BrokerTls>>,
    ) -> Result<(Arc<Session>, Events), OpenError> {
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
        let publish = Publisher::open(&connection).await?;
        let replies = Arc::new(Replies::new());
        let link = Link::open(
            uri,
            tls.map(|tls| &**tls),
            &format!("switchboard {name} rpc"),
            replies.clone(),
        )
        .await?;
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
            link,
            replies,
            publish,
            exchanges: topology::Exchanges::default(),
            sweeper,
        };
        Ok((Arc::new(session), events))
    }

    /// Why the session cannot serve any more, if it cannot.
    fn broken(&self) -> Option<&'static str> {
        if !self.connection.status().connected() {
            Some("connection closed")
        } else if self.link.is_closed() {
            Some("RPC link closed")
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
                _ = self.link.ended() => return "RPC link closed".into(),
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
        let _ = tokio::join!(
            tokio::time::timeout(Duration::from_secs(2), bye),
            self.link.close()
        );
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sweeper.abort();
    }
}

/// The connection task of one upstream: connect, serve until the session breaks, back
/// off, again — until the upstream is dropped.
pub(super) async fn maintain(
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
