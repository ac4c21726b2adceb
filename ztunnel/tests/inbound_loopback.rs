//! A pod's HBONE listener on loopback (no namespaces): policy decides on the address the
//! tunnel really comes from, never on one a peer claims in `forwarded`.

mod support;

use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, echo_backend, id};
use hbone::tunnel::client::{ConnectError, ConnectTarget};
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::proxy::{HostSockets, PodProxy};
use ztunnel::state::{StateConfig, StateHandle, file};

fn state(allowed_source: &str) -> ztunnel::state::State {
    let yaml = format!(
        r#"
workloads:
- name: web
  namespace: shop
  serviceAccount: web
  addresses: ["127.0.0.1"]
  protocol: HBONE
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

/// The pod `shop/web` on loopback, allowing `allowed_source`, and a client pool as
/// `tools/client` aimed at its HBONE listener. The client's certificate is in the store; the
/// pod's only when `web_cert` says so.
struct Loopback {
    ca: TestCa,
    web: hbone::Identity,
    certs: CertStore,
    handle: StateHandle,
    registry: prometheus_client::registry::Registry,
    /// Serving while held.
    _pod: PodProxy,
    backend: std::net::SocketAddr,
    pool: Pool,
    key: PoolKey,
}

async fn loopback(allowed_source: &str, web_cert: bool) -> Loopback {
    let ca = TestCa::new("loopback");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    if web_cert {
        certs.insert(ca.issue(&web, DAY));
    }
    certs.insert(ca.issue(&client, DAY));
    let handle = StateHandle::new(state(allowed_source));
    let (inputs, registry) = support::loopback_inputs(handle.clone(), certs.clone());
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let backend = echo_backend().await;
    let pool = Pool::new(PoolConfig::default(), certs.clone(), None);
    let key = PoolKey { src: client, dst: web.clone(), addr: pod.addrs.hbone };
    Loopback { ca, web, certs, handle, registry, _pod: pod, backend, pool, key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_sees_the_real_source_not_the_claimed_one() {
    let Loopback { handle, registry, backend, pool, key, _pod, .. } = loopback("10.1.2.3", true).await;

    // Claiming to be the allowed address does not help: the tunnel comes from 127.0.0.1.
    let spoofed = ConnectTarget::new(backend, Some("10.1.2.3:4000".parse().unwrap()));
    match pool.connect(&key, &spoofed).await {
        Err(ConnectError::Refused { status, reason, .. }) => {
            assert_eq!(status.as_u16(), 401);
            assert!(reason.contains("shop/only-from"), "{reason}");
        }
        Ok(_) => panic!("a claimed source address must not pass an IP-based policy"),
        Err(e) => panic!("unexpected: {e}"),
    }

    // Allowing the real source lets the same tunnel through, and bytes flow.
    handle.store(state("127.0.0.1"));
    let mut s = pool.connect(&key, &ConnectTarget::new(backend, None)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"ping");
    let metrics = ztunnel::metrics::encode(&registry);
    assert!(
        metrics.contains("ztunnel_connections_denied_total{reporter=\"destination\",reason=\"policy\"} 1"),
        "{metrics}"
    );
}

/// A pod's listeners are up before its first certificate arrives (it is fetched in the
/// background): a tunnel opened in that window waits for the certificate, then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_opened_before_the_pods_certificate_waits_for_it() {
    let Loopback { ca, web, certs, backend, pool, key, _pod, .. } = loopback("127.0.0.1", false).await;
    let connect = tokio::spawn(async move { pool.connect(&key, &ConnectTarget::new(backend, None)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!connect.is_finished(), "the handshake waits for the pod's certificate: {:?}", connect);
    certs.insert(ca.issue(&web, DAY));
    let mut s = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .expect("the tunnel opens once the certificate is there")
        .unwrap()
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"ping");
}

/// Policy holds for a connection's whole life: a policy change that refuses an open tunnel
/// closes it (reset, counted, logged), and one that still allows it leaves it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_the_new_policy_refuses_is_closed() {
    let Loopback { handle, registry, backend, pool, key, _pod, .. } = loopback("127.0.0.1", true).await;
    let ping = |mut s: hbone::tunnel::stream::H2Stream| async move {
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
        assert_eq!(&b, b"ping");
        s
    };
    let s = ping(pool.connect(&key, &ConnectTarget::new(backend, None)).await.unwrap()).await;

    // New states that still allow the source: the tunnel carries on.
    handle.store(state("127.0.0.1"));
    handle.store(state("127.0.0.1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = ping(s).await;

    // Now only 10.1.2.3 is allowed: the open tunnel is reset, not left running.
    handle.store(state("10.1.2.3"));
    let mut b = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("closed promptly");
    assert!(read.is_err(), "the tunnel is reset, not ended cleanly: {read:?}");
    let mut metrics = ztunnel::metrics::encode(&registry);
    assert!(
        metrics.contains("ztunnel_connections_denied_total{reporter=\"destination\",reason=\"policy_revoked\"} 1"),
        "{metrics}"
    );
    // Counted as closed, with the bytes it moved before (two pings of 4 bytes each way). The
    // count follows the reset by a moment: the serving task ends after the client sees it.
    let line = |m: &str, name: &str| m.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !line(&metrics, "istio_tcp_connections_closed_total{").ends_with(" 1") && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = ztunnel::metrics::encode(&registry);
    }
    assert!(line(&metrics, "istio_tcp_connections_closed_total{").ends_with(" 1"), "{metrics}");
    assert!(line(&metrics, "istio_tcp_received_bytes_total{").ends_with(" 8"), "{metrics}");
}

/// Handshakes past `--max-inbound-handshakes` are refused at once and counted, while clients
/// already connected carry on; the turn a client that says nothing holds is given back when
/// it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_past_the_limit_are_refused_and_counted() {
    let ca = TestCa::new("loopback");
    let (web, client) = (id("shop", "web"), id("tools", "client"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    certs.insert(ca.issue(&client, DAY));
    let handle = StateHandle::new(state("127.0.0.1"));
    let (inputs, registry) = support::loopback_inputs_with(handle, certs.clone(), |cfg| cfg.max_inbound_handshakes = 1);
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let backend = echo_backend().await;
    let key = PoolKey { src: client, dst: web, addr: pod.addrs.hbone };
    let target = ConnectTarget::new(backend, None);
    let echo = |mut s: hbone::tunnel::stream::H2Stream| async move {
        s.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await.unwrap().unwrap();
        assert_eq!(&got, b"ping");
        s
    };
    // A client already connected before the flood.
    let established = Pool::new(PoolConfig::default(), certs.clone(), None);
    let open = echo(established.connect(&key, &target).await.unwrap()).await;

    // (An opened tunnel's connection would be pooled and reused, so the first try of a new
    // client must be the refused one: the proxy is given time to accept the silent one first.)
    let pool = Pool::new(PoolConfig::default(), certs.clone(), None);
    let silent = tokio::net::TcpStream::connect(pod.addrs.hbone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pool.connect(&key, &target).await.is_err(), "a tunnel opened while the only turn was held");
    // What was already connected is untouched: its open tunnel carries on and its connection
    // takes new streams (no handshake).
    let open = echo(open).await;
    let _another =
        echo(established.connect(&key, &target).await.expect("a stream on the established connection")).await;
    drop(open);
    let line = "ztunnel_connections_denied_total{reporter=\"destination\",reason=\"hbone_handshake_overload\"} 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !ztunnel::metrics::encode(&registry).contains(line) {
        assert!(std::time::Instant::now() < deadline, "the refusal is not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(silent);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut opened = pool.connect(&key, &target).await;
    while opened.is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        opened = pool.connect(&key, &target).await;
    }
    echo(opened.expect("a tunnel once the turn is free")).await;
}

/// Garbage on the HBONE port is refused and counted by reason (the log takes at most a few
/// lines a second of it, however many come: `log_budget`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_are_counted_by_reason() {
    let Loopback { registry, _pod: pod, .. } = loopback("127.0.0.1", true).await;
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(pod.addrs.hbone).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await.expect("closed");
    }
    let line = "ztunnel_connections_denied_total{reporter=\"destination\",reason=\"hbone_tls_failed\"} 3";
    // The count follows the close by a moment (the serving task ends after the socket).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut metrics = ztunnel::metrics::encode(&registry);
    while !metrics.contains(line) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = ztunnel::metrics::encode(&registry);
    }
    assert!(metrics.contains(line), "{metrics}");
}
