//! Frames on the wire: encoding what the link sends, and splitting what the broker sends
//! into frames no larger than the negotiated `frame_max`.

use super::LinkError;
use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::constants;
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
}

impl FrameReader {
    pub(super) fn new(frame_max: usize) -> Self {
        Self {
            buffer: BytesMut::with_capacity(16 * 1024),
            frame_max,
        }
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
    use amq_protocol::protocol::{AMQPClass, basic};

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
}
