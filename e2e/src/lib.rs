//! Test infrastructure for the mesh: a whole cluster's network on one machine, built from
//! network namespaces and the real CNI plugins, torn down without a trace.
//!
//! # The sandbox
//!
//! Every test that builds a topology wraps its body in [`sandboxed`]. The test re-runs itself
//! (same binary, `--exact <its name>`) in a child process under `unshare --net --mount --pid`
//! with a private tmpfs on `/run` (and `TMPDIR` inside it); the child is pid 1 of its own pid
//! namespace. Everything the harness creates lives in that child: named namespaces
//! (`/run/netns`), CNI configuration and `host-local` IPAM state, logs, pcap files, and every
//! process it starts. When the child ends,
//! however it ends (success, panic, `SIGKILL`, its parent test process dying), the kernel kills
//! the pid namespace, frees the mount namespace with its namespace handles, and with them every
//! veth and bridge. Nothing is ever created in the machine's own network namespace or `/run`,
//! so tests run in parallel without name clashes and cannot route anything out.
//! The child checks that it really is in fresh namespaces before doing anything, and
//! [`Topology`] refuses to build outside a sandbox ([`Error::NotSandboxed`]).
//!
//! Drop guards still clean up on the normal path, and when a test panics: dropping a
//! [`Topology`] stops every process (and what it started: each runs in a process group of its
//! own) and server started in it, runs CNI DEL for every pod, and deletes every namespace; a test
//! can then assert with [`inventory`] that nothing is left.
//!
//! # The topology
//!
//! ```text
//!  <id>-wire    bridge wire0 ─┬─ veth node1 ── eth0 172.31.0.1  <id>-node1 ── cni0 10.244.1.1 ── pods 10.244.1.x
//!                             └─ veth node2 ── eth0 172.31.0.2  <id>-node2 ── cni0 10.244.2.1 ── pods 10.244.2.x
//! ```
//!
//! A node is a namespace with an address on the shared wire, forwarding on, and routes to the
//! other nodes' pod CIDRs. A pod is a namespace the harness attaches exactly as a container
//! runtime does: the `loopback` network, then the node's configuration list (read from the
//! node's CNI config directory at that moment) with Debian's `bridge` + `host-local` plugins and
//! any [`ChainedPlugin`]s after them, each invoked with `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH`, `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...)
//! and its configuration plus `prevResult` on stdin. Deleting a pod runs DEL through the chain
//! in reverse with the cached result. This is how the mesh's own CNI plugin gets exercised
//! (the `cni-recorder` binary of this crate is a chained plugin that records what it is given).
//!
//! # Limits
//!
//! IPv4 only (IPv6 is switched off in every namespace to keep captures free of its chatter).
//! The sandbox's pid 1 is the test process, which reaps its own children and, when it stops a
//! program, what that program left in its process group; a program that puts its children in
//! a group or session of their own (a daemon) leaves them running, and holding their network
//! namespace, until the sandbox ends ([`inventory`] lists them).
//! Inside the sandbox `/run` is empty, so nothing there from the host (DNS stub sockets, ...)
//! is reachable; tests use addresses, not names.
//!
//! # Running things
//!
//! [`Netns::exec`] runs a program to completion with a time limit, [`Netns::spawn`] starts one
//! in the background behind a [`Process`] guard, [`Netns::run_in`] runs Rust code on a thread
//! inside the namespace (bind sockets there, serve them anywhere). On top: [`Netns::curl`],
//! [`Netns::http_server`], [`Netns::h2c_server`], [`Netns::iperf3_server`], [`Netns::iperf3_client`] and
//! [`Netns::capture`] (tcpdump into a pcap file the harness parses).
#![forbid(unsafe_code)]

pub mod capture;
pub mod cni;
mod error;
pub mod grpc;
pub mod h2c;
pub mod http;
pub mod mesh;
pub mod netns;
pub mod pcap;
pub mod process;
pub mod sandbox;
pub mod scratch;
mod server_thread;
mod tools;
pub mod topology;

pub use capture::{Capture, Captured};
pub use cni::ChainedPlugin;
pub use error::Error;
pub use http::HttpServer;
pub use netns::Netns;
pub use process::{Exited, Output, Process};
pub use sandbox::{
    Inventory, RunningSandbox, SandboxOutcome, SandboxRun, inventory, run_program_sandboxed, sandboxed, sandboxed_with,
};
pub use scratch::Scratch;
pub use tools::IperfReport;
pub use topology::{Ipv4Cidr, Node, Pod, Topology, TopologyBuilder};
