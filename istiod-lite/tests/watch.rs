//! The directory watcher reloads on change, reports bad objects, keeps the last good version of
//! a security object that turned invalid, and sends only what changed.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use istiod_lite::source::dir::{WatchOptions, WatchStatus, watch, watch_with};
use istiod_lite::{Delta, MeshConfig, Translator};
use proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use support::*;
use tokio::sync::{mpsc, watch as tokio_watch};

const WAIT: Duration = Duration::from_secs(5);

async fn next_delta(rx: &mut mpsc::UnboundedReceiver<Delta>) -> Delta {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("no delta in time").expect("watcher ended")
}

async fn loads_reach(status: &mut tokio_watch::Receiver<WatchStatus>, n: u64) -> WatchStatus {
    tokio::time::timeout(WAIT, status.wait_for(|s| s.loads >= n)).await.expect("no reload in time").unwrap().clone()
}

#[tokio::test(flavor = "current_thread")]
async fn watcher_applies_changes_and_keeps_the_last_good_policy() {
    let dir = TempDir::new("watch");
    for f in ["namespaces.yaml", "shop.yaml", "tools.yaml", "policies.yaml"] {
        dir.write(f, &std::fs::read_to_string(samples_dir().join(f)).unwrap());
    }
    let policies = std::fs::read_to_string(samples_dir().join("policies.yaml")).unwrap();
    let translator = Arc::new(Mutex::new(Translator::new(MeshConfig::default())));
    let (mut status, mut deltas, fut) = watch(dir.path(), translator.clone());
    let task = tokio::spawn(fut);

    let first = next_delta(&mut deltas).await;
    assert_eq!(first.of(ADDRESS_TYPE_URL).upserts.len(), 5);
    assert_eq!(first.of(AUTHORIZATION_TYPE_URL).upserts.len(), 3);
    assert!(loads_reach(&mut status, 1).await.errors.is_empty());

    // A typo in the ALLOW policy: reported, and its last good version stays in force.
    let file = dir.write("policies.yaml", &policies.replace("ports: [\"8080\"]", "ports: [\"http\"]"));
    let s = loads_reach(&mut status, 2).await;
    assert_eq!(s.errors.len(), 1);
    assert_eq!(
        s.errors[0].to_string(),
        format!(
            "{} document 1 (AuthorizationPolicy shop/catalog-allow-curl): spec.rules[0].to[0].operation.ports[0]: \"http\" is not a port (1-65535)",
            file.display()
        )
    );
    assert!(deltas.try_recv().is_err(), "nothing changed for ztunnel");
    let kept = translator.lock().unwrap().authorizations()["shop/catalog-allow-curl"].clone();
    assert_eq!(kept.groups[0].rules[0].matches[0].destination_ports, [8080]);

    // Fixed to another port: that policy alone is pushed.
    dir.write("policies.yaml", &policies.replace("ports: [\"8080\"]", "ports: [\"9090\"]"));
    let d = next_delta(&mut deltas).await;
    assert!(d.of(ADDRESS_TYPE_URL).is_empty());
    let auth = d.of(AUTHORIZATION_TYPE_URL);
    assert_eq!(auth.upserts.len(), 1);
    assert_eq!(auth.upserts[0].0, "shop/catalog-allow-curl");
    assert_eq!(decode_authz(&auth.upserts[0].1).groups[0].rules[0].matches[0].destination_ports, [9090]);
    assert!(loads_reach(&mut status, 3).await.errors.is_empty());

    // A file removed: its objects are removed.
    std::fs::remove_file(dir.path().join("tools.yaml")).unwrap();
    let d = next_delta(&mut deltas).await;
    let mut removed = d.of(ADDRESS_TYPE_URL).removals;
    removed.sort();
    assert_eq!(removed, ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn", "Kubernetes//Pod/tools/debug"]);
    task.abort();
}

/// The samples in a fresh directory, a watcher on it with `options`, and its first delta.
async fn watched_samples(
    test: &str,
    options: WatchOptions,
) -> (TempDir, tokio_watch::Receiver<WatchStatus>, mpsc::UnboundedReceiver<Delta>, tokio::task::JoinHandle<()>) {
    let dir = TempDir::new(test);
    for f in ["namespaces.yaml", "shop.yaml", "policies.yaml"] {
        dir.write(f, &std::fs::read_to_string(samples_dir().join(f)).unwrap());
    }
    let translator = Arc::new(Mutex::new(Translator::new(MeshConfig::default())));
    let (mut status, mut deltas, fut) = watch_with(dir.path(), translator, options);
    let task = tokio::spawn(fut);
    assert!(!next_delta(&mut deltas).await.is_empty());
    loads_reach(&mut status, 1).await;
    (dir, status, deltas, task)
}

/// The `tools` namespace's pods, as a file of its own (at `name` under `dir`).
fn write_tools(dir: &TempDir, name: &str) {
    dir.write(name, &std::fs::read_to_string(samples_dir().join("tools.yaml")).unwrap());
}

fn pod_names(d: &Delta) -> Vec<String> {
    let mut names: Vec<String> = d.of(ADDRESS_TYPE_URL).upserts.into_iter().map(|(n, _)| n).collect();
    names.sort();
    names
}

/// With a poll interval far beyond the test's timeout, only inotify can bring the changes in:
/// a new file, a new subdirectory's file, an edit inside that subdirectory (its own watch), and
/// a file in a subdirectory deleted and created again (watched anew).
#[tokio::test(flavor = "current_thread")]
async fn inotify_brings_changes_without_waiting_for_the_poll() {
    let options = WatchOptions { poll_interval: Duration::from_secs(3600), inotify: true };
    let (dir, status, mut deltas, task) = watched_samples("inotify", options).await;
    assert!(status.borrow().inotify, "inotify is available here");
    let tools = ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn", "Kubernetes//Pod/tools/debug"];

    write_tools(&dir, "tools.yaml");
    assert_eq!(pod_names(&next_delta(&mut deltas).await), tools);
    std::fs::remove_file(dir.path().join("tools.yaml")).unwrap();
    assert_eq!(next_delta(&mut deltas).await.of(ADDRESS_TYPE_URL).removals.len(), 2);

    std::fs::create_dir(dir.path().join("more")).unwrap();
    write_tools(&dir, "more/tools.yaml");
    assert_eq!(pod_names(&next_delta(&mut deltas).await), tools);
    // The subdirectory's own watch sees an edit inside it.
    let edited = std::fs::read_to_string(dir.path().join("more/tools.yaml")).unwrap().replace("10.244.", "10.245.");
    dir.write("more/tools.yaml", &edited);
    assert_eq!(pod_names(&next_delta(&mut deltas).await), tools);

    // Gone, then back under the same name: the recreated directory is watched again.
    std::fs::remove_dir_all(dir.path().join("more")).unwrap();
    assert_eq!(next_delta(&mut deltas).await.of(ADDRESS_TYPE_URL).removals.len(), 2);
    std::fs::create_dir(dir.path().join("more")).unwrap();
    // Give the watcher its look at the empty directory first, so the file lands after the
    // new watch (else the directory's creation alone would bring it in).
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_tools(&dir, "more/tools.yaml");
    assert_eq!(pod_names(&next_delta(&mut deltas).await), tools);
    task.abort();
}

/// Without inotify the poll alone still brings every change in.
#[tokio::test(flavor = "current_thread")]
async fn the_poll_alone_catches_changes_without_inotify() {
    let options = WatchOptions { poll_interval: Duration::from_millis(20), inotify: false };
    let (dir, status, mut deltas, task) = watched_samples("poll-only", options).await;
    assert!(!status.borrow().inotify);
    write_tools(&dir, "tools.yaml");
    assert_eq!(
        pod_names(&next_delta(&mut deltas).await),
        ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn", "Kubernetes//Pod/tools/debug"]
    );
    let edited = std::fs::read_to_string(dir.path().join("tools.yaml")).unwrap().replace("10.244.", "10.245.");
    dir.write("tools.yaml", &edited);
    assert_eq!(
        pod_names(&next_delta(&mut deltas).await),
        ["Kubernetes//Pod/tools/curl-5f8d9b7c4-zt6vn", "Kubernetes//Pod/tools/debug"]
    );
    task.abort();
}

/// After edits applied one difference at a time, the watcher's translator holds exactly what a
/// fresh translator given the whole directory computes.
#[tokio::test(flavor = "current_thread")]
async fn incremental_loads_end_where_a_full_load_does() {
    let options = WatchOptions { poll_interval: Duration::from_millis(20), inotify: true };
    let dir = TempDir::new("incremental");
    for f in ["namespaces.yaml", "shop.yaml", "tools.yaml", "policies.yaml"] {
        dir.write(f, &std::fs::read_to_string(samples_dir().join(f)).unwrap());
    }
    let translator = Arc::new(Mutex::new(Translator::new(MeshConfig::default())));
    let (mut status, mut deltas, fut) = watch_with(dir.path(), translator.clone(), options);
    let task = tokio::spawn(fut);
    next_delta(&mut deltas).await;
    let shop = std::fs::read_to_string(samples_dir().join("shop.yaml")).unwrap();
    let policies = std::fs::read_to_string(samples_dir().join("policies.yaml")).unwrap();
    let edits: [(&str, String); 4] = [
        ("shop.yaml", shop.replace("10.244.", "10.246.")),
        ("policies.yaml", policies.replace("ports: [\"8080\"]", "ports: [\"9090\"]")),
        ("tools.yaml", String::new()),
        ("shop.yaml", shop.clone()),
    ];
    for (file, text) in &edits {
        let loads = status.borrow().loads;
        dir.write(file, text);
        loads_reach(&mut status, loads + 1).await;
    }
    let mut fresh = Translator::new(MeshConfig::default());
    let objects = istiod_lite::source::dir::Loader::new(dir.path()).load().unwrap().objects;
    fresh.replace_all(objects.into_iter().map(|o| o.object).collect());
    // A write can be seen half done and loaded twice: wait for the last load to settle.
    let settled = async {
        while translator.lock().unwrap().addresses() != fresh.addresses() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, settled).await.expect("the watcher's model never matched a full load");
    let watched = translator.lock().unwrap();
    assert_eq!(watched.model().keys(), fresh.model().keys());
    assert_eq!(watched.addresses(), fresh.addresses());
    assert_eq!(watched.authorizations(), fresh.authorizations());
    assert!(watched.addresses().keys().all(|k| !k.contains("/tools/")), "tools.yaml emptied");
    drop(watched);
    task.abort();
}
