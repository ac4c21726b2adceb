//! Wake-ups for the directory watcher from inotify, so an edit is loaded as soon as it lands
//! rather than at the next poll. The poll stays: inotify misses changes on some filesystems
//! (network mounts, files changed from another mount namespace of an overlay) and can run out
//! of watches or instances, and then the poll alone keeps the model current.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;

/// What makes a directory worth a look. Finished writes (`CLOSE_WRITE`), not each `MODIFY`:
/// a file written in several chunks would otherwise be loaded half-written; renames and
/// creations cover atomic replacement (a ConfigMap's `..data` swap included), `ATTRIB` a
/// `touch`; `DELETE_SELF`/`MOVE_SELF` a watched subdirectory going away.
fn interesting() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

/// The inotify instance, registered with the runtime's reactor (tokio wants `AsRawFd`).
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Inotify watches on the config directory and its subdirectories.
pub(super) struct Notifier {
    fd: AsyncFd<Fd>,
    /// Directories watched, by path and by watch descriptor (events name the descriptor).
    by_path: BTreeMap<PathBuf, WatchDescriptor>,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    /// Directories inotify refused (out of watches, say): left to the poll, not retried (nor
    /// warned about) at every look while they exist.
    refused: BTreeSet<PathBuf>,
}

impl Notifier {
    /// A new inotify instance with no watches. Must run inside a Tokio runtime with I/O enabled.
    pub(super) fn new() -> io::Result<Notifier> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(io::Error::from)?;
        // Deprecated for types whose `as_raw_fd` could change or close under the reactor; `Fd`
        // owns its descriptor for as long as the `AsyncFd` lives and always returns that one,
        // which is what the unsafe replacement (`register`) asks, without `unsafe` here.
        #[allow(deprecated)]
        let fd = AsyncFd::new(Fd(inotify))?;
        Ok(Notifier { fd, by_path: BTreeMap::new(), by_wd: HashMap::new(), refused: BTreeSet::new() })
    }

    /// Makes the watched set exactly `dirs` (the last listing's directories): new ones are
    /// added, vanished ones dropped. A directory that cannot be watched is left to the poll.
    pub(super) fn watch_dirs(&mut self, dirs: &[PathBuf]) {
        self.refused.retain(|p| dirs.contains(p));
        let stale: Vec<PathBuf> = self.by_path.keys().filter(|p| !dirs.contains(p)).cloned().collect();
        for path in stale {
            if let Some(wd) = self.by_path.remove(&path) {
                self.by_wd.remove(&wd);
                // Already gone with its directory, most likely; nothing to do either way.
                let _ = self.fd.get_ref().0.rm_watch(wd);
            }
        }
        for dir in dirs {
            if self.by_path.contains_key(dir) || self.refused.contains(dir) {
                continue;
            }
            match self.fd.get_ref().0.add_watch(dir.as_path(), interesting()) {
                Ok(wd) => {
                    self.by_path.insert(dir.clone(), wd);
                    self.by_wd.insert(wd, dir.clone());
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch with inotify; polling it only");
                    self.refused.insert(dir.clone());
                }
            }
        }
    }

    /// Waits for an event worth a look, draining every one queued. An error means the
    /// instance is unusable.
    pub(super) async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut events = Vec::new();
            let mut ready = self.fd.readable().await?;
            // Read until the queue is empty (one read returns at most a buffer's worth).
            loop {
                match ready.get_inner().0.read_events() {
                    Ok(more) => events.extend(more),
                    Err(Errno::EAGAIN) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            ready.clear_ready();
            drop(ready);
            let wake = events.iter().any(|e| self.worth_a_look(e));
            self.forget_ignored(events);
            if wake {
                return Ok(());
            }
        }
    }

    /// Every event but the creation of a regular file: that file is still empty, and its
    /// `CLOSE_WRITE` follows once it is written (a directory or a symlink gets no such event).
    fn worth_a_look(&self, event: &InotifyEvent) -> bool {
        if !event.mask.contains(AddWatchFlags::IN_CREATE) || event.mask.contains(AddWatchFlags::IN_ISDIR) {
            return true;
        }
        let (Some(dir), Some(name)) = (self.by_wd.get(&event.wd), &event.name) else {
            return true;
        };
        !std::fs::symlink_metadata(dir.join(name)).is_ok_and(|m| m.file_type().is_file())
    }

    /// The kernel drops a watch when its directory is deleted or unmounted (`IN_IGNORED`):
    /// forget it, so the next listing watches a directory recreated at that path.
    fn forget_ignored(&mut self, events: Vec<InotifyEvent>) {
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_IGNORED)
                && let Some(path) = self.by_wd.remove(&event.wd)
            {
                self.by_path.remove(&path);
            }
        }
    }
}
