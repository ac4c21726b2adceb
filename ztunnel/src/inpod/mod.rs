//! In-pod mode: ztunnel receives enrolled pods' network namespaces from the
//! node agent over ZDS and serves each pod from inside its namespace.

pub mod seqpacket;
pub mod zds;

pub use zds::{PodHandler, ZdsClientError, run_client};

/// Where the node agent listens for ztunnel by default (Istio's path).
pub const DEFAULT_ZDS_PATH: &str = "/var/run/ztunnel/ztunnel.sock";
