//! The local state file: the whole mesh as one YAML document, for running without a control
//! plane, and a watcher that reloads it when it changes.
//!
//! # Format
//!
//! One document with three optional lists. Field names are those of the Istio protos' JSON form
//! (camelCase); every object rejects fields it does not know, and errors name the item
//! (`workloads[2] (default/productpage-v1)`) and the field. Each item is translated to the proto
//! message and converted exactly as xDS input is ([`super::convert`]), so the file cannot express
//! anything xDS could not.
//!
//! ```yaml
//! workloads:
//! - name: productpage-v1            # required
//!   namespace: default              # required
//!   uid: ""                         # default: Kubernetes//Pod/<namespace>/<name>
//!   serviceAccount: bookinfo        # default: "default"
//!   trustDomain: cluster.local      # default: cluster.local
//!   addresses: ["10.0.1.2"]
//!   node: node-a
//!   network: ""
//!   networkMode: STANDARD           # STANDARD (default) | HOST_NETWORK (address is the node's)
//!   protocol: HBONE                 # HBONE | NONE (default); alias tunnelProtocol
//!   workloadType: DEPLOYMENT        # DEPLOYMENT (default) | CRONJOB | POD | JOB
//!   canonicalName: productpage      # also canonicalRevision, workloadName, clusterId
//!   services:                       # "namespace/hostname": {servicePort: targetPort}
//!     default/productpage.default.svc.cluster.local: {9080: 9080}
//!   authorizationPolicies: [default/productpage-viewer]
//!   waypoint: {hostname: {namespace: default, hostname: waypoint.default.svc.cluster.local}, hboneMtlsPort: 15008}
//!   status: HEALTHY                 # HEALTHY (default) | UNHEALTHY
//!   locality: {region: us-east1, zone: us-east1-b, subzone: ""}   # each part optional, "" = unknown
//!   capacity: 2                     # relative share of connections; absent: 1; 0: never chosen
//! services:
//! - name: productpage
//!   namespace: default
//!   hostname: productpage.default.svc.cluster.local
//!   addresses: ["10.96.0.10", {network: "", address: "fd00::10"}]
//!   ports: [{servicePort: 9080, targetPort: 9080}]   # targetPort 0: named, per workload
//!   subjectAltNames: []
//!   waypoint: {address: "10.0.9.9"}  # a bare IP or {network, address}; hboneMtlsPort 15008 if unset
//!   loadBalancing:                  # absent: any endpoint, healthy ones only
//!     mode: FAILOVER                # UNSPECIFIED_MODE (default: preferences unused) | STRICT | FAILOVER | PASSTHROUGH
//!     routingPreference: [NETWORK, REGION, ZONE, SUBZONE]   # also NODE, CLUSTER; most important first
//!     healthPolicy: ONLY_HEALTHY    # ONLY_HEALTHY (default) | ALLOW_ALL
//! policies:
//! - name: productpage-viewer
//!   namespace: default
//!   scope: WORKLOAD_SELECTOR        # required: GLOBAL | NAMESPACE | WORKLOAD_SELECTOR
//!   action: ALLOW                   # required: ALLOW | DENY
//!   dryRun: false
//!   groups:                         # any group; all its rules; any of a rule's matches
//!   - rules:
//!     - matches:
//!       - principals: [{exact: cluster.local/ns/default/sa/bookinfo-gateway}, {presence: {}}]
//!         notNamespaces: [{prefix: test-}]      # also namespaces
//!         sourceIps: ["10.0.0.0/8", "fd00::1"]  # also notSourceIps, (not)destinationIps; bare IP = host
//!         destinationPorts: [9080]              # also notDestinationPorts
//!         serviceAccounts: [{namespace: default, serviceAccount: bookinfo}]  # also notServiceAccounts
//! ```
//!
//! Enum values are the proto's names, and an unknown one is an error naming the item and field
//! (where xDS fails closed instead: an unknown `loadBalancing` mode is taken as STRICT, an
//! unknown scope is one no endpoint shares; UNSPECIFIED_SCOPE, which would mean that, is refused
//! in the file). `loadBalancing` is applied against the connection's source workload, as
//! [`State::pick_endpoint_for`] describes: STRICT keeps only endpoints sharing every preferred
//! scope with it, FAILOVER the best rank present, PASSTHROUGH dials the service address itself.
//!
//! The file is all or nothing: any error rejects the whole file, and the watcher keeps serving
//! the last good state.

mod format;

use std::collections::hash_map::DefaultHasher;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::convert::ConvertError;
use super::{Policy, Service, State, StateConfig, StateError, StateHandle, Workload};
use format::Document;

/// How often the watcher looks at the file.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Why a document is not a valid state.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// Not YAML, or not the expected shape (unknown field, wrong type, bad IP, ...).
    #[error("{message}")]
    Syntax {
        /// The parser's message, with the offending item named.
        message: String,
        /// The parser's error.
        #[source]
        source: serde_yaml::Error,
    },
    /// An item that parses but does not validate.
    #[error("{item}: {source}")]
    Item {
        /// The item, e.g. `workloads[2] (default/productpage-v1)`.
        item: String,
        /// What is wrong with it (boxed: keeps `Result`s small).
        #[source]
        source: Box<ConvertError>,
    },
    /// The items do not form a state (e.g. duplicate names).
    #[error("{0}")]
    State(#[source] StateError),
}

/// Why the state file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file cannot be read.
    #[error("cannot read state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file's content is invalid.
    #[error("state file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DocError,
    },
}

/// `<section>[i] (<namespace>/<name>)`, naming an item of the document for error messages.
fn item_label(doc: Option<&serde_yaml::Value>, section: &str, i: usize) -> String {
    let item = doc.and_then(|d| d.get(section)).and_then(|s| s.get(i));
    let field = |k: &str| item.and_then(|v| v.get(k)).and_then(|v| v.as_str());
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{section}[{i}] ({ns}/{name})"),
        (None, Some(name)) => format!("{section}[{i}] ({name})"),
        _ => format!("{section}[{i}]"),
    }
}

/// Rewrites the parser's `workloads[2].addresses[0]: msg` into
/// `workloads[2] (default/productpage-v1): addresses[0]: msg`.
fn syntax_message(text: &str, e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    for section in ["workloads", "services", "policies"] {
        let Some(rest) = msg.strip_prefix(section).and_then(|r| r.strip_prefix('[')) else { continue };
        let Some((idx, rest)) = rest.split_once(']') else { continue };
        let Ok(i) = idx.parse::<usize>() else { continue };
        let doc: Option<serde_yaml::Value> = serde_yaml::from_str(text).ok();
        let label = item_label(doc.as_ref(), section, i);
        let rest = rest.strip_prefix('.').or_else(|| rest.strip_prefix(": ")).unwrap_or(rest);
        return format!("{label}: {rest}");
    }
    msg
}

/// Parses and validates a state document.
pub fn parse(text: &str, config: StateConfig) -> Result<State, DocError> {
    // An empty file is an empty mesh, not a YAML error.
    let doc: Document = if text.trim().is_empty() {
        Document::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| DocError::Syntax { message: syntax_message(text, &e), source: e })?
    };
    let label = |section: &str, i: usize, ns: &str, name: &str| format!("{section}[{i}] ({ns}/{name})");
    let workloads = doc
        .workloads
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            let item = label("workloads", i, &w.namespace, &w.name);
            Workload::try_from(w.into_proto()).map_err(|source| DocError::Item { item, source: Box::new(source) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let services = doc
        .services
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let item = label("services", i, &s.namespace, &s.name);
            Service::try_from(s.into_proto()).map_err(|source| DocError::Item { item, source: Box::new(source) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let policies = doc
        .policies
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let item = label("policies", i, &p.namespace, &p.name);
            Policy::try_from(p.into_proto()).map_err(|source| DocError::Item { item, source: Box::new(source) })
        })
        .collect::<Result<Vec<_>, _>>()?;
    State::new(config, workloads, services, policies).map_err(DocError::State)
}

/// Loads the state file with the default [`StateConfig`].
pub fn load(path: impl AsRef<Path>) -> Result<State, FileError> {
    load_with(path, StateConfig::default())
}

/// Loads the state file.
pub fn load_with(path: impl AsRef<Path>, config: StateConfig) -> Result<State, FileError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read { path: path.to_owned(), source })?;
    parse(&text, config).map_err(|source| FileError::Invalid { path: path.to_owned(), source })
}

/// What the watcher has done so far.
#[derive(Clone, Debug, Default)]
pub struct WatchStatus {
    /// [`StateHandle`] version of the last snapshot loaded from the file.
    pub version: Option<u64>,
    /// Successful loads.
    pub loads: u64,
    /// Failed loads (each distinct bad content or read failure counts once).
    pub failures: u64,
    /// The error of the last attempt, if it failed; the handle still serves the last good state.
    pub last_error: Option<Arc<FileError>>,
}

/// Watches the file: every [`POLL_INTERVAL`] it compares the file's mtime and length, reads it
/// when they changed (and every few seconds regardless), and reloads it when the content's hash
/// changed (so touching it without change does nothing). A good file replaces the
/// handle's state; a bad one is logged and reported in the status, and the last good state stays.
/// The first poll loads the file, so the watcher alone is enough to start from it.
///
/// Returns the status receiver and the future to spawn (it runs until dropped).
pub fn watch(
    path: impl Into<PathBuf>,
    handle: StateHandle,
    config: StateConfig,
) -> (watch::Receiver<WatchStatus>, impl Future<Output = ()> + Send + 'static) {
    let path = path.into();
    let (tx, rx) = watch::channel(WatchStatus::default());
    (rx, run(path, handle, config, tx))
}

/// Polls between forced reads: a safety net for edits that keep both size and mtime (coarse
/// timestamps on some filesystems); every other poll costs one `stat`.
const FORCED_READ_EVERY: u32 = 20;

async fn run(path: PathBuf, handle: StateHandle, config: StateConfig, status: watch::Sender<WatchStatus>) {
    // Hash of the content last tried, good or bad, so a bad file is reported once, not per poll.
    let mut last: Option<u64> = None;
    let mut last_meta: Option<(Option<std::time::SystemTime>, u64)> = None;
    let mut polls_since_read = 0u32;
    let mut read_failed = false;
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let meta = tokio::fs::metadata(&path).await.ok().map(|m| (m.modified().ok(), m.len()));
        polls_since_read += 1;
        if meta.is_some() && meta == last_meta && polls_since_read < FORCED_READ_EVERY {
            continue;
        }
        polls_since_read = 0;
        last_meta = meta;
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(t) => t,
            Err(source) => {
                if !read_failed {
                    let e = FileError::Read { path: path.clone(), source };
                    tracing::error!(error = %e, "state file unreadable; keeping the last good state");
                    status.send_modify(|s| {
                        s.failures += 1;
                        s.last_error = Some(Arc::new(e));
                    });
                }
                read_failed = true;
                // Reload when it comes back, even with the same content.
                last = None;
                last_meta = None;
                continue;
            }
        };
        read_failed = false;
        let mut h = DefaultHasher::new();
        text.hash(&mut h);
        let hash = h.finish();
        if last == Some(hash) {
            continue;
        }
        last = Some(hash);
        match parse(&text, config.clone()) {
            Ok(state) => {
                let counts = state.counts();
                for w in state.warnings() {
                    tracing::warn!(path = %path.display(), "state file: {w}");
                }
                let version = handle.store(state);
                tracing::info!(path = %path.display(), version, "state file loaded: {counts}");
                status.send_modify(|s| {
                    s.version = Some(version);
                    s.loads += 1;
                    s.last_error = None;
                });
            }
            Err(source) => {
                let e = FileError::Invalid { path: path.clone(), source };
                tracing::error!(error = %e, "state file rejected; keeping the last good state");
                status.send_modify(|s| {
                    s.failures += 1;
                    s.last_error = Some(Arc::new(e));
                });
            }
        }
    }
}
