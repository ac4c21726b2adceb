//! Port 15014: Prometheus metrics ([`metrics`]) and debug JSON, over plain HTTP/1.1.
//!
//! | path | what |
//! |---|---|
//! | `/metrics` (`/stats/prometheus`) | Prometheus text |
//! | `/debug/connections` | connected proxies: node, peer, per type the subscriptions, the versions each acknowledged, pending nonce, last NACK; xDS totals; and `served`: per type URL, name → version served now |
//! | `/debug/config` | the current model (count and `namespace/name`s per kind) and the served resources (count and names per type URL) |
//! | `/debug/errors` | the last load's config errors (with the Kubernetes source, also each failing watch as `kubernetes:<Kind>`) and directory failure, and current translation warnings |

pub mod convergence;
pub mod metrics;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use xds::XdsServer;

use crate::model::Model;
use crate::source::dir::WatchStatus;
use crate::translator::Translator;

/// What the endpoints read.
pub struct DebugState {
    /// The xDS server (connections, totals, store).
    pub xds: XdsServer,
    /// The model and its translation.
    pub translator: Arc<Mutex<Translator>>,
    /// The config source's status.
    pub status: watch::Receiver<WatchStatus>,
    /// Metrics, encoded on scrape.
    pub registry: Registry,
}

/// An answer: status, content type, body.
type Reply = (StatusCode, &'static str, String);

fn json_reply(v: &Value) -> Reply {
    (StatusCode::OK, "application/json", serde_json::to_string_pretty(v).unwrap_or_default())
}

impl DebugState {
    /// The answer to a GET of `path`.
    pub fn route(&self, path: &str) -> Reply {
        match path {
            "/metrics" | "/stats/prometheus" => {
                let mut out = String::new();
                match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
                    Ok(()) => (StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", out),
                    Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding metrics: {e}\n")),
                }
            }
            "/debug/connections" => {
                let connections = self.xds.connections();
                // What is served now, per type URL, so acknowledged versions can be compared
                // (`meshctl proxy-status`).
                let mut types: std::collections::BTreeSet<String> =
                    [proto::ADDRESS_TYPE_URL, proto::AUTHORIZATION_TYPE_URL].map(str::to_owned).into();
                types.extend(connections.iter().flat_map(|c| c.types.keys().cloned()));
                let served: serde_json::Map<String, Value> =
                    types.into_iter().map(|t| (t.clone(), versions_json(&self.xds, &t))).collect();
                json_reply(&json!({
                    "stats": self.xds.stats(),
                    "connections": connections,
                    "served": served,
                }))
            }
            "/debug/config" => {
                let t = self.translator.lock().unwrap_or_else(|p| p.into_inner());
                let names = |it: &mut dyn Iterator<Item = String>| {
                    let names: Vec<String> = it.collect();
                    json!({"count": names.len(), "names": names})
                };
                json_reply(&json!({
                    "model": model_json(t.model()),
                    "resources": {
                        proto::ADDRESS_TYPE_URL: names(&mut t.addresses().keys().cloned()),
                        proto::AUTHORIZATION_TYPE_URL: names(&mut t.authorizations().keys().cloned()),
                        proto::WAYPOINT_ROUTE_TYPE_URL: names(&mut t.routes().keys().cloned()),
                        proto::WAYPOINT_POLICY_TYPE_URL: names(&mut t.l7_policies().keys().cloned()),
                        proto::WAYPOINT_BACKEND_TYPE_URL: names(&mut t.backend_policies().keys().cloned()),
                    },
                    // Gateway API status of each route, as `status.parents` would carry it.
                    "routeStatus": t
                        .route_status()
                        .iter()
                        .map(|(k, parents)| (k.to_string(), json!(parents)))
                        .collect::<serde_json::Map<String, Value>>(),
                }))
            }
            "/debug/errors" => {
                let st = self.status.borrow();
                json_reply(&json!({
                    "loads": st.loads,
                    "failure": st.failure.as_ref().map(|f| f.to_string()),
                    "errors": st.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    "warnings": st.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
                }))
            }
            "/" | "/debug" => {
                (StatusCode::OK, "text/plain", "/metrics\n/debug/connections\n/debug/config\n/debug/errors\n".into())
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", "see /debug\n".into()),
        }
    }
}

fn versions_json(xds: &XdsServer, type_url: &str) -> Value {
    let versions = xds.store().versions(type_url);
    Value::Object(versions.into_iter().map(|(name, v)| (name, Value::String(v.to_string()))).collect())
}

fn model_json(m: &Model) -> Value {
    fn kind<T>(map: &BTreeMap<(String, String), T>) -> Value {
        let names: Vec<String> = map.keys().map(|(ns, n)| format!("{ns}/{n}")).collect();
        json!({"count": names.len(), "names": names})
    }
    let namespaces: Vec<&String> = m.namespaces.keys().collect();
    json!({
        "Namespace": {"count": namespaces.len(), "names": namespaces},
        "Pod": kind(&m.pods),
        "Service": kind(&m.services),
        "EndpointSlice": kind(&m.endpoint_slices),
        "AuthorizationPolicy": kind(&m.authorization_policies),
        "PeerAuthentication": kind(&m.peer_authentications),
        "Gateway": kind(&m.gateways),
        "HTTPRoute": kind(&m.http_routes),
        "GRPCRoute": kind(&m.grpc_routes),
    })
}

/// Serves `debug` on `listener` until the task is dropped. Bodies are small, so each is built
/// whole; only GET is answered.
pub async fn serve(listener: TcpListener, debug: Arc<DebugState>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "accept on the monitoring port failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let debug = debug.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, content_type, body) = if req.method() == http::Method::GET {
                    debug.route(req.uri().path())
                } else {
                    (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into())
                };
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)))
                    .expect("static header names and values");
                std::future::ready(Ok::<_, Infallible>(response))
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
