//! Our client against a scripted ADS server on loopback, for pushes our own server never sends.

mod support;

use std::pin::Pin;

use proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use xds::Names;

type Pushes<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// Sends its pushes one at a time, the next once the previous one is answered, and hands every
/// answer to the test.
struct Scripted {
    pushes: Vec<DeltaDiscoveryResponse>,
    answers: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Scripted {
    type StreamAggregatedResourcesStream = Pushes<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Pushes<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _: tonic::Request<tonic::Streaming<DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (mut pushes, answers) = (self.pushes.clone().into_iter(), self.answers.clone());
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                if !request.response_nonce.is_empty() {
                    let _ = answers.send(request);
                }
                let Some(push) = pushes.next() else { continue };
                if tx.send(Ok(push)).await.is_err() {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn push(nonce: &str, resources: &[(&str, [u8; 4])], removed: &[&str]) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: ADDRESS.into(),
        nonce: nonce.into(),
        resources: resources
            .iter()
            .map(|(name, ip)| Resource {
                name: (*name).into(),
                version: format!("v{}", ip[3]),
                resource: Some(workload(name, *ip)),
                ..Default::default()
            })
            .collect(),
        removed_resources: removed.iter().map(|n| (*n).into()).collect(),
        ..Default::default()
    }
}

/// Starts a scripted server with `pushes`; its answers arrive on the receiver.
async fn scripted(
    pushes: Vec<DeltaDiscoveryResponse>,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<DeltaDiscoveryRequest>) {
    let (answers, answered) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = AggregatedDiscoveryServiceServer::new(Scripted { pushes, answers });
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(service, TcpListenerStream::new(listener)));
    (addr, answered)
}

/// A client subscribed by name ignores the resources of a push it did not ask for (Envoy's xDS
/// protocol: "the client will silently ignore any supplied resources that were not explicitly
/// requested"), applies the rest and ACKs.
#[tokio::test]
async fn resources_not_asked_for_are_ignored() {
    let pushes = vec![push("1", &[("default/a", [10, 0, 0, 1]), ("default/b", [10, 0, 0, 2])], &[])];
    let (addr, mut answered) = scripted(pushes).await;
    let (client, cache) = address_client(endpoint(addr), Names::explicit(["default/a"]));
    let answer = tokio::time::timeout(WAIT, answered.recv()).await.expect("an answer in time").unwrap();
    assert_eq!((answer.response_nonce.as_str(), answer.error_detail), ("1", None));
    assert_eq!(cache.snapshot().into_keys().collect::<Vec<_>>(), ["default/a"]);
    let versions = client.status().types[ADDRESS].versions.clone();
    assert_eq!(versions.into_keys().collect::<Vec<_>>(), ["default/a"], "declared on resume: only what is held");
}

/// A push carrying a name twice, a resource without a name, or a name both updated and removed
/// is NACKed whole (Envoy's xDS protocol: a server must not send a name twice, and clients NACK
/// it), and the handler keeps its state; a sound push after them applies.
#[tokio::test]
async fn malformed_pushes_are_nacked_whole() {
    let pushes = vec![
        push("1", &[("default/a", [10, 0, 0, 1])], &[]),
        push("2", &[("default/b", [10, 0, 0, 2]), ("default/b", [10, 0, 0, 3])], &[]),
        push("3", &[("", [10, 0, 0, 4])], &[]),
        push("4", &[("default/c", [10, 0, 0, 5])], &["default/c"]),
        push("5", &[("default/d", [10, 0, 0, 6])], &["default/a"]),
    ];
    let (addr, mut answered) = scripted(pushes).await;
    let (client, cache) = address_client(endpoint(addr), Names::Wildcard);

    let mut verdicts = Vec::new();
    for _ in 0..5 {
        let answer = tokio::time::timeout(WAIT, answered.recv()).await.expect("an answer in time").unwrap();
        verdicts.push((answer.response_nonce, answer.error_detail.map(|e| e.message)));
    }
    let expected = [
        ("1", None),
        ("2", Some("resource \"default/b\" is in the push twice")),
        ("3", Some("a resource of version \"v4\" has no name")),
        ("4", Some("resource \"default/c\" is both updated and removed in the push")),
        ("5", None),
    ];
    let expected: Vec<_> = expected.iter().map(|(n, m)| (n.to_string(), m.map(str::to_owned))).collect();
    assert_eq!(verdicts, expected);
    let held: Vec<_> = cache.snapshot().into_iter().map(|(name, w)| (name, w.ip.clone())).collect();
    assert_eq!(held, [("default/d".to_owned(), vec![10, 0, 0, 6])]);
    let status = client.status();
    let versions: Vec<_> = status.types[ADDRESS].versions.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(versions, [("default/d", "v6")], "what a resumed stream declares is what is held");
    assert_eq!((status.types[ADDRESS].acks, status.types[ADDRESS].nacks), (2, 3));
}
