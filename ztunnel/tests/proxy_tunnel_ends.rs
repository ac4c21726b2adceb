//! How a connection ends, end to end through ztunnel, two pods wired by a veth with the real
//! redirection in those enrolled: both (client pod → its outbound capture → HBONE → the server
//! pod's 15008 → the server application), the client only (passed through to a server outside
//! the mesh), the server only (a client outside the mesh on its plaintext capture). Each end's FIN reaches the other and the answer
//! sent after the client's FIN still arrives; a reset on either end resets the other (an
//! error, never a clean end it could take for a complete answer); a destination port nobody
//! listens on resets the client, counted by the side that refused (closed `CONNECT` by each
//! side that serves the connection). Needs root.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{DAY, TestCa, id};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::metrics::Metrics;
use ztunnel::netns::{Netns, ScratchNetns};
use ztunnel::proxy::netns_sockets::InPodSockets;
use ztunnel::proxy::{PodProxy, ProxyConfig, ProxyInputs};
use ztunnel::state::{StateConfig, StateHandle, file};

const CLIENT_IP: &str = "10.81.1.1";
const SERVER_IP: &str = "10.81.1.2";
/// Reads to the client's FIN, then answers with what it read and closes.
const ANSWER_AFTER_FIN: u16 = 8080;
/// Reads one chunk, then resets the connection.
const RESETS: u16 = 8081;
/// Reads until the connection ends and reports how it ended.
const REPORTS_END: u16 = 8082;
/// Nobody listens here.
const CLOSED: u16 = 8083;

/// How the server application saw a connection end.
#[derive(Debug, PartialEq)]
enum End {
    Fin,
    Reset,
    Other(ErrorKind),
}

fn listen(ns: &Netns, port: u16) -> tokio::net::TcpListener {
    let addr: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let l = ns.run(move || std::net::TcpListener::bind(addr)).unwrap().unwrap();
    l.set_nonblocking(true).unwrap();
    tokio::net::TcpListener::from_std(l).unwrap()
}

/// The server pod's application; what [`REPORTS_END`] saw comes out of the receiver.
fn server_app(ns: &Netns) -> (Vec<support::Task>, mpsc::UnboundedReceiver<End>) {
    let answer = listen(ns, ANSWER_AFTER_FIN);
    let resets = listen(ns, RESETS);
    let reports = listen(ns, REPORTS_END);
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = vec![
        support::Task(tokio::spawn(async move {
            while let Ok((mut s, _)) = answer.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).await.is_ok() {
                        let _ = s.write_all(format!("read {} bytes: ", got.len()).as_bytes()).await;
                        let _ = s.write_all(&got).await;
                        let _ = s.shutdown().await;
                    }
                });
            }
        })),
        support::Task(tokio::spawn(async move {
            while let Ok((mut s, _)) = resets.accept().await {
                tokio::spawn(async move {
                    let _ = s.read(&mut [0u8; 64]).await;
                    let _ = s.set_zero_linger();
                });
            }
        })),
        support::Task(tokio::spawn(async move {
            while let Ok((mut s, _)) = reports.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    let end = loop {
                        match s.read(&mut buf).await {
                            Ok(0) => break End::Fin,
                            Ok(_) => continue,
                            Err(e) if e.kind() == ErrorKind::ConnectionReset => break End::Reset,
                            Err(e) => break End::Other(e.kind()),
                        }
                    };
                    let _ = tx.send(end);
                });
            }
        })),
    ];
    (tasks, rx)
}

/// Which of the two pods are enrolled (captured, in the state, served by ztunnel).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mesh {
    /// Both: HBONE between them.
    Both,
    /// Only the client: its outbound is passed through to a server outside the mesh.
    ClientOnly,
    /// Only the server: the client outside the mesh reaches its inbound plaintext capture.
    ServerOnly,
}

impl Mesh {
    fn client(self) -> bool {
        self != Mesh::ServerOnly
    }

    fn server(self) -> bool {
        self != Mesh::ClientOnly
    }
}

fn state(mesh: Mesh) -> ztunnel::state::State {
    let mut yaml = String::from("workloads:\n");
    if mesh.client() {
        yaml += &format!(
            "- {{name: client, namespace: tools, serviceAccount: client, addresses: [\"{CLIENT_IP}\"], protocol: HBONE}}\n"
        );
    }
    if mesh.server() {
        // Behind a service whose ports lead to the application's (addressed by pod IP here:
        // the destination's telemetry still names the service).
        yaml += &format!(
            "- {{name: server, namespace: shop, serviceAccount: server, addresses: [\"{SERVER_IP}\"], protocol: HBONE,\n   \
             services: {{\"shop/server.shop.svc.cluster.local\": {{80: {ANSWER_AFTER_FIN}, 81: {RESETS}, 82: {REPORTS_END}}}}}}}\n\
             services:\n\
             - {{name: server, namespace: shop, hostname: server.shop.svc.cluster.local, addresses: [\"10.96.81.2\"],\n   \
             ports: [{{servicePort: 80, targetPort: {ANSWER_AFTER_FIN}}}, {{servicePort: 81, targetPort: {RESETS}}}, {{servicePort: 82, targetPort: {REPORTS_END}}}]}}\n"
        );
    }
    file::parse(&yaml, StateConfig::default()).unwrap()
}

/// Runs `f` on a blocking thread inside `ns`.
async fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.try_clone().unwrap();
    tokio::task::spawn_blocking(move || ns.run(f).unwrap()).await.unwrap()
}

fn dial(port: u16) -> TcpStream {
    let dst: SocketAddr = format!("{SERVER_IP}:{port}").parse().unwrap();
    let s = TcpStream::connect_timeout(&dst, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn count(metrics: &str, prefix: &str) -> u64 {
    metrics.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).sum()
}

/// [`count`] of the lines whose `response_flags` is `flags`.
fn count_flagged(metrics: &str, prefix: &str, flags: &str) -> u64 {
    let flags = format!("response_flags=\"{flags}\"");
    let lines = metrics.lines().filter(|l| l.contains(&flags)).collect::<Vec<_>>().join("\n");
    count(&lines, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_and_reset_cross_the_tunnel_both_ways() {
    ends(Mesh::Both).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_and_reset_cross_passthrough_both_ways() {
    ends(Mesh::ClientOnly).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_and_reset_cross_inbound_plaintext_both_ways() {
    ends(Mesh::ServerOnly).await;
}

async fn ends(mesh: Mesh) {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let client_ns = ScratchNetns::create(&format!("ends-c-{suffix}")).unwrap();
    let server_ns = ScratchNetns::create(&format!("ends-s-{suffix}")).unwrap();
    client_ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", server_ns.name()]).unwrap();
    for (ns, ip) in [(&client_ns, CLIENT_IP), (&server_ns, SERVER_IP)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]).unwrap();
        ns.ip(&["link", "set", "eth0", "up"]).unwrap();
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
    }
    if mesh.client() {
        redirect::install(client_ns.netns(), &RedirectConfig::default()).unwrap();
    }
    if mesh.server() {
        redirect::install(server_ns.netns(), &RedirectConfig::default()).unwrap();
    }
    let (_apps, mut ends) = server_app(server_ns.netns());

    let ca = TestCa::new("tunnel ends");
    let (client, server) = (id("tools", "client"), id("shop", "server"));
    let certs = CertStore::new(ca.roots());
    certs.insert(ca.issue(&client, DAY));
    certs.insert(ca.issue(&server, DAY));
    let mut registry = Registry::default();
    let inputs = ProxyInputs::new(
        StateHandle::new(state(mesh)),
        certs,
        Metrics::register(&mut registry),
        Arc::new(ProxyConfig { transparent_inbound: false, ..ProxyConfig::default() }),
        Default::default(),
        &tokio::runtime::Handle::current(),
    );
    let host = Arc::new(Netns::current().unwrap());
    let sockets = |ns: &ScratchNetns| InPodSockets::new(Arc::new(ns.netns().try_clone().unwrap()), host.clone());
    let _client_pod = mesh.client().then(|| {
        PodProxy::start("Kubernetes//Pod/tools/client".into(), client, sockets(&client_ns), inputs.clone()).unwrap()
    });
    let _server_pod = mesh
        .server()
        .then(|| PodProxy::start("Kubernetes//Pod/shop/server".into(), server, sockets(&server_ns), inputs).unwrap());
    let cns = client_ns.netns();

    // The client's FIN reaches the server, whose answer still comes back, then its own FIN.
    let answer = in_ns(cns, || {
        let mut s = dial(ANSWER_AFTER_FIN);
        s.write_all(b"question").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    })
    .await;
    assert_eq!(answer.expect("a clean end after the answer"), b"read 8 bytes: question");

    // The server resets: the client sees a reset, not a clean end.
    let seen = in_ns(cns, || {
        let mut s = dial(RESETS);
        s.write_all(b"x").unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    })
    .await;
    assert_eq!(seen.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset), "the server's reset reaches the client");

    // The client resets: the server sees a reset, not a clean end.
    in_ns(cns, move || {
        let mut s = dial(REPORTS_END);
        s.write_all(b"x").unwrap();
        // Give the byte time to reach the server application, so the reset is all that is left.
        std::thread::sleep(Duration::from_millis(300));
        socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
    })
    .await;
    let end = tokio::time::timeout(Duration::from_secs(10), ends.recv()).await.expect("the server saw an end");
    assert_eq!(end, Some(End::Reset), "the client's reset reaches the server");

    // And the client's FIN as a FIN.
    in_ns(cns, || {
        let mut s = dial(REPORTS_END);
        s.write_all(b"bye").unwrap();
    })
    .await;
    let end = tokio::time::timeout(Duration::from_secs(10), ends.recv()).await.expect("the server saw an end");
    assert_eq!(end, Some(End::Fin), "the client's FIN reaches the server as a FIN");

    // Nobody listens on the port: the server's ztunnel answers 503 and the client is reset.
    let refused = in_ns(cns, || {
        // The reset can come before the connect has returned (everything here is local and
        // fast): then the connect reports it.
        let dst: SocketAddr = format!("{SERVER_IP}:{CLOSED}").parse().unwrap();
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).map(|_| got)
    })
    .await;
    assert_eq!(refused.map_err(|e| e.kind()), Err(ErrorKind::ConnectionReset), "a refused destination resets");
    let metrics = ztunnel::metrics::encode(&registry);
    let refusals: &[&str] = match mesh {
        Mesh::Both => &[
            "{reporter=\"destination\",reason=\"workload_unreachable\"} 1",
            "{reporter=\"source\",reason=\"refused_by_destination\"} 1",
        ],
        Mesh::ClientOnly => &["{reporter=\"source\",reason=\"passthrough_connect_failed\"} 1"],
        Mesh::ServerOnly => &["{reporter=\"destination\",reason=\"workload_unreachable\"} 1"],
    };
    for refusal in refusals {
        assert!(metrics.contains(&format!("ztunnel_connections_denied_total{refusal}")), "{refusal}: {metrics}");
    }
    // Four connections were carried (closed without response flags) and one refused, each
    // counted once opened by each side that serves one; the refused one is closed `CONNECT`.
    let sides = [("source", mesh.client()), ("destination", mesh.server())];
    let served = sides.iter().filter(|(_, served)| *served).count() as u64;
    let carried = |m: &str| count_flagged(m, "istio_tcp_connections_closed_total{", "-");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut metrics = metrics;
    while carried(&metrics) < 4 * served && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        metrics = ztunnel::metrics::encode(&registry);
    }
    assert_eq!(carried(&metrics), 4 * served, "{metrics}");
    assert_eq!(count_flagged(&metrics, "istio_tcp_connections_closed_total{", "CONNECT"), served, "{metrics}");
    for (reporter, served) in sides {
        let n = |family: &str| count(&metrics, &format!("{family}{{reporter=\"{reporter}\""));
        let want = |v: u64| if served { v } else { 0 };
        assert_eq!(n("istio_tcp_connections_opened_total"), want(5), "{reporter}: {metrics}");
        // Client to server: "question", "x", "x", "bye"; back: the answer, 22 bytes.
        assert_eq!(n("istio_tcp_received_bytes_total"), want(13), "{reporter}: {metrics}");
        assert_eq!(n("istio_tcp_sent_bytes_total"), want(22), "{reporter}: {metrics}");
    }
    // The destination names the service its ports belong to (for the carried connections: the
    // refused one's port is no service's); the source, which dialled the pod's address, does not.
    let opened = |reporter: &str| {
        let prefix = format!("istio_tcp_connections_closed_total{{reporter=\"{reporter}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains("response_flags=\"-\""))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    for line in opened("destination") {
        assert!(line.contains("destination_service=\"server.shop.svc.cluster.local\""), "{line}");
        assert!(
            line.contains("destination_service_name=\"server\",")
                || line.contains("destination_service_name=\"server\"}"),
            "{line}"
        );
    }
    for line in opened("source") {
        assert!(line.contains("destination_service=\"unknown\""), "{line}");
    }
}
