//! The pods' DNS proxy on loopback, with real UDP and TCP sockets: mesh service names answered
//! from the state, everything else relayed to an upstream resolver (a small one of the test's
//! own) and its answer relayed back, SERVFAIL when no upstream answers, garbage dropped.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hbone::CertStore;
use hbone::testing::{TestCa, id};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use ztunnel::dns::message::{
    Answer, HEADER_LEN, OPT_UDP_SIZE, Query, TYPE_A, TYPE_AAAA, build_query, build_query_edns, read_answer,
};
use ztunnel::dns::{DnsConfig, MAX_POD_TCP_CONNECTIONS};
use ztunnel::proxy::{HostSockets, PodProxy};
use ztunnel::state::{StateConfig, StateHandle, file};

const WAIT: Duration = Duration::from_secs(5);

/// `reviews` with a v4 and a v6 address; `api.example.com` (a ServiceEntry host) in two
/// namespaces; `Legacy.Example.COM.`, a host as a user may spell it; `db`, headless (no
/// address: its pods are the upstream's to tell).
const STATE: &str = r#"
workloads:
- name: web
  namespace: shop
  uid: Kubernetes//Pod/shop/web-1
  workloadName: web
  serviceAccount: web
  addresses: ["10.244.1.5"]
  protocol: HBONE
services:
- name: reviews
  namespace: shop
  hostname: reviews.shop.svc.cluster.local
  addresses: ["10.96.0.5", {network: "", address: "fd00::5"}]
  ports: [{servicePort: 9080, targetPort: 9080}]
- name: api
  namespace: aaa
  hostname: api.example.com
  addresses: ["240.240.0.1"]
  ports: [{servicePort: 443, targetPort: 443}]
- name: api
  namespace: shop
  hostname: api.example.com
  addresses: ["240.240.0.2"]
  ports: [{servicePort: 443, targetPort: 443}]
- name: legacy
  namespace: shop
  hostname: Legacy.Example.COM.
  addresses: ["240.240.0.9"]
  ports: [{servicePort: 443, targetPort: 443}]
- name: db
  namespace: shop
  hostname: db.shop.svc.cluster.local
  addresses: []
  ports: [{servicePort: 5432, targetPort: 5432}]
"#;

/// The upstream's answer to everything.
const UPSTREAM_ADDR: [u8; 4] = [192, 0, 2, 1];

/// A resolver answering every query (UDP and TCP on one port) with [`UPSTREAM_ADDR`] and
/// counting them.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    upstream_with(|q| {
        let query = Query::parse(q).expect("the proxy relays the query as the pod sent it");
        Some(query.answer(&[IpAddr::from(UPSTREAM_ADDR)], 60, 512))
    })
    .await
}

/// A resolver (UDP and TCP on one port) answering each message with what `reply` makes of it
/// (`None`: silence; over TCP, the connection closed), and counting the messages.
async fn upstream_with(
    reply: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    upstream_delayed(reply, |_| Duration::ZERO).await
}

/// As [`upstream_with`], each answer sent `delay` of its query later.
async fn upstream_delayed(
    reply: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync + 'static,
    delay: impl Fn(&[u8]) -> Duration + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let reply = Arc::new(move |q: &[u8]| Some((reply(q)?, delay(q))));
    // The TCP listener takes the port UDP got, which another test's TCP socket may hold: then
    // another port is tried.
    let mut attempts = 0;
    let (udp, addr, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        match TcpListener::bind(addr).await {
            Ok(tcp) => break (udp, addr, tcp),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 32 => attempts += 1,
            Err(e) => panic!("binding the test upstream's TCP port {addr}: {e}"),
        }
    };
    let seen = Arc::new(AtomicUsize::new(0));
    let (n, r) = (seen.clone(), reply.clone());
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let udp = Arc::new(udp);
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            n.fetch_add(1, Ordering::SeqCst);
            if let Some((a, delay)) = r(&buf[..len]) {
                let udp = udp.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = udp.send_to(&a, from).await;
                });
            }
        }
    });
    let n = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let (n, r) = (n.clone(), reply.clone());
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while s.read_exact(&mut len).await.is_ok() {
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    n.fetch_add(1, Ordering::SeqCst);
                    let Some((a, delay)) = r(&q) else { return };
                    tokio::time::sleep(delay).await;
                    let mut out = (a.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

struct Pod {
    proxy: PodProxy,
    registry: Arc<prometheus_client::registry::Registry>,
    state: StateHandle,
}

/// Addresses of `many.shop.svc.cluster.local`: its answer over TCP is 64 KiB.
const MANY: usize = 4000;

fn pod(upstreams: Vec<SocketAddr>) -> Pod {
    pods(upstreams, Duration::from_millis(300), 1).pop().unwrap()
}

/// `n` pods of one ztunnel (the first is `web`, the others unknown to the control plane).
fn pods(upstreams: Vec<SocketAddr>, upstream_timeout: Duration, n: usize) -> Vec<Pod> {
    pods_with(n, |cfg| *cfg = DnsConfig { port: 0, upstreams, upstream_timeout, ..DnsConfig::default() })
}

fn pods_with(n: usize, dns: impl FnOnce(&mut DnsConfig)) -> Vec<Pod> {
    let many: Vec<String> = (0..MANY).map(|i| format!("\"10.100.{}.{}\"", i / 256, i % 256)).collect();
    let state = format!(
        "{STATE}- name: many\n  namespace: shop\n  hostname: many.shop.svc.cluster.local\n  addresses: [{}]\n  \
         ports: [{{servicePort: 80, targetPort: 80}}]\n",
        many.join(", ")
    );
    let state = StateHandle::new(file::parse(&state, StateConfig::default()).unwrap());
    let certs = CertStore::new(TestCa::new("dns").roots());
    let (inputs, registry) = support::loopback_inputs_with(state.clone(), certs, |cfg| {
        let mut d = DnsConfig { port: 0, ..DnsConfig::default() };
        dns(&mut d);
        cfg.dns = Some(d);
    });
    let registry = Arc::new(registry);
    (0..n)
        .map(|i| {
            let uid = if i == 0 {
                "Kubernetes//Pod/shop/web-1".to_owned()
            } else {
                format!("Kubernetes//Pod/shop/other-{i}")
            };
            let proxy = PodProxy::start(uid, id("shop", "web"), HostSockets, inputs.clone()).unwrap();
            Pod { proxy, registry: registry.clone(), state: state.clone() }
        })
        .collect()
}

impl Pod {
    fn udp_addr(&self) -> SocketAddr {
        // UDP and TCP listen on the loopback address the redirection delivers to.
        SocketAddr::from(([127, 0, 0, 1], self.proxy.addrs.dns.unwrap().port()))
    }

    async fn udp(&self, q: &[u8]) -> Option<Vec<u8>> {
        self.udp_within(q, Duration::from_secs(2)).await
    }

    /// The answer to `q`, if one comes within `wait`.
    async fn udp_within(&self, q: &[u8], wait: Duration) -> Option<Vec<u8>> {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(self.udp_addr()).await.unwrap();
        s.send(q).await.unwrap();
        let mut buf = vec![0u8; 65535];
        let n = tokio::time::timeout(wait, s.recv(&mut buf)).await.ok()?.unwrap();
        buf.truncate(n);
        Some(buf)
    }

    async fn ask(&self, id: u16, name: &str, qtype: u16) -> Answer {
        let a = read_answer(&self.udp(&build_query(id, name, qtype, None)).await.expect("an answer")).unwrap();
        assert_eq!(a.id, id);
        a
    }

    async fn tcp(&self, q: &[u8]) -> Answer {
        let mut s = self.connect().await;
        s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        s.write_all(q).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(WAIT, s.read_exact(&mut len)).await.unwrap().unwrap();
        let mut a = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut a).await.unwrap();
        read_answer(&a).unwrap()
    }

    fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.proxy.addrs.dns.unwrap().port()))
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.tcp_addr()).await.unwrap()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = ztunnel::metrics::encode(&self.registry);
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains("source_workload=\"web\",source_workload_namespace=\"shop\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

fn ips(a: &[&str]) -> Vec<IpAddr> {
    a.iter().map(|s| s.parse().unwrap()).collect()
}

#[tokio::test]
async fn mesh_services_are_answered_here_and_other_names_upstream() {
    let (up, seen) = upstream().await;
    let pod = pod(vec![up]);

    let a = pod.ask(1, "reviews.shop.svc.cluster.local.", TYPE_A).await;
    assert_eq!((a.rcode, a.authoritative, a.addrs.clone()), (0, true, ips(&["10.96.0.5"])), "{a:?}");
    let aaaa = pod.ask(2, "REVIEWS.shop.svc.cluster.local", TYPE_AAAA).await;
    assert_eq!(aaaa.addrs, ips(&["fd00::5"]), "names compare without case");
    // A name in two namespaces: the asking pod's namespace's service.
    assert_eq!(pod.ask(3, "api.example.com", TYPE_A).await.addrs, ips(&["240.240.0.2"]));
    assert_eq!(seen.load(Ordering::SeqCst), 0, "mesh names never go upstream");

    // Not a mesh service, a headless one, and a type the mesh does not answer: upstream's.
    for (i, (name, qtype)) in
        [("www.example.org", TYPE_A), ("db.shop.svc.cluster.local", TYPE_A), ("reviews.shop.svc.cluster.local", 16)]
            .into_iter()
            .enumerate()
    {
        let q = build_query(10 + i as u16, name, qtype, None);
        let a = read_answer(&pod.udp(&q).await.expect("relayed answer")).unwrap();
        assert_eq!(a.id, 10 + i as u16);
        if qtype == TYPE_A {
            assert_eq!(a.addrs, vec![IpAddr::from(UPSTREAM_ADDR)], "{name}");
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 3);

    // Over TCP: answered here, and relayed over TCP.
    assert_eq!(
        pod.tcp(&build_query(20, "reviews.shop.svc.cluster.local", TYPE_A, None)).await.addrs,
        ips(&["10.96.0.5"])
    );
    assert_eq!(
        pod.tcp(&build_query(21, "www.example.org", TYPE_A, None)).await.addrs,
        vec![IpAddr::from(UPSTREAM_ADDR)]
    );
    assert_eq!(seen.load(Ordering::SeqCst), 4);

    assert_eq!(pod.metric("istio_dns_requests_total"), 8.0);
    assert_eq!(pod.metric("istio_dns_upstream_requests_total"), 4.0);
    assert_eq!(pod.metric("istio_dns_upstream_failures_total"), 0.0);
}

#[tokio::test]
async fn no_upstream_answering_is_servfail_and_garbage_is_dropped() {
    // A port nobody answers on: the query times out there, then SERVFAIL.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let pod = pod(vec![silent.local_addr().unwrap()]);
    let started = std::time::Instant::now();
    let a = pod.ask(7, "www.example.org", TYPE_A).await;
    assert_eq!((a.rcode, a.addrs.len()), (2, 0), "SERVFAIL: {a:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "the upstream's deadline, not the client's");
    assert_eq!(pod.metric("istio_dns_upstream_failures_total"), 1.0);
    // Mesh names still resolve without any upstream.
    assert_eq!(pod.ask(8, "reviews.shop.svc.cluster.local", TYPE_A).await.addrs, ips(&["10.96.0.5"]));

    // Bytes that are not even a header get no answer, and break nothing.
    let quiet = Duration::from_millis(300);
    assert_eq!(pod.udp_within(b"\x01\x02\x03", quiet).await, None);
    // A response sent to the proxy is not answered (no reflection).
    let mut response = build_query(9, "reviews.shop.svc.cluster.local", TYPE_A, None);
    response[2] |= 0x80;
    assert_eq!(pod.udp_within(&response, quiet).await, None);
    // A datagram over the proxy's 4 KiB: FORMERR, not a cut query acted on.
    let mut big = build_query(11, "reviews.shop.svc.cluster.local", TYPE_A, None);
    big.resize(5000, 0);
    let a = read_answer(&pod.udp(&big).await.expect("an answer")).unwrap();
    assert_eq!((a.id, a.rcode), (11, 1), "{a:?}");
    assert_eq!(pod.ask(10, "reviews.shop.svc.cluster.local", TYPE_A).await.addrs, ips(&["10.96.0.5"]));
}

#[tokio::test]
async fn what_is_not_a_query_never_reaches_the_upstream() {
    let (up, seen) = upstream_with(|_| None).await;
    let pod = pod(vec![up]);
    let quiet = Duration::from_millis(500);
    // Shorter than a header, with and without the response bit: not a message a resolver
    // answers, nor one to have ztunnel send on to the upstream.
    for bytes in [&b"\x01\x02\x03"[..], b"\x01\x02\x01\x00\x00\x01", b"\x01\x02\x81\x80\x00\x01\x00\x00\x00\x00\x00"] {
        assert_eq!(pod.udp_within(bytes, quiet).await, None, "{bytes:?}");
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing relayed");
    assert_eq!(pod.metric("istio_dns_upstream_requests_total"), 0.0);
}

#[tokio::test]
async fn a_relayed_answer_too_long_for_the_client_is_truncated_over_udp() {
    // An upstream that pays no heed to the client's limit: 100 addresses (1.6 KB) whatever it
    // was asked. A resolver drops a datagram over the size it asked for, as the kernel may a
    // 1.6 KB one into its 512-byte buffer: it must get a TC answer and ask again over TCP.
    let many: Vec<IpAddr> = (0..100u8).map(|i| IpAddr::from([192, 0, 2, i])).collect();
    let m = many.clone();
    let (up, _) = upstream_with(move |q| Some(Query::parse(q).unwrap().answer(&m, 60, 65535))).await;
    let pod = pod(vec![up]);
    for (id, edns, limit) in [(40, None, 512), (41, Some(1232), 1232), (42, Some(100), 512)] {
        let q = build_query(id, "Big.Example.ORG", TYPE_A, edns);
        let bytes = pod.udp(&q).await.expect("an answer");
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let a = read_answer(&bytes).unwrap();
        assert_eq!((a.id, a.rcode, a.truncated), (id, 0, true), "{a:?}");
        assert_eq!(a.edns_udp_size, edns.map(|_| OPT_UDP_SIZE), "an EDNS query's answer has our OPT");
        let question = HEADER_LEN..q.len() - if edns.is_some() { 11 } else { 0 };
        assert_eq!(&bytes[question.clone()], &q[question], "the question as asked, case and all");
    }
    // Within the client's limit: as the upstream said.
    let a = read_answer(&pod.udp(&build_query(43, "big.example.org", TYPE_A, Some(4096))).await.unwrap()).unwrap();
    assert_eq!((a.truncated, a.addrs.clone()), (false, many.clone()));
    // Over TCP, all of it.
    let a = pod.tcp(&build_query(44, "big.example.org", TYPE_A, None)).await;
    assert_eq!((a.truncated, a.addrs), (false, many));
}

#[tokio::test]
async fn a_pod_flooding_the_upstream_leaves_other_pods_their_share() {
    // Names under slow.example.org never get an answer: each query of them holds its slot for
    // the whole upstream timeout.
    let (up, _) = upstream_with(|q| {
        let query = Query::parse(q).ok()?;
        let slow = query.name.as_deref()?.ends_with("slow.example.org");
        (!slow).then(|| query.answer(&[IpAddr::from(UPSTREAM_ADDR)], 60, 512))
    })
    .await;
    let mut pods = pods(vec![up], Duration::from_secs(3), 2);
    let (other, flooder) = (pods.pop().unwrap(), pods.pop().unwrap());
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..1000u16 {
        let q = build_query(i, &format!("n{i}.slow.example.org"), TYPE_A, None);
        s.send_to(&q, flooder.udp_addr()).await.unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = other.ask(1, "www.example.org", TYPE_A).await;
    assert_eq!((a.rcode, a.addrs), (0, vec![IpAddr::from(UPSTREAM_ADDR)]), "another pod's query is relayed");
}

#[tokio::test]
async fn flooding_pods_leave_a_quiet_pod_room_upstream() {
    // As in the test above: names under slow.example.org are never answered.
    let (up, _) = upstream_with(|q| {
        let query = Query::parse(q).ok()?;
        let slow = query.name.as_deref()?.ends_with("slow.example.org");
        (!slow).then(|| query.answer(&[IpAddr::from(UPSTREAM_ADDR)], 60, 512))
    })
    .await;
    // Ten flooders with 64 turns each would hold 640 upstream queries, past the node's 512.
    let mut pods = pods(vec![up], Duration::from_secs(3), 11);
    let flooders = pods.split_off(1);
    let quiet = pods.pop().unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..100u16 {
        for (p, flooder) in flooders.iter().enumerate() {
            let q = build_query(i, &format!("n{i}.p{p}.slow.example.org"), TYPE_A, None);
            s.send_to(&q, flooder.udp_addr()).await.unwrap();
        }
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = quiet.ask(1, "www.example.org", TYPE_A).await;
    assert_eq!((a.rcode, a.addrs), (0, vec![IpAddr::from(UPSTREAM_ADDR)]), "the quiet pod's query is relayed");
    // What the flooders were refused was answered, not dropped, and counted.
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(WAIT, s.recv_from(&mut buf)).await.expect("a refusal answered").unwrap();
    assert_eq!(read_answer(&buf[..n]).unwrap().rcode, 2, "SERVFAIL");
    let refused = ztunnel::metrics::encode(&quiet.registry)
        .lines()
        .find(|l| l.starts_with("ztunnel_connections_denied_total{reporter=\"source\",reason=\"dns_upstream_share\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(refused.is_some_and(|n| n > 0.0), "counted: {refused:?}");
}

/// `q` as a DNS-over-TCP frame.
fn frame(q: &[u8]) -> Vec<u8> {
    let mut f = (q.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(q);
    f
}

/// The next DNS-over-TCP message on `s`, `None` at its end (or when none comes within [`WAIT`]).
async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    tokio::time::timeout(WAIT, s.read_exact(&mut len)).await.ok()?.ok()?;
    let mut m = vec![0u8; usize::from(u16::from_be_bytes(len))];
    tokio::time::timeout(WAIT, s.read_exact(&mut m)).await.ok()?.ok()?;
    Some(m)
}

#[tokio::test]
async fn a_tcp_client_that_reads_no_answer_is_let_go_after_the_idle_timeout() {
    let idle = Duration::from_millis(300);
    let pod = pods_with(1, |d| d.tcp_idle = idle).pop().unwrap();
    // Queries for 64 KiB answers, more than the sockets' buffers hold, and no answer read: the
    // proxy's writes block. A connection held so would be held for good (and ztunnel's drain
    // would wait on it).
    let sent = 400;
    // A small receive buffer, so that the test does not rest on the host's buffer sizes.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(pod.tcp_addr()).await.unwrap();
    let q = frame(&build_query(1, "many.shop.svc.cluster.local", TYPE_A, None));
    s.write_all(&q.repeat(sent)).await.unwrap();
    tokio::time::sleep(idle * 5).await;
    let mut got = 0;
    while let Some(m) = read_frame(&mut s).await {
        assert_eq!(read_answer(&m).unwrap().addrs.len(), MANY);
        got += 1;
    }
    assert!(got < sent, "the proxy gave up on the connection ({got} answers of {sent})");
}

#[tokio::test]
async fn tcp_queries_pipelined_on_one_connection_are_all_answered() {
    let (up, seen) = upstream().await;
    let pod = pods_with(1, |d| {
        d.upstreams = vec![up];
        d.tcp_idle = Duration::from_secs(1);
    })
    .pop()
    .unwrap();
    // glibc's use-vc sends A and AAAA back to back on one connection; relayed and local answers
    // interleaved, each answered once, in whatever order they are ready (RFC 7766 §6.2.1.1).
    let mut s = pod.connect().await;
    let asked = [
        (1, "www.example.org", TYPE_A),
        (2, "reviews.shop.svc.cluster.local", TYPE_A),
        (3, "www.example.org", TYPE_AAAA),
        (4, "reviews.shop.svc.cluster.local", TYPE_AAAA),
    ];
    let all: Vec<u8> = asked.iter().flat_map(|(id, name, t)| frame(&build_query(*id, name, *t, None))).collect();
    s.write_all(&all).await.unwrap();
    let mut answered = Vec::new();
    for _ in asked {
        let a = read_answer(&read_frame(&mut s).await.expect("an answer")).unwrap();
        assert_eq!(a.rcode, 0, "{a:?}");
        answered.push(a.id);
    }
    answered.sort();
    assert_eq!(answered, asked.map(|(id, _, _)| id));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    // A zero-length message is no query: the connection ends, at once.
    let started = std::time::Instant::now();
    s.write_all(&[0, 0]).await.unwrap();
    assert_eq!(read_frame(&mut s).await, None);
    assert!(started.elapsed() < Duration::from_millis(600), "{:?}", started.elapsed());

    // A client that sends a length and no message, or half a length, is let go after the idle
    // timeout.
    for stall in [&[0u8, 64][..], &[0u8]] {
        let mut s = pod.connect().await;
        s.write_all(stall).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(read_frame(&mut s).await, None);
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }
}

#[tokio::test]
async fn a_local_answer_echoes_id_question_and_recursion_desired() {
    let (up, seen) = upstream().await;
    let pod = pod(vec![up]);
    // Resolvers that randomize the case of the name (0x20) compare the question byte for byte.
    let mut q = build_query(0xbeef, "ReViEwS.sHoP.svc.Cluster.Local", TYPE_A, None);
    q[2] &= !0x01; // RD clear
    let bytes = pod.udp(&q).await.unwrap();
    assert_eq!(&bytes[..2], &q[..2], "id");
    assert_eq!(bytes[2] & 0x87, 0x84, "QR, AA, no TC, RD as asked (clear)");
    assert_eq!(&bytes[4..6], &[0, 1], "one question");
    assert_eq!(&bytes[HEADER_LEN..q.len()], &q[HEADER_LEN..], "the question as asked");
    assert_eq!(read_answer(&bytes).unwrap().addrs, ips(&["10.96.0.5"]));

    // A host spelled with capitals and a trailing dot is the same DNS name (RFC 4343).
    for (id, name) in [(4, "legacy.example.com"), (5, "LEGACY.example.com.")] {
        let a = pod.ask(id, name, TYPE_A).await;
        assert_eq!((a.authoritative, a.addrs), (true, ips(&["240.240.0.9"])), "{name}");
    }

    // AAAA of a name with IPv4 addresses only: the name exists, NOERROR with no answer
    // (NODATA), never NXDOMAIN, which would have the client give up on its A answer too.
    let a = pod.ask(2, "api.example.com", TYPE_AAAA).await;
    assert_eq!((a.rcode, a.authoritative, a.addrs.len()), (0, true, 0), "{a:?}");

    // Class ANY (or any class but IN) is the upstream's to answer: our records are class IN.
    let mut any = build_query(3, "reviews.shop.svc.cluster.local", TYPE_A, None);
    let class = any.len() - 2;
    any[class..].copy_from_slice(&255u16.to_be_bytes());
    assert!(pod.udp(&any).await.is_some());
    assert_eq!(seen.load(Ordering::SeqCst), 1, "relayed");
}

#[tokio::test]
async fn another_type_of_a_mesh_name_the_upstream_does_not_know_is_nodata_not_nxdomain() {
    // The upstream knows no ServiceEntry host: NXDOMAIN for everything.
    let (up, seen) = upstream_with(|q| {
        let mut a = Query::parse(q).ok()?.answer(&[], 60, 512);
        a[3] |= 3;
        Some(a)
    })
    .await;
    let pod = pod(vec![up]);
    // NXDOMAIN says the name has no record of any type (RFC 2308 §5, RFC 8020): a cache in the
    // pod may answer the name's A query NXDOMAIN from it. The mesh answers A for these names,
    // so another type (HTTPS, TXT, MX) is NODATA.
    for (id, name, qtype) in [(1, "api.example.com", 65), (2, "Legacy.example.com", 16)] {
        let a = read_answer(&pod.udp(&build_query(id, name, qtype, None)).await.unwrap()).unwrap();
        assert_eq!((a.id, a.rcode, a.addrs.len()), (id, 0, 0), "{name}: {a:?}");
    }
    // Asked upstream first all the same: its answer, if it has one, is the one to give.
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    // A name the mesh does not know: the upstream's NXDOMAIN.
    let a = read_answer(&pod.udp(&build_query(3, "www.example.org", 16, None)).await.unwrap()).unwrap();
    assert_eq!((a.id, a.rcode), (3, 3));
}

#[tokio::test]
async fn a_slow_relayed_query_holds_back_no_local_answer_on_the_same_tcp_connection() {
    let slow = Duration::from_millis(800);
    let (up, seen) = upstream_delayed(
        |q| Some(Query::parse(q).ok()?.answer(&[IpAddr::from(UPSTREAM_ADDR)], 60, 512)),
        move |_| slow,
    )
    .await;
    let pod = pods(vec![up], Duration::from_secs(3), 1).pop().unwrap();
    let mut s = pod.connect().await;
    // The relayed query first, the mesh name right behind it.
    let mut both = frame(&build_query(1, "www.example.org", TYPE_A, None));
    both.extend(frame(&build_query(2, "reviews.shop.svc.cluster.local", TYPE_A, None)));
    let started = std::time::Instant::now();
    s.write_all(&both).await.unwrap();
    let first = read_answer(&read_frame(&mut s).await.expect("an answer")).unwrap();
    assert_eq!((first.id, first.addrs), (2, ips(&["10.96.0.5"])), "the mesh answer, first");
    assert!(started.elapsed() < slow, "not held behind the upstream: {:?}", started.elapsed());
    let second = read_answer(&read_frame(&mut s).await.expect("an answer")).unwrap();
    assert_eq!((second.id, second.addrs), (1, vec![IpAddr::from(UPSTREAM_ADDR)]));
    assert!(started.elapsed() >= slow);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Closing its side after asking still gets the client the answers under way.
    let mut s = pod.connect().await;
    s.write_all(&frame(&build_query(3, "www.example.org", TYPE_AAAA, None))).await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_answer(&read_frame(&mut s).await.expect("an answer")).unwrap().id, 3);
    assert_eq!(read_frame(&mut s).await, None);
}

#[tokio::test]
async fn a_query_of_an_edns_version_above_0_is_badvers_and_not_relayed() {
    let (up, seen) = upstream().await;
    let pod = pod(vec![up]);
    // A mesh name and another: neither answered nor relayed (RFC 6891 §6.1.3).
    for (id, name) in [(1, "reviews.shop.svc.cluster.local"), (2, "www.example.org")] {
        let q = build_query_edns(id, name, TYPE_A, Some(1232), 1);
        for a in [read_answer(&pod.udp(&q).await.expect("an answer")).unwrap(), pod.tcp(&q).await] {
            assert_eq!((a.id, a.rcode, a.extended_rcode), (id, 0, 16), "BADVERS: {a:?}");
            assert_eq!((a.edns_version, a.addrs.len()), (Some(0), 0), "{a:?}");
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 0, "nothing relayed");
    // Version 0: answered.
    let a = read_answer(&pod.udp(&build_query_edns(3, "www.example.org", TYPE_A, Some(1232), 0)).await.unwrap());
    assert_eq!(a.map(|a| (a.id, a.extended_rcode, a.addrs)), Some((3, 0, vec![IpAddr::from(UPSTREAM_ADDR)])));
}

#[tokio::test]
async fn a_pods_tcp_connections_past_the_limit_are_closed_and_other_pods_get_through() {
    let mut pods = pods(Vec::new(), Duration::from_millis(300), 2);
    let (other, pod) = (pods.pop().unwrap(), pods.pop().unwrap());
    let q = frame(&build_query(1, "reviews.shop.svc.cluster.local", TYPE_A, None));
    let answered = |m: Option<Vec<u8>>| m.and_then(|m| read_answer(&m)).is_some_and(|a| a.addrs == ips(&["10.96.0.5"]));
    // Each connection answered once, so the proxy holds it before the next is opened.
    let mut open = Vec::new();
    for _ in 0..MAX_POD_TCP_CONNECTIONS {
        let mut s = pod.connect().await;
        s.write_all(&q).await.unwrap();
        assert!(answered(read_frame(&mut s).await), "connection {}", open.len());
        open.push(s);
    }
    let mut extra = pod.connect().await;
    let started = std::time::Instant::now();
    // The query may or may not be taken by the kernel before the proxy closes the connection.
    let _ = extra.write_all(&q).await;
    assert_eq!(read_frame(&mut extra).await, None, "closed, unanswered");
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once, not let idle: {:?}", started.elapsed());
    let line = "ztunnel_connections_denied_total{reporter=\"source\",reason=\"dns_tcp_connections\"} 1";
    assert!(ztunnel::metrics::encode(&pod.registry).contains(line), "counted");
    // Those open still answer, and another pod of the node has its own connections.
    for s in &mut open {
        s.write_all(&q).await.unwrap();
        assert!(answered(read_frame(s).await));
    }
    let mut s = other.connect().await;
    s.write_all(&q).await.unwrap();
    assert!(answered(read_frame(&mut s).await), "another pod is served");
    // A connection closed makes room for one.
    drop(open.pop());
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut s = pod.connect().await;
        s.write_all(&q).await.unwrap();
        if answered(read_frame(&mut s).await) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no room made by a closed connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_host_the_control_plane_adds_is_answered_from_then_on() {
    let (up, seen) = upstream().await;
    let pod = pod(vec![up]);
    assert_eq!(pod.ask(1, "fresh.example.com", TYPE_A).await.addrs, vec![IpAddr::from(UPSTREAM_ADDR)]);
    assert_eq!(seen.load(Ordering::SeqCst), 1, "not a mesh name yet: relayed");
    let more = format!(
        "{STATE}- name: fresh\n  namespace: other\n  hostname: Fresh.Example.com.\n  addresses: [\"240.240.0.7\"]\n  \
         ports: [{{servicePort: 443, targetPort: 443}}]\n"
    );
    pod.state.store(file::parse(&more, StateConfig::default()).unwrap());
    let a = pod.ask(2, "FRESH.example.com", TYPE_A).await;
    assert_eq!((a.authoritative, a.addrs), (true, ips(&["240.240.0.7"])), "the new snapshot's hosts");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_tcp_connection_waiting_on_a_slow_upstream_is_not_idle() {
    let idle = Duration::from_millis(300);
    let slow = idle * 3;
    let (up, seen) = upstream_delayed(
        |q| Some(Query::parse(q).ok()?.answer(&[IpAddr::from(UPSTREAM_ADDR)], 60, 512)),
        move |_| slow,
    )
    .await;
    let pod = pods_with(1, |d| {
        d.upstreams = vec![up];
        d.upstream_timeout = Duration::from_secs(3);
        d.tcp_idle = idle;
    })
    .pop()
    .unwrap();
    // The client asks and has nothing more to send while the upstream takes three idle
    // timeouts: a query is outstanding, so the connection is not idle (RFC 7766 §6.2.3).
    let mut s = pod.connect().await;
    s.write_all(&frame(&build_query(1, "www.example.org", TYPE_A, None))).await.unwrap();
    // Past the idle timeout, with the first still outstanding, it asks again on the same
    // connection: a mesh name, answered at once.
    tokio::time::sleep(idle * 2).await;
    s.write_all(&frame(&build_query(2, "reviews.shop.svc.cluster.local", TYPE_A, None))).await.unwrap();
    let a = read_answer(&read_frame(&mut s).await.expect("the second query read and answered")).unwrap();
    assert_eq!((a.id, a.addrs), (2, ips(&["10.96.0.5"])));
    let a = read_answer(&read_frame(&mut s).await.expect("the slow answer")).unwrap();
    assert_eq!((a.id, a.addrs), (1, vec![IpAddr::from(UPSTREAM_ADDR)]));
    // The idle timeout counts from the last answer: a query sent right after it is read.
    tokio::time::sleep(idle / 3).await;
    s.write_all(&frame(&build_query(3, "reviews.shop.svc.cluster.local", TYPE_AAAA, None))).await.unwrap();
    let a = read_answer(&read_frame(&mut s).await.expect("the connection still open")).unwrap();
    assert_eq!((a.id, a.addrs), (3, ips(&["fd00::5"])));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // With nothing outstanding, an idle connection is closed after the idle timeout.
    let started = std::time::Instant::now();
    assert_eq!(read_frame(&mut s).await, None, "closed");
    let waited = started.elapsed();
    assert!(waited >= idle - Duration::from_millis(50) && waited < idle * 4, "closed after {waited:?}");
}
