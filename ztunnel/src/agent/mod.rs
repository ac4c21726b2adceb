//! The node agent: decides which pods are enrolled, installs their
//! redirection and hands their namespaces to ztunnel.

pub mod redirect;
pub mod zds_server;
