//! gRPC's length-prefixed messages on an HTTP/2 body, read and written here rather than by
//! tonic, for both ends of an ADS stream. tonic's decoder (and encoder) keeps one buffer per
//! stream at the size of the largest message it has seen, for the stream's life: a first sync
//! of 10,000 pods is megabytes, and a client resuming declares everything it holds, so every
//! stream would pin that much for good. Here a large message gets a buffer of its own, freed
//! once decoded (or written).

use std::future::poll_fn;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body, Frame};
use prost::Message;
use tonic::Status;
use tonic::codegen::StdError;

/// Buffer a stream keeps between messages; a larger one is dropped after its message.
pub(crate) const KEPT: usize = 16 << 10;

/// gRPC's message header: the compressed flag and the length.
const HEADER: usize = 5;

/// `message` framed as one gRPC message (uncompressed), in a buffer of its own; `None` if it is
/// too long for the 32-bit length.
pub(crate) fn frame(message: &impl Message) -> Option<Bytes> {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(HEADER + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).ok()?);
    message.encode_raw(&mut buf);
    Some(buf.freeze())
}

type BoxBody = Pin<Box<dyn Body<Data = Bytes, Error = Status> + Send>>;

/// The messages of type `M` on one body, each at most `max` bytes.
pub(crate) struct Messages<M> {
    body: BoxBody,
    /// Bytes received and not yet decoded.
    buf: BytesMut,
    max: usize,
    /// `"request"` or `"response"`, for the errors.
    what: &'static str,
    ended: bool,
    trailers: Option<http::HeaderMap>,
    message: PhantomData<fn() -> M>,
}

impl<M: Message + Default> Messages<M> {
    pub(crate) fn new<B>(body: B, max: usize, what: &'static str) -> Self
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError>,
    {
        Messages {
            body: Box::pin(Bytewise(Box::pin(body))),
            buf: BytesMut::new(),
            max,
            what,
            ended: false,
            trailers: None,
            message: PhantomData,
        }
    }

    /// The next message; `None` once the body has ended (see [`trailers`](Self::trailers)).
    /// The errors are the body's, or those gRPC's status code table gives: INTERNAL for a
    /// message that does not parse or is cut short, OUT_OF_RANGE for one above the bound.
    pub(crate) async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.decode()? {
                return Ok(Some(message));
            }
            if self.ended {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(Status::internal(format!("the {} stream ended inside a message", self.what))),
                };
            }
            match poll_fn(|cx| self.body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buf.put(data),
                    // Trailers end the body: nothing may follow them.
                    Err(frame) => {
                        self.trailers = frame.into_trailers().ok();
                        self.ended = true;
                    }
                },
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }

    /// The trailers the body ended with, once [`message`](Self::message) has returned `None`.
    pub(crate) fn trailers(&self) -> Option<&http::HeaderMap> {
        self.trailers.as_ref()
    }

    /// The first whole message in the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<M>, Status> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            // No grpc-encoding is ever agreed: neither end names one it accepts.
            return Err(Status::internal(format!("a compressed {}, but no compression was agreed", self.what)));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(Status::out_of_range(format!(
                "a {} of {len} bytes, more than the {} accepted",
                self.what, self.max
            )));
        }
        if self.buf.len() < HEADER + len {
            // Nothing reserved for the rest: the length is only the peer's word, and five bytes
            // declaring the bound must not make a stream hold the bound. The buffer grows as
            // the bytes come, by doubling, so a real large message costs a few copies.
            return Ok(None);
        }
        let message = M::decode(&self.buf[HEADER..HEADER + len])
            .map_err(|e| Status::internal(format!("Error parsing {} proto: {e}", self.what)));
        self.buf.advance(HEADER + len);
        if len > KEPT {
            // What follows the message, if anything, in a buffer of its own: the large one goes.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        message.map(Some)
    }

    /// Bytes the reader holds allocated between messages.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// A body with its chunks as `Bytes` and its errors as statuses.
struct Bytewise<B>(Pin<Box<B>>);

impl<B> Body for Bytewise<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(self.0.as_mut().poll_frame(cx));
        Poll::Ready(frame.map(|frame| match frame {
            Ok(frame) => Ok(frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))),
            Err(e) => Err(Status::from_error(e.into())),
        }))
    }
}

/// A body of the given frames, all there at once, then its end: what tests and the fuzzing
/// property read messages from.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) struct Frames(pub(crate) std::collections::VecDeque<Frame<Bytes>>);

#[cfg(any(test, feature = "fuzzing"))]
impl Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use tonic::Code;

    use super::*;

    fn framed(type_url: &str) -> Vec<u8> {
        frame(&DeltaDiscoveryRequest { type_url: type_url.into(), ..Default::default() }).unwrap().to_vec()
    }

    fn messages(chunks: Vec<Vec<u8>>) -> Messages<DeltaDiscoveryRequest> {
        let frames = chunks.into_iter().map(|c| Frame::data(Bytes::from(c))).collect();
        Messages::new(Frames(frames), 1 << 20, "request")
    }

    async fn type_url(messages: &mut Messages<DeltaDiscoveryRequest>) -> Option<String> {
        messages.message().await.unwrap().map(|r| r.type_url)
    }

    #[tokio::test]
    async fn messages_are_read_across_and_within_chunks() {
        let (a, b, c) = (framed("a"), framed("b"), framed(&"c".repeat(100_000)));
        // a and the start of b in one chunk; the rest of b with the header of c; c in pieces.
        let mut joined = a.clone();
        joined.extend_from_slice(&b[..3]);
        let mut rest = b[3..].to_vec();
        rest.extend_from_slice(&c[..5]);
        let mut chunks = vec![joined, rest];
        chunks.extend(c[5..].chunks(16_384).map(<[u8]>::to_vec));
        let mut m = messages(chunks);
        assert_eq!(type_url(&mut m).await.as_deref(), Some("a"));
        assert_eq!(type_url(&mut m).await.as_deref(), Some("b"));
        assert_eq!(type_url(&mut m).await.map(|t| t.len()), Some(100_000));
        assert!(m.capacity() <= KEPT, "the large message's buffer went with it");
        assert_eq!(type_url(&mut m).await, None);
        assert!(m.trailers().is_none());
    }

    #[tokio::test]
    async fn bad_framing_ends_with_the_status_saying_why() {
        let status = |chunks| async move { messages(chunks).message().await.unwrap_err() };
        let mut compressed = framed("a");
        compressed[0] = 1;
        assert_eq!(status(vec![compressed]).await.code(), Code::Internal);
        let too_long = [0, 0x00, 0x10, 0x00, 0x01].to_vec();
        let s = status(vec![too_long]).await;
        assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
        assert_eq!(s.message(), "a request of 1048577 bytes, more than the 1048576 accepted");
        let cut = framed("a")[..4].to_vec();
        assert_eq!(status(vec![cut]).await.code(), Code::Internal);
        let garbage = vec![0, 0, 0, 0, 2, 0x0a, 0x64];
        let s = status(vec![garbage]).await;
        assert!(s.message().contains("Error parsing request proto"), "{s:?}");
    }

    /// A declared length is not allocated before the bytes come: memory follows what the peer
    /// sent. (Before, a header alone declaring the bound reserved the bound.)
    #[test]
    fn a_declared_length_is_not_allocated_ahead_of_the_bytes() {
        let mut m = messages(Vec::new());
        m.buf.put_slice(&[0, 0x00, 0x10, 0x00, 0x00]);
        assert!(m.decode().unwrap().is_none());
        assert!(m.capacity() <= 2 * KEPT, "{} bytes held for a 5-byte header", m.capacity());
        // As the message arrives, the buffer grows with it, at most twice what came.
        let body = vec![b'x'; 300_000];
        for chunk in body.chunks(16_384) {
            m.buf.put_slice(chunk);
            assert!(m.decode().unwrap().is_none());
            assert!(m.capacity() <= 2 * m.buf.len() + KEPT, "{} held for {}", m.capacity(), m.buf.len());
        }
    }

    #[tokio::test]
    async fn trailers_end_the_messages_and_are_kept() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        let frames = [Frame::data(Bytes::from(framed("a"))), Frame::trailers(trailers)];
        let mut m = Messages::<DeltaDiscoveryRequest>::new(Frames(frames.into()), 1 << 20, "response");
        assert_eq!(type_url(&mut m).await.as_deref(), Some("a"));
        assert_eq!(type_url(&mut m).await, None);
        assert_eq!(m.trailers().unwrap()["grpc-status"], "14");
    }
}
