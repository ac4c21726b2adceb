//! Istio's standard TCP metrics, with Istio's names and labels, so existing dashboards work.
//!
//! Labels are computed once per connection ([`Opened::new`]); a carried connection's counters
//! are cloned handles ([`Opened::carried`]), so closing it touches no map.

use std::sync::Arc;

use hbone::http2::Refusal;
use hbone::http2::refusals::{PROTOCOL_ERROR_CODES, protocol_errors};
use hbone::tunnel::server::MalformedConnect;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Which proxy of the connection reports it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The client side's proxy.
    Source,
    /// The server side's proxy.
    Destination,
}

impl Reporter {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// How the connection was secured.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SecurityPolicy {
    /// Carried over HBONE (mutual TLS).
    MutualTls,
    /// Plaintext (outside the mesh, or passthrough).
    None,
}

impl SecurityPolicy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::None => "unknown",
        }
    }
}

/// Why a connection went no further, as Istio's ztunnel writes it in `response_flags` (the
/// Envoy-style label): on the closing count of a connection that was counted opened and then
/// refused by policy or never reached its upstream.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ResponseFlags {
    /// Carried (however it ended afterwards): `-`.
    None,
    /// Refused by authorization policy (or by the destination's waypoint-only rule): `DENY`.
    Deny,
    /// The connection to the upstream (the workload, the passthrough destination, the HBONE
    /// tunnel) failed: `CONNECT`.
    Connect,
}

impl ResponseFlags {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlags::None => "-",
            ResponseFlags::Deny => "DENY",
            ResponseFlags::Connect => "CONNECT",
        }
    }
}

/// Istio's TCP metric labels. `source_app`/`source_version` and `destination_app`/
/// `destination_version` are written from the canonical service and revision when encoded, as
/// Istio's ztunnel fills them, so each connection's label set holds them once.
#[derive(Clone, Debug, Hash, PartialEq, Eq, Default)]
pub struct TcpLabels {
    /// `source` or `destination` ([`Reporter::as_str`]).
    pub reporter: &'static str,
    /// Source workload name (the deployment's name).
    pub source_workload: String,
    /// Source workload's namespace.
    pub source_workload_namespace: String,
    /// Source identity, `spiffe://...`, or `unknown`.
    pub source_principal: String,
    /// Source canonical service.
    pub source_canonical_service: String,
    /// Source canonical revision.
    pub source_canonical_revision: String,
    /// Source cluster.
    pub source_cluster: String,
    /// Destination workload name.
    pub destination_workload: String,
    /// Destination workload's namespace.
    pub destination_workload_namespace: String,
    /// Destination identity.
    pub destination_principal: String,
    /// Destination canonical service.
    pub destination_canonical_service: String,
    /// Destination canonical revision.
    pub destination_canonical_revision: String,
    /// Destination service hostname, when reached through a service.
    pub destination_service: String,
    /// Destination service's namespace.
    pub destination_service_namespace: String,
    /// Destination service's name.
    pub destination_service_name: String,
    /// Destination cluster.
    pub destination_cluster: String,
    /// Always `tcp` here.
    pub request_protocol: &'static str,
    /// [`ResponseFlags::as_str`]; `-` but on the closing count of a refused or failed connection.
    pub response_flags: &'static str,
    /// How the connection was secured ([`SecurityPolicy::as_str`]).
    pub connection_security_policy: &'static str,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        [
            ("reporter", self.reporter),
            ("source_workload", &self.source_workload),
            ("source_canonical_service", &self.source_canonical_service),
            ("source_canonical_revision", &self.source_canonical_revision),
            ("source_workload_namespace", &self.source_workload_namespace),
            ("source_principal", &self.source_principal),
            ("source_app", &self.source_canonical_service),
            ("source_version", &self.source_canonical_revision),
            ("source_cluster", &self.source_cluster),
            ("destination_service", &self.destination_service),
            ("destination_service_namespace", &self.destination_service_namespace),
            ("destination_service_name", &self.destination_service_name),
            ("destination_workload", &self.destination_workload),
            ("destination_canonical_service", &self.destination_canonical_service),
            ("destination_canonical_revision", &self.destination_canonical_revision),
            ("destination_workload_namespace", &self.destination_workload_namespace),
            ("destination_principal", &self.destination_principal),
            ("destination_app", &self.destination_canonical_service),
            ("destination_version", &self.destination_canonical_revision),
            ("destination_cluster", &self.destination_cluster),
            ("request_protocol", self.request_protocol),
            ("response_flags", self.response_flags),
            ("connection_security_policy", self.connection_security_policy),
        ]
        .encode(encoder)
    }
}

/// ztunnel's metric families.
#[derive(Debug, Default)]
pub struct Metrics {
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    /// Connections refused, by reason (policy, no route, ...): the "why" behind denials.
    denied: Family<DenyLabels, Counter>,
    /// The pods' DNS proxy ([`crate::dns`]).
    pub dns: crate::dns::DnsMetrics,
}

/// Labels of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// Short machine-readable reason.
    pub reason: &'static str,
}

impl Metrics {
    /// Registers the families in `registry` and returns them.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Metrics { dns: crate::dns::DnsMetrics::register(registry), ..Metrics::default() };
        registry.register("istio_tcp_connections_opened", "Total TCP connections opened", m.opened.clone());
        registry.register("istio_tcp_connections_closed", "Total TCP connections closed", m.closed.clone());
        registry.register("istio_tcp_sent_bytes", "Bytes sent during response (destination to source)", m.sent.clone());
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received during request (source to destination)",
            m.received.clone(),
        );
        registry.register("ztunnel_connections_denied", "Connections refused, by reason", m.denied.clone());
        register_hbone(registry);
        registry.register_collector(Box::new(SliceCollector));
        registry.register_collector(Box::new(CertFetchCollector));
        Arc::new(m)
    }

    /// Counts a refused connection.
    pub fn denied(&self, reporter: Reporter, reason: &'static str) {
        self.denied.get_or_create(&DenyLabels { reporter: reporter.as_str(), reason }).inc();
    }
}

/// A connection counted as opened while it is still being decided on. As in Istio's ztunnel, a
/// connection is counted opened once its ends are known, before policy and the upstream
/// connect; one that goes no further is counted closed with the reason ([`Opened::refused`]),
/// one that goes on gets its counters ([`Opened::carried`]). Dropped undecided (the client
/// went away, the task was cancelled), it is counted closed with no flag, so that opened and
/// closed always balance.
#[derive(Debug)]
pub struct Opened<'m> {
    metrics: &'m Metrics,
    labels: TcpLabels,
    decided: bool,
}

impl<'m> Opened<'m> {
    /// Counts the connection as opened (its flags are those of `labels`, `-`).
    pub fn new(metrics: &'m Metrics, labels: TcpLabels) -> Self {
        metrics.opened.get_or_create(&labels).inc();
        Opened { metrics, labels, decided: false }
    }

    /// Counts the connection as closed, never carried, because of `flags`.
    pub fn refused(mut self, flags: ResponseFlags) {
        self.decided = true;
        self.labels.response_flags = flags.as_str();
        self.metrics.closed.get_or_create(&self.labels).inc();
    }

    /// The connection goes on: its counters, resolved now; the labels are not kept.
    pub fn carried(mut self) -> ConnMetrics {
        self.decided = true;
        ConnMetrics {
            closed: self.metrics.closed.get_or_create_owned(&self.labels),
            sent: self.metrics.sent.get_or_create_owned(&self.labels),
            received: self.metrics.received.get_or_create_owned(&self.labels),
        }
    }
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        if !self.decided {
            self.metrics.closed.get_or_create(&self.labels).inc();
        }
    }
}

/// A carried connection's counters, resolved once ([`Opened::carried`]).
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    closed: Counter,
    sent: Counter,
    received: Counter,
}

impl ConnMetrics {
    /// Counts the connection as closed with the bytes it moved: `received` from the source,
    /// `sent` back to it.
    pub fn close(self, received: u64, sent: u64) {
        self.received.inc_by(received);
        self.sent.inc_by(sent);
        self.closed.inc();
    }
}

/// The CA client's process-wide fetch failures by reason ([`crate::ca_client::fetch_failures`]),
/// read at scrape time: a node whose pods cannot get certificates says so, and why, before
/// their connections fail.
#[derive(Debug)]
struct CertFetchCollector;

impl Collector for CertFetchCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = e.encode_descriptor(
            "ztunnel_certificate_fetch_failures",
            "Workload certificate requests that failed, by reason (the CA refused, a bad or refused answer, no token, ...)",
            None,
            MetricType::Counter,
        )?;
        for (reason, n) in crate::ca_client::fetch_failures() {
            ConstCounter::new(n).encode(family.encode_family(&ReasonLabel { reason })?)?;
        }
        Ok(())
    }
}

/// Registers the HBONE server's process-wide counters (streams refused, by reason), read at
/// scrape time; for every program that serves HBONE.
pub fn register_hbone(registry: &mut Registry) {
    registry.register_collector(Box::new(HboneCollector));
}

#[derive(Debug)]
struct HboneCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

impl Collector for HboneCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut family = e.encode_descriptor(
            "hbone_streams_refused",
            "HBONE streams refused with REFUSED_STREAM, by reason",
            None,
            MetricType::Counter,
        )?;
        for r in Refusal::ALL {
            ConstCounter::new(r.total()).encode(family.encode_family(&ReasonLabel { reason: r.as_str() })?)?;
        }
        let mut family = e.encode_descriptor(
            "hbone_protocol_errors",
            "HBONE connections closed because the peer broke HTTP/2, by the error code sent in GOAWAY (ENHANCE_YOUR_CALM: a flood)",
            None,
            MetricType::Counter,
        )?;
        for code in PROTOCOL_ERROR_CODES {
            let label = CodeLabel { code: code.name().unwrap_or("unknown") };
            ConstCounter::new(protocol_errors(code)).encode(family.encode_family(&label)?)?;
        }
        let mut family = e.encode_descriptor(
            "hbone_connects_malformed",
            "Requests on the HBONE port answered 400 before any policy: not CONNECT, extended CONNECT, no or a bad :authority",
            None,
            MetricType::Counter,
        )?;
        for r in MalformedConnect::ALL {
            ConstCounter::new(r.total()).encode(family.encode_family(&ReasonLabel { reason: r.as_str() })?)?;
        }
        Ok(())
    }
}

/// The data threads' scheduler slice ([`crate::slice`]), read at scrape time.
#[derive(Debug)]
struct SliceCollector;

impl Collector for SliceCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (short, switches) = crate::slice::state();
        let gauge = e.encode_descriptor(
            "ztunnel_sched_short_slice",
            "1 while the data threads hold the short scheduler slice (--sched-slice-us, node mostly idle), else 0",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(short as i64).encode(gauge)?;
        let counter = e.encode_descriptor(
            "ztunnel_sched_slice_switches",
            "Times the data threads' scheduler slice was shortened or given back",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(switches).encode(counter)
    }
}

/// The registry in Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_match_istio() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let labels = TcpLabels {
            reporter: Reporter::Destination.as_str(),
            source_workload: "sleep".into(),
            source_workload_namespace: "default".into(),
            source_principal: "spiffe://cluster.local/ns/default/sa/sleep".into(),
            source_canonical_service: "sleep".into(),
            source_canonical_revision: "v1".into(),
            destination_workload: "httpbin".into(),
            destination_canonical_service: "httpbin".into(),
            destination_canonical_revision: "latest".into(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: SecurityPolicy::MutualTls.as_str(),
            ..Default::default()
        };
        let conn = Opened::new(&metrics, labels.clone()).carried();
        conn.close(100, 2000);
        metrics.denied(Reporter::Destination, "policy");
        crate::ca_client::count_failure("ca_refused");
        let text = encode(&registry);
        for want in [
            "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"sleep\"",
            "connection_security_policy=\"mutual_tls\"} 1",
            "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
            // As Istio's ztunnel: app and version are the canonical service and revision.
            "source_app=\"sleep\",source_version=\"v1\",source_cluster=",
            "destination_app=\"httpbin\",destination_version=\"latest\",destination_cluster=",
            "istio_tcp_received_bytes_total{",
            "istio_tcp_connections_closed_total{",
            "ztunnel_connections_denied_total{reporter=\"destination\",reason=\"policy\"} 1",
            "hbone_streams_refused_total{reason=\"concurrency_limit\"} ",
            "hbone_streams_refused_total{reason=\"reset_streams_held\"} ",
            "hbone_protocol_errors_total{code=\"ENHANCE_YOUR_CALM\"} ",
            "hbone_protocol_errors_total{code=\"PROTOCOL_ERROR\"} ",
            "hbone_connects_malformed_total{reason=\"bad_authority\"} ",
            "hbone_connects_malformed_total{reason=\"not_connect\"} ",
            "# TYPE ztunnel_sched_short_slice gauge\nztunnel_sched_short_slice ",
            "# TYPE ztunnel_sched_slice_switches counter\nztunnel_sched_slice_switches_total ",
            "ztunnel_certificate_fetch_failures_total{reason=\"bad_answer\"} ",
            "ztunnel_certificate_fetch_failures_total{reason=\"wrong_identity\"} ",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let received = text.lines().find(|l| l.starts_with("istio_tcp_received_bytes_total{")).unwrap();
        assert!(received.ends_with(" 100"), "{received}");
        let sent = text.lines().find(|l| l.starts_with("istio_tcp_sent_bytes_total{")).unwrap();
        assert!(sent.ends_with(" 2000"), "{sent}");
        // Process-wide: other tests may count too, so at least the one counted here.
        let refused =
            text.lines().find(|l| l.starts_with("ztunnel_certificate_fetch_failures_total{reason=\"ca_refused\"} "));
        let n: u64 = refused.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(n >= 1, "{refused:?}");
    }

    /// As Istio's ztunnel: opened without a flag, closed with the reason it went no further;
    /// opened and closed balance also when the connection is dropped undecided.
    #[test]
    fn a_refused_connection_is_opened_without_flags_and_closed_with_its_reason() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let labels = |workload: &str| TcpLabels {
            reporter: Reporter::Destination.as_str(),
            destination_workload: workload.into(),
            response_flags: ResponseFlags::None.as_str(),
            ..Default::default()
        };
        Opened::new(&metrics, labels("denied")).refused(ResponseFlags::Deny);
        Opened::new(&metrics, labels("unreachable")).refused(ResponseFlags::Connect);
        drop(Opened::new(&metrics, labels("gone")));
        let text = encode(&registry);
        let value = |family: &str, workload: &str, flags: &str| {
            // `flags` empty: any.
            let w = format!("destination_workload=\"{workload}\"");
            let f = if flags.is_empty() { String::new() } else { format!("response_flags=\"{flags}\"") };
            text.lines()
                .filter(|l| l.starts_with(family) && l.contains(&w) && l.contains(&f))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        for (workload, flags) in [("denied", "DENY"), ("unreachable", "CONNECT"), ("gone", "-")] {
            assert_eq!(value("istio_tcp_connections_opened_total{", workload, ""), 1, "{workload}: {text}");
            assert_eq!(value("istio_tcp_connections_opened_total{", workload, "-"), 1, "{workload}: {text}");
            assert_eq!(value("istio_tcp_connections_closed_total{", workload, ""), 1, "{workload}: {text}");
            assert_eq!(value("istio_tcp_connections_closed_total{", workload, flags), 1, "{workload}: {text}");
        }
        assert!(!text.contains("istio_tcp_received_bytes_total{"), "no bytes for connections never carried: {text}");
    }
}
