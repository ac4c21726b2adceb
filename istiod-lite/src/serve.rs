//! Running the control plane: the watched config directory (or the Kubernetes API) feeds the
//! translator, whose deltas feed the xDS store; xDS and the CA are served together on one
//! HTTP/2 port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use xds::{ResourceStore, XdsServer};

use crate::ca::{CaService, CaSigner, NodeTokens};
use crate::config::{Config, ConfigError, Source};
use crate::placement::ModelPlacement;
use crate::source::{dir, kube};
use crate::translate::MeshConfig;
use crate::translator::Translator;

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kubernetes API cannot be reached with the configuration given.
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    /// The CA root is unusable.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// A port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running control plane.
pub struct Running {
    /// Where xDS and the CA are served (plaintext).
    pub plaintext_addr: SocketAddr,
    /// The xDS server, for status.
    pub xds: XdsServer,
    /// The translator, for debug.
    pub translator: Arc<Mutex<Translator>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts everything; returns once the port is bound.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    cfg.validate()?;
    let mesh = MeshConfig {
        root_namespace: cfg.root_namespace.clone(),
        trust_domain: cfg.trust_domain.clone(),
        ..MeshConfig::default()
    };
    let translator = Arc::new(Mutex::new(Translator::new(mesh)));
    let store = ResourceStore::new();
    let (mut deltas, watcher) = match cfg.source {
        Source::Dir => {
            let dir =
                cfg.config_dir.clone().ok_or(ConfigError::Required { flag: "--config-dir", mode: "--source dir" })?;
            let (_status, deltas, watcher) = dir::watch(dir, translator.clone());
            (deltas, tokio::spawn(watcher))
        }
        Source::Kube => {
            let client = kube::client(cfg.kubeconfig.as_deref()).await?;
            let (_status, deltas, watcher) = kube::watch(client, translator.clone());
            (deltas, tokio::spawn(watcher))
        }
    };
    let mut tasks = vec![watcher];
    let feed = store.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(delta) = deltas.recv().await {
            for (type_url, d) in delta.types {
                let (n, r) = (d.upserts.len(), d.removals.len());
                feed.update(type_url, d.upserts, d.removals);
                tracing::info!(type_url, upserts = n, removals = r, "pushed configuration change");
            }
        }
    }));

    let signer = Arc::new(CaSigner::load_or_generate(&cfg.ca_dir, &cfg.trust_domain)?);
    let ca = CaService::new(signer, NodeTokens(cfg.tokens()?), Arc::new(ModelPlacement::new(translator.clone())));
    let xds = XdsServer::new(store);
    let listener = tokio::net::TcpListener::bind(cfg.plaintext_addr)
        .await
        .map_err(|source| StartError::Bind { addr: cfg.plaintext_addr, source })?;
    let plaintext_addr =
        listener.local_addr().map_err(|source| StartError::Bind { addr: cfg.plaintext_addr, source })?;
    let router = tonic::transport::Server::builder().add_service(xds.service()).add_service(ca.into_server());
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "xDS/CA server failed");
        }
    }));
    tracing::info!(%plaintext_addr, source = ?cfg.source, config_dir = ?cfg.config_dir, "istiod-lite serving xDS and the CA");
    Ok(Running { plaintext_addr, xds, translator, tasks })
}
