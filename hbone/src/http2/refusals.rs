//! Streams this process's servers refused, by reason, and connections it closed for the
//! peer's protocol errors, by HTTP/2 error code, counted for the metrics endpoints of the
//! programs that embed them. Process-wide: a refusal protects the process, whichever
//! connection it came from, and a scrape wants one total.

use std::sync::atomic::{AtomicU64, Ordering};

use super::frame::ErrorCode;

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

/// The codes a connection can be closed with for the peer's error (see
/// [`protocol_errors`]), for exporters that list each one even at zero. ENHANCE_YOUR_CALM
/// means a flood: streams reset before they were served, a header block without end.
pub const PROTOCOL_ERROR_CODES: [ErrorCode; 6] = [
    ErrorCode::PROTOCOL_ERROR,
    ErrorCode::FLOW_CONTROL_ERROR,
    ErrorCode::STREAM_CLOSED,
    ErrorCode::FRAME_SIZE_ERROR,
    ErrorCode::COMPRESSION_ERROR,
    ErrorCode::ENHANCE_YOUR_CALM,
];

/// One counter per error code RFC 9113 defines.
fn protocol_error_counter(code: ErrorCode) -> Option<&'static AtomicU64> {
    static COUNTS: [AtomicU64; ErrorCode::DEFINED] = [const { AtomicU64::new(0) }; ErrorCode::DEFINED];
    COUNTS.get(code.0 as usize)
}

/// Counts a connection this process closed with GOAWAY carrying `code`.
pub(crate) fn count_protocol_error(code: ErrorCode) {
    if let Some(c) = protocol_error_counter(code) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Connections this process closed since it started because the peer broke HTTP/2, with
/// `code` in the GOAWAY it sent.
pub fn protocol_errors(code: ErrorCode) -> u64 {
    protocol_error_counter(code).map_or(0, |c| c.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_code_has_a_counter_and_a_name() {
        for code in PROTOCOL_ERROR_CODES {
            assert!(protocol_error_counter(code).is_some(), "{code} has a counter");
            assert!(code.name().is_some(), "{code} has a label");
        }
        let before = protocol_errors(ErrorCode::COMPRESSION_ERROR);
        count_protocol_error(ErrorCode::COMPRESSION_ERROR);
        assert_eq!(protocol_errors(ErrorCode::COMPRESSION_ERROR), before + 1);
        // A code nobody defined is not counted, and does not panic.
        count_protocol_error(ErrorCode(0x99));
        assert_eq!(protocol_errors(ErrorCode(0x99)), 0);
    }
}
