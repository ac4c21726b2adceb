//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! - `state`: workloads, services and authorization policies, and the sources that feed them.

#![forbid(unsafe_code)]

pub mod state;
