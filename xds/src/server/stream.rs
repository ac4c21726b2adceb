//! One ADS stream: what the client subscribed to, what it has acknowledged,
//! the push awaiting its answer, and the task that drives it.
//!
//! Per type URL at most one push is outstanding; changes that arrive while
//! it is unanswered are folded into the next push, which is computed from
//! the store as it is once the answer arrives.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use prost::Message;
use proto::envoy::config::core::v3::Node;
use proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::budget::{Held, PushBudget};
use super::push::Push;
use super::requests::Requests;
use super::status::{ConnectionStatus, Counters, NackStatus, TypeStatus};
use crate::store::{ResourceStore, StoreState, StoredResource, TypeEntries};

/// The subscription name that means "every resource of the type".
pub(crate) const WILDCARD: &str = "*";

/// Type URLs one stream may subscribe to: a client cannot make the server
/// keep state for arbitrarily many.
const MAX_TYPES: usize = 64;

/// Resource names one stream may subscribe to per type URL, and entries of
/// `initial_resource_versions` it may declare per type URL: names accumulate
/// over a stream's requests, so without a bound a client could make the
/// server keep any number of them. Far above any real client: ztunnel and
/// the waypoint subscribe by wildcard and name nothing, and on resume
/// declare one version per resource of the type they hold, at most what the
/// store has of it (a mesh's workloads and services, or its policies);
/// clients naming resources one by one name fewer still. A request beyond it
/// ends the stream with RESOURCE_EXHAUSTED, naming the type and the limit.
pub(crate) const MAX_NAMES: usize = 100_000;

/// Longest resource name a stream may subscribe to, in bytes: with
/// [`MAX_NAMES`] this bounds what a stream's names can hold (a request may be
/// 16 MiB, all of it one name). The server's names are a Kubernetes namespace
/// and name or hostname with a short prefix, a few hundred bytes at most.
pub(crate) const MAX_NAME_LEN: usize = 1024;

/// A push sent and not yet answered.
#[derive(Debug)]
struct Pending {
    nonce: String,
    /// Name and version of each resource carried.
    sent: Vec<(Arc<str>, Arc<str>)>,
    /// Names whose removal was carried.
    removed: Vec<Arc<str>>,
}

/// One type URL on one stream.
#[derive(Debug, Default)]
struct TypeState {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: acknowledged, or declared on resume. Names
    /// (and versions) are the store's own `Arc`s where the store has them,
    /// so a stream adds only map entries, not strings.
    acked: HashMap<Arc<str>, Arc<str>>,
    /// Versions (None: removal) of the last rejected push; not pushed again
    /// unless something else in the type changes.
    nacked: HashMap<Arc<str>, Option<Arc<str>>>,
    pending: Option<Pending>,
    /// Names the next push must answer, with the resource or its removal, whatever the
    /// client is thought to hold: those it subscribed to (it may have dropped a resource
    /// while staying subscribed, and one that does not exist is answered with a removal so
    /// that it need not wait for a timeout), and those it unsubscribed from while the
    /// wildcard still covers them (it cannot know whether to keep them). A subset of the
    /// subscribed names, or of those just unsubscribed, so bounded like them.
    asked: BTreeSet<String>,
    /// The first push for a type is sent even when empty, so the client
    /// knows it is in sync.
    first_sent: bool,
    /// Type revision at which nothing was left to push; `None` after any
    /// request that may change the answer.
    clean_at: Option<u64>,
    /// Store revision of the last diff. Every name the client lacks then is
    /// in `pending` or `nacked`, so the next diff need only look at those
    /// and at names changed since. `None` (a full diff is due) after a
    /// subscription change or resume, which can change any name's answer.
    synced: Option<u64>,
    last_acked_nonce: Option<String>,
    last_nack: Option<NackStatus>,
    pushes: u64,
    resources_sent: u64,
    removals_sent: u64,
    nacks: u64,
    full_diffs: u64,
}

impl TypeState {
    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    fn status(&self) -> TypeStatus {
        let mut acked: Vec<_> = self.acked.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        acked.sort();
        TypeStatus {
            wildcard: self.wildcard,
            names: self.names.iter().cloned().collect(),
            acked: acked.into_iter().collect(),
            pending_nonce: self.pending.as_ref().map(|p| p.nonce.clone()),
            last_acked_nonce: self.last_acked_nonce.clone(),
            last_nack: self.last_nack.clone(),
            pushes: self.pushes,
            resources_sent: self.resources_sent,
            removals_sent: self.removals_sent,
            nacks: self.nacks,
            full_diffs: self.full_diffs,
        }
    }

    /// The resources and removals the client lacks, or `None` when there
    /// is nothing worth sending. Looks only at names changed since the last
    /// diff when the store's change log still reaches back to it.
    fn diff(&mut self, entries: Option<&TypeEntries>) -> Option<Owed> {
        let changed: Option<BTreeSet<&Arc<str>>> = match (self.synced, entries) {
            (Some(since), Some(entries)) => entries.changed_since(since).map(|names| names.collect()),
            (Some(_), None) => Some(BTreeSet::new()),
            (None, _) => None,
        };
        if changed.is_none() {
            self.full_diffs += 1;
        }
        let mut diff = Diff { state: self, resources: Vec::new(), sent: Vec::new(), removals: Vec::new(), news: false };
        match changed {
            Some(mut names) => {
                // Rejected names still differ although unchanged in the store.
                names.extend(self.nacked.keys());
                for name in names {
                    match entries.and_then(|e| e.resources.get_key_value(&**name)) {
                        Some((name, stored)) if self.subscribed(name) => diff.present(name, stored),
                        Some(_) => {}
                        None => diff.absent(name),
                    }
                }
            }
            None => {
                match entries {
                    Some(entries) if self.wildcard => {
                        for (name, stored) in &entries.resources {
                            diff.present(name, stored);
                        }
                    }
                    Some(entries) => {
                        for name in &self.names {
                            if let Some((name, stored)) = entries.resources.get_key_value(name.as_str()) {
                                diff.present(name, stored);
                            }
                        }
                    }
                    None => {}
                }
                for name in self.acked.keys().chain(self.nacked.keys().filter(|n| !self.acked.contains_key(*n))) {
                    if !entries.is_some_and(|e| e.resources.contains_key(&**name)) {
                        diff.absent(name);
                    }
                }
                for name in &self.asked {
                    let name = name.as_str();
                    let seen = self.acked.contains_key(name) || self.nacked.contains_key(name);
                    if !seen && !entries.is_some_and(|e| e.resources.contains_key(name)) {
                        diff.absent(&Arc::from(name));
                    }
                }
            }
        }
        let Diff { resources, sent, removals, news, .. } = diff;
        let first = !self.first_sent;
        (first || news).then_some(Owed { resources, sent, removals })
    }
}

/// What one push carries.
struct Owed {
    resources: Vec<Bytes>,
    /// Name and version of each of `resources`.
    sent: Vec<(Arc<str>, Arc<str>)>,
    removals: Vec<Arc<str>>,
}

/// A push being computed for one type on one stream.
struct Diff<'a> {
    state: &'a TypeState,
    /// Encoded `Resource`s, shared with the store.
    resources: Vec<Bytes>,
    /// Name and version of each resource in `resources`.
    sent: Vec<(Arc<str>, Arc<str>)>,
    removals: Vec<Arc<str>>,
    /// Whether anything differs from the last rejected push: if not,
    /// resending it would only be rejected again.
    news: bool,
}

impl Diff<'_> {
    /// Whether the client asked about `name` since the last push.
    fn asked(&self, name: &str) -> bool {
        !self.state.asked.is_empty() && self.state.asked.contains(name)
    }

    /// `name` is subscribed and stored as `stored`.
    fn present(&mut self, name: &Arc<str>, stored: &StoredResource) {
        // A name of the rejected push may be held at another version than the acknowledged
        // one: a client that applies resource by resource drops the one it rejected and
        // applies the others. So it is sent again even at the acknowledged version (a
        // rollback of the rejected resource); to a client that kept everything, a resource it
        // holds arrives once more, which changes nothing.
        let asked = self.asked(name);
        let uncertain = asked || self.state.nacked.contains_key(name);
        if !uncertain && self.state.acked.get(name) == Some(&stored.version) {
            return;
        }
        self.news |= asked || self.state.nacked.get(name) != Some(&Some(stored.version.clone()));
        self.resources.push(stored.encoded.clone());
        self.sent.push((name.clone(), stored.version.clone()));
    }

    /// `name` is not in the store: a removal is owed if the client holds it, or may hold it
    /// (sent in the rejected push: a client that applies resource by resource kept it).
    fn absent(&mut self, name: &Arc<str>) {
        let asked = self.asked(name);
        if !asked && !self.state.acked.contains_key(name) && !matches!(self.state.nacked.get(name), Some(Some(_))) {
            return;
        }
        self.news |= asked || self.state.nacked.get(name) != Some(&None);
        self.removals.push(name.clone());
    }
}

/// Everything known about one stream; shared with the server's registry so
/// debug reads see it live.
#[derive(Debug)]
pub(crate) struct StreamState {
    id: u64,
    peer: Option<SocketAddr>,
    node: Option<Node>,
    seen_request: bool,
    types: HashMap<String, TypeState>,
    next_nonce: u64,
}

impl StreamState {
    pub(crate) fn new(id: u64, peer: Option<SocketAddr>) -> Self {
        Self { id, peer, node: None, seen_request: false, types: HashMap::new(), next_nonce: 0 }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether push `nonce` of `type_url` still awaits its answer.
    pub(crate) fn outstanding(&self, type_url: &str, nonce: &str) -> bool {
        self.types.get(type_url).and_then(|t| t.pending.as_ref()).is_some_and(|p| p.nonce == nonce)
    }

    /// Whether the client holds `name` of `type_url` at `version` (`None`: not at all), or
    /// does not subscribe to it.
    pub(crate) fn holds(&self, type_url: &str, name: &str, version: Option<&str>) -> bool {
        match self.types.get(type_url) {
            None => true,
            Some(t) if !t.subscribed(name) => true,
            Some(t) => t.acked.get(name).map(|v| &**v) == version,
        }
    }

    pub(crate) fn status(&self) -> ConnectionStatus {
        ConnectionStatus {
            id: self.id,
            peer: self.peer,
            node_id: self.node.as_ref().map(|n| n.id.clone()).unwrap_or_default(),
            node_cluster: self.node.as_ref().map(|n| n.cluster.clone()).unwrap_or_default(),
            node: self.node.clone(),
            types: self.types.iter().map(|(t, s)| (t.clone(), s.status())).collect(),
        }
    }

    /// Applies one client request: subscription changes, resume versions,
    /// and the ACK or NACK of the outstanding push.
    pub(crate) fn handle_request(
        &mut self,
        mut request: DeltaDiscoveryRequest,
        counters: &Counters,
    ) -> Result<(), Status> {
        if !self.seen_request {
            self.seen_request = true;
            self.node = request.node.take();
        }
        if request.type_url.is_empty() {
            return Err(Status::invalid_argument("DeltaDiscoveryRequest.type_url is empty"));
        }
        // Type URLs are keys of the stream's state, kept for its life.
        if request.type_url.len() > MAX_NAME_LEN {
            return Err(Status::invalid_argument(format!(
                "DeltaDiscoveryRequest.type_url of {} bytes (at most {MAX_NAME_LEN})",
                request.type_url.len()
            )));
        }
        let stream_id = self.id;
        let first = !self.types.contains_key(&request.type_url);
        if first && self.types.len() >= MAX_TYPES {
            return Err(Status::resource_exhausted(format!(
                "DeltaDiscoveryRequest.type_url {:?}: more than {MAX_TYPES} types on one stream",
                request.type_url
            )));
        }
        let state = self.types.entry(request.type_url.clone()).or_default();
        state.clean_at = None;
        // A bare ACK or NACK leaves every unchanged name's answer as it was.
        let answer_only = !first
            && request.resource_names_subscribe.is_empty()
            && request.resource_names_unsubscribe.is_empty()
            && request.initial_resource_versions.is_empty();
        if !answer_only {
            state.synced = None;
        }
        if first {
            // The legacy wildcard: a type whose first request subscribes to nothing by name is
            // treated as subscribed to "*" (the xDS protocol, "How the client specifies what
            // resources to return"), whatever it unsubscribes from; unsubscribing from "*"
            // below, in the same request, then ends it as it would end an explicit "*".
            state.wildcard = request.resource_names_subscribe.is_empty();
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                state.wildcard = true;
            } else if state.names.contains(&name) {
                state.asked.insert(name);
            } else {
                if name.len() > MAX_NAME_LEN {
                    return Err(Status::invalid_argument(format!(
                        "DeltaDiscoveryRequest.resource_names_subscribe of {:?}: a name of {} bytes \
                         (at most {MAX_NAME_LEN})",
                        request.type_url,
                        name.len()
                    )));
                }
                if state.names.len() >= MAX_NAMES {
                    return Err(Status::resource_exhausted(format!(
                        "DeltaDiscoveryRequest.resource_names_subscribe of {:?}: more than {MAX_NAMES} names \
                         of one type on one stream",
                        request.type_url
                    )));
                }
                state.names.insert(name.clone());
                state.asked.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                state.wildcard = false;
            } else if state.names.remove(&name) && state.wildcard {
                state.asked.insert(name);
            } else {
                state.asked.remove(&name);
            }
        }
        // The client drops what it unsubscribed from by itself; no
        // removal is owed for it.
        let TypeState { acked, nacked, asked, wildcard, names, .. } = state;
        let keep = |n: &str| *wildcard || names.contains(n);
        acked.retain(|n, _| keep(n));
        nacked.retain(|n, _| keep(n));
        asked.retain(|n| keep(n));
        if first {
            // Only the first request of a type declares versions, so these
            // cannot accumulate beyond one request; their number is bounded
            // like the names'.
            for (name, version) in request.initial_resource_versions {
                if !state.subscribed(&name) {
                    continue;
                }
                // Kept for the stream's life like subscribed names, so bounded like them.
                if name.len() > MAX_NAME_LEN || version.len() > MAX_NAME_LEN {
                    return Err(Status::invalid_argument(format!(
                        "DeltaDiscoveryRequest.initial_resource_versions of {:?}: a name of {} bytes with a \
                         version of {} (at most {MAX_NAME_LEN} each)",
                        request.type_url,
                        name.len(),
                        version.len()
                    )));
                }
                if state.acked.len() >= MAX_NAMES {
                    return Err(Status::resource_exhausted(format!(
                        "DeltaDiscoveryRequest.initial_resource_versions of {:?}: more than {MAX_NAMES} \
                         resources of one type on one stream",
                        request.type_url
                    )));
                }
                state.acked.insert(name.into(), version.into());
            }
            // What the client declares holding is not sent again unless it changed.
            let TypeState { asked, acked, .. } = state;
            asked.retain(|n| !acked.contains_key(n.as_str()));
        }
        if request.response_nonce.is_empty() {
            return Ok(());
        }
        let Some(pending) = state.pending.take_if(|p| p.nonce == request.response_nonce) else {
            tracing::debug!(
                stream = stream_id,
                type_url = %request.type_url,
                nonce = %request.response_nonce,
                "answer to a push that is not outstanding; ignored"
            );
            return Ok(());
        };
        match request.error_detail {
            Some(error) => {
                tracing::warn!(
                    stream = stream_id,
                    node = %self.node.as_ref().map_or("", |n| n.id.as_str()),
                    type_url = %request.type_url,
                    nonce = %pending.nonce,
                    error = %error.message,
                    "client rejected push"
                );
                Counters::add(&counters.nacks, 1);
                state.nacks += 1;
                state.nacked = pending
                    .sent
                    .iter()
                    .map(|(n, v)| (n.clone(), Some(v.clone())))
                    .chain(pending.removed.iter().map(|n| (n.clone(), None)))
                    .collect();
                state.last_nack = Some(NackStatus {
                    nonce: pending.nonce,
                    message: error.message,
                    rejected: pending
                        .sent
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .chain(pending.removed.into_iter().map(|n| (n.to_string(), String::new())))
                        .collect(),
                });
            }
            None => {
                Counters::add(&counters.acks, 1);
                for (name, version) in pending.sent {
                    if state.subscribed(&name) {
                        state.acked.insert(name, version);
                    }
                }
                for name in pending.removed {
                    state.acked.remove(&name);
                }
                state.nacked.clear();
                state.last_nack = None;
                state.last_acked_nonce = Some(pending.nonce);
            }
        }
        Ok(())
    }

    /// Builds the pushes due now: one per type with no push outstanding and
    /// something the client lacks.
    pub(crate) fn collect_pushes(&mut self, store: &StoreState, system_version: u64, counters: &Counters) -> Vec<Push> {
        let mut out = Vec::new();
        for (type_url, state) in &mut self.types {
            if state.pending.is_some() {
                continue;
            }
            let entries = store.types.get(type_url);
            let revision = entries.map_or(0, |e| e.revision);
            if state.clean_at == Some(revision) {
                continue;
            }
            let diffed = state.diff(entries);
            state.synced = Some(store.revision);
            let Some(Owed { resources, sent, removals }) = diffed else {
                state.clean_at = Some(revision);
                continue;
            };
            // Every name asked about is in this push, as a resource or a removal.
            state.asked.clear();
            self.next_nonce += 1;
            let nonce = format!("{}-{}", self.id, self.next_nonce);
            state.first_sent = true;
            state.pushes += 1;
            state.resources_sent += resources.len() as u64;
            state.removals_sent += removals.len() as u64;
            Counters::add(&counters.pushes, 1);
            Counters::add(&counters.resources_sent, resources.len() as u64);
            Counters::add(&counters.removals_sent, removals.len() as u64);
            let removed_resources = removals.iter().map(|n| n.to_string()).collect();
            state.pending = Some(Pending { nonce: nonce.clone(), sent, removed: removals });
            out.push(Push {
                system_version_info: system_version.to_string(),
                resources,
                type_url: type_url.clone(),
                nonce,
                removed_resources,
            });
        }
        out
    }
}

/// Drives one stream until the client leaves, the transport fails, or the
/// server asks every stream to close.
pub(crate) async fn run(
    state: Arc<Mutex<StreamState>>,
    store: ResourceStore,
    counters: Arc<Counters>,
    budget: PushBudget,
    mut requests: Requests,
    responses: mpsc::Sender<Result<Push, Status>>,
    mut ending: Ending,
) {
    let mut revisions = store.subscribe();
    let mut held = Held::default();
    loop {
        let pushes = {
            let mut state = lock(&state);
            let snapshot = store.read();
            let revision = *revisions.borrow_and_update();
            state.collect_pushes(&snapshot, revision, &counters)
        };
        for push in pushes {
            let reserved = tokio::select! {
                reserved = budget.reserve(push.encoded_len()) => reserved,
                () = responses.closed() => return,
            };
            let (type_url, nonce) = (push.type_url.clone(), push.nonce.clone());
            if responses.send(Ok(push)).await.is_err() {
                return;
            }
            if let Some(permit) = reserved {
                held.hold(type_url, nonce, permit);
            }
        }
        let lapse = held.next_lapse();
        tokio::select! {
            request = requests.message() => match request {
                Ok(Some(request)) => {
                    let result = {
                        let mut state = lock(&state);
                        let result = state.handle_request(request, &counters);
                        held.answered(|type_url, nonce| state.outstanding(type_url, nonce));
                        result
                    };
                    if let Err(status) = result {
                        // Best effort: the client may already be gone.
                        let _ = responses.send(Err(status)).await;
                        return;
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    // The reader has chosen the code as gRPC's status code table
                    // (doc/statuscodes.md) says: INTERNAL for a request that does not
                    // parse ("Error parsing request proto"), OUT_OF_RANGE for one above
                    // the size limit. The client is told
                    // so, never OK; if it is gone (a reset), nobody reads this.
                    tracing::debug!(error = %status, "ADS stream ended: cannot read the request");
                    let status = Status::new(status.code(), format!("cannot read the request: {}", status.message()));
                    let _ = responses.send(Err(status)).await;
                    return;
                }
            },
            changed = revisions.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = ending.wait() => {
                let _ = responses
                    .send(Err(Status::unavailable("xDS server closed the stream")))
                    .await;
                return;
            }
            () = responses.closed() => return,
            () = tokio::time::sleep_until(lapse.unwrap_or_else(tokio::time::Instant::now)), if lapse.is_some() => {
                held.lapse(tokio::time::Instant::now());
            }
        }
    }
}

/// What ends a stream from the server's side: [`XdsServer::disconnect_all`](super::XdsServer::disconnect_all),
/// or the shutdown of the `serve` it came through.
pub(crate) struct Ending {
    disconnect: watch::Receiver<u64>,
    shutdown: Option<watch::Receiver<bool>>,
}

impl Ending {
    pub(crate) fn new(disconnect: watch::Receiver<u64>, shutdown: Option<watch::Receiver<bool>>) -> Ending {
        Ending { disconnect, shutdown }
    }

    /// Whether the stream's `serve` has begun to shut down (or is gone).
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| *s.borrow() || s.has_changed().is_err())
    }

    /// Completes once the stream is to end.
    async fn wait(&mut self) {
        let Ending { disconnect, shutdown } = self;
        let shutdown = async {
            match shutdown {
                // An error: the `serve` is gone, its streams with it.
                Some(shutdown) => drop(shutdown.wait_for(|closing| *closing).await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = disconnect.changed() => {}
            () = shutdown => {}
        }
    }
}

/// Locks a stream's state; a panic elsewhere cannot leave it half-updated in
/// a way worse than dropping the stream would.
pub(crate) fn lock(state: &Mutex<StreamState>) -> std::sync::MutexGuard<'_, StreamState> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
