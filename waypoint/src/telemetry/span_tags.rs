//! The name and attributes of a request's span as an Istio waypoint (Envoy, with the tracing
//! Istio configures) writes them, so trace searches and dashboards built on Istio's spans
//! (Jaeger, Tempo, Kiali) find ours:
//!
//! - Envoy's standard tags (`HttpTracerUtility::finalizeDownstreamSpan`, `setCommonTags`,
//!   `TracerImpl::startSpan`): `guid:x-request-id` (when the request has one), `http.url`
//!   (`<x-forwarded-proto or http>://<authority><path?query>`, the path cut at Istio's default
//!   `max_path_tag_length` of 256), `http.method`, `downstream_cluster` and `user_agent` (`-`
//!   when absent), `http.protocol`, `peer.address` (the client's IP), `request_size` and
//!   `response_size` (body bytes), `component` = `proxy`, `upstream_cluster` and
//!   `upstream_cluster.name` (when a backend service was chosen), `http.status_code` (`0`
//!   when no response), `response_flags`, `node_id`, `zone`, the `grpc.*` tags of a gRPC
//!   request and answer, and `error` = `true` for a 5xx, no response, or a gRPC status that
//!   is a server error.
//! - Istio's custom tags (literals from the proxy's labels and node metadata, with Istio's
//!   fallbacks): `istio.canonical_service` (`unknown`), `istio.canonical_revision`
//!   (`latest`), `istio.mesh_id` (`unknown`), `istio.namespace` (`default`),
//!   `istio.cluster_id` (`unknown`).
//! - The operation (span name) is the route's decorator as Istio builds it for a waypoint:
//!   `<service-host>:<port>/*` for the default route, and for a route rule
//!   `<backend-host>:<backend-port><path>` with one backend (`<route-name>:<port><path>`
//!   with several), `<path>` being an exact path, a regex, `/*` otherwise.
//! - The cluster is the waypoint's VIP cluster, `inbound-vip|<port>|http|<service-host>`
//!   (Istio names the same name twice: `upstream_cluster` and its observability name).
//!
//! The OpenTelemetry semantic-convention names are not written as well: Istio's spans do
//! not carry them, and the same values twice would double every span's attributes.
//!
//! All of it is built only for sampled requests: [`RequestTags`] is captured when a request
//! arrives with an exporter configured and a sampled trace, never otherwise.

use std::net::IpAddr;

use http::HeaderValue;
use http::request::Parts;

use crate::state::route::{GrpcMatch, Match, PathMatch, Rule, StrMatch};

/// Istio's default `max_path_tag_length`: how much of the path `http.url` keeps.
pub const MAX_PATH_TAG: usize = 256;

/// Istio's fallbacks for its custom tags when the proxy's values are unknown.
const UNKNOWN: &str = "unknown";
const LATEST: &str = "latest";
const DEFAULT_NAMESPACE: &str = "default";

/// gRPC statuses Envoy counts as a server error (`error` = `true`): UNKNOWN,
/// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNIMPLEMENTED, UNAVAILABLE, DATA_LOSS.
const GRPC_SERVER_ERRORS: [&[u8]; 7] = [b"2", b"4", b"8", b"12", b"13", b"14", b"15"];

/// What every span of this waypoint carries the same: Envoy's local info and Istio's node
/// metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// The node id the waypoint presents to the control plane (`node_id`).
    pub node_id: String,
    /// The mesh id (`istio.mesh_id`); Istio's default is the trust domain.
    pub mesh_id: String,
    /// The cluster the waypoint runs in (`istio.cluster_id`).
    pub cluster_id: String,
    /// The waypoint's namespace (`istio.namespace`).
    pub namespace: String,
}

impl Default for Site {
    /// Istio's fallbacks, for a waypoint started without them (tests).
    fn default() -> Self {
        Site {
            node_id: String::new(),
            mesh_id: UNKNOWN.to_owned(),
            cluster_id: UNKNOWN.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

/// The request's side of a sampled span, captured as it arrives and completed as the
/// request is routed.
#[derive(Debug, Default)]
pub struct RequestTags {
    scheme: String,
    /// The authority as forwarded (a rewrite replaces it, as Envoy's does in place).
    authority: String,
    /// Path and query; the normalized path once known.
    path: String,
    method: String,
    user_agent: String,
    request_id: Option<String>,
    downstream_cluster: String,
    protocol: &'static str,
    peer: Option<IpAddr>,
    /// `grpc.path`, `grpc.authority`, `grpc.content_type`, `grpc.timeout` of a gRPC request.
    grpc: Option<Vec<(&'static str, String)>>,
    /// The waypoint's own canonical service and revision, and zone.
    canonical_service: String,
    canonical_revision: String,
    zone: String,
    /// The span name: the route's operation.
    operation: String,
    /// The backend service's host and port.
    cluster: Option<(String, u16)>,
    /// `grpc-message` of the answer.
    grpc_message: Option<String>,
}

fn header(parts: &Parts, name: &str) -> Option<String> {
    parts.headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

impl RequestTags {
    /// Captures the request head. `own` is the waypoint's own workload (its canonical
    /// service, revision and zone), `service` the destination service's host and port.
    pub fn capture(
        parts: &Parts,
        peer: IpAddr,
        own: Option<&ztunnel::state::Workload>,
        service: Option<(&str, u16)>,
    ) -> Self {
        let authority =
            parts.uri.authority().map(|a| a.as_str().to_owned()).or_else(|| header(parts, "host")).unwrap_or_default();
        let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        let grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .filter(|v| v.as_bytes().starts_with(b"application/grpc"))
            .map(|ct| {
                let mut g = vec![
                    ("grpc.path", path.clone()),
                    ("grpc.authority", authority.clone()),
                    ("grpc.content_type", String::from_utf8_lossy(ct.as_bytes()).into_owned()),
                ];
                if let Some(t) = header(parts, "grpc-timeout") {
                    g.push(("grpc.timeout", t));
                }
                g
            });
        let or = |s: &str, d: &str| if s.is_empty() { d.to_owned() } else { s.to_owned() };
        RequestTags {
            scheme: header(parts, "x-forwarded-proto").unwrap_or_else(|| "http".to_owned()),
            authority,
            path,
            method: parts.method.as_str().to_owned(),
            user_agent: header(parts, "user-agent").unwrap_or_else(|| "-".to_owned()),
            request_id: header(parts, "x-request-id"),
            downstream_cluster: header(parts, "x-envoy-downstream-service-cluster").unwrap_or_else(|| "-".to_owned()),
            protocol: protocol(parts.version),
            peer: Some(peer),
            grpc,
            canonical_service: or(own.map_or("", |w| w.canonical_name.as_str()), UNKNOWN),
            canonical_revision: or(own.map_or("", |w| w.canonical_revision.as_str()), LATEST),
            zone: own.map(|w| w.locality.zone.clone()).unwrap_or_default(),
            operation: service.map_or_else(|| "ingress".to_owned(), |(h, p)| default_operation(h, p)),
            cluster: None,
            grpc_message: None,
        }
    }

    /// The normalized path (and the query as sent): what Envoy's `:path` holds after its
    /// normalization.
    pub fn normalized(&mut self, path: &str, query: Option<&str>) {
        self.path = match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_owned(),
        };
    }

    /// The authority a rewrite forwards instead.
    pub fn rewritten_authority(&mut self, authority: &str) {
        authority.clone_into(&mut self.authority);
    }

    /// The route rule that matched with its match, on the service port `port`.
    pub fn routed(&mut self, rule: &Rule, matched: &Match, port: u16) {
        let path = match (&matched.path, &matched.grpc) {
            (Some(PathMatch::Exact(p)), _) => p.clone(),
            (Some(PathMatch::Regex(r)), _) => r.as_str().to_owned(),
            // Istio makes a GRPCRoute's exact service and method an exact path.
            (None, Some(GrpcMatch { service: Some(StrMatch::Exact(s)), method: Some(StrMatch::Exact(m)) })) => {
                format!("/{s}/{m}")
            }
            // Istio's operation names a plain prefix (`/`) as `/*` and has no form for the
            // path-separated prefix Gateway API prefixes become: `/*` too.
            _ => "/*".to_owned(),
        };
        self.operation = match rule.backends.as_slice() {
            [b] => format!("{}:{}{path}", b.hostname, b.port),
            _ => format!("{}:{port}{path}", rule.route.rsplit('/').next().unwrap_or_default()),
        };
    }

    /// The backend service the request went to.
    pub fn backend(&mut self, host: &str, port: u16) {
        self.cluster = Some((host.to_owned(), port));
    }

    /// The answer's `grpc-message`.
    pub fn grpc_message(&mut self, v: &HeaderValue) {
        self.grpc_message = Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }

    /// The span's name.
    pub fn operation(&self) -> &str {
        &self.operation
    }
}

/// Istio's operation for a service port's default route.
pub fn default_operation(host: &str, port: u16) -> String {
    format!("{host}:{port}/*")
}

/// Istio's name for a waypoint's cluster of a service port.
pub fn cluster_name(host: &str, port: u16) -> String {
    format!("inbound-vip|{port}|http|{host}")
}

/// `http.protocol` as Envoy writes it.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The response's side of a span.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// HTTP status (0: none).
    pub status: u16,
    /// Envoy's response flags.
    pub flags: &'a str,
    /// Request body bytes received.
    pub request_size: u64,
    /// Response body bytes sent.
    pub response_size: u64,
    /// The answer's `grpc-status`.
    pub grpc_status: Option<&'a HeaderValue>,
}

/// The span's attributes, and whether it is an error.
pub fn attributes(req: &RequestTags, out: &Outcome<'_>, site: &Site) -> (Vec<(&'static str, String)>, bool) {
    let mut a: Vec<(&'static str, String)> = Vec::with_capacity(32);
    if let Some(id) = &req.request_id {
        a.push(("guid:x-request-id", id.clone()));
    }
    let mut end = req.path.len().min(MAX_PATH_TAG);
    while !req.path.is_char_boundary(end) {
        end -= 1;
    }
    a.push(("http.url", format!("{}://{}{}", req.scheme, req.authority, &req.path[..end])));
    a.push(("http.method", req.method.clone()));
    a.push(("downstream_cluster", req.downstream_cluster.clone()));
    a.push(("user_agent", req.user_agent.clone()));
    a.push(("http.protocol", req.protocol.to_owned()));
    if let Some(p) = req.peer {
        a.push(("peer.address", p.to_string()));
    }
    if let Some(g) = &req.grpc {
        a.extend(g.iter().cloned());
    }
    a.push(("request_size", out.request_size.to_string()));
    a.push(("response_size", out.response_size.to_string()));
    a.push(("component", "proxy".to_owned()));
    if let Some((host, port)) = &req.cluster {
        let name = cluster_name(host, *port);
        a.push(("upstream_cluster", name.clone()));
        a.push(("upstream_cluster.name", name));
    }
    a.push(("http.status_code", out.status.to_string()));
    a.push(("response_flags", out.flags.to_owned()));
    let mut error = out.status == 0 || (500..600).contains(&out.status);
    if let Some(s) = out.grpc_status {
        a.push(("grpc.status_code", String::from_utf8_lossy(s.as_bytes()).into_owned()));
        if let Some(m) = &req.grpc_message {
            a.push(("grpc.message", m.clone()));
        }
        error |= GRPC_SERVER_ERRORS.contains(&s.as_bytes());
    }
    if error {
        a.push(("error", "true".to_owned()));
    }
    a.push(("node_id", site.node_id.clone()));
    a.push(("zone", req.zone.clone()));
    a.push(("istio.canonical_revision", req.canonical_revision.clone()));
    a.push(("istio.canonical_service", req.canonical_service.clone()));
    a.push(("istio.mesh_id", site.mesh_id.clone()));
    a.push(("istio.namespace", site.namespace.clone()));
    a.push(("istio.cluster_id", site.cluster_id.clone()));
    (a, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> Parts {
        req.into_parts().0
    }

    fn get<'a>(a: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
        a.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_url_is_cut_at_256_path_bytes_and_absent_headers_read_dash() {
        let long = format!("/{}", "a".repeat(400));
        let p = parts(http::Request::get(&long).header("host", "svc:80").body(()).unwrap());
        let t = RequestTags::capture(&p, "10.0.0.1".parse().unwrap(), None, Some(("svc", 80)));
        let out = Outcome { status: 200, flags: "-", request_size: 0, response_size: 2, grpc_status: None };
        let (a, error) = attributes(&t, &out, &Site::default());
        assert!(!error);
        assert_eq!(get(&a, "http.url").unwrap(), format!("http://svc:80{}", &long[..256]));
        assert_eq!(get(&a, "user_agent"), Some("-"));
        assert_eq!(get(&a, "downstream_cluster"), Some("-"));
        assert_eq!(get(&a, "guid:x-request-id"), None, "only when the request has one");
        assert_eq!(get(&a, "upstream_cluster"), None, "only once a backend is chosen");
        assert_eq!(get(&a, "istio.canonical_service"), Some("unknown"));
        assert_eq!(get(&a, "istio.canonical_revision"), Some("latest"));
        assert_eq!(get(&a, "istio.namespace"), Some("default"));
        assert_eq!(t.operation(), "svc:80/*");
    }

    #[test]
    fn grpc_server_errors_and_no_response_are_errors() {
        let p = parts(http::Request::post("/pkg.Svc/M").header("content-type", "application/grpc").body(()).unwrap());
        let t = RequestTags::capture(&p, "10.0.0.1".parse().unwrap(), None, None);
        for (status, grpc, want) in [(200, "14", true), (200, "5", false), (200, "0", false), (0, "0", true)] {
            let g = HeaderValue::from_static(grpc);
            let out = Outcome { status, flags: "-", request_size: 0, response_size: 0, grpc_status: Some(&g) };
            let (a, error) = attributes(&t, &out, &Site::default());
            assert_eq!(error, want, "{status} {grpc}");
            assert_eq!(get(&a, "error").is_some(), want);
            assert_eq!(get(&a, "grpc.status_code"), Some(grpc));
        }
    }
}
