//! The harness's in-process servers (h2c, gRPC): a listener bound inside a pod's namespace,
//! served by a single-threaded runtime on a thread of its own, stopped by dropping the server
//! or by tearing its topology down. Stopping ends the runtime (dropping every connection) and
//! joins the thread.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex, Weak};
use std::thread::{self, JoinHandle};

use tokio::sync::oneshot;

use crate::Error;
use crate::netns::Netns;
use crate::process::Stop;

/// A running server thread; stopped when dropped.
pub(crate) struct ServerThread {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

struct Inner {
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ServerThread {
    /// Binds `port` (all addresses) inside `netns` and runs `serve(listener, stop)` on its own
    /// thread; `serve` should return soon after `stop` resolves. `what` names the server in
    /// errors and the thread.
    pub(crate) fn start<F, Fut>(netns: &Netns, port: u16, what: &str, serve: F) -> Result<ServerThread, Error>
    where
        F: FnOnce(tokio::net::TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let listener = netns.tcp_listener(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)))?;
        let socket_err =
            |action: &str, source| Error::Socket { action: action.into(), netns: netns.name().into(), source };
        let addr = listener.local_addr().map_err(|e| socket_err("read listener address", e))?;
        listener.set_nonblocking(true).map_err(|e| socket_err("make listener non-blocking", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Spawn { command: format!("runtime for {what}"), source })?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = thread::Builder::new()
            .name(what.chars().take(15).collect())
            .spawn(move || {
                runtime.block_on(async move {
                    // Registering with the reactor needs the runtime: done on this thread.
                    if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                        serve(listener, stop_rx).await;
                    }
                })
            })
            .map_err(|source| Error::Spawn { command: format!("thread for {what}"), source })?;
        let inner = Arc::new(Inner { stop: Mutex::new(Some(stop_tx)), thread: Mutex::new(Some(thread)) });
        let as_stop: Weak<dyn Stop> = Arc::<Inner>::downgrade(&inner);
        netns.context().reaper.track(as_stop);
        Ok(ServerThread { inner, addr })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.inner.stop_now();
    }
}

impl Stop for Inner {
    fn stop_now(&self) {
        if let Some(tx) = self.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}
