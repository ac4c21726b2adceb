//! The node agent: decides which pods are enrolled, installs their
//! redirection and hands their namespaces to ztunnel.
//!
//! Flow of a pod: the CNI plugin reports ADD on the agent's event socket
//! ([`cni_server`]); if [`enroll`] says the pod is enrolled, the agent
//! installs the [`redirect`]ion in the pod's namespace, keeps a handle to that
//! namespace and gives it to ztunnel over ZDS ([`zds_server`]), then records
//! the pod in its [`state`] directory. ADD fails, and the redirection is
//! removed again, if a connected ztunnel refuses the pod. With no ztunnel
//! connected, ADD succeeds: the pod's traffic is captured (and refused,
//! nothing listens yet) until ztunnel connects and receives it in its
//! snapshot. DEL undoes all of it.
//!
//! During a ztunnel upgrade two ztunnels are connected at once and both get
//! every pod; the old one leaves when it drains.

pub mod cni_server;
pub mod enroll;
pub mod redirect;
pub mod state;
pub mod zds_server;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::istio::workload::zds::WorkloadInfo;
use tokio::sync::Mutex;

use crate::cni::{CniCommand, CniEvent, CniReply};
use crate::inpod::seqpacket::SeqPacketListener;
use crate::netns::Netns;
use enroll::Enrollment;
use redirect::RedirectConfig;
use state::{PodRecord, StateDir};
use zds_server::ZdsServer;

/// Configuration of the node agent.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentConfig {
    /// Unix socket where ztunnel connects for ZDS.
    #[arg(long, env = "ZDS_SOCKET", default_value = crate::inpod::DEFAULT_ZDS_PATH)]
    pub zds_socket: PathBuf,
    /// Unix socket where the CNI plugin reports pod events.
    #[arg(long, env = "CNI_EVENT_SOCKET", default_value = crate::cni::DEFAULT_AGENT_SOCKET)]
    pub cni_socket: PathBuf,
    /// Kubernetes YAML (file or directory) with the Namespaces and Pods that
    /// decide enrollment.
    #[arg(long, env = "ENROLLMENT_PATH", default_value = "/etc/ztunnel/cluster")]
    pub enrollment: PathBuf,
    /// Directory where enrolled pods are recorded across agent restarts.
    #[arg(long, env = "AGENT_STATE_DIR", default_value = "/var/run/ztunnel/agent")]
    pub state_dir: PathBuf,
    /// Also redirect pods' DNS to ztunnel's port 15053.
    #[arg(long, env = "CAPTURE_DNS", default_value_t = false)]
    pub capture_dns: bool,
    /// How long to wait for ztunnel's hello and each ack, in milliseconds.
    #[arg(long, env = "ZDS_TIMEOUT_MS", default_value_t = 5000)]
    pub zds_timeout_ms: u64,
}

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A listening socket could not be set up.
    #[error("listening on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state directory is unusable.
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// An enrolled pod, as the agent holds it.
struct Enrolled {
    record: PodRecord,
    netns: Netns,
}

/// The running agent.
pub struct Agent {
    config: AgentConfig,
    enrollment: Enrollment,
    state: StateDir,
    zds: Arc<ZdsServer>,
    /// By container id. The lock also serializes pod events.
    pods: Mutex<HashMap<String, Enrolled>>,
    /// The serving tasks, stopped by [`Agent::shutdown`].
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Agent {
    /// Binds both sockets, re-adopts recorded pods whose namespace still
    /// exists, and starts serving. The tasks run on the current runtime until
    /// it shuts down.
    pub async fn start(config: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let zds_listener = SeqPacketListener::bind(&config.zds_socket)
            .map_err(|source| AgentError::Listen { path: config.zds_socket.clone(), source })?;
        let cni_listener = cni_server::bind(&config.cni_socket)
            .map_err(|source| AgentError::Listen { path: config.cni_socket.clone(), source })?;
        let agent = Arc::new(Self {
            enrollment: Enrollment::new(config.enrollment.clone()),
            state: StateDir::open(&config.state_dir)?,
            zds: ZdsServer::new(Duration::from_millis(config.zds_timeout_ms)),
            pods: Mutex::default(),
            tasks: std::sync::Mutex::default(),
            config,
        });
        agent.restore().await;
        let zds_task = tokio::spawn(agent.zds.clone().serve(zds_listener));
        let cni_task = tokio::spawn(cni_server::serve(cni_listener, agent.clone()));
        agent.tasks.lock().unwrap().extend([zds_task.abort_handle(), cni_task.abort_handle()]);
        tracing::info!(config = ?agent.config, "node agent started");
        Ok(agent)
    }

    /// Stops listening and drops the ztunnel connection. Pods keep their
    /// redirection and records, for the next agent to re-adopt.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.zds.disconnect().await;
    }

    /// The ZDS side, for inspection.
    pub fn zds(&self) -> &ZdsServer {
        &self.zds
    }

    async fn restore(&self) {
        let records = match self.state.load() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read recorded pods");
                return;
            }
        };
        let mut pods = self.pods.lock().await;
        for record in records {
            match self.adopt(&record).await {
                Ok(netns) => {
                    tracing::info!(pod = %record.name, namespace = %record.namespace, "re-adopted recorded pod");
                    pods.insert(record.container_id.clone(), Enrolled { record, netns });
                }
                Err(reason) => {
                    tracing::info!(pod = %record.name, %reason, "forgetting recorded pod");
                    let _ = self.state.remove(&record.container_id);
                }
            }
        }
    }

    /// Redirection plus ZDS for one pod; returns the agent's own handle.
    async fn adopt(&self, record: &PodRecord) -> Result<Netns, String> {
        let netns = Netns::open(&record.netns).map_err(|e| e.to_string())?;
        let for_rules = netns.try_clone().map_err(|e| e.to_string())?;
        let config = RedirectConfig { capture_dns: self.config.capture_dns };
        tokio::task::spawn_blocking(move || redirect::install(&for_rules, &config))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("installing redirection: {e}"))?;
        let info = WorkloadInfo {
            name: record.name.clone(),
            namespace: record.namespace.clone(),
            service_account: record.service_account.clone(),
            windows_namespace: None,
        };
        let for_zds = netns.try_clone().map_err(|e| e.to_string())?;
        if let Err(e) = self.zds.add(record.uid.clone(), Some(info), for_zds).await {
            remove_rules(&netns).await;
            return Err(e.to_string());
        }
        Ok(netns)
    }

    /// Handles one event from the CNI plugin.
    pub async fn handle(&self, event: CniEvent) -> CniReply {
        match event.command {
            CniCommand::Add => self.add(event).await,
            CniCommand::Del => self.del(event).await,
            CniCommand::Check => self.check(event).await,
        }
    }

    async fn add(&self, event: CniEvent) -> CniReply {
        let (Some(namespace), Some(name)) = (event.pod_namespace.clone(), event.pod_name.clone()) else {
            // Not a Kubernetes pod: nothing to decide on.
            return CniReply::ok(false);
        };
        let facts = match self.enrollment.pod(&namespace, &name) {
            Ok(f) => f,
            Err(e) => return CniReply::refused(format!("cannot decide enrollment of {namespace}/{name}: {e}")),
        };
        if !facts.enrolled {
            return CniReply::ok(false);
        }
        let record = PodRecord {
            uid: event.pod_uid.clone().or(facts.uid).unwrap_or_else(|| event.container_id.clone()),
            container_id: event.container_id.clone(),
            netns: event.netns.clone(),
            name,
            namespace,
            service_account: facts.service_account,
        };
        let mut pods = self.pods.lock().await;
        let netns = match self.adopt(&record).await {
            Ok(n) => n,
            Err(e) => return CniReply::refused(format!("pod {}/{}: {e}", record.namespace, record.name)),
        };
        if let Err(e) = self.state.save(&record) {
            tracing::warn!(error = %e, "pod enrolled but not recorded; an agent restart will not re-adopt it");
        }
        tracing::info!(pod = %record.name, namespace = %record.namespace, uid = %record.uid, "pod enrolled");
        pods.insert(record.container_id.clone(), Enrolled { record, netns });
        CniReply::ok(true)
    }

    async fn del(&self, event: CniEvent) -> CniReply {
        let mut pods = self.pods.lock().await;
        let Some(pod) = pods.remove(&event.container_id) else {
            return CniReply::ok(false);
        };
        self.zds.del(&pod.record.uid).await;
        remove_rules(&pod.netns).await;
        if let Err(e) = self.state.remove(&pod.record.container_id) {
            tracing::warn!(error = %e, "could not delete pod record");
        }
        tracing::info!(pod = %pod.record.name, namespace = %pod.record.namespace, "pod removed");
        CniReply::ok(true)
    }

    async fn check(&self, event: CniEvent) -> CniReply {
        let pods = self.pods.lock().await;
        let Some(pod) = pods.get(&event.container_id) else {
            let enrolled = match (&event.pod_namespace, &event.pod_name) {
                (Some(ns), Some(name)) => self.enrollment.pod(ns, name).map(|f| f.enrolled),
                _ => Ok(false),
            };
            return match enrolled {
                Ok(false) => CniReply::ok(false),
                Ok(true) => CniReply::refused("pod is enrolled but was never set up"),
                Err(e) => CniReply::refused(e.to_string()),
            };
        };
        let netns = match pod.netns.try_clone() {
            Ok(n) => n,
            Err(e) => return CniReply::refused(e.to_string()),
        };
        match tokio::task::spawn_blocking(move || redirect::installed(&netns)).await {
            Ok(Ok(true)) => CniReply::ok(true),
            Ok(Ok(false)) => CniReply::refused("redirection rules are missing from the pod"),
            Ok(Err(e)) => CniReply::refused(e.to_string()),
            Err(e) => CniReply::refused(e.to_string()),
        }
    }
}

async fn remove_rules(netns: &Netns) {
    let netns = match netns.try_clone() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove redirection");
            return;
        }
    };
    match tokio::task::spawn_blocking(move || redirect::remove(&netns)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "removing redirection"),
        Err(e) => tracing::warn!(error = %e, "removing redirection"),
    }
}
