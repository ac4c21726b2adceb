//! Nodes and pods as network namespaces: nodes joined by one bridge in a "wire" namespace,
//! pods attached to their node by the node's CNI chain, routes between the nodes' pod CIDRs.
//!
//! ```text
//!  <id>-wire:   wire0 (bridge) ── node1 ── node2 ...            (veth ends, no addresses)
//!  <id>-node1:  eth0 172.31.0.1/24, cni0 10.244.1.1/24, routes to the other pod CIDRs
//!  <id>-<ns>.<pod>: lo, eth0 10.244.1.x/24 via the CNI bridge plugin, default via 10.244.1.1
//! ```

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::cni::{self, Attachment, ChainedPlugin};
use crate::netns::{Context, Netns};
use crate::{Error, sandbox};

/// Name of the bridge in the wire namespace that every node's link is attached to.
pub const WIRE_BRIDGE: &str = "wire0";

/// Where topologies keep their files (configs, IPAM state, logs); inside the sandbox's private `/run`.
pub const STATE_ROOT: &str = "/run/e2e";

/// Most nodes a topology may have (node IPs are `172.31.0.<n>`, pod CIDRs `10.244.<n>.0/24`).
pub const MAX_NODES: usize = 200;

/// An IPv4 prefix such as `10.244.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Ipv4Cidr {
    /// Whether `ip` lies inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A node: a namespace on the wire with an address, forwarding on, and a CNI setup of its own
/// (config directory, plugin directory, IPAM state), as a machine in a cluster has.
#[derive(Debug, Clone)]
pub struct Node {
    /// `node1`, `node2`, ...
    pub name: String,
    /// Address on the node link (`172.31.0.<n>`).
    pub ip: Ipv4Addr,
    /// Pods on this node get addresses from here (`10.244.<n>.0/24`).
    pub pod_cidr: Ipv4Cidr,
    /// The node's ("host network") namespace.
    pub netns: Netns,
    dir: PathBuf,
}

impl Node {
    /// Directory the node's runtime reads its CNI configuration list from (like `/etc/cni/net.d`).
    /// A node agent may rewrite the list here; pods added afterwards use the new list.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// Directory searched first for plugin executables (like `/opt/cni/bin`), before
    /// [`cni::SYSTEM_PLUGIN_DIR`].
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The `host-local` IPAM data directory of this node.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    /// A directory for node-level files of other components (sockets, state), created on demand.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Addresses `host-local` currently has allocated on this node.
    pub fn ipam_allocations(&self) -> Result<Vec<Ipv4Addr>, Error> {
        let dir = self.ipam_dir().join(cni::NETWORK_NAME);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Io { action: "read", path: dir, source }),
        };
        let mut ips: Vec<Ipv4Addr> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        ips.sort();
        Ok(ips)
    }

    fn cni_path(&self) -> Vec<PathBuf> {
        vec![self.cni_bin_dir(), PathBuf::from(cni::SYSTEM_PLUGIN_DIR)]
    }
}

/// A pod: its own namespace, attached to its node by the node's CNI chain.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Kubernetes name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name of the node it runs on.
    pub node: String,
    /// Address the CNI chain gave it.
    pub ip: Ipv4Addr,
    /// The pod's network namespace; run programs in it with [`Netns::exec`] / [`Netns::spawn`].
    pub netns: Netns,
    /// CNI_CONTAINERID used for it (the sandbox id a runtime would pass).
    pub container_id: String,
}

/// Configures a [`Topology`].
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    nodes: usize,
    chained: Vec<ChainedPlugin>,
    name: Option<String>,
}

/// What the runtime did for one pod, so it can be undone.
struct Attached {
    netns: Netns,
    namespace: String,
    name: String,
    node: usize,
    loopback: bool,
    /// Configuration list and result of the pod network's ADD.
    network: Option<(Value, Value)>,
}

/// A set of nodes and pods; dropping it (or [`Topology::teardown`]) stops every process the
/// harness started in it, runs CNI DEL for every pod and deletes every namespace.
pub struct Topology {
    ctx: Arc<Context>,
    wire: Option<Netns>,
    nodes: Vec<Node>,
    pods: Mutex<Vec<Attached>>,
    done: bool,
}

impl TopologyBuilder {
    /// Number of nodes (default 2).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Appends a plugin to every node's chain, after `bridge` (call again for more).
    pub fn chain_plugin(mut self, plugin: ChainedPlugin) -> Self {
        self.chained.push(plugin);
        self
    }

    /// Names the topology (default: the current test's name); a random suffix is added.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Creates the wire, the nodes and their routes. Only inside a sandbox.
    pub fn build(self) -> Result<Topology, Error> {
        if !sandbox::is_sandboxed() {
            return Err(Error::NotSandboxed);
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err(Error::InvalidName {
                what: "node count",
                name: self.nodes.to_string(),
                reason: "a topology has 1 to 200 nodes",
            });
        }
        let base = self.name.or_else(sandbox::current_test_name).unwrap_or_else(|| "topology".into());
        let (id, state_dir) = claim_id(&short_name(&base))?;
        mkdir(&state_dir.join("logs"))?;
        let mut topo = Topology {
            ctx: Arc::new(Context::new(id, state_dir)),
            wire: None,
            nodes: Vec::new(),
            pods: Mutex::default(),
            done: false,
        };

        let wire = Netns::create(format!("{}-wire", topo.ctx.id), topo.ctx.clone())?;
        topo.wire = Some(wire.clone());
        wire.ip(&["link", "set", "lo", "up"])?;
        wire.ip(&["link", "add", WIRE_BRIDGE, "type", "bridge"])?;
        wire.ip(&["link", "set", WIRE_BRIDGE, "up"])?;
        for n in 1..=self.nodes {
            let node = topo.add_node(n, &wire, &self.chained)?;
            topo.nodes.push(node);
        }
        for node in &topo.nodes {
            for other in topo.nodes.iter().filter(|o| o.name != node.name) {
                node.netns.ip(&["route", "add", &other.pod_cidr.to_string(), "via", &other.ip.to_string()])?;
            }
        }
        Ok(topo)
    }
}

impl Topology {
    /// A builder with two nodes and no chained plugins.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder { nodes: 2, chained: Vec::new(), name: None }
    }

    /// Unique id: test name plus a random suffix; prefix of every namespace name.
    pub fn id(&self) -> &str {
        &self.ctx.id
    }

    /// Directory holding configs, IPAM state and process logs.
    pub fn state_dir(&self) -> &Path {
        &self.ctx.state_dir
    }

    /// The nodes, in order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `n`, counting from 1 like the names (`node(1)` is `node1`). Panics if out of range.
    pub fn node(&self, n: usize) -> &Node {
        &self.nodes[n - 1]
    }

    /// The namespace holding the bridge that joins the nodes; capture on [`WIRE_BRIDGE`] here to
    /// see all traffic between nodes.
    pub fn wire(&self) -> &Netns {
        self.wire.as_ref().expect("a built topology has a wire")
    }

    /// Pods currently attached, in creation order.
    pub fn pods(&self) -> Vec<Pod> {
        self.lock_pods().iter().filter_map(|a| self.pod_of(a)).collect()
    }

    /// Creates pod `namespace/name` on `node` as a runtime does: a new namespace, the loopback
    /// network, then the node's configuration list (read from [`Node::cni_conf_dir`] now).
    /// If any plugin fails, what was set up is deleted again and the plugin's error returned.
    pub fn add_pod(&self, node: &Node, namespace: &str, name: &str) -> Result<Pod, Error> {
        dns_label("namespace", namespace)?;
        dns_label("pod", name)?;
        let index = self
            .nodes
            .iter()
            .position(|n| n.netns.name() == node.netns.name())
            .ok_or_else(|| Error::UnknownNode { node: node.name.clone(), topology: self.ctx.id.clone() })?;
        let mut pods = self.lock_pods();
        if pods.iter().any(|a| a.namespace == namespace && a.name == name) {
            return Err(Error::DuplicatePod { namespace: namespace.into(), name: name.into() });
        }
        // A `.` between namespace and name: both are DNS labels, which have none, so `a-b/c` and
        // `a/b-c` get different namespaces (with `-` both were `<id>-a-b-c`).
        let netns = Netns::create(format!("{}-{namespace}.{name}", self.ctx.id), self.ctx.clone())?;
        pods.push(Attached {
            netns,
            namespace: namespace.into(),
            name: name.into(),
            node: index,
            loopback: false,
            network: None,
        });
        let slot = pods.len() - 1;
        match self.attach(&mut pods[slot]) {
            Ok(()) => Ok(self.pod_of(&pods[slot]).expect("attached pod has an address")),
            Err(e) => {
                let failed = pods.remove(slot);
                drop(pods);
                let _ = self.detach(failed);
                Err(e)
            }
        }
    }

    /// Deletes a pod as a runtime does: CNI DEL of its network (chain in reverse, with the
    /// cached result), of loopback, then its namespace. Processes still running in it are killed
    /// by the kernel when the namespace's last user goes; stop them first to see their output.
    pub fn remove_pod(&self, pod: &Pod) -> Result<(), Error> {
        let mut pods = self.lock_pods();
        let slot = pods.iter().position(|a| a.netns.name() == pod.netns.name()).ok_or_else(|| Error::InvalidName {
            what: "pod",
            name: format!("{}/{}", pod.namespace, pod.name),
            reason: "not in this topology",
        })?;
        let attached = pods.remove(slot);
        drop(pods);
        match self.detach(attached).into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Tears everything down now and reports every step that failed.
    pub fn teardown(mut self) -> Result<(), Error> {
        let errors = self.shutdown();
        if errors.is_empty() { Ok(()) } else { Err(Error::Teardown { topology: self.ctx.id.clone(), errors }) }
    }

    fn add_node(&self, n: usize, wire: &Netns, chained: &[ChainedPlugin]) -> Result<Node, Error> {
        let name = format!("node{n}");
        let netns = Netns::create(format!("{}-{name}", self.ctx.id), self.ctx.clone())?;
        let node = Node {
            ip: Ipv4Addr::new(172, 31, 0, n as u8),
            pod_cidr: Ipv4Cidr { addr: Ipv4Addr::new(10, 244, n as u8, 0), prefix: 24 },
            dir: self.ctx.state_dir.join(&name),
            netns,
            name,
        };
        match Self::configure_node(&node, wire, chained) {
            Ok(()) => Ok(node),
            Err(e) => {
                let _ = node.netns.delete();
                Err(e)
            }
        }
    }

    fn configure_node(node: &Node, wire: &Netns, chained: &[ChainedPlugin]) -> Result<(), Error> {
        let ns = &node.netns;
        ns.ip(&["link", "set", "lo", "up"])?;
        ns.set_sysctl("net.ipv4.ip_forward", "1")?;
        wire.ip(&["link", "add", &node.name, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
        wire.ip(&["link", "set", &node.name, "master", WIRE_BRIDGE, "up"])?;
        ns.ip(&["addr", "add", &format!("{}/24", node.ip), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;

        for dir in [node.cni_conf_dir(), node.cni_bin_dir(), node.ipam_dir(), node.run_dir()] {
            mkdir(&dir)?;
        }
        for plugin in chained {
            let link = node.cni_bin_dir().join(plugin.plugin_type()?);
            let target = std::fs::canonicalize(&plugin.binary).map_err(|source| Error::Io {
                action: "find plugin",
                path: plugin.binary.clone(),
                source,
            })?;
            std::os::unix::fs::symlink(&target, &link).map_err(|source| Error::Io {
                action: "link plugin into",
                path: link,
                source,
            })?;
        }
        let list = cni::node_conflist(&node.pod_cidr.to_string(), &node.ipam_dir(), chained)?;
        let path = node.cni_conf_dir().join(cni::CONFLIST_FILE);
        let text = serde_json::to_vec_pretty(&list).unwrap_or_default();
        std::fs::write(&path, text).map_err(|source| Error::Io { action: "write", path, source })
    }

    fn attach(&self, a: &mut Attached) -> Result<(), Error> {
        let node = &self.nodes[a.node];
        let cni_path = node.cni_path();
        let mut att = Attachment {
            container_id: a.netns.name(),
            pod_netns: &a.netns,
            ifname: "lo",
            pod_namespace: &a.namespace,
            pod_name: &a.name,
            cni_path: &cni_path,
        };
        cni::add(&cni::loopback_conflist(), &node.netns, &att)?;
        a.loopback = true;
        let list = cni::load_conflist(&node.cni_conf_dir())?;
        att.ifname = "eth0";
        let result = cni::add(&list, &node.netns, &att)?;
        let pod = format!("{}/{}", a.namespace, a.name);
        cni::pod_ipv4(&result, &a.netns.path(), &pod)?;
        a.network = Some((list, result));
        Ok(())
    }

    fn detach(&self, a: Attached) -> Vec<Error> {
        let node = &self.nodes[a.node];
        let cni_path = node.cni_path();
        let mut att = Attachment {
            container_id: a.netns.name(),
            pod_netns: &a.netns,
            ifname: "eth0",
            pod_namespace: &a.namespace,
            pod_name: &a.name,
            cni_path: &cni_path,
        };
        let mut errors = Vec::new();
        if let Some((list, result)) = &a.network {
            errors.extend(cni::del(list, Some(result), &node.netns, &att).err());
        }
        if a.loopback {
            att.ifname = "lo";
            errors.extend(cni::del(&cni::loopback_conflist(), None, &node.netns, &att).err());
        }
        errors.extend(a.netns.delete().err());
        errors
    }

    fn pod_of(&self, a: &Attached) -> Option<Pod> {
        let (_, result) = a.network.as_ref()?;
        let pod = format!("{}/{}", a.namespace, a.name);
        Some(Pod {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            node: self.nodes[a.node].name.clone(),
            ip: cni::pod_ipv4(result, &a.netns.path(), &pod).ok()?,
            container_id: a.netns.name().to_owned(),
            netns: a.netns.clone(),
        })
    }

    fn lock_pods(&self) -> std::sync::MutexGuard<'_, Vec<Attached>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops processes, deletes pods (newest first), nodes, then the wire. Idempotent.
    fn shutdown(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.done, true) {
            return Vec::new();
        }
        self.ctx.reaper.stop_all();
        let mut errors = Vec::new();
        let pods: Vec<Attached> = self.lock_pods().drain(..).collect();
        for a in pods.into_iter().rev() {
            errors.extend(self.detach(a));
        }
        for node in self.nodes.iter().rev() {
            errors.extend(node.netns.delete().err());
        }
        if let Some(wire) = &self.wire {
            errors.extend(wire.delete().err());
        }
        errors
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Runs while a failing test unwinds: a panic here (eprintln! panics when stderr fails)
        // would abort the test without its message.
        use std::io::Write as _;
        for e in self.shutdown() {
            let _ = writeln!(std::io::stderr(), "e2e: teardown of {}: {e}", self.ctx.id);
        }
    }
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology").field("id", &self.ctx.id).field("nodes", &self.nodes).finish()
    }
}

/// The last path segment of a test name, made safe for namespace names and kept short.
fn short_name(test: &str) -> String {
    let last = test.rsplit("::").next().unwrap_or(test);
    let mut s: String =
        last.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(24).collect();
    while s.ends_with('-') {
        s.pop();
    }
    if s.is_empty() { "topology".into() } else { s }
}

fn dns_label(what: &'static str, name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() || name.len() > 63 {
        "must be 1 to 63 characters"
    } else if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        "only lowercase letters, digits and '-' are allowed"
    } else if name.starts_with('-') || name.ends_with('-') {
        "must start and end with a letter or digit"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName { what, name: name.into(), reason })
}

/// A topology id (`<base>-<random>`) no other topology of this sandbox has, with its state
/// directory, created here: two topologies of one test must not share namespace names or files.
fn claim_id(base: &str) -> Result<(String, PathBuf), Error> {
    mkdir(Path::new(STATE_ROOT))?;
    loop {
        let id = format!("{base}-{:04x}", rand::random::<u16>());
        let dir = Path::new(STATE_ROOT).join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(Error::Io { action: "create", path: dir, source }),
        }
    }
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io { action: "create", path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_like_kubernetes_labels() {
        assert!(dns_label("pod", "web-1").is_ok());
        for bad in ["", "Web", "web_1", "-web", "web-", &"a".repeat(64)] {
            let err = dns_label("pod", bad).unwrap_err().to_string();
            assert!(err.contains("pod name"), "{err}");
        }
    }

    #[test]
    fn short_names_fit_namespace_names() {
        assert_eq!(short_name("topology::Cross_Node_HTTP"), "cross-node-http");
        assert_eq!(short_name("a::very_long_test_name_that_goes_on_and_on"), "very-long-test-name-that");
        assert_eq!(short_name("::"), "topology");
    }

    #[test]
    fn topologies_of_one_sandbox_never_share_an_id() {
        sandbox::sandboxed(|| -> Result<(), Error> {
            // Every id but one taken: the next topology gets that one.
            let taken = 0..=u16::MAX - 1;
            for n in taken.clone() {
                mkdir(&Path::new(STATE_ROOT).join(format!("same-{n:04x}")))?;
            }
            let topo = Topology::builder().name("same").nodes(1).build()?;
            assert_eq!(topo.id(), format!("same-{:04x}", u16::MAX));
            for n in taken {
                std::fs::remove_dir(Path::new(STATE_ROOT).join(format!("same-{n:04x}"))).expect("remove");
            }
            let other = Topology::builder().name("same").nodes(1).build()?;
            assert_ne!(other.id(), topo.id());
            other.teardown()?;
            topo.teardown()?;
            assert!(sandbox::inventory()?.is_clean());
            Ok(())
        });
    }

    #[test]
    fn cidr_contains() {
        let c = Ipv4Cidr { addr: Ipv4Addr::new(10, 244, 2, 0), prefix: 24 };
        assert!(c.contains(Ipv4Addr::new(10, 244, 2, 9)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 1, 9)));
        assert_eq!(c.to_string(), "10.244.2.0/24");
    }
}
