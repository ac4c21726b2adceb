//! Waypoints end to end: services labelled `istio.io/use-waypoint` are reached through the
//! waypoint (its metrics and access log count them), others are not; routes (a 90/10 split
//! over 1,000 requests, header/path/method matches, redirect, rewrite, header modifiers,
//! mirroring, timeouts, retries only where a rule allows them, gRPC unary and bidirectional
//! streaming routed by method), passive outlier ejection, and L7 policy (ALLOW/DENY/AUDIT by
//! path, method, principal and header; a path DENY that normalization cannot dodge) apply
//! there; and a waypoint stopped with SIGTERM answers the request in flight before it exits.
//! Needs root and the mesh binaries, the `waypoint` one included
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
    curl_from(mesh, "client", url, extra)
}

/// `curl` from pod `tools/<pod>`: (HTTP status, body).
fn curl_from(mesh: &Mesh, pod: &str, url: &str, extra: &[&str]) -> Result<(u16, String), Box<dyn std::error::Error>> {
    let mut args = vec!["-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    let out = mesh.pod("tools", pod).netns.curl(url, &args, T)?;
    let (body, code) = out.stdout.rsplit_once('\n').unwrap_or(("", out.stdout.as_str()));
    let code: u16 = code.trim().parse().map_err(|_| format!("curl {url}: no status; stderr {}", out.stderr))?;
    Ok((code, body.to_owned()))
}

/// Sum of `istio_requests_total` samples whose labels contain all of `labels`.
fn requests_total(metrics: &str, labels: &[&str]) -> u64 {
    e2e::mesh::metric_sum(metrics, "istio_requests_total{", labels) as u64
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
        // One access line per request, naming the service and the answer.
        let lines = |log: &str| {
            log.lines()
                .filter(|l| {
                    l.contains("access") && l.contains("reviews.shop.svc.cluster.local") && l.contains("status=200")
                })
                .count()
        };
        let log = mesh.waypoint_log_when("shop", "waypoint", Duration::from_secs(2), |l| lines(l) >= 4);
        assert_eq!(lines(&log), 4, "one access line per request:\n{log}");

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
    - path: {type: PathPrefix, value: /to-v2}
    backendRefs: [{name: reviews-v2, port: 80}]
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

        // 1,000 requests from one curl process: a config file with one `url` line per request.
        let config = mesh.config_dir().join("split-1000.curlrc");
        std::fs::write(&config, format!("url = \"{url}\"\n").repeat(1000))?;
        let config = config.display().to_string();
        let started = Instant::now();
        let out = mesh.pod("tools", "client").netns.exec(
            ["curl", "-sS", "--max-time", "5", "-w", "code %{http_code}\n", "-K", &config],
            Duration::from_secs(60),
        )?;
        let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
        for line in out.stdout.lines().filter(|l| l.starts_with("hello from ") || l.starts_with("code ")) {
            *seen.entry(line).or_default() += 1;
        }
        let ok = seen.get("code 200").copied().unwrap_or(0);
        assert_eq!(ok, 1000, "every request answered 200 ({:?}): {seen:?}\n{}", started.elapsed(), out.stderr);
        let v1 = seen.get("hello from reviews-v1").copied().unwrap_or(0);
        let v2 = seen.get("hello from reviews-v2").copied().unwrap_or(0);
        assert_eq!(v1 + v2, 1000, "{seen:?}");
        // 90/10 within ±4 points (binomial σ ≈ 0.95 points, so this only fails when the weights
        // are not applied).
        assert!((860..=940).contains(&v1), "90/10 split over 1,000 requests gave {seen:?}");

        // Each match leads to reviews-v2, which the default rule picks only 10% of the time, so
        // five in a row from a match that was not applied happen once in 100,000 runs.
        let mut unmatched_v2 = 0;
        for _ in 0..5 {
            let (_, body) = curl(&mesh, &url, &["-H", "X-Version: v2"])?;
            assert!(body.starts_with("hello from reviews-v2"), "header match: {body}");
            let (_, body) = curl(&mesh, &format!("{url}to-v2/x"), &[])?;
            assert!(body.starts_with("hello from reviews-v2"), "path match: {body}");
            // A prefix matches whole path segments: /to-v2x is not under /to-v2.
            let (_, body) = curl(&mesh, &format!("{url}to-v2x"), &[])?;
            unmatched_v2 += u32::from(body.starts_with("hello from reviews-v2"));
            let (_, body) = curl(&mesh, &url, &["-X", "POST", "-d", "x"])?;
            assert!(body.starts_with("hello from reviews-v2"), "method match: {body}");
        }
        assert!(unmatched_v2 < 5, "/to-v2x took the /to-v2 prefix rule every time");
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
  - matches:
    - method: {service: shop.Echo, method: Chat}
    backendRefs: [{name: grpc-2, port: 9000}]
"#;

#[test]
fn grpc_and_http2_go_through_the_waypoint() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mut s = spec(GRPC_ROUTE, "");
        s.pods.push(PodSpec::new(2, "shop", "grpc-2"));
        s.services.push(service("grpc-2", 41, 9000, 9000, &["grpc-2"], false));
        let mesh = Mesh::start(s)?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/GRPCRoute/grpc", 1)?;
        let server = mesh.pod("shop", "grpc-1").netns.grpc_server(9000, "grpc-1")?;
        let server2 = mesh.pod("shop", "grpc-2").netns.grpc_server(9000, "grpc-2")?;

        // Real gRPC (tonic's client and server), routed by method: unary Say to grpc-1, the
        // bidirectional Chat stream to grpc-2, each message answered before the next is sent.
        let grpc_addr = std::net::SocketAddr::new(vip(40), 9000);
        let client_ns = &mesh.pod("tools", "client").netns;
        let said = e2e::grpc::say(client_ns, grpc_addr, "one", T).map_err(|e| format!("Say: {e}\n{}", logs(&mesh)))?;
        assert_eq!((said.message.as_str(), said.served_by.as_str()), ("one", "grpc-1"), "{said:?}");
        let msgs = ["one", "two", "three", "four"];
        let chat =
            e2e::grpc::chat(client_ns, grpc_addr, &msgs, T).map_err(|e| format!("Chat: {e}\n{}", logs(&mesh)))?;
        let got: Vec<(&str, &str)> = chat.iter().map(|r| (r.message.as_str(), r.served_by.as_str())).collect();
        assert_eq!(got, msgs.iter().map(|m| (*m, "grpc-2")).collect::<Vec<_>>(), "Chat stream");
        assert_eq!((server.calls(), server2.calls()), (1, 1), "one call each");
        // Both calls counted by the waypoint as gRPC, each under the backend its method was
        // routed to, with the status its trailers carried (recorded just after each response
        // ends, so allow it a moment).
        let grpc_ok = |m: &str, backend: &str| {
            let svc = format!("destination_service_name=\"{backend}\"");
            requests_total(m, &["request_protocol=\"grpc\"", "grpc_response_status=\"0\"", &svc])
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut m = mesh.waypoint_metrics("shop", "waypoint")?;
        while (grpc_ok(&m, "grpc"), grpc_ok(&m, "grpc-2")) != (1, 1) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            m = mesh.waypoint_metrics("shop", "waypoint")?;
        }
        assert_eq!((grpc_ok(&m, "grpc"), grpc_ok(&m, "grpc-2")), (1, 1), "{m}");

        let url = format!("http://{}:9000/shop.Echo/Say", vip(40));
        // One empty gRPC message (flag 0, length 0); curl reads it from a file because a
        // command-line argument cannot carry NUL bytes.
        let frame = std::env::temp_dir().join("grpc-empty-message");
        std::fs::write(&frame, [0u8; 5])?;
        let data = format!("@{}", frame.display());
        // A gRPC call made by hand: POST, h2 prior knowledge, content-type application/grpc, an
        // empty EchoRequest; the protobuf reply carries the server's label and the method.
        let (code, body) = curl(
            &mesh,
            &url,
            &["--http2-prior-knowledge", "-X", "POST", "-H", "content-type: application/grpc", "--data-binary", &data],
        )?;
        assert_eq!(code, 200, "{body:?}\n{}", logs(&mesh));
        assert!(body.contains("grpc-1") && body.contains(e2e::grpc::SAY), "{body:?}");
        // A method the route does not match: no rule, so the waypoint answers as gRPC does,
        // UNIMPLEMENTED (trailers-only, HTTP 200), where an HTTP request would get a 404.
        let out = mesh.pod("tools", "client").netns.curl(
            &format!("http://{}:9000/shop.Echo/Other", vip(40)),
            &[
                "-w",
                "\n%{http_code}",
                "-v",
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "-H",
                "content-type: application/grpc",
                "--data-binary",
                &data,
            ],
            T,
        )?;
        assert!(out.stdout.ends_with("200"), "{}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("grpc-status: 12"), "{}\n{}", out.stdout, out.stderr);

        // Many streams over few connections.
        let client = mesh.pod("tools", "client");
        let out = client.netns.exec(
            [
                "h2load",
                "-n",
                "200",
                "-c",
                "2",
                "-m",
                "10",
                "-d",
                &frame.to_string_lossy(),
                "-H",
                "content-type: application/grpc",
                &url,
            ],
            Duration::from_secs(30),
        )?;
        assert!(out.stdout.contains("200 succeeded"), "{}\n{}", out.stdout, out.stderr);
        assert!(server.calls() >= 202, "{}", server.calls());
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
        let flaky = Behaviour { fail_every_other: true, ..Behaviour::default() };
        let flaky = e2e::http::HttpServer::start_with(&mesh.pod("shop", "flaky-1").netns, 8080, "flaky-1", flaky)?;

        let started = Instant::now();
        let (code, body) = curl(&mesh, &format!("http://{}/", vip(50)), &[])?;
        let took = started.elapsed();
        assert_eq!(code, 504, "{body}\n{}", logs(&mesh));
        assert!(took < Duration::from_secs(3), "the 1s request timeout took {took:?}");

        // The backend fails every other request: each client request's first try fails and
        // its retry succeeds, so all 20 succeed after exactly 40 tries.
        for i in 0..20 {
            let (code, body) = curl(&mesh, &format!("http://{}/", vip(60)), &[])?;
            assert_eq!(code, 200, "request {i}: a retried 503 is hidden: {body}\n{}", logs(&mesh));
        }
        assert_eq!(flaky.requests(), 40, "one failed try and one retry per request");
        Ok(())
    })
}

#[test]
fn a_waypoint_stopped_with_sigterm_answers_the_request_in_flight_then_exits() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mut mesh = Mesh::start(spec("", ""))?;
        let slow = Behaviour { delay: Duration::from_millis(1500), ..Behaviour::default() };
        let slow = e2e::http::HttpServer::start_with(&mesh.pod("shop", "slow-1").netns, 8080, "slow-1", slow)?;
        let client = mesh.pod("tools", "client").netns.clone();
        let url = format!("http://{}/", vip(50));
        let in_flight = std::thread::spawn(move || client.curl(&url, &["-w", "\n%{http_code}"], T));
        let deadline = Instant::now() + T;
        while slow.requests() == 0 {
            assert!(Instant::now() < deadline, "the request never reached the backend");
            std::thread::sleep(Duration::from_millis(20));
        }

        let stopping = Instant::now();
        let exited = mesh.stop_waypoint(0);
        let took = stopping.elapsed();
        let out = in_flight.join().expect("curl thread")?;
        assert!(out.stdout.ends_with("\n200"), "answered in full: {}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("slow-1"), "{}", out.stdout);
        // It exited by itself (the harness would have killed it after its 2 s grace), once the
        // request was answered, with nothing left to cut.
        let status = exited.status.ok_or("no exit status")?;
        assert!(status.success(), "{status:?} after {took:?}:\n{}", exited.log);
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(exited.log.contains("draining: the HBONE listener is closed"), "{}", exited.log);
        assert!(exited.log.contains("left=0"), "{}", exited.log);
        Ok(())
    })
}

const FILTER_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 80}
  rules:
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        hostname: new.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 301
  - matches: [{path: {type: PathPrefix, value: /rw}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: rewritten.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /inner}
    backendRefs: [{name: reviews-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /hdr}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: by-route}]
        add: [{name: x-added, value: added}]
        remove: [x-drop]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-resp, value: from-route}]
        remove: [content-type]
    backendRefs: [{name: reviews-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: reviews-v2, port: 80}
    backendRefs: [{name: reviews-v1, port: 80}]
"#;

/// The response head (lower-cased) and body of a `curl -D -` answer.
fn split_head(body: &str) -> (String, &str) {
    let (head, rest) = body.split_once("\r\n\r\n").unwrap_or((body, ""));
    (head.to_ascii_lowercase(), rest)
}

#[test]
fn filters_redirect_rewrite_modify_headers_and_mirror() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec(FILTER_ROUTE, ""))?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/HTTPRoute/reviews", 1)?;
        let echo = Behaviour { echo_head: true, ..Behaviour::default() };
        let v1 = e2e::http::HttpServer::start_with(&mesh.pod("shop", "reviews-v1").netns, 8080, "reviews-v1", echo)?;
        let v2 = mesh.pod("shop", "reviews-v2").netns.http_server(8080, "reviews-v2")?;
        let base = format!("http://{}", vip(20));

        // RequestRedirect: the waypoint answers itself; no backend sees the request.
        let (code, body) = curl(&mesh, &format!("{base}/old/page?q=1"), &["-D", "-"])?;
        let (head, _) = split_head(&body);
        assert_eq!(code, 301, "{body}\n{}", logs(&mesh));
        assert!(head.contains("\r\nlocation: http://new.example/new/page?q=1"), "{head}");
        assert_eq!(v1.requests() + v2.requests(), 0, "a redirect is not forwarded");

        // URLRewrite: the backend sees the rewritten path and host.
        let (code, body) = curl(&mesh, &format!("{base}/rw/x?y=2"), &[])?;
        assert_eq!(code, 200, "{body}");
        let seen = body.to_ascii_lowercase();
        assert!(seen.contains("get /inner/x?y=2 http/1.1"), "rewritten path: {body}");
        assert!(seen.contains("\nhost: rewritten.example"), "rewritten host: {body}");

        // Header modifiers: set replaces, add adds, remove removes; on the response too.
        let (code, body) =
            curl(&mesh, &format!("{base}/hdr"), &["-D", "-", "-H", "x-set: from-client", "-H", "x-drop: 1"])?;
        assert_eq!(code, 200, "{body}");
        let (head, rest) = split_head(&body);
        let seen = rest.to_ascii_lowercase();
        assert!(seen.contains("\nx-set: by-route"), "{rest}");
        assert!(!seen.contains("from-client"), "set replaces the client's value: {rest}");
        assert!(seen.contains("\nx-added: added"), "{rest}");
        assert!(!seen.contains("x-drop"), "removed header reached the backend: {rest}");
        assert!(head.contains("\r\nx-resp: from-route"), "{head}");
        assert!(!head.contains("content-type"), "removed response header reached the client: {head}");

        // RequestMirror: the client gets v1's answer; v2 gets a copy (sent in the background).
        let before = v1.requests();
        let (code, body) = curl(&mesh, &format!("{base}/mirror/m"), &[])?;
        assert_eq!((code, body.starts_with("hello from reviews-v1")), (200, true), "{body}");
        assert_eq!(v1.requests(), before + 1);
        let deadline = Instant::now() + T;
        while v2.requests() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(v2.requests(), 1, "the mirror got one copy\n{}", logs(&mesh));
        Ok(())
    })
}

const NO_RETRY_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: flaky
  namespace: shop
spec:
  parentRefs:
  - {group: "", kind: Service, name: flaky}
  rules:
  - backendRefs: [{name: flaky, port: 80}]
"#;

#[test]
fn failures_are_not_retried_without_a_retry_rule_and_failing_endpoints_are_ejected() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec(NO_RETRY_ROUTE, ""))?;
        mesh.wait_acked_by(WAYPOINT_ROUTE, "shop/HTTPRoute/flaky", 1)?;

        // No retry rule: the first 503 reaches the client and the backend saw one try.
        let flaky = Behaviour { fail_first: 1, ..Behaviour::default() };
        let flaky = e2e::http::HttpServer::start_with(&mesh.pod("shop", "flaky-1").netns, 8080, "flaky-1", flaky)?;
        let (code, body) = curl(&mesh, &format!("http://{}/", vip(60)), &[])?;
        assert_eq!(code, 503, "the failure is not retried: {body}\n{}", logs(&mesh));
        assert_eq!(flaky.requests(), 1, "one try only");
        let (code, _) = curl(&mesh, &format!("http://{}/", vip(60)), &[])?;
        assert_eq!((code, flaky.requests()), (200, 2));

        // Outlier ejection: reviews has two endpoints; v2 starts failing.
        let _v1 = mesh.pod("shop", "reviews-v1").netns.http_server(8080, "reviews-v1")?;
        let failing = Behaviour::default();
        let switch = failing.failing.clone();
        let v2 = e2e::http::HttpServer::start_with(&mesh.pod("shop", "reviews-v2").netns, 8080, "reviews-v2", failing)?;
        let url = format!("http://{}/", vip(20));
        for _ in 0..20 {
            let (code, body) = curl(&mesh, &url, &[])?;
            assert_eq!(code, 200, "{body}");
        }
        assert!(v2.requests() > 0, "both endpoints serve while healthy");

        switch.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut failures = 0;
        for _ in 0..40 {
            let (code, body) = curl(&mesh, &url, &[])?;
            match code {
                200 => assert!(body.starts_with("hello from reviews-v1"), "{body}"),
                503 => failures += 1,
                other => panic!("unexpected {other}: {body}"),
            }
        }
        // The default is 5 failures in a row before ejection.
        assert!((1..=5).contains(&failures), "{failures} failures reached the client\n{}", logs(&mesh));
        let v2_seen = v2.requests();
        for _ in 0..20 {
            let (code, body) = curl(&mesh, &url, &[])?;
            assert_eq!((code, body.starts_with("hello from reviews-v1")), (200, true), "{body}");
        }
        assert_eq!(v2.requests(), v2_seen, "the ejected endpoint got no more traffic");
        Ok(())
    })
}

const L7_AUTHZ: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-delete
  namespace: shop
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  action: DENY
  rules:
  - to:
    - operation: {methods: [DELETE]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: blocked-header
  namespace: shop
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  action: DENY
  rules:
  - when:
    - key: request.headers[x-block]
      values: ["yes"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-access
  namespace: shop
spec:
  targetRefs:
  - {group: "", kind: Service, name: reviews}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/tools/sa/client"]}
  - from:
    - source: {principals: ["cluster.local/ns/tools/sa/other"]}
    to:
    - operation: {methods: [GET]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: audit-reports
  namespace: shop
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  action: AUDIT
  rules:
  - to:
    - operation: {paths: ["/reports/*"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: slow-public
  namespace: shop
spec:
  targetRefs:
  - {group: "", kind: Service, name: slow}
  action: ALLOW
  rules:
  - to:
    - operation: {paths: ["/public/*"], notMethods: [PUT]}
"#;

#[test]
fn l7_allow_deny_and_audit_by_method_principal_and_header() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mut s = spec("", L7_AUTHZ);
        s.pods.push(PodSpec::new(1, "tools", "other"));
        let mesh = Mesh::start(s)?;
        for p in
            ["shop/no-delete", "shop/blocked-header", "shop/reviews-access", "shop/audit-reports", "shop/slow-public"]
        {
            mesh.wait_acked_by(WAYPOINT_POLICY, p, 1)?;
        }
        let _v1 = mesh.pod("shop", "reviews-v1").netns.http_server(8080, "reviews-v1")?;
        let _v2 = mesh.pod("shop", "reviews-v2").netns.http_server(8080, "reviews-v2")?;
        let _flaky = mesh.pod("shop", "flaky-1").netns.http_server(8080, "flaky-1")?;
        let _slow = mesh.pod("shop", "slow-1").netns.http_server(8080, "slow-1")?;
        let reviews = format!("http://{}/", vip(20));
        let flaky = format!("http://{}/", vip(60));
        let slow_public = format!("http://{}/public/page", vip(50));
        let slow_private = format!("http://{}/private", vip(50));

        let post = ["-X", "POST", "-d", "x"];
        let delete = ["-X", "DELETE"];
        let put = ["-X", "PUT", "-d", "x"];
        let cases: [(&str, &str, &[&str], u16, &str); 14] = [
            ("client", &reviews, &[], 200, "client is allowed everything"),
            ("client", &reviews, &post, 200, "client is allowed POST"),
            ("client", &reviews, &delete, 403, "DELETE is denied for all"),
            ("client", &reviews, &["-H", "x-block: yes"], 403, "the x-block header is denied"),
            ("client", &reviews, &["-H", "x-block: no"], 200, "another x-block value is not"),
            ("other", &reviews, &[], 200, "other is allowed GET"),
            ("other", &reviews, &post, 403, "other is not allowed POST"),
            ("other", &reviews, &delete, 403, "DELETE is denied for all"),
            // The ALLOW policy targets reviews only: flaky has no ALLOW policy.
            ("other", &flaky, &post, 200, "other may POST to a service without ALLOW policies"),
            ("other", &flaky, &delete, 403, "the Gateway-wide DENY applies to flaky too"),
            ("client", &format!("{reviews}reports/q1"), &[], 200, "AUDIT never denies"),
            // ALLOW by path with a `notMethods` form (slow has its own ALLOW policy).
            ("other", &slow_public, &[], 200, "GET under /public is allowed"),
            ("client", &slow_private, &[], 403, "outside /public nothing is allowed"),
            ("client", &slow_public, &put, 403, "PUT is excluded by notMethods"),
        ];
        for (pod, url, extra, want, why) in cases {
            let (code, body) = curl_from(&mesh, pod, url, extra)?;
            assert_eq!(code, want, "{why}: {pod} {url} {extra:?}: {body}\n{}", logs(&mesh));
            if want == 403 {
                assert_eq!(body, "RBAC: access denied", "{why}");
            }
        }
        // AUDIT is logged, and it does not turn a DENY into an allow.
        let (code, _) = curl(&mesh, &format!("{reviews}reports/q2"), &["-X", "DELETE"])?;
        assert_eq!(code, 403);
        let audited = |l: &str| l.contains("AUDIT policy matched") && l.contains("audit-reports");
        let log = mesh.waypoint_log_when("shop", "waypoint", Duration::from_secs(2), audited);
        assert!(audited(&log), "{log}");
        let m = mesh.waypoint_metrics("shop", "waypoint")?;
        assert!(
            requests_total(
                &m,
                &["response_code=\"403\"", "source_principal=\"spiffe://cluster.local/ns/tools/sa/other\""]
            ) >= 2,
            "{m}"
        );
        Ok(())
    })
}
