//! The host side of kubelet probes for real: a "node" namespace wired by a veth to a "pod"
//! namespace with the pod's redirection installed; the agent's host table makes the node's own
//! connections to the pod arrive from the probe address, which the pod lets through to the
//! app instead of capturing. The table outlives an agent restart (probed all along) and goes
//! only on uninstall. Needs root.

mod support;

use support::TempDir;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::agent::{Agent, AgentConfig, probe_snat};
use ztunnel::cni::{CniCommand, CniEvent};
use ztunnel::netns::ScratchNetns;

const POD_IP: &str = "10.78.0.2";
const NODE_IP: &str = "10.78.0.1";
const WAIT: Duration = Duration::from_secs(2);

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn listen(ns: &ScratchNetns, at: SocketAddr) -> TcpListener {
    let l = ns.netns().run(|| TcpListener::bind(at)).unwrap().unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// The peer address of the connection that reached `l` within the wait, if any.
fn accepted_from(l: &TcpListener) -> Option<SocketAddr> {
    let deadline = Instant::now() + WAIT;
    loop {
        match l.accept() {
            Ok((_, from)) => return Some(from),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    }
}

fn idle(l: &TcpListener) -> bool {
    matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn connect(ns: &ScratchNetns, to: SocketAddr) -> TcpStream {
    ns.netns().run(move || TcpStream::connect_timeout(&to, WAIT)).unwrap().unwrap()
}

fn table_exists(ns: &ScratchNetns) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "list", "table", "inet", probe_snat::HOST_TABLE])
        .output()
        .unwrap();
    out.status.success()
}

/// The rules of the table's chain and the addresses in its IPv4 set, as nft lists them.
fn table_contents(ns: &ScratchNetns) -> (Vec<String>, Vec<String>) {
    let nft = |args: &[&str]| {
        let out = Command::new("ip").args(["netns", "exec", ns.name(), "nft"]).args(args).output().unwrap();
        assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let chain = nft(&["list", "chain", "inet", probe_snat::HOST_TABLE, "postrouting"]);
    let rules = chain.lines().map(str::trim).filter(|l| l.contains("snat")).map(str::to_owned).collect();
    let set = nft(&["-j", "list", "set", "inet", probe_snat::HOST_TABLE, "pods-v4"]);
    let set: serde_json::Value = serde_json::from_str(&set).unwrap();
    let elements = set["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["set"]["elem"].as_array())
        .flatten()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect();
    (rules, elements)
}

/// A "node" and a "pod" namespace joined by a veth: the pod is `POD_IP`, the node `NODE_IP`.
fn node_and_pod(test: &str) -> (ScratchNetns, ScratchNetns) {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let node = ScratchNetns::create(&format!("{test}-node-{suffix}")).unwrap();
    let pod = ScratchNetns::create(&format!("{test}-pod-{suffix}")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod", "netns", node.name()]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", NODE_IP]).unwrap();
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "veth-pod"]).unwrap();
    node.ip(&["link", "set", "veth-pod", "up"]).unwrap();
    (node, pod)
}

#[test]
fn node_connections_to_enrolled_pods_come_from_the_probe_address() {
    let (node, pod) = node_and_pod("probe");

    redirect::install(pod.netns(), &RedirectConfig::default()).unwrap();
    let capture = listen(&pod, addr("0.0.0.0", redirect::INBOUND_PORT));
    let app = listen(&pod, addr("0.0.0.0", 8080));

    // Without the host table a probe is captured like any inbound connection.
    let _c = connect(&node, addr(POD_IP, 8080));
    assert_eq!(accepted_from(&capture).map(|a| a.ip()), Some(NODE_IP.parse().unwrap()));
    assert!(idle(&app));

    let ips = probe_snat::pod_addresses(pod.netns()).unwrap();
    assert_eq!(ips, vec![POD_IP.parse::<IpAddr>().unwrap()], "only the pod's global addresses");
    probe_snat::install(node.netns()).unwrap();
    probe_snat::set_pod(node.netns(), &ips, true).unwrap();
    // Installing again (a restarted agent) takes the table over: its addresses stay, its
    // rules are not doubled.
    let (rules, _) = table_contents(&node);
    assert!(matches!(probe_snat::install(node.netns()).unwrap(), probe_snat::Installed::Adopted));
    assert_eq!(table_contents(&node), (rules.clone(), vec![POD_IP.to_owned()]));
    assert_eq!(rules.len(), 2, "one rule per family: {rules:?}");

    let _c = connect(&node, addr(POD_IP, 8080));
    let from = accepted_from(&app).expect("the node's connection reaches the app directly");
    assert_eq!(from.ip(), redirect::PROBE_SOURCE_V4.parse::<IpAddr>().unwrap());
    assert!(idle(&capture), "probes are not captured");

    // A pod that leaves the mesh leaves the set: captured again (were it enrolled).
    probe_snat::set_pod(node.netns(), &ips, false).unwrap();
    probe_snat::set_pod(node.netns(), &ips, false).unwrap();
    let _c = connect(&node, addr(POD_IP, 8080));
    assert_eq!(accepted_from(&capture).map(|a| a.ip()), Some(NODE_IP.parse().unwrap()));

    // Removal deletes the table, and removing twice is fine.
    probe_snat::set_pod(node.netns(), &ips, true).unwrap();
    assert!(table_exists(&node));
    probe_snat::remove(node.netns()).unwrap();
    assert!(!table_exists(&node));
    probe_snat::remove(node.netns()).unwrap();
    probe_snat::set_pod(node.netns(), &ips, false).unwrap();
    let _c = connect(&node, addr(POD_IP, 8080));
    assert_eq!(accepted_from(&capture).map(|a| a.ip()), Some(NODE_IP.parse().unwrap()));
}

/// A table of another shape (here an IPv4 set holding IPv6 addresses) cannot be taken over: it
/// is replaced, with empty sets, and says why.
#[test]
fn a_table_of_another_shape_is_replaced() {
    let node = ScratchNetns::create(&format!("probe-shape-{}-{}", std::process::id(), rand::random::<u16>())).unwrap();
    let t = probe_snat::HOST_TABLE;
    let status = Command::new("ip")
        .args(["netns", "exec", node.name(), "nft"])
        .arg(format!("add table inet {t}; add set inet {t} pods-v4 {{ type ipv6_addr; }}"))
        .status()
        .unwrap();
    assert!(status.success());
    match probe_snat::install(node.netns()).unwrap() {
        probe_snat::Installed::Replaced { reason } => assert!(reason.to_string().contains("taking over"), "{reason}"),
        other => panic!("expected a replacement, got {other:?}"),
    }
    let (rules, elements) = table_contents(&node);
    assert_eq!((rules.len(), elements.len()), (2, 0));
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
";

/// An agent on the Files source (enrolling `mesh/web`) with sockets and state under `dir`,
/// whose node namespace (`--host-netns`) is `node`.
fn agent_config(dir: &TempDir, node: &ScratchNetns, probe_snat: bool) -> AgentConfig {
    AgentConfig {
        zds_timeout_ms: 1000,
        no_probe_snat: !probe_snat,
        host_netns: Some(node.path().into()),
        ..support::files_agent(dir, CLUSTER)
    }
}

fn add_web(pod: &ScratchNetns) -> CniEvent {
    CniEvent {
        command: CniCommand::Add,
        container_id: "sandbox-web".into(),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod_namespace: Some("mesh".into()),
        pod_name: Some("web".into()),
        pod_uid: Some("uid-web".into()),
    }
}

/// Plays kubelet: probes the pod's app from the node every few milliseconds until stopped,
/// counting probes that reached the app from the probe address and probes captured instead.
struct Prober {
    passed: Arc<AtomicUsize>,
    captured: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(node: &ScratchNetns, app: TcpListener, capture: TcpListener) -> Self {
        let (passed, captured) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let stop = Arc::<AtomicBool>::default();
        let (p, c, s) = (Arc::clone(&passed), Arc::clone(&captured), Arc::clone(&stop));
        let netns = node.netns().try_clone().unwrap();
        let probe_source: IpAddr = redirect::PROBE_SOURCE_V4.parse().unwrap();
        let thread = std::thread::spawn(move || {
            netns
                .run(|| {
                    while !s.load(Ordering::Relaxed) {
                        let _conn = TcpStream::connect_timeout(&addr(POD_IP, 8080), WAIT).unwrap();
                        match accepted_from(&app) {
                            Some(from) if from.ip() == probe_source => p.fetch_add(1, Ordering::Relaxed),
                            _ => c.fetch_add(1, Ordering::Relaxed),
                        };
                        // The capture listener accepts (and forgets) what it got.
                        while capture.accept().is_ok() {}
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
                .unwrap()
        });
        Self { passed, captured, stop, thread: Some(thread) }
    }

    /// Waits for a few more probes to pass, so that the state now is covered.
    fn more_pass(&self) {
        let target = self.passed.load(Ordering::Relaxed) + 3;
        let deadline = Instant::now() + WAIT;
        while self.passed.load(Ordering::Relaxed) < target && self.captured.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "probes stopped passing");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn captured(&self) -> usize {
        self.captured.load(Ordering::Relaxed)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Rule: an agent restart (shutdown, then a new agent on the same node) never leaves an
/// enrolled pod's probes without the probe table, so they are never captured (and refused
/// under STRICT) meanwhile; the new agent takes the table over with one copy of its rules and
/// drops addresses of pods that went while no agent ran; uninstall removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_keeps_probes_passing_and_uninstall_removes_the_table() {
    let (node, pod) = node_and_pod("restart");
    let dir = TempDir::new("agent-probe-restart");
    let config = agent_config(&dir, &node, true);
    let capture = listen(&pod, addr("0.0.0.0", redirect::INBOUND_PORT));
    let app = listen(&pod, addr("0.0.0.0", 8080));

    let agent = Agent::start(config.clone()).await.unwrap();
    let reply = agent.handle(add_web(&pod)).await;
    assert!(reply.ok && reply.enrolled, "{reply:?}");
    let (rules, _) = table_contents(&node);
    let prober = Prober::start(&node, app, capture);
    prober.more_pass();

    agent.shutdown().await;
    drop(agent);
    assert!(table_exists(&node), "a stopped agent leaves the probe table");
    prober.more_pass();
    // A pod that went while no agent ran (its address may be another pod's by now).
    let t = probe_snat::HOST_TABLE;
    let out = Command::new("ip")
        .args(["netns", "exec", node.name(), "nft", &format!("add element inet {t} pods-v4 {{ 10.78.0.99 }}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let agent = Agent::start(config.clone()).await.unwrap();
    prober.more_pass();
    assert_eq!(
        table_contents(&node),
        (rules, vec![POD_IP.to_owned()]),
        "the restarted agent's table: the same rules once, the re-adopted pod's address only"
    );
    assert_eq!(prober.captured(), 0, "no probe was captured across the restart");

    agent.uninstall().await.unwrap();
    drop(prober);
    assert!(!table_exists(&node), "uninstall removes the probe table");
}

/// Rule: `ztunnel-agent --uninstall` removes the probe table from `--host-netns` without
/// starting an agent (also twice), and names the namespace it cannot open; an agent started
/// with `--no-probe-snat` removes a table an earlier agent kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_flag_and_disabled_agent_remove_a_kept_table() {
    let node = ScratchNetns::create(&format!("probe-uninst-{}-{}", std::process::id(), rand::random::<u16>())).unwrap();
    let uninstall = |host_netns: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_ztunnel-agent"))
            .args(["--uninstall", "--host-netns", host_netns])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    probe_snat::install(node.netns()).unwrap();
    assert!(table_exists(&node));
    let (ok, stderr) = uninstall(&node.path());
    assert!(ok, "{stderr}");
    assert!(!table_exists(&node), "--uninstall removes the table");
    let (ok, stderr) = uninstall(&node.path());
    assert!(ok, "nothing to remove is fine: {stderr}");
    let (ok, stderr) = uninstall("/nonexistent/netns");
    assert!(!ok && stderr.contains("host network namespace") && stderr.contains("/nonexistent/netns"), "{stderr}");

    probe_snat::install(node.netns()).unwrap();
    let dir = TempDir::new("agent-probe-off");
    let agent = Agent::start(agent_config(&dir, &node, false)).await.unwrap();
    agent.shutdown().await;
    assert!(!table_exists(&node), "an agent without probe SNAT keeps no table");
}
