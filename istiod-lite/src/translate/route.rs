//! `HTTPRoute` / `GRPCRoute` with `parentRefs` to Services → `mesh.waypoint.v1.Route`, and the
//! route's Gateway API status (per parent: `Accepted`, `ResolvedRefs`).
//!
//! - Parents: a core `Service` in the route's namespace (port optional) is accepted; an unknown
//!   Service or a port it lacks is `NoMatchingParent`; a waypoint `Gateway` is
//!   `NotAllowedByListeners` (mesh routes attach to Services); another kind is `InvalidKind`;
//!   a Service in another namespace (a "consumer" route) is `UnsupportedValue`. Parents that
//!   are Gateways of another class belong to another controller and are skipped. A route with
//!   no accepted parent sends nothing.
//! - Route types: one type is applied per Service port, GRPCRoute before HTTPRoute (the Gateway
//!   API's mesh binding). An HTTPRoute parent that binds a port of a Service that an accepted
//!   GRPCRoute binds too is refused, `Conflicted`, naming the GRPCRoutes (also a translation
//!   warning of the HTTPRoute); a parent without a port binds every port (`grpc_routes_taking`).
//! - Backends: Services resolve to their FQDN. A Service in another namespace needs a
//!   `ReferenceGrant` there whose `from` names this route's kind and namespace and whose `to`
//!   names core `Service` (all of them, or this one by name). A reference that does not
//!   resolve (unknown Service or port: `BackendNotFound`; another kind: `InvalidKind`; another
//!   namespace without a grant: `RefNotPermitted`) keeps its weight with an empty hostname, so
//!   the waypoint answers 500 for its share of requests, as the Gateway API requires; a mirror
//!   whose backend does not resolve is left out (the API says it must not be configured).
//!   Of header (or query) matches with equivalent names, only the first is sent.
//! - Defaults as the API server applies them: path match `PathPrefix /`, header and query
//!   matches `Exact`, weight 1, redirect status 302, mirror percent 100; `0s` timeouts mean
//!   none; a retry without `attempts` tries twice more (Istio's default); backoff 25 ms.
//!
//! - Filters: header names and redirect / rewrite hostnames are sent in lower case; a redirect's
//!   `statusCode` is any of the API's enum (301, 302, 303, 307, 308).
//!
//! - Invalid rules (an unknown redirect `statusCode`, a header name given twice in one header
//!   modifier, case aside, across `set`/`add`/`remove`, a redirect or rewrite `hostname` that is
//!   not a `PreciseHostname`, an unsupported filter, ...; see [`crate::source::invalid_rules`])
//!   are dropped, as the Gateway API's "Dropped Rule" way of `PartiallyInvalid` has it: the
//!   route's other rules are sent and served, each accepted parent gets `PartiallyInvalid` True
//!   (reason `UnsupportedValue`, message `Dropped Rule(s) spec.rules[i]: <field>: <why>; ...`)
//!   beside `Accepted` True, and each dropped rule is a translation warning naming the field.
//!   The waypoint never sees a dropped rule, so it has nothing to refuse. A fully valid route
//!   has no `PartiallyInvalid` condition at all (the API forbids `False`), so the condition goes
//!   away when the route is fixed.
//!
//! Input was otherwise validated when read ([`crate::source`]). A route with a problem outside
//! its rules (`parentRefs`, `hostnames`), or whose every rule is invalid, is rejected whole
//! there, naming the object and field, as the API server would refuse it at `kubectl apply`: it
//! is reported as a rejected object and never reaches translation; in Kubernetes mode its
//! parents still get a status saying why ([`refused`]). (Should one reach translation anyway,
//! every parent is refused with `UnsupportedValue` and nothing is sent.)

use std::fmt;

use proto::mesh::waypoint::v1 as pb;
use serde::Serialize;

use super::MeshConfig;
use super::waypoint::{For, resolve};
use crate::k8s::core::Service;
use crate::k8s::gateway::{
    BackendObjectRef, MethodMatch, ParentReference, PathModifier, Route, RouteFilter, parse_duration,
};
use crate::model::{Model, in_namespace};
use crate::source::{InvalidRule, invalid_rules};

/// `<namespace>/<HTTPRoute|GRPCRoute>/<name>`, the resource name.
pub fn resource_name(namespace: &str, grpc: bool, name: &str) -> String {
    format!("{namespace}/{}/{name}", if grpc { "GRPCRoute" } else { "HTTPRoute" })
}

/// One status condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// `Accepted`, `ResolvedRefs` or `PartiallyInvalid`.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// `True` / `False`.
    pub status: bool,
    /// Gateway API reason (`Accepted`, `NoMatchingParent`, `BackendNotFound`, ...).
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The status of a route for one of its parents (`status.parents[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// The parent as written: `Service shop/reviews`, with `:port` when set.
    pub parent_ref: String,
    /// `parentRef.group` with its default applied.
    pub group: String,
    /// `parentRef.kind` with its default applied.
    pub kind: String,
    /// `parentRef.namespace` with its default (the route's) applied.
    pub namespace: String,
    /// `parentRef.name`.
    pub name: String,
    /// `parentRef.port`.
    pub port: Option<u16>,
    /// `parentRef.sectionName`.
    pub section_name: Option<String>,
    /// `Accepted`, `ResolvedRefs`, then `PartiallyInvalid` when rules were dropped.
    pub conditions: Vec<Condition>,
}

impl fmt::Display for ParentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.parent_ref)?;
        for c in &self.conditions {
            write!(f, " {}={} ({})", c.type_, if c.status { "True" } else { "False" }, c.reason)?;
        }
        Ok(())
    }
}

/// What translating one route gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The resource, when at least one parent accepted the route.
    pub route: Option<pb::Route>,
    /// `status.parents`.
    pub parents: Vec<ParentStatus>,
    /// Problems worth a warning (unresolved references, parents without a waypoint, dropped rules).
    pub warnings: Vec<String>,
}

/// The first unresolved reference of a route.
struct Unresolved {
    reason: &'static str,
    message: String,
}

struct Cx<'a> {
    cfg: &'a MeshConfig,
    model: &'a Model,
    ns: &'a str,
    /// A `GRPCRoute` (else an `HTTPRoute`): the kind a ReferenceGrant must name.
    grpc: bool,
    unresolved: Option<Unresolved>,
    warnings: Vec<String>,
}

impl Cx<'_> {
    fn unresolved(&mut self, reason: &'static str, message: String) {
        self.warnings.push(message.clone());
        if self.unresolved.is_none() {
            self.unresolved = Some(Unresolved { reason, message });
        }
    }

    /// FQDN of a Service backend, or "" (and a ResolvedRefs failure) when it does not resolve.
    fn backend(
        &mut self,
        field: &str,
        group: Option<&str>,
        kind: Option<&str>,
        name: &str,
        ns: Option<&str>,
        port: Option<u16>,
    ) -> String {
        let is_service = group.unwrap_or("").is_empty() && kind.unwrap_or("Service") == "Service";
        if !is_service {
            self.unresolved(
                "InvalidKind",
                format!("{field}: {}/{} is not a Service", group.unwrap_or(""), kind.unwrap_or("")),
            );
            return String::new();
        }
        let ns = ns.unwrap_or(self.ns);
        let kind = if self.grpc { "GRPCRoute" } else { "HTTPRoute" };
        if ns != self.ns && !self.model.service_reference_permitted(kind, self.ns, ns, name) {
            self.unresolved(
                "RefNotPermitted",
                format!(
                    "{field}: Service {ns}/{name} is in another namespace, and no ReferenceGrant in {ns} lets a {kind} from {} refer to it",
                    self.ns
                ),
            );
            return String::new();
        }
        let Some(svc) = self.model.services.get(&(ns.to_owned(), name.to_owned())) else {
            self.unresolved("BackendNotFound", format!("{field}: Service {ns}/{name} not found"));
            return String::new();
        };
        if let Some(p) = port
            && !svc.spec.ports.iter().any(|sp| sp.port == p)
        {
            self.unresolved("BackendNotFound", format!("{field}: Service {ns}/{name} has no port {p}"));
            return String::new();
        }
        self.cfg.hostname(ns, name)
    }

    fn mirror_backend(&mut self, field: &str, b: &BackendObjectRef) -> pb::Backend {
        let hostname =
            self.backend(field, b.group.as_deref(), b.kind.as_deref(), &b.name, b.namespace.as_deref(), b.port);
        pb::Backend { hostname, port: u32::from(b.port.unwrap_or(0)), weight: 1, filters: Vec::new() }
    }

    fn filter(&mut self, field: &str, f: &RouteFilter) -> Option<pb::Filter> {
        use pb::filter::Kind as K;
        let headers = |m: &crate::k8s::gateway::HeaderModifier| pb::HeaderModifier {
            set: m
                .set
                .iter()
                .map(|h| pb::Header { name: h.name.to_ascii_lowercase(), value: h.value.clone() })
                .collect(),
            add: m
                .add
                .iter()
                .map(|h| pb::Header { name: h.name.to_ascii_lowercase(), value: h.value.clone() })
                .collect(),
            remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
        };
        let kind = match f.type_.as_str() {
            "RequestHeaderModifier" => K::RequestHeaderModifier(headers(f.request_header_modifier.as_ref()?)),
            "ResponseHeaderModifier" => K::ResponseHeaderModifier(headers(f.response_header_modifier.as_ref()?)),
            "RequestRedirect" => {
                let r = f.request_redirect.as_ref()?;
                K::RequestRedirect(pb::RequestRedirect {
                    scheme: r.scheme.clone().unwrap_or_default(),
                    hostname: r.hostname.as_deref().unwrap_or_default().to_ascii_lowercase(),
                    path: r.path.as_ref().map(path_modifier),
                    port: u32::from(r.port.unwrap_or(0)),
                    status_code: r.status_code.unwrap_or(302),
                })
            }
            "URLRewrite" => {
                let u = f.url_rewrite.as_ref()?;
                K::UrlRewrite(pb::UrlRewrite {
                    hostname: u.hostname.as_deref().unwrap_or_default().to_ascii_lowercase(),
                    path: u.path.as_ref().map(path_modifier),
                })
            }
            "RequestMirror" => {
                let m = f.request_mirror.as_ref()?;
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => *p,
                    // Rounded down: never mirror more than asked.
                    (None, Some(fr)) => {
                        (u64::from(fr.numerator) * 100 / u64::from(fr.denominator.unwrap_or(100).max(1))) as u32
                    }
                    (None, None) => 100,
                };
                let backend = self.mirror_backend(&format!("{field}.requestMirror.backendRef"), &m.backend_ref);
                // Gateway API: a mirror whose backend does not resolve is dropped (the
                // ResolvedRefs failure is recorded), not configured.
                if backend.hostname.is_empty() {
                    return None;
                }
                K::RequestMirror(pb::RequestMirror { backend: Some(backend), percent })
            }
            _ => return None,
        };
        Some(pb::Filter { kind: Some(kind) })
    }
}

fn path_modifier(p: &PathModifier) -> pb::PathModifier {
    use pb::path_modifier::Kind as K;
    let kind = match p.type_.as_str() {
        "ReplacePrefixMatch" => K::ReplacePrefixMatch(p.replace_prefix_match.clone().unwrap_or_default()),
        _ => K::ReplaceFullPath(p.replace_full_path.clone().unwrap_or_default()),
    };
    pb::PathModifier { kind: Some(kind) }
}

fn match_type(t: Option<&str>, default: pb::MatchType) -> pb::MatchType {
    match t {
        Some("Exact") => pb::MatchType::Exact,
        Some("PathPrefix") => pb::MatchType::PathPrefix,
        Some("RegularExpression") => pb::MatchType::RegularExpression,
        _ => default,
    }
}

fn duration(s: Option<&str>) -> Option<prost_types::Duration> {
    let d = parse_duration(s?)?;
    // Gateway API: a zero duration disables the timeout.
    (!d.is_zero()).then(|| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

fn describe_parent(route_ns: &str, p: &ParentReference) -> String {
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    let ns = p.namespace.as_deref().unwrap_or(route_ns);
    let mut out = match p.port {
        Some(port) => format!("{kind} {ns}/{}:{port}", p.name),
        None => format!("{kind} {ns}/{}", p.name),
    };
    if let Some(section) = &p.section_name {
        out.push_str(&format!(" (sectionName {section})"));
    }
    out
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`2024-05-01T10:00:00Z`), 0 if unreadable.
pub fn epoch_seconds(ts: &str) -> i64 {
    let parse = || -> Option<i64> {
        let (date, time) = ts.split_once('T')?;
        let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
        let (y, m, day) = (d.next()??, d.next()??, d.next()??);
        let time = time.trim_end_matches('Z');
        let time = time.split(['+', '.']).next()?;
        let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
        let (h, min, s) = (t.next()??, t.next()??, t.next()??);
        // Days from civil (proleptic Gregorian), Howard Hinnant's well-known formula.
        let y = if m <= 2 { y - 1 } else { y };
        let era = if y >= 0 { y } else { y - 399 } / 400;
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        Some(days * 86_400 + h * 3600 + min * 60 + s)
    };
    parse().unwrap_or(0)
}

/// `spec.rules[i]: <field within the rule>: <why>`, the form the `PartiallyInvalid` message
/// lists dropped rules in.
fn dropped_rule(d: &InvalidRule) -> String {
    let rule = format!("spec.rules[{}]", d.index);
    let full = d.error.to_string();
    match full.strip_prefix(&rule).and_then(|rest| rest.strip_prefix('.')) {
        Some(within) => format!("{rule}: {within}"),
        None => format!("{rule}: {full}"),
    }
}

/// What one `parentRef` of a route names, before the route's own problems count.
enum Parent<'m> {
    /// A Service of the route's namespace, with the port asked for when there is one.
    Service { svc: &'m Service, port: Option<u16> },
    /// Not a parent this route can have: reason and message of `Accepted` False.
    Refused(&'static str, String),
    /// A Gateway of another class: another controller's parent, whose status is not ours.
    Foreign,
}

/// Resolves `spec.parentRefs[i]` of a route in namespace `ns`.
fn parent<'m>(model: &'m Model, ns: &str, i: usize, p: &ParentReference) -> Parent<'m> {
    let group = p.group.as_deref().unwrap_or("gateway.networking.k8s.io");
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    let pns = p.namespace.as_deref().unwrap_or(ns);
    let refused = Parent::Refused;
    match (group, kind) {
        ("" | "core", "Service") if pns != ns => refused(
            "UnsupportedValue",
            format!(
                "spec.parentRefs[{i}]: routes for Services of another namespace (consumer routes) are not supported"
            ),
        ),
        ("" | "core", "Service") => match model.services.get(&(pns.to_owned(), p.name.clone())) {
            None => refused("NoMatchingParent", format!("spec.parentRefs[{i}]: Service {pns}/{} not found", p.name)),
            Some(svc) if p.port.is_some_and(|port| !svc.spec.ports.iter().any(|sp| sp.port == port)) => refused(
                "NoMatchingParent",
                format!("spec.parentRefs[{i}]: Service {pns}/{} has no port {}", p.name, p.port.unwrap_or(0)),
            ),
            // A Service's section is a port, by name; with `port` too, both must fit one port.
            // Ignored, it would bind every port of the Service: more than the route asked for.
            Some(svc) => match &p.section_name {
                None => Parent::Service { svc, port: p.port },
                Some(section) => match svc
                    .spec
                    .ports
                    .iter()
                    .find(|sp| sp.name.as_deref() == Some(section) && p.port.is_none_or(|port| port == sp.port))
                {
                    Some(sp) => Parent::Service { svc, port: Some(sp.port) },
                    None => refused(
                        "NoMatchingParent",
                        format!(
                            "spec.parentRefs[{i}].sectionName: Service {pns}/{} has no port named {section:?}{}",
                            p.name,
                            p.port.map(|port| format!(" with number {port}")).unwrap_or_default()
                        ),
                    ),
                },
            },
        },
        ("gateway.networking.k8s.io", "Gateway") => match model.gateways.get(&(pns.to_owned(), p.name.clone())) {
            Some(gw) if gw.spec.gateway_class_name == super::WAYPOINT_CLASS => refused(
                "NotAllowedByListeners",
                format!(
                    "spec.parentRefs[{i}]: routes attach to the Services that use waypoint {pns}/{}, not to the waypoint Gateway",
                    p.name
                ),
            ),
            Some(_) => Parent::Foreign,
            None => refused("NoMatchingParent", format!("spec.parentRefs[{i}]: Gateway {pns}/{} not found", p.name)),
        },
        _ => refused("InvalidKind", format!("spec.parentRefs[{i}]: {group}/{kind} cannot be a route parent")),
    }
}

/// The GRPCRoutes of namespace `ns` that bind Service `service` where an HTTPRoute's
/// `parentRef` with `port` binds it, described for the HTTPRoute's status (empty if none).
///
/// The Gateway API's mesh binding applies one route type per Service port: GRPCRoute before
/// HTTPRoute (then TLSRoute and TCPRoute, which we do not serve). The loser is not applied
/// there and its parent says `Accepted` False, reason `Conflicted`, naming the winners.
///
/// Ports follow what the waypoint does with a route's parents: a `parentRef` with a `port`
/// binds that port (it must be one of the Service's, or the parent is `NoMatchingParent` and
/// binds nothing); one without (sent as port 0) binds every port, as the waypoint files its
/// rules under each port the Service declares and under its every-port fallback. So two
/// bindings of one Service meet when either has no port or both have the same one.
///
/// Only accepted GRPCRoute parents take a port: a GRPCRoute parent refused for its own reason
/// (unknown Service or port, another namespace) or a GRPCRoute refused whole (every rule
/// invalid) takes none. Parents are Services of the route's own namespace, so only the
/// GRPCRoutes of `ns` can conflict with an HTTPRoute of `ns`.
///
/// A port-less HTTPRoute parent loses whole even when the GRPCRoutes take only some of the
/// Service's ports: status is per `parentRef`, and a parent served on the other ports while
/// reported as not accepted (or reported accepted while its rules are left out on some port)
/// would mislead whoever reads it. Naming a port in the HTTPRoute's `parentRef` serves it there.
fn grpc_routes_taking(model: &Model, ns: &str, service: &str, port: Option<u16>) -> Vec<String> {
    let mut out = Vec::new();
    for ((_, name), g) in in_namespace(&model.grpc_routes, ns) {
        let mut ports: Vec<Option<u16>> = g
            .spec
            .parent_refs
            .iter()
            .enumerate()
            .filter_map(|(j, gp)| match parent(model, ns, j, gp) {
                Parent::Service { svc, port: gport }
                    if svc.metadata.name == service && (port.is_none() || gport.is_none() || port == gport) =>
                {
                    Some(port.or(gport))
                }
                _ => None,
            })
            .collect();
        // Checked last: it compiles the route's regexes.
        if ports.is_empty() || (!g.spec.rules.is_empty() && invalid_rules(g, true).len() == g.spec.rules.len()) {
            continue;
        }
        ports.sort_unstable();
        ports.dedup();
        let route = format!("GRPCRoute {ns}/{name} also binds");
        out.push(match ports[..] {
            [None, ..] => format!("{route} every port of Service {ns}/{service}"),
            [Some(p)] => format!("{route} Service {ns}/{service} port {p}"),
            _ => {
                let list: Vec<String> = ports.iter().flatten().map(u16::to_string).collect();
                format!("{route} Service {ns}/{service} ports {}", list.join(", "))
            }
        });
    }
    out
}

/// The status of `p`, a parent of a route in namespace `ns`, with its defaults applied.
fn parent_status(ns: &str, p: &ParentReference, conditions: Vec<Condition>) -> ParentStatus {
    ParentStatus {
        parent_ref: describe_parent(ns, p),
        group: p.group.as_deref().unwrap_or("gateway.networking.k8s.io").to_owned(),
        kind: p.kind.as_deref().unwrap_or("Gateway").to_owned(),
        namespace: p.namespace.as_deref().unwrap_or(ns).to_owned(),
        name: p.name.clone(),
        port: p.port,
        section_name: p.section_name.clone(),
        conditions,
    }
}

/// `status.parents` of a route of namespace `ns` refused whole before translation (in
/// Kubernetes mode, by the source: a problem outside its rules, every rule invalid, a field we
/// do not know), `why` naming the field: nothing of it is served.
///
/// Parents resolve as for a translated route: another controller's Gateway is skipped, a
/// parent refused for its own reason (unknown Service, another namespace, ...) keeps that
/// reason, and every other parent says `Accepted` False with reason `UnsupportedValue` and
/// `why` (the reason the Gateway API gives for a value an implementation does not take; the
/// others are about Gateway listeners, which mesh parents do not have). There is no
/// `ResolvedRefs`: the rules were not read, so nothing can be said of their references.
pub fn refused(model: &Model, ns: &str, parent_refs: &[ParentReference], why: &str) -> Vec<ParentStatus> {
    let mut out = Vec::new();
    for (i, p) in parent_refs.iter().enumerate() {
        let (reason, message) = match parent(model, ns, i, p) {
            Parent::Foreign => continue,
            Parent::Refused(reason, message) => (reason, message),
            Parent::Service { .. } => ("UnsupportedValue", format!("the route is invalid and not served: {why}")),
        };
        out.push(parent_status(ns, p, vec![Condition { type_: "Accepted", status: false, reason, message }]));
    }
    out
}

/// Translates one route; `grpc` for a `GRPCRoute`.
pub fn translate(cfg: &MeshConfig, model: &Model, grpc: bool, r: &Route) -> Outcome {
    let ns = r.metadata.namespace.as_str();
    let mut cx = Cx { cfg, model, ns, grpc, unresolved: None, warnings: Vec::new() };
    let dropped = invalid_rules(r, grpc);
    let every_rule_dropped = !dropped.is_empty() && dropped.len() == r.spec.rules.len();
    let dropped_list = dropped.iter().map(dropped_rule).collect::<Vec<_>>().join("; ");
    // Accepted with nothing to serve would hide the problem: such a route is refused instead
    // (the source refuses it first; this keeps translation right on its own).
    let refused_for_rules = every_rule_dropped.then(|| format!("every rule is invalid: {dropped_list}"));
    let partially_invalid = (!dropped.is_empty() && !every_rule_dropped).then(|| Condition {
        type_: "PartiallyInvalid",
        status: true,
        reason: "UnsupportedValue",
        message: format!("Dropped Rule(s) {dropped_list}"),
    });
    if !every_rule_dropped {
        for d in &dropped {
            cx.warnings.push(format!("Dropped Rule spec.rules[{}] (the other rules are served): {}", d.index, d.error));
        }
    }
    let rules = rules(&mut cx, grpc, r, &dropped);
    let resolved = match cx.unresolved.take() {
        None => Condition { type_: "ResolvedRefs", status: true, reason: "ResolvedRefs", message: String::new() },
        Some(u) => Condition { type_: "ResolvedRefs", status: false, reason: u.reason, message: u.message },
    };
    let mut parents = Vec::new();
    let mut accepted = Vec::new();
    for (i, p) in r.spec.parent_refs.iter().enumerate() {
        let verdict: Option<(&'static str, String)> = match parent(model, ns, i, p) {
            Parent::Foreign => continue,
            Parent::Refused(reason, message) => Some((reason, message)),
            Parent::Service { svc, port } => match (!grpc).then(|| grpc_routes_taking(model, ns, &p.name, port)) {
                Some(taken) if !taken.is_empty() => Some((
                    "Conflicted",
                    format!("spec.parentRefs[{i}]: {}; GRPCRoute takes precedence over HTTPRoute", taken.join(", ")),
                )),
                _ => {
                    if !matches!(resolve(cfg, model, ns, &svc.metadata.labels, For::Service, None), Ok(Some(_))) {
                        cx.warnings.push(format!(
                            "spec.parentRefs[{i}]: Service {ns}/{} does not use a waypoint; the route has no effect until it does",
                            p.name
                        ));
                    }
                    accepted.push(pb::ParentService {
                        hostname: cfg.hostname(ns, &p.name),
                        port: u32::from(port.unwrap_or(0)),
                    });
                    None
                }
            },
        };
        let verdict = match (verdict, &refused_for_rules) {
            (None, Some(message)) => Some(("UnsupportedValue", message.clone())),
            (verdict, _) => verdict,
        };
        let conditions = match verdict {
            None => {
                let accepted =
                    Condition { type_: "Accepted", status: true, reason: "Accepted", message: String::new() };
                // Only beside Accepted True: the API forbids it on a route that is not accepted.
                [Some(accepted), Some(resolved.clone()), partially_invalid.clone()].into_iter().flatten().collect()
            }
            Some((reason, message)) => {
                cx.warnings.push(message.clone());
                vec![Condition { type_: "Accepted", status: false, reason, message }, resolved.clone()]
            }
        };
        parents.push(parent_status(ns, p, conditions));
    }
    let route = (!accepted.is_empty() && refused_for_rules.is_none()).then(|| pb::Route {
        namespace: ns.to_owned(),
        name: r.metadata.name.clone(),
        kind: if grpc { pb::route::Kind::Grpc } else { pb::route::Kind::Http } as i32,
        parents: accepted,
        hostnames: r.spec.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
        rules,
        creation_timestamp: r.metadata.creation_timestamp.as_deref().map_or(0, epoch_seconds),
    });
    Outcome { route, parents, warnings: cx.warnings }
}

/// The rules to send: all but the `dropped` ones, whose backends are not resolved either (they
/// say nothing about `ResolvedRefs` of what is served).
fn rules(cx: &mut Cx<'_>, grpc: bool, r: &Route, dropped: &[InvalidRule]) -> Vec<pb::Rule> {
    let default_rule = [crate::k8s::gateway::RouteRule::default()];
    let written = if r.spec.rules.is_empty() { &default_rule[..] } else { &r.spec.rules[..] };
    let mut out = Vec::new();
    for (i, rule) in written.iter().enumerate() {
        if dropped.iter().any(|d| d.index == i) {
            continue;
        }
        let base = format!("spec.rules[{i}]");
        let mut matches: Vec<pb::Match> = rule.matches.iter().map(|m| route_match(grpc, m)).collect();
        if matches.is_empty() && !grpc {
            matches.push(pb::Match { path: Some(prefix_root()), ..Default::default() });
        }
        let filters = rule
            .filters
            .iter()
            .enumerate()
            .filter_map(|(k, f)| cx.filter(&format!("{base}.filters[{k}]"), f))
            .collect();
        let mut backends = Vec::new();
        for (k, b) in rule.backend_refs.iter().enumerate() {
            let field = format!("{base}.backendRefs[{k}]");
            let hostname =
                cx.backend(&field, b.group.as_deref(), b.kind.as_deref(), &b.name, b.namespace.as_deref(), b.port);
            let filters = b
                .filters
                .iter()
                .enumerate()
                .filter_map(|(j, f)| cx.filter(&format!("{field}.filters[{j}]"), f))
                .collect();
            backends.push(pb::Backend {
                hostname,
                port: u32::from(b.port.unwrap_or(0)),
                weight: b.weight.unwrap_or(1),
                filters,
            });
        }
        let timeouts = rule.timeouts.as_ref().map(|t| pb::Timeouts {
            request: duration(t.request.as_deref()),
            backend_request: duration(t.backend_request.as_deref()),
        });
        let retry = rule.retry.as_ref().map(|rt| pb::Retry {
            attempts: rt.attempts.unwrap_or(2),
            codes: rt.codes.clone(),
            backoff: Some(
                duration(rt.backoff.as_deref()).unwrap_or(prost_types::Duration { seconds: 0, nanos: 25_000_000 }),
            ),
        });
        out.push(pb::Rule {
            name: rule.name.clone().unwrap_or_default(),
            matches,
            filters,
            backends,
            timeouts,
            retry,
            // Its place in spec.rules, which names it while an invalid rule before it is dropped.
            index: u32::try_from(i).ok(),
        });
    }
    out
}

fn prefix_root() -> pb::PathMatch {
    pb::PathMatch { r#type: pb::MatchType::PathPrefix as i32, value: "/".into() }
}

fn route_match(grpc: bool, m: &crate::k8s::gateway::RouteMatch) -> pb::Match {
    // Of entries with equivalent names (header names compare without case), the first counts
    // and the others are ignored, as the Gateway API says.
    let values = |v: &[crate::k8s::gateway::ValueMatch], lower: bool| -> Vec<pb::HeaderMatch> {
        let mut out: Vec<pb::HeaderMatch> = Vec::with_capacity(v.len());
        for h in v {
            let name = if lower { h.name.to_ascii_lowercase() } else { h.name.clone() };
            if out.iter().any(|o| o.name == name) {
                continue;
            }
            out.push(pb::HeaderMatch {
                name,
                r#type: match_type(h.type_.as_deref(), pb::MatchType::Exact) as i32,
                value: h.value.clone(),
            });
        }
        out
    };
    let mut out = pb::Match { headers: values(&m.headers, true), ..Default::default() };
    if grpc {
        if let Some(MethodMatch::Grpc(g)) = &m.method {
            out.grpc = Some(pb::GrpcMethodMatch {
                r#type: match_type(g.type_.as_deref(), pb::MatchType::Exact) as i32,
                service: g.service.clone().unwrap_or_default(),
                method: g.method.clone().unwrap_or_default(),
            });
        }
        return out;
    }
    out.query_params = values(&m.query_params, false);
    out.path = Some(match &m.path {
        Some(p) => pb::PathMatch {
            r#type: match_type(p.type_.as_deref(), pb::MatchType::PathPrefix) as i32,
            value: p.value.clone().unwrap_or_else(|| "/".into()),
        },
        None => prefix_root(),
    });
    if let Some(MethodMatch::Http(method)) = &m.method {
        out.method = method.clone();
    }
    out
}
