//! Pooled HBONE connections, keyed by (source identity, destination identity, peer address).
//!
//! Many CONNECT streams share a connection, up to a limit, then a new connection opens.
//! Opening is single-flight per key, so a burst of requests for a new destination makes one
//! connection, not one per request. Connections idle past a timeout are closed. A request
//! that fails because its pooled connection died is retried once on a fresh connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http2::Connection;
use crate::identity::Identity;
use crate::store::CertStore;
use crate::tls::client_config;

use super::H2Settings;
use super::client::{ConnectError, ConnectTarget, connect_stream, handshake};
use super::stream::H2Stream;

/// Which pooled connections a request may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The identity the tunnel is opened as (its certificate is presented).
    pub src: Identity,
    /// The identity the peer must prove.
    pub dst: Identity,
    /// The peer's HBONE address.
    pub addr: SocketAddr,
}

/// Opens the TCP connection under a tunnel. ztunnel supplies one that marks the socket and
/// binds in the right network namespace; the default is a plain connect.
pub type Connector =
    Arc<dyn Fn(SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync>;

/// Pool tuning.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Streams one connection carries at most before another one opens.
    pub max_streams_per_connection: usize,
    /// A connection with no streams for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 and handshake settings.
    pub h2: H2Settings,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { max_streams_per_connection: 100, idle_timeout: Duration::from_secs(60), h2: H2Settings::default() }
    }
}

/// A pool of HBONE connections. Clones share the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    store: CertStore,
    cfg: PoolConfig,
    connector: Connector,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Conn>>>>,
    /// One opener at a time per key.
    opening: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
    sweeper_started: AtomicBool,
}

struct Conn {
    id: u64,
    h2: Connection,
    active: AtomicUsize,
    /// Milliseconds since the pool's epoch when the last stream ended.
    idle_since: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.h2.close();
    }
}

/// Counts a stream against its connection for as long as the stream lives.
pub struct StreamGuard {
    conn: Arc<Conn>,
    inner: Weak<Inner>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard").field("conn", &self.conn.id).finish()
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(inner) = self.inner.upgrade()
        {
            self.conn.idle_since.store(inner.now_ms(), Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("connections", &self.connection_count()).finish()
    }
}

impl Pool {
    /// A pool that opens connections with `connector` and takes certificates and roots from `store`.
    pub fn new(cfg: PoolConfig, store: CertStore, connector: Option<Connector>) -> Self {
        let connector = connector.unwrap_or_else(|| Arc::new(|addr| Box::pin(TcpStream::connect(addr))));
        Pool {
            inner: Arc::new(Inner {
                store,
                cfg,
                connector,
                epoch: Instant::now(),
                next_id: AtomicU64::new(1),
                conns: Mutex::default(),
                opening: Mutex::default(),
                sweeper_started: AtomicBool::new(false),
            }),
        }
    }

    /// Opens a tunnel stream to `target` through the peer named by `key`.
    pub async fn connect(&self, key: &PoolKey, target: &ConnectTarget) -> Result<H2Stream, ConnectError> {
        let mut newer_than = 0;
        if let Some(conn) = self.inner.checkout(key, 0) {
            match self.open_on(&conn, key, target).await {
                Err(e) if e.connection_failed() => {
                    tracing::debug!(peer = %key.addr, error = %e, "pooled HBONE connection failed; retrying on a new one");
                    conn.closed.store(true, Ordering::Release);
                    newer_than = conn.id;
                }
                other => return other,
            }
        }
        let conn = self.connection_newer_than(key, newer_than).await?;
        self.open_on(&conn, key, target).await
    }

    /// Number of open pooled connections (all keys).
    pub fn connection_count(&self) -> usize {
        let conns = self.inner.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.values().flatten().filter(|c| !c.closed.load(Ordering::Acquire)).count()
    }

    async fn open_on(&self, conn: &Arc<Conn>, key: &PoolKey, target: &ConnectTarget) -> Result<H2Stream, ConnectError> {
        let guard = Arc::new(StreamGuard { conn: conn.clone(), inner: Arc::downgrade(&self.inner) });
        let stream = connect_stream(&conn.h2, key.addr, target, self.inner.cfg.h2.answer_timeout).await?;
        Ok(H2Stream::new(stream, Some(guard)))
    }

    /// A connection with room for one more stream (already counted), opened after connection
    /// `newer_than`: either one another task just opened, or a new one.
    async fn connection_newer_than(&self, key: &PoolKey, newer_than: u64) -> Result<Arc<Conn>, ConnectError> {
        let lock = {
            let mut opening = self.inner.opening.lock().unwrap_or_else(PoisonError::into_inner);
            opening.entry(key.clone()).or_default().clone()
        };
        let _opening = lock.lock().await;
        if let Some(conn) = self.inner.checkout(key, newer_than) {
            return Ok(conn);
        }
        let opened = self.open_connection(key).await;
        if let Ok(conn) = &opened {
            let mut conns = self.inner.conns.lock().unwrap_or_else(PoisonError::into_inner);
            conns.entry(key.clone()).or_default().push(conn.clone());
        }
        opened
    }

    async fn open_connection(&self, key: &PoolKey) -> Result<Arc<Conn>, ConnectError> {
        self.start_sweeper();
        let inner = &self.inner;
        // A pod that connects out right after it starts may not have its certificate yet.
        let cert = inner
            .store
            .wait_for(&key.src, inner.cfg.h2.handshake_timeout)
            .await
            .ok_or_else(|| ConnectError::NoCertificate(key.src.clone()))?;
        let tls = client_config(&inner.store, cert, vec![key.dst.clone()]);
        let closed = Arc::new(AtomicBool::new(false));
        let on_close = {
            let closed = closed.clone();
            move || closed.store(true, Ordering::Release)
        };
        let addr = key.addr;
        let setup = async {
            let tcp = (inner.connector)(addr).await.map_err(|source| ConnectError::Tcp { addr, source })?;
            handshake(tcp, addr, tls, &inner.cfg.h2, on_close).await
        };
        let h2 = tokio::time::timeout(inner.cfg.h2.handshake_timeout, setup)
            .await
            .map_err(|_| ConnectError::HandshakeTimeout(addr))??;
        tracing::debug!(peer = %addr, src = %key.src, dst = %key.dst, "opened HBONE connection");
        Ok(Arc::new(Conn {
            id: inner.next_id.fetch_add(1, Ordering::Relaxed),
            h2,
            active: AtomicUsize::new(1),
            idle_since: AtomicU64::new(inner.now_ms()),
            closed,
        }))
    }

    fn start_sweeper(&self) {
        if self.inner.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let period = (self.inner.cfg.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.sweep();
            }
        });
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Takes a stream slot on a live connection for `key` opened after `newer_than`.
    fn checkout(&self, key: &PoolKey, newer_than: u64) -> Option<Arc<Conn>> {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        let max = self.cfg.max_streams_per_connection;
        conns.get(key)?.iter().find_map(|c| {
            if c.id <= newer_than || c.closed.load(Ordering::Acquire) || !c.h2.is_ready() {
                return None;
            }
            c.active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                .ok()
                .map(|_| c.clone())
        })
    }

    /// Drops closed connections and those idle past the timeout. Dropping the last handle of
    /// an idle connection closes it with GOAWAY.
    fn sweep(&self) {
        let now = self.now_ms();
        let idle_ms = self.cfg.idle_timeout.as_millis() as u64;
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|_, list| {
            list.retain(|c| {
                if c.closed.load(Ordering::Acquire) {
                    return false;
                }
                let idle = c.active.load(Ordering::Acquire) == 0
                    && now.saturating_sub(c.idle_since.load(Ordering::Acquire)) >= idle_ms;
                !idle
            });
            !list.is_empty()
        });
        // Opening locks live as long as their key has connections or someone holds them, so
        // a burst never sees two locks for one key.
        let mut opening = self.opening.lock().unwrap_or_else(PoisonError::into_inner);
        opening.retain(|key, lock| conns.contains_key(key) || Arc::strong_count(lock) > 1);
    }
}
