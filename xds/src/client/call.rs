//! One `DeltaAggregatedResources` call on a channel, framed by [`crate::grpc`] rather than by
//! tonic's generated client: its decoder keeps the stream's largest push allocated for the
//! stream's life (a ztunnel in a mesh of 10,000 pods would hold its 4 MB first sync for good),
//! and its encoder does the same with the largest request (the resume, declaring everything
//! held). Here each message has a buffer of its own, freed once decoded or written.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, header};
use http_body::{Body, Frame};
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use tokio::sync::mpsc;
use tonic::codegen::{Service, StdError};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::grpc::{self, Messages};

const PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest push the client reads. A delta server sends a type's first sync as one message:
/// 10,000 pods' `Workload`s already exceed tonic's default of 4 MiB, and a stream that cannot
/// read its first push fails and is sent the same push again on every reconnect. Istio's
/// ztunnel reads pushes of up to 200 MiB, so istiod sizes nothing below that.
pub(super) const MAX_PUSH: usize = 256 << 20;

/// Opens the call on `channel`, sending `requests` as they come and `authorization` as its
/// header; returns once the server has answered with its headers.
pub(super) async fn open(
    channel: &mut Channel,
    authorization: Option<HeaderValue>,
    requests: mpsc::Receiver<DeltaDiscoveryRequest>,
) -> Result<Pushes, Status> {
    let mut request = http::Request::new(tonic::body::Body::new(Outbound(requests)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(PATH);
    *request.version_mut() = http::Version::HTTP_2;
    let headers = request.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if let Some(value) = authorization {
        headers.insert(header::AUTHORIZATION, value);
    }
    let transport = |e: tonic::transport::Error| Status::from_error(Box::new(e));
    poll_fn(|cx| channel.poll_ready(cx)).await.map_err(transport)?;
    let response = channel.call(request).await.map_err(transport)?;
    Pushes::new(response)
}

/// The pushes of one call.
pub(super) struct Pushes {
    /// `None` when the server answered with its status alone (OK, or the call failed to open).
    messages: Option<Messages<DeltaDiscoveryResponse>>,
}

impl Pushes {
    /// The pushes of the call the server answered with `response`, or the status it refused
    /// it with: a `grpc-status` in the headers (a trailers-only response), else a status from
    /// an HTTP status other than 200, as gRPC's HTTP to gRPC status mapping says.
    fn new<B>(response: http::Response<B>) -> Result<Pushes, Status>
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError>,
    {
        let (parts, body) = response.into_parts();
        if let Some(status) = Status::from_header_map(&parts.headers) {
            return match status.code() {
                Code::Ok => Ok(Pushes { messages: None }),
                _ => Err(status),
            };
        }
        let code = match parts.status {
            http::StatusCode::OK => return Ok(Pushes { messages: Some(Messages::new(body, MAX_PUSH, "response")) }),
            http::StatusCode::BAD_REQUEST => Code::Internal,
            http::StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            http::StatusCode::FORBIDDEN => Code::PermissionDenied,
            http::StatusCode::NOT_FOUND => Code::Unimplemented,
            http::StatusCode::TOO_MANY_REQUESTS
            | http::StatusCode::BAD_GATEWAY
            | http::StatusCode::SERVICE_UNAVAILABLE
            | http::StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
            _ => Code::Unknown,
        };
        Err(Status::new(code, format!("HTTP status {} without a grpc-status", parts.status.as_u16())))
    }

    /// The next push; `None` once the server has ended the call with OK, an error for any
    /// other status (or none at all).
    pub(super) async fn message(&mut self) -> Result<Option<DeltaDiscoveryResponse>, Status> {
        let Some(messages) = &mut self.messages else { return Ok(None) };
        if let Some(push) = messages.message().await? {
            return Ok(Some(push));
        }
        match messages.trailers().and_then(Status::from_header_map) {
            Some(status) if status.code() == Code::Ok => Ok(None),
            Some(status) => Err(status),
            // A proxy's reset looks like this: the server never said the call was done.
            None => Err(Status::unknown("the stream ended without a grpc-status")),
        }
    }

    /// Bytes the decoder holds allocated between pushes.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.messages.as_ref().map_or(0, Messages::capacity)
    }
}

/// The request body: each request as one gRPC message, in a buffer freed once h2 has sent it.
struct Outbound(mpsc::Receiver<DeltaDiscoveryRequest>);

impl Body for Outbound {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let request = ready!(self.0.poll_recv(cx));
        Poll::Ready(request.map(|request| {
            grpc::frame(&request)
                .map(Frame::data)
                .ok_or_else(|| Status::resource_exhausted("xDS request larger than a gRPC message can be"))
        }))
    }
}

#[cfg(test)]
mod tests {
    use proto::envoy::service::discovery::v3::Resource;

    use super::*;
    use crate::grpc::Frames;

    fn push(nonce: &str, bytes: usize) -> Frame<Bytes> {
        let resource = Resource { name: "a".into(), version: "x".repeat(bytes), ..Default::default() };
        let push = DeltaDiscoveryResponse { nonce: nonce.into(), resources: vec![resource], ..Default::default() };
        Frame::data(grpc::frame(&push).unwrap())
    }

    fn trailers(code: &str) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_str(code).unwrap());
        Frame::trailers(trailers)
    }

    fn response(status: u16, headers: &[(&'static str, &'static str)], frames: Vec<Frame<Bytes>>) -> Pushes {
        match Pushes::new(responded(status, headers, frames)) {
            Ok(pushes) => pushes,
            Err(status) => panic!("refused: {status:?}"),
        }
    }

    fn responded(
        status: u16,
        headers: &[(&'static str, &'static str)],
        frames: Vec<Frame<Bytes>>,
    ) -> http::Response<Frames> {
        let mut response = http::Response::new(Frames(frames.into()));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (name, value) in headers {
            response.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        response
    }

    async fn nonce(pushes: &mut Pushes) -> Option<String> {
        pushes.message().await.unwrap().map(|p| p.nonce)
    }

    #[tokio::test]
    async fn a_large_push_leaves_no_large_buffer_behind() {
        let frames = vec![push("1", 4 << 20), push("2", 100), push("3", 100), trailers("0")];
        let mut pushes = response(200, &[], frames);
        assert_eq!(nonce(&mut pushes).await.as_deref(), Some("1"));
        assert!(pushes.capacity() <= grpc::KEPT, "{} bytes held after a 4 MiB push", pushes.capacity());
        assert_eq!(nonce(&mut pushes).await.as_deref(), Some("2"));
        assert_eq!(nonce(&mut pushes).await.as_deref(), Some("3"));
        assert!(pushes.capacity() <= grpc::KEPT, "{} bytes held", pushes.capacity());
        assert_eq!(nonce(&mut pushes).await, None, "OK ends the pushes");
    }

    #[tokio::test]
    async fn the_call_ends_with_the_status_the_server_gives() {
        let mut pushes = response(200, &[], vec![push("1", 10), trailers("14")]);
        assert_eq!(nonce(&mut pushes).await.as_deref(), Some("1"));
        assert_eq!(pushes.message().await.unwrap_err().code(), Code::Unavailable);

        let mut pushes = response(200, &[], vec![push("1", 10)]);
        assert_eq!(nonce(&mut pushes).await.as_deref(), Some("1"));
        let s = pushes.message().await.unwrap_err();
        assert!(s.code() == Code::Unknown && s.message().contains("without a grpc-status"), "{s:?}");

        // Trailers-only: refused (an authentication failure), or over at once.
        let refused = Pushes::new(responded(200, &[("grpc-status", "16")], vec![])).err().unwrap();
        assert_eq!(refused.code(), Code::Unauthenticated);
        let mut over = response(200, &[("grpc-status", "0")], vec![push("1", 10)]);
        assert_eq!(nonce(&mut over).await, None);
        let not_grpc = Pushes::new(responded(503, &[], vec![])).err().unwrap();
        assert_eq!(not_grpc.code(), Code::Unavailable);
        assert!(not_grpc.message().contains("HTTP status 503"), "{not_grpc:?}");
    }

    #[tokio::test]
    async fn a_push_above_the_bound_ends_the_call_naming_its_size() {
        let mut header = vec![0];
        header.extend_from_slice(&(MAX_PUSH as u32 + 1).to_be_bytes());
        let mut pushes = response(200, &[], vec![Frame::data(Bytes::from(header))]);
        let s = pushes.message().await.unwrap_err();
        assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
        assert_eq!(s.message(), format!("a response of {} bytes, more than the {MAX_PUSH} accepted", MAX_PUSH + 1));
    }
}
