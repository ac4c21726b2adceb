//! The node-agent end of ZDS: keeps the set of enrolled pods with their
//! namespace handles, replays it to every ztunnel that connects, and streams
//! later changes, one request at a time, each waiting for ztunnel's ack.
//!
//! One ztunnel is served at a time; a new connection (a restarted or
//! upgraded ztunnel) replaces the old one. Everything that touches the
//! connection happens under one lock, so a replay and a live change can never
//! interleave on the wire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds::{
    AddWorkload, DelWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello,
    workload_request, workload_response,
};
use tokio::sync::Mutex;

use crate::inpod::seqpacket::{SeqPacket, SeqPacketListener};
use crate::netns::Netns;

/// Errors telling a pod to ztunnel.
#[derive(Debug, thiserror::Error)]
pub enum ZdsServerError {
    /// ztunnel answered the request with an error.
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

/// A pod handed to ztunnel.
#[derive(Debug)]
struct Pod {
    info: Option<WorkloadInfo>,
    netns: Netns,
}

#[derive(Default)]
struct Inner {
    pods: BTreeMap<String, Pod>,
    conn: Option<SeqPacket>,
}

/// The agent's ZDS server.
pub struct ZdsServer {
    inner: Mutex<Inner>,
    timeout: Duration,
}

impl ZdsServer {
    /// A server that waits `timeout` for each hello and ack.
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::default(), timeout })
    }

    /// Accepts ztunnel connections on `listener` forever.
    pub async fn serve(self: Arc<Self>, listener: SeqPacketListener) {
        loop {
            match listener.accept().await {
                Ok(conn) => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = this.adopt(conn).await {
                            tracing::warn!(error = %e, "ztunnel connection failed during hello or snapshot");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting ztunnel connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Hello, then the snapshot, then the connection becomes the live one.
    async fn adopt(&self, conn: SeqPacket) -> Result<(), ConnError> {
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
        let mut inner = self.inner.lock().await;
        // The old connection, if any, is from a ztunnel that is going away.
        inner.conn = None;
        tracing::info!(pods = inner.pods.len(), "ztunnel connected; sending snapshot");
        for (uid, pod) in &inner.pods {
            match self.request(&conn, add_request(uid, pod), Some(&pod.netns)).await? {
                Ok(()) => {}
                Err(error) => tracing::warn!(%uid, %error, "ztunnel refused pod during snapshot"),
            }
        }
        let done = WorkloadRequest { payload: Some(workload_request::Payload::SnapshotSent(SnapshotSent {})) };
        if let Err(error) = self.request(&conn, done, None).await? {
            return Err(ConnError::Protocol(format!("SnapshotSent refused: {error}")));
        }
        inner.conn = Some(conn);
        Ok(())
    }

    /// Enrolls a pod and tells ztunnel if one is connected. Replaces an
    /// earlier entry with the same uid. If no ztunnel is connected, the pod
    /// goes out with the next snapshot.
    pub async fn add(&self, uid: String, info: Option<WorkloadInfo>, netns: Netns) -> Result<(), ZdsServerError> {
        let mut inner = self.inner.lock().await;
        let pod = Pod { info, netns };
        let req = add_request(&uid, &pod);
        let outcome = match &inner.conn {
            Some(conn) => Some(self.request(conn, req, Some(&pod.netns)).await),
            None => None,
        };
        if let Some(outcome) = outcome {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(ZdsServerError::Refused { uid, error }),
                Err(e) => {
                    tracing::warn!(error = %e, "lost ztunnel connection; pod will be in the next snapshot");
                    inner.conn = None;
                }
            }
        }
        inner.pods.insert(uid, pod);
        Ok(())
    }

    /// Removes a pod and tells ztunnel. Returns whether the pod was known.
    pub async fn del(&self, uid: &str) -> bool {
        let mut inner = self.inner.lock().await;
        let known = inner.pods.remove(uid).is_some();
        let req =
            WorkloadRequest { payload: Some(workload_request::Payload::Del(DelWorkload { uid: uid.to_owned() })) };
        let outcome = match &inner.conn {
            Some(conn) => Some(self.request(conn, req, None).await),
            None => None,
        };
        if let Some(outcome) = outcome {
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%uid, %error, "ztunnel refused pod removal"),
                Err(e) => {
                    tracing::warn!(error = %e, "lost ztunnel connection; the next snapshot will drop the pod");
                    inner.conn = None;
                }
            }
        }
        known
    }

    /// Closes the connection to ztunnel, if any (it will reconnect).
    pub async fn disconnect(&self) {
        self.inner.lock().await.conn = None;
    }

    /// Whether a ztunnel is connected and has had its snapshot.
    pub async fn connected(&self) -> bool {
        self.inner.lock().await.conn.is_some()
    }

    /// Uids of the enrolled pods.
    pub async fn pods(&self) -> Vec<String> {
        self.inner.lock().await.pods.keys().cloned().collect()
    }

    /// Whether `uid` is enrolled.
    pub async fn contains(&self, uid: &str) -> bool {
        self.inner.lock().await.pods.contains_key(uid)
    }

    /// Sends one request and waits for its ack. The outer error ends the
    /// connection; the inner one is ztunnel's refusal.
    async fn request(
        &self,
        conn: &SeqPacket,
        req: WorkloadRequest,
        netns: Option<&Netns>,
    ) -> Result<Result<(), String>, ConnError> {
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
