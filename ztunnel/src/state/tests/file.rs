//! The YAML state file and its watcher.

use std::time::Duration;

use tokio::sync::watch;

use super::support::{id, ip};
use crate::state::file::{self, DocError, FileError, WatchStatus};
use crate::state::{
    Action, ConnInfo, LoadBalancing, LoadBalancingMode, Locality, LocalityScope, NetworkMode, Reason, Scope, State,
    StateConfig, StateHandle, TunnelProtocol,
};
use crate::test_dir::TempDir;

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
  locality: {region: us-east1, zone: us-east1-b, subzone: ""}
  capacity: 2
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
  loadBalancing:
    mode: FAILOVER
    routingPreference: [NETWORK, REGION, ZONE, SUBZONE]
    healthPolicy: ONLY_HEALTHY
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
    assert_eq!(pp.locality, locality("us-east1", "us-east1-b", ""));
    assert_eq!(pp.capacity, 2);
    let ratings = s.workload_by_uid("ratings-uid").unwrap();
    assert!(!ratings.healthy);
    assert_eq!((ratings.protocol, ratings.service_account()), (TunnelProtocol::None, "default"));
    assert_eq!((&ratings.locality, ratings.capacity), (&Locality::default(), 1));
    let svc = s.service_by_vip(ip("fd00::10")).unwrap();
    use LocalityScope::*;
    let lb = LoadBalancing {
        mode: LoadBalancingMode::Failover,
        routing_preference: vec![Network, Region, Zone, Subzone],
        allow_unhealthy: false,
    };
    assert_eq!(svc.load_balancing, lb);
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

fn locality(region: &str, zone: &str, subzone: &str) -> Locality {
    Locality { region: region.into(), zone: zone.into(), subzone: subzone.into() }
}

#[test]
fn locality_capacity_and_load_balancing_from_the_file() {
    let text = r#"
workloads:
- {name: a, namespace: default, locality: {region: r1, zone: z1, subzone: s1}, capacity: 5}
- {name: b, namespace: default, locality: {zone: z2}, capacity: 0}
- {name: c, namespace: default}
services:
- {name: s1, namespace: default, hostname: s1.default.svc.cluster.local,
   loadBalancing: {mode: STRICT, routingPreference: [NODE, CLUSTER], healthPolicy: ALLOW_ALL}}
- {name: s2, namespace: default, hostname: s2.default.svc.cluster.local, loadBalancing: {mode: PASSTHROUGH}}
- {name: s3, namespace: default, hostname: s3.default.svc.cluster.local,
   loadBalancing: {mode: UNSPECIFIED_MODE, routingPreference: [REGION]}}
- {name: s4, namespace: default, hostname: s4.default.svc.cluster.local, loadBalancing: {}}
- {name: s5, namespace: default, hostname: s5.default.svc.cluster.local}
"#;
    let s = parse(text).unwrap();
    let w = |name: &str| s.workload_by_uid(&format!("Kubernetes//Pod/default/{name}")).unwrap();
    assert_eq!((&w("a").locality, w("a").capacity), (&locality("r1", "z1", "s1"), 5));
    // Capacity as from xDS: an explicit 0 takes no connections; absent is the default, 1.
    assert_eq!((&w("b").locality, w("b").capacity), (&locality("", "z2", ""), 0));
    assert_eq!((&w("c").locality, w("c").capacity), (&Locality::default(), 1));
    let lb = |name: &str| s.services().find(|svc| svc.name == name).unwrap().load_balancing.clone();
    let want = LoadBalancing {
        mode: LoadBalancingMode::Strict,
        routing_preference: vec![LocalityScope::Node, LocalityScope::Cluster],
        allow_unhealthy: true,
    };
    assert_eq!(lb("s1"), want);
    assert_eq!(lb("s2").mode, LoadBalancingMode::Passthrough);
    let want = LoadBalancing { routing_preference: vec![LocalityScope::Region], ..LoadBalancing::default() };
    assert_eq!(lb("s3"), want);
    assert_eq!(lb("s4"), LoadBalancing::default());
    assert_eq!(lb("s5"), LoadBalancing::default());

    // The dump shows what the file said.
    let v = serde_json::to_value(&s).unwrap();
    let a = v["workloads"].as_array().unwrap().iter().find(|w| w["name"] == "a").unwrap();
    assert_eq!(a["locality"], serde_json::json!({"region": "r1", "zone": "z1", "subzone": "s1"}));
    assert_eq!(a["capacity"], 5);
    let s1 = v["services"].as_array().unwrap().iter().find(|s| s["name"] == "s1").unwrap();
    assert_eq!(s1["loadBalancing"]["mode"], "STRICT");
    assert_eq!(s1["loadBalancing"]["routingPreference"], serde_json::json!(["NODE", "CLUSTER"]));
}

#[test]
fn unknown_locality_and_load_balancing_values_are_errors() {
    // xDS fails closed on values it does not know (STRICT, a scope nobody shares); the file
    // refuses them, naming the item and the field.
    let svc = |lb: &str| format!("services:\n- {{name: s, namespace: n, hostname: h, loadBalancing: {lb}}}\n");
    let e = err(&svc("{mode: LOCAL}"));
    assert!(e.starts_with("services[0] (n/s): loadBalancing.mode: unknown variant `LOCAL`, expected one of"), "{e}");
    let e = err(&svc("{mode: strict}"));
    assert!(e.starts_with("services[0] (n/s): loadBalancing.mode: unknown variant `strict`"), "{e}");
    let e = err(&svc("{mode: STRICT, routingPreference: [NODE, RACK]}"));
    assert!(
        e.starts_with("services[0] (n/s): loadBalancing.routingPreference[1]: unknown variant `RACK`, expected one of"),
        "{e}"
    );
    let e = err(&svc("{mode: STRICT, routingPreference: [UNSPECIFIED_SCOPE]}"));
    assert!(e.starts_with("services[0] (n/s): loadBalancing.routingPreference[0]: unknown variant"), "{e}");
    let e = err(&svc("{healthPolicy: ALLOW_UNHEALTHY}"));
    assert!(e.starts_with("services[0] (n/s): loadBalancing.healthPolicy: unknown variant `ALLOW_UNHEALTHY`"), "{e}");
    let e = err(&svc("{mode: STRICT, routingPreferences: [NODE]}"));
    assert!(e.starts_with("services[0] (n/s): loadBalancing: unknown field `routingPreferences`"), "{e}");
    let e = err(&svc("STRICT"));
    assert!(e.starts_with("services[0] (n/s): loadBalancing: invalid type"), "{e}");

    let e = err("workloads:\n- {name: a, namespace: default, locality: {region: r, rack: x}}\n");
    assert!(e.starts_with("workloads[0] (default/a): locality: unknown field `rack`"), "{e}");
    let e = err("workloads:\n- {name: a, namespace: default, locality: \"r/z/s\"}\n");
    assert!(e.starts_with("workloads[0] (default/a): locality: invalid type"), "{e}");
    let e = err("workloads:\n- {name: a, namespace: default, capacity: -1}\n");
    assert!(e.starts_with("workloads[0] (default/a): capacity: invalid type: integer `-1`, expected u32"), "{e}");
    let e = err("workloads:\n- {name: a, namespace: default, capacity: 4294967296}\n");
    assert!(e.starts_with("workloads[0] (default/a): capacity: invalid"), "{e}");
}

/// Clients and endpoints of `default/reviews` on nodes n1 and n2, in zones z1 and z2; the
/// service's load balancing is `lb`.
fn locality_mesh(lb: &str) -> State {
    let text = format!(
        r#"
workloads:
- {{name: client-n1, namespace: default, addresses: ["10.0.0.1"], node: n1, locality: {{region: r, zone: z1}}}}
- {{name: client-n3, namespace: default, addresses: ["10.0.0.3"], node: n3, locality: {{region: r, zone: z1}}}}
- {{name: client-z3, namespace: default, addresses: ["10.0.0.4"], node: n4, locality: {{region: r, zone: z3}}}}
- name: reviews-n1
  namespace: default
  addresses: ["10.0.1.1"]
  node: n1
  locality: {{region: r, zone: z1}}
  services: {{default/reviews.default.svc.cluster.local: {{9080: 9080}}}}
- name: reviews-n2
  namespace: default
  addresses: ["10.0.1.2"]
  node: n2
  locality: {{region: r, zone: z2}}
  services: {{default/reviews.default.svc.cluster.local: {{9080: 9080}}}}
services:
- name: reviews
  namespace: default
  hostname: reviews.default.svc.cluster.local
  addresses: ["10.96.0.10"]
  ports: [{{servicePort: 9080, targetPort: 9080}}]
  loadBalancing: {lb}
"#
    );
    parse(&text).unwrap()
}

#[test]
fn strict_service_from_the_file_picks_only_a_same_node_endpoint() {
    // internalTrafficPolicy: Local, as istiod sends it: STRICT on NODE.
    let s = locality_mesh("{mode: STRICT, routingPreference: [NODE]}");
    let svc = s.service_by_vip(ip("10.96.0.10")).unwrap();
    let client = |a: &str| s.workload_by_ip(ip(a)).unwrap();
    for _ in 0..8 {
        let ep = s.pick_endpoint_for(Some(client("10.0.0.1")), svc, 9080).unwrap();
        assert_eq!((ep.workload.name.as_str(), ep.port), ("reviews-n1", 9080));
    }
    // No endpoint on the client's node, or no known client: none, never one elsewhere.
    assert!(s.pick_endpoint_for(Some(client("10.0.0.3")), svc, 9080).is_none());
    assert!(s.pick_endpoint_for(None, svc, 9080).is_none());
    assert!(s.pick_endpoint(svc, 9080).is_none());
    // The same mesh without the file's loadBalancing spreads over both nodes.
    let s = locality_mesh("{}");
    let svc = s.service_by_vip(ip("10.96.0.10")).unwrap();
    let src = s.workload_by_ip(ip("10.0.0.1")).unwrap();
    let picked: std::collections::BTreeSet<String> =
        (0..4).map(|_| s.pick_endpoint_for(Some(src), svc, 9080).unwrap().workload.name.clone()).collect();
    assert_eq!(picked.into_iter().collect::<Vec<_>>(), ["reviews-n1", "reviews-n2"]);
}

#[test]
fn failover_service_from_the_file_prefers_the_clients_zone() {
    let s = locality_mesh("{mode: FAILOVER, routingPreference: [REGION, ZONE, NODE]}");
    let svc = s.service_by_vip(ip("10.96.0.10")).unwrap();
    let pick = |a: &str| {
        let src = s.workload_by_ip(ip(a)).unwrap();
        let picked: std::collections::BTreeSet<String> =
            (0..4).map(|_| s.pick_endpoint_for(Some(src), svc, 9080).unwrap().workload.name.clone()).collect();
        picked.into_iter().collect::<Vec<_>>()
    };
    // Same zone (another node): the zone's endpoint only; no endpoint in the client's zone:
    // falls back to the region, i.e. both.
    assert_eq!(pick("10.0.0.3"), ["reviews-n1"]);
    assert_eq!(pick("10.0.0.4"), ["reviews-n1", "reviews-n2"]);
}

#[test]
fn capacity_and_health_policy_from_the_file_weigh_endpoints() {
    let text = |health: &str| {
        format!(
            r#"
workloads:
- {{name: big, namespace: default, addresses: ["10.0.1.1"], capacity: 3, services: {{default/web.default.svc.cluster.local: {{80: 8080}}}}}}
- {{name: small, namespace: default, addresses: ["10.0.1.2"], services: {{default/web.default.svc.cluster.local: {{80: 8080}}}}}}
- {{name: drained, namespace: default, addresses: ["10.0.1.3"], capacity: 0, services: {{default/web.default.svc.cluster.local: {{80: 8080}}}}}}
- {{name: sick, namespace: default, addresses: ["10.0.1.4"], status: UNHEALTHY, services: {{default/web.default.svc.cluster.local: {{80: 8080}}}}}}
services:
- {{name: web, namespace: default, hostname: web.default.svc.cluster.local, addresses: ["10.96.0.20"], ports: [{{servicePort: 80, targetPort: 8080}}], loadBalancing: {{healthPolicy: {health}}}}}
"#
        )
    };
    let count = |s: &State, laps: usize| {
        let svc = s.service_by_vip(ip("10.96.0.20")).unwrap();
        let mut n = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..laps {
            *n.entry(s.pick_endpoint(svc, 80).unwrap().workload.name.clone()).or_default() += 1;
        }
        n.into_iter().collect::<Vec<_>>()
    };
    // A lap of the cursor gives each endpoint its capacity in picks; capacity 0 gets none.
    let s = parse(&text("ONLY_HEALTHY")).unwrap();
    assert_eq!(count(&s, 8), [("big".to_owned(), 6), ("small".to_owned(), 2)]);
    let s = parse(&text("ALLOW_ALL")).unwrap();
    assert_eq!(count(&s, 10), [("big".to_owned(), 6), ("sick".to_owned(), 2), ("small".to_owned(), 2)]);
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
