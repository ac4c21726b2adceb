//! The `l4` scenario: a client pod on node 1, a server pod on node 2, measured twice in the
//! same topology — once in a namespace that is not enrolled (the baseline: no redirection,
//! no ztunnel in the path) and once in an ambient namespace (client ztunnel → HBONE →
//! server ztunnel) — with the two sides interleaved metric by metric, their order swapped
//! every round so slow drift of a shared machine hits both alike.
//!
//! Per round and side: `iperf3` with one stream and with 8, `wrk` closed-loop over 10
//! keep-alive connections, `oha` open-loop at a fixed rate with coordinated-omission
//! correction, and `wrk` with `Connection: close` for new connections per second. During
//! the mesh's open-loop phase each ztunnel's CPU time (utime + stime) and peak RSS (VmHWM,
//! reset just before) are read from `/proc`. Before any load, 100 idle pods are enrolled on
//! node 2 and its ztunnel's RSS growth is divided among them (those pods stay enrolled for
//! the rest of the run, so the load figures include their state).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::mesh::{Mesh, MeshSpec, PodSpec};
use e2e::{Pod, Process};
use serde_json::json;

use crate::load::Load;
use crate::parse;
use crate::procfs;
use crate::profile;
use crate::relay;
use crate::report::{Against, Bound, Report, Target};
use crate::stats::Summary;

const IPERF_PORT: u16 = 5201;
const HTTP_PORT: u16 = 8080;
/// Where the floor's relays listen (in both pods of the baseline path) for each server.
const RELAY_IPERF_PORT: u16 = 15201;
const RELAY_HTTP_PORT: u16 = 18080;
/// Suffix of the floor's metrics, compared with the same baseline.
const FLOOR: &str = "_relay_floor";
/// Namespaces: the baseline's pods are not enrolled, the mesh's are.
const DIRECT_NS: &str = "direct";
const MESH_NS: &str = "mesh";
const IDLE_NS: &str = "idle";

/// How long and how often.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rounds, run lengths and load.
    pub load: Load,
    /// Idle pods enrolled to measure the per-pod memory cost.
    pub idle_pods: usize,
    /// Run only these measurements (all when empty).
    pub only: Vec<Test>,
    /// Also measure the floor: a plain TCP relay in each pod of the baseline path.
    pub floor: bool,
    /// Record both ztunnels with perf during the rounds; flame graphs are written next to
    /// this path (the report's, without extension).
    pub profile: Option<PathBuf>,
}

impl Settings {
    /// The full run (`README.md`'s numbers).
    pub fn full() -> Settings {
        Settings { load: Load::full(), idle_pods: 100, only: Vec::new(), floor: false, profile: None }
    }

    /// `--quick`: fewer, shorter rounds (well under 5 minutes in all).
    pub fn quick() -> Settings {
        Settings { load: Load::quick(), ..Settings::full() }
    }
}

/// One side of the comparison: where its load generators run and what they address.
struct Side {
    name: &'static str,
    client: Pod,
    http: SocketAddr,
    iperf: SocketAddr,
}

/// The processes whose CPU and memory a side's open-loop run charges: a ztunnel or a relay
/// per node.
struct Proxies<'a> {
    /// Metric prefix: `ztunnel` or `relay`.
    kind: &'static str,
    pids: &'a [u32; 2],
}

/// The measurements, in the order they run within a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    OneStream,
    EightStreams,
    ClosedLoop,
    OpenLoop,
    NewConnections,
}

impl Test {
    const NAMES: [(Test, &'static str); 5] = [
        (Test::OneStream, "one-stream"),
        (Test::EightStreams, "eight-streams"),
        (Test::ClosedLoop, "closed-loop"),
        (Test::OpenLoop, "open-loop"),
        (Test::NewConnections, "new-connections"),
    ];

    /// Parses a `--only` name.
    pub fn from_name(name: &str) -> anyhow::Result<Test> {
        match Self::NAMES.iter().find(|(_, n)| *n == name) {
            Some((t, _)) => Ok(*t),
            None => {
                let known: Vec<&str> = Self::NAMES.iter().map(|(_, n)| *n).collect();
                bail!("--only: unknown measurement {name:?} ({})", known.join(", "))
            }
        }
    }

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(t, _)| *t == self).map_or("?", |(_, n)| n)
    }
}

const TESTS: [Test; 5] = [Test::OneStream, Test::EightStreams, Test::ClosedLoop, Test::OpenLoop, Test::NewConnections];

/// Samples by `side/metric`.
type Samples = BTreeMap<String, Vec<f64>>;

fn push(samples: &mut Samples, side: &str, metric: &str, v: f64) {
    samples.entry(format!("{side}/{metric}")).or_default().push(v);
}

/// Runs the scenario (inside the sandbox).
pub fn run(settings: &Settings, oha: &Path, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let spec = MeshSpec {
        nodes: 2,
        ambient_namespaces: vec![MESH_NS.into(), IDLE_NS.into()],
        pods: vec![
            PodSpec::new(1, DIRECT_NS, "client"),
            PodSpec::new(2, DIRECT_NS, "server"),
            PodSpec::new(1, MESH_NS, "client"),
            PodSpec::new(2, MESH_NS, "server"),
        ],
        control_plane: true,
        ..MeshSpec::default()
    };
    let mut mesh = Mesh::start(spec).context("starting the mesh")?;
    eprintln!("mesh up in {:.1?}", started.elapsed());
    let ztunnels = [ztunnel_pid(&mesh, 1)?, ztunnel_pid(&mesh, 2)?];

    let mut report = Report::new("l4", quick, settings.load.rounds);
    report.settings = settings.load.report_settings();
    report.settings.insert("idle_pods".into(), json!(settings.idle_pods));

    // Per-pod memory first, on fresh ztunnels: after load, freed memory waiting in the
    // allocator would absorb the new pods and flatter the figure.
    let per_pod = idle_pod_cost(&mut mesh, settings.idle_pods, ztunnels[1])?;
    report.cost("rss_per_idle_pod_kb", "KiB", Summary::of(&[per_pod])?);
    report.notes.push(format!(
        "rss_per_idle_pod_kb: VmRSS growth of node 2's ztunnel after enrolling {} idle pods (CNI ADD, ZDS, workload state over xDS, one certificate each), ÷ {}",
        settings.idle_pods, settings.idle_pods
    ));

    let mut sides = vec![side(&mesh, "baseline", DIRECT_NS)?, side(&mesh, "mesh", MESH_NS)?];
    let _servers = start_servers(&mesh)?;
    let relays = if settings.floor {
        let (relays, floor) = start_relays(&mesh)?;
        sides.push(floor);
        Some(relays)
    } else {
        None
    };
    let relay_pids = relays.as_ref().map(|r| [r[0].pid(), r[1].pid()]);
    for s in &sides {
        // A first request through each path (the mesh's sets up its HBONE connection).
        let url = format!("http://{}/", s.http);
        s.client.netns.http_get(&url).with_context(|| format!("{} warm-up request to {url}", s.name))?;
    }

    let mut samples = Samples::new();
    let tests: Vec<Test> =
        TESTS.into_iter().filter(|t| settings.only.is_empty() || settings.only.contains(t)).collect();
    let what = format!(
        "{} over {} rounds",
        tests.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
        settings.load.rounds
    );
    // With the floor, its relays too: the same load through proxies that only copy.
    let mut profiled_ones = vec![(ztunnels[0], "ztunnel-node1"), (ztunnels[1], "ztunnel-node2")];
    if let Some([r1, r2]) = relay_pids {
        profiled_ones.extend([(r1, "relay-node1"), (r2, "relay-node2")]);
    }
    let ((), profiled) = profile::around(settings.profile.as_deref(), &profiled_ones, &what, || {
        for round in 0..settings.load.rounds {
            // Rotated every round, so slow drift of the machine hits every side alike.
            let mut order: Vec<&Side> = sides.iter().collect();
            order.rotate_left(round % sides.len());
            for &test in &tests {
                for s in &order {
                    let proxies = match s.name {
                        "mesh" => Some(Proxies { kind: "ztunnel", pids: &ztunnels }),
                        "relay" => relay_pids.as_ref().map(|pids| Proxies { kind: "relay", pids }),
                        _ => None,
                    };
                    if let Err(e) = measure(settings, oha, s, test, proxies, &mut samples) {
                        eprintln!("round {round}, {}, {test:?}: {e:#}", s.name);
                        report.notes.push(format!("round {round}, {}, {test:?} failed: {e:#}", s.name));
                    }
                }
            }
            eprintln!("round {} of {} done at {:.0?}", round + 1, settings.load.rounds, started.elapsed());
        }
    })?;
    report.notes.extend(profiled);
    for (i, pid) in ztunnels.iter().enumerate() {
        let m = procfs::memory(*pid)?;
        report.cost(
            &format!("ztunnel_lifetime_peak_rss_mb_node{}", i + 1),
            "MiB",
            Summary::of(&[procfs::mib(m.peak)])?,
        );
    }

    let compared = [
        ("throughput_1_stream_gbps", "Gbit/s"),
        ("throughput_8_streams_gbps", "Gbit/s"),
        ("closed_loop_rps", "req/s"),
        ("latency_p50_ms", "ms"),
        ("latency_p90_ms", "ms"),
        ("latency_p99_ms", "ms"),
        ("latency_p99_9_ms", "ms"),
        ("new_connections_per_s", "conn/s"),
    ];
    for (metric, unit) in compared {
        report.compare_samples(
            metric,
            unit,
            samples.get(&format!("baseline/{metric}")),
            samples.get(&format!("mesh/{metric}")),
        )?;
    }
    if settings.floor {
        for (metric, unit) in compared {
            report.compare_samples(
                &format!("{metric}{FLOOR}"),
                unit,
                samples.get(&format!("baseline/{metric}")),
                samples.get(&format!("relay/{metric}")),
            )?;
        }
    }
    let costed: &[(&str, &str)] =
        if settings.floor { &[("mesh", "ztunnel"), ("relay", "relay")] } else { &[("mesh", "ztunnel")] };
    for (side, kind) in costed {
        for (what, unit) in [("cpu_s_per_1k_req", "CPU s"), ("peak_rss_mb", "MiB")] {
            for node in 1..=2 {
                let metric = format!("{kind}_{what}_node{node}");
                if let Some(m) = samples.get(&format!("{side}/{metric}")) {
                    report.cost(&metric, unit, Summary::of(m)?);
                }
            }
        }
    }
    if settings.floor {
        report.notes.push(format!(
            "*{FLOOR} and relay_*: the floor, not a target — the baseline's pods with a plain TCP relay (`benches relay`: accept, connect, copy; no TLS, no HTTP/2, one upstream connection per client connection, {} tokio worker(s), as ztunnel) in each, where ztunnel's sockets sit on the mesh path; the same hops as the mesh with nothing done in them",
            relay::ztunnel_workers()
        ));
    }
    report.notes.push(format!(
        "ztunnel_cpu_s_per_1k_req: utime+stime delta of each ztunnel over the mesh's open-loop run ÷ (responses / 1000); at {} req/s this equals vCPU per 1,000 req/s",
        settings.load.rate
    ));
    report.notes.push(
        "ztunnel_peak_rss_mb: VmHWM of each ztunnel over the open-loop run (reset through clear_refs just before)"
            .into(),
    );
    report.targets = targets();
    report.settings.insert("elapsed_secs".into(), json!(started.elapsed().as_secs()));
    drop(relays);
    drop(_servers);
    mesh.topo.teardown().context("tearing the topology down")?;
    Ok(report)
}

/// Issue 6's data-plane targets; never relaxed here.
pub fn targets() -> Vec<Target> {
    let t = |metric, against, bound, target, label| Target { metric, against, bound, target, label };
    vec![
        t("throughput_1_stream_gbps", Against::Ratio, Bound::AtLeast, 0.35, "one-stream throughput, mesh ÷ direct"),
        t("closed_loop_rps", Against::Ratio, Bound::AtLeast, 0.35, "closed-loop request rate, mesh ÷ direct"),
        t("latency_p50_ms", Against::Ratio, Bound::AtMost, 2.0, "p50 at 1,000 req/s, mesh ÷ direct"),
        t("latency_p99_ms", Against::Ratio, Bound::AtMost, 1.6, "p99 at 1,000 req/s, mesh ÷ direct"),
        t("ztunnel_cpu_s_per_1k_req_node1", Against::Mesh, Bound::AtMost, 0.06, "vCPU per 1k req/s, client ztunnel"),
        t("ztunnel_cpu_s_per_1k_req_node2", Against::Mesh, Bound::AtMost, 0.06, "vCPU per 1k req/s, server ztunnel"),
        t("ztunnel_peak_rss_mb_node1", Against::Mesh, Bound::AtMost, 12.0, "peak RSS MiB under load, client ztunnel"),
        t("ztunnel_peak_rss_mb_node2", Against::Mesh, Bound::AtMost, 12.0, "peak RSS MiB under load, server ztunnel"),
        t("rss_per_idle_pod_kb", Against::Mesh, Bound::AtMost, 50.0, "RSS KiB per enrolled idle pod"),
    ]
}

fn ztunnel_pid(mesh: &Mesh, n: usize) -> anyhow::Result<u32> {
    let node = &mesh.topo.node(n).name;
    procfs::find(&["ztunnel", "--node-name", node]).with_context(|| format!("finding node {n}'s ztunnel"))
}

fn side(mesh: &Mesh, name: &'static str, namespace: &str) -> anyhow::Result<Side> {
    let server = mesh.pod(namespace, "server").ip;
    Ok(Side {
        name,
        client: mesh.pod(namespace, "client").clone(),
        http: SocketAddr::from((server, HTTP_PORT)),
        iperf: SocketAddr::from((server, IPERF_PORT)),
    })
}

/// iperf3 and HTTP servers in both server pods; killed when dropped.
fn start_servers(mesh: &Mesh) -> anyhow::Result<Vec<Process>> {
    let exe: PathBuf = std::env::current_exe().context("finding this program")?;
    let mut servers = Vec::new();
    for ns in [DIRECT_NS, MESH_NS] {
        let pod = mesh.pod(ns, "server");
        servers.push(pod.netns.iperf3_server(IPERF_PORT)?);
        let http = pod.netns.spawn([exe.to_string_lossy().as_ref(), "serve-http", "--port", &HTTP_PORT.to_string()])?;
        http.wait_for_log("serving", Duration::from_secs(5))?;
        servers.push(http);
    }
    Ok(servers)
}

/// The floor's relays, in the baseline's client pod (on loopback, where ztunnel's outbound
/// listener would take the application's connection) and server pod (on the pod's address,
/// where ztunnel's inbound listener would be), in that order; and the side that uses them.
fn start_relays(mesh: &Mesh) -> anyhow::Result<([Process; 2], Side)> {
    let client = mesh.pod(DIRECT_NS, "client");
    let server = mesh.pod(DIRECT_NS, "server");
    let map = |listen, target| relay::Mapping { listen, target };
    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let remote = |port| SocketAddr::from((server.ip, port));
    let server_relay = relay::start_in(
        server,
        &[map(any(RELAY_HTTP_PORT), local(HTTP_PORT)), map(any(RELAY_IPERF_PORT), local(IPERF_PORT))],
        relay::ztunnel_workers(),
    )?;
    let client_relay = relay::start_in(
        client,
        &[map(local(RELAY_HTTP_PORT), remote(RELAY_HTTP_PORT)), map(local(RELAY_IPERF_PORT), remote(RELAY_IPERF_PORT))],
        relay::ztunnel_workers(),
    )?;
    let side =
        Side { name: "relay", client: client.clone(), http: local(RELAY_HTTP_PORT), iperf: local(RELAY_IPERF_PORT) };
    Ok(([client_relay, server_relay], side))
}

/// Enrolls `count` idle pods on node 2 and returns node 2's ztunnel RSS growth per pod, KiB.
fn idle_pod_cost(mesh: &mut Mesh, count: usize, pid: u32) -> anyhow::Result<f64> {
    let settle = Duration::from_secs(2);
    std::thread::sleep(settle);
    let before = procfs::memory(pid)?.rss;
    let t = Instant::now();
    for i in 0..count {
        mesh.add_pod(PodSpec::new(2, IDLE_NS, &format!("idle-{i}"))).with_context(|| format!("adding idle pod {i}"))?;
    }
    // mesh/server plus the idle pods.
    mesh.wait_pods_served(2, count + 1)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = mesh.config_dump(2)?;
        let certs = dump["certificates"].as_array().map(|c| c.len()).unwrap_or(0);
        if certs > count {
            break;
        }
        if Instant::now() > deadline {
            bail!("node 2's ztunnel holds {certs} certificates, expected {}", count + 1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(settle);
    let after = procfs::memory(pid)?.rss;
    eprintln!(
        "{count} idle pods enrolled in {:.1?}: node 2 ztunnel RSS {:.1} → {:.1} MiB",
        t.elapsed(),
        procfs::mib(before),
        procfs::mib(after)
    );
    Ok(after.saturating_sub(before) as f64 / 1024.0 / count as f64)
}

fn measure(
    settings: &Settings,
    oha: &Path,
    side: &Side,
    test: Test,
    proxies: Option<Proxies<'_>>,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let ns = &side.client.netns;
    let url = format!("http://{}/", side.http);
    let secs = settings.load.run_secs.to_string();
    let limit = settings.load.run_limit();
    let conns = settings.load.connections.to_string();
    match test {
        Test::OneStream | Test::EightStreams => {
            let streams = if test == Test::OneStream { "1" } else { "8" };
            let server = side.iperf.ip().to_string();
            let port = side.iperf.port().to_string();
            let out = ns.exec(["iperf3", "-c", &server, "-p", &port, "-t", &secs, "-P", streams, "-J"], limit)?;
            let r = parse::iperf3(&out.stdout)?;
            let metric = if test == Test::OneStream { "throughput_1_stream_gbps" } else { "throughput_8_streams_gbps" };
            push(samples, side.name, metric, r.bits_per_second / 1e9);
        }
        Test::ClosedLoop | Test::NewConnections => {
            let dur = format!("{secs}s");
            let mut argv = vec!["wrk", "-t", "2", "-c", &conns, "-d", &dur, "--timeout", "5s"];
            if test == Test::NewConnections {
                argv.extend(["-H", "Connection: close"]);
            }
            argv.push(&url);
            let out = ns.exec(argv, limit)?;
            if !out.success() {
                bail!("wrk failed: {}{}", out.stdout, out.stderr);
            }
            let r = parse::wrk(&out.stdout)?;
            let metric = if test == Test::ClosedLoop { "closed_loop_rps" } else { "new_connections_per_s" };
            push(samples, side.name, metric, r.requests_per_second);
        }
        Test::OpenLoop => {
            if let Some(p) = &proxies {
                for pid in p.pids {
                    procfs::reset_peak(*pid)?;
                }
            }
            let cpu_before = match &proxies {
                Some(p) => Some([procfs::cpu_time(p.pids[0])?, procfs::cpu_time(p.pids[1])?]),
                None => None,
            };
            let dur = format!("{}s", settings.load.open_loop_secs);
            let rate = settings.load.rate.to_string();
            let oha = oha.to_string_lossy();
            let out = ns.exec(
                [
                    oha.as_ref(),
                    "-z",
                    &dur,
                    "-q",
                    &rate,
                    "-c",
                    &conns,
                    "--latency-correction",
                    "--no-tui",
                    "--output-format",
                    "json",
                    &url,
                ],
                limit,
            )?;
            if !out.success() {
                bail!("oha failed: {}{}", out.stdout, out.stderr);
            }
            let r = parse::oha(&out.stdout)?;
            if let (Some(p), Some(before)) = (&proxies, cpu_before) {
                for (i, pid) in p.pids.iter().enumerate() {
                    let cpu = procfs::cpu_time(*pid)?.saturating_sub(before[i]).as_secs_f64();
                    let (kind, node) = (p.kind, i + 1);
                    push(
                        samples,
                        side.name,
                        &format!("{kind}_cpu_s_per_1k_req_node{node}"),
                        cpu / (r.requests as f64 / 1000.0),
                    );
                    let peak = procfs::memory(*pid)?.peak;
                    push(samples, side.name, &format!("{kind}_peak_rss_mb_node{node}"), procfs::mib(peak));
                }
            }
            for (metric, v) in [
                ("latency_p50_ms", r.p50),
                ("latency_p90_ms", r.p90),
                ("latency_p99_ms", r.p99),
                ("latency_p99_9_ms", r.p999),
            ] {
                push(samples, side.name, metric, v * 1000.0);
            }
            push(samples, side.name, "open_loop_achieved_rps", r.requests_per_second);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_measurement_is_named_as_only_takes_it() {
        for t in TESTS {
            assert_eq!(Test::from_name(t.name()).unwrap(), t);
        }
        let e = Test::from_name("closed_loop").unwrap_err().to_string();
        assert!(e.contains("\"closed_loop\"") && e.contains("closed-loop, open-loop"), "{e}");
    }
}
