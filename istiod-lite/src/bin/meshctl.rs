//! meshctl: ask the mesh questions.
//!
//! From the same directory of Kubernetes YAML istiod-lite serves (`--config-dir`, default
//! `manifests/samples`), answered by the same code the mesh runs: `explain` (path,
//! identities, verdict with the deciding policy and rule), `workloads`, `services`,
//! `policies`. From running components (see [`istiod_lite::meshctl`]): `proxy-status`
//! (istiod-lite's 15014), `certs` (ztunnel's admin 15000), `check` (this host and the
//! components' health; exits 1 on any failed check). Tables by default, JSON with `-o json`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use istiod_lite::explain::{explain, state_of};
use istiod_lite::meshctl::{certs, check, fetch, proxy_status};
use istiod_lite::source::dir::Loader;
use istiod_lite::{MeshConfig, Translator};
use serde_json::json;

#[derive(Parser)]
#[command(name = "meshctl", about = "Inspect and explain the mesh")]
struct Cli {
    /// Directory of the mesh's Kubernetes YAML.
    #[arg(long, global = true, env = "MESH_CONFIG_DIR", default_value = "manifests/samples")]
    config_dir: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// The path a connection would take and the verdict it would get.
    Explain {
        /// Source pod, `namespace/name`.
        source: String,
        /// Destination pod or service, `namespace/name[:port]`.
        destination: String,
    },
    /// Workloads as the node proxies see them.
    Workloads,
    /// Services.
    Services,
    /// Authorization policies as the node proxies enforce them.
    Policies,
    /// Every proxy connected to istiod-lite: per type, acknowledged versus served resources,
    /// how many it is behind, the pending nonce and the last NACK.
    ProxyStatus {
        /// istiod-lite's monitoring address.
        #[arg(long, default_value = proxy_status::DEFAULT_ISTIOD)]
        istiod: String,
    },
    /// The certificates ztunnels hold: identity, serial, validity, time left, root.
    Certs {
        /// A ztunnel's admin address; repeat for several.
        #[arg(long = "ztunnel-admin", default_value = certs::DEFAULT_ZTUNNEL_ADMIN)]
        ztunnel_admin: Vec<String>,
    },
    /// Preflight of this host and health of the mesh's components; exits 1 on any failure.
    Check {
        /// CNI configuration directory whose configuration list must chain our plugin.
        #[arg(long)]
        cni_conf_dir: Option<PathBuf>,
        /// Our plugin's `type` in the configuration list.
        #[arg(long, default_value = check::CNI_PLUGIN_TYPE)]
        cni_plugin: String,
        /// Ports that must be free or ztunnel's.
        #[arg(long, value_delimiter = ',', default_values_t = check::ZTUNNEL_PORTS)]
        ports: Vec<u16>,
        /// The command name of the process allowed to hold those ports.
        #[arg(long, default_value = "ztunnel")]
        port_owner: String,
        /// istiod-lite's monitoring address.
        #[arg(long, default_value = proxy_status::DEFAULT_ISTIOD)]
        istiod: String,
        /// Do not check istiod-lite.
        #[arg(long)]
        skip_istiod: bool,
        /// A ztunnel's readiness address (`http://<node>:15021`); repeat for several.
        #[arg(long = "ztunnel-ready")]
        ztunnel_ready: Vec<String>,
    },
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::ProxyStatus { istiod } => {
            let doc = fetch::get_json(&fetch::join(&istiod, "/debug/connections")).await?;
            let rows = proxy_status::proxy_status(&doc)?;
            if cli.output == Output::Json {
                print_json(&rows)?;
            } else {
                print!("{}", proxy_status::table(&rows));
            }
            return Ok(());
        }
        Cmd::Certs { ztunnel_admin } => {
            let mut rows = Vec::new();
            for admin in &ztunnel_admin {
                rows.extend(certs::fetch(admin).await?);
            }
            if cli.output == Output::Json {
                print_json(&rows)?;
            } else {
                print!("{}", certs::table(&rows));
            }
            return Ok(());
        }
        Cmd::Check { cni_conf_dir, cni_plugin, ports, port_owner, istiod, skip_istiod, ztunnel_ready } => {
            let mut checks = vec![
                check::nftables(),
                check::iptables_nft(),
                check::netns(std::path::Path::new("/proc")),
                check::ip_forward(std::path::Path::new("/proc/sys/net/ipv4/ip_forward")),
            ];
            if let Some(dir) = &cni_conf_dir {
                checks.push(check::cni_chain(dir, &cni_plugin));
            }
            checks.extend(ports.iter().map(|p| check::port(*p, &port_owner)));
            if !skip_istiod {
                checks.extend(check::istiod(&istiod).await);
            }
            for z in &ztunnel_ready {
                checks.push(check::ztunnel_ready(z).await);
            }
            if cli.output == Output::Json {
                print_json(&checks)?;
            } else {
                print!("{}", check::table(&checks));
            }
            if check::failed(&checks) {
                std::process::exit(1);
            }
            return Ok(());
        }
        _ => {}
    }
    let snapshot =
        Loader::new(&cli.config_dir).load().with_context(|| format!("reading {}", cli.config_dir.display()))?;
    for e in &snapshot.errors {
        eprintln!("warning: {e}");
    }
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snapshot.objects.into_iter().map(|l| l.object).collect());
    match cli.command {
        Cmd::Explain { source, destination } => {
            let (dst, port) = match destination.rsplit_once(':') {
                Some((d, p)) => (d.to_owned(), Some(p.parse::<u16>().with_context(|| format!("port {p:?}"))?)),
                None => (destination.clone(), None),
            };
            let e = explain(&t, &source, &dst, port)?;
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                let rows = [
                    (
                        "source",
                        format!(
                            "{} ({})",
                            e.source,
                            e.source_identity.as_deref().unwrap_or("not in the mesh: plaintext")
                        ),
                    ),
                    ("destination", e.destination.clone()),
                    ("service", e.service.clone().unwrap_or_else(|| "-".into())),
                    ("endpoint", format!("{} {} ({})", e.endpoint, e.endpoint_addr, e.destination_identity)),
                    ("path", format!("{}{}", e.path, if e.mtls { " (mutual TLS)" } else { "" })),
                    ("verdict", if e.allowed { "ALLOW".into() } else { "DENY".into() }),
                    ("why", e.verdict.clone()),
                    (
                        "policy",
                        e.policy
                            .clone()
                            .map(|p| format!("{p} rule {}", e.rule.map_or("-".into(), |r| r.to_string())))
                            .unwrap_or_else(|| "-".into()),
                    ),
                ];
                for (k, v) in rows {
                    println!("{k:<12} {v}");
                }
            }
        }
        Cmd::ProxyStatus { .. } | Cmd::Certs { .. } | Cmd::Check { .. } => unreachable!("answered above"),
        Cmd::Workloads | Cmd::Services | Cmd::Policies => {
            let state = state_of(&t)?;
            let dump = serde_json::to_value(&state)?;
            let key = match cli.command {
                Cmd::Workloads => "workloads",
                Cmd::Services => "services",
                _ => "policies",
            };
            let items = dump[key].as_array().cloned().unwrap_or_default();
            if cli.output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&json!(items))?);
            } else if items.is_empty() {
                println!("no {key}");
            } else {
                for item in items {
                    let name = |k: &str| item[k].as_str().unwrap_or("").to_owned();
                    match key {
                        "workloads" => println!(
                            "{:<12} {:<32} {:<50} {:<16} {}",
                            name("namespace"),
                            name("name"),
                            name("identity"),
                            item["addresses"].to_string(),
                            name("protocol")
                        ),
                        "services" => println!("{:<12} {:<40} {}", name("namespace"), name("hostname"), item["vips"]),
                        _ => println!(
                            "{:<12} {:<40} {:<8} {}",
                            name("namespace"),
                            name("name"),
                            item["action"],
                            item["scope"]
                        ),
                    }
                }
            }
        }
    }
    Ok(())
}
