//! Gateway API kinds: `Gateway` (waypoints are those of class `istio-waypoint`), `HTTPRoute`
//! and `GRPCRoute` (`gateway.networking.k8s.io/v1`), and `ReferenceGrant` (`v1beta1`), which
//! lets routes in other namespaces send traffic to a namespace's Services.
//!
//! Route specs reject every field they do not know: a route field we drop could be a header
//! match or a filter the user relies on. One shape serves both route kinds (their rules share
//! most fields); what differs (path and query matches, redirects, the method match's form) is
//! checked per kind in `source::validate`.

use serde::Deserialize;

use super::ObjectMeta;

/// `gateway.networking.k8s.io/v1` `Gateway`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Gateway {
    /// Metadata; label `istio.io/waypoint-for` says which traffic a waypoint takes.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: GatewaySpec,
    /// Status; the first IP address, if any, is the waypoint's address.
    #[serde(default)]
    pub status: GatewayStatus,
}

/// `Gateway.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// `istio-waypoint` for a waypoint.
    pub gateway_class_name: String,
    /// Listeners.
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

/// `Gateway.spec.listeners[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Listener {
    /// Name.
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol (`HBONE` for a waypoint).
    pub protocol: String,
}

/// `Gateway.status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct GatewayStatus {
    /// Addresses assigned to the Gateway.
    #[serde(default)]
    pub addresses: Vec<GatewayStatusAddress>,
}

/// `Gateway.status.addresses[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct GatewayStatusAddress {
    /// `IPAddress` (default) or `Hostname`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// The value.
    pub value: String,
}

/// `HTTPRoute` or `GRPCRoute`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    /// `apiVersion` (checked before this type is chosen).
    #[serde(default)]
    pub api_version: String,
    /// `kind`.
    #[serde(default)]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: RouteSpec,
    /// Written by controllers; ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// `HTTPRoute.spec` / `GRPCRoute.spec`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteSpec {
    /// Where the route attaches (a `Service` for mesh routes).
    #[serde(default)]
    pub parent_refs: Vec<ParentReference>,
    /// Hostnames (`Host` / `:authority`); empty matches any.
    #[serde(default)]
    pub hostnames: Vec<String>,
    /// Rules. An absent list is one rule with no match and no backend (Gateway API default).
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

/// `spec.parentRefs[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentReference {
    /// API group (`""` for core `Service`; default `gateway.networking.k8s.io`).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Gateway`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port of the Service (absent: every port).
    #[serde(default)]
    pub port: Option<u16>,
    /// A Gateway's listener name; a Service's port name (as the Gateway API defines
    /// `sectionName` for a Service parent).
    #[serde(default)]
    pub section_name: Option<String>,
}

/// `spec.rules[]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteRule {
    /// Rule name.
    #[serde(default)]
    pub name: Option<String>,
    /// ORed matches; none means one match of path prefix `/` (any request for gRPC).
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Filters, in order.
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    /// Backends; none answers 500 (unless a redirect answers first).
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// `HTTPRoute` timeouts.
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    /// `HTTPRoute` retry.
    #[serde(default)]
    pub retry: Option<Retry>,
}

/// `rules[].matches[]`: `HTTPRouteMatch` or `GRPCRouteMatch`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatch {
    /// HTTP only.
    #[serde(default)]
    pub path: Option<PathMatch>,
    /// ANDed header matches.
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    /// HTTP only: ANDed query parameter matches.
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// An HTTP method (`GET`) for HTTPRoute, a `{type, service, method}` for GRPCRoute.
    #[serde(default)]
    pub method: Option<MethodMatch>,
}

/// `matches[].path`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Default `/`.
    #[serde(default)]
    pub value: Option<String>,
}

/// `matches[].headers[]` / `matches[].queryParams[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Header or parameter name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `matches[].method`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MethodMatch {
    /// HTTPRoute: the method name.
    Http(String),
    /// GRPCRoute: service and method.
    Grpc(GrpcMethodMatch),
}

/// GRPCRoute `matches[].method`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// gRPC service (`helloworld.Greeter`); absent matches any.
    #[serde(default)]
    pub service: Option<String>,
    /// gRPC method (`SayHello`); absent matches any.
    #[serde(default)]
    pub method: Option<String>,
}

/// `rules[].filters[]` and `backendRefs[].filters[]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteFilter {
    /// Which filter: `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestRedirect`,
    /// `URLRewrite`, `RequestMirror` (`ExtensionRef` and others are refused).
    #[serde(rename = "type")]
    pub type_: String,
    /// For `RequestHeaderModifier`.
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `RequestRedirect`.
    #[serde(default)]
    pub request_redirect: Option<RequestRedirect>,
    /// For `URLRewrite`.
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestMirror`.
    #[serde(default)]
    pub request_mirror: Option<RequestMirror>,
    /// For `ExtensionRef`: read so the error can say it is not supported.
    #[serde(default)]
    pub extension_ref: Option<serde_yaml::Value>,
}

/// `HTTPHeaderFilter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderModifier {
    /// Headers to set.
    #[serde(default)]
    pub set: Vec<HttpHeader>,
    /// Headers to append.
    #[serde(default)]
    pub add: Vec<HttpHeader>,
    /// Header names to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `HTTPHeader`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    /// Name.
    pub name: String,
    /// Value.
    pub value: String,
}

/// `HTTPRequestRedirectFilter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Host of the `Location`.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Path of the `Location`.
    #[serde(default)]
    pub path: Option<PathModifier>,
    /// Port of the `Location`.
    #[serde(default)]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default)]
    pub status_code: Option<u32>,
}

/// `HTTPURLRewriteFilter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlRewrite {
    /// New Host.
    #[serde(default)]
    pub hostname: Option<String>,
    /// New path.
    #[serde(default)]
    pub path: Option<PathModifier>,
}

/// `HTTPPathModifier`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub type_: String,
    /// For `ReplaceFullPath`.
    #[serde(default)]
    pub replace_full_path: Option<String>,
    /// For `ReplacePrefixMatch`.
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

/// `HTTPRequestMirrorFilter`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendObjectRef,
    /// Share of requests mirrored (0-100).
    #[serde(default)]
    pub percent: Option<u32>,
    /// Share of requests mirrored as a fraction.
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

/// `Fraction`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fraction {
    /// Numerator.
    pub numerator: u32,
    /// Denominator (default 100).
    #[serde(default)]
    pub denominator: Option<u32>,
}

/// `BackendObjectReference` (a mirror's backend).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendObjectRef {
    /// API group (default `""`, core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port; required for a Service.
    #[serde(default)]
    pub port: Option<u16>,
}

/// `rules[].backendRefs[]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    /// API group (default `""`, core).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (default `Service`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Name.
    pub name: String,
    /// Namespace (default: the route's).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Port; required for a Service.
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Filters applied after the rule's, for requests sent to this backend.
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
}

/// `HTTPRouteTimeouts`, durations in the Gateway API format (`1h2m3s4ms`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole request.
    #[serde(default)]
    pub request: Option<String>,
    /// One try to a backend.
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `HTTPRouteRetry`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Further tries after the first (default 2, Istio's).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Retried status codes (400-599).
    #[serde(default)]
    pub codes: Vec<u32>,
    /// Base backoff (default 25ms).
    #[serde(default)]
    pub backoff: Option<String>,
}

/// Parses a Gateway API `Duration`: one to four `<1-5 digits><h|m|s|ms>` parts (`1h30m`,
/// `500ms`, `0s`), as the API's validation pattern allows.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s;
    let mut total = std::time::Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(n), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// `gateway.networking.k8s.io/v1beta1` `ReferenceGrant`: in its own namespace, lets the
/// objects listed in `from` refer to the objects listed in `to`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReferenceGrant {
    /// `apiVersion` (checked before this type is chosen).
    #[serde(default)]
    pub api_version: String,
    /// `kind`.
    #[serde(default)]
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    pub spec: ReferenceGrantSpec,
}

/// `ReferenceGrant.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantSpec {
    /// Who may refer (at least one).
    pub from: Vec<ReferenceGrantFrom>,
    /// To what in this namespace (at least one).
    pub to: Vec<ReferenceGrantTo>,
}

/// `ReferenceGrant.spec.from[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantFrom {
    /// API group of the referring kind (`gateway.networking.k8s.io` for routes).
    pub group: String,
    /// The referring kind, e.g. `HTTPRoute`.
    pub kind: String,
    /// The namespace the referring objects live in.
    pub namespace: String,
}

/// `ReferenceGrant.spec.to[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceGrantTo {
    /// API group of the referent (`""`, core, for a Service).
    pub group: String,
    /// The referent's kind, e.g. `Service`.
    pub kind: String,
    /// Only this object; absent: every object of the kind.
    #[serde(default)]
    pub name: Option<String>,
}

impl ReferenceGrant {
    /// Whether this grant lets a `from_kind` in `from_namespace` refer to the core Service
    /// `name` in the grant's namespace.
    pub fn permits_service(&self, from_kind: &str, from_namespace: &str, name: &str) -> bool {
        let from = self
            .spec
            .from
            .iter()
            .any(|f| f.group == GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_namespace);
        let to = self
            .spec
            .to
            .iter()
            .any(|t| t.group.is_empty() && t.kind == "Service" && t.name.as_deref().is_none_or(|n| n == name));
        from && to
    }
}

impl RouteRule {
    /// Whether a backend or a mirror of this rule names `namespace` explicitly.
    pub fn refers_to_namespace(&self, namespace: &str) -> bool {
        let mirror = |f: &RouteFilter| {
            f.request_mirror.as_ref().is_some_and(|m| m.backend_ref.namespace.as_deref() == Some(namespace))
        };
        self.filters.iter().any(mirror)
            || self
                .backend_refs
                .iter()
                .any(|b| b.namespace.as_deref() == Some(namespace) || b.filters.iter().any(mirror))
    }
}

/// The Gateway API's group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
