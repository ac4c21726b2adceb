//! Short scheduler time slices for the data threads while the node has CPU to spare.
//!
//! A request crosses ztunnel in a few microseconds of CPU, but it is woken for it by the
//! app or the peer, often onto a CPU where something else is still running. Under Linux's
//! EEVDF scheduler (6.6+) a woken thread with the default slice waits for that task to block
//! or use up its slice; since 6.12 a thread may ask for a shorter slice (`sched_setattr`
//! with `sched_runtime` on `SCHED_OTHER`, 0.1 ms at least), which gives it an earlier deadline,
//! so its wake-ups preempt. It gets no more CPU by it (its weight is unchanged), only less
//! waiting.
//!
//! Measured in `benches l4 --quick` (2026-12-07, 2 vCPUs): a fixed 100 µs slice took the p50
//! at 1,000 req/s from 4.3–4.6× direct to 3.7–3.9×, but the saturated closed loop from
//! 0.33–0.34 of direct to 0.30–0.32: when every CPU is busy, each preemption costs the app and
//! the load a batch. So the slice is short only while the node is mostly idle, and goes back
//! to the default when it is busy, judged from `/proc/stat` every [`PERIOD`] with some
//! hysteresis so a load near the boundary does not flip it each period. That kept the closed
//! loop (0.338 against 0.341 off, three runs each) and the p50 gain (3.79× against 4.54×).
//!
//! It is off unless configured (`--sched-slice-us`): the latency it wins is taken from what it
//! preempts. In `benches l7 --quick` the path through the waypoint, a heavier process than the
//! server, had its p99 at 2.6–3.0× direct with ztunnel's short slice against 2.2–2.45× without.
//!
//! Older kernels ignore the slice; a kernel or policy that refuses the call (a real-time
//! policy set by the operator, seccomp) leaves the threads as they were, with one warning.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often the node's load is looked at.
pub const PERIOD: Duration = Duration::from_millis(250);

/// Whether the data threads hold the short slice now, and how often it changed: the process
/// has one data path, so one of each (read by the metrics, see [`state`]).
static SHORT: AtomicBool = AtomicBool::new(false);
static SWITCHES: AtomicU64 = AtomicU64::new(0);

/// Whether the data threads hold the short slice now, and how many times it was given or
/// taken back so far.
pub fn state() -> (bool, u64) {
    (SHORT.load(Ordering::Relaxed), SWITCHES.load(Ordering::Relaxed))
}

/// When the data threads run with the short slice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlicePolicy {
    /// The slice asked for while the node is idle enough (the kernel clamps to 0.1–100 ms).
    pub short: Duration,
    /// Switch to the short slice when the node's CPUs were busy less than this share.
    pub enter_below: f64,
    /// Go back to the default slice when they were busy more than this share.
    pub leave_above: f64,
}

impl SlicePolicy {
    /// The policy with a short slice of `short`, switching at half the node's CPU busy (with
    /// hysteresis up to 65%). At 1,000 req/s through the benchmark's two nodes the machine is
    /// 10–35% busy; a saturated closed loop keeps it at 75–100%.
    pub fn with_short(short: Duration) -> Self {
        Self { short, enter_below: 0.5, leave_above: 0.65 }
    }

    /// Whether the short slice should apply next, given whether it applies now and the share
    /// of the last period the node's CPUs were busy.
    pub fn next(&self, short_now: bool, busy: f64) -> bool {
        if short_now { busy <= self.leave_above } else { busy < self.enter_below }
    }
}

/// The policy for a slice configured in microseconds: none for 0 (off), and an error for a
/// value the kernel would clamp (0.1–100 ms), which is a mistake to report, not to round.
pub fn policy_for_micros(us: u64) -> Result<Option<SlicePolicy>, String> {
    match us {
        0 => Ok(None),
        100..=100_000 => Ok(Some(SlicePolicy::with_short(Duration::from_micros(us)))),
        _ => Err(format!("{us} is outside 100..=100000 (0 turns it off)")),
    }
}

/// The ids of the threads that run the data path, registered as they start.
#[derive(Clone, Debug, Default)]
pub struct DataThreads(Arc<Mutex<Vec<i32>>>);

impl DataThreads {
    /// Registers the calling thread.
    pub fn register_current(&self) {
        match current_tid() {
            Ok(tid) => self.0.lock().unwrap_or_else(|p| p.into_inner()).push(tid),
            Err(e) => tracing::warn!(error = %e, "cannot tell this data thread's id; its slice stays the default"),
        }
    }

    /// Forgets the calling thread (it is stopping).
    pub fn unregister_current(&self) {
        if let Ok(tid) = current_tid() {
            self.forget(tid);
        }
    }

    /// The registered thread ids.
    pub fn ids(&self) -> Vec<i32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn forget(&self, tid: i32) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).retain(|t| *t != tid);
    }
}

/// The calling thread's kernel id, from `/proc/thread-self` (`<pid>/task/<tid>`).
pub fn current_tid() -> io::Result<i32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("/proc/thread-self points at {}", link.display())))
}

/// The kernel's `struct sched_attr` as of its first version (48 bytes), which every kernel
/// with `sched_setattr` accepts.
#[repr(C)]
#[derive(Debug, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

/// Sets thread `tid`'s slice (`None`: the kernel's default), keeping its policy's other
/// settings (nice value, reset-on-fork). Threads under other than the normal or batch policy
/// are left alone.
pub fn set_slice(tid: i32, slice: Option<Duration>) -> io::Result<()> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a valid, writable `sched_attr` of the size passed.
    let r = unsafe {
        libc::syscall(libc::SYS_sched_getattr, tid, &mut attr as *mut SchedAttr, size_of::<SchedAttr>() as u32, 0u32)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.policy != SCHED_OTHER && attr.policy != SCHED_BATCH {
        return Ok(());
    }
    let set = SchedAttr {
        size: size_of::<SchedAttr>() as u32,
        policy: attr.policy,
        flags: attr.flags & SCHED_FLAG_RESET_ON_FORK,
        nice: attr.nice,
        // Zero asks for the default slice again.
        runtime: slice.map_or(0, |s| s.as_nanos().min(u64::MAX as u128) as u64),
        ..SchedAttr::default()
    };
    // SAFETY: `set` is a valid `sched_attr` whose `size` field says how large it is.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &set as *const SchedAttr, 0u32) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Busy and total time of all CPUs so far, from the first line of `/proc/stat`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    /// Reads the node's CPU times.
    pub fn read() -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        Self::parse(stat.lines().next().unwrap_or_default())
            .ok_or_else(|| io::Error::other("/proc/stat: no \"cpu\" line with eight numbers"))
    }

    /// Parses `cpu user nice system idle iowait irq softirq steal ...` (guest time is already
    /// inside user time, so it is not added again).
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_ascii_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let mut v = [0u64; 8];
        for slot in &mut v {
            *slot = fields.next()?.parse().ok()?;
        }
        let total: u64 = v.iter().sum();
        let idle = v[3] + v[4];
        Some(Self { busy: total - idle, total })
    }

    /// The share of the time from `earlier` to `self` the CPUs were busy (0 when no time
    /// passed).
    pub fn busy_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Sets every registered thread's slice, dropping threads that have exited (blocking-pool
/// threads come and go); stops at the first other failure.
fn give_all(threads: &DataThreads, slice: Option<Duration>) -> io::Result<()> {
    for tid in threads.ids() {
        match set_slice(tid, slice) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => threads.forget(tid),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Follows the node's load forever, giving `threads` the short slice while it is low.
pub async fn adapt(policy: SlicePolicy, threads: DataThreads) {
    let mut last = match CpuTimes::read() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the node's CPU load; data threads keep the default slice");
            return;
        }
    };
    let mut short = false;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(now) = CpuTimes::read() else { continue };
        let busy = now.busy_since(&last);
        last = now;
        let want = policy.next(short, busy);
        if want == short {
            continue;
        }
        if let Err(e) = give_all(&threads, want.then_some(policy.short)) {
            tracing::warn!(error = %e, "cannot set the data threads' scheduler slice; leaving the default");
            // Threads set before the failure go back too.
            let _ = give_all(&threads, None);
            SHORT.store(false, Ordering::Relaxed);
            return;
        }
        tracing::debug!(busy = format!("{:.0}%", busy * 100.0), short = want, "data threads' scheduler slice");
        short = want;
        SHORT.store(short, Ordering::Relaxed);
        SWITCHES.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_is_short_only_while_the_node_is_idle_enough_with_hysteresis() {
        let p = SlicePolicy::with_short(Duration::from_micros(100));
        let mut short = false;
        let mut seen = Vec::new();
        for busy in [0.9, 0.2, 0.55, 0.6, 0.7, 0.55, 0.45] {
            short = p.next(short, busy);
            seen.push(short);
        }
        assert_eq!(seen, [false, true, true, true, false, false, true]);
    }

    #[test]
    fn configured_micros_map_to_a_policy_or_to_off_or_to_an_error() {
        assert_eq!(policy_for_micros(0), Ok(None));
        assert_eq!(policy_for_micros(100), Ok(Some(SlicePolicy::with_short(Duration::from_micros(100)))));
        assert_eq!(policy_for_micros(100_000).unwrap().unwrap().short, Duration::from_millis(100));
        for bad in [1, 99, 100_001] {
            assert!(policy_for_micros(bad).unwrap_err().contains(&bad.to_string()));
        }
    }

    #[test]
    fn cpu_times_count_idle_and_iowait_as_idle() {
        let a = CpuTimes::parse("cpu  100 0 50 800 50 0 0 0 0 0").unwrap();
        let b = CpuTimes::parse("cpu  200 10 90 1500 100 0 0 0 7 0").unwrap();
        assert_eq!(a, CpuTimes { busy: 150, total: 1000 });
        assert!((b.busy_since(&a) - 150.0 / 900.0).abs() < 1e-9);
        assert_eq!(a.busy_since(&a), 0.0);
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(CpuTimes::parse("cpu 1 2 3"), None);
        assert_eq!(CpuTimes::parse("cpu 1 2 x 4 5 6 7 8"), None);
        CpuTimes::read().expect("this machine's /proc/stat parses");
    }

    #[test]
    fn this_thread_id_is_a_task_of_this_process() {
        let tid = current_tid().unwrap();
        assert!(std::path::Path::new(&format!("/proc/self/task/{tid}")).exists());
        let other = std::thread::spawn(|| current_tid().unwrap()).join().unwrap();
        assert_ne!(tid, other);
    }

    /// The slice the kernel holds for `tid`, where it shows it (`CONFIG_SCHED_DEBUG`).
    fn kernel_slice_ns(tid: i32) -> Option<u64> {
        let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/sched")).ok()?;
        let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
        line.split(':').nth(1)?.trim().parse().ok()
    }

    #[test]
    fn a_thread_gets_the_short_slice_and_the_default_back_with_its_nice_value_kept() {
        let (tid, default, short, back, nice) = std::thread::spawn(|| {
            let tid = current_tid().unwrap();
            // SAFETY: plain system call on this thread.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 3) }, 0);
            let default = kernel_slice_ns(tid);
            set_slice(tid, Some(Duration::from_micros(200))).unwrap();
            let short = kernel_slice_ns(tid);
            set_slice(tid, None).unwrap();
            let back = kernel_slice_ns(tid);
            // SAFETY: as above.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
            (tid, default, short, back, nice)
        })
        .join()
        .unwrap();
        assert_eq!(nice, 3, "thread {tid} lost its nice value");
        // Kernels without custom slices (before 6.12) or without the debug file accept the
        // call and show nothing to compare.
        if let (Some(default), Some(short), Some(back)) = (default, short, back)
            && default != 200_000
        {
            assert_eq!(short, 200_000);
            assert_eq!(back, default);
        }
    }

    #[tokio::test]
    async fn adapt_gives_the_registered_threads_the_short_slice_when_the_policy_says_so() {
        let threads = DataThreads::default();
        let (registered, tid) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn({
            let threads = threads.clone();
            move || {
                threads.register_current();
                registered.send(current_tid().unwrap()).unwrap();
                let _ = stopped.recv();
            }
        });
        let tid = tid.recv().unwrap();
        let Some(default) = kernel_slice_ns(tid) else { return };
        // Any load is "idle enough" for this policy.
        let always = SlicePolicy { short: Duration::from_micros(300), enter_below: 2.0, leave_above: 2.0 };
        let task = tokio::spawn(adapt(always, threads.clone()));
        let deadline = tokio::time::Instant::now() + 10 * PERIOD;
        while kernel_slice_ns(tid) != Some(300_000) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "slice still {:?} (default {default})",
                kernel_slice_ns(tid)
            );
            tokio::time::sleep(PERIOD / 5).await;
        }
        // The flag follows once every thread has it (the other tests do not run `adapt`).
        while !state().0 {
            assert!(tokio::time::Instant::now() < deadline, "the short slice is not reported");
            tokio::time::sleep(PERIOD / 5).await;
        }
        assert!(state().1 >= 1);
        task.abort();
        stop.send(()).unwrap();
        worker.join().unwrap();
        // The exited thread is dropped from the list at the next change, not an error.
        assert_eq!(set_slice(tid, None).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn giving_the_slice_drops_threads_that_exited_and_sets_the_others() {
        let threads = DataThreads::default();
        let gone = std::thread::spawn({
            let threads = threads.clone();
            move || {
                threads.register_current();
                current_tid().unwrap()
            }
        })
        .join()
        .unwrap();
        let (tid, short, back) = std::thread::spawn(move || {
            threads.register_current();
            let tid = current_tid().unwrap();
            give_all(&threads, Some(Duration::from_micros(300))).unwrap();
            let short = kernel_slice_ns(tid);
            assert_eq!(threads.ids(), [tid], "the exited thread {gone} is still listed");
            give_all(&threads, None).unwrap();
            (tid, short, kernel_slice_ns(tid))
        })
        .join()
        .unwrap();
        if let (Some(short), Some(back)) = (short, back) {
            assert_eq!(short, 300_000, "thread {tid}");
            assert_ne!(back, 300_000, "thread {tid} kept the short slice");
        }
    }

    #[test]
    fn a_thread_that_is_gone_is_reported_as_such() {
        let tid = std::thread::spawn(|| current_tid().unwrap()).join().unwrap();
        let e = set_slice(tid, Some(Duration::from_micros(100))).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH));
    }
}
