//! Making sockets inside a pod's network namespace from a data-plane thread.
//!
//! The thread enters the pod's namespace, creates the socket, and returns to ztunnel's own
//! namespace before doing anything else; a socket keeps the namespace it was created in.
//! Two `setns` calls per socket are far cheaper than a thread per socket, and pooling makes
//! outbound sockets rare anyway.

use std::io;
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};

use crate::netns::Netns;

use super::PodSockets;

/// Sockets for one pod.
#[derive(Clone, Debug)]
pub struct InPodSockets {
    pod: Arc<Netns>,
    host: Arc<Netns>,
}

impl InPodSockets {
    /// Sockets in `pod`, returning to `host` (ztunnel's namespace) after each.
    pub fn new(pod: Arc<Netns>, host: Arc<Netns>) -> Self {
        InPodSockets { pod, host }
    }
}

/// Returns the thread to ztunnel's namespace even if the closure panics.
struct Restore<'a>(&'a Netns);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if let Err(e) = setns(self.0, CloneFlags::CLONE_NEWNET) {
            // A data-plane thread stranded in a pod's namespace would make later sockets in
            // the wrong place: nothing sane can continue.
            tracing::error!(error = %e, "cannot return to ztunnel's network namespace");
            std::process::abort();
        }
    }
}

impl PodSockets for InPodSockets {
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
        setns(&*self.pod, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let _back = Restore(&self.host);
        Ok(f())
    }
}
