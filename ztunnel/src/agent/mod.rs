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
//! snapshot. DEL undoes all of it, for the sandbox it names (`CNI_CONTAINERID`) only:
//! a pod's replacement sandbox has the same uid on ZDS and may have the old one's
//! address, and the old sandbox's DEL can come after the new one's ADD, so what another
//! enrolled sandbox still uses stays. A DEL that arrives while an ADD of the same
//! container is still deciding enrollment (an API lookup outlived the plugin's
//! timeout, and the runtime tore the sandbox down) makes that ADD give up
//! without installing anything: nothing would ever remove it otherwise. A
//! repeated ADD of a sandbox decides again: a pod that has left the mesh since
//! (its own label `none`, or its namespace's label gone) loses its redirection
//! and ztunnel lets it go; one still enrolled is installed again in place. CHECK
//! looks enrollment up, like ADD, without holding up other pods' events, and fails
//! if the sandbox is deleted meanwhile.
//!
//! During a ztunnel upgrade two ztunnels are connected at once and both get
//! every pod; the old one leaves when it drains.
//!
//! Enrollment comes from YAML files or from the Kubernetes API
//! ([`kube_enroll`]). With the API, a label change on a namespace or pod
//! re-decides for the running pods the agent has seen an ADD for (enrolled or
//! not, since this agent started): newly enrolled ones get their redirection and
//! go to ztunnel, no longer enrolled ones lose both. Pods whose ADD came before
//! this agent started and that were not enrolled then are not known to it (their
//! network namespace is not recorded) and stay as they are until recreated.
//!
//! DNS capture (UDP and TCP port 53 to ztunnel's DNS proxy on 15053) is on by default, as
//! in Istio since 1.25 (`--capture-dns false` turns it off). A pod's annotation
//! `ambient.istio.io/dns-capture` (`true` or `false`, read as Go's `strconv.ParseBool` reads
//! it, as Istio does) overrides that for the pod; any other value is ignored with a warning.
//! The decision is made when the pod is enrolled and recorded with it: changing the
//! annotation (or the global setting) on a running pod changes nothing until the pod is
//! enrolled again (recreated, or unenrolled and re-enrolled by a label change), as in Istio.
//!
//! Unless disabled, the agent also keeps a table on the host ([`probe_snat`])
//! that gives the node's own connections to enrolled pods (kubelet's probes) the
//! link-local source the pods' redirection lets through.
//!
//! Restart and uninstall: stopping the agent ([`Agent::shutdown`], on SIGTERM or
//! SIGINT) leaves the pods' redirection and records *and* the host probe table in
//! place, so kubelet's probes of enrolled pods keep bypassing capture (and are not
//! refused under `STRICT`) while no agent runs, as across an upgrade, a crash loop or
//! a rollout; Istio's node agent likewise keeps its host rules across restarts. The
//! next agent takes the table over in one nft transaction, without duplicating its
//! rules, and once it has re-adopted the recorded pods sets the table's addresses to
//! theirs. Only an explicit uninstall removes the table: [`Agent::uninstall`] for a
//! running agent, [`uninstall_host`] (`ztunnel-agent --uninstall`) when none runs,
//! once ztunnel leaves the node for good. An agent started with `--no-probe-snat`
//! removes a table an earlier one left, as nothing would keep its addresses current.

pub mod cni_server;
pub mod enroll;
pub mod kube_enroll;
pub mod probe_snat;
pub mod redirect;
pub mod state;
pub mod zds_server;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use proto::istio::workload::zds::WorkloadInfo;
use tokio::sync::Mutex;

use crate::cni::{CniCommand, CniEvent, CniReply};
use crate::inpod::seqpacket::SeqPacketListener;
use crate::netns::{Netns, NetnsId};
use enroll::{DNS_CAPTURE_ANNOTATION, DnsCapture, Enrollment, Source};
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
    /// Where enrollment is decided: `files` (`--enrollment`) or `kube` (the
    /// Kubernetes API, watched).
    #[arg(long, env = "ENROLLMENT_SOURCE", value_enum, default_value_t = EnrollmentSource::Files)]
    pub enrollment_source: EnrollmentSource,
    /// Kubernetes YAML (file or directory) with the Namespaces and Pods that
    /// decide enrollment (source `files`).
    #[arg(long, env = "ENROLLMENT_PATH", default_value = "/etc/ztunnel/cluster")]
    pub enrollment: PathBuf,
    /// This node's name: the agent watches the pods with `spec.nodeName` equal
    /// to it (source `kube`; required there).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubeconfig for the API (source `kube`); without it the in-cluster
    /// service account, else `$KUBECONFIG` or `~/.kube/config`.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Do not install the host table that gives the node's connections to
    /// enrolled pods (kubelet's probes) the link-local probe source. A table
    /// an earlier agent kept (it outlives restarts) is removed at start.
    #[arg(long, env = "NO_PROBE_SNAT", default_value_t = false)]
    pub no_probe_snat: bool,
    /// The node's network namespace, where the probe table goes (e.g.
    /// `/host/proc/1/ns/net` when the agent's pod is not on the host
    /// network), and where `--uninstall` removes it; default: the agent's own.
    #[arg(long, env = "HOST_NETNS")]
    pub host_netns: Option<PathBuf>,
    /// Directory where enrolled pods are recorded across agent restarts.
    #[arg(long, env = "AGENT_STATE_DIR", default_value = "/var/run/ztunnel/agent")]
    pub state_dir: PathBuf,
    /// Redirect enrolled pods' DNS (UDP and TCP port 53) to ztunnel's DNS proxy on 15053:
    /// `true` (the default, as Istio's `AMBIENT_DNS_CAPTURE` since 1.25) or `false`; a bare
    /// `--capture-dns` means `true`. A pod's annotation `ambient.istio.io/dns-capture`
    /// (`"true"` / `"false"`) overrides it for that pod, at enrollment.
    #[arg(
        long,
        env = "CAPTURE_DNS",
        value_name = "true|false",
        default_value = "true",
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_parser = parse_flag_bool,
    )]
    pub capture_dns: bool,
    /// How long to wait for ztunnel's hello and each ack, in milliseconds.
    #[arg(long, env = "ZDS_TIMEOUT_MS", default_value_t = 5000)]
    pub zds_timeout_ms: u64,
}

/// A boolean flag's value, read as [`enroll::parse_bool`] reads the DNS annotation.
fn parse_flag_bool(value: &str) -> Result<bool, String> {
    enroll::parse_bool(value).ok_or_else(|| format!("expected true or false (or 1 / 0), got {value:?}"))
}

/// Where enrollment is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EnrollmentSource {
    /// Kubernetes YAML files.
    Files,
    /// The Kubernetes API.
    Kube,
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
    /// `--enrollment-source kube` without `--node-name`.
    #[error("--enrollment-source kube needs --node-name (or NODE_NAME)")]
    NoNodeName,
    /// The kubeconfig named by `--kubeconfig` cannot be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither in-cluster settings nor a default kubeconfig were found.
    #[error("no Kubernetes configuration (in-cluster or kubeconfig): {0}")]
    KubeInfer(#[source] kube::config::InferConfigError),
    /// The Kubernetes client could not be built from its configuration.
    #[error("Kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    /// The host's probe table could not be installed.
    #[error("host probe rules (disable with --no-probe-snat): {0}")]
    ProbeSnat(#[from] probe_snat::ProbeSnatError),
    /// Uninstalling: the host's probe table could not be removed.
    #[error("removing the host probe table: {0}")]
    Uninstall(#[source] probe_snat::ProbeSnatError),
    /// The agent's own network namespace cannot be opened.
    #[error("opening the host network namespace: {0}")]
    HostNetns(#[source] std::io::Error),
}

/// An enrolled pod, as the agent holds it.
struct Enrolled {
    record: PodRecord,
    netns: Netns,
    /// Its addresses in the host probe table.
    ips: Vec<IpAddr>,
}

/// The pods the agent knows, by container id.
#[derive(Default)]
struct Pods {
    enrolled: HashMap<String, Enrolled>,
    /// Pods seen at ADD but not enrolled, kept so that a later label change can
    /// enroll them (not persisted).
    others: HashMap<String, PodRecord>,
    /// ADDs and CHECKs looking enrollment up outside the lock (an API GET can take a while),
    /// by container id, each with its own ticket. A DEL meanwhile removes the container's
    /// entry: the runtime has given up on that sandbox (its ADD timed out or the pod was
    /// deleted), so an ADD must not go on to enroll it, or the agent would keep its namespace,
    /// rules and ztunnel listeners with no DEL left to come; nor may a CHECK vouch for it.
    deciding: HashMap<String, Vec<u64>>,
    next_ticket: u64,
}

impl Pods {
    /// Registers a lookup for `container_id` about to be made outside the lock.
    fn start_deciding(&mut self, container_id: &str) -> u64 {
        self.next_ticket += 1;
        self.deciding.entry(container_id.to_owned()).or_default().push(self.next_ticket);
        self.next_ticket
    }

    /// Ends the lookup holding `ticket`; `false` if a DEL of the container came meanwhile.
    fn finish_deciding(&mut self, container_id: &str, ticket: u64) -> bool {
        let Some(tickets) = self.deciding.get_mut(container_id) else { return false };
        let Some(at) = tickets.iter().position(|&t| t == ticket) else { return false };
        tickets.swap_remove(at);
        if tickets.is_empty() {
            self.deciding.remove(container_id);
        }
        true
    }
}

/// The running agent.
pub struct Agent {
    config: AgentConfig,
    enrollment: Source,
    state: StateDir,
    zds: Arc<ZdsServer>,
    /// The host namespace, for the probe table; `None` when disabled.
    host: Option<Netns>,
    /// The node's own network namespaces (the agent's and `--host-netns`): never a pod's.
    node_netns: Vec<NetnsId>,
    /// The lock also serializes pod events and reconciliation.
    pods: Mutex<Pods>,
    /// The serving tasks, stopped by [`Agent::shutdown`].
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Agent {
    /// Binds both sockets, re-adopts recorded pods whose namespace still
    /// exists, and starts serving. The tasks run on the current runtime until
    /// it shuts down.
    pub async fn start(config: AgentConfig) -> Result<Arc<Self>, AgentError> {
        let source = match config.enrollment_source {
            EnrollmentSource::Files => Source::Files(Enrollment::new(config.enrollment.clone())),
            EnrollmentSource::Kube => {
                let node = config.node_name.as_deref().ok_or(AgentError::NoNodeName)?;
                let client = kube_client(config.kubeconfig.as_deref()).await?;
                Source::Kube(kube_enroll::KubeEnrollment::start(client, node))
            }
        };
        Self::start_with(config, source).await
    }

    /// Like [`Self::start`], with the enrollment source given (`config`'s
    /// source settings are ignored).
    pub async fn start_with(config: AgentConfig, source: Source) -> Result<Arc<Self>, AgentError> {
        let mut node_netns = vec![Netns::current().map_err(AgentError::HostNetns)?.id()];
        let host = if config.no_probe_snat {
            match open_host(&config) {
                Ok(host) => {
                    // Not needed for the probe table, but still the node's: never redirected.
                    node_netns.push(host.id());
                    // A table an earlier agent kept would go on rewriting probes to addresses
                    // nobody keeps current.
                    if let Err(e) = on_host(&host, probe_snat::remove).await {
                        tracing::warn!(error = %e, "cannot remove the host probe table an earlier agent left");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open --host-netns; only the agent's own namespace is known as the node's")
                }
            }
            None
        } else {
            let host = open_host(&config).map_err(AgentError::HostNetns)?;
            if let probe_snat::Installed::Replaced { reason } = on_host(&host, probe_snat::install).await? {
                tracing::warn!(
                    error = %reason,
                    "replaced the host probe table an earlier agent left, as it could not be taken over; \
                     probes of enrolled pods are captured until the pods are re-adopted"
                );
            }
            node_netns.push(host.id());
            Some(host)
        };
        let zds_listener = SeqPacketListener::bind(&config.zds_socket)
            .map_err(|source| AgentError::Listen { path: config.zds_socket.clone(), source })?;
        let cni_listener = cni_server::bind(&config.cni_socket)
            .map_err(|source| AgentError::Listen { path: config.cni_socket.clone(), source })?;
        let agent = Arc::new(Self {
            enrollment: source,
            state: StateDir::open(&config.state_dir)?,
            host,
            node_netns,
            zds: ZdsServer::new(Duration::from_millis(config.zds_timeout_ms)),
            pods: Mutex::default(),
            tasks: std::sync::Mutex::default(),
            config,
        });
        agent.restore().await;
        let zds_task = tokio::spawn(agent.zds.clone().serve(zds_listener));
        let cni_task = tokio::spawn(cni_server::serve(cni_listener, agent.clone()));
        agent.tasks.lock().unwrap().extend([zds_task.abort_handle(), cni_task.abort_handle()]);
        if let Some(mut changes) = agent.enrollment.changes() {
            // Weak: the task must not keep a shut-down agent alive.
            let weak = Arc::downgrade(&agent);
            let task = tokio::spawn(async move {
                while changes.changed().await.is_ok() {
                    let Some(agent) = weak.upgrade() else { return };
                    agent.reconcile().await;
                }
            });
            agent.tasks.lock().unwrap().push(task.abort_handle());
        }
        tracing::info!(config = ?agent.config, "node agent started");
        Ok(agent)
    }

    /// Stops listening and drops the ztunnel connection: a restart, not an
    /// uninstall. Pods keep their redirection and records, and the host keeps
    /// its probe table (kubelet's probes keep working meanwhile), for the next
    /// agent to take over.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.zds.disconnect().await;
    }

    /// Stops as [`Self::shutdown`] does and removes the host probe table: for
    /// ztunnel leaving the node, not for a restart. Pods keep their redirection
    /// and records (their DEL or recreation removes the redirection).
    pub async fn uninstall(&self) -> Result<(), AgentError> {
        self.shutdown().await;
        match &self.host {
            Some(host) => on_host(host, probe_snat::remove).await.map_err(AgentError::Uninstall),
            None => Ok(()),
        }
    }

    /// Re-decides for every pod the agent knows, from what the source has at
    /// hand: enrolls the pods that now are, unenrolls those that no longer are.
    pub async fn reconcile(&self) {
        let mut pods = self.pods.lock().await;
        let decided = |r: &PodRecord| self.enrollment.cached(&r.namespace, &r.name);
        let leaving: Vec<String> = pods
            .enrolled
            .iter()
            .filter(|(_, p)| decided(&p.record).is_some_and(|f| !f.enrolled))
            .map(|(id, _)| id.clone())
            .collect();
        for id in leaving {
            let pod = pods.enrolled.remove(&id).expect("listed above");
            self.unenroll(&pod, &pods).await;
            tracing::info!(pod = %pod.record.name, namespace = %pod.record.namespace, "pod no longer enrolled");
            pods.others.insert(id, pod.record);
        }
        let joining: Vec<(String, enroll::PodFacts)> = pods
            .others
            .iter()
            .filter_map(|(id, r)| decided(r).filter(|f| f.enrolled).map(|f| (id.clone(), f)))
            .collect();
        for (id, facts) in joining {
            let mut record = pods.others.remove(&id).expect("listed above");
            record.capture_dns = Some(self.capture_dns(&facts.dns_capture, &record.namespace, &record.name));
            record.service_account = facts.service_account;
            let adopted = match Netns::open(&record.netns) {
                Ok(netns) => self.adopt(&record, netns).await,
                Err(e) => Err(e.to_string()),
            };
            match adopted {
                Ok((netns, ips)) => {
                    record.netns_id = Some(netns.id());
                    if let Err(e) = self.state.save(&record) {
                        tracing::warn!(error = %e, "pod enrolled but not recorded");
                    }
                    tracing::info!(
                        pod = %record.name, namespace = %record.namespace, capture_dns = ?record.capture_dns,
                        "running pod enrolled"
                    );
                    pods.enrolled.insert(id, Enrolled { record, netns, ips });
                }
                Err(e) => {
                    // Stays a candidate: the next change retries it.
                    tracing::warn!(pod = %record.name, namespace = %record.namespace, error = %e, "cannot enroll running pod");
                    pods.others.insert(id, record);
                }
            }
        }
    }

    /// Whether a pod being enrolled gets DNS capture: its annotation if that is `true` or
    /// `false`, else the global setting (with a warning for a value that is neither).
    fn capture_dns(&self, annotation: &DnsCapture, namespace: &str, name: &str) -> bool {
        let global = self.config.capture_dns;
        if let DnsCapture::Invalid(value) = annotation {
            tracing::warn!(
                pod = %name, %namespace, annotation = DNS_CAPTURE_ANNOTATION, %value, global,
                "pod annotation is neither true nor false; ignored, the global --capture-dns applies"
            );
        }
        annotation.capture(global)
    }

    /// Undoes [`Self::adopt`] for `pod`, already out of `rest`, and forgets its record, but
    /// leaves what another enrolled sandbox still uses: a pod's new sandbox takes over its uid
    /// on ZDS (a late DEL of the old one must not drop it), and an address the old one had
    /// may already be the new one's.
    async fn unenroll(&self, pod: &Enrolled, rest: &Pods) {
        let netns = pod.netns.id();
        let in_netns: Vec<&Enrolled> = rest.enrolled.values().filter(|p| p.netns.id() == netns).collect();
        if !in_netns.iter().any(|p| p.record.uid == pod.record.uid) {
            self.zds.del_in(&pod.record.uid, netns).await;
        }
        if in_netns.is_empty() {
            remove_rules(&pod.netns).await;
        }
        let ips: Vec<IpAddr> =
            pod.ips.iter().copied().filter(|ip| !rest.enrolled.values().any(|p| p.ips.contains(ip))).collect();
        self.set_probe_ips(&ips, false).await;
        if let Err(e) = self.state.remove(&pod.record.container_id) {
            tracing::warn!(error = %e, "could not delete pod record");
        }
    }

    async fn set_probe_ips(&self, ips: &[IpAddr], add: bool) {
        let Some(host) = &self.host else { return };
        let ips = ips.to_vec();
        if let Err(e) = on_host(host, move |h| probe_snat::set_pod(h, &ips, add)).await {
            tracing::warn!(error = %e, "host probe addresses");
        }
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
        for mut record in records {
            let netns = match Netns::open(&record.netns) {
                Ok(n) => n,
                Err(reason) => {
                    // The pod went away while no agent ran.
                    tracing::info!(pod = %record.name, %reason, "forgetting recorded pod");
                    let _ = self.state.remove(&record.container_id);
                    continue;
                }
            };
            // A path like /proc/<pid>/ns/net may now name another process's namespace:
            // adopting it would redirect whoever that is (possibly the node itself).
            if let Some(recorded) = record.netns_id.filter(|&r| r != netns.id()) {
                tracing::warn!(
                    pod = %record.name, namespace = %record.namespace, path = %record.netns,
                    %recorded, now = %netns.id(),
                    "recorded netns path now opens another namespace; forgetting the pod, not adopting it"
                );
                let _ = self.state.remove(&record.container_id);
                continue;
            }
            // A record from before the DNS decision was kept: the global setting now applies.
            let unpinned = record.netns_id.is_none() || record.capture_dns.is_none();
            record.capture_dns.get_or_insert(self.config.capture_dns);
            match self.adopt(&record, netns).await {
                Ok((netns, ips)) => {
                    if unpinned {
                        // A record from before namespace ids (or DNS decisions) were kept: pin it now.
                        record.netns_id = Some(netns.id());
                        if let Err(e) = self.state.save(&record) {
                            tracing::warn!(error = %e, "could not update pod record");
                        }
                    }
                    tracing::info!(pod = %record.name, namespace = %record.namespace, "re-adopted recorded pod");
                    pods.enrolled.insert(record.container_id.clone(), Enrolled { record, netns, ips });
                }
                Err(reason) => {
                    tracing::warn!(pod = %record.name, namespace = %record.namespace, %reason, "forgetting recorded pod");
                    let _ = self.state.remove(&record.container_id);
                }
            }
        }
        // The table taken over still holds the addresses of pods that went while no agent
        // ran (and whose addresses another pod may now have). Before the sockets serve,
        // nothing else changes the sets.
        if let Some(host) = &self.host {
            let ips: Vec<IpAddr> = pods.enrolled.values().flat_map(|p| p.ips.iter().copied()).collect();
            if let Err(e) = on_host(host, move |h| probe_snat::set_pods(h, &ips)).await {
                tracing::warn!(error = %e, "host probe addresses of the re-adopted pods");
            }
        }
    }

    /// Redirection, probe addresses and ZDS for one pod in `netns` (opened from
    /// `record.netns`); returns the agent's own handle and the pod's addresses.
    /// Refuses the node's own namespace: Istio never redirects a host-network
    /// pod (cni/pkg/util/podutil.go, PodRedirectionEnabled), as the rules would
    /// capture the node's own traffic. On failure nothing stays installed.
    async fn adopt(&self, record: &PodRecord, netns: Netns) -> Result<(Netns, Vec<IpAddr>), String> {
        if self.node_netns.contains(&netns.id()) {
            return Err(format!(
                "network namespace {} ({}) is the node's own (a host-network pod?); not redirecting it",
                record.netns,
                netns.id()
            ));
        }
        let for_rules = netns.try_clone().map_err(|e| e.to_string())?;
        let ips = if self.host.is_some() {
            let for_ips = netns.try_clone().map_err(|e| e.to_string())?;
            let ips = tokio::task::spawn_blocking(move || probe_snat::pod_addresses(&for_ips))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("reading the pod's addresses: {e}"))?;
            self.set_probe_ips(&ips, true).await;
            ips
        } else {
            Vec::new()
        };
        let config = RedirectConfig { capture_dns: record.capture_dns.unwrap_or(self.config.capture_dns) };
        let installed = match tokio::task::spawn_blocking(move || redirect::install(&for_rules, &config)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("installing redirection: {e}")),
            Err(e) => Err(format!("installing redirection: {e}")),
        };
        if let Err(e) = installed {
            // A partly loaded table and the probe addresses go again, as for a refusal below:
            // the pod is not enrolled, so no DEL will clean up after it.
            remove_rules(&netns).await;
            self.set_probe_ips(&ips, false).await;
            return Err(e);
        }
        let info = WorkloadInfo {
            name: record.name.clone(),
            namespace: record.namespace.clone(),
            service_account: record.service_account.clone(),
            windows_namespace: None,
        };
        let for_zds = match netns.try_clone() {
            Ok(n) => n,
            Err(e) => {
                remove_rules(&netns).await;
                self.set_probe_ips(&ips, false).await;
                return Err(e.to_string());
            }
        };
        if let Err(e) = self.zds.add(record.uid.clone(), Some(info), for_zds).await {
            remove_rules(&netns).await;
            self.set_probe_ips(&ips, false).await;
            return Err(e.to_string());
        }
        Ok((netns, ips))
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
        let ticket = self.pods.lock().await.start_deciding(&event.container_id);
        let decided = self.enrollment.pod(&namespace, &name).await;
        let mut pods = self.pods.lock().await;
        if !pods.finish_deciding(&event.container_id, ticket) {
            tracing::info!(
                pod = %name, %namespace, container = %event.container_id,
                "pod deleted (CNI DEL) while its enrollment was being decided; not enrolling it"
            );
            return CniReply::refused(format!(
                "pod {namespace}/{name} (container {}) was deleted while its enrollment was being decided",
                event.container_id
            ));
        }
        let facts = match decided {
            Ok(f) => f,
            // A sandbox an earlier ADD enrolled stays as it is: nothing was decided.
            Err(e) => return CniReply::refused(format!("cannot decide enrollment of {namespace}/{name}: {e}")),
        };
        let mut record = PodRecord {
            uid: event.pod_uid.clone().or(facts.uid).unwrap_or_else(|| event.container_id.clone()),
            container_id: event.container_id.clone(),
            netns: event.netns.clone(),
            netns_id: None,
            name,
            namespace,
            service_account: facts.service_account,
            // Decided below for an enrolled pod, at enrollment for the others.
            capture_dns: None,
        };
        // A repeated ADD of a sandbox (the runtime retries it, or runs it again) decides
        // afresh: the pod may have left the mesh since the ADD that enrolled it.
        let previous = pods.enrolled.remove(&record.container_id);
        pods.others.remove(&record.container_id);
        if !facts.enrolled {
            if let Some(previous) = previous {
                self.unenroll(&previous, &pods).await;
                tracing::info!(
                    pod = %record.name, namespace = %record.namespace, container = %record.container_id,
                    "pod no longer enrolled (repeated CNI ADD)"
                );
            }
            // Kept only where a later label change can enroll it.
            if self.enrollment.changes().is_some() {
                pods.others.insert(record.container_id.clone(), record);
            }
            return CniReply::ok(false);
        }
        let opened = Netns::open(&record.netns).map_err(|e| e.to_string());
        let previous = match previous {
            // Still the same sandbox: installed again in place, as enrolled (its DNS decision
            // included), so ztunnel keeps serving it throughout.
            Some(p) if p.record.uid == record.uid && opened.as_ref().is_ok_and(|n| n.id() == p.netns.id()) => {
                record.capture_dns = p.record.capture_dns;
                Some(p)
            }
            Some(p) => {
                self.unenroll(&p, &pods).await;
                None
            }
            None => None,
        };
        if record.capture_dns.is_none() {
            record.capture_dns = Some(self.capture_dns(&facts.dns_capture, &record.namespace, &record.name));
        }
        let adopted = match opened {
            Ok(netns) => self.adopt(&record, netns).await,
            Err(e) => Err(e),
        };
        let (netns, ips) = match adopted {
            Ok(n) => n,
            Err(e) => {
                if let Some(p) = &previous {
                    // The failed install took the rules; the rest of the earlier enrollment goes too.
                    self.unenroll(p, &pods).await;
                }
                return CniReply::refused(format!("pod {}/{}: {e}", record.namespace, record.name));
            }
        };
        if let Some(p) = &previous {
            let gone: Vec<IpAddr> = p
                .ips
                .iter()
                .copied()
                .filter(|ip| !ips.contains(ip) && !pods.enrolled.values().any(|o| o.ips.contains(ip)))
                .collect();
            self.set_probe_ips(&gone, false).await;
        }
        record.netns_id = Some(netns.id());
        if let Err(e) = self.state.save(&record) {
            tracing::warn!(error = %e, "pod enrolled but not recorded; an agent restart will not re-adopt it");
        }
        tracing::info!(
            pod = %record.name, namespace = %record.namespace, uid = %record.uid, capture_dns = ?record.capture_dns,
            "pod enrolled"
        );
        pods.enrolled.insert(record.container_id.clone(), Enrolled { record, netns, ips });
        CniReply::ok(true)
    }

    async fn del(&self, event: CniEvent) -> CniReply {
        let mut pods = self.pods.lock().await;
        pods.others.remove(&event.container_id);
        pods.deciding.remove(&event.container_id);
        let Some(pod) = pods.enrolled.remove(&event.container_id) else {
            return CniReply::ok(false);
        };
        self.unenroll(&pod, &pods).await;
        tracing::info!(pod = %pod.record.name, namespace = %pod.record.namespace, "pod removed");
        CniReply::ok(true)
    }

    /// Checks an enrolled sandbox's rules, or else that the pod is not to be enrolled. The
    /// lock is not held across the enrollment lookup (an API GET would hold up every pod event
    /// on the node) nor across reading the rules.
    async fn check(&self, event: CniEvent) -> CniReply {
        let container = &event.container_id;
        let enrolled = |pods: &Pods| pods.enrolled.get(container).map(|p| p.netns.try_clone());
        let ticket = {
            let mut pods = self.pods.lock().await;
            if let Some(netns) = enrolled(&pods) {
                drop(pods);
                return check_rules(netns).await;
            }
            pods.start_deciding(container)
        };
        let decided = match (&event.pod_namespace, &event.pod_name) {
            (Some(ns), Some(name)) => self.enrollment.pod(ns, name).await.map(|f| f.enrolled),
            _ => Ok(false),
        };
        let pod =
            format!("{}/{}", event.pod_namespace.as_deref().unwrap_or("-"), event.pod_name.as_deref().unwrap_or("-"));
        {
            let mut pods = self.pods.lock().await;
            if !pods.finish_deciding(container, ticket) {
                return CniReply::refused(format!(
                    "pod {pod} (container {container}) was deleted while its enrollment was being checked"
                ));
            }
            // Its ADD may have finished meanwhile.
            if let Some(netns) = enrolled(&pods) {
                drop(pods);
                return check_rules(netns).await;
            }
        }
        match decided {
            Ok(false) => CniReply::ok(false),
            Ok(true) => {
                CniReply::refused(format!("pod {pod} (container {container}) is enrolled but was never set up"))
            }
            Err(e) => CniReply::refused(format!("cannot decide enrollment of {pod}: {e}")),
        }
    }
}

/// CHECK of an enrolled sandbox: its redirection is in place.
async fn check_rules(netns: std::io::Result<Netns>) -> CniReply {
    let netns = match netns {
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

/// Removes what the agent keeps on the node across restarts (the host probe table, in
/// `--host-netns` or else the caller's namespace) without starting an agent, as
/// `ztunnel-agent --uninstall` does once ztunnel leaves the node; `--no-probe-snat` does
/// not matter. Nothing there is fine. An agent started afterwards installs the table again.
pub async fn uninstall_host(config: &AgentConfig) -> Result<(), AgentError> {
    let host = open_host(config).map_err(AgentError::HostNetns)?;
    on_host(&host, probe_snat::remove).await.map_err(AgentError::Uninstall)
}

/// The node's network namespace: `--host-netns`, else the agent's own.
fn open_host(config: &AgentConfig) -> std::io::Result<Netns> {
    match &config.host_netns {
        Some(path) => Netns::open(path),
        None => Netns::current(),
    }
}

/// Runs a change of the host's rules off the runtime (nft is a child process).
async fn on_host<T: Send + 'static>(
    host: &Netns,
    change: impl FnOnce(&Netns) -> Result<T, probe_snat::ProbeSnatError> + Send + 'static,
) -> Result<T, probe_snat::ProbeSnatError> {
    let host = host.try_clone().map_err(probe_snat::ProbeSnatError::Enter)?;
    tokio::task::spawn_blocking(move || change(&host))
        .await
        .map_err(|e| probe_snat::ProbeSnatError::Enter(std::io::Error::other(e)))?
}

/// A client from a kubeconfig file, or else in-cluster / default kubeconfig.
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, AgentError> {
    let config = match kubeconfig {
        Some(path) => {
            let bad = |source| AgentError::Kubeconfig { path: path.to_owned(), source };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(bad)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await.map_err(bad)?
        }
        None => kube::Config::infer().await.map_err(AgentError::KubeInfer)?,
    };
    kube::Client::try_from(config).map_err(AgentError::KubeClient)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::AgentConfig;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentConfig,
    }

    fn capture_dns(args: &[&str]) -> Result<bool, String> {
        Cli::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .map(|c| c.agent.capture_dns)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn capture_dns_flag_is_on_by_default_and_can_be_turned_off() {
        // (CAPTURE_DNS is not set for the test runs; clap would read it.)
        assert_eq!(capture_dns(&[]), Ok(true));
        assert_eq!(capture_dns(&["--capture-dns", "false"]), Ok(false));
        assert_eq!(capture_dns(&["--capture-dns=false"]), Ok(false));
        assert_eq!(capture_dns(&["--capture-dns", "0"]), Ok(false));
        assert_eq!(capture_dns(&["--capture-dns", "true"]), Ok(true));
        // The old bare form still means on, also before another flag.
        assert_eq!(capture_dns(&["--capture-dns"]), Ok(true));
        assert_eq!(capture_dns(&["--capture-dns", "--no-probe-snat"]), Ok(true));
        let err = capture_dns(&["--capture-dns", "maybe"]).unwrap_err();
        assert!(
            err.contains("--capture-dns") && err.contains("expected true or false") && err.contains("maybe"),
            "{err}"
        );
    }
}
