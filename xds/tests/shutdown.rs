//! A server shutting down while clients open streams: every stream ends, so the shutdown does.

mod support;

use proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use support::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use xds::ResourceStore;

/// A stream whose opening reaches the server after its shutdown has begun, on a connection it
/// already serves (HTTP/2 lets a client open streams until the server's GOAWAY reaches it), is
/// not left open: the graceful shutdown waits for every stream, and would wait for good.
#[tokio::test]
async fn a_stream_opened_as_shutdown_begins_does_not_hold_the_server() {
    let store = ResourceStore::new();
    store.set(ADDRESS, "default/a", workload("default/a", [10, 0, 0, 1]));
    let server = RunningServer::any_port(store).await;
    let channel = server.endpoint().connect().await.unwrap();
    let client = AggregatedDiscoveryServiceClient::new(channel);
    let open = |client: &AggregatedDiscoveryServiceClient<_>| {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(subscribe(ADDRESS, &[])).unwrap();
        let mut client = client.clone();
        async move { (tx, client.delta_aggregated_resources(ReceiverStream::new(rx)).await) }
    };
    // The connection is up and serving a stream.
    let (_first_tx, first) = open(&client).await;
    let mut first = first.unwrap().into_inner();
    assert!(first.message().await.unwrap().is_some());
    let streams = server.server.clone();

    // The second stream's opening is sent as the shutdown begins.
    let ((), (_second_tx, second)) = tokio::join!(server.stop(), open(&client));
    // It was refused or ended, either way with UNAVAILABLE, and nothing is left open.
    let code = match second {
        Ok(response) => response.into_inner().message().await.unwrap_err().code(),
        Err(status) => status.code(),
    };
    assert_eq!(code, tonic::Code::Unavailable);
    assert_eq!(streams.connection_count(), 0);
}
