//! The link against a scripted broker on an in-memory stream: what it sends, what it
//! accepts, and how it ends when the broker misbehaves.

use super::wire::{FrameReader, Incoming, encode};
use super::*;
use crate::upstream::amqp::rpc::{NoReply, PendingReply, REPLY_TO};
use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::constants;
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncReadExt, DuplexStream};

const FRAME_MAX: u32 = 8192;

/// The broker's end of the link's stream.
struct Broker {
    stream: DuplexStream,
    reader: FrameReader,
}

impl Broker {
    async fn frame(&mut self) -> Incoming {
        self.reader
            .next(&mut self.stream)
            .await
            .expect("a frame from the link")
    }

    /// The next method frame (heartbeats skipped).
    async fn method(&mut self) -> AMQPClass {
        loop {
            match self.frame().await {
                Incoming::Frame(AMQPFrame::Method(_, class)) => return class,
                Incoming::Frame(AMQPFrame::Heartbeat) => {}
                other => panic!("expected a method, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, frame: AMQPFrame) {
        let bytes = encode(Vec::new(), &frame).unwrap();
        self.stream.write_all(&bytes).await.unwrap();
    }

    /// `connection.blocked` (a resource alarm) or `connection.unblocked`.
    async fn alarm(&mut self, on: bool) {
        let method = if on {
            connection::AMQPMethod::Blocked(connection::Blocked {
                reason: "low on memory".into(),
            })
        } else {
            connection::AMQPMethod::Unblocked(Default::default())
        };
        self.send(AMQPFrame::Method(0, AMQPClass::Connection(method)))
            .await;
    }

    async fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// A message on channel 1 (deliver or return), its body in frames of `chunk` bytes.
    async fn message(
        &mut self,
        method: basic::AMQPMethod,
        correlation_id: &ShortString,
        body: &[u8],
        chunk: usize,
    ) {
        self.send(AMQPFrame::Method(CHANNEL, AMQPClass::Basic(method)))
            .await;
        self.send(AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: BasicProperties::default().with_correlation_id(correlation_id.clone()),
            },
        ))
        .await;
        let mut frames = Vec::new();
        for part in body.chunks(chunk) {
            wire::body_frame(&mut frames, CHANNEL, part);
        }
        self.raw(&frames).await;
    }

    async fn reply(&mut self, correlation_id: &ShortString, body: &[u8]) {
        let deliver = basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "amq.ctag".into(),
            delivery_tag: 1,
            redelivered: false,
            exchange: "".into(),
            routing_key: REPLY_TO.into(),
        });
        self.message(deliver, correlation_id, body, 1000).await;
    }
}

/// The broker's first steps: the client's protocol header, then `connection.start`.
async fn greet(mut stream: DuplexStream) -> Broker {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(&header, b"AMQP\x00\x00\x09\x01");
    let mut broker = Broker {
        stream,
        reader: FrameReader::new(FRAME_MAX as usize).reading_all(),
    };
    broker
        .send(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: Default::default(),
                mechanisms: LongString::from("AMQPLAIN PLAIN"),
                locales: LongString::from("en_US"),
            })),
        ))
        .await;
    broker
}

/// The broker's side of the handshake, checking what the link asks for.
async fn accept(stream: DuplexStream, heartbeat: u16) -> Broker {
    let mut broker = greet(stream).await;
    match broker.method().await {
        AMQPClass::Connection(connection::AMQPMethod::StartOk(ok)) => {
            assert_eq!(ok.mechanism.as_str(), "PLAIN");
            assert_eq!(ok.response.as_bytes(), b"\0guest\0secret");
        }
        other => panic!("{other:?}"),
    }
    broker
        .send(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat,
            })),
        ))
        .await;
    match broker.method().await {
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(ok)) => {
            assert_eq!((ok.channel_max, ok.frame_max), (1, FRAME_MAX));
        }
        other => panic!("{other:?}"),
    }
    match broker.method().await {
        AMQPClass::Connection(connection::AMQPMethod::Open(open)) => {
            assert_eq!(open.virtual_host.as_str(), "shop");
        }
        other => panic!("{other:?}"),
    }
    broker
        .send(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(Default::default())),
        ))
        .await;
    assert!(matches!(
        broker.method().await,
        AMQPClass::Channel(channel::AMQPMethod::Open(_))
    ));
    broker
        .send(method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(Default::default())),
        ))
        .await;
    match broker.method().await {
        AMQPClass::Basic(basic::AMQPMethod::Consume(consume)) => {
            assert_eq!(consume.queue.as_str(), REPLY_TO);
            assert!(consume.no_ack);
        }
        other => panic!("{other:?}"),
    }
    broker
        .send(method(
            CHANNEL,
            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
                consumer_tag: "amq.ctag".into(),
            })),
        ))
        .await;
    broker
}

/// An open link (URL heartbeat `heartbeat`, 0 = none) and the broker's end of it.
async fn open_link(heartbeat: u16) -> (Link, Arc<Replies>, Broker) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let uri: AMQPUri = format!("amqp://guest:secret@broker/shop?heartbeat={heartbeat}")
        .parse()
        .unwrap();
    let replies = Arc::new(Replies::new());
    let (link, broker) = tokio::join!(
        Link::start(ours, &uri, "test", replies.clone()),
        accept(theirs, heartbeat)
    );
    (link.expect("the link opens"), replies, broker)
}

fn request(replies: &Arc<Replies>) -> PendingReply {
    replies.register().expect("the link is open")
}

/// One request that the broker takes (publish, content header, body) and answers; the
/// header it received.
async fn round_trip(
    link: &Link,
    replies: &Arc<Replies>,
    broker: &mut Broker,
    payload: &[u8],
) -> AMQPContentHeader {
    let mut pending = request(replies);
    publish(link, &pending, payload);
    assert!(matches!(
        broker.method().await,
        AMQPClass::Basic(basic::AMQPMethod::Publish(_))
    ));
    let Incoming::Frame(AMQPFrame::Header(CHANNEL, header)) = broker.frame().await else {
        panic!("a content header")
    };
    if !payload.is_empty() {
        broker.frame().await; // the body
    }
    broker.reply(&pending.correlation_id, b"answer").await;
    assert_eq!(pending.reply().await.unwrap().body, b"answer");
    header
}

fn publish(link: &Link, pending: &PendingReply, payload: &[u8]) {
    let properties = BasicProperties::default().with_correlation_id(pending.correlation_id.clone());
    link.publish(&"".into(), &"quotes".into(), payload, &properties)
        .expect("queued");
}

#[tokio::test(start_paused = true)]
async fn requests_leave_as_frames_and_replies_find_their_request() {
    let (link, replies, mut broker) = open_link(0).await;
    let mut first = request(&replies);
    let mut second = request(&replies);
    // Larger than a frame: the body goes in frame_max-sized parts.
    let payload: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    publish(&link, &first, &payload);
    publish(&link, &second, b"");
    for (pending, body) in [(&first, &payload[..]), (&second, &b""[..])] {
        match broker.method().await {
            AMQPClass::Basic(basic::AMQPMethod::Publish(publish)) => {
                assert_eq!(publish.routing_key.as_str(), "quotes");
                assert!(publish.mandatory);
            }
            other => panic!("{other:?}"),
        }
        let Incoming::Frame(AMQPFrame::Header(CHANNEL, header)) = broker.frame().await else {
            panic!("a content header")
        };
        assert_eq!(header.body_size, body.len() as u64);
        assert_eq!(
            header.properties.correlation_id(),
            &Some(pending.correlation_id.clone())
        );
        let mut received = Vec::new();
        while received.len() < body.len() {
            let Incoming::Body {
                channel: CHANNEL,
                bytes,
            } = broker.frame().await
            else {
                panic!("a body frame")
            };
            assert!(bytes.len() <= FRAME_MAX as usize - 8);
            received.extend_from_slice(&bytes);
        }
        assert_eq!(received, body);
    }
    // Replies in any order, in frames of any size; a return fails its request at once.
    broker.reply(&second.correlation_id, b"second").await;
    let returned = basic::AMQPMethod::Return(basic::Return {
        reply_code: 312,
        reply_text: "NO_ROUTE".into(),
        exchange: "".into(),
        routing_key: "quotes".into(),
    });
    broker
        .message(returned, &first.correlation_id, &payload, 3000)
        .await;
    assert_eq!(second.reply().await.unwrap().body, b"second");
    assert_eq!(
        first.reply().await.unwrap_err(),
        NoReply::Failed(Failed::Refused(Refused::Returned {
            code: 312,
            text: "NO_ROUTE".into()
        }))
    );
    // A reply for nobody (late, or another connection's) is dropped; the link stays up.
    broker.reply(&"elsewhere.1".into(), b"stray").await;
    let mut third = request(&replies);
    publish(&link, &third, b"3");
    broker.reply(&third.correlation_id, &payload).await;
    assert_eq!(third.reply().await.unwrap().body, payload);
    assert!(!link.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_oversized_reply_fails_its_request_and_is_not_kept() {
    let (link, replies, mut broker) = open_link(0).await;
    let mut big = request(&replies);
    let body = vec![7u8; MAX_REPLY as usize + 1];
    broker.reply(&big.correlation_id, &body).await;
    assert_eq!(
        big.reply().await.unwrap_err(),
        NoReply::Failed(Failed::TooLarge)
    );
    // The link goes on.
    let mut next = request(&replies);
    broker.reply(&next.correlation_id, b"fine").await;
    assert_eq!(next.reply().await.unwrap().body, b"fine");
    assert!(!link.is_closed());
}

/// Bytes a broker must never send; each ends the link, and the requests waiting on it
/// fail at once instead of at their deadline.
#[tokio::test(start_paused = true)]
async fn a_misbehaving_broker_ends_the_link_and_fails_waiting_requests() {
    let too_large = {
        let mut frame = vec![constants::FRAME_BODY, 0, 1];
        frame.extend_from_slice(&(FRAME_MAX * 2).to_be_bytes());
        frame
    };
    let no_end_marker = vec![constants::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, 0x00];
    let body_without_header = {
        let mut frame = Vec::new();
        wire::body_frame(&mut frame, CHANNEL, b"orphan");
        frame
    };
    let longer_than_announced = {
        let mut bytes = encode(
            Vec::new(),
            &AMQPFrame::Method(
                CHANNEL,
                AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver::default())),
            ),
        )
        .unwrap();
        bytes = encode(
            bytes,
            &AMQPFrame::Header(
                CHANNEL,
                AMQPContentHeader {
                    class_id: 60,
                    body_size: 2,
                    properties: BasicProperties::default(),
                },
            ),
        )
        .unwrap();
        wire::body_frame(&mut bytes, CHANNEL, b"three");
        bytes
    };
    let garbage_method = vec![
        constants::FRAME_METHOD,
        0,
        1,
        0,
        0,
        0,
        2,
        0xff,
        0xff,
        wire::FRAME_END,
    ];
    for (case, bytes) in [
        ("a frame over frame_max", too_large),
        ("no end marker", no_end_marker),
        ("a body without a header", body_without_header),
        ("a body longer than announced", longer_than_announced),
        ("an unknown method", garbage_method),
    ] {
        let (link, replies, mut broker) = open_link(0).await;
        let mut waiting = request(&replies);
        broker.raw(&bytes).await;
        let ended = tokio::time::timeout(Duration::from_secs(60), waiting.reply()).await;
        assert_eq!(ended.expect(case).unwrap_err(), NoReply::Lost, "{case}");
        assert!(link.is_closed(), "{case}");
        assert!(
            replies.register().is_none(),
            "{case}: no new request waits on it"
        );
        let refused = link.publish(&"".into(), &"q".into(), b"", &BasicProperties::default());
        assert_eq!(refused, Err(Unsent::Closed), "{case}");
    }
}

/// After the handshake the link decodes only the methods it acts on: anything else is
/// skipped unread — here a `connection.start` whose table nests a thousand levels deep,
/// which the codec would read by recursion.
#[tokio::test(start_paused = true)]
async fn methods_the_open_link_does_not_act_on_are_skipped_unread() {
    let (link, replies, mut broker) = open_link(0).await;
    let mut value = vec![b'V'];
    for _ in 0..1000 {
        let mut table = vec![1, b'k'];
        table.extend_from_slice(&value);
        value = vec![b'F'];
        value.extend_from_slice(&(table.len() as u32).to_be_bytes());
        value.extend_from_slice(&table);
    }
    let mut payload = vec![0, 10, 0, 10, 0, 9];
    payload.extend_from_slice(&value[1..]); // the table itself, without its type tag
    // Nor is the method complete (no mechanisms, no locales): decoded, it would end the
    // link as malformed.
    let mut frame = vec![constants::FRAME_METHOD, 0, 0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame.push(wire::FRAME_END);
    assert!(frame.len() < FRAME_MAX as usize);
    broker.raw(&frame).await;

    round_trip(&link, &replies, &mut broker, b"q").await;
    assert!(!link.is_closed());
}

#[tokio::test(start_paused = true)]
async fn headers_larger_than_a_frame_fail_their_request_only() {
    let (link, replies, mut broker) = open_link(0).await;
    let mut table = FieldTable::default();
    table.insert(
        "x-query-q".into(),
        AMQPValue::LongString(vec![b'q'; FRAME_MAX as usize].into()),
    );
    let oversized = BasicProperties::default().with_headers(table);
    let refused = link.publish(&"".into(), &"quotes".into(), b"big", &oversized);
    assert_eq!(
        refused,
        Err(Unsent::Oversized {
            frame_max: FRAME_MAX as usize
        })
    );
    // Nothing of it was queued: the next request leaves intact and the link stays open.
    let header = round_trip(&link, &replies, &mut broker, b"next").await;
    assert_eq!(header.body_size, 4);
    assert!(!link.is_closed());
}

#[tokio::test(start_paused = true)]
async fn the_broker_closing_the_channel_is_answered_and_ends_the_link() {
    let (link, replies, mut broker) = open_link(0).await;
    let mut waiting = request(&replies);
    broker
        .send(method(
            CHANNEL,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 404,
                reply_text: "NOT_FOUND - no exchange 'gone'".into(),
                class_id: 60,
                method_id: 40,
            })),
        ))
        .await;
    assert!(matches!(
        broker.method().await,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
    ));
    assert_eq!(waiting.reply().await.unwrap_err(), NoReply::Lost);
    assert!(link.is_closed());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_quiet_link_and_a_silent_broker_ends_it() {
    let (link, replies, mut broker) = open_link(4).await;
    // With nothing to send, the link sends a heartbeat every half interval; a broker that
    // keeps talking (its own heartbeats) keeps the link.
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        assert!(matches!(
            broker.frame().await,
            Incoming::Frame(AMQPFrame::Heartbeat)
        ));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        broker.raw(&wire::HEARTBEAT).await;
    }
    assert!(!link.is_closed());
    // Then silence: twice the heartbeat later the link gives up.
    let mut waiting = request(&replies);
    let started = tokio::time::Instant::now();
    assert_eq!(waiting.reply().await.unwrap_err(), NoReply::Lost);
    let waited = started.elapsed();
    assert!(waited <= Duration::from_secs(8), "{waited:?}");
    assert!(link.is_closed());
}

#[tokio::test(start_paused = true)]
async fn blocked_and_unblocked_are_followed() {
    let (link, replies, mut broker) = open_link(0).await;
    broker.alarm(true).await;
    broker.raw(&wire::HEARTBEAT).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(link.is_blocked());
    // Connection-level methods may come between the frames of a reply.
    let mut waiting = request(&replies);
    let deliver = basic::AMQPMethod::Deliver(basic::Deliver::default());
    broker
        .send(AMQPFrame::Method(CHANNEL, AMQPClass::Basic(deliver)))
        .await;
    broker
        .send(AMQPFrame::Header(
            CHANNEL,
            AMQPContentHeader {
                class_id: 60,
                body_size: 2,
                properties: BasicProperties::default()
                    .with_correlation_id(waiting.correlation_id.clone()),
            },
        ))
        .await;
    broker.alarm(false).await;
    let mut body = Vec::new();
    wire::body_frame(&mut body, CHANNEL, b"ok");
    broker.raw(&body).await;
    assert_eq!(waiting.reply().await.unwrap().body, b"ok");
    assert!(!link.is_blocked());
    broker.alarm(true).await;
    broker.raw(&wire::HEARTBEAT).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(link.is_blocked());
    broker.alarm(false).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!link.is_blocked());
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_are_the_brokers_words() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let uri: AMQPUri = "amqp://guest:wrong@broker/shop".parse().unwrap();
    let broker = async move {
        let mut broker = greet(theirs).await;
        broker.method().await;
        broker
            .send(method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                    reply_code: 403,
                    reply_text: "ACCESS_REFUSED".into(),
                    class_id: 0,
                    method_id: 0,
                })),
            ))
            .await;
        broker
    };
    let (opened, _broker) = tokio::join!(
        Link::start(ours, &uri, "test", Arc::new(Replies::new())),
        broker
    );
    match opened {
        Err(LinkError::ClosedByBroker {
            code: 403, text, ..
        }) => assert_eq!(text, "ACCESS_REFUSED"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("opened with refused credentials"),
    }
}
