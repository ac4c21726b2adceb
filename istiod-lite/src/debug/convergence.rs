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
use xds::XdsServer;

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
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain_mut(|p| {
                // Asked of the streams in place: building every stream's full status (all
                // acknowledged versions) each tick cost more CPU than the pushes themselves
                // with thousands of resources and tens of proxies.
                let changes: Vec<(&str, &str, Option<&str>)> =
                    p.changes.iter().map(|c| (c.type_url.as_str(), c.name.as_str(), c.version.as_deref())).collect();
                let acks = xds.acknowledged(&changes);
                let waiting = p.waiting.get_or_insert_with(|| acks.iter().map(|(id, _)| *id).collect());
                waiting.retain(|id| match acks.iter().find(|(c, _)| c == id) {
                    None => false,
                    Some((_, true)) => {
                        metrics.convergence.observe(p.at.elapsed().as_secs_f64());
                        false
                    }
                    Some((_, false)) => true,
                });
                !waiting.is_empty() && p.at.elapsed() < GIVE_UP
            });
        }
    }
}
