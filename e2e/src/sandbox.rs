//! The sandbox: a test re-runs itself in a child process with private network, mount and pid
//! namespaces and a private `/run`, so whatever it builds vanishes with that child.
//!
//! The parent (the normal test thread) runs
//! `setpriv --pdeathsig KILL -- unshare --net --mount --pid --fork --kill-child --mount-proc
//! --propagation private -- <test binary> <test> --exact --include-ignored --nocapture --test-threads=1`.
//! The child, pid 1 of its pid namespace, mounts a tmpfs on `/run` (so `/run/netns`, IPAM state
//! and logs are private), brings its loopback up and runs the test body. `/tmp` stays the
//! host's (the build may live there); `TMPDIR` points into the private `/run` instead, so only
//! a program that writes to `/tmp` by name leaves files on the host. The kill chain:
//! the test thread dies → `setpriv`'s death signal kills `unshare` → `--kill-child` kills pid 1
//! → the kernel kills every process in the pid namespace → the private mount namespace and
//! every named network namespace in it (and so every veth and bridge) are freed.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};

use crate::Error;
use crate::netns::{NETNS_DIR, ip};
use crate::process::Supervised;

/// Set in the child's environment: the test it must run (and that it is the sandbox).
const ENV_TEST: &str = "E2E_SANDBOX_TEST";
/// Temporary files inside a sandbox (TMPDIR points here), gone with it.
pub const SANDBOX_TMP: &str = "/run/tmp";
/// The parent's network and mount namespace inodes, so the child can prove it is elsewhere.
const ENV_HOST_NET: &str = "E2E_HOST_NETNS";
const ENV_HOST_MNT: &str = "E2E_HOST_MNTNS";

/// How long a sandboxed test may run by default before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

static SANDBOXED: AtomicBool = AtomicBool::new(false);

/// Whether this process is a prepared sandbox (topologies may only be built here).
pub fn is_sandboxed() -> bool {
    SANDBOXED.load(Ordering::Acquire)
}

/// The running test's full name (libtest names each test's thread after it).
pub fn current_test_name() -> Option<String> {
    std::thread::current().name().filter(|n| *n != "main").map(str::to_owned)
}

/// Runs `body` inside a fresh sandbox, failing the test if it fails, panics or overruns
/// [`DEFAULT_TIMEOUT`]. Call it as the whole body of a `#[test]`:
///
/// ```no_run
/// #[test]
/// fn pods_talk() {
///     e2e::sandboxed(|| {
///         let topo = e2e::Topology::builder().nodes(2).build()?;
///         // ...
///         topo.teardown()
///     });
/// }
/// ```
pub fn sandboxed<F, E>(body: F)
where
    F: FnOnce() -> Result<(), E>,
    E: std::fmt::Debug,
{
    sandboxed_with(DEFAULT_TIMEOUT, body)
}

/// [`sandboxed`] with a different time limit.
pub fn sandboxed_with<F, E>(timeout: Duration, body: F)
where
    F: FnOnce() -> Result<(), E>,
    E: std::fmt::Debug,
{
    let Some(test) = current_test_name() else {
        panic!("e2e::sandboxed must be called from a #[test] thread (libtest names it after the test)");
    };
    match std::env::var(ENV_TEST) {
        Ok(target) if target == test => {
            if let Err(e) = enter(&test) {
                panic!("{e}");
            }
            if let Err(e) = body() {
                panic!("{test} failed inside its sandbox: {e:?}");
            }
        }
        Ok(target) => panic!("sandbox for {target:?} is running {test:?}; nested sandboxes are not supported"),
        Err(_) => {
            let outcome = SandboxRun::new(&test).timeout(timeout).run().unwrap_or_else(|e| panic!("{e}"));
            print!("{}", outcome.output);
            assert!(outcome.passed(), "sandboxed test {test} failed ({}); its output is above", outcome.describe());
        }
    }
}

/// Runs one test of the current test binary in a fresh sandbox and reports how it ended
/// (for tests about the sandbox itself, e.g. that a crashing test leaves nothing behind).
#[derive(Debug, Clone)]
pub struct SandboxRun {
    test: String,
    timeout: Duration,
    env: Vec<(String, String)>,
}

/// How a sandboxed child ended.
#[derive(Debug, Clone)]
pub struct SandboxOutcome {
    /// Exit status, `None` if it was killed (at its time limit or by [`RunningSandbox::kill`]).
    pub status: Option<ExitStatus>,
    /// Its stdout then stderr.
    pub output: String,
}

impl SandboxOutcome {
    /// Whether the child ran exactly the one test and it passed.
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && self.output.contains("test result: ok. 1 passed")
    }

    fn describe(&self) -> String {
        match self.status {
            Some(s) if s.success() => "the test did not run: is the name exact?".into(),
            Some(s) => s.to_string(),
            None => "timed out and was killed".into(),
        }
    }
}

impl SandboxRun {
    /// Runs the test named `test` (full libtest name; `#[ignore]`d tests run too).
    pub fn new(test: &str) -> SandboxRun {
        SandboxRun { test: test.to_owned(), timeout: DEFAULT_TIMEOUT, env: Vec::new() }
    }

    /// Kills the whole sandbox after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds an environment variable for the child.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts the child and waits for it (or kills it at the time limit).
    pub fn run(self) -> Result<SandboxOutcome, Error> {
        self.spawn()?.wait()
    }

    /// Starts the child and returns at once; [`RunningSandbox::wait`] collects it.
    ///
    /// The sandbox's death signal is tied to the calling *thread* (`PR_SET_PDEATHSIG` fires
    /// when the thread that started it ends), so the sandbox is killed when this thread ends,
    /// even if the [`RunningSandbox`] was moved to another: keep it on the test's own thread.
    pub fn spawn(self) -> Result<RunningSandbox, Error> {
        let fail = |reason: String| Error::Sandbox { test: self.test.clone(), reason };
        let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find the test binary: {e}")))?;
        let net = ns_inode("net").map_err(|e| fail(format!("cannot read own network namespace: {e}")))?;
        let mnt = ns_inode("mnt").map_err(|e| fail(format!("cannot read own mount namespace: {e}")))?;
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--", "unshare", "--net", "--mount", "--pid", "--fork"])
            .args(["--kill-child", "--mount-proc", "--propagation", "private", "--"])
            .arg(exe)
            .args([&self.test, "--exact", "--include-ignored", "--nocapture", "--test-threads=1"])
            .env(ENV_TEST, &self.test)
            .env("TMPDIR", SANDBOX_TMP)
            .env(ENV_HOST_NET, net.to_string())
            .env(ENV_HOST_MNT, mnt.to_string());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = Supervised::start(cmd, None)?;
        Ok(RunningSandbox { child, deadline: Instant::now() + self.timeout })
    }
}

/// Runs the current program in a sandbox, for programs rather than tests (the playground).
///
/// Called first thing in `main`: outside a sandbox it starts this same program, with the same
/// arguments, inside a fresh one (stdio passed through) and returns `Ok(Some(status))` once it
/// ends, for `main` to exit with; inside, it prepares the sandbox and returns `Ok(None)` for
/// `main` to go on. Everything the program creates lives and dies with the sandbox.
pub fn run_program_sandboxed(name: &str) -> Result<Option<ExitStatus>, Error> {
    if std::env::var(ENV_TEST).as_deref() == Ok(name) {
        enter(name)?;
        return Ok(None);
    }
    let fail = |reason: String| Error::Sandbox { test: name.to_owned(), reason };
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find this program: {e}")))?;
    let net = ns_inode("net").map_err(|e| fail(format!("cannot read own network namespace: {e}")))?;
    let mnt = ns_inode("mnt").map_err(|e| fail(format!("cannot read own mount namespace: {e}")))?;
    let status = Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "unshare", "--net", "--mount", "--pid", "--fork"])
        .args(["--kill-child", "--mount-proc", "--propagation", "private", "--"])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(ENV_TEST, name)
        .env("TMPDIR", SANDBOX_TMP)
        .env(ENV_HOST_NET, net.to_string())
        .env(ENV_HOST_MNT, mnt.to_string())
        .status()
        .map_err(|e| fail(format!("cannot start the sandbox (setpriv, unshare): {e}")))?;
    Ok(Some(status))
}

/// A sandboxed child that is running; killed (with everything in it) if dropped.
pub struct RunningSandbox {
    child: Supervised,
    deadline: Instant,
}

impl RunningSandbox {
    /// Pid of the outermost process of the sandbox (`setpriv`/`unshare`), as seen from here.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Kills the sandbox now: `unshare` dies, its death signal kills the sandbox's pid 1, and
    /// the kernel kills the rest of the pid namespace.
    pub fn kill(mut self) -> SandboxOutcome {
        self.child.kill();
        self.finish(None)
    }

    /// Waits for the child to finish, killing it at its time limit.
    pub fn wait(mut self) -> Result<SandboxOutcome, Error> {
        let status = self.child.wait_until(self.deadline)?;
        if status.is_none() {
            self.child.kill();
        }
        Ok(self.finish(status))
    }

    fn finish(self, status: Option<ExitStatus>) -> SandboxOutcome {
        let (_, stdout, stderr) = self.child.finish();
        SandboxOutcome { status, output: stdout + &stderr }
    }
}

/// Prepares the child: proves it is isolated, then makes `/run` private.
fn enter(test: &str) -> Result<(), Error> {
    let fail = |reason: String| Error::Sandbox { test: test.to_owned(), reason };
    for (kind, var) in [("net", ENV_HOST_NET), ("mnt", ENV_HOST_MNT)] {
        let host: u64 =
            std::env::var(var).ok().and_then(|v| v.parse().ok()).ok_or_else(|| fail(format!("{var} not set")))?;
        let own = ns_inode(kind).map_err(|e| fail(format!("cannot read own {kind} namespace: {e}")))?;
        if own == host {
            return Err(fail(format!("still in the host's {kind} namespace; refusing to run")));
        }
    }
    if std::process::id() != 1 {
        return Err(fail("not pid 1 of a private pid namespace; refusing to run".into()));
    }
    // /run holds the namespace handles and harness state. /tmp stays the host's: the build
    // (and so the binaries under test) may live there; temporary files go to SANDBOX_TMP,
    // inside the private /run, through TMPDIR set by the parent.
    mount(Some("tmpfs"), "/run", Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"))
        .map_err(|e| fail(format!("cannot mount a private /run: {e}")))?;
    std::fs::create_dir_all(SANDBOX_TMP).map_err(|e| fail(format!("cannot create {SANDBOX_TMP}: {e}")))?;
    ip(&["link", "set", "lo", "up"])?;
    SANDBOXED.store(true, Ordering::Release);
    Ok(())
}

/// Inside the sandbox only: every process of the sandbox reads `contents` at `path` (an
/// `/etc` file such as `resolv.conf`, which `ip netns exec` leaves shared), by a bind mount in
/// the sandbox's private mount namespace; the host's file is not touched, and the mount goes
/// with the sandbox. A `path` that is a symbolic link into the private `/run` (systemd-resolved's
/// `resolv.conf`) has no target here: the target is written instead.
pub fn replace_file(path: &Path, contents: &str) -> Result<(), Error> {
    if !is_sandboxed() {
        return Err(Error::NotSandboxed);
    }
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
        move |source| Error::Io { action, path: path.to_owned(), source }
    }
    let target = match std::fs::canonicalize(path) {
        Ok(t) => t,
        Err(_) => {
            let link = std::fs::read_link(path).map_err(io("resolve", path))?;
            let link = if link.is_absolute() { link } else { path.parent().unwrap_or(Path::new("/")).join(link) };
            if !link.starts_with("/run") {
                return Err(Error::Io {
                    action: "replace (a dangling link outside the private /run)",
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            if let Some(dir) = link.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            return std::fs::write(&link, contents).map_err(io("write", &link));
        }
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let source = Path::new(SANDBOX_TMP).join(format!("replaced-{name}"));
    std::fs::write(&source, contents).map_err(io("write", &source))?;
    mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(|e| Error::Io {
        action: "bind-mount over",
        path: target.clone(),
        source: e.into(),
    })
}

fn ns_inode(kind: &str) -> std::io::Result<u64> {
    std::fs::metadata(format!("/proc/self/ns/{kind}")).map(|m| m.ino())
}

/// What exists in the sandbox besides the test process itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Named network namespaces.
    pub netns: Vec<String>,
    /// Interfaces in the sandbox's own namespace other than `lo`.
    pub links: Vec<String>,
    /// Other processes (pid and command line), zombies included.
    pub processes: Vec<String>,
}

impl Inventory {
    /// Nothing left.
    pub fn is_clean(&self) -> bool {
        self.netns.is_empty() && self.links.is_empty() && self.processes.is_empty()
    }
}

/// Lists what is left in the sandbox: after every topology is dropped it should be clean.
pub fn inventory() -> Result<Inventory, Error> {
    if !is_sandboxed() {
        return Err(Error::NotSandboxed);
    }
    let mut inv = Inventory::default();
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        inv.netns = entries.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect();
    }
    let links = ip(&["-o", "link", "show"])?;
    inv.links = links
        .stdout
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or_default().to_owned())
        .filter(|n| n != "lo")
        .collect();
    let me = std::process::id().to_string();
    let entries =
        std::fs::read_dir("/proc").map_err(|source| Error::Io { action: "read", path: "/proc".into(), source })?;
    for e in entries.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        inv.processes.push(format!("{pid} {}", describe_process(&e.path())));
    }
    inv.netns.sort();
    inv.processes.sort();
    Ok(inv)
}

fn describe_process(dir: &Path) -> String {
    let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
    if cmdline.is_empty() {
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        return format!("[{}]", stat.split(' ').take(3).collect::<Vec<_>>().join(" "));
    }
    String::from_utf8_lossy(&cmdline).replace('\0', " ").trim().to_owned()
}
