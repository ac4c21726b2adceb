//! The in-pod redirection: nftables rules and policy routing installed inside
//! an enrolled pod's network namespace.
//!
//! - Outbound TCP leaving the pod goes to ztunnel's 15001, except to loopback
//!   and except ztunnel's own sockets (mark `0x539`).
//! - Inbound TCP goes to 15006, except what is addressed to 15008 (ztunnel's
//!   HBONE listener in the pod), kubelet probes from `169.254.7.127`, and
//!   ztunnel's own sockets.
//! - Replies to ztunnel's transparent inbound sockets: ztunnel connects to the
//!   app with the original client's address as source, so the app answers a
//!   non-local address. Looped-back packets that carry ztunnel's mark tag their
//!   connection with the conntrack mark `0x111`; the app's reply packets get it
//!   back as their mark in a `route` output chain (which reroutes), and a policy
//!   rule sends that mark to table 133, where everything is local.
//!
//! The reply mark is deliberately not `0x539` itself: ztunnel's own outbound
//! sockets in the pod carry `0x539`, and routing them by a "everything is
//! local" table would loop them back into the pod.
//!
//! Everything lives in our own table `inet ztunnel`, replaced atomically on
//! each install and deleted on removal; the pod's other rules are not touched.
//!
//! Install also turns on `net.ipv4.tcp_migrate_req` in the pod (Linux 5.14+,
//! per namespace): ztunnel's listeners in the pod are SO_REUSEPORT groups, and
//! when an old ztunnel closes its listeners during a rolling upgrade, the
//! kernel would otherwise reset the connections still waiting in their accept
//! queues (and the half-open ones). With it on, they move to the new ztunnel's
//! listener of the same group. Only members of a reuseport group are affected,
//! so the pod's own ordinary listeners see no difference. It stays on after
//! removal: it changes nothing without reuseport listeners.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::netns::{Netns, run_cmd};
use crate::socket::ZTUNNEL_MARK;

/// Outbound capture port.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port.
pub const INBOUND_PORT: u16 = 15006;
/// Inbound HBONE port, never redirected.
pub const HBONE_PORT: u16 = 15008;
/// DNS capture port.
pub const DNS_PORT: u16 = 15053;
/// Source address of kubelet health probes (the node side SNATs them to it).
pub const PROBE_SOURCE_V4: &str = "169.254.7.127";
/// IPv6 source of kubelet health probes.
pub const PROBE_SOURCE_V6: &str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff";
/// Conntrack (then packet) mark of connections whose replies go back to
/// ztunnel's transparent sockets.
pub const REPLY_MARK: u32 = 0x111;
/// Mask of the mark bits we use; other bits belong to others.
pub const MARK_MASK: u32 = 0xfff;
/// Routing table where every address is local.
pub const ROUTE_TABLE: u32 = 133;
/// Our nftables table (family `inet`).
pub const TABLE: &str = "ztunnel";
/// Sysctl (per network namespace) that hands a closing SO_REUSEPORT
/// listener's queued connections to another listener of its group.
pub const MIGRATE_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// Options of the redirection.
#[derive(Clone, Debug, Default)]
pub struct RedirectConfig {
    /// Also send the pod's DNS (UDP and TCP port 53) to ztunnel's 15053.
    pub capture_dns: bool,
}

/// Errors installing or removing the redirection.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    /// No thread could enter the namespace.
    #[error("entering the pod network namespace: {0}")]
    Enter(#[source] std::io::Error),
    /// `nft` or `ip` failed.
    #[error("{step}: {source}")]
    Command {
        /// What we were doing.
        step: &'static str,
        /// The failure, with the tool's stderr.
        #[source]
        source: std::io::Error,
    },
}

/// The nftables script: creates (or empties and recreates) our table.
pub fn ruleset(config: &RedirectConfig) -> String {
    let mark = format!("meta mark and {MARK_MASK:#x} == {ZTUNNEL_MARK:#x}");
    let keep_other_bits = format!("and {:#x}", !MARK_MASK);
    let dns = if config.capture_dns {
        format!("\t\tudp dport 53 redirect to :{DNS_PORT}\n\t\ttcp dport 53 redirect to :{DNS_PORT}\n")
    } else {
        String::new()
    };
    format!(
        "table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
\tchain prerouting_mangle {{
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\t{mark} ct mark set ct mark {keep_other_bits} or {REPLY_MARK:#x}
\t}}
\tchain output_route {{
\t\ttype route hook output priority mangle; policy accept;
\t\t{mark} return
\t\tct mark and {MARK_MASK:#x} == {REPLY_MARK:#x} meta mark set meta mark {keep_other_bits} or {REPLY_MARK:#x}
\t}}
\tchain prerouting_nat {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tmeta l4proto != tcp return
\t\t{mark} return
\t\tip saddr {PROBE_SOURCE_V4} return
\t\tip6 saddr {PROBE_SOURCE_V6} return
\t\ttcp dport {HBONE_PORT} return
\t\tmeta l4proto tcp redirect to :{INBOUND_PORT}
\t}}
\tchain output_nat {{
\t\ttype nat hook output priority -100; policy accept;
\t\t{mark} return
\t\toifname \"lo\" return
\t\tip daddr 127.0.0.0/8 return
\t\tip6 daddr ::1 return
{dns}\t\tmeta l4proto tcp redirect to :{OUTBOUND_PORT}
\t}}
}}
"
    )
}

/// Installs (or re-installs, replacing) the redirection in `netns`.
pub fn install(netns: &Netns, config: &RedirectConfig) -> Result<(), RedirectError> {
    let script = ruleset(config);
    netns.run(move || install_here(&script)).map_err(RedirectError::Enter)?
}

/// Removes the redirection from `netns`; removing what is not there is fine.
pub fn remove(netns: &Netns) -> Result<(), RedirectError> {
    netns.run(remove_here).map_err(RedirectError::Enter)?
}

/// Whether our table exists in `netns`.
pub fn installed(netns: &Netns) -> Result<bool, RedirectError> {
    netns
        .run(|| Command::new("nft").args(["list", "table", "inet", TABLE]).output())
        .map_err(RedirectError::Enter)?
        .map(|out| out.status.success())
        .map_err(|source| RedirectError::Command { step: "running nft", source })
}

fn install_here(script: &str) -> Result<(), RedirectError> {
    nft(script).map_err(|source| RedirectError::Command { step: "loading nftables rules", source })?;
    // This thread is in the pod's namespace, so /proc/sys/net is the pod's.
    // Older kernels lack it: upgrades then may reset a few queued connections,
    // which is no reason to leave the pod unenrolled.
    if let Err(e) = std::fs::write(MIGRATE_SYSCTL, "1") {
        tracing::warn!(error = %e, "cannot enable {MIGRATE_SYSCTL}; ztunnel upgrades may reset queued connections");
    }
    for family in ["-4", "-6"] {
        let result = replace_rule(family).and_then(|()| {
            let any = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
            let table = ROUTE_TABLE.to_string();
            run_cmd(Command::new("ip").args([family, "route", "replace", "local", any, "dev", "lo", "table", &table]))
        });
        match result {
            Ok(()) => {}
            // A pod without IPv6 has no v6 replies to route.
            Err(e) if family == "-6" => tracing::debug!(error = %e, "no IPv6 reply routing in pod"),
            Err(source) => return Err(RedirectError::Command { step: "setting up reply routing", source }),
        }
    }
    Ok(())
}

fn remove_here() -> Result<(), RedirectError> {
    let out = Command::new("nft")
        .args(["delete", "table", "inet", TABLE])
        .output()
        .map_err(|source| RedirectError::Command { step: "running nft", source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !stderr.contains("No such file") {
        return Err(RedirectError::Command {
            step: "deleting nftables table",
            source: std::io::Error::other(stderr.trim().to_owned()),
        });
    }
    for family in ["-4", "-6"] {
        delete_rules(family);
        let table = ROUTE_TABLE.to_string();
        // Fails harmlessly when the table is already empty.
        let _ = run_cmd(Command::new("ip").args([family, "route", "flush", "table", &table]));
    }
    Ok(())
}

/// Loads an nftables script with `nft -f -`; the error carries nft's stderr.
pub(super) fn nft(script: &str) -> std::io::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn rule_args(family: &str) -> Vec<String> {
    vec![
        family.into(),
        "rule".into(),
        "del".into(),
        "fwmark".into(),
        format!("{REPLY_MARK:#x}/{MARK_MASK:#x}"),
        "lookup".into(),
        ROUTE_TABLE.to_string(),
    ]
}

/// Deletes every copy of our policy rule.
fn delete_rules(family: &str) {
    // Bounded: each successful deletion removes one copy.
    for _ in 0..16 {
        if run_cmd(Command::new("ip").args(rule_args(family))).is_err() {
            break;
        }
    }
}

fn replace_rule(family: &str) -> std::io::Result<()> {
    delete_rules(family);
    let mut args = rule_args(family);
    args[2] = "add".into();
    run_cmd(Command::new("ip").args(args))
}
