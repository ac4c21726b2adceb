//! Pods through their lifecycle, as istiod's ambient index turns them into workloads: a pod
//! being deleted is UNHEALTHY (it keeps serving through its grace period, but Services pick
//! other endpoints); a finished pod (`Succeeded`, `Failed`: evicted, a completed Job) is no
//! workload, its IP free for the next pod; a pod without an IP yet is none, a `Pending` one
//! with an IP is one (UNHEALTHY until `Ready`); a host-network pod is a workload with
//! `network_mode: HOST_NETWORK`, never HBONE. From a directory and from the Kubernetes API.

mod kube_support;
mod support;

use std::time::Duration;

use istiod_lite::source::dir::Loader;
use istiod_lite::{MeshConfig, Object, Translator};
use kube_support::{MockApi, Source, WAIT};
use proto::ADDRESS_TYPE_URL;
use proto::istio::workload::{NetworkMode, TunnelProtocol, Workload, WorkloadStatus, address};
use support::*;

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80}]\n";

/// A pod `shop/<name>` on node-a with `metadata`, `spec` and `status` lines added (each
/// indented as under its key).
fn pod(name: &str, metadata: &str, spec: &str, status: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {{app: web}}\n{metadata}spec:\n  nodeName: node-a\n{spec}status:\n{status}"
    )
}

const RUNNING_READY: &str = "  phase: Running\n  podIP: 10.244.1.5\n  conditions: [{type: Ready, status: \"True\"}]\n";

fn dir_translator(dir: &TempDir) -> Translator {
    let snap = Loader::new(dir.path().to_owned()).load().unwrap();
    assert!(snap.errors.is_empty() && snap.ignored.is_empty(), "{:?} {:?}", snap.errors, snap.ignored);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect::<Vec<Object>>());
    t
}

fn ips(w: &Workload) -> Vec<Vec<u8>> {
    w.addresses.iter().map(|a| a.to_vec()).collect()
}

fn workload(t: &Translator, ns: &str, pod: &str) -> Option<Workload> {
    match &t.addresses().get(&format!("Kubernetes//Pod/{ns}/{pod}"))?.r#type {
        Some(address::Type::Workload(w)) => Some(w.clone()),
        other => panic!("not a workload: {other:?}"),
    }
}

// ---- From a directory ----

#[test]
fn a_pod_being_deleted_is_unhealthy_though_ready_and_still_a_workload() {
    let dir = TempDir::new("terminating");
    dir.write(
        "app.yaml",
        &[
            NS,
            &pod("web-1", "", "", RUNNING_READY),
            &pod(
                "web-2",
                "  deletionTimestamp: \"2026-11-03T11:20:00Z\"\n  deletionGracePeriodSeconds: 30\n",
                "",
                RUNNING_READY,
            )
            .replace("10.244.1.5", "10.244.1.6"),
        ]
        .concat(),
    );
    let t = dir_translator(&dir);
    assert_eq!(workload(&t, "shop", "web-1").unwrap().status, WorkloadStatus::Healthy as i32);
    let w = workload(&t, "shop", "web-2").expect("a terminating pod is still a workload");
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32, "Ready, but being deleted");
    // Still an endpoint of its Service (ztunnel keeps it for services allowing all), with its
    // identity and enrollment: connections already open finish.
    assert!(w.services.contains_key("shop/web.shop.svc.cluster.local"), "{:?}", w.services);
    assert_eq!(w.tunnel_protocol, TunnelProtocol::Hbone as i32);
}

#[test]
fn finished_pods_are_not_workloads_pending_and_unknown_ones_with_an_ip_are() {
    let dir = TempDir::new("phases");
    let at = |phase: &str, ip: &str, ready: &str| {
        format!("  phase: {phase}\n  podIP: {ip}\n  conditions: [{{type: Ready, status: \"{ready}\"}}]\n")
    };
    dir.write(
        "app.yaml",
        &[
            NS,
            &pod("evicted", "", "", &at("Failed", "10.244.1.7", "False")),
            &pod("completed", "", "", &at("Succeeded", "10.244.1.8", "False")),
            &pod("initializing", "", "", &at("Pending", "10.244.1.9", "False")),
            &pod("node-lost", "", "", &at("Unknown", "10.244.1.10", "True")),
            &pod("scheduled", "", "", "  phase: Pending\n  conditions: [{type: PodScheduled, status: \"True\"}]\n"),
        ]
        .concat(),
    );
    let t = dir_translator(&dir);
    assert_eq!(workload(&t, "shop", "evicted"), None);
    assert_eq!(workload(&t, "shop", "completed"), None);
    assert_eq!(workload(&t, "shop", "scheduled"), None, "no IP yet");
    assert_eq!(workload(&t, "shop", "initializing").unwrap().status, WorkloadStatus::Unhealthy as i32);
    assert_eq!(workload(&t, "shop", "node-lost").unwrap().status, WorkloadStatus::Healthy as i32);
}

#[test]
fn a_host_network_pod_is_a_workload_on_the_host_network_never_hbone() {
    let dir = TempDir::new("host-network");
    dir.write(
        "app.yaml",
        &[
            NS,
            // In an ambient namespace, even labelled ambient itself: it cannot be captured.
            &pod(
                "exporter",
                "",
                "  hostNetwork: true\n",
                "  phase: Running\n  podIP: 172.18.0.2\n  conditions: [{type: Ready, status: \"True\"}]\n",
            )
            .replace("labels: {app: web}", "labels: {app: web, istio.io/dataplane-mode: ambient}"),
            &pod("web-1", "", "", RUNNING_READY),
        ]
        .concat(),
    );
    let t = dir_translator(&dir);
    let w = workload(&t, "shop", "exporter").expect("a host-network pod is a workload");
    assert_eq!(w.network_mode, NetworkMode::HostNetwork as i32);
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32);
    assert_eq!(ips(&w), [vec![172u8, 18, 0, 2]]);
    assert_eq!(w.status, WorkloadStatus::Healthy as i32);
    assert!(w.services.contains_key("shop/web.shop.svc.cluster.local"), "a Service reaches it: {:?}", w.services);
    assert_eq!(workload(&t, "shop", "web-1").unwrap().network_mode, NetworkMode::Standard as i32);
}

// ---- From the Kubernetes API ----

const PODS: &str = "/api/v1/pods";

fn workload_of(src: &Source, ns: &str, pod: &str) -> Option<Workload> {
    workload(&src.translator.lock().unwrap(), ns, pod)
}

const CATALOG_K2X9P: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-k2x9p";
const CATALOG_Q7M4W: &str = "Kubernetes//Pod/shop/catalog-7d4b9c6f5-q7m4w";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_from_the_api_turns_unhealthy_at_once() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;
    assert_eq!(workload_of(&src, "shop", "catalog-7d4b9c6f5-k2x9p").unwrap().status, WorkloadStatus::Healthy as i32);

    // `kubectl delete pod`: the API server sets deletionTimestamp; the kubelet has not yet
    // touched the status (still Running and Ready).
    mock.push_watch(PODS, "watch/pods-catalog-terminating.jsonl");
    let d = src.next_address_delta().await.of(ADDRESS_TYPE_URL);
    assert!(d.removals.is_empty(), "{d:#?}");
    assert_eq!(d.upserts.len(), 1, "{d:#?}");
    assert_eq!(d.upserts[0].0, CATALOG_K2X9P);
    let w = decode_workload(&d.upserts[0].1);
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32);
    assert!(w.services.contains_key("shop/catalog.shop.svc.cluster.local"), "{:?}", w.services);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_pod_from_the_api_is_removed_though_it_keeps_its_ip() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;
    assert!(workload_of(&src, "shop", "catalog-7d4b9c6f5-q7m4w").is_some());

    // Evicted by the kubelet: phase Failed; the object (and its podIP) stays until deleted.
    mock.push_watch(PODS, "watch/pods-catalog-evicted.jsonl");
    let d = src.next_address_delta().await.of(ADDRESS_TYPE_URL);
    assert_eq!(d.removals, [CATALOG_Q7M4W], "{d:#?}");
    assert!(d.upserts.is_empty(), "{d:#?}");
    assert_eq!(workload_of(&src, "shop", "catalog-7d4b9c6f5-q7m4w"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_from_the_api_is_a_workload_once_it_has_an_ip_unhealthy_while_initializing() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;

    // Scheduled, no IP yet: nothing to send (the model has it; no workload).
    mock.push_watch(PODS, "watch/pods-catalog-scheduled.jsonl");
    let until = tokio::time::Instant::now() + WAIT;
    while !src.translator.lock().unwrap().model().pods.contains_key(&("shop".into(), "catalog-7d4b9c6f5-r5n8x".into()))
    {
        assert!(tokio::time::Instant::now() < until, "the scheduled pod never reached the model");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(workload_of(&src, "shop", "catalog-7d4b9c6f5-r5n8x"), None);

    // Pending with an IP, its init container running: a workload, not ready (istio#48854).
    mock.push_watch(PODS, "watch/pods-catalog-initializing.jsonl");
    let d = src.next_address_delta().await.of(ADDRESS_TYPE_URL);
    let up: Vec<&str> = d.upserts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(up, ["Kubernetes//Pod/shop/catalog-7d4b9c6f5-r5n8x"], "{d:#?}");
    let w = decode_workload(&d.upserts[0].1);
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32);
    assert_eq!(ips(&w), [vec![10u8, 244, 2, 11]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_network_pod_from_the_api_is_sent_on_the_host_network_never_hbone() {
    let mock = MockApi::start().await;
    mock.cluster();
    let mut src = Source::synced(&mock).await;

    // A DaemonSet's host-network pod in `tools`, an ambient namespace, on node-a's own IP.
    mock.push_watch(PODS, "watch/pods-node-exporter-host-network.jsonl");
    let d = src.next_address_delta().await.of(ADDRESS_TYPE_URL);
    assert_eq!(d.upserts.len(), 1, "{d:#?}");
    assert_eq!(d.upserts[0].0, "Kubernetes//Pod/tools/node-exporter-x7k2p");
    let w = decode_workload(&d.upserts[0].1);
    assert_eq!(w.network_mode, NetworkMode::HostNetwork as i32);
    assert_eq!(w.tunnel_protocol, TunnelProtocol::None as i32, "never captured, so never HBONE");
    assert_eq!(ips(&w), [vec![172u8, 18, 0, 2]]);
    assert_eq!((w.node.as_str(), w.status), ("node-a", WorkloadStatus::Healthy as i32));
}
