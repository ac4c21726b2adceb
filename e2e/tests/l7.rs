//! Waypoints end to end: services labelled `istio.io/use-waypoint` are reached through the
//! waypoint (its metrics count them), others are not; routes (weights, header/path/method
//! matches, timeouts, retries, gRPC) and L7 policy (path DENY that normalization cannot dodge)
//! apply there. Needs root and the mesh binaries, the `waypoint` one included
//! (`cargo build -p ztunnel -p istiod-lite -p waypoint --bins`).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use e2e::http::Behaviour;
use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

const T: Duration = Duration::from_secs(10);
const WAYPOINT_ROUTE: &str = "type.googleapis.com/mesh.waypoint.v1.Route";
const WAYPOINT_POLICY: &str = "type.googleapis.com/mesh.waypoint.v1.L7Policy";

fn vip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, last))
}

fn service(name: &str, last: u8, port: u16, target: u16, endpoints: &[&str], waypoint: bool) -> ServiceSpec {
    ServiceSpec {
        namespace: "shop".into(),
        name: name.into(),
        vip: vip(last),
        port,
        target_port: target,
        endpoints: endpoints.iter().map(|e| format!("shop/{e}")).collect(),
        use_waypoint: waypoint.then(|| "waypoint".into()),
    }
}

/// shop (ambient): reviews-v1 (node 1) and reviews-v2 (node 2) behind `reviews` (through the
/// waypoint) and behind `reviews-v1` / `reviews-v2`; `ratings` (no waypoint); `grpc`, `slow`
/// and `flaky` (through the waypoint). tools (ambient): client (node 1). The waypoint
/// `shop/waypoint` runs on node 2.
fn spec(routes: &str, policies: &str) -> MeshSpec {
    let pods = ["reviews-v1", "reviews-v2", "ratings", "grpc-1", "slow-1", "flaky-1"];
    let mut all: Vec<PodSpec> = pods.iter().enumerate().map(|(i, p)| PodSpec::new(1 + i % 2, "shop", p)).collect();
    all.push(PodSpec::new(1, "tools", "client"));
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: all,
        services: vec![
            service("reviews", 20, 80, 8080, &["reviews-v1", "reviews-v2"], true),
            service("reviews-v1", 21, 80, 8080, &["reviews-v1"], false),
            service("reviews-v2", 22, 80, 8080, &["reviews-v2"], false),
            service("ratings", 30, 80, 8080, &["ratings"], false),
            service("grpc", 40, 9000, 9000, &["grpc-1"], true),
            service("slow", 50, 80, 8080, &["slow-1"], true),
            service("flaky", 60, 80, 8080, &["flaky-1"], true),
        ],
        control_plane: true,
        waypoints: vec![WaypointSpec::new(2, "shop", "waypoint")],
        k8s_routes_yaml: routes.into(),
        k8s_policies_yaml: policies.into(),
        ..MeshSpec::default()
    }
}

/// `curl` from tools/client: (HTTP status, body). `extra` are curl arguments.
fn curl(mesh: &Mesh, url: &str, extra: &[&str]) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut args = vec!["-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    let out = mesh.pod("tools", "client").netns.curl(url, &args, T)?;
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
    let code: u16 = code.trim().parse().map_err(|_| format!("curl {url}: no status; stderr {}", out.stderr))?;
    Ok((code, body.to_owned()))
}

/// Sum of `istio_requests_total` samples whose labels contain all of `labels`.
fn requests_total(metrics: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
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

#[test]
fn only_services_that_use_the_waypoint_go_through_it() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec("", ""))?;
        let _v1 = mesh.pod("shop", "reviews-v1").netns.http_server(8080, "reviews-v1")?;
        let _v2 = mesh.pod("shop", "reviews-v2").netns.http_server(8080, "reviews-v2")?;
        let ratings = mesh.pod("shop", "ratings").netns.http_server(8080, "ratings")?;

        for _ in 0..4 {
            let (code, body) = curl(&mesh, &format!("http://{}/", vip(20)), &[])?;
            assert_eq!(code, 200, "{body}\n{}", logs(&mesh));
            assert!(body.contains("hello from reviews-v"), "{body}");
        }
        let m = mesh.waypoint_metrics("shop", "waypoint")?;
        let through = requests_total(
            &m,
            &[
                "reporter=\"waypoint\"",
                "destination_service=\"reviews.shop.svc.cluster.local\"",
                "response_code=\"200\"",
            ],
        );
        assert_eq!(through, 4, "the waypoint counted every request to reviews:\n{m}");
        assert!(m.contains("source_principal=\"spiffe://cluster.local/ns/tools/sa/client\""), "{m}");

        let (code, body) = curl(&mesh, &format!("http://{}/", vip(30)), &[])?;
        assert_eq!((code, body.contains("hello from ratings")), (200, true), "{body}");
        let m = mesh.waypoint_metrics("shop", "waypoint")?;
        assert!(!m.contains("ratings.shop.svc.cluster.local"), "ratings must not go through the waypoint:\n{m}");
        // Direct: ratings saw the client itself, not the waypoint.
        let client_ip = IpAddr::V4(mesh.pod("tools", "client").ip);
        assert_eq!(ratings.peers().last().map(|p| p.ip()), Some(client_ip));
        Ok(())
    })
}

const SPLIT_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 80}
  rules:
  - matches:
    - headers: [{name: x-version, value: v2}]
    backendRefs: [{name: reviews-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /only-v1}
    backendRefs: [{name: reviews-v1, port: 80}]
  - matches:
    - method: POST
    backendRefs: [{name: reviews-v2, port: 80}]
  - backendRefs:
    - {name: reviews-v1, port: 80, weight: 90}
    - {name: reviews-v2, port: 80, weight: 10}
"#;

#[test]
fn routes_split_by_weight_and_match_headers_paths_and_methods() {
    e2e::sandboxed_with(Duration::from_secs(180), || -> Res {
        let mesh = Mesh::start(spec(SPLIT_ROUTE, ""))?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/HTTPRoute/reviews", 1)?;
        let _v1 = mesh.pod("shop", "reviews-v1").netns.http_server(8080, "reviews-v1")?;
        let _v2 = mesh.pod("shop", "reviews-v2").netns.http_server(8080, "reviews-v2")?;
        let url = format!("http://{}/", vip(20));

        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        for _ in 0..100 {
            let (code, body) = curl(&mesh, &url, &[])?;
            assert_eq!(code, 200, "{body}\n{}", logs(&mesh));
            *seen.entry(body.lines().next().unwrap_or_default().to_owned()).or_default() += 1;
        }
        let v1 = seen.get("hello from reviews-v1").copied().unwrap_or(0);
        let v2 = seen.get("hello from reviews-v2").copied().unwrap_or(0);
        assert_eq!(v1 + v2, 100, "{seen:?}");
        // 90/10 over 100 requests: far outside these bounds means the weights are ignored.
        assert!((75..=98).contains(&v1) && v2 >= 2, "90/10 split gave {seen:?}");

        for _ in 0..5 {
            let (_, body) = curl(&mesh, &url, &["-H", "X-Version: v2"])?;
            assert!(body.starts_with("hello from reviews-v2"), "header match: {body}");
            let (_, body) = curl(&mesh, &format!("{url}only-v1/x"), &[])?;
            assert!(body.starts_with("hello from reviews-v1"), "path match: {body}");
            let (_, body) = curl(&mesh, &url, &["-X", "POST", "-d", "x"])?;
            assert!(body.starts_with("hello from reviews-v2"), "method match: {body}");
        }
        Ok(())
    })
}

const DENY_ADMIN: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
  namespace: shop
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin", "/admin/*"]
"#;

#[test]
fn an_l7_deny_by_path_holds_against_encoded_and_unnormalized_paths() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec("", DENY_ADMIN))?;
        mesh.wait_acked_by(WAYPOINT_POLICY, "shop/no-admin", 1)?;
        let _v1 = mesh.pod("shop", "reviews-v1").netns.http_server(8080, "reviews-v1")?;
        let _v2 = mesh.pod("shop", "reviews-v2").netns.http_server(8080, "reviews-v2")?;
        let base = format!("http://{}", vip(20));
        let (code, body) = curl(&mesh, &format!("{base}/public"), &[])?;
        assert_eq!(code, 200, "{body}\n{}", logs(&mesh));
        // --path-as-is: curl sends these exactly; the waypoint must normalize before matching.
        for path in [
            "/admin",
            "/admin/users",
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2e/admin/users",
            "//admin",
            "/admin//users",
            "/./admin",
            "/%61dmin",
        ] {
            let (code, body) = curl(&mesh, &format!("{base}{path}"), &["--path-as-is"])?;
            assert_eq!(code, 403, "{path} was not denied: {body}");
        }
        let m = mesh.waypoint_metrics("shop", "waypoint")?;
        assert!(requests_total(&m, &["response_code=\"403\""]) >= 9, "{m}");
        Ok(())
    })
}

const GRPC_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: grpc
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: grpc}
  rules:
  - matches:
    - method: {service: shop.Echo, method: Say}
    backendRefs: [{name: grpc, port: 9000}]
"#;

#[test]
fn grpc_and_http2_go_through_the_waypoint() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec(GRPC_ROUTE, ""))?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/GRPCRoute/grpc", 1)?;
        let server = mesh.pod("shop", "grpc-1").netns.h2c_server(9000, "grpc-1")?;
        let url = format!("http://{}:9000/shop.Echo/Say", vip(40));
        // One empty gRPC message (flag 0, length 0); curl reads it from a file because a
        // command-line argument cannot carry NUL bytes.
        let frame = std::env::temp_dir().join("grpc-empty-message");
        std::fs::write(&frame, [0u8; 5])?;
        let data = format!("@{}", frame.display());
        // A gRPC-shaped call: POST, h2 prior knowledge, content-type application/grpc.
        let (code, body) = curl(
            &mesh,
            &url,
            &["--http2-prior-knowledge", "-X", "POST", "-H", "content-type: application/grpc", "--data-binary", &data],
        )?;
        assert_eq!(code, 200, "{body:?}\n{}", logs(&mesh));
        assert!(body.contains("grpc-1 /shop.Echo/Say"), "{body:?}");
        // A method the route does not match: no rule, so the waypoint answers 404.
        let (code, _) = curl(
            &mesh,
            &format!("http://{}:9000/shop.Echo/Other", vip(40)),
            &["--http2-prior-knowledge", "-X", "POST", "-H", "content-type: application/grpc", "--data-binary", &data],
        )?;
        assert_eq!(code, 404);

        // Many streams over few connections.
        let client = mesh.pod("tools", "client");
        let out = client.netns.exec(
            ["h2load", "-n", "200", "-c", "2", "-m", "10", "-H", "content-type: application/grpc", &url],
            Duration::from_secs(30),
        )?;
        assert!(out.stdout.contains("200 succeeded"), "{}\n{}", out.stdout, out.stderr);
        assert!(server.requests() >= 201, "{}", server.requests());
        Ok(())
    })
}

const TIMEOUT_RETRY_ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: slow
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: slow}
  rules:
  - backendRefs: [{name: slow, port: 80}]
    timeouts: {request: 1s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: flaky
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: flaky}
  rules:
  - backendRefs: [{name: flaky, port: 80}]
    retry: {attempts: 2, codes: [503], backoff: 10ms}
"#;

#[test]
fn timeouts_cut_slow_backends_and_retries_hide_flaky_ones() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec(TIMEOUT_RETRY_ROUTES, ""))?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/HTTPRoute/slow", 1)?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/HTTPRoute/flaky", 1)?;
        let slow = Behaviour { delay: Duration::from_secs(4), ..Behaviour::default() };
        let _slow = e2e::http::HttpServer::start_with(&mesh.pod("shop", "slow-1").netns, 8080, "slow-1", slow)?;
        let flaky = Behaviour { fail_first: 1, ..Behaviour::default() };
        let flaky = e2e::http::HttpServer::start_with(&mesh.pod("shop", "flaky-1").netns, 8080, "flaky-1", flaky)?;

        let started = Instant::now();
        let (code, body) = curl(&mesh, &format!("http://{}/", vip(50)), &[])?;
        let took = started.elapsed();
        assert_eq!(code, 504, "{body}\n{}", logs(&mesh));
        assert!(took < Duration::from_secs(3), "the 1s request timeout took {took:?}");

        let (code, body) = curl(&mesh, &format!("http://{}/", vip(60)), &[])?;
        assert_eq!(code, 200, "a retried 503 is hidden: {body}");
        assert_eq!(flaky.requests(), 2, "one failed try and one retry");
        Ok(())
    })
}
