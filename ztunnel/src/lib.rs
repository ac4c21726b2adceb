//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! - `state`: workloads, services and authorization policies, and the sources that feed them.

pub mod state;
