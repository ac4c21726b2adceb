//! The CNI plugin (`ztunnel-cni`), chained last in the pod network's CNI
//! configuration: it reports each pod's ADD, DEL and CHECK to the node agent,
//! which decides whether the pod is enrolled and sets up its redirection.
//!
//! ADD passes `prevResult` through unchanged. When the agent cannot be
//! reached, ADD fails with CNI error 11 ("try again later") so no enrolled pod
//! ever starts without its redirection (fail closed); pods in
//! `excludeNamespaces` (default `kube-system`) never consult the agent, so the
//! node's own infrastructure can start while the agent is down. DEL succeeds
//! when the agent is away: the agent drops pods whose namespace is gone when it
//! restarts. It speaks CNI 0.3.0 to 1.1.0; 1.1's GC and STATUS always succeed (STATUS does
//! not depend on the agent: a failing STATUS marks the whole node's network not ready).

pub mod event;
pub mod plugin;

pub use event::{CniCommand, CniEvent, CniReply};
pub use plugin::{CniEnv, CniError, DEFAULT_AGENT_SOCKET, SUPPORTED_VERSIONS, run};
