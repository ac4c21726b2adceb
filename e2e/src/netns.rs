//! Named network namespaces (`/run/netns/<name>`, inside the sandbox's private `/run`) and
//! running code in them: programs through `ip netns exec` (exactly what an operator would type),
//! Rust closures on a short-lived thread that has entered the namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use crate::Error;
use crate::process::{self, Output, Process, Reaper};

/// Where `ip netns` keeps named namespaces (bind mounts); private to the sandbox.
pub const NETNS_DIR: &str = "/run/netns";

/// Environment variable set on every process the harness starts: the topology id. It lets a
/// checker find strays by scanning `/proc/*/environ`.
pub const TOPOLOGY_ENV: &str = "E2E_TOPOLOGY";

/// Bound for the harness's own `ip` invocations.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// What every namespace of one topology shares: its id, its files and its live processes.
pub(crate) struct Context {
    pub(crate) id: String,
    pub(crate) state_dir: PathBuf,
    pub(crate) reaper: Reaper,
    seq: AtomicU64,
}

impl Context {
    pub(crate) fn new(id: String, state_dir: PathBuf) -> Context {
        Context { id, state_dir, reaper: Reaper::default(), seq: AtomicU64::new(0) }
    }

    /// A fresh file name under the topology's log directory.
    pub(crate) fn log_path(&self, netns: &str, program: &OsStr) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let prog = PathBuf::from(program);
        let prog = prog.file_name().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        self.state_dir.join("logs").join(format!("{n:03}-{netns}-{prog}.log"))
    }
}

/// Runs `ip <args>` in the sandbox's own namespace (used to create and delete namespaces).
pub(crate) fn ip(args: &[&str]) -> Result<Output, Error> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    process::run_bounded(cmd, None, IP_TIMEOUT)?.ok()
}

/// A named network namespace of a topology. Cheap to clone; the topology deletes it.
#[derive(Clone)]
pub struct Netns {
    name: String,
    ctx: Arc<Context>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.name).finish()
    }
}

impl Netns {
    /// Creates the namespace with loopback up and IPv6 off (IPv6 router solicitations and DAD
    /// would otherwise add noise to every capture).
    pub(crate) fn create(name: String, ctx: Arc<Context>) -> Result<Netns, Error> {
        ip(&["netns", "add", &name])?;
        let ns = Netns { name, ctx };
        let quiet = ns
            .set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
            .and_then(|()| ns.set_sysctl("net.ipv6.conf.default.disable_ipv6", "1"));
        match quiet {
            Ok(()) => Ok(ns),
            Err(e) => {
                let _ = ns.delete();
                Err(e)
            }
        }
    }

    /// Removes the name; the kernel frees the namespace when nothing else holds it.
    pub(crate) fn delete(&self) -> Result<(), Error> {
        ip(&["netns", "del", &self.name]).map(drop)
    }

    /// Namespace name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the namespace handle, as given to CNI plugins in `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Id of the topology this namespace belongs to.
    pub fn topology_id(&self) -> &str {
        &self.ctx.id
    }

    /// A command that runs `argv` inside this namespace (`ip netns exec`), with
    /// [`TOPOLOGY_ENV`] set. Configure and run it yourself, or use [`exec`](Self::exec) /
    /// [`spawn`](Self::spawn).
    pub fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv).env(TOPOLOGY_ENV, &self.ctx.id);
        cmd
    }

    /// Runs `argv` inside this namespace and waits for it, killing it after `timeout`.
    /// A non-zero exit is not an error here: inspect [`Output::success`] or call [`Output::ok`].
    pub fn exec<I, S>(&self, argv: I, timeout: Duration) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::run_bounded(self.command(argv), None, timeout)
    }

    /// Like [`exec`](Self::exec), feeding `stdin` to the program.
    pub fn exec_with_stdin<I, S>(&self, argv: I, stdin: &[u8], timeout: Duration) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        process::run_bounded(self.command(argv), Some(stdin), timeout)
    }

    /// Starts `argv` in the background inside this namespace. Its output goes to a log file
    /// ([`Process::log`]); it is killed when the guard drops or the topology is torn down.
    pub fn spawn<I, S>(&self, argv: I) -> Result<Process, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<S> = argv.into_iter().collect();
        let program = argv.first().map(|a| a.as_ref().to_owned()).unwrap_or_default();
        Process::spawn(self.command(argv), self.ctx.log_path(&self.name, &program), &self.ctx.reaper)
    }

    /// Starts a prepared command (from [`command`](Self::command)) in the background, as
    /// [`spawn`](Self::spawn) does.
    pub fn spawn_command(&self, cmd: Command) -> Result<Process, Error> {
        let log = self.ctx.log_path(&self.name, cmd.get_args().nth(3).unwrap_or(cmd.get_program()));
        Process::spawn(cmd, log, &self.ctx.reaper)
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result. Sockets
    /// created inside `f` stay in this namespace wherever they are used afterwards, so the usual
    /// pattern is: bind or connect here, then serve from ordinary threads or a runtime.
    pub fn run_in<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let handle =
            File::open(self.path()).map_err(|source| Error::Io { action: "open", path: self.path(), source })?;
        thread::scope(|s| {
            s.spawn(|| {
                setns(&handle, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| Error::Setns { netns: self.name.clone(), source })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a named thread that enters this namespace and runs `f` there. Threads it spawns
    /// (a tokio runtime's workers, say) start in this namespace too, so a whole in-process
    /// component can live in a node's or pod's network. The thread keeps the namespace alive
    /// until it returns: end it before the topology is torn down.
    pub fn spawn_thread<T, F>(&self, name: &str, f: F) -> Result<thread::JoinHandle<Result<T, Error>>, Error>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let handle =
            File::open(self.path()).map_err(|source| Error::Io { action: "open", path: self.path(), source })?;
        let netns = self.name.clone();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|source| Error::Setns { netns, source })?;
                drop(handle);
                Ok(f())
            })
            .map_err(|source| Error::Spawn { command: format!("thread {name} in {}", self.name), source })
    }

    /// Sets a network sysctl (`net.ipv4.ip_forward`, ...) in this namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run_in(|| std::fs::write(&path, value))?.map_err(|source| Error::Io { action: "write", path, source })
    }

    /// Binds a TCP listener inside this namespace (port 0 picks a free port; read it back with
    /// `local_addr`).
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        self.run_in(|| TcpListener::bind(addr))?.map_err(|source| Error::Socket {
            action: format!("bind {addr}"),
            netns: self.name.clone(),
            source,
        })
    }

    /// Opens a TCP connection from inside this namespace.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
        self.run_in(|| TcpStream::connect_timeout(&addr, timeout))?.map_err(|source| Error::Socket {
            action: format!("connect to {addr}"),
            netns: self.name.clone(),
            source,
        })
    }

    /// Waits until a TCP connection to `addr` from inside this namespace succeeds.
    pub fn wait_for_tcp(&self, addr: SocketAddr, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        self.run_in(|| {
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                thread::sleep(Duration::from_millis(10));
            }
            false
        })?
        .then_some(())
        .ok_or_else(|| Error::NotReady { what: format!("TCP {addr} from {}", self.name), after: timeout })
    }

    /// Runs `ip <args>` against this namespace (`ip -n <name> ...`); fails on non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<Output, Error> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    pub(crate) fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}
