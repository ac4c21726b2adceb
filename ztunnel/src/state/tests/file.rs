//! The YAML state file and its watcher.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use super::support::{id, ip};
use crate::state::file::{self, DocError, FileError, WatchStatus};
use crate::state::{Action, ConnInfo, NetworkMode, Reason, Scope, State, StateConfig, StateHandle, TunnelProtocol};

/// The example from the module docs, kept in step with it.
const EXAMPLE: &str = r#"
workloads:
- name: productpage-v1
  namespace: default
  serviceAccount: bookinfo
  trustDomain: cluster.local
  addresses: ["10.0.1.2"]
  node: node-a
  network: ""
  protocol: HBONE
  workloadType: DEPLOYMENT
  canonicalName: productpage
  services:
    default/productpage.default.svc.cluster.local: {9080: 9080}
  authorizationPolicies: [default/productpage-viewer]
  waypoint: {hostname: {namespace: default, hostname: waypoint.default.svc.cluster.local}, hboneMtlsPort: 15008}
  status: HEALTHY
- name: ratings-v1
  namespace: default
  uid: ratings-uid
  addresses: ["10.0.1.3"]
  status: UNHEALTHY
services:
- name: productpage
  namespace: default
  hostname: productpage.default.svc.cluster.local
  addresses: ["10.96.0.10", {network: "", address: "fd00::10"}]
  ports: [{servicePort: 9080, targetPort: 9080}]
  subjectAltNames: []
  waypoint: {address: "10.0.9.9"}
policies:
- name: productpage-viewer
  namespace: default
  scope: WORKLOAD_SELECTOR
  action: ALLOW
  dryRun: false
  groups:
  - rules:
    - matches:
      - principals: [{exact: cluster.local/ns/default/sa/bookinfo-gateway}, {presence: {}}]
        notNamespaces: [{prefix: test-}]
        sourceIps: ["10.0.0.0/8", "fd00::1"]
        destinationPorts: [9080]
        serviceAccounts: [{namespace: default, serviceAccount: bookinfo}]
"#;

fn parse(text: &str) -> Result<State, DocError> {
    file::parse(text, StateConfig::default())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn example_parses_into_the_model() {
    let s = parse(EXAMPLE).unwrap();
    assert_eq!(s.counts().to_string(), "2 workloads, 1 services, 1 policies");
    let pp = s.workload_by_ip(ip("10.0.1.2")).unwrap();
    assert_eq!(pp.uid, "Kubernetes//Pod/default/productpage-v1");
    assert_eq!(pp.identity().as_str(), "spiffe://cluster.local/ns/default/sa/bookinfo");
    assert_eq!(pp.protocol, TunnelProtocol::Hbone);
    assert_eq!(pp.waypoint.as_ref().unwrap().hbone_mtls_port, 15008);
    let ratings = s.workload_by_uid("ratings-uid").unwrap();
    assert!(!ratings.healthy);
    assert_eq!((ratings.protocol, ratings.service_account()), (TunnelProtocol::None, "default"));
    let svc = s.service_by_vip(ip("fd00::10")).unwrap();
    assert_eq!(s.pick_endpoint(svc, 9080).unwrap().workload.uid, pp.uid);
    let p = s.policy_by_key("default/productpage-viewer").unwrap();
    assert_eq!((p.scope, p.action), (Scope::WorkloadSelector, Action::Allow));
    assert_eq!(p.groups[0].rules[0].matches[0].source_ips[1].to_string(), "fd00::1/128");

    // And the policy does what it says.
    fn c<'a>(
        src: Option<&'a hbone::Identity>,
        dst: &'a crate::state::Workload,
        src_ip: &str,
        port: u16,
    ) -> ConnInfo<'a> {
        ConnInfo { src_identity: src, src_ip: ip(src_ip), dst_workload: dst, dst_ip: ip("10.0.1.2"), dst_port: port }
    }
    let bookinfo = id("default", "bookinfo");
    assert_eq!(s.authorize(&c(Some(&bookinfo), pp, "10.0.0.7", 9080)).reason, Reason::AllowedByPolicy);
    assert!(!s.authorize(&c(Some(&bookinfo), pp, "192.168.0.7", 9080)).allowed);
    assert!(!s.authorize(&c(Some(&bookinfo), pp, "10.0.0.7", 9081)).allowed);
    assert!(!s.authorize(&c(Some(&id("test-x", "bookinfo")), pp, "10.0.0.7", 9080)).allowed);
    assert!(!s.authorize(&c(None, pp, "10.0.0.7", 9080)).allowed);
}

#[test]
fn bad_files_say_which_item_and_field() {
    let typo = "workloads:\n- {name: a, namespace: default}\n- {name: b, namespace: default}\n\
                - name: productpage-v1\n  namespace: default\n  serviceAcount: bookinfo\n";
    let e = err(typo);
    assert!(e.starts_with("workloads[2] (default/productpage-v1): unknown field `serviceAcount`"), "{e}");
    assert!(e.contains("line 6"), "{e}");

    let e = err("workloads:\n- name: a\n  namespace: default\n  addresses: [\"10.0.0.1\", \"10.0.0.999\"]\n");
    assert!(e.starts_with("workloads[0] (default/a): addresses[1]: invalid IP address"), "{e}");
    let e = err("services:\n- {name: s, namespace: n, hostname: h, addresses: [\"nope\"]}\n");
    assert!(e.starts_with("services[0] (n/s): addresses[0]: invalid IP address \"nope\""), "{e}");
    let pol = |m: &str| {
        format!(
            "policies:\n- name: p\n  namespace: n\n  scope: NAMESPACE\n  action: DENY\n  groups: [{{rules: [{{matches: [{m}]}}]}}]\n"
        )
    };
    let e = err(&pol("{sourceIps: [\"10.0.0.0/33\"]}"));
    assert!(
        e.starts_with("policies[0] (n/p): groups[0].rules[0].matches[0].sourceIps[0]: invalid CIDR \"10.0.0.0/33\""),
        "{e}"
    );
    let e = err(&pol("{principals: [{exact: a, prefix: b}]}"));
    assert!(e.contains("principals[0]: a string match needs exactly one of"), "{e}");
    let e = err(&pol("{paths: [\"/admin\"]}"));
    assert!(e.starts_with("policies[0] (n/p): groups[0].rules[0].matches[0]: unknown field `paths`"), "{e}");
    let e = err(&pol("{destinationPorts: [70000]}"));
    assert_eq!(
        e,
        "policies[0] (n/p): authorization n/p: field `groups[0].rules[0].matches[0].destinationPorts[0]`: port 70000 is out of range 1-65535"
    );
    let e = err("policies:\n- {name: p, namespace: n, action: ALLOW}\n");
    assert!(e.starts_with("policies[0] (n/p): missing field `scope`"), "{e}");
    let e = err("policies:\n- {name: p, namespace: n, scope: NAMESPACE, action: AUDIT}\n");
    assert!(e.starts_with("policies[0] (n/p): action: unknown variant `AUDIT`"), "{e}");
    let e = err("workloads:\n- {name: a, namespace: default, serviceAccount: \"x/y\"}\n");
    assert!(e.starts_with("workloads[0] (default/a): workload default/a: field `serviceAccount`"), "{e}");
    let e = err(
        "services:\n- {name: s, namespace: n, hostname: h, waypoint: {address: \"10.0.0.1\", hostname: {namespace: a, hostname: b}}}\n",
    );
    assert!(e.contains("waypoint: a waypoint needs exactly one of"), "{e}");
    let e = err("workload: []\n");
    assert!(e.starts_with("unknown field `workload`, expected one of `workloads`, `services`, `policies`"), "{e}");
    let e = err("workloads:\n- {name: a, namespace: default}\n- {name: a, namespace: default}\n");
    assert_eq!(e, "duplicate workload uid \"Kubernetes//Pod/default/a\"");
    assert!(matches!(parse("workloads: [\n"), Err(DocError::Syntax { .. })));
    assert_eq!(parse("").unwrap().counts().workloads, 0);
    assert_eq!(parse("# nothing yet\n").unwrap().counts().workloads, 0);
}

#[test]
fn host_network_workloads_from_the_file() {
    // Two host-network pods of one node share its address: no conflict, neither is found by
    // it, and the one behind a service is still its endpoint.
    let text = r#"
workloads:
- name: node-exporter-abc
  namespace: monitoring
  addresses: ["10.1.0.1"]
  networkMode: HOST_NETWORK
  services: {"monitoring/exporter.monitoring.svc.cluster.local": {9100: 9100}}
- name: kube-proxy-abc
  namespace: kube-system
  addresses: ["10.1.0.1"]
  networkMode: HOST_NETWORK
- name: web
  namespace: default
  addresses: ["10.0.0.2"]
  networkMode: STANDARD
services:
- name: exporter
  namespace: monitoring
  hostname: exporter.monitoring.svc.cluster.local
  addresses: ["10.96.0.20"]
  ports: [{servicePort: 9100, targetPort: 9100}]
"#;
    let s = parse(text).unwrap();
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    assert!(s.workload_by_ip(ip("10.1.0.1")).is_none());
    let exporter = s.workload_by_uid("Kubernetes//Pod/monitoring/node-exporter-abc").unwrap();
    assert_eq!(exporter.network_mode, NetworkMode::HostNetwork);
    assert!(!s.workload_by_ip(ip("10.0.0.2")).unwrap().host_network());
    let svc = s.service_by_vip(ip("10.96.0.20")).unwrap();
    assert_eq!(s.pick_endpoint(svc, 9100).unwrap().workload.uid, exporter.uid);

    let e = err("workloads:\n- {name: a, namespace: default, networkMode: HOST}\n");
    assert!(e.starts_with("workloads[0] (default/a): networkMode: unknown variant `HOST`"), "{e}");
    let e = err("workloads:\n- {name: a, namespace: default, networkMode: HOST_NETWORK, protocol: HBONE}\n");
    assert!(e.contains("field `tunnelProtocol`: HBONE for a host-network workload is not supported"), "{e}");
}

/// A directory under the system temp dir, removed on drop (also when the test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let p = std::env::temp_dir().join(format!("{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits (at most 10 s) until the watcher's status satisfies `f`.
async fn wait_for(
    rx: &mut watch::Receiver<WatchStatus>,
    what: &str,
    f: impl FnMut(&WatchStatus) -> bool,
) -> WatchStatus {
    let got = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(f)).await.map(|r| r.map(|s| s.clone()));
    match got {
        Ok(Ok(s)) => s,
        _ => panic!("timed out waiting for {what}; status {:?}", *rx.borrow()),
    }
}

#[test]
fn load_reads_a_file_and_reports_its_path() {
    let dir = TempDir::new("state-file-load");
    let path = dir.0.join("mesh.yaml");
    std::fs::write(&path, EXAMPLE).unwrap();
    assert_eq!(file::load(&path).unwrap().counts().workloads, 2);
    std::fs::write(&path, "services: 3\n").unwrap();
    let e = file::load(&path).unwrap_err();
    assert!(matches!(e, FileError::Invalid { .. }));
    assert!(e.to_string().starts_with(&format!("state file {}: services: invalid type", path.display())), "{e}");
    let e = file::load(dir.0.join("missing.yaml")).unwrap_err();
    assert!(matches!(e, FileError::Read { .. }), "{e}");
}

#[tokio::test]
async fn watcher_reloads_and_keeps_the_last_good_state() {
    let dir = TempDir::new("state-file-watch");
    let path = dir.0.join("mesh.yaml");
    let one = "workloads:\n- {name: a, namespace: default, addresses: [\"10.0.0.1\"]}\n";
    let two = "workloads:\n- {name: a, namespace: default, addresses: [\"10.0.0.1\"]}\n\
               - {name: b, namespace: default, addresses: [\"10.0.0.2\"]}\n";
    std::fs::write(&path, one).unwrap();
    let handle = StateHandle::default();
    let (mut rx, task) = file::watch(&path, handle.clone(), StateConfig::default());
    let task = tokio::spawn(task);
    // Aborts the watcher even if an assertion below fails.
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _abort = Abort(task);

    let s = wait_for(&mut rx, "first load", |s| s.loads == 1).await;
    assert_eq!(s.version, Some(1));
    assert!(handle.load().workload_by_ip(ip("10.0.0.1")).is_some());

    // A bad edit: reported, the good state stays.
    std::fs::write(&path, "workloads:\n- {name: a, namespace: default, addresses: [\"10.0.0.1000\"]}\n").unwrap();
    let s = wait_for(&mut rx, "failure", |s| s.failures == 1).await;
    let e = s.last_error.as_ref().unwrap().to_string();
    assert!(e.contains("workloads[0] (default/a): addresses[0]: invalid IP address"), "{e}");
    assert_eq!(handle.version(), 1);
    assert!(handle.load().workload_by_ip(ip("10.0.0.1")).is_some());

    // Fixed: the new content is served and the error cleared.
    std::fs::write(&path, two).unwrap();
    let s = wait_for(&mut rx, "reload", |s| s.loads == 2).await;
    assert!(s.last_error.is_none());
    assert_eq!(handle.version(), 2);
    assert!(handle.load().workload_by_ip(ip("10.0.0.2")).is_some());

    // Removed: reported once, state kept; restored with the same content: loaded again.
    std::fs::remove_file(&path).unwrap();
    let s = wait_for(&mut rx, "read failure", |s| s.failures == 2).await;
    assert!(matches!(s.last_error.as_deref(), Some(FileError::Read { .. })));
    assert_eq!(handle.load().counts().workloads, 2);
    std::fs::write(&path, two).unwrap();
    wait_for(&mut rx, "reload after restore", |s| s.loads == 3).await;
    // Unchanged content is not reloaded.
    tokio::time::sleep(file::POLL_INTERVAL * 3).await;
    assert_eq!(rx.borrow().loads, 3);
    assert_eq!(rx.borrow().failures, 2);
}
