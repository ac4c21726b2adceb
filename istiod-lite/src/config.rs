//! istiod-lite's configuration: one typed struct from flags and environment, validated at start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything istiod-lite needs to start.
#[derive(Debug, Clone, clap::Parser, serde::Serialize)]
#[command(name = "istiod-lite", about = "The mesh's control plane and CA")]
pub struct Config {
    /// Where objects come from: a directory of YAML (`dir`) or the Kubernetes API (`kube`).
    #[arg(long, env = "SOURCE", value_enum, default_value_t = Source::Dir)]
    pub source: Source,
    /// Directory of Kubernetes YAML (Namespaces, Pods, Services, policies, ...), watched
    /// (required with `--source dir`).
    #[arg(long, env = "CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// Kubeconfig file for `--source kube`; without it, the in-cluster service account, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Where the mesh root lives (generated there on first start).
    #[arg(long, env = "CA_DIR")]
    pub ca_dir: PathBuf,
    /// YAML map of node name to bootstrap token: how node proxies authenticate to the CA with
    /// `--source dir` (required there). With `--source kube` the CA uses TokenReview instead.
    #[arg(long, env = "BOOTSTRAP_TOKENS")]
    pub bootstrap_tokens: Option<PathBuf>,
    /// With `--source kube`: the audience the CA's callers' service-account tokens must carry.
    #[arg(long, env = "TOKEN_AUDIENCE", default_value = crate::ca::tokenreview::DEFAULT_AUDIENCE)]
    pub token_audience: String,
    /// With `--source kube`: the node proxies' service account, `namespace/name`; its tokens
    /// may obtain the identities of pods on the node of the pod the token is bound to.
    #[arg(long, env = "ZTUNNEL_SERVICE_ACCOUNT", default_value = "istio-system/ztunnel")]
    pub ztunnel_service_account: String,
    /// xDS and CA over TLS 1.3, with a certificate issued from the mesh root.
    #[arg(long, env = "TLS_ADDR", default_value = "0.0.0.0:15012")]
    pub tls_addr: SocketAddr,
    /// Extra names (DNS names or IP addresses) in the serving certificate, beyond
    /// `istiod.istio-system.svc` and `istiod-lite`; repeat or separate with commas.
    #[arg(long, env = "TLS_SAN", value_delimiter = ',')]
    pub tls_san: Vec<String>,
    /// Validity of the serving certificate in seconds; it is renewed at half of it.
    #[arg(long, env = "TLS_CERT_TTL_SECONDS", default_value_t = 86400)]
    pub tls_cert_ttl_seconds: u64,
    /// Longest workload certificate the CA issues, in seconds; a CSR asking for more is refused
    /// (`InvalidArgument`, reason `ttl_too_long`). Istio's `MAX_WORKLOAD_CERT_TTL`, 90 days.
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL_SECONDS", default_value_t = crate::ca::DEFAULT_MAX_TTL.as_secs())]
    pub max_workload_cert_ttl_seconds: u64,
    /// Workload certificate lifetime when a CSR names none, in seconds. Istio's
    /// `DEFAULT_WORKLOAD_CERT_TTL`, 24 hours.
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL_SECONDS", default_value_t = crate::ca::DEFAULT_TTL.as_secs())]
    pub default_workload_cert_ttl_seconds: u64,
    /// Plaintext xDS and CA, off unless given (local use only, e.g. `127.0.0.1:15010`).
    #[arg(long, env = "PLAINTEXT_ADDR")]
    pub plaintext_addr: Option<SocketAddr>,
    /// Prometheus metrics (`/metrics`) and debug JSON (`/debug/...`).
    #[arg(long, env = "MONITORING_ADDR", default_value = "0.0.0.0:15014")]
    pub monitoring_addr: SocketAddr,
    /// Istio's root namespace.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// Trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Log filter.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// `--source kube`: image of the waypoint Deployments created for `istio-waypoint`
    /// Gateways; without it waypoints are not deployed (someone else runs them).
    #[arg(long, env = "WAYPOINT_IMAGE")]
    pub waypoint_image: Option<String>,
}

/// Where objects come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A watched directory of Kubernetes YAML.
    Dir,
    /// The Kubernetes API.
    Kube,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A path that must exist does not.
    #[error("{flag}: {path} does not exist")]
    Missing {
        /// The flag.
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
    /// A flag the chosen mode needs is absent.
    #[error("{flag} is required with {mode}")]
    Required {
        /// The flag.
        flag: &'static str,
        /// The mode that needs it.
        mode: &'static str,
    },
    /// The bootstrap token file is unusable.
    #[error("--bootstrap-tokens {path}: {why}")]
    Tokens {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// Checks what can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.source == Source::Dir {
            let dir =
                self.config_dir.as_ref().ok_or(ConfigError::Required { flag: "--config-dir", mode: "--source dir" })?;
            if !dir.is_dir() {
                return Err(ConfigError::Missing { flag: "--config-dir", path: dir.clone() });
            }
        }
        if self.tls_cert_ttl_seconds < 10 {
            return Err(ConfigError::Invalid { flag: "--tls-cert-ttl-seconds", why: "must be at least 10".into() });
        }
        // Below a minute a certificate would expire before ztunnel's rotation (at half its life,
        // with retries) could replace it.
        if self.default_workload_cert_ttl_seconds < 60 {
            return Err(ConfigError::Invalid {
                flag: "--default-workload-cert-ttl-seconds",
                why: "must be at least 60".into(),
            });
        }
        if self.max_workload_cert_ttl_seconds < self.default_workload_cert_ttl_seconds {
            return Err(ConfigError::Invalid {
                flag: "--max-workload-cert-ttl-seconds",
                why: format!(
                    "{} is less than --default-workload-cert-ttl-seconds {}: a CSR naming no lifetime would be refused",
                    self.max_workload_cert_ttl_seconds, self.default_workload_cert_ttl_seconds
                ),
            });
        }
        if self.source == Source::Kube {
            self.node_proxy_account()?;
            if self.token_audience.is_empty() {
                return Err(ConfigError::Invalid { flag: "--token-audience", why: "must not be empty".into() });
            }
            return Ok(());
        }
        self.tokens().map(|_| ())
    }

    /// `--ztunnel-service-account` as `(namespace, name)`.
    pub fn node_proxy_account(&self) -> Result<(String, String), ConfigError> {
        match self.ztunnel_service_account.split_once('/') {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() && !sa.contains('/') => {
                Ok((ns.to_owned(), sa.to_owned()))
            }
            _ => Err(ConfigError::Invalid {
                flag: "--ztunnel-service-account",
                why: format!("{:?} is not namespace/name", self.ztunnel_service_account),
            }),
        }
    }

    /// The bootstrap tokens as token → node.
    pub fn tokens(&self) -> Result<HashMap<String, String>, ConfigError> {
        let path = self
            .bootstrap_tokens
            .clone()
            .ok_or(ConfigError::Required { flag: "--bootstrap-tokens", mode: "--source dir" })?;
        let bad = |why: String| ConfigError::Tokens { path: path.clone(), why };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let by_node: HashMap<String, String> = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let mut by_token = HashMap::new();
        for (node, token) in by_node {
            if token.len() < 16 {
                return Err(bad(format!("the token of node {node} is shorter than 16 characters")));
            }
            if let Some(other) = by_token.insert(token, node.clone()) {
                return Err(bad(format!("nodes {other} and {node} share a token")));
            }
        }
        Ok(by_token)
    }
}
