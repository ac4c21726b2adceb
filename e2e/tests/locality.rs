//! Locality end to end: services that prefer close endpoints keep a node's traffic in its zone,
//! straight through ztunnel and through a waypoint, and fall over to the other zone when the
//! close endpoint stops being ready; a service restricted to the node (STRICT) gets a 503 from
//! the waypoint instead of crossing to another node.
//!
//! Node 1 is in zone `eu-1a`, node 2 in `eu-1b` (same region), so `PreferClose` (Istio's
//! FAILOVER over network, region, zone) ranks the node-1 endpoint above the node-2 one for
//! every source on node 1: the client for the direct path, and the waypoint (which runs on
//! node 1 and knows its own workload from `INSTANCE_IP`) for the waypoint path. Every check
//! sends 20 requests, each on a new connection (the servers close after answering): a
//! proxy that ignored locality would send about half of them to node 2.
//!
//! One mesh serves all the steps, to keep this file short to run. Needs root and the mesh
//! binaries (`cargo build -p ztunnel -p istiod-lite -p waypoint --bins`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

/// Requests per check: with two endpoints and no locality, all 20 landing on one has a
/// probability of 2^-19.
const N: usize = 20;
/// Time allowed to one request.
const REQUEST: Duration = Duration::from_secs(3);
/// How long a config change may take to reach the proxies.
const PROPAGATION: Duration = Duration::from_secs(10);

/// Straight through ztunnel, `trafficDistribution: PreferClose`.
const DIRECT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 70));
/// Through the waypoint, `trafficDistribution: PreferClose`.
const VIA_WAYPOINT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 71));
/// Through the waypoint, `internalTrafficPolicy: Local` (Istio's STRICT on NODE).
const NODE_LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 72));

const WEB_1: &str = "hello from shop/web-1";
const WEB_2: &str = "hello from shop/web-2";

fn service(name: &str, vip: IpAddr, waypoint: bool) -> ServiceSpec {
    ServiceSpec {
        namespace: "shop".into(),
        name: name.into(),
        vip,
        port: 80,
        target_port: 8080,
        endpoints: vec!["shop/web-1".into(), "shop/web-2".into()],
        use_waypoint: waypoint.then(|| "waypoint".into()),
    }
}

/// shop (ambient): web-1 on node 1 (zone eu-1a), web-2 on node 2 (zone eu-1b), both behind
/// `web`, `web-wp` and `web-local`; the waypoint `shop/waypoint` on node 1.
/// tools (ambient): client on node 1.
fn spec() -> MeshSpec {
    let prefer_close = "  trafficDistribution: PreferClose\n";
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![
            PodSpec::new(1, "shop", "web-1"),
            PodSpec::new(2, "shop", "web-2"),
            PodSpec::new(1, "tools", "client"),
        ],
        services: vec![
            service("web", DIRECT, false),
            service("web-wp", VIA_WAYPOINT, true),
            service("web-local", NODE_LOCAL, true),
        ],
        control_plane: true,
        waypoints: vec![WaypointSpec::new(1, "shop", "waypoint")],
        node_localities: vec![("eu-1".into(), "eu-1a".into()), ("eu-1".into(), "eu-1b".into())],
        service_spec_yaml: vec![
            ("shop/web".into(), prefer_close.into()),
            ("shop/web-wp".into(), prefer_close.into()),
            ("shop/web-local".into(), "  internalTrafficPolicy: Local\n".into()),
        ],
        ..MeshSpec::default()
    }
}

/// `n` requests from tools/client to `vip`, one curl run, each on its own connection: how many
/// times each server answered (`hello from ...`) and each status came back (`code ...`, `000`
/// when there was no HTTP answer).
fn answers(mesh: &Mesh, vip: IpAddr, n: usize) -> Result<BTreeMap<String, usize>, Box<dyn std::error::Error>> {
    let url = format!("http://{vip}/");
    let max = REQUEST.as_secs().to_string();
    let mut argv = vec!["curl", "-sS", "--max-time", &max, "-w", "code %{http_code}\n"];
    argv.extend(std::iter::repeat_n(url.as_str(), n));
    let out = mesh.pod("tools", "client").netns.exec(argv, REQUEST * n as u32 + Duration::from_secs(5))?;
    let mut seen = BTreeMap::new();
    for line in out.stdout.lines().filter(|l| l.starts_with("hello from ") || l.starts_with("code ")) {
        *seen.entry(line.to_owned()).or_default() += 1;
    }
    Ok(seen)
}

fn all(n: usize, lines: &[&str]) -> BTreeMap<String, usize> {
    lines.iter().map(|l| ((*l).to_owned(), n)).collect()
}

/// Single requests to `vip` until one comes back with `want` among its lines (a server's
/// greeting or a `code ...`), bounded in count and time: how long the change took to arrive.
fn until_answer(mesh: &Mesh, vip: IpAddr, want: &str) -> Result<Duration, String> {
    let start = Instant::now();
    for _ in 0..100 {
        if answers(mesh, vip, 1).map_err(|e| e.to_string())?.contains_key(want) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > PROPAGATION {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("{vip}: no {want:?} within {PROPAGATION:?}"))
}

/// Sum of the samples of metric `name` whose labels contain all of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> u64 {
    e2e::mesh::metric_sum(text, name, labels) as u64
}

fn logs(mesh: &Mesh) -> String {
    format!(
        "--- waypoint ---\n{}\n--- node1 ztunnel ---\n{}\n--- istiod ---\n{}",
        mesh.waypoint_log("shop", "waypoint"),
        mesh.ztunnel_log(1),
        mesh.istiod_log()
    )
}

#[test]
fn close_endpoints_are_preferred_and_failed_over_directly_and_through_a_waypoint() {
    e2e::sandboxed_with(Duration::from_secs(90), || -> Res {
        let started = Instant::now();
        let mut mesh = Mesh::start(spec())?;
        let web1 = mesh.pod("shop", "web-1").netns.http_server(8080, "shop/web-1")?;
        let web2 = mesh.pod("shop", "web-2").netns.http_server(8080, "shop/web-2")?;
        eprintln!("mesh up in {:?}", started.elapsed());

        // The client's own zone only, straight through ztunnel ...
        let seen = answers(&mesh, DIRECT, N)?;
        assert_eq!(seen, all(N, &[WEB_1, "code 200"]), "direct: node 1's endpoint only\n{}", logs(&mesh));
        // ... and through the waypoint, whose own zone is the same.
        let seen = answers(&mesh, VIA_WAYPOINT, N)?;
        assert_eq!(seen, all(N, &[WEB_1, "code 200"]), "via the waypoint: node 1's endpoint only\n{}", logs(&mesh));
        // STRICT on the node, while the node has an endpoint: that one.
        let seen = answers(&mesh, NODE_LOCAL, N)?;
        assert_eq!(seen, all(N, &[WEB_1, "code 200"]), "node-local: node 1's endpoint only\n{}", logs(&mesh));
        assert_eq!((web1.requests(), web2.requests()), (3 * N as u64, 0), "no request crossed to node 2");
        let m = mesh.waypoint_metrics("shop", "waypoint")?;
        for svc in ["web-wp", "web-local"] {
            let through = metric_sum(
                &m,
                "istio_requests_total{",
                &[&format!("destination_service=\"{svc}.shop.svc.cluster.local\""), "response_code=\"200\""],
            );
            assert_eq!(through, N as u64, "{svc}: every request went through the waypoint:\n{m}");
        }
        assert_eq!(
            metric_sum(&m, "istio_requests_total{", &["destination_service=\"web.shop.svc.cluster.local\""]),
            0,
            "web does not use the waypoint:\n{m}"
        );

        // web-1 fails its readiness probe: still running, but no longer an endpoint.
        mesh.set_pod_ready("shop", "web-1", false)?;
        let direct_took = until_answer(&mesh, DIRECT, WEB_2)?;
        let waypoint_took = until_answer(&mesh, VIA_WAYPOINT, WEB_2)?;
        eprintln!("failover seen after {direct_took:?} (ztunnel), {waypoint_took:?} more (waypoint)");
        let before = (web1.requests(), web2.requests());
        let seen = answers(&mesh, DIRECT, N)?;
        assert_eq!(seen, all(N, &[WEB_2, "code 200"]), "direct: failed over to node 2\n{}", logs(&mesh));
        let seen = answers(&mesh, VIA_WAYPOINT, N)?;
        assert_eq!(seen, all(N, &[WEB_2, "code 200"]), "via the waypoint: failed over to node 2\n{}", logs(&mesh));
        // The same waypoint state as the line above: no endpoint on the node, and STRICT never
        // crosses to another.
        let seen = answers(&mesh, NODE_LOCAL, N)?;
        assert_eq!(seen, all(N, &["code 503"]), "node-local: no endpoint on the node\n{}", logs(&mesh));
        assert_eq!(
            (web1.requests(), web2.requests()),
            (before.0, before.1 + 2 * N as u64),
            "the unready endpoint got nothing; node 2's got the failed-over requests only"
        );
        let m = mesh.waypoint_metrics("shop", "waypoint")?;
        let refused = metric_sum(
            &m,
            "waypoint_no_endpoint_total{",
            &["service=\"web-local.shop.svc.cluster.local\"", "reason=\"strict_locality\""],
        );
        assert_eq!(refused, N as u64, "each 503 counted with its reason:\n{m}");

        // Ready again: back to the close endpoint.
        mesh.set_pod_ready("shop", "web-1", true)?;
        until_answer(&mesh, DIRECT, WEB_1)?;
        until_answer(&mesh, NODE_LOCAL, WEB_1)?;
        let seen = answers(&mesh, VIA_WAYPOINT, N)?;
        assert_eq!(seen, all(N, &[WEB_1, "code 200"]), "via the waypoint: back to node 1\n{}", logs(&mesh));
        eprintln!("done in {:?}", started.elapsed());
        Ok(())
    });
}
