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
//!
//! L7: `manifests/examples/playground-waypoint.yaml` adds service `orders` (one pod) whose
//! traffic goes through waypoint `shop/waypoint` (started as a process like the ztunnels), and
//! an L7 policy that waypoint enforces (tools/curl may only GET); the table shows a GET allowed
//! and a DELETE denied there, as the waypoint's access log records them.
//!
//! DNS: the node agents capture the pods' DNS, and every pod's resolver is pointed at a cluster
//! DNS address where nothing answers (the sandbox's own `/etc/resolv.conf`), so the catalog flow's
//! `curl` by service name resolves only because ztunnel's DNS proxy answers it; the summary says
//! which address each name got and how many queries ztunnel answered.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec};
use serde::Deserialize;
use serde_json::Value;
use serde_yaml::Value as Yaml;

const CATALOG_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
/// The catalog service's name, fully qualified (the trailing dot: no search list to walk).
const CATALOG_HOST: &str = "catalog.shop.svc.cluster.local.";
/// The pods' nameserver: a cluster DNS address where nothing answers.
const NAMESERVER: &str = "10.96.0.53";

struct Flow {
    what: &'static str,
    from: (&'static str, &'static str),
    url: String,
    /// The destination as `meshctl explain` names it.
    explain_as: &'static str,
    expect_allowed: bool,
    /// HTTP method; an L7 flow goes through the waypoint and is read from its access log.
    l7_method: Option<&'static str>,
}

/// What the playground takes from the L7 example: the waypoint's Gateway, the service that
/// uses it, and the documents istiod-lite reads from the config directory as they are.
struct L7Sample {
    gateway: (String, String),
    service: ServiceSpec,
    /// The AuthorizationPolicy documents, for the policies file.
    policies: String,
}

fn field<'a>(doc: &'a Yaml, path: &[&str], file: &str) -> Result<&'a Yaml, String> {
    let mut v = doc;
    for p in path {
        v = v
            .get(p)
            .ok_or_else(|| format!("{file}: a {} has no {}", doc["kind"].as_str().unwrap_or("?"), path.join(".")))?;
    }
    Ok(v)
}

fn text(doc: &Yaml, path: &[&str], file: &str) -> Result<String, String> {
    field(doc, path, file)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{file}: {} is not a string", path.join(".")))
}

fn port(doc: &Yaml, key: &str, file: &str) -> Result<u16, String> {
    field(doc, &["spec", "ports"], file)?
        .get(0)
        .and_then(|p| p.get(key))
        .and_then(Yaml::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("{file}: Service spec.ports[0].{key} is not a port number"))
}

fn l7_sample(file: &str) -> Result<L7Sample, Box<dyn std::error::Error>> {
    let yaml = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let (mut gateway, mut service, mut policies) = (None, None, String::new());
    for d in serde_yaml::Deserializer::from_str(&yaml) {
        let doc = Yaml::deserialize(d).map_err(|e| format!("{file}: {e}"))?;
        let name = || -> Result<(String, String), String> {
            Ok((text(&doc, &["metadata", "namespace"], file)?, text(&doc, &["metadata", "name"], file)?))
        };
        match doc["kind"].as_str() {
            Some("Gateway") => gateway = Some(name()?),
            Some("Service") if doc["metadata"]["labels"]["istio.io/use-waypoint"].is_string() => {
                let (namespace, svc) = name()?;
                let vip = text(&doc, &["spec", "clusterIP"], file)?;
                service = Some(ServiceSpec {
                    vip: vip.parse().map_err(|_| format!("{file}: Service {svc}: clusterIP {vip:?} is not an IP"))?,
                    port: port(&doc, "port", file)?,
                    target_port: port(&doc, "targetPort", file)?,
                    endpoints: vec![format!("{namespace}/{svc}-1")],
                    use_waypoint: Some(text(&doc, &["metadata", "labels", "istio.io/use-waypoint"], file)?),
                    namespace,
                    name: svc,
                });
            }
            Some("AuthorizationPolicy") => {
                policies.push_str("---\n");
                policies.push_str(&serde_yaml::to_string(&doc)?);
            }
            _ => {}
        }
    }
    let gateway = gateway.ok_or_else(|| format!("{file}: no Gateway"))?;
    let service = service.ok_or_else(|| format!("{file}: no Service labelled istio.io/use-waypoint"))?;
    if service.use_waypoint.as_deref() != Some(gateway.1.as_str()) || service.namespace != gateway.0 {
        return Err(format!("{file}: Service {} does not use Gateway {}/{}", service.name, gateway.0, gateway.1).into());
    }
    Ok(L7Sample { gateway, service, policies })
}

/// What `meshctl explain` says of a flow: allowed or not, the verdict as the proxy words it,
/// and the waypoint pod (`namespace/name`) the path goes through, if any.
fn explain(mesh: &Mesh, f: &Flow) -> Result<(bool, String, Option<String>), Box<dyn std::error::Error>> {
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
    Ok((allowed, v["verdict"].as_str().unwrap_or_default().to_owned(), v["waypoint"].as_str().map(str::to_owned)))
}

fn spec(policies: String, l7: &L7Sample) -> MeshSpec {
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
            pod(2, &l7.service.namespace, &format!("{}-1", l7.service.name), &l7.service.name, &l7.service.name),
        ],
        waypoints: vec![WaypointSpec::new(2, &l7.gateway.0, &l7.gateway.1)],
        services: vec![
            l7.service.clone(),
            ServiceSpec {
                namespace: "shop".into(),
                name: "catalog".into(),
                vip: CATALOG_VIP,
                port: 80,
                target_port: 8080,
                endpoints: vec!["shop/catalog-1".into(), "shop/catalog-2".into()],
                use_waypoint: None,
            },
        ],
        control_plane: true,
        k8s_policies_yaml: policies + &l7.policies,
        log_format: "json".into(),
        capture_dns: true,
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

/// A field of a JSON log line, whether the formatter flattened the event's fields or not.
fn log_field<'a>(v: &'a Value, key: &str) -> &'a Value {
    if v[key].is_null() { &v["fields"][key] } else { &v[key] }
}

/// The waypoint's access line for the newest request with `method` from `client`.
fn waypoint_access_line(mesh: &Mesh, gateway: &(String, String), client: Ipv4Addr, method: &str) -> Option<Value> {
    let prefix = format!("{client}:");
    mesh.waypoint_log(&gateway.0, &gateway.1)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access" && log_field(v, "method") == method)
        .find(|v| log_field(v, "src_addr").as_str().is_some_and(|a| a.contains(&prefix)))
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let root = std::env::var("MESH_SAMPLES")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/samples").into());
    let policies = std::fs::read_to_string(format!("{root}/policies.yaml"))?;
    let l7_file = std::env::var("MESH_L7_SAMPLE").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/examples/playground-waypoint.yaml").into()
    });
    let l7 = l7_sample(&l7_file)?;
    println!("starting a two-node mesh from {root} and {l7_file} ...");
    // Inside the sandbox only (a bind mount in its private mount namespace).
    e2e::sandbox::replace_file(
        std::path::Path::new("/etc/resolv.conf"),
        &format!("nameserver {NAMESERVER}\noptions timeout:1 attempts:1\n"),
    )?;
    let mesh = Mesh::start(spec(policies, &l7))?;
    let orders = mesh.pod(&l7.service.namespace, &format!("{}-1", l7.service.name)).clone();
    let c1 = mesh.pod("shop", "catalog-1").clone();
    let c2 = mesh.pod("shop", "catalog-2").clone();
    let _servers = [
        c1.netns.http_server(8080, "shop/catalog-1")?,
        c2.netns.http_server(8080, "shop/catalog-2")?,
        c1.netns.http_server(9090, "shop/catalog-1 metrics")?,
        c2.netns.http_server(9090, "shop/catalog-2 metrics")?,
        orders.netns.http_server(l7.service.target_port, &format!("{}/{}", orders.namespace, orders.name))?,
    ];
    let l7_url = format!("http://{}:{}/", l7.service.vip, l7.service.port);
    let l7_dest: &'static str = format!("{}/{}:{}", l7.service.namespace, l7.service.name, l7.service.port).leak();
    let waypoint_pod = format!("{}/{}", l7.gateway.0, WaypointSpec::new(2, &l7.gateway.0, &l7.gateway.1).pod_name());
    let flows = [
        Flow {
            what: "curl → catalog service",
            from: ("tools", "curl"),
            url: format!("http://{CATALOG_HOST}/"),
            explain_as: "shop/catalog:80",
            expect_allowed: true,
            l7_method: None,
        },
        Flow {
            what: "curl → catalog-2 :9090",
            from: ("tools", "curl"),
            url: format!("http://{}:9090/", c2.ip),
            explain_as: "shop/catalog-2:9090",
            expect_allowed: false,
            l7_method: None,
        },
        Flow {
            what: "debug (no mesh) → catalog-1",
            from: ("tools", "debug"),
            url: format!("http://{}:8080/", c1.ip),
            explain_as: "shop/catalog-1:8080",
            expect_allowed: false,
            l7_method: None,
        },
        Flow {
            what: "curl GET → orders (L7)",
            from: ("tools", "curl"),
            url: l7_url.clone(),
            explain_as: l7_dest,
            expect_allowed: true,
            l7_method: Some("GET"),
        },
        Flow {
            what: "curl DELETE → orders (L7)",
            from: ("tools", "curl"),
            url: l7_url,
            explain_as: l7_dest,
            expect_allowed: false,
            l7_method: Some("DELETE"),
        },
    ];
    println!();
    println!(
        "{:<30} {:<44} {:<42} {:<5} {:<70} {:>6} {:>8}  ok  meshctl explain",
        "flow", "source identity", "destination identity", "mTLS", "verdict", "bytes", "latency"
    );
    let mut all_ok = true;
    for f in &flows {
        if let Some(method) = f.l7_method {
            all_ok &= l7_row(&mesh, &l7.gateway, &waypoint_pod, f, method)?;
            continue;
        }
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
        let (explained, why, _) = explain(&mesh, f)?;
        let agrees = explained == allowed && why == verdict;
        all_ok &= ok && agrees;
        print_row(
            f,
            &src,
            &dst,
            mtls,
            &verdict,
            bytes,
            latency,
            ok,
            &if agrees { "agrees".to_owned() } else { format!("DISAGREES: {why}") },
        );
    }
    println!();
    let l7_host = format!("{}.{}.svc.cluster.local.", l7.service.name, l7.service.namespace);
    all_ok &= dns_summary(&mesh, &[(CATALOG_HOST.to_owned(), CATALOG_VIP), (l7_host, l7.service.vip)])?;
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

/// What the pods' resolver got for each service name, from ztunnel's DNS proxy (the pods'
/// nameserver does not exist), and how many queries node 1's ztunnel answered; false when a name
/// did not resolve to its service's address.
fn dns_summary(mesh: &Mesh, names: &[(String, IpAddr)]) -> Result<bool, Box<dyn std::error::Error>> {
    let curl = mesh.pod("tools", "curl");
    let mut ok = true;
    for (host, vip) in names {
        let out = curl.netns.exec(["getent", "ahostsv4", host], Duration::from_secs(5))?;
        let got: Option<IpAddr> = out.stdout.lines().next().and_then(|l| l.split_whitespace().next()?.parse().ok());
        let right = got == Some(*vip);
        ok &= right;
        println!(
            "DNS  tools/curl: {host} → {} (answered by ztunnel's DNS proxy; the pods' nameserver {NAMESERVER} does not exist){}",
            got.map_or_else(|| "no answer".to_owned(), |a| a.to_string()),
            if right { "" } else { "  UNEXPECTED" }
        );
    }
    let m = mesh.metrics(1)?;
    let answered = e2e::mesh::metric_sum(&m, "istio_dns_requests_total", &["source_workload=\"curl\""]);
    println!("DNS  node 1's ztunnel: {answered} queries from tools/curl (istio_dns_requests_total)");
    Ok(ok)
}

#[allow(clippy::too_many_arguments)]
fn print_row(
    f: &Flow,
    src: &str,
    dst: &str,
    mtls: &str,
    verdict: &str,
    bytes: u64,
    latency: f64,
    ok: bool,
    explained: &str,
) {
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
        explained
    );
}

/// One request through the waypoint, shown as the waypoint's access log records it (source
/// principal it authenticated, its decision and the deciding policy); `meshctl explain` must
/// name the same waypoint on the path. Returns whether everything was as expected.
fn l7_row(
    mesh: &Mesh,
    gateway: &(String, String),
    waypoint_pod: &str,
    f: &Flow,
    method: &str,
) -> Result<bool, Box<dyn std::error::Error>> {
    let pod = mesh.pod(f.from.0, f.from.1);
    let out = pod.netns.curl(
        &f.url,
        &["-X", method, "-o", "/dev/null", "-w", "%{http_code} %{time_total} %{size_download}"],
        Duration::from_secs(5),
    )?;
    let mut words = out.stdout.split_whitespace();
    let code: u16 = words.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let latency = words.next().and_then(|t| t.parse::<f64>().ok()).unwrap_or(0.0);
    let bytes = words.next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0);
    // The waypoint writes its line when the response is done.
    std::thread::sleep(Duration::from_millis(300));
    let line = waypoint_access_line(mesh, gateway, pod.ip, method).unwrap_or(Value::Null);
    let src = log_field(&line, "src_identity").as_str().unwrap_or("-").to_owned();
    let policy = log_field(&line, "policy").as_str().unwrap_or("?");
    let logged_allowed = log_field(&line, "allowed").as_bool();
    let dst = format!("waypoint {}/{}", gateway.0, gateway.1);
    let verdict = match (code, logged_allowed) {
        (200, Some(true)) => format!("L7 {method} allowed by policy {policy}"),
        (403, Some(false)) => format!("L7 {method} denied (403, policy {policy})"),
        _ => {
            eprintln!("waypoint log:\n{}", mesh.waypoint_log(&gateway.0, &gateway.1));
            format!("L7 {method}: status {code}, waypoint logged {line}")
        }
    };
    let allowed = code == 200 && logged_allowed == Some(true);
    let denied = code == 403 && logged_allowed == Some(false);
    let ok = if f.expect_allowed { allowed } else { denied };
    let (_, _, via) = explain(mesh, f)?;
    let routed = via.as_deref() == Some(waypoint_pod);
    let explained = if routed { format!("via waypoint {waypoint_pod}") } else { format!("DISAGREES: via {via:?}") };
    print_row(f, &src, &dst, "yes", &verdict, bytes, latency, ok, &explained);
    Ok(ok && routed)
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
