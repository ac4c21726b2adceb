//! Graceful shutdown: stop accepting, let open connections finish, up to a deadline.

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
}
