//! Accepting tunnels: mesh TLS with a mandatory client certificate, HTTP/2, CONNECT streams
//! handed to a handler with the verified peer identity.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::http2::{self, Connection, RequestHead};
use crate::identity::Identity;
use crate::tls::{PeerIdentityError, peer_identity};

use super::H2Settings;
use super::headers::{FORWARDED, parse_forwarded_for};
use super::stream::H2Stream;

/// Why an inbound connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS failed: not TLS at all, a refused certificate, or a broken connection.
    #[error("TLS handshake from {peer}: {source}")]
    Tls {
        /// The client's address.
        peer: SocketAddr,
        /// The handshake error.
        #[source]
        source: io::Error,
    },
    /// TLS and the HTTP/2 preface did not finish in time.
    #[error("handshake from {0} timed out")]
    HandshakeTimeout(SocketAddr),
    /// The handshake was not started: as many as [`HandshakeLimit`] allows were in progress.
    #[error("handshake from {0} refused: too many handshakes in progress")]
    Overloaded(SocketAddr),
    /// The verified certificate carries no usable identity.
    #[error("peer {peer}: {source}")]
    Identity {
        /// The client's address.
        peer: SocketAddr,
        /// What was wrong with it.
        #[source]
        source: PeerIdentityError,
    },
    /// HTTP/2 failed on the connection.
    #[error("HTTP/2 from {peer}: {source}")]
    Http2 {
        /// The client's address.
        peer: SocketAddr,
        /// The protocol error.
        #[source]
        source: http2::Error,
    },
}

impl ServeError {
    /// The reason a connection refused before its first stream is counted under, as both
    /// proxies name it in their metrics; `None` for HTTP/2 failures after the handshake
    /// (counted by code in `hbone_protocol_errors_total`).
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            ServeError::Tls { .. } => Some("hbone_tls_failed"),
            ServeError::HandshakeTimeout(_) => Some("hbone_handshake_timeout"),
            ServeError::Identity { .. } => Some("hbone_peer_identity"),
            ServeError::Overloaded(_) => Some("hbone_handshake_overload"),
            ServeError::Http2 { .. } => None,
        }
    }
}

/// Decides what to do with each CONNECT stream. Runs on its own task per stream.
pub trait Handler: Send + Sync + 'static {
    /// Handles one request: accept it (and move bytes) or refuse it.
    fn handle(&self, request: InboundConnect) -> impl Future<Output = ()> + Send;
}

impl<F, Fut> Handler for F
where
    F: Fn(InboundConnect) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn handle(&self, request: InboundConnect) -> impl Future<Output = ()> + Send {
        self(request)
    }
}

/// One CONNECT request from a verified peer, not yet answered.
///
/// Answer with [`accept`](Self::accept) or [`refuse`](Self::refuse); dropping it unanswered
/// refuses with 503.
#[derive(Debug)]
pub struct InboundConnect {
    peer_identity: Identity,
    peer_addr: SocketAddr,
    authority: SocketAddr,
    headers: HeaderMap,
    stream: Option<http2::Stream>,
}

impl InboundConnect {
    /// The identity the peer's certificate proves.
    pub fn peer_identity(&self) -> &Identity {
        &self.peer_identity
    }

    /// The TCP address the tunnel connection came from (the peer proxy).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The `ip:port` the peer asks to reach.
    pub fn authority(&self) -> SocketAddr {
        self.authority
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The original client address from the `forwarded` header, if present and well formed.
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        self.headers.get(FORWARDED).and_then(parse_forwarded_for)
    }

    /// Answers 200 and returns the stream.
    pub fn accept(mut self) -> Result<H2Stream, http2::Error> {
        let stream = self.stream.take().expect("answered only once");
        stream.respond(StatusCode::OK, &[], false)?;
        Ok(H2Stream::new(stream, None))
    }

    /// Answers `status` with `reason` as the body.
    pub fn refuse(mut self, status: StatusCode, reason: &str) {
        if let Some(stream) = self.stream.take() {
            send_refusal(stream, status, reason);
        }
    }
}

impl Drop for InboundConnect {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            send_refusal(stream, StatusCode::SERVICE_UNAVAILABLE, "request was not handled");
        }
    }
}

pub(crate) fn send_refusal(stream: http2::Stream, status: StatusCode, reason: &str) {
    let text: &[(&[u8], &[u8])] = &[(b"content-type", b"text/plain")];
    let fields = if reason.is_empty() { &[][..] } else { text };
    if stream.respond(status, fields, reason.is_empty()).is_ok() && !reason.is_empty() {
        // A reason longer than the window is cut; it is for people, not for parsing.
        let _ = stream.send(reason.as_bytes(), true);
    }
}

/// How many handshakes (TLS and the HTTP/2 preface) run at once, across every server given
/// the same limit. A handshake is the costly part of a connection (a signature, and the TLS
/// state held until it ends), and anyone who can reach the port can start one without a
/// certificate: past the limit, a new connection is closed at once, unread, and counted, so a
/// flood costs no more than the limit and says so. (Queueing instead would not help a real
/// client: under a flood, each waiter gets its turn only as those ahead time out, just
/// before its own deadline.) Clones share the limit.
#[derive(Debug, Clone)]
pub struct HandshakeLimit(Arc<Semaphore>);

impl HandshakeLimit {
    /// At most `max` handshakes at once (at least one).
    pub fn new(max: usize) -> Self {
        HandshakeLimit(Arc::new(Semaphore::new(max.max(1))))
    }

    /// Handshakes that could start now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// An HBONE server: a TLS context and a handler.
pub struct Server<H> {
    tls: TlsAcceptor,
    settings: H2Settings,
    handler: Arc<H>,
    handshakes: Option<HandshakeLimit>,
}

impl<H> Clone for Server<H> {
    fn clone(&self) -> Self {
        Server {
            tls: self.tls.clone(),
            settings: self.settings.clone(),
            handler: self.handler.clone(),
            handshakes: self.handshakes.clone(),
        }
    }
}

impl<H: Handler> Server<H> {
    /// A server presenting the certificate `tls` resolves (see [`crate::tls::server_config`]).
    pub fn new(tls: Arc<rustls::ServerConfig>, settings: H2Settings, handler: H) -> Self {
        Server { tls: TlsAcceptor::from(tls), settings, handler: Arc::new(handler), handshakes: None }
    }

    /// Handshakes run under `limit` (unlimited otherwise).
    pub fn limit_handshakes(mut self, limit: HandshakeLimit) -> Self {
        self.handshakes = Some(limit);
        self
    }

    /// Accepts connections forever, each on its own task. Only a failing listener ends it.
    pub async fn serve(self, listener: TcpListener) -> io::Result<()> {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) if is_transient_accept_error(&e) => {
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(e) = server.serve_connection(tcp, peer).await {
                    tracing::info!(error = %e, "HBONE connection refused or failed");
                }
            });
        }
    }

    /// Serves one accepted TCP connection until the client closes it.
    pub async fn serve_connection(&self, tcp: TcpStream, peer: SocketAddr) -> Result<(), ServeError> {
        self.serve_connection_until(tcp, peer, std::future::pending()).await
    }

    /// Like [`serve_connection`](Self::serve_connection), and once `shutdown` completes, ends
    /// the connection gracefully: HTTP/2 GOAWAY tells the client to open new streams
    /// elsewhere (a peer listening beside this one, during an upgrade), streams already
    /// started run to completion, and the call returns when the last one has ended.
    pub async fn serve_connection_until(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let _ = tcp.set_nodelay(true);
        // Held until the handshake ends, however it ends.
        let turn = match &self.handshakes {
            Some(limit) => Some(limit.0.try_acquire().map_err(|_| ServeError::Overloaded(peer))?),
            None => None,
        };
        let setup = async {
            let tls = self.tls.accept(tcp).await.map_err(|source| ServeError::Tls { peer, source })?;
            let identity = peer_identity(tls.get_ref().1).map_err(|source| ServeError::Identity { peer, source })?;
            let (tcp, tls) = tls.into_inner();
            let (conn, driver) = Connection::server(tcp, tls, self.settings.limits())
                .map_err(|source| ServeError::Tls { peer, source })?;
            tokio::spawn(driver);
            // Closes the connection if the preface does not come in time.
            let conn = CloseOnDrop(conn);
            conn.0.settled().await.map_err(|source| ServeError::Http2 { peer, source })?;
            Ok((identity, conn))
        };
        let (identity, conn) = tokio::time::timeout(self.settings.handshake_timeout, setup)
            .await
            .map_err(|_| ServeError::HandshakeTimeout(peer))??;
        drop(turn);
        let conn = &conn.0;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut going_away = false;
        loop {
            let next = tokio::select! {
                next = conn.accept() => next,
                () = &mut shutdown, if !going_away => {
                    going_away = true;
                    conn.go_away();
                    continue;
                }
            };
            let Some(next) = next else { break };
            let (stream, head) = next.map_err(|source| ServeError::Http2 { peer, source })?;
            let authority = match validate(&head) {
                Ok(a) => a,
                Err(reason) => {
                    reason.counter().fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, reason = reason.as_str(), "malformed CONNECT");
                    send_refusal(stream, StatusCode::BAD_REQUEST, reason.message());
                    continue;
                }
            };
            let request = InboundConnect {
                peer_identity: identity.clone(),
                peer_addr: peer,
                authority,
                headers: head.fields,
                stream: Some(stream),
            };
            let handler = self.handler.clone();
            tokio::spawn(async move { handler.handle(request).await });
        }
        Ok(())
    }
}

/// Closes a server connection when its serving ends, however it ends. Serving ends normally
/// only once the peer has gone or, after GOAWAY, its last stream has finished.
struct CloseOnDrop(Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why a request on the HBONE port was answered 400 before any handler saw it. Counted
/// process-wide ([`MalformedConnect::total`]) for the metrics endpoints of the programs that
/// embed the server: a peer with a mesh identity sending such requests is broken or probing,
/// and neither shows anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MalformedConnect {
    /// A method other than CONNECT.
    NotConnect,
    /// Extended CONNECT (`:protocol`, RFC 8441).
    Extended,
    /// No `:authority`.
    NoAuthority,
    /// An `:authority` that is not `<ip>:<port>`, or names an IPv6 zone.
    BadAuthority,
}

impl MalformedConnect {
    /// Every reason, for exporters that list each one even at zero.
    pub const ALL: [MalformedConnect; 4] = [
        MalformedConnect::NotConnect,
        MalformedConnect::Extended,
        MalformedConnect::NoAuthority,
        MalformedConnect::BadAuthority,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedConnect::NotConnect => "not_connect",
            MalformedConnect::Extended => "extended_connect",
            MalformedConnect::NoAuthority => "no_authority",
            MalformedConnect::BadAuthority => "bad_authority",
        }
    }

    /// What the 400 says.
    pub fn message(self) -> &'static str {
        match self {
            MalformedConnect::NotConnect => "only CONNECT is served on the HBONE port",
            MalformedConnect::Extended => "extended CONNECT is not supported",
            MalformedConnect::NoAuthority => "CONNECT without :authority",
            MalformedConnect::BadAuthority => ":authority must be <ip>:<port>",
        }
    }

    fn counter(self) -> &'static AtomicU64 {
        static COUNTS: [AtomicU64; MalformedConnect::ALL.len()] =
            [const { AtomicU64::new(0) }; MalformedConnect::ALL.len()];
        &COUNTS[self as usize]
    }

    /// Requests answered 400 for this reason since the process started.
    pub fn total(self) -> u64 {
        self.counter().load(Ordering::Relaxed)
    }
}

/// A CONNECT to `ip:port`, nothing else. An IPv6 zone (`[fe80::1%2]:80`) names an interface
/// of the sender's host, which means nothing here, so it is refused too.
pub(crate) fn validate(head: &RequestHead) -> Result<SocketAddr, MalformedConnect> {
    if &head.method[..] != b"CONNECT" {
        return Err(MalformedConnect::NotConnect);
    }
    if head.protocol.is_some() {
        return Err(MalformedConnect::Extended);
    }
    let authority = head.authority.as_deref().ok_or(MalformedConnect::NoAuthority)?;
    match std::str::from_utf8(authority).ok().and_then(|a| a.parse::<SocketAddr>().ok()) {
        Some(SocketAddr::V6(a)) if a.scope_id() != 0 => Err(MalformedConnect::BadAuthority),
        Some(a) => Ok(a),
        None => Err(MalformedConnect::BadAuthority),
    }
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    !matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::PermissionDenied | io::ErrorKind::Unsupported)
}
