//! Publishing `mandatory`, with publisher confirms on the publish channel: a message
//! counts as sent only once the broker acks it, and an unroutable one comes back (reply
//! code 312, NO_ROUTE) instead of being dropped silently. (Requests of RPC routes go
//! through the RPC link instead, without confirms: see `rpc`.)

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use std::future::Future;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

/// A long-lived channel that publishes `mandatory` messages.
pub(super) struct Publisher {
    pub channel: Channel,
    /// See `publish`.
    order: Mutex<()>,
}

/// Why the broker did not take a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// Returned as unroutable (`mandatory`): no queue is bound for the routing key.
    Returned { code: u16, text: String },
    /// Nacked: the broker could not take it (e.g. a queue overflow policy).
    Nacked,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Returned { code, text } => {
                write!(f, "the broker returned the message ({code} {text})")
            }
            Refused::Nacked => f.write_str("the broker refused the message (nack)"),
        }
    }
}

impl Publisher {
    /// A new channel, in confirm mode.
    pub(super) async fn open(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            order: Mutex::new(()),
        })
    }

    /// Sends a `mandatory` message; the returned future resolves with the broker's answer.
    pub(super) async fn publish(
        &self,
        exchange: &ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<PublisherConfirm> {
        let mut publish =
            std::pin::pin!(self.basic_publish(exchange, routing_key, payload, properties));
        match self.first_poll(publish.as_mut()).await {
            Poll::Ready(result) => result,
            Poll::Pending => publish.await,
        }
    }

    fn basic_publish<'a>(
        &'a self,
        exchange: &ShortString,
        routing_key: ShortString,
        payload: &'a [u8],
        properties: BasicProperties,
    ) -> impl Future<Output = lapin::Result<PublisherConfirm>> + 'a {
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        self.channel
            .basic_publish(exchange.clone(), routing_key, options, payload, properties)
    }

    /// lapin numbers the confirm and queues the frames in the first poll of
    /// `basic_publish`, with no lock in between: two tasks publishing at once on two threads
    /// could get each other's confirm, and a returned message would then fail the wrong
    /// request. Taking that first poll under a lock keeps both in one order.
    async fn first_poll<F: Future>(&self, mut publish: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| {
            let _ordered = self.order.lock().unwrap_or_else(|e| e.into_inner());
            Poll::Ready(publish.as_mut().poll(cx))
        })
        .await
    }
}

/// Waits for the confirms of abandoned publishes (a client that left mid-request) on a
/// confirm-mode channel: lapin keeps those until someone waits for them, so the
/// connection task calls this now and then.
pub(super) async fn sweep(channel: &Channel) {
    let _ = tokio::time::timeout(Duration::from_secs(5), channel.wait_for_confirms()).await;
}

/// The broker's answer to a `mandatory` publish: `Ok` only for a plain ack.
pub(super) fn accepted(confirmation: Confirmation) -> Result<(), Refused> {
    match confirmation {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
            Err(Refused::Returned {
                code: returned.reply_code,
                text: returned.reply_text.to_string(),
            })
        }
        Confirmation::Nack(None) => Err(Refused::Nacked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_ack_is_accepted() {
        assert_eq!(accepted(Confirmation::Ack(None)), Ok(()));
        assert_eq!(accepted(Confirmation::Nack(None)), Err(Refused::Nacked));
        assert!(
            Refused::Returned {
                code: 312,
                text: "NO_ROUTE".into()
            }
            .to_string()
            .contains("312 NO_ROUTE")
        );
    }
}
