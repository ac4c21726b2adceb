//! Loopback test topology: app → outbound pump → pool → HBONE server → handler → backend.
#![allow(dead_code)]

pub mod raw_h2;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use hbone::testing::*;
use hbone::tunnel::H2Settings;
use hbone::tunnel::server::{Handler, HandshakeLimit, ServeError, Server};
use hbone::{CertStore, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// An HBONE server on loopback that reports each connection's outcome.
pub struct TestServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub outcomes: mpsc::UnboundedReceiver<Result<(), ServeError>>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept_task: AbortHandle,
}

impl TestServer {
    pub async fn start(store: &CertStore, identity: Identity, handler: impl Handler) -> Self {
        Self::start_with(store, identity, H2Settings::default(), None, handler).await
    }

    /// With `settings`, and handshakes under `limit` if given.
    pub async fn start_with(
        store: &CertStore,
        identity: Identity,
        settings: H2Settings,
        limit: Option<HandshakeLimit>,
        handler: impl Handler,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = Server::new(hbone::tls::server_config(store, identity), settings, handler);
        if let Some(limit) = limit {
            server = server.limit_handshakes(limit);
        }
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (tx, outcomes) = mpsc::unbounded_channel();
        let accept_task = {
            let (accepted, conns) = (accepted.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let (tcp, peer) = listener.accept().await.unwrap();
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (server, tx) = (server.clone(), tx.clone());
                    let task = tokio::spawn(async move {
                        let _ = tx.send(server.serve_connection(tcp, peer).await);
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            })
            .abort_handle()
        };
        TestServer { addr, accepted, outcomes, conns, accept_task }
    }

    /// Drops every open server-side connection abruptly.
    pub fn kill_connections(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// The next connection outcome, failing the test if none comes within `within`.
    pub async fn next_outcome(&mut self, within: Duration) -> Result<(), ServeError> {
        tokio::time::timeout(within, self.outcomes.recv()).await.expect("server reported in time").unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.kill_connections();
    }
}

/// Byte `i` of the test pattern: not periodic at any power of two, so a lost, repeated or
/// reordered chunk shows.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8 ^ (i >> 20) as u8
}

/// Sends `len` pattern bytes through `tcp`, then FIN, while reading the echo and checking
/// every byte; returns the number of bytes echoed.
pub async fn echo_check(tcp: TcpStream, len: u64) -> u64 {
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(buf.len() as u64) as usize;
            for (j, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(off + j as u64);
            }
            w.write_all(&buf[..n]).await.unwrap();
            off += n as u64;
        }
        w.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        for (j, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, pattern(got + j as u64), "byte {} differs", got + j as u64);
        }
        got += n as u64;
    }
    writer.await.unwrap();
    got
}
