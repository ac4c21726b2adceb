//! Logs: text or JSON, level changeable at run time through the admin port. Access logs are
//! ordinary events on the `access` target, so they follow the same format.
//!
//! A proxy that logs every request (the waypoint) may buffer its access lines
//! ([`AccessWrites::Buffered`]): written one `write` per line they cost a syscall per request on
//! the data thread, and under Kubernetes a wake-up of the container runtime's log reader too.
//! Buffered lines go out every [`FLUSH_INTERVAL`] (from the admin thread), as soon as
//! [`FLUSH_BYTES`] are pending, before any other line (so the log keeps its order), on a panic
//! and when the process stops ([`flush`]).

use std::io::Write;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Changes the log filter of the running process.
#[derive(Clone)]
pub struct LogHandle(reload::Handle<EnvFilter, Registry>);

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogHandle")
    }
}

/// Why a log level change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The filter text does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// What was given.
        filter: String,
        /// Parser error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The subscriber is gone.
    #[error("log filter could not be swapped: {0}")]
    Reload(#[from] reload::Error),
}

impl LogHandle {
    /// Replaces the filter, e.g. `info`, `debug`, `info,ztunnel::proxy=trace`.
    pub fn set(&self, filter: &str) -> Result<(), LogError> {
        let parsed = EnvFilter::try_new(filter).map_err(|source| LogError::Filter { filter: filter.into(), source })?;
        self.0.reload(parsed)?;
        Ok(())
    }

    /// The current filter as text.
    pub fn current(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }
}

/// How access lines reach stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessWrites {
    /// Each line as it is logged (a proxy logging per connection).
    Immediate,
    /// Gathered and written in batches (a proxy logging per request); see the module docs.
    Buffered,
}

/// Longest time a buffered access line waits for its write.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Pending access bytes that are written at once, by the thread logging the line.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat, filter: &str, access: AccessWrites) -> Result<LogHandle, LogError> {
    let parsed = EnvFilter::try_new(filter).map_err(|source| LogError::Filter { filter: filter.into(), source })?;
    let (filter, handle) = reload::Layer::new(parsed);
    let registry = tracing_subscriber::registry().with(filter);
    let sink = stdout_sink();
    sink.buffer_access.store(access == AccessWrites::Buffered, std::sync::atomic::Ordering::Relaxed);
    if access == AccessWrites::Buffered {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            flush();
            previous(info);
        }));
    }
    match format {
        LogFormat::Text => {
            // Colour only for people: log files and collectors get plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            registry.with(tracing_subscriber::fmt::layer().with_target(true).with_ansi(ansi).with_writer(sink)).init()
        }
        LogFormat::Json => {
            registry.with(tracing_subscriber::fmt::layer().json().flatten_event(true).with_writer(sink)).init()
        }
    }
    Ok(LogHandle(handle))
}

/// Writes out the buffered access lines now.
pub fn flush() {
    if let Some(s) = STDOUT_SINK.get() {
        s.flush_pending(&[]);
    }
}

/// Whether this process buffers its access lines (then [`flush`] must run every
/// [`FLUSH_INTERVAL`]; [`crate::runtimes::Runtimes::start`] sees to it).
pub fn buffering() -> bool {
    STDOUT_SINK.get().is_some_and(|s| s.buffer_access.load(std::sync::atomic::Ordering::Relaxed))
}

static STDOUT_SINK: OnceLock<Sink<std::io::Stdout>> = OnceLock::new();

fn stdout_sink() -> &'static Sink<std::io::Stdout> {
    STDOUT_SINK.get_or_init(|| Sink::new(std::io::stdout()))
}

/// Where the formatter's lines go: access lines into `pending` when buffering, everything else
/// (and access lines when not) straight to `out`, after whatever is pending.
struct Sink<W> {
    buffer_access: std::sync::atomic::AtomicBool,
    pending: Mutex<Vec<u8>>,
    /// The output, with a spare buffer that `pending` is swapped into for writing. Held while
    /// writing, so batches and direct lines reach `out` in the order they were logged.
    out: Mutex<(W, Vec<u8>)>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while logging leaves bytes, not broken invariants: keep logging.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<W: Write> Sink<W> {
    fn new(out: W) -> Self {
        Sink {
            buffer_access: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            out: Mutex::new((out, Vec::new())),
        }
    }

    /// Queues an access line; writes the batch once it reaches [`FLUSH_BYTES`].
    fn buffer(&self, line: &[u8]) {
        let full = {
            let mut p = locked(&self.pending);
            p.extend_from_slice(line);
            p.len() >= FLUSH_BYTES
        };
        if full {
            self.flush_pending(&[]);
        }
    }

    /// Writes what is pending, then `line`. A failed write drops those bytes: stdout that
    /// cannot be written to must not stop the proxy.
    fn flush_pending(&self, line: &[u8]) {
        let mut guard = locked(&self.out);
        let (out, spare) = &mut *guard;
        std::mem::swap(&mut *locked(&self.pending), spare);
        if !spare.is_empty() {
            let _ = out.write_all(spare);
            spare.clear();
        }
        if !line.is_empty() {
            let _ = out.write_all(line);
        }
        let _ = out.flush();
    }
}

/// One formatted line on its way to a `Sink`.
pub struct SinkWriter<'a, W> {
    sink: &'a Sink<W>,
    buffered: bool,
}

impl<W: Write> Write for SinkWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buffered {
            self.sink.buffer(buf);
        } else {
            self.sink.flush_pending(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for &'static Sink<W> {
    type Writer = SinkWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        SinkWriter { sink: self, buffered: false }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        let buffered = meta.target() == "access" && self.buffer_access.load(std::sync::atomic::Ordering::Relaxed);
        SinkWriter { sink: self, buffered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read while the sink holds it.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            locked(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(locked(&self.0).clone()).unwrap()
        }
    }

    fn sink(buffered: bool) -> (&'static Sink<Shared>, Shared) {
        let out = Shared::default();
        let s: &'static Sink<Shared> = Box::leak(Box::new(Sink::new(out.clone())));
        s.buffer_access.store(buffered, std::sync::atomic::Ordering::Relaxed);
        (s, out)
    }

    /// Runs `f` with a formatter writing to `s`, as [`init`] sets it up.
    fn logging_to(s: &'static Sink<Shared>, f: impl FnOnce()) {
        let subscriber = tracing_subscriber::fmt().with_ansi(false).without_time().with_writer(s).finish();
        tracing::subscriber::with_default(subscriber, f);
    }

    fn messages(out: &Shared) -> Vec<String> {
        out.text().lines().map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned()).collect()
    }

    #[test]
    fn buffered_access_lines_wait_for_a_flush_and_keep_their_order() {
        let (s, out) = sink(true);
        logging_to(s, || {
            tracing::info!(target: "access", "a1");
            tracing::info!(target: "access", "a2");
            assert!(messages(&out).is_empty(), "access lines are held");
            // Any other line goes out after what was logged before it.
            tracing::warn!("warned");
            assert_eq!(messages(&out), ["a1", "a2", "warned"]);
            tracing::info!(target: "access", "a3");
            assert_eq!(messages(&out).len(), 3);
        });
        s.flush_pending(&[]);
        assert_eq!(messages(&out), ["a1", "a2", "warned", "a3"]);
    }

    #[test]
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let (s, out) = sink(true);
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..FLUSH_BYTES / line.len() - 1 {
            s.buffer(line.as_bytes());
        }
        assert_eq!(out.text(), "");
        s.buffer(line.as_bytes());
        assert_eq!(out.text().len(), FLUSH_BYTES, "the batch is written when it reaches the limit");
        s.buffer(b"next\n");
        assert_eq!(out.text().len(), FLUSH_BYTES, "and the buffer starts again");
    }

    #[test]
    fn unbuffered_access_lines_are_written_at_once() {
        let (s, out) = sink(false);
        logging_to(s, || tracing::info!(target: "access", "a1"));
        assert_eq!(messages(&out), ["a1"]);
    }
}
