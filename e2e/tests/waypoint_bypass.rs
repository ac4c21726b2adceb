//! The waypoint cannot be skipped: namespace `shop` is labelled `istio.io/use-waypoint` with a
//! waypoint for all traffic, so its pods' Addresses name the waypoint. A pod outside the mesh,
//! on the other node, dials a shop pod's IP directly (nothing on its side knows about the
//! waypoint): the shop pod's ztunnel refuses it, counts it and says so; the same request from a
//! mesh client to the Service goes through the waypoint and is answered. Needs root and the mesh
//! binaries, the `waypoint` one included (`cargo build -p ztunnel -p istiod-lite -p waypoint --bins`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

const T: Duration = Duration::from_secs(5);
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
const WAYPOINT: &str = "shop/waypoint.shop.svc.cluster.local";

/// shop (ambient, waypoint `shop/waypoint` for all traffic): reviews-1 on node 1 behind
/// `reviews`. tools (ambient, no waypoint): client on node 2, open-1 on node 1. legacy (not
/// enrolled): outsider on node 2. The waypoint runs on node 2.
fn spec() -> MeshSpec {
    let mut waypoint = WaypointSpec::new(2, "shop", "waypoint");
    waypoint.for_ = "all".into();
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![
            PodSpec::new(1, "shop", "reviews-1"),
            PodSpec::new(2, "tools", "client"),
            PodSpec::new(1, "tools", "open-1"),
            PodSpec::new(2, "legacy", "outsider"),
        ],
        services: vec![ServiceSpec {
            namespace: "shop".into(),
            name: "reviews".into(),
            vip: VIP,
            port: 80,
            target_port: 8080,
            endpoints: vec!["shop/reviews-1".into()],
            use_waypoint: None,
        }],
        control_plane: true,
        waypoints: vec![waypoint],
        namespace_waypoints: vec![("shop".into(), "waypoint".into())],
        ..MeshSpec::default()
    }
}

fn logs(mesh: &Mesh) -> String {
    format!(
        "--- waypoint ---\n{}\n--- node1 ztunnel ---\n{}\n--- node2 ztunnel ---\n{}\n--- istiod ---\n{}",
        mesh.waypoint_log("shop", "waypoint"),
        mesh.ztunnel_log(1),
        mesh.ztunnel_log(2),
        mesh.istiod_log()
    )
}

fn denied(metrics: &str, reason: &str) -> u64 {
    let line = format!("ztunnel_connections_denied_total{{reporter=\"destination\",reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |n| n.trim().parse().unwrap_or(0))
}

#[test]
fn a_client_that_skips_the_waypoint_is_refused_by_the_destination() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec())?;
        let reviews = mesh.pod("shop", "reviews-1").clone();
        let outsider = mesh.pod("legacy", "outsider").clone();
        let app = reviews.netns.http_server(8080, "reviews-1")?;
        let open = mesh.pod("tools", "open-1").clone();
        let _open_app = open.netns.http_server(8080, "open-1")?;

        // Through the Service, from a mesh client: its ztunnel sends it to the waypoint, which
        // reaches reviews-1 with its own identity, and the destination lets that in.
        let body =
            mesh.get(("tools", "client"), &format!("http://{VIP}/")).map_err(|e| format!("{e}\n{}", logs(&mesh)))?;
        assert!(body.contains("hello from reviews-1"), "{body}");
        let waypoint_ip = IpAddr::V4(mesh.waypoint_pod("shop", "waypoint").ip);
        assert_eq!(app.peers().last().map(|p| p.ip()), Some(waypoint_ip), "reviews-1 was reached by the waypoint");

        // Plaintext from outside the mesh reaches an enrolled pod without a waypoint (so the path
        // itself works: PERMISSIVE)...
        let body = mesh.get(("legacy", "outsider"), &format!("http://{}:8080/", open.ip))?;
        assert!(body.contains("hello from open-1"), "{body}");
        // ...but not a pod behind a waypoint: refused before the application sees it.
        let direct = outsider.netns.curl(&format!("http://{}:8080/", reviews.ip), &[], T)?;
        assert!(!direct.success(), "the direct request must fail: {}\n{}", direct.stdout, logs(&mesh));
        assert!(!direct.stdout.contains("hello from reviews-1"), "{}", direct.stdout);
        let outsider_ip = IpAddr::V4(outsider.ip);
        assert!(!app.peers().iter().any(|p| p.ip() == outsider_ip), "reviews-1 never saw the outsider");

        let m = mesh.metrics(1)?;
        assert_eq!(denied(&m, "bypassed_waypoint"), 1, "{m}");
        let log = mesh.ztunnel_log(1);
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("bypassed waypoint {WAYPOINT}")) && l.contains(&outsider.ip.to_string())),
            "one line says who bypassed which waypoint:\n{log}"
        );

        // And the way through the waypoint still works afterwards.
        let body = mesh.get(("tools", "client"), &format!("http://{VIP}/"))?;
        assert!(body.contains("hello from reviews-1"), "{body}");
        assert_eq!(denied(&mesh.metrics(1)?, "bypassed_waypoint"), 1);
        Ok(())
    })
}
