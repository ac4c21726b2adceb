//! The host side of kubelet's health probes: connections the node itself opens to an
//! enrolled pod leave with the link-local source [`PROBE_SOURCE_V4`] (or [`PROBE_SOURCE_V6`]),
//! which the pod's redirection lets through to the application instead of sending to ztunnel
//! (see [`super::redirect`]). Without it a probe would arrive from the node's address, be
//! captured as inbound plaintext and be subject to mesh policy (and refused under `STRICT`
//! peer authentication), failing the pod's readiness.
//!
//! Only host-originated packets (their source is an address of the host: `fib saddr type
//! local`) to enrolled pods' addresses (the sets, filled as pods enroll) are rewritten; traffic
//! the node forwards for others keeps its source. Everything lives in our own table
//! `inet ztunnel-host`; nothing else in the host's rules is touched.
//!
//! The table outlives the agent: probes must keep working while the agent restarts (upgrade,
//! crash, rollout), as the pods keep their redirection then too. A starting agent [`install`]s
//! it over whatever an earlier one left, in one nft transaction (the packet path sees the old
//! table or the new one, never none), keeping the sets' addresses; once it has re-adopted its
//! pods it sets the addresses to theirs with [`set_pods`], again in one transaction. Only an
//! explicit uninstall [`remove`]s the table.

use std::net::IpAddr;
use std::process::Command;

use super::redirect::{PROBE_SOURCE_V4, PROBE_SOURCE_V6, nft as nft_script};
use crate::netns::Netns;

/// Our table in the host's namespace (family `inet`).
pub const HOST_TABLE: &str = "ztunnel-host";

/// Errors changing the host's rules.
#[derive(Debug, thiserror::Error)]
pub enum ProbeSnatError {
    /// No thread could enter the namespace.
    #[error("entering the network namespace: {0}")]
    Enter(#[source] std::io::Error),
    /// `nft` failed.
    #[error("{step}: {source}")]
    Nft {
        /// What we were doing.
        step: &'static str,
        /// The failure, with nft's stderr.
        #[source]
        source: std::io::Error,
    },
}

/// The chain's rules: the probe source for host-originated packets to enrolled pods.
fn rules() -> String {
    format!(
        "add rule inet {HOST_TABLE} postrouting ip daddr @pods-v4 fib saddr type local snat ip to {PROBE_SOURCE_V4}
add rule inet {HOST_TABLE} postrouting ip6 daddr @pods-v6 fib saddr type local snat ip6 to {PROBE_SOURCE_V6}
"
    )
}

/// The table, created or taken over with the sets' addresses: declaring what already exists
/// changes nothing in nft, and the chain is emptied and refilled in the same transaction, so
/// installing again leaves one copy of the rules.
pub fn adopt_ruleset() -> String {
    format!(
        "table inet {HOST_TABLE} {{
\tset pods-v4 {{ type ipv4_addr; }}
\tset pods-v6 {{ type ipv6_addr; }}
\tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
flush chain inet {HOST_TABLE} postrouting
{}",
        rules()
    )
}

/// The table, replaced as a whole (its sets start empty), for an earlier one of another shape.
pub fn replace_ruleset() -> String {
    format!(
        "table inet {HOST_TABLE}
delete table inet {HOST_TABLE}
{}",
        adopt_ruleset()
    )
}

/// How [`install`] put the table in place.
#[derive(Debug)]
pub enum Installed {
    /// Created, or taken over from an earlier agent with the addresses in its sets.
    Adopted,
    /// The earlier table could not be taken over (another shape, e.g. from another version)
    /// and was replaced with empty sets.
    Replaced {
        /// Why taking it over failed.
        reason: ProbeSnatError,
    },
}

/// Installs the table in `host`, taking over one an earlier agent left (see the module doc).
/// Each attempt is one nft transaction: the table is never missing in between.
pub fn install(host: &Netns) -> Result<Installed, ProbeSnatError> {
    let load = |script: String, step| {
        host.run(move || nft_script(&script))
            .map_err(ProbeSnatError::Enter)?
            .map_err(|source| ProbeSnatError::Nft { step, source })
    };
    match load(adopt_ruleset(), "taking over the host probe rules") {
        Ok(()) => Ok(Installed::Adopted),
        Err(e @ ProbeSnatError::Enter(_)) => Err(e),
        Err(reason) => {
            load(replace_ruleset(), "loading the host probe rules")?;
            Ok(Installed::Replaced { reason })
        }
    }
}

/// Makes `ips` the enrolled pods' addresses in `host`'s table, dropping any other (pods that
/// went while no agent ran), in one transaction: addresses kept are never missing meanwhile.
pub fn set_pods(host: &Netns, ips: &[IpAddr]) -> Result<(), ProbeSnatError> {
    let mut script = format!("flush set inet {HOST_TABLE} pods-v4\nflush set inet {HOST_TABLE} pods-v6\n");
    for (set, v4) in [("pods-v4", true), ("pods-v6", false)] {
        let family: Vec<String> = ips.iter().filter(|ip| ip.is_ipv4() == v4).map(IpAddr::to_string).collect();
        if !family.is_empty() {
            script.push_str(&format!("add element inet {HOST_TABLE} {set} {{ {} }}\n", family.join(", ")));
        }
    }
    host.run(move || nft_script(&script))
        .map_err(ProbeSnatError::Enter)?
        .map_err(|source| ProbeSnatError::Nft { step: "replacing the enrolled pod addresses", source })
}

/// Deletes the table from `host` (uninstall); a missing table is fine.
pub fn remove(host: &Netns) -> Result<(), ProbeSnatError> {
    let out = host
        .run(|| Command::new("nft").args(["delete", "table", "inet", HOST_TABLE]).output())
        .map_err(ProbeSnatError::Enter)?
        .map_err(|source| ProbeSnatError::Nft { step: "running nft", source })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("No such file") {
        Ok(())
    } else {
        Err(ProbeSnatError::Nft {
            step: "deleting the host probe rules",
            source: std::io::Error::other(stderr.trim().to_owned()),
        })
    }
}

/// Adds (`add`) or removes a pod's addresses to the sets in `host`. Removing what is not there
/// is fine.
pub fn set_pod(host: &Netns, ips: &[IpAddr], add: bool) -> Result<(), ProbeSnatError> {
    if ips.is_empty() {
        return Ok(());
    }
    let verb = if add { "add" } else { "delete" };
    let mut script = String::new();
    for ip in ips {
        let set = if ip.is_ipv4() { "pods-v4" } else { "pods-v6" };
        script.push_str(&format!("{verb} element inet {HOST_TABLE} {set} {{ {ip} }}\n"));
    }
    let result = host.run(move || nft_script(&script)).map_err(ProbeSnatError::Enter)?;
    match result {
        // Deleting an element that is not in the set (or from a table already gone) is the
        // state we want.
        Err(e) if !add && e.to_string().contains("No such file") => Ok(()),
        r => r.map_err(|source| ProbeSnatError::Nft { step: "updating the enrolled pod addresses", source }),
    }
}

/// The pod's own addresses: every global address on its interfaces (not loopback, not
/// link-local), read inside its namespace.
pub fn pod_addresses(pod: &Netns) -> std::io::Result<Vec<IpAddr>> {
    pod.run(|| {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs()? {
            let Some(addr) = ifa.address else { continue };
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            let link_local = match ip {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            if !ip.is_loopback() && !link_local && !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    })?
}
