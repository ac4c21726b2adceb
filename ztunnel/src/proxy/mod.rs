//! The data path: per-pod listeners and what happens to each connection.
//!
//! - [`outbound`] (15001): a pod's outgoing connections, tunnelled over HBONE or passed through.
//! - [`inbound`] (15008): HBONE from other proxies, authorized, delivered to the pod.
//! - [`inbound_plain`] (15006): plaintext from outside the mesh, authorized as such.
//! - [`route`]: the outbound routing decision, free of I/O.
//! - [`admitted`]: open inbound connections, closed when a policy change refuses them.
//!
//! Every pod gets its own listeners, bound inside its network namespace, and its own HBONE
//! pool whose sockets are also created there (so tunnels leave from the pod's address).

pub mod admitted;
pub mod inbound;
pub mod inbound_plain;
pub mod netns_sockets;
pub mod outbound;
pub mod pods;
pub mod route;
pub mod sockets;
mod telemetry;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hbone::tunnel::pool::{Connector, Pool, PoolConfig};
use hbone::tunnel::server::HandshakeLimit;
use hbone::{CertStore, Identity};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::state::StateHandle;

/// Data-path settings, part of the program's config.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Mark on ztunnel's own sockets (None where there is no redirection, e.g. tests).
    pub mark: Option<u32>,
    /// Connect to local workloads from the client's own address (needs the in-pod rules).
    pub transparent_inbound: bool,
    /// Outbound capture port.
    pub outbound_port: u16,
    /// Inbound plaintext capture port.
    pub inbound_plain_port: u16,
    /// HBONE port.
    pub hbone_port: u16,
    /// Time allowed to connect to a workload or passthrough destination.
    pub connect_timeout: Duration,
    /// HBONE pool and HTTP/2 tuning.
    pub pool: PoolConfig,
    /// Inbound HBONE handshakes at once, all pods together (see [`HandshakeLimit`]).
    pub max_inbound_handshakes: usize,
    /// The pods' DNS proxy; `None` binds no DNS port.
    pub dns: Option<crate::dns::DnsConfig>,
}

impl ProxyConfig {
    /// Whether `port` is one of ztunnel's own pod ports. Such a port on the pod itself would
    /// make ztunnel connect to itself, over and over: it is refused there.
    pub fn is_own_port(&self, port: u16) -> bool {
        port == self.outbound_port
            || port == self.inbound_plain_port
            || port == self.hbone_port
            || self.dns.as_ref().is_some_and(|d| d.port == port)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            mark: Some(sockets::ZTUNNEL_MARK),
            transparent_inbound: true,
            outbound_port: 15001,
            inbound_plain_port: 15006,
            hbone_port: hbone::tunnel::HBONE_PORT,
            connect_timeout: Duration::from_secs(10),
            pool: PoolConfig::default(),
            max_inbound_handshakes: 256,
            dns: None,
        }
    }
}

/// What every pod's proxy shares. Made by [`ProxyInputs::new`], which also starts holding
/// open connections to policy changes.
#[derive(Clone)]
pub struct ProxyInputs {
    /// Workloads, services, policies.
    pub state: StateHandle,
    /// Certificates of local workloads and the mesh roots.
    pub certs: CertStore,
    /// Metric families.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub cfg: Arc<ProxyConfig>,
    /// Live connections, for graceful shutdown.
    pub drain: crate::drain::Drain,
    /// Open inbound connections, for policy changes. Private so that no proxy runs without
    /// the task that rechecks them.
    admitted: admitted::Admitted,
    /// Turns for inbound handshakes, shared by every pod's HBONE server.
    pub(crate) handshakes: HandshakeLimit,
    /// What every pod's DNS proxy shares, if DNS is served.
    pub(crate) dns: Option<Arc<crate::dns::Dns>>,
}

impl ProxyInputs {
    /// The inputs, and a task on `control` (the admin runtime in the binary, so that a recheck
    /// of many connections never holds up a data thread) that closes open inbound connections
    /// a new state's policy refuses; it ends when the last clone of these inputs is dropped.
    pub fn new(
        state: StateHandle,
        certs: CertStore,
        metrics: Arc<Metrics>,
        cfg: Arc<ProxyConfig>,
        drain: crate::drain::Drain,
        control: &tokio::runtime::Handle,
    ) -> ProxyInputs {
        let admitted = admitted::Admitted::default();
        control.spawn(admitted.watch(state.clone(), metrics.clone()));
        let handshakes = HandshakeLimit::new(cfg.max_inbound_handshakes);
        let dns = cfg.dns.clone().map(|d| Arc::new(crate::dns::Dns::new(d)));
        ProxyInputs { state, certs, metrics, cfg, drain, admitted, handshakes, dns }
    }

    /// Open inbound connections held to policy.
    pub fn admitted(&self) -> &admitted::Admitted {
        &self.admitted
    }
}

/// Where a pod's sockets are made. In a node, inside the pod's network namespace; in tests
/// on loopback, right here.
pub trait PodSockets: Clone + Send + Sync + 'static {
    /// Runs `f` where the pod's sockets must be created.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T>;
}

/// Sockets in the current network namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostSockets;

impl PodSockets for HostSockets {
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        Ok(f())
    }
}

/// One pod as the proxy sees it.
pub(crate) struct Pod<S> {
    pub(crate) uid: String,
    pub(crate) identity: Identity,
    pub(crate) sockets: S,
    pub(crate) inputs: ProxyInputs,
    pub(crate) pool: Pool,
}

impl<S: PodSockets> Pod<S> {
    /// Connects to `dst` from inside the pod, marked, optionally from `source` (transparent).
    pub(crate) async fn connect(&self, dst: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
        let mark = self.inputs.cfg.mark;
        let socket = self.sockets.run(move || -> io::Result<_> {
            let s = sockets::marked_socket(dst.ip(), mark)?;
            if let Some(src) = source {
                sockets::bind_transparent(&s, src)?;
            }
            Ok(s)
        })??;
        tokio::time::timeout(self.inputs.cfg.connect_timeout, socket.connect(dst))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("connect to {dst} timed out")))?
    }
}

/// The listeners of one pod, and the tasks serving them. Dropping it stops accepting;
/// connections already accepted finish on their own.
pub struct PodProxy {
    tasks: JoinSet<()>,
    /// Addresses actually bound (outbound, inbound plaintext, HBONE).
    pub addrs: PodAddrs,
}

/// The addresses a pod's listeners really bound (port 0 in tests becomes a real port).
#[derive(Debug, Clone, Copy)]
pub struct PodAddrs {
    /// Outbound capture.
    pub outbound: SocketAddr,
    /// Inbound plaintext capture.
    pub inbound_plain: SocketAddr,
    /// HBONE.
    pub hbone: SocketAddr,
    /// DNS over UDP and TCP, on the IPv4 loopback address (and ::1); `None` when DNS is not served.
    pub dns: Option<SocketAddr>,
}

impl PodProxy {
    /// Binds the pod's three listeners inside it (all addresses, IPv4 and, where the pod has
    /// it, IPv6; SO_REUSEPORT so a new ztunnel can bind beside an old one), and its DNS sockets
    /// if DNS is served, and starts serving as `identity`.
    pub fn start<S: PodSockets>(uid: String, identity: Identity, sockets: S, inputs: ProxyInputs) -> io::Result<Self> {
        let cfg = inputs.cfg.clone();
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let ports = [cfg.outbound_port, cfg.inbound_plain_port, cfg.hbone_port];
        let bound = sockets.run(move || -> io::Result<Vec<std::net::TcpListener>> {
            ports.iter().map(|p| sockets::reuseport_listener(SocketAddr::new(any, *p))).collect()
        })??;
        let mut listeners = bound.into_iter().map(TcpListener::from_std).collect::<io::Result<Vec<_>>>()?;
        // The redirection (an `inet` table) sends IPv6 to the same ports: without a listener
        // there, every IPv6 connection of the pod would be refused. Bound on the ports the IPv4
        // listeners got (the same, but for tests' port 0).
        let v6_ports =
            [listeners[0].local_addr()?.port(), listeners[1].local_addr()?.port(), listeners[2].local_addr()?.port()];
        let v6 = match sockets.run(move || bind_v6(v6_ports))? {
            Ok(v6) => v6.into_iter().map(TcpListener::from_std).collect::<io::Result<Vec<_>>>()?,
            Err(e) if no_ipv6(&e) => {
                tracing::debug!(pod = %uid, error = %e, "no IPv6 in the pod; IPv4 listeners only");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        // A pod whose DNS sockets cannot be bound (its loopback interface down, say) is still
        // served: its connections matter more than DNS, which the warning says is missing.
        let dns = match (&inputs.dns, &cfg.dns) {
            (Some(shared), Some(d)) => match crate::dns::bind(&sockets, d.port) {
                Ok(bound) => Some((shared.clone(), bound)),
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, "cannot bind the pod's DNS port; its captured DNS goes unanswered");
                    None
                }
            },
            _ => None,
        };
        let addrs = PodAddrs {
            outbound: listeners[0].local_addr()?,
            inbound_plain: listeners[1].local_addr()?,
            hbone: listeners[2].local_addr()?,
            dns: dns.as_ref().map(|(_, bound)| bound.tcp[0].local_addr()).transpose()?,
        };
        let (hbone_listener, plain_listener, outbound_listener) = (
            listeners.pop().expect("three listeners"),
            listeners.pop().expect("three listeners"),
            listeners.pop().expect("three listeners"),
        );
        let pool = Pool::new(cfg.pool.clone(), inputs.certs.clone(), Some(pod_connector(sockets.clone(), &cfg)));
        let pod = Arc::new(Pod { uid, identity, sockets, inputs, pool });
        let mut tasks = JoinSet::new();
        tasks.spawn(outbound::serve(pod.clone(), outbound_listener));
        tasks.spawn(inbound_plain::serve(pod.clone(), plain_listener));
        if let Some((shared, bound)) = dns {
            for socket in bound.udp {
                let socket = tokio::net::UdpSocket::from_std(socket)?;
                tasks.spawn(crate::dns::serve_udp(pod.clone(), shared.clone(), socket));
            }
            for tcp in bound.tcp {
                let shared = shared.clone();
                tasks.spawn(accept_loop(pod.clone(), TcpListener::from_std(tcp)?, "dns", move |pod, tcp, _| {
                    crate::dns::serve_tcp(pod, shared.clone(), tcp)
                }));
            }
        }
        let mut v6 = v6.into_iter();
        if let (Some(outbound), Some(plain), Some(hbone)) = (v6.next(), v6.next(), v6.next()) {
            tasks.spawn(outbound::serve(pod.clone(), outbound));
            tasks.spawn(inbound_plain::serve(pod.clone(), plain));
            tasks.spawn(inbound::serve(pod.clone(), hbone));
        }
        tasks.spawn(inbound::serve(pod, hbone_listener));
        Ok(PodProxy { tasks, addrs })
    }

    /// Stops accepting new connections.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

/// The pod's listeners on `[::]` (IPv6 only: IPv4 has its own), outbound, plaintext, HBONE.
fn bind_v6(ports: [u16; 3]) -> io::Result<Vec<std::net::TcpListener>> {
    // `[::]` can still be bound where IPv6 is switched off (`disable_ipv6` on `all`, read here
    // in the pod's namespace, since /proc/sys/net answers for the reader's): three listeners
    // and their tasks would be held for every such pod for nothing.
    if std::fs::read("/proc/sys/net/ipv6/conf/all/disable_ipv6").is_ok_and(|v| v.starts_with(b"1")) {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    }
    let any = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
    ports.iter().map(|p| sockets::reuseport_listener(SocketAddr::new(any, *p))).collect()
}

/// Whether `e` says the namespace has no IPv6 (the kernel's is off, or the pod's interfaces
/// have it disabled), rather than that something is wrong.
fn no_ipv6(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL))
}

/// Accepts plain TCP connections on a pod listener until the task is dropped, handling each
/// on its own task while counting it for graceful shutdown.
pub(crate) async fn accept_loop<S, F, Fut>(pod: Arc<Pod<S>>, listener: TcpListener, what: &'static str, handle: F)
where
    S: PodSockets,
    F: Fn(Arc<Pod<S>>, TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, client)) => {
                // Bytes from the tunnel go to the application as they arrive; Nagle would
                // hold a reply back behind an unacknowledged one.
                let _ = tcp.set_nodelay(true);
                let live = pod.inputs.drain.track();
                let conn = handle(pod.clone(), tcp, client);
                tokio::spawn(async move {
                    conn.await;
                    drop(live);
                });
            }
            Err(e) => {
                // Typically out of descriptors: back off rather than spin.
                tracing::warn!(pod = %pod.uid, listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Tunnel connections leave from inside the pod, marked so they are not captured again.
fn pod_connector<S: PodSockets>(sockets: S, cfg: &ProxyConfig) -> Connector {
    let mark = cfg.mark;
    Arc::new(move |addr: SocketAddr| {
        let sockets = sockets.clone();
        Box::pin(async move {
            let socket = sockets.run(move || sockets::marked_socket(addr.ip(), mark))??;
            socket.connect(addr).await
        })
    })
}
