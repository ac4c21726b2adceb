//! IPv6 through a pod's listeners. The in-pod redirection is an `inet` table, so a pod's IPv6
//! connections arrive on the same ports as its IPv4 ones and must find a listener there.
//!
//! - On loopback (no namespaces): a tunnel to the pod's HBONE port over `::1`, to a workload
//!   at `::1`, is served, bytes flow both ways and each side's FIN reaches the other.
//! - In namespaces (root): an application in a pod with ztunnel's redirection dials an IPv6
//!   address outside the mesh; ztunnel finds the original destination (`IP6T_SO_ORIGINAL_DST`)
//!   and passes the connection through; a client outside the mesh reaches the pod over IPv6
//!   through its plaintext capture.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, id};
use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::netns::ScratchNetns;
use ztunnel::proxy::{HostSockets, PodProxy};
use ztunnel::state::{StateConfig, StateHandle, file};

fn line<'a>(metrics: &'a str, name: &str) -> &'a str {
    metrics.lines().find(|l| l.starts_with(name)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_over_ipv6_reaches_the_pod() {
    let yaml =
        "workloads:\n- {name: web, namespace: shop, serviceAccount: web, addresses: [\"::1\"], protocol: HBONE}\n";
    let handle = StateHandle::new(file::parse(yaml, StateConfig::default()).unwrap());
    let ca = TestCa::new("ipv6");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    certs.insert(ca.issue(&client, DAY));
    let (inputs, registry) = support::loopback_inputs(handle, certs.clone());
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let backend_listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    let backend = backend_listener.local_addr().unwrap();
    let _backend = support::echo_on(backend_listener);

    let pool = Pool::new(PoolConfig::default(), certs, None);
    let hbone_v6 = SocketAddr::new("::1".parse().unwrap(), pod.addrs.hbone.port());
    let key = PoolKey { src: client, dst: web, addr: hbone_v6 };
    let mut s = tokio::time::timeout(Duration::from_secs(10), pool.connect(&key, &ConnectTarget::new(backend, None)))
        .await
        .expect("answered")
        .expect("the pod's HBONE port takes IPv6");
    s.write_all(b"over six").await.unwrap();
    // Our FIN reaches the workload, whose own FIN comes back after the echo.
    s.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.unwrap().unwrap();
    assert_eq!(got, b"over six");

    let metrics = support::metrics_once(&registry, "istio_tcp_connections_closed_total{", "1").await;
    let closed = line(&metrics, "istio_tcp_connections_closed_total{");
    assert!(closed.contains("destination_workload=\"web\"") && closed.ends_with(" 1"), "{metrics}");
    assert!(line(&metrics, "istio_tcp_received_bytes_total{").ends_with(" 8"), "{metrics}");
    assert!(line(&metrics, "istio_tcp_sent_bytes_total{").ends_with(" 8"), "{metrics}");
}

const POD_IP: &str = "fd77:1::2";
const OUTSIDE_IP: &str = "fd77:1::1";

/// A pod namespace (`POD_IP`, ztunnel's redirection installed) joined by a veth pair to one
/// outside the mesh (`OUTSIDE_IP`), IPv6 only.
fn v6_pair(name: &str) -> (ScratchNetns, ScratchNetns) {
    let pod = ScratchNetns::create(&format!("{name}-pod")).unwrap();
    let outside = ScratchNetns::create(&format!("{name}-out")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", outside.name()]).unwrap();
    // nodad: usable at once, not after duplicate address detection.
    pod.ip(&["-6", "addr", "add", &format!("{POD_IP}/64"), "dev", "eth0", "nodad"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["link", "set", "lo", "up"]).unwrap();
    outside.ip(&["-6", "addr", "add", &format!("{OUTSIDE_IP}/64"), "dev", "eth0", "nodad"]).unwrap();
    outside.ip(&["link", "set", "eth0", "up"]).unwrap();
    redirect::install(pod.netns(), &RedirectConfig::default()).unwrap();
    (pod, outside)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_ipv6_is_captured_and_passed_through() {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let (pod, outside) = v6_pair(&format!("v6-{suffix}"));

    // A server outside the mesh (not in the state): passthrough.
    let dst: SocketAddr = format!("[{OUTSIDE_IP}]:8080").parse().unwrap();
    let listener = outside.netns().run(move || std::net::TcpListener::bind(dst)).unwrap().unwrap();
    let _server = support::echo_on(listener);

    let (_proxy, registry) = support::start_in_pod(&pod, "tools", "client", POD_IP);

    let app = pod.netns().try_clone().unwrap();
    let echoed = tokio::task::spawn_blocking(move || support::exchange(&app, dst, b"v6 outbound"))
        .await
        .unwrap()
        .expect("the application's IPv6 connection is served");
    assert_eq!(echoed, b"v6 outbound");

    // It went through ztunnel, to the address the application dialled.
    let metrics = support::metrics_once(&registry, "istio_tcp_connections_closed_total{", "1").await;
    let closed = line(&metrics, "istio_tcp_connections_closed_total{");
    assert!(closed.contains("reporter=\"source\"") && closed.ends_with(" 1"), "{metrics}");
    assert!(line(&metrics, "istio_tcp_received_bytes_total{").ends_with(" 11"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_plaintext_over_ipv6_reaches_the_pod() {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let (pod, outside) = v6_pair(&format!("v6in-{suffix}"));

    // The pod's application.
    let app: SocketAddr = format!("[{POD_IP}]:8080").parse().unwrap();
    let listener = pod.netns().run(move || std::net::TcpListener::bind(app)).unwrap().unwrap();
    let _app = support::echo_on(listener);

    let (_proxy, registry) = support::start_in_pod(&pod, "shop", "web", POD_IP);

    // A client outside the mesh: its connection is captured by the pod's plaintext port.
    let client = outside.netns().try_clone().unwrap();
    let echoed = tokio::task::spawn_blocking(move || support::exchange(&client, app, b"v6 inbound"))
        .await
        .unwrap()
        .expect("the client's IPv6 connection is served");
    assert_eq!(echoed, b"v6 inbound");

    let metrics = support::metrics_once(&registry, "istio_tcp_connections_closed_total{", "1").await;
    let closed = line(&metrics, "istio_tcp_connections_closed_total{");
    assert!(closed.contains("reporter=\"destination\"") && closed.ends_with(" 1"), "{metrics}");
}

/// IPv6 listeners where they serve: a pod namespace with IPv6 switched off (`disable_ipv6` on
/// `all`, as an IPv4-only runtime may leave it; `[::]` can still be bound there) gets none,
/// one with IPv6 gets its three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_without_ipv6_gets_no_ipv6_listeners() {
    /// Listening TCP sockets in the calling thread's network namespace (`thread-self`: a thread
    /// that entered a namespace sees it there, the process's `self` does not).
    fn v6_listeners() -> usize {
        let table = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap();
        table.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("0A")).count()
    }
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    for (name, ipv6, want) in [("v6off", false, 0), ("v6on", true, 3)] {
        let pod = ScratchNetns::create(&format!("{name}-{suffix}")).unwrap();
        pod.ip(&["link", "set", "lo", "up"]).unwrap();
        if !ipv6 {
            pod.netns().run(|| std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1")).unwrap().unwrap();
        }
        let _proxy = support::start_in_pod(&pod, "shop", "web", "10.9.0.2");
        assert_eq!(pod.netns().run(v6_listeners).unwrap(), want, "{name}");
    }
}
