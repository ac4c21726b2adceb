//! The node agent end to end: the real `ztunnel-cni` binary reports a pod,
//! the agent decides from Kubernetes YAML, installs the redirection in the
//! pod's namespace and hands the namespace to a ZDS client (`run_client`)
//! that binds ztunnel's outbound listener in it; then CHECK, agent restart
//! with re-adoption, and DEL; and the namespaces the agent must never
//! redirect (the node's own). Needs root.

mod support;

use support::{Task, TempDir};

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::istio::workload::zds::WorkloadInfo;
use tokio::sync::mpsc;
use ztunnel::agent::redirect;
use ztunnel::agent::{Agent, AgentConfig, EnrollmentSource};
use ztunnel::inpod::{PodHandler, run_client};
use ztunnel::netns::{Netns, NetnsId, ScratchNetns};
use ztunnel::socket::original_dst;

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq)]
enum Seen {
    Add { uid: String, name: String, namespace: String, service_account: String, netns: NetnsId },
    Del(String),
    Snapshot(HashSet<String>),
}

/// Plays ztunnel: records calls and binds the outbound listener in each pod.
struct FakeZtunnel {
    tx: mpsc::UnboundedSender<Seen>,
    listeners: Mutex<Vec<(String, TcpListener)>>,
}

impl PodHandler for FakeZtunnel {
    async fn add(&self, uid: String, info: Option<WorkloadInfo>, netns: Netns) -> Result<(), String> {
        let info = info.unwrap_or_default();
        let seen = Seen::Add {
            uid: uid.clone(),
            name: info.name,
            namespace: info.namespace,
            service_account: info.service_account,
            netns: netns.id(),
        };
        // A pod already served (replayed after a reconnect) keeps its listener.
        if self.listeners.lock().unwrap().iter().any(|(u, _)| u == &uid) {
            self.tx.send(seen).unwrap();
            return Ok(());
        }
        let listener = netns
            .run(|| TcpListener::bind(("0.0.0.0", redirect::OUTBOUND_PORT)))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        self.listeners.lock().unwrap().push((uid, listener));
        self.tx.send(seen).unwrap();
        Ok(())
    }

    async fn del(&self, uid: &str) {
        self.listeners.lock().unwrap().retain(|(u, _)| u != uid);
        self.tx.send(Seen::Del(uid.to_owned())).unwrap();
    }

    async fn snapshot_done(&self, uids: HashSet<String>) {
        self.listeners.lock().unwrap().retain(|(u, _)| uids.contains(u));
        self.tx.send(Seen::Snapshot(uids)).unwrap();
    }
}

const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: mesh
spec:
  serviceAccountName: web-sa
---
apiVersion: v1
kind: Pod
metadata:
  name: legacy
  namespace: mesh
  labels:
    istio.io/dataplane-mode: none
";

async fn cni(command: &str, container: &str, netns: &str, pod: &str, uid: &str, socket: &Path) -> Output {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "pods", "type": "ztunnel-cni", "agentSocket": socket,
        "prevResult": {"cniVersion": "1.0.0", "ips": []}
    });
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", format!("K8S_POD_NAMESPACE=mesh;K8S_POD_NAME={pod};K8S_POD_UID={uid}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, conf.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(WAIT * 2, child.wait_with_output()).await.expect("plugin finishes").unwrap()
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("ztunnel hears in time").unwrap()
}

fn scratch(test: &str) -> ScratchNetns {
    ScratchNetns::create(&format!("{test}-{}-{}", std::process::id(), rand::random::<u16>())).unwrap()
}

/// Gives a scratch pod an interface and a default route so that it can try
/// to reach the outside.
fn wire(pod: &ScratchNetns) {
    // No dummy driver everywhere: a veth pair with both ends in the pod.
    pod.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]).unwrap();
    pod.ip(&["addr", "add", "10.9.0.2/24", "dev", "d0"]).unwrap();
    pod.ip(&["link", "set", "d1", "up"]).unwrap();
    pod.ip(&["link", "set", "d0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "dev", "d0"]).unwrap();
}

/// Connects from inside the pod to an outside address; returns where the
/// fake ztunnel's listener for `uid` says it was going.
fn captured(z: &FakeZtunnel, uid: &str, pod: &Netns) -> Option<SocketAddr> {
    let target: SocketAddr = "10.9.9.9:80".parse().unwrap();
    let _conn = pod.run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2))).unwrap().ok()?;
    let listeners = z.listeners.lock().unwrap();
    let (_, l) = listeners.iter().find(|(u, _)| u == uid)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match l.accept() {
            Ok((s, _)) => return original_dst(&s).ok(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_enrolls_pod_and_hands_it_to_ztunnel() {
    let dir = TempDir(std::env::temp_dir().join(format!("agent-e2e-{}-{}", std::process::id(), rand::random::<u32>())));
    std::fs::create_dir_all(dir.0.join("cluster")).unwrap();
    std::fs::File::create(dir.0.join("cluster/pods.yaml")).unwrap().write_all(CLUSTER.as_bytes()).unwrap();
    let config = AgentConfig { zds_timeout_ms: 5000, ..files_config(&dir) };
    let agent = Agent::start(config.clone()).await.unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let ztunnel = Arc::new(FakeZtunnel { tx, listeners: Mutex::default() });
    let _client = Task(tokio::spawn(run_client(config.zds_socket.clone(), ztunnel.clone())));
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::new()));

    let web = scratch("e2e-web");
    wire(&web);
    let out = cni("ADD", "sandbox-web", &web.path(), "web", "uid-web", &config.cni_socket).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        next(&mut rx).await,
        Seen::Add {
            uid: "uid-web".into(),
            name: "web".into(),
            namespace: "mesh".into(),
            service_account: "web-sa".into(),
            netns: web.netns().id(),
        }
    );
    assert!(redirect::installed(web.netns()).unwrap());
    // The namespace ztunnel received is the pod's: its listener there gets
    // the pod's outbound connection, with the original destination.
    let z = ztunnel.clone();
    let web_ns = web.netns().try_clone().unwrap();
    let dst = tokio::task::spawn_blocking(move || captured(&z, "uid-web", &web_ns)).await.unwrap();
    assert_eq!(dst, Some("10.9.9.9:80".parse().unwrap()));

    let out = cni("CHECK", "sandbox-web", &web.path(), "web", "uid-web", &config.cni_socket).await;
    assert!(out.status.success(), "{out:?}");

    // An opted-out pod: ADD succeeds, nothing is installed or handed over.
    let legacy = scratch("e2e-legacy");
    let out = cni("ADD", "sandbox-legacy", &legacy.path(), "legacy", "uid-legacy", &config.cni_socket).await;
    assert!(out.status.success(), "{out:?}");
    assert!(!redirect::installed(legacy.netns()).unwrap());

    // The agent restarts: the new one re-adopts the recorded pod, and the
    // reconnecting ztunnel gets it in the snapshot.
    agent.shutdown().await;
    drop(agent);
    let agent = Agent::start(config.clone()).await.unwrap();
    assert_eq!(agent.zds().pods().await, vec!["uid-web".to_owned()]);
    let seen = next(&mut rx).await;
    assert!(matches!(&seen, Seen::Add { uid, .. } if uid == "uid-web"), "{seen:?}");
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::from(["uid-web".to_owned()])));
    assert!(redirect::installed(web.netns()).unwrap());
    let (z, web_ns) = (ztunnel.clone(), web.netns().try_clone().unwrap());
    let dst = tokio::task::spawn_blocking(move || captured(&z, "uid-web", &web_ns)).await.unwrap();
    assert_eq!(dst, Some("10.9.9.9:80".parse().unwrap()), "capture still works after the agent restart");

    // DEL: ztunnel is told, the rules go, the record goes.
    let out = cni("DEL", "sandbox-web", &web.path(), "web", "uid-web", &config.cni_socket).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(next(&mut rx).await, Seen::Del("uid-web".into()));
    assert!(!redirect::installed(web.netns()).unwrap());
    assert!(agent.zds().pods().await.is_empty());
    assert_eq!(std::fs::read_dir(config.state_dir.join("pods")).unwrap().count(), 0);
    agent.shutdown().await;
}

#[tokio::test]
async fn agent_survives_garbage_and_refuses_on_broken_enrollment() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir(std::env::temp_dir().join(format!("agent-bad-{}-{}", std::process::id(), rand::random::<u32>())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let enrollment = dir.0.join("cluster.yaml");
    std::fs::write(&enrollment, "kind: Namespace\nmetadata:\n  name: mesh\n  labels: [not, a, map]\n").unwrap();
    let config = AgentConfig { enrollment, ..files_config(&dir) };
    let agent = Agent::start(config.clone()).await.unwrap();
    let sock = config.cni_socket.clone();
    let exchange = move |bytes: Vec<u8>| {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(&bytes).unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            serde_json::from_str::<serde_json::Value>(&line).unwrap()
        })
    };
    let reply = exchange(b"{\"command\": 42}\n".to_vec()).await.unwrap();
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("malformed CNI event"), "{reply}");
    let mut huge = vec![b'x'; 70 * 1024];
    huge.push(b'\n');
    let reply = exchange(huge).await.unwrap();
    assert!(reply["error"].as_str().unwrap().contains("longer than"), "{reply}");

    // Enrollment cannot be decided: the pod is refused, naming file and field.
    let pod = scratch("e2e-bad");
    let out = cni("ADD", "sandbox-bad", &pod.path(), "web", "uid-bad", &config.cni_socket).await;
    assert!(!out.status.success());
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("cluster.yaml") && msg.contains("labels"), "{msg}");
    assert!(!redirect::installed(pod.netns()).unwrap());
    agent.shutdown().await;
}

/// An agent on the Files source of `dir/cluster` (holding [`CLUSTER`]) whose node namespace
/// (`--host-netns`) is `node`.
fn node_config(dir: &TempDir, node: &ScratchNetns, probe_snat: bool) -> AgentConfig {
    std::fs::create_dir_all(dir.0.join("cluster")).unwrap();
    std::fs::write(dir.0.join("cluster/pods.yaml"), CLUSTER).unwrap();
    AgentConfig { no_probe_snat: !probe_snat, host_netns: Some(node.path().into()), ..files_config(dir) }
}

/// An agent of the file source with its sockets, enrollment YAML (`cluster/`) and state under
/// `dir`: no DNS capture, no probe table, a 1 s ZDS timeout.
fn files_config(dir: &TempDir) -> AgentConfig {
    AgentConfig {
        zds_socket: dir.0.join("ztunnel.sock"),
        cni_socket: dir.0.join("cni.sock"),
        enrollment: dir.0.join("cluster"),
        state_dir: dir.0.join("state"),
        capture_dns: false,
        zds_timeout_ms: 1000,
        enrollment_source: EnrollmentSource::Files,
        node_name: None,
        kubeconfig: None,
        no_probe_snat: true,
        host_netns: None,
    }
}

/// Rule: the agent never installs a pod redirection (all outbound TCP to 15001) or probe
/// addresses in the node's own network namespace, e.g. for a CNI ADD whose CNI_NETNS is the
/// node's. Istio never redirects a host-network pod (cni/pkg/util/podutil.go
/// `PodRedirectionEnabled`). A scratch namespace stands in for the node (`--host-netns`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_with_the_node_netns_is_refused() {
    let node = scratch("e2e-node");
    let dir = TempDir::new("agent-node");
    let config = node_config(&dir, &node, true);
    let agent = Agent::start(config.clone()).await.unwrap();
    let out = cni("ADD", "sandbox-node", &node.path(), "web", "uid-node", &config.cni_socket).await;
    let installed = redirect::installed(node.netns()).unwrap();
    let enrolled = agent.zds().pods().await;
    // Undo whatever the agent did (the namespace goes with `node` anyway).
    let _ = cni("DEL", "sandbox-node", &node.path(), "web", "uid-node", &config.cni_socket).await;
    agent.shutdown().await;
    assert!(!out.status.success(), "ADD of a pod whose netns is the node's is refused: {out:?}");
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(err["msg"].as_str().unwrap().contains("node's own"), "{err}");
    assert!(!installed, "no pod redirection in the node's namespace");
    assert!(enrolled.is_empty(), "nothing handed to ztunnel: {enrolled:?}");
}

/// Rule: a restarted agent re-adopts a recorded pod only in the namespace it was enrolled in.
/// Records keep the path (`/proc/<pid>/ns/net` may since name another process's namespace) and
/// the namespace id: a record whose path now opens another namespace is dropped, not adopted.
/// Records written before ids were kept (no `netnsId`) still load; for them only the node's
/// own namespace is refused (see `cni_add_with_the_node_netns_is_refused`), and an adopted one
/// gets its id recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_records_only_in_their_own_netns() {
    let node = scratch("e2e-rnode");
    let kept = scratch("e2e-kept");
    let moved_to = scratch("e2e-moved");
    let dir = TempDir::new("agent-restore");
    let config = node_config(&dir, &node, false);
    let records = dir.0.join("state/pods");
    std::fs::create_dir_all(&records).unwrap();
    let record = |id: &str, path: String, netns_id: Option<NetnsId>| {
        let mut r = serde_json::json!({
            "containerId": id, "uid": format!("uid-{id}"), "netns": path,
            "name": "web", "namespace": "mesh", "serviceAccount": "web-sa",
        });
        if let Some(n) = netns_id {
            r["netnsId"] = serde_json::json!({"dev": n.dev, "ino": n.ino});
        }
        std::fs::write(records.join(format!("{id}.json")), r.to_string()).unwrap();
    };
    // Enrolled in `kept`'s namespace, but its path now opens another one.
    record("moved", moved_to.path(), Some(kept.netns().id()));
    // An old record (no id) whose path is the node's.
    record("node", node.path(), None);
    // An old record (no id) of a pod still there.
    record("kept", kept.path(), None);

    let agent = Agent::start(config.clone()).await.unwrap();
    let enrolled = agent.zds().pods().await;
    let moved_redirected = redirect::installed(moved_to.netns()).unwrap();
    let node_redirected = redirect::installed(node.netns()).unwrap();
    let kept_redirected = redirect::installed(kept.netns()).unwrap();
    let mut left: Vec<String> =
        std::fs::read_dir(&records).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    let pinned = std::fs::read(records.join("kept.json")).ok().and_then(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
        Some((v["netnsId"]["dev"].as_u64()?, v["netnsId"]["ino"].as_u64()?))
    });
    for (id, ns) in [("moved", &moved_to), ("node", &node), ("kept", &kept)] {
        let _ = cni("DEL", id, &ns.path(), "web", &format!("uid-{id}"), &config.cni_socket).await;
    }
    agent.shutdown().await;

    assert_eq!(enrolled, vec!["uid-kept".to_owned()]);
    assert!(!moved_redirected, "a record whose path now opens another namespace is not adopted");
    assert!(!node_redirected, "the node's namespace is never adopted");
    assert!(kept_redirected, "an old record of a pod still there is adopted");
    assert_eq!(left, vec!["kept.json".to_owned()], "dropped records are deleted");
    let id = kept.netns().id();
    assert_eq!(pinned, Some((id.dev, id.ino)), "the adopted old record now carries its namespace id");
}

/// Pods of namespace `mesh` (enrolled by [`CLUSTER`]'s namespace label) with and without the
/// annotation `ambient.istio.io/dns-capture`.
const DNS_PODS: &str = r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: quiet
  namespace: mesh
  annotations:
    ambient.istio.io/dns-capture: "false"
---
apiVersion: v1
kind: Pod
metadata:
  name: chatty
  namespace: mesh
  annotations:
    ambient.istio.io/dns-capture: "true"
---
apiVersion: v1
kind: Pod
metadata:
  name: odd
  namespace: mesh
  annotations:
    ambient.istio.io/dns-capture: "sometimes"
"#;

/// Whether the redirection in `ns` sends DNS (port 53) to ztunnel's DNS port.
fn dns_redirected(ns: &Netns) -> bool {
    let out = ns
        .run(|| std::process::Command::new("nft").args(["list", "table", "inet", redirect::TABLE]).output())
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "no redirection: {}", String::from_utf8_lossy(&out.stderr));
    let rules = String::from_utf8_lossy(&out.stdout);
    let udp = rules.contains(&format!("udp dport 53 redirect to :{}", redirect::DNS_PORT));
    let tcp = rules.contains(&format!("tcp dport 53 redirect to :{}", redirect::DNS_PORT));
    assert_eq!(udp, tcp, "UDP and TCP DNS go together: {rules}");
    udp
}

/// Rule: DNS capture is on unless turned off (`--capture-dns false`), as Istio ≥ 1.25; a pod's
/// annotation `ambient.istio.io/dns-capture: "true"|"false"` overrides that for the pod, any
/// other value is ignored (the global setting applies). The decision is made at enrollment and
/// recorded: a restarted agent re-installs the same rules whatever its own setting, and a record
/// from before the decision was kept gets the global setting at restore time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_capture_is_on_by_default_and_the_pod_annotation_overrides_it() {
    use ztunnel::cni::{CniCommand, CniEvent};
    let dir = TempDir::new("agent-dns");
    std::fs::create_dir_all(dir.0.join("cluster")).unwrap();
    std::fs::write(dir.0.join("cluster/pods.yaml"), format!("{CLUSTER}{DNS_PODS}")).unwrap();
    let mut config = AgentConfig { capture_dns: true, ..files_config(&dir) };
    let add = |container: &str, ns: &ScratchNetns, pod: &str| CniEvent {
        command: CniCommand::Add,
        container_id: container.into(),
        netns: ns.path(),
        ifname: "eth0".into(),
        pod_namespace: Some("mesh".into()),
        pod_name: Some(pod.into()),
        pod_uid: None,
    };
    let record = |container: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.0.join(format!("state/pods/{container}.json"))).unwrap()).unwrap()
    };

    // Global on.
    let agent = Agent::start(config.clone()).await.unwrap();
    let pods: Vec<(&str, ScratchNetns)> =
        ["web", "quiet", "chatty", "odd"].into_iter().map(|p| (p, scratch(&format!("dns-{p}")))).collect();
    for (pod, ns) in &pods {
        let reply = agent.handle(add(&format!("c-{pod}"), ns, pod)).await;
        assert!(reply.ok && reply.enrolled, "{pod}: {reply:?}");
    }
    let dns = |pod: &str| dns_redirected(pods.iter().find(|(p, _)| *p == pod).unwrap().1.netns());
    assert!(dns("web"), "no annotation: the global setting (on)");
    assert!(!dns("quiet"), "\"false\" turns it off for the pod");
    assert!(dns("chatty"));
    assert!(dns("odd"), "a value that is neither true nor false is ignored");
    assert_eq!(record("c-web")["captureDns"], true);
    assert_eq!(record("c-quiet")["captureDns"], false);
    agent.shutdown().await;
    drop(agent);

    // An old record (no DNS decision) of a pod enrolled by an older agent.
    let old = scratch("dns-old");
    let old_record = serde_json::json!({
        "containerId": "c-old", "uid": "uid-old", "netns": old.path(),
        "name": "web", "namespace": "mesh", "serviceAccount": "web-sa",
    });
    std::fs::write(dir.0.join("state/pods/c-old.json"), old_record.to_string()).unwrap();

    // Global off: the restored pods keep their rules; new pods follow the new setting.
    config.capture_dns = false;
    let agent = Agent::start(config.clone()).await.unwrap();
    assert!(dns("web") && !dns("quiet") && dns("chatty") && dns("odd"), "restored pods keep their decision");
    assert!(!dns_redirected(old.netns()), "an old record gets the global setting at restore time");
    assert_eq!(record("c-old")["captureDns"], false, "and keeps it from then on");
    let (late, late_chatty) = (scratch("dns-late"), scratch("dns-late-chatty"));
    for (c, ns, pod) in [("c-late", &late, "web"), ("c-late-chatty", &late_chatty, "chatty")] {
        let reply = agent.handle(add(c, ns, pod)).await;
        assert!(reply.ok && reply.enrolled, "{pod}: {reply:?}");
    }
    assert!(!dns_redirected(late.netns()), "no annotation: the global setting (off)");
    assert!(dns_redirected(late_chatty.netns()), "\"true\" turns it on for the pod");
    agent.shutdown().await;
}
