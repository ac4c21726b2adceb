//! A budget for log lines that a peer can cause at will (a failed handshake per connection it
//! opens): at most a few lines a second, and the next line that is written says how many were
//! left out. The metrics count every event; the log keeps examples, and cannot be flooded by a
//! peer into costing the data thread a write per connection.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Lines a second, for one kind of event.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    /// Start of the current one-second window, in ms since the process's first use of a budget.
    window: AtomicU64,
    used: AtomicU32,
    skipped: AtomicU64,
}

impl LogBudget {
    /// A budget of `per_second` lines each second.
    pub const fn per_second(per_second: u32) -> LogBudget {
        LogBudget { per_second, window: AtomicU64::new(0), used: AtomicU32::new(0), skipped: AtomicU64::new(0) }
    }

    /// Whether a line may be written now: `Some(n)`, with the `n` lines left out since the
    /// last one written, or `None` (counted as left out).
    pub fn admit(&self) -> Option<u64> {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64;
        self.admit_at(now)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let window = self.window.load(Ordering::Relaxed);
        // One caller opens the new window; the others count in it (a few lines over budget
        // across the boundary under a race is harmless).
        if now_ms >= window + 1_000
            && self.window.compare_exchange(window, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.skipped.swap(0, Ordering::Relaxed))
        } else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_cut_to_the_budget_and_the_next_window_says_how_many_were_left_out() {
        let b = LogBudget::per_second(3);
        let first: Vec<_> = (0..10).map(|i| b.admit_at(1_000 + i)).collect();
        assert_eq!(first, [Some(0), Some(0), Some(0), None, None, None, None, None, None, None]);
        // Still the same window at +999 ms.
        assert_eq!(b.admit_at(1_999), None);
        // A new second: lines again, the first reporting the 8 left out.
        assert_eq!(b.admit_at(2_000), Some(8));
        assert_eq!(b.admit_at(2_001), Some(0));
    }
}
