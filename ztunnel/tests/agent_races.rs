//! Races between a pod's CNI events at the node agent, each driven by the real `ztunnel-cni`
//! binary through the agent's socket, with a stand-in ztunnel on ZDS and real namespaces:
//! - a late DEL of an old sandbox must not undo a newer sandbox of the same pod;
//! - a repeated ADD of a pod that has since opted out of the mesh unenrolls it;
//! - a CHECK waiting on the Kubernetes API must not hold up other pods' events, and a DEL
//!   meanwhile is noticed.
//!
//! Needs root.

mod support;

use support::fake_api::FakeApi;
use support::{Task, TempDir};

use std::collections::HashSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use proto::istio::workload::zds::WorkloadInfo;
use serde_json::json;
use tokio::sync::mpsc;
use ztunnel::agent::enroll::Source;
use ztunnel::agent::kube_enroll::KubeEnrollment;
use ztunnel::agent::redirect;
use ztunnel::agent::{Agent, AgentConfig, EnrollmentSource};
use ztunnel::inpod::{PodHandler, run_client};
use ztunnel::netns::{Netns, NetnsId, ScratchNetns};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, PartialEq)]
enum Seen {
    Add { uid: String, netns: NetnsId },
    Del(String),
    Snapshot(HashSet<String>),
}

/// Plays ztunnel: records what the agent tells it.
struct FakeZtunnel(mpsc::UnboundedSender<Seen>);

impl PodHandler for FakeZtunnel {
    async fn add(&self, uid: String, _: Option<WorkloadInfo>, netns: Netns) -> Result<(), String> {
        self.0.send(Seen::Add { uid, netns: netns.id() }).unwrap();
        Ok(())
    }

    async fn del(&self, uid: &str) {
        self.0.send(Seen::Del(uid.to_owned())).unwrap();
    }

    async fn snapshot_done(&self, uids: HashSet<String>) {
        self.0.send(Seen::Snapshot(uids)).unwrap();
    }
}

/// Connects a [`FakeZtunnel`] to the agent's ZDS socket and waits for its (empty) snapshot.
async fn ztunnel(config: &AgentConfig) -> (Task, mpsc::UnboundedReceiver<Seen>) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = Task(tokio::spawn(run_client(config.zds_socket.clone(), Arc::new(FakeZtunnel(tx)))));
    assert_eq!(next(&mut rx).await, Seen::Snapshot(HashSet::new()));
    (task, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("ztunnel hears in time").unwrap()
}

/// What ztunnel heard beyond what the test consumed. The agent answers a CNI event only
/// once every connected ztunnel has acked its ZDS change, so after the plugin returns
/// there is nothing in flight.
fn unheard(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<Seen> {
    std::iter::from_fn(|| rx.try_recv().ok()).collect()
}

/// A CNI pod event.
struct Pod<'a> {
    container: &'a str,
    netns: String,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// Runs `ztunnel-cni` for `command` as a runtime would, reporting to the agent at `socket`.
async fn cni(command: &str, pod: &Pod<'_>, socket: &Path) -> Output {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "pods", "type": "ztunnel-cni", "agentSocket": socket,
        "agentTimeoutSeconds": 20,
        "prevResult": {"cniVersion": "1.0.0", "ips": []}
    });
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ztunnel-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod.container)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}", pod.namespace, pod.name, pod.uid),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, conf.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.expect("plugin finishes").unwrap()
}

/// The plugin succeeded.
fn ok(out: &Output) -> bool {
    out.status.success()
}

/// The `msg` of the CNI error object the plugin printed.
fn cni_error(out: &Output) -> String {
    let err: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no CNI error object ({e}): {out:?}"));
    err["msg"].as_str().unwrap_or_default().to_owned()
}

fn scratch(test: &str) -> ScratchNetns {
    ScratchNetns::create(&format!("{test}-{}-{}", std::process::id(), rand::random::<u16>())).unwrap()
}

fn installed(ns: &ScratchNetns) -> bool {
    redirect::installed(ns.netns()).unwrap()
}

/// Pod records the agent keeps in its state directory.
fn records(config: &AgentConfig) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config.state_dir.join("pods"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Namespace `mesh` labelled `mesh_label` (none if empty), with pods `web` and `api`, `web`
/// labelled `web_label` (none if empty).
fn cluster(mesh_label: &str, web_label: &str) -> String {
    let labels = |v: &str| if v.is_empty() { "{}".to_owned() } else { format!("{{istio.io/dataplane-mode: {v}}}") };
    format!(
        "kind: Namespace\nmetadata: {{name: mesh, labels: {}}}\n---\n\
         kind: Pod\nmetadata: {{name: web, namespace: mesh, labels: {}}}\nspec: {{serviceAccountName: web-sa}}\n---\n\
         kind: Pod\nmetadata: {{name: api, namespace: mesh}}\nspec: {{serviceAccountName: api-sa}}\n",
        labels(mesh_label),
        labels(web_label)
    )
}

/// Rule: a CNI DEL undoes only the sandbox it names (CNI keys an attachment by its container
/// id). When a pod's sandbox is replaced (same pod uid, new container id and netns), the old
/// sandbox's DEL can come after the new one's ADD: it must leave the new sandbox redirected and
/// known to ztunnel, which serves a pod by its uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_del_of_an_old_sandbox_keeps_the_new_one_enrolled() {
    let dir = TempDir::new("races-del");
    let config = support::files_agent(&dir, &cluster("ambient", ""));
    let agent = Agent::start(config.clone()).await.unwrap();
    let (_client, mut rx) = ztunnel(&config).await;
    let (old_ns, new_ns) = (scratch("races-old"), scratch("races-new"));
    let sandbox = |container, ns: &ScratchNetns| Pod {
        container,
        netns: ns.path(),
        namespace: "mesh",
        name: "web",
        uid: "uid-web",
    };
    let (old, new) = (sandbox("sandbox-old", &old_ns), sandbox("sandbox-new", &new_ns));

    let out = cni("ADD", &old, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(next(&mut rx).await, Seen::Add { uid: "uid-web".into(), netns: old_ns.netns().id() });
    let out = cni("ADD", &new, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(next(&mut rx).await, Seen::Add { uid: "uid-web".into(), netns: new_ns.netns().id() });

    // The old sandbox's DEL, late; runtimes may send it without a netns once the sandbox is gone.
    let out = cni("DEL", &Pod { netns: String::new(), ..old }, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(unheard(&mut rx), vec![], "ztunnel was told to drop the pod its new sandbox still is");
    assert!(agent.zds().contains("uid-web").await, "the new sandbox is gone from the ZDS snapshot");
    assert!(installed(&new_ns), "the new sandbox lost its redirection");
    assert!(!installed(&old_ns), "the old sandbox keeps its redirection");
    assert_eq!(records(&config), vec!["sandbox-new.json".to_owned()]);

    // The new sandbox's own DEL removes the pod.
    let out = cni("DEL", &new, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(next(&mut rx).await, Seen::Del("uid-web".into()));
    assert!(!installed(&new_ns));
    assert!(agent.zds().pods().await.is_empty());
    assert!(records(&config).is_empty());
    agent.shutdown().await;
}

/// Gives `pod` the address `ip` on an interface of its own (a veth pair with both ends in it:
/// no dummy driver everywhere).
fn address(pod: &ScratchNetns, ip: &str) {
    pod.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]).unwrap();
    pod.ip(&["addr", "add", &format!("{ip}/24"), "dev", "d0"]).unwrap();
    pod.ip(&["link", "set", "d1", "up"]).unwrap();
    pod.ip(&["link", "set", "d0", "up"]).unwrap();
}

/// The IPv4 addresses in the host probe table of `node`.
fn probe_addresses(node: &ScratchNetns) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", node.name(), "nft", "-j", "list", "set", "inet"])
        .args([ztunnel::agent::probe_snat::HOST_TABLE, "pods-v4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let set: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    set["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

/// Rule: as above for the host probe table: when the address of a pod's old sandbox is already
/// its new sandbox's, the old sandbox's late DEL leaves it in the table (kubelet's probes of the
/// new sandbox must keep bypassing capture).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_del_of_an_old_sandbox_keeps_the_new_ones_probe_address() {
    let node = scratch("races-node");
    let dir = TempDir::new("races-probe");
    let config = AgentConfig {
        no_probe_snat: false,
        host_netns: Some(node.path().into()),
        ..support::files_agent(&dir, &cluster("ambient", ""))
    };
    let agent = Agent::start(config.clone()).await.unwrap();
    let (old_ns, new_ns) = (scratch("races-pold"), scratch("races-pnew"));
    address(&old_ns, "10.78.1.2");
    address(&new_ns, "10.78.1.2");
    let sandbox = |container, ns: &ScratchNetns| Pod {
        container,
        netns: ns.path(),
        namespace: "mesh",
        name: "web",
        uid: "uid-web",
    };
    let (old, new) = (sandbox("sandbox-old", &old_ns), sandbox("sandbox-new", &new_ns));
    for pod in [&old, &new] {
        let out = cni("ADD", pod, &config.cni_socket).await;
        assert!(ok(&out), "{out:?}");
    }
    assert_eq!(probe_addresses(&node), vec!["10.78.1.2".to_owned()]);
    let out = cni("DEL", &old, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(probe_addresses(&node), vec!["10.78.1.2".to_owned()], "the new sandbox's probe address went");
    let out = cni("DEL", &new, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert!(probe_addresses(&node).is_empty());
    agent.uninstall().await.unwrap();
}

/// Rule: an ADD decides afresh, also for a sandbox the agent already enrolled: when the pod has
/// left the mesh since (its own label `none`, or its namespace's label removed), the repeated
/// ADD removes its redirection and tells ztunnel to let it go; when it is back, the next ADD
/// enrolls it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_add_after_opting_out_unenrolls_the_pod() {
    let dir = TempDir::new("races-readd");
    let config = support::files_agent(&dir, &cluster("ambient", ""));
    let yaml = config.enrollment.join("pods.yaml");
    let agent = Agent::start(config.clone()).await.unwrap();
    let (_client, mut rx) = ztunnel(&config).await;
    let (web_ns, api_ns) = (scratch("races-web"), scratch("races-api"));
    let web = Pod { container: "sandbox-web", netns: web_ns.path(), namespace: "mesh", name: "web", uid: "uid-web" };
    let api = Pod { container: "sandbox-api", netns: api_ns.path(), namespace: "mesh", name: "api", uid: "uid-api" };
    for (pod, ns) in [(&web, &web_ns), (&api, &api_ns)] {
        let out = cni("ADD", pod, &config.cni_socket).await;
        assert!(ok(&out), "{out:?}");
        assert_eq!(next(&mut rx).await, Seen::Add { uid: pod.uid.into(), netns: ns.netns().id() });
        assert!(installed(ns));
    }

    // The pod opts out, then its ADD comes again.
    std::fs::write(&yaml, cluster("ambient", "none")).unwrap();
    let out = cni("ADD", &web, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(unheard(&mut rx), vec![Seen::Del("uid-web".into())], "ztunnel keeps serving an opted-out pod");
    assert!(!installed(&web_ns), "an opted-out pod keeps its redirection");
    assert!(!agent.zds().contains("uid-web").await);
    assert_eq!(records(&config), vec!["sandbox-api.json".to_owned()]);

    // The namespace leaves the mesh.
    std::fs::write(&yaml, cluster("", "")).unwrap();
    let out = cni("ADD", &api, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(unheard(&mut rx), vec![Seen::Del("uid-api".into())], "ztunnel keeps serving a pod out of the mesh");
    assert!(!installed(&api_ns), "a pod out of the mesh keeps its redirection");
    assert!(records(&config).is_empty());

    // Back in the mesh: the next ADD enrolls it again.
    std::fs::write(&yaml, cluster("ambient", "")).unwrap();
    let out = cni("ADD", &web, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert_eq!(next(&mut rx).await, Seen::Add { uid: "uid-web".into(), netns: web_ns.netns().id() });
    assert!(installed(&web_ns));
    // A repeated ADD of a pod still enrolled keeps it enrolled.
    let out = cni("ADD", &web, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert!(installed(&web_ns));
    assert!(agent.zds().contains("uid-web").await);
    assert!(!unheard(&mut rx).contains(&Seen::Del("uid-web".into())), "a still enrolled pod was dropped");
    assert_eq!(records(&config), vec!["sandbox-web.json".to_owned()]);

    let out = cni("DEL", &web, &config.cni_socket).await;
    assert!(ok(&out), "{out:?}");
    assert!(!installed(&web_ns));
    assert!(agent.zds().pods().await.is_empty());
    agent.shutdown().await;
}

/// Rule: a CHECK of a sandbox the agent did not enroll asks the enrollment source, which may
/// have to GET the pod from the Kubernetes API; meanwhile every other pod's ADD and DEL on the
/// node goes on. A DEL of the checked sandbox during that lookup makes the CHECK fail, saying
/// so, rather than answer for a sandbox that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_waiting_on_the_api_does_not_hold_up_other_pods() {
    let api = FakeApi::start().await;
    api.namespace("mesh", json!({"istio.io/dataplane-mode": "ambient"}));
    api.pod("mesh", "web", "node-a", json!({}), "web-sa");
    let (client, gate, held, _relay) = support::gated_api(&api, b"/api/v1/namespaces/mesh/pods/slow").await;
    let kube = KubeEnrollment::start(client, "node-a");
    let deadline = tokio::time::Instant::now() + WAIT;
    while kube.cached("mesh", "web").is_none() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the first lists");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A pod the watch has not delivered: deciding for it takes a GET, which the relay holds.
    api.stall_pod_watch();
    api.pod("mesh", "slow", "node-a", json!({}), "slow-sa");

    let dir = TempDir::new("races-check");
    let config = AgentConfig {
        enrollment_source: EnrollmentSource::Kube,
        node_name: Some("node-a".into()),
        ..support::files_agent(&dir, "")
    };
    let agent = Agent::start_with(config.clone(), Source::Kube(kube)).await.unwrap();
    let (slow_ns, web_ns) = (scratch("races-slow"), scratch("races-cweb"));
    let slow =
        Pod { container: "sandbox-slow", netns: slow_ns.path(), namespace: "mesh", name: "slow", uid: "uid-slow" };
    let web = Pod { container: "sandbox-web", netns: web_ns.path(), namespace: "mesh", name: "web", uid: "uid-web" };

    let check = {
        let (socket, slow) = (config.cni_socket.clone(), Pod { netns: slow.netns.clone(), ..slow });
        tokio::spawn(async move { cni("CHECK", &slow, &socket).await })
    };
    tokio::time::timeout(WAIT, held.notified()).await.expect("the CHECK's GET reached the relay");

    // Another pod's ADD and DEL go on while the GET is held.
    let add = tokio::time::timeout(WAIT, cni("ADD", &web, &config.cni_socket)).await;
    let del = match &add {
        Ok(_) => tokio::time::timeout(WAIT, cni("DEL", &web, &config.cni_socket)).await.ok(),
        Err(_) => None,
    };
    // The checked sandbox goes away meanwhile.
    let slow_del = match &del {
        Some(_) => tokio::time::timeout(WAIT, cni("DEL", &slow, &config.cni_socket)).await.ok(),
        None => None,
    };
    gate.close();
    let add = add.expect("another pod's ADD waited for the CHECK's API lookup");
    assert!(ok(&add), "{add:?}");
    let del = del.expect("another pod's DEL waited for the CHECK's API lookup");
    assert!(ok(&del), "{del:?}");
    assert!(!installed(&web_ns));
    let slow_del = slow_del.expect("the checked pod's DEL waited for the CHECK's API lookup");
    assert!(ok(&slow_del), "{slow_del:?}");
    let check = tokio::time::timeout(WAIT * 2, check).await.expect("CHECK answered").unwrap();
    assert!(!ok(&check), "{check:?}");
    let msg = cni_error(&check);
    assert!(msg.contains("mesh/slow") && msg.contains("deleted"), "{msg}");

    // Without a DEL, a CHECK of an enrolled pod that was never set up fails closed.
    let out = cni("CHECK", &slow, &config.cni_socket).await;
    assert!(!ok(&out));
    assert!(cni_error(&out).contains("never set up"), "{out:?}");
    assert!(agent.zds().pods().await.is_empty());
    agent.shutdown().await;
}
