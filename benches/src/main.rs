//! The mesh's benchmark harness: `benches <scenario> [--quick] [--json PATH]`.
//!
//! Outside the sandbox it gets ready (load generators installed, the mesh built in release
//! mode); then it re-runs itself inside an `e2e` sandbox (private network, mount and pid
//! namespaces), where the scenario builds its topology with `e2e`, measures the baseline and
//! the mesh interleaved, and writes a JSON report and an SVG chart. `serve-http` is the
//! HTTP server it starts inside server pods, `relay` the plain TCP relay of `--floor`.
#![forbid(unsafe_code)]

mod control_plane;
mod flame;
mod generate;
mod l4;
mod l7;
mod load;
mod meta;
mod parse;
mod prep;
mod procfs;
mod profile;
mod relay;
mod report;
mod serve;
mod stats;
mod svg;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "benches", about = "The mesh against no mesh, side by side in one run")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Data plane: throughput, request rates, latency, ztunnel CPU and memory.
    L4(RunArgs),
    /// Waypoint: HTTP through a waypoint against no mesh (and ztunnel alone); its CPU and memory.
    L7(RunArgs),
    /// Control plane: 50 xDS clients against istiod-lite with 10,000 pods.
    ControlPlane(RunArgs),
    /// The benchmark HTTP server (started by `l4` inside server pods).
    #[command(hide = true)]
    ServeHttp {
        /// Port.
        #[arg(long)]
        port: u16,
        /// Runtime worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// A plain TCP relay (started by `--floor` inside the baseline's pods).
    #[command(hide = true)]
    Relay {
        /// `LISTEN=TARGET` socket addresses, repeatable.
        #[arg(long = "map", required = true)]
        maps: Vec<relay::Mapping>,
        /// Runtime worker threads (ztunnel's on this machine).
        #[arg(long, default_value_t = relay::ztunnel_workers())]
        threads: usize,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// Fewer, shorter rounds (under 5 minutes).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report (default `benches/results/<scenario>[-quick].json`);
    /// the SVG chart goes beside it with the `.svg` extension.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `l4` only: run just these measurements (comma-separated: one-stream, eight-streams,
    /// closed-loop, open-loop, new-connections), e.g. to profile one of them.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// `l4` and `l7`: also measure the floor, a plain TCP relay (no TLS, no HTTP) in each place
    /// of the baseline path where the mesh has a proxy, reported as `<metric>_relay_floor`.
    #[arg(long)]
    floor: bool,
    /// `l4` and `l7`: record the proxies' call stacks with `perf` during the rounds (both
    /// ztunnels in `l4`, and the relays with `--floor`; the waypoint in `l7`) and write a flame graph of each beside the JSON
    /// (`<json stem>-flame-<proxy>.svg` and `.folded`); perf's own cost skews that run's figures.
    #[arg(long)]
    profile: bool,
    /// `l7` only: also run this waypoint program, as a second waypoint measured in every round
    /// beside the mesh's, reported as `<metric>_compared` (for A/B of two builds in one run).
    #[arg(long)]
    compare_waypoint: Option<PathBuf>,
}

const SANDBOX_NAME: &str = "benches";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (scenario, args) = match cli.command {
        Command::ServeHttp { port, threads } => return Ok(serve::serve(port, threads)?),
        Command::Relay { maps, threads } => return Ok(relay::relay(&maps, threads)?),
        Command::L4(a) => ("l4", a),
        Command::L7(a) => ("l7", a),
        Command::ControlPlane(a) => ("control-plane", a),
    };
    anyhow::ensure!(!args.profile || scenario != "control-plane", "--profile: only l4 and l7 record profiles");
    // The sandboxed copy of this program is pid 1 of its own pid namespace; the outer one
    // never is. Only the outer one has a network to install and build with.
    let inside = std::process::id() == 1;
    let mut oha = None;
    if !inside {
        let logs = prep::workspace_root().join("target/benches");
        let data_plane = scenario != "control-plane";
        let install = if data_plane { Some(prep::start_oha_install(&logs)?) } else { None };
        prep::apt_tools(prep::MESH_PACKAGES)?;
        if args.profile {
            prep::apt_tools(&[("perf", "linux-perf")])?;
        }
        if scenario == "l4" {
            prep::apt_tools(&[("iperf3", "iperf3"), ("wrk", "wrk"), ("curl", "curl")])?;
        } else if data_plane {
            prep::apt_tools(&[("wrk", "wrk"), ("curl", "curl")])?;
        }
        prep::build_mesh()?;
        if let Some(i) = install {
            oha = Some(i.wait()?);
        }
        if let Some(status) = e2e::run_program_sandboxed(SANDBOX_NAME)? {
            std::process::exit(status.code().unwrap_or(1));
        }
    } else if e2e::run_program_sandboxed(SANDBOX_NAME)?.is_some() {
        anyhow::bail!("pid 1 but not in this program's sandbox");
    }
    let oha = oha.or_else(|| prep::which("oha"));

    let json_path = args.json.unwrap_or_else(|| {
        let name = if args.quick { format!("{scenario}-quick.json") } else { format!("{scenario}.json") };
        prep::workspace_root().join("benches/results").join(name)
    });
    if let Some(dir) = json_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }

    let meta = meta::collect();
    let report = match scenario {
        "l4" => {
            let oha = oha.context("oha not found (the outer run installs it)")?;
            let mut settings = if args.quick { l4::Settings::quick() } else { l4::Settings::full() };
            settings.only = args.only.iter().map(|n| l4::Test::from_name(n)).collect::<Result<_, _>>()?;
            settings.floor = args.floor;
            settings.profile = args.profile.then(|| json_path.with_extension(""));
            l4::run(&settings, &oha, args.quick)?
        }
        "l7" => {
            let oha = oha.context("oha not found (the outer run installs it)")?;
            let mut settings = if args.quick { l7::Settings::quick() } else { l7::Settings::full() };
            if let Some(p) = &args.compare_waypoint {
                let p = std::path::absolute(p).with_context(|| format!("--compare-waypoint {}", p.display()))?;
                anyhow::ensure!(p.is_file(), "--compare-waypoint {}: not a file", p.display());
                settings.compare_waypoint = Some(p);
            }
            settings.floor = args.floor;
            settings.profile = args.profile.then(|| json_path.with_extension(""));
            l7::run(&settings, &oha, args.quick)?
        }
        _ => {
            let settings = if args.quick { control_plane::Settings::quick() } else { control_plane::Settings::full() };
            control_plane::run(&settings, args.quick)?
        }
    };
    let doc = report.to_json(&meta);
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = json_path.with_extension("svg");
    let title = format!(
        "{scenario}{}: {} ({})",
        if args.quick { " --quick" } else { "" },
        meta["date"].as_str().unwrap_or_default(),
        meta["commit"].as_str().unwrap_or_default()
    );
    std::fs::write(&svg_path, svg::chart(&title, &report.outcomes()))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    println!("{}", report.table());
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}
