//! meshctl: ask the mesh questions.
//!
//! Today it reads the same directory of Kubernetes YAML istiod-lite serves (`--config-dir`,
//! default `manifests/samples`) and answers from the same code the mesh runs: `explain`
//! (path, identities, verdict with the deciding policy and rule), `workloads`, `services`,
//! `policies`. Tables by default, JSON with `-o json`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use istiod_lite::explain::{explain, state_of};
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
