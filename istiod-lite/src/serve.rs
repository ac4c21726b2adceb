//! Running the control plane: the watched config directory (or the Kubernetes API) feeds the
//! translator, whose deltas feed the xDS store; xDS and the CA are served together over TLS on
//! 15012 (with a certificate from the mesh root, see [`crate::tls`]), and in plaintext on 15010
//! only when asked; metrics and debug JSON on 15014 (see [`crate::debug`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer;
use xds::{ResourceStore, XdsServer};

use crate::ca::{Authenticator, CaService, CaSigner, KubeAuth, NodeTokens, TokenReviewer};
use crate::config::{Config, ConfigError, Source};
use crate::debug::convergence::{Changed, Convergence};
use crate::debug::metrics::{CountedCa, Metrics};
use crate::debug::{self, DebugState};
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
    /// The serving certificate cannot be issued.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
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
    /// Where xDS and the CA are served over TLS.
    pub tls_addr: SocketAddr,
    /// Where xDS and the CA are served in plaintext, if asked.
    pub plaintext_addr: Option<SocketAddr>,
    /// Where metrics and debug JSON are served.
    pub monitoring_addr: SocketAddr,
    /// The serving certificate of the TLS port.
    pub serving_cert: crate::tls::ServingCert,
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

async fn bind(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let bind = |source| StartError::Bind { addr, source };
    let l = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let a = l.local_addr().map_err(bind)?;
    Ok((l, a))
}

/// Starts everything; returns once every port is bound.
pub async fn start(cfg: &Config) -> Result<Running, StartError> {
    cfg.validate()?;
    let mesh = MeshConfig {
        root_namespace: cfg.root_namespace.clone(),
        trust_domain: cfg.trust_domain.clone(),
        ..MeshConfig::default()
    };
    let translator = Arc::new(Mutex::new(Translator::new(mesh)));
    let store = ResourceStore::new();
    let xds = XdsServer::new(store.clone());
    let kube_client = match cfg.source {
        Source::Kube => Some(kube::client(cfg.kubeconfig.as_deref()).await?),
        Source::Dir => None,
    };
    let (status, mut deltas, watcher) = start_source(cfg, kube_client.clone(), translator.clone())?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry, xds.clone(), status.clone());
    let convergence = Arc::new(Convergence::default());
    let mut tasks = vec![watcher, tokio::spawn(convergence.clone().run(xds.clone(), metrics.clone()))];
    let (feed, fed) = (store.clone(), metrics.clone());
    // 15012 serves only once the first model is in the store: a proxy connecting earlier
    // would otherwise be told the mesh is empty, and the CA would refuse every pod.
    let (loaded_tx, loaded) = tokio::sync::watch::channel(false);
    let mut first_load = status.clone();
    tasks.push(tokio::spawn(async move {
        let apply = |delta: crate::translator::Delta| {
            let mut changed = Vec::new();
            for (type_url, d) in delta.types {
                let (n, r) = (d.upserts.len(), d.removals.len());
                let names: Vec<String> = d.upserts.iter().map(|(name, _)| name.clone()).collect();
                changed.extend(d.removals.iter().map(|name| Changed {
                    type_url: type_url.to_owned(),
                    name: name.clone(),
                    version: None,
                }));
                feed.update(type_url, d.upserts, d.removals);
                changed.extend(names.into_iter().map(|name| Changed {
                    type_url: type_url.to_owned(),
                    version: feed.version(type_url, &name),
                    name,
                }));
                tracing::info!(type_url, upserts = n, removals = r, "pushed configuration change");
            }
            fed.config_changes.inc();
            convergence.changed(changed);
        };
        loop {
            tokio::select! {
                delta = deltas.recv() => match delta {
                    Some(d) => apply(d),
                    None => return,
                },
                // Sources send a load's delta before counting the load, so once the status
                // shows it, the delta is already queued: drain, then open the port.
                true = async { first_load.wait_for(|s| s.loads > 0).await.is_ok() }, if !*loaded_tx.borrow() => {
                    while let Ok(d) = deltas.try_recv() {
                        apply(d);
                    }
                    loaded_tx.send_replace(true);
                    tracing::info!("first configuration loaded; serving xDS and the CA");
                }
            }
        }
    }));

    let mut signer = CaSigner::load_or_generate(&cfg.ca_dir, &cfg.trust_domain)?;
    signer.max_ttl = std::time::Duration::from_secs(cfg.max_workload_cert_ttl_seconds);
    signer.default_ttl = std::time::Duration::from_secs(cfg.default_workload_cert_ttl_seconds);
    let signer = Arc::new(signer);
    let identity = hbone::Identity::new(&cfg.trust_domain, &cfg.root_namespace, "istiod")
        .map_err(|e| crate::tls::TlsError::Issue(format!("istiod's identity: {e}")))?;
    let serving_cert = crate::tls::ServingCert::issue(
        signer.clone(),
        crate::tls::ServingCertSpec {
            identity,
            extra_names: cfg.tls_san.clone(),
            ttl: std::time::Duration::from_secs(cfg.tls_cert_ttl_seconds),
        },
    )?;
    tasks.push(tokio::spawn(serving_cert.clone().renew_forever()));
    let auth = match kube_client {
        Some(client) => {
            if cfg.bootstrap_tokens.is_some() {
                tracing::warn!("--bootstrap-tokens is ignored with --source kube: the CA uses TokenReview");
            }
            Authenticator::Kube(Box::new(KubeAuth {
                reviewer: TokenReviewer::new(
                    client,
                    cfg.token_audience.clone(),
                    crate::ca::tokenreview::DEFAULT_CACHE_TTL,
                ),
                node_proxy: cfg.node_proxy_account()?,
                trust_domain: cfg.trust_domain.clone(),
            }))
        }
        None => Authenticator::NodeTokens(NodeTokens::from(cfg.tokens()?)),
    };
    let placement = Arc::new(ModelPlacement::new(translator.clone()));
    let auth = Arc::new(auth);
    // On the TLS port an xDS stream needs the same credential as the CA (Istio authenticates
    // every stream there too): the mesh's workloads, addresses and policies are not for
    // anyone who can reach the port. The plaintext port, when enabled, is as open as Istio's.
    let xds_auth: xds::Authenticate = {
        let (auth, placement) = (auth.clone(), placement.clone());
        Arc::new(move |metadata| {
            let token = crate::ca::bearer(metadata).map(str::to_owned);
            let (auth, placement) = (auth.clone(), placement.clone());
            Box::pin(async move { auth.authenticate(&token?, &*placement).await.map(|_| ()) })
        })
    };
    let ca = Arc::new(CountedCa::new(CaService::with_auth(signer, auth, placement), metrics));
    // One router per port over the same services, so both ports see one state.
    let router = |ads: xds::AdsService| {
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(ads)
            .add_service(IstioCertificateServiceServer::from_arc(ca.clone()))
    };

    let (tls_listener, tls_addr) = bind(cfg.tls_addr).await?;
    let served = router(xds.service_with_auth(xds_auth));
    let (server_config, mut ready) = (serving_cert.server_config(), loaded.clone());
    tasks.push(tokio::spawn(async move {
        // Bound now, so the port is ours; connections wait in the backlog until the model is.
        if ready.wait_for(|l| *l).await.is_err() {
            return;
        }
        let incoming = crate::tls::incoming(tls_listener, server_config);
        if let Err(e) = served.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "xDS/CA TLS server failed");
        }
    }));
    let plaintext_addr = match cfg.plaintext_addr {
        Some(addr) => {
            let (listener, addr) = bind(addr).await?;
            let served = router(xds.service());
            let mut ready = loaded.clone();
            tasks.push(tokio::spawn(async move {
                if ready.wait_for(|l| *l).await.is_err() {
                    return;
                }
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(e) = served.serve_with_incoming(incoming).await {
                    tracing::error!(error = %e, "xDS/CA plaintext server failed");
                }
            }));
            Some(addr)
        }
        None => None,
    };
    let (monitoring, monitoring_addr) = bind(cfg.monitoring_addr).await?;
    let state = Arc::new(DebugState { xds: xds.clone(), translator: translator.clone(), status, registry });
    tasks.push(tokio::spawn(debug::serve(monitoring, state)));
    tracing::info!(
        %tls_addr,
        plaintext_addr = ?plaintext_addr,
        %monitoring_addr,
        source = ?cfg.source,
        config_dir = ?cfg.config_dir,
        "istiod-lite serving xDS and the CA"
    );
    Ok(Running { tls_addr, plaintext_addr, monitoring_addr, serving_cert, xds, translator, tasks })
}

/// A running source: its status, its deltas, its task.
type SourceParts = (
    tokio::sync::watch::Receiver<dir::WatchStatus>,
    tokio::sync::mpsc::UnboundedReceiver<crate::translator::Delta>,
    tokio::task::JoinHandle<()>,
);

/// Where the model comes from: a watched directory, or the Kubernetes API (through `client`,
/// made by the caller, who shares it with the CA). Both report into the same status, which
/// metrics and the debug pages read.
fn start_source(
    cfg: &Config,
    client: Option<::kube::Client>,
    translator: Arc<Mutex<Translator>>,
) -> Result<SourceParts, ConfigError> {
    match cfg.source {
        Source::Dir => {
            let path =
                cfg.config_dir.clone().ok_or(ConfigError::Required { flag: "--config-dir", mode: "--source dir" })?;
            let (status, deltas, watcher) = dir::watch(path, translator);
            Ok((status, deltas, tokio::spawn(watcher)))
        }
        Source::Kube => {
            let client = client.ok_or(ConfigError::Required { flag: "a Kubernetes client", mode: "--source kube" })?;
            let deployer = cfg.waypoint_image.as_deref().map(|image| {
                let deploy = crate::deploy::DeployConfig::new(image, &cfg.root_namespace, &cfg.trust_domain);
                crate::deploy::controller(client.clone(), deploy)
            });
            let (mut kube_status, deltas, watcher) = kube::watch(client.clone(), translator.clone());
            let status_writer = crate::deploy::route_status::writer(client, translator, kube_status.clone());
            let (tx, status) = tokio::sync::watch::channel(dir::WatchStatus::default());
            let watcher = tokio::spawn(async move {
                let mirror = async move {
                    while kube_status.changed().await.is_ok() {
                        let k = kube_status.borrow_and_update().clone();
                        tx.send_replace(dir::WatchStatus {
                            // A "load" is complete once every kind is synced (or absent);
                            // until then the model is partial and 15012 waits.
                            loads: if k.ready() { k.events.max(1) } else { 0 },
                            errors: k
                                .rejected
                                .values()
                                .map(|r| {
                                    Arc::new(crate::error::ConfigError {
                                        location: crate::error::Location {
                                            file: format!("kubernetes:{}", r.object.kind.as_str()).into(),
                                            document: 0,
                                        },
                                        object: Some(r.object.clone()),
                                        error: crate::error::ObjectError::Invalid {
                                            field: String::new(),
                                            reason: r.error.to_string(),
                                        },
                                    })
                                })
                                // A failing watch (a kind it may not read, a policy kind at no
                                // version it reads) shows and counts where errors do.
                                .chain(k.failures().map(Arc::new))
                                .collect(),
                            failure: None,
                            warnings: k.warnings.clone(),
                            inotify: false,
                        });
                    }
                };
                let deployer = async move {
                    if let Some(d) = deployer {
                        d.await;
                    }
                };
                tokio::join!(watcher, mirror, deployer, status_writer);
            });
            Ok((status, deltas, watcher))
        }
    }
}
