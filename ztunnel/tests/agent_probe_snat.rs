//! The host side of kubelet probes for real: a "node" namespace wired by a veth to a "pod"
//! namespace with the pod's redirection installed; the agent's host table makes the node's own
//! connections to the pod arrive from the probe address, which the pod lets through to the
//! app instead of capturing. Needs root.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use ztunnel::agent::probe_snat;
use ztunnel::agent::redirect::{self, RedirectConfig};
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

#[test]
fn node_connections_to_enrolled_pods_come_from_the_probe_address() {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let node = ScratchNetns::create(&format!("probe-node-{suffix}")).unwrap();
    let pod = ScratchNetns::create(&format!("probe-pod-{suffix}")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "veth-pod", "netns", node.name()]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", NODE_IP]).unwrap();
    node.ip(&["addr", "add", &format!("{NODE_IP}/24"), "dev", "veth-pod"]).unwrap();
    node.ip(&["link", "set", "veth-pod", "up"]).unwrap();

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
    // Installing again (agent restart) starts over cleanly.
    probe_snat::install(node.netns()).unwrap();
    probe_snat::set_pod(node.netns(), &ips, true).unwrap();

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
