//! The in-pod redirection for real: a "pod" namespace wired by a veth to a
//! "peer" namespace, rules installed by `agent::redirect`, and plain sockets
//! proving where connections land. Needs root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use ztunnel::agent::redirect::{self, RedirectConfig};
use ztunnel::netns::ScratchNetns;
use ztunnel::socket::{ZTUNNEL_MARK, original_dst};

const POD_IP: &str = "10.77.0.2";
const PEER_IP: &str = "10.77.0.1";
const WAIT: Duration = Duration::from_secs(2);

struct World {
    pod: ScratchNetns,
    peer: ScratchNetns,
}

fn world(test: &str) -> World {
    let suffix = format!("{}-{}", std::process::id(), rand::random::<u16>());
    let pod = ScratchNetns::create(&format!("{test}-pod-{suffix}")).unwrap();
    let peer = ScratchNetns::create(&format!("{test}-peer-{suffix}")).unwrap();
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer.name()]).unwrap();
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]).unwrap();
    pod.ip(&["link", "set", "eth0", "up"]).unwrap();
    pod.ip(&["route", "add", "default", "via", PEER_IP]).unwrap();
    peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "eth0"]).unwrap();
    peer.ip(&["addr", "add", &format!("{}/32", redirect::PROBE_SOURCE_V4), "dev", "eth0"]).unwrap();
    peer.ip(&["link", "set", "eth0", "up"]).unwrap();
    World { pod, peer }
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn listen(ns: &ScratchNetns, at: SocketAddr) -> TcpListener {
    let l = ns.netns().run(|| TcpListener::bind(at)).unwrap().unwrap();
    l.set_nonblocking(true).unwrap();
    l
}

/// The connection that reached `l` within the wait, if any.
fn accepted(l: &TcpListener) -> Option<TcpStream> {
    let deadline = Instant::now() + WAIT;
    loop {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return None,
        }
    }
}

/// Nothing reached `l` (checked after the other side got its answer).
fn idle(l: &TcpListener) -> bool {
    matches!(l.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn connect(ns: &ScratchNetns, to: SocketAddr, mark: Option<u32>, bind: Option<SocketAddr>) -> std::io::Result<Socket> {
    ns.netns()
        .run(move || {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            if let Some(m) = mark {
                s.set_mark(m)?;
            }
            if let Some(b) = bind {
                s.set_ip_transparent_v4(true)?;
                s.bind(&SockAddr::from(b))?;
            }
            s.connect_timeout(&SockAddr::from(to), WAIT)?;
            Ok(s)
        })
        .unwrap()
}

#[test]
fn outbound_goes_to_15001_except_marked_and_loopback() {
    let w = world("redir-out");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let capture = listen(&w.pod, addr("0.0.0.0", redirect::OUTBOUND_PORT));
    let server = listen(&w.peer, addr(PEER_IP, 80));
    let local = listen(&w.pod, addr("127.0.0.1", 7777));

    let _app = connect(&w.pod, addr(PEER_IP, 80), None, None).unwrap();
    let got = accepted(&capture).expect("outbound connection captured on 15001");
    assert_eq!(original_dst(&got).unwrap(), addr(PEER_IP, 80));
    assert!(idle(&server), "captured connection must not reach the real server");

    let _ztunnel = connect(&w.pod, addr(PEER_IP, 80), Some(ZTUNNEL_MARK), None).unwrap();
    assert!(accepted(&server).is_some(), "ztunnel-marked socket goes straight out");
    assert!(idle(&capture));

    let _lo = connect(&w.pod, addr("127.0.0.1", 7777), None, None).unwrap();
    assert!(accepted(&local).is_some(), "loopback is not captured");
    assert!(idle(&capture));

    redirect::remove(w.pod.netns()).unwrap();
    assert!(!redirect::installed(w.pod.netns()).unwrap());
    let _app = connect(&w.pod, addr(PEER_IP, 80), None, None).unwrap();
    assert!(accepted(&server).is_some(), "after removal traffic flows directly");
    assert!(idle(&capture));
}

#[test]
fn inbound_goes_to_15006_except_hbone_and_probes() {
    let w = world("redir-in");
    // Installing twice must leave one copy of everything.
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let rules = Command::new("ip").args(["-n", w.pod.name(), "rule", "show"]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert_eq!(rules.matches("lookup 133").count(), 1, "{rules}");

    let capture = listen(&w.pod, addr("0.0.0.0", redirect::INBOUND_PORT));
    let hbone = listen(&w.pod, addr("0.0.0.0", redirect::HBONE_PORT));
    let app = listen(&w.pod, addr("0.0.0.0", 8080));

    let _c = connect(&w.peer, addr(POD_IP, 8080), None, None).unwrap();
    let got = accepted(&capture).expect("inbound captured on 15006");
    assert_eq!(original_dst(&got).unwrap(), addr(POD_IP, 8080));
    assert!(idle(&app));

    let _c = connect(&w.peer, addr(POD_IP, redirect::HBONE_PORT), None, None).unwrap();
    assert!(accepted(&hbone).is_some(), "15008 is not redirected");
    assert!(idle(&capture));

    let probe_src = addr(redirect::PROBE_SOURCE_V4, 0);
    let _c = connect(&w.peer, addr(POD_IP, 8080), None, Some(probe_src)).unwrap();
    assert!(accepted(&app).is_some(), "kubelet probes reach the app directly");
    assert!(idle(&capture));

    redirect::remove(w.pod.netns()).unwrap();
    let rules = Command::new("ip").args(["-n", w.pod.name(), "rule", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("lookup 133"));
    let _c = connect(&w.peer, addr(POD_IP, 8080), None, None).unwrap();
    assert!(accepted(&app).is_some(), "after removal inbound reaches the app");
    assert!(idle(&capture));
    // Removing again is fine.
    redirect::remove(w.pod.netns()).unwrap();
}

#[test]
fn transparent_inbound_replies_come_back_to_ztunnel() {
    let w = world("redir-tp");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let app = listen(&w.pod, addr("0.0.0.0", 8080));
    let client = addr(PEER_IP, 40000);

    // ztunnel's side: marked, transparent, bound to the original client.
    let mut zt: TcpStream = connect(&w.pod, addr(POD_IP, 8080), Some(ZTUNNEL_MARK), Some(client))
        .expect("the app's SYN-ACK must be routed back to the transparent socket")
        .into();
    let mut served = accepted(&app).unwrap();
    assert_eq!(served.peer_addr().unwrap(), client, "the app sees the real client address");
    served.set_nonblocking(false).unwrap();
    served.write_all(b"pong").unwrap();
    zt.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 4];
    zt.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    drop((zt, served));

    // Without the reply routing the SYN-ACK leaves for the peer, which has no
    // such connection: the transparent connect cannot complete.
    redirect::remove(w.pod.netns()).unwrap();
    assert!(connect(&w.pod, addr(POD_IP, 8080), Some(ZTUNNEL_MARK), Some(addr(PEER_IP, 40001))).is_err());
}

#[test]
fn dns_is_captured_only_when_the_config_says_so() {
    let w = world("redir-dns");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let dns = listen(&w.pod, addr("0.0.0.0", redirect::DNS_PORT));
    let out = listen(&w.pod, addr("0.0.0.0", redirect::OUTBOUND_PORT));
    let _c = connect(&w.pod, addr(PEER_IP, 53), None, None).unwrap();
    assert!(
        accepted(&out).is_some(),
        "with capture_dns false (the agent's per-pod decision) TCP DNS is plain outbound"
    );
    assert!(idle(&dns));

    redirect::install(w.pod.netns(), &RedirectConfig { capture_dns: true }).unwrap();
    let _c = connect(&w.pod, addr(PEER_IP, 53), None, None).unwrap();
    let got = accepted(&dns).expect("DNS captured on 15053");
    assert_eq!(original_dst(&got).unwrap(), addr(PEER_IP, 53));
    assert!(idle(&out));
}

#[test]
fn ipv6_is_redirected_too() {
    const POD6: &str = "fd00:77::2";
    const PEER6: &str = "fd00:77::1";
    let w = world("redir-v6");
    w.pod.ip(&["-6", "addr", "add", &format!("{POD6}/64"), "dev", "eth0", "nodad"]).unwrap();
    w.peer.ip(&["-6", "addr", "add", &format!("{PEER6}/64"), "dev", "eth0", "nodad"]).unwrap();
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let v6 = |ip: &str, port: u16| -> SocketAddr { format!("[{ip}]:{port}").parse().unwrap() };
    let connect6 = |ns: &ScratchNetns, to: SocketAddr, mark: Option<u32>, bind: Option<SocketAddr>| {
        ns.netns()
            .run(move || {
                let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
                if let Some(m) = mark {
                    s.set_mark(m)?;
                }
                if let Some(b) = bind {
                    s.set_ip_transparent_v6(true)?;
                    s.bind(&SockAddr::from(b))?;
                }
                s.connect_timeout(&SockAddr::from(to), WAIT)?;
                Ok::<_, std::io::Error>(s)
            })
            .unwrap()
    };
    // Dual-stack listeners, as ztunnel would bind them.
    let out = listen(&w.pod, v6("::", redirect::OUTBOUND_PORT));
    let inbound = listen(&w.pod, v6("::", redirect::INBOUND_PORT));
    let app = listen(&w.pod, v6("::", 8080));

    let _c = connect6(&w.pod, v6(PEER6, 80), None, None).unwrap();
    let got = accepted(&out).expect("v6 outbound captured");
    assert_eq!(original_dst(&got).unwrap(), v6(PEER6, 80));
    // A v4 connection on the dual-stack listener still reports its v4 destination.
    let _c = connect(&w.pod, addr(PEER_IP, 81), None, None).unwrap();
    let got = accepted(&out).expect("v4 outbound captured on the dual-stack listener");
    assert_eq!(original_dst(&got).unwrap(), addr(PEER_IP, 81));

    let _c = connect6(&w.peer, v6(POD6, 8080), None, None).unwrap();
    let got = accepted(&inbound).expect("v6 inbound captured");
    assert_eq!(original_dst(&got).unwrap(), v6(POD6, 8080));
    assert!(idle(&app));

    // Transparent v6 connection from ztunnel to the app: replies come back.
    let client = v6(PEER6, 40000);
    let zt = connect6(&w.pod, v6(POD6, 8080), Some(ZTUNNEL_MARK), Some(client)).expect("v6 reply routing");
    let served = accepted(&app).unwrap();
    assert_eq!(served.peer_addr().unwrap(), client);
    drop((zt, served));

    redirect::remove(w.pod.netns()).unwrap();
    let rules = Command::new("ip").args(["-n", w.pod.name(), "-6", "rule", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("lookup 133"));
}

#[test]
fn queued_connections_move_to_the_new_listener_when_the_old_closes() {
    let w = world("redir-handover");
    redirect::install(w.pod.netns(), &RedirectConfig::default()).unwrap();
    let migrate = w.pod.netns().run(|| std::fs::read_to_string(redirect::MIGRATE_SYSCTL)).unwrap().unwrap();
    assert_eq!(migrate.trim(), "1", "connection migration is on in the pod");

    // Old and new ztunnel's HBONE listeners, side by side in the pod.
    let hbone = addr("0.0.0.0", redirect::HBONE_PORT);
    let (old, new) = w
        .pod
        .netns()
        .run(move || {
            (ztunnel::proxy::sockets::reuseport_listener(hbone), ztunnel::proxy::sockets::reuseport_listener(hbone))
        })
        .unwrap();
    let (old, new) = (old.unwrap(), new.unwrap());

    // Connections the kernel spread over both queues; nobody has accepted any yet.
    const N: usize = 32;
    let clients: Vec<Socket> = (0..N)
        .map(|i| {
            let s = connect(&w.peer, addr(POD_IP, redirect::HBONE_PORT), None, None).unwrap();
            s.send(&[i as u8]).unwrap();
            s
        })
        .collect();
    // The old ztunnel closes its listener with its queue still full.
    drop(old);

    // Every connection, including those queued on the old listener, reaches the new one intact.
    let mut seen = Vec::new();
    for _ in 0..N {
        let mut s = accepted(&new).unwrap_or_else(|| panic!("only {} of {N} connections handed over", seen.len()));
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        s.write_all(&b).unwrap();
        seen.push(b[0]);
    }
    seen.sort();
    assert_eq!(seen, (0..N as u8).collect::<Vec<_>>());
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(WAIT)).unwrap();
        let mut b = [0u8; 1];
        (&*c).read_exact(&mut b).expect("answered, not reset");
        assert_eq!(b[0], i as u8);
    }
}

/// Istio's in-pod rules leave the pod's traffic to its own address alone (it goes over `lo`,
/// like loopback), and touch no UDP but DNS.
#[test]
fn own_address_and_non_dns_udp_are_not_captured() {
    let w = world("redir-self");
    redirect::install(w.pod.netns(), &RedirectConfig { capture_dns: true }).unwrap();
    let capture = listen(&w.pod, addr("0.0.0.0", redirect::OUTBOUND_PORT));
    let inbound = listen(&w.pod, addr("0.0.0.0", redirect::INBOUND_PORT));
    let app = listen(&w.pod, addr(POD_IP, 8080));
    let _c = connect(&w.pod, addr(POD_IP, 8080), None, None).unwrap();
    assert!(accepted(&app).is_some(), "the pod's connection to its own address reaches the app");
    assert!(idle(&capture) && idle(&inbound));

    let peer_udp = w.peer.netns().run(|| std::net::UdpSocket::bind(addr(PEER_IP, 5000))).unwrap().unwrap();
    peer_udp.set_read_timeout(Some(WAIT)).unwrap();
    let pod_udp = w.pod.netns().run(|| std::net::UdpSocket::bind(addr(POD_IP, 0))).unwrap().unwrap();
    pod_udp.send_to(b"hi", addr(PEER_IP, 5000)).unwrap();
    let mut buf = [0u8; 8];
    let (n, from) = peer_udp.recv_from(&mut buf).expect("non-DNS UDP goes straight out");
    assert_eq!((&buf[..n], from.ip()), (&b"hi"[..], pod_udp.local_addr().unwrap().ip()));
}
