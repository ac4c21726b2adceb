//! A directory of Kubernetes YAML (`*.yaml`, `*.yml`, subdirectories included, in path order):
//! loading, and a watcher that reloads on change and feeds a [`Translator`].
//!
//! Every good object applies; each bad document is reported with file, document number,
//! object and field (line numbers in parser messages count from the document's first line).
//! A security object (`AuthorizationPolicy`, `PeerAuthentication`) that becomes invalid keeps
//! its last good version, as a rejected `kubectl apply` would leave the old object in place;
//! one never valid is replaced by its fail-closed stand-in ([`super::fail_closed`]: deny all,
//! or STRICT, for what it selects), so a broken policy never leaves its workloads more open.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};

use super::{Located, parse_file};
use crate::error::{ConfigError, Location, ObjectError, Warning};
use crate::model::{Kind, ObjectKey};
use crate::translator::{Change, Delta, Translator};

mod notify;

/// How often the watcher looks at the directory. A look is a listing and one `stat` per file
/// (unchanged files are not read), so a short interval is cheap. inotify wakes the watcher as
/// soon as a file is written; the poll bounds the wait where inotify does not see the change.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How the watcher notices changes.
#[derive(Clone, Copy, Debug)]
pub struct WatchOptions {
    /// Interval of the poll (names, times and sizes of the YAML files), which always runs.
    pub poll_interval: Duration,
    /// Also look as soon as inotify reports a change in the directory or a subdirectory.
    /// If inotify cannot be set up (or fails later) the poll alone continues.
    pub inotify: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { poll_interval: POLL_INTERVAL, inotify: true }
    }
}

/// Why the directory could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Listing or reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The directory or file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// One load of the directory.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Objects that apply (duplicates removed; last good versions of rejected security objects kept).
    pub objects: Vec<Located>,
    /// Bad documents and objects.
    pub errors: Vec<ConfigError>,
    /// Documents of kinds we do not read.
    pub ignored: Vec<String>,
}

/// Collects the YAML files under `dir` into `out` and the directories read (`dir` included)
/// into `dirs`.
fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>, dirs: &mut Vec<PathBuf>) -> Result<(), DirError> {
    dirs.push(dir.to_owned());
    let rd = std::fs::read_dir(dir).map_err(|source| DirError::Read { path: dir.to_owned(), source })?;
    for e in rd {
        let e = e.map_err(|source| DirError::Read { path: dir.to_owned(), source })?;
        let p = e.path();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            // Editors' swap files; and a mounted ConfigMap's `..data` links, whose files are
            // also linked at the top level.
            continue;
        }
        // Real directories only: a symlinked directory could loop back to a parent.
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            yaml_files(&p, out, dirs)?;
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
    Ok(())
}

/// The YAML files of a directory with their modification time and length.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The directory's YAML files with their modification time and length (a cheap change check),
/// and the directories listed.
fn fingerprint(dir: &Path) -> Result<(Fingerprint, Vec<PathBuf>), DirError> {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    yaml_files(dir, &mut files, &mut dirs)?;
    files.sort();
    let files = files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let (t, l) = (m.as_ref().and_then(|m| m.modified().ok()), m.map(|m| m.len()).unwrap_or(0));
            (p, t, l)
        })
        .collect();
    Ok((files, dirs))
}

fn is_security(k: &ObjectKey) -> bool {
    matches!(k.kind, Kind::AuthorizationPolicy | Kind::PeerAuthentication)
}

/// A file that parsed cleanly, kept so an unchanged file is not parsed again.
#[derive(Debug)]
struct CleanFile {
    text: String,
    /// Shared with the snapshots that carry them: a watcher can tell an object of an
    /// unchanged file by pointer, without comparing it.
    objects: Vec<Arc<Located>>,
    ignored: Vec<String>,
}

/// A load whose objects are shared with the loader's cache ([`Loader::load_shared`]).
#[derive(Debug, Default)]
pub struct SharedSnapshot {
    /// Objects that apply, as in [`Snapshot::objects`].
    pub objects: Vec<Arc<Located>>,
    /// Bad documents and objects.
    pub errors: Vec<ConfigError>,
    /// Documents of kinds we do not read.
    pub ignored: Vec<String>,
}

/// Loads a directory, keeping state between loads (the last good security objects, and the
/// parse of every clean file: one edited file among many costs one file's parse, which at
/// 10,000 pods is most of a reload).
#[derive(Debug, Default)]
pub struct Loader {
    dir: PathBuf,
    last_good: BTreeMap<ObjectKey, Arc<Located>>,
    clean: BTreeMap<PathBuf, CleanFile>,
}

impl Loader {
    /// A loader for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Loader {
        Loader { dir: dir.into(), last_good: BTreeMap::new(), clean: BTreeMap::new() }
    }

    /// Reads and parses every file.
    pub fn load(&mut self) -> Result<Snapshot, DirError> {
        let shared = self.load_shared()?;
        Ok(Snapshot {
            objects: shared.objects.into_iter().map(Arc::unwrap_or_clone).collect(),
            errors: shared.errors,
            ignored: shared.ignored,
        })
    }

    /// Reads and parses every file; an object of a file unchanged since the last load is the
    /// same `Arc` as in that load.
    pub fn load_shared(&mut self) -> Result<SharedSnapshot, DirError> {
        let mut files = Vec::new();
        yaml_files(&self.dir, &mut files, &mut Vec::new())?;
        files.sort();
        let mut snap = SharedSnapshot::default();
        let mut seen: BTreeMap<ObjectKey, Location> = BTreeMap::new();
        let mut stand_ins: Vec<Located> = Vec::new();
        let mut present = BTreeSet::new();
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(source) => {
                    snap.errors.push(ConfigError {
                        location: Location { file: f.clone(), document: 0 },
                        object: None,
                        error: ObjectError::Io { source },
                    });
                    continue;
                }
            };
            let (objects, errors, ignored) = match self.clean.get(&f) {
                // Same bytes, same objects: parsing is a pure function of the text.
                Some(c) if c.text == text => (c.objects.clone(), Vec::new(), c.ignored.clone()),
                _ => {
                    let parsed = parse_file(&f, &text);
                    let objects: Vec<Arc<Located>> = parsed.objects.into_iter().map(Arc::new).collect();
                    if parsed.errors.is_empty() && parsed.fail_closed.is_empty() {
                        let clean = CleanFile { text, objects: objects.clone(), ignored: parsed.ignored.clone() };
                        self.clean.insert(f.clone(), clean);
                    } else {
                        self.clean.remove(&f);
                    }
                    stand_ins.extend(parsed.fail_closed);
                    (objects, parsed.errors, parsed.ignored)
                }
            };
            present.insert(f.clone());
            snap.errors.extend(errors);
            snap.ignored.extend(ignored);
            for o in objects {
                let key = o.object.key();
                if let Some(first) = seen.get(&key) {
                    snap.errors.push(ConfigError {
                        location: o.location.clone(),
                        object: Some(key),
                        error: ObjectError::Duplicate { first: first.to_string() },
                    });
                    continue;
                }
                seen.insert(key, o.location.clone());
                snap.objects.push(o);
            }
        }
        self.clean.retain(|f, _| present.contains(f));
        let rejected: BTreeSet<ObjectKey> =
            snap.errors.iter().filter_map(|e| e.object.clone()).filter(is_security).collect();
        // Only objects that really parsed become last good; stand-ins never do.
        let mut last_good: BTreeMap<ObjectKey, Arc<Located>> =
            snap.objects.iter().filter(|o| is_security(&o.object.key())).map(|o| (o.object.key(), o.clone())).collect();
        for k in rejected {
            if seen.contains_key(&k) {
                continue; // a valid definition elsewhere wins; the bad one is just reported
            }
            if let Some(old) = self.last_good.get(&k) {
                tracing::warn!(object = %k, "invalid; keeping its last good version");
                snap.objects.push(old.clone());
                last_good.insert(k, old.clone());
            } else if let Some(s) = stand_ins.iter().find(|s| s.object.key() == k) {
                tracing::warn!(object = %k, "invalid and never valid; enforcing its fail-closed stand-in");
                snap.objects.push(Arc::new(s.clone()));
            }
        }
        self.last_good = last_good;
        let synthesized = super::waypoint_service::synthesize(&snap.objects);
        snap.objects.extend(synthesized.into_iter().map(Arc::new));
        Ok(snap)
    }
}

/// The changes that turn a model equal to `before` into one equal to `after` (both by key):
/// objects that are new or differ are upserted, objects gone are deleted. An object shared
/// with `before` (from a file that did not change) is skipped without being compared.
fn changes(before: &BTreeMap<ObjectKey, Arc<Located>>, after: &BTreeMap<ObjectKey, Arc<Located>>) -> Vec<Change> {
    let mut out: Vec<Change> = before.keys().filter(|k| !after.contains_key(*k)).cloned().map(Change::Delete).collect();
    for (k, o) in after {
        match before.get(k) {
            Some(b) if Arc::ptr_eq(b, o) || b.object == o.object => {}
            _ => out.push(Change::Upsert(o.object.clone())),
        }
    }
    out
}

/// What the watcher has done so far.
#[derive(Clone, Debug, Default)]
pub struct WatchStatus {
    /// Loads applied.
    pub loads: u64,
    /// Errors of the last load (empty if it was clean).
    pub errors: Vec<Arc<ConfigError>>,
    /// A directory-level failure of the last attempt, if any (the last model stays).
    pub failure: Option<Arc<DirError>>,
    /// Translation warnings after the last load (HTTP rules left out, dangling waypoints, ...).
    pub warnings: Vec<Warning>,
    /// Whether inotify wakes the watcher (false: it polls only).
    pub inotify: bool,
}

/// [`watch_with`] with the default options: inotify, and a poll every [`POLL_INTERVAL`].
pub fn watch(
    dir: impl Into<PathBuf>,
    translator: Arc<Mutex<Translator>>,
) -> (watch::Receiver<WatchStatus>, mpsc::UnboundedReceiver<Delta>, impl Future<Output = ()> + Send + 'static) {
    watch_with(dir, translator, WatchOptions::default())
}

/// Watches `dir`: on every inotify event (if enabled and available) and every poll interval it
/// checks the YAML files' names, times and sizes; on any change (and at the start) it reloads
/// the directory, makes `translator`'s model equal to it (the first load with
/// [`Translator::replace_all`], later ones by applying only the objects that differ), and sends the
/// non-empty delta. Returns the status receiver, the delta receiver and the future to spawn
/// (it runs until dropped; it needs a Tokio runtime with I/O and time enabled).
pub fn watch_with(
    dir: impl Into<PathBuf>,
    translator: Arc<Mutex<Translator>>,
    options: WatchOptions,
) -> (watch::Receiver<WatchStatus>, mpsc::UnboundedReceiver<Delta>, impl Future<Output = ()> + Send + 'static) {
    let dir = dir.into();
    let (status_tx, status_rx) = watch::channel(WatchStatus::default());
    let (delta_tx, delta_rx) = mpsc::unbounded_channel();
    let fut = async move {
        // Listing and reading run on the blocking pool: the runtime also serves xDS.
        let mut loader = Some(Loader::new(dir.clone()));
        // What the translator's model was last made equal to (`None` before the first load,
        // which replaces whatever the translator held).
        let mut applied: Option<BTreeMap<ObjectKey, Arc<Located>>> = None;
        let mut last = None;
        let mut ticker = tokio::time::interval(options.poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut notifier = options.inotify.then(notify::Notifier::new).and_then(|n| {
            n.inspect_err(|e| tracing::warn!(error = %e, "inotify unavailable; polling the config directory only")).ok()
        });
        status_tx.send_modify(|s| s.inotify = notifier.is_some());
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                woke = async {
                    match notifier.as_mut() {
                        Some(n) => n.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Err(e) = woke {
                        tracing::warn!(error = %e, "inotify failed; polling the config directory only");
                        notifier = None;
                        status_tx.send_modify(|s| s.inotify = false);
                    }
                }
            }
            let d = dir.clone();
            let fp = match tokio::task::spawn_blocking(move || fingerprint(&d)).await {
                Ok(Ok((fp, dirs))) => {
                    // Directories appear and go between looks; a change in one created since
                    // the last look and before this watch is left to the poll.
                    if let Some(n) = notifier.as_mut() {
                        n.watch_dirs(&dirs);
                    }
                    fp
                }
                Ok(Err(e)) => {
                    if last.is_some() || status_tx.borrow().failure.is_none() {
                        tracing::error!(error = %e, "config directory unreadable; keeping the last model");
                        status_tx.send_modify(|s| s.failure = Some(Arc::new(e)));
                    }
                    last = None;
                    continue;
                }
                Err(_) => return, // the runtime is shutting down
            };
            if last.as_ref() == Some(&fp) {
                continue;
            }
            last = Some(fp);
            let mut l = loader.take().expect("loader is put back after each load");
            let before = applied.take();
            let Ok((l, before, result)) = tokio::task::spawn_blocking(move || {
                let r = l.load_shared().map(|snap| {
                    let after: BTreeMap<ObjectKey, Arc<Located>> =
                        snap.objects.iter().map(|o| (o.object.key(), o.clone())).collect();
                    let changes = before.as_ref().map(|before| changes(before, &after));
                    (snap, after, changes)
                });
                (l, before, r)
            })
            .await
            else {
                return;
            };
            loader = Some(l);
            let (snap, after, changes) = match result {
                Ok(s) => s,
                Err(e) => {
                    applied = before;
                    tracing::error!(error = %e, "config directory unreadable; keeping the last model");
                    status_tx.send_modify(|s| s.failure = Some(Arc::new(e)));
                    last = None;
                    continue;
                }
            };
            for e in &snap.errors {
                tracing::error!("config: {e}");
            }
            let (delta, warnings) = {
                let mut t = translator.lock().expect("translator lock");
                let d = match changes {
                    // The model is what the last load applied: only the difference goes in.
                    Some(changes) => t.apply_all(changes),
                    None => t.replace_all(snap.objects.iter().map(|o| o.object.clone()).collect()),
                };
                (d, t.warnings())
            };
            applied = Some(after);
            // The delta goes out before the load is counted: whoever sees the count can rely
            // on the delta being queued (serve opens 15012 on that).
            if !delta.is_empty() && delta_tx.send(delta).is_err() {
                return;
            }
            status_tx.send_modify(|s| {
                s.loads += 1;
                s.failure = None;
                s.errors = snap.errors.into_iter().map(Arc::new).collect();
                s.warnings = warnings;
            });
        }
    };
    (status_rx, delta_rx, fut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> BTreeMap<ObjectKey, Arc<Located>> {
        let parsed = parse_file(Path::new("t.yaml"), yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        parsed.objects.into_iter().map(|o| (o.object.key(), Arc::new(o))).collect()
    }

    fn ns(name: &str, label: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    l: {label}\n---\n")
    }

    fn described(changes: Vec<Change>) -> Vec<String> {
        changes
            .into_iter()
            .map(|c| match c {
                Change::Upsert(o) => format!("upsert {}", o.key()),
                Change::Delete(k) => format!("delete {k}"),
            })
            .collect()
    }

    #[test]
    fn changes_upsert_what_differs_and_delete_what_is_gone() {
        let before = objects(&(ns("a", "1") + &ns("b", "1") + &ns("c", "1")));
        let mut after = objects(&(ns("b", "1") + &ns("c", "2") + &ns("d", "1")));
        // `b` is equal but parsed again (not shared): compared, and skipped.
        assert_eq!(
            described(changes(&before, &after)),
            ["delete Namespace a", "upsert Namespace c", "upsert Namespace d"]
        );
        // Shared objects are skipped without a look; from nothing, everything is new.
        after.insert(before.keys().next().unwrap().clone(), before.values().next().unwrap().clone());
        assert_eq!(described(changes(&before, &after)), ["upsert Namespace c", "upsert Namespace d"]);
        assert_eq!(described(changes(&BTreeMap::new(), &before)).len(), 3);
        assert!(changes(&before, &before).is_empty());
    }
}
