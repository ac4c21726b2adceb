//! HTTP connections to endpoints, each carried by an HBONE stream (pooled HBONE connections
//! keyed by identity, from `hbone::tunnel::pool`), kept for reuse per endpoint: one HTTP/2
//! connection multiplexes every request to an endpoint; HTTP/1.1 connections are reused
//! when idle, except the one a protocol upgrade (WebSocket) gets for itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use hbone::Identity;
use hbone::tunnel::client::{ConnectError, ConnectTarget};
use hbone::tunnel::pool::{Pool, PoolKey};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Body;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_H1: usize = 32;

/// Why a request to an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The HBONE tunnel to the endpoint could not be opened (safe to retry).
    #[error("HBONE to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// The HTTP handshake over the tunnel failed (safe to retry: nothing was sent).
    #[error("HTTP handshake with {addr}: {source}")]
    Handshake {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// The request failed after it was (perhaps partly) sent.
    #[error("request to {addr}: {source}")]
    Request {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Whether nothing reached the application (a retry cannot duplicate the request).
    pub fn before_request(&self) -> bool {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::Handshake { .. } => true,
            UpstreamError::Request { source, .. } => source.is_canceled(),
        }
    }
}

/// HTTP version towards the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// HTTP/1.1.
    H1,
    /// HTTP/2.
    H2,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    dst: Identity,
    version: Version,
}

#[derive(Default)]
struct Conns {
    h2: HashMap<Key, http2::SendRequest<Body>>,
    h1: HashMap<Key, Vec<http1::SendRequest<Body>>>,
}

/// Connections to endpoints.
pub struct Upstreams {
    pool: Pool,
    src: Identity,
    hbone_port: u16,
    conns: Mutex<Conns>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").field("src", &self.src).finish_non_exhaustive()
    }
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
    /// Used for one request, never pooled (see [`Upstreams::dedicated`]).
    H1Once(http1::SendRequest<Body>),
}

/// A connection ready for one request.
pub struct Sender<'a> {
    owner: &'a Upstreams,
    key: Key,
    conn: Conn,
}

impl Sender<'_> {
    /// Sends `req`; an HTTP/1.1 connection goes back to the idle list afterwards (it is
    /// ready again once the response body is read).
    pub async fn send(self, req: Request<Body>) -> Result<Response<Incoming>, UpstreamError> {
        let addr = self.key.addr;
        match self.conn {
            Conn::H2(mut s) => s.send_request(req).await.map_err(|source| UpstreamError::Request { addr, source }),
            Conn::H1Once(mut s) => s.send_request(req).await.map_err(|source| UpstreamError::Request { addr, source }),
            Conn::H1(mut s) => {
                let r = s.send_request(req).await;
                if r.is_ok() {
                    let mut c = self.owner.conns.lock().unwrap_or_else(PoisonError::into_inner);
                    let list = c.h1.entry(self.key).or_default();
                    if list.len() < MAX_IDLE_H1 {
                        list.push(s);
                    }
                }
                r.map_err(|source| UpstreamError::Request { addr, source })
            }
        }
    }
}

/// A request on its way to an endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Dest<'a> {
    /// Endpoint `ip:target port` (the CONNECT authority).
    pub addr: SocketAddr,
    /// Identity the endpoint must prove.
    pub identity: &'a Identity,
    /// HTTP version.
    pub version: Version,
    /// The original client.
    pub client: Option<SocketAddr>,
}

impl Upstreams {
    /// Connections opened as `src` through `pool`, to HBONE on `hbone_port` of each endpoint.
    pub fn new(pool: Pool, src: Identity, hbone_port: u16) -> Self {
        Upstreams { pool, src, hbone_port, conns: Mutex::default() }
    }

    /// A connection to the endpoint, reused when one is free, opened otherwise. Connecting
    /// before the request exists lets a connect failure be retried without losing the body.
    pub async fn sender(&self, d: Dest<'_>) -> Result<Sender<'_>, UpstreamError> {
        let key = Key { addr: d.addr, dst: d.identity.clone(), version: d.version };
        let conn = match d.version {
            Version::H2 => {
                let existing = {
                    let c = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
                    c.h2.get(&key).filter(|s| !s.is_closed()).cloned()
                };
                match existing {
                    Some(s) => Conn::H2(s),
                    None => {
                        let io = self.tunnel(&d).await?;
                        let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                            .await
                            .map_err(|source| UpstreamError::Handshake { addr: d.addr, source })?;
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                            }
                        });
                        self.conns.lock().unwrap_or_else(PoisonError::into_inner).h2.insert(key.clone(), s.clone());
                        Conn::H2(s)
                    }
                }
            }
            Version::H1 => {
                let idle = {
                    let mut c = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
                    let list = c.h1.entry(key.clone()).or_default();
                    list.retain(|s| !s.is_closed());
                    list.iter().position(|s| s.is_ready()).map(|i| list.swap_remove(i))
                };
                match idle {
                    Some(s) => Conn::H1(s),
                    None => Conn::H1(self.open_h1(&d, false).await?),
                }
            }
        };
        Ok(Sender { owner: self, key, conn })
    }

    /// A new HTTP/1.1 connection for one request, never pooled and able to switch protocols:
    /// a request that asks to upgrade (WebSocket) takes the connection over when the
    /// application answers `101 Switching Protocols`.
    pub async fn dedicated(&self, d: Dest<'_>) -> Result<Sender<'_>, UpstreamError> {
        let key = Key { addr: d.addr, dst: d.identity.clone(), version: Version::H1 };
        let s = self.open_h1(&d, true).await?;
        Ok(Sender { owner: self, key, conn: Conn::H1Once(s) })
    }

    async fn open_h1(&self, d: &Dest<'_>, upgrades: bool) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let io = self.tunnel(d).await?;
        let (s, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| UpstreamError::Handshake { addr: d.addr, source })?;
        tokio::spawn(async move {
            let r = if upgrades { conn.with_upgrades().await } else { conn.await };
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream HTTP/1 connection ended");
            }
        });
        Ok(s)
    }

    async fn tunnel(&self, d: &Dest<'_>) -> Result<hbone::tunnel::stream::H2Stream, UpstreamError> {
        let key = PoolKey {
            src: self.src.clone(),
            dst: d.identity.clone(),
            addr: SocketAddr::new(d.addr.ip(), self.hbone_port),
        };
        self.pool
            .connect(&key, &ConnectTarget::new(d.addr, d.client))
            .await
            .map_err(|source| UpstreamError::Connect { addr: d.addr, source })
    }

    /// Opens a raw tunnel (for plain TCP forwarding).
    pub async fn tcp(
        &self,
        addr: SocketAddr,
        identity: &Identity,
        client: Option<SocketAddr>,
    ) -> Result<hbone::tunnel::stream::H2Stream, UpstreamError> {
        self.tunnel(&Dest { addr, identity, version: Version::H1, client }).await
    }
}
