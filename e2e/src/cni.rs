//! The container runtime's side of CNI: read a node's network configuration list, run each
//! plugin with the `CNI_*` environment and its configuration on stdin, thread results through
//! the chain as `prevResult`, and undo it all in reverse on DEL (CNI spec 1.0, as libcni does).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::Error;
use crate::netns::Netns;

/// CNI spec version the harness speaks.
pub const CNI_VERSION: &str = "1.0.0";

/// Where Debian's `containernetworking-plugins` installs the standard plugins.
pub const SYSTEM_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Name of the network every node's configuration list defines (same on all nodes, as in a cluster).
pub const NETWORK_NAME: &str = "e2e-pods";

/// File name of the configuration list the harness writes into each node's CNI config directory.
pub const CONFLIST_FILE: &str = "10-e2e.conflist";

/// Bound on one plugin invocation.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A plugin appended to every node's chain after the standard `bridge` plugin, the way a mesh's
/// CNI plugin is chained in a cluster.
#[derive(Debug, Clone)]
pub struct ChainedPlugin {
    /// The plugin executable; the harness links it into each node's CNI bin directory.
    pub binary: PathBuf,
    /// The plugin's entry in the configuration list (a JSON object). `type` defaults to the
    /// executable's file name.
    pub config: Value,
}

impl ChainedPlugin {
    /// A plugin at `binary` with extra configuration `config` (a JSON object, or `null`).
    pub fn new(binary: impl Into<PathBuf>, config: Value) -> ChainedPlugin {
        ChainedPlugin { binary: binary.into(), config }
    }

    /// The plugin's `type`: the explicit one in `config`, else the executable's file name.
    pub fn plugin_type(&self) -> Result<String, Error> {
        if let Some(t) = self.config.get("type") {
            return t.as_str().map(str::to_owned).ok_or_else(|| self.bad("`type` must be a string"));
        }
        self.binary.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| self.bad("no file name"))
    }

    /// The plugin's entry for the configuration list.
    pub(crate) fn entry(&self) -> Result<Value, Error> {
        let mut obj = match &self.config {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            _ => return Err(self.bad("config must be a JSON object")),
        };
        obj.insert("type".into(), Value::String(self.plugin_type()?));
        Ok(Value::Object(obj))
    }

    fn bad(&self, reason: &str) -> Error {
        Error::CniConfig { path: self.binary.clone(), reason: format!("chained plugin: {reason}") }
    }
}

/// The configuration list for a node: `bridge` with `host-local` IPAM on the node's pod CIDR,
/// then the chained plugins.
pub(crate) fn node_conflist(pod_cidr: &str, ipam_dir: &Path, chained: &[ChainedPlugin]) -> Result<Value, Error> {
    let mut plugins = vec![json!({
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": pod_cidr }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": ipam_dir,
        },
    })];
    for p in chained {
        plugins.push(p.entry()?);
    }
    Ok(json!({ "cniVersion": CNI_VERSION, "name": NETWORK_NAME, "plugins": plugins }))
}

/// The loopback network container runtimes set up in every pod before the pod network.
pub(crate) fn loopback_conflist() -> Value {
    json!({ "cniVersion": CNI_VERSION, "name": "cni-loopback", "plugins": [{ "type": "loopback" }] })
}

/// Reads the configuration list a runtime would use: the lexically first `*.conflist` in `dir`.
pub(crate) fn load_conflist(dir: &Path) -> Result<Value, Error> {
    let io = |source| Error::Io { action: "read", path: dir.to_owned(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    let path = files
        .into_iter()
        .next()
        .ok_or_else(|| Error::CniConfig { path: dir.to_owned(), reason: "no *.conflist file".into() })?;
    let text = std::fs::read(&path).map_err(|source| Error::Io { action: "read", path: path.clone(), source })?;
    let list: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::CniConfig { path: path.clone(), reason: format!("not JSON: {e}") })?;
    validate(&list, &path)?;
    Ok(list)
}

fn validate(list: &Value, path: &Path) -> Result<(), Error> {
    let bad = |reason: &str| Error::CniConfig { path: path.to_owned(), reason: reason.to_owned() };
    list.get("name").and_then(Value::as_str).ok_or_else(|| bad("missing string field `name`"))?;
    list.get("cniVersion").and_then(Value::as_str).ok_or_else(|| bad("missing string field `cniVersion`"))?;
    let plugins = list.get("plugins").and_then(Value::as_array).ok_or_else(|| bad("missing array `plugins`"))?;
    if plugins.is_empty() {
        return Err(bad("`plugins` is empty"));
    }
    for (i, p) in plugins.iter().enumerate() {
        p.get("type").and_then(Value::as_str).ok_or_else(|| bad(&format!("plugins[{i}] has no string `type`")))?;
    }
    Ok(())
}

/// One pod's identity as the runtime passes it to plugins.
pub(crate) struct Attachment<'a> {
    /// CNI_CONTAINERID.
    pub(crate) container_id: &'a str,
    /// The pod's namespace (CNI_NETNS is its path).
    pub(crate) pod_netns: &'a Netns,
    /// CNI_IFNAME.
    pub(crate) ifname: &'a str,
    /// Kubernetes namespace of the pod.
    pub(crate) pod_namespace: &'a str,
    /// Kubernetes name of the pod.
    pub(crate) pod_name: &'a str,
    /// Directories searched for plugin executables, in order (CNI_PATH).
    pub(crate) cni_path: &'a [PathBuf],
}

impl Attachment<'_> {
    fn pod(&self) -> String {
        format!("{}/{}", self.pod_namespace, self.pod_name)
    }
}

/// Runs the chain's ADD in order inside `node` (the runtime lives in the node's namespace) and
/// returns the final result. On failure the chain is deleted again, as libcni callers do.
pub(crate) fn add(list: &Value, node: &Netns, att: &Attachment<'_>) -> Result<Value, Error> {
    let mut prev: Option<Value> = None;
    for plugin in plugins(list) {
        match invoke(list, plugin, "ADD", prev.as_ref(), node, att) {
            Ok(result) => prev = result,
            Err(e) => {
                let _ = del(list, prev.as_ref(), node, att);
                return Err(e);
            }
        }
    }
    prev.ok_or_else(|| Error::NoPodIp { pod: att.pod(), result: "chain returned no result".into() })
}

/// Runs the chain's DEL in reverse order with the cached ADD result as `prevResult`. Every
/// plugin is called even if an earlier one fails; the first error is returned.
pub(crate) fn del(list: &Value, cached: Option<&Value>, node: &Netns, att: &Attachment<'_>) -> Result<(), Error> {
    let mut first = None;
    for plugin in plugins(list).rev() {
        if let Err(e) = invoke(list, plugin, "DEL", cached, node, att) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

fn plugins(list: &Value) -> impl DoubleEndedIterator<Item = &Value> {
    list.get("plugins").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default().iter()
}

/// One plugin call: its entry plus the list's name and version (and `prevResult`) on stdin.
fn invoke(
    list: &Value,
    plugin: &Value,
    command: &'static str,
    prev: Option<&Value>,
    node: &Netns,
    att: &Attachment<'_>,
) -> Result<Option<Value>, Error> {
    let kind = plugin.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("cniVersion".into(), list["cniVersion"].clone());
    conf.insert("name".into(), list["name"].clone());
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let stdin = serde_json::to_vec(&Value::Object(conf)).unwrap_or_default();

    let binary = att.cni_path.iter().map(|d| d.join(&kind)).find(|p| p.exists()).ok_or_else(|| Error::CniPlugin {
        plugin: kind.clone(),
        command,
        pod: att.pod(),
        code: 1,
        msg: "plugin executable not found".into(),
        details: format!("searched CNI_PATH {:?}", att.cni_path),
    })?;
    let cni_path = std::env::join_paths(att.cni_path).unwrap_or_default();
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={}",
        att.pod_namespace, att.pod_name, att.container_id
    );
    let mut cmd = node.command([&binary]);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", att.container_id)
        .env("CNI_NETNS", att.pod_netns.path())
        .env("CNI_IFNAME", att.ifname)
        .env("CNI_PATH", cni_path)
        .env("CNI_ARGS", args);
    let out = crate::process::run_bounded(cmd, Some(&stdin), PLUGIN_TIMEOUT)?;

    if !out.success() {
        let err: Option<CniError> = serde_json::from_str(&out.stdout).ok();
        return Err(match err {
            Some(e) => {
                Error::CniPlugin { plugin: kind, command, pod: att.pod(), code: e.code, msg: e.msg, details: e.details }
            }
            None => Error::CniPlugin {
                plugin: kind,
                command,
                pod: att.pod(),
                code: out.status.code().unwrap_or(-1) as u32,
                msg: "exited without a CNI error result".into(),
                details: format!("stdout: {} stderr: {}", out.stdout.trim(), out.stderr.trim()),
            },
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_str(&out.stdout).map(Some).map_err(|source| Error::CniResult {
        plugin: kind,
        command,
        pod: att.pod(),
        source,
    })
}

#[derive(Deserialize)]
struct CniError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

#[derive(Deserialize)]
struct CniResult {
    #[serde(default)]
    interfaces: Vec<CniInterface>,
    #[serde(default)]
    ips: Vec<CniIp>,
}

#[derive(Deserialize)]
struct CniInterface {
    #[serde(default)]
    sandbox: String,
}

#[derive(Deserialize)]
struct CniIp {
    address: String,
    interface: Option<usize>,
}

/// The pod's IPv4 address from a CNI result: preferably one on an interface inside `sandbox`.
pub(crate) fn pod_ipv4(result: &Value, sandbox: &Path, pod: &str) -> Result<Ipv4Addr, Error> {
    let no_ip = || Error::NoPodIp { pod: pod.to_owned(), result: result.to_string() };
    let parsed: CniResult = serde_json::from_value(result.clone()).map_err(|_| no_ip())?;
    let in_pod = |ip: &CniIp| {
        ip.interface.and_then(|i| parsed.interfaces.get(i)).is_some_and(|iface| Path::new(&iface.sandbox) == sandbox)
    };
    let v4 = |ip: &CniIp| ip.address.split('/').next().and_then(|a| a.parse::<Ipv4Addr>().ok());
    parsed.ips.iter().filter(|ip| in_pod(ip)).find_map(v4).or_else(|| parsed.ips.iter().find_map(v4)).ok_or_else(no_ip)
}
