//! The requests of one ADS stream, read off the HTTP/2 body by [`crate::grpc::Messages`]: a
//! client resuming declares everything it holds in its first request (a megabyte for a mesh of
//! 10,000 pods), which tonic's decoder would keep allocated for the stream's life.

use http_body::Body;
use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tonic::codegen::StdError;
use tonic::{Code, Status};

use crate::grpc::Messages;

/// Largest request a stream reads. A client resuming declares every resource it holds in one
/// request (`initial_resource_versions`): with tonic's default of 4 MiB, a client holding
/// 50,000 pods could not resume at all, each new stream ending on the same request, although a
/// stream may declare up to [`MAX_NAMES`](super::stream::MAX_NAMES) per type. This covers that
/// many at about 160 bytes each (a pod's uid and our 32-character version take under 100).
pub(crate) const MAX_REQUEST: usize = 16 << 20;

/// The request messages of one stream.
pub(crate) struct Requests(Messages<DeltaDiscoveryRequest>);

impl Requests {
    pub(crate) fn new<B>(body: B) -> Requests
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError>,
    {
        Requests(Messages::new(body, MAX_REQUEST, "request"))
    }

    /// The next request; `None` once the client has closed its side or reset the stream. The
    /// error statuses are those gRPC's status code table gives: INTERNAL for a message that
    /// does not parse, OUT_OF_RANGE for one above [`MAX_REQUEST`].
    pub(crate) async fn message(&mut self) -> Result<Option<DeltaDiscoveryRequest>, Status> {
        match self.0.message().await {
            // A client that resets its stream has left; nobody reads an error.
            Err(status) if status.code() == Code::Cancelled => Ok(None),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body::Frame;

    use super::*;

    /// A body of one chunk, then `end`.
    struct Then(Option<Bytes>, Option<Status>);

    impl Body for Then {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            let next = match self.0.take() {
                Some(chunk) => Some(Ok(Frame::data(chunk))),
                None => self.1.take().map(Err),
            };
            Poll::Ready(next)
        }
    }

    #[tokio::test]
    async fn a_request_above_the_bound_is_out_of_range_and_a_reset_is_the_end() {
        let mut header = vec![0];
        header.extend_from_slice(&(MAX_REQUEST as u32 + 1).to_be_bytes());
        let s = Requests::new(Then(Some(header.into()), None)).message().await.unwrap_err();
        assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
        assert!(s.message().contains(&format!("more than the {MAX_REQUEST} accepted")), "{s:?}");

        let reset = Requests::new(Then(None, Some(Status::cancelled("reset")))).message().await;
        assert_eq!(reset.unwrap(), None);
        let failed = Requests::new(Then(None, Some(Status::unavailable("gone")))).message().await;
        assert_eq!(failed.unwrap_err().code(), Code::Unavailable);
    }
}
