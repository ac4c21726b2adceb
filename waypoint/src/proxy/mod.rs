//! The data path: an HBONE server whose CONNECT streams carry HTTP/1.1, HTTP/2 (gRPC
//! included) or opaque TCP for a service (by VIP) or a workload (by IP).
//!
//! - [`detect`]: which protocol the first bytes speak.
//! - [`http`](mod@http): normalization → authorization → route → filters → backend.
//! - [`forward`]: endpoint per try, timeouts, retries; [`body`]: buffering and accounting.
//! - [`tcp`]: L4 authorization, then bytes both ways to a chosen endpoint.
//! - [`balance`]: endpoint choice and outlier ejection; [`upstream`]: reused HTTP
//!   connections over pooled HBONE.

pub mod balance;
pub mod body;
pub mod detect;
pub mod forward;
pub mod http;
pub mod tcp;
pub mod upgrade;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::StatusCode;
use bytes::Bytes;
use hbone::tunnel::pool::{Connector, Pool, PoolConfig};
use hbone::tunnel::server::{Handler, HandshakeLimit, InboundConnect, Server};
use hbone::{CertStore, Identity};
use tokio::net::TcpListener;
use ztunnel::drain::Drain;
use ztunnel::log_budget::LogBudget;
use ztunnel::state::{AppProtocol, Service, Workload};

use crate::state::SnapshotHandle;
use crate::telemetry::Metrics;

/// Body type used on both sides.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Errors carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the waypoint's data path needs.
#[derive(Clone)]
pub struct Inputs {
    /// The waypoint's identity (its certificate must be in `certs`).
    pub identity: Identity,
    /// Certificates and mesh roots.
    pub certs: CertStore,
    /// The current configuration.
    pub state: SnapshotHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// How tunnels to endpoints open their TCP connection (tests map addresses; default:
    /// plain connect).
    pub connector: Option<Connector>,
    /// Endpoints' HBONE port.
    pub hbone_port: u16,
    /// Span export, when an OTLP endpoint is configured.
    pub spans: Option<crate::telemetry::otlp::Exporter>,
    /// How long protocol detection waits for a first byte before deciding TCP.
    pub detect_timeout: Duration,
    /// Inbound HBONE handshakes at once (see [`HandshakeLimit`]).
    pub max_inbound_handshakes: usize,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inputs").field("identity", &self.identity).finish_non_exhaustive()
    }
}

/// The shared data-path context.
#[derive(Debug)]
pub struct Proxy {
    /// Inputs.
    pub inputs: Inputs,
    /// Endpoint choice and outlier state.
    pub balancer: balance::Balancer,
    /// Upstream connections.
    pub upstreams: upstream::Upstreams,
    /// Counts what is open (HBONE connections, tunnelled streams, upgraded connections) and
    /// tells it when shutdown begins.
    pub drain: Drain,
    /// Turns for inbound handshakes, shared by every server [`Proxy::server`] makes.
    handshakes: HandshakeLimit,
}

/// How long a stream to a port declared HTTP may wait for its first bytes once detection has
/// given up, before it is read as HTTP/1.1.
const DECLARED_HTTP_FIRST_BYTES: Duration = Duration::from_secs(60);

/// Lines for refused HBONE connections, at most this many a second.
static REFUSED: LogBudget = LogBudget::per_second(10);

/// Where a CONNECT is going.
#[derive(Clone, Debug)]
pub enum Destination {
    /// A service VIP and port.
    Service(Arc<Service>, u16),
    /// A workload IP and port.
    Workload(Arc<Workload>, u16),
}

impl Destination {
    /// The service, for service-addressed traffic.
    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Destination::Service(s, _) => Some(s),
            Destination::Workload(..) => None,
        }
    }

    /// The port asked for.
    pub fn port(&self) -> u16 {
        match self {
            Destination::Service(_, p) | Destination::Workload(_, p) => *p,
        }
    }
}

/// One accepted tunnel: who, from where, to what.
#[derive(Debug)]
pub struct Downstream {
    /// The peer's verified identity.
    pub peer: Identity,
    /// The original client (from `forwarded`, trusted because the peer is a mesh proxy we
    /// just authenticated), else the peer's address.
    pub client: SocketAddr,
    /// The destination.
    pub dest: Destination,
    /// The CONNECT's target address (`destination.ip` and the port asked for).
    pub target: SocketAddr,
}

impl Proxy {
    /// The data path over `inputs`.
    pub fn new(inputs: Inputs) -> Arc<Proxy> {
        let pool = Pool::new(PoolConfig::default(), inputs.certs.clone(), inputs.connector.clone());
        let upstreams = upstream::Upstreams::new(pool, inputs.identity.clone(), inputs.hbone_port);
        let handshakes = HandshakeLimit::new(inputs.max_inbound_handshakes);
        Arc::new(Proxy {
            inputs,
            balancer: balance::Balancer::default(),
            upstreams,
            drain: Drain::default(),
            handshakes,
        })
    }

    /// The HBONE server presenting the waypoint's certificate; each tunnelled stream counts
    /// as live for the drain.
    pub fn server(self: &Arc<Self>) -> Server<impl Handler> {
        let tls = hbone::tls::server_config(&self.inputs.certs, self.inputs.identity.clone());
        let me = self.clone();
        Server::new(tls, hbone::tunnel::H2Settings::default(), move |req: InboundConnect| {
            let me = me.clone();
            let live = me.drain.track();
            async move {
                me.handle(req).await;
                drop(live);
            }
        })
        .limit_handshakes(self.handshakes.clone())
    }

    /// Accepts HBONE on `listener` until the drain starts, then closes it. Each connection
    /// counts as live until it has closed, and gets GOAWAY when the drain starts, so the
    /// peer opens its next streams elsewhere while the ones it has finish.
    pub async fn serve(self: &Arc<Self>, listener: TcpListener) {
        let server = self.server();
        let mut stop = std::pin::pin!(self.drain.started());
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = &mut stop => {
                    tracing::info!("draining: the HBONE listener is closed");
                    return;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HBONE accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let server = server.clone();
            let metrics = self.inputs.metrics.clone();
            let live = self.drain.track();
            let shutdown = self.drain.started();
            tokio::spawn(async move {
                if let Err(e) = server.serve_connection_until(tcp, peer, shutdown).await {
                    if let Some(reason) = e.refusal_reason() {
                        metrics.handshake_refused(reason);
                    }
                    // Any client can fail a handshake on purpose, as often as it connects.
                    if let Some(skipped) = REFUSED.admit() {
                        tracing::info!(%peer, error = %e, skipped, "HBONE connection refused or failed");
                    }
                }
                drop(live);
            });
        }
    }

    async fn handle(self: Arc<Self>, req: InboundConnect) {
        let snapshot = self.inputs.state.load();
        let authority = req.authority();
        let ip = authority.ip().to_canonical();
        let dest = if let Some(s) = snapshot.service_by_vip(ip) {
            Destination::Service(s.clone(), authority.port())
        } else if let Some(w) = snapshot.mesh.workload_by_ip(ip) {
            Destination::Workload(w.clone(), authority.port())
        } else {
            tracing::info!(%authority, peer = %req.peer_identity(), "CONNECT to an unknown destination");
            req.refuse(StatusCode::BAD_REQUEST, "unknown destination");
            return;
        };
        drop(snapshot);
        let down = Downstream {
            peer: req.peer_identity().clone(),
            client: req.forwarded_for().unwrap_or(req.peer_addr()),
            dest,
            target: SocketAddr::new(ip, authority.port()),
        };
        let Ok(mut stream) = req.accept() else { return };
        let down = Arc::new(down);
        // A port declared opaque (`tcp`, `mysql`, ..., `tls`) is forwarded as TCP at once:
        // sniffing would hold a server-first protocol for the whole detection timeout.
        if let Destination::Service(s, port) = &down.dest
            && matches!(s.app_protocol(*port), Some(AppProtocol::Tcp | AppProtocol::Tls))
        {
            return tcp::forward(self, down, stream).await;
        }
        // A port declared HTTP (`http`, `http2`, `grpc`) carries HTTP, as Istio reads it: bytes
        // that do not look like it (a request line an application's lenient parser would still
        // take, a client slow to send) are read as HTTP/1.1 and refused there, never passed to
        // the application unparsed, past routes and L7 policy.
        let declared_http = matches!(&down.dest, Destination::Service(s, port)
            if matches!(s.app_protocol(*port), Some(AppProtocol::Http11 | AppProtocol::Http2 | AppProtocol::Grpc)));
        let (proto, seen) = match detect::detect(&mut stream, self.inputs.detect_timeout).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "tunnel closed during protocol detection");
                return;
            }
        };
        let io = detect::Rewind::new(seen, stream);
        match proto {
            detect::Protocol::Http1 | detect::Protocol::Http2 => http::serve(self, down, io, proto).await,
            detect::Protocol::Tcp if declared_http => {
                // Detection gave up, on bytes that are not HTTP or on a client slow to send:
                // waiting longer lets a late HTTP/2 preface still be read as one.
                let mut io = io;
                let (proto, seen) = match detect::detect(&mut io, DECLARED_HTTP_FIRST_BYTES).await {
                    Ok((detect::Protocol::Http2, seen)) => (detect::Protocol::Http2, seen),
                    Ok((_, seen)) => (detect::Protocol::Http1, seen),
                    Err(e) => {
                        tracing::debug!(error = %e, "tunnel closed during protocol detection");
                        return;
                    }
                };
                http::serve(self, down, detect::Rewind::new(seen, io), proto).await
            }
            detect::Protocol::Tcp => tcp::forward(self, down, io).await,
        }
    }
}
