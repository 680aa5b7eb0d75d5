//! Request-reply over RabbitMQ's direct reply-to. One consumer per connection, on the
//! pseudo-queue `amq.rabbitmq.reply-to`, receives every reply; the reply's
//! `correlation_id` finds the request waiting for it. Nothing is declared per request.
//!
//! The RPC channel publishes `mandatory` but without publisher confirms (they cost about a
//! third of the throughput, and a reply already proves delivery): an unroutable request
//! comes back as a returned message, which `collect_returns` finds within
//! `RETURN_POLL` and fails by its correlation id — 503 at once instead of 504 later.

use super::Reply;
use super::publish::Refused;
use futures_util::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Consumer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// The pseudo-queue of direct reply-to: set as `reply_to`, consumed with `no_ack`.
pub(super) const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How often the RPC channel's returned (unroutable) messages are collected.
const RETURN_POLL: Duration = Duration::from_millis(20);

/// Why a request got no reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoReply {
    /// The connection was lost first.
    Lost,
    /// The broker returned the request as unroutable.
    Returned(Refused),
}

/// The requests of one connection that wait for their reply, by correlation id.
pub(super) struct Replies {
    /// Random per connection, so a reply meant for an earlier connection never matches.
    prefix: String,
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<Result<Reply, Refused>>>,
    /// The consumer is gone: no reply will come any more, so nobody may start waiting.
    closed: bool,
}

impl Replies {
    pub(super) fn new() -> Self {
        Self {
            prefix: format!("{:08x}", fastrand::u32(..)),
            inner: Mutex::new(Inner {
                next: 0,
                waiting: HashMap::new(),
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh correlation id and the place its reply will arrive; `None` once the
    /// connection is lost.
    pub(super) fn register(self: &Arc<Self>) -> Option<PendingReply> {
        let (sender, receiver) = oneshot::channel();
        let id = {
            let mut inner = self.lock();
            if inner.closed {
                return None;
            }
            inner.next += 1;
            let id = inner.next;
            inner.waiting.insert(id, sender);
            id
        };
        Some(PendingReply {
            correlation_id: format!("{}.{id:x}", self.prefix).into(),
            id,
            receiver,
            replies: self.clone(),
        })
    }

    /// The request a message with these properties answers, if one still waits.
    fn waiter(
        &self,
        properties: &BasicProperties,
    ) -> Option<oneshot::Sender<Result<Reply, Refused>>> {
        let id = properties
            .correlation_id()
            .as_ref()
            .and_then(|c| c.as_str().split_once('.'))
            .filter(|(prefix, _)| *prefix == self.prefix)
            .and_then(|(_, n)| u64::from_str_radix(n, 16).ok())?;
        self.lock().waiting.remove(&id)
    }

    /// Hands a reply to its request. Replies nobody waits for any more (the request
    /// timed out or its client left) are dropped.
    fn deliver(&self, reply: Reply) {
        match self.waiter(&reply.properties) {
            // The request may have given up in between: then the reply is dropped too.
            Some(waiter) => drop(waiter.send(Ok(reply))),
            None => tracing::debug!(
                correlation_id = ?reply.properties.correlation_id(),
                "late or unknown AMQP reply dropped"
            ),
        }
    }

    /// Fails the request the broker returned as unroutable.
    fn returned(&self, message: BasicReturnMessage) {
        if let Some(waiter) = self.waiter(&message.delivery.properties) {
            let refused = Refused::Returned {
                code: message.reply_code,
                text: message.reply_text.to_string(),
            };
            drop(waiter.send(Err(refused)));
        }
    }

    /// The connection is gone: every waiting request fails now (its sender is dropped).
    pub(super) fn close(&self) {
        let waiting = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.waiting)
        };
        drop(waiting);
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

/// One request waiting for its reply. Dropping it forgets the correlation id.
pub(super) struct PendingReply {
    pub correlation_id: ShortString,
    id: u64,
    receiver: oneshot::Receiver<Result<Reply, Refused>>,
    replies: Arc<Replies>,
}

impl PendingReply {
    pub(super) async fn reply(&mut self) -> Result<Reply, NoReply> {
        match (&mut self.receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(refused)) => Err(NoReply::Returned(refused)),
            Err(_) => Err(NoReply::Lost),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.replies.lock().waiting.remove(&self.id);
    }
}

/// Runs the connection's reply consumer until it ends (connection or channel lost),
/// then fails the requests still waiting.
pub(super) async fn consume_replies(mut consumer: Consumer, replies: Arc<Replies>) {
    while let Some(delivery) = consumer.next().await {
        match delivery {
            Ok(delivery) => replies.deliver(Reply {
                body: delivery.data,
                properties: delivery.properties,
            }),
            Err(error) => {
                tracing::debug!(%error, "AMQP reply consumer stopped");
                break;
            }
        }
    }
    replies.close();
}

/// Collects the RPC channel's returned messages (lapin keeps them until asked) and fails
/// their requests; runs for the life of the session.
pub(super) async fn collect_returns(channel: Channel, replies: Arc<Replies>) {
    let mut tick = tokio::time::interval(RETURN_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Without confirm mode this waits for nothing: it only drains.
        match channel.wait_for_confirms().await {
            Ok(returned) => returned.into_iter().for_each(|m| replies.returned(m)),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::BasicProperties;

    fn reply_to(correlation_id: &ShortString, body: &[u8]) -> Reply {
        Reply {
            body: body.to_vec(),
            properties: BasicProperties::default().with_correlation_id(correlation_id.clone()),
        }
    }

    #[tokio::test]
    async fn replies_find_their_request_by_correlation_id() {
        let replies = Arc::new(Replies::new());
        let mut a = replies.register().unwrap();
        let mut b = replies.register().unwrap();
        assert_ne!(a.correlation_id, b.correlation_id);
        replies.deliver(reply_to(&b.correlation_id, b"for b"));
        replies.deliver(reply_to(&a.correlation_id, b"for a"));
        assert_eq!(a.reply().await.unwrap().body, b"for a");
        assert_eq!(b.reply().await.unwrap().body, b"for b");
        // An unroutable request comes back as a returned message with its correlation id.
        let mut c = replies.register().unwrap();
        let mut delivery =
            lapin::message::Delivery::mock(0, "".into(), "nowhere".into(), false, vec![]);
        delivery.properties = reply_to(&c.correlation_id, b"").properties;
        replies.returned(BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        });
        let refused = Refused::Returned {
            code: 312,
            text: "NO_ROUTE".into(),
        };
        assert_eq!(c.reply().await.unwrap_err(), NoReply::Returned(refused));
    }

    #[tokio::test]
    async fn late_foreign_and_garbled_replies_are_dropped() {
        let replies = Arc::new(Replies::new());
        let gone = replies.register().unwrap();
        let late = gone.correlation_id.clone();
        drop(gone);
        replies.deliver(reply_to(&late, b"late"));
        replies.deliver(reply_to(&"other.1".into(), b"foreign"));
        replies.deliver(reply_to(&"no-dot".into(), b"garbled"));
        replies.deliver(Reply {
            body: Vec::new(),
            properties: BasicProperties::default(),
        });
        assert!(replies.lock().waiting.is_empty());
    }

    #[tokio::test]
    async fn closing_fails_waiting_requests_and_refuses_new_ones() {
        let replies = Arc::new(Replies::new());
        let mut waiting = replies.register().unwrap();
        replies.close();
        assert_eq!(waiting.reply().await.unwrap_err(), NoReply::Lost);
        assert!(replies.register().is_none());
        assert!(replies.is_closed());
    }
}
