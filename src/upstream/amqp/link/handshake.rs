//! Opening the link: protocol header, authentication (the URL's mechanism, PLAIN by
//! default), tuning, `connection.open` on the URL's vhost, channel 1, and the `no_ack`
//! consumer on the direct reply-to pseudo-queue.

use super::wire::{FrameReader, Incoming, encode};
use super::{CHANNEL, LinkError, protocol};
use crate::upstream::amqp::rpc::REPLY_TO;
use amq_protocol::auth::{Credentials, SASLMechanism};
use amq_protocol::frame::{AMQPFrame, ProtocolVersion};
use amq_protocol::protocol::{AMQPClass, basic, channel, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use amq_protocol::uri::AMQPUri;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// `frame_max` asked for when the URL names none (RabbitMQ's own default).
const DEFAULT_FRAME_MAX: u32 = 128 * 1024;
/// The smallest `frame_max` AMQP allows; also the limit on frames before tuning.
pub(super) const FRAME_MIN_SIZE: u32 = 4096;

/// What tuning agreed on.
pub(super) struct Tuned {
    pub frame_max: u32,
    pub heartbeat: Option<Duration>,
}

/// Protocol header, authentication, tuning, connection and channel open, and the reply
/// consumer. The caller bounds the whole of it in time.
pub(super) async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
    uri: &AMQPUri,
    name: &str,
) -> Result<Tuned, LinkError> {
    send(
        stream,
        &AMQPFrame::ProtocolHeader(ProtocolVersion::amqp_0_9_1()),
    )
    .await?;

    let start = match expect_method(stream, reader).await? {
        AMQPClass::Connection(connection::AMQPMethod::Start(start)) => start,
        other => {
            return Err(protocol(format!(
                "expected connection.start, got {other:?}"
            )));
        }
    };
    let mechanism = uri.query.auth_mechanism.unwrap_or_default();
    let offered = String::from_utf8_lossy(start.mechanisms.as_bytes()).into_owned();
    if !offered.split(' ').any(|m| m == mechanism.name()) {
        return Err(protocol(format!(
            "the broker does not offer {mechanism} authentication"
        )));
    }
    let credentials = Credentials::from(uri.authority.userinfo.clone());
    send(
        stream,
        &method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: client_properties(name),
                mechanism: mechanism.name().into(),
                response: credentials.sasl_auth_string(mechanism),
                locale: "en_US".into(),
            })),
        ),
    )
    .await?;

    let tune = loop {
        match expect_method(stream, reader).await? {
            AMQPClass::Connection(connection::AMQPMethod::Secure(_))
                if mechanism == SASLMechanism::RabbitCrDemo =>
            {
                let answer = credentials.rabbit_cr_demo_answer();
                send(
                    stream,
                    &method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::SecureOk(
                            connection::SecureOk { response: answer },
                        )),
                    ),
                )
                .await?;
            }
            AMQPClass::Connection(connection::AMQPMethod::Tune(tune)) => break tune,
            other => return Err(refusal(other, "connection.tune")),
        }
    };
    let frame_max = negotiate(
        tune.frame_max,
        uri.query.frame_max.unwrap_or(DEFAULT_FRAME_MAX),
    )
    .max(FRAME_MIN_SIZE);
    let heartbeat = match uri.query.heartbeat.unwrap_or(0) {
        0 => 0,
        ours => negotiate(tune.heartbeat, ours),
    };
    send(
        stream,
        &method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: negotiate(tune.channel_max, 1),
                frame_max,
                heartbeat,
            })),
        ),
    )
    .await?;
    send(
        stream,
        &method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: uri.vhost.as_str().into(),
            })),
        ),
    )
    .await?;
    reader.frame_max = frame_max as usize;
    match expect_method(stream, reader).await? {
        AMQPClass::Connection(connection::AMQPMethod::OpenOk(_)) => {}
        other => return Err(refusal(other, "connection.open-ok")),
    }
    send(
        stream,
        &method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
    )
    .await?;
    match expect_method(stream, reader).await? {
        AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)) => {}
        other => return Err(refusal(other, "channel.open-ok")),
    }
    send(
        stream,
        &method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: REPLY_TO.into(),
                consumer_tag: ShortString::default(),
                no_local: false,
                no_ack: true,
                exclusive: false,
                nowait: false,
                arguments: FieldTable::default(),
            })),
        ),
    )
    .await?;
    match expect_method(stream, reader).await? {
        AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_)) => {}
        other => return Err(refusal(other, "basic.consume-ok")),
    }
    Ok(Tuned {
        frame_max,
        heartbeat: (heartbeat > 0).then(|| Duration::from_secs(heartbeat.into())),
    })
}

/// AMQP's rule for limits: 0 means none, otherwise the smaller one wins.
fn negotiate<T: Ord + Default + Copy>(server: T, ours: T) -> T {
    if server == T::default() {
        ours
    } else if ours == T::default() {
        server
    } else {
        server.min(ours)
    }
}

pub(super) fn method(channel: u16, class: AMQPClass) -> AMQPFrame {
    AMQPFrame::Method(channel, class)
}

/// What the broker shows for this connection, and the notifications it may send us.
fn client_properties(name: &str) -> FieldTable {
    let mut capabilities = FieldTable::default();
    for capability in [
        "connection.blocked",
        "authentication_failure_close",
        "consumer_cancel_notify",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut properties = FieldTable::default();
    properties.insert(
        "product".into(),
        AMQPValue::LongString(LongString::from("switchboard")),
    );
    properties.insert(
        "version".into(),
        AMQPValue::LongString(LongString::from(env!("CARGO_PKG_VERSION"))),
    );
    properties.insert(
        "connection_name".into(),
        AMQPValue::LongString(LongString::from(name)),
    );
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    properties
}

/// The broker's answer was not the expected step: its `close` says why (bad credentials,
/// unknown vhost, access refused), anything else is a protocol error.
pub(super) fn refusal(got: AMQPClass, expected: &str) -> LinkError {
    match got {
        AMQPClass::Connection(connection::AMQPMethod::Close(close)) => LinkError::ClosedByBroker {
            what: "connection",
            code: close.reply_code,
            text: close.reply_text.to_string(),
        },
        AMQPClass::Channel(channel::AMQPMethod::Close(close)) => LinkError::ClosedByBroker {
            what: "channel",
            code: close.reply_code,
            text: close.reply_text.to_string(),
        },
        other => protocol(format!("expected {expected}, got {other:?}")),
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, frame: &AMQPFrame) -> Result<(), LinkError> {
    let out = encode(Vec::with_capacity(256), frame)?;
    stream.write_all(&out).await?;
    Ok(())
}

/// The next method frame of the handshake (heartbeats skipped).
async fn expect_method<S: AsyncRead + Unpin>(
    stream: &mut S,
    reader: &mut FrameReader,
) -> Result<AMQPClass, LinkError> {
    loop {
        match reader.next(stream).await? {
            Incoming::Frame(AMQPFrame::Method(_, class)) => return Ok(class),
            Incoming::Frame(AMQPFrame::Heartbeat) => {}
            other => {
                return Err(protocol(format!(
                    "unexpected frame in the handshake: {other:?}"
                )));
            }
        }
    }
}
