//! Streaming calls as framed bytes, for callers that encode and decode messages
//! themselves (HTTP and gRPC-Web server streams, the WebSocket bridge; `GrpcUpstream::open_stream`
//! adds the breaker, metrics and resends). Request messages arrive already framed (5-byte
//! gRPC prefix), many to a chunk, so a busy stream sends one DATA frame for many; response
//! messages are cut out of the DATA frames as they come, as slices of them (no copy)
//! unless one spans frames. Headers, statuses and trailers follow tonic's client, as
//! `unary` does.

use super::connection::{Connection, transport_status};
pub(crate) use super::link::RequestChunks;
use super::link::{RequestBody, ResponseBody};
use super::unary::{self, GRPC_ENCODING, framed_len};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version, header};
use http_body_util::BodyExt;
use tonic::{Code, Status};

/// Request headers tonic keeps for itself: a caller's metadata cannot set them.
const RESERVED: [HeaderName; 6] = [
    header::TE,
    header::USER_AGENT,
    header::CONTENT_TYPE,
    HeaderName::from_static("grpc-message"),
    HeaderName::from_static("grpc-message-type"),
    HeaderName::from_static("grpc-status"),
];

/// Opens a streaming call to `path` with `body` as the request stream: resolves once
/// the response headers are in, with them. A trailers-only response ends the call here
/// (its error, or an empty stream).
pub(crate) async fn open(
    connection: &Connection,
    path: http::uri::PathAndQuery,
    mut metadata: HeaderMap,
    body: RequestBody,
) -> Result<(HeaderMap, ResponseMessages), Status> {
    for name in &RESERVED {
        metadata.remove(name);
    }
    metadata.insert(header::TE, HeaderValue::from_static("trailers"));
    metadata.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = connection.uri(path)?;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = metadata;
    let response = connection.send(request).await?;

    let (parts, body) = response.into_parts();
    if let Some(encoding) = parts.headers.get(GRPC_ENCODING)
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let mut messages = ResponseMessages {
        body,
        http: parts.status,
        messages: Deframer::default(),
        trailers: None,
        ended: false,
    };
    if let Some(code) = unary::status_code(&parts.headers) {
        // Trailers-only: no message follows.
        if code != Code::Ok {
            return Err(unary::status_from(parts.headers));
        }
        messages.ended = true;
    }
    Ok((parts.headers, messages))
}

/// The response messages of a streaming call, each as its encoded bytes.
pub(crate) struct ResponseMessages {
    body: ResponseBody,
    http: StatusCode,
    messages: Deframer,
    trailers: Option<HeaderMap>,
    /// The body is over (or the response was trailers-only).
    ended: bool,
}

impl ResponseMessages {
    /// The next message, waiting for it; `None` once the call has ended well. The
    /// status the backend ended with, or a broken stream, is an error. Not to be called
    /// again after `None` or an error.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(message) = self.messages.next()? {
                return Ok(Some(message));
            }
            if self.ended {
                return end(&self.messages, self.trailers.clone(), self.http).map(|()| None);
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Err(error)) => {
                    let cause = format!("reading the response stream failed: {error}");
                    return Err(transport_status(error, cause));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.messages.push(data),
                    Err(frame) => {
                        if let Ok(map) = frame.into_trailers() {
                            match &mut self.trailers {
                                Some(trailers) => trailers.extend(map),
                                None => self.trailers = Some(map),
                            }
                        }
                    }
                },
            }
        }
    }

    /// The next message if it is already here (no waiting): a busy stream's DATA frame
    /// holds many.
    pub(crate) fn ready(&mut self) -> Result<Option<Bytes>, Status> {
        self.messages.next()
    }

    /// The trailers the backend ended the call with (after `next` returned `None`).
    pub(crate) fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Bytes received and not yet returned as messages.
    pub(crate) fn buffered(&self) -> usize {
        self.messages.data.len() + self.messages.partial.len()
    }
}

/// How a stream whose body is over ended: its status (from the trailers, or inferred
/// from the HTTP status), or a message cut short.
fn end(messages: &Deframer, trailers: Option<HeaderMap>, http: StatusCode) -> Result<(), Status> {
    if !messages.partial.is_empty() {
        return Err(Status::internal("Unexpected EOF decoding stream."));
    }
    match unary::trailer_error(trailers, http) {
        Some(status) => Err(status),
        None => Ok(()),
    }
}

/// Cuts framed messages out of DATA frames.
#[derive(Default)]
struct Deframer {
    /// What is left of the DATA frame being read.
    data: Bytes,
    /// A message that spans DATA frames, gathered (empty otherwise).
    partial: BytesMut,
}

impl Deframer {
    /// The next DATA frame; `next` has taken everything of the one before.
    fn push(&mut self, data: Bytes) {
        debug_assert!(self.data.is_empty());
        self.data = data;
    }

    /// The next whole message received, if any. Leaves `data` empty when it returns
    /// `None` (the start of the next message is in `partial`).
    fn next(&mut self) -> Result<Option<Bytes>, Status> {
        if self.partial.is_empty() {
            let len = framed_len(&self.data)?;
            if let Some(len) = len
                && len <= self.data.len()
            {
                // The common case: a slice of the DATA frame.
                let mut message = self.data.split_to(len);
                message.advance(unary::FRAME_PREFIX.len());
                return Ok(Some(message));
            }
            // A message that goes on in the next DATA frame.
            self.partial.reserve(len.unwrap_or(0));
            self.partial.extend_from_slice(&self.data);
            self.data.clear();
            return Ok(None);
        }
        loop {
            match framed_len(&self.partial)? {
                Some(len) if len <= self.partial.len() => {
                    let mut message = self.partial.split_to(len).freeze();
                    message.advance(unary::FRAME_PREFIX.len());
                    return Ok(Some(message));
                }
                _ if self.data.is_empty() => return Ok(None),
                wanted => {
                    let wanted = wanted.unwrap_or(unary::FRAME_PREFIX.len());
                    // Only what this message lacks: the rest stays in `data`, uncopied.
                    let take = (wanted - self.partial.len()).min(self.data.len());
                    self.partial.extend_from_slice(&self.data[..take]);
                    self.data.advance(take);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::grpc::unary::MAX_RESPONSE_MESSAGE;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for message in messages {
            out.push(0);
            out.extend_from_slice(&(message.len() as u32).to_be_bytes());
            out.extend_from_slice(message);
        }
        out
    }

    /// Every way of cutting three messages into DATA frames gives the same messages.
    #[test]
    fn messages_are_cut_out_of_data_frames_however_they_are_split() {
        let messages: [&[u8]; 3] = [b"first message", b"", &[7u8; 300]];
        let bytes = framed(&messages);
        for cut_a in 0..=bytes.len() {
            for cut_b in (cut_a..=bytes.len()).step_by(7) {
                let mut deframer = Deframer::default();
                let mut got = Vec::new();
                for piece in [&bytes[..cut_a], &bytes[cut_a..cut_b], &bytes[cut_b..]] {
                    deframer.push(Bytes::copy_from_slice(piece));
                    while let Some(message) = deframer.next().unwrap() {
                        got.push(message);
                    }
                    assert!(deframer.data.is_empty(), "`next` leaves nothing unread");
                }
                assert_eq!(got, messages, "cut at {cut_a} and {cut_b}");
                assert!(deframer.partial.is_empty());
            }
        }
    }

    #[test]
    fn whole_messages_are_slices_of_the_frame() {
        let bytes = Bytes::from(framed(&[b"one", b"two"]));
        let mut deframer = Deframer::default();
        deframer.push(bytes.clone());
        let one = deframer.next().unwrap().unwrap();
        assert_eq!(one.as_ptr(), bytes[5..].as_ptr(), "not copied");
        assert_eq!(&deframer.next().unwrap().unwrap()[..], b"two");
        assert!(deframer.next().unwrap().is_none());
    }

    fn trailers(status: &'static str) -> Option<HeaderMap> {
        Some(HeaderMap::from_iter([(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from_static(status),
        )]))
    }

    #[test]
    fn compressed_oversized_and_cut_messages_are_errors() {
        let error = |bytes: Vec<u8>| {
            let mut deframer = Deframer::default();
            deframer.push(Bytes::from(bytes));
            deframer.next().unwrap_err().code()
        };
        assert_eq!(error(vec![1, 0, 0, 0, 1, 9]), Code::Internal);
        assert_eq!(error(vec![2, 0, 0, 0, 1, 9]), Code::Internal);
        let len = (MAX_RESPONSE_MESSAGE as u32 + 1).to_be_bytes();
        assert_eq!(
            error(vec![0, len[0], len[1], len[2], len[3]]),
            Code::OutOfRange
        );

        let mut cut = Deframer::default();
        cut.push(Bytes::from_static(&[0, 0, 0, 0, 9, 1, 2]));
        assert!(cut.next().unwrap().is_none());
        let ended = end(&cut, trailers("0"), StatusCode::OK);
        assert_eq!(ended.unwrap_err().code(), Code::Internal);
    }

    #[test]
    fn the_end_is_the_trailers_status() {
        let done = Deframer::default();
        assert!(end(&done, trailers("0"), StatusCode::OK).is_ok());
        let not_found = end(&done, trailers("5"), StatusCode::OK);
        assert_eq!(not_found.unwrap_err().code(), Code::NotFound);
        // No trailers at all: a stream cut short.
        let cut_short = end(&done, None, StatusCode::OK);
        assert_eq!(cut_short.unwrap_err().code(), Code::Unknown);
    }
}
