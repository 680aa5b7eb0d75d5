//! Frames on the wire: encoding what the link sends, and splitting what the broker sends
//! into frames no larger than the negotiated `frame_max`.

use super::LinkError;
use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{BasicProperties, constants};
use amq_protocol::types::generation::gen_field_table;
use amq_protocol::types::parsing::parse_field_table;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A frame's header (type, channel, size) before its payload.
pub(super) const FRAME_HEADER: usize = 7;
/// The byte that ends every frame.
pub(super) const FRAME_END: u8 = constants::FRAME_END;
/// A heartbeat frame (channel 0, empty).
pub(super) const HEARTBEAT: [u8; 8] = [constants::FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END];

/// The class and method ids that open a `basic.deliver` / `basic.publish` method frame.
const BASIC_DELIVER: [u8; 4] = [0, 60, 0, 60];
const BASIC_PUBLISH: [u8; 4] = [0, 60, 0, 40];

/// `out` with a frame appended. The codec refuses values it cannot encode (and then
/// drops `out`: never hand it a buffer that holds anything else).
pub(super) fn encode(out: Vec<u8>, frame: &AMQPFrame) -> Result<Vec<u8>, LinkError> {
    gen_frame(frame)(WriteContext::from(out))
        .map(|context| context.write)
        .map_err(|error| LinkError::Protocol(format!("cannot encode a frame: {error:?}")))
}

/// A `basic.publish` method frame written directly (the codec's generic writer costs
/// several times as much, and this frame goes out with every request).
pub(super) fn publish_frame(
    out: &mut Vec<u8>,
    channel: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
) -> Result<(), LinkError> {
    let (Ok(exchange_len), Ok(routing_key_len)) = (
        u8::try_from(exchange.len()),
        u8::try_from(routing_key.len()),
    ) else {
        return Err(LinkError::Protocol("a name longer than 255 bytes".into()));
    };
    // class, method, ticket, two short strings, the flags.
    let size = 4 + 2 + 1 + exchange.len() + 1 + routing_key.len() + 1;
    out.reserve(FRAME_HEADER + size + 1);
    out.push(constants::FRAME_METHOD);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend_from_slice(&BASIC_PUBLISH);
    out.extend_from_slice(&[0, 0]);
    out.push(exchange_len);
    out.extend_from_slice(exchange.as_bytes());
    out.push(routing_key_len);
    out.extend_from_slice(routing_key.as_bytes());
    out.push(u8::from(mandatory));
    out.push(FRAME_END);
    Ok(())
}

/// The class id of `basic`, whose content the link sends and receives.
const BASIC: u16 = 60;

/// A content header frame written directly: the codec's generic writer was the largest
/// part of a request's AMQP cost (≈ 2,000 instructions). Lengths are checked, not
/// truncated, although `ShortString` already holds at most 255 bytes.
pub(super) fn header_frame(
    out: &mut Vec<u8>,
    channel: u16,
    body_size: u64,
    properties: &BasicProperties,
) -> Result<(), LinkError> {
    let start = out.len();
    out.push(constants::FRAME_HEADER);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&[0; 4]); // the payload's size, once known
    out.extend_from_slice(&BASIC.to_be_bytes());
    out.extend_from_slice(&[0, 0]); // weight
    out.extend_from_slice(&body_size.to_be_bytes());
    out.extend_from_slice(&properties.bitmask().to_be_bytes());
    // In the order of the flags (AMQP 0-9-1, class `basic`).
    short_strings(
        out,
        [properties.content_type(), properties.content_encoding()],
    )?;
    if let Some(headers) = properties.headers() {
        field_table(out, headers)?;
    }
    out.extend(properties.delivery_mode().iter());
    out.extend(properties.priority().iter());
    short_strings(
        out,
        [
            properties.correlation_id(),
            properties.reply_to(),
            properties.expiration(),
            properties.message_id(),
        ],
    )?;
    if let Some(timestamp) = properties.timestamp() {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    short_strings(
        out,
        [
            properties.kind(),
            properties.user_id(),
            properties.app_id(),
            properties.cluster_id(),
        ],
    )?;
    let size = u32::try_from(out.len() - start - FRAME_HEADER)
        .map_err(|_| LinkError::Protocol("a content header over 4 GiB".into()))?;
    out[start + 3..start + FRAME_HEADER].copy_from_slice(&size.to_be_bytes());
    out.push(FRAME_END);
    Ok(())
}

fn short_strings<const N: usize>(
    out: &mut Vec<u8>,
    values: [&Option<ShortString>; N],
) -> Result<(), LinkError> {
    for value in values.into_iter().flatten() {
        short_string(out, value.as_str())?;
    }
    Ok(())
}

fn short_string(out: &mut Vec<u8>, value: &str) -> Result<(), LinkError> {
    let len = u8::try_from(value.len())
        .map_err(|_| LinkError::Protocol("a short string longer than 255 bytes".into()))?;
    out.push(len);
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

/// A header table. The gateway's own tables hold only long strings (trace ids, claims,
/// path and query values), written here; any other table goes through the codec.
fn field_table(out: &mut Vec<u8>, table: &FieldTable) -> Result<(), LinkError> {
    let entries = table.inner();
    if !entries
        .values()
        .all(|value| matches!(value, AMQPValue::LongString(_)))
    {
        // Into a buffer of its own: on error `out` keeps what it held.
        let written = gen_field_table(table)(WriteContext::from(Vec::new()))
            .map_err(|error| LinkError::Protocol(format!("cannot encode a table: {error:?}")))?;
        out.extend_from_slice(&written.write);
        return Ok(());
    }
    let start = out.len();
    out.extend_from_slice(&[0; 4]); // the table's size, once known
    for (key, value) in entries {
        let AMQPValue::LongString(value) = value else {
            unreachable!("checked above")
        };
        short_string(out, key.as_str())?;
        let bytes = value.as_bytes();
        let len = u32::try_from(bytes.len())
            .map_err(|_| LinkError::Protocol("a header value over 4 GiB".into()))?;
        out.push(b'S');
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let size = u32::try_from(out.len() - start - 4)
        .map_err(|_| LinkError::Protocol("a header table over 4 GiB".into()))?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// A content header's payload read directly (the codec's parser cost ≈ 1,800
/// instructions per reply); everything must be consumed, as the codec requires.
pub(super) fn parse_header(payload: &[u8]) -> Result<AMQPContentHeader, LinkError> {
    let mut input = Input(payload);
    let class_id = input.u16()?;
    let _weight = input.u16()?;
    let body_size = input.u64()?;
    let flags = input.u16()?;
    let set = |bit: u16| flags & (1 << (15 - bit)) != 0;
    let mut properties = BasicProperties::default();
    if set(0) {
        properties = properties.with_content_type(input.short_string()?);
    }
    if set(1) {
        properties = properties.with_content_encoding(input.short_string()?);
    }
    if set(2) {
        properties = properties.with_headers(input.field_table()?);
    }
    if set(3) {
        properties = properties.with_delivery_mode(input.u8()?);
    }
    if set(4) {
        properties = properties.with_priority(input.u8()?);
    }
    if set(5) {
        properties = properties.with_correlation_id(input.short_string()?);
    }
    if set(6) {
        properties = properties.with_reply_to(input.short_string()?);
    }
    if set(7) {
        properties = properties.with_expiration(input.short_string()?);
    }
    if set(8) {
        properties = properties.with_message_id(input.short_string()?);
    }
    if set(9) {
        properties = properties.with_timestamp(input.u64()?);
    }
    if set(10) {
        properties = properties.with_type(input.short_string()?);
    }
    if set(11) {
        properties = properties.with_user_id(input.short_string()?);
    }
    if set(12) {
        properties = properties.with_app_id(input.short_string()?);
    }
    if set(13) {
        properties = properties.with_cluster_id(input.short_string()?);
    }
    if !input.0.is_empty() {
        return Err(unreadable_header());
    }
    Ok(AMQPContentHeader {
        class_id,
        body_size,
        properties,
    })
}

fn unreadable_header() -> LinkError {
    LinkError::Protocol("an unreadable content header".into())
}

/// How deep the broker's header tables may nest (tables and arrays inside tables): the
/// codec reads nesting by recursion, and a frame's worth of it would overflow the stack.
const MAX_NESTING: usize = 16;

/// Steps over a header table (the codec's grammar, RabbitMQ's type tags); `None` if it is
/// malformed or nests deeper than `depth`.
fn skip_table(input: &mut &[u8], depth: usize) -> Option<()> {
    let depth = depth.checked_sub(1)?;
    let mut table = take_sized(input)?;
    while !table.is_empty() {
        let key = usize::from(*table.first()?);
        table = table.get(1 + key..)?;
        skip_value(&mut table, depth)?;
    }
    Some(())
}

fn skip_value(input: &mut &[u8], depth: usize) -> Option<()> {
    let (&tag, rest) = input.split_first()?;
    *input = rest;
    let fixed = match tag {
        b'V' => 0,
        b't' | b'b' | b'B' => 1,
        b's' | b'U' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'D' => 5,
        b'L' | b'l' | b'd' | b'T' => 8,
        b'S' | b'x' => return take_sized(input).map(|_| ()),
        b'F' => return skip_table(input, depth),
        b'A' => {
            let depth = depth.checked_sub(1)?;
            let mut array = take_sized(input)?;
            while !array.is_empty() {
                skip_value(&mut array, depth)?;
            }
            return Some(());
        }
        _ => return None,
    };
    *input = input.get(fixed..)?;
    Some(())
}

/// A length-prefixed (u32) part, taken off `input`.
fn take_sized<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(input.get(..4)?.try_into().ok()?) as usize;
    let part = input.get(4..4 + len)?;
    *input = &input[4 + len..];
    Some(part)
}

/// What is left of a payload being read.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LinkError> {
        if self.0.len() < n {
            return Err(unreadable_header());
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LinkError> {
        let bytes = self.take(N)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, LinkError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, LinkError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, LinkError> {
        self.array().map(u64::from_be_bytes)
    }

    fn short_string(&mut self) -> Result<ShortString, LinkError> {
        let len = self.u8()?;
        let bytes = self.take(len.into())?;
        let text = std::str::from_utf8(bytes).map_err(|_| unreadable_header())?;
        Ok(ShortString::from(text))
    }

    /// Tables are rare in replies (`x-status`): the codec reads them, once their nesting
    /// is known to be shallow (the codec recurses without a limit).
    fn field_table(&mut self) -> Result<FieldTable, LinkError> {
        let mut walked = self.0;
        if skip_table(&mut walked, MAX_NESTING).is_none() {
            return Err(unreadable_header());
        }
        let (rest, table) = parse_field_table(self.0).map_err(|_| unreadable_header())?;
        self.0 = rest;
        Ok(table)
    }
}

/// A body frame written directly: no copy of the payload into a frame value first.
pub(super) fn body_frame(out: &mut Vec<u8>, channel: u16, chunk: &[u8]) {
    out.push(constants::FRAME_BODY);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
    out.extend_from_slice(chunk);
    out.push(FRAME_END);
}

/// Splits the broker's byte stream into frames, none larger than `frame_max`.
pub(super) struct FrameReader {
    buffer: BytesMut,
    pub(super) frame_max: usize,
    /// Which method frames are decoded; the others are skipped unread.
    reads: Reads,
}

/// The methods a reader decodes. The codec reads field tables by unbounded recursion,
/// and of the methods the link takes only `connection.start` carries one: it is decoded
/// during the handshake, while frames are at most 4 KiB, and never after.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reads {
    /// The link before its connection is open: `connection.start` and the rest.
    Handshake,
    /// The open link: the methods it acts on, none with a table.
    Open,
    /// Every method (the tests' scripted broker).
    #[cfg(test)]
    All,
}

impl Reads {
    fn decodes(self, class: u16, method: u16) -> bool {
        #[cfg(test)]
        if self == Reads::All {
            return true;
        }
        match (class, method) {
            // connection.start (with the server's properties table)
            (10, 10) => self == Reads::Handshake,
            // connection: secure, tune, open-ok, close, close-ok, blocked, unblocked;
            // channel: open-ok, close, close-ok; basic: consume-ok, cancel, return.
            (10, 20 | 30 | 41 | 50 | 51 | 60 | 61) | (20, 11 | 40 | 41) | (60, 21 | 30 | 50) => {
                true
            }
            _ => false,
        }
    }
}

/// One frame; body frames keep their bytes where they were read (no copy into a value).
#[derive(Debug)]
// Moved once, from the parser to its handler: boxing the frame would allocate per frame.
#[allow(clippy::large_enum_variant)]
pub(super) enum Incoming {
    Frame(AMQPFrame),
    Body {
        channel: u16,
        bytes: Bytes,
    },
    /// `basic.deliver`, its fields skipped.
    Deliver {
        channel: u16,
    },
    /// A method the reader does not decode (see [`Reads`]).
    Skipped {
        channel: u16,
        class: u16,
        method: u16,
    },
}

impl FrameReader {
    /// A reader for the handshake.
    pub(super) fn new(frame_max: usize) -> Self {
        Self {
            buffer: BytesMut::with_capacity(16 * 1024),
            frame_max,
            reads: Reads::Handshake,
        }
    }

    /// The connection is open: frames up to the negotiated size, and only the methods
    /// the open link acts on.
    pub(super) fn opened(&mut self, frame_max: usize) {
        self.frame_max = frame_max;
        self.reads = Reads::Open;
    }

    #[cfg(test)]
    pub(super) fn reading_all(mut self) -> Self {
        self.reads = Reads::All;
        self
    }

    /// The next frame from what was already read, if it is all there.
    pub(super) fn parse(&mut self) -> Result<Option<Incoming>, LinkError> {
        if self.buffer.len() < FRAME_HEADER {
            return Ok(None);
        }
        let kind = self.buffer[0];
        let channel = u16::from_be_bytes([self.buffer[1], self.buffer[2]]);
        let size = u32::from_be_bytes([
            self.buffer[3],
            self.buffer[4],
            self.buffer[5],
            self.buffer[6],
        ]) as usize;
        let total = FRAME_HEADER + size + 1;
        if total > self.frame_max {
            return Err(LinkError::Protocol(format!(
                "a frame of {total} bytes (frame_max {})",
                self.frame_max
            )));
        }
        if self.buffer.len() < total {
            self.buffer.reserve(total - self.buffer.len());
            return Ok(None);
        }
        if self.buffer[total - 1] != FRAME_END {
            return Err(LinkError::Protocol("a frame without its end marker".into()));
        }
        if kind == constants::FRAME_BODY {
            let mut frame = self.buffer.split_to(total);
            frame.advance(FRAME_HEADER);
            frame.truncate(size);
            return Ok(Some(Incoming::Body {
                channel,
                bytes: frame.freeze(),
            }));
        }
        if kind == constants::FRAME_METHOD
            && size >= 4
            && self.buffer[FRAME_HEADER..FRAME_HEADER + 4] == BASIC_DELIVER
        {
            // Every reply starts with one; none of its fields matter here (the reply's
            // correlation id is in the content header), so it is not decoded.
            self.buffer.advance(total);
            return Ok(Some(Incoming::Deliver { channel }));
        }
        if kind == constants::FRAME_METHOD && size >= 4 {
            let id = |at: usize| u16::from_be_bytes([self.buffer[at], self.buffer[at + 1]]);
            let (class, method) = (id(FRAME_HEADER), id(FRAME_HEADER + 2));
            if !self.reads.decodes(class, method) {
                self.buffer.advance(total);
                return Ok(Some(Incoming::Skipped {
                    channel,
                    class,
                    method,
                }));
            }
            // `connection.start`: its table (after the ids and the version) must be
            // shallow before the codec reads it.
            if (class, method) == (10, 10)
                && skip_table(&mut &self.buffer[FRAME_HEADER + 6..total - 1], MAX_NESTING).is_none()
            {
                return Err(LinkError::Protocol(
                    "a connection.start with an unreadable table".into(),
                ));
            }
        }
        if kind == constants::FRAME_HEADER {
            let parsed = parse_header(&self.buffer[FRAME_HEADER..total - 1]);
            self.buffer.advance(total);
            return parsed.map(|header| Some(Incoming::Frame(AMQPFrame::Header(channel, header))));
        }
        let parsed = parse_frame(&self.buffer[..total])
            .map(|(_, frame)| frame)
            .map_err(|e| LinkError::Protocol(format!("an unreadable frame: {e}")));
        self.buffer.advance(total);
        parsed.map(|frame| Some(Incoming::Frame(frame)))
    }

    /// Reads until a whole frame is there; the end of the stream is an error.
    pub(super) async fn next<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Incoming, LinkError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(frame);
            }
            self.fill(stream).await?;
        }
    }

    /// One read from the stream; the end of the stream is an error.
    pub(super) async fn fill<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(), LinkError> {
        if stream.read_buf(&mut self.buffer).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::protocol::{AMQPClass, basic, connection};

    /// The hand-written frames are byte for byte what the codec writes and reads.
    #[test]
    fn hand_written_frames_match_the_codec() {
        for (exchange, routing_key, mandatory) in [
            ("", "shipping.quote", true),
            ("zones", "zone.é.north", false),
            (&*"x".repeat(255), &*"k".repeat(255), true),
        ] {
            let publish = AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
                    exchange: exchange.into(),
                    routing_key: routing_key.into(),
                    mandatory,
                    immediate: false,
                })),
            );
            let mut ours = Vec::new();
            publish_frame(&mut ours, 1, exchange, routing_key, mandatory).unwrap();
            assert_eq!(ours, encode(Vec::new(), &publish).unwrap());
        }
        assert!(publish_frame(&mut Vec::new(), 1, &"x".repeat(256), "k", true).is_err());

        let deliver = AMQPFrame::Method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
                consumer_tag: "amq.ctag-1".into(),
                delivery_tag: 7,
                redelivered: false,
                exchange: "".into(),
                routing_key: "amq.rabbitmq.reply-to.x".into(),
            })),
        );
        let mut reader = FrameReader::new(4096);
        reader
            .buffer
            .extend_from_slice(&encode(Vec::new(), &deliver).unwrap());
        assert!(matches!(
            reader.parse(),
            Ok(Some(Incoming::Deliver { channel: 1 }))
        ));
        assert!(reader.buffer.is_empty());
    }

    /// Property sets covering every flag, tables of long strings (written by hand) and of
    /// other values (through the codec).
    fn property_sets() -> Vec<BasicProperties> {
        let mut texts = FieldTable::default();
        texts.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-ab-cd-01".into()),
        );
        texts.insert("x-trace-id".into(), AMQPValue::LongString("t-1".into()));
        texts.insert("x-user-id".into(), AMQPValue::LongString("ann".into()));
        let mut mixed = texts.clone();
        mixed.insert("x-status".into(), AMQPValue::LongInt(404));
        mixed.insert(
            "x-query-tag".into(),
            AMQPValue::FieldArray(
                vec![
                    AMQPValue::LongString("a".into()),
                    AMQPValue::LongString("b".into()),
                ]
                .into(),
            ),
        );
        let full = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_content_encoding("identity".into())
            .with_headers(mixed)
            .with_delivery_mode(2)
            .with_priority(9)
            .with_correlation_id("0badcafe.1f".into())
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_expiration("5000".into())
            .with_message_id("m-1".into())
            .with_timestamp(1_700_000_000)
            .with_type("quote".into())
            .with_user_id("guest".into())
            .with_app_id("switchboard".into())
            .with_cluster_id("c".into());
        vec![
            BasicProperties::default(),
            BasicProperties::default()
                .with_headers(texts)
                .with_content_type("application/json".into())
                .with_correlation_id("0badcafe.1f".into())
                .with_reply_to("amq.rabbitmq.reply-to".into())
                .with_expiration("5000".into()),
            BasicProperties::default().with_headers(FieldTable::default()),
            BasicProperties::default().with_correlation_id("é".repeat(127).into()),
            full,
        ]
    }

    fn codec_header(properties: &BasicProperties, body_size: u64) -> Vec<u8> {
        let header = AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: BASIC,
                body_size,
                properties: properties.clone(),
            },
        );
        encode(Vec::new(), &header).unwrap()
    }

    #[test]
    fn content_headers_are_written_and_read_as_the_codec_does() {
        for (i, properties) in property_sets().iter().enumerate() {
            let body_size = 1 << (i * 9);
            let theirs = codec_header(properties, body_size);
            let mut ours = vec![0xAA]; // appended after what the buffer holds
            header_frame(&mut ours, 1, body_size, properties).unwrap();
            assert_eq!(ours[1..], theirs[..], "properties {i}");

            let mut reader = FrameReader::new(4096);
            reader.buffer.extend_from_slice(&theirs);
            let Ok(Some(Incoming::Frame(AMQPFrame::Header(1, header)))) = reader.parse() else {
                panic!("properties {i}: not read as a content header");
            };
            assert_eq!(header.class_id, BASIC);
            assert_eq!(header.body_size, body_size);
            assert_eq!(&header.properties, properties, "properties {i}");
            assert!(reader.buffer.is_empty());
        }
    }

    /// A content header whose table nests `levels` deep (tables in tables, or arrays).
    fn nested_header(levels: usize, array: bool) -> Vec<u8> {
        let mut value = vec![b'V'];
        for _ in 0..levels {
            let mut outer = if array { vec![b'A'] } else { vec![b'F'] };
            let body: Vec<u8> = if array {
                value.clone()
            } else {
                [&[1, b'k'][..], &value].concat()
            };
            outer.extend_from_slice(&(body.len() as u32).to_be_bytes());
            outer.extend_from_slice(&body);
            value = outer;
        }
        // The headers table holds the nested value under one key.
        let mut table = vec![1, b'h'];
        table.extend_from_slice(&value);
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0];
        payload.extend_from_slice(&(table.len() as u32).to_be_bytes());
        payload.extend_from_slice(&table);
        payload
    }

    #[test]
    fn deeply_nested_header_tables_are_refused_before_the_codec_recurses() {
        for array in [false, true] {
            // Shallow nesting reads as the codec reads it.
            let header = parse_header(&nested_header(6, array)).expect("shallow nesting");
            assert!(header.properties.headers().is_some());
            // A frame's worth of nesting: refused, on a small stack, without recursion.
            let deep = nested_header(20_000, array);
            let refused = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || parse_header(&deep).is_err())
                .unwrap()
                .join()
                .unwrap();
            assert!(refused, "array: {array}");
        }
    }

    #[test]
    fn the_handshake_reads_shallow_server_properties_only() {
        let start = |server_properties: FieldTable| {
            encode(
                Vec::new(),
                &AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                        version_major: 0,
                        version_minor: 9,
                        server_properties,
                        mechanisms: "PLAIN".into(),
                        locales: "en_US".into(),
                    })),
                ),
            )
            .unwrap()
        };
        let mut capabilities = FieldTable::default();
        capabilities.insert("publisher_confirms".into(), AMQPValue::Boolean(true));
        let mut properties = FieldTable::default();
        properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
        let mut reader = FrameReader::new(4096);
        reader.buffer.extend_from_slice(&start(properties));
        assert!(matches!(reader.parse(), Ok(Some(Incoming::Frame(_)))));

        let mut deep = FieldTable::default();
        for _ in 0..MAX_NESTING {
            let mut outer = FieldTable::default();
            outer.insert("k".into(), AMQPValue::FieldTable(deep));
            deep = outer;
        }
        let mut reader = FrameReader::new(4096);
        reader.buffer.extend_from_slice(&start(deep));
        assert!(reader.parse().is_err());
    }

    #[test]
    fn unreadable_content_headers_are_refused() {
        let full = property_sets().pop().unwrap();
        let frame = codec_header(&full, 7);
        let payload = &frame[FRAME_HEADER..frame.len() - 1];
        // Cut anywhere: refused, never read past the end.
        for cut in 0..payload.len() {
            assert!(parse_header(&payload[..cut]).is_err(), "cut at {cut}");
        }
        // Bytes left over after the last property.
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(parse_header(&longer).is_err());
        // A short string that is not UTF-8 (the correlation id's first byte).
        let only_id = codec_header(
            &BasicProperties::default().with_correlation_id("ab".into()),
            0,
        );
        let mut bad = only_id[FRAME_HEADER..only_id.len() - 1].to_vec();
        let first = bad.len() - 2;
        bad[first] = 0xFF;
        assert!(parse_header(&bad).is_err());
    }
}
