//! Graceful shutdown: stop accepting, let open connections finish, up to a deadline.
//! Long-lived multiplexed connections (inbound HBONE) also watch for the start of the
//! drain, to tell their clients to go elsewhere.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Counts live connections so shutdown can wait for them.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: AtomicUsize,
    idle: Notify,
    /// Set once, when shutdown begins.
    draining: tokio::sync::watch::Sender<bool>,
}

/// Held by each connection while it lives.
#[derive(Debug)]
pub struct ConnGuard(Drain);

impl Drain {
    /// Registers a live connection.
    pub fn track(&self) -> ConnGuard {
        self.inner.live.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// Shutdown has begun: wakes every [`started`](Self::started).
    pub fn start(&self) {
        self.inner.draining.send_replace(true);
    }

    /// Completes once [`start`](Self::start) has been called (at once if it already was).
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.draining.subscribe();
        async move {
            // Err only if the sender is gone, i.e. the whole drain is: nothing to wait for.
            let _ = rx.wait_for(|draining| *draining).await;
        }
    }

    /// Connections still open.
    pub fn live(&self) -> usize {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Waits until no connection is live or `deadline` passes; returns how many were left.
    pub async fn wait(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.live() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.live()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.inner.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_connections_up_to_deadline() {
        let d = Drain::default();
        let g = d.track();
        let d2 = d.clone();
        let waiter = tokio::spawn(async move { d2.wait(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(g);
        assert_eq!(waiter.await.unwrap(), 0);
        let _g = d.track();
        assert_eq!(d.wait(Duration::from_millis(50)).await, 1);
    }

    #[tokio::test]
    async fn started_completes_once_shutdown_begins() {
        let d = Drain::default();
        let early = tokio::spawn(d.started());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!early.is_finished());
        d.start();
        tokio::time::timeout(Duration::from_secs(5), early).await.unwrap().unwrap();
        // Asked after the start: done at once.
        tokio::time::timeout(Duration::from_secs(5), d.started()).await.unwrap();
    }
}
