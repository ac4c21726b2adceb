//! The waypoint's configuration: one typed struct from flags and environment, validated at
//! start and logged (no secrets in it: the CA token lives in the file it names).

use std::net::SocketAddr;
use std::path::PathBuf;

use ztunnel::logging::LogFormat;

/// Everything the waypoint needs to start.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "waypoint", about = "The mesh's L7 proxy for one waypoint Gateway")]
pub struct Config {
    /// The Gateway this waypoint implements, `<namespace>/<name>`.
    #[arg(long, env = "WAYPOINT_GATEWAY")]
    pub gateway: String,
    /// Service account the waypoint runs as; default: the gateway's name (Istio's default).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Trust domain of mesh identities.
    #[arg(long, env = "TRUST_DOMAIN", default_value = hbone::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Cluster name, sent to the control plane and the CA.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// The node the waypoint pod runs on (CA metadata, logs).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The waypoint pod's own IP (`status.podIP`): how it finds its own workload in the mesh
    /// state, whose locality its endpoint choice prefers. Unset: the workload with the
    /// waypoint's identity on `--node-name`.
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<std::net::IpAddr>,
    /// The network the waypoint is on (empty: the default network); endpoints on any other
    /// network are never dialled.
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// The control plane's delta xDS endpoint, `http://` or `https://`.
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: String,
    /// Name istiod's certificate may carry instead of the xDS address's host.
    #[arg(long, env = "ALT_XDS_HOSTNAME")]
    pub alt_xds_hostname: Option<String>,
    /// The mesh CA's endpoint; default: the xDS address.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// File holding the token presented to the CA.
    #[arg(long, env = "CA_TOKEN_FILE")]
    pub ca_token_file: PathBuf,
    /// The mesh root certificate(s), PEM.
    #[arg(long, env = "CA_ROOT_FILE")]
    pub ca_root_file: PathBuf,
    /// Validity asked of the CA, in seconds.
    #[arg(long, env = "CERT_TTL_SECONDS", default_value_t = 86400)]
    pub cert_ttl_seconds: u64,
    /// HBONE listener.
    #[arg(long, env = "WAYPOINT_HBONE_ADDR", default_value = "[::]:15008")]
    pub hbone_addr: SocketAddr,
    /// HBONE handshakes (TLS and the HTTP/2 preface) run at once, between 1 and 65,536; a
    /// connection past them is closed at once and counted. Anyone who can reach the HBONE port
    /// can start a handshake, and each costs a signature and its TLS state.
    #[arg(long, env = "WAYPOINT_MAX_INBOUND_HANDSHAKES", default_value_t = 256)]
    pub max_inbound_handshakes: usize,
    /// Prometheus metrics endpoint.
    #[arg(long, env = "WAYPOINT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness endpoint.
    #[arg(long, env = "WAYPOINT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Admin endpoint (config dump, log level). Keep it on localhost.
    #[arg(long, env = "WAYPOINT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Log format (access logs included).
    #[arg(long, env = "WAYPOINT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,access=off`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// OTLP/HTTP collector, `http://host:port` (JSON to `/v1/traces`); unset: no export.
    #[arg(long, env = "OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// CA certificates (PEM) an `https://` OTLP collector is verified against; default: the
    /// system's CA bundle.
    #[arg(long, env = "OTLP_CA_FILE")]
    pub otlp_ca_file: Option<PathBuf>,
    /// A header for the OTLP collector, `name=value` (value percent-encoded), repeatable; the
    /// environment takes OpenTelemetry's comma-separated list. Logged by name only.
    #[arg(long = "otlp-header", env = "OTEL_EXPORTER_OTLP_HEADERS", value_delimiter = ',')]
    #[serde(serialize_with = "header_names")]
    pub otlp_headers: Vec<String>,
    /// Threads of the data-plane runtime. One by default: a waypoint is scaled out by replicas,
    /// and one thread spends less CPU per request than two that wake and steal from each other
    /// (`benches l7 --quick`, same run: 0.126 against 0.156 CPU seconds per 1,000 requests).
    #[arg(long, env = "WAYPOINT_WORKER_THREADS", default_value_t = 1)]
    pub worker_threads: usize,
    /// On SIGTERM, how long requests and connections in flight may take to finish, in seconds
    /// (readiness fails and new HBONE connections are refused at once).
    #[arg(long, env = "WAYPOINT_DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
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
    /// A value that cannot work.
    #[error("{flag}: {why}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// Collector headers as they are logged: names only, their values may be credentials.
fn header_names<S: serde::Serializer>(entries: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(entries.iter().filter_map(|e| e.split_once('=').map(|(n, _)| n.trim())))
}

impl Config {
    /// The OTLP collector headers, parsed.
    pub fn otlp_headers(&self) -> Result<crate::telemetry::otlp::Headers, ConfigError> {
        crate::telemetry::otlp::parse_headers(&self.otlp_headers)
            .map_err(|e| ConfigError::Invalid { flag: "--otlp-header", why: e.to_string() })
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let (ns, name) = self.gateway_parts()?;
        for (flag, a) in [("--xds-address", Some(&self.xds_address)), ("--ca-address", self.ca_address.as_ref())] {
            let Some(a) = a else { continue };
            if !(a.starts_with("http://") || a.starts_with("https://")) || a.parse::<http::Uri>().is_err() {
                return Err(ConfigError::Invalid { flag, why: format!("{a:?} is not an http:// or https:// URL") });
            }
        }
        let files = [("--ca-token-file", Some(&self.ca_token_file)), ("--ca-root-file", Some(&self.ca_root_file))];
        for (flag, p) in files.into_iter().chain([("--otlp-ca-file", self.otlp_ca_file.as_ref())]) {
            if let Some(p) = p
                && !p.exists()
            {
                return Err(ConfigError::Missing { flag, path: p.clone() });
            }
        }
        if self.node_name.is_empty() {
            return Err(ConfigError::Invalid { flag: "--node-name", why: "must not be empty".into() });
        }
        if self.cert_ttl_seconds < 5 {
            return Err(ConfigError::Invalid { flag: "--cert-ttl-seconds", why: "must be at least 5".into() });
        }
        if self.worker_threads == 0 {
            return Err(ConfigError::Invalid { flag: "--worker-threads", why: "must be at least 1".into() });
        }
        if !(1..=65_536).contains(&self.max_inbound_handshakes) {
            return Err(ConfigError::Invalid {
                flag: "--max-inbound-handshakes",
                why: format!("{} is not between 1 and 65536", self.max_inbound_handshakes),
            });
        }
        if !self.admin_addr.ip().is_loopback() {
            return Err(ConfigError::Invalid {
                flag: "--admin-addr",
                why: format!("{} is not a loopback address; the admin port changes log levels", self.admin_addr),
            });
        }
        if let Some(o) = &self.otlp_endpoint
            && o.parse::<http::Uri>().is_err()
        {
            return Err(ConfigError::Invalid { flag: "--otlp-endpoint", why: format!("{o:?} is not a URL") });
        }
        self.otlp_headers()?;
        let _ = name;
        hbone::Identity::new(&self.trust_domain, ns, self.service_account())
            .map_err(|e| ConfigError::Invalid { flag: "--service-account", why: e.to_string() })?;
        Ok(())
    }

    /// `(namespace, name)` of `--gateway`.
    pub fn gateway_parts(&self) -> Result<(&str, &str), ConfigError> {
        match self.gateway.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok((ns, name)),
            _ => Err(ConfigError::Invalid {
                flag: "--gateway",
                why: format!("{:?} is not <namespace>/<name>", self.gateway),
            }),
        }
    }

    /// The service account: `--service-account`, else the gateway's name.
    pub fn service_account(&self) -> &str {
        match &self.service_account {
            Some(sa) => sa,
            None => self.gateway.split_once('/').map_or(self.gateway.as_str(), |(_, n)| n),
        }
    }

    /// The drain deadline.
    pub fn drain(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.drain_seconds)
    }

    /// The waypoint's own identity, `spiffe://<td>/ns/<gateway ns>/sa/<sa>`.
    pub fn identity(&self) -> Result<hbone::Identity, ConfigError> {
        let (ns, _) = self.gateway_parts()?;
        hbone::Identity::new(&self.trust_domain, ns, self.service_account())
            .map_err(|e| ConfigError::Invalid { flag: "--service-account", why: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(extra: &[&str]) -> Config {
        let tok = std::env::temp_dir();
        let t = tok.to_str().unwrap();
        let mut args =
            vec!["waypoint", "--node-name", "n1", "--xds-address", "http://127.0.0.1:15010", "--ca-token-file", t];
        args.extend(["--ca-root-file", t]);
        args.extend(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn gateway_and_identity() {
        let c = parse(&["--gateway", "shop/wp"]);
        c.validate().unwrap();
        assert_eq!(c.identity().unwrap().as_str(), "spiffe://cluster.local/ns/shop/sa/wp");
        let c = parse(&["--gateway", "shop/wp", "--service-account", "other"]);
        assert_eq!(c.identity().unwrap().as_str(), "spiffe://cluster.local/ns/shop/sa/other");
        assert_eq!(c.hbone_addr.port(), 15008);
        assert_eq!(c.admin_addr.to_string(), "127.0.0.1:15000");
        assert_eq!(c.drain(), std::time::Duration::from_secs(5));
    }

    #[test]
    fn collector_headers_are_logged_by_name_only() {
        let c = parse(&["--gateway", "a/b", "--otlp-header", "authorization=Bearer s3cret,x-tenant=blue"]);
        c.validate().unwrap();
        assert_eq!(c.otlp_headers.len(), 2, "the flag takes a comma-separated list too");
        let logged = serde_json::to_string(&c).unwrap();
        assert!(logged.contains(r#""otlp_headers":["authorization","x-tenant"]"#), "{logged}");
        assert!(!logged.contains("s3cret"), "{logged}");
    }

    #[test]
    fn bad_values_are_named() {
        for (args, flag) in [
            (vec!["--gateway", "nonamespace"], "--gateway"),
            (vec!["--gateway", "a/b", "--admin-addr", "0.0.0.0:15000"], "--admin-addr"),
            (vec!["--gateway", "a/b", "--ca-address", "grpc://x"], "--ca-address"),
            (vec!["--gateway", "a/b", "--worker-threads", "0"], "--worker-threads"),
            (vec!["--gateway", "a/b", "--max-inbound-handshakes", "0"], "--max-inbound-handshakes"),
            (vec!["--gateway", "a/b", "--max-inbound-handshakes", "65537"], "--max-inbound-handshakes"),
            (vec!["--gateway", "a/b", "--otlp-ca-file", "/nonexistent/ca.pem"], "--otlp-ca-file"),
            (vec!["--gateway", "a/b", "--otlp-header", "novalue"], "--otlp-header"),
        ] {
            let e = parse(&args).validate().unwrap_err().to_string();
            assert!(e.starts_with(flag), "{e}");
        }
    }
}
