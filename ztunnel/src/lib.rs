//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! - `state`: workloads, services and authorization policies, and the sources that feed them.
//! - [`netns`], [`socket`]: network namespaces and the socket options of the in-pod data path.
//! - [`inpod`]: receiving pods from the node agent over ZDS.
//! - [`agent`]: the node agent: enrollment, in-pod redirection, the ZDS server.
//! - [`cni`]: the CNI plugin that reports pod events to the agent.

pub mod agent;
pub mod cni;
pub mod inpod;
pub mod netns;
pub mod socket;
