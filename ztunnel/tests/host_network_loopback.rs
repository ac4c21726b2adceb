//! Host-network pods on loopback: their address is their node's (here 127.0.0.1, where the
//! tunnels come from), shared by several of them, so a tunnel from that address is not taken
//! for one of them (istio/ztunnel#1216): telemetry says the source workload is unknown.

mod support;

use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, id};
use hbone::tunnel::client::ConnectTarget;
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ztunnel::proxy::{HostSockets, PodProxy};
use ztunnel::state::{StateConfig, StateHandle, file};

/// `shop/web` at 127.0.0.2 (its backend listens there), and two host-network pods of the node
/// at 127.0.0.1, the address every tunnel here comes from.
const STATE: &str = r#"
workloads:
- name: web
  namespace: shop
  serviceAccount: web
  addresses: ["127.0.0.2"]
  protocol: HBONE
- name: node-exporter
  namespace: monitoring
  serviceAccount: exporter
  addresses: ["127.0.0.1"]
  networkMode: HOST_NETWORK
- name: kube-proxy
  namespace: kube-system
  addresses: ["127.0.0.1"]
  networkMode: HOST_NETWORK
"#;

async fn echo_on(ip: &str) -> std::net::SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_from_a_node_address_has_no_source_workload() {
    let state = file::parse(STATE, StateConfig::default()).unwrap();
    let warnings = state.warnings().to_vec();
    let ca = TestCa::new("host-network");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    certs.insert(ca.issue(&client, DAY));
    let (inputs, registry) = support::loopback_inputs(StateHandle::new(state), certs.clone());
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let backend = echo_on("127.0.0.2").await;
    let pool = Pool::new(PoolConfig::default(), certs, None);
    let key = PoolKey { src: client, dst: web, addr: pod.addrs.hbone };

    let mut s = pool.connect(&key, &ConnectTarget::new(backend, None)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"ping");

    let metrics = ztunnel::metrics::encode(&registry);
    let opened = metrics
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("no connection counted: {metrics}"));
    assert!(opened.contains("source_workload=\"unknown\""), "{opened}");
    assert!(opened.contains("source_workload_namespace=\"unknown\""), "{opened}");
    assert!(opened.contains("source_principal=\"spiffe://cluster.local/ns/tools/sa/client\""), "{opened}");
    assert!(opened.contains("destination_workload=\"web\""), "{opened}");
    assert!(warnings.is_empty(), "host-network pods sharing an address: {warnings:?}");
    drop(pod);
}
