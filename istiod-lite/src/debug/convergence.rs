//! Push latency as proxies see it: from a configuration change reaching the xDS store to each
//! proxy connected at that moment acknowledging the changed resources (Istio's
//! `pilot_proxy_convergence_time`).
//!
//! Changes are checked against [`XdsServer::connections`] every [`TICK`] while any is pending:
//! only the control plane's own bookkeeping, never the push path. A proxy that disconnects
//! first is not counted; a change still unacknowledged after [`GIVE_UP`] is dropped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use xds::{ConnectionStatus, XdsServer};

use super::metrics::Metrics;

/// How often pending changes are checked.
pub const TICK: Duration = Duration::from_millis(20);
/// How long a change is followed.
pub const GIVE_UP: Duration = Duration::from_secs(30);

/// One resource a change set: its new version, or `None` for a removal.
#[derive(Clone, Debug)]
pub struct Changed {
    /// Type URL.
    pub type_url: String,
    /// Resource name.
    pub name: String,
    /// New version, `None` when removed.
    pub version: Option<Arc<str>>,
}

#[derive(Debug)]
struct Pending {
    at: Instant,
    changes: Vec<Changed>,
    /// Streams still to acknowledge; filled at the first check.
    waiting: Option<HashSet<u64>>,
}

/// Follows changes until every proxy has acknowledged them.
#[derive(Debug, Default)]
pub struct Convergence {
    pending: Mutex<Vec<Pending>>,
    wake: Notify,
}

impl Convergence {
    /// Records a change applied to the store now.
    pub fn changed(&self, changes: Vec<Changed>) {
        if changes.is_empty() {
            return;
        }
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push(Pending {
            at: Instant::now(),
            changes,
            waiting: None,
        });
        self.wake.notify_one();
    }

    /// Checks pending changes against `xds` until dropped, observing into `metrics`.
    pub async fn run(self: Arc<Self>, xds: XdsServer, metrics: Arc<Metrics>) {
        loop {
            let idle = self.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
            if idle {
                self.wake.notified().await;
            }
            tokio::time::sleep(TICK).await;
            let conns = xds.connections();
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain_mut(|p| {
                let waiting = p.waiting.get_or_insert_with(|| conns.iter().map(|c| c.id).collect());
                waiting.retain(|id| match conns.iter().find(|c| c.id == *id) {
                    None => false,
                    Some(c) if acknowledged(c, &p.changes) => {
                        metrics.convergence.observe(p.at.elapsed().as_secs_f64());
                        false
                    }
                    Some(_) => true,
                });
                !waiting.is_empty() && p.at.elapsed() < GIVE_UP
            });
        }
    }
}

/// Whether `c` has acknowledged every change it subscribes to.
fn acknowledged(c: &ConnectionStatus, changes: &[Changed]) -> bool {
    changes.iter().all(|ch| match c.types.get(&ch.type_url) {
        None => true,
        Some(t) if !t.wildcard && !t.names.contains(&ch.name) => true,
        Some(t) => t.acked.get(&ch.name).map(String::as_str) == ch.version.as_deref(),
    })
}
