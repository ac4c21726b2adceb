//! The two runtimes every proxy binary runs: one for the data path (its workers) and a
//! single admin thread (xDS, CA, admin, metrics) that never competes with it for workers.

use std::future::Future;
use std::thread::JoinHandle;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::oneshot;

use crate::slice::{DataThreads, SlicePolicy};

/// The data-path runtime and the admin thread, stopped together by [`Runtimes::run`].
pub struct Runtimes {
    data: Runtime,
    admin: Handle,
    stop_admin: oneshot::Sender<()>,
    admin_thread: JoinHandle<()>,
    threads: DataThreads,
}

impl Runtimes {
    /// Tunes malloc for the proxy (before any other thread exists, see [`crate::malloc`]),
    /// starts the admin thread, which also hands free memory back and writes buffered access
    /// lines periodically (call it after [`crate::logging::init`], which says whether there
    /// are any), and builds the data runtime with `workers` threads.
    pub fn start(workers: usize) -> std::io::Result<Self> {
        crate::malloc::tune();
        let admin_rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let admin = admin_rt.handle().clone();
        admin.spawn(every(crate::malloc::TRIM_INTERVAL, crate::malloc::trim));
        // Only a process that batches its access lines has any to write out.
        if crate::logging::buffering() {
            admin.spawn(every(crate::logging::FLUSH_INTERVAL, crate::logging::flush));
        }
        let (stop_admin, admin_stopped) = oneshot::channel::<()>();
        let admin_thread = std::thread::Builder::new().name("admin".into()).spawn(move || {
            admin_rt.block_on(async {
                let _ = admin_stopped.await;
            })
        })?;
        let threads = DataThreads::default();
        let data = data_runtime(workers, &threads)?;
        Ok(Self { data, admin, stop_admin, admin_thread, threads })
    }

    /// Gives the data threads short scheduler slices while the node is mostly idle (see
    /// [`crate::slice`]), from the admin thread.
    pub fn adapt_slices(&self, policy: SlicePolicy) {
        self.admin.spawn(crate::slice::adapt(policy, self.threads.clone()));
    }

    /// The admin runtime's handle, for control-plane and admin tasks.
    pub fn admin(&self) -> Handle {
        self.admin.clone()
    }

    /// Runs `main` on the data runtime, then stops the admin thread and waits for it, and
    /// writes out the buffered access lines.
    pub fn run<T>(self, main: impl Future<Output = T>) -> T {
        let result = self.data.block_on(main);
        let _ = self.stop_admin.send(());
        let _ = self.admin_thread.join();
        crate::logging::flush();
        result
    }
}

/// One worker runs on the thread that blocks on the runtime ([`Runtimes::run`]), with the
/// current-thread scheduler: a task woken by its own I/O is polled next on the same thread,
/// without the work-stealing queues and the cross-thread unparking a one-worker multi-threaded
/// runtime still pays for on every wake-up. More workers get the multi-threaded scheduler.
/// Each data thread is registered in `threads` (the calling thread itself for one worker).
pub fn data_runtime(workers: usize, threads: &DataThreads) -> std::io::Result<Runtime> {
    if workers == 1 {
        threads.register_current();
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    // Blocking-pool threads start and stop here too; the stop keeps the list to live threads.
    let (started, stopped) = (threads.clone(), threads.clone());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("data")
        .on_thread_start(move || started.register_current())
        .on_thread_stop(move || stopped.unregister_current())
        .enable_all()
        .build()
}

/// Runs `f` every `period`, forever (a late tick is not made up for by a burst).
async fn every(period: std::time::Duration, f: fn()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        f();
    }
}

/// Waits for SIGTERM or Ctrl-C and logs which, with `then` ("draining", "stopping").
pub async fn terminated(then: &str) -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: {then}"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: {then}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    use super::data_runtime;
    use crate::slice::{DataThreads, current_tid};

    #[test]
    fn one_worker_is_the_current_thread_scheduler_and_more_are_multi_threaded() {
        let threads = DataThreads::default();
        assert_eq!(data_runtime(1, &threads).unwrap().handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(threads.ids(), [current_tid().unwrap()], "the calling thread runs the one worker");
        let threads = DataThreads::default();
        let rt = data_runtime(2, &threads).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        let workers: Vec<i32> =
            (0..2).map(|_| rt.block_on(rt.spawn(async { current_tid().unwrap() })).unwrap()).collect();
        for w in workers {
            assert!(threads.ids().contains(&w), "worker {w} not registered in {:?}", threads.ids());
        }
        let blocking = rt.block_on(async { tokio::task::spawn_blocking(|| current_tid().unwrap()).await }).unwrap();
        assert!(threads.ids().contains(&blocking));
        drop(rt);
        assert_eq!(threads.ids(), [] as [i32; 0], "stopped threads stay registered");
    }
}
