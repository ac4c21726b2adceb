//! Readiness: the proxy is ready when every registered start-up task has finished (first
//! state loaded, certificates present, listeners bound).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

/// Shared readiness tracker. Clones share state.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    pending: Arc<Mutex<BTreeSet<String>>>,
}

/// A start-up task that blocks readiness until dropped.
#[derive(Debug)]
#[must_use = "readiness is blocked only while the guard lives"]
pub struct BlockReady {
    ready: Ready,
    name: String,
}

impl Ready {
    /// Registers a task that must finish before the proxy reports ready.
    pub fn register(&self, name: impl Into<String>) -> BlockReady {
        let name = name.into();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone());
        BlockReady { ready: self.clone(), name }
    }

    /// Tasks still pending; empty means ready.
    pub fn pending(&self) -> Vec<String> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
    }
}

impl Drop for BlockReady {
    fn drop(&mut self) {
        self.ready.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_all_tasks() {
        let r = Ready::default();
        let a = r.register("state");
        let b = r.register("listeners");
        assert_eq!(r.pending(), vec!["listeners".to_string(), "state".to_string()]);
        drop(a);
        assert_eq!(r.pending(), vec!["listeners".to_string()]);
        drop(b);
        assert!(r.pending().is_empty());
    }
}
