//! Wiring: state, certificates, admin endpoints, the ZDS client and the pods' proxies.
//!
//! The data plane runs on the runtime `start` is called on; admin, metrics, readiness and
//! reloads run on the separate admin runtime whose handle is passed in.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::CertStore;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::admin::{self, Reply, Routes};
use crate::config::Config;
use crate::drain::Drain;
use crate::logging::LogHandle;
use crate::metrics::{self, Metrics};
use crate::netns::Netns;
use crate::proxy::pods::Pods;
use crate::proxy::{ProxyConfig, ProxyInputs};
use crate::readiness::Ready;
use crate::state::{self, StateConfig, StateHandle};

/// Why ztunnel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state file is unusable at start (later bad edits keep the last good state).
    #[error("state file: {0}")]
    State(#[source] state::file::FileError),
    /// The certificate directory is unusable at start.
    #[error("certificate directory: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Certs(Vec<crate::certs::CertDirError>),
    /// An endpoint could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which endpoint.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The CA client cannot be set up.
    #[error("CA: {0}")]
    Ca(String),
    /// The xDS source cannot be set up.
    #[error("xDS: {0}")]
    Xds(String),
    /// ztunnel's own network namespace cannot be opened.
    #[error("opening ztunnel's network namespace: {0}")]
    Netns(#[source] std::io::Error),
}

/// A started ztunnel.
pub struct Running {
    /// Where the admin endpoint really listens.
    pub admin_addr: SocketAddr,
    /// Where metrics really listen.
    pub metrics_addr: SocketAddr,
    /// Where readiness really listens.
    pub readiness_addr: SocketAddr,
    pods: Arc<Pods>,
    drain: Drain,
    zds: tokio::task::JoinHandle<()>,
    _xds: Option<state::xds::XdsSource>,
}

impl Running {
    /// Stops taking pods and connections, then waits up to the deadline for open
    /// connections to finish; returns how many were cut.
    pub async fn shutdown(self, deadline: std::time::Duration) -> usize {
        self.zds.abort();
        self.pods.stop_all();
        // Then inbound HBONE connections send GOAWAY, so peers open new ones (to a new
        // ztunnel beside this one) instead of sending new streams here.
        self.drain.start();
        let left = self.drain.wait(deadline).await;
        tracing::info!(left, "drained");
        left
    }
}

/// Starts ztunnel. Must be called on the data-plane runtime.
pub async fn start(
    cfg: Config,
    admin_rt: tokio::runtime::Handle,
    log: Option<LogHandle>,
) -> Result<Running, StartError> {
    let ready = Ready::default();
    let starting = ready.register("startup");

    let state_cfg = StateConfig { root_namespace: cfg.root_namespace.clone(), ..StateConfig::default() };
    let (state, xds) = match (&cfg.state_file, &cfg.xds_address) {
        (Some(file), _) => {
            let state = StateHandle::new(state::file::load_with(file, state_cfg.clone()).map_err(StartError::State)?);
            let (_status, watcher) = state::file::watch(file.clone(), state.clone(), state_cfg);
            admin_rt.spawn(watcher);
            (state, None)
        }
        (None, Some(addr)) => {
            let roots = read_roots(&cfg).map_err(StartError::Xds)?;
            let endpoint = control_plane(addr, cfg.alt_xds_hostname.as_deref(), roots.as_ref())
                .map_err(|e| StartError::Xds(format!("--xds-address {addr:?}: {e}")))?;
            // Over TLS istiod asks for the node's token, as the CA does; never sent in plaintext.
            let token_file = endpoint.1.as_ref().and(cfg.ca_token_file.clone());
            let endpoint = state::xds::XdsEndpoint { endpoint: endpoint.0, tls: endpoint.1, token_file };
            let state = StateHandle::default();
            let first = ready.register("first state from xDS");
            let mut changes = state.subscribe();
            admin_rt.spawn(async move {
                let _ = changes.changed().await;
                drop(first);
            });
            let _on_admin = admin_rt.enter();
            let source = state::xds::start(endpoint, xds_node(&cfg), state.clone(), state_cfg);
            (state, Some(source))
        }
        (None, None) => return Err(StartError::Xds("neither a state file nor an xDS address".into())),
    };

    let (store, ca) = match (&cfg.cert_dir, &cfg.ca_address) {
        (Some(dir), _) => {
            let (roots, certs) = crate::certs::read_dir(dir, &cfg.trust_domain).map_err(StartError::Certs)?;
            let store = CertStore::new(roots);
            for c in certs {
                store.insert(c);
            }
            admin_rt.spawn(crate::certs::watch(
                store.clone(),
                dir.clone(),
                cfg.trust_domain.clone(),
                std::time::Duration::from_millis(500),
            ));
            (store, None)
        }
        (None, Some(addr)) => {
            let read = |p: &Option<std::path::PathBuf>, what: &str| {
                let p = p.as_ref().ok_or_else(|| StartError::Ca(format!("{what} is required with --ca-address")))?;
                std::fs::read(p).map_err(|e| StartError::Ca(format!("{}: {e}", p.display())))
            };
            let roots = read_roots(&cfg)
                .map_err(StartError::Ca)?
                .ok_or_else(|| StartError::Ca("--ca-root-file is required with --ca-address".into()))?;
            // Read once now only to fail at start on a missing file; the client reads it again
            // for every request, as the token rotates.
            read(&cfg.ca_token_file, "--ca-token-file")?;
            let token_file = cfg.ca_token_file.clone().expect("checked by read");
            let (endpoint, tls) = control_plane(addr, cfg.alt_ca_hostname.as_deref(), Some(&roots))
                .map_err(|e| StartError::Ca(format!("--ca-address {addr:?}: {e}")))?;
            let channel = match tls {
                Some(tls) => endpoint.connect_with_connector_lazy(tls),
                None => endpoint.connect_lazy(),
            };
            let store = CertStore::new(roots);
            let ttl = std::time::Duration::from_secs(cfg.cert_ttl_seconds);
            let ca = crate::ca_client::CaClient::with_token_file(channel, &token_file, store.clone(), ttl);
            (store, Some(ca))
        }
        (None, None) => return Err(StartError::Ca("neither a certificate directory nor a CA address".into())),
    };

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let drain = Drain::default();
    let dns = cfg.dns(std::fs::read_to_string("/etc/resolv.conf").ok().as_deref());
    match &dns {
        Some(d) if d.upstreams.is_empty() => tracing::warn!(
            "DNS proxy: no upstream resolver (--dns-upstream, /etc/resolv.conf); only mesh service names resolve"
        ),
        Some(d) => tracing::info!(upstreams = ?d.upstreams, "DNS proxy on the pods' port {}", d.port),
        None => tracing::info!("DNS proxy off (--no-dns-proxy)"),
    }
    let proxy_cfg = ProxyConfig {
        transparent_inbound: !cfg.no_transparent,
        max_inbound_handshakes: cfg.max_inbound_handshakes,
        dns,
        ..ProxyConfig::default()
    };
    let inputs = ProxyInputs::new(state.clone(), store.clone(), metrics, Arc::new(proxy_cfg), drain.clone(), &admin_rt);
    let host = Netns::current().map_err(StartError::Netns)?;
    let pods = Arc::new(Pods::new(inputs, cfg.trust_domain.clone(), cfg.cluster_id.clone(), host, &ready, ca));

    let bind =
        |what, addr| async move { admin::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source }) };
    let (admin_l, admin_addr) = bind("admin", cfg.admin_addr).await?;
    let (metrics_l, metrics_addr) = bind("metrics", cfg.metrics_addr).await?;
    let (ready_l, readiness_addr) = bind("readiness", cfg.readiness_addr).await?;
    // Listeners were bound on this runtime; move them to the admin runtime's reactor.
    let to_std = |l: tokio::net::TcpListener| l.into_std().expect("a bound listener converts");
    let (admin_l, metrics_l, ready_l) = (to_std(admin_l), to_std(metrics_l), to_std(ready_l));
    let dump = admin_routes(&cfg, state, store, pods.clone(), log);
    let metrics_routes: Routes = Arc::new(move |call| match call.path {
        "/metrics" | "/stats/prometheus" => Reply::text(metrics::encode(&registry)),
        _ => Reply::error(http::StatusCode::NOT_FOUND, "see /metrics"),
    });
    let ready_check = ready.clone();
    let ready_routes: Routes = Arc::new(move |call| match call.path {
        "/healthz/ready" => {
            let pending = ready_check.pending();
            if pending.is_empty() {
                Reply::text("ready\n")
            } else {
                Reply::error(http::StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", pending.join(", ")))
            }
        }
        _ => Reply::error(http::StatusCode::NOT_FOUND, "see /healthz/ready"),
    });
    admin_rt.spawn(async move {
        let l = |s: std::net::TcpListener| tokio::net::TcpListener::from_std(s).expect("listener registers");
        tokio::join!(
            admin::serve(l(admin_l), dump),
            admin::serve(l(metrics_l), metrics_routes),
            admin::serve(l(ready_l), ready_routes),
        );
    });

    let zds = tokio::spawn(crate::inpod::zds::run_client(cfg.zds_socket.clone(), pods.clone()));
    drop(starting);
    tracing::info!(%admin_addr, %metrics_addr, %readiness_addr, node = %cfg.node_name, "ztunnel started");
    Ok(Running { admin_addr, metrics_addr, readiness_addr, pods, drain, zds, _xds: xds })
}

fn admin_routes(cfg: &Config, state: StateHandle, certs: CertStore, pods: Arc<Pods>, log: Option<LogHandle>) -> Routes {
    let config = serde_json::to_value(cfg).unwrap_or_default();
    Arc::new(move |call| match call.path {
        "/config_dump" => {
            let now = std::time::SystemTime::now();
            let certificates: Vec<_> = certs
                .snapshot()
                .iter()
                .map(|c| {
                    json!({
                        "identity": c.identity().to_string(),
                        "expiresInSeconds": c.remaining(now).as_secs(),
                        "notAfter": c.not_after().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    })
                })
                .collect();
            let pods: Vec<_> = pods
                .list()
                .into_iter()
                .map(|(uid, a)| json!({"uid": uid, "outbound": a.outbound, "inboundPlaintext": a.inbound_plain, "hbone": a.hbone, "dns": a.dns}))
                .collect();
            let state = state.load();
            Reply::json(&json!({
                "config": config,
                "state": serde_json::to_value(&**state).unwrap_or_default(),
                "certificates": certificates,
                "pods": pods,
            }))
        }
        "/certs" => Reply::json(&crate::cert_report::certs_json(&certs, std::time::SystemTime::now())),
        "/logging" => match (&log, call.param("level")) {
            (Some(h), Some(level)) => match h.set(level) {
                Ok(()) => Reply::text(format!("log level set to {}\n", h.current())),
                Err(e) => Reply::error(http::StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            (Some(h), None) => Reply::text(format!("current: {}\nset with /logging?level=<filter>\n", h.current())),
            (None, _) => Reply::error(http::StatusCode::NOT_IMPLEMENTED, "logging is not managed by this process\n"),
        },
        "/" => Reply::text("/config_dump\n/certs\n/logging?level=<filter>\n"),
        _ => Reply::error(http::StatusCode::NOT_FOUND, "see /\n"),
    })
}

/// The mesh roots of `--ca-root-file`, if given.
fn read_roots(cfg: &Config) -> Result<Option<hbone::TrustRoots>, String> {
    let Some(p) = &cfg.ca_root_file else { return Ok(None) };
    let pem = std::fs::read(p).map_err(|e| format!("--ca-root-file {}: {e}", p.display()))?;
    hbone::TrustRoots::from_pem(&pem).map(Some).map_err(|e| format!("--ca-root-file {}: {e}", p.display()))
}

/// The endpoint of a control-plane address, with a TLS connector for `https://` (verifying
/// istiod's certificate against `roots`, for the host or `alt_hostname`).
fn control_plane(
    addr: &str,
    alt_hostname: Option<&str>,
    roots: Option<&hbone::TrustRoots>,
) -> Result<(tonic::transport::Endpoint, Option<crate::control_plane_tls::Connector>), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned()).map_err(|e| e.to_string())?;
    if !addr.starts_with("https://") {
        return Ok((endpoint, None));
    }
    let roots = roots.ok_or("an https:// address needs --ca-root-file to verify istiod")?;
    let tls = crate::control_plane_tls::Connector::new(addr, alt_hostname, roots).map_err(|e| e.to_string())?;
    Ok((endpoint, Some(tls)))
}

/// How this ztunnel introduces itself to the control plane.
fn xds_node(cfg: &Config) -> proto::envoy::config::core::v3::Node {
    use prost_types::{Struct, Value, value::Kind};
    let field = |v: &str| Value { kind: Some(Kind::StringValue(v.to_owned())) };
    proto::envoy::config::core::v3::Node {
        id: format!("ztunnel~{}", cfg.node_name),
        metadata: Some(Struct {
            fields: [("NODE_NAME".to_owned(), field(&cfg.node_name)), ("CLUSTER_ID".to_owned(), field("Kubernetes"))]
                .into_iter()
                .collect(),
        }),
        ..Default::default()
    }
}
