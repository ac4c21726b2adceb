//! ztunnel: the per-node L4 proxy of the mesh, its node agent and its CNI plugin.
//!
//! - [`proxy`]: the data path (per-pod listeners, outbound, inbound, routing).
//! - `state`: workloads, services and authorization policies, and the sources that feed them.
//! - [`netns`], [`socket`]: network namespaces and the socket options of the in-pod data path.
//! - [`inpod`]: receiving pods from the node agent over ZDS.
//! - [`agent`]: the node agent: enrollment, in-pod redirection, the ZDS server.
//! - [`cni`]: the CNI plugin that reports pod events to the agent.
//! - [`control_plane_tls`]: TLS to istiod for xDS and the CA.
//! - `fuzzing` (feature `fuzzing`): properties of the conversion of xDS resources, for the
//!   libFuzzer target in `fuzz/` and the corpus-replaying test.
//! - [`admin`], [`metrics`], [`readiness`], [`logging`], [`drain`], [`certs`], [`config`],
//!   [`app`], [`runtimes`], [`malloc`]: the admin side and the wiring (the waypoint shares the
//!   last two).
//!
//! See `ARCHITECTURE.md` for the runtime split and the port table.
// Only the socket module that receives descriptors over SCM_RIGHTS, the malloc settings
// (glibc's C interface) and the scheduler slices (`sched_setattr`) may use `unsafe`.
#![deny(unsafe_code)]

pub mod admin;
pub mod agent;
pub mod app;
pub mod ca_client;
pub mod cert_report;
pub mod certs;
pub mod cni;
pub mod config;
pub mod control_plane_tls;
pub mod dns;
pub mod drain;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod inpod;
// Lives in hbone, whose handshakes need it too; the path stays for ztunnel's and the waypoint's uses.
pub use hbone::log_budget;
pub mod logging;
pub mod malloc;
pub mod metrics;
pub mod netns;
pub mod proxy;
pub mod readiness;
pub mod runtimes;
pub mod slice;
pub mod socket;
pub mod state;
#[cfg(test)]
mod test_dir;
