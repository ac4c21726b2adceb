//! [`StateHandle`]: the shared pointer through which sources publish snapshots and the proxy
//! reads them.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::State;

/// A shared, swappable pointer to the current snapshot. Cheap to clone.
#[derive(Clone, Debug)]
pub struct StateHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    current: ArcSwap<State>,
    /// Serializes stores so versions are published in order.
    store_lock: Mutex<u64>,
    changed: watch::Sender<u64>,
}

impl Default for StateHandle {
    fn default() -> Self {
        StateHandle::new(State::empty())
    }
}

impl StateHandle {
    /// A handle whose current snapshot is `initial` (at version 0).
    pub fn new(mut initial: State) -> StateHandle {
        initial.version = 0;
        let (changed, _) = watch::channel(0);
        StateHandle {
            inner: Arc::new(HandleInner {
                current: ArcSwap::from_pointee(initial),
                store_lock: Mutex::new(0),
                changed,
            }),
        }
    }

    /// The current snapshot, for a short look (no reference count traffic).
    pub fn load(&self) -> arc_swap::Guard<Arc<State>> {
        self.inner.current.load()
    }

    /// The current snapshot, to hold for a while (e.g. a connection's lifetime).
    pub fn snapshot(&self) -> Arc<State> {
        self.inner.current.load_full()
    }

    /// Publishes a new snapshot and returns the version assigned to it (one more than the last).
    pub fn store(&self, mut state: State) -> u64 {
        let mut last = self.inner.store_lock.lock().unwrap_or_else(|e| e.into_inner());
        *last += 1;
        state.version = *last;
        self.inner.current.store(Arc::new(state));
        self.inner.changed.send_replace(*last);
        *last
    }

    /// Version of the current snapshot (0 until the first store).
    pub fn version(&self) -> u64 {
        self.inner.current.load().version
    }

    /// A receiver that sees the version of each stored snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}
