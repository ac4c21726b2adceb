//! The local mesh playground: two nodes and a handful of pods in network namespaces,
//! istiod-lite programming a ztunnel per node, sample apps, and traffic through it all, with a
//! summary a person can read. It stays up until Ctrl-C (or exits after one round with
//! `--once`, non-zero if any verdict was not the expected one). Everything lives in a
//! throwaway sandbox: nothing is left behind, however it ends.
//!
//! The mesh is the one in `manifests/samples/`: namespaces `shop` and `tools` enrolled,
//! `catalog` (two pods, one per node, behind a service) and `curl`, a `debug` pod opted out,
//! and `policies.yaml` as written there (ALLOW `tools/curl` to `catalog` on 8080, DENY from
//! namespace `legacy`, STRICT mTLS in `shop`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec};
use serde_json::Value;

const CATALOG_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));

struct Flow {
    what: &'static str,
    from: (&'static str, &'static str),
    url: String,
    /// The destination as `meshctl explain` names it.
    explain_as: &'static str,
    expect_allowed: bool,
}

/// What `meshctl explain` says of a flow: allowed or not, and the verdict as the proxy words it.
fn explain(mesh: &Mesh, f: &Flow) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let meshctl = e2e::mesh::bin("meshctl")?;
    let src = format!("{}/{}", f.from.0, f.from.1);
    let out = std::process::Command::new(meshctl)
        .arg("--config-dir")
        .arg(mesh.config_dir())
        .args(["explain", &src, f.explain_as, "-o", "json"])
        .output()?;
    if !out.status.success() {
        return Err(format!("meshctl explain {src} {}: {}", f.explain_as, String::from_utf8_lossy(&out.stderr)).into());
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let allowed = v["allowed"].as_bool().ok_or("meshctl explain: no verdict")?;
    Ok((allowed, v["verdict"].as_str().unwrap_or_default().to_owned()))
}

fn spec(policies: String) -> MeshSpec {
    let pod = |node, ns: &str, name: &str, sa: &str, app: &str| PodSpec {
        service_account: sa.into(),
        app: app.into(),
        ..PodSpec::new(node, ns, name)
    };
    let mut debug = pod(2, "tools", "debug", "default", "debug");
    debug.opt_out = true;
    MeshSpec {
        nodes: 2,
        ambient_namespaces: vec!["shop".into(), "tools".into()],
        pods: vec![
            pod(1, "shop", "catalog-1", "catalog", "catalog"),
            pod(2, "shop", "catalog-2", "catalog", "catalog"),
            pod(1, "tools", "curl", "curl", "curl"),
            debug,
        ],
        services: vec![ServiceSpec {
            namespace: "shop".into(),
            name: "catalog".into(),
            vip: CATALOG_VIP,
            port: 80,
            target_port: 8080,
            endpoints: vec!["shop/catalog-1".into(), "shop/catalog-2".into()],
            use_waypoint: None,
        }],
        control_plane: true,
        k8s_policies_yaml: policies,
        log_format: "json".into(),
        ..MeshSpec::default()
    }
}

/// The destination proxy's access line for the newest connection from `client`.
fn access_line(mesh: &Mesh, client: Ipv4Addr) -> Option<Value> {
    let prefix = format!("{client}:");
    (1..=2)
        .flat_map(|n| mesh.ztunnel_log(n).lines().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|v| v["target"] == "access" && v["direction"] != "outbound" && v["direction"] != "passthrough")
        .filter(|v| v["src.addr"].as_str().is_some_and(|a| a.starts_with(&prefix)))
        .last()
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let root = std::env::var("MESH_SAMPLES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/samples").into());
    let policies = std::fs::read_to_string(format!("{root}/policies.yaml"))?;
    println!("starting a two-node mesh from {root} ...");
    let mesh = Mesh::start(spec(policies))?;
    let c1 = mesh.pod("shop", "catalog-1").clone();
    let c2 = mesh.pod("shop", "catalog-2").clone();
    let _servers = [
        c1.netns.http_server(8080, "shop/catalog-1")?,
        c2.netns.http_server(8080, "shop/catalog-2")?,
        c1.netns.http_server(9090, "shop/catalog-1 metrics")?,
        c2.netns.http_server(9090, "shop/catalog-2 metrics")?,
    ];
    let flows = [
        Flow {
            what: "curl → catalog service",
            from: ("tools", "curl"),
            url: format!("http://{CATALOG_VIP}/"),
            explain_as: "shop/catalog:80",
            expect_allowed: true,
        },
        Flow {
            what: "curl → catalog-2 :9090",
            from: ("tools", "curl"),
            url: format!("http://{}:9090/", c2.ip),
            explain_as: "shop/catalog-2:9090",
            expect_allowed: false,
        },
        Flow {
            what: "debug (no mesh) → catalog-1",
            from: ("tools", "debug"),
            url: format!("http://{}:8080/", c1.ip),
            explain_as: "shop/catalog-1:8080",
            expect_allowed: false,
        },
    ];
    println!();
    println!(
        "{:<30} {:<44} {:<42} {:<5} {:<70} {:>6} {:>8}  ok  meshctl explain",
        "flow", "source identity", "destination identity", "mTLS", "verdict", "bytes", "latency"
    );
    let mut all_ok = true;
    for f in &flows {
        let pod = mesh.pod(f.from.0, f.from.1);
        let out =
            pod.netns.curl(&f.url, &["-o", "/dev/null", "-w", "%{http_code} %{time_total}"], Duration::from_secs(5))?;
        let allowed = out.success() && out.stdout.starts_with("200");
        let latency = out.stdout.split_whitespace().nth(1).and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
        // The destination proxy writes its line when the connection ends.
        std::thread::sleep(Duration::from_millis(300));
        let line = access_line(&mesh, pod.ip).unwrap_or(Value::Null);
        let src = line["src.identity"].as_str().unwrap_or("none (plaintext)").to_owned();
        let dst = line["dst.identity"].as_str().unwrap_or("-").to_owned();
        let mtls = if line["direction"] == "inbound" { "yes" } else { "no" };
        let verdict = line["verdict"].as_str().unwrap_or(if allowed { "allowed" } else { "refused" }).to_owned();
        let bytes = line["bytes_sent"].as_u64().unwrap_or(0) + line["bytes_recv"].as_u64().unwrap_or(0);
        let ok = allowed == f.expect_allowed;
        // meshctl must predict both the outcome and the reason the proxy gave.
        let (explained, why) = explain(&mesh, f)?;
        let agrees = explained == allowed && why == verdict;
        all_ok &= ok && agrees;
        println!(
            "{:<30} {:<44} {:<42} {:<5} {:<70} {:>6} {:>6.1}ms  {}   {}",
            f.what,
            src,
            dst,
            mtls,
            verdict.chars().take(70).collect::<String>(),
            bytes,
            latency * 1000.0,
            if ok { "✓" } else { "✗ UNEXPECTED" },
            if agrees { "agrees".to_owned() } else { format!("DISAGREES: {why}") }
        );
    }
    println!();
    if once {
        return Ok(all_ok);
    }
    println!("The mesh stays up until Ctrl-C. It lives in a sandbox; from another shell, as root:");
    println!("  sudo nsenter -t $(pgrep -f 'playground' | tail -1) -m -n -- ip netns list");
    println!(
        "  sudo nsenter -t $(pgrep -f 'playground' | tail -1) -m -n -- ip netns exec {} sh",
        mesh.pod("tools", "curl").netns.name()
    );
    let enter = "sudo nsenter -t $(pgrep -f 'playground' | tail -1) -m";
    println!(
        "  edit the mesh's config (istiod-lite watches it): {enter} -- vi {}/policies.yaml",
        mesh.config_dir().display()
    );
    let meshctl = e2e::mesh::bin("meshctl").map(|p| p.display().to_string()).unwrap_or_else(|_| "meshctl".into());
    println!(
        "  ask the mesh: {enter} -- {meshctl} --config-dir {} explain tools/curl shop/catalog",
        mesh.config_dir().display()
    );
    println!(
        "Pods: {}",
        mesh.pods.iter().map(|p| format!("{}/{} {}", p.namespace, p.name, p.ip)).collect::<Vec<_>>().join(", ")
    );
    wait_for_interrupt();
    println!("stopping; removing everything");
    Ok(all_ok)
}

/// Blocks until SIGINT or SIGTERM. As pid 1 of its namespace the playground gets no default
/// signal handling, so it waits for them explicitly.
fn wait_for_interrupt() {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_ok() {
        let _ = set.wait();
    }
}

fn main() {
    match e2e::run_program_sandboxed("playground") {
        Ok(Some(status)) => std::process::exit(status.code().unwrap_or(1)),
        Ok(None) => {}
        Err(e) => {
            eprintln!("playground: {e}");
            std::process::exit(2);
        }
    }
    match run() {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("playground: some verdicts were not the expected ones");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("playground: {e}");
            std::process::exit(2);
        }
    }
}
