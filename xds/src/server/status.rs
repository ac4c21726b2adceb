//! Per-connection and server-wide status, for debug endpoints and tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::envoy::config::core::v3::Node;
use serde::Serialize;

/// What one connected client (one ADS stream) has and is waiting for.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ConnectionStatus {
    /// Stream id, unique within the server.
    pub id: u64,
    /// Peer address, when the transport knows it.
    pub peer: Option<SocketAddr>,
    /// `node.id` from the first request.
    pub node_id: String,
    /// `node.cluster` from the first request.
    pub node_cluster: String,
    /// The whole `node` of the first request (metadata included); left out
    /// of the JSON form.
    #[serde(skip)]
    pub node: Option<Node>,
    /// Per type URL.
    pub types: BTreeMap<String, TypeStatus>,
}

/// One type URL on one stream.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TypeStatus {
    /// Subscribed to every resource of the type.
    pub wildcard: bool,
    /// Explicitly subscribed names.
    pub names: Vec<String>,
    /// Versions the client has acknowledged (or declared on resume), by name.
    pub acked: BTreeMap<String, String>,
    /// Nonce of the push awaiting ACK/NACK.
    pub pending_nonce: Option<String>,
    /// Nonce of the last acknowledged push.
    pub last_acked_nonce: Option<String>,
    /// The last rejection, kept until a later push is acknowledged.
    pub last_nack: Option<NackStatus>,
    /// Responses sent.
    pub pushes: u64,
    /// Resources sent, over all pushes.
    pub resources_sent: u64,
    /// Removals sent, over all pushes.
    pub removals_sent: u64,
    /// Rejections received.
    pub nacks: u64,
    /// Diffs that compared every resource of the type rather than only those
    /// changed since the last one: the first, after a subscription change or
    /// resume, and when the store's change log no longer reached back.
    pub full_diffs: u64,
}

/// A push the client rejected.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct NackStatus {
    /// Nonce of the rejected push.
    pub nonce: String,
    /// The client's `error_detail.message`.
    pub message: String,
    /// Versions carried by the rejected push, by name (empty string: a removal).
    pub rejected: BTreeMap<String, String>,
}

/// Totals over every stream a server has served.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ServerStats {
    /// Streams opened.
    pub streams: u64,
    /// Responses sent.
    pub pushes: u64,
    /// Resources sent.
    pub resources_sent: u64,
    /// Removals sent.
    pub removals_sent: u64,
    /// ACKs received for an outstanding push.
    pub acks: u64,
    /// NACKs received for an outstanding push.
    pub nacks: u64,
    /// Streams refused because their caller did not authenticate.
    pub streams_refused: u64,
}

/// Lock-free counters behind [`ServerStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) streams: AtomicU64,
    pub(crate) pushes: AtomicU64,
    pub(crate) resources_sent: AtomicU64,
    pub(crate) removals_sent: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) nacks: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ServerStats {
        ServerStats {
            streams: self.streams.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            resources_sent: self.resources_sent.load(Ordering::Relaxed),
            removals_sent: self.removals_sent.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
            streams_refused: self.streams_refused.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
