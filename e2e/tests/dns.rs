//! DNS through the mesh: with the node agents capturing DNS, an enrolled pod's resolver
//! (glibc, through `getent` and `curl`) reaches ztunnel's DNS proxy whatever nameserver it is
//! configured with. Mesh service names resolve to their VIPs with no DNS server for them
//! anywhere, and `curl` by name goes through the mesh; other names are relayed to the upstream
//! resolver (a small one of the test's own on node 1); a pod that is not enrolled is not
//! captured and gets no answer from the nameserver that does not exist, nor does an enrolled
//! pod annotated `ambient.istio.io/dns-capture: "false"` (its TCP is still captured). The same
//! holds over TCP (glibc's `use-vc`), relayed upstream over TCP. Needs root and the mesh binaries
//! (`cargo build -p ztunnel --bins`).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, metric_sum};
use ztunnel::dns::message::Query;

type Res = Result<(), Box<dyn std::error::Error>>;
const T: Duration = Duration::from_secs(10);
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
/// The pods' configured nameserver: a cluster DNS address at which nothing answers.
const NAMESERVER: &str = "10.96.0.53";
/// Node 1's address (the topology's fixed plan), where the test's upstream resolver listens.
const UPSTREAM: &str = "172.31.0.1:53";
/// The upstream's one name, and its address.
const EXTERNAL: (&str, [u8; 4]) = ("external.example.com", [198, 51, 100, 7]);

fn spec() -> MeshSpec {
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![
            PodSpec::new(2, "shop", "web-1"),
            PodSpec::new(1, "tools", "client-1"),
            PodSpec::new(1, "legacy", "outsider"),
            PodSpec { dns_capture: Some(false), ..PodSpec::new(1, "tools", "quiet-1") },
        ],
        services: vec![ServiceSpec {
            namespace: "shop".into(),
            name: "web".into(),
            vip: VIP,
            port: 80,
            target_port: 8080,
            endpoints: vec!["shop/web-1".into()],
            use_waypoint: None,
        }],
        capture_dns: true,
        dns_upstreams: vec![UPSTREAM.parse().unwrap()],
        ..MeshSpec::default()
    }
}

/// The test upstream's answer to `msg`: [`EXTERNAL`] is known, anything else is NODATA; the
/// name asked is kept in `asked`.
fn upstream_answer(msg: &[u8], limit: usize, asked: &Mutex<Vec<String>>) -> Option<Vec<u8>> {
    let q = Query::parse(msg).ok()?;
    asked.lock().unwrap().push(q.name.clone().unwrap_or_default());
    let addrs =
        if q.name.as_deref() == Some(EXTERNAL.0) && q.qtype == 1 { vec![IpAddr::from(EXTERNAL.1)] } else { vec![] };
    Some(q.answer(&addrs, 60, limit))
}

/// A resolver on `socket` (see [`upstream_answer`]), until `stop`.
fn upstream(socket: UdpSocket, stop: Arc<AtomicBool>, asked: Arc<Mutex<Vec<String>>>) {
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
        if let Some(answer) = upstream_answer(&buf[..n], 512, &asked) {
            let _ = socket.send_to(&answer, from);
        }
    }
}

/// The same resolver over TCP (messages behind a two-byte length), a connection at a time.
fn upstream_tcp(listener: TcpListener, stop: Arc<AtomicBool>, asked: Arc<Mutex<Vec<String>>>) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut len = [0u8; 2];
        while conn.read_exact(&mut len).is_ok() {
            let mut msg = vec![0; usize::from(u16::from_be_bytes(len))];
            if conn.read_exact(&mut msg).is_err() {
                break;
            }
            let Some(answer) = upstream_answer(&msg, usize::from(u16::MAX), &asked) else { break };
            let framed = [&(answer.len() as u16).to_be_bytes()[..], &answer].concat();
            if conn.write_all(&framed).is_err() {
                break;
            }
        }
    }
}

/// `/etc/resolv.conf` for every pod: glibc asks [`NAMESERVER`] (over TCP with `use-vc`), with a
/// pod's in `tools` search list.
fn resolv_conf(tcp: bool) -> String {
    format!(
        "nameserver {NAMESERVER}\nsearch tools.svc.cluster.local svc.cluster.local cluster.local\n\
         options ndots:5 timeout:1 attempts:1{}\n",
        if tcp { " use-vc" } else { "" }
    )
}

/// `getent ahostsv4 <name>` in a pod: the addresses, or the failure.
fn resolve(mesh: &Mesh, pod: (&str, &str), name: &str) -> Result<Vec<IpAddr>, String> {
    let out = mesh.pod(pod.0, pod.1).netns.exec(["getent", "ahostsv4", name], T).map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!("getent exit {:?}: {}", out.status.code(), out.stderr));
    }
    let mut addrs: Vec<IpAddr> = out.stdout.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    addrs.dedup();
    Ok(addrs)
}

#[test]
fn enrolled_pods_resolve_mesh_services_through_ztunnel_and_the_rest_upstream() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        e2e::sandbox::replace_file(Path::new("/etc/resolv.conf"), &resolv_conf(false))?;
        let mesh = Mesh::start(spec())?;
        let node1 = &mesh.topo.node(1).netns;
        let upstream_addr: SocketAddr = UPSTREAM.parse()?;
        let socket = node1.run_in(move || UdpSocket::bind(upstream_addr))??;
        let listener = node1.run_in(move || TcpListener::bind(upstream_addr))??;
        let stop = Arc::new(AtomicBool::new(false));
        let (asked, asked_tcp) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
        let servers = [
            {
                let (stop, asked) = (stop.clone(), asked.clone());
                std::thread::spawn(move || upstream(socket, stop, asked))
            },
            {
                let (stop, asked) = (stop.clone(), asked_tcp.clone());
                std::thread::spawn(move || upstream_tcp(listener, stop, asked))
            },
        ];
        let web = mesh.pod("shop", "web-1");
        let _http = web.netns.http_server(8080, "shop/web-1")?;

        let result = (|| -> Res {
            // The full name, and the short one through the search list (`web.shop` +
            // `svc.cluster.local`), answered by ztunnel with the VIP.
            assert_eq!(resolve(&mesh, ("tools", "client-1"), "web.shop.svc.cluster.local")?, vec![VIP]);
            assert_eq!(resolve(&mesh, ("tools", "client-1"), "web.shop")?, vec![VIP]);
            // The search list's other candidates (`web.shop.tools.svc.cluster.local`) are the
            // upstream's to deny; the mesh's names never reach it.
            let asked_for = |name: &str| asked.lock().unwrap().iter().any(|n| n == name);
            assert!(!asked_for("web.shop.svc.cluster.local"), "{:?}", asked.lock().unwrap());
            assert!(asked_for("web.shop.tools.svc.cluster.local"), "{:?}", asked.lock().unwrap());
            // curl by name: resolved by the mesh, carried by the mesh.
            let body = mesh.get(("tools", "client-1"), "http://web.shop/")?;
            assert!(body.contains("hello from shop/web-1"), "{body}");

            // A name the mesh does not know: relayed upstream from ztunnel, answered there.
            assert_eq!(resolve(&mesh, ("tools", "client-1"), EXTERNAL.0)?, vec![IpAddr::from(EXTERNAL.1)]);
            assert!(asked_for(EXTERNAL.0));

            // Not enrolled, not captured: its query goes to NAMESERVER, where nothing answers.
            let outsider = resolve(&mesh, ("legacy", "outsider"), "web.shop.svc.cluster.local");
            assert!(outsider.is_err(), "an outsider's DNS must not be answered by the mesh: {outsider:?}");
            // Enrolled, but its annotation turns DNS capture off: the same, while its TCP still
            // goes through the mesh.
            let quiet = resolve(&mesh, ("tools", "quiet-1"), "web.shop.svc.cluster.local");
            assert!(
                quiet.is_err(),
                "a pod annotated dns-capture \"false\" must not be answered by the mesh: {quiet:?}"
            );
            let body = mesh.get(("tools", "quiet-1"), &format!("http://{VIP}/"))?;
            assert!(body.contains("hello from shop/web-1"), "{body}");

            // Over TCP: glibc connects to NAMESERVER:53, which only the DNS capture turns into
            // ztunnel's 15053 (the general TCP capture would take it to a nameserver that does
            // not exist). A mesh name is answered there; another is relayed over TCP.
            e2e::sandbox::replace_file(Path::new("/etc/resolv.conf"), &resolv_conf(true))?;
            assert_eq!(resolve(&mesh, ("tools", "client-1"), "web.shop.svc.cluster.local")?, vec![VIP]);
            assert_eq!(resolve(&mesh, ("tools", "client-1"), EXTERNAL.0)?, vec![IpAddr::from(EXTERNAL.1)]);
            let asked_tcp = asked_tcp.lock().unwrap().clone();
            assert!(asked_tcp.iter().any(|n| n == EXTERNAL.0), "{asked_tcp:?}");
            assert!(!asked_tcp.iter().any(|n| n == "web.shop.svc.cluster.local"), "{asked_tcp:?}");

            // ztunnel on node 1 counted client-1's queries, and what it relayed.
            let m = mesh.metrics(1)?;
            let client = "source_workload=\"client-1\",source_workload_namespace=\"tools\"";
            let sum = |name: &str| metric_sum(&m, name, &[client]);
            assert!(sum("istio_dns_requests_total") >= 6.0, "{m}");
            assert!(sum("istio_dns_upstream_requests_total") >= 2.0, "{m}");
            assert_eq!(sum("istio_dns_upstream_failures_total"), 0.0, "{m}");
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        for server in servers {
            let _ = server.join();
        }
        result
    });
}
