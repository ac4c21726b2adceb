//! The harness's error type: every failure names the command, namespace, pod or file involved.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while building, using or tearing down a test topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A topology was requested outside a sandbox; the harness refuses to touch the host's network.
    #[error(
        "not inside an e2e sandbox: build topologies only inside `e2e::sandboxed` \
         (refusing to touch this machine's real network)"
    )]
    NotSandboxed,
    /// The sandbox could not be set up or the sandboxed child could not be run.
    #[error("sandbox for test {test:?}: {reason}")]
    Sandbox {
        /// Test the sandbox was for.
        test: String,
        /// What failed.
        reason: String,
    },
    /// A node, pod or namespace name is not usable.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// Kind of name (pod, namespace, ...).
        what: &'static str,
        /// The offending name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A pod with this namespace and name already exists in the topology.
    #[error("pod {namespace}/{name} already exists in this topology")]
    DuplicatePod {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// The node is not part of this topology.
    #[error("node {node:?} is not part of topology {topology:?}")]
    UnknownNode {
        /// Node name asked for.
        node: String,
        /// Topology id.
        topology: String,
    },
    /// A program could not be started.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// Command line.
        command: String,
        /// Error from the OS.
        #[source]
        source: io::Error,
    },
    /// A program ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}{stdout}")]
    CommandFailed {
        /// Command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote on stdout.
        stdout: String,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// A program did not finish in time and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed; stderr: {stderr}")]
    Timeout {
        /// Command line.
        command: String,
        /// The limit.
        after: Duration,
        /// Output up to the kill.
        stdout: String,
        /// Error output up to the kill.
        stderr: String,
    },
    /// Something did not become ready in time (a port, a log line).
    #[error("{what} not ready within {after:?}")]
    NotReady {
        /// What was awaited.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// A file or directory of the harness could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was attempted (read, write, create, ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Error from the OS.
        #[source]
        source: io::Error,
    },
    /// A thread could not be moved into a network namespace.
    #[error("cannot enter network namespace {netns}: {source}")]
    Setns {
        /// Namespace name.
        netns: String,
        /// Error from the kernel.
        #[source]
        source: nix::Error,
    },
    /// A socket operation inside a namespace failed.
    #[error("{action} in network namespace {netns}: {source}")]
    Socket {
        /// What was attempted.
        action: String,
        /// Namespace name.
        netns: String,
        /// Error from the OS.
        #[source]
        source: io::Error,
    },
    /// A CNI network configuration is unusable.
    #[error("CNI config {path}: {reason}")]
    CniConfig {
        /// Config file (or the builder's in-memory config).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A CNI plugin reported an error (CNI error result on stdout, non-zero exit).
    #[error("CNI plugin {plugin} {command} for pod {pod}: code {code}: {msg} {details}")]
    CniPlugin {
        /// Plugin type.
        plugin: String,
        /// CNI_COMMAND.
        command: &'static str,
        /// Pod (namespace/name).
        pod: String,
        /// CNI error code.
        code: u32,
        /// CNI error message.
        msg: String,
        /// CNI error details, or the plugin's stderr if it printed no error result.
        details: String,
    },
    /// A CNI plugin printed a result that is not valid CNI result JSON.
    #[error("CNI plugin {plugin} {command} for pod {pod} printed an unreadable result: {source}")]
    CniResult {
        /// Plugin type.
        plugin: String,
        /// CNI_COMMAND.
        command: &'static str,
        /// Pod (namespace/name).
        pod: String,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The CNI chain's final result gives the pod no IPv4 address.
    #[error("CNI result for pod {pod} has no IPv4 address: {result}")]
    NoPodIp {
        /// Pod (namespace/name).
        pod: String,
        /// The result JSON.
        result: String,
    },
    /// A tool printed output the harness cannot interpret.
    #[error("unreadable output from {tool}: {reason}")]
    ToolOutput {
        /// Which tool (iperf3, ...).
        tool: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A capture file is not a pcap file the harness can read.
    #[error("capture file {path} is not readable pcap: {reason}")]
    Pcap {
        /// The capture file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Tearing a topology down left errors; everything else was still removed.
    #[error("teardown of topology {topology} had {} error(s): {}", errors.len(), join(errors))]
    Teardown {
        /// Topology id.
        topology: String,
        /// Each step that failed.
        errors: Vec<Error>,
    },
}

fn join(errors: &[Error]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
