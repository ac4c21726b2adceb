//! The DNS proxy on each pod's port 15053, where the node agent's `--capture-dns` sends the
//! pod's DNS (UDP and TCP port 53).
//!
//! A query for the hostname of a service the mesh knows (`reviews.shop.svc.cluster.local`), of
//! type A or AAAA, is answered here with the service's virtual IPs on this network, so a pod
//! resolves mesh services (also those no cluster DNS serves, such as Istio ServiceEntry hosts)
//! with no round trip. Everything else is relayed, bytes unchanged, to the upstream resolvers
//! (`--dns-upstream`, by default the `nameserver`s of ztunnel's own `/etc/resolv.conf`, as
//! Istio's ztunnel does) from ztunnel's own network namespace, and the upstream's answer is
//! relayed back, with two exceptions: over UDP, one longer than the client takes is cut to a
//! TC answer, so the client asks again over TCP; and the upstream's NXDOMAIN for a name the
//! mesh answers A for (another type of a ServiceEntry host) is NODATA. No upstream answering
//! is SERVFAIL, never silence, so the pod's resolver moves on at once. A pod has at most
//! [`MAX_POD_IN_FLIGHT`] queries answered at once, and at most [`MAX_POD_TCP_CONNECTIONS`] TCP
//! connections open; the last [`RESERVED_IN_FLIGHT`] of the node's upstream slots go only to
//! pods relaying fewer than [`POD_RESERVED_IN_FLIGHT`] queries, so that pods flooding cannot
//! take the slots of all (a query refused one is SERVFAIL, counted with why). Queries
//! pipelined on one TCP connection are answered concurrently, each as soon as it is ready
//! (RFC 7766 §6.2.1.1), and a query of an EDNS version above 0 is answered BADVERS (RFC 6891).
//!
//! Clients search their domains in turn (`reviews.shop.svc.cluster.local` is what a pod in `shop`
//! asks first for `reviews`), so names are matched exactly (without case, RFC 4343), with no
//! search of our own. A name in several namespaces (Istio ServiceEntry hosts may be) is
//! answered with the asking pod's namespace's service, else the first namespace's in order.
//!
//! The sockets are bound to the loopback addresses the redirection delivers to, and nowhere
//! else. UDP answers so leave from the address the query was delivered to, and conntrack turns
//! their source back into the resolver the pod asked; a socket on the wildcard address would
//! answer from the pod's own address, which the pod's resolver drops.

mod hosts;
pub mod message;
mod upstream;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::log_budget::LogBudget;
use crate::metrics::Reporter;
use crate::proxy::{Pod, PodSockets};
use message::{CLASS_IN, Query, Rcode, TYPE_A, TYPE_AAAA};

/// The pod port of the DNS proxy (Istio's).
pub const DNS_PORT: u16 = 15053;
/// TTL of the answers for mesh services: short, as a service's addresses may change.
pub const ANSWER_TTL: u32 = 30;
/// Upstream queries in flight at once, all pods together; past it a query gets SERVFAIL, so a
/// pod that floods cannot hold every socket ztunnel may open.
pub const MAX_IN_FLIGHT: usize = 512;
/// The last of the [`MAX_IN_FLIGHT`] slots, which only a pod relaying fewer than
/// [`POD_RESERVED_IN_FLIGHT`] queries may take; past its share a query is SERVFAIL (counted as
/// `ztunnel_connections_denied_total{reason="dns_upstream_share"}`).
///
/// Each pod's [`MAX_POD_IN_FLIGHT`] turns alone let 8 pods hold all 512 (8 × 64), and every
/// other pod's relayed query was SERVFAIL until theirs timed out. Now the slots a pod holds past
/// its first 2 were each taken while more than 256 were free, so together they are at most 256
/// (4 flooding pods' 64); with the first 2 of each pod, at most `256 + 2 n` are held when `n`
/// pods relay. A pod's query so finds a slot while fewer than 128 other pods relay at once,
/// more than a node runs (Kubernetes' default is 110 pods), whatever the others ask and in
/// whatever order. 2 is the A and AAAA a resolver asks together; a pod alone still has its
/// 64 turns' worth of the open 256.
pub const RESERVED_IN_FLIGHT: usize = MAX_IN_FLIGHT / 2;
/// Relayed queries of a pod that may take one of the [`RESERVED_IN_FLIGHT`] slots.
pub const POD_RESERVED_IN_FLIGHT: usize = 2;
/// Queries of one pod being answered at once, UDP and TCP together. Past it the pod's UDP
/// socket is not read until one is answered (the excess waits in the pod's own socket buffer,
/// and what overflows it the kernel drops), and its TCP queries wait their turn: a pod that
/// floods can take no more than this of [`MAX_IN_FLIGHT`], nor have ztunnel make a task and a
/// buffer for every datagram it sends. Answering the excess SERVFAIL instead would still be
/// work for each datagram of a flood.
pub const MAX_POD_IN_FLIGHT: usize = 64;
/// TCP connections of one pod open at once, over all its DNS listeners; past it a new one is
/// closed at once, unread (counted as `ztunnel_connections_denied_total{reason="dns_tcp_connections"}`).
/// A resolver opens a connection for a query or a few (glibc's `use-vc`, Go's resolver after a
/// truncated answer) and closes it, so a pod has a few at a time. Each connection costs a task,
/// a socket and the message it is reading (up to 64 KiB); and more connections than the pod's
/// [`MAX_POD_IN_FLIGHT`] turns could only wait for one, so that is the bound.
pub const MAX_POD_TCP_CONNECTIONS: usize = MAX_POD_IN_FLIGHT;
/// The largest UDP query read: a stub resolver's queries are a few hundred bytes (a name of at
/// most 255, EDNS options); a datagram this long or longer is answered FORMERR.
const MAX_QUERY: usize = 4096;
/// How long a TCP connection may stay idle, silent with no query of it outstanding (RFC 7766
/// §6.2.3: a few seconds; glibc's and Go's resolvers ask at once once connected), or take to
/// send a message it has begun or to read an answer.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// DNS proxy settings, part of [`crate::proxy::ProxyConfig`].
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The pod port (0 in loopback tests: any free port).
    pub port: u16,
    /// Resolvers for what the mesh does not answer, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// How long each upstream has to answer.
    pub upstream_timeout: Duration,
    /// How long a TCP connection may stay silent with no query of it outstanding, or take to
    /// send a message it has begun or to read an answer.
    pub tcp_idle: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            port: DNS_PORT,
            upstreams: Vec::new(),
            upstream_timeout: Duration::from_secs(2),
            tcp_idle: TCP_IDLE,
        }
    }
}

/// The `nameserver` addresses of a `resolv.conf`, on port 53.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            let addr = rest.split_whitespace().next()?;
            // A link-local IPv6 server may carry a zone (`fe80::1%eth0`), which a SocketAddr
            // cannot hold without its interface index; such servers are left out.
            addr.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// Labels of the DNS metrics: the asking pod.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The pod's workload name, `unknown` until the control plane has named it.
    pub source_workload: String,
    /// The pod's namespace.
    pub source_workload_namespace: String,
}

/// Istio's DNS metric names.
#[derive(Debug)]
pub struct DnsMetrics {
    requests: Family<DnsLabels, Counter>,
    upstream_requests: Family<DnsLabels, Counter>,
    upstream_failures: Family<DnsLabels, Counter>,
    upstream_duration: Histogram,
}

impl Default for DnsMetrics {
    fn default() -> Self {
        DnsMetrics {
            requests: Family::default(),
            upstream_requests: Family::default(),
            upstream_failures: Family::default(),
            // 1 ms .. ~4 s.
            upstream_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 13,
            )),
        }
    }
}

impl DnsMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> DnsMetrics {
        let m = DnsMetrics::default();
        registry.register("istio_dns_requests", "DNS queries received from pods", m.requests.clone());
        registry.register(
            "istio_dns_upstream_requests",
            "DNS queries relayed to an upstream resolver",
            m.upstream_requests.clone(),
        );
        registry.register(
            "istio_dns_upstream_failures",
            "Relayed DNS queries no upstream resolver answered",
            m.upstream_failures.clone(),
        );
        registry.register(
            "istio_dns_upstream_request_duration_seconds",
            "Time upstream resolvers took to answer",
            m.upstream_duration.clone(),
        );
        m
    }
}

/// What every pod's DNS proxy shares: settings, the bound on upstream queries, metrics.
#[derive(Debug)]
pub struct Dns {
    cfg: DnsConfig,
    /// Upstream queries in flight, all pods together ([`MAX_IN_FLIGHT`]).
    relaying: AtomicUsize,
    /// Each pod's limits by pod uid, held by the pod's serving tasks and gone with the last of
    /// them.
    pods: Mutex<HashMap<String, Weak<PodLimits>>>,
    /// The mesh's hostnames, indexed for the latest snapshot a query met.
    hosts: hosts::Hosts,
}

/// What one pod may hold of the proxy, shared by its UDP sockets and TCP connections.
#[derive(Debug)]
struct PodLimits {
    /// Queries being answered ([`MAX_POD_IN_FLIGHT`]); over TCP a turn is held until the
    /// answer is written, so it bounds the answers a connection has ztunnel hold too.
    turns: Arc<Semaphore>,
    /// Open TCP connections ([`MAX_POD_TCP_CONNECTIONS`]).
    connections: Arc<Semaphore>,
    /// Upstream slots the pod holds, and those it is asking for, of [`Dns::relaying`].
    relaying: AtomicUsize,
}

/// Why a relayed query got no upstream slot, as counted in `ztunnel_connections_denied_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoSlot {
    /// All [`MAX_IN_FLIGHT`] are held.
    Full,
    /// Only [`RESERVED_IN_FLIGHT`] are left, and the pod holds its share of them already.
    Share,
}

impl NoSlot {
    fn reason(self) -> &'static str {
        match self {
            NoSlot::Full => "dns_upstream_slots",
            NoSlot::Share => "dns_upstream_share",
        }
    }
}

/// One upstream slot held by a pod's query, given back when dropped.
struct UpstreamSlot<'a> {
    dns: &'a Dns,
    pod: &'a PodLimits,
}

impl Drop for UpstreamSlot<'_> {
    fn drop(&mut self) {
        self.dns.relaying.fetch_sub(1, Ordering::AcqRel);
        self.pod.relaying.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Dns {
    /// The shared part of the proxy.
    pub fn new(cfg: DnsConfig) -> Dns {
        Dns { cfg, relaying: AtomicUsize::new(0), pods: Mutex::default(), hosts: hosts::Hosts::default() }
    }

    /// The limits of the pod `uid`, shared by its UDP sockets and TCP connections.
    fn pod_limits(&self, uid: &str) -> Arc<PodLimits> {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(limits) = pods.get(uid).and_then(Weak::upgrade) {
            return limits;
        }
        // A new pod (or one served again): those no longer served go now.
        pods.retain(|_, w| w.strong_count() > 0);
        let limits = Arc::new(PodLimits {
            turns: Arc::new(Semaphore::new(MAX_POD_IN_FLIGHT)),
            connections: Arc::new(Semaphore::new(MAX_POD_TCP_CONNECTIONS)),
            relaying: AtomicUsize::new(0),
        });
        pods.insert(uid.to_owned(), Arc::downgrade(&limits));
        limits
    }

    /// One of the [`MAX_IN_FLIGHT`] upstream slots for a query of `pod`, unless all are held, or
    /// only the [`RESERVED_IN_FLIGHT`] are left and `pod` holds [`POD_RESERVED_IN_FLIGHT`].
    fn upstream_slot<'a>(&'a self, pod: &'a PodLimits) -> Result<UpstreamSlot<'a>, NoSlot> {
        // Counted before the slot is taken, so that the pod's queries asking at the same time
        // each see the others, and no two take the pod's last reserved one.
        let held = pod.relaying.fetch_add(1, Ordering::AcqRel);
        let taken = self.relaying.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            let free = MAX_IN_FLIGHT.saturating_sub(used);
            (free > RESERVED_IN_FLIGHT || (free > 0 && held < POD_RESERVED_IN_FLIGHT)).then_some(used + 1)
        });
        match taken {
            Ok(_) => Ok(UpstreamSlot { dns: self, pod }),
            Err(used) => {
                pod.relaying.fetch_sub(1, Ordering::AcqRel);
                Err(if used >= MAX_IN_FLIGHT { NoSlot::Full } else { NoSlot::Share })
            }
        }
    }

    /// The settings.
    pub fn config(&self) -> &DnsConfig {
        &self.cfg
    }
}

/// How a query was carried: an answer over UDP must fit the client's limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

impl<S: PodSockets> Pod<S> {
    fn dns_labels(&self) -> DnsLabels {
        let state = self.inputs.state.load();
        let w = state.workload_by_uid(&self.uid);
        DnsLabels {
            source_workload: w.map_or_else(|| "unknown".to_owned(), |w| w.workload_name.clone()),
            source_workload_namespace: self.identity.namespace().to_owned(),
        }
    }

    /// The answer to `msg`, or `None` when there is nothing to answer (a response, or bytes
    /// that are not even a header: a resolver would drop them too).
    async fn dns_answer(&self, dns: &Dns, limits: &PodLimits, msg: &[u8], transport: Transport) -> Option<Vec<u8>> {
        // Checked before anything is relayed: ztunnel must not carry a pod's stray bytes or its
        // responses to the upstream, which would answer them (FORMERR) as if ztunnel had asked.
        if !answerable(msg) {
            return None;
        }
        let id = message::id(msg)?;
        let metrics = &self.inputs.metrics.dns;
        let labels = self.dns_labels();
        metrics.requests.get_or_create(&labels).inc();
        let query = match Query::parse(msg) {
            Ok(q) => q,
            // Not ours to judge (several questions, a compressed name, another opcode): the
            // upstream resolver answers as it would have without us.
            Err(e) => {
                tracing::debug!(pod = %self.uid, id, error = %e, "DNS message relayed unread");
                // Its limit unread, the answer goes back as the upstream sent it.
                let max = usize::from(u16::MAX);
                return self
                    .dns_relay(dns, limits, msg, transport, max, &labels)
                    .await
                    .or_else(|| message::format_error(msg));
            }
        };
        // RFC 6891 §6.1.3: a version we do not speak is BADVERS, neither answered nor relayed
        // (the upstream might speak it, and the client would then take an answer ztunnel's OPT
        // handling never saw).
        if query.unsupported_edns_version() {
            return Some(query.bad_version());
        }
        let limit = if transport == Transport::Tcp { usize::from(u16::MAX) } else { query.udp_limit() };
        let mesh = |query: &Query<'_>| {
            let name = query.name.as_deref().filter(|_| query.qclass == CLASS_IN)?;
            let state = self.inputs.state.load();
            hosts::service_addresses(&state, &dns.hosts.of(&state), name, self.identity.namespace())
        };
        if matches!(query.qtype, TYPE_A | TYPE_AAAA)
            && let Some(addrs) = mesh(&query)
        {
            return Some(query.answer(&addrs, ANSWER_TTL, limit));
        }
        match self.dns_relay(dns, limits, msg, transport, limit, &labels).await {
            // Other types of a mesh name are the upstream's to answer (a Kubernetes service's
            // SRV), but an upstream that does not know the name (a ServiceEntry host) says
            // NXDOMAIN: no record of any type, which a cache in the pod may then answer the
            // name's A query with (RFC 2308 §5, RFC 8020). The name exists: NODATA.
            Some(answer) if message::rcode(&answer) == Some(message::NXDOMAIN) && mesh(&query).is_some() => {
                Some(query.answer(&[], ANSWER_TTL, limit))
            }
            // An upstream that answers past the size the query asked for (or, without EDNS, past
            // 512 bytes) would have the client drop the datagram and wait for its timeout.
            Some(answer) if answer.len() > limit => Some(query.truncated(&answer)),
            Some(answer) => Some(answer),
            None => Some(query.error(Rcode::ServFail)),
        }
    }

    /// `msg` relayed upstream; `None` when no upstream answered (counted, logged at debug: a
    /// pod asking for names that do not resolve is not ztunnel's trouble) or it got no upstream
    /// slot (counted with the reason, logged as a warning: the node's or the pod's share of
    /// upstream queries is used up).
    async fn dns_relay(
        &self,
        dns: &Dns,
        limits: &PodLimits,
        msg: &[u8],
        transport: Transport,
        limit: usize,
        labels: &DnsLabels,
    ) -> Option<Vec<u8>> {
        let metrics = &self.inputs.metrics.dns;
        metrics.upstream_requests.get_or_create(labels).inc();
        let started = std::time::Instant::now();
        let answer = match dns.upstream_slot(limits) {
            Ok(_slot) => match transport {
                Transport::Udp => upstream::udp(&dns.cfg, msg, limit).await,
                Transport::Tcp => upstream::tcp(&dns.cfg, msg).await,
            },
            Err(why) => {
                /// A flood is refused a slot for each query: a line each would be a flood too.
                static NO_SLOT_LOG: LogBudget = LogBudget::per_second(10);
                self.inputs.metrics.denied(Reporter::Source, why.reason());
                if let Some(skipped) = NO_SLOT_LOG.admit() {
                    tracing::warn!(
                        pod = %self.uid,
                        reason = why.reason(),
                        in_flight = limits.relaying.load(Ordering::Relaxed),
                        skipped,
                        "DNS query not relayed (SERVFAIL): no upstream slot for the pod"
                    );
                }
                Err(upstream::UpstreamError::Busy)
            }
        };
        match answer {
            Ok(a) => {
                metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
                Some(a)
            }
            Err(e) => {
                metrics.upstream_failures.get_or_create(labels).inc();
                tracing::debug!(pod = %self.uid, error = %e, "DNS query not answered upstream");
                None
            }
        }
    }
}

/// Whether `msg` is a message to answer: a header at least, and not a response.
fn answerable(msg: &[u8]) -> bool {
    msg.len() >= message::HEADER_LEN && msg[2] & 0x80 == 0
}

/// A pod's DNS sockets.
pub(crate) struct Bound {
    /// UDP, on 127.0.0.1 (and ::1 where the pod has IPv6).
    pub udp: Vec<std::net::UdpSocket>,
    /// TCP, on the same addresses.
    pub tcp: Vec<std::net::TcpListener>,
}

/// Binds the pod's DNS sockets (inside the pod) on the loopback addresses the redirection
/// delivers to, and nowhere else: the proxy is for the pod's own resolver, not a resolver (nor
/// a relay to the node's upstream) for whoever can reach the pod. IPv6 is bound where the pod
/// has it.
pub(crate) fn bind<S: PodSockets>(sockets: &S, port: u16) -> io::Result<Bound> {
    sockets.run(move || -> io::Result<_> {
        // Port 0 (tests): the other sockets take the port UDP got, which another socket of the
        // host may hold for TCP or IPv6; then another port is tried. A pod's fixed port is
        // tried once.
        let attempts = if port == 0 { 32 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            match bind_all(port) {
                Err(e) if port == 0 && e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| io::ErrorKind::AddrInUse.into()))
    })?
}

fn bind_all(port: u16) -> io::Result<Bound> {
    // SO_REUSEPORT on the pod's fixed port, so that a new ztunnel binds beside the old one; not
    // on a port picked for a test, which must not join another test's group of the same port.
    let reuse = port != 0;
    let v4 = udp_socket(SocketAddr::from(([127, 0, 0, 1], port)), reuse)?;
    let port = v4.local_addr()?.port();
    let tcp = vec![tcp_listener(SocketAddr::from(([127, 0, 0, 1], port)), reuse)?];
    let mut bound = Bound { udp: vec![v4], tcp };
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let no_ipv6 = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT));
    match udp_socket(v6, reuse) {
        Ok(s) => bound.udp.push(s),
        Err(e) if no_ipv6(&e) => return Ok(bound),
        Err(e) => return Err(e),
    }
    bound.tcp.push(tcp_listener(v6, reuse)?);
    Ok(bound)
}

fn udp_socket(addr: SocketAddr, reuse: bool) -> io::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::DGRAM, None)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(reuse)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr, reuse: bool) -> io::Result<std::net::TcpListener> {
    if reuse {
        return crate::proxy::sockets::reuseport_listener(addr);
    }
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves a pod's DNS over UDP until the task is dropped; each query is answered on its own
/// task, so a slow upstream holds up no other query, [`MAX_POD_IN_FLIGHT`] at most.
pub(crate) async fn serve_udp<S: PodSockets>(pod: Arc<Pod<S>>, dns: Arc<Dns>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let limits = dns.pod_limits(&pod.uid);
    loop {
        let Ok(turn) = limits.turns.clone().acquire_owned().await else { return };
        // The buffer is made once a datagram is there: an idle pod (most of them) holds none.
        if let Err(e) = socket.readable().await {
            tracing::warn!(pod = %pod.uid, error = %e, "DNS socket failed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let mut msg = vec![0u8; MAX_QUERY];
        let (n, client) = match socket.try_recv_from(&mut msg) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::warn!(pod = %pod.uid, error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        msg.truncate(n);
        let (pod, dns, socket, limits) = (pod.clone(), dns.clone(), socket.clone(), limits.clone());
        tokio::spawn(async move {
            let _turn = turn;
            // A datagram that filled the buffer may have been cut: not a query to act on.
            let answer = if n == MAX_QUERY {
                message::format_error(&msg)
            } else {
                pod.dns_answer(&dns, &limits, &msg, Transport::Udp).await
            };
            if let Some(answer) = answer
                && let Err(e) = socket.send_to(&answer, client).await
            {
                tracing::debug!(pod = %pod.uid, %client, error = %e, "DNS answer not sent");
            }
        });
    }
}

/// The next message of a DNS-over-TCP stream (its 2-byte length, then the message); `None` at
/// the stream's end, or when the client takes longer than `idle` to send the message after its
/// length. How long the length may take is the caller's to bound: a connection waiting on its
/// own outstanding queries is not idle.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R, idle: Duration) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.ok()?;
    let len = u16::from_be_bytes(len);
    // The buffer grows with what arrives, not with what the length says: a pod's connections,
    // each announcing 64 KiB and sending nothing more, would otherwise cost ztunnel 64 KiB each.
    let mut msg = Vec::new();
    let n = tokio::time::timeout(idle, r.take(u64::from(len)).read_to_end(&mut msg)).await.ok()?.ok()?;
    (n == usize::from(len)).then_some(msg)
}

/// Serves one DNS-over-TCP connection until the client closes it, stays silent for
/// [`DnsConfig::tcp_idle`] with none of its queries outstanding, reads no answer for as long, or
/// the pod has [`MAX_POD_TCP_CONNECTIONS`] open already.
///
/// The idle timeout counts only while no query of the connection is outstanding (RFC 7766
/// §6.2.3): a client that asked and waits on a slow upstream, with nothing more to send, may
/// still ask again once that timeout has passed, and has the whole timeout for its next query
/// after the last answer. This holds a connection no longer than its queries do: each is
/// answered, or given up on, within the upstream deadline ([`DnsConfig::upstream_timeout`] for
/// each upstream, 2 s by default) plus the time its answer may take to be read (the idle
/// timeout), so a client keeps a connection only by asking, as it could by asking every few
/// seconds anyway.
///
/// Pipelined queries are answered concurrently, each as soon as it is ready (RFC 7766
/// §6.2.1.1): a query relayed to a slow upstream holds back no other, and the answers may go out
/// in another order than asked (the message id pairs them). Each query takes one of the pod's
/// turns ([`MAX_POD_IN_FLIGHT`]) before it is read further, and gives it back once its answer is
/// written, so a client that asks and does not read has ztunnel hold no more answers than that.
/// When the client stops asking, the answers under way are still sent.
pub(crate) async fn serve_tcp<S: PodSockets>(pod: Arc<Pod<S>>, dns: Arc<Dns>, tcp: TcpStream) {
    /// A pod opening connections in a loop would otherwise have ztunnel write a line for each.
    static REFUSED_LOG: LogBudget = LogBudget::per_second(10);
    let limits = dns.pod_limits(&pod.uid);
    let Ok(_connection) = limits.connections.clone().try_acquire_owned() else {
        pod.inputs.metrics.denied(Reporter::Source, "dns_tcp_connections");
        if let Some(skipped) = REFUSED_LOG.admit() {
            tracing::warn!(
                pod = %pod.uid,
                limit = MAX_POD_TCP_CONNECTIONS,
                skipped,
                "DNS TCP connection closed: the pod has as many open as it may"
            );
        }
        return;
    };
    let idle = dns.cfg.tcp_idle;
    let (mut reader, writer) = tcp.into_split();
    let out = Arc::new(TcpAnswers {
        writer: tokio::sync::Mutex::new(writer),
        failed: Notify::new(),
        outstanding: AtomicUsize::new(0),
        settled: Notify::new(),
    });
    let mut answering = JoinSet::new();
    loop {
        let next = async {
            let msg = tokio::select! {
                msg = read_message(&mut reader, idle) => msg?,
                () = out.idle_for(idle) => return None,
            };
            // Stray bytes or a response: not a query to answer, nor a client to go on reading.
            if !answerable(&msg) {
                return None;
            }
            let turn = limits.turns.clone().acquire_owned().await.ok()?;
            Some((msg, turn))
        };
        let (msg, turn) = tokio::select! {
            next = next => match next {
                Some(next) => next,
                None => break,
            },
            () = out.failed.notified() => return,
        };
        let outstanding = Outstanding::begin(&out);
        let (pod, dns, out, limits) = (pod.clone(), dns.clone(), out.clone(), limits.clone());
        answering.spawn(async move {
            let sent = match pod.dns_answer(&dns, &limits, &msg, Transport::Tcp).await {
                Some(answer) => out.send(&answer, idle).await,
                None => false,
            };
            // The idle timeout counts from the last answer written.
            drop(outstanding);
            drop(turn);
            if !sent {
                out.failed.notify_one();
            }
        });
        while answering.try_join_next().is_some() {}
    }
    // Returning drops (aborts) what is left: once one answer could not be written, the others
    // will not be either.
    loop {
        tokio::select! {
            done = answering.join_next() => if done.is_none() { return },
            () = out.failed.notified() => return,
        }
    }
}

/// The sending side of a DNS-over-TCP connection, shared by the tasks answering its queries.
struct TcpAnswers {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Notified when an answer could not be written (the connection is then closed).
    failed: Notify,
    /// Queries read and not yet answered: while there are any, the connection is not idle.
    outstanding: AtomicUsize,
    /// Notified when the last outstanding query is answered.
    settled: Notify,
}

/// One query of a connection outstanding, until dropped (also when its task fails, so that a
/// connection is never left counting a query nobody answers).
struct Outstanding(Arc<TcpAnswers>);

impl Outstanding {
    fn begin(out: &Arc<TcpAnswers>) -> Outstanding {
        out.outstanding.fetch_add(1, Ordering::AcqRel);
        Outstanding(out.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if self.0.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A permit is kept if the reader is not waiting yet, so the wake-up is never lost.
            self.0.settled.notify_one();
        }
    }
}

impl TcpAnswers {
    /// Returns once the connection has been idle for `idle`: no query outstanding all that
    /// time. Only the reader adds queries, and not while it waits here, so once none is
    /// outstanding none can be until this returns.
    async fn idle_for(&self, idle: Duration) {
        while self.outstanding.load(Ordering::Acquire) > 0 {
            // A permit left from an earlier settling only has this look again.
            self.settled.notified().await;
        }
        tokio::time::sleep(idle).await;
    }

    /// Writes `answer` with its length; `false` if it cannot be, or the client takes longer than
    /// `idle` to read it: a client that asks and reads nothing would otherwise hold the
    /// connection (and the drain, which waits on it) for good once the socket buffers are full.
    async fn send(&self, answer: &[u8], idle: Duration) -> bool {
        let Ok(len) = u16::try_from(answer.len()) else { return false };
        let mut frame = Vec::with_capacity(2 + answer.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(answer);
        let mut writer = self.writer.lock().await;
        matches!(tokio::time::timeout(idle, writer.write_all(&frame)).await, Ok(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_limits_are_shared_while_served_and_forgotten_after() {
        let dns = Dns::new(DnsConfig::default());
        let a = dns.pod_limits("a");
        assert!(Arc::ptr_eq(&a, &dns.pod_limits("a")), "the pod's sockets and connections share them");
        drop(a);
        let _b = dns.pod_limits("b");
        assert_eq!(dns.pods.lock().unwrap().keys().collect::<Vec<_>>(), ["b"], "a pod no longer served is no entry");
    }

    #[test]
    fn pods_taking_all_the_upstream_slots_they_may_leave_one_for_another() {
        let dns = Dns::new(DnsConfig::default());
        // 127 pods in turn, each taking as many slots as it is given, up to its turns: the
        // first 4 take the open 256, each other one 2 of the reserved.
        let pods: Vec<_> = (0..127).map(|i| dns.pod_limits(&i.to_string())).collect();
        let mut held = Vec::new();
        for pod in &pods {
            while held.iter().filter(|s: &&UpstreamSlot<'_>| std::ptr::eq(s.pod, &**pod)).count() < MAX_POD_IN_FLIGHT {
                match dns.upstream_slot(pod) {
                    Ok(slot) => held.push(slot),
                    Err(why) => {
                        assert_eq!(why, NoSlot::Share);
                        break;
                    }
                }
            }
        }
        assert_eq!(held.len(), RESERVED_IN_FLIGHT + 123 * POD_RESERVED_IN_FLIGHT);
        let quiet = dns.pod_limits("quiet");
        let slot = dns.upstream_slot(&quiet);
        assert!(slot.is_ok(), "the 128th pod gets a slot");
        drop(slot);
        drop(held);
        assert_eq!(dns.relaying.load(Ordering::SeqCst), 0, "every slot given back");
        assert!(pods.iter().all(|p| p.relaying.load(Ordering::SeqCst) == 0));
    }

    /// A client that announces a 64 KiB message, sends 3 bytes of it and stalls; it counts
    /// the bytes the proxy readies for it at most.
    struct Stalling {
        sent: &'static [u8],
        offered: usize,
    }

    impl AsyncRead for Stalling {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.offered = self.offered.max(buf.remaining());
            if self.sent.is_empty() {
                return std::task::Poll::Pending;
            }
            let n = buf.remaining().min(self.sent.len());
            buf.put_slice(&self.sent[..n]);
            self.sent = &self.sent[n..];
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_tcp_message_is_given_memory_as_it_arrives_not_as_announced() {
        let mut client = Stalling { sent: b"\xff\xff\x00\x01\x02", offered: 0 };
        assert_eq!(read_message(&mut client, Duration::from_millis(50)).await, None, "the idle timeout ends it");
        // Else each connection of a pod is 64 KiB of ztunnel's memory for a 2-byte write.
        assert!(client.offered < 4096, "{} bytes readied for 3 sent", client.offered);
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# generated\nsearch shop.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\n\
                    nameserver  fd00::a \noptions ndots:5\nnameserver fe80::1%eth0\nnameserver bogus\n";
        assert_eq!(
            resolv_conf_nameservers(text),
            vec!["10.96.0.10:53".parse::<SocketAddr>().unwrap(), "[fd00::a]:53".parse().unwrap()]
        );
    }
}
