//! The node-agent end of ZDS: keeps the set of enrolled pods with their
//! namespace handles, replays it to every ztunnel that connects, and streams
//! later changes to all of them, one request at a time per connection, each
//! waiting for that ztunnel's ack.
//!
//! Every connected ztunnel is served at once, so during a rolling upgrade the
//! new ztunnel receives every pod (and binds its listeners beside the old
//! one's) while the old one still serves them. Each connection has its own
//! task and queue: a slow, refusing or vanishing ztunnel ends only its own
//! connection. A connection's snapshot is taken under the same lock that
//! queues live changes, so every change reaches it exactly once, after the
//! snapshot, in the order changes were made.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds::{
    AddWorkload, DelWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
    workload_request, workload_response,
};
use tokio::sync::{mpsc, oneshot};

use crate::inpod::seqpacket::{SeqPacket, SeqPacketListener};
use crate::netns::{Netns, NetnsId};

/// Errors telling a pod to ztunnel.
#[derive(Debug, thiserror::Error)]
pub enum ZdsServerError {
    /// A connected ztunnel answered the request with an error.
    #[error("ztunnel refused pod {uid}: {error}")]
    Refused {
        /// The pod.
        uid: String,
        /// ztunnel's reason.
        error: String,
    },
}

/// Errors on one exchange with ztunnel; they end that connection.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("ztunnel closed the connection")]
    Closed,
    #[error("undecodable message from ztunnel: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("unexpected message from ztunnel: {0}")]
    Protocol(String),
}

/// A pod handed to ztunnel. The namespace handle is shared by the requests
/// queued for each connection.
#[derive(Debug)]
struct Pod {
    info: Option<WorkloadInfo>,
    netns: Arc<Netns>,
}

/// ztunnel's answer to one request: `Err` carries its refusal.
type Outcome = Result<(), String>;

/// A live change queued for one connection.
struct Queued {
    req: WorkloadRequest,
    netns: Option<Arc<Netns>>,
    /// Where the ack goes, if someone waits for it.
    reply: Option<oneshot::Sender<Outcome>>,
}

/// One ztunnel connection as the server tracks it.
struct Conn {
    tx: mpsc::UnboundedSender<Queued>,
    /// Has acknowledged its snapshot; only then do callers wait for its acks.
    live: bool,
    /// Its task, aborted by [`ZdsServer::disconnect`].
    task: Option<tokio::task::AbortHandle>,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<String, Pod>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl Inner {
    /// Queues `req` for every connection; returns the acks to wait for (those
    /// of connections past their snapshot). A connection whose task is gone
    /// is skipped: its guard is about to remove it.
    fn broadcast(&self, req: &WorkloadRequest, netns: Option<&Arc<Netns>>) -> Vec<(u64, oneshot::Receiver<Outcome>)> {
        let mut waits = Vec::new();
        for (id, conn) in &self.conns {
            let (reply, wait) = if conn.live {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let queued = Queued { req: req.clone(), netns: netns.cloned(), reply };
            if conn.tx.send(queued).is_ok()
                && let Some(rx) = wait
            {
                waits.push((*id, rx));
            }
        }
        waits
    }
}

/// The agent's ZDS server.
pub struct ZdsServer {
    inner: Mutex<Inner>,
    timeout: Duration,
}

/// Removes a connection from the server when its task ends, however it ends.
struct Registered<'a> {
    server: &'a ZdsServer,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.server.lock().conns.remove(&self.id);
    }
}

impl ZdsServer {
    /// A server that waits `timeout` for each hello and ack.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::default(), timeout })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code panics while holding the lock; if one did, the map is still
        // consistent (every update is a single insert or remove).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Accepts ztunnel connections on `listener` forever, serving each on its
    /// own task.
    pub async fn serve(self: Arc<Self>, listener: SeqPacketListener) {
        loop {
            match listener.accept().await {
                Ok(conn) => self.clone().spawn_conn(conn),
                Err(e) => {
                    tracing::warn!(error = %e, "accepting ztunnel connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn spawn_conn(self: Arc<Self>, conn: SeqPacket) {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            inner.conns.insert(id, Conn { tx, live: false, task: None });
            id
        };
        let this = self.clone();
        let task = tokio::spawn(async move {
            let _registered = Registered { server: &this, id };
            match this.run_conn(id, &conn, rx).await {
                Ok(()) => tracing::info!(conn = id, "ztunnel connection closed by the agent"),
                Err(e) => tracing::warn!(conn = id, error = %e, "ztunnel connection ended"),
            }
        });
        // The task may already be over (and unregistered): then nothing to record.
        if let Some(c) = self.lock().conns.get_mut(&id) {
            c.task = Some(task.abort_handle());
        }
    }

    /// Hello, then the snapshot, then live changes until either side ends.
    async fn run_conn(
        &self,
        id: u64,
        conn: &SeqPacket,
        mut rx: mpsc::UnboundedReceiver<Queued>,
    ) -> Result<(), ConnError> {
        let mut buf = [0u8; 1024];
        let msg = tokio::time::timeout(self.timeout, conn.recv(&mut buf))
            .await
            .map_err(|_| ConnError::Timeout(self.timeout))??;
        if msg.len == 0 {
            return Err(ConnError::Closed);
        }
        let hello = ZdsHello::decode(&buf[..msg.len])?;
        if hello.version != Version::V1 as i32 {
            return Err(ConnError::Protocol(format!("unsupported ZDS version {}", hello.version)));
        }
        let snapshot: Vec<(String, WorkloadRequest, Arc<Netns>)> = {
            let inner = self.lock();
            // Changes queued before now are already in the snapshot.
            while rx.try_recv().is_ok() {}
            inner.pods.iter().map(|(uid, pod)| (uid.clone(), add_request(uid, pod), pod.netns.clone())).collect()
        };
        tracing::info!(conn = id, pods = snapshot.len(), "ztunnel connected; sending snapshot");
        for (uid, req, netns) in snapshot {
            if let Err(error) = self.request(conn, req, Some(&netns)).await? {
                tracing::warn!(conn = id, %uid, %error, "ztunnel refused pod during snapshot");
            }
        }
        let done = WorkloadRequest { payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})) };
        if let Err(error) = self.request(conn, done, None).await? {
            return Err(ConnError::Protocol(format!("SnapshotSent refused: {error}")));
        }
        if let Some(c) = self.lock().conns.get_mut(&id) {
            c.live = true;
        }
        loop {
            tokio::select! {
                queued = rx.recv() => {
                    // None: the server dropped this connection.
                    let Some(q) = queued else { return Ok(()) };
                    let outcome = self.request(conn, q.req, q.netns.as_deref()).await?;
                    if let Err(error) = &outcome {
                        tracing::warn!(conn = id, %error, "ztunnel refused a live change");
                    }
                    if let Some(reply) = q.reply {
                        let _ = reply.send(outcome);
                    }
                }
                // Between requests ztunnel says nothing; anything readable is
                // its close (or a protocol violation).
                msg = conn.recv(&mut buf) => {
                    return Err(match msg? {
                        m if m.len == 0 && !m.truncated => ConnError::Closed,
                        _ => ConnError::Protocol("message from ztunnel without a request".into()),
                    });
                }
            }
        }
    }

    /// Waits for the acks of a broadcast; returns the first refusal. A
    /// connection that breaks or times out instead has already been dropped.
    async fn collect(waits: Vec<(u64, oneshot::Receiver<Outcome>)>) -> Option<String> {
        let mut refusal = None;
        // The connections work concurrently; waiting in turn costs only the slowest.
        for (id, wait) in waits {
            match wait.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    refusal.get_or_insert(error);
                }
                Err(_) => tracing::warn!(conn = id, "lost a ztunnel connection; it gets the pod in its next snapshot"),
            }
        }
        refusal
    }

    /// Enrolls a pod and tells every connected ztunnel, returning once each
    /// has acknowledged (or been dropped for failing to). Replaces an earlier
    /// entry with the same uid. With no ztunnel connected, the pod goes out
    /// with the next snapshot. If any ztunnel refuses the pod, it is not
    /// kept: the others are told to remove it again and the refusal is
    /// returned.
    pub async fn add(&self, uid: String, info: Option<WorkloadInfo>, netns: Netns) -> Result<(), ZdsServerError> {
        let netns = Arc::new(netns);
        let waits = {
            let mut inner = self.lock();
            let pod = Pod { info, netns: netns.clone() };
            let waits = inner.broadcast(&add_request(&uid, &pod), Some(&netns));
            inner.pods.insert(uid.clone(), pod);
            waits
        };
        let Some(error) = Self::collect(waits).await else { return Ok(()) };
        let waits = {
            let mut inner = self.lock();
            // Only undo our own entry, not a later add of the same uid.
            if inner.pods.get(&uid).is_some_and(|p| Arc::ptr_eq(&p.netns, &netns)) {
                inner.pods.remove(&uid);
                inner.broadcast(&del_request(&uid), None)
            } else {
                Vec::new()
            }
        };
        Self::collect(waits).await;
        Err(ZdsServerError::Refused { uid, error })
    }

    /// Removes a pod and tells every connected ztunnel. Returns whether the
    /// pod was known.
    pub async fn del(&self, uid: &str) -> bool {
        // Told even when unknown here: a ztunnel may still hold it from an earlier agent.
        self.del_where(uid, None).await
    }

    /// Removes pod `uid` only while it is the one in `netns`, and then tells every connected
    /// ztunnel; returns whether it was. A pod's new sandbox takes over its uid (ztunnel serves
    /// pods by uid), so the old sandbox's late removal must leave the new one alone.
    pub async fn del_in(&self, uid: &str, netns: NetnsId) -> bool {
        self.del_where(uid, Some(netns)).await
    }

    /// Removes `uid` (only if it is in `netns`, when given) and tells every ztunnel.
    async fn del_where(&self, uid: &str, netns: Option<NetnsId>) -> bool {
        let (known, waits) = {
            let mut inner = self.lock();
            if let Some(netns) = netns
                && inner.pods.get(uid).is_none_or(|p| p.netns.id() != netns)
            {
                return false;
            }
            let known = inner.pods.remove(uid).is_some();
            (known, inner.broadcast(&del_request(uid), None))
        };
        if let Some(error) = Self::collect(waits).await {
            tracing::warn!(%uid, %error, "ztunnel refused pod removal");
        }
        known
    }

    /// Closes every ztunnel connection (they will reconnect).
    pub async fn disconnect(&self) {
        let conns: Vec<Conn> = self.lock().conns.drain().map(|(_, c)| c).collect();
        for c in conns {
            if let Some(task) = c.task {
                task.abort();
            }
        }
    }

    /// Whether at least one ztunnel is connected and has had its snapshot.
    pub async fn connected(&self) -> bool {
        self.connections().await > 0
    }

    /// How many ztunnels are connected and have had their snapshot.
    pub async fn connections(&self) -> usize {
        self.lock().conns.values().filter(|c| c.live).count()
    }

    /// Uids of the enrolled pods.
    pub async fn pods(&self) -> Vec<String> {
        self.lock().pods.keys().cloned().collect()
    }

    /// Whether `uid` is enrolled.
    pub async fn contains(&self, uid: &str) -> bool {
        self.lock().pods.contains_key(uid)
    }

    /// Sends one request and waits for its ack. The outer error ends the
    /// connection; the inner one is ztunnel's refusal.
    async fn request(
        &self,
        conn: &SeqPacket,
        req: WorkloadRequest,
        netns: Option<&Netns>,
    ) -> Result<Outcome, ConnError> {
        use std::os::fd::AsFd;
        let exchange = async {
            conn.send(&req.encode_to_vec(), netns.map(|n| n.as_fd())).await?;
            let mut buf = [0u8; 4096];
            let msg = conn.recv(&mut buf).await?;
            if msg.len == 0 {
                return Err(ConnError::Closed);
            }
            let resp = WorkloadResponse::decode(&buf[..msg.len])?;
            match resp.payload {
                Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(Ok(())),
                Some(workload_response::Payload::Ack(ack)) => Ok(Err(ack.error)),
                None => Err(ConnError::Protocol("WorkloadResponse without payload".into())),
            }
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ConnError::Timeout(self.timeout))?
    }
}

fn add_request(uid: &str, pod: &Pod) -> WorkloadRequest {
    WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: uid.to_owned(),
            workload_info: pod.info.clone(),
        })),
    }
}

fn del_request(uid: &str) -> WorkloadRequest {
    WorkloadRequest { payload: Some(workload_request::Payload::Del(DelWorkload { uid: uid.to_owned() })) }
}
