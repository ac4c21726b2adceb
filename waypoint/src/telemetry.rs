//! Request telemetry: Istio's four request metrics (reporter `waypoint`), the access log
//! (events on the `access` target, so they follow the log format), authorization denials by
//! policy, W3C trace context propagation, and OTLP span export ([`otlp`]).

pub mod otlp;
pub mod span_tags;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hbone::Identity;
use http::HeaderValue;
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use ztunnel::state::{Service, Workload};

/// Istio's request metric labels.
///
/// Built for every request, so the strings are not copied into it: the source is the
/// connection's verified identity (and the workload it matched), the destinations are the
/// snapshot's own service and workload, all shared. Two label sets are the same series when
/// the label values they encode are equal, whichever objects they came from (a new snapshot
/// brings new objects for the same workload).
#[derive(Clone, Debug, Default)]
pub struct RequestLabels {
    /// The peer's verified identity; `None` only in tests.
    pub source: Option<Identity>,
    /// The workload at the client's address when it runs as `source`.
    pub source_workload: Option<Arc<Workload>>,
    /// The destination service (`unknown` while none is known).
    pub service: Option<Arc<Service>>,
    /// The endpoint a try went to (`unknown` while none was reached).
    pub destination: Option<Arc<Workload>>,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    /// HTTP status.
    pub response_code: u16,
    /// gRPC status from the response's headers or trailers (see
    /// [`grpc_response_status`](Self::grpc_response_status) for the label).
    pub grpc_response_status: Option<HeaderValue>,
    /// Envoy-style flags: `-`, `UF` (upstream connect failure), `UT` (timeout), `NR` (no
    /// route/backend), `UH` (no healthy endpoint), `UAEX`-like `RBAC` denial as `-` with 403.
    pub response_flags: &'static str,
}

/// Label names in the order Istio's waypoint (Envoy's `istio.stats`, reporter `waypoint`)
/// writes them, `response_code` (a number) at [`CODE_AT`].
const LABEL_NAMES: [&str; 24] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];
/// Where `response_code` goes among [`LABEL_NAMES`].
const CODE_AT: usize = 21;

const UNKNOWN: &str = "unknown";
/// Istio's value for a source canonical revision it does not know.
const LATEST: &str = "latest";

/// `s`, or `default` when empty (Istio's fallbacks never leave a label empty).
fn or<'a>(s: &'a str, default: &'static str) -> &'a str {
    if s.is_empty() { default } else { s }
}

impl RequestLabels {
    /// The source principal (`spiffe://...`), `unknown` without one.
    pub fn source_principal(&self) -> &str {
        self.source.as_ref().map_or(UNKNOWN, Identity::as_str)
    }

    /// The destination service's FQDN, `unknown` while none is known.
    pub fn destination_service(&self) -> &str {
        self.service.as_ref().map_or(UNKNOWN, |s| s.hostname.as_str())
    }

    /// The `grpc_response_status` label, as Envoy's Istio stats write it: empty for a request
    /// that is not gRPC (Prometheus stores no label then); for gRPC the `grpc-status` of the
    /// trailers or headers, else the one gRPC maps the HTTP status to (Envoy's
    /// `Grpc::Common::getGrpcStatus`: a 503 without `grpc-status` is `14`), empty when no
    /// response came at all.
    pub fn grpc_response_status(&self) -> &str {
        if self.request_protocol != "grpc" {
            return "";
        }
        if let Some(v) = self.grpc_response_status.as_ref().and_then(|v| v.to_str().ok()) {
            return v;
        }
        // https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
        match self.response_code {
            0 => "",
            400 => "13",
            401 => "16",
            403 => "7",
            404 => "12",
            429 | 502 | 503 | 504 => "14",
            _ => "2",
        }
    }

    /// The string label values, in [`LABEL_NAMES`]' order. The workload fallbacks are those
    /// of Istio's waypoint: `unknown`, but `latest` for a source's canonical revision; app and
    /// version are the canonical service and revision, as Istio derives them for ambient
    /// workloads.
    fn values(&self) -> [&str; 24] {
        let src = self.source.as_ref();
        let src_w = self.source_workload.as_deref();
        let svc = self.service.as_deref();
        let dst = self.destination.as_deref();
        [
            "waypoint",
            match (src_w, src) {
                (Some(w), _) => w.metric_name(),
                (None, Some(id)) => id.service_account(),
                (None, None) => UNKNOWN,
            },
            src_w.map_or(UNKNOWN, |w| or(&w.canonical_name, UNKNOWN)),
            src_w.map_or(LATEST, |w| or(&w.canonical_revision, LATEST)),
            src.map_or(UNKNOWN, Identity::namespace),
            self.source_principal(),
            src_w.map_or(UNKNOWN, |w| or(&w.canonical_name, UNKNOWN)),
            src_w.map_or(UNKNOWN, |w| or(&w.canonical_revision, UNKNOWN)),
            src_w.map_or(UNKNOWN, |w| or(&w.cluster_id, UNKNOWN)),
            dst.map_or(UNKNOWN, Workload::metric_name),
            dst.map_or(UNKNOWN, Workload::namespace),
            dst.map_or(UNKNOWN, |w| w.identity.as_str()),
            dst.map_or(UNKNOWN, |w| or(&w.canonical_name, UNKNOWN)),
            dst.map_or(UNKNOWN, |w| or(&w.canonical_revision, UNKNOWN)),
            self.destination_service(),
            dst.map_or(UNKNOWN, |w| or(&w.canonical_name, UNKNOWN)),
            dst.map_or(UNKNOWN, |w| or(&w.canonical_revision, UNKNOWN)),
            svc.map_or(UNKNOWN, |s| s.name.as_str()),
            svc.map_or(UNKNOWN, |s| s.namespace.as_str()),
            dst.map_or(UNKNOWN, |w| or(&w.cluster_id, UNKNOWN)),
            self.request_protocol,
            self.grpc_response_status(),
            self.response_flags,
            // HBONE on both sides, always.
            "mutual_tls",
        ]
    }
}

impl PartialEq for RequestLabels {
    fn eq(&self, other: &Self) -> bool {
        self.response_code == other.response_code && self.values() == other.values()
    }
}

impl Eq for RequestLabels {}

impl Hash for RequestLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.values().hash(state);
        self.response_code.hash(state);
    }
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (i, (name, value)) in LABEL_NAMES.iter().zip(self.values()).enumerate() {
            if i == CODE_AT {
                ("response_code", self.response_code).encode(encoder.encode_label())?;
            }
            (*name, value).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Labels of the denial counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    /// `namespace/name` of the deciding policy, or `no-allow-match`.
    pub policy: String,
}

/// Labels of the no-endpoint counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoEndpointLabels {
    /// The service's hostname.
    pub service: String,
    /// Why: `port_not_declared`, `strict_locality`, `strict_source_unknown`, `no_usable_endpoint`.
    pub reason: String,
}

/// Labels of the refused-handshake counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `hbone_tls_failed`, `hbone_handshake_timeout`, `hbone_peer_identity` or
    /// `hbone_handshake_overload`, as ztunnel counts them.
    pub reason: &'static str,
}

/// The waypoint's metrics.
#[derive(Debug)]
pub struct Metrics {
    handshakes_refused: Family<HandshakeLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RequestLabels, Histogram>,
    request_bytes: Family<RequestLabels, Histogram>,
    response_bytes: Family<RequestLabels, Histogram>,
    denied: Family<DenyLabels, Counter>,
    no_endpoint: Family<NoEndpointLabels, Counter>,
    policies_stand_in: Gauge,
}

/// Envoy's default histogram bounds, which Istio's proxies use for all three request
/// histograms (milliseconds for the duration, bytes for the sizes): dashboards' quantiles and
/// SLO queries (`le="30000"`, ...) read these buckets.
const ENVOY_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

fn envoy_histogram() -> Histogram {
    Histogram::new(ENVOY_BUCKETS)
}

impl Metrics {
    /// Registers the metrics (prometheus-client adds `_total` to counters).
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let m = Metrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(envoy_histogram),
            request_bytes: Family::new_with_constructor(envoy_histogram),
            response_bytes: Family::new_with_constructor(envoy_histogram),
            denied: Family::default(),
            no_endpoint: Family::default(),
            policies_stand_in: Gauge::default(),
            handshakes_refused: Family::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register("requests", "Requests handled", m.requests.clone());
        istio.register("request_duration_milliseconds", "Request duration", m.duration.clone());
        istio.register("request_bytes", "Request body sizes", m.request_bytes.clone());
        istio.register("response_bytes", "Response body sizes", m.response_bytes.clone());
        registry.register("waypoint_authz_denied", "Requests denied by L7 policy", m.denied.clone());
        registry.register(
            "waypoint_no_endpoint",
            "Requests and connections answered 503 (or closed) because their service had no endpoint to use, by \
             reason",
            m.no_endpoint.clone(),
        );
        registry.register(
            "waypoint_policies_stand_in",
            "L7 policies enforced in a fail-closed form instead of as sent (they cannot be compiled, or a target \
             cannot be resolved)",
            m.policies_stand_in.clone(),
        );
        registry.register(
            "waypoint_hbone_handshakes_refused",
            "HBONE connections refused before their first stream, by reason",
            m.handshakes_refused.clone(),
        );
        ztunnel::metrics::register_hbone(registry);
        Arc::new(m)
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, millis: f64, request_bytes: u64, response_bytes: u64) {
        self.requests.get_or_create(labels).inc();
        self.duration.get_or_create(labels).observe(millis);
        self.request_bytes.get_or_create(labels).observe(request_bytes as f64);
        self.response_bytes.get_or_create(labels).observe(response_bytes as f64);
    }

    /// Sets how many policies of the state just published run as fail-closed stand-ins.
    pub fn policies_stand_in(&self, n: usize) {
        self.policies_stand_in.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a request or connection for `service` that found no endpoint, and why.
    pub fn no_endpoint(&self, service: &str, reason: &str) {
        self.no_endpoint
            .get_or_create(&NoEndpointLabels { service: service.to_owned(), reason: reason.to_owned() })
            .inc();
    }

    /// Counts an HBONE connection refused before its first stream, and why.
    pub fn handshake_refused(&self, reason: &'static str) {
        self.handshakes_refused.get_or_create(&HandshakeLabels { reason }).inc();
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

    /// Whether the caller records this trace (flag `01`). Only sampled requests are exported:
    /// OpenTelemetry's default parent-based sampler and Envoy's tracer (Istio's waypoint) follow
    /// the caller's decision, so an application sampling 1% gets 1% of the waypoint's spans,
    /// each with a recorded parent, not every request's.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header value as text.
    pub fn to_header(&self) -> String {
        String::from_utf8_lossy(&self.header_bytes()).into_owned()
    }

    /// The header value, formatted without an intermediate string (one per request).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.header_bytes()).expect("hex digits and dashes are a valid header value")
    }

    fn header_bytes(&self) -> [u8; 55] {
        let mut buf = [0u8; 55];
        let mut w = &mut buf[..];
        let _ = std::io::Write::write_fmt(
            &mut w,
            format_args!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags),
        );
        buf
    }

    /// The context for the upstream request: the incoming trace with a new span id, or a new
    /// sampled trace.
    pub fn child_of(incoming: Option<&HeaderValue>) -> TraceParent {
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
        let v = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
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
    fn trace_header_value_is_the_formatted_header() {
        let t = TraceParent {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            flags: 1,
        };
        assert_eq!(t.header_value().to_str().unwrap(), t.to_header());
        assert_eq!(t.to_header(), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }

    fn workload(name: &str, workload_name: &str, ns: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: format!("Kubernetes//Pod/{ns}/{name}"),
            name: name.into(),
            identity: Identity::new("cluster.local", ns, name).unwrap(),
            addresses: Vec::new(),
            node: "node-2".into(),
            network: String::new(),
            network_mode: ztunnel::state::NetworkMode::Standard,
            protocol: ztunnel::state::TunnelProtocol::Hbone,
            canonical_name: workload_name.into(),
            canonical_revision: "latest".into(),
            workload_name: workload_name.into(),
            workload_type: ztunnel::state::WorkloadType::Deployment,
            cluster_id: "Kubernetes".into(),
            waypoint: None,
            services: Default::default(),
            authorization_policies: Vec::new(),
            healthy: true,
            locality: Default::default(),
            capacity: 1,
        })
    }

    fn service() -> Arc<Service> {
        Arc::new(Service {
            name: "reviews".into(),
            namespace: "shop".into(),
            hostname: "reviews.shop.svc.cluster.local".into(),
            vips: Vec::new(),
            ports: Default::default(),
            app_protocols: Default::default(),
            subject_alt_names: Vec::new(),
            waypoint: None,
            load_balancing: Default::default(),
        })
    }

    #[test]
    fn metric_names_and_labels() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        let l = RequestLabels {
            source: Some(Identity::new("cluster.local", "frontend", "web").unwrap()),
            source_workload: Some(workload("web-5d8f", "web", "frontend")),
            service: Some(service()),
            destination: Some(workload("reviews-v2-77c9", "reviews-v2", "shop")),
            request_protocol: "grpc",
            response_code: 200,
            grpc_response_status: Some(HeaderValue::from_static("0")),
            response_flags: "-",
        };
        m.record(&l, 3.0, 10, 20);
        m.denied("shop/deny");
        let text = ztunnel::metrics::encode(&r);
        // Istio's waypoint label set, in its order, each value from the shared objects.
        let labels = "reporter=\"waypoint\",source_workload=\"web\",source_canonical_service=\"web\",\
            source_canonical_revision=\"latest\",source_workload_namespace=\"frontend\",\
            source_principal=\"spiffe://cluster.local/ns/frontend/sa/web\",source_app=\"web\",\
            source_version=\"latest\",source_cluster=\"Kubernetes\",destination_workload=\"reviews-v2\",\
            destination_workload_namespace=\"shop\",\
            destination_principal=\"spiffe://cluster.local/ns/shop/sa/reviews-v2-77c9\",\
            destination_app=\"reviews-v2\",destination_version=\"latest\",\
            destination_service=\"reviews.shop.svc.cluster.local\",destination_canonical_service=\"reviews-v2\",\
            destination_canonical_revision=\"latest\",destination_service_name=\"reviews\",\
            destination_service_namespace=\"shop\",destination_cluster=\"Kubernetes\",request_protocol=\"grpc\",\
            response_code=\"200\",grpc_response_status=\"0\",response_flags=\"-\",\
            connection_security_policy=\"mutual_tls\"";
        for want in [
            format!("istio_requests_total{{{labels}}} 1"),
            format!("istio_request_duration_milliseconds_bucket{{le=\"5.0\",{labels}}} 1"),
            format!("istio_request_bytes_sum{{{labels}}} 10"),
            format!("istio_response_bytes_count{{{labels}}} 1"),
            "waypoint_authz_denied_total{policy=\"shop/deny\"} 1".to_owned(),
            "hbone_streams_refused_total{reason=\"reset_streams_held\"} ".to_owned(),
            "hbone_protocol_errors_total{code=\"ENHANCE_YOUR_CALM\"} ".to_owned(),
        ] {
            assert!(text.contains(&want), "missing {want} in {text}");
        }
    }

    /// Labels from different objects with the same values are one series (a new snapshot
    /// brings new objects for the same workload); any differing value is another.
    #[test]
    fn series_are_label_values_not_objects() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        let labels = |dest: Arc<Workload>, code: u16| RequestLabels {
            source: Some(Identity::new("cluster.local", "frontend", "web").unwrap()),
            source_workload: None,
            service: Some(service()),
            destination: Some(dest),
            request_protocol: "http",
            response_code: code,
            grpc_response_status: None,
            response_flags: "-",
        };
        m.record(&labels(workload("reviews-v1-1", "reviews-v1", "shop"), 200), 1.0, 0, 0);
        m.record(&labels(workload("reviews-v1-1", "reviews-v1", "shop"), 200), 1.0, 0, 0);
        m.record(&labels(workload("reviews-v1-1", "reviews-v1", "shop"), 503), 1.0, 0, 0);
        m.record(&labels(workload("reviews-v1-2", "reviews-v1", "shop"), 200), 1.0, 0, 0);
        let text = ztunnel::metrics::encode(&r);
        let series: Vec<&str> = text.lines().filter(|l| l.starts_with("istio_requests_total{")).collect();
        assert_eq!(series.len(), 3, "{text}");
        let count = |principal: &str, code: &str| {
            series
                .iter()
                .find(|l| {
                    l.contains(&format!("destination_principal=\"spiffe://cluster.local/ns/shop/sa/{principal}\""))
                        && l.contains(&format!("response_code=\"{code}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .unwrap_or_else(|| panic!("no series for {principal} {code} in {text}"))
                .to_owned()
        };
        assert_eq!(count("reviews-v1-1", "200"), "2");
        assert_eq!(count("reviews-v1-1", "503"), "1");
        assert_eq!(count("reviews-v1-2", "200"), "1");
        // No source workload matched: the service account names it; not gRPC: empty.
        assert!(series[0].contains("source_workload=\"web\","), "{text}");
        assert!(series[0].contains("grpc_response_status=\"\""), "{text}");
    }

    fn sample(labels: &RequestLabels) -> String {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        m.record(labels, 45_000.0, 20_000, 3);
        ztunnel::metrics::encode(&r)
    }

    /// Rule: without a source workload or an endpoint, Istio's waypoint writes `unknown`
    /// (`latest` for the source's canonical revision), never an empty value; the app, version
    /// and cluster labels are there too, so Kiali's graph and Istio's dashboards find them.
    #[test]
    fn unknown_peers_get_istios_fallbacks() {
        let text = sample(&RequestLabels {
            source: Some(Identity::new("cluster.local", "frontend", "web").unwrap()),
            service: Some(service()),
            request_protocol: "http",
            response_code: 503,
            response_flags: "UH",
            ..Default::default()
        });
        let line = text.lines().find(|l| l.starts_with("istio_requests_total{")).expect(&text);
        for want in [
            "source_canonical_service=\"unknown\"",
            "source_canonical_revision=\"latest\"",
            "source_app=\"unknown\"",
            "source_version=\"unknown\"",
            "source_cluster=\"unknown\"",
            "destination_workload=\"unknown\"",
            "destination_app=\"unknown\"",
            "destination_version=\"unknown\"",
            "destination_canonical_service=\"unknown\"",
            "destination_canonical_revision=\"unknown\"",
            "destination_cluster=\"unknown\"",
            "destination_service_name=\"reviews\"",
        ] {
            assert!(line.contains(want), "missing {want} in {line}");
        }
        let names: Vec<&str> = line
            .trim_start_matches("istio_requests_total{")
            .split("\",")
            .map(|kv| kv.split('=').next().unwrap())
            .collect();
        assert_eq!(names.len(), 25, "Istio's 25 labels: {names:?}");
    }

    /// Rule: for gRPC, a response without `grpc-status` is labelled with the status gRPC maps
    /// its HTTP status to, as Envoy does (a 503 is UNAVAILABLE, 14), so gRPC error-rate queries
    /// count it; no response at all is empty; a status sent wins.
    #[test]
    fn grpc_status_is_inferred_from_the_http_status_when_absent() {
        let grpc = |code: u16, sent: Option<&'static str>| RequestLabels {
            request_protocol: "grpc",
            response_code: code,
            grpc_response_status: sent.map(HeaderValue::from_static),
            ..Default::default()
        };
        for (code, want) in [(503, "14"), (502, "14"), (404, "12"), (403, "7"), (401, "16"), (200, "2"), (0, "")] {
            assert_eq!(grpc(code, None).grpc_response_status(), want, "HTTP {code}");
        }
        assert_eq!(grpc(200, Some("5")).grpc_response_status(), "5");
        let http = RequestLabels { request_protocol: "http", response_code: 503, ..Default::default() };
        assert_eq!(http.grpc_response_status(), "");
    }

    /// Rule: the three request histograms have Envoy's default buckets (as Istio's proxies):
    /// a 45 s request and a 20 kB body land in buckets of their own, not in `+Inf`.
    #[test]
    fn histograms_have_envoys_buckets() {
        let text = sample(&RequestLabels { request_protocol: "http", response_code: 200, ..Default::default() });
        let les = |metric: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(&format!("{metric}_bucket{{")))
                .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next().map(str::to_owned))
                .collect()
        };
        let want: Vec<String> = ENVOY_BUCKETS.iter().map(|b| format!("{b:?}")).chain(["+Inf".to_owned()]).collect();
        for metric in ["istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"] {
            assert_eq!(les(metric), want, "{metric}");
        }
        assert!(text.contains("istio_request_duration_milliseconds_bucket{le=\"60000.0\""), "{text}");
        let bucket = |metric: &str, le: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{metric}_bucket{{le=\"{le}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket("istio_request_duration_milliseconds", "10000.0").as_deref(), Some("0"));
        assert_eq!(bucket("istio_request_duration_milliseconds", "60000.0").as_deref(), Some("1"));
        assert_eq!(bucket("istio_request_bytes", "10000.0").as_deref(), Some("0"));
        assert_eq!(bucket("istio_request_bytes", "30000.0").as_deref(), Some("1"));
    }
}
