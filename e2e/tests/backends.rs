//! The harness's test backends for waypoint scenarios, checked with real clients in pods: the
//! h2c server answers HTTP/2 prior-knowledge requests (curl, h2load), the gRPC service answers
//! tonic's client (unary and bidirectional streaming), and the
//! HTTP server's slow, flaky and echoing behaviours do what the scenarios rely on. Needs root.

use std::time::{Duration, Instant};

use e2e::http::{Behaviour, HttpServer};
use e2e::{Topology, sandboxed};

#[test]
fn h2c_and_behaviour_backends_answer_as_documented() {
    sandboxed(|| -> Result<(), Box<dyn std::error::Error>> {
        let topo = Topology::builder().nodes(1).build()?;
        let n1 = topo.node(1);
        let server = topo.add_pod(n1, "shop", "server")?;
        let client = topo.add_pod(n1, "tools", "client")?;
        let t = Duration::from_secs(10);

        let h2 = server.netns.h2c_server(9000, "grpc-1")?;
        let url = format!("http://{}:9000/shop.Echo/Say", server.ip);
        let out = client.netns.curl(&url, &["--http2-prior-knowledge", "-sS", "-i"], t)?.ok()?;
        assert!(out.stdout.starts_with("HTTP/2 200"), "{}", out.stdout);
        assert!(out.stdout.contains("hello from grpc-1 (h2)\npath /shop.Echo/Say"), "{}", out.stdout);
        // The real gRPC service, called pod to pod: unary, then a bidirectional stream whose
        // replies come one by one.
        let grpc = server.netns.grpc_server(9001, "grpc-1")?;
        let addr = std::net::SocketAddr::new(server.ip.into(), grpc.port());
        let said = e2e::grpc::say(&client.netns, addr, "hi", t)?;
        assert_eq!(
            (said.message.as_str(), said.served_by.as_str(), said.method.as_str()),
            ("hi", "grpc-1", e2e::grpc::SAY)
        );
        let chat = e2e::grpc::chat(&client.netns, addr, &["a", "b", "c"], t)?;
        let got: Vec<(&str, &str)> = chat.iter().map(|r| (r.message.as_str(), r.method.as_str())).collect();
        assert_eq!(got, [("a", e2e::grpc::CHAT), ("b", e2e::grpc::CHAT), ("c", e2e::grpc::CHAT)]);
        assert_eq!(grpc.calls(), 2);
        let load = client.netns.exec(["h2load", "-n", "50", "-c", "2", "-m", "5", &url], Duration::from_secs(20))?;
        assert!(load.stdout.contains("50 succeeded"), "{}\n{}", load.stdout, load.stderr);
        assert_eq!(h2.requests(), 51);

        let flaky = HttpServer::start_with(
            &server.netns,
            8081,
            "flaky",
            Behaviour { fail_first: 1, echo_head: true, ..Behaviour::default() },
        )?;
        let url = format!("http://{}:8081/some/path", server.ip);
        let first = client.netns.curl(&url, &["-w", "%{http_code}", "-o", "/dev/null"], t)?.ok()?;
        assert_eq!(first.stdout, "503");
        let second = client.netns.curl(&url, &["-H", "X-Probe: 1"], t)?.ok()?;
        assert!(
            second.stdout.contains("GET /some/path HTTP/1.1") && second.stdout.contains("X-Probe: 1"),
            "{}",
            second.stdout
        );
        assert_eq!(flaky.requests(), 2);

        let _slow = HttpServer::start_with(
            &server.netns,
            8082,
            "slow",
            Behaviour { delay: Duration::from_millis(800), ..Behaviour::default() },
        )?;
        let started = Instant::now();
        let body = client.netns.http_get(&format!("http://{}:8082/", server.ip))?;
        assert!(body.contains("hello from slow") && started.elapsed() >= Duration::from_millis(800), "{body}");
        Ok(())
    })
}
