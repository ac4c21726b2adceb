//! The ztunnel end of ZDS: connect to the node agent, say hello, then turn
//! each `WorkloadRequest` into a call on a [`PodHandler`] and acknowledge it.
//!
//! The agent sends one request at a time and waits for our ack, so requests
//! are handled strictly in order, and every one is acked (an error in the
//! ack's `error` field when refused). Two kinds of refusal:
//! - a well-formed request we cannot carry out (that pod's namespace is not
//!   one, the handler refuses it): the agent learns that one add failed and
//!   the session carries on;
//! - a request we cannot read or that breaks the protocol (garbage, oversize,
//!   missing or extra descriptors, `KeepWorkload` or a second `SnapshotSent`
//!   after the snapshot): we cannot know what the agent meant, and a lost
//!   `DelWorkload` would leave a pod served forever. After the error ack the
//!   connection is dropped; the reconnect's snapshot puts both sides back in
//!   step, as Istio's ztunnel does. Pods keep being served meanwhile.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use proto::istio::workload::zds::{
    Ack, Version, WorkloadInfo, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};

use super::seqpacket::SeqPacket;
use crate::netns::Netns;

/// Largest request we accept. Real requests are a few hundred bytes.
const MAX_MESSAGE: usize = 16 * 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What ztunnel does with the pods the agent hands over.
pub trait PodHandler: Send + Sync + 'static {
    /// Start serving pod `uid` from inside `netns`. Called again for a pod
    /// already served (after a reconnect); the handler should then keep or
    /// refresh it. An `Err` is sent back to the agent.
    fn add(
        &self,
        uid: String,
        info: Option<WorkloadInfo>,
        netns: Netns,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Stop serving pod `uid` (no-op if unknown).
    fn del(&self, uid: &str) -> impl Future<Output = ()> + Send;

    /// The replay after a (re)connect is over: `uids` is every pod added or
    /// kept since the connection began. The handler must stop serving any
    /// other pod it still has.
    fn snapshot_done(&self, uids: HashSet<String>) -> impl Future<Output = ()> + Send;
}

/// Why a ZDS connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ZdsClientError {
    /// Connecting to the agent's socket failed.
    #[error("connecting to the node agent at {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving on an established connection failed.
    #[error("ZDS connection: {0}")]
    Io(#[from] std::io::Error),
    /// The agent closed the connection.
    #[error("node agent closed the ZDS connection")]
    Closed,
    /// The agent sent a request we could not read or that broke the protocol;
    /// it was answered with this error and the connection dropped.
    #[error("node agent sent an unusable request ({0}); reconnecting for a fresh snapshot")]
    Protocol(String),
}

/// Why one request was refused (the text goes back in the ack).
#[derive(Debug)]
enum Refusal {
    /// Well-formed, but this pod cannot be served; the session carries on.
    Request(String),
    /// Unreadable or out of protocol; the session ends after the ack.
    Protocol(String),
}

impl From<String> for Refusal {
    fn from(e: String) -> Self {
        Refusal::Request(e)
    }
}

/// Keeps a ZDS session with the agent at `path` for as long as the returned
/// future is polled: reconnects with exponential backoff (100 ms to 5 s) when
/// the agent is away or the connection breaks. The backoff starts over only
/// after a session that got its snapshot and did not end in a protocol error,
/// so an agent that accepts and then misbehaves is not reconnected to ten
/// times a second.
pub async fn run_client<H: PodHandler>(path: impl AsRef<Path>, handler: Arc<H>) {
    let path = path.as_ref();
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut session = Session::default();
        let result = session.run(path, &*handler).await;
        if session.snapshot_done && !matches!(result, Err(ZdsClientError::Protocol(_))) {
            backoff = BACKOFF_MIN;
        }
        match result {
            // Quiet while the agent starts; once retries are at their slowest, say so
            // (every 5 s) so a missing agent is visible at the default level.
            Err(e @ ZdsClientError::Connect { .. }) if backoff < BACKOFF_MAX => {
                tracing::debug!(error = %e, "node agent not reachable yet")
            }
            Err(e @ ZdsClientError::Connect { .. }) => tracing::warn!(error = %e, "node agent not reachable"),
            Err(e) => tracing::warn!(error = %e, "ZDS connection lost; reconnecting"),
            Ok(()) => {}
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// State of one connection.
#[derive(Default)]
struct Session {
    snapshot_done: bool,
    seen: HashSet<String>,
}

impl Session {
    async fn run<H: PodHandler>(&mut self, path: &Path, handler: &H) -> Result<(), ZdsClientError> {
        let conn = SeqPacket::connect(path)
            .await
            .map_err(|source| ZdsClientError::Connect { path: path.display().to_string(), source })?;
        let hello = ZdsHello { version: Version::V1 as i32 };
        conn.send(&hello.encode_to_vec(), None).await?;
        tracing::info!(path = %path.display(), "connected to node agent");
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let msg = conn.recv(&mut buf).await?;
            if msg.len == 0 && !msg.truncated {
                return Err(ZdsClientError::Closed);
            }
            // `handle` owns the descriptors: each one not handed to the handler
            // is closed on return, whatever the outcome.
            let refusal = self.handle(&buf[..msg.len], msg.truncated, msg.fds, handler).await.err();
            let error = match &refusal {
                None => "",
                Some(Refusal::Request(e)) => {
                    tracing::warn!(error = %e, "refused ZDS request");
                    e
                }
                Some(Refusal::Protocol(e)) => e,
            };
            let ack =
                WorkloadResponse { payload: Some(workload_response::Payload::Ack(Ack { error: error.to_owned() })) };
            conn.send(&ack.encode_to_vec(), None).await?;
            if let Some(Refusal::Protocol(e)) = refusal {
                return Err(ZdsClientError::Protocol(e));
            }
        }
    }

    async fn handle<H: PodHandler>(
        &mut self,
        bytes: &[u8],
        truncated: bool,
        mut fds: Vec<std::os::fd::OwnedFd>,
        handler: &H,
    ) -> Result<(), Refusal> {
        use workload_request::Payload;
        let protocol = Refusal::Protocol;
        if truncated {
            // The kernel discarded the rest of the message (or descriptors
            // beyond the control buffer); what is left cannot be trusted.
            return Err(protocol(format!(
                "request larger than {MAX_MESSAGE} bytes or with more file descriptors than accepted (got {})",
                fds.len()
            )));
        }
        let req = WorkloadRequest::decode(bytes).map_err(|e| protocol(format!("undecodable WorkloadRequest: {e}")))?;
        let payload = req.payload.ok_or_else(|| protocol("WorkloadRequest without payload".into()))?;
        if !matches!(payload, Payload::Add(_)) && !fds.is_empty() {
            return Err(protocol("unexpected file descriptor on a request other than add".into()));
        }
        match payload {
            Payload::Add(add) => {
                if fds.len() != 1 {
                    return Err(protocol(format!(
                        "AddWorkload for {} carries {} file descriptors, expected exactly 1 (the netns)",
                        add.uid,
                        fds.len()
                    )));
                }
                if add.uid.is_empty() {
                    return Err("AddWorkload.uid is empty".to_owned().into());
                }
                // Named in the replay even if it cannot be (re)started now: the
                // agent still has the pod, so what already serves it must not be
                // torn down at SnapshotSent (Istio's ztunnel records it first too).
                if !self.snapshot_done {
                    self.seen.insert(add.uid.clone());
                }
                let netns = Netns::from_fd(fds.pop().expect("one descriptor, checked above"))
                    .map_err(|e| format!("AddWorkload for {}: bad netns descriptor: {e}", add.uid))?;
                tracing::info!(uid = %add.uid, netns = %netns.id(), "pod added");
                handler.add(add.uid, add.workload_info, netns).await?;
                Ok(())
            }
            Payload::Keep(keep) => {
                if self.snapshot_done {
                    return Err(protocol(format!("KeepWorkload for {} after SnapshotSent", keep.uid)));
                }
                self.seen.insert(keep.uid);
                Ok(())
            }
            Payload::Del(del) => {
                tracing::info!(uid = %del.uid, "pod removed");
                handler.del(&del.uid).await;
                self.seen.remove(&del.uid);
                Ok(())
            }
            Payload::SnapshotSent(_) => {
                if self.snapshot_done {
                    return Err(protocol("second SnapshotSent on one connection".into()));
                }
                self.snapshot_done = true;
                tracing::info!(pods = self.seen.len(), "snapshot from node agent complete");
                handler.snapshot_done(std::mem::take(&mut self.seen)).await;
                Ok(())
            }
        }
    }
}
