//! Programs run by the harness: one-shot commands bounded in time, and background processes
//! held by guards that kill them on drop (and that the topology kills at teardown).
//!
//! Every program runs in a process group of its own. When it ends, is stopped or killed, or
//! runs out of time, whatever it started and left behind in its group is killed too (a shell's
//! background jobs would otherwise keep a pod's namespace, and a one-shot's output pipe, open),
//! and reaped if it was orphaned to this process (the sandbox's pid 1 inherits orphans).
//! The program itself is reaped only after that, so its pid, which names the group, cannot be
//! reused by an unrelated process in between.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;

use crate::Error;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the killed members of a program's process group get to die and be reaped.
const GROUP_GRACE: Duration = Duration::from_secs(2);

/// What a finished one-shot command printed, and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// Command line, for messages.
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` if the command succeeded, else [`Error::CommandFailed`] with its output.
    pub fn ok(self) -> Result<Self, Error> {
        if self.success() {
            Ok(self)
        } else {
            Err(Error::CommandFailed {
                command: self.command,
                status: self.status,
                stdout: self.stdout,
                stderr: self.stderr,
            })
        }
    }
}

/// Renders a command line for messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, feeding it `stdin`, killing it after `timeout`.
pub(crate) fn run_bounded(cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Result<Output, Error> {
    let mut child = Supervised::start(cmd, stdin)?;
    let status = child.wait_until(Instant::now() + timeout)?;
    if status.is_none() {
        child.kill();
    }
    let (command, stdout, stderr) = child.finish();
    match status {
        Some(status) => Ok(Output { command, status, stdout, stderr }),
        None => Err(Error::Timeout { command, after: timeout, stdout, stderr }),
    }
}

/// A child whose stdout and stderr are being collected, waited for with a deadline or killed.
pub(crate) struct Supervised {
    command: String,
    child: Child,
    /// Set once the child is reaped (after its process group was emptied).
    status: Option<ExitStatus>,
    writer: Option<thread::JoinHandle<()>>,
    out: Option<thread::JoinHandle<Vec<u8>>>,
    err: Option<thread::JoinHandle<Vec<u8>>>,
}

impl Supervised {
    /// Starts `cmd` with piped output, writing `stdin` to it from a thread.
    pub(crate) fn start(mut cmd: Command, stdin: Option<&[u8]>) -> Result<Supervised, Error> {
        let command = display(&cmd);
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn { command: command.clone(), source })?;
        let input = stdin.map(<[u8]>::to_vec);
        let writer = child.stdin.take().map(|mut pipe| {
            thread::spawn(move || {
                // A plugin may exit without reading its input; the broken pipe is then not our error.
                let _ = pipe.write_all(input.as_deref().unwrap_or_default());
            })
        });
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        Ok(Supervised { command, child, status: None, writer, out, err })
    }

    /// Process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit, up to `deadline`; `None` if it is still running then.
    /// Once it exited, what it left in its process group is killed and it is reaped.
    pub(crate) fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, Error> {
        let mut pause = Duration::from_millis(1);
        loop {
            if self.status.is_some() {
                return Ok(self.status);
            }
            match has_exited(self.child.id()) {
                Ok(true) => {
                    self.status = Some(
                        reap(&mut self.child)
                            .map_err(|source| Error::Spawn { command: self.command.clone(), source })?,
                    );
                }
                Ok(false) if Instant::now() >= deadline => return Ok(None),
                Ok(false) => {
                    thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(source) => return Err(Error::Spawn { command: self.command.clone(), source }),
            }
        }
    }

    /// SIGKILLs the child and its process group and reaps it.
    pub(crate) fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = reap(&mut self.child).ok();
        }
    }

    /// Collects the command line and output; call after the child has exited or been killed.
    pub(crate) fn finish(mut self) -> (String, String, String) {
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        let stdout = self.out.take().map(join_text).unwrap_or_default();
        let stderr = self.err.take().map(join_text).unwrap_or_default();
        (std::mem::take(&mut self.command), stdout, stderr)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether child `pid` has exited. It is left unreaped, so its pid, and with it the process
/// group it names, stays ours until [`reap`].
fn has_exited(pid: u32) -> std::io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
        Ok(WaitStatus::StillAlive) => Ok(false),
        Ok(_) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

/// Kills what is left in `child`'s process group, then reaps `child` (which must not have been
/// reaped yet: its pid names the group). Call once `child` has exited or been killed.
fn reap(child: &mut Child) -> std::io::Result<ExitStatus> {
    kill_group(child.id());
    child.wait()
}

/// SIGKILLs every process in group `pgid` (led by a child of ours, not yet reaped) and reaps
/// the members orphaned to this process, until only the leader is left or [`GROUP_GRACE`]
/// has passed. Members are never this process's own children: those each lead a group.
fn kill_group(pgid: u32) {
    let me = std::process::id();
    let deadline = Instant::now() + GROUP_GRACE;
    loop {
        if kill(Pid::from_raw(-(pgid as i32)), Signal::SIGKILL).is_err() {
            return;
        }
        let others: Vec<(u32, u32)> = group_members(pgid).into_iter().filter(|(pid, _)| *pid != pgid).collect();
        if others.is_empty() || Instant::now() >= deadline {
            return;
        }
        for (pid, ppid) in others {
            if ppid == me {
                let _ = waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG));
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Pid and parent pid of every process in group `pgid`, zombies included.
fn group_members(pgid: u32) -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
            let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().skip(1);
            let ppid = fields.next()?.parse().ok()?;
            let pgrp: u32 = fields.next()?.parse().ok()?;
            (pgrp == pgid).then_some((pid, ppid))
        })
        .collect()
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join_text(h: thread::JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
}

/// Something the topology stops at teardown if its guard is still alive.
pub(crate) trait Stop: Send + Sync {
    /// Stops it now; must be idempotent.
    fn stop_now(&self);
}

/// Weak references to everything running in a topology, so teardown can stop what tests still
/// hold (a namespace stays alive while a process or socket is in it).
#[derive(Default)]
pub(crate) struct Reaper {
    live: Mutex<Vec<Weak<dyn Stop>>>,
}

impl Reaper {
    pub(crate) fn track(&self, item: Weak<dyn Stop>) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|w| w.strong_count() > 0);
        live.push(item);
    }

    pub(crate) fn stop_all(&self) {
        let items: Vec<_> = self.live.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for item in items.iter().rev().filter_map(Weak::upgrade) {
            item.stop_now();
        }
    }
}

/// A background program inside a namespace; killed (and reaped) when dropped.
pub struct Process {
    inner: Arc<ProcInner>,
}

struct ProcInner {
    command: String,
    pid: u32,
    log: PathBuf,
    child: Mutex<Option<Child>>,
    status: Mutex<Option<ExitStatus>>,
}

/// How a stopped background process ended.
#[derive(Debug, Clone)]
pub struct Exited {
    /// Exit status (a signal if it had to be killed).
    pub status: Option<ExitStatus>,
    /// Everything it wrote to stdout and stderr.
    pub log: String,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub(crate) fn spawn(mut cmd: Command, log: PathBuf, reaper: &Reaper) -> Result<Process, Error> {
        let command = display(&cmd);
        let file = File::create(&log).map_err(|source| Error::Io { action: "create", path: log.clone(), source })?;
        let file2 = file.try_clone().map_err(|source| Error::Io { action: "open", path: log.clone(), source })?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(file2).process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn { command: command.clone(), source })?;
        let inner = Arc::new(ProcInner {
            command,
            pid: child.id(),
            log,
            child: Mutex::new(Some(child)),
            status: Mutex::new(None),
        });
        let weak: Weak<dyn Stop> = Arc::<ProcInner>::downgrade(&inner);
        reaper.track(weak);
        Ok(Process { inner })
    }

    /// Process id (in the sandbox's pid namespace).
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Command line it was started with.
    pub fn command(&self) -> &str {
        &self.inner.command
    }

    /// File holding its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// Its stdout and stderr so far.
    pub fn log(&self) -> String {
        read_lossy(&self.inner.log)
    }

    /// Whether it is still running. Once it has exited, what it left in its process group is
    /// killed.
    pub fn is_running(&self) -> bool {
        let mut child = self.inner.child.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = child.as_mut() else { return false };
        if let Ok(false) = has_exited(self.inner.pid) {
            return true;
        }
        *self.inner.status.lock().unwrap_or_else(|e| e.into_inner()) = reap(c).ok();
        *child = None;
        false
    }

    /// Waits until its output contains `needle` (a readiness line), failing early if it exits.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(Error::NotReady {
                    what: format!("`{}` exited before printing {needle:?}; log: {}", self.inner.command, self.log()),
                    after: timeout,
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    what: format!("{needle:?} from `{}` (log: {})", self.inner.command, self.log()),
                    after: timeout,
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM, waits a short grace period, then SIGKILL; returns how it ended.
    pub fn stop(self) -> Exited {
        self.inner.terminate(Signal::SIGTERM);
        let status = *self.inner.status.lock().unwrap_or_else(|e| e.into_inner());
        Exited { status, log: self.log() }
    }
}

impl ProcInner {
    /// Sends `first` to the program and, unless it is SIGKILL, gives it [`STOP_GRACE`] to exit;
    /// then SIGKILLs it and everything left in its process group, and reaps it.
    fn terminate(&self, first: Signal) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let running = || matches!(has_exited(self.pid), Ok(false));
        if running() {
            let _ = kill(Pid::from_raw(self.pid as i32), first);
            if first != Signal::SIGKILL {
                let deadline = Instant::now() + STOP_GRACE;
                while running() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        let _ = child.kill();
        let status = reap(&mut child).ok();
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
}

impl Stop for ProcInner {
    fn stop_now(&self) {
        self.terminate(Signal::SIGKILL);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.inner.terminate(Signal::SIGKILL);
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.inner.pid).field("command", &self.inner.command).finish()
    }
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests;
