//! The destination enforces the waypoint: a workload whose Address names a waypoint accepts
//! HBONE only from the waypoint's identity, and no plaintext at all.
//!
//! - On loopback (no namespaces): a pod's real HBONE listener refuses a CONNECT from another
//!   mesh identity (401, `bypassed_waypoint`), accepts the waypoint's, leaves a workload without
//!   a waypoint alone, and refuses everyone while its waypoint does not resolve (503,
//!   `waypoint_unresolved`).
//! - In namespaces (root): a pod with ztunnel's redirection, and a client outside the mesh on
//!   the other end of a veth dialling the pod's IP in plaintext: reset before the application
//!   sees it while the pod has a waypoint, delivered once it has none.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hbone::testing::{DAY, TestCa, echo_backend, id};
use hbone::tunnel::client::{ConnectError, ConnectTarget};
use hbone::tunnel::pool::{Pool, PoolConfig, PoolKey};
use hbone::{CertStore, Identity};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::metrics::Metrics;
use ztunnel::netns::{Netns, ScratchNetns};
use ztunnel::proxy::netns_sockets::InPodSockets;
use ztunnel::proxy::{HostSockets, PodProxy, ProxyConfig, ProxyInputs};
use ztunnel::state::{StateConfig, StateHandle, file};

const WAYPOINT_HOST: &str = "waypoint.shop.svc.cluster.local";

/// How `shop/web` (at `web_ip`) names its waypoint in a state.
enum Waypoint {
    /// No waypoint.
    None,
    /// The waypoint Service `shop/<hostname>`.
    Host(&'static str),
}

/// `shop/web` at `web_ip`, the waypoint pod `shop/waypoint-0` (service account `waypoint`)
/// behind Service `shop/waypoint`, and a client `tools/client`.
fn state(web_ip: &str, waypoint: Waypoint) -> ztunnel::state::State {
    file::parse(&state_yaml(web_ip, waypoint), StateConfig::default()).unwrap()
}

fn state_yaml(web_ip: &str, waypoint: Waypoint) -> String {
    let waypoint = match waypoint {
        Waypoint::None => String::new(),
        Waypoint::Host(h) => format!("  waypoint: {{hostname: {{namespace: shop, hostname: {h}}}}}\n"),
    };
    format!(
        r#"
workloads:
- name: web
  namespace: shop
  serviceAccount: web
  addresses: ["{web_ip}"]
  protocol: HBONE
{waypoint}- name: waypoint-0
  namespace: shop
  serviceAccount: waypoint
  addresses: ["10.79.0.9"]
  services: {{"shop/{WAYPOINT_HOST}": {{15008: 15008}}}}
- name: client
  namespace: tools
  serviceAccount: client
  addresses: ["10.79.0.10"]
  protocol: HBONE
services:
- name: waypoint
  namespace: shop
  hostname: {WAYPOINT_HOST}
  addresses: ["10.96.79.9"]
  ports: [{{servicePort: 15008, targetPort: 15008}}]
"#
    )
}

fn denied(metrics: &str, reporter: &str, reason: &str) -> u64 {
    let prefix = format!("ztunnel_connections_denied_total{{reporter=\"{reporter}\",reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0, |n| n.trim().parse().unwrap())
}

async fn echo_once(pool: &Pool, key: &PoolKey, backend: SocketAddr) -> Result<(), ConnectError> {
    let mut s = pool.connect(key, &ConnectTarget::new(backend, None)).await?;
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"ping");
    Ok(())
}

fn refused(r: Result<(), ConnectError>, status: u16, reason_has: &str) {
    match r {
        Err(ConnectError::Refused { status: s, reason, .. }) => {
            assert_eq!(s.as_u16(), status, "{reason}");
            assert!(reason.contains(reason_has), "{reason}");
        }
        Ok(()) => panic!("the CONNECT must be refused ({reason_has})"),
        Err(e) => panic!("unexpected: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hbone_to_a_workload_behind_a_waypoint_must_come_from_the_waypoint() {
    let ca = TestCa::new("inbound waypoint");
    let (web, client, waypoint) = (id("shop", "web"), id("tools", "client"), id("shop", "waypoint"));
    let certs = CertStore::new(ca.roots());
    for who in [&web, &client, &waypoint] {
        certs.insert(ca.issue(who, DAY));
    }
    let handle = StateHandle::new(state("127.0.0.1", Waypoint::Host(WAYPOINT_HOST)));
    let (inputs, registry) = support::loopback_inputs(handle.clone(), certs.clone());
    let pod = PodProxy::start("Kubernetes//Pod/shop/web".into(), web.clone(), HostSockets, inputs).unwrap();
    let backend = echo_backend().await;
    let pool = Pool::new(PoolConfig::default(), certs, None);
    let key = |src: &Identity| PoolKey { src: src.clone(), dst: web.clone(), addr: pod.addrs.hbone };

    // Another mesh identity dialling the pod directly: the waypoint's policy would be skipped.
    refused(echo_once(&pool, &key(&client), backend).await, 401, &format!("bypassed waypoint shop/{WAYPOINT_HOST}"));
    // The waypoint itself is let through, and bytes flow.
    echo_once(&pool, &key(&waypoint), backend).await.expect("the waypoint's identity is admitted");

    // Without a waypoint of its own, the workload takes anyone (its L4 policy permitting).
    handle.store(state("127.0.0.1", Waypoint::None));
    echo_once(&pool, &key(&client), backend).await.expect("no waypoint, no gate");

    // A waypoint this snapshot cannot resolve: nobody can be shown to be it, not even its pods.
    handle.store(state("127.0.0.1", Waypoint::Host("gone.shop.svc.cluster.local")));
    refused(echo_once(&pool, &key(&waypoint), backend).await, 503, "cannot be resolved");

    let m = ztunnel::metrics::encode(&registry);
    assert_eq!(denied(&m, "destination", "bypassed_waypoint"), 1, "{m}");
    assert_eq!(denied(&m, "destination", "waypoint_unresolved"), 1, "{m}");
    assert_eq!(denied(&m, "destination", "policy"), 0, "{m}");
    // Each was refused once (closed `DENY`) and accepted once; both counted opened (no flag).
    let counted_by = |who: &Identity, family: &str, flags: &str, n: &str| {
        m.lines().any(|l| {
            l.starts_with(family)
                && l.contains(&format!("source_principal=\"{who}\""))
                && l.contains(&format!("response_flags=\"{flags}\""))
                && l.ends_with(n)
        })
    };
    for who in [&waypoint, &client] {
        assert!(counted_by(who, "istio_tcp_connections_opened_total{", "-", " 2"), "{who}:\n{m}");
        assert!(counted_by(who, "istio_tcp_connections_closed_total{", "DENY", " 1"), "{who}:\n{m}");
    }
}

const POD_IP: &str = "10.79.1.2";
const OUTSIDER_IP: &str = "10.79.1.1";
const APP_PORT: u16 = 8080;

/// A pod namespace and, across a veth, a namespace outside the mesh.
struct World {
    pod: ScratchNetns,
    outsider: ScratchNetns,
}

fn world(test: &str) -> World {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let pod = ScratchNetns::create(&format!("{test}-pod-{suffix}")).unwrap();
    let outsider = ScratchNetns::create(&format!("{test}-out-{suffix}")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", outsider.name()]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["link", "set", "lo", "up"]).unwrap();
    outsider.ip(&["addr", "add", &format!("{OUTSIDER_IP}/24"), "dev", "eth0"]).unwrap();
    outsider.ip(&["link", "set", "eth0", "up"]).unwrap();
    World { pod, outsider }
}

/// The application: an echo server on APP_PORT inside the pod, counting the connections it
/// gets; it stops when the returned task guard is dropped.
fn app(pod: &Netns) -> (Arc<AtomicUsize>, support::Task) {
    let addr: SocketAddr = format!("0.0.0.0:{APP_PORT}").parse().unwrap();
    let listener = pod.run(move || std::net::TcpListener::bind(addr)).unwrap().unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (accepted, support::Task(task))
}

/// Plaintext from the outsider to the pod's application: what came back (an error when reset).
fn outsider_echo(outsider: &Netns) -> std::io::Result<Vec<u8>> {
    let dst: SocketAddr = format!("{POD_IP}:{APP_PORT}").parse().unwrap();
    outsider
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(b"hello");
            let mut b = [0u8; 5];
            let n = s.read(&mut b)?;
            Ok(b[..n].to_vec())
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_a_workload_behind_a_waypoint_is_reset() {
    let w = world("wp-in");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let ca = TestCa::new("inbound waypoint plaintext");
    let web = id("shop", "web");
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    let handle = StateHandle::new(state(POD_IP, Waypoint::Host(WAYPOINT_HOST)));
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
    let _proxy = PodProxy::start("Kubernetes//Pod/shop/web".into(), web, sockets, inputs).unwrap();
    let (accepted, _app) = app(w.pod.netns());

    let outsider = Arc::new(w.outsider.netns().try_clone().unwrap());
    let got = tokio::task::spawn_blocking({
        let o = outsider.clone();
        move || outsider_echo(&o)
    })
    .await
    .unwrap();
    assert!(!matches!(&got, Ok(b) if !b.is_empty()), "no bytes may come back: {got:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the application never saw the connection");
    let m = ztunnel::metrics::encode(&registry);
    assert_eq!(denied(&m, "destination", "bypassed_waypoint"), 1, "{m}");

    // The same client, once the pod has no waypoint: plaintext is accepted (PERMISSIVE).
    handle.store(state(POD_IP, Waypoint::None));
    let got = tokio::task::spawn_blocking(move || outsider_echo(&outsider)).await.unwrap();
    assert_eq!(got.expect("delivered"), b"hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// Policy holds for a plaintext connection's whole life too: one open while the pod allowed
/// it is reset once a new policy refuses it, and the application's end is closed as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_plaintext_the_new_policy_refuses_is_reset() {
    let w = world("revoke-plain");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let ca = TestCa::new("plaintext revoked");
    let web = id("shop", "web");
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&web, DAY));
    let handle = StateHandle::new(state(POD_IP, Waypoint::None));
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
    let _proxy = PodProxy::start("Kubernetes//Pod/shop/web".into(), web, sockets, inputs).unwrap();
    let (accepted, _app) = app(w.pod.netns());

    let dst: SocketAddr = format!("{POD_IP}:{APP_PORT}").parse().unwrap();
    let mut s =
        w.outsider.netns().run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(3))).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let echo = move |mut s: TcpStream| {
        tokio::task::spawn_blocking(move || {
            s.write_all(b"hello")?;
            let mut b = [0u8; 5];
            s.read_exact(&mut b)?;
            assert_eq!(&b, b"hello");
            Ok::<_, std::io::Error>(s)
        })
    };
    s = echo(s).await.unwrap().expect("delivered while PERMISSIVE allows it");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Only 10.9.9.9 may connect now: the open connection is reset, not left running.
    let only = "policies:\n- {name: only-from, namespace: shop, scope: NAMESPACE, action: ALLOW, groups: [{rules: [{matches: [{sourceIps: [10.9.9.9/32]}]}]}]}\n";
    let yaml = state_yaml(POD_IP, Waypoint::None) + only;
    handle.store(file::parse(&yaml, StateConfig::default()).unwrap());
    let got = tokio::task::spawn_blocking(move || {
        let mut b = [0u8; 5];
        s.read(&mut b)
    })
    .await
    .unwrap();
    let e = got.expect_err("reset, not a clean end or a timeout");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    let m = ztunnel::metrics::encode(&registry);
    assert_eq!(denied(&m, "destination", "policy_revoked"), 1, "{m}");
}
