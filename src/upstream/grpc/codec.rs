//! tonic codecs for messages typed only at run time: over `DynamicMessage`, or over the
//! encoded bytes themselves (`RawCodec`, for callers that transcode JSON straight to and
//! from the wire with `transcode::MessageType`).

use bytes::{Buf, BufMut, Bytes};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends encoded request messages; decodes responses as `response` messages.
#[derive(Clone, Debug)]
pub struct DynamicCodec {
    response: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(response: MessageDescriptor) -> Self {
        Self { response }
    }
}

impl Codec for DynamicCodec {
    type Encode = Bytes;
    type Decode = DynamicMessage;
    type Encoder = RawCodec;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.response.clone())
    }
}

#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| {
                Status::internal(format!(
                    "backend sent an invalid {}: {e}",
                    self.0.full_name()
                ))
            })
    }
}

/// Passes encoded messages through both ways: requests are written as they are, each
/// response comes out as its bytes (split off tonic's buffer, not copied).
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec {
    /// tonic's starting buffer size and yield threshold, when not its defaults.
    buffers: Option<(usize, usize)>,
}

impl RawCodec {
    /// With tonic's buffers starting at `initial` bytes (they grow as messages need).
    pub const fn with_buffers(initial: usize, yield_threshold: usize) -> Self {
        Self {
            buffers: Some((initial, yield_threshold)),
        }
    }

    fn settings(&self) -> BufferSettings {
        self.buffers
            .map_or_else(BufferSettings::default, |(initial, threshold)| {
                BufferSettings::new(initial, threshold)
            })
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.settings()
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.settings()
    }
}
