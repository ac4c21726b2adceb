//! Streams this process's servers refused, by reason, counted for the metrics endpoints of the
//! programs that embed them. Process-wide: a refusal protects the process, whichever
//! connection it came from, and a scrape wants one total.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a server refused a new stream with REFUSED_STREAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// As many streams open as SETTINGS_MAX_CONCURRENT_STREAMS allows.
    ConcurrencyLimit,
    /// Streams the peer reset are still held by their handlers, a second limit's worth.
    ResetStreamsHeld,
}

impl Refusal {
    /// Every reason, for exporters that list each one even at zero.
    pub const ALL: [Refusal; 2] = [Refusal::ConcurrencyLimit, Refusal::ResetStreamsHeld];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConcurrencyLimit => "concurrency_limit",
            Refusal::ResetStreamsHeld => "reset_streams_held",
        }
    }

    fn counter(self) -> &'static AtomicU64 {
        static COUNTS: [AtomicU64; Refusal::ALL.len()] = [const { AtomicU64::new(0) }; Refusal::ALL.len()];
        &COUNTS[self as usize]
    }

    pub(crate) fn count(self) {
        self.counter().fetch_add(1, Ordering::Relaxed);
    }

    /// Streams refused for this reason since the process started.
    pub fn total(self) -> u64 {
        self.counter().load(Ordering::Relaxed)
    }
}
