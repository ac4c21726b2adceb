//! Request telemetry: Istio's four request metrics (reporter `waypoint`), the access log
//! (events on the `access` target, so they follow the log format), authorization denials by
//! policy, W3C trace context propagation, and OTLP span export ([`otlp`]).

pub mod otlp;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Istio's request metric labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet, Default)]
pub struct RequestLabels {
    /// Always `waypoint`.
    pub reporter: &'static str,
    /// Source workload name.
    pub source_workload: String,
    /// Source workload namespace.
    pub source_workload_namespace: String,
    /// Source identity `spiffe://...`.
    pub source_principal: String,
    /// Destination workload name (`unknown` when no endpoint was reached).
    pub destination_workload: String,
    /// Destination workload namespace.
    pub destination_workload_namespace: String,
    /// Destination service FQDN.
    pub destination_service: String,
    /// Destination service name.
    pub destination_service_name: String,
    /// Destination service namespace.
    pub destination_service_namespace: String,
    /// Destination identity.
    pub destination_principal: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// HTTP status.
    pub response_code: u16,
    /// gRPC status, `-` when not gRPC.
    pub grpc_response_status: String,
    /// Always `mutual_tls` (HBONE on both sides).
    pub connection_security_policy: &'static str,
    /// Envoy-style flags: `-`, `UF` (upstream connect failure), `UT` (timeout), `NR` (no
    /// route/backend), `UH` (no healthy endpoint), `UAEX`-like `RBAC` denial as `-` with 403.
    pub response_flags: &'static str,
}

/// Labels of the denial counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    /// `namespace/name` of the deciding policy, or `no-allow-match`.
    pub policy: String,
}

/// The waypoint's metrics.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    denied: Family<DenyLabels, Counter>,
}

fn duration_histogram() -> Histogram {
    Histogram::new([0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0])
}

fn bytes_histogram() -> Histogram {
    Histogram::new([1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0])
}

impl Metrics {
    /// Registers the metrics (prometheus-client adds `_total` to counters).
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(bytes_histogram),
            response_bytes: Family::new_with_constructor(bytes_histogram),
            denied: Family::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register("requests", "Requests handled", m.requests.clone());
        istio.register("request_duration_milliseconds", "Request duration", m.duration.clone());
        istio.register("request_bytes", "Request body sizes", m.request_bytes.clone());
        istio.register("response_bytes", "Response body sizes", m.response_bytes.clone());
        registry.register("waypoint_authz_denied", "Requests denied by L7 policy", m.denied.clone());
        Arc::new(m)
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, millis: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        self.request_bytes.get_or_create(labels).observe(request_bytes as f64);
        self.response_bytes.get_or_create(labels).observe(response_bytes as f64);
    }

    /// Counts a denial by `policy`.
    pub fn denied(&self, policy: &str) {
        self.denied.get_or_create(&DenyLabels { policy: policy.to_owned() }).inc();
    }
}

/// A W3C `traceparent` (version 00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// 16-byte trace id.
    pub trace_id: u128,
    /// 8-byte span id.
    pub span_id: u64,
    /// Flags (01 = sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; all-zero ids are invalid.
    pub fn parse(v: &str) -> Option<TraceParent> {
        let mut it = v.trim().split('-');
        let (ver, t, s, f) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if ver.len() != 2 || ver == "ff" || t.len() != 32 || s.len() != 16 || f.len() != 2 {
            return None;
        }
        if ver == "00" && it.next().is_some() {
            return None;
        }
        let lower_hex = |x: &str| x.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ![ver, t, s, f].iter().all(|x| lower_hex(x)) {
            return None;
        }
        let trace_id = u128::from_str_radix(t, 16).ok()?;
        let span_id = u64::from_str_radix(s, 16).ok()?;
        let flags = u8::from_str_radix(f, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceParent { trace_id, span_id, flags })
    }

    /// The header value.
    pub fn to_header(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }

    /// The context for the upstream request: the incoming trace with a new span id, or a new
    /// sampled trace.
    pub fn child_of(incoming: Option<&http::HeaderValue>) -> TraceParent {
        TraceParent::child_of_parsed(incoming.and_then(|v| v.to_str().ok()).and_then(TraceParent::parse))
    }

    /// [`child_of`](Self::child_of) for a header already parsed.
    pub fn child_of_parsed(incoming: Option<TraceParent>) -> TraceParent {
        let span_id = rand::random::<u64>().max(1);
        match incoming {
            Some(p) => TraceParent { span_id, ..p },
            None => TraceParent { trace_id: rand::random::<u128>().max(1), span_id, flags: 1 },
        }
    }
}

/// One access log line.
#[derive(Debug)]
pub struct AccessLog<'a> {
    /// Source identity.
    pub src: &'a str,
    /// Client address.
    pub client: Option<std::net::SocketAddr>,
    /// Method.
    pub method: &'a str,
    /// Path as forwarded.
    pub path: &'a str,
    /// Status.
    pub status: u16,
    /// Route rule id or `-`.
    pub route: &'a str,
    /// Authorization decision: the deciding policy or `-`.
    pub policy: &'a str,
    /// Allowed.
    pub allowed: bool,
    /// Endpoint `ip:port` (`-` when none was picked).
    pub upstream: Option<std::net::SocketAddr>,
    /// Service FQDN.
    pub service: &'a str,
    /// Flags.
    pub flags: &'static str,
    /// Duration.
    pub millis: f64,
    /// Trace id.
    pub trace_id: u128,
}

impl AccessLog<'_> {
    /// Emits the line on the `access` target.
    pub fn emit(&self) {
        // Formatted on the stack: the line is written once per request.
        let mut buf = [0u8; 64];
        let upstream = match self.upstream {
            Some(a) => {
                let mut w = &mut buf[..];
                let _ = std::io::Write::write_fmt(&mut w, format_args!("{a}"));
                let n = 64 - w.len();
                std::str::from_utf8(&buf[..n]).unwrap_or("-")
            }
            None => "-",
        };
        tracing::info!(
            target: "access",
            src_identity = self.src,
            src_addr = ?self.client,
            method = self.method,
            path = self.path,
            status = self.status,
            route = self.route,
            policy = self.policy,
            allowed = self.allowed,
            upstream,
            service = self.service,
            flags = self.flags,
            duration_ms = self.millis,
            trace_id = %format_args!("{:032x}", self.trace_id),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_trace_new_span() {
        let v = http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let c = TraceParent::child_of(Some(&v));
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_ne!(c.span_id, 0x00f067aa0ba902b7);
        assert_eq!(c.flags, 1);
        assert!(c.to_header().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let fresh = TraceParent::child_of(None);
        assert_ne!(fresh.trace_id, 0);
        assert_eq!(TraceParent::parse(&fresh.to_header()), Some(fresh));
    }

    #[test]
    fn metric_names_and_labels() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        let l = RequestLabels {
            reporter: "waypoint",
            destination_service: "reviews.shop.svc.cluster.local".into(),
            response_code: 200,
            request_protocol: "http",
            connection_security_policy: "mutual_tls",
            response_flags: "-",
            grpc_response_status: "-".into(),
            ..Default::default()
        };
        m.record(&l, 3.0, 10, 20);
        m.denied("shop/deny");
        let text = ztunnel::metrics::encode(&r);
        for want in [
            "istio_requests_total{reporter=\"waypoint\"",
            "istio_request_duration_milliseconds_bucket{",
            "istio_request_bytes_sum{",
            "istio_response_bytes_count{",
            "response_code=\"200\"",
            "waypoint_authz_denied_total{policy=\"shop/deny\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in {text}");
        }
    }
}
