//! The delta ADS server: serves a [`ResourceStore`] to every connected
//! client, each on its own stream with its own subscriptions and ACK state.

mod ads;
mod budget;
pub(crate) mod push;
mod requests;
mod status;
mod stream;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Status;
use tonic::transport::server::Connected;

pub use ads::{AdsService, Authenticate};
pub use budget::DEFAULT_PUSH_BUDGET;
use budget::PushBudget;
use push::Push;
use requests::Requests;
use status::Counters;
pub use status::{ConnectionStatus, NackStatus, ServerStats, TypeStatus};
use stream::{Ending, StreamState};

use crate::store::ResourceStore;

/// Responses queued per stream. One push per type is outstanding at a time,
/// so this only needs to cover the number of subscribed types.
const RESPONSE_QUEUE: usize = 16;

/// HTTP/2 ping interval on served connections.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors from [`XdsServer::serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP/2 transport failed.
    #[error("xDS server transport failed")]
    Transport(#[source] tonic::transport::Error),
}

/// Server-wide state shared by every stream.
#[derive(Debug)]
struct Shared {
    store: ResourceStore,
    counters: Arc<Counters>,
    streams: Mutex<HashMap<u64, Arc<Mutex<StreamState>>>>,
    next_id: AtomicU64,
    /// Bumped to close every open stream.
    disconnect: watch::Sender<u64>,
    budget: PushBudget,
}

/// A delta ADS server over one [`ResourceStore`]. Cheap to clone; clones
/// share streams and counters.
#[derive(Debug, Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

/// Removes a stream from the registry when its task ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.streams.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

impl XdsServer {
    /// A server streaming from `store`, with [`DEFAULT_PUSH_BUDGET`].
    pub fn new(store: ResourceStore) -> Self {
        Self::with_push_budget(store, DEFAULT_PUSH_BUDGET)
    }

    /// A server streaming from `store` that keeps at most about `bytes` of large pushes
    /// (over 64 KiB encoded: full syncs) unanswered at a time across all streams; others wait
    /// their turn. A push answered, or unanswered for 2 s, gives its share back. Everyday
    /// changes are small and never wait.
    pub fn with_push_budget(store: ResourceStore, bytes: usize) -> Self {
        let (disconnect, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                store,
                counters: Arc::default(),
                streams: Mutex::default(),
                next_id: AtomicU64::new(1),
                disconnect,
                budget: PushBudget::new(bytes),
            }),
        }
    }

    /// The store this server streams from.
    pub fn store(&self) -> &ResourceStore {
        &self.shared.store
    }

    /// The ADS service, to mount beside others on one tonic server. Any caller may open a
    /// stream: for a port that is not otherwise protected, see [`XdsServer::service_with_auth`].
    pub fn service(&self) -> AdsService {
        AdsService::new(self.clone(), None)
    }

    /// The ADS service, opening a stream only once `auth` accepts its request's metadata (a
    /// bearer token, say); a refused stream ends with `auth`'s status before anything is read.
    pub fn service_with_auth(&self, auth: Authenticate) -> AdsService {
        AdsService::new(self.clone(), Some(auth))
    }

    fn count_refused(&self) {
        Counters::add(&self.shared.counters.streams_refused, 1);
    }

    /// Registers a new stream from `peer` and starts its task; the receiver carries its pushes.
    /// The stream ends once `shutdown` (of the `serve` it came through) says so; one opening
    /// after that ends at once.
    fn open_stream(
        &self,
        peer: Option<std::net::SocketAddr>,
        requests: Requests,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> ReceiverStream<Result<Push, Status>> {
        let shared = &self.shared;
        // Subscribed before the check, so a disconnect_all from now on reaches the stream.
        let ending = Ending::new(shared.disconnect.subscribe(), shutdown);
        if ending.shutting_down() {
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err(Status::unavailable("xDS server is shutting down")));
            return ReceiverStream::new(rx);
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(Mutex::new(StreamState::new(id, peer)));
        shared.streams.lock().unwrap_or_else(|p| p.into_inner()).insert(id, state.clone());
        Counters::add(&shared.counters.streams, 1);
        let registration = Registration { shared: shared.clone(), id };
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let store = shared.store.clone();
        let counters = shared.counters.clone();
        let budget = shared.budget.clone();
        tokio::spawn(async move {
            let _registration = registration;
            stream::run(state, store, counters, budget, requests, tx, ending).await;
        });
        ReceiverStream::new(rx)
    }

    /// Serves plaintext HTTP/2 on `listener` until `shutdown` completes, then
    /// closes every stream it serves and waits for connections to finish.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        self.serve_incoming(TcpListenerStream::new(listener), shutdown).await
    }

    /// Like [`XdsServer::serve`], over connections the caller accepts (for
    /// example TLS streams).
    pub async fn serve_incoming<I, IO, IE>(
        &self,
        incoming: I,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError>
    where
        I: tokio_stream::Stream<Item = Result<IO, IE>>,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Streams never end on their own; without this the graceful shutdown below would wait
        // forever. Not a disconnect_all: a stream can still open after one, its HEADERS already
        // on their way when the shutdown begins (HTTP/2 accepts streams until the client has
        // seen the GOAWAY), and would be left open; this stays set for any that comes.
        let (closing, closed) = watch::channel(false);
        let signal = async {
            shutdown.await;
            closing.send_replace(true);
        };
        tonic::transport::Server::builder()
            // Pings find clients that vanished without closing the connection.
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .serve_with_incoming_shutdown(self.service().shutting_down_with(closed), incoming, signal)
            .await
            .map_err(ServeError::Transport)
    }

    /// Ends every open stream with `UNAVAILABLE`; clients reconnect and resume.
    pub fn disconnect_all(&self) {
        self.shared.disconnect.send_modify(|n| *n += 1);
    }

    /// Number of open streams (without building their status).
    pub fn connection_count(&self) -> usize {
        self.shared.streams.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// For every open stream, its id and whether it holds every resource of `changes` in
    /// the given version (`None`: removed), counting resources it does not subscribe to as
    /// held. Answers from the streams' state directly: unlike
    /// [`connections`](Self::connections) it copies no status, so it is cheap to poll while
    /// pushes are in flight.
    pub fn acknowledged(&self, changes: &[(&str, &str, Option<&str>)]) -> Vec<(u64, bool)> {
        let streams: Vec<_> = self.shared.streams.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        streams
            .iter()
            .map(|s| {
                let s = stream::lock(s);
                (s.id(), changes.iter().all(|(t, n, v)| s.holds(t, n, *v)))
            })
            .collect()
    }

    /// Status of every open stream, ordered by stream id.
    pub fn connections(&self) -> Vec<ConnectionStatus> {
        let streams: Vec<_> = self.shared.streams.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut out: Vec<_> = streams.iter().map(|s| stream::lock(s).status()).collect();
        out.sort_by_key(|c| c.id);
        out
    }

    /// Totals since the server was created.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }
}
