//! Request-reply over RabbitMQ's direct reply-to. One consumer per connection, on the
//! pseudo-queue `amq.rabbitmq.reply-to`, receives every reply; the reply's
//! `correlation_id` finds the request waiting for it. Nothing is declared per request.
//!
//! Requests are published `mandatory` but without publisher confirms (they cost about a
//! third of the throughput, and a reply already proves delivery): an unroutable request
//! comes back as a returned message with its correlation id and fails at once (503)
//! instead of at its deadline (504). The RPC link (`link`) carries both directions.

use super::Reply;
use super::publish::Refused;
use lapin::BasicProperties;
use lapin::types::ShortString;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The pseudo-queue of direct reply-to: set as `reply_to`, consumed with `no_ack`.
pub(super) const REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Why a request got no reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoReply {
    /// The connection was lost first.
    Lost,
    /// The broker returned the request, or the reply could not be taken.
    Failed(Failed),
}

/// What came back for a request instead of a reply.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failed {
    /// The broker did not take it (returned as unroutable: `mandatory`).
    Refused(Refused),
    /// The reply's body is larger than the link accepts.
    TooLarge,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused(refused) => refused.fmt(f),
            Failed::TooLarge => write!(
                f,
                "the reply is larger than {} bytes",
                super::link::MAX_REPLY
            ),
        }
    }
}

/// The requests of one connection that wait for their reply, by correlation id.
pub(super) struct Replies {
    /// Random per connection, so a reply meant for an earlier connection never matches.
    prefix: String,
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    waiting: HashMap<u64, oneshot::Sender<Result<Reply, Failed>>, BuildHasherDefault<IdHasher>>,
    /// The consumer is gone: no reply will come any more, so nobody may start waiting.
    closed: bool,
}

impl Replies {
    pub(super) fn new() -> Self {
        Self {
            prefix: format!("{:08x}", fastrand::u32(..)),
            inner: Mutex::new(Inner {
                next: 0,
                waiting: HashMap::default(),
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
        // `<prefix>.<id in hex>`, written without the formatting machinery (per request).
        let mut correlation_id = String::with_capacity(self.prefix.len() + 17);
        correlation_id.push_str(&self.prefix);
        correlation_id.push('.');
        let digits = (u64::BITS - id.leading_zeros()).div_ceil(4).max(1);
        for shift in (0..digits).rev() {
            let digit = (id >> (shift * 4)) & 0xF;
            correlation_id.push(char::from_digit(digit as u32, 16).unwrap_or('0'));
        }
        Some(PendingReply {
            correlation_id: correlation_id.into(),
            id,
            receiver,
            replies: self.clone(),
        })
    }

    /// The request a message with these properties answers, if one still waits.
    fn waiter(
        &self,
        properties: &BasicProperties,
    ) -> Option<oneshot::Sender<Result<Reply, Failed>>> {
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
    pub(super) fn deliver(&self, reply: Reply) {
        match self.waiter(&reply.properties) {
            // The request may have given up in between: then the reply is dropped too.
            Some(waiter) => drop(waiter.send(Ok(reply))),
            None => tracing::debug!(
                correlation_id = ?reply.properties.correlation_id(),
                "late or unknown AMQP reply dropped"
            ),
        }
    }

    /// Fails the request a message with these properties answers (a returned request,
    /// an oversized reply).
    pub(super) fn fail(&self, properties: &BasicProperties, failed: Failed) {
        if let Some(waiter) = self.waiter(properties) {
            drop(waiter.send(Err(failed)));
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

/// Hashes the map's keys, our own request counter, with one multiply: SipHash guards
/// against keys chosen to collide, and nobody else chooses these (a reply's id is only
/// looked up; the map holds the requests in flight).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: consecutive ids spread over the table's high bits too.
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One request waiting for its reply. Dropping it forgets the correlation id.
pub(super) struct PendingReply {
    pub correlation_id: ShortString,
    id: u64,
    receiver: oneshot::Receiver<Result<Reply, Failed>>,
    replies: Arc<Replies>,
}

impl PendingReply {
    pub(super) async fn reply(&mut self) -> Result<Reply, NoReply> {
        match (&mut self.receiver).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(failed)) => Err(NoReply::Failed(failed)),
            Err(_) => Err(NoReply::Lost),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.replies.lock().waiting.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            a.correlation_id.as_str(),
            format!("{}.{:x}", replies.prefix, a.id)
        );
        replies.deliver(reply_to(&b.correlation_id, b"for b"));
        replies.deliver(reply_to(&a.correlation_id, b"for a"));
        assert_eq!(a.reply().await.unwrap().body, b"for a");
        assert_eq!(b.reply().await.unwrap().body, b"for b");
        // An unroutable request comes back as a returned message with its correlation id.
        let mut c = replies.register().unwrap();
        let returned = || {
            Failed::Refused(Refused::Returned {
                code: 312,
                text: "NO_ROUTE".into(),
            })
        };
        replies.fail(&reply_to(&c.correlation_id, b"").properties, returned());
        assert_eq!(c.reply().await.unwrap_err(), NoReply::Failed(returned()));
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
