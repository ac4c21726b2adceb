//! The directory watcher reloads on change, reports bad objects, keeps the last good version of
//! a security object that turned invalid, and sends only what changed.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use istiod_lite::source::dir::{WatchStatus, watch};
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
