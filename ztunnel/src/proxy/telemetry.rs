//! Metric labels and access-log lines for one connection, built from what the proxy knows.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use hbone::Identity;

use std::sync::Arc;

use crate::metrics::{Reporter, ResponseFlags, SecurityPolicy, TcpLabels};
use crate::state::{Service, State, Workload};

/// The service an inbound connection to `port` of `w` most likely came through, for the
/// destination's telemetry: the tunnel names only the pod's address, so, as Istio's ztunnel
/// does, the first of the workload's services that sends one of its ports to `port` (the
/// workload's own mapping of a named target port first).
pub(crate) fn inbound_service<'s>(state: &'s State, w: &Workload, port: u16) -> Option<&'s Arc<Service>> {
    w.services.iter().find_map(|(key, own)| {
        let svc = state.service_by_key(key)?;
        let serves = svc.ports.iter().any(|(service_port, declared)| {
            own.get(service_port).copied().filter(|&p| p != 0).unwrap_or(*declared) == port
        });
        serves.then_some(svc)
    })
}

/// The two ends of a connection as far as they are known.
#[derive(Debug, Default)]
pub(crate) struct Ends<'a> {
    pub(crate) src_addr: Option<SocketAddr>,
    pub(crate) src: Option<&'a Workload>,
    pub(crate) src_identity: Option<&'a Identity>,
    pub(crate) dst_addr: Option<SocketAddr>,
    pub(crate) dst: Option<&'a Workload>,
    pub(crate) dst_identity: Option<&'a Identity>,
    pub(crate) service: Option<&'a Service>,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() { "unknown".to_owned() } else { s.to_owned() }
}

fn workload_name(w: Option<&Workload>) -> String {
    w.map(Workload::metric_name).map_or_else(|| "unknown".to_owned(), or_unknown)
}

impl Ends<'_> {
    /// Istio's labels for this connection, without response flags (`-`): those are set on the
    /// closing count of a connection refused or failed ([`crate::metrics::Opened::refused`]).
    pub(crate) fn labels(&self, reporter: Reporter, security: SecurityPolicy) -> TcpLabels {
        let ns = |w: Option<&Workload>| w.map_or_else(|| "unknown".to_owned(), |w| or_unknown(w.namespace()));
        let canon = |w: Option<&Workload>| w.map_or_else(|| "unknown".to_owned(), |w| or_unknown(&w.canonical_name));
        let rev = |w: Option<&Workload>| w.map_or_else(|| "unknown".to_owned(), |w| or_unknown(&w.canonical_revision));
        let cluster = |w: Option<&Workload>| w.map_or_else(|| "unknown".to_owned(), |w| or_unknown(&w.cluster_id));
        let principal = |i: Option<&Identity>| i.map_or_else(|| "unknown".to_owned(), |i| i.to_string());
        TcpLabels {
            reporter: reporter.as_str(),
            source_workload: workload_name(self.src),
            source_workload_namespace: ns(self.src),
            source_principal: principal(self.src_identity),
            source_canonical_service: canon(self.src),
            source_canonical_revision: rev(self.src),
            source_cluster: cluster(self.src),
            destination_workload: workload_name(self.dst),
            destination_workload_namespace: ns(self.dst),
            destination_principal: principal(self.dst_identity),
            destination_canonical_service: canon(self.dst),
            destination_canonical_revision: rev(self.dst),
            destination_service: self.service.map_or_else(|| "unknown".to_owned(), |s| or_unknown(&s.hostname)),
            destination_service_namespace: self
                .service
                .map_or_else(|| "unknown".to_owned(), |s| or_unknown(&s.namespace)),
            destination_service_name: self.service.map_or_else(|| "unknown".to_owned(), |s| or_unknown(&s.name)),
            destination_cluster: cluster(self.dst),
            request_protocol: "tcp",
            response_flags: ResponseFlags::None.as_str(),
            connection_security_policy: security.as_str(),
        }
    }

    /// One access-log line: who, to whom, what was decided, what moved, how it ended;
    /// `response_flags` as in the metrics (`-`, `DENY`, `CONNECT`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log(
        &self,
        direction: &'static str,
        flags: ResponseFlags,
        verdict: Option<&dyn Display>,
        bytes_in: u64,
        bytes_out: u64,
        duration: Duration,
        error: Option<&dyn Display>,
    ) {
        let src_workload = self.src.map(|w| format!("{}/{}", w.namespace(), w.name));
        let dst_workload = self.dst.map(|w| format!("{}/{}", w.namespace(), w.name));
        tracing::info!(
            target: "access",
            direction,
            src.addr = self.src_addr.map(tracing::field::display),
            src.workload = src_workload.as_deref(),
            src.identity = self.src_identity.map(tracing::field::display),
            dst.addr = self.dst_addr.map(tracing::field::display),
            dst.workload = dst_workload.as_deref(),
            dst.identity = self.dst_identity.map(tracing::field::display),
            dst.service = self.service.map(|s| s.hostname.as_str()),
            verdict = verdict.map(tracing::field::display),
            response_flags = flags.as_str(),
            bytes_sent = bytes_out,
            bytes_recv = bytes_in,
            duration_ms = duration.as_millis() as u64,
            error = error.map(tracing::field::display),
            "connection complete"
        );
    }
}
