//! `response_flags` on Istio's TCP metrics, as Istio's ztunnel sets them: a connection is
//! counted opened (no flag) once its ends are known, and closed with `DENY` when policy refuses
//! it or `CONNECT` when its upstream cannot be reached; a carried one is closed with `-`. The
//! labels of a refused connection name its ends as fully as a carried one's.
//!
//! Inbound HBONE on loopback (no namespaces); inbound plaintext in namespaces of its own
//! (needs root). The source side's `CONNECT` is checked by `proxy_tunnel_ends`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, echo_backend, id};
use hbone::tunnel::client::{ConnectError, ConnectTarget};
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::netns::{Netns, ScratchNetns};
use ztunnel::proxy::netns_sockets::InPodSockets;
use ztunnel::proxy::{HostSockets, PodProxy, ProxyConfig, ProxyInputs};
use ztunnel::state::{StateConfig, StateHandle, file};

/// `shop/web` at `ip`, allowing connections from `allowed_source` only.
fn state(ip: &str, allowed_source: &str) -> ztunnel::state::State {
    let yaml = format!(
        r#"
workloads:
- {{name: web, namespace: shop, serviceAccount: web, addresses: ["{ip}"], protocol: HBONE}}
policies:
- name: only-from
  namespace: shop
  scope: NAMESPACE
  action: ALLOW
  groups:
  - rules:
    - matches:
      - sourceIps: ["{allowed_source}/32"]
"#
    );
    file::parse(&yaml, StateConfig::default()).unwrap()
}

/// The sum of the `family` lines whose labels include every one of `labels`.
fn sum(metrics: &str, family: &str, labels: &[(&str, &str)]) -> u64 {
    let prefix = format!("{family}{{");
    let has = |line: &str, (k, v): &(&str, &str)| {
        line.contains(&format!("{{{k}=\"{v}\"")) || line.contains(&format!(",{k}=\"{v}\""))
    };
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix) && labels.iter().all(|kv| has(l, kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";

/// Polls until `CLOSED` with `labels` reaches `want` (5 s at most), then returns the text.
async fn closed(registry: &Registry, labels: &[(&str, &str)], want: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = ztunnel::metrics::encode(registry);
        if sum(&text, CLOSED, labels) >= want || std::time::Instant::now() >= deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pod `shop/web` on loopback allowing `allowed_source`, and a client pool as
/// `tools/client` aimed at its HBONE listener.
struct Loopback {
    registry: Registry,
    _pod: PodProxy,
    pool: Pool,
    key: PoolKey,
}

fn loopback(allowed_source: &str) -> Loopback {
    let ca = TestCa::new("response flags");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    certs.insert(ca.issue(&client, DAY));
    let (inputs, registry) =
        support::loopback_inputs(StateHandle::new(state("127.0.0.1", allowed_source)), certs.clone());
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let pool = Pool::new(PoolConfig::default(), certs, None);
    let key = PoolKey { src: client, dst: web, addr: pod.addrs.hbone };
    Loopback { registry, _pod: pod, pool, key }
}

const DESTINATION: (&str, &str) = ("reporter", "destination");

/// What names the ends of every inbound tunnel here, refused or carried.
const TUNNEL_ENDS: [(&str, &str); 5] = [
    DESTINATION,
    ("source_principal", "spiffe://cluster.local/ns/tools/sa/client"),
    ("destination_workload", "web"),
    ("destination_principal", "spiffe://cluster.local/ns/shop/sa/web"),
    ("connection_security_policy", "mutual_tls"),
];

fn with(
    labels: &[(&'static str, &'static str)],
    more: (&'static str, &'static str),
) -> Vec<(&'static str, &'static str)> {
    labels.iter().copied().chain([more]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_policy_refuses_is_closed_with_deny() {
    let Loopback { registry, _pod, pool, key } = loopback("10.1.2.3");
    let backend = echo_backend().await;
    match pool.connect(&key, &ConnectTarget::new(backend, None)).await {
        Err(ConnectError::Refused { status, .. }) => assert_eq!(status.as_u16(), 401),
        other => panic!("policy should refuse the tunnel: {:?}", other.map(|_| ())),
    }
    let m = closed(&registry, &with(&TUNNEL_ENDS, ("response_flags", "DENY")), 1).await;
    assert_eq!(sum(&m, CLOSED, &with(&TUNNEL_ENDS, ("response_flags", "DENY"))), 1, "{m}");
    // Opened as any connection is, before the decision: without a flag.
    assert_eq!(sum(&m, OPENED, &with(&TUNNEL_ENDS, ("response_flags", "-"))), 1, "{m}");
    assert_eq!(sum(&m, OPENED, &[]), 1, "{m}");
    assert_eq!(sum(&m, CLOSED, &[]), 1, "{m}");
    // The reason stays counted in ztunnel's own family.
    assert!(m.contains("ztunnel_connections_denied_total{reporter=\"destination\",reason=\"policy\"} 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_a_port_nobody_listens_on_is_closed_with_connect() {
    let Loopback { registry, _pod, pool, key } = loopback("127.0.0.1");
    let nobody: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    match pool.connect(&key, &ConnectTarget::new(nobody, None)).await {
        Err(ConnectError::Refused { status, .. }) => assert_eq!(status.as_u16(), 503),
        other => panic!("the destination should answer 503: {:?}", other.map(|_| ())),
    }
    let m = closed(&registry, &with(&TUNNEL_ENDS, ("response_flags", "CONNECT")), 1).await;
    assert_eq!(sum(&m, CLOSED, &with(&TUNNEL_ENDS, ("response_flags", "CONNECT"))), 1, "{m}");
    assert_eq!(sum(&m, OPENED, &with(&TUNNEL_ENDS, ("response_flags", "-"))), 1, "{m}");
    assert_eq!(sum(&m, CLOSED, &[]), 1, "{m}");
    assert!(
        m.contains("ztunnel_connections_denied_total{reporter=\"destination\",reason=\"workload_unreachable\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carried_tunnel_has_no_flags() {
    let Loopback { registry, _pod, pool, key } = loopback("127.0.0.1");
    let backend = echo_backend().await;
    let mut s = pool.connect(&key, &ConnectTarget::new(backend, None)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
    drop(s);
    let m = closed(&registry, &with(&TUNNEL_ENDS, ("response_flags", "-")), 1).await;
    assert_eq!(sum(&m, CLOSED, &with(&TUNNEL_ENDS, ("response_flags", "-"))), 1, "{m}");
    assert_eq!(sum(&m, OPENED, &with(&TUNNEL_ENDS, ("response_flags", "-"))), 1, "{m}");
    assert_eq!(sum(&m, CLOSED, &[]), 1, "no other closing count: {m}");
    assert_eq!(sum(&m, "istio_tcp_received_bytes_total", &with(&TUNNEL_ENDS, ("response_flags", "-"))), 4, "{m}");
}

const CLIENT_IP: &str = "10.82.1.1";
const SERVER_IP: &str = "10.82.1.2";
/// Also on the server pod's interface, but not an address of its workload.
const OTHER_IP: &str = "10.82.1.3";

/// Plaintext from a client outside the mesh to the enrolled `shop/web` (its inbound capture,
/// 15006): refused by policy, then, allowed, to a port nobody listens on. Both are reset, and
/// counted by the destination with their flag and the labels plaintext has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_policy_refuses_is_closed_with_deny_and_an_unreachable_port_with_connect() {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let client_ns = ScratchNetns::create(&format!("flags-c-{suffix}")).unwrap();
    let server_ns = ScratchNetns::create(&format!("flags-s-{suffix}")).unwrap();
    client_ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", server_ns.name()]).unwrap();
    for (ns, ip) in [(&client_ns, CLIENT_IP), (&server_ns, SERVER_IP)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
    }
    server_ns.ip(&["addr", "add", &format!("{OTHER_IP}/24"), "dev", "eth0"]).unwrap();
    redirect::install(server_ns.netns(), &RedirectConfig::default()).unwrap();
    let app: SocketAddr = format!("{SERVER_IP}:8080").parse().unwrap();
    let _echo =
        support::echo_on(server_ns.netns().run(|| std::net::TcpListener::bind("0.0.0.0:8080")).unwrap().unwrap());

    let ca = TestCa::new("response flags");
    let web = id("shop", "web");
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    let handle = StateHandle::new(state(SERVER_IP, "10.1.2.3"));
    let mut registry = Registry::default();
    let inputs = ProxyInputs::new(
        handle.clone(),
        certs,
        ztunnel::metrics::Metrics::register(&mut registry),
        Arc::new(ProxyConfig { transparent_inbound: false, ..ProxyConfig::default() }),
        Default::default(),
        &tokio::runtime::Handle::current(),
    );
    let sockets =
        InPodSockets::new(Arc::new(server_ns.netns().try_clone().unwrap()), Arc::new(Netns::current().unwrap()));
    let _pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web, sockets, inputs).unwrap();
    let dial = |dst: SocketAddr| {
        let ns = client_ns.netns().try_clone().unwrap();
        tokio::task::spawn_blocking(move || support::exchange(&ns, dst, b"hello"))
    };
    let plaintext_ends = [
        DESTINATION,
        ("source_principal", "unknown"),
        ("destination_workload", "web"),
        ("destination_principal", "spiffe://cluster.local/ns/shop/sa/web"),
        ("connection_security_policy", "unknown"),
    ];

    let refused = dial(app).await.unwrap();
    assert!(refused.is_err(), "policy refuses the client: {refused:?}");
    let deny = with(&plaintext_ends, ("response_flags", "DENY"));
    let m = closed(&registry, &deny, 1).await;
    assert_eq!(sum(&m, CLOSED, &deny), 1, "{m}");
    assert_eq!(sum(&m, OPENED, &with(&plaintext_ends, ("response_flags", "-"))), 1, "{m}");
    assert!(m.contains("ztunnel_connections_denied_total{reporter=\"destination\",reason=\"policy\"} 1"), "{m}");

    handle.store(state(SERVER_IP, CLIENT_IP));
    assert_eq!(dial(app).await.unwrap().expect("allowed now"), b"hello");
    let failed = dial(format!("{SERVER_IP}:8083").parse().unwrap()).await.unwrap();
    assert!(failed.is_err(), "nobody listens: {failed:?}");
    let connect = with(&plaintext_ends, ("response_flags", "CONNECT"));
    let m = closed(&registry, &connect, 1).await;
    assert_eq!(sum(&m, CLOSED, &connect), 1, "{m}");
    let m = closed(&registry, &with(&plaintext_ends, ("response_flags", "-")), 1).await;
    assert_eq!(sum(&m, CLOSED, &with(&plaintext_ends, ("response_flags", "-"))), 1, "the carried one: {m}");
    assert_eq!(sum(&m, OPENED, &with(&plaintext_ends, ("response_flags", "-"))), 3, "{m}");
    assert_eq!(sum(&m, CLOSED, &[]), 3, "{m}");

    // An address of the pod's interface that is not the workload's is captured like any other,
    // but never relayed: ztunnel would connect to it from inside the pod, as the pod.
    let other: SocketAddr = format!("{OTHER_IP}:8080").parse().unwrap();
    let refused = dial(other).await.unwrap();
    assert!(refused.is_err(), "not the workload's address: {refused:?}");
    let line = "ztunnel_connections_denied_total{reporter=\"destination\",reason=\"wrong_destination\"}";
    let m = support::metrics_once(&registry, line, "1").await;
    assert!(m.contains(&format!("{line} 1")), "{m}");
    assert_eq!(sum(&m, OPENED, &[]), 3, "not counted in Istio's families: {m}");
}
