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
//! `inet ztunnel-host`, created at agent start and deleted at agent exit; nothing else in the
//! host's rules is touched.

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

/// The table: replaced as a whole (its sets start empty).
pub fn ruleset() -> String {
    format!(
        "table inet {HOST_TABLE}
delete table inet {HOST_TABLE}
table inet {HOST_TABLE} {{
\tset pods-v4 {{ type ipv4_addr; }}
\tset pods-v6 {{ type ipv6_addr; }}
\tchain postrouting {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip daddr @pods-v4 fib saddr type local snat ip to {PROBE_SOURCE_V4}
\t\tip6 daddr @pods-v6 fib saddr type local snat ip6 to {PROBE_SOURCE_V6}
\t}}
}}
"
    )
}

/// Installs the table in `host` (replacing an earlier one, with empty sets).
pub fn install(host: &Netns) -> Result<(), ProbeSnatError> {
    let script = ruleset();
    host.run(move || nft_script(&script))
        .map_err(ProbeSnatError::Enter)?
        .map_err(|source| ProbeSnatError::Nft { step: "loading the host probe rules", source })
}

/// Deletes the table from `host`; a missing table is fine.
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
