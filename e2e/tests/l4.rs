//! ztunnel end to end: two nodes, pods enrolled through the real CNI chain and node agent,
//! real clients (`curl`, `iperf3`) and servers, `tcpdump` on the node link. Needs root and the
//! mesh binaries (`cargo build -p ztunnel --bins`; `cargo test --workspace` builds them).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, metric_sum};
use e2e::topology::WIRE_BRIDGE;

type Res = Result<(), Box<dyn std::error::Error>>;
const T: Duration = Duration::from_secs(5);
const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));

/// shop (ambient): web-1 on node 1, web-2 on node 2, backing service `web` on the VIP.
/// tools (ambient): client-1 on node 1, client-2 and nosy on node 2.
/// legacy (not enrolled): outsider on node 1.
fn spec(policies: &str) -> MeshSpec {
    let mut nosy = PodSpec::new(2, "tools", "nosy");
    nosy.service_account = "nosy".into();
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![
            PodSpec::new(1, "shop", "web-1"),
            PodSpec::new(2, "shop", "web-2"),
            PodSpec::new(1, "tools", "client-1"),
            PodSpec::new(2, "tools", "client-2"),
            nosy,
            PodSpec::new(1, "legacy", "outsider"),
        ],
        services: vec![ServiceSpec {
            namespace: "shop".into(),
            name: "web".into(),
            vip: VIP,
            port: 80,
            target_port: 8080,
            endpoints: vec!["shop/web-1".into(), "shop/web-2".into()],
            use_waypoint: None,
        }],
        policies_yaml: policies.into(),
        log_format: String::new(),
        ..MeshSpec::default()
    }
}

fn url(ip: impl std::fmt::Display, port: u16) -> String {
    format!("http://{ip}:{port}/")
}

#[test]
fn cross_node_traffic_is_mtls_and_services_spread() {
    e2e::sandboxed_with(Duration::from_secs(90), || -> Res {
        let mesh = Mesh::start(spec(""))?;
        let web1 = mesh.pod("shop", "web-1");
        let web2 = mesh.pod("shop", "web-2");
        let client = mesh.pod("tools", "client-1");
        let s1 = web1.netns.http_server(8080, "shop/web-1")?;
        let s2 = web2.netns.http_server(8080, "shop/web-2")?;

        let cap = mesh.topo.wire().capture(WIRE_BRIDGE, "tcp")?;
        let body = mesh.get(("tools", "client-1"), &url(web2.ip, 8080))?;
        assert!(body.contains("hello from shop/web-2"), "{body}");
        // The server sees the real client address: ztunnel connects transparently.
        assert_eq!(s2.peers().last().map(|p| p.ip()), Some(IpAddr::V4(client.ip)), "client address preserved");
        let wire = cap.stop()?;
        let text = wire.text()?;
        assert!(text.contains(".15008"), "the tunnel crosses the link on 15008:\n{text}");
        assert!(
            !text.contains(".8080:") && !text.contains(".8080 "),
            "no plaintext application port on the link:\n{text}"
        );
        assert!(!wire.contains(b"hello from"), "the response body never crosses the link in clear");
        assert!(!wire.contains(b"GET / HTTP"), "the request never crosses the link in clear");
        assert!(wire.contains(&[0x17, 0x03, 0x03]), "TLS application-data records cross the link");

        // Through the service VIP: both endpoints, on both nodes, get connections.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let body = mesh.get(("tools", "client-1"), &url(VIP, 80))?;
            seen.insert(body.lines().next().unwrap_or_default().to_owned());
        }
        assert_eq!(seen.len(), 2, "connections spread over both endpoints: {seen:?}");
        assert!(s1.requests() >= 3 && s2.requests() >= 4, "{} / {}", s1.requests(), s2.requests());

        // iperf3 across nodes through the mesh.
        let _iperf = web2.netns.iperf3_server(5201)?;
        let report = client.netns.iperf3_client(IpAddr::V4(web2.ip), 5201, 1)?;
        assert!(report.received_bytes > 1_000_000, "iperf3 moved {} bytes", report.received_bytes);

        // Metrics: the destination node counted client-1 → web-2 with Istio's labels.
        let m = mesh.metrics(2)?;
        let labels = [
            "reporter=\"destination\"",
            "source_workload=\"client-1\"",
            "source_principal=\"spiffe://cluster.local/ns/tools/sa/client-1\"",
            "destination_workload=\"web-2\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/web-2\"",
            "connection_security_policy=\"mutual_tls\"",
        ];
        assert!(metric_sum(&m, "istio_tcp_connections_opened_total", &labels) >= 2.0, "{m}");
        assert!(metric_sum(&m, "istio_tcp_received_bytes_total", &labels) > 1_000_000.0, "iperf3 bytes counted:\n{m}");
        // Readiness and the admin endpoint answer; the log level changes at run time.
        let node2 = &mesh.topo.node(2).netns;
        let ready = node2.curl(&format!("http://{}:15021/healthz/ready", mesh.topo.node(2).ip), &["--fail"], T)?;
        assert!(ready.ok()?.stdout.contains("ready"));
        let level = node2.curl("http://127.0.0.1:15000/logging?level=debug", &["--fail"], T)?.ok()?.stdout;
        assert!(level.contains("log level set to debug"), "{level}");
        let bad = node2.curl("http://127.0.0.1:15000/logging?level=no[such", &["-g"], T)?;
        assert!(bad.stdout.contains("invalid log filter"), "a bad filter is refused with a reason: {}", bad.stdout);
        let dump = mesh.config_dump(2)?;
        assert!(dump["certificates"].to_string().contains("spiffe://cluster.local/ns/shop/sa/web-2"), "{dump}");
        assert!(dump["certificates"][0]["expiresInSeconds"].as_u64().unwrap_or(0) > 3600, "{dump}");
        let src = mesh.metrics(1)?;
        let src_labels = [
            "reporter=\"source\"",
            "source_workload=\"client-1\"",
            "destination_service=\"web.shop.svc.cluster.local\"",
        ];
        assert!(metric_sum(&src, "istio_tcp_connections_closed_total", &src_labels) >= 20.0, "{src}");
        Ok(())
    });
}

const POLICIES: &str = r#"- name: allow-client
  namespace: shop
  scope: NAMESPACE
  action: ALLOW
  groups:
  - rules:
    - matches:
      - principals: [{exact: cluster.local/ns/tools/sa/client-1}, {exact: cluster.local/ns/tools/sa/client-2}]
- name: deny-tools-admin
  namespace: shop
  scope: NAMESPACE
  action: DENY
  groups:
  - rules:
    - matches:
      - namespaces: [{exact: tools}]
        destinationPorts: [9090]
- name: audit-everything
  namespace: shop
  scope: NAMESPACE
  action: DENY
  dryRun: true
  groups:
  - rules:
    - matches:
      - destinationPorts: [8080]
"#;

#[test]
fn allow_by_principal_deny_by_namespace_and_dry_run() {
    e2e::sandboxed_with(Duration::from_secs(90), || -> Res {
        let mut mesh = Mesh::start(MeshSpec { log_format: "json".into(), ..spec(POLICIES) })?;
        let web2 = mesh.pod("shop", "web-2").clone();
        let _app = web2.netns.http_server(8080, "shop/web-2")?;
        let _admin = web2.netns.http_server(9090, "shop/web-2 admin")?;

        // ALLOW by principal: client-1 (other node) and client-2 (same node) pass; the
        // dry-run DENY on 8080 changes nothing.
        assert!(mesh.get(("tools", "client-1"), &url(web2.ip, 8080))?.contains("hello"));
        assert!(mesh.get(("tools", "client-2"), &url(web2.ip, 8080))?.contains("hello"));
        // nosy has a mesh identity, but no ALLOW policy names it.
        let denied = mesh.get(("tools", "nosy"), &url(web2.ip, 8080));
        assert!(denied.is_err(), "nosy must be refused: {denied:?}");
        // DENY by namespace on the admin port beats the ALLOW.
        let denied = mesh.get(("tools", "client-1"), &url(web2.ip, 9090));
        assert!(denied.is_err(), "tools → 9090 must be refused: {denied:?}");

        let log = mesh.ztunnel_log(2);
        assert!(log.contains("none of 1 ALLOW policies matched"), "nosy's denial names its reason:\n{log}");
        assert!(log.contains("denied by policy shop/deny-tools-admin"), "the deciding policy is named:\n{log}");
        assert!(log.contains("dry-run DENY shop/audit-everything"), "dry-run verdicts are logged:\n{log}");
        let m = mesh.metrics(2)?;
        assert!(metric_sum(&m, "ztunnel_connections_denied_total", &["reason=\"policy\""]) >= 2.0, "{m}");
        // JSON logs: every line is an object; access lines carry the connection's facts.
        let access: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .filter(|v| v["target"] == "access")
            .collect();
        let denial = access
            .iter()
            .find(|v| v["src.identity"] == "spiffe://cluster.local/ns/tools/sa/nosy")
            .unwrap_or_else(|| panic!("an access line for nosy: {access:?}"));
        assert_eq!(denial["dst.workload"], "shop/web-2");
        assert!(denial["verdict"].as_str().is_some_and(|v| v.starts_with("denied")), "{denial}");

        // Editing the state file changes the verdict without a restart.
        mesh.set_policies("")?;
        mesh.wait_state(2, "no policies", |s| !s.contains("allow-client"))?;
        assert!(mesh.get(("tools", "nosy"), &url(web2.ip, 8080))?.contains("hello"), "no policy, no denial");
        Ok(())
    });
}

const STRICT: &str = r#"- name: strict
  namespace: shop
  scope: NAMESPACE
  action: DENY
  groups:
  - rules:
    - matches:
      - notPrincipals: [{presence: {}}]
"#;

#[test]
fn strict_refuses_plaintext_and_unenrolled_pods_are_untouched() {
    e2e::sandboxed_with(Duration::from_secs(90), || -> Res {
        let mut mesh = Mesh::start(spec(""))?;
        let web1 = mesh.pod("shop", "web-1").clone();
        let outsider = mesh.pod("legacy", "outsider").clone();
        let _app = web1.netns.http_server(8080, "shop/web-1")?;
        let _legacy_app = outsider.netns.http_server(8080, "legacy/outsider")?;

        // The outsider has no redirection of its own.
        let tables = outsider.netns.exec(["nft", "list", "tables"], T)?.ok()?.stdout;
        assert!(!tables.contains("ztunnel"), "unenrolled pod has no redirection: {tables}");
        let enrolled_tables = web1.netns.exec(["nft", "list", "tables"], T)?.ok()?.stdout;
        assert!(enrolled_tables.contains("ztunnel"), "enrolled pod has redirection: {enrolled_tables}");

        // PERMISSIVE: plaintext from outside the mesh is accepted on 15006.
        assert!(mesh.get(("legacy", "outsider"), &url(web1.ip, 8080))?.contains("hello from shop/web-1"));
        // Traffic to the unenrolled pod is untouched: plain HTTP on the link.
        let cap = mesh.topo.wire().capture(WIRE_BRIDGE, "tcp port 8080")?;
        assert!(mesh.get(("shop", "web-2"), &url(outsider.ip, 8080))?.contains("legacy/outsider"));
        assert!(cap.stop()?.contains(b"hello from legacy/outsider"), "plaintext to an unenrolled pod stays plaintext");

        // STRICT: the same plaintext connection is refused; mTLS clients still pass.
        mesh.set_policies(STRICT)?;
        mesh.wait_state_mentions(1, "strict")?;
        let refused = mesh.get(("legacy", "outsider"), &url(web1.ip, 8080));
        assert!(refused.is_err(), "STRICT refuses plaintext: {refused:?}");
        assert!(mesh.get(("tools", "client-1"), &url(web1.ip, 8080))?.contains("hello"));
        let log = mesh.ztunnel_log(1);
        assert!(log.contains("denied by policy shop/strict"), "{log}");
        Ok(())
    });
}

#[test]
fn pod_lifecycle_restart_and_garbage() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mut mesh = Mesh::start(spec(""))?;
        let web2 = mesh.pod("shop", "web-2").clone();
        let client = mesh.pod("tools", "client-1").clone();
        let _app = web2.netns.http_server(8080, "shop/web-2")?;

        // Garbage at 15008 (from outside the mesh) and at 15001 (inside a pod) is refused.
        let outsider = mesh.pod("legacy", "outsider").clone();
        for (from, to) in
            [(&outsider, SocketAddr::new(IpAddr::V4(web2.ip), 15008)), (&client, "127.0.0.1:15001".parse()?)]
        {
            let started = Instant::now();
            let mut tcp = match from.netns.tcp_connect(to, T) {
                Ok(t) => t,
                // Refused before the garbage even went out: just as good.
                Err(e) if e.to_string().contains("reset") || e.to_string().contains("refused") => continue,
                Err(e) => return Err(e.into()),
            };
            tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
            let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8 | 0x80).collect();
            let _ = tcp.write_all(&garbage);
            let mut answer = Vec::new();
            let read = tcp.read_to_end(&mut answer);
            assert!(
                read.is_ok() || read.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
                "{to}: closed, not hanging: {read:?}"
            );
            assert!(!answer.starts_with(b"HTTP"), "{to}: no answer to garbage");
            assert!(started.elapsed() < Duration::from_secs(2), "{to}: refused quickly");
        }
        assert!(mesh.get(("tools", "client-1"), &url(web2.ip, 8080))?.contains("hello"), "others unaffected");

        // A connection open through node 2's ztunnel before the restart...
        let mut open = client.netns.tcp_connect(SocketAddr::new(IpAddr::V4(web2.ip), 8080), T)?;
        open.set_read_timeout(Some(Duration::from_secs(5)))?;
        // Restart node 2's ztunnel: new connections work again within a second of it serving.
        mesh.restart_ztunnel(2)?;
        // ...either still works or was closed cleanly (EOF or reset), never left hanging.
        let _ = open.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n");
        let mut reply = Vec::new();
        match open.read_to_end(&mut reply) {
            Ok(_) => assert!(reply.is_empty() || reply.starts_with(b"HTTP/1."), "open connection: {reply:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "open connection must not hang: {e}"),
        }
        let started = Instant::now();
        loop {
            match mesh.get(("tools", "client-1"), &url(web2.ip, 8080)) {
                Ok(body) if body.contains("hello") => break,
                other => assert!(started.elapsed() < Duration::from_secs(1), "after restart: {other:?}"),
            }
        }
        assert!(mesh.ztunnel_log(2).contains("serving pod"), "the new ztunnel got its pods back from the agent");

        // Deleting a pod removes its listeners and rules; creating it again restores them.
        let dump = mesh.config_dump(1)?;
        assert_eq!(dump["pods"].as_array().map(Vec::len), Some(2), "web-1 and client-1 served: {dump}");
        mesh.delete_pod("shop", "web-1")?;
        mesh.wait_pods_served(1, 1)?;
        let dump = mesh.config_dump(1)?;
        assert!(!dump["pods"].to_string().contains("shop/web-1"), "web-1's listeners are gone: {dump}");
        let web1 = mesh.recreate_pod("shop", "web-1")?.clone();
        mesh.wait_pods_served(1, 2)?;
        let tables = web1.netns.exec(["nft", "list", "tables"], T)?.ok()?.stdout;
        assert!(tables.contains("ztunnel"), "redirection is back: {tables}");
        let _app1 = web1.netns.http_server(8080, "shop/web-1")?;
        mesh.wait_state_mentions(2, &format!("\"{}\"", web1.ip))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The state file names web-1's new address once ztunnel reloads it.
            match mesh.get(("tools", "client-2"), &url(web1.ip, 8080)) {
                Ok(body) if body.contains("hello from shop/web-1") => break,
                other => assert!(Instant::now() < deadline, "recreated pod reachable: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The access line is written when the connection ends, which may be after curl returns.
        let deadline = Instant::now() + Duration::from_secs(3);
        while !mesh.ztunnel_log(2).contains("dst.workload=\"shop/web-1\"") {
            assert!(
                Instant::now() < deadline,
                "the recreated pod is reached through the mesh:\n{}",
                mesh.ztunnel_log(2)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    });
}
