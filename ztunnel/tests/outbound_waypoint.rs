//! Outbound through a waypoint, for real: a pod namespace with ztunnel's redirection and
//! listeners, wired by a veth to a peer namespace where a stand-in waypoint serves HBONE on
//! 10.77.1.1:15008 with the waypoint's certificate. An application connection to a service
//! VIP whose Address names the waypoint arrives at the waypoint with the VIP as authority, the
//! client's address in `forwarded` and the pod's identity; a waypoint that cannot be resolved
//! gets the connection refused, never sent direct. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use hbone::testing::{DAY, TestCa, id};
use hbone::tunnel::server::{InboundConnect, Server};
use hbone::{CertStore, Identity};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::metrics::Metrics;
use ztunnel::netns::{Netns, ScratchNetns};
use ztunnel::proxy::netns_sockets::InPodSockets;
use ztunnel::proxy::{PodProxy, ProxyConfig, ProxyInputs};
use ztunnel::state::{StateConfig, StateHandle, file};

const POD_IP: &str = "10.77.1.2";
const WAYPOINT_IP: &str = "10.77.1.1";
const VIP: &str = "10.96.7.5";

struct World {
    pod: ScratchNetns,
    peer: ScratchNetns,
}

fn world(test: &str) -> World {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let pod = ScratchNetns::create(&format!("{test}-pod-{suffix}")).unwrap();
    let peer = ScratchNetns::create(&format!("{test}-wp-{suffix}")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer.name()]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["link", "set", "lo", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", WAYPOINT_IP]).unwrap();
    peer.ip(&["addr", "add", &format!("{WAYPOINT_IP}/24"), "dev", "eth0"]).unwrap();
    peer.ip(&["link", "set", "eth0", "up"]).unwrap();
    World { pod, peer }
}

/// The client pod, a backend `web` behind service `web` (VIP) which names `waypoint_addr` as
/// its waypoint, and the waypoint pod itself at WAYPOINT_IP.
fn state(waypoint_addr: &str) -> ztunnel::state::State {
    let yaml = format!(
        r#"
workloads:
- name: client-7d9f-x2x4
  namespace: tools
  serviceAccount: client
  addresses: ["{POD_IP}"]
  protocol: HBONE
  uid: Kubernetes//Pod/tools/client
  workloadName: client
  canonicalName: client-app
  canonicalRevision: v2
  clusterId: east
- name: web
  namespace: shop
  serviceAccount: web
  addresses: ["10.77.9.9"]
  protocol: HBONE
  services: {{"shop/web.shop.svc.cluster.local": {{80: 8080}}}}
- name: waypoint-0
  namespace: shop
  serviceAccount: waypoint
  addresses: ["{WAYPOINT_IP}"]
services:
- name: web
  namespace: shop
  hostname: web.shop.svc.cluster.local
  addresses: ["{VIP}"]
  ports: [{{servicePort: 80, targetPort: 8080}}]
  waypoint: {{address: "{waypoint_addr}"}}
"#
    );
    file::parse(&yaml, StateConfig::default()).unwrap()
}

/// What the stand-in waypoint saw of one CONNECT.
#[derive(Debug)]
struct Seen {
    peer: Identity,
    authority: SocketAddr,
    forwarded_for: Option<SocketAddr>,
    baggage: Option<String>,
    traceparent: Option<String>,
}

/// HBONE on WAYPOINT_IP:15008 in the peer namespace as `waypoint`: records each CONNECT, then
/// echoes the stream.
fn stand_in_waypoint(peer: &Netns, ca: &TestCa, waypoint: &Identity) -> mpsc::UnboundedReceiver<Seen> {
    let store = CertStore::new(ca.roots());
    store.insert(ca.issue(waypoint, DAY));
    let tls = hbone::tls::server_config(&store, waypoint.clone());
    let addr: SocketAddr = format!("{WAYPOINT_IP}:15008").parse().unwrap();
    let listener = peer.run(move || std::net::TcpListener::bind(addr)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::new(tls, Default::default(), move |req: InboundConnect| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Seen {
                peer: req.peer_identity().clone(),
                authority: req.authority(),
                forwarded_for: req.forwarded_for(),
                baggage: req.headers().get("baggage").map(|v| v.to_str().unwrap().to_owned()),
                traceparent: req.headers().get("traceparent").map(|v| v.to_str().unwrap().to_owned()),
            });
            let Ok(mut stream) = req.accept() else { return };
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = stream.shutdown().await;
        }
    });
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    rx
}

fn app_connect(pod: &Netns) -> std::io::Result<TcpStream> {
    let dst: SocketAddr = format!("{VIP}:80").parse().unwrap();
    pod.run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(3))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_waypoint_is_tunnelled_to_the_waypoint() {
    let w = world("wp-out");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let ca = TestCa::new("waypoint test");
    let (client, waypoint) = (id("tools", "client"), id("shop", "waypoint"));
    let mut seen = stand_in_waypoint(w.peer.netns(), &ca, &waypoint);

    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&client, DAY));
    let handle = StateHandle::new(state(WAYPOINT_IP));
    let mut registry = Registry::default();
    let inputs = ProxyInputs::new(
        handle.clone(),
        certs,
        Metrics::register(&mut registry),
        Arc::new(ProxyConfig { transparent_inbound: false, ..ProxyConfig::default() }),
        Default::default(),
        &tokio::runtime::Handle::current(),
    );
    let sockets = InPodSockets::new(Arc::new(w.pod.netns().try_clone().unwrap()), Arc::new(Netns::current().unwrap()));
    let _proxy = PodProxy::start("Kubernetes//Pod/tools/client".into(), client.clone(), sockets, inputs).unwrap();

    let mut app = tokio::task::spawn_blocking({
        let pod = w.pod.netns().try_clone().unwrap();
        move || app_connect(&pod)
    })
    .await
    .unwrap()
    .expect("the application's connection is accepted");
    let local = app.local_addr().unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv()).await.expect("reached the waypoint").unwrap();
    assert_eq!(got.authority, format!("{VIP}:80").parse().unwrap(), "authority is the service VIP:port");
    assert_eq!(got.forwarded_for, Some(local), "forwarded carries the original client");
    assert_eq!(got.peer, client, "the tunnel carries the pod's identity");
    assert_eq!(
        got.baggage.as_deref(),
        Some(
            "k8s.cluster.name=east,k8s.namespace.name=tools,k8s.deployment.name=client,service.name=client-app,service.version=v2"
        ),
        "baggage describes the source workload"
    );
    let trace = got.traceparent.expect("a traceparent is sent");
    let parts: Vec<&str> = trace.split('-').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2
            && parts[1..].iter().all(|p| p.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            && parts[1] != "0".repeat(32)
            && parts[2] != "0".repeat(16),
        "a W3C traceparent (version 00): {trace}"
    );
    let echoed = tokio::task::spawn_blocking(move || {
        app.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        app.write_all(b"through the waypoint").unwrap();
        let mut b = [0u8; 20];
        app.read_exact(&mut b).map(|_| b)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&echoed, b"through the waypoint");

    // A waypoint nobody can resolve: refused at the source, never sent around it.
    handle.store(state("10.77.1.77"));
    let refused = tokio::task::spawn_blocking({
        let pod = w.pod.netns().try_clone().unwrap();
        move || -> std::io::Result<usize> {
            let mut s = app_connect(&pod)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(b"x");
            s.read(&mut [0u8; 8])
        }
    })
    .await
    .unwrap();
    assert!(!matches!(refused, Ok(n) if n > 0), "no bytes may flow: {refused:?}");
    assert!(seen.try_recv().is_err(), "nothing reached the old waypoint");
    let metrics = ztunnel::metrics::encode(&registry);
    assert!(
        metrics.contains("ztunnel_connections_denied_total{reporter=\"source\",reason=\"waypoint_unavailable\"} 1"),
        "{metrics}"
    );
}
