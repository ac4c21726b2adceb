//! `meshctl check`: is this host ready for the mesh, and are its components healthy?
//!
//! Each check is a function of inputs the caller chooses (paths, ports, URLs), returning a
//! [`Check`]: name, `ok` / `warn` / `fail`, and a detail saying what was found. Host checks:
//! nftables answers (`nft list tables`), iptables with the nf_tables backend, network
//! namespaces, `net.ipv4.ip_forward`, the CNI configuration list chaining our plugin, and the
//! ports ztunnel needs free (or already ztunnel's). Health checks: istiod-lite's 15014
//! answering and its config error count, each ztunnel's 15021 readiness.

use std::path::Path;
use std::process::Command;

use serde::Serialize;
use serde_json::Value;

use super::fetch;

/// The ports ztunnel listens on: outbound, inbound plaintext, HBONE, DNS, metrics, readiness.
pub const ZTUNNEL_PORTS: [u16; 6] = [15001, 15006, 15008, 15053, 15020, 15021];
/// The `type` of our CNI plugin in a configuration list.
pub const CNI_PLUGIN_TYPE: &str = "ztunnel-cni";

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// The mesh will not work here until fixed.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// The outcome.
    pub level: Level,
    /// What was found.
    pub detail: String,
}

impl Check {
    fn new(name: impl Into<String>, level: Level, detail: impl Into<String>) -> Check {
        Check { name: name.into(), level, detail: detail.into() }
    }
}

/// Runs `program args`: its stdout on success, else what went wrong.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("{program} is not installed")),
        Err(e) => Err(format!("running {program}: {e}")),
    }
}

/// nftables answers: `nft list tables` succeeds.
pub fn nftables() -> Check {
    match run("nft", &["list", "tables"]) {
        Ok(out) => Check::new("nftables", Level::Ok, format!("nft answers ({} tables)", out.lines().count())),
        Err(e) => Check::new("nftables", Level::Fail, e),
    }
}

/// iptables is present with the nf_tables backend (`iptables --version` says `nf_tables`).
pub fn iptables_nft() -> Check {
    let name = "iptables-nft";
    match run("iptables", &["--version"]) {
        Ok(v) if v.contains("nf_tables") => Check::new(name, Level::Ok, v.trim().to_owned()),
        Ok(v) => match run("iptables-nft", &["--version"]) {
            Ok(n) => Check::new(
                name,
                Level::Warn,
                format!("`iptables` is {} (legacy backend); iptables-nft is present: {}", v.trim(), n.trim()),
            ),
            Err(_) => Check::new(name, Level::Fail, format!("`iptables` is {} and iptables-nft is absent", v.trim())),
        },
        Err(e) => match run("iptables-nft", &["--version"]) {
            Ok(n) => Check::new(name, Level::Ok, n.trim().to_owned()),
            Err(_) => Check::new(name, Level::Fail, e),
        },
    }
}

/// Network namespaces are available: this process has one, and more may be made
/// (`/proc/sys/user/max_net_namespaces` above 0).
pub fn netns(proc_root: &Path) -> Check {
    let name = "network namespaces";
    if std::fs::read_link(proc_root.join("self/ns/net")).is_err() {
        return Check::new(name, Level::Fail, format!("{}/self/ns/net is missing", proc_root.display()));
    }
    let limit = proc_root.join("sys/user/max_net_namespaces");
    match std::fs::read_to_string(&limit).map(|s| s.trim().parse::<u64>()) {
        Ok(Ok(0)) => Check::new(name, Level::Fail, format!("{} is 0", limit.display())),
        Ok(Ok(n)) => Check::new(name, Level::Ok, format!("supported (up to {n})")),
        _ => Check::new(name, Level::Warn, format!("supported; {} unreadable", limit.display())),
    }
}

/// `net.ipv4.ip_forward` as read from `path` (normally `/proc/sys/net/ipv4/ip_forward`).
pub fn ip_forward(path: &Path) -> Check {
    let name = "ip_forward";
    match std::fs::read_to_string(path) {
        Ok(v) if v.trim() == "1" => Check::new(name, Level::Ok, format!("{} is 1", path.display())),
        Ok(v) => Check::new(
            name,
            Level::Warn,
            format!(
                "{} is {}: pod traffic is not forwarded by this host (Kubernetes nodes enable it)",
                path.display(),
                v.trim()
            ),
        ),
        Err(e) => Check::new(name, Level::Fail, format!("{}: {e}", path.display())),
    }
}

/// The CNI configuration list a runtime would use in `dir` (the lexically first `*.conflist`)
/// chains `plugin` after the interface plugin.
pub fn cni_chain(dir: &Path, plugin: &str) -> Check {
    let name = "cni chain";
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Check::new(name, Level::Fail, format!("{}: {e}", dir.display())),
    };
    let mut lists: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    lists.sort();
    let Some(path) = lists.into_iter().next() else {
        return Check::new(name, Level::Fail, format!("{}: no *.conflist file", dir.display()));
    };
    let list: Value = match std::fs::read(&path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Check::new(name, Level::Fail, format!("{}: not JSON: {e}", path.display())),
        Err(e) => return Check::new(name, Level::Fail, format!("{}: {e}", path.display())),
    };
    let Some(plugins) = list["plugins"].as_array() else {
        return Check::new(name, Level::Fail, format!("{}: no `plugins` array", path.display()));
    };
    let types: Vec<&str> = plugins.iter().map(|p| p["type"].as_str().unwrap_or("?")).collect();
    match types.iter().position(|t| *t == plugin) {
        Some(0) => Check::new(
            name,
            Level::Fail,
            format!(
                "{}: {plugin} is first in {types:?}; it must be chained after the interface plugin",
                path.display()
            ),
        ),
        Some(_) => Check::new(name, Level::Ok, format!("{}: {}", path.display(), types.join(" → "))),
        None => Check::new(name, Level::Fail, format!("{}: {plugin} is not chained ({types:?})", path.display())),
    }
}

/// The process listening on TCP `port` in this network namespace, as `(pid, command)`, from
/// `/proc/net/tcp{,6}` and the processes' descriptors; `None` if nothing listens.
/// `Some((0, "?"))` when something listens but its owner is not visible.
pub fn listener(port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" {
                let p = f[1].rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok());
                if p == Some(port) {
                    inodes.push(format!("socket:[{}]", f[9]));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.filter_map(Result::ok) {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        for fd in fds.filter_map(Result::ok) {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_owned();
                return Some((pid, comm));
            }
        }
    }
    Some((0, "?".into()))
}

/// TCP `port` is free, or held by a process whose command is `allowed_owner` (ztunnel).
pub fn port(port: u16, allowed_owner: &str) -> Check {
    let name = format!("port {port}");
    match listener(port) {
        Some((pid, comm)) if comm == allowed_owner => {
            Check::new(name, Level::Ok, format!("in use by {comm} (pid {pid})"))
        }
        Some((0, _)) => Check::new(name, Level::Fail, "in use by a process this user cannot see"),
        Some((pid, comm)) => {
            Check::new(name, Level::Fail, format!("in use by {comm} (pid {pid}), not {allowed_owner}"))
        }
        None => match std::net::TcpListener::bind(("0.0.0.0", port)) {
            Ok(_) => Check::new(name, Level::Ok, "free"),
            Err(e) => Check::new(name, Level::Fail, format!("cannot bind: {e}")),
        },
    }
}

/// istiod-lite's monitoring port answers, and its last load's config errors.
pub async fn istiod(base: &str) -> Vec<Check> {
    let url = fetch::join(base, "/debug/errors");
    match fetch::get_json(&url).await {
        Err(e) => vec![Check::new("istiod-lite", Level::Fail, e.to_string())],
        Ok(doc) => {
            let reach = Check::new("istiod-lite", Level::Ok, format!("{base} answers ({} loads)", doc["loads"]));
            let errors: Vec<&str> = doc["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let config = match (doc["failure"].as_str(), errors.first()) {
                (Some(f), _) => Check::new("istiod-lite config", Level::Fail, format!("source failing: {f}")),
                (None, None) => Check::new("istiod-lite config", Level::Ok, "0 config errors"),
                (None, Some(first)) => Check::new(
                    "istiod-lite config",
                    Level::Warn,
                    format!("{} config errors; first: {first}", errors.len()),
                ),
            };
            vec![reach, config]
        }
    }
}

/// A ztunnel's readiness (`<base>/healthz/ready`, port 15021).
pub async fn ztunnel_ready(base: &str) -> Check {
    let name = format!("ztunnel {base}");
    let url = fetch::join(base, "/healthz/ready");
    match fetch::get(&url).await {
        Ok((200, _)) => Check::new(name, Level::Ok, "ready"),
        Ok((status, body)) => {
            Check::new(name, Level::Fail, format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()))
        }
        Err(e) => Check::new(name, Level::Fail, e.to_string()),
    }
}

/// Whether any check failed (the command then exits non-zero).
pub fn failed(checks: &[Check]) -> bool {
    checks.iter().any(|c| c.level == Level::Fail)
}

/// The table form.
pub fn table(checks: &[Check]) -> String {
    let cells: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let level = match c.level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "fail",
            };
            vec![c.name.clone(), level.to_owned(), c.detail.clone()]
        })
        .collect();
    super::table::render(&["CHECK", "RESULT", "DETAIL"], &cells)
}
