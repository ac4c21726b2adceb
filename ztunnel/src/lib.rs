//! ztunnel: the per-node L4 proxy of the mesh.
//!
//! See `ARCHITECTURE.md` for the runtime split and the port table.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod certs;
pub mod config;
pub mod drain;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod readiness;
