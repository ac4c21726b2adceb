//! Checks on values the schema cannot express (addresses, ports, condition keys, field
//! combinations), so a bad object is rejected whole with the field named, as Istio's
//! validating webhook would reject it at `kubectl apply`. Routes are the exception: an invalid
//! rule beside valid ones is dropped, not the route ([`super::validate_route`]).

use std::net::IpAddr;

use crate::error::ObjectError;
use crate::k8s::core::{Pod, Service};
use crate::k8s::security::{self, AuthorizationPolicy, DRY_RUN_ANNOTATION, PeerAuthentication, PolicyAction, StrOrNum};
use crate::model::Object;

/// `a.b.c.d`, `a.b.c.d/n`, `x::y` or `x::y/n` → address and prefix length.
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u32)> {
    match s.split_once('/') {
        Some((a, n)) => {
            let a: IpAddr = a.parse().ok()?;
            let n: u32 = n.parse().ok()?;
            let max = if a.is_ipv4() { 32 } else { 128 };
            (n <= max).then_some((a, n))
        }
        None => {
            let a: IpAddr = s.parse().ok()?;
            Some((a, if a.is_ipv4() { 32 } else { 128 }))
        }
    }
}

/// A port 1..=65535 written as a number or a decimal string.
pub fn parse_port(v: &StrOrNum) -> Option<u32> {
    let n = match v {
        StrOrNum::Num(n) => *n,
        StrOrNum::Str(s) => s.parse().ok()?,
    };
    (1..=65535).contains(&n).then_some(n as u32)
}

/// `when` keys ztunnel can enforce.
pub const L4_WHEN_KEYS: [&str; 5] =
    ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// Whether `key` is a condition key Istio knows (L4 or L7).
fn known_when_key(key: &str) -> bool {
    // The condition keys Istio documents (istio.io "Authorization Policy Conditions").
    const L7_EXACT: [&str; 5] =
        ["remote.ip", "request.auth.principal", "request.auth.audiences", "request.auth.presenter", "connection.sni"];
    const L7_PREFIX: [&str; 3] = ["request.headers[", "request.auth.claims[", "experimental.envoy.filters."];
    L4_WHEN_KEYS.contains(&key) || L7_EXACT.contains(&key) || L7_PREFIX.iter().any(|p| key.starts_with(p))
}

fn invalid(field: String, reason: impl Into<String>) -> ObjectError {
    ObjectError::Invalid { field, reason: reason.into() }
}

/// Validates one parsed object.
pub(super) fn object(o: &Object) -> Result<(), ObjectError> {
    match o {
        Object::Pod(p) => pod(p),
        Object::Service(s) => service(s),
        Object::AuthorizationPolicy(p) => authorization_policy(p),
        Object::PeerAuthentication(p) => peer_authentication(p),
        Object::HttpRoute(r) => super::validate_route::route(r, false),
        Object::GrpcRoute(r) => super::validate_route::route(r, true),
        Object::ReferenceGrant(g) => reference_grant(g),
        _ => Ok(()),
    }
}

/// The schema's rules: 1 to 16 entries each way, a kind and a namespace on every `from`, a
/// kind on every `to`. An empty grant would grant nothing, and a silent no-op is what a
/// user debugging a `RefNotPermitted` route cannot see.
fn reference_grant(g: &crate::k8s::gateway::ReferenceGrant) -> Result<(), ObjectError> {
    for (field, n) in [("spec.from", g.spec.from.len()), ("spec.to", g.spec.to.len())] {
        if !(1..=16).contains(&n) {
            return Err(invalid(field.into(), format!("{n} entries; 1 to 16 are allowed")));
        }
    }
    for (i, f) in g.spec.from.iter().enumerate() {
        if f.kind.is_empty() {
            return Err(invalid(format!("spec.from[{i}].kind"), "must not be empty"));
        }
        if f.namespace.is_empty() {
            return Err(invalid(format!("spec.from[{i}].namespace"), "must not be empty"));
        }
    }
    for (i, t) in g.spec.to.iter().enumerate() {
        if t.kind.is_empty() {
            return Err(invalid(format!("spec.to[{i}].kind"), "must not be empty"));
        }
        if t.name.as_deref() == Some("") {
            return Err(invalid(format!("spec.to[{i}].name"), "must not be empty when set"));
        }
    }
    Ok(())
}

fn ip(field: String, s: &str) -> Result<(), ObjectError> {
    s.parse::<IpAddr>().map(|_| ()).map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

fn pod(p: &Pod) -> Result<(), ObjectError> {
    if let Some(a) = &p.status.pod_ip {
        ip("status.podIP".into(), a)?;
    }
    for (i, a) in p.status.pod_ips.iter().enumerate() {
        ip(format!("status.podIPs[{i}].ip"), &a.ip)?;
    }
    Ok(())
}

fn service(s: &Service) -> Result<(), ObjectError> {
    let vip = |field: String, a: &str| if a == "None" || a.is_empty() { Ok(()) } else { ip(field, a) };
    if let Some(a) = &s.spec.cluster_ip {
        vip("spec.clusterIP".into(), a)?;
    }
    for (i, a) in s.spec.cluster_ips.iter().enumerate() {
        vip(format!("spec.clusterIPs[{i}]"), a)?;
    }
    crate::translate::backend_policy::from_annotations("", &s.metadata.annotations)
        .map(|_| ())
        .map_err(|e| invalid(format!("metadata.annotations[{}]", e.annotation), e.reason))
}

fn ports(field: &str, v: &[StrOrNum]) -> Result<(), ObjectError> {
    for (i, p) in v.iter().enumerate() {
        if parse_port(p).is_none() {
            return Err(invalid(format!("{field}[{i}]"), format!("{:?} is not a port (1-65535)", p.as_string())));
        }
    }
    Ok(())
}

fn cidrs(field: &str, v: &[String]) -> Result<(), ObjectError> {
    for (i, s) in v.iter().enumerate() {
        if parse_cidr(s).is_none() {
            return Err(invalid(format!("{field}[{i}]"), format!("{s:?} is not an IP address or CIDR")));
        }
    }
    Ok(())
}

fn non_empty(field: &str, v: &[String]) -> Result<(), ObjectError> {
    match v.iter().position(|s| s.is_empty()) {
        Some(i) => Err(invalid(format!("{field}[{i}]"), "empty value")),
        None => Ok(()),
    }
}

fn authorization_policy(p: &AuthorizationPolicy) -> Result<(), ObjectError> {
    let s = &p.spec;
    if s.target_ref.is_some() && !s.target_refs.is_empty() {
        return Err(invalid("spec.targetRef".into(), "cannot be used together with spec.targetRefs"));
    }
    if s.selector.is_some() && (s.target_ref.is_some() || !s.target_refs.is_empty()) {
        return Err(invalid("spec.selector".into(), "cannot be used together with spec.targetRefs"));
    }
    let has_targets = s.target_ref.is_some() || !s.target_refs.is_empty();
    if has_targets && s.action == PolicyAction::Custom {
        return Err(invalid(
            "spec.action".into(),
            "CUSTOM (an external authorizer) is not supported for policies with targetRefs (enforced by waypoints)",
        ));
    }
    let targets = s.target_ref.iter().map(|t| ("spec.targetRef".to_owned(), t));
    let targets = targets.chain(s.target_refs.iter().enumerate().map(|(i, t)| (format!("spec.targetRefs[{i}]"), t)));
    for (field, t) in targets {
        let ok = matches!(
            (t.group.as_deref().unwrap_or(""), t.kind.as_str()),
            ("gateway.networking.k8s.io", "Gateway") | ("" | "core", "Service")
        );
        if !ok {
            return Err(invalid(
                format!("{field}.kind"),
                format!(
                    "unsupported target {}/{} (supported: gateway.networking.k8s.io/Gateway, core Service)",
                    t.group.as_deref().unwrap_or(""),
                    t.kind
                ),
            ));
        }
    }
    if let Some(v) = p.metadata.annotations.get(DRY_RUN_ANNOTATION)
        && security::parse_bool(v).is_none()
    {
        return Err(invalid(
            format!("metadata.annotations[{DRY_RUN_ANNOTATION}]"),
            format!("{v:?} is not a boolean (true or false)"),
        ));
    }
    match (s.action, &s.provider) {
        (PolicyAction::Custom, None) => {
            return Err(invalid("spec.provider".into(), "required when action is CUSTOM"));
        }
        (a, Some(_)) if a != PolicyAction::Custom => {
            return Err(invalid("spec.provider".into(), "only allowed when action is CUSTOM"));
        }
        _ => {}
    }
    for (r, rule) in s.rules.iter().enumerate() {
        for (list, name) in [(rule.from.as_ref().map(Vec::len), "from"), (rule.to.as_ref().map(Vec::len), "to")] {
            if list == Some(0) {
                return Err(invalid(
                    format!("spec.rules[{r}].{name}"),
                    "must not be empty (leave it out to match any)",
                ));
            }
        }
        for (f, from) in rule.sources().iter().enumerate() {
            let base = format!("spec.rules[{r}].from[{f}].source");
            let src = &from.source;
            // As Istio: a source with nothing in it would match any source.
            if src.is_empty() {
                return Err(invalid(base, "must not be empty (set at least one non-empty field)"));
            }
            cidrs(&format!("{base}.ipBlocks"), &src.ip_blocks)?;
            cidrs(&format!("{base}.notIpBlocks"), &src.not_ip_blocks)?;
            cidrs(&format!("{base}.remoteIpBlocks"), &src.remote_ip_blocks)?;
            cidrs(&format!("{base}.notRemoteIpBlocks"), &src.not_remote_ip_blocks)?;
            for (name, v) in [
                ("principals", &src.principals),
                ("notPrincipals", &src.not_principals),
                ("namespaces", &src.namespaces),
                ("notNamespaces", &src.not_namespaces),
                ("serviceAccounts", &src.service_accounts),
                ("notServiceAccounts", &src.not_service_accounts),
            ] {
                non_empty(&format!("{base}.{name}"), v)?;
            }
        }
        for (t, to) in rule.operations().iter().enumerate() {
            let base = format!("spec.rules[{r}].to[{t}].operation");
            if to.operation.is_empty() {
                return Err(invalid(base, "must not be empty (set at least one non-empty field)"));
            }
            ports(&format!("{base}.ports"), &to.operation.ports)?;
            ports(&format!("{base}.notPorts"), &to.operation.not_ports)?;
            for (name, v) in [("paths", &to.operation.paths), ("notPaths", &to.operation.not_paths)] {
                for (k, path) in v.iter().enumerate() {
                    check_path_template(path).map_err(|e| invalid(format!("{base}.{name}[{k}]"), e))?;
                }
            }
        }
        for (w, when) in rule.when.iter().enumerate() {
            let base = format!("spec.rules[{r}].when[{w}]");
            if !known_when_key(&when.key) {
                return Err(invalid(format!("{base}.key"), format!("unknown attribute {:?}", when.key)));
            }
            if when.values.is_empty() && when.not_values.is_empty() {
                return Err(invalid(base, "needs values or notValues"));
            }
            match when.key.as_str() {
                "destination.port" => {
                    ports(&format!("{base}.values"), &when.values)?;
                    ports(&format!("{base}.notValues"), &when.not_values)?;
                }
                "source.ip" | "destination.ip" | "remote.ip" => {
                    let strs = |v: &[StrOrNum]| v.iter().map(StrOrNum::as_string).collect::<Vec<_>>();
                    cidrs(&format!("{base}.values"), &strs(&when.values))?;
                    cidrs(&format!("{base}.notValues"), &strs(&when.not_values))?;
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Istio's `CheckValidPathTemplate`: a path containing `{*}` or `{**}` is a template (Envoy's
/// URI template); in it `{*}` and `{**}` stand only as whole segments, no other segment holds
/// `{`, `}` (or a bare `*`, which Envoy would read as an operator), and no operator follows
/// `{**}` (so there is at most one). A path without a template is a literal or an Istio
/// wildcard and is not checked here.
pub fn check_path_template(path: &str) -> Result<(), String> {
    if !(path.contains("{*}") || path.contains("{**}")) {
        return Ok(());
    }
    let mut any = false;
    for seg in path.split('/') {
        match seg {
            "{*}" | "{**}" if any => {
                return Err(format!("invalid path template {path:?}: {{**}} is not the last operator"));
            }
            "{**}" => any = true,
            "{*}" => {}
            _ if seg.contains(['{', '}', '*']) => {
                return Err(format!(
                    "invalid path template {path:?}: segment {seg:?} is not a literal, {{*}} or {{**}}"
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn peer_authentication(p: &PeerAuthentication) -> Result<(), ObjectError> {
    let s = &p.spec;
    for k in s.port_level_mtls.keys() {
        if parse_port(k).is_none() {
            return Err(invalid(format!("spec.portLevelMtls[{}]", k.as_string()), "key is not a port (1-65535)"));
        }
    }
    let has_labels = s.selector.as_ref().is_some_and(|sel| !sel.match_labels.is_empty());
    if !s.port_level_mtls.is_empty() && !has_labels {
        return Err(invalid("spec.portLevelMtls".into(), "requires a spec.selector with matchLabels"));
    }
    Ok(())
}
