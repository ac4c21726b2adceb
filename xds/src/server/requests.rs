//! The requests of one ADS stream, read off the HTTP/2 body. tonic's decoder keeps one buffer
//! per stream at the size of the largest message it has read, for the stream's life; a client
//! resuming declares everything it holds in its first request (a megabyte for a mesh of 10,000
//! pods), so every proxy's stream would pin that much for good. Here a large message gets a
//! buffer of its own, freed once decoded.

use std::future::poll_fn;
use std::pin::Pin;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body;
use prost::Message;
use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::codegen::StdError;
use tonic::{Code, Status};

/// Largest request a stream reads. A client resuming declares every resource it holds in one
/// request (`initial_resource_versions`): with tonic's default of 4 MiB, a client holding
/// 50,000 pods could not resume at all, each new stream ending on the same request, although a
/// stream may declare up to [`MAX_NAMES`](super::stream::MAX_NAMES) per type. This covers that
/// many at about 160 bytes each (a pod's uid and our 32-character version take under 100).
pub(crate) const MAX_REQUEST: usize = 16 << 20;

/// Buffer a stream keeps between requests; a larger one is dropped after its message.
const KEPT: usize = 16 << 10;

/// gRPC's message header: the compressed flag and the length.
const HEADER: usize = 5;

type BoxBody = Pin<Box<dyn Body<Data = Bytes, Error = Status> + Send>>;

/// The request messages of one stream.
pub(crate) struct Requests {
    body: BoxBody,
    /// Bytes received and not yet decoded.
    buf: BytesMut,
    ended: bool,
}

impl Requests {
    pub(crate) fn new<B>(body: B) -> Requests
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError>,
    {
        Requests { body: Box::pin(Bytewise(Box::pin(body))), buf: BytesMut::new(), ended: false }
    }

    /// The next request; `None` once the client has closed its side. The error statuses are
    /// those gRPC's status code table gives: INTERNAL for a message that does not parse,
    /// OUT_OF_RANGE for one above [`MAX_REQUEST`].
    pub(crate) async fn message(&mut self) -> Result<Option<DeltaDiscoveryRequest>, Status> {
        loop {
            if let Some(request) = self.decode()? {
                return Ok(Some(request));
            }
            if self.ended {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(Status::internal("the request stream ended inside a message")),
                };
            }
            match poll_fn(|cx| self.body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.put(data);
                    }
                }
                // A client that resets its stream has left; nobody reads an error.
                Some(Err(status)) if status.code() == Code::Cancelled => self.ended = true,
                Some(Err(status)) => return Err(status),
                None => self.ended = true,
            }
        }
    }

    /// The first whole message in the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<DeltaDiscoveryRequest>, Status> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            // No grpc-encoding is ever agreed: the server names none it accepts.
            return Err(Status::internal("a compressed request, but no compression was agreed"));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_REQUEST {
            return Err(Status::out_of_range(format!(
                "a request of {len} bytes, more than the {MAX_REQUEST} accepted"
            )));
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        let request = DeltaDiscoveryRequest::decode(&self.buf[HEADER..HEADER + len])
            .map_err(|e| Status::internal(format!("Error parsing request proto: {e}")));
        self.buf.advance(HEADER + len);
        if len > KEPT {
            // What follows the message, if anything, in a buffer of its own: the large one goes.
            self.buf = BytesMut::from(&self.buf[..]);
        }
        request.map(Some)
    }
}

/// A request body with its chunks as `Bytes` and its errors as statuses.
struct Bytewise<B>(Pin<Box<B>>);

impl<B> Body for Bytewise<B>
where
    B: Body,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = std::task::ready!(self.0.as_mut().poll_frame(cx));
        std::task::Poll::Ready(frame.map(|frame| match frame {
            Ok(frame) => Ok(frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))),
            Err(e) => Err(Status::from_error(e.into())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::{Context, Poll};

    use http_body::Frame;

    use super::*;

    /// A body of the given chunks, then its end.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn framed(type_url: &str) -> Vec<u8> {
        let request = DeltaDiscoveryRequest { type_url: type_url.into(), ..Default::default() };
        let mut out = vec![0];
        out.extend_from_slice(&(request.encoded_len() as u32).to_be_bytes());
        request.encode(&mut out).unwrap();
        out
    }

    fn requests(chunks: Vec<Vec<u8>>) -> Requests {
        Requests::new(Chunks(chunks.into_iter().map(Bytes::from).collect()))
    }

    async fn type_url(requests: &mut Requests) -> Option<String> {
        requests.message().await.unwrap().map(|r| r.type_url)
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
        let mut r = requests(chunks);
        assert_eq!(type_url(&mut r).await.as_deref(), Some("a"));
        assert_eq!(type_url(&mut r).await.as_deref(), Some("b"));
        assert_eq!(type_url(&mut r).await.map(|t| t.len()), Some(100_000));
        assert!(r.buf.capacity() <= KEPT, "the large message's buffer went with it");
        assert_eq!(type_url(&mut r).await, None);
    }

    #[tokio::test]
    async fn bad_framing_ends_with_the_status_saying_why() {
        let status = |chunks| async move { requests(chunks).message().await.unwrap_err() };
        let mut compressed = framed("a");
        compressed[0] = 1;
        assert_eq!(status(vec![compressed]).await.code(), Code::Internal);
        let too_long = [0, 0xff, 0xff, 0xff, 0xff].to_vec();
        let s = status(vec![too_long]).await;
        assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
        let cut = framed("a")[..4].to_vec();
        assert_eq!(status(vec![cut]).await.code(), Code::Internal);
        let garbage = vec![0, 0, 0, 0, 2, 0x0a, 0x64];
        let s = status(vec![garbage]).await;
        assert!(s.message().contains("Error parsing request proto"), "{s:?}");
    }
}
