//! Paces large pushes across streams. A push is encoded into one buffer that lives until the
//! client has read it; when many proxies connect at once (a control-plane restart), every
//! stream's full sync would be in memory together. Streams reserve a push's encoded size from
//! a server-wide budget before sending it and give it back when the client answers (or after
//! [`HOLD_LIMIT`], so a client that never answers cannot stall the others). Small pushes, the
//! everyday changes, never wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Encoded bytes of large pushes in flight, server-wide, by default.
pub const DEFAULT_PUSH_BUDGET: usize = 32 << 20;

/// Pushes up to this size are sent without a reservation.
pub(crate) const SMALL_PUSH: usize = 64 << 10;

/// How long an unanswered push keeps its reservation.
pub(crate) const HOLD_LIMIT: Duration = Duration::from_secs(2);

/// Reservations are counted in KiB: a semaphore's permits are a `u32`.
const UNIT: usize = 1 << 10;

/// The server-wide budget.
#[derive(Debug, Clone)]
pub(crate) struct PushBudget {
    permits: Arc<Semaphore>,
    units: u32,
}

impl PushBudget {
    /// A budget of `bytes` (at least one unit).
    pub(crate) fn new(bytes: usize) -> PushBudget {
        let units = u32::try_from((bytes / UNIT).max(1)).unwrap_or(u32::MAX);
        PushBudget { permits: Arc::new(Semaphore::new(units as usize)), units }
    }

    /// Waits until a push of `bytes` fits; `None` for a small push. A push larger than the
    /// whole budget waits for all of it, and so goes alone.
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        if bytes <= SMALL_PUSH {
            return None;
        }
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX).min(self.units);
        // The semaphore is never closed.
        self.permits.clone().acquire_many_owned(units).await.ok()
    }
}

/// One stream's reservations for pushes awaiting answers.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Type URL and nonce of the push, its reservation, and when it lapses.
    pushes: Vec<(String, String, OwnedSemaphorePermit, Instant)>,
}

impl Held {
    /// Keeps `permit` until the push `nonce` of `type_url` is answered or [`HOLD_LIMIT`] passes.
    pub(crate) fn hold(&mut self, type_url: String, nonce: String, permit: OwnedSemaphorePermit) {
        self.pushes.push((type_url, nonce, permit, Instant::now() + HOLD_LIMIT));
    }

    /// Releases the reservations of pushes no longer outstanding.
    pub(crate) fn answered(&mut self, outstanding: impl Fn(&str, &str) -> bool) {
        self.pushes.retain(|(type_url, nonce, ..)| outstanding(type_url, nonce));
    }

    /// When the next reservation lapses, if any is held.
    pub(crate) fn next_lapse(&self) -> Option<Instant> {
        self.pushes.iter().map(|(.., at)| *at).min()
    }

    /// Releases the reservations that have lapsed by `now`.
    pub(crate) fn lapse(&mut self, now: Instant) {
        self.pushes.retain(|(.., at)| *at > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn large_pushes_wait_for_room_and_small_ones_never_do() {
        let budget = PushBudget::new(1 << 20);
        assert!(budget.reserve(SMALL_PUSH).await.is_none());
        let first = budget.reserve(700 << 10).await.expect("a large push reserves");
        // A second large push does not fit beside the first; a small one goes.
        let waiting = tokio::time::timeout(Duration::from_secs(1), budget.reserve(700 << 10)).await;
        assert!(waiting.is_err(), "the second large push waited");
        assert!(budget.reserve(1000).await.is_none());
        drop(first);
        let second = budget.reserve(700 << 10).await;
        assert!(second.is_some());
        drop(second);
        // Larger than the whole budget: takes all of it, alone.
        let huge = budget.reserve(5 << 20).await.expect("goes alone");
        assert_eq!(budget.permits.available_permits(), 0);
        drop(huge);
        assert_eq!(budget.permits.available_permits(), 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn held_reservations_go_back_when_answered_or_lapsed() {
        let budget = PushBudget::new(1 << 20);
        let mut held = Held::default();
        held.hold("a".into(), "1".into(), budget.reserve(300 << 10).await.unwrap());
        held.hold("b".into(), "2".into(), budget.reserve(300 << 10).await.unwrap());
        assert_eq!(budget.permits.available_permits(), 1024 - 600);
        held.answered(|t, n| (t, n) != ("a", "1"));
        assert_eq!(budget.permits.available_permits(), 1024 - 300);
        let lapse = held.next_lapse().unwrap();
        held.lapse(lapse - Duration::from_millis(1));
        assert_eq!(budget.permits.available_permits(), 1024 - 300, "not yet");
        held.lapse(lapse);
        assert_eq!(budget.permits.available_permits(), 1024);
        assert!(held.next_lapse().is_none());
    }
}
