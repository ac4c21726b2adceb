//! istiod-lite's Prometheus metrics, in the spirit of istiod's `pilot_*` and `citadel_*`.
//!
//! xDS totals and gauges are read from their owners at scrape time ([`XdsCollector`]), so the
//! push path counts nothing twice; config changes, convergence and CA decisions are recorded
//! where they happen.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `istiod_lite_xds_pushes_total` | counter | delta responses sent |
//! | `istiod_lite_xds_resources_pushed_total` | counter | resources sent, over all pushes |
//! | `istiod_lite_xds_removals_pushed_total` | counter | removals sent |
//! | `istiod_lite_xds_acks_total`, `istiod_lite_xds_nacks_total` | counter | pushes accepted / rejected by proxies |
//! | `istiod_lite_xds_streams_total` | counter | xDS streams opened |
//! | `istiod_lite_xds_connected_proxies` | gauge | open xDS streams |
//! | `istiod_lite_xds_resources{type_url}` | gauge | resources in the served store |
//! | `istiod_lite_config_errors` | gauge | bad objects in the last load, and failing Kubernetes watches |
//! | `istiod_lite_translation_warnings` | gauge | translation warnings now |
//! | `istiod_lite_config_changes_total` | counter | configuration changes that changed resources |
//! | `istiod_lite_proxy_convergence_seconds` | histogram | change → each connected proxy's ACK (push latency) |
//! | `istiod_lite_certificates_issued_total` | counter | CSRs signed |
//! | `istiod_lite_certificates_refused_total{reason,code}` | counter | CSRs refused, by why (`crate::ca::Refusal`) and gRPC code |

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proto::istio::v1::auth::istio_certificate_service_server::IstioCertificateService;
use proto::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use xds::XdsServer;

use crate::source::dir::WatchStatus;

/// Labels of a CA refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// Why, e.g. `not_on_node` ([`crate::ca::Refusal::label`]); `other` for a status that
    /// does not say.
    pub reason: &'static str,
    /// The gRPC code's name, e.g. `PermissionDenied`.
    pub code: String,
}

/// Metrics recorded as events happen.
#[derive(Debug)]
pub struct Metrics {
    /// Configuration changes that changed served resources.
    pub config_changes: Counter,
    /// Seconds from a change to each connected proxy's ACK of it.
    pub convergence: Histogram,
    /// Certificates issued.
    pub certificates_issued: Counter,
    /// Certificates refused, by reason.
    pub certificates_refused: Family<RefusalLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them, with a collector of the xDS server's and the
    /// config source's state, in `registry`.
    pub fn register(registry: &mut Registry, xds: XdsServer, status: watch::Receiver<WatchStatus>) -> Arc<Metrics> {
        let m = Arc::new(Metrics {
            config_changes: Counter::default(),
            // 5 ms .. ~20 s.
            convergence: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.005, 2.0, 13)),
            certificates_issued: Counter::default(),
            certificates_refused: Family::default(),
        });
        let p = registry.sub_registry_with_prefix("istiod_lite");
        p.register("config_changes", "Configuration changes that changed served resources", m.config_changes.clone());
        p.register(
            "proxy_convergence_seconds",
            "Time from a configuration change to each connected proxy's ACK of it",
            m.convergence.clone(),
        );
        p.register("certificates_issued", "Workload certificates signed", m.certificates_issued.clone());
        p.register(
            "certificates_refused",
            "Certificate requests refused, by reason and gRPC code",
            m.certificates_refused.clone(),
        );
        registry.register_collector(Box::new(XdsCollector { xds, status }));
        m
    }
}

/// Reads xDS totals and config status at scrape time.
#[derive(Debug)]
pub struct XdsCollector {
    xds: XdsServer,
    status: watch::Receiver<WatchStatus>,
}

fn counter(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    type_url: String,
}

impl Collector for XdsCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.xds.stats();
        counter(&mut e, "istiod_lite_xds_pushes", "Delta xDS responses sent", s.pushes)?;
        counter(&mut e, "istiod_lite_xds_resources_pushed", "Resources sent over all pushes", s.resources_sent)?;
        counter(&mut e, "istiod_lite_xds_removals_pushed", "Resource removals sent over all pushes", s.removals_sent)?;
        counter(&mut e, "istiod_lite_xds_acks", "Pushes acknowledged by proxies", s.acks)?;
        counter(&mut e, "istiod_lite_xds_nacks", "Pushes rejected by proxies", s.nacks)?;
        counter(&mut e, "istiod_lite_xds_streams", "xDS streams opened", s.streams)?;
        counter(
            &mut e,
            "istiod_lite_xds_streams_refused",
            "xDS streams refused: the caller did not authenticate",
            s.streams_refused,
        )?;
        gauge(&mut e, "istiod_lite_xds_connected_proxies", "Open xDS streams", self.xds.connection_count() as i64)?;
        let g = ConstGauge::<i64>::new(0);
        let mut family =
            e.encode_descriptor("istiod_lite_xds_resources", "Resources served, by type URL", None, g.metric_type())?;
        for type_url in [
            proto::ADDRESS_TYPE_URL,
            proto::AUTHORIZATION_TYPE_URL,
            proto::WAYPOINT_ROUTE_TYPE_URL,
            proto::WAYPOINT_POLICY_TYPE_URL,
            proto::WAYPOINT_BACKEND_TYPE_URL,
        ] {
            let n = self.xds.store().count(type_url) as i64;
            ConstGauge::new(n).encode(family.encode_family(&TypeLabel { type_url: type_url.to_owned() })?)?;
        }
        let (errors, warnings) = {
            let st = self.status.borrow();
            (st.errors.len() + usize::from(st.failure.is_some()), st.warnings.len())
        };
        gauge(
            &mut e,
            "istiod_lite_config_errors",
            "Bad objects (or directory failure) in the last load",
            errors as i64,
        )?;
        gauge(&mut e, "istiod_lite_translation_warnings", "Translation warnings now", warnings as i64)
    }
}

/// The CA service, counting what it issues and refuses.
#[derive(Debug)]
pub struct CountedCa<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> CountedCa<S> {
    /// Counts `inner`'s answers in `metrics`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        CountedCa { inner, metrics }
    }
}

#[tonic::async_trait]
impl<S: IstioCertificateService> IstioCertificateService for CountedCa<S> {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let answer = self.inner.create_certificate(req).await;
        match &answer {
            Ok(_) => {
                self.metrics.certificates_issued.inc();
            }
            Err(s) => {
                // Labels from a fixed set: the reason is matched back to its static label, so a
                // status from elsewhere cannot grow the family.
                let reason = crate::ca::Refusal::of(s)
                    .and_then(|r| crate::ca::Refusal::ALL.iter().map(|r| r.label()).find(|l| *l == r))
                    .unwrap_or("other");
                self.metrics
                    .certificates_refused
                    .get_or_create(&RefusalLabels { reason, code: format!("{:?}", s.code()) })
                    .inc();
            }
        }
        answer
    }
}
