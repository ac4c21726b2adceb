//! ztunnel's own ports (15001, 15006, 15008, 15053) as an application's destination, in a pod
//! namespace with ztunnel's redirection and listeners, wired by a veth to a namespace outside
//! the mesh. On the pod itself they are ztunnel: refused, or ztunnel would connect to itself
//! forever. On another host they are ordinary ports of someone else's server and pass through,
//! as in Istio. Needs root.

mod support;

use std::net::SocketAddr;

use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::netns::ScratchNetns;

const POD_IP: &str = "10.78.1.2";
const OUTSIDE_IP: &str = "10.78.1.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_ports_are_refused_on_the_pod_and_passed_through_elsewhere() {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let pod = ScratchNetns::create(&format!("own-pod-{suffix}")).unwrap();
    let outside = ScratchNetns::create(&format!("own-out-{suffix}")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", outside.name()]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["link", "set", "lo", "up"]).unwrap();
    outside.ip(&["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"]).unwrap();
    outside.ip(&["link", "set", "eth0", "up"]).unwrap();
    redirect::install(pod.netns(), &RedirectConfig::default()).unwrap();

    // A server outside the mesh that happens to listen on 15008: it echoes.
    let elsewhere: SocketAddr = format!("{OUTSIDE_IP}:15008").parse().unwrap();
    let listener = outside.netns().run(move || std::net::TcpListener::bind(elsewhere)).unwrap().unwrap();
    let _server = support::echo_on(listener);

    let (_proxy, registry) = support::start_in_pod(&pod, "tools", "client", POD_IP);

    let app = pod.netns().try_clone().unwrap();
    let echoed = tokio::task::spawn_blocking(move || support::exchange(&app, elsewhere, b"hello")).await.unwrap();
    assert_eq!(echoed.expect("a server elsewhere on port 15008 is reachable"), b"hello");

    // The pod's own outbound capture port, by its address and by loopback: refused.
    for own in [format!("{POD_IP}:15001"), "127.0.0.1:15001".to_owned()] {
        let own: SocketAddr = own.parse().unwrap();
        let app = pod.netns().try_clone().unwrap();
        let r = tokio::task::spawn_blocking(move || support::exchange(&app, own, b"hello")).await.unwrap();
        assert!(!matches!(&r, Ok(b) if !b.is_empty()), "{own}: nothing may come back: {r:?}");
    }
    let metrics = ztunnel::metrics::encode(&registry);
    assert!(
        metrics.contains("ztunnel_connections_denied_total{reporter=\"source\",reason=\"destination_is_ztunnel\"} 2"),
        "{metrics}"
    );
    let opened = metrics.lines().find(|l| l.starts_with("istio_tcp_connections_opened_total{")).unwrap_or_default();
    assert!(opened.ends_with(" 1"), "only the connection elsewhere was served: {metrics}");
}
