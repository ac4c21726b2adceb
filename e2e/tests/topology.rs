//! The harness tested with real traffic: two nodes, pods attached by Debian's CNI plugins,
//! `curl` and `iperf3` between pods, `tcpdump` on the node link, and proof that nothing is
//! left behind, neither after a normal teardown nor after a test dies midway. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use e2e::topology::WIRE_BRIDGE;
use e2e::{ChainedPlugin, Error, SandboxRun, Topology, inventory, sandboxed};
use serde_json::json;

const HTTP_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;

fn url(ip: Ipv4Addr, path: &str) -> String {
    format!("http://{ip}:{HTTP_PORT}{path}")
}

#[test]
fn pods_reach_each_other_on_one_node_and_across_nodes() {
    sandboxed(|| -> Result<(), Error> {
        let topo = Topology::builder().nodes(2).build()?;
        let (n1, n2) = (topo.node(1), topo.node(2));
        let web = topo.add_pod(n1, "shop", "web")?;
        let client = topo.add_pod(n1, "tools", "client")?;
        let api = topo.add_pod(n2, "shop", "api")?;
        let probe = topo.add_pod(n2, "tools", "probe")?;
        for (pod, node) in [(&web, n1), (&client, n1), (&api, n2), (&probe, n2)] {
            assert!(node.pod_cidr.contains(pod.ip), "{} got {} outside {}", pod.name, pod.ip, node.pod_cidr);
            assert_eq!(pod.node, node.name);
        }
        assert_eq!(topo.pods().len(), 4);

        let web_srv = web.netns.http_server(HTTP_PORT, "shop/web")?;
        let api_srv = api.netns.http_server(HTTP_PORT, "shop/api")?;

        // Same node: through node1's bridge only.
        let body = client.netns.http_get(&url(web.ip, "/"))?;
        assert!(body.contains("hello from shop/web"), "{body}");
        assert!(body.contains(&format!("peer {}:", client.ip)), "source address rewritten: {body}");
        // Across nodes, both directions, with the source address intact.
        let body = client.netns.http_get(&url(api.ip, "/"))?;
        assert!(body.contains("hello from shop/api") && body.contains(&format!("peer {}:", client.ip)), "{body}");
        let body = probe.netns.http_get(&url(web.ip, "/"))?;
        assert!(body.contains("hello from shop/web") && body.contains(&format!("peer {}:", probe.ip)), "{body}");
        let web_peers: Vec<IpAddr> = web_srv.peers().iter().map(|p| p.ip()).collect();
        assert_eq!(web_peers, [IpAddr::V4(client.ip), IpAddr::V4(probe.ip)]);
        assert_eq!(api_srv.requests(), 1);

        // In-process code on a thread inside a pod uses the pod's network.
        let api_addr = std::net::SocketAddr::from((api.ip, HTTP_PORT));
        let in_pod = client.netns.spawn_thread("in-pod-client", move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect_timeout(&api_addr, Duration::from_secs(3))?;
            s.write_all(b"GET /thread HTTP/1.1\r\nHost: api\r\n\r\n")?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok::<_, std::io::Error>((s.local_addr()?, reply))
        })?;
        let (local, reply) = in_pod.join().unwrap()?.expect("thread in the client pod reaches api");
        assert_eq!(local.ip(), IpAddr::V4(client.ip));
        assert!(reply.contains(&format!("peer {local}")), "{reply}");
        assert_eq!(api_srv.requests(), 2);

        client.netns.wait_for_tcp(api_addr, Duration::from_secs(5))?;
        let conn = client.netns.tcp_connect(api_addr, Duration::from_secs(3))?;
        assert_eq!(conn.local_addr().unwrap().ip(), IpAddr::V4(client.ip));
        drop(conn);
        let closed = std::net::SocketAddr::from((api.ip, 9));
        let err = client.netns.wait_for_tcp(closed, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, Error::NotReady { .. }), "{err}");

        // A port nobody listens on is refused, not silently answered.
        let refused = client.netns.curl(&format!("http://{}:9/", api.ip), &[], Duration::from_secs(3))?;
        assert!(!refused.success(), "connection to a closed port succeeded: {}", refused.stdout);

        let _iperf = api.netns.iperf3_server(IPERF_PORT)?;
        let same = probe.netns.iperf3_client(IpAddr::V4(api.ip), IPERF_PORT, 1)?;
        let cross = client.netns.iperf3_client(IpAddr::V4(api.ip), IPERF_PORT, 1)?;
        for (what, r) in [("same node", same), ("cross node", cross)] {
            assert!(r.received_bytes > 1_000_000, "{what}: iperf3 moved only {r:?}");
        }
        topo.teardown()
    });
}

#[test]
fn node_link_capture_sees_cross_node_traffic_only() {
    sandboxed(|| -> Result<(), Error> {
        let topo = Topology::builder().nodes(2).build()?;
        let near = topo.add_pod(topo.node(1), "apps", "near")?;
        let client = topo.add_pod(topo.node(1), "apps", "client")?;
        let far = topo.add_pod(topo.node(2), "apps", "far")?;
        let _near_srv = near.netns.http_server(HTTP_PORT, "apps/near")?;
        let _far_srv = far.netns.http_server(HTTP_PORT, "apps/far")?;

        let capture = topo.wire().capture(WIRE_BRIDGE, &format!("tcp port {HTTP_PORT}"))?;
        client.netns.http_get(&url(near.ip, "/same-node-marker"))?;
        client.netns.http_get(&url(far.ip, "/cross-node-marker"))?;
        let seen = capture.stop()?;

        assert_eq!(seen.linktype, e2e::pcap::LINKTYPE_ETHERNET);
        let dump = seen.text()?;
        assert!(seen.contains(b"GET /cross-node-marker"), "cross-node request not on the wire:\n{dump}");
        assert!(seen.contains(b"hello from apps/far"), "cross-node response not on the wire:\n{dump}");
        assert!(!seen.contains(b"same-node-marker"), "same-node traffic left the node:\n{dump}");
        // Pod addresses travel unchanged between nodes (routed, not masqueraded).
        assert!(seen.between(client.ip, far.ip).count() >= 6, "handshake, request, response, close:\n{dump}");
        assert_eq!(seen.between(client.ip, near.ip).count(), 0, "{dump}");
        assert_eq!(seen.len(), seen.between(client.ip, far.ip).count(), "unexpected packets:\n{dump}");
        topo.teardown()
    });
}

#[test]
fn chained_plugin_runs_after_bridge_and_rolls_back_on_failure() {
    sandboxed(|| -> Result<(), Error> {
        // A chained plugin that is not there fails the build, and the half-built topology goes.
        let missing = ChainedPlugin::new("/nonexistent/ztunnel-cni", json!({ "log_level": "debug" }));
        let err = Topology::builder().chain_plugin(missing).build().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ztunnel-cni"), "{err}");
        let bad = ChainedPlugin::new("/usr/lib/cni/tuning", json!(["not", "an", "object"]));
        let err = Topology::builder().chain_plugin(bad).build().unwrap_err();
        assert!(matches!(&err, Error::CniConfig { reason, .. } if reason.contains("JSON object")), "{err}");
        assert!(inventory()?.is_clean(), "{:?}", inventory()?);

        // Debian's `tuning` plugin only works on a prevResult: it finds the pod interface there.
        let tuning = ChainedPlugin::new("/usr/lib/cni/tuning", json!({ "mtu": 1400 }));
        let topo = Topology::builder().nodes(1).chain_plugin(tuning).build()?;
        let node = topo.node(1);
        let conflist = node.cni_conf_dir().join(e2e::cni::CONFLIST_FILE);
        let pod = topo.add_pod(node, "tuned", "one")?;
        let link = pod.netns.exec(["ip", "-o", "link", "show", "eth0"], Duration::from_secs(5))?.ok()?;
        assert!(link.stdout.contains("mtu 1400"), "chained plugin not applied: {}", link.stdout);

        // The runtime reads the node's list at each ADD: a node agent rewriting it takes effect.
        let mut list: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
        list["plugins"][1]["mtu"] = json!(1300);
        std::fs::write(&conflist, serde_json::to_vec(&list).unwrap()).unwrap();
        let second = topo.add_pod(node, "tuned", "two")?;
        let link = second.netns.exec(["ip", "-o", "link", "show", "eth0"], Duration::from_secs(5))?.ok()?;
        assert!(link.stdout.contains("mtu 1300"), "rewritten list not used: {}", link.stdout);

        // A failing chained plugin fails the pod, and the runtime undoes the bridge's ADD.
        list["plugins"][1]["sysctl"] = json!({ "net.ipv4.conf.eth0.no_such_knob": "1" });
        std::fs::write(&conflist, serde_json::to_vec(&list).unwrap()).unwrap();
        let before = node.ipam_allocations()?;
        match topo.add_pod(node, "tuned", "broken") {
            Err(Error::CniPlugin { plugin, command, pod, .. }) => {
                assert_eq!((plugin.as_str(), command, pod.as_str()), ("tuning", "ADD", "tuned/broken"));
            }
            other => panic!("expected the tuning plugin's error, got {other:?}"),
        }
        assert_eq!(node.ipam_allocations()?, before, "failed ADD kept its address");
        assert!(!inventory()?.netns.iter().any(|n| n.ends_with("tuned-broken")), "failed pod's netns kept");
        assert_eq!(topo.pods().len(), 2);
        topo.teardown()
    });
}

#[test]
fn chained_plugins_get_what_a_runtime_passes() {
    sandboxed(|| -> Result<(), Error> {
        let record_dir = Path::new("/run/recorder");
        std::fs::create_dir_all(record_dir).unwrap();
        let bin = env!("CARGO_BIN_EXE_cni-recorder");
        let first = ChainedPlugin::new(bin, json!({ "record_dir": record_dir, "tag": "first" }));
        let second =
            ChainedPlugin::new(bin, json!({ "type": "recorder-2", "record_dir": record_dir, "tag": "second" }));
        let topo = Topology::builder().nodes(1).chain_plugin(first).chain_plugin(second).build()?;
        let node = topo.node(1);
        let pod = topo.add_pod(node, "shop", "web")?;
        topo.remove_pod(&pod)?;

        let text = std::fs::read_to_string(record_dir.join("calls.jsonl")).unwrap();
        let calls: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let order: Vec<(&str, &str)> =
            calls.iter().map(|c| (c["command"].as_str().unwrap(), c["config"]["tag"].as_str().unwrap())).collect();
        assert_eq!(order, [("ADD", "first"), ("ADD", "second"), ("DEL", "second"), ("DEL", "first")]);
        let pod_ip = format!("{}/24", pod.ip);
        for c in &calls {
            assert_eq!(c["containerId"], pod.container_id.as_str(), "{c}");
            assert_eq!(c["netns"], pod.netns.path().to_str().unwrap(), "{c}");
            assert_eq!(c["ifname"], "eth0", "{c}");
            let args = c["args"].as_str().unwrap();
            assert!(args.contains("K8S_POD_NAMESPACE=shop;") && args.contains("K8S_POD_NAME=web;"), "{args}");
            assert!(c["path"].as_str().unwrap().starts_with(node.cni_bin_dir().to_str().unwrap()), "{c}");
            assert_eq!((&c["config"]["name"], &c["config"]["cniVersion"]), (&json!("e2e-pods"), &json!("1.0.0")));
            // ADD and DEL both carry the bridge's result with the pod's address.
            let ips = c["config"]["prevResult"]["ips"].as_array().unwrap();
            assert!(ips.iter().any(|ip| ip["address"] == pod_ip.as_str()), "{c}");
        }
        topo.teardown()
    });
}

#[test]
fn teardown_leaves_nothing() {
    sandboxed(|| -> Result<(), Error> {
        let topo = Topology::builder().nodes(2).build()?;
        let a = topo.add_pod(topo.node(1), "ns-a", "a")?;
        let b = topo.add_pod(topo.node(2), "ns-b", "b")?;
        let gone = topo.add_pod(topo.node(2), "ns-b", "short-lived")?;
        let ipam_before: Vec<_> = topo.nodes().iter().map(|n| n.ipam_allocations()).collect::<Result<_, _>>()?;
        assert_eq!(ipam_before, [vec![a.ip], vec![b.ip, gone.ip]]);

        // Deleting one pod releases its address and its namespace only.
        topo.remove_pod(&gone)?;
        assert_eq!(topo.node(2).ipam_allocations()?, [b.ip]);
        let inv = inventory()?;
        assert!(!inv.netns.contains(&gone.netns.name().to_owned()), "{inv:?}");
        assert!(inv.netns.contains(&b.netns.name().to_owned()), "{inv:?}");

        // Leave plenty running, guards still held: teardown must stop them all.
        let server = a.netns.http_server(HTTP_PORT, "a")?;
        let iperf = b.netns.iperf3_server(IPERF_PORT)?;
        let sleeper = b.netns.spawn(["sleep", "600"])?;
        let capture = topo.wire().capture(WIRE_BRIDGE, "")?;
        b.netns.http_get(&url(a.ip, "/"))?;
        let during = inventory()?;
        assert_eq!(during.netns.len(), 5, "wire, 2 nodes, 2 pods: {during:?}");
        assert_eq!(during.processes.len(), 3, "iperf3, sleep, tcpdump: {during:?}");
        let nodes = topo.nodes().to_vec();

        topo.teardown()?;
        let after = inventory()?;
        assert!(after.is_clean(), "left behind: {after:?}");
        for node in &nodes {
            assert_eq!(node.ipam_allocations()?, Vec::<Ipv4Addr>::new(), "{} kept addresses", node.name);
        }
        assert!(!sleeper.is_running() && !iperf.is_running());
        assert!(a.netns.exec(["true"], Duration::from_secs(5)).map(|o| !o.success()).unwrap_or(true));
        drop((server, iperf, sleeper, capture));
        assert!(inventory()?.is_clean());
        Ok(())
    });
}

/// Builds a topology with servers and background processes running, then dies the way the
/// `E2E_DIE` environment variable says. Run only by `a_test_dying_midway_leaves_nothing_on_the_host`.
#[test]
#[ignore = "helper: dies on purpose; run by a_test_dying_midway_leaves_nothing_on_the_host"]
fn helper_dies_midway() {
    sandboxed(|| -> Result<(), Error> {
        let topo = Topology::builder().nodes(2).build()?;
        let a = topo.add_pod(topo.node(1), "x", "a")?;
        let b = topo.add_pod(topo.node(2), "x", "b")?;
        let _srv = a.netns.http_server(HTTP_PORT, "a")?;
        let _iperf = b.netns.iperf3_server(IPERF_PORT)?;
        let _sleep = a.netns.spawn(["sleep", "600"])?;
        b.netns.http_get(&url(a.ip, "/"))?;
        println!("topology {} is up", topo.id());
        match std::env::var("E2E_DIE").as_deref() {
            Ok("panic") => panic!("deliberate panic with the topology up"),
            // exit() runs no destructors: as if the process had crashed.
            Ok("exit") => std::process::exit(3),
            // Killed from outside by the time limit.
            _ => thread::sleep(Duration::from_secs(600)),
        }
        Ok(())
    });
}

/// Host-visible traces of a helper run: processes carrying its topology id in their
/// environment, and namespace handles or state under the host's `/run`.
fn host_traces(prefix: &str) -> Vec<String> {
    let marker = format!("{}={prefix}", e2e::netns::TOPOLOGY_ENV);
    let mut traces = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        if env.split(|b| *b == 0).any(|v| v.starts_with(marker.as_bytes())) {
            traces.push(format!("process {}", e.file_name().to_string_lossy()));
        }
    }
    for dir in ["/run/netns", "/run/e2e"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                traces.push(format!("{dir}/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    let links = std::process::Command::new("ip").args(["-o", "link", "show"]).output().unwrap();
    for name in [WIRE_BRIDGE, "node1", "node2"] {
        if String::from_utf8_lossy(&links.stdout).contains(&format!(": {name}")) {
            traces.push(format!("host link {name}"));
        }
    }
    traces
}

/// The kernel tears a killed pid namespace down asynchronously: allow it a moment.
fn assert_no_traces(prefix: &str, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_traces(prefix).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host_traces(prefix), Vec::<String>::new(), "{when}");
}

#[test]
fn a_test_dying_midway_leaves_nothing_on_the_host() {
    const HELPER: &str = "helper_dies_midway";
    const PREFIX: &str = "helper-dies-midway-";
    let run = |how: &str, limit: u64| {
        SandboxRun::new(HELPER).env("E2E_DIE", how).timeout(Duration::from_secs(limit)).run().unwrap()
    };

    // Killed from outside: the helper's processes are visible from here while it runs (so the
    // trace check can see them), and gone once the sandbox is killed.
    // Generous bounds: on a cold, loaded CI machine bringing a topology up once took over 20 s.
    let hanging = SandboxRun::new(HELPER).env("E2E_DIE", "hang").timeout(Duration::from_secs(90)).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let up = |t: &Vec<String>| t.iter().filter(|t| t.starts_with("process")).count() >= 2;
    // Short-lived commands of the set-up (ip, curl) carry the marker too: wait until two
    // scans in a row see the helper's processes, and keep what they saw.
    let mut visible = Vec::new();
    let mut seen_up = 0;
    while seen_up < 2 && Instant::now() < deadline {
        visible = host_traces(PREFIX);
        seen_up = if up(&visible) { seen_up + 1 } else { 0 };
        thread::sleep(Duration::from_millis(50));
    }
    let killed = hanging.kill();
    assert!(up(&visible), "helper never came up: {visible:?}\n{}", killed.output);
    assert_eq!(killed.status, None, "{}", killed.output);
    assert_no_traces(PREFIX, "after kill");

    for (how, expect) in [("panic", "deliberate panic"), ("exit", "is up")] {
        let out = run(how, 20);
        assert!(!out.passed(), "helper with E2E_DIE={how} passed:\n{}", out.output);
        assert!(out.output.contains(expect), "E2E_DIE={how}:\n{}", out.output);
        if how == "exit" {
            assert_eq!(out.status.and_then(|s| s.code()), Some(3), "{}", out.output);
        }
        assert_no_traces(PREFIX, &format!("after E2E_DIE={how}"));
    }
}

#[test]
fn no_topology_outside_a_sandbox() {
    let err = Topology::builder().build().unwrap_err();
    assert!(matches!(err, Error::NotSandboxed), "{err}");
    assert!(matches!(inventory(), Err(Error::NotSandboxed)));
    assert!(!Path::new("/run/e2e").join("no-topology-outside-a-sandbox").exists());
}

#[test]
fn a_node_agent_that_exits_at_start_is_reported_with_its_log() {
    use std::os::unix::fs::PermissionsExt;

    use e2e::mesh::{Mesh, MeshError, MeshSpec};

    sandboxed(|| -> Result<(), Error> {
        let dir = e2e::Scratch::new("failing-agent");
        // What a real agent prints on a node without nftables, then its exit.
        let agent = dir.path().join("ztunnel-agent");
        std::fs::write(&agent, "#!/bin/sh\necho 'loading nftables rules: nft: not found' >&2\nexit 1\n")
            .expect("agent script");
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).expect("chmod");

        let started = Mesh::start(MeshSpec { nodes: 1, agent_binary: Some(agent), ..MeshSpec::default() });
        match started {
            Err(MeshError::Exited { program, log }) => {
                assert_eq!(program, "node1 ztunnel-agent");
                assert!(log.contains("nft: not found"), "{log}");
            }
            Err(other) => panic!("expected the agent's exit, got: {other}"),
            Ok(_) => panic!("the mesh started with an agent that exits"),
        }
        Ok(())
    });
}

#[test]
fn pods_whose_names_join_alike_get_namespaces_of_their_own() {
    sandboxed(|| -> Result<(), Error> {
        let topo = Topology::builder().nodes(1).build()?;
        let first = topo.add_pod(topo.node(1), "a-b", "c")?;
        let second = topo.add_pod(topo.node(1), "a", "b-c")?;
        assert_ne!(first.netns.name(), second.netns.name());
        assert_ne!(first.ip, second.ip);
        let _srv = second.netns.http_server(HTTP_PORT, "a/b-c")?;
        let body = first.netns.http_get(&url(second.ip, "/"))?;
        assert!(body.contains("hello from a/b-c"), "{body}");
        topo.remove_pod(&first)?;
        assert_eq!(topo.pods().len(), 1, "removing a-b/c left a/b-c");
        topo.teardown()
    });
}
