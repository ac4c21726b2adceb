//! The plugin's logic, apart from the process: takes the CNI environment and
//! the network configuration, returns what to print.

use std::collections::HashMap;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::event::{CniCommand, CniEvent, CniReply, read_line, write_line};

/// CNI versions this plugin speaks.
/// A chained plugin runs at its chain's version: a `1.1.0` configuration list (or one whose
/// `cniVersions` lets the runtime negotiate it) would otherwise fail every pod's ADD, and its
/// STATUS would report the node's network not ready.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Where the agent listens for plugin events unless `agentSocket` says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ztunnel/cni.sock";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Version used for errors that happen before the configuration is read.
const FALLBACK_VERSION: &str = "1.0.0";

/// The CNI parameters passed in the environment.
#[derive(Clone, Debug, Default)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// `CNI_PATH`.
    pub path: String,
    /// The first `CNI_*` variable whose value is not UTF-8, if any: refused by [`run`] as an
    /// invalid environment (code 4) rather than read in part.
    pub not_utf8: Option<&'static str>,
}

impl CniEnv {
    /// Picks the CNI variables out of an environment (`std::env::vars_os()`: a runtime may
    /// hand us bytes that are not UTF-8, in our variables or in others, and `vars()` panics on
    /// those instead of letting us answer with the error JSON the runtime reads).
    pub fn from_vars(vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Self {
        let mut env = Self::default();
        for (k, v) in vars {
            let (name, slot) = match k.to_str() {
                Some("CNI_COMMAND") => ("CNI_COMMAND", &mut env.command),
                Some("CNI_CONTAINERID") => ("CNI_CONTAINERID", &mut env.container_id),
                Some("CNI_NETNS") => ("CNI_NETNS", &mut env.netns),
                Some("CNI_IFNAME") => ("CNI_IFNAME", &mut env.ifname),
                Some("CNI_ARGS") => ("CNI_ARGS", &mut env.args),
                Some("CNI_PATH") => ("CNI_PATH", &mut env.path),
                _ => continue,
            };
            match v.into_string() {
                Ok(v) => *slot = v,
                Err(_) => {
                    env.not_utf8.get_or_insert(name);
                }
            }
        }
        env
    }
}

/// Failures, each with its CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// The configuration's `cniVersion` is not one we speak (code 1).
    #[error("unsupported cniVersion {version:?} (supported: {SUPPORTED_VERSIONS:?})")]
    IncompatibleVersion {
        /// The requested version.
        version: String,
    },
    /// A required environment variable is missing or empty (code 4).
    #[error("environment variable {name} is required for {command}")]
    MissingEnv {
        /// The variable.
        name: &'static str,
        /// The command that needs it.
        command: String,
    },
    /// An environment variable is malformed (code 4).
    #[error("environment variable {name} is invalid: {reason}")]
    InvalidEnv {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The network configuration is not valid JSON for us (code 6).
    #[error("decoding the network configuration: {0}")]
    Decode(#[source] serde_json::Error),
    /// The network configuration has a bad value (code 7).
    #[error("network configuration field {field}: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The agent could not be reached (code 11: the runtime retries).
    #[error("node agent at {socket} is unreachable: {source}")]
    AgentUnreachable {
        /// Its socket.
        socket: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer properly (code 5).
    #[error("talking to node agent at {socket}: {source}")]
    AgentIo {
        /// Its socket.
        socket: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent refused the pod (code 100).
    #[error("node agent refused the pod: {reason}")]
    AgentRefused {
        /// The agent's reason.
        reason: String,
    },
}

impl CniError {
    /// The CNI error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::IncompatibleVersion { .. } => 1,
            Self::MissingEnv { .. } | Self::InvalidEnv { .. } => 4,
            Self::AgentIo { .. } => 5,
            Self::Decode(_) => 6,
            Self::InvalidConfig { .. } => 7,
            Self::AgentUnreachable { .. } => 11,
            Self::AgentRefused { .. } => 100,
        }
    }

    /// The CNI error object to print on stdout.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let details = match self {
            Self::AgentUnreachable { source, .. } | Self::AgentIo { source, .. } => source.to_string(),
            Self::Decode(e) => e.to_string(),
            _ => String::new(),
        };
        json!({ "cniVersion": cni_version, "code": self.code(), "msg": self.to_string(), "details": details })
    }
}

/// Our keys of the network configuration; the others are ignored.
#[derive(Debug)]
struct NetConf {
    cni_version: String,
    agent_socket: Option<String>,
    agent_timeout_seconds: Option<u64>,
    exclude_namespaces: Option<Vec<String>>,
    prev_result: Option<Value>,
}

impl NetConf {
    /// Reads our keys one by one, so a wrong value names its field.
    fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(CniError::Decode)?;
        let Value::Object(mut map) = value else {
            return Err(CniError::InvalidConfig { field: "(top level)", reason: "must be a JSON object".into() });
        };
        fn field<T: for<'de> Deserialize<'de>>(
            map: &mut serde_json::Map<String, Value>,
            name: &'static str,
        ) -> Result<Option<T>, CniError> {
            match map.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => serde_json::from_value(v)
                    .map(Some)
                    .map_err(|e| CniError::InvalidConfig { field: name, reason: e.to_string() }),
            }
        }
        Ok(Self {
            cni_version: field(&mut map, "cniVersion")?
                .ok_or(CniError::InvalidConfig { field: "cniVersion", reason: "is required".into() })?,
            agent_socket: field(&mut map, "agentSocket")?,
            agent_timeout_seconds: field(&mut map, "agentTimeoutSeconds")?,
            exclude_namespaces: field(&mut map, "excludeNamespaces")?,
            prev_result: field(&mut map, "prevResult")?,
        })
    }
}

/// Runs one plugin invocation. On success returns what to print on stdout;
/// on failure, the error and the `cniVersion` to print it with.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Value, (CniError, String)> {
    let fallback = || FALLBACK_VERSION.to_owned();
    if env.command == "VERSION" {
        // The configuration may be absent or only carry cniVersion.
        let version = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_owned))
            .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
            .unwrap_or_else(fallback);
        return Ok(json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS }));
    }
    let conf = NetConf::parse(stdin).map_err(|e| (e, fallback()))?;
    let version = conf.cni_version.clone();
    run_with(env, &conf).map_err(|e| {
        let v = if SUPPORTED_VERSIONS.contains(&version.as_str()) { version.clone() } else { fallback() };
        (e, v)
    })
}

fn run_with(env: &CniEnv, conf: &NetConf) -> Result<Value, CniError> {
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::IncompatibleVersion { version: conf.cni_version.clone() });
    }
    if let Some(name) = env.not_utf8 {
        return Err(CniError::InvalidEnv { name, reason: "the value is not UTF-8".into() });
    }
    let command = match env.command.as_str() {
        "ADD" => CniCommand::Add,
        "DEL" => CniCommand::Del,
        "CHECK" => {
            if conf.cni_version.starts_with("0.3.") {
                return Err(CniError::IncompatibleVersion { version: conf.cni_version.clone() });
            }
            CniCommand::Check
        }
        // CNI 1.1's verbs. GC: this plugin holds no per-attachment resources of its own (the
        // agent drops pods at their DEL, or at restart when their namespace is gone). STATUS
        // succeeds whether the agent is up or not: a failing STATUS makes the runtime report
        // the whole node's network not ready, while pods outside the mesh could still start,
        // and an enrolled pod's ADD already fails closed while the agent is away.
        "GC" | "STATUS" if conf.cni_version == "1.1.0" => return Ok(Value::Null),
        "GC" | "STATUS" => return Err(CniError::IncompatibleVersion { version: conf.cni_version.clone() }),
        "" => return Err(CniError::MissingEnv { name: "CNI_COMMAND", command: "any command".into() }),
        other => {
            return Err(CniError::InvalidEnv { name: "CNI_COMMAND", reason: format!("unknown command {other:?}") });
        }
    };
    let required = |name: &'static str, value: &str| {
        if value.is_empty() { Err(CniError::MissingEnv { name, command: env.command.clone() }) } else { Ok(()) }
    };
    required("CNI_CONTAINERID", &env.container_id)?;
    required("CNI_IFNAME", &env.ifname)?;
    if command != CniCommand::Del {
        required("CNI_NETNS", &env.netns)?;
    }
    let args = parse_args(&env.args)?;
    if let Some(t) = conf.agent_timeout_seconds
        && t == 0
    {
        return Err(CniError::InvalidConfig { field: "agentTimeoutSeconds", reason: "must be at least 1".into() });
    }
    let event = CniEvent {
        command,
        container_id: env.container_id.clone(),
        netns: env.netns.clone(),
        ifname: env.ifname.clone(),
        pod_namespace: args.get("K8S_POD_NAMESPACE").cloned(),
        pod_name: args.get("K8S_POD_NAME").cloned(),
        pod_uid: args.get("K8S_POD_UID").cloned(),
    };
    let excluded = conf.exclude_namespaces.clone().unwrap_or_else(|| vec!["kube-system".into()]);
    let skip = event.pod_namespace.as_ref().is_some_and(|ns| excluded.contains(ns));
    if !skip {
        let socket = conf.agent_socket.as_deref().unwrap_or(DEFAULT_AGENT_SOCKET);
        let timeout = conf.agent_timeout_seconds.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT);
        match ask_agent(socket, timeout, &event) {
            Ok(reply) if reply.ok => {}
            Ok(reply) => {
                return Err(CniError::AgentRefused { reason: reply.error.unwrap_or_else(|| "no reason given".into()) });
            }
            // Tearing down must not be blocked by the agent being away.
            Err(e) if command == CniCommand::Del => {
                eprintln!("ztunnel-cni: DEL of {}: {e}; continuing", env.container_id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(match command {
        CniCommand::Add => conf.prev_result.clone().unwrap_or_else(|| json!({ "cniVersion": conf.cni_version })),
        // DEL and CHECK print nothing on success.
        CniCommand::Del | CniCommand::Check => Value::Null,
    })
}

/// Parses `CNI_ARGS` (`K=V;K=V`).
fn parse_args(args: &str) -> Result<HashMap<String, String>, CniError> {
    let mut out = HashMap::new();
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CniError::InvalidEnv { name: "CNI_ARGS", reason: format!("{pair:?} is not KEY=VALUE") })?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

fn ask_agent(socket: &str, timeout: Duration, event: &CniEvent) -> Result<CniReply, CniError> {
    let stream = UnixStream::connect(socket)
        .map_err(|source| CniError::AgentUnreachable { socket: socket.to_owned(), source })?;
    let io = |source| CniError::AgentIo { socket: socket.to_owned(), source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    write_line(&stream, event).map_err(io)?;
    read_line(BufReader::new(&stream)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> CniEnv {
        CniEnv {
            command: command.into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=p".into(),
            path: "/opt/cni/bin".into(),
            not_utf8: None,
        }
    }

    /// A runtime's bytes that are not UTF-8 get the CNI error for an invalid environment,
    /// naming the variable, not a panic without an answer; in other variables they are ignored.
    #[test]
    fn a_cni_variable_that_is_not_utf8_is_an_invalid_environment() {
        use std::os::unix::ffi::OsStringExt;
        let os = |s: &[u8]| std::ffi::OsString::from_vec(s.to_vec());
        let vars = [
            (os(b"CNI_COMMAND"), os(b"ADD")),
            (os(b"CNI_CONTAINERID"), os(b"c1")),
            (os(b"CNI_NETNS"), os(b"/var/run/netns/x")),
            (os(b"CNI_IFNAME"), os(b"eth0")),
            (os(b"CNI_ARGS"), os(b"K8S_POD_NAME=\xff")),
            (os(b"UNRELATED"), os(b"\xfe")),
        ];
        let env = CniEnv::from_vars(vars);
        let (e, _) = run(&env, br#"{"cniVersion":"1.0.0","name":"k8s","type":"ztunnel-cni"}"#).unwrap_err();
        assert!(matches!(e, CniError::InvalidEnv { name: "CNI_ARGS", .. }), "{e}");
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_ARGS"), "{e}");
    }

    #[test]
    fn version_lists_supported() {
        let out = run(&env("VERSION"), br#"{"cniVersion":"0.4.0"}"#).unwrap();
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(out["supportedVersions"], json!(SUPPORTED_VERSIONS));
    }

    #[test]
    fn bad_inputs_get_codes() {
        let (e, v) = run(&env("ADD"), b"{not json").unwrap_err();
        assert_eq!((e.code(), v.as_str()), (6, "1.0.0"));
        let (e, _) = run(&env("ADD"), br#"{"cniVersion":"9.9.9"}"#).unwrap_err();
        assert_eq!(e.code(), 1);
        let (e, _) = run(&env("ADD"), br#"{"cniVersion":"1.0.0","agentSocket":7}"#).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_json("1.0.0")["msg"].as_str().unwrap().contains("agentSocket: invalid type"));
        assert_eq!(run(&env("ADD"), br#"{"name":"x"}"#).unwrap_err().0.code(), 7);
        assert_eq!(run(&env("ADD"), b"[1]").unwrap_err().0.code(), 7);
        let mut no_netns = env("ADD");
        no_netns.netns.clear();
        let (e, _) = run(&no_netns, br#"{"cniVersion":"1.0.0"}"#).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_NETNS"));
        let mut bad_args = env("ADD");
        bad_args.args = "K8S_POD_NAME".into();
        assert_eq!(run(&bad_args, br#"{"cniVersion":"1.0.0"}"#).unwrap_err().0.code(), 4);
        assert_eq!(run(&env("FROB"), br#"{"cniVersion":"1.0.0"}"#).unwrap_err().0.code(), 4);
        assert_eq!(run(&env("CHECK"), br#"{"cniVersion":"0.3.1"}"#).unwrap_err().0.code(), 1);
    }

    #[test]
    fn cni_1_1_chains_pass_through_and_gc_status_succeed() {
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"ztunnel-cni","agentSocket":"/nonexistent/sock",
            "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.5/24"}]}}"#;
        let out = run(&env("ADD"), conf).unwrap();
        assert_eq!(out["ips"][0]["address"], "10.0.0.5/24");
        // GC and STATUS come without a container; with the agent away they still succeed.
        let bare = CniEnv { command: "GC".into(), ..CniEnv::default() };
        let gc = br#"{"cniVersion":"1.1.0","name":"n","type":"ztunnel-cni","agentSocket":"/nonexistent/sock",
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#;
        assert_eq!(run(&bare, gc).unwrap(), Value::Null);
        let status = CniEnv { command: "STATUS".into(), ..CniEnv::default() };
        assert_eq!(run(&status, br#"{"cniVersion":"1.1.0","agentSocket":"/nonexistent/sock"}"#).unwrap(), Value::Null);
        // Not verbs of the older versions.
        assert_eq!(run(&status, br#"{"cniVersion":"1.0.0"}"#).unwrap_err().0.code(), 1);
    }

    #[test]
    fn excluded_namespace_passes_prev_result_without_agent() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"ztunnel-cni","agentSocket":"/nonexistent/sock",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}]}}"#;
        let out = run(&env("ADD"), conf).unwrap();
        assert_eq!(out["ips"][0]["address"], "10.0.0.5/24");
    }

    #[test]
    fn unreachable_agent_fails_add_closed_but_not_del() {
        let mut e = env("ADD");
        e.args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p".into();
        let conf = br#"{"cniVersion":"1.0.0","agentSocket":"/nonexistent/sock"}"#;
        assert_eq!(run(&e, conf).unwrap_err().0.code(), 11);
        e.command = "DEL".into();
        assert_eq!(run(&e, conf).unwrap(), Value::Null);
    }
}
