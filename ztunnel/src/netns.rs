//! Network namespaces: an owned handle, and running code inside one.
//!
//! A pod's sockets must be created *in* its network namespace. `setns(2)`
//! changes the namespace of the calling thread only, so [`Netns::run`] does it
//! on a dedicated short-lived OS thread and never on a runtime worker: a worker
//! that switched namespaces would silently create every later socket in the
//! pod. Sockets keep the namespace they were created in, so a std socket made
//! in `run` can be handed to tokio afterwards on any thread.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix::sched::{CloneFlags, setns};

/// An open network namespace. Holding it keeps the namespace alive even after
/// the pod's processes and any bind mount are gone.
pub struct Netns {
    fd: OwnedFd,
    id: NetnsId,
}

/// Identity of a network namespace: equal ids mean the same namespace. Stored by the node
/// agent in its pod records, to tell whether a recorded path still opens the same namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct NetnsId {
    /// Device of the nsfs filesystem.
    pub dev: u64,
    /// Inode of the namespace (what `ip netns identify` and `/proc/*/ns/net` show).
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

impl Netns {
    /// Opens the namespace at `path`: `/var/run/netns/<name>`,
    /// `/proc/<pid>/ns/net` or a CNI_NETNS path.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref();
        let file =
            File::open(path).map_err(|e| io::Error::new(e.kind(), format!("opening netns {}: {e}", path.display())))?;
        Self::from_fd(file.into())
    }

    /// The namespace of the calling thread.
    pub fn current() -> io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// Adopts a file descriptor (for instance one received over ZDS), checking
    /// that it really refers to a network namespace.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        // A descriptor from /proc/<pid>/ns/net or SCM_RIGHTS reads as
        // "net:[<inode>]"; one opened through a bind mount (/var/run/netns/x)
        // shows the mount path instead. Then entering it from a throwaway
        // thread is the safe way to learn its type (setns checks it).
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        let link = link.to_string_lossy();
        if !link.starts_with("net:[") {
            let probe = std::thread::scope(|s| s.spawn(|| setns(&fd, CloneFlags::CLONE_NEWNET)).join());
            if !matches!(probe, Ok(Ok(()))) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("file descriptor is not a network namespace (it is {link})"),
                ));
            }
        }
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(Self { fd, id: NetnsId { dev: meta.dev(), ino: meta.ino() } })
    }

    /// Identity of the namespace, for logs and de-duplication.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// Another handle to the same namespace.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { fd: self.fd.try_clone()?, id: self.id })
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns
    /// its result. Sockets created by `f` belong to this namespace; so do child
    /// processes it spawns. Errors only if the thread cannot be started or
    /// cannot enter the namespace; a panic in `f` is resumed in the caller.
    /// Each call costs a thread spawn and blocks the caller until `f` is done:
    /// create all of a pod's sockets in one call, and from async code call it
    /// through `spawn_blocking` when `f` may take long.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        std::thread::scope(|scope| {
            let handle =
                std::thread::Builder::new().name(format!("netns-{}", self.id.ino)).spawn_scoped(scope, || {
                    setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                    Ok(f())
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Netns({})", self.id)
    }
}

/// A named namespace made with `ip netns add`, deleted when dropped. For test
/// harnesses and local playgrounds that play the container runtime.
///
/// A process killed outright (SIGKILL, a second Ctrl-C) runs no `Drop`, and its named
/// namespaces would stay in `/var/run/netns` for good. So each one is recorded in
/// [`SCRATCH_REGISTRY`] with the pid that made it, and every `create` first deletes those whose
/// maker is gone. Only namespaces recorded there are ever swept: a runtime's own are not ours.
#[derive(Debug)]
pub struct ScratchNetns {
    name: String,
    netns: Netns,
}

impl ScratchNetns {
    /// Creates `/var/run/netns/<name>` with its loopback up.
    pub fn create(name: &str) -> io::Result<Self> {
        sweep_scratch(Path::new(SCRATCH_REGISTRY));
        run_cmd(Command::new("ip").args(["netns", "add", name]))?;
        // Recorded before anything else can fail, so a kill from here on is swept next time;
        // a registry that cannot be written costs only that.
        let _ = std::fs::create_dir_all(SCRATCH_REGISTRY)
            .and_then(|()| std::fs::write(Path::new(SCRATCH_REGISTRY).join(name), std::process::id().to_string()));
        let path = format!("/var/run/netns/{name}");
        let netns = match Netns::open(&path) {
            Ok(n) => n,
            Err(e) => {
                let _ = run_cmd(Command::new("ip").args(["netns", "del", name]));
                return Err(e);
            }
        };
        // From here on, Drop cleans up whatever fails next.
        let guard = Self { name: name.to_owned(), netns };
        guard.ip(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path, as a runtime would pass in CNI_NETNS.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// The open handle.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Runs `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run_cmd(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }
}

impl Drop for ScratchNetns {
    fn drop(&mut self) {
        if let Err(e) = run_cmd(Command::new("ip").args(["netns", "del", &self.name])) {
            tracing::warn!(netns = %self.name, error = %e, "could not delete scratch netns");
        }
        let _ = std::fs::remove_file(Path::new(SCRATCH_REGISTRY).join(&self.name));
    }
}

/// Where [`ScratchNetns`] records each namespace it makes (file name: the namespace; content:
/// the pid of the process that made it). Under `/run`, so a reboot empties it with the namespaces.
pub const SCRATCH_REGISTRY: &str = "/run/ztunnel-scratch-netns";

/// Deletes the recorded namespaces of processes that no longer exist, and their records.
fn sweep_scratch(registry: &Path) {
    let Ok(entries) = std::fs::read_dir(registry) else { return };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        let Some(pid) = std::fs::read_to_string(entry.path()).ok().and_then(|p| p.trim().parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Already gone is fine; anything else leaves the record for the next sweep.
        let gone = !Path::new("/var/run/netns").join(&name).exists()
            || run_cmd(Command::new("ip").args(["netns", "del", &name])).is_ok();
        if gone {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Runs a command to completion, turning a non-zero exit into an error that
/// carries its stderr.
pub(crate) fn run_cmd(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("running {cmd:?}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn unique(name: &str) -> String {
        format!("{name}-{}-{}", std::process::id(), rand::random::<u16>())
    }

    /// A namespace left by a process that was killed outright is deleted by the next
    /// `create`; one whose maker lives is left alone, as is one nobody recorded.
    #[test]
    fn the_next_create_sweeps_what_a_killed_process_left() {
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let (left, alive, unrecorded) = (unique("sweep-left"), unique("sweep-alive"), unique("sweep-unrec"));
        for n in [&left, &alive, &unrecorded] {
            run_cmd(Command::new("ip").args(["netns", "add", n])).unwrap();
        }
        let registry = Path::new(SCRATCH_REGISTRY);
        std::fs::create_dir_all(registry).unwrap();
        std::fs::write(registry.join(&left), dead.to_string()).unwrap();
        std::fs::write(registry.join(&alive), std::process::id().to_string()).unwrap();
        let fresh = ScratchNetns::create(&unique("sweep-fresh")).unwrap();
        let exists = |n: &str| Path::new("/var/run/netns").join(n).exists();
        let (left_gone, alive_kept, unrecorded_kept) = (!exists(&left), exists(&alive), exists(&unrecorded));
        for n in [&alive, &unrecorded, &left] {
            let _ = run_cmd(Command::new("ip").args(["netns", "del", n]));
            let _ = std::fs::remove_file(registry.join(n));
        }
        assert!(left_gone && !registry.join(&left).exists(), "the dead process's namespace is swept");
        assert!(alive_kept && unrecorded_kept, "a live process's and an unrecorded namespace stay");
        assert!(registry.join(fresh.name()).exists(), "the new one is recorded");
        let name = fresh.name().to_owned();
        drop(fresh);
        assert!(!registry.join(&name).exists() && !exists(&name), "dropping deletes it and its record");
    }

    #[test]
    fn current_matches_proc_self() {
        let a = Netns::current().unwrap();
        let b = Netns::open("/proc/self/ns/net").unwrap();
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn rejects_non_netns_fd() {
        let f = File::open("/proc/self/ns/uts").unwrap();
        let err = Netns::from_fd(f.into()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let f = File::open("/dev/null").unwrap();
        assert!(Netns::from_fd(f.into()).is_err());
    }

    #[test]
    fn run_binds_inside_the_namespace() {
        let scratch = ScratchNetns::create(&unique("nsrun")).unwrap();
        let host = Netns::current().unwrap();
        assert_ne!(scratch.netns().id(), host.id());
        let (listener, inside_id) = scratch
            .netns()
            .run(|| (TcpListener::bind("127.0.0.1:0").unwrap(), Netns::current().unwrap().id()))
            .unwrap();
        assert_eq!(inside_id, scratch.netns().id());
        // The caller's thread stayed where it was.
        assert_eq!(Netns::current().unwrap().id(), host.id());
        let addr = listener.local_addr().unwrap();
        // Not reachable from here...
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
        // ...but reachable from inside.
        let ok = scratch.netns().run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()).unwrap();
        assert!(ok);
        // And from `ip netns exec`, the tool operators use.
        let status = Command::new("ip")
            .args(["netns", "exec", scratch.name(), "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{}", addr.port()))
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn scratch_is_removed_on_drop() {
        let name = unique("nsdrop");
        let path = {
            let s = ScratchNetns::create(&name).unwrap();
            assert!(Path::new(&s.path()).exists());
            s.path()
        };
        assert!(!Path::new(&path).exists());
    }
}
