//! What a stream keeps of its requests, counted by the allocator: a large request (a client
//! resuming declares everything it holds) must not stay allocated for the stream's life.

#[path = "support/counting.rs"]
mod counting;
mod support;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as _, Frame};
use prost::Message;
use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use proto::google::rpc::Status as RpcStatus;
use support::*;
use tonic::codegen::Service;
use xds::ResourceStore;

/// A request body of one gRPC message, then open (and silent) until dropped: the client keeps
/// no copy of what it sent.
struct OneMessage(Option<Bytes>);

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        match self.0.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

/// A first request of about 3 MB that the server keeps nothing of: a wildcard subscription
/// carrying an error_detail, which answers no push.
fn large_request() -> Bytes {
    let request = DeltaDiscoveryRequest {
        type_url: ADDRESS.into(),
        error_detail: Some(RpcStatus { code: 3, message: "x".repeat(3 << 20), details: Vec::new() }),
        ..Default::default()
    };
    let mut framed = vec![0];
    framed.extend_from_slice(&(request.encoded_len() as u32).to_be_bytes());
    request.encode(&mut framed).unwrap();
    framed.into()
}

#[tokio::test]
async fn a_large_request_is_not_kept_for_the_life_of_its_stream() {
    let store = ResourceStore::new();
    store.set(ADDRESS, "default/a", workload("default/a", [10, 0, 0, 1]));
    let server = RunningServer::any_port(store).await;
    let mut channel = server.endpoint().connect().await.unwrap();
    let path = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
    let mut streams = Vec::new();
    let before = counting::live();
    for _ in 0..8 {
        let request = http::Request::post(path)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(tonic::body::Body::new(OneMessage(Some(large_request()))))
            .unwrap();
        std::future::poll_fn(|cx| channel.poll_ready(cx)).await.unwrap();
        let response = tokio::time::timeout(WAIT, channel.call(request)).await.unwrap().unwrap();
        let mut body = response.into_body();
        // The first push: the server has read and handled the request.
        let frame =
            tokio::time::timeout(WAIT, std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))).await.unwrap();
        assert!(frame.unwrap().unwrap().is_data(), "a push");
        streams.push(body);
    }
    until("eight streams", || server.server.connection_count() == 8).await;
    let kept = counting::live() - before;
    assert!(kept < 8 << 20, "8 streams keep {} KiB after one 3 MiB request each", kept >> 10);
    drop(streams);
}
