//! The mesh run by istiod-lite: the cluster is Kubernetes YAML in its config directory, node
//! proxies take state over delta xDS and certificates from its CA. Needs root and the binaries
//! (`cargo build -p ztunnel -p istiod-lite --bins`; `cargo test --workspace` builds them).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec};

type Res = Result<(), Box<dyn std::error::Error>>;

fn spec(ttl: u64) -> MeshSpec {
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![
            PodSpec::new(1, "shop", "web-1"),
            PodSpec::new(2, "shop", "web-2"),
            PodSpec::new(1, "tools", "client-1"),
            PodSpec::new(2, "tools", "client-2"),
        ],
        services: vec![ServiceSpec {
            namespace: "shop".into(),
            name: "web".into(),
            vip: IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)),
            port: 80,
            target_port: 8080,
            endpoints: vec!["shop/web-1".into(), "shop/web-2".into()],
            use_waypoint: None,
        }],
        control_plane: true,
        cert_ttl_seconds: ttl,
        ..MeshSpec::default()
    }
}

const DENY_CLIENT_1: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: deny-client-1
  namespace: shop
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/tools/sa/client-1"]
"#;

#[test]
fn mesh_runs_from_the_control_plane() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mut mesh = Mesh::start(spec(0))?;
        let web2 = mesh.pod("shop", "web-2").clone();
        let _s2 = web2.netns.http_server(8080, "shop/web-2")?;
        let url2 = format!("http://{}:8080/", web2.ip);

        // Traffic flows with CA-issued certificates (there are no certificate files here).
        let first = mesh.get(("tools", "client-1"), &url2);
        assert!(
            first.as_ref().is_ok_and(|b| b.contains("hello from shop/web-2")),
            "{first:?}\n--- node1 ---\n{}\n--- node2 ---\n{}\n--- istiod ---\n{}",
            mesh.ztunnel_log(1),
            mesh.ztunnel_log(2),
            mesh.istiod_log()
        );
        let dump = mesh.config_dump(2)?;
        assert!(dump["certificates"].to_string().contains("spiffe://cluster.local/ns/shop/sa/web-2"), "{dump}");
        assert!(mesh.istiod_log().contains("certificate issued"), "{}", mesh.istiod_log());

        // A connection client-1 holds open across the policy change below: an echo on 9090.
        let echo = web2.netns.tcp_listener(std::net::SocketAddr::from((web2.ip, 9090)))?;
        let echo_thread = std::thread::spawn(move || {
            if let Ok((mut s, _)) = echo.accept() {
                let mut r = s.try_clone().expect("clone");
                let _ = std::io::copy(&mut r, &mut s);
            }
        });
        let client1 = mesh.pod("tools", "client-1").clone();
        let mut held =
            client1.netns.tcp_connect(std::net::SocketAddr::from((web2.ip, 9090)), Duration::from_secs(5))?;
        held.set_read_timeout(Some(Duration::from_secs(5)))?;
        held.write_all(b"ping")?;
        let mut b = [0u8; 4];
        held.read_exact(&mut b)?;
        assert_eq!(&b, b"ping", "the held connection echoes before the policy change");

        // Editing a policy file changes the verdict; measure until both ztunnels have it.
        let edited = Instant::now();
        mesh.set_k8s_policies(DENY_CLIENT_1)?;
        // Acknowledged by both ztunnels, as istiod-lite's debug endpoint reports it.
        mesh.wait_all_acked("type.googleapis.com/istio.security.Authorization", "shop/deny-client-1", 2)?;
        let acked = edited.elapsed();
        mesh.wait_state_mentions(1, "deny-client-1")?;
        mesh.wait_state_mentions(2, "deny-client-1")?;
        let converged = edited.elapsed();
        eprintln!(
            "policy file change → ACKed by every ztunnel: {acked:?}; applied (seen in both dumps): {converged:?}"
        );
        assert!(converged < Duration::from_secs(1), "policy change took {converged:?}");
        assert!(mesh.get(("tools", "client-1"), &url2).is_err(), "client-1 is now denied");
        // ...and the connection it held open was closed by web-2's ztunnel: reset, not ended.
        let after = held.read(&mut b);
        assert!(
            matches!(&after, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
            "{after:?}\n--- node2 ---\n{}",
            mesh.ztunnel_log(2)
        );
        assert!(mesh.ztunnel_log(2).contains("closing a connection the new policy refuses"), "{}", mesh.ztunnel_log(2));
        drop(held);
        let _ = echo_thread.join();
        assert!(mesh.get(("tools", "client-2"), &url2)?.contains("hello"), "client-2 is not");

        // A (re)added pod becomes reachable through the mesh.
        mesh.delete_pod("shop", "web-1")?;
        mesh.wait_pods_served(1, 1)?;
        let web1 = mesh.recreate_pod("shop", "web-1")?.clone();
        let _s1 = web1.netns.http_server(8080, "shop/web-1")?;
        // The client's node must know the new address, and web-1's own node must serve the new
        // pod again (its ztunnel gets the pod from the node agent, not from xDS): with the
        // directory watcher on inotify, xDS can now be first by tens of milliseconds.
        mesh.wait_state_mentions(2, &web1.ip.to_string())?;
        mesh.wait_pods_served(1, 2)?;
        assert!(mesh.get(("tools", "client-2"), &format!("http://{}:8080/", web1.ip))?.contains("shop/web-1"));

        // Without the control plane, traffic keeps flowing on the last configuration.
        mesh.stop_istiod();
        assert!(mesh.get(("tools", "client-2"), &url2)?.contains("hello"));
        assert!(mesh.get(("tools", "client-1"), &url2).is_err(), "the last policy still applies");
        // Changes made while it is down apply once it is back.
        mesh.set_k8s_policies("")?;
        mesh.restart_istiod()?;
        mesh.wait_state(2, "no policies", |s| !s.contains("deny-client-1"))?;
        assert!(mesh.get(("tools", "client-1"), &url2)?.contains("hello"), "converged after restart");
        Ok(())
    });
}

#[test]
fn short_certificates_rotate_under_steady_traffic() {
    e2e::sandboxed_with(Duration::from_secs(120), || -> Res {
        let mesh = Mesh::start(spec(6))?;
        let web2 = mesh.pod("shop", "web-2").clone();
        let _s2 = web2.netns.http_server(8080, "shop/web-2")?;
        let url2 = format!("http://{}:8080/", web2.ip);
        // 6 s certificates renew every 3-3.6 s: 10 s of traffic crosses at least two renewals
        // on both ends, and no connection may fail.
        let started = Instant::now();
        let (mut ok, mut failed) = (0, Vec::new());
        while started.elapsed() < Duration::from_secs(10) && ok + failed.len() < 2000 {
            match mesh.get(("tools", "client-1"), &url2) {
                Ok(_) => ok += 1,
                Err(e) => failed.push(e),
            }
        }
        let errors = |n| {
            mesh.ztunnel_log(n)
                .lines()
                .filter(|l| l.contains("error=") || l.contains("xDS") || l.contains("WARN"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            failed.is_empty(),
            "{} of {} connections failed: {:?}\nnode1 errors:\n{}\nnode2 errors:\n{}",
            failed.len(),
            ok + failed.len(),
            failed.first(),
            errors(1),
            errors(2)
        );
        for n in [1, 2] {
            let renewals = mesh.ztunnel_log(n).matches("certificate renewed").count();
            assert!(renewals >= 2, "node{n}: {renewals} renewals in 10 s of 6 s certificates");
        }
        eprintln!("{ok} connections, no failure, across certificate rotations");
        Ok(())
    });
}
