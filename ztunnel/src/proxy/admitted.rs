//! Connections admitted by policy, held to it while they last.
//!
//! Policy is decided when a connection opens; without a second look, a DENY applied to stop
//! a client would leave that client's open connections running for as long as it kept them
//! open. So every inbound connection (HBONE and plaintext) is registered here once it is
//! allowed, and each new state is checked against all of them: a connection the new state
//! would refuse is closed (both ends reset), logged and counted under the reason
//! `policy_revoked`, as Istio's ztunnel closes connections a policy change denies.
//!
//! The cost is per connection, not per byte: one entry in a map (one lock, no allocation
//! beyond the map's own growth and a oneshot channel), and the copy polls the channel's
//! receiver, one atomic load. The map is split in [`SHARDS`] shards, each under its own lock,
//! and a recheck takes one shard at a time: a new connection registering while a push is
//! being checked against thousands of open ones waits for one shard's decisions at most,
//! not for all of them.
//!
//! What is checked again is the authorization decision alone. A destination workload missing
//! from the new state is left alone (the pod's own removal ends its proxy), and so is a
//! workload that has just been put behind a waypoint: as in Istio, the waypoint gate is
//! decided at the connection's start.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use hbone::Identity;
use tokio::sync::oneshot;

use crate::metrics::{Metrics, Reporter};
use crate::state::{ConnInfo, State, StateHandle, Verdict, Workload};

/// The registry of open, authorized inbound connections. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Admitted {
    inner: Arc<Inner>,
}

/// Shards of the registry (see the module's documentation).
const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Inner {
    next: AtomicU64,
    open: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

impl Inner {
    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open[id as usize % SHARDS].lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the decision was made on, kept to make it again.
#[derive(Debug)]
struct Entry {
    src_identity: Option<Identity>,
    src_ip: IpAddr,
    dst: Arc<Workload>,
    dst_ip: IpAddr,
    dst_port: u16,
    revoke: oneshot::Sender<Verdict>,
}

impl Entry {
    fn decide(&self, state: &State) -> Option<Verdict> {
        let dst = state.workload_by_uid(&self.dst.uid)?;
        Some(state.authorize(&ConnInfo {
            src_identity: self.src_identity.as_ref(),
            src_ip: self.src_ip,
            dst_workload: dst,
            dst_ip: self.dst_ip,
            dst_port: self.dst_port,
        }))
    }
}

/// The connection's decision, as registered.
#[derive(Debug)]
pub struct Decided<'a> {
    /// See [`ConnInfo::src_identity`].
    pub src_identity: Option<&'a Identity>,
    /// See [`ConnInfo::src_ip`].
    pub src_ip: IpAddr,
    /// The destination workload, as the decision saw it.
    pub dst: &'a Arc<Workload>,
    /// See [`ConnInfo::dst_ip`].
    pub dst_ip: IpAddr,
    /// See [`ConnInfo::dst_port`].
    pub dst_port: u16,
    /// Version of the state the decision was made on.
    pub version: u64,
}

/// An admitted connection's place in the registry; leaving it (drop) unregisters.
#[derive(Debug)]
pub struct Admission {
    id: u64,
    registry: Weak<Inner>,
    revoked: oneshot::Receiver<Verdict>,
}

impl Admission {
    /// Completes with the verdict that revoked the connection, if a policy change does; never
    /// otherwise.
    pub async fn revoked(&mut self) -> Verdict {
        match (&mut self.revoked).await {
            Ok(v) => v,
            // The registry is gone (the proxy is shutting down): nothing will revoke.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(inner) = self.registry.upgrade() {
            inner.shard(self.id).remove(&self.id);
        }
    }
}

impl Admitted {
    /// Registers an allowed connection. A state published after the decision and before the
    /// registration would have passed it by, so the decision is made again here when the
    /// current state is newer than the one it was made on; `Err` carries the verdict that
    /// now refuses the connection.
    pub fn admit(&self, d: Decided<'_>, state: &StateHandle) -> Result<Admission, Verdict> {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            src_identity: d.src_identity.cloned(),
            src_ip: d.src_ip,
            dst: d.dst.clone(),
            dst_ip: d.dst_ip,
            dst_port: d.dst_port,
            revoke: tx,
        };
        let admission = Admission { id, registry: Arc::downgrade(&self.inner), revoked: rx };
        let mut open = self.inner.shard(id);
        // Checked under the lock that a recheck takes too for this shard: either the recheck
        // of a newer state sees this entry, or this sees the newer state.
        let current = state.load();
        if current.version() != d.version
            && let Some(v) = entry.decide(&current)
            && !v.allowed
        {
            return Err(v);
        }
        open.insert(id, entry);
        drop(open);
        Ok(admission)
    }

    /// Connections registered and not yet closed.
    pub fn len(&self) -> usize {
        self.inner.open.iter().map(|m| m.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides every registered connection again on `state` and revokes those it refuses;
    /// returns how many were revoked.
    pub fn recheck(&self, state: &State, metrics: &Metrics) -> usize {
        let mut revoked: Vec<(Entry, Verdict)> = Vec::new();
        for shard in &self.inner.open {
            // A shard's decisions are made under its lock: they are pure and short (a few
            // policies per workload), and admitting in between would need the version check
            // in `admit` anyway.
            let mut open = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let refused: Vec<(u64, Verdict)> =
                open.iter().filter_map(|(id, e)| e.decide(state).filter(|v| !v.allowed).map(|v| (*id, v))).collect();
            revoked.extend(refused.into_iter().filter_map(|(id, v)| open.remove(&id).map(|e| (e, v))));
        }
        for (e, v) in &revoked {
            metrics.denied(Reporter::Destination, "policy_revoked");
            tracing::info!(
                src = %e.src_ip,
                src_identity = e.src_identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
                dst = %format_args!("{}:{}", e.dst_ip, e.dst_port),
                workload = %format_args!("{}/{}", e.dst.namespace(), e.dst.name),
                verdict = %v,
                "closing a connection the new policy refuses"
            );
        }
        let n = revoked.len();
        for (e, v) in revoked {
            // The connection may have ended meanwhile; then there is no one to tell.
            let _ = e.revoke.send(v);
        }
        n
    }

    /// Rechecks the registered connections on every state published through `state`, until
    /// every clone of this registry is gone.
    pub fn watch(&self, state: StateHandle, metrics: Arc<Metrics>) -> impl Future<Output = ()> + Send + use<> {
        let weak = Arc::downgrade(&self.inner);
        let mut changes = state.subscribe();
        async move {
            while changes.changed().await.is_ok() {
                let Some(inner) = weak.upgrade() else { return };
                let snapshot = state.snapshot();
                Admitted { inner }.recheck(&snapshot, &metrics);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StateConfig, file};

    fn state(allowed: &str) -> State {
        let yaml = format!(
            "workloads:\n- {{name: web, namespace: shop, serviceAccount: web, addresses: [10.0.0.2], protocol: HBONE}}\n\
             policies:\n- {{name: only, namespace: shop, scope: NAMESPACE, action: ALLOW, groups: [{{rules: [{{matches: [{{sourceIps: [{allowed}/32]}}]}}]}}]}}\n"
        );
        file::parse(&yaml, StateConfig::default()).unwrap()
    }

    fn decided<'a>(src: &str, dst: &'a Arc<Workload>, version: u64) -> Decided<'a> {
        Decided {
            src_identity: None,
            src_ip: src.parse().unwrap(),
            dst,
            dst_ip: "10.0.0.2".parse().unwrap(),
            dst_port: 80,
            version,
        }
    }

    #[test]
    fn a_decision_on_a_state_older_than_the_current_one_is_made_again() {
        let handle = StateHandle::new(state("10.0.0.1"));
        let web = handle.load().workloads().next().unwrap().clone();
        let admitted = Admitted::default();
        // Decided on version 0, which allowed 10.0.0.1; version 1 allows only 10.0.0.9.
        handle.store(state("10.0.0.9"));
        let refused = admitted.admit(decided("10.0.0.1", &web, 0), &handle).expect_err("the newer state refuses it");
        assert!(!refused.allowed);
        assert!(admitted.is_empty());
        // Made on the current version: registered without a second decision.
        let a = admitted.admit(decided("10.0.0.9", &web, handle.version()), &handle).unwrap();
        assert_eq!(admitted.len(), 1);
        drop(a);
        assert!(admitted.is_empty(), "leaving the registry is dropping the admission");
    }

    #[tokio::test]
    async fn a_recheck_reaches_every_shard() {
        let handle = StateHandle::new(state("10.0.0.1"));
        let web = handle.load().workloads().next().unwrap().clone();
        let admitted = Admitted::default();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        // Three connections per shard, alternately from the allowed source and another.
        let mut held: Vec<(bool, Admission)> = (0..3 * SHARDS)
            .map(|i| {
                let src = if i % 2 == 0 { "10.0.0.1" } else { "10.0.0.7" };
                (i % 2 == 0, admitted.admit(decided(src, &web, 0), &handle).unwrap())
            })
            .collect();
        assert_eq!(admitted.len(), 3 * SHARDS);
        assert_eq!(admitted.recheck(&state("10.0.0.1"), &metrics), 3 * SHARDS / 2);
        assert_eq!(admitted.len(), 3 * SHARDS / 2);
        for (allowed, a) in &mut held {
            let r =
                tokio::time::timeout(std::time::Duration::from_millis(if *allowed { 1 } else { 1000 }), a.revoked());
            assert_eq!(r.await.is_ok(), !*allowed, "revoked exactly when refused");
        }
        drop(held);
        assert!(admitted.is_empty(), "every shard let go of its connections");
    }

    #[tokio::test]
    async fn a_recheck_revokes_only_what_the_state_refuses() {
        let handle = StateHandle::new(state("10.0.0.1"));
        let web = handle.load().workloads().next().unwrap().clone();
        let admitted = Admitted::default();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let mut kept = admitted.admit(decided("10.0.0.1", &web, 0), &handle).unwrap();
        let mut gone = admitted.admit(decided("10.0.0.7", &web, 0), &handle).unwrap();

        assert_eq!(admitted.recheck(&state("10.0.0.1"), &metrics), 1);
        let why = tokio::time::timeout(std::time::Duration::from_secs(1), gone.revoked()).await.unwrap();
        assert!(!why.allowed);
        assert!(why.to_string().contains("shop/only"), "{why}");
        assert_eq!(admitted.len(), 1);
        let still = tokio::time::timeout(std::time::Duration::from_millis(50), kept.revoked()).await;
        assert!(still.is_err(), "an allowed connection is not revoked");
        let m = crate::metrics::encode(&registry);
        assert!(
            m.contains("ztunnel_connections_denied_total{reporter=\"destination\",reason=\"policy_revoked\"} 1"),
            "{m}"
        );

        // A workload missing from the new state is left alone.
        let empty = file::parse("workloads: []\n", StateConfig::default()).unwrap();
        assert_eq!(admitted.recheck(&empty, &metrics), 0);
        assert_eq!(admitted.len(), 1);
    }
}
