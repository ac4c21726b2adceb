//! Tests of the state module: authorization semantics, endpoints and lookups, proto
//! conversion, the YAML file and its watcher.

mod authz;
mod balance;
mod convert;
mod file;
mod lookup;
mod support;
mod waypoint_gate;
