//! The resource source a server streams from: a versioned in-memory store per
//! type URL that wakes every stream when anything changes.
//!
//! A resource's version is a digest of its encoded body, so a store rebuilt
//! with the same content (for example after a control-plane restart) yields
//! the same versions and a resuming client is sent only what really changed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use bytes::Bytes;
use prost_types::Any;
use tokio::sync::watch;

use crate::server::push::encode_resource;

/// One stored resource: its content-derived version and its body.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    /// Version string sent to clients (hex digest of type URL and body).
    pub version: Arc<str>,
    /// The resource body.
    pub body: Any,
    /// The `envoy.service.discovery.v3.Resource` carrying name, version and body, encoded
    /// once here and sent as is by every stream.
    pub(crate) encoded: Bytes,
}

/// Changes kept per type URL by default: a stream that fell further behind
/// than this (or a bulk load larger than it) falls back to a full diff.
pub const DEFAULT_CHANGE_LOG: usize = 4096;

/// The resources of one type URL.
#[derive(Debug, Default)]
pub(crate) struct TypeEntries {
    /// Store revision of the last change to this type.
    pub(crate) revision: u64,
    /// Resources by name. Streams keep these `Arc`s for the names they track, so each name
    /// is held once however many streams hold the resource.
    pub(crate) resources: BTreeMap<Arc<str>, StoredResource>,
    /// (store revision, name) of recent changes, oldest first.
    log: VecDeque<(u64, Arc<str>)>,
    /// Highest revision with changes dropped from `log`: changes after any
    /// revision at or above it are all still in the log.
    trimmed_to: u64,
}

impl TypeEntries {
    /// Names changed after store revision `since` (repeats possible), or
    /// `None` when the log no longer reaches back that far.
    pub(crate) fn changed_since(&self, since: u64) -> Option<impl Iterator<Item = &Arc<str>>> {
        if since < self.trimmed_to {
            return None;
        }
        let start = self.log.partition_point(|(revision, _)| *revision <= since);
        Some(self.log.range(start..).map(|(_, name)| name))
    }

    /// The stored name equal to `name`, shared, or a new one.
    fn intern(&self, name: &str) -> Arc<str> {
        match self.resources.get_key_value(name) {
            Some((stored, _)) => stored.clone(),
            None => name.into(),
        }
    }

    fn record(&mut self, revision: u64, name: Arc<str>, capacity: usize) {
        self.revision = revision;
        self.log.push_back((revision, name));
        while self.log.len() > capacity {
            if let Some((dropped, _)) = self.log.pop_front() {
                self.trimmed_to = dropped;
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct StoreState {
    /// The store revision this state is at.
    pub(crate) revision: u64,
    pub(crate) types: HashMap<String, TypeEntries>,
}

#[derive(Debug)]
struct Inner {
    state: RwLock<StoreState>,
    /// Carries the store revision; bumped by every effective change.
    revision: watch::Sender<u64>,
    /// Changes kept per type URL.
    log_capacity: usize,
}

/// A versioned in-memory resource store, shared by cloning.
///
/// Writers call [`ResourceStore::set`] and [`ResourceStore::remove`]; every
/// server stream watches [`ResourceStore::subscribe`] and pushes the
/// differences to its client. Setting a resource to the content it already
/// has changes nothing and wakes no one.
#[derive(Debug, Clone)]
pub struct ResourceStore {
    inner: Arc<Inner>,
}

impl Default for ResourceStore {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceStore {
    /// An empty store at revision 0 that remembers the last
    /// [`DEFAULT_CHANGE_LOG`] changes per type URL.
    pub fn new() -> Self {
        Self::with_change_log(DEFAULT_CHANGE_LOG)
    }

    /// An empty store remembering the last `capacity` changes per type URL,
    /// so streams push only what changed since they last looked; a stream
    /// further behind compares every resource instead.
    pub fn with_change_log(capacity: usize) -> Self {
        let (revision, _) = watch::channel(0);
        let state = RwLock::new(StoreState::default());
        Self { inner: Arc::new(Inner { state, revision, log_capacity: capacity }) }
    }

    /// Inserts or replaces `name` under `type_url`. Returns the resource's
    /// version, and whether anything changed.
    pub fn set(&self, type_url: &str, name: &str, body: Any) -> (Arc<str>, bool) {
        let version = content_version(&body);
        let encoded = encode_resource(name, &version, &body);
        let capacity = self.inner.log_capacity;
        let changed = self.apply(|state, revision| {
            let entries = state.types.entry(type_url.to_owned()).or_default();
            if entries.resources.get(name).is_some_and(|r| r.version == version) {
                return false;
            }
            let resource = StoredResource { version: version.clone(), body, encoded };
            let name = entries.intern(name);
            entries.resources.insert(name.clone(), resource);
            entries.record(revision, name, capacity);
            true
        });
        (version, changed)
    }

    /// Removes `name` under `type_url`. Returns whether it existed.
    pub fn remove(&self, type_url: &str, name: &str) -> bool {
        let capacity = self.inner.log_capacity;
        self.apply(|state, revision| {
            let Some(entries) = state.types.get_mut(type_url) else {
                return false;
            };
            let Some((name, _)) = entries.resources.remove_entry(name) else {
                return false;
            };
            entries.record(revision, name, capacity);
            true
        })
    }

    /// Applies several changes to one type URL as one revision, so streams
    /// see them together: `updates` are set, `removals` removed.
    pub fn update(
        &self,
        type_url: &str,
        updates: impl IntoIterator<Item = (String, Any)>,
        removals: impl IntoIterator<Item = String>,
    ) -> bool {
        // Digests and encodings are computed before the write lock: streams read meanwhile.
        let updates: Vec<_> = updates
            .into_iter()
            .map(|(name, body)| {
                let version = content_version(&body);
                let encoded = encode_resource(&name, &version, &body);
                (name, version, body, encoded)
            })
            .collect();
        let capacity = self.inner.log_capacity;
        self.apply(|state, revision| {
            let entries = state.types.entry(type_url.to_owned()).or_default();
            let mut changed = false;
            for (name, version, body, encoded) in updates {
                if entries.resources.get(name.as_str()).is_some_and(|r| r.version == version) {
                    continue;
                }
                let name = entries.intern(&name);
                entries.record(revision, name.clone(), capacity);
                entries.resources.insert(name, StoredResource { version, body, encoded });
                changed = true;
            }
            for name in removals {
                if let Some((name, _)) = entries.resources.remove_entry(name.as_str()) {
                    entries.record(revision, name, capacity);
                    changed = true;
                }
            }
            changed
        })
    }

    /// The resource `name` under `type_url`, if present.
    pub fn get(&self, type_url: &str, name: &str) -> Option<StoredResource> {
        self.read().types.get(type_url).and_then(|t| t.resources.get(name)).cloned()
    }

    /// The version of `name` under `type_url`, if present.
    pub fn version(&self, type_url: &str, name: &str) -> Option<Arc<str>> {
        self.read().types.get(type_url).and_then(|t| t.resources.get(name)).map(|r| r.version.clone())
    }

    /// Names and versions of every resource under `type_url`.
    pub fn versions(&self, type_url: &str) -> BTreeMap<String, Arc<str>> {
        self.read()
            .types
            .get(type_url)
            .map(|t| t.resources.iter().map(|(n, r)| (n.to_string(), r.version.clone())).collect())
            .unwrap_or_default()
    }

    /// Number of resources under `type_url`.
    pub fn count(&self, type_url: &str) -> usize {
        self.read().types.get(type_url).map_or(0, |t| t.resources.len())
    }

    /// The current store revision (0 for a store never changed).
    pub fn revision(&self) -> u64 {
        *self.inner.revision.borrow()
    }

    /// A receiver woken after every effective change; its value is the revision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, StoreState> {
        // A writer that panicked mid-change left at worst one type partly
        // updated; serving that beats taking every stream down.
        self.inner.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` under the write lock with the next revision; publishes
    /// that revision if `change` reports a change.
    fn apply(&self, change: impl FnOnce(&mut StoreState, u64) -> bool) -> bool {
        let mut state = self.inner.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Revisions are only bumped under the state lock, so they are ordered
        // with the changes they announce.
        let next = *self.inner.revision.borrow() + 1;
        let changed = change(&mut state, next);
        if changed {
            state.revision = next;
            self.inner.revision.send_replace(next);
        }
        changed
    }
}

/// Hex of the first 128 bits of SHA-256 over the type URL and body.
///
/// A cryptographic digest so that no crafted resource can keep the version
/// of an older one and have its change silently skipped.
pub fn content_version(body: &Any) -> Arc<str> {
    let suite = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let hash = suite.tls13().map(|s| s.common.hash_provider);
    let mut input = Vec::with_capacity(body.type_url.len() + 1 + body.value.len());
    input.extend_from_slice(body.type_url.as_bytes());
    // The separator keeps ("ab", "c") and ("a", "bc") apart: type URLs never contain NUL.
    input.push(0);
    input.extend_from_slice(&body.value);
    let digest = match hash {
        Some(h) => h.hash(&input),
        // The constant above is a TLS 1.3 suite; this arm cannot be reached.
        None => unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
    };
    let mut out = String::with_capacity(32);
    for byte in &digest.as_ref()[..16] {
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(value: &[u8]) -> Any {
        Any { type_url: "type.googleapis.com/t".into(), value: value.to_vec() }
    }

    #[test]
    fn same_content_same_version_and_no_wakeup() {
        let store = ResourceStore::new();
        let rx = store.subscribe();
        let (v1, changed) = store.set("t", "a", any(b"1"));
        assert!(changed);
        assert_eq!(store.revision(), 1);
        let (v2, changed) = store.set("t", "a", any(b"1"));
        assert!(!changed);
        assert_eq!(v1, v2);
        assert_eq!(store.revision(), 1);
        assert!(rx.has_changed().unwrap());
        let (v3, _) = store.set("t", "a", any(b"2"));
        assert_ne!(v1, v3);
        assert_eq!(v1.len(), 32);
        // A second store with the same content agrees on versions.
        let other = ResourceStore::new();
        assert_eq!(other.set("t", "a", any(b"2")).0, v3);
    }

    #[test]
    fn remove_and_batch_update() {
        let store = ResourceStore::new();
        assert!(!store.remove("t", "a"));
        store.set("t", "a", any(b"1"));
        assert!(store.update("t", [("b".to_owned(), any(b"2"))], ["a".to_owned()]));
        assert_eq!(store.revision(), 2);
        assert!(store.get("t", "a").is_none());
        assert_eq!(store.versions("t").len(), 1);
        assert!(!store.update("t", [("b".to_owned(), any(b"2"))], ["zz".to_owned()]));
        assert_eq!(store.revision(), 2);
    }

    fn changed(store: &ResourceStore, since: u64) -> Option<Vec<String>> {
        let state = store.read();
        state.types["t"].changed_since(since).map(|names| names.map(|n| n.to_string()).collect())
    }

    #[test]
    fn change_log_lists_names_after_a_revision_until_trimmed() {
        let store = ResourceStore::with_change_log(3);
        store.set("t", "a", any(b"1"));
        store.set("t", "a", any(b"1"));
        store.update("t", [("b".to_owned(), any(b"1")), ("c".to_owned(), any(b"1"))], ["a".to_owned()]);
        assert_eq!(store.revision(), 2);
        assert_eq!(store.read().revision, 2);
        // Four changes in a log of three: a's first set is gone, so only
        // revision 1 and later can still be answered.
        assert_eq!(changed(&store, 0), None);
        assert_eq!(changed(&store, 1).unwrap(), ["b", "c", "a"]);
        assert!(changed(&store, 2).unwrap().is_empty());
        store.remove("t", "b");
        assert_eq!(changed(&store, 1), None, "revision 2's change of b was dropped");
        assert_eq!(changed(&store, 2).unwrap(), ["b"]);
        assert!(changed(&store, 3).unwrap().is_empty());
    }
}
