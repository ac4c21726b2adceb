//! A loopback world for waypoint tests: a real xDS server, a throwaway mesh CA, backends
//! (real HTTP servers behind real HBONE servers, each on its own 127.x.y.z address), the
//! waypoint's data path, and HBONE clients speaking HTTP/1.1 or HTTP/2 through it.
//!
//! Each test picks its own second/third address octets, so parallel tests never share an
//! address; every task is aborted when the world is dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hbone::testing::{DAY, TestCa};
use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::pool::{Connector, Pool, PoolConfig, PoolKey};
use hbone::{CertStore, Identity};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use proto::istio::workload as pbw;
use proto::mesh::waypoint::v1 as pb;
use tokio::net::TcpListener;
use waypoint::proxy::{Inputs, Proxy};
use waypoint::state::SnapshotHandle;
use waypoint::telemetry::Metrics;
use xds::{ResourceStore, XdsServer};

pub const GATEWAY: &str = "shop/wp";

/// The node the waypoint says it runs on.
pub const WAYPOINT_NODE: &str = "node-wp";

/// Where a workload runs (region `r1`).
#[derive(Clone, Debug)]
pub struct Placement {
    pub node: String,
    pub zone: String,
    pub network: String,
}

impl Placement {
    pub fn new(node: &str, zone: &str) -> Placement {
        Placement { node: node.into(), zone: zone.into(), network: String::new() }
    }

    pub fn on_network(mut self, network: &str) -> Placement {
        self.network = network.into();
        self
    }

    fn locality(&self) -> Option<pbw::Locality> {
        Some(pbw::Locality { region: "r1".into(), zone: self.zone.clone(), subzone: String::new() })
    }
}

/// Aborts a task on drop.
pub struct Task(pub tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn any<M: Message>(type_url: &str, m: &M) -> prost_types::Any {
    prost_types::Any { type_url: type_url.to_owned(), value: m.encode_to_vec() }
}

pub fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

/// What a backend does; switchable at run time.
#[derive(Default)]
pub struct Behaviour {
    /// Every request answers 500.
    pub fail: AtomicBool,
    /// Requests seen.
    pub seen: AtomicU64,
    /// TCP connections accepted by the application.
    pub connections: AtomicU64,
    /// Body bytes of `/upload` requests read in full.
    pub uploaded: AtomicU64,
    /// The HTTP version of every request seen, in order.
    pub versions: Mutex<Vec<http::Version>>,
    /// The authority of every request seen (`:authority` or `Host`), in order.
    pub authorities: Mutex<Vec<String>>,
    /// `/endless` responses whose reader went away.
    pub abandoned: Arc<AtomicU64>,
}

pub struct Backend {
    pub name: String,
    pub ip: IpAddr,
    pub http_port: u16,
    pub behaviour: Arc<Behaviour>,
}

pub struct World {
    pub ca: TestCa,
    pub xds: ResourceStore,
    pub xds_server: XdsServer,
    pub state: SnapshotHandle,
    pub proxy: Arc<Proxy>,
    pub waypoint_addr: SocketAddr,
    pub waypoint_id: Identity,
    pub registry: Arc<prometheus_client::registry::Registry>,
    pub net: [u8; 2],
    next_host: Mutex<u8>,
    map: Arc<Mutex<HashMap<IpAddr, u16>>>,
    pub backends: Mutex<HashMap<String, Arc<Backend>>>,
    services: Mutex<HashMap<String, (Vec<String>, u8)>>,
    placements: Mutex<HashMap<String, Placement>>,
    client_store: CertStore,
    pub client_id: Identity,
    pool: Pool,
    _xds_source: waypoint::state::xds::XdsSource,
    tasks: Mutex<Vec<Task>>,
}

impl World {
    /// `net` picks the 127.net0.net1.x addresses of this test.
    pub async fn new(net: [u8; 2]) -> Arc<World> {
        World::with_spans(net, None).await
    }

    /// Like [`World::new`], exporting spans through `spans`.
    pub async fn with_spans(net: [u8; 2], spans: Option<waypoint::telemetry::otlp::Exporter>) -> Arc<World> {
        World::with(net, spans, Duration::from_millis(200), 256).await
    }

    /// Like [`World::new`], with at most `max` HBONE handshakes at once.
    pub async fn with_handshake_limit(net: [u8; 2], max: usize) -> Arc<World> {
        World::with(net, None, Duration::from_millis(200), max).await
    }

    /// Like [`World::new`], with protocol detection waiting up to `detect_timeout` for a
    /// client's first bytes.
    pub async fn with_detect_timeout(net: [u8; 2], detect_timeout: Duration) -> Arc<World> {
        World::with(net, None, detect_timeout, 256).await
    }

    async fn with(
        net: [u8; 2],
        spans: Option<waypoint::telemetry::otlp::Exporter>,
        detect_timeout: Duration,
        max_inbound_handshakes: usize,
    ) -> Arc<World> {
        let ca = TestCa::new("mesh");
        let xds = ResourceStore::new();
        let xds_server = XdsServer::new(xds.clone());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds_addr = l.local_addr().unwrap();
        let s = xds_server.clone();
        let t1 = Task(tokio::spawn(async move {
            let _ = s.serve(l, std::future::pending()).await;
        }));
        let state = SnapshotHandle::default();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{xds_addr}")).unwrap();
        let waypoint_id = id("shop", "wp");
        // The waypoint knows itself as a pod would: its identity, its node and its IP (its own
        // workload is in the mesh state only once a test publishes it: [`World::waypoint_at`]).
        let own = waypoint::state::Own {
            gateway: GATEWAY.into(),
            identity: Some(waypoint_id.clone()),
            node: WAYPOINT_NODE.into(),
            ip: Some(IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], 1))),
            network: String::new(),
        };
        let source =
            waypoint::state::xds::start(endpoint.into(), Default::default(), state.clone(), own, metrics.clone());

        let certs = CertStore::new(ca.roots());
        certs.insert(ca.issue(&waypoint_id, DAY));
        let map: Arc<Mutex<HashMap<IpAddr, u16>>> = Arc::default();
        let m = map.clone();
        // Endpoints "listen" for HBONE on 15008 of their own address; on loopback each HBONE
        // server has its own port, so the connector maps the address to it.
        let connector: Connector = Arc::new(move |addr: SocketAddr| {
            let port = m.lock().unwrap().get(&addr.ip()).copied().unwrap_or(addr.port());
            Box::pin(tokio::net::TcpStream::connect(SocketAddr::new(addr.ip(), port)))
        });
        let proxy = Proxy::new(Inputs {
            identity: waypoint_id.clone(),
            certs,
            state: state.clone(),
            metrics,
            connector: Some(connector),
            hbone_port: 15008,
            detect_timeout,
            spans,
            max_inbound_handshakes,
        });
        let wl =
            TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, net[0], net[1], 1)), 0)).await.unwrap();
        let waypoint_addr = wl.local_addr().unwrap();
        let serving = proxy.clone();
        let t2 = Task(tokio::spawn(async move { serving.serve(wl).await }));
        let client_id = id("frontend", "web");
        let client_store = CertStore::new(ca.roots());
        client_store.insert(ca.issue(&client_id, DAY));
        let pool = Pool::new(PoolConfig::default(), client_store.clone(), None);
        Arc::new(World {
            ca,
            xds,
            xds_server,
            state,
            proxy,
            waypoint_addr,
            waypoint_id,
            registry: Arc::new(registry),
            net,
            next_host: Mutex::new(10),
            map,
            backends: Mutex::default(),
            services: Mutex::default(),
            placements: Mutex::default(),
            client_store,
            client_id,
            pool,
            _xds_source: source,
            tasks: Mutex::new(vec![t1, t2]),
        })
    }

    fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.net[0], self.net[1], host))
    }

    /// The VIP of service number `n` (never routed: only the waypoint looks it up).
    pub fn vip(&self, n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.net[0], self.net[1], n))
    }

    /// Starts a backend workload `name` (service account `name`, namespace `shop`): an HTTP
    /// server (HTTP/1.1 and HTTP/2) behind an HBONE server that only admits the waypoint.
    pub async fn backend(&self, name: &str) -> Arc<Backend> {
        let host = {
            let mut n = self.next_host.lock().unwrap();
            *n += 1;
            *n
        };
        let ip = self.ip(host);
        let behaviour = Arc::new(Behaviour::default());
        let http_l = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        let http_port = http_l.local_addr().unwrap().port();
        let (n, b) = (name.to_owned(), behaviour.clone());
        let t1 = Task(tokio::spawn(http_server(http_l, n, b)));
        let bid = id("shop", name);
        let store = CertStore::new(self.ca.roots());
        store.insert(self.ca.issue(&bid, DAY));
        let hl = TcpListener::bind(SocketAddr::new(ip, 0)).await.unwrap();
        self.map.lock().unwrap().insert(ip, hl.local_addr().unwrap().port());
        let server = hbone::tunnel::server::Server::new(
            hbone::tls::server_config(&store, bid),
            hbone::tunnel::H2Settings::default(),
            hbone::testing::forwarder(None),
        );
        let t2 = Task(tokio::spawn(async move {
            let _ = server.serve(hl).await;
        }));
        self.tasks.lock().unwrap().extend([t1, t2]);
        let b = Arc::new(Backend { name: name.to_owned(), ip, http_port, behaviour });
        self.backends.lock().unwrap().insert(name.to_owned(), b.clone());
        b
    }

    /// A workload with nothing listening: its HBONE connect is refused.
    pub fn dead_backend(&self, name: &str) -> Arc<Backend> {
        let ip = self.ip(250);
        let b = Arc::new(Backend { name: name.to_owned(), ip, http_port: 9, behaviour: Arc::default() });
        self.backends.lock().unwrap().insert(name.to_owned(), b.clone());
        b
    }

    /// Publishes service `name` (`<name>.shop.svc.cluster.local`, VIP number `n`, port 80)
    /// backed by `backends`.
    pub fn service(&self, name: &str, n: u8, backends: &[&Arc<Backend>]) {
        self.service_declaring(name, n, backends, pbw::AppProtocol::Unknown);
    }

    /// Like [`service`](Self::service), with port 80 declaring `protocol` (as `appProtocol`
    /// or the port name would).
    pub fn service_declaring(&self, name: &str, n: u8, backends: &[&Arc<Backend>], protocol: pbw::AppProtocol) {
        self.publish_service(name, n, backends, protocol, None);
    }

    /// Like [`service`](Self::service), with Istio's `load_balancing`.
    pub fn service_balanced(&self, name: &str, n: u8, backends: &[&Arc<Backend>], lb: pbw::LoadBalancing) {
        self.publish_service(name, n, backends, pbw::AppProtocol::Unknown, Some(lb));
    }

    fn publish_service(
        &self,
        name: &str,
        n: u8,
        backends: &[&Arc<Backend>],
        protocol: pbw::AppProtocol,
        load_balancing: Option<pbw::LoadBalancing>,
    ) {
        let hostname = host(name);
        let svc = pbw::Service {
            name: name.into(),
            namespace: "shop".into(),
            hostname: hostname.clone(),
            addresses: vec![pbw::NetworkAddress { network: String::new(), address: octets(self.vip(n)) }],
            ports: vec![pbw::Port { service_port: 80, target_port: 0, app_protocol: protocol as i32 }],
            load_balancing,
            ..Default::default()
        };
        self.xds.set(
            proto::ADDRESS_TYPE_URL,
            &format!("shop/{hostname}"),
            any(proto::ADDRESS_TYPE_URL, &pbw::Address { r#type: Some(pbw::address::Type::Service(svc)) }),
        );
        self.services.lock().unwrap().insert(hostname.clone(), (backends.iter().map(|b| b.name.clone()).collect(), n));
        self.publish_workloads();
    }

    /// Places backend `name` (default: `node1`, no zone, the default network) and republishes.
    pub fn place(&self, name: &str, p: Placement) {
        self.placements.lock().unwrap().insert(name.to_owned(), p);
        self.publish_workloads();
    }

    /// Publishes the waypoint's own workload (its identity, at its IP), placed at `p`.
    pub fn waypoint_at(&self, p: &Placement) {
        let w = pbw::Workload {
            uid: "Kubernetes//Pod/shop/wp-0".into(),
            name: "wp-0".into(),
            namespace: "shop".into(),
            service_account: "wp".into(),
            workload_name: "wp".into(),
            addresses: vec![octets(self.ip(1))],
            node: p.node.clone(),
            network: p.network.clone(),
            locality: p.locality(),
            tunnel_protocol: pbw::TunnelProtocol::Hbone as i32,
            ..Default::default()
        };
        self.xds.set(
            proto::ADDRESS_TYPE_URL,
            &w.uid.clone(),
            any(proto::ADDRESS_TYPE_URL, &pbw::Address { r#type: Some(pbw::address::Type::Workload(w)) }),
        );
    }

    fn publish_workloads(&self) {
        let services = self.services.lock().unwrap();
        let placements = self.placements.lock().unwrap();
        for b in self.backends.lock().unwrap().values() {
            let mut map = HashMap::new();
            for (h, (names, _)) in services.iter() {
                if names.contains(&b.name) {
                    map.insert(
                        format!("shop/{h}"),
                        pbw::PortList {
                            ports: vec![pbw::Port {
                                service_port: 80,
                                target_port: u32::from(b.http_port),
                                ..Default::default()
                            }],
                        },
                    );
                }
            }
            let w = pbw::Workload {
                uid: format!("Kubernetes//Pod/shop/{}", b.name),
                name: b.name.clone(),
                namespace: "shop".into(),
                service_account: b.name.clone(),
                workload_name: b.name.clone(),
                addresses: vec![octets(b.ip)],
                node: "node1".into(),
                tunnel_protocol: pbw::TunnelProtocol::Hbone as i32,
                services: map,
                ..Default::default()
            };
            let w = match placements.get(&b.name) {
                Some(p) => {
                    pbw::Workload { node: p.node.clone(), network: p.network.clone(), locality: p.locality(), ..w }
                }
                None => w,
            };
            self.xds.set(
                proto::ADDRESS_TYPE_URL,
                &w.uid.clone(),
                any(proto::ADDRESS_TYPE_URL, &pbw::Address { r#type: Some(pbw::address::Type::Workload(w)) }),
            );
        }
    }

    pub fn route(&self, r: &pb::Route) {
        let kind = if r.kind == pb::route::Kind::Grpc as i32 { "GRPCRoute" } else { "HTTPRoute" };
        self.xds.set(
            proto::WAYPOINT_ROUTE_TYPE_URL,
            &format!("{}/{kind}/{}", r.namespace, r.name),
            any(proto::WAYPOINT_ROUTE_TYPE_URL, r),
        );
    }

    pub fn policy(&self, p: &pb::L7Policy) {
        self.xds.set(
            proto::WAYPOINT_POLICY_TYPE_URL,
            &format!("{}/{}", p.namespace, p.name),
            any(proto::WAYPOINT_POLICY_TYPE_URL, p),
        );
    }

    pub fn remove_policy(&self, key: &str) {
        self.xds.remove(proto::WAYPOINT_POLICY_TYPE_URL, key);
    }

    pub fn backend_policy(&self, p: &pb::BackendPolicy) {
        self.xds.set(proto::WAYPOINT_BACKEND_TYPE_URL, &p.hostname, any(proto::WAYPOINT_BACKEND_TYPE_URL, p));
    }

    /// Waits until the waypoint's snapshot satisfies `ok`.
    pub async fn until(&self, what: &str, ok: impl Fn(&waypoint::state::Snapshot) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !ok(&self.state.load()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the waypoint knows service `name` with `n` endpoints.
    pub async fn until_endpoints(&self, name: &str, n: usize) {
        let h = host(name);
        self.until(&format!("{n} endpoints of {h}"), |s| {
            s.service_by_host(&h).is_some_and(|svc| s.mesh.endpoints(svc, 80).len() == n)
        })
        .await;
    }

    /// Waits for the xDS client to have ACKed the current store (route/policy changes).
    pub async fn settle(&self) {
        let target = self.xds.revision();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.state.version();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.state.version() == v && self.xds.revision() == target && self.acked() {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "xDS did not settle");
        }
    }

    fn acked(&self) -> bool {
        self.xds_server.connections().iter().all(|c| {
            c.types.iter().all(|(url, t)| {
                let want = self.xds.versions(url);
                (t.acked.len() == want.len()
                    && want.iter().all(|(name, v)| t.acked.get(name).is_some_and(|a| a.as_str() == &**v)))
                    || t.last_nack.is_some()
            })
        })
    }

    /// A tunnel from the client workload to the waypoint for `vip:80`.
    pub async fn tunnel(&self, vip: IpAddr) -> hbone::tunnel::stream::H2Stream {
        self.try_tunnel(vip).await.unwrap()
    }

    /// Like [`tunnel`](Self::tunnel), for tests that expect it to fail.
    pub async fn try_tunnel(
        &self,
        vip: IpAddr,
    ) -> Result<hbone::tunnel::stream::H2Stream, hbone::tunnel::client::ConnectError> {
        self.try_tunnel_to(SocketAddr::new(vip, 80)).await
    }

    /// A tunnel from the client workload to the waypoint for `target`.
    pub async fn try_tunnel_to(
        &self,
        target: SocketAddr,
    ) -> Result<hbone::tunnel::stream::H2Stream, hbone::tunnel::client::ConnectError> {
        let key = PoolKey { src: self.client_id.clone(), dst: self.waypoint_id.clone(), addr: self.waypoint_addr };
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 7)), 40000);
        self.pool.connect(&key, &ConnectTarget::new(target, Some(client))).await
    }

    /// An HTTP/1.1 client through a tunnel for `target`.
    pub async fn h1_to(&self, target: SocketAddr) -> Client {
        let io = self.try_tunnel_to(target).await.unwrap();
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        let t = Task(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Client::H1(s, t)
    }

    pub async fn h1(&self, vip: IpAddr) -> Client {
        let io = self.tunnel(vip).await;
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.unwrap();
        let t = Task(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Client::H1(s, t)
    }

    pub async fn h2(&self, vip: IpAddr) -> Client {
        let io = self.tunnel(vip).await;
        let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
        let t = Task(tokio::spawn(async move {
            let _ = conn.await;
        }));
        Client::H2(s, t)
    }

    /// Backends `a` and `b` behind services `name` (VIP 1) and `<name>-b` (VIP 2); a route on
    /// `name` sends paths under `split` to `<name>-b` and the rest to `name`; a DENY policy
    /// refuses `denied`. Returns the backends once the waypoint has all of it.
    pub async fn routed_pair(&self, name: &str, split: &str, denied: &[&str]) -> (Arc<Backend>, Arc<Backend>) {
        let a = self.backend("a").await;
        let b = self.backend("b").await;
        let other = format!("{name}-b");
        self.service(name, 1, &[&a]);
        self.service(&other, 2, &[&b]);
        self.route(&route(
            name,
            name,
            vec![
                rule(vec![prefix(split)], vec![backend_ref(&other, 1)]),
                rule(vec![prefix("/")], vec![backend_ref(name, 1)]),
            ],
        ));
        self.policy(&policy("deny-paths", pb::l7_policy::Action::Deny, vec![to_paths(denied)]));
        self.until_endpoints(name, 1).await;
        self.until_endpoints(&other, 1).await;
        self.settle().await;
        (a, b)
    }

    pub fn metrics(&self) -> String {
        ztunnel::metrics::encode(&self.registry)
    }

    /// The metrics once `ok` holds of them, or as they are after 5 s: a request is recorded
    /// just after its response ends, in a task of its own, so the last one may not be yet.
    pub async fn metrics_once(&self, ok: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut m = self.metrics();
        while !ok(&m) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            m = self.metrics();
        }
        m
    }
}

pub fn host(name: &str) -> String {
    format!("{name}.shop.svc.cluster.local")
}

/// Backend `name` (its service in `shop`), port 80.
pub fn backend_ref(name: &str, weight: u32) -> pb::Backend {
    pb::Backend { hostname: host(name), port: 80, weight, filters: vec![] }
}

/// A rule sending `matches` to `backends`.
pub fn rule(matches: Vec<pb::Match>, backends: Vec<pb::Backend>) -> pb::Rule {
    pb::Rule { matches, backends, ..Default::default() }
}

/// A path match.
pub fn path(t: pb::MatchType, v: &str) -> Option<pb::PathMatch> {
    Some(pb::PathMatch { r#type: t as i32, value: v.into() })
}

/// A path-prefix match.
pub fn prefix(p: &str) -> pb::Match {
    pb::Match { path: path(pb::MatchType::PathPrefix, p), ..Default::default() }
}

/// An HTTPRoute `shop/<name>` attached to service `parent` (every port).
pub fn route(name: &str, parent: &str, rules: Vec<pb::Rule>) -> pb::Route {
    pb::Route {
        namespace: "shop".into(),
        name: name.into(),
        kind: pb::route::Kind::Http as i32,
        parents: vec![pb::ParentService { hostname: host(parent), port: 0 }],
        rules,
        ..Default::default()
    }
}

/// A waypoint policy `shop/<name>` targeting the waypoint's Gateway.
pub fn policy(name: &str, action: pb::l7_policy::Action, rules: Vec<pb::PolicyRule>) -> pb::L7Policy {
    pb::L7Policy {
        namespace: "shop".into(),
        name: name.into(),
        targets: vec![pb::Target { kind: Some(pb::target::Kind::Gateway(GATEWAY.into())) }],
        action: action as i32,
        rules,
    }
}

/// A rule matching requests to any of `paths`.
pub fn to_paths(paths: &[&str]) -> pb::PolicyRule {
    pb::PolicyRule {
        to: vec![pb::Operation { paths: paths.iter().map(|s| (*s).into()).collect(), ..Default::default() }],
        ..Default::default()
    }
}

/// A RequestMirror filter copying `percent` of requests to backend `name`.
pub fn mirror_filter(name: &str, percent: u32) -> pb::Filter {
    pb::Filter {
        kind: Some(pb::filter::Kind::RequestMirror(pb::RequestMirror { backend: Some(backend_ref(name, 1)), percent })),
    }
}

fn octets(ip: IpAddr) -> Bytes {
    match ip {
        IpAddr::V4(a) => Bytes::copy_from_slice(&a.octets()),
        IpAddr::V6(a) => Bytes::copy_from_slice(&a.octets()),
    }
}

pub type ReqBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>, Task),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>, Task),
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    /// The backend that answered (first word of the echo body).
    pub fn backend(&self) -> &str {
        self.headers.get("x-backend").and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// A request header as the backend saw it.
    pub fn seen_header(&self, name: &str) -> Option<&str> {
        self.body.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    /// The path the backend saw.
    pub fn seen_path(&self) -> &str {
        self.headers.get("x-path").and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// The key of [`websocket_get`] (RFC 6455's sample nonce).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// An HTTP/1.1 WebSocket handshake for `path`, as a browser sends it.
pub fn websocket_get(path: &str) -> Request<ReqBody> {
    get(path)
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", WS_KEY)
        .body(empty())
        .unwrap()
}

pub fn get(uri: &str) -> http::request::Builder {
    Request::builder().uri(uri).header("host", "svc.example")
}

impl Client {
    pub async fn send(&mut self, req: Request<ReqBody>) -> Result<Answer, hyper::Error> {
        let resp = match self {
            Client::H1(s, _) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Client::H2(s, _) => {
                let (mut p, b) = req.into_parts();
                let pq = p.uri.path_and_query().map(|x| x.as_str().to_owned()).unwrap_or_else(|| "/".into());
                p.uri = format!("http://svc.example{pq}").parse().unwrap();
                p.headers.remove("host");
                s.send_request(Request::from_parts(p, b)).await?
            }
        };
        let (p, b) = resp.into_parts();
        let collected = b.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok(Answer {
            status: p.status,
            headers: p.headers,
            body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
            trailers,
        })
    }

    pub async fn get(&mut self, uri: &str) -> Answer {
        self.send(get(uri).body(empty()).unwrap()).await.unwrap()
    }
}

pub fn empty() -> ReqBody {
    Full::new(Bytes::new()).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed_unsync()
}

/// A body sent in pieces from a channel (for streaming tests).
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, ReqBody) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))));
    (tx, StreamBody::new(stream).boxed_unsync())
}

/// The backend application: HTTP/1.1 or HTTP/2 (by preface), answering who it is and what it
/// saw. Paths: `/fail-every-other/...` fails every second request with 503; `/slow` waits
/// 2 s; `/status/<n>` answers n; gRPC requests (`application/grpc`) are echoed back frame by
/// frame with `grpc-status: 0` trailers.
async fn http_server(l: TcpListener, name: String, b: Arc<Behaviour>) {
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((tcp, _)) = l.accept().await else { return };
        let (name, b, counter) = (name.clone(), b.clone(), counter.clone());
        b.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut tcp = tcp;
            let Ok((proto, seen)) = waypoint::proxy::detect::detect(&mut tcp, Duration::from_secs(5)).await else {
                return;
            };
            let io = TokioIo::new(waypoint::proxy::detect::Rewind::new(seen, tcp));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (name, b, counter) = (name.clone(), b.clone(), counter.clone());
                async move { Ok::<_, Infallible>(app(req, &name, &b, &counter).await) }
            });
            match proto {
                waypoint::proxy::detect::Protocol::Http2 => {
                    let _ =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await;
                }
                _ => {
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).with_upgrades().await;
                }
            }
        });
    }
}

type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

fn empty_app_body() -> AppBody {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync()
}

async fn app(mut req: Request<Incoming>, name: &str, b: &Behaviour, counter: &AtomicU64) -> Response<AppBody> {
    b.seen.fetch_add(1, Ordering::Relaxed);
    b.versions.lock().unwrap().push(req.version());
    let authority = req.uri().authority().map(|a| a.as_str()).or_else(|| req.headers().get("host")?.to_str().ok());
    b.authorities.lock().unwrap().push(authority.unwrap_or_default().to_owned());
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    // `/ws...` with `Upgrade: websocket` switches protocols, then echoes every byte, each
    // chunk prefixed with the backend's name, until the client closes. `x-answer-upgrade`
    // makes the 101 name that protocol instead (an application switching to something else).
    if path.starts_with("/ws") && req.headers().get("upgrade").is_some_and(|v| v == "websocket") {
        // The handshake a WebSocket server insists on (RFC 6455 §4.2.1): GET over HTTP/1.1,
        // version 13, and a key of 16 bytes in base64.
        let h = req.headers();
        let key = h
            .get("sec-websocket-key")
            .and_then(|k| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k.as_bytes()).ok());
        let valid = req.method() == http::Method::GET
            && req.version() == http::Version::HTTP_11
            && h.get("sec-websocket-version").is_some_and(|v| v == "13")
            && key.is_some_and(|k| k.len() == 16);
        if !valid {
            return Response::builder().status(StatusCode::BAD_REQUEST).body(empty_app_body()).unwrap();
        }
        let key = h["sec-websocket-key"].clone();
        let on = hyper::upgrade::on(&mut req);
        let prefix = format!("{name}:");
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let mut buf = [0u8; 4096];
            loop {
                let n = match tokio::io::AsyncReadExt::read(&mut io, &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut out = prefix.clone().into_bytes();
                out.extend_from_slice(&buf[..n]);
                if tokio::io::AsyncWriteExt::write_all(&mut io, &out).await.is_err() {
                    return;
                }
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut io).await;
        });
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header(
                "upgrade",
                req.headers().get("x-answer-upgrade").cloned().unwrap_or_else(|| "websocket".parse().unwrap()),
            )
            // Stands for the digest of the key RFC 6455 asks for: the client side here only
            // needs to tell which key it answers.
            .header("sec-websocket-accept", key)
            .header("x-backend", name)
            .header("x-path", path)
            .body(empty_app_body())
            .unwrap();
    }
    let mut text = format!("{name} {} {path} {:?}\n", req.method(), req.version());
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    if path.starts_with("/upload") {
        // Read to the end: a body cut short fails here and is not counted.
        let Ok(body) = req.into_body().collect().await else {
            return Response::builder().status(StatusCode::BAD_REQUEST).body(empty_app_body()).unwrap();
        };
        let n = body.to_bytes().len() as u64;
        b.uploaded.fetch_add(n, Ordering::Relaxed);
        return Response::builder()
            .header("x-backend", name)
            .body(Full::new(Bytes::from(format!("{n}\n"))).map_err(|never| match never {}).boxed_unsync())
            .unwrap();
    }
    if path.starts_with("/endless") {
        // 64 KiB pieces until whoever reads the response stops; counted in `abandoned`.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
        let abandoned = b.abandoned.clone();
        tokio::spawn(async move {
            while tx.send(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))).await.is_ok() {}
            abandoned.fetch_add(1, Ordering::Relaxed);
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return Response::builder().header("x-backend", name).body(StreamBody::new(stream).boxed_unsync()).unwrap();
    }
    if path.starts_with("/te-gzip") {
        // A body under a transfer coding besides chunked (the server adds chunked after it).
        return Response::builder()
            .header("x-backend", name)
            .header("transfer-encoding", "gzip")
            .body(Full::new(Bytes::from_static(b"abc")).map_err(|never| match never {}).boxed_unsync())
            .unwrap();
    }
    if path.starts_with("/stall") {
        // Its head and one piece of its body, then nothing until whoever reads it stops
        // (counted in `abandoned`).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(1);
        let abandoned = b.abandoned.clone();
        tokio::spawn(async move {
            let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"first")))).await;
            tx.closed().await;
            abandoned.fetch_add(1, Ordering::Relaxed);
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return Response::builder().header("x-backend", name).body(StreamBody::new(stream).boxed_unsync()).unwrap();
    }
    let mut status = StatusCode::OK;
    if b.fail.load(Ordering::Relaxed) {
        status = StatusCode::INTERNAL_SERVER_ERROR;
    } else if path.starts_with("/fail-every-other") {
        if counter.fetch_add(1, Ordering::Relaxed).is_multiple_of(2) {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    } else if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let grpc = req.headers().get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let builder = Response::builder().status(status).header("x-backend", name).header("x-path", path.clone());
    if grpc {
        // Echo each request frame as it arrives, then trailers.
        let mut body = req.into_body();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, hyper::Error>>(4);
        tokio::spawn(async move {
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        if let Ok(d) = f.into_data()
                            && tx.send(Ok(Frame::data(d))).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", http::HeaderValue::from_static("0"));
            let _ = tx.send(Ok(Frame::trailers(t))).await;
        });
        let mut rx = rx;
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return builder
            .header("content-type", "application/grpc")
            .body(StreamBody::new(stream).boxed_unsync())
            .unwrap();
    }
    let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    text.push_str(&format!("body-bytes: {}\n", body.len()));
    builder.body(Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed_unsync()).unwrap()
}
