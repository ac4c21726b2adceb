//! Pooled HBONE connections, keyed by (source identity, destination identity, peer address).
//!
//! Many CONNECT streams share a connection, up to a limit, then a new connection opens.
//! Opening is single-flight per key: the callers that need a connection while one is being
//! opened wait for that open and share its outcome, the new connection or the failure, so a
//! burst of requests for a new destination makes one connection, and towards a dead peer
//! fails after one handshake timeout, not one per request queued behind another. Connections
//! idle past a timeout are closed. A request that fails because its pooled connection died
//! is retried once on a fresh connection.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::http2::Connection;
use crate::identity::Identity;
use crate::store::CertStore;
use crate::tls::client_config;

use super::H2Settings;
use super::client::{ConnectError, ConnectTarget, NoUsableCert, connect_stream, handshake};
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
    /// The open in flight for each key, if any: an entry lives exactly as long as its
    /// [`Opener`], which removes it when the open ends or is cancelled. Locked before `conns`
    /// when both are.
    opening: Mutex<HashMap<PoolKey, Attempt>>,
    sweeper_started: AtomicBool,
}

/// What the callers waiting for an open get: the connection (without a stream slot taken for
/// them), or the opener's failure.
type Outcome = Result<Arc<Conn>, Arc<ConnectError>>;

/// An open in flight: `None` until it ends. The channel closes without an outcome if the
/// opener is cancelled.
type Attempt = watch::Receiver<Option<Outcome>>;

struct Conn {
    id: u64,
    h2: Connection,
    active: AtomicUsize,
    /// Milliseconds since the pool's epoch when the last stream ended.
    idle_since: AtomicU64,
    closed: Arc<AtomicBool>,
}

impl Conn {
    /// Takes a stream slot if fewer than `max` are taken.
    fn acquire(&self, max: usize) -> bool {
        self.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.h2.close();
    }
}

/// The caller opening a connection for a key. Dropping it, when the open ends or when the
/// caller is cancelled mid-open, removes the key's `opening` entry and then hands the outcome,
/// if there is one, to the waiters: after a cancel they find the channel closed and one of
/// them opens anew, which the others wait for.
struct Opener<'a> {
    inner: &'a Inner,
    key: &'a PoolKey,
    tx: watch::Sender<Option<Outcome>>,
    outcome: Option<Outcome>,
}

impl Opener<'_> {
    /// Pools a new connection and records what the waiters get; returns `opened` to the opener.
    fn finish(mut self, opened: Result<Arc<Conn>, ConnectError>) -> Result<Arc<Conn>, ConnectError> {
        self.outcome = Some(match &opened {
            Ok(conn) => {
                // Pooled before the entry goes, so a caller that finds no open in flight finds
                // this connection.
                let mut conns = self.inner.conns.lock().unwrap_or_else(PoisonError::into_inner);
                conns.entry(self.key.clone()).or_default().push(conn.clone());
                Ok(conn.clone())
            }
            Err(e) => Err(Arc::new(copy_error(e))),
        });
        opened
    }
}

impl Drop for Opener<'_> {
    fn drop(&mut self) {
        // The entry goes before the outcome is sent: a waiter that finds the new connection
        // full and asks again must not find this finished open still in flight.
        let mut opening = self.inner.opening.lock().unwrap_or_else(PoisonError::into_inner);
        opening.remove(self.key);
        drop(opening);
        if let Some(outcome) = self.outcome.take() {
            self.tx.send_replace(Some(outcome));
        }
    }
}

/// What a caller needing a new connection does next.
enum Next<'a> {
    /// Use this connection (a slot is taken).
    Use(Arc<Conn>),
    /// Open one, for itself and whoever comes while it opens.
    Open(Opener<'a>),
    /// Wait for the open in flight.
    Wait(Attempt),
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
    /// `newer_than`: one already pooled, the one the open in flight gets (its failure if it
    /// fails), or a new one.
    async fn connection_newer_than(&self, key: &PoolKey, newer_than: u64) -> Result<Arc<Conn>, ConnectError> {
        loop {
            let mut attempt = match self.next_step(key, newer_than) {
                Next::Use(conn) => return Ok(conn),
                Next::Open(opener) => {
                    let opened = self.open_connection(key).await;
                    return opener.finish(opened);
                }
                Next::Wait(attempt) => attempt,
            };
            let outcome = attempt.wait_for(Option::is_some).await.map(|o| o.clone());
            match outcome {
                // The opener's own connection is used even if it has closed since, as the
                // opener does: the request then fails rather than opening again and again.
                Ok(Some(Ok(conn))) if conn.acquire(self.inner.cfg.max_streams_per_connection) => return Ok(conn),
                // Filled by the other waiters: ask again.
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(copy_error(&e)),
                // The opener was cancelled: ask again, and the first to ask opens.
                Ok(None) | Err(_) => {}
            }
        }
    }

    fn next_step<'a>(&'a self, key: &'a PoolKey, newer_than: u64) -> Next<'a> {
        let mut opening = self.inner.opening.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(conn) = self.inner.checkout(key, newer_than) {
            return Next::Use(conn);
        }
        if let Some(attempt) = opening.get(key) {
            return Next::Wait(attempt.clone());
        }
        let (tx, attempt) = watch::channel(None);
        opening.insert(key.clone(), attempt);
        Next::Open(Opener { inner: &self.inner, key, tx, outcome: None })
    }

    async fn open_connection(&self, key: &PoolKey) -> Result<Arc<Conn>, ConnectError> {
        self.start_sweeper();
        let inner = &self.inner;
        // A pod that connects out right after it starts may not have its certificate yet.
        let cert = inner
            .store
            .wait_for(&key.src, inner.cfg.h2.handshake_timeout)
            .await
            .ok_or_else(|| ConnectError::NoCertificate(NoUsableCert::Missing(key.src.clone())))?;
        // The handshake would not present it either (tls::client_config); failing here tells
        // the caller why, and no peer sees a connection that could only be refused.
        cert.check_unexpired(SystemTime::now()).map_err(|e| ConnectError::NoCertificate(NoUsableCert::Expired(e)))?;
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
            let usable = c.id > newer_than && !c.closed.load(Ordering::Acquire) && c.h2.is_ready();
            (usable && c.acquire(max)).then(|| c.clone())
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
        // `opening` needs no sweeping: its entries go with their openers.
    }
}

/// A copy of `e` for a caller that waited for the open that failed with it: the same variant
/// and text, and for TLS the same rustls error, so identity refusals can still be dug out.
fn copy_error(e: &ConnectError) -> ConnectError {
    match e {
        ConnectError::NoCertificate(why) => ConnectError::NoCertificate(why.clone()),
        ConnectError::Tcp { addr, source } => ConnectError::Tcp { addr: *addr, source: copy_io_error(source) },
        ConnectError::Tls { addr, source } => ConnectError::Tls { addr: *addr, source: copy_io_error(source) },
        ConnectError::HandshakeTimeout(addr) => ConnectError::HandshakeTimeout(*addr),
        ConnectError::Http2 { addr, source } => ConnectError::Http2 { addr: *addr, source: source.clone() },
        ConnectError::AnswerTimeout { addr, after } => ConnectError::AnswerTimeout { addr: *addr, after: *after },
        ConnectError::Refused { addr, authority, status, reason } => {
            ConnectError::Refused { addr: *addr, authority: *authority, status: *status, reason: reason.clone() }
        }
    }
}

/// `io::Error` is not `Clone`: this keeps the kind, an OS error's code, a rustls error, and
/// otherwise the text.
fn copy_io_error(e: &io::Error) -> io::Error {
    if let Some(code) = e.raw_os_error() {
        return io::Error::from_raw_os_error(code);
    }
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(tls) => io::Error::new(e.kind(), tls.clone()),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestCa, id};

    /// A pool whose opens wait for a source certificate that never comes: each fails with
    /// `NoCertificate` after exactly the handshake timeout (the clock is paused).
    fn pool_without_certificates(timeout: Duration) -> (Pool, PoolKey) {
        let store = CertStore::new(TestCa::new("pool").roots());
        let h2 = H2Settings { handshake_timeout: timeout, ..Default::default() };
        let pool = Pool::new(PoolConfig { h2, ..PoolConfig::default() }, store, None);
        let key =
            PoolKey { src: id("shop", "web"), dst: id("shop", "db"), addr: SocketAddr::from(([127, 0, 0, 1], 1)) };
        (pool, key)
    }

    fn spawn_connect(pool: &Pool, key: &PoolKey) -> tokio::task::JoinHandle<Result<H2Stream, ConnectError>> {
        let (pool, key) = (pool.clone(), key.clone());
        tokio::spawn(async move { pool.connect(&key, &ConnectTarget::new(key.addr, None)).await })
    }

    #[tokio::test]
    async fn an_expired_own_certificate_fails_the_open_before_dialing() {
        let ca = TestCa::new("pool");
        let store = CertStore::new(ca.roots());
        let web = id("shop", "web");
        let now = SystemTime::now();
        let not_after = now - Duration::from_secs(60);
        store.insert(ca.issue_between(&web, now - Duration::from_secs(86400), not_after));
        let dials = Arc::new(AtomicUsize::new(0));
        let connector: Connector = {
            let dials = dials.clone();
            Arc::new(move |addr| {
                dials.fetch_add(1, Ordering::SeqCst);
                Box::pin(TcpStream::connect(addr))
            })
        };
        let pool = Pool::new(PoolConfig::default(), store, Some(connector));
        let key = PoolKey { src: web.clone(), dst: id("shop", "db"), addr: SocketAddr::from(([127, 0, 0, 1], 1)) };
        let callers: Vec<_> = (0..2).map(|_| spawn_connect(&pool, &key)).collect();
        for c in callers {
            let e = c.await.unwrap().unwrap_err();
            let ConnectError::NoCertificate(NoUsableCert::Expired(expired)) = &e else {
                panic!("expected an expired own certificate, got {e:?}");
            };
            assert_eq!(expired.identity, web);
            // Certificates carry whole seconds.
            assert!(expired.not_after <= not_after && not_after - Duration::from_secs(1) <= expired.not_after);
            assert!(e.to_string().contains(web.as_str()) && e.to_string().contains("expired"), "{e}");
        }
        assert_eq!(dials.load(Ordering::SeqCst), 0, "nothing was dialed");
        assert_eq!(pool.connection_count(), 0);
    }

    fn opening(pool: &Pool) -> usize {
        pool.inner.opening.lock().unwrap().len()
    }

    #[tokio::test(start_paused = true)]
    async fn callers_for_one_key_wait_for_one_open_and_get_its_failure() {
        let timeout = Duration::from_secs(5);
        let (pool, key) = pool_without_certificates(timeout);
        let started = Instant::now();
        let callers: Vec<_> = (0..3).map(|_| spawn_connect(&pool, &key)).collect();
        for c in callers {
            let e = c.await.unwrap().unwrap_err();
            assert!(matches!(&e, ConnectError::NoCertificate(NoUsableCert::Missing(src)) if *src == key.src), "{e}");
        }
        assert_eq!(started.elapsed(), timeout, "all three fail with the one open");
        assert_eq!(opening(&pool), 0, "a finished open leaves nothing behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_opener_leaves_nothing_behind_and_a_waiter_opens_instead() {
        let timeout = Duration::from_secs(5);
        let (pool, key) = pool_without_certificates(timeout);
        let opener = spawn_connect(&pool, &key);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let waiters: Vec<_> = (0..3).map(|_| spawn_connect(&pool, &key)).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(opening(&pool), 1);
        opener.abort();
        assert!(opener.await.unwrap_err().is_cancelled());
        let cancelled = Instant::now();
        for w in waiters {
            assert!(matches!(w.await.unwrap(), Err(ConnectError::NoCertificate(_))));
        }
        assert_eq!(cancelled.elapsed(), timeout, "one waiter took the open over for all three");
        assert_eq!(opening(&pool), 0);

        // An opener cancelled with nobody waiting leaves no entry either.
        let lone = spawn_connect(&pool, &key);
        tokio::time::sleep(Duration::from_secs(1)).await;
        lone.abort();
        assert!(lone.await.unwrap_err().is_cancelled());
        assert_eq!(opening(&pool), 0);
    }
}
