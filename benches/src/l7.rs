//! The `l7` scenario: HTTP requests through a waypoint against the same server reached
//! without the mesh, in one topology: client pods on node 1, server pods and the waypoint on
//! node 2. Three paths, interleaved per round with their order rotated every round:
//!
//! - `baseline`: `direct/client` → `direct/server` (namespace not enrolled: no ztunnel, no
//!   waypoint; the `l4` scenario's baseline);
//! - `mesh`: `mesh/client` → the `server-wp` service VIP, labelled `istio.io/use-waypoint`:
//!   client ztunnel → HBONE → waypoint (HTTP parsed, routed, policy-checked) → HBONE → server
//!   ztunnel → `mesh/server`;
//! - `l4`: `mesh/client` → the `server-l4` service VIP (same pod, no waypoint): plain ztunnel
//!   HBONE, the second comparison (reported as `<metric>_no_waypoint`);
//! - with `--compare-waypoint <program>`, `mesh_b`: the same as `mesh` through a second waypoint
//!   (`waypoint-b`, same node, its own service `server-wpb`) running that program, reported as
//!   `<metric>_compared` (its CPU and RSS too). Two builds measured round by round in one run
//!   differ by what the code does, not by what the shared machine did between two runs;
//! - with `--floor`, `relay`: the baseline's pods plus a third unenrolled pod on node 2, with a
//!   plain TCP relay (`benches relay`) wherever the waypoint path has a proxy: in the client
//!   pod (the client ztunnel's outbound socket), in the third pod (the waypoint) and in the
//!   server pod (the server ztunnel's inbound socket). The waypoint path's eight one-way hops
//!   with nothing done in them, reported as `<metric>_relay_floor`; the middle relay's CPU as
//!   `waypoint_cpu_s_per_1k_req_relay_floor`. Not a target: what any proxies in those places
//!   cost at least on this machine.
//!
//! Per round and path: `wrk` closed-loop over 10 keep-alive connections and `oha` open-loop
//! at 1,000 req/s with coordinated-omission correction. During the waypoint path's open-loop
//! run the waypoint's CPU time and peak RSS (VmHWM, reset just before) are read from `/proc`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::mesh::{Mesh, MeshSpec, PodSpec, ServiceSpec, WaypointSpec};
use e2e::{Pod, Process};
use serde_json::json;

use crate::load::Load;
use crate::parse;
use crate::procfs;
use crate::profile;
use crate::relay;
use crate::report::{Against, Bound, Report, Target};
use crate::stats::Summary;

const HTTP_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const DIRECT_NS: &str = "direct";
const MESH_NS: &str = "mesh";
const WAYPOINT: &str = "waypoint";
const WAYPOINT_B: &str = "waypoint-b";
/// VIPs of the service through the waypoint and of the one without.
const VIP_WAYPOINT: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const VIP_L4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const VIP_WAYPOINT_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 22);
/// Suffix of the metrics of the mesh-without-waypoint path.
const NO_WAYPOINT: &str = "_no_waypoint";
/// Suffix of the metrics of the second waypoint's path (`--compare-waypoint`).
const COMPARED: &str = "_compared";
/// Suffix of the floor's metrics (`--floor`).
const FLOOR: &str = "_relay_floor";
/// The floor's pod in the waypoint's place, and the port every floor relay listens on.
const RELAY_POD: &str = "relay";
const RELAY_HTTP_PORT: u16 = 18080;

/// How long and how often.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rounds, run lengths and load.
    pub load: Load,
    /// A second waypoint program, measured beside the mesh's in every round.
    pub compare_waypoint: Option<PathBuf>,
    /// Also measure the floor: plain TCP relays where the waypoint path has proxies.
    pub floor: bool,
    /// Record the waypoint(s) with perf during the rounds; flame graphs are written next to
    /// this path (the report's, without extension).
    pub profile: Option<PathBuf>,
}

impl Settings {
    /// The full run.
    pub fn full() -> Settings {
        Settings { load: Load::full(), compare_waypoint: None, floor: false, profile: None }
    }

    /// `--quick`: fewer, shorter rounds (about 2 minutes).
    pub fn quick() -> Settings {
        Settings { load: Load::quick(), ..Settings::full() }
    }
}

/// Which way a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path3 {
    Baseline,
    Waypoint,
    L4,
    /// Through the second waypoint (`--compare-waypoint`).
    WaypointB,
    /// Through three plain relays in the baseline's namespace (`--floor`).
    Floor,
}

impl Path3 {
    fn name(self) -> &'static str {
        match self {
            Path3::Baseline => "baseline",
            Path3::Waypoint => "mesh",
            Path3::L4 => "l4",
            Path3::WaypointB => "mesh_b",
            Path3::Floor => "relay",
        }
    }

    /// The paths measured: the three, the second waypoint's when there is one, the floor's
    /// when asked for.
    fn all(compare: bool, floor: bool) -> Vec<Path3> {
        let mut paths = vec![Path3::Baseline, Path3::Waypoint, Path3::L4];
        if compare {
            paths.push(Path3::WaypointB);
        }
        if floor {
            paths.push(Path3::Floor);
        }
        paths
    }

    /// The suffix of this path's metrics in the report.
    fn suffix(self) -> &'static str {
        match self {
            Path3::Baseline | Path3::Waypoint => "",
            Path3::L4 => NO_WAYPOINT,
            Path3::WaypointB => COMPARED,
            Path3::Floor => FLOOR,
        }
    }
}

/// The paths of round `round`: the three rotated by one every round, so each runs first,
/// second and last equally often and a drift of the shared machine hits all alike.
fn round_order<T>(items: &[T], round: usize) -> Vec<&T> {
    let n = items.len();
    (0..n).map(|i| &items[(i + round) % n]).collect()
}

/// CPU seconds per 1,000 responses (at 1,000 req/s: vCPU); `None` without responses.
pub fn cpu_s_per_1k(cpu: Duration, responses: u64) -> Option<f64> {
    (responses > 0).then(|| cpu.as_secs_f64() / (responses as f64 / 1000.0))
}

type Samples = BTreeMap<String, Vec<f64>>;

fn push(samples: &mut Samples, path: Path3, metric: &str, v: f64) {
    samples.entry(format!("{}/{metric}", path.name())).or_default().push(v);
}

fn service(name: &str, vip: Ipv4Addr, waypoint: Option<&str>) -> ServiceSpec {
    ServiceSpec {
        namespace: MESH_NS.into(),
        name: name.into(),
        vip: IpAddr::V4(vip),
        port: SERVICE_PORT,
        target_port: HTTP_PORT,
        endpoints: vec![format!("{MESH_NS}/server")],
        use_waypoint: waypoint.map(str::to_owned),
    }
}

/// Runs the scenario (inside the sandbox).
pub fn run(settings: &Settings, oha: &Path, quick: bool) -> anyhow::Result<Report> {
    let started = Instant::now();
    let compare = settings.compare_waypoint.clone();
    let mut services = vec![service("server-wp", VIP_WAYPOINT, Some(WAYPOINT)), service("server-l4", VIP_L4, None)];
    let mut waypoints = vec![WaypointSpec::new(2, MESH_NS, WAYPOINT)];
    if let Some(program) = &compare {
        services.push(service("server-wpb", VIP_WAYPOINT_B, Some(WAYPOINT_B)));
        waypoints.push(WaypointSpec { binary: Some(program.clone()), ..WaypointSpec::new(2, MESH_NS, WAYPOINT_B) });
    }
    let mut pods = vec![
        PodSpec::new(1, DIRECT_NS, "client"),
        PodSpec::new(2, DIRECT_NS, "server"),
        PodSpec::new(1, MESH_NS, "client"),
        PodSpec::new(2, MESH_NS, "server"),
    ];
    if settings.floor {
        // On the waypoint's node, as the waypoint is.
        pods.push(PodSpec::new(2, DIRECT_NS, RELAY_POD));
    }
    let spec = MeshSpec {
        nodes: 2,
        ambient_namespaces: vec![MESH_NS.into()],
        pods,
        services,
        control_plane: true,
        waypoints,
        ..MeshSpec::default()
    };
    let mesh = Mesh::start(spec).context("starting the mesh")?;
    eprintln!("mesh with waypoint up in {:.1?}", started.elapsed());
    let waypoint =
        procfs::find(&["--gateway", &format!("{MESH_NS}/{WAYPOINT}")]).context("finding the waypoint process")?;
    let waypoint_b = match &compare {
        Some(_) => Some(
            procfs::find(&["--gateway", &format!("{MESH_NS}/{WAYPOINT_B}")])
                .context("finding the second waypoint's process")?,
        ),
        None => None,
    };

    let mut report = Report::new("l7", quick, settings.load.rounds);
    report.issue = 7;
    report.settings = settings.load.report_settings();

    let _servers = start_servers(&mesh)?;
    let relays = if settings.floor { Some(start_relays(&mesh)?) } else { None };
    // The relay in the waypoint's place, whose CPU the floor reports.
    let middle_relay = relays.as_ref().map(|r| r.middle.pid());
    let client = |p: Path3| {
        let unenrolled = matches!(p, Path3::Baseline | Path3::Floor);
        mesh.pod(if unenrolled { DIRECT_NS } else { MESH_NS }, "client").clone()
    };
    let urls: Vec<(Path3, Pod, String)> = Path3::all(compare.is_some(), settings.floor)
        .into_iter()
        .map(|p| {
            let target = match p {
                Path3::Baseline => format!("{}:{HTTP_PORT}", mesh.pod(DIRECT_NS, "server").ip),
                Path3::Waypoint => format!("{VIP_WAYPOINT}:{SERVICE_PORT}"),
                Path3::L4 => format!("{VIP_L4}:{SERVICE_PORT}"),
                Path3::WaypointB => format!("{VIP_WAYPOINT_B}:{SERVICE_PORT}"),
                Path3::Floor => format!("{}:{RELAY_HTTP_PORT}", Ipv4Addr::LOCALHOST),
            };
            (p, client(p), format!("http://{target}/"))
        })
        .collect();
    for (p, pod, url) in &urls {
        warm_up(pod, url).with_context(|| format!("{} warm-up request to {url}", p.name()))?;
    }
    // The figures only mean something if each waypoint really is in its path.
    let counted: Vec<(Path3, &str, &str, u64)> = [(Path3::Waypoint, WAYPOINT, "server-wp")]
        .into_iter()
        .chain(compare.as_ref().map(|_| (Path3::WaypointB, WAYPOINT_B, "server-wpb")))
        .map(|(p, gateway, svc)| {
            let before = waypoint_requests(&mesh, gateway, svc)?;
            if before == 0 {
                bail!("waypoint {MESH_NS}/{gateway} counted no request to {svc} after the warm-up: not in the path");
            }
            Ok((p, gateway, svc, before))
        })
        .collect::<anyhow::Result<_>>()?;

    let mut samples = Samples::new();
    let mut responses: BTreeMap<&str, u64> = BTreeMap::new();
    let mut profiled_ones = vec![(waypoint, "waypoint")];
    profiled_ones.extend(waypoint_b.map(|pid| (pid, "waypoint-compared")));
    let what = format!("closed and open loop over {} rounds", settings.load.rounds);
    let ((), profiled) = profile::around(settings.profile.as_deref(), &profiled_ones, &what, || {
        for round in 0..settings.load.rounds {
            for (p, pod, url) in round_order(&urls, round).into_iter().map(|(p, pod, url)| (*p, pod, url)) {
                for open_loop in [false, true] {
                    let watched = match p {
                        Path3::Waypoint if open_loop => Some(waypoint),
                        Path3::WaypointB if open_loop => waypoint_b,
                        Path3::Floor if open_loop => middle_relay,
                        _ => None,
                    };
                    match measure(settings, oha, pod, url, open_loop, watched) {
                        Ok(m) => {
                            *responses.entry(p.name()).or_default() += m.responses;
                            for (metric, v) in m.values {
                                push(&mut samples, p, metric, v);
                            }
                        }
                        Err(e) => {
                            let test = if open_loop { "open loop" } else { "closed loop" };
                            eprintln!("round {round}, {}, {test}: {e:#}", p.name());
                            report.notes.push(format!("round {round}, {}, {test} failed: {e:#}", p.name()));
                        }
                    }
                }
            }
            eprintln!("round {} of {} done at {:.0?}", round + 1, settings.load.rounds, started.elapsed());
        }
    })?;
    report.notes.extend(profiled);
    // A request is counted when its response ends; give the last ones a moment.
    std::thread::sleep(Duration::from_secs(1));
    for (p, gateway, svc, before) in counted {
        let grew = waypoint_requests(&mesh, gateway, svc)?.saturating_sub(before);
        let got = responses.get(p.name()).copied().unwrap_or(0);
        report.notes.push(format!(
            "waypoint {MESH_NS}/{gateway}'s istio_requests_total for {svc} grew by {grew} during the rounds; the load generators got {got} responses on that path"
        ));
        if grew < got / 2 {
            bail!(
                "waypoint {MESH_NS}/{gateway} counted {grew} requests but the clients got {got} responses through it"
            );
        }
        if grew < got {
            report.notes.push(format!("WARNING: {} responses waypoint {MESH_NS}/{gateway} did not count", got - grew));
        }
    }
    let life = procfs::memory(waypoint)?;
    report.cost("waypoint_lifetime_peak_rss_mb", "MiB", Summary::of(&[procfs::mib(life.peak)])?);

    let compared = [
        ("closed_loop_rps", "req/s"),
        ("latency_p50_ms", "ms"),
        ("latency_p90_ms", "ms"),
        ("latency_p99_ms", "ms"),
        ("latency_p99_9_ms", "ms"),
    ];
    let vias: Vec<Path3> =
        Path3::all(compare.is_some(), settings.floor).into_iter().filter(|p| *p != Path3::Baseline).collect();
    for via in &vias {
        for (metric, unit) in compared {
            let key = format!("{metric}{}", via.suffix());
            let base = samples.get(&format!("baseline/{metric}"));
            report.compare_samples(&key, unit, base, samples.get(&format!("{}/{metric}", via.name())))?;
        }
    }
    for (metric, unit) in [("waypoint_cpu_s_per_1k_req", "CPU s"), ("waypoint_peak_rss_mb", "MiB")] {
        for via in &vias {
            if let Some(m) = samples.get(&format!("{}/{metric}", via.name())) {
                report.cost(&format!("{metric}{}", via.suffix()), unit, Summary::of(m)?);
            }
        }
    }
    if settings.floor {
        report.notes.push(format!(
            "*{FLOOR}: the floor, not a target — the baseline's pods plus a third unenrolled pod on node 2, with a plain TCP relay (`benches relay`: accept, connect, copy; no TLS, no HTTP, one upstream connection per client connection) in the client pod, the third pod and the server pod, where the waypoint path's proxies sit (client ztunnel, waypoint, server ztunnel): the same eight one-way hops with nothing done in them; waypoint_cpu_s_per_1k_req{FLOOR} is the middle relay's ({} tokio worker, as the waypoint)",
            relay::WAYPOINT_WORKERS
        ));
    }
    if let Some(program) = &compare {
        report.notes.push(format!(
            "*{COMPARED}: the same path through a second waypoint (service server-wpb, Gateway {MESH_NS}/{WAYPOINT_B} on node 2) running {}, measured in every round beside the mesh's; not a target",
            program.display()
        ));
    }
    report.notes.push(format!(
        "mesh = through the waypoint (client ztunnel → HBONE → waypoint → HBONE → server ztunnel); *{NO_WAYPOINT} = the same server pod through a service without waypoint (ztunnel L4 only); no mesh = a pod pair in a namespace that is not enrolled"
    ));
    report.notes.push(format!(
        "waypoint_cpu_s_per_1k_req: utime+stime delta of the waypoint over its open-loop run ÷ (responses / 1000); at {} req/s this equals vCPU per 1,000 req/s",
        settings.load.rate
    ));
    report.notes.push(
        "waypoint_peak_rss_mb: the waypoint's VmHWM over its open-loop run (reset through clear_refs just before); waypoint_lifetime_peak_rss_mb: VmHWM at the end, closed-loop runs included".into(),
    );
    report.targets = targets();
    report.settings.insert("elapsed_secs".into(), json!(started.elapsed().as_secs()));
    drop(relays);
    drop(_servers);
    mesh.topo.teardown().context("tearing the topology down")?;
    Ok(report)
}

/// Issue 7's waypoint targets; never relaxed here.
pub fn targets() -> Vec<Target> {
    let t = |metric, against, bound, target, label| Target { metric, against, bound, target, label };
    vec![
        t("latency_p99_ms", Against::Ratio, Bound::AtMost, 2.5, "p99 at 1,000 req/s, waypoint ÷ direct"),
        t("waypoint_cpu_s_per_1k_req", Against::Mesh, Bound::AtMost, 0.15, "vCPU per 1k req/s, waypoint"),
        t("waypoint_peak_rss_mb", Against::Mesh, Bound::AtMost, 25.0, "peak RSS MiB at 1,000 req/s, waypoint"),
    ]
}

/// The HTTP server in both server pods; killed when dropped.
fn start_servers(mesh: &Mesh) -> anyhow::Result<Vec<Process>> {
    let exe: PathBuf = std::env::current_exe().context("finding this program")?;
    let mut servers = Vec::new();
    for ns in [DIRECT_NS, MESH_NS] {
        let pod = mesh.pod(ns, "server");
        let http = pod.netns.spawn([exe.to_string_lossy().as_ref(), "serve-http", "--port", &HTTP_PORT.to_string()])?;
        http.wait_for_log("serving", Duration::from_secs(5))?;
        servers.push(http);
    }
    Ok(servers)
}

/// The floor's relays, each killed when dropped.
struct Relays {
    /// In the baseline's client pod, on loopback (where the client ztunnel's outbound listener
    /// takes the application's connection).
    _client: Process,
    /// In the relay pod on node 2 (where the waypoint listens).
    middle: Process,
    /// In the server pod, on the pod's address (where the server ztunnel's inbound listener is).
    _server: Process,
}

fn start_relays(mesh: &Mesh) -> anyhow::Result<Relays> {
    let pod = |name| mesh.pod(DIRECT_NS, name);
    let map = |listen, target| relay::Mapping { listen, target };
    let on = |ip: Ipv4Addr| SocketAddr::from((ip, RELAY_HTTP_PORT));
    let server = relay::start_in(
        pod("server"),
        &[map(on(Ipv4Addr::UNSPECIFIED), SocketAddr::from((Ipv4Addr::LOCALHOST, HTTP_PORT)))],
        relay::ztunnel_workers(),
    )?;
    let middle = relay::start_in(
        pod(RELAY_POD),
        &[map(on(Ipv4Addr::UNSPECIFIED), on(pod("server").ip))],
        relay::WAYPOINT_WORKERS,
    )?;
    let client = relay::start_in(
        pod("client"),
        &[map(on(Ipv4Addr::LOCALHOST), on(pod(RELAY_POD).ip))],
        relay::ztunnel_workers(),
    )?;
    Ok(Relays { _client: client, middle, _server: server })
}

/// A first successful request (the mesh paths set up their HBONE connections; a service's
/// VIP may reach the client's ztunnel a moment after the mesh is up).
fn warm_up(pod: &Pod, url: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match pod.netns.http_get(url) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Requests to service `svc` that waypoint `gateway` has counted (its `istio_requests_total`).
fn waypoint_requests(mesh: &Mesh, gateway: &str, svc: &str) -> anyhow::Result<u64> {
    let metrics = mesh.waypoint_metrics(MESH_NS, gateway)?;
    Ok(requests_total(&metrics, &format!("destination_service=\"{svc}.{MESH_NS}.svc.cluster.local\"")))
}

/// Sum of the `istio_requests_total` samples whose labels contain `label`.
pub fn requests_total(prometheus: &str, label: &str) -> u64 {
    prometheus
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{") && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What one run measured.
struct Measured {
    responses: u64,
    values: Vec<(&'static str, f64)>,
}

/// One closed-loop (`wrk`) or open-loop (`oha`) run from `pod` to `url`; with `waypoint`,
/// that process's CPU time and peak RSS over the run as well.
fn measure(
    settings: &Settings,
    oha: &Path,
    pod: &Pod,
    url: &str,
    open_loop: bool,
    waypoint: Option<u32>,
) -> anyhow::Result<Measured> {
    let ns = &pod.netns;
    let limit = settings.load.run_limit();
    let conns = settings.load.connections.to_string();
    if !open_loop {
        let dur = format!("{}s", settings.load.run_secs);
        let out = ns.exec(["wrk", "-t", "2", "-c", &conns, "-d", &dur, "--timeout", "5s", url], limit)?;
        if !out.success() {
            bail!("wrk failed: {}{}", out.stdout, out.stderr);
        }
        let r = parse::wrk(&out.stdout)?;
        return Ok(Measured { responses: r.requests, values: vec![("closed_loop_rps", r.requests_per_second)] });
    }
    if let Some(pid) = waypoint {
        procfs::reset_peak(pid)?;
    }
    let cpu_before = waypoint.map(procfs::cpu_time).transpose()?;
    let dur = format!("{}s", settings.load.open_loop_secs);
    let rate = settings.load.rate.to_string();
    let oha = oha.to_string_lossy();
    let argv =
        [oha.as_ref(), "-z", &dur, "-q", &rate, "-c", &conns, "--latency-correction", "--no-tui", "--output-format"];
    let out = ns.exec(argv.into_iter().chain(["json", url]), limit)?;
    if !out.success() {
        bail!("oha failed: {}{}", out.stdout, out.stderr);
    }
    let r = parse::oha(&out.stdout)?;
    let mut values = vec![
        ("latency_p50_ms", r.p50 * 1000.0),
        ("latency_p90_ms", r.p90 * 1000.0),
        ("latency_p99_ms", r.p99 * 1000.0),
        ("latency_p99_9_ms", r.p999 * 1000.0),
        ("open_loop_achieved_rps", r.requests_per_second),
    ];
    if let (Some(pid), Some(before)) = (waypoint, cpu_before) {
        let cpu = procfs::cpu_time(pid)?.saturating_sub(before);
        values.push(("waypoint_cpu_s_per_1k_req", cpu_s_per_1k(cpu, r.requests).context("no responses")?));
        values.push(("waypoint_peak_rss_mb", procfs::mib(procfs::memory(pid)?.peak)));
    }
    Ok(Measured { responses: r.requests, values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_takes_every_position_across_rounds() {
        assert_eq!(round_order(&[1, 2, 3], 0), vec![&1, &2, &3]);
        assert_eq!(round_order(&[1, 2, 3], 1), vec![&2, &3, &1]);
        assert_eq!(round_order(&[1, 2, 3], 2), vec![&3, &1, &2]);
        assert_eq!(round_order(&[1, 2, 3], 3), vec![&1, &2, &3]);
        assert!(round_order::<u8>(&[], 4).is_empty());
    }

    #[test]
    fn a_compared_waypoint_is_a_fourth_path() {
        assert_eq!(Path3::all(false, false), vec![Path3::Baseline, Path3::Waypoint, Path3::L4]);
        let four = Path3::all(true, false);
        assert_eq!(four.last(), Some(&Path3::WaypointB));
        assert_eq!(four.iter().map(|p| p.name()).collect::<Vec<_>>(), ["baseline", "mesh", "l4", "mesh_b"]);
        let five = Path3::all(true, true);
        assert_eq!(five.last().map(|p| p.name()), Some("relay"));
        assert_eq!(Path3::all(false, true).len(), 4);
        // Rotated like the others, each takes every position.
        assert_eq!(round_order(&four, 3), vec![&Path3::WaypointB, &Path3::Baseline, &Path3::Waypoint, &Path3::L4]);
    }

    #[test]
    fn cpu_per_thousand_responses() {
        assert_eq!(cpu_s_per_1k(Duration::from_millis(600), 5000), Some(0.12));
        assert_eq!(cpu_s_per_1k(Duration::from_secs(1), 0), None);
    }

    #[test]
    fn counts_only_the_requested_service() {
        let m = "# HELP istio_requests_total x\n\
            istio_requests_total{reporter=\"waypoint\",destination_service=\"server-wp.mesh.svc.cluster.local\",response_code=\"200\"} 1500\n\
            istio_requests_total{reporter=\"waypoint\",destination_service=\"server-wp.mesh.svc.cluster.local\",response_code=\"503\"} 2\n\
            istio_requests_total{reporter=\"waypoint\",destination_service=\"other.mesh.svc.cluster.local\",response_code=\"200\"} 7\n\
            istio_request_bytes_count{destination_service=\"server-wp.mesh.svc.cluster.local\"} 99\n";
        assert_eq!(requests_total(m, "destination_service=\"server-wp.mesh.svc.cluster.local\""), 1502);
        assert_eq!(requests_total(m, "destination_service=\"none\""), 0);
    }

    #[test]
    fn targets_are_issue_7s() {
        let t = targets();
        let p99 = t.iter().find(|t| t.metric == "latency_p99_ms").unwrap();
        assert_eq!((p99.against, p99.bound, p99.target), (Against::Ratio, Bound::AtMost, 2.5));
        let cpu = t.iter().find(|t| t.metric == "waypoint_cpu_s_per_1k_req").unwrap();
        assert_eq!((cpu.against, cpu.target), (Against::Mesh, 0.15));
        let rss = t.iter().find(|t| t.metric == "waypoint_peak_rss_mb").unwrap();
        assert_eq!((rss.against, rss.target), (Against::Mesh, 25.0));
        assert_eq!(Path3::L4.suffix(), "_no_waypoint");
        assert_eq!(Path3::Floor.suffix(), "_relay_floor");
    }
}
