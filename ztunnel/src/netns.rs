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
#[derive(Debug)]
pub struct ScratchNetns {
    name: String,
    netns: Netns,
}

impl ScratchNetns {
    /// Creates `/var/run/netns/<name>` with its loopback up.
    pub fn create(name: &str) -> io::Result<Self> {
        run_cmd(Command::new("ip").args(["netns", "add", name]))?;
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
