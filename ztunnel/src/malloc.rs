//! glibc malloc settings for a proxy's allocation pattern, and handing back what bursts leave.
//!
//! Bulk transfers allocate and free buffers of 16 KiB to 1 MiB (socket reads, TLS records,
//! HTTP/2 frames) many thousand times a second. With glibc's defaults every free that leaves
//! more than the (dynamic) trim threshold at the top of a thread's arena gives the pages back
//! with `madvise(MADV_DONTNEED)`, and the next buffer faults them in again, zeroed: in a
//! one-stream `iperf3` run through the mesh that was 1.27 million page faults on the sending
//! ztunnel, about a tenth of its CPU. The opposite failure follows from the same defaults: what
//! a burst leaves free inside an arena stays resident until the process exits.
//!
//! So, set once at start ([`tune`]):
//! - one arena ([`ARENAS`]): the data workers share the main heap (small allocations come
//!   from each thread's cache without the lock). `malloc_trim` can shrink only the main heap's
//!   top, so with per-thread arenas the trimming below would leave their tops resident;
//! - a fixed trim threshold ([`TRIM_THRESHOLD`]) and mmap threshold ([`MMAP_THRESHOLD`]);
//!   setting them also stops glibc from moving them, so a 1 MiB frame buffer comes from the
//!   heap instead of a fresh `mmap` and frees do not hand pages back one buffer at a time;
//!
//! and every [`TRIM_INTERVAL`] [`trim`] (run from the admin thread, see
//! [`crate::runtimes::Runtimes::start`]) returns whatever is free (`malloc_trim`),
//! so memory a burst used is back with the system within about a second of the burst ending.
//! Only glibc builds are tuned; elsewhere both are no-ops.
#![allow(unsafe_code)]

use std::time::Duration;

/// malloc arenas (`M_ARENA_MAX`).
pub const ARENAS: i32 = 1;
/// Free memory kept at the heap's top on `free` (`M_TRIM_THRESHOLD`), bytes.
pub const TRIM_THRESHOLD: i32 = 8 * 1024 * 1024;
/// Allocations from this size up get their own mapping (`M_MMAP_THRESHOLD`), bytes: above the
/// largest HTTP/2 frame buffer (1 MiB frames plus their header).
pub const MMAP_THRESHOLD: i32 = 4 * 1024 * 1024;
/// How often free memory is handed back.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Applies the settings above. [`crate::runtimes::Runtimes::start`] calls it before it starts
/// any thread: glibc reads `M_ARENA_MAX` when a thread first allocates.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (param, value) in [
        (libc::M_ARENA_MAX, ARENAS),
        (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    ] {
        // SAFETY: mallopt only records the parameter; any value is accepted or refused by it.
        if unsafe { libc::mallopt(param, value) } != 1 {
            tracing::warn!(param, value, "mallopt refused a setting; glibc's default stays");
        }
    }
}

/// Returns the free memory of every arena to the system now. A trim walks the heap's free
/// chunks under the arena lock: tens of microseconds for a proxy's heap, once a second.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the arena locks itself; it is safe from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A freed burst below memory still in use is handed back by `trim`: `free` alone cannot
    /// (only the heap's top shrinks on free), so without the trim RSS would stay up.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_returns_a_freed_burst_below_live_memory() {
        tune();
        let rss = || -> usize {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap()
        };
        // 64 MiB in 256 KiB buffers, written (not zero: calloc'd zeroes need not be touched)
        // so their pages are resident; then a buffer allocated after them that stays live.
        let burst: Vec<Vec<u8>> = (0..256).map(|i| vec![(i % 250 + 1) as u8; 256 * 1024]).collect();
        let pin = vec![7u8; 300 * 1024];
        let held = rss();
        drop(burst);
        trim();
        let after = rss();
        assert_eq!(pin[pin.len() - 1], 7);
        assert!(
            held.saturating_sub(after) > 48 * 1024,
            "trim gave back {} KiB of a 64 MiB burst (RSS {held} KiB held, {after} KiB after)",
            held.saturating_sub(after)
        );
    }
}
