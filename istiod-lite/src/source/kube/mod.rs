//! The Kubernetes API source: kube-rs watchers of every kind the model holds, feeding a
//! [`Translator`] as [`super::dir::watch`] does, with the same output.
//!
//! - Objects are read as [`DynamicObject`]s and converted through the directory source's
//!   parser and validation (module `convert`), so one model and one set of error messages serve
//!   both sources.
//! - Each kind's initial list (and every re-list after the watch fell too far behind) replaces
//!   that kind in the model: objects deleted while we were not watching disappear.
//! - A bad object is reported ([`RejectedObject`]: kind, namespace, name, field) and the rest
//!   apply; security objects keep their last good version or are enforced fail-closed, as in
//!   the directory source (module `apply`). A bad route leaves the model, but keeps its
//!   `parentRefs` ([`RefusedRoute`]) so that its status can say why it is not served.
//! - A CRD kind is watched at the version the server serves it at, the first of those we read
//!   ([`Watched::versions`]), as discovery (`/apis/<group>`) says (module `discovery`). A kind
//!   discovery does not find (the Gateway API or Istio CRDs not installed) is reported once;
//!   discovery is asked again with backoff, so installing the CRDs later works, and every
//!   other kind works meanwhile. Without the CRD no such object can exist, so the model is
//!   complete without it ([`KubeStatus::ready`]). A kind served only at versions we do not
//!   read is an error; a policy kind then keeps the model incomplete (serving without its
//!   policies would turn every DENY off).
//! - A 404 on a list or watch is never "not installed": of a built-in kind (Namespace, Node,
//!   Pod, Service, EndpointSlice) the server is not one we can use, of a CRD kind discovery
//!   found, one still starting (or a CRD changing: discovery is asked again). It is a failing
//!   watch, and the model is not complete without the kind.
//! - A failing list or watch (403, 5xx, timeouts) is reported when its problem starts or
//!   changes, and retried after a pause that grows from 0.8 s to 30 s while it keeps failing;
//!   the model meanwhile stays as it was. Its recovery is logged when the server opens its
//!   watch again (module `opened`), so that its next failure is reported anew.
//! - A watch whose resource version the server no longer has (410 Gone) is started over with a
//!   list, which replaces the kind.
//!
//! The identity it runs as needs `list` and `watch`, cluster-wide, on `namespaces`, `nodes`, `pods`,
//! `services`, `endpointslices.discovery.k8s.io`, `authorizationpolicies` and
//! `peerauthentications.security.istio.io`, and `gateways`, `httproutes`, `grpcroutes` and
//! `referencegrants` `.gateway.networking.k8s.io`. A kind it may not read (403) is reported like any failing
//! watch and retried; the model is not complete until it can.

mod apply;
mod convert;
mod discovery;
mod opened;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};

use crate::error::{ObjectError, Warning};
use crate::k8s::gateway::ParentReference;
use crate::model::{Kind, ObjectKey};
use crate::translator::{Delta, Translator};

/// Where the API serves one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The kind.
    pub kind: Kind,
    /// API group (empty for core).
    pub group: &'static str,
    /// The version we prefer (the only one of a built-in kind).
    pub version: &'static str,
    /// Every version we read, preferred first: at each the schema of the fields we read is
    /// the same (the directory source's parser accepts each).
    pub versions: &'static [&'static str],
    /// Resource (plural) name in URLs.
    pub plural: &'static str,
}

impl Watched {
    /// `group/version` of the preferred version, or `version` for the core group.
    pub fn api_version(&self) -> String {
        self.api_version_at(self.version)
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version_at(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_owned() } else { format!("{}/{version}", self.group) }
    }

    /// Whether a policy kind: serving without it would serve no policy at all.
    pub fn security(&self) -> bool {
        matches!(self.kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication)
    }

    /// Whether the kind comes from a CRD (Istio's or the Gateway API's), which a cluster may
    /// not have installed; the built-in kinds are always served.
    pub fn from_crd(&self) -> bool {
        !matches!(self.group, "" | "discovery.k8s.io")
    }

    /// The path of the cluster-wide collection at the preferred version (`/api/v1/pods`,
    /// `/apis/<group>/<version>/<plural>`).
    pub fn path(&self) -> String {
        self.path_at(self.version)
    }

    /// The path of the cluster-wide collection at `version`.
    pub fn path_at(&self, version: &str) -> String {
        if self.group.is_empty() {
            format!("/api/{version}/{}", self.plural)
        } else {
            format!("/apis/{}/{version}/{}", self.group, self.plural)
        }
    }

    /// The resource at `version` as kube-rs addresses it.
    pub fn api_resource(&self, version: &str) -> ApiResource {
        ApiResource {
            group: self.group.to_owned(),
            version: version.to_owned(),
            api_version: self.api_version_at(version),
            kind: self.kind.as_str().to_owned(),
            plural: self.plural.to_owned(),
        }
    }
}

const V1: &[&str] = &["v1"];
/// Istio serves its security kinds at `v1` (Istio 1.22 on) and `v1beta1`, one schema.
const ISTIO: &[&str] = &["v1", "v1beta1"];
/// Gateway and HTTPRoute: `v1` (Gateway API 1.0 on), `v1beta1` (0.5 on).
const GATEWAY_API: &[&str] = &["v1", "v1beta1"];
/// GRPCRoute: `v1` (1.1 on), `v1alpha2` before.
const GRPC_ROUTE: &[&str] = &["v1", "v1alpha2"];
const REFERENCE_GRANT: &[&str] = &["v1beta1", "v1", "v1alpha2"];

/// Every kind watched, cluster-wide. A CRD kind is watched at the first of its versions the
/// server serves it at (module `discovery`); the API server converts stored objects of other
/// versions to it.
pub const WATCHED: [Watched; 11] = [
    Watched { kind: Kind::Namespace, group: "", version: "v1", versions: V1, plural: "namespaces" },
    Watched { kind: Kind::Node, group: "", version: "v1", versions: V1, plural: "nodes" },
    Watched { kind: Kind::Pod, group: "", version: "v1", versions: V1, plural: "pods" },
    Watched { kind: Kind::Service, group: "", version: "v1", versions: V1, plural: "services" },
    Watched {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        versions: V1,
        plural: "endpointslices",
    },
    Watched {
        kind: Kind::AuthorizationPolicy,
        group: "security.istio.io",
        version: "v1",
        versions: ISTIO,
        plural: "authorizationpolicies",
    },
    Watched {
        kind: Kind::PeerAuthentication,
        group: "security.istio.io",
        version: "v1",
        versions: ISTIO,
        plural: "peerauthentications",
    },
    Watched {
        kind: Kind::Gateway,
        group: "gateway.networking.k8s.io",
        version: "v1",
        versions: GATEWAY_API,
        plural: "gateways",
    },
    Watched {
        kind: Kind::HttpRoute,
        group: "gateway.networking.k8s.io",
        version: "v1",
        versions: GATEWAY_API,
        plural: "httproutes",
    },
    Watched {
        kind: Kind::GrpcRoute,
        group: "gateway.networking.k8s.io",
        version: "v1",
        versions: GRPC_ROUTE,
        plural: "grpcroutes",
    },
    Watched {
        kind: Kind::ReferenceGrant,
        group: "gateway.networking.k8s.io",
        version: "v1beta1",
        versions: REFERENCE_GRANT,
        plural: "referencegrants",
    },
];

/// An object from the API that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("{object}{}: {error}", rv_suffix(.resource_version))]
pub struct RejectedObject {
    /// Which object.
    pub object: ObjectKey,
    /// Its `metadata.resourceVersion`, to match the report to `kubectl get -o yaml`.
    pub resource_version: Option<String>,
    /// What is wrong (the field is named in it).
    #[source]
    pub error: ObjectError,
    /// Of a rejected `HTTPRoute` / `GRPCRoute`: what its status needs, when that much of it
    /// can be read.
    pub route: Option<RefusedRoute>,
}

/// What the status of a route refused whole needs (see [`crate::deploy::route_status`]), read
/// from the object whatever else is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedRoute {
    /// `metadata.generation`, for `observedGeneration`.
    pub generation: i64,
    /// `spec.parentRefs`.
    pub parent_refs: Vec<ParentReference>,
    /// `status.parents` as read, where the transition times of our entries are kept.
    pub status_parents: Option<serde_json::Value>,
}

fn rv_suffix(rv: &Option<String>) -> String {
    rv.as_ref().map(|rv| format!(" (resourceVersion {rv})")).unwrap_or_default()
}

/// Why the source cannot reach or read the API.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file named cannot be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither in-cluster settings nor a default kubeconfig were found.
    #[error("no Kubernetes configuration: {source}")]
    Infer {
        /// Why.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {source}")]
    Client {
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Discovery says the server does not serve this kind (its CRD is not installed); asked
    /// again with backoff.
    #[error("{api_version} {kind} is not served by the API server (CRD not installed?); watching for it")]
    NotInstalled {
        /// The preferred `apiVersion`.
        api_version: String,
        /// The kind.
        kind: &'static str,
    },
    /// The server serves the kind's group, but the kind at no version we read; asked again
    /// with backoff. Of a policy kind, the model is not complete meanwhile.
    #[error(
        "{kind}: the API server serves {group} only at {served:?}, and {kind} at none of the versions istiod-lite reads ({readable:?}){}",
        if *security { "; not serving without policies" } else { "" }
    )]
    Unreadable {
        /// The group.
        group: &'static str,
        /// The kind.
        kind: &'static str,
        /// The versions the server serves the group at.
        served: Vec<String>,
        /// The versions we read.
        readable: &'static [&'static str],
        /// Whether a policy kind (which keeps the source not ready).
        security: bool,
    },
    /// The server's discovery of the kind's group failed; asked again with backoff.
    #[error("discovering {group} for {kind}: {source}")]
    Discovery {
        /// The group.
        group: &'static str,
        /// The kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A list or watch of one kind failed; retried with backoff, the last model stays.
    #[error("watching {kind}: {source}")]
    Watch {
        /// The kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: watcher::Error,
    },
}

/// Builds a client from a kubeconfig file, or, without one, from the in-cluster service
/// account or the default kubeconfig (`$KUBECONFIG`, `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, KubeError> {
    let config = config(kubeconfig).await?;
    kube::Client::try_from(config).map_err(|source| KubeError::Client { source })
}

/// How long a request may wait for its next bytes before the connection counts as dead.
/// Longer than the 290 s after which the API server ends a watch, so a quiet watch is not cut.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(295);

/// The client's configuration, as [`client`] reads it, with [`READ_TIMEOUT`].
///
/// kube leaves reads without a timeout; its watcher times out an idle watch stream, but not a
/// list or the start of a watch. A connection that dies silently (an API server node lost,
/// a dropped NAT entry) in the middle of a list then hung that kind for ever, its old objects
/// in force and no error reported. The client is used only for short requests and watches.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let bad = |source| KubeError::Kubeconfig { path: path.to_owned(), source };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(bad)?
        }
        None => kube::Config::infer().await.map_err(|source| KubeError::Infer { source })?,
    };
    config.read_timeout.get_or_insert(READ_TIMEOUT);
    Ok(config)
}

/// What the source has done so far.
#[derive(Clone, Debug, Default)]
pub struct KubeStatus {
    /// Kinds whose list has been applied at least once.
    pub synced: BTreeSet<Kind>,
    /// The version each CRD kind is watched at, once discovery found it.
    pub versions: BTreeMap<Kind, &'static str>,
    /// The current problem of each kind whose list or watch is failing (cleared by its next
    /// good event).
    pub failing: BTreeMap<Kind, Arc<KubeError>>,
    /// Problems reported so far: a kind's problem is reported when it starts or changes, not
    /// on every retry.
    pub reports: u64,
    /// Objects rejected now, by key.
    pub rejected: BTreeMap<ObjectKey, Arc<RejectedObject>>,
    /// Watch events applied (list items count as one event per list).
    pub events: u64,
    /// Translation warnings after the last event.
    pub warnings: Vec<Warning>,
}

impl KubeStatus {
    /// Whether every kind is either synced or not installed (or, but for a policy kind, not
    /// readable): the model is as complete as the cluster allows.
    pub fn ready(&self) -> bool {
        WATCHED.iter().all(|w| {
            self.synced.contains(&w.kind)
                || match self.failing.get(&w.kind).map(|e| &**e) {
                    Some(KubeError::NotInstalled { .. }) => true,
                    Some(KubeError::Unreadable { security, .. }) => !security,
                    _ => false,
                }
        })
    }

    /// Each failing kind's problem as a config error of `kubernetes:<Kind>`, where the
    /// directory source's errors are shown and counted (`/debug/errors`, metrics). A kind not
    /// installed is no error.
    pub fn failures(&self) -> impl Iterator<Item = crate::error::ConfigError> + '_ {
        self.failing.iter().filter(|(_, e)| !matches!(***e, KubeError::NotInstalled { .. })).map(|(kind, e)| {
            crate::error::ConfigError {
                location: crate::error::Location { file: format!("kubernetes:{}", kind.as_str()).into(), document: 0 },
                object: None,
                error: ObjectError::Invalid { field: String::new(), reason: e.to_string() },
            }
        })
    }
}

fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// Whether the server no longer has the resource version a watch asked for (410 Gone), in
/// an event of an open watch or as the answer to the watch request itself.
fn is_expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410) || is_expired_request(e)
}

/// Whether a watch request itself was answered 410 Gone. kube reads the answer's body as the
/// watch's first line whatever its HTTP status, so this comes as a failed watch.
fn is_expired_request(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) | watcher::Error::WatchFailed(kube::Error::Api(s)) => {
            s.code == 410
        }
        _ => false,
    }
}

/// The per-kind state and the shared outputs of the event loop.
struct Source {
    translator: Arc<Mutex<Translator>>,
    status: watch::Sender<KubeStatus>,
    deltas: mpsc::UnboundedSender<Delta>,
    kinds: BTreeMap<Kind, apply::KindState>,
}

impl Source {
    /// Handles one update of `w`; returns false once nobody takes deltas any more.
    fn update(&mut self, w: &Watched, update: Update) -> bool {
        match update {
            Update::Found(version) => {
                self.status.send_if_modified(|s| {
                    let mut changed = s.versions.insert(w.kind, version) != Some(version);
                    // Found, the kind is no longer absent or unreadable: the model is not
                    // complete until its list is applied. A failing watch stays, so that a 404
                    // on every list after discovery found the kind is reported once.
                    if s.failing.get(&w.kind).is_some_and(|e| !matches!(**e, KubeError::Watch { .. })) {
                        s.failing.remove(&w.kind);
                        changed = true;
                    }
                    changed
                });
                true
            }
            Update::Missing(error) => {
                self.report(w, error);
                true
            }
            Update::Event(event) => self.handle(w, event),
        }
    }

    /// Handles one event; returns false once nobody takes deltas any more.
    fn handle(&mut self, w: &Watched, event: Result<Event<DynamicObject>, watcher::Error>) -> bool {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                self.failed(w, e);
                return true;
            }
        };
        let state = self.kinds.entry(w.kind).or_default();
        // Conversion (render and parse) happens before the lock: the CA reads the model too.
        let converted = match &event {
            // `Init` comes before the list request: it says nothing about the server yet.
            Event::Init => {
                state.init();
                return true;
            }
            // List items wait for the end of the list, to replace the kind at once.
            Event::InitApply(o) => {
                state.init_apply(w, o);
                return true;
            }
            Event::Apply(o) => Some(convert::convert(w, o)),
            Event::InitDone | Event::Delete(_) => None,
        };
        let (outcome, delta, warnings) = {
            // One lock for reading the model and changing it: nothing else writes between.
            let mut t = self.translator.lock().expect("translator lock");
            let outcome = match (&event, converted) {
                (Event::Apply(o), Some(c)) => state.apply(c, o.metadata.resource_version.clone(), t.model()),
                (Event::Delete(o), _) => state.delete(w, o),
                // `InitDone`; the other events returned above.
                _ => state.init_done(w, t.model()),
            };
            let delta = t.apply_all(outcome.changes.iter().cloned());
            (outcome, delta, t.warnings())
        };
        for r in &outcome.rejected {
            tracing::error!("kubernetes: {r}");
        }
        // The delta goes out before the status says the kind is synced, so a reader that saw
        // the status finds the delta already queued.
        let open = delta.is_empty() || self.deltas.send(delta).is_ok();
        self.status.send_modify(|s| {
            if s.failing.remove(&w.kind).is_some() {
                tracing::info!(kind = w.kind.as_str(), "watch recovered");
            }
            if matches!(event, Event::InitDone) {
                s.synced.insert(w.kind);
            }
            s.events += 1;
            apply::update_rejected(&mut s.rejected, w.kind, &outcome);
            s.warnings = warnings;
        });
        open
    }

    /// The server opened a watch of `w`: whatever failed before works again.
    fn opened(&mut self, w: &Watched) {
        self.status.send_if_modified(|s| {
            let recovered = s.failing.remove(&w.kind).is_some();
            if recovered {
                tracing::info!(kind = w.kind.as_str(), "watch recovered");
            }
            recovered
        });
    }

    fn failed(&mut self, w: &Watched, e: watcher::Error) {
        if is_expired(&e) {
            // The server dropped our resource version: the watcher re-lists, and the list
            // replaces the kind. Nothing is wrong.
            tracing::debug!(kind = w.kind.as_str(), "watch expired; re-listing");
            return;
        }
        // A 404 is never "not installed": that is for discovery to say (the stream asks it
        // again). Of a built-in kind it means the server is not an API server we can use (a
        // wrong path prefix, a proxy); of a CRD kind discovery found, an API server still
        // starting. Either way an empty kind must not pass for complete.
        self.report(w, KubeError::Watch { kind: w.kind.as_str(), source: e });
    }

    fn report(&mut self, w: &Watched, error: KubeError) {
        self.status.send_modify(|s| {
            // Report a problem when it starts or changes kind, not on every retry.
            let same = s
                .failing
                .get(&w.kind)
                .is_some_and(|old| std::mem::discriminant(&**old) == std::mem::discriminant(&error));
            if !same {
                match &error {
                    KubeError::NotInstalled { .. } => tracing::warn!("kubernetes: {error}"),
                    _ => tracing::error!("kubernetes: {error}; retrying, the last model stays"),
                }
                s.reports += 1;
            }
            s.failing.insert(w.kind, Arc::new(error));
        });
    }
}

/// What a kind's stream yields.
// Events are the common item and as large as before; boxing them would allocate per event
// for the sake of the rare small variants.
#[allow(clippy::large_enum_variant)]
enum Update {
    /// Discovery found the kind at this version: its watch starts there.
    Found(&'static str),
    /// Discovery did not find the kind at a version we read, or failed.
    Missing(KubeError),
    /// An event of the kind's watch.
    Event(Result<Event<DynamicObject>, watcher::Error>),
}

type Events = BoxStream<'static, Result<Event<DynamicObject>, watcher::Error>>;

/// The events of `w` watched at `version`.
fn events_at(client: &kube::Client, w: &Watched, version: &str) -> Events {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &w.api_resource(version));
    backed_off(relisting(move || watcher::watcher(api.clone(), watcher::Config::default()))).boxed()
}

/// A CRD kind's stream: discovery (asked again with backoff until it finds the kind), then
/// the watch at the version found, until a 404 sends it back to discovery (the version no
/// longer served, or the server not done starting). A built-in kind is always watched at its
/// one version.
fn updates(client: kube::Client, w: &'static Watched) -> BoxStream<'static, Update> {
    if !w.from_crd() {
        return events_at(&client, w, w.version).map(Update::Event).boxed();
    }
    enum Phase {
        Discover(Option<std::time::Duration>),
        Watch(Events),
    }
    let start = (client, Phase::Discover(None), watcher::DefaultBackoff::default());
    futures::stream::unfold(start, move |(client, phase, mut backoff)| async move {
        let events = match phase {
            Phase::Watch(events) => events,
            Phase::Discover(pause) => {
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
                let kind = w.kind.as_str();
                let missing = match discovery::discover(&client, w).await {
                    Ok(discovery::Found::At(version)) => {
                        let api_version = w.api_version_at(version);
                        if version == w.version {
                            tracing::info!(kind, api_version, "watching");
                        } else {
                            tracing::warn!(
                                kind,
                                api_version,
                                preferred = %w.api_version(),
                                "preferred version not served; watching an older one with the same schema"
                            );
                        }
                        let events = events_at(&client, w, version);
                        return Some((Update::Found(version), (client, Phase::Watch(events), backoff)));
                    }
                    Ok(discovery::Found::Absent) => KubeError::NotInstalled { api_version: w.api_version(), kind },
                    Ok(discovery::Found::Unreadable { served }) => KubeError::Unreadable {
                        group: w.group,
                        kind,
                        served,
                        readable: w.versions,
                        security: w.security(),
                    },
                    Err(source) => KubeError::Discovery { group: w.group, kind, source },
                };
                let pause = backoff.next();
                return Some((Update::Missing(missing), (client, Phase::Discover(pause), backoff)));
            }
        };
        let mut events = events;
        let event = events.next().await?;
        let next = match &event {
            // The version watched no longer served (a CRD removed or changed), or a server not
            // done starting: discovery says which.
            Err(e) if is_not_found(e) => Phase::Discover(backoff.next()),
            Ok(Event::Init) | Err(_) => Phase::Watch(events),
            Ok(_) => {
                backoff.reset();
                Phase::Watch(events)
            }
        };
        Some((Update::Event(event), (client, next, backoff)))
    })
    .boxed()
}

/// A kind's watcher events with a pause after each error: kube's default backoff (0.8 s,
/// doubling to 30 s, with jitter), reset only by an event the server sent.
///
/// Not kube's `default_backoff()`: it resets on every `Ok` item, and a watcher whose list
/// failed begins its next attempt with [`Event::Init`], before asking the server; the pause
/// never grew past its first step, so a missing RBAC rule or an API server in trouble was
/// asked about once a second per kind, for ever.
fn backed_off<K: Send + 'static>(
    events: impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static {
    let start = (Box::pin(events), watcher::DefaultBackoff::default(), None);
    futures::stream::unfold(start, |(mut events, mut backoff, pause)| async move {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let event = events.next().await?;
        let pause = match &event {
            Err(_) => backoff.next(),
            Ok(Event::Init) => None,
            Ok(_) => {
                backoff.reset();
                None
            }
        };
        Some((event, (events, backoff, pause)))
    })
}

/// A kind's watcher events, from a new watcher (which starts with a list) whenever the
/// server answers a watch request 410 Gone.
///
/// kube's watcher re-lists after a 410 in an event of an open watch, but when the watch
/// request itself is answered 410 (what the Kubernetes API documents for a resource version
/// that has left the server's history, and what client-go re-lists on), it asks again from the
/// same version, for ever: the kind froze, objects deleted meanwhile still served and new ones
/// never seen.
fn relisting<K, S>(
    mut start: impl FnMut() -> S + Send + 'static,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    let events = Box::pin(start());
    futures::stream::unfold((events, start), |(mut events, mut start)| async move {
        let event = events.next().await?;
        if matches!(&event, Err(e) if is_expired_request(e)) {
            events = Box::pin(start());
        }
        Some((event, (events, start)))
    })
}

/// Watches every kind in [`WATCHED`] through `client`, applies each event to `translator`,
/// and sends every non-empty delta. Returns the status receiver, the delta receiver and the
/// future to spawn (it runs until dropped or until the delta receiver is dropped).
pub fn watch(
    client: kube::Client,
    translator: Arc<Mutex<Translator>>,
) -> (watch::Receiver<KubeStatus>, mpsc::UnboundedReceiver<Delta>, impl Future<Output = ()> + Send + 'static) {
    let (status_tx, status_rx) = watch::channel(KubeStatus::default());
    let (delta_tx, delta_rx) = mpsc::unbounded_channel();
    let mut source = Source { translator, status: status_tx, deltas: delta_tx, kinds: BTreeMap::new() };
    let fut = async move {
        let (opened_tx, mut opened) = mpsc::unbounded_channel();
        let client = opened::observed(client, opened_tx);
        let streams = WATCHED.iter().map(|w| updates(client.clone(), w).map(move |u| (w, u)));
        let mut events = futures::stream::select_all(streams);
        loop {
            tokio::select! {
                Some((w, update)) = events.next() => {
                    // A watch is told opened while its stream is polled, before the stream
                    // yields what follows: an error of that watch must not be taken first
                    // (its opening would then clear it, and its next retry report it again).
                    while let Ok(opened) = opened.try_recv() {
                        source.opened(opened);
                    }
                    if !source.update(w, update) {
                        return;
                    }
                }
                Some(w) = opened.recv() => source.opened(w),
                else => return,
            }
        }
    };
    (status_rx, delta_rx, fut)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// What a kind's watcher yields while its list keeps failing (a missing RBAC rule, an API
    /// server that is down): each attempt starts with `Init`, before the server is asked.
    fn failing_lists(attempts: usize) -> impl Stream<Item = Result<Event<()>, watcher::Error>> + Send + 'static {
        futures::stream::iter((0..attempts).flat_map(|_| [Ok(Event::Init), Err(watcher::Error::NoResourceVersion)]))
    }

    /// The (virtual) times at which the errors of `events` come out of [`backed_off`].
    async fn error_times(
        events: impl Stream<Item = Result<Event<()>, watcher::Error>> + Send + 'static,
    ) -> Vec<Duration> {
        let start = tokio::time::Instant::now();
        let mut out = Vec::new();
        let mut s = std::pin::pin!(backed_off(events));
        while let Some(e) = s.next().await {
            if e.is_err() {
                out.push(start.elapsed());
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn failing_lists_are_retried_with_growing_pauses() {
        let at = error_times(failing_lists(6)).await;
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // 0.8 s doubling (each with up to as much again of jitter), to 30 s at most.
        for (i, gap) in gaps.iter().enumerate() {
            let least = Duration::from_millis(800) * 2u32.pow(i as u32);
            assert!(*gap >= least, "pause {i} after a failed list: {gap:?} < {least:?}; all: {gaps:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_from_the_server_resets_the_pauses() {
        let events = failing_lists(3).chain(futures::stream::iter([Ok(Event::Init), Ok(Event::InitDone)])).chain(
            futures::stream::iter([
                Err(watcher::Error::NoResourceVersion),
                Ok(Event::Init),
                Err(watcher::Error::NoResourceVersion),
            ]),
        );
        let at = error_times(events).await;
        let gap = at[4] - at[3];
        assert!(gap < Duration::from_millis(1600), "not reset after a good list: {gap:?}");
    }
}
