//! ztunnel's configuration: one typed struct from flags and environment, validated at start
//! and logged (there are no secrets in it: keys live in files it points to).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::logging::LogFormat;
use crate::slice::SlicePolicy;

/// Everything ztunnel needs to start.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "ztunnel", about = "The mesh's node proxy")]
pub struct Config {
    /// Name of the node this ztunnel serves.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Local state file (workloads, services, policies); the offline alternative to xDS.
    #[arg(long, env = "ZTUNNEL_STATE_FILE", required_unless_present = "xds_address", conflicts_with = "xds_address")]
    pub state_file: Option<PathBuf>,
    /// Control plane's delta xDS endpoint, e.g. `https://istiod.istio-system.svc:15012` (TLS,
    /// verified against `--ca-root-file`) or `http://127.0.0.1:15010`; state then comes from it.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// Name istiod's certificate may carry instead of the xDS address's host (e.g.
    /// `istiod.istio-system.svc` when the address is an IP).
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub alt_xds_hostname: Option<String>,
    /// Directory of workload certificates and the mesh roots (see `certs` module docs); the
    /// offline alternative to the CA.
    #[arg(long, env = "ZTUNNEL_CERT_DIR", required_unless_present = "ca_address", conflicts_with = "ca_address")]
    pub cert_dir: Option<PathBuf>,
    /// The mesh CA's endpoint, e.g. `https://istiod.istio-system.svc:15012`; certificates then
    /// come from it.
    #[arg(long, env = "CA_ADDRESS", requires_all = ["ca_token_file", "ca_root_file"])]
    pub ca_address: Option<String>,
    /// Name istiod's certificate may carry instead of the CA address's host.
    #[arg(long, env = "ALT_CA_HOSTNAME")]
    pub alt_ca_hostname: Option<String>,
    /// File holding this node's token for the CA, also sent to istiod's xDS over `https://`.
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub ca_token_file: Option<PathBuf>,
    /// The mesh root certificate(s), PEM, trusted before the CA has answered; also what
    /// istiod's certificate is verified against on `https://` addresses.
    #[arg(long, env = "CA_ROOT_FILE")]
    pub ca_root_file: Option<PathBuf>,
    /// Validity asked of the CA for workload certificates, in seconds.
    #[arg(long, env = "CERT_TTL_SECONDS", default_value_t = 86400)]
    pub cert_ttl_seconds: u64,
    /// Node agent's ZDS socket, through which pods arrive.
    #[arg(long, env = "ZTUNNEL_ZDS_SOCKET", default_value = "/var/run/ztunnel/ztunnel.sock")]
    pub zds_socket: PathBuf,
    /// Admin endpoint (config dump, log level). Keep it on localhost.
    #[arg(long, env = "ZTUNNEL_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics endpoint.
    #[arg(long, env = "ZTUNNEL_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint.
    #[arg(long, env = "ZTUNNEL_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Log format (access logs included).
    #[arg(long, env = "ZTUNNEL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,access=off`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// Trust domain of workload identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = hbone::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Cluster name: the first part of workload uids (`<cluster>//Pod/<namespace>/<name>`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// On SIGTERM, how long open connections may take to finish, in seconds.
    #[arg(long, env = "ZTUNNEL_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
    /// Threads of the data-plane runtime. By default one per two CPUs this process may use,
    /// at least one and at most two (see [`default_worker_threads`]).
    #[arg(long, env = WORKER_THREADS_ENV, default_value_t = default_worker_threads())]
    pub worker_threads: usize,
    /// Scheduler slice, in microseconds, the data threads ask for while the node's CPUs are
    /// mostly idle, so their wake-ups preempt what runs (Linux 6.12+; the `slice` module says more),
    /// between 100 and 100,000. Off (0) by default: it cuts the mesh's p50 at the cost of the
    /// tail of the apps ztunnel preempts.
    #[arg(long, env = "ZTUNNEL_SCHED_SLICE_US", default_value_t = 0)]
    pub sched_slice_us: u64,
    /// Connect to local workloads from ztunnel's own address instead of the client's.
    #[arg(long, env = "ZTUNNEL_NO_TRANSPARENT")]
    pub no_transparent: bool,
    /// Inbound HBONE handshakes (TLS and the HTTP/2 preface) run at once across all pods, between
    /// 1 and 65,536; a connection past them is closed at once and counted
    /// (`hbone_handshake_overload`). Anyone who can reach port 15008 can start a handshake, and
    /// each costs a signature and its TLS state.
    #[arg(long, env = "ZTUNNEL_MAX_INBOUND_HANDSHAKES", default_value_t = 256)]
    pub max_inbound_handshakes: usize,
    /// Serve no DNS on the pods' port 15053. Only for nodes whose agent does not capture DNS
    /// (`--capture-dns`): with the capture on, the pods would be left without DNS.
    #[arg(long, env = "ZTUNNEL_NO_DNS_PROXY")]
    pub no_dns_proxy: bool,
    /// Resolvers for the names the mesh does not answer, `ip` or `ip:port`, comma-separated; by
    /// default the `nameserver`s of ztunnel's own `/etc/resolv.conf`.
    #[arg(long, env = "ZTUNNEL_DNS_UPSTREAMS", value_delimiter = ',', value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
}

/// A resolver address: `ip:port`, `[ipv6]:port`, or a bare address on port 53.
fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    s.parse::<SocketAddr>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| format!("{s:?} is not an address or address:port"))
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A path that must exist does not.
    #[error("{flag}: {path} does not exist")]
    Missing {
        /// The flag naming it.
        flag: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// A value out of range.
    #[error("{flag}: {why}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// Checks what can be checked before starting anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=65_536).contains(&self.max_inbound_handshakes) {
            return Err(ConfigError::Invalid {
                flag: "--max-inbound-handshakes",
                why: format!("{} is not between 1 and 65536", self.max_inbound_handshakes),
            });
        }
        match (&self.state_file, &self.xds_address) {
            (Some(f), _) if !f.exists() => return Err(ConfigError::Missing { flag: "--state-file", path: f.clone() }),
            (None, None) => {
                return Err(ConfigError::Invalid { flag: "--state-file", why: "or --xds-address is required".into() });
            }
            (_, Some(a)) if tonic::transport::Endpoint::from_shared(a.clone()).is_err() => {
                return Err(ConfigError::Invalid { flag: "--xds-address", why: format!("{a:?} is not a URI") });
            }
            _ => {}
        }
        if let Some(dir) = &self.cert_dir
            && !dir.join("root-cert.pem").exists()
        {
            return Err(ConfigError::Missing { flag: "--cert-dir", path: dir.join("root-cert.pem") });
        }
        for (flag, path) in [("--ca-token-file", &self.ca_token_file), ("--ca-root-file", &self.ca_root_file)] {
            if let Some(p) = path
                && !p.exists()
            {
                return Err(ConfigError::Missing { flag, path: p.clone() });
            }
        }
        if let Some(a) = &self.xds_address
            && a.starts_with("https://")
        {
            if self.ca_root_file.is_none() {
                return Err(ConfigError::Invalid {
                    flag: "--xds-address",
                    why: "an https:// address needs --ca-root-file to verify istiod".into(),
                });
            }
            if self.ca_token_file.is_none() {
                return Err(ConfigError::Invalid {
                    flag: "--xds-address",
                    why: "an https:// address needs --ca-token-file: istiod authenticates xDS streams by it".into(),
                });
            }
        }
        if self.cert_dir.is_none() && self.ca_address.is_none() {
            return Err(ConfigError::Invalid { flag: "--cert-dir", why: "or --ca-address is required".into() });
        }
        if self.cert_ttl_seconds < 5 {
            return Err(ConfigError::Invalid { flag: "--cert-ttl-seconds", why: "must be at least 5".into() });
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Invalid { flag: "--worker-threads", why: "must be at least 1".into() });
        }
        crate::slice::policy_for_micros(self.sched_slice_us)
            .map_err(|why| ConfigError::Invalid { flag: "--sched-slice-us", why })?;
        if !self.admin_addr.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                flag: "--admin-addr",
                why: format!("{} is not a loopback address; the admin port changes log levels", self.admin_addr),
            });
        }
        hbone::Identity::new(&self.trust_domain, "ns", "sa")
            .map_err(|e| ConfigError::Invalid { flag: "--trust-domain", why: e.to_string() })?;
        Ok(())
    }

    /// When the data threads get a short scheduler slice, if ever.
    pub fn slice_policy(&self) -> Option<SlicePolicy> {
        crate::slice::policy_for_micros(self.sched_slice_us).ok().flatten()
    }

    /// The DNS proxy's settings: `None` with `--no-dns-proxy`; upstreams from `--dns-upstream`,
    /// else from `resolv_conf` (the text of ztunnel's `/etc/resolv.conf`, if readable).
    pub fn dns(&self, resolv_conf: Option<&str>) -> Option<crate::dns::DnsConfig> {
        if self.no_dns_proxy {
            return None;
        }
        let upstreams = if self.dns_upstream.is_empty() {
            resolv_conf.map(crate::dns::resolv_conf_nameservers).unwrap_or_default()
        } else {
            self.dns_upstream.clone()
        };
        Some(crate::dns::DnsConfig { upstreams, ..crate::dns::DnsConfig::default() })
    }

    /// The drain deadline.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}

/// The environment variable that sets [`Config::worker_threads`].
pub const WORKER_THREADS_ENV: &str = "ZTUNNEL_WORKER_THREADS";

/// The data-plane threads ztunnel starts with when none are configured: [`workers_for`] the
/// CPUs this process may run on (affinity and cgroup quota included).
pub fn default_worker_threads() -> usize {
    workers_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One worker per two CPUs, at least one, at most two (Istio's ztunnel's fixed number).
///
/// ztunnel shares its node with the pods whose traffic it carries, and a request crosses it
/// when they are busy too. On a two-CPU node a second worker mostly wakes up to find the
/// other one has the work: `benches l4 --quick`, one worker and two alternating in the same
/// session (2026-12-05, 5 and 6 rounds), closed loop 0.32 against 0.26 of direct, p99 0.59
/// against 0.69 ms, CPU per 1,000 requests 0.068 against 0.072 s (`benches/README.md`).
pub fn workers_for(cpus: usize) -> usize {
    (cpus / 2).clamp(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_per_two_cpus_between_one_and_two() {
        let got: Vec<usize> = [1, 2, 3, 4, 5, 8, 64].into_iter().map(workers_for).collect();
        assert_eq!(got, [1, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn the_flag_overrides_the_default() {
        use clap::Parser;
        let base = ["ztunnel", "--node-name", "n1", "--state-file", "/s", "--cert-dir", "/c"];
        // The environment names the same setting; only without it is the default in play.
        if std::env::var_os(WORKER_THREADS_ENV).is_none() {
            let default = Config::try_parse_from(base).expect("parses");
            assert_eq!(default.worker_threads, default_worker_threads());
        }
        let set = Config::try_parse_from(base.iter().copied().chain(["--worker-threads", "3"])).expect("parses");
        assert_eq!(set.worker_threads, 3);
    }

    #[test]
    fn the_slice_is_off_by_default_and_checked_against_the_kernel_range() {
        use clap::Parser;
        let base = ["ztunnel", "--node-name", "n1", "--state-file", "/s", "--cert-dir", "/c"];
        if std::env::var_os("ZTUNNEL_SCHED_SLICE_US").is_none() {
            let default = Config::try_parse_from(base).expect("parses");
            assert_eq!(default.slice_policy(), None);
        }
        let on = Config::try_parse_from(base.iter().copied().chain(["--sched-slice-us", "100"])).expect("parses");
        assert_eq!(on.slice_policy(), Some(SlicePolicy::with_short(Duration::from_micros(100))));
        // Everything else valid, so the error is the slice's.
        let dir = std::env::temp_dir().join(format!("ztunnel-config-slice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("root-cert.pem"), "").unwrap();
        let (state, certs) = (dir.join("root-cert.pem"), dir.display().to_string());
        let valid = ["ztunnel", "--node-name", "n1", "--state-file", state.to_str().unwrap(), "--cert-dir", &certs];
        let ok = Config::try_parse_from(valid.iter().copied().chain(["--sched-slice-us", "100"])).expect("parses");
        let bad = Config::try_parse_from(valid.iter().copied().chain(["--sched-slice-us", "50"])).expect("parses");
        let (ok, e) = (ok.validate(), bad.validate().unwrap_err().to_string());
        std::fs::remove_dir_all(&dir).unwrap();
        ok.unwrap();
        assert_eq!(bad.slice_policy(), None);
        assert!(e.starts_with("--sched-slice-us: 50 is outside"), "{e}");
    }

    #[test]
    fn inbound_handshakes_are_limited_to_a_sane_range() {
        use clap::Parser;
        let base = ["ztunnel", "--node-name", "n1", "--state-file", "/s", "--cert-dir", "/c"];
        if std::env::var_os("ZTUNNEL_MAX_INBOUND_HANDSHAKES").is_none() {
            assert_eq!(Config::try_parse_from(base).expect("parses").max_inbound_handshakes, 256);
        }
        for bad in ["0", "65537"] {
            let cfg = Config::try_parse_from(base.iter().copied().chain(["--max-inbound-handshakes", bad])).unwrap();
            let e = cfg.validate().unwrap_err().to_string();
            assert_eq!(e, format!("--max-inbound-handshakes: {bad} is not between 1 and 65536"));
        }
    }

    #[test]
    fn https_xds_needs_the_root_to_verify_istiod_and_the_token_it_asks_for() {
        use clap::Parser;
        let dir = std::env::temp_dir().join(format!("ztunnel-config-xds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("root-cert.pem"), "").unwrap();
        std::fs::write(dir.join("token"), "t").unwrap();
        let (root, token, certs) = (dir.join("root-cert.pem"), dir.join("token"), dir.display().to_string());
        let (root, token) = (root.to_str().unwrap(), token.to_str().unwrap());
        let base = ["ztunnel", "--node-name", "n1", "--xds-address", "https://istiod:15012", "--cert-dir", &certs];
        let check = |extra: &[&str]| {
            Config::try_parse_from(base.iter().chain(extra).copied())
                .expect("parses")
                .validate()
                .map_err(|e| e.to_string())
        };
        let (no_root, no_token, both) = (
            check(&["--ca-token-file", token]),
            check(&["--ca-root-file", root]),
            check(&["--ca-root-file", root, "--ca-token-file", token]),
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(no_root.unwrap_err().contains("needs --ca-root-file"));
        assert!(no_token.unwrap_err().contains("needs --ca-token-file"));
        both.unwrap();
    }

    #[test]
    fn dns_upstreams_come_from_the_flag_else_from_resolv_conf() {
        use clap::Parser;
        let base = ["ztunnel", "--node-name", "n1", "--state-file", "/s", "--cert-dir", "/c"];
        let resolv = "search svc.cluster.local\nnameserver 10.96.0.10\n";
        if std::env::var_os("ZTUNNEL_DNS_UPSTREAMS").is_none() && std::env::var_os("ZTUNNEL_NO_DNS_PROXY").is_none() {
            let default = Config::try_parse_from(base).expect("parses");
            let dns = default.dns(Some(resolv)).expect("on by default");
            assert_eq!(dns.upstreams, vec!["10.96.0.10:53".parse::<SocketAddr>().unwrap()]);
            assert_eq!(dns.port, crate::dns::DNS_PORT);
            assert!(default.dns(None).unwrap().upstreams.is_empty(), "no resolv.conf: no upstream");
        }
        let set = Config::try_parse_from(base.iter().copied().chain(["--dns-upstream", "10.0.0.2, [fd00::2]:5353"]))
            .expect("parses");
        assert_eq!(
            set.dns(Some(resolv)).unwrap().upstreams,
            vec!["10.0.0.2:53".parse::<SocketAddr>().unwrap(), "[fd00::2]:5353".parse().unwrap()]
        );
        let off = Config::try_parse_from(base.iter().copied().chain(["--no-dns-proxy"])).expect("parses");
        assert!(off.dns(Some(resolv)).is_none());
        let bad = Config::try_parse_from(base.iter().copied().chain(["--dns-upstream", "kube-dns"])).unwrap_err();
        assert!(bad.to_string().contains("\"kube-dns\" is not an address or address:port"), "{bad}");
    }
}
