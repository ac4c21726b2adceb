//! Wiring: certificates from the CA, state from xDS, the HBONE listener, admin (config dump,
//! log level) on localhost:15000, metrics on 15020 and readiness on 15021.
//!
//! The data plane runs on the runtime `start` is called on; xDS, the CA client and the admin
//! endpoints run on the admin runtime whose handle is passed in. The HBONE listener is bound
//! at once (so its address is known) but accepts only once the waypoint has its certificate
//! and a first xDS state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::CertStore;
use prometheus_client::registry::Registry;
use serde_json::json;
use ztunnel::admin::{self, Reply, Routes};
use ztunnel::logging::LogHandle;
use ztunnel::readiness::Ready;
use ztunnel::state::xds::XdsEndpoint;

use crate::config::{Config, ConfigError};
use crate::proxy::{Inputs, Proxy};
use crate::state::SnapshotHandle;
use crate::telemetry::Metrics;

/// Why the waypoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration does not work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file named by a flag could not be read or parsed.
    #[error("{flag} {path}: {why}")]
    File {
        /// The flag.
        flag: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
    /// TLS to the control plane could not be set up.
    #[error("{flag} {address:?}: {source}")]
    ControlPlane {
        /// The flag.
        flag: &'static str,
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: ztunnel::control_plane_tls::SetupError,
    },
    /// The OTLP endpoint is not usable.
    #[error("--otlp-endpoint: {0}")]
    Otlp(#[from] crate::telemetry::otlp::OtlpError),
    /// The address is not a URI.
    #[error("{flag} {address:?} is not a URI")]
    Uri {
        /// The flag.
        flag: &'static str,
        /// The address.
        address: String,
    },
}

/// A started waypoint.
pub struct Running {
    /// HBONE listener address.
    pub hbone_addr: SocketAddr,
    /// Admin address.
    pub admin_addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// Readiness address.
    pub readiness_addr: SocketAddr,
    /// Readiness tracker.
    pub ready: Ready,
    drain: ztunnel::drain::Drain,
    /// Holds readiness down once the drain has started.
    draining: Option<ztunnel::readiness::BlockReady>,
    _xds: crate::state::xds::XdsSource,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Begins the drain: readiness fails (`draining`), the HBONE listener closes, HBONE
    /// connections get GOAWAY and the HTTP connections in them end once their requests in
    /// flight are answered.
    pub fn start_drain(&mut self) {
        if self.draining.is_none() {
            self.draining = Some(self.ready.register("draining"));
            self.drain.start();
        }
    }

    /// Drains (see [`start_drain`](Self::start_drain)) and waits up to `deadline` for what is
    /// open to finish; returns how many connections and streams were still open (and are cut
    /// when this is dropped).
    pub async fn shutdown(mut self, deadline: Duration) -> usize {
        self.start_drain();
        let left = self.drain.wait(deadline).await;
        tracing::info!(left, "drained");
        left
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn endpoint(
    flag: &'static str,
    address: &str,
    alt: Option<&str>,
    roots: &hbone::TrustRoots,
) -> Result<XdsEndpoint, StartError> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
        .map_err(|_| StartError::Uri { flag, address: address.to_owned() })?;
    let tls = if address.starts_with("https://") {
        Some(
            ztunnel::control_plane_tls::Connector::new(address, alt, roots)
                .map_err(|source| StartError::ControlPlane { flag, address: address.to_owned(), source })?,
        )
    } else {
        None
    };
    Ok(XdsEndpoint { endpoint, tls, token_file: None })
}

fn xds_node(cfg: &Config) -> proto::envoy::config::core::v3::Node {
    use prost_types::{Struct, Value, value::Kind};
    let field = |v: &str| Value { kind: Some(Kind::StringValue(v.to_owned())) };
    proto::envoy::config::core::v3::Node {
        id: format!("waypoint~{}~{}", cfg.gateway, cfg.node_name),
        metadata: Some(Struct {
            fields: [
                ("NODE_NAME".to_owned(), field(&cfg.node_name)),
                ("CLUSTER_ID".to_owned(), field(&cfg.cluster_id)),
                ("GATEWAY".to_owned(), field(&cfg.gateway)),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    }
}

/// Starts the waypoint. Must be called on the data-plane runtime.
pub async fn start(
    cfg: Config,
    admin_rt: tokio::runtime::Handle,
    log: Option<LogHandle>,
) -> Result<Running, StartError> {
    cfg.validate()?;
    let identity = cfg.identity()?;
    let ready = Ready::default();
    let file_err = |flag, path: &std::path::Path, why: String| StartError::File { flag, path: path.to_owned(), why };
    let root_pem =
        std::fs::read(&cfg.ca_root_file).map_err(|e| file_err("--ca-root-file", &cfg.ca_root_file, e.to_string()))?;
    let roots = hbone::TrustRoots::from_pem(&root_pem)
        .map_err(|e| file_err("--ca-root-file", &cfg.ca_root_file, e.to_string()))?;
    let token = std::fs::read_to_string(&cfg.ca_token_file)
        .map_err(|e| file_err("--ca-token-file", &cfg.ca_token_file, e.to_string()))?
        .trim()
        .to_owned();
    let spans = match &cfg.otlp_endpoint {
        Some(e) => Some(
            crate::telemetry::otlp::Exporter::start(
                e,
                format!("{}.{}", cfg.service_account(), identity.namespace()),
                &admin_rt,
                cfg.otlp_ca_file.as_deref(),
                cfg.otlp_headers()?,
            )?
            .with_site(crate::telemetry::span_tags::Site {
                node_id: xds_node(&cfg).id,
                mesh_id: cfg.trust_domain.clone(),
                cluster_id: cfg.cluster_id.clone(),
                namespace: identity.namespace().to_owned(),
            }),
        ),
        None => None,
    };

    // Certificates.
    let store = CertStore::new(roots.clone());
    let ca_addr = cfg.ca_address.clone().unwrap_or_else(|| cfg.xds_address.clone());
    let ca_ep = endpoint("--ca-address", &ca_addr, cfg.alt_xds_hostname.as_deref(), &roots)?;
    let channel = {
        let _on_admin = admin_rt.enter();
        match ca_ep.tls {
            Some(tls) => ca_ep.endpoint.connect_with_connector_lazy(tls),
            None => ca_ep.endpoint.connect_lazy(),
        }
    };
    let ca =
        ztunnel::ca_client::CaClient::new(channel, &token, store.clone(), Duration::from_secs(cfg.cert_ttl_seconds));
    let cert_ready = ready.register("certificate");
    let cert_id = identity.clone();
    let cert_task = admin_rt.spawn(async move {
        let mut wait = Duration::from_millis(200);
        let mut cert_ready = Some(cert_ready);
        loop {
            match ca.ensure(&cert_id).await {
                Ok(()) => {
                    tracing::info!(identity = %cert_id, "certificate issued");
                    cert_ready.take();
                    // `ensure` renews on its own task; keep the client alive.
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "certificate request failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(15));
                }
            }
        }
    });

    // State.
    let state = SnapshotHandle::default();
    let mut xds_ep = endpoint("--xds-address", &cfg.xds_address, cfg.alt_xds_hostname.as_deref(), &roots)?;
    // Over TLS istiod asks for the token it asks of CA callers; never sent in plaintext.
    if xds_ep.tls.is_some() {
        xds_ep.token_file = Some(cfg.ca_token_file.clone());
    }
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    let first_state = ready.register("first state from xDS");
    let mut changes = state.subscribe();
    let state_task = admin_rt.spawn(async move {
        let _ = changes.changed().await;
        drop(first_state);
    });
    let xds = {
        let _on_admin = admin_rt.enter();
        let own = crate::state::Own {
            gateway: cfg.gateway.clone(),
            identity: Some(identity.clone()),
            node: cfg.node_name.clone(),
            ip: cfg.instance_ip,
            network: cfg.network.clone(),
        };
        crate::state::xds::start(xds_ep, xds_node(&cfg), state.clone(), own, metrics.clone())
    };

    // Data path.
    let proxy = Proxy::new(Inputs {
        identity: identity.clone(),
        certs: store.clone(),
        state: state.clone(),
        metrics,
        connector: None,
        hbone_port: hbone::tunnel::HBONE_PORT,
        detect_timeout: Duration::from_millis(500),
        spans,
        max_inbound_handshakes: cfg.max_inbound_handshakes,
    });
    let bind =
        |what, addr| async move { admin::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source }) };
    let (hbone_l, hbone_addr) = bind("HBONE", cfg.hbone_addr).await?;
    let (admin_l, admin_addr) = bind("admin", cfg.admin_addr).await?;
    let (metrics_l, metrics_addr) = bind("metrics", cfg.metrics_addr).await?;
    let (ready_l, readiness_addr) = bind("readiness", cfg.readiness_addr).await?;
    let serving = proxy.clone();
    let drain = proxy.drain.clone();
    let gate = ready.clone();
    let serve_task = tokio::spawn(async move {
        // Serve only when ready: a peer reaching us before we know routes or have a
        // certificate would be refused for the wrong reason.
        while !gate.pending().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(addr = %hbone_addr, "accepting HBONE");
        serving.serve(hbone_l).await;
    });

    let to_std = |l: tokio::net::TcpListener| l.into_std().expect("a bound listener converts");
    let (admin_l, metrics_l, ready_l) = (to_std(admin_l), to_std(metrics_l), to_std(ready_l));
    let config_json = serde_json::to_value(&cfg).unwrap_or_default();
    let xds_status = xds.client.watch();
    let dump_state = state.clone();
    let dump: Routes = Arc::new(move |call| match call.path {
        "/config_dump" => {
            let snap = dump_state.load();
            let now = std::time::SystemTime::now();
            let certs: Vec<_> = store
                .snapshot()
                .iter()
                .map(|c| json!({"identity": c.identity().to_string(), "expiresInSeconds": c.remaining(now).as_secs()}))
                .collect();
            Reply::json(&json!({
                "config": config_json,
                "version": dump_state.version(),
                "waypoint": serde_json::to_value(&*snap).unwrap_or_default(),
                "mesh": serde_json::to_value(&snap.mesh).unwrap_or_default(),
                "xds": format!("{:?}", *xds_status.borrow()),
                "certificates": certs,
            }))
        }
        "/logging" => match (&log, call.param("level")) {
            (Some(h), Some(level)) => match h.set(level) {
                Ok(()) => Reply::text(format!("log level set to {}\n", h.current())),
                Err(e) => Reply::error(http::StatusCode::BAD_REQUEST, format!("{e}\n")),
            },
            (Some(h), None) => Reply::text(format!("current: {}\nset with /logging?level=<filter>\n", h.current())),
            (None, _) => Reply::error(http::StatusCode::NOT_IMPLEMENTED, "logging is not managed by this process\n"),
        },
        "/" => Reply::text("/config_dump\n/logging?level=<filter>\n"),
        _ => Reply::error(http::StatusCode::NOT_FOUND, "see /\n"),
    });
    let metrics_routes: Routes = Arc::new(move |call| match call.path {
        "/metrics" | "/stats/prometheus" => Reply::text(ztunnel::metrics::encode(&registry)),
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
    let admin_task = admin_rt.spawn(async move {
        let l = |s: std::net::TcpListener| tokio::net::TcpListener::from_std(s).expect("listener registers");
        tokio::join!(
            admin::serve(l(admin_l), dump),
            admin::serve(l(metrics_l), metrics_routes),
            admin::serve(l(ready_l), ready_routes),
        );
    });
    tracing::info!(%hbone_addr, %admin_addr, %metrics_addr, %readiness_addr, %identity, gateway = cfg.gateway, "waypoint started");
    Ok(Running {
        hbone_addr,
        admin_addr,
        metrics_addr,
        readiness_addr,
        ready,
        drain,
        draining: None,
        _xds: xds,
        tasks: vec![cert_task, state_task, serve_task, admin_task],
    })
}
