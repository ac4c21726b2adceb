//! The mesh on top of a topology: a node agent and a ztunnel per node, our CNI plugin chained
//! after the standard ones, certificates from a throwaway CA, and one state file.
//!
//! What a node runs, as real processes inside the node's namespace:
//! `ztunnel-agent` (enrollment from [`MeshSpec`], redirection, ZDS server) and `ztunnel`
//! (state file, certificates for the node's pods, admin on 127.0.0.1:15000 and metrics and
//! readiness on the node address). Pods are added through the real CNI chain, so enrolled
//! pods are captured exactly as on a cluster.
//!
//! With the control plane, a [`WaypointSpec`] adds a waypoint: a `Gateway` of class
//! `istio-waypoint` in the config directory, an opted-out pod on its node, and `waypoint`
//! running in that pod's namespace with its identity from the CA (the node's bootstrap token)
//! and its pod IP as `INSTANCE_IP`.
//! Services and namespaces opt in with `istio.io/use-waypoint` ([`ServiceSpec::use_waypoint`],
//! [`MeshSpec::namespace_waypoints`]); routes go in [`MeshSpec::k8s_routes_yaml`].
//! For locality, nodes can carry a region and zone ([`MeshSpec::node_localities`]), Services
//! more of their `spec` ([`MeshSpec::service_spec_yaml`]), and a pod can stop being ready at
//! run time ([`Mesh::set_pod_ready`]).
//!
//! The binaries come from the build directory (`target/<profile>/`), or from `MESH_BIN_DIR`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hbone::testing::TestCa;
use serde_json::{Value, json};

use crate::{ChainedPlugin, Error, Pod, Process, Topology};

/// Why the mesh could not be set up or queried.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The harness failed.
    #[error(transparent)]
    Harness(#[from] Error),
    /// A file of the mesh's configuration could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A program of the mesh is not built.
    #[error("{0} not found: build the mesh first (`cargo build -p ztunnel --bins`) or set MESH_BIN_DIR")]
    MissingBinary(PathBuf),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A program of the mesh stopped while starting up; its log says why.
    #[error("{program} exited while starting; log:\n{log}")]
    Exited {
        /// Which program (and on which node).
        program: String,
        /// Its stdout and stderr.
        log: String,
    },
    /// The spec asks for something the harness cannot set up.
    #[error("unsupported mesh spec: {0}")]
    Spec(&'static str),
}

/// A pod to create.
#[derive(Debug, Clone)]
pub struct PodSpec {
    /// 1-based node number.
    pub node: usize,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Service account (its identity is `spiffe://cluster.local/ns/<namespace>/sa/<sa>`).
    pub service_account: String,
    /// `none` on the pod opts it out even in an enrolled namespace.
    pub opt_out: bool,
    /// Its `app` label (what policies' selectors match); the pod's name when empty.
    pub app: String,
    /// Its annotation `ambient.istio.io/dns-capture` (`"true"` / `"false"`), which overrides the
    /// node agents' `--capture-dns` for it; `None`: no annotation.
    pub dns_capture: Option<bool>,
}

impl PodSpec {
    /// Its `metadata.annotations` lines (indented for `metadata`), or nothing.
    fn annotations_yaml(&self) -> String {
        match self.dns_capture {
            Some(v) => format!("  annotations:\n    ambient.istio.io/dns-capture: \"{v}\"\n"),
            None => String::new(),
        }
    }

    /// A pod on `node` in `namespace`, running as service account `name`.
    pub fn new(node: usize, namespace: &str, name: &str) -> Self {
        PodSpec {
            node,
            namespace: namespace.into(),
            name: name.into(),
            service_account: name.into(),
            opt_out: false,
            app: String::new(),
            dns_capture: None,
        }
    }
}

/// A service with a VIP, backed by pods by name.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Virtual IP.
    pub vip: IpAddr,
    /// Service port.
    pub port: u16,
    /// Port on the pods.
    pub target_port: u16,
    /// `namespace/name` of the backing pods.
    pub endpoints: Vec<String>,
    /// `istio.io/use-waypoint` on the Service: the name of a waypoint in its namespace.
    pub use_waypoint: Option<String>,
}

/// A waypoint (with [`MeshSpec::control_plane`]): Gateway `namespace/name`, one pod on `node`.
#[derive(Debug, Clone)]
pub struct WaypointSpec {
    /// 1-based node number of its pod.
    pub node: usize,
    /// Namespace.
    pub namespace: String,
    /// Gateway name (also the pod's service account, as Istio names it).
    pub name: String,
    /// `istio.io/waypoint-for`: `service`, `workload` or `all`.
    pub for_: String,
    /// The program to run; default: the mesh's ([`bin`]`("waypoint")`). Lets a benchmark run
    /// two builds side by side.
    pub binary: Option<PathBuf>,
}

impl WaypointSpec {
    /// A waypoint for services.
    pub fn new(node: usize, namespace: &str, name: &str) -> Self {
        WaypointSpec { node, namespace: namespace.into(), name: name.into(), for_: "service".into(), binary: None }
    }

    /// Name of its pod.
    pub fn pod_name(&self) -> String {
        format!("{}-0", self.name)
    }
}

/// The label a waypoint's pods carry (the Gateway API's).
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The mesh's configuration.
#[derive(Debug, Clone, Default)]
pub struct MeshSpec {
    /// Nodes (2 or more for cross-node paths).
    pub nodes: usize,
    /// Namespaces labelled `istio.io/dataplane-mode=ambient`.
    pub ambient_namespaces: Vec<String>,
    /// Pods.
    pub pods: Vec<PodSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
    /// The `policies:` list of the state file, as YAML (indented as list items).
    pub policies_yaml: String,
    /// ztunnel's log format (`text` when empty).
    pub log_format: String,
    /// Run istiod-lite (on node 1) and take state from xDS and certificates from its CA, with
    /// the cluster described as Kubernetes YAML in its config directory; otherwise a state
    /// file and certificate files.
    pub control_plane: bool,
    /// With `control_plane`: `AuthorizationPolicy`/`PeerAuthentication` documents.
    pub k8s_policies_yaml: String,
    /// With `control_plane`: validity of workload certificates, in seconds (default 1 day).
    pub cert_ttl_seconds: u64,
    /// With `control_plane`: waypoints to run.
    pub waypoints: Vec<WaypointSpec>,
    /// With `control_plane`: `istio.io/use-waypoint` on namespaces, as (namespace, waypoint).
    pub namespace_waypoints: Vec<(String, String)>,
    /// With `control_plane`: `HTTPRoute`/`GRPCRoute` documents.
    pub k8s_routes_yaml: String,
    /// The node agent program to run; default: the mesh's ([`bin`]`("ztunnel-agent")`).
    pub agent_binary: Option<PathBuf>,
    /// With `control_plane`: (region, zone) of node `n` at index `n - 1`, written as `Node`
    /// objects with the `topology.kubernetes.io` labels from which istiod-lite derives each
    /// workload's locality. Empty: no `Node` objects (no workload has a locality).
    pub node_localities: Vec<(String, String)>,
    /// With `control_plane`: more of a Service's `spec` than [`ServiceSpec`] holds, as
    /// (`namespace/name`, YAML lines indented for `spec`), e.g.
    /// `  trafficDistribution: PreferClose\n`. Kept apart from [`ServiceSpec`] so that the specs
    /// written as struct literals elsewhere stay valid.
    pub service_spec_yaml: Vec<(String, String)>,
    /// Node agents capture enrolled pods' DNS for ztunnel's DNS proxy (`--capture-dns true`);
    /// `false` passes `--capture-dns false`, since the agent's own default is on.
    pub capture_dns: bool,
    /// ztunnel's upstream resolvers (`--dns-upstream`); empty: its default, the sandbox's
    /// `/etc/resolv.conf`.
    pub dns_upstreams: Vec<SocketAddr>,
}

/// A running mesh.
pub struct Mesh {
    /// The network.
    pub topo: Topology,
    /// Pods by spec order.
    pub pods: Vec<Pod>,
    spec: MeshSpec,
    ca: TestCa,
    dir: PathBuf,
    agents: Vec<Process>,
    ztunnels: Vec<Option<Process>>,
    /// Per node: the ztunnel being replaced during a roll (see [`Mesh::start_ztunnel_beside`]).
    old_ztunnels: Vec<Option<Process>>,
    /// Per node: the current ztunnel uses the second set of ports ([`ZtunnelPorts`]).
    alt_ports: Vec<bool>,
    /// The control plane, when [`MeshSpec::control_plane`].
    istiod: Option<Process>,
    /// Waypoint processes, in [`MeshSpec::waypoints`] order.
    waypoints: Vec<Process>,
    /// `namespace/name` of the pods whose `Ready` condition is `False` ([`Mesh::set_pod_ready`]).
    unready: Vec<String>,
}

/// Local ports of one ztunnel instance. Two instances run side by side on a node during a
/// roll, so the second uses a second set (the pod ports are shared through SO_REUSEPORT).
#[derive(Debug, Clone, Copy)]
struct ZtunnelPorts {
    admin: u16,
    metrics: u16,
    readiness: u16,
}

impl ZtunnelPorts {
    fn of(alt: bool) -> Self {
        if alt {
            ZtunnelPorts { admin: 15100, metrics: 15120, readiness: 15121 }
        } else {
            ZtunnelPorts { admin: 15000, metrics: 15020, readiness: 15021 }
        }
    }
}

/// Where the mesh's programs are.
pub fn bin(name: &str) -> Result<PathBuf, MeshError> {
    if let Some(d) = std::env::var_os("MESH_BIN_DIR") {
        let path = PathBuf::from(d).join(name);
        return if path.is_file() { Ok(path) } else { Err(MeshError::MissingBinary(path)) };
    }
    // Beside this program (target/<profile>/playground), or one up from a test binary
    // (target/<profile>/deps/<test>).
    let exe = std::env::current_exe().map_err(|source| MeshError::Io { path: "current_exe".into(), source })?;
    let dirs = exe.ancestors().skip(1).take(2).map(Path::to_owned).collect::<Vec<_>>();
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| MeshError::MissingBinary(dirs.last().cloned().unwrap_or_default().join(name)))
}

/// `custom` when given (it must exist), otherwise the mesh's program `name`.
fn program(custom: Option<&PathBuf>, name: &str) -> Result<PathBuf, MeshError> {
    match custom {
        Some(path) if path.is_file() => Ok(path.clone()),
        Some(path) => Err(MeshError::MissingBinary(path.clone())),
        None => bin(name),
    }
}

fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<(), MeshError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| MeshError::Io { path: parent.to_owned(), source })?;
    }
    // Write then rename, so a watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|source| MeshError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| MeshError::Io { path: path.to_owned(), source })
}

/// The uid a pod has in enrollment, ZDS and state alike.
pub fn pod_uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}

impl Mesh {
    /// Builds the topology, starts agents, adds pods through CNI, writes state and
    /// certificates, starts ztunnels, and waits until every enrolled pod is served.
    pub fn start(spec: MeshSpec) -> Result<Mesh, MeshError> {
        if !spec.waypoints.is_empty() && !spec.control_plane {
            // A waypoint takes its configuration over xDS: there is no file mode for it.
            return Err(MeshError::Spec("waypoints need control_plane"));
        }
        let agent = program(spec.agent_binary.as_ref(), "ztunnel-agent")?;
        let (cni, ztunnel) = (bin("ztunnel-cni")?, bin("ztunnel")?);
        let topo = Topology::builder()
            .nodes(spec.nodes)
            .chain_plugin(ChainedPlugin::new(&cni, json!({"agentSocket": "/nonexistent"})))
            .build()?;
        let dir = topo.state_dir().join("mesh");
        let ca = TestCa::new("e2e mesh root");
        let mut mesh = Mesh {
            topo,
            pods: Vec::new(),
            spec,
            ca,
            dir,
            agents: Vec::new(),
            ztunnels: Vec::new(),
            old_ztunnels: Vec::new(),
            alt_ports: Vec::new(),
            istiod: None,
            waypoints: Vec::new(),
            unready: Vec::new(),
        };
        // A waypoint's pod is a pod like any other, opted out of capture.
        for w in mesh.spec.waypoints.clone() {
            let mut pod = PodSpec::new(w.node, &w.namespace, &w.pod_name());
            pod.service_account = w.name.clone();
            pod.opt_out = true;
            mesh.spec.pods.push(pod);
        }
        if mesh.spec.control_plane {
            mesh.write_k8s()?;
            mesh.write_tokens()?;
            mesh.start_istiod()?;
        } else {
            mesh.write_enrollment()?;
        }
        for n in 1..=mesh.spec.nodes {
            mesh.point_cni_at_agent(n)?;
            let node = mesh.topo.node(n);
            let run = mesh.node_dir(n);
            // Always explicit: the agent captures DNS by default, and topologies without a DNS
            // proxy must not have it.
            let dns: &[&str] = &["--capture-dns", if mesh.spec.capture_dns { "true" } else { "false" }];
            let p = node.netns.spawn(
                [
                    agent.to_string_lossy().as_ref(),
                    "--zds-socket",
                    &run.join("zds.sock").to_string_lossy(),
                    "--cni-socket",
                    &run.join("cni.sock").to_string_lossy(),
                    "--enrollment",
                    &mesh.enrollment_path().to_string_lossy(),
                    "--state-dir",
                    &run.join("agent").to_string_lossy(),
                ]
                .into_iter()
                .chain(dns.iter().copied()),
            )?;
            // An agent that cannot start (no `nft`, no `ip`) exits at once: say so with its
            // log rather than wait out the timeout and report only the missing socket.
            let up = wait_for(|| run.join("cni.sock").exists() || !p.is_running(), "node agent socket", AGENT_START);
            if !p.is_running() {
                return Err(MeshError::Exited { program: format!("node{n} ztunnel-agent"), log: p.log() });
            }
            up.map_err(|e| MeshError::Timeout(format!("{e}; log:\n{}", p.log())))?;
            mesh.agents.push(p);
        }
        for spec in mesh.spec.pods.clone() {
            let pod = mesh.topo.add_pod(mesh.topo.node(spec.node), &spec.namespace, &spec.name)?;
            mesh.pods.push(pod);
        }
        if mesh.spec.control_plane {
            // Now that pods have addresses, the cluster's YAML says so.
            mesh.write_k8s()?;
        }
        mesh.write_state()?;
        for n in 1..=mesh.spec.nodes {
            mesh.write_certs(n)?;
            mesh.ztunnels.push(None);
            mesh.old_ztunnels.push(None);
            mesh.alt_ports.push(false);
            mesh.start_ztunnel(n, &ztunnel)?;
        }
        for i in 0..mesh.spec.waypoints.len() {
            let binary = program(mesh.spec.waypoints[i].binary.as_ref(), "waypoint")?;
            mesh.start_waypoint(i, &binary)?;
        }
        Ok(mesh)
    }

    /// Starts waypoint `i` of the spec in its pod and waits until it is ready.
    fn start_waypoint(&mut self, i: usize, binary: &Path) -> Result<(), MeshError> {
        let w = self.spec.waypoints[i].clone();
        let pod = self.pod(&w.namespace, &w.pod_name()).clone();
        let istiod = format!("https://{}:15012", self.topo.node(1).ip);
        let argv: Vec<String> = vec![
            binary.to_string_lossy().into_owned(),
            "--gateway".into(),
            format!("{}/{}", w.namespace, w.name),
            "--service-account".into(),
            w.name.clone(),
            "--node-name".into(),
            format!("node{}", w.node),
            "--xds-address".into(),
            istiod.clone(),
            "--alt-xds-hostname".into(),
            "istiod.istio-system.svc".into(),
            "--ca-address".into(),
            istiod,
            "--ca-token-file".into(),
            self.node_dir(w.node).join("token").to_string_lossy().into_owned(),
            "--ca-root-file".into(),
            self.dir.join("ca/root-cert.pem").to_string_lossy().into_owned(),
            "--hbone-addr".into(),
            format!("{}:15008", pod.ip),
            "--metrics-addr".into(),
            format!("{}:15020", pod.ip),
            "--readiness-addr".into(),
            format!("{}:15021", pod.ip),
            "--admin-addr".into(),
            "127.0.0.1:15000".into(),
            "--log-format".into(),
            if self.spec.log_format.is_empty() { "text".into() } else { self.spec.log_format.clone() },
        ];
        // Its pod IP, by which it finds its own workload (the source of locality-aware endpoint
        // choice), as the Deployment istiod-lite writes gives it (`status.podIP`): in the
        // environment rather than as `--instance-ip`, so that a build from before the flag
        // (`WaypointSpec::binary`, compared by the benchmarks) still starts.
        let mut cmd = pod.netns.command(argv.iter().map(String::as_str));
        cmd.env("INSTANCE_IP", pod.ip.to_string());
        let p = pod.netns.spawn_command(cmd)?;
        self.waypoints.push(p);
        let url = format!("http://{}:15021/healthz/ready", pod.ip);
        let ready = wait_for(
            || pod.netns.curl(&url, &["--fail"], Duration::from_secs(2)).is_ok_and(|o| o.success()),
            &format!("waypoint {}/{} to be ready", w.namespace, w.name),
            Duration::from_secs(20),
        );
        ready.map_err(|e| MeshError::Timeout(format!("{e}; log:\n{}", self.waypoint_log(&w.namespace, &w.name))))
    }

    fn waypoint_index(&self, namespace: &str, name: &str) -> usize {
        self.spec
            .waypoints
            .iter()
            .position(|w| w.namespace == namespace && w.name == name)
            .unwrap_or_else(|| panic!("no waypoint {namespace}/{name}"))
    }

    /// The pod of waypoint `namespace/name`.
    pub fn waypoint_pod(&self, namespace: &str, name: &str) -> &Pod {
        let w = &self.spec.waypoints[self.waypoint_index(namespace, name)];
        self.pod(namespace, &w.pod_name())
    }

    /// The log of waypoint `namespace/name` (empty before it started).
    pub fn waypoint_log(&self, namespace: &str, name: &str) -> String {
        self.waypoints.get(self.waypoint_index(namespace, name)).map(|p| p.log()).unwrap_or_default()
    }

    /// The log of waypoint `namespace/name` once `done` holds for it, or the last one read when
    /// `timeout` passes first: the waypoint writes its access lines in batches
    /// (`ztunnel::logging::FLUSH_INTERVAL`).
    pub fn waypoint_log_when(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.waypoint_log(namespace, name);
            if done(&log) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Prometheus text of waypoint `namespace/name` (port 15020 on its pod).
    pub fn waypoint_metrics(&self, namespace: &str, name: &str) -> Result<String, MeshError> {
        let pod = self.waypoint_pod(namespace, name);
        let url = format!("http://{}:15020/metrics", pod.ip);
        Ok(pod.netns.curl(&url, &["--fail"], Duration::from_secs(3))?.ok()?.stdout)
    }

    /// Replaces the route documents in the config directory.
    pub fn set_k8s_routes(&mut self, yaml: &str) -> Result<(), MeshError> {
        self.spec.k8s_routes_yaml = yaml.to_owned();
        write(&self.dir.join("config/routes.yaml"), yaml)
    }

    /// The pods' namespaces as Namespace documents, labelled for enrollment.
    fn namespaces_yaml(&self, y: &mut String) {
        let mut namespaces: Vec<&String> = self.spec.pods.iter().map(|p| &p.namespace).collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces {
            let label = if self.spec.ambient_namespaces.contains(ns) { "ambient" } else { "none" };
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/dataplane-mode: {label}\n"
            );
            for (_, wp) in self.spec.namespace_waypoints.iter().filter(|(n, _)| n == ns) {
                let _ = writeln!(y, "    istio.io/use-waypoint: {wp}");
            }
        }
    }

    /// `curl --fail` from pod `namespace/name` to `url`: the body, or why it failed.
    pub fn get(&self, from: (&str, &str), url: &str) -> Result<String, String> {
        let out =
            self.pod(from.0, from.1).netns.curl(url, &["--fail"], Duration::from_secs(5)).map_err(|e| e.to_string())?;
        if out.success() { Ok(out.stdout) } else { Err(format!("curl exit {:?}: {}", out.status.code(), out.stderr)) }
    }

    fn enrollment_path(&self) -> PathBuf {
        if self.spec.control_plane { self.dir.join("config") } else { self.dir.join("cluster.yaml") }
    }

    /// The cluster as Kubernetes YAML in istiod-lite's config directory: namespaces, pods (with
    /// their addresses once they have them), services, policies. The node agents read the
    /// same directory for enrollment.
    pub fn write_k8s(&self) -> Result<(), MeshError> {
        let mut y = String::new();
        self.namespaces_yaml(&mut y);
        for (i, p) in self.spec.pods.iter().enumerate() {
            let mut labels = format!("    app: {}\n", if p.app.is_empty() { &p.name } else { &p.app });
            if p.opt_out {
                labels.push_str("    istio.io/dataplane-mode: none\n");
            }
            for w in self.spec.waypoints.iter().filter(|w| w.namespace == p.namespace && w.pod_name() == p.name) {
                let _ = writeln!(labels, "    {GATEWAY_NAME_LABEL}: {}", w.name);
            }
            for s in self.spec.services.iter().filter(|s| s.endpoints.contains(&format!("{}/{}", p.namespace, p.name)))
            {
                let _ = writeln!(labels, "    backs-{}: \"true\"", s.name);
            }
            let annotations = p.annotations_yaml();
            let ready = if self.unready.contains(&format!("{}/{}", p.namespace, p.name)) { "False" } else { "True" };
            let status = match self.pods.get(i) {
                Some(pod) => format!(
                    "status:\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n  conditions: [{{type: Ready, status: \"{ready}\"}}]\n",
                    ip = pod.ip
                ),
                None => String::new(),
            };
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  uid: \"{}\"\n{annotations}  labels:\n{labels}spec:\n  nodeName: node{}\n  serviceAccountName: {}\n  containers: [{{name: app, image: app}}]\n{status}",
                p.name,
                p.namespace,
                pod_uid(&p.namespace, &p.name),
                p.node,
                p.service_account
            );
        }
        for s in &self.spec.services {
            let labels = match &s.use_waypoint {
                Some(wp) => format!("  labels:\n    istio.io/use-waypoint: {wp}\n"),
                None => String::new(),
            };
            let key = format!("{}/{}", s.namespace, s.name);
            let extra: String =
                self.spec.service_spec_yaml.iter().filter(|(k, _)| *k == key).map(|(_, y)| y.as_str()).collect();
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\n{labels}spec:\n  clusterIP: {}\n  selector:\n    backs-{}: \"true\"\n  ports:\n  - port: {}\n    targetPort: {}\n{extra}",
                s.name, s.namespace, s.vip, s.name, s.port, s.target_port
            );
        }
        for (n, (region, zone)) in self.spec.node_localities.iter().enumerate() {
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node{}\n  labels:\n    topology.kubernetes.io/region: {region}\n    topology.kubernetes.io/zone: {zone}\n",
                n + 1
            );
        }
        for w in &self.spec.waypoints {
            let _ = write!(
                y,
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n    istio.io/waypoint-for: {}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {{name: mesh, port: 15008, protocol: HBONE}}\n",
                w.name, w.namespace, w.for_
            );
        }
        write(&self.dir.join("config/cluster.yaml"), y)?;
        write(&self.dir.join("config/policies.yaml"), &self.spec.k8s_policies_yaml)?;
        write(&self.dir.join("config/routes.yaml"), &self.spec.k8s_routes_yaml)
    }

    /// istiod-lite's config directory (with [`MeshSpec::control_plane`]).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("config")
    }

    /// Replaces the Kubernetes policy documents in the config directory.
    pub fn set_k8s_policies(&mut self, yaml: &str) -> Result<(), MeshError> {
        self.spec.k8s_policies_yaml = yaml.to_owned();
        write(&self.dir.join("config/policies.yaml"), yaml)
    }

    fn write_tokens(&self) -> Result<(), MeshError> {
        let mut y = String::new();
        for n in 1..=self.spec.nodes {
            let token = format!("bootstrap-token-of-node{n}-{}", self.topo.id());
            let _ = writeln!(y, "node{n}: {token}");
            write(&self.node_dir(n).join("token"), &token)?;
        }
        write(&self.dir.join("bootstrap-tokens.yaml"), y)
    }

    fn start_istiod(&mut self) -> Result<(), MeshError> {
        let binary = bin("istiod-lite")?;
        let node = self.topo.node(1);
        let p = node.netns.spawn([
            binary.to_string_lossy().as_ref(),
            "--config-dir",
            &self.dir.join("config").to_string_lossy(),
            "--ca-dir",
            &self.dir.join("ca").to_string_lossy(),
            "--bootstrap-tokens",
            &self.dir.join("bootstrap-tokens.yaml").to_string_lossy(),
            "--tls-addr",
            &format!("{}:15012", node.ip),
            "--monitoring-addr",
            &format!("{}:15014", node.ip),
        ])?;
        let addr = SocketAddr::new(IpAddr::V4(node.ip), 15012);
        node.netns.wait_for_tcp(addr, Duration::from_secs(10))?;
        self.istiod = Some(p);
        Ok(())
    }

    /// Stops istiod-lite (the data plane keeps its last configuration and certificates).
    pub fn stop_istiod(&mut self) {
        if let Some(p) = self.istiod.take() {
            p.stop();
        }
    }

    /// Starts istiod-lite again.
    pub fn restart_istiod(&mut self) -> Result<(), MeshError> {
        self.stop_istiod();
        self.start_istiod()
    }

    /// istiod-lite's debug JSON at `path` on its monitoring port (15014), e.g. `/debug/connections`.
    pub fn istiod_debug(&self, path: &str) -> Result<Value, MeshError> {
        let node = self.topo.node(1);
        let out =
            node.netns.curl(&format!("http://{}:15014{path}", node.ip), &["--fail"], Duration::from_secs(3))?.ok()?;
        serde_json::from_str(&out.stdout)
            .map_err(|e| MeshError::Io { path: path.into(), source: std::io::Error::other(e) })
    }

    /// Waits until every proxy connected to istiod-lite has acknowledged resource `name` of
    /// `type_url` (in whatever version is current).
    pub fn wait_all_acked(&self, type_url: &str, name: &str, proxies: usize) -> Result<(), MeshError> {
        wait_for(
            || {
                self.istiod_debug("/debug/connections").is_ok_and(|d| {
                    let conns = d["connections"].as_array().cloned().unwrap_or_default();
                    conns.len() >= proxies && conns.iter().all(|c| c["types"][type_url]["acked"].get(name).is_some())
                })
            },
            &format!("{proxies} proxies to acknowledge {name}"),
            Duration::from_secs(10),
        )
    }

    /// Waits until at least `proxies` proxies connected to istiod-lite have acknowledged
    /// resource `name` of `type_url` (e.g. the waypoints, for the waypoint-only types that
    /// ztunnels do not subscribe to).
    pub fn wait_acked_by(&self, type_url: &str, name: &str, proxies: usize) -> Result<(), MeshError> {
        wait_for(
            || {
                self.istiod_debug("/debug/connections").is_ok_and(|d| {
                    let conns = d["connections"].as_array().cloned().unwrap_or_default();
                    conns.iter().filter(|c| c["types"][type_url]["acked"].get(name).is_some()).count() >= proxies
                })
            },
            &format!("{proxies} proxies to acknowledge {name}"),
            Duration::from_secs(10),
        )
    }

    /// istiod-lite's log.
    pub fn istiod_log(&self) -> String {
        self.istiod.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    fn node_dir(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{n}"))
    }

    /// The pod made from spec `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    fn enrolled(&self, p: &PodSpec) -> bool {
        self.spec.ambient_namespaces.contains(&p.namespace) && !p.opt_out
    }

    fn write_enrollment(&self) -> Result<(), MeshError> {
        let mut y = String::new();
        self.namespaces_yaml(&mut y);
        for p in &self.spec.pods {
            let labels = if p.opt_out { "  labels:\n    istio.io/dataplane-mode: none\n" } else { "" };
            let annotations = p.annotations_yaml();
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  uid: \"{}\"\n{annotations}{labels}spec:\n  serviceAccountName: {}\n",
                p.name,
                p.namespace,
                pod_uid(&p.namespace, &p.name),
                p.service_account
            );
        }
        write(&self.dir.join("cluster.yaml"), y)
    }

    /// Our plugin must talk to its own node's agent: rewrite the node's CNI list.
    fn point_cni_at_agent(&self, n: usize) -> Result<(), MeshError> {
        let path = self.topo.node(n).cni_conf_dir().join(crate::cni::CONFLIST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| MeshError::Io { path: path.clone(), source })?;
        let mut list: Value = serde_json::from_str(&text)
            .map_err(|e| MeshError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        if let Some(last) = list["plugins"].as_array_mut().and_then(|p| p.last_mut()) {
            last["agentSocket"] = json!(self.node_dir(n).join("cni.sock"));
        }
        write(&path, serde_json::to_vec_pretty(&list).unwrap_or_default())
    }

    /// Rewrites the state file (workloads from the pods, services, policies).
    pub fn write_state(&self) -> Result<(), MeshError> {
        let mut y = String::from("workloads:\n");
        for (spec, pod) in self.spec.pods.iter().zip(&self.pods) {
            let protocol = if self.enrolled(spec) { "HBONE" } else { "NONE" };
            let mut services = String::new();
            for s in
                self.spec.services.iter().filter(|s| s.endpoints.contains(&format!("{}/{}", spec.namespace, spec.name)))
            {
                let _ = writeln!(
                    services,
                    "    {}/{}.{}.svc.cluster.local: {{{}: {}}}",
                    s.namespace, s.name, s.namespace, s.port, s.target_port
                );
            }
            let services =
                if services.is_empty() { "  services: {}\n".to_owned() } else { format!("  services:\n{services}") };
            let _ = write!(
                y,
                "- name: {}\n  namespace: {}\n  uid: \"{}\"\n  serviceAccount: {}\n  addresses: [\"{}\"]\n  node: node{}\n  protocol: {protocol}\n  workloadName: {}\n  canonicalName: {}\n{services}",
                spec.name,
                spec.namespace,
                pod_uid(&spec.namespace, &spec.name),
                spec.service_account,
                pod.ip,
                spec.node,
                spec.name,
                spec.name
            );
        }
        y.push_str("services:\n");
        for s in &self.spec.services {
            let _ = write!(
                y,
                "- name: {}\n  namespace: {}\n  hostname: {}.{}.svc.cluster.local\n  addresses: [\"{}\"]\n  ports: [{{servicePort: {}, targetPort: {}}}]\n",
                s.name, s.namespace, s.name, s.namespace, s.vip, s.port, s.target_port
            );
        }
        y.push_str("policies:\n");
        y.push_str(&self.spec.policies_yaml);
        write(&self.dir.join("state.yaml"), y)
    }

    /// Replaces the policies and rewrites the state file.
    pub fn set_policies(&mut self, policies_yaml: &str) -> Result<(), MeshError> {
        self.spec.policies_yaml = policies_yaml.to_owned();
        self.write_state()
    }

    fn write_certs(&self, n: usize) -> Result<(), MeshError> {
        if self.spec.control_plane {
            return Ok(());
        }
        let dir = self.node_dir(n).join("certs");
        write(&dir.join("root-cert.pem"), self.ca.root_pem())?;
        let now = SystemTime::now();
        for spec in self.spec.pods.iter().filter(|p| p.node == n && self.enrolled(p)) {
            let id = hbone::Identity::new("cluster.local", &spec.namespace, &spec.service_account)
                .map_err(|e| MeshError::Io { path: dir.clone(), source: std::io::Error::other(e) })?;
            let (chain, key) = self.ca.issue_pem(&id, now - Duration::from_secs(60), now + Duration::from_secs(86400));
            let d = dir.join(&spec.namespace).join(&spec.service_account);
            write(&d.join("cert-chain.pem"), chain)?;
            write(&d.join("key.pem"), key)?;
        }
        Ok(())
    }

    fn start_ztunnel(&mut self, n: usize, binary: &Path) -> Result<(), MeshError> {
        let node = self.topo.node(n);
        let run = self.node_dir(n);
        let ip = node.ip;
        let ports = ZtunnelPorts::of(self.alt_ports[n - 1]);
        let mut argv: Vec<String> =
            vec![binary.to_string_lossy().into_owned(), "--node-name".into(), node.name.clone()];
        if self.spec.control_plane {
            // TLS to istiod by IP; its certificate names the service, as in a cluster.
            let istiod = format!("https://{}:15012", self.topo.node(1).ip);
            let ttl = if self.spec.cert_ttl_seconds == 0 { 86400 } else { self.spec.cert_ttl_seconds };
            for (flag, value) in [
                ("--xds-address", istiod.clone()),
                ("--ca-address", istiod),
                ("--alt-xds-hostname", "istiod.istio-system.svc".into()),
                ("--alt-ca-hostname", "istiod.istio-system.svc".into()),
                ("--ca-token-file", run.join("token").to_string_lossy().into_owned()),
                ("--ca-root-file", self.dir.join("ca/root-cert.pem").to_string_lossy().into_owned()),
                ("--cert-ttl-seconds", ttl.to_string()),
            ] {
                argv.push(flag.into());
                argv.push(value);
            }
        } else {
            argv.push("--state-file".into());
            argv.push(self.dir.join("state.yaml").to_string_lossy().into_owned());
            argv.push("--cert-dir".into());
            argv.push(run.join("certs").to_string_lossy().into_owned());
        }
        if !self.spec.dns_upstreams.is_empty() {
            let list: Vec<String> = self.spec.dns_upstreams.iter().map(SocketAddr::to_string).collect();
            argv.push("--dns-upstream".into());
            argv.push(list.join(","));
        }
        let p = node.netns.spawn(argv.iter().map(String::as_str).chain([
            "--zds-socket",
            &run.join("zds.sock").to_string_lossy(),
            "--admin-addr",
            &format!("127.0.0.1:{}", ports.admin),
            "--metrics-addr",
            &format!("{ip}:{}", ports.metrics),
            "--readiness-addr",
            &format!("{ip}:{}", ports.readiness),
            "--drain-seconds",
            "2",
            "--log-format",
            if self.spec.log_format.is_empty() { "text" } else { &self.spec.log_format },
        ]))?;
        self.ztunnels[n - 1] = Some(p);
        let local: Vec<&PodSpec> = self.spec.pods.iter().filter(|p| p.node == n && self.enrolled(p)).collect();
        self.wait_pods_served(n, local.len())?;
        // From the CA, certificates arrive a moment after the pods: wait for every identity.
        let ids: Vec<String> = local
            .iter()
            .map(|p| format!("spiffe://cluster.local/ns/{}/sa/{}", p.namespace, p.service_account))
            .collect();
        wait_for(
            || {
                self.config_dump(n)
                    .is_ok_and(|d| ids.iter().all(|id| d["certificates"].to_string().contains(id.as_str())))
            },
            &format!("node{n} ztunnel to hold certificates for {ids:?}"),
            Duration::from_secs(10),
        )?;
        // Pods, certificates and state arrive on separate paths (agent, CA, xDS): traffic
        // before the state knows every pod would be refused as "unknown workload".
        let ips: Vec<String> = self.pods.iter().map(|p| format!("\"{}\"", p.ip)).collect();
        self.wait_state(n, "a state with every pod's address", |s| ips.iter().all(|ip| s.contains(ip.as_str())))
    }

    /// Waits until ztunnel on node `n` serves `count` pods.
    pub fn wait_pods_served(&self, n: usize, count: usize) -> Result<(), MeshError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(dump) = self.config_dump(n)
                && dump["pods"].as_array().map(|a| a.len()) == Some(count)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self.ztunnels[n - 1].as_ref().map(|p| p.log()).unwrap_or_default();
                return Err(MeshError::Timeout(format!("node{n} ztunnel to serve {count} pods; log:\n{log}")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes pod `namespace/name` through the runtime (CNI DEL, namespace removed).
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let i = self.pod_index(namespace, name);
        let pod = self.pods[i].clone();
        self.topo.remove_pod(&pod)?;
        Ok(())
    }

    /// Creates pod `namespace/name` again from its spec (it may get a new address) and
    /// updates the state file with it.
    pub fn recreate_pod(&mut self, namespace: &str, name: &str) -> Result<&Pod, MeshError> {
        let i = self.pod_index(namespace, name);
        let node = self.spec.pods[i].node;
        self.pods[i] = self.topo.add_pod(self.topo.node(node), namespace, name)?;
        if self.spec.control_plane {
            self.write_k8s()?
        } else {
            self.write_state()?
        }
        Ok(&self.pods[i])
    }

    /// Sets pod `namespace/name`'s `Ready` condition in the cluster's YAML, as its kubelet would
    /// when a readiness probe starts failing (or passes again); the pod and its programs keep
    /// running. Services stop (or resume) choosing it once the proxies have the new config.
    pub fn set_pod_ready(&mut self, namespace: &str, name: &str, ready: bool) -> Result<(), MeshError> {
        if !self.spec.control_plane {
            return Err(MeshError::Spec("pod readiness needs control_plane"));
        }
        // A pod the spec does not have is a mistake in the test: fail as loudly as the others.
        self.pod_index(namespace, name);
        let key = format!("{namespace}/{name}");
        self.unready.retain(|k| *k != key);
        if !ready {
            self.unready.push(key);
        }
        self.write_k8s()
    }

    /// Adds a pod to the running mesh, as a runtime would: the cluster learns of it first (so
    /// the node agent can decide enrollment), it is created through the CNI chain, then its
    /// address is published (and, without the control plane, its certificate written).
    /// Does not wait for ztunnel: see [`wait_pods_served`](Self::wait_pods_served).
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<&Pod, MeshError> {
        let node = spec.node;
        self.spec.pods.push(spec);
        if self.spec.control_plane {
            self.write_k8s()?;
        } else {
            self.write_enrollment()?;
            self.write_certs(node)?;
        }
        let last = self.spec.pods.len() - 1;
        let pod =
            self.topo.add_pod(self.topo.node(node), &self.spec.pods[last].namespace, &self.spec.pods[last].name)?;
        self.pods.push(pod);
        if self.spec.control_plane {
            self.write_k8s()?
        } else {
            self.write_state()?
        }
        Ok(&self.pods[last])
    }

    fn pod_index(&self, namespace: &str, name: &str) -> usize {
        self.spec
            .pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("no pod {namespace}/{name}"))
    }

    /// Waits until ztunnel on node `n` has loaded a state that mentions `text` (an address,
    /// a policy name): the file watcher polls, so edits take effect a moment later.
    pub fn wait_state_mentions(&self, n: usize, text: &str) -> Result<(), MeshError> {
        self.wait_state(n, &format!("a state mentioning {text}"), |s| s.contains(text))
    }

    /// Waits until ztunnel on node `n` has loaded a state (as JSON text) for which `ok` holds.
    pub fn wait_state(&self, n: usize, what: &str, ok: impl Fn(&str) -> bool) -> Result<(), MeshError> {
        wait_for(
            || self.config_dump(n).is_ok_and(|d| ok(&d["state"].to_string())),
            &format!("node{n} ztunnel to load {what}"),
            Duration::from_secs(5),
        )
    }

    /// Stops ztunnel on node `n` (SIGTERM, then drain) and starts a new one.
    pub fn restart_ztunnel(&mut self, n: usize) -> Result<(), MeshError> {
        if let Some(p) = self.ztunnels[n - 1].take() {
            p.stop();
        }
        self.start_ztunnel(n, &bin("ztunnel")?)
    }

    /// Starts a second ztunnel on node `n` beside the running one, then stops the old one:
    /// a rolling restart.
    pub fn roll_ztunnel(&mut self, n: usize) -> Result<(), MeshError> {
        self.start_ztunnel_beside(n)?;
        self.stop_old_ztunnel(n);
        Ok(())
    }

    /// First half of a roll: starts a new ztunnel on node `n` beside the running one (on the
    /// other set of admin, metrics and readiness ports) and waits until it serves the node's
    /// pods. From then on [`config_dump`](Self::config_dump) and [`metrics`](Self::metrics)
    /// query the new one.
    pub fn start_ztunnel_beside(&mut self, n: usize) -> Result<(), MeshError> {
        let binary = bin("ztunnel")?;
        self.old_ztunnels[n - 1] = self.ztunnels[n - 1].take();
        self.alt_ports[n - 1] = !self.alt_ports[n - 1];
        self.start_ztunnel(n, &binary)
    }

    /// Second half of a roll: SIGTERM to the ztunnel replaced by
    /// [`start_ztunnel_beside`](Self::start_ztunnel_beside); returns once it exited.
    pub fn stop_old_ztunnel(&mut self, n: usize) -> Option<crate::Exited> {
        self.old_ztunnels[n - 1].take().map(Process::stop)
    }

    /// Stops waypoint `i` (in [`MeshSpec::waypoints`] order) as Kubernetes would: SIGTERM,
    /// then SIGKILL if it is still running after a short grace period; returns how it ended.
    /// The waypoints after it move down one place.
    pub fn stop_waypoint(&mut self, i: usize) -> crate::Exited {
        self.waypoints.remove(i).stop()
    }

    /// The ztunnel log of node `n`.
    pub fn ztunnel_log(&self, n: usize) -> String {
        self.ztunnels[n - 1].as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// ztunnel's admin config dump on node `n`.
    pub fn config_dump(&self, n: usize) -> Result<Value, MeshError> {
        let url = format!("http://127.0.0.1:{}/config_dump", ZtunnelPorts::of(self.alt_ports[n - 1]).admin);
        let out = self.topo.node(n).netns.curl(&url, &["--fail"], Duration::from_secs(3))?;
        let out = out.ok()?;
        serde_json::from_str(&out.stdout)
            .map_err(|e| MeshError::Io { path: "config_dump".into(), source: std::io::Error::other(e) })
    }

    /// ztunnel's Prometheus text on node `n`.
    pub fn metrics(&self, n: usize) -> Result<String, MeshError> {
        let url =
            format!("http://{}:{}/metrics", self.topo.node(n).ip, ZtunnelPorts::of(self.alt_ports[n - 1]).metrics);
        Ok(self.topo.node(n).netns.curl(&url, &["--fail"], Duration::from_secs(3))?.ok()?.stdout)
    }

    /// The HBONE address of a pod.
    pub fn hbone_addr(pod: &Pod) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(pod.ip), 15008)
    }
}

/// How long a node agent may take to open its CNI socket.
const AGENT_START: Duration = Duration::from_secs(10);

fn wait_for(mut f: impl FnMut() -> bool, what: &str, limit: Duration) -> Result<(), MeshError> {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            return Err(MeshError::Timeout(what.into()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The sum of the samples of metric `name` (a prefix of the sample line, e.g. `istio_requests_total`
/// or `istio_requests_total{`) in a Prometheus text page whose lines contain all of `labels`
/// (each `key="value"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
