//! Opening tunnels: mesh TLS + HTTP/2 handshake towards a peer, and CONNECT requests on it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::certs::OwnCertExpired;
use crate::http2::{self, Connection};
use crate::identity::Identity;
use crate::tls::PeerIdentityError;

use super::H2Settings;
use super::headers::{FORWARDED, forwarded_for};

/// What to ask the far end to connect to.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    /// `:authority` of the CONNECT: the destination workload's `ip:port` (or a service
    /// `VIP:port` when the far end is a waypoint).
    pub authority: SocketAddr,
    /// The original client, sent as `forwarded: for="ip:port"`.
    pub forwarded_for: Option<SocketAddr>,
    /// Further headers (`baggage`, `traceparent`, ...).
    pub headers: HeaderMap,
}

impl ConnectTarget {
    /// A target with no extra headers.
    pub fn new(authority: SocketAddr, forwarded_for: Option<SocketAddr>) -> Self {
        ConnectTarget { authority, forwarded_for, headers: HeaderMap::new() }
    }
}

/// Why the identity a tunnel should be opened as has no certificate to present. Found before
/// dialing: nothing reaches the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoUsableCert {
    /// The store has none for it (none was issued in time).
    #[error("no certificate for source identity {0}")]
    Missing(Identity),
    /// The store's has expired (renewal failed for longer than its life left).
    #[error(transparent)]
    Expired(OwnCertExpired),
}

impl NoUsableCert {
    /// The source identity.
    pub fn identity(&self) -> &Identity {
        match self {
            NoUsableCert::Missing(id) => id,
            NoUsableCert::Expired(e) => &e.identity,
        }
    }
}

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// There is no usable certificate for the identity the tunnel should be opened as.
    #[error(transparent)]
    NoCertificate(NoUsableCert),
    /// The TCP connection to the peer failed.
    #[error("TCP connect to {addr}: {source}")]
    Tcp {
        /// The peer.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// TLS failed, including when the peer's certificate was refused.
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// The peer.
        addr: SocketAddr,
        /// The handshake error; [`ConnectError::peer_identity_error`] digs out identity refusals.
        #[source]
        source: io::Error,
    },
    /// TCP, TLS and the HTTP/2 preface did not finish in time.
    #[error("handshake with {0} timed out")]
    HandshakeTimeout(SocketAddr),
    /// The HTTP/2 connection could not be set up, or failed under the request.
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 {
        /// The peer.
        addr: SocketAddr,
        /// The protocol error.
        #[source]
        source: http2::Error,
    },
    /// The peer did not answer the CONNECT in time (the stream was cancelled).
    #[error("CONNECT via {addr} not answered within {after:?}")]
    AnswerTimeout {
        /// The peer.
        addr: SocketAddr,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// The peer answered the CONNECT with something other than 200.
    #[error("CONNECT {authority} via {addr} refused: {status} {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// What was asked for.
        authority: SocketAddr,
        /// The peer's status: 400 malformed, 401 denied by policy, 503 unreachable, ...
        status: StatusCode,
        /// The peer's explanation, if it gave one.
        reason: String,
    },
}

impl ConnectError {
    /// The identity refusal behind a TLS failure, if that is what it was.
    pub fn peer_identity_error(&self) -> Option<&PeerIdentityError> {
        self.rustls_error().and_then(|e| match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => o.0.downcast_ref(),
            _ => None,
        })
    }

    /// The rustls error behind a TLS failure.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            ConnectError::Tls { source, .. } => source.get_ref().and_then(|e| e.downcast_ref()),
            _ => None,
        }
    }

    /// True when the failure belongs to the connection rather than to this request, so the
    /// same request may be retried on another connection.
    pub(crate) fn connection_failed(&self) -> bool {
        match self {
            ConnectError::Http2 { source, .. } => source.is_connection() || matches!(source, http2::Error::Refused(_)),
            // A peer that connects to a destination answers 503 within its own timeout; one
            // silent past ours is likely gone (no RST came): the next stream gets a new connection.
            ConnectError::AnswerTimeout { .. } => true,
            _ => false,
        }
    }
}

/// Connects TLS and HTTP/2 over `tcp` and spawns the connection's driver task, which ends
/// (calling `on_close`) when the connection does.
pub(crate) async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    settings: &H2Settings,
    on_close: impl FnOnce() + Send + 'static,
) -> Result<Connection, ConnectError> {
    let _ = tcp.set_nodelay(true);
    let tls = TlsConnector::from(tls)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|source| ConnectError::Tls { addr, source })?;
    let (tcp, tls) = tls.into_inner();
    let (conn, driver) =
        Connection::client(tcp, tls, settings.limits()).map_err(|source| ConnectError::Tcp { addr, source })?;
    tokio::spawn(async move {
        let end = driver.await;
        tracing::debug!(peer = %addr, reason = %end, "HBONE connection ended");
        on_close();
    });
    Ok(conn)
}

/// Sends one CONNECT on `conn` and waits for the answer, at most `answer_timeout` (dropping the
/// request then cancels the stream).
pub(crate) async fn connect_stream(
    conn: &Connection,
    addr: SocketAddr,
    target: &ConnectTarget,
    answer_timeout: std::time::Duration,
) -> Result<http2::Stream, ConnectError> {
    let authority = target.authority.to_string();
    let forwarded = target.forwarded_for.map(forwarded_for);
    let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(3 + target.headers.len());
    fields.push((b":method", b"CONNECT"));
    fields.push((b":authority", authority.as_bytes()));
    for (name, value) in &target.headers {
        if name.as_str() != FORWARDED || forwarded.is_none() {
            fields.push((name.as_str().as_bytes(), value.as_bytes()));
        }
    }
    if let Some(f) = &forwarded {
        fields.push((FORWARDED.as_bytes(), f.as_bytes()));
    }
    let (stream, head) = tokio::time::timeout(answer_timeout, conn.request(&fields))
        .await
        .map_err(|_| ConnectError::AnswerTimeout { addr, after: answer_timeout })?
        .map_err(|source| ConnectError::Http2 { addr, source })?;
    if head.status == StatusCode::OK {
        return Ok(stream);
    }
    // A refusal carries a short text reason in its body; read a bounded amount of it.
    let mut reason = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = std::future::poll_fn(|cx| stream.poll_data(cx)).await {
            stream.release(chunk.len());
            reason.extend_from_slice(&chunk[..chunk.len().min(1024 - reason.len())]);
            if reason.len() >= 1024 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), read).await;
    Err(ConnectError::Refused {
        addr,
        authority: target.authority,
        status: head.status,
        reason: String::from_utf8_lossy(&reason).into_owned(),
    })
}
