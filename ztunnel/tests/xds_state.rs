//! ztunnel's state from a real delta xDS server on loopback: workloads, services and policies
//! arrive converted, bad resources are refused by name without holding back the others (and
//! are unknown, so denied, until fixed), removals apply.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message;
use proto::envoy::service::discovery::v3 as pbd;
use proto::istio::security as pbs;
use proto::istio::workload as pbw;
use xds::{ResourceStore, XdsServer};
use ztunnel::state::{StateConfig, StateHandle};

fn any<M: Message>(type_url: &str, m: &M) -> prost_types::Any {
    prost_types::Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

fn workload(name: &str, ip: [u8; 4]) -> pbw::Address {
    pbw::Address {
        r#type: Some(pbw::address::Type::Workload(pbw::Workload {
            uid: format!("Kubernetes//Pod/shop/{name}"),
            name: name.into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            addresses: vec![ip.to_vec().into()],
            node: "node1".into(),
            tunnel_protocol: pbw::TunnelProtocol::Hbone as i32,
            ..Default::default()
        })),
    }
}

fn deny_all(name: &str) -> pbs::Authorization {
    pbs::Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: pbs::Scope::Namespace as i32,
        action: pbs::Action::Deny as i32,
        groups: vec![pbs::Group { rules: vec![pbs::Rules { matches: vec![pbs::Match::default()] }] }],
        ..Default::default()
    }
}

/// A workload whose address is 3 bytes long: neither IPv4 nor IPv6.
fn three_byte_address() -> pbw::Address {
    let mut a = workload("bad", [10, 0, 0, 3]);
    if let Some(pbw::address::Type::Workload(w)) = &mut a.r#type {
        w.addresses = vec![vec![10, 0, 0].into()];
    }
    a
}

/// Waits until the last NACK of `type_url` on some stream of `server` says every one of `says`.
async fn nacked(server: &XdsServer, type_url: &str, says: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nack = server.connections().iter().find_map(|c| c.types.get(type_url)?.last_nack.clone());
        if nack.as_ref().is_some_and(|n| says.iter().all(|s| n.message.contains(s))) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no NACK of {type_url} saying {says:?}; last {nack:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually(handle: &StateHandle, what: &str, ok: impl Fn(&ztunnel::state::State) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok(&handle.snapshot()) {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_follows_the_control_plane() {
    let store = ResourceStore::new();
    store.set(
        proto::ADDRESS_TYPE_URL,
        "Kubernetes//Pod/shop/web-1",
        any(proto::ADDRESS_TYPE_URL, &workload("web-1", [10, 0, 0, 1])),
    );
    store.set(
        proto::AUTHORIZATION_TYPE_URL,
        "shop/deny-all",
        any(proto::AUTHORIZATION_TYPE_URL, &deny_all("deny-all")),
    );
    let server = XdsServer::new(store.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });

    let handle = StateHandle::default();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let _source = ztunnel::state::xds::start(endpoint, Default::default(), handle.clone(), StateConfig::default());

    let ip1 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    eventually(&handle, "the first workload and policy", |s| {
        s.workload_by_ip(ip1).is_some() && s.policy_by_key("shop/deny-all").is_some()
    })
    .await;

    // A second workload arrives; the first stays.
    store.set(
        proto::ADDRESS_TYPE_URL,
        "Kubernetes//Pod/shop/web-2",
        any(proto::ADDRESS_TYPE_URL, &workload("web-2", [10, 0, 0, 2])),
    );
    eventually(&handle, "the second workload", |s| s.workload_by_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))).is_some())
        .await;

    // A malformed workload (a 3-byte address) is refused, by name; the good state stays.
    store.set(proto::ADDRESS_TYPE_URL, "Kubernetes//Pod/shop/bad", any(proto::ADDRESS_TYPE_URL, &three_byte_address()));
    nacked(&server, proto::ADDRESS_TYPE_URL, &["addresses"]).await;
    assert!(handle.snapshot().workload_by_uid("Kubernetes//Pod/shop/bad").is_none(), "refused, so unknown");
    assert!(handle.snapshot().workload_by_ip(ip1).is_some());

    // While the bad one is still served (and so sent again with every push of its type), other
    // changes still apply: a new pod is known, and an update that breaks a known workload
    // removes it (unknown: its inbound is refused) instead of keeping its old version.
    let ip3 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
    store.set(
        proto::ADDRESS_TYPE_URL,
        "Kubernetes//Pod/shop/web-3",
        any(proto::ADDRESS_TYPE_URL, &workload("web-3", [10, 0, 0, 3])),
    );
    eventually(&handle, "a new workload beside a refused one", |s| s.workload_by_ip(ip3).is_some()).await;
    let mut broken = three_byte_address();
    if let Some(pbw::address::Type::Workload(w)) = &mut broken.r#type {
        w.uid = "Kubernetes//Pod/shop/web-2".into();
        w.name = "web-2".into();
    }
    store.set(proto::ADDRESS_TYPE_URL, "Kubernetes//Pod/shop/web-2", any(proto::ADDRESS_TYPE_URL, &broken));
    eventually(&handle, "the broken workload removed", |s| {
        s.workload_by_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))).is_none()
    })
    .await;
    assert!(handle.snapshot().workload_by_ip(ip1).is_some() && handle.snapshot().workload_by_ip(ip3).is_some());
    // A later good version of it applies, in a push still carrying (and NACKing) the bad one.
    let ip22 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 22));
    store.set(
        proto::ADDRESS_TYPE_URL,
        "Kubernetes//Pod/shop/web-2",
        any(proto::ADDRESS_TYPE_URL, &workload("web-2", [10, 0, 0, 22])),
    );
    eventually(&handle, "the fixed workload", |s| s.workload_by_ip(ip22).is_some()).await;

    // A second resource for web-1's uid under another name is refused alone, naming both
    // names; a state with two workloads of one uid cannot be built, so taken in, it would hold
    // back every later change of either type (a new policy, here).
    store.set(
        proto::ADDRESS_TYPE_URL,
        "Kubernetes//Pod/shop/web-1-copy",
        any(proto::ADDRESS_TYPE_URL, &workload("web-1", [10, 0, 0, 9])),
    );
    store.set(
        proto::AUTHORIZATION_TYPE_URL,
        "shop/deny-more",
        any(proto::AUTHORIZATION_TYPE_URL, &deny_all("deny-more")),
    );
    eventually(&handle, "a policy beside a misnamed workload", |s| s.policy_by_key("shop/deny-more").is_some()).await;
    assert!(handle.snapshot().workload_by_ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9))).is_none());
    assert!(handle.snapshot().workload_by_ip(ip1).is_some());
    nacked(&server, proto::ADDRESS_TYPE_URL, &["web-1-copy", "not the resource's name"]).await;

    // Likewise a second resource for policy shop/deny-all: its push is refused (all or
    // nothing: the previous policies stay), and workloads keep following.
    store.set(
        proto::AUTHORIZATION_TYPE_URL,
        "shop/deny-all-copy",
        any(proto::AUTHORIZATION_TYPE_URL, &deny_all("deny-all")),
    );
    nacked(&server, proto::AUTHORIZATION_TYPE_URL, &["deny-all-copy", "not the resource's name"]).await;
    let ip4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 4));
    store.set(
        proto::ADDRESS_TYPE_URL,
        "Kubernetes//Pod/shop/web-4",
        any(proto::ADDRESS_TYPE_URL, &workload("web-4", [10, 0, 0, 4])),
    );
    eventually(&handle, "a workload beside a misnamed policy", |s| s.workload_by_ip(ip4).is_some()).await;
    assert!(handle.snapshot().policy_by_key("shop/deny-more").is_some());
    store.remove(proto::AUTHORIZATION_TYPE_URL, "shop/deny-all-copy");

    // Removal of the policy reaches the state.
    store.remove(proto::ADDRESS_TYPE_URL, "Kubernetes//Pod/shop/web-1-copy");
    store.remove(proto::ADDRESS_TYPE_URL, "Kubernetes//Pod/shop/bad");
    store.remove(proto::AUTHORIZATION_TYPE_URL, "shop/deny-all");
    eventually(&handle, "the policy removal", |s| s.policy_by_key("shop/deny-all").is_none()).await;
}

/// An ADS server that answers the Address subscription at once (shop/db) and the Authorization
/// one only when `release` is notified (with nothing: no policy), as an istiod still computing
/// policies would.
struct SlowPolicies {
    address_acked: Arc<AtomicBool>,
    release: Arc<tokio::sync::Notify>,
}

type DeltaStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pbd::DeltaDiscoveryResponse, tonic::Status>> + Send>>;
type SotwStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pbd::DiscoveryResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pbd::aggregated_discovery_service_server::AggregatedDiscoveryService for SlowPolicies {
    type StreamAggregatedResourcesStream = SotwStream;
    type DeltaAggregatedResourcesStream = DeltaStream;

    async fn stream_aggregated_resources(
        &self,
        _request: tonic::Request<tonic::Streaming<pbd::DiscoveryRequest>>,
    ) -> Result<tonic::Response<SotwStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("delta only"))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<pbd::DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<DeltaStream>, tonic::Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let acked = self.address_acked.clone();
        let release = self.release.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = requests.message().await {
                if req.type_url == proto::AUTHORIZATION_TYPE_URL && req.response_nonce.is_empty() {
                    let (tx, release) = (tx.clone(), release.clone());
                    tokio::spawn(async move {
                        release.notified().await;
                        let resp = pbd::DeltaDiscoveryResponse {
                            type_url: proto::AUTHORIZATION_TYPE_URL.into(),
                            nonce: "p1".into(),
                            system_version_info: "1".into(),
                            ..Default::default()
                        };
                        let _ = tx.send(Ok(resp)).await;
                    });
                }
                if req.type_url != proto::ADDRESS_TYPE_URL {
                    continue;
                }
                if req.response_nonce.is_empty() {
                    let a = pbw::Address { r#type: Some(pbw::address::Type::Workload(pbw_db())) };
                    let resp = pbd::DeltaDiscoveryResponse {
                        type_url: proto::ADDRESS_TYPE_URL.into(),
                        nonce: "a1".into(),
                        system_version_info: "1".into(),
                        resources: vec![pbd::Resource {
                            name: DB_UID.into(),
                            version: "1".into(),
                            resource: Some(prost_types::Any {
                                type_url: proto::ADDRESS_TYPE_URL.into(),
                                value: a.encode_to_vec(),
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    };
                    if tx.send(Ok(resp)).await.is_err() {
                        return;
                    }
                } else if req.response_nonce == "a1" && req.error_detail.is_none() {
                    acked.store(true, Ordering::SeqCst);
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

const DB_UID: &str = "Kubernetes//Pod/shop/db";

fn pbw_db() -> pbw::Workload {
    pbw::Workload {
        uid: DB_UID.into(),
        name: "db".into(),
        namespace: "shop".into(),
        service_account: "db".into(),
        addresses: vec![vec![10, 0, 0, 5].into()],
        node: "n1".into(),
        tunnel_protocol: pbw::TunnelProtocol::Hbone as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_not_served_before_policies_have_synced() {
    // Served with no policies, a workload whose namespace-wide or mesh-wide DENY is still on its
    // way would be open to everyone: nothing is published until both types have come once.
    let address_acked = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Notify::new());
    let svc = pbd::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(SlowPolicies {
        address_acked: address_acked.clone(),
        release: release.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let handle = StateHandle::default();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
    let _source = ztunnel::state::xds::start(endpoint, Default::default(), handle.clone(), StateConfig::default());
    let versions = handle.subscribe();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !address_acked.load(Ordering::SeqCst) {
        assert!(tokio::time::Instant::now() < deadline, "ztunnel never ACKed the Address push");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the state fold time to run; then, for a while, nothing may let a connection in.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let s = handle.snapshot();
        assert!(
            s.workload_by_uid(DB_UID).is_none(),
            "shop/db is in the state while no Authorization push has come (its policies unknown)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!versions.has_changed().unwrap(), "a state was published before the policies came");
    // The (empty) Authorization push completes the first sync: shop/db is served.
    release.notify_one();
    eventually(&handle, "shop/db after both types came", |s| s.workload_by_uid(DB_UID).is_some()).await;
}
