//! `AuthorizationPolicy` with `targetRefs` (a waypoint `Gateway`, or a `Service`) →
//! `mesh.waypoint.v1.L7Policy`, enforced by waypoints (Istio: such policies apply at the
//! waypoint, and are never sent to ztunnel; see [`super::authz`]).
//!
//! - Every `from`, `to` and `when` field Istio documents for waypoints is carried, except
//!   request authentication (`requestPrincipals`, `request.auth.*`), `remoteIpBlocks` and the
//!   remaining condition keys (`remote.ip`, `connection.sni`, `experimental.*`), which no
//!   waypoint here can evaluate. They fail closed, as the L4 translation does for L7 fields:
//!   in an ALLOW policy the rule using them is left out (it allows nothing); in a DENY (or
//!   AUDIT) policy those fields are left out and the rest of the rule applies (it denies more).
//!   Both produce a warning.
//! - `serviceAccounts` become principals (`<trust domain>/ns/<ns>/sa/<sa>`, the namespace
//!   defaulting to the policy's); in a source that also has `principals`, only the service
//!   accounts those patterns match (the fields of a source are ANDed).
//! - CUSTOM is refused when the policy is read ([`crate::source`]): an external authorizer is
//!   not something a waypoint here can call.

use proto::mesh::waypoint::v1 as pb;

use super::{MeshConfig, WAYPOINT_CLASS};
use crate::k8s::security::{AuthorizationPolicy, PolicyAction, PolicyTargetReference, Rule, StrOrNum};
use crate::model::Model;
use crate::source::parse_port;

/// Condition keys a waypoint evaluates (plus `request.headers[<name>]`).
pub const WAYPOINT_WHEN_KEYS: [&str; 5] =
    ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// What translating one policy gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The resource, for a policy with targets.
    pub policy: Option<pb::L7Policy>,
    /// What was left out or changed.
    pub warnings: Vec<String>,
}

/// Whether the policy is for waypoints (has targets).
pub fn is_waypoint_policy(p: &AuthorizationPolicy) -> bool {
    p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty()
}

/// Translates one policy; `None` policy when it has no targets (it is ztunnel's).
pub fn translate(cfg: &MeshConfig, model: &Model, p: &AuthorizationPolicy) -> Outcome {
    let mut out = Outcome::default();
    if !is_waypoint_policy(p) {
        return out;
    }
    let ns = p.metadata.namespace.as_str();
    if p.dry_run() {
        // Waypoints here have no shadow evaluation; enforcing it would change access.
        out.warnings.push("dry-run (istio.io/dry-run): waypoints do not evaluate dry-run policies; not sent".into());
        return out;
    }
    let action = match p.spec.action {
        PolicyAction::Allow => pb::l7_policy::Action::Allow,
        PolicyAction::Deny => pb::l7_policy::Action::Deny,
        PolicyAction::Audit => pb::l7_policy::Action::Audit,
        PolicyAction::Custom => {
            // Refused when read; a stand-in never carries CUSTOM. Kept total for safety.
            out.warnings.push("action CUSTOM is not supported by waypoints; not sent".into());
            return out;
        }
    };
    let refs = p.spec.target_ref.iter().chain(p.spec.target_refs.iter());
    let mut targets = Vec::new();
    for (i, t) in refs.enumerate() {
        if let Some(target) = target(cfg, model, ns, i, t, &mut out.warnings) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        out.warnings.push("no target a waypoint can enforce; not sent".into());
        return out;
    }
    let mut unsupported: Vec<String> = Vec::new();
    let mut rules = Vec::new();
    for rule in &p.spec.rules {
        let (r, found) = policy_rule(cfg, ns, rule);
        // A rule no peer can match is left out: it matches nothing either way.
        if let Some(r) = r
            && (action != pb::l7_policy::Action::Allow || found.is_empty())
        {
            rules.push(r);
        }
        for f in found {
            if !unsupported.contains(&f) {
                unsupported.push(f);
            }
        }
    }
    if !unsupported.is_empty() {
        unsupported.sort();
        let effect = if action == pb::l7_policy::Action::Allow {
            "in an ALLOW policy the rules using them are left out"
        } else {
            "they are ignored and the rest of each rule applies"
        };
        out.warnings.push(format!(
            "waypoints cannot evaluate {}; {effect}, which is more restrictive than written",
            unsupported.join(", ")
        ));
    }
    out.policy = Some(pb::L7Policy {
        namespace: ns.to_owned(),
        name: p.metadata.name.clone(),
        targets,
        action: action as i32,
        rules,
    });
    out
}

fn target(
    cfg: &MeshConfig,
    model: &Model,
    ns: &str,
    i: usize,
    t: &PolicyTargetReference,
    warnings: &mut Vec<String>,
) -> Option<pb::Target> {
    let tns = t.namespace.as_deref().unwrap_or(ns);
    let group = t.group.as_deref().unwrap_or("");
    let kind = match (group, t.kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway") => {
            match model.gateways.get(&(tns.to_owned(), t.name.clone())) {
                None => warnings.push(format!("targetRefs[{i}]: Gateway {tns}/{} not found (yet)", t.name)),
                Some(gw) if gw.spec.gateway_class_name != WAYPOINT_CLASS => warnings.push(format!(
                    "targetRefs[{i}]: Gateway {tns}/{} has class {:?}, not {WAYPOINT_CLASS}: no waypoint enforces it",
                    t.name, gw.spec.gateway_class_name
                )),
                Some(_) => {}
            }
            pb::target::Kind::Gateway(format!("{tns}/{}", t.name))
        }
        ("" | "core", "Service") => {
            if !model.services.contains_key(&(tns.to_owned(), t.name.clone())) {
                warnings.push(format!("targetRefs[{i}]: Service {tns}/{} not found (yet)", t.name));
            }
            pb::target::Kind::Service(cfg.hostname(tns, &t.name))
        }
        (g, k) => {
            warnings.push(format!("targetRefs[{i}]: {g}/{k} is not a target waypoints enforce; skipped"));
            return None;
        }
    };
    Some(pb::Target { kind: Some(kind) })
}

fn strs(v: &[StrOrNum]) -> Vec<String> {
    v.iter().map(StrOrNum::as_string).collect()
}

/// Istio's wildcard match of a principal pattern (`*`, `*suffix`, `prefix*`, exact).
fn principal_matches(pattern: &str, v: &str) -> bool {
    if pattern == "*" {
        !v.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        v.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        v.starts_with(prefix)
    } else {
        v == pattern
    }
}

/// One rule, and the fields in it no waypoint evaluates (already left out of the result);
/// `None` when no peer can match the rule.
fn policy_rule(cfg: &MeshConfig, ns: &str, rule: &Rule) -> (Option<pb::PolicyRule>, Vec<String>) {
    let mut found = Vec::new();
    let mut note = |cond: bool, name: &str| {
        if cond {
            found.push(name.to_owned());
        }
    };
    let principal = |sa: &String| match sa.split_once('/') {
        Some((n, s)) => format!("{}/ns/{n}/sa/{s}", cfg.trust_domain),
        None => format!("{}/ns/{ns}/sa/{sa}", cfg.trust_domain),
    };
    let mut from = Vec::new();
    let sources = rule.sources();
    for f in sources {
        let s = &f.source;
        note(!s.request_principals.is_empty(), "requestPrincipals");
        note(!s.not_request_principals.is_empty(), "notRequestPrincipals");
        note(!s.remote_ip_blocks.is_empty(), "remoteIpBlocks");
        note(!s.not_remote_ip_blocks.is_empty(), "notRemoteIpBlocks");
        // The fields of a source are ANDed, and `serviceAccounts` names principals: with both
        // set, the peer must be one of the service accounts that some principal pattern
        // matches. Listing both in `principals` would OR them, and widen an ALLOW.
        let principals = match (s.principals.is_empty(), s.service_accounts.is_empty()) {
            (_, true) => s.principals.clone(),
            (true, false) => s.service_accounts.iter().map(principal).collect(),
            (false, false) => {
                let both: Vec<String> = s
                    .service_accounts
                    .iter()
                    .map(principal)
                    .filter(|sa| s.principals.iter().any(|p| principal_matches(p, sa)))
                    .collect();
                if both.is_empty() {
                    continue; // this source matches no peer
                }
                both
            }
        };
        let mut not_principals = s.not_principals.clone();
        not_principals.extend(s.not_service_accounts.iter().map(principal));
        from.push(pb::Source {
            principals,
            not_principals,
            namespaces: s.namespaces.clone(),
            not_namespaces: s.not_namespaces.clone(),
            ip_blocks: s.ip_blocks.clone(),
            not_ip_blocks: s.not_ip_blocks.clone(),
        });
    }
    let ports = |v: &[StrOrNum]| v.iter().filter_map(parse_port).collect::<Vec<u32>>();
    let to = rule
        .operations()
        .iter()
        .map(|t| {
            let o = &t.operation;
            pb::Operation {
                hosts: o.hosts.clone(),
                not_hosts: o.not_hosts.clone(),
                ports: ports(&o.ports),
                not_ports: ports(&o.not_ports),
                methods: o.methods.clone(),
                not_methods: o.not_methods.clone(),
                paths: o.paths.clone(),
                not_paths: o.not_paths.clone(),
            }
        })
        .collect();
    let mut when = Vec::new();
    for c in &rule.when {
        let supported = WAYPOINT_WHEN_KEYS.contains(&c.key.as_str())
            || (c.key.starts_with("request.headers[")
                && c.key.ends_with(']')
                && c.key.len() > "request.headers[]".len());
        if !supported {
            found.push(c.key.clone());
            continue;
        }
        let key = match c.key.strip_prefix("request.headers[").and_then(|k| k.strip_suffix(']')) {
            // Header names compare case-insensitively; the waypoint sees them lower-case.
            Some(h) => format!("request.headers[{}]", h.to_ascii_lowercase()),
            None => c.key.clone(),
        };
        when.push(pb::Condition { key, values: strs(&c.values), not_values: strs(&c.not_values) });
    }
    // Every source of a non-empty `from` matches no peer: neither does the rule.
    if from.is_empty() && !sources.is_empty() {
        return (None, found);
    }
    (Some(pb::PolicyRule { from, to, when }), found)
}
