//! Loopback servers, raw ADS streams and Istio `Address` resources for the tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use prost_types::Any;
use proto::envoy::config::core::v3::Node;
use proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use proto::istio::workload::{Address, Workload, address};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;
use xds::{
    Backoff, Cache, Client, ClientHandle, ClientStatus, Names, ResourceStore, ServeError, XdsServer, cache_handler,
};

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is observed.
pub const QUIET: Duration = Duration::from_millis(400);

pub const ADDRESS: &str = proto::ADDRESS_TYPE_URL;

/// An xDS server on a loopback port, stopped on drop.
pub struct RunningServer {
    pub server: XdsServer,
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl RunningServer {
    /// Serves `store` on `addr` (port 0 for any).
    pub async fn start(store: ResourceStore, addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let server = XdsServer::new(store);
        let (stop, stopped) = oneshot::channel();
        let serving = server.clone();
        let task = tokio::spawn(async move {
            serving
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { server, addr, stop: Some(stop), task }
    }

    pub async fn any_port(store: ResourceStore) -> Self {
        Self::start(store, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Stops accepting, closes every stream and waits for the server to end.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = &mut self.task;
        tokio::time::timeout(WAIT, task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server ends cleanly");
    }

    pub fn endpoint(&self) -> Endpoint {
        endpoint(self.addr)
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.server.disconnect_all();
        self.task.abort();
    }
}

pub fn endpoint(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(2))
}

pub fn node(id: &str) -> Node {
    let name = prost_types::Value { kind: Some(prost_types::value::Kind::StringValue("node-a".to_owned())) };
    Node {
        id: id.to_owned(),
        cluster: "Kubernetes".to_owned(),
        metadata: Some(prost_types::Struct { fields: [("NODE_NAME".to_owned(), name)].into() }),
        ..Default::default()
    }
}

/// An `Address` holding a workload with `uid` and one IPv4 address.
pub fn workload(uid: &str, ip: [u8; 4]) -> Any {
    let address = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.to_owned(),
            name: uid.rsplit('/').next().unwrap_or(uid).to_owned(),
            namespace: "default".to_owned(),
            addresses: vec![ip.to_vec().into()],
            service_account: "default".to_owned(),
            ..Default::default()
        })),
    };
    Any::from_msg(&address).unwrap()
}

/// A validated workload, as the cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedWorkload {
    pub uid: String,
    pub ip: Vec<u8>,
}

/// Converts an `Address` into a [`CachedWorkload`], refusing services,
/// workloads without addresses and names that are not the uid.
pub fn convert(name: &str, address: Address) -> Result<CachedWorkload, String> {
    let Some(address::Type::Workload(w)) = address.r#type else {
        return Err("not a workload".to_owned());
    };
    if w.uid != name {
        return Err(format!("workload uid {:?} is not the resource name", w.uid));
    }
    let Some(ip) = w.addresses.first() else {
        return Err("workload.addresses is empty".to_owned());
    };
    Ok(CachedWorkload { uid: w.uid, ip: ip.to_vec() })
}

pub fn fast_backoff() -> Backoff {
    Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) }
}

/// A client subscribed to `names` of `Address`, with its cache.
pub fn address_client(endpoint: Endpoint, names: Names) -> (ClientHandle, Cache<CachedWorkload>) {
    let (cache, handler) = cache_handler(convert);
    let handle =
        Client::new(node("node-a~10.0.0.1")).backoff(fast_backoff()).subscribe(ADDRESS, names, handler).spawn(endpoint);
    (handle, cache)
}

/// Waits until the client's status satisfies `ready`.
pub async fn client_until(handle: &ClientHandle, what: &str, ready: impl FnMut(&ClientStatus) -> bool) -> ClientStatus {
    let mut rx = handle.watch();
    match tokio::time::timeout(WAIT, rx.wait_for(ready)).await {
        Ok(Ok(status)) => status.clone(),
        _ => panic!("timed out waiting for {what}; client status: {:#?}", handle.status()),
    }
}

/// Waits until `check` holds, polling.
pub async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A hand-driven ADS stream, for asserting exactly what the server sends.
pub struct RawStream {
    pub requests: mpsc::Sender<DeltaDiscoveryRequest>,
    pub responses: Streaming<DeltaDiscoveryResponse>,
}

impl RawStream {
    /// Opens a stream whose first request is `first`.
    pub async fn open(addr: SocketAddr, first: DeltaDiscoveryRequest) -> Self {
        let channel = endpoint(addr).connect().await.expect("connect");
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (requests, rx) = mpsc::channel(16);
        requests.send(first).await.unwrap();
        let responses =
            client.delta_aggregated_resources(ReceiverStream::new(rx)).await.expect("stream opens").into_inner();
        Self { requests, responses }
    }

    pub async fn send(&self, request: DeltaDiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    /// The next response, which must come within [`WAIT`].
    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.responses.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }

    pub async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

/// The first request of a type: `names` empty means wildcard.
pub fn subscribe(type_url: &str, names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node("raw")),
        type_url: type_url.to_owned(),
        resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    }
}

/// Sorted names of the resources in a response.
pub fn names(response: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut names: Vec<_> = response.resources.iter().map(|r| r.name.clone()).collect();
    names.sort();
    names
}
