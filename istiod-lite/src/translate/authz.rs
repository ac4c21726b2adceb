//! `AuthorizationPolicy` → `istio.security.Authorization`, with the semantics Istio gives
//! ztunnel (istio/istio `pilot/pkg/serviceregistry/kube/controller/ambient/authorization.go`):
//!
//! - scope: a `selector` gives WORKLOAD_SELECTOR (the selected workloads list the policy as
//!   `<ns>/<name>` in `authorization_policies`); none gives NAMESPACE, or GLOBAL in the root
//!   namespace. A policy with `targetRefs` binds to waypoints and is not sent to ztunnel.
//! - each rule becomes a group: one `Rules` of the `to` matches, one of the `from` matches,
//!   then one per `when` condition (a group holds when all its rules do).
//! - L7 attributes (hosts, methods, paths, request principals, remote IP blocks, non-L4
//!   `when` keys): in an ALLOW policy the whole rule is dropped, so it allows nothing; in a
//!   DENY policy the L7 parts are ignored and the rest of the rule applies, so it denies more.
//!   Both are more restrictive than written, and both produce a warning.
//! - AUDIT has no effect on access and is not sent. CUSTOM (an external authorizer ztunnel
//!   cannot call) is sent as a DENY of its rules: where Istio's ztunnel would not enforce it at
//!   all, we refuse what the authorizer might have refused (fail closed), with a warning.
//! - values: `*` is presence, `*x` a suffix, `x*` a prefix; `serviceAccounts` without a
//!   namespace are in the policy's namespace.

use proto::istio::security::{
    Action, Address, Authorization, Group, Match, Rules, Scope, ServiceAccountMatch, StringMatch, string_match,
};

use super::MeshConfig;
use super::waypoint::ip_bytes;
use crate::k8s::security::{AuthorizationPolicy, Condition, PolicyAction, Rule, StrOrNum};
use crate::k8s::{Labels, selects};
use crate::model::{Model, in_namespace};
use crate::source::parse_cidr;
use crate::source::parse_port;

/// What translating one policy gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The resource for ztunnel, if the policy has one.
    pub authorization: Option<Authorization>,
    /// What was left out or changed, for the config errors.
    pub warnings: Vec<String>,
}

/// The policy's scope for ztunnel, `None` when it is not for ztunnel.
fn scope(cfg: &MeshConfig, p: &AuthorizationPolicy) -> Option<Scope> {
    if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
        return None;
    }
    Some(match (&p.spec.selector, p.metadata.namespace == cfg.root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    })
}

/// Translates one policy.
pub fn translate(cfg: &MeshConfig, p: &AuthorizationPolicy) -> Outcome {
    let mut out = Outcome::default();
    let Some(scope) = scope(cfg, p) else {
        // Enforced by waypoints: see `l7_policy`.
        return out;
    };
    let action = match p.spec.action {
        PolicyAction::Allow => Action::Allow,
        PolicyAction::Deny => Action::Deny,
        PolicyAction::Audit => {
            out.warnings.push("action AUDIT has no effect on access; not sent to ztunnel".into());
            return out;
        }
        PolicyAction::Custom => {
            out.warnings.push(
                "action CUSTOM needs an external authorizer ztunnel cannot call; enforced as DENY of its rules (fail closed)"
                    .into(),
            );
            Action::Deny
        }
    };
    let ns = &p.metadata.namespace;
    let mut l7: Vec<String> = Vec::new();
    let mut groups = Vec::new();
    for rule in &p.spec.rules {
        let (rules, found) = rule_to_rules(ns, rule);
        // An ALLOW rule ztunnel cannot check in full would allow more than written: drop it.
        if action != Action::Allow || found.is_empty() {
            groups.push(Group { rules });
        }
        for f in found {
            if !l7.contains(&f) {
                l7.push(f);
            }
        }
    }
    if !l7.is_empty() {
        l7.sort();
        let effect = if action == Action::Allow {
            "in an ALLOW policy the rules using them are left out"
        } else {
            "in a DENY policy they are ignored and the rest of each rule applies"
        };
        out.warnings.push(format!(
            "ztunnel cannot enforce HTTP attributes ({}); {effect}, which is more restrictive than written; use a waypoint for HTTP rules",
            l7.join(", ")
        ));
    }
    out.authorization = Some(Authorization {
        name: p.metadata.name.clone(),
        namespace: ns.clone(),
        scope: scope as i32,
        action: action as i32,
        groups,
        // ztunnel evaluates and reports it without enforcing it.
        dry_run: p.dry_run(),
    });
    out
}

/// The `Rules` of one rule, and the L7 attributes it uses.
fn rule_to_rules(ns: &str, rule: &Rule) -> (Vec<Rules>, Vec<String>) {
    let mut l7 = Vec::new();
    let mut note = |cond: bool, name: &str| {
        if cond {
            l7.push(name.to_owned());
        }
    };
    let mut to = Vec::new();
    for t in rule.operations() {
        let op = &t.operation;
        note(!op.hosts.is_empty(), "hosts");
        note(!op.not_hosts.is_empty(), "notHosts");
        note(!op.methods.is_empty(), "methods");
        note(!op.not_methods.is_empty(), "notMethods");
        note(!op.paths.is_empty(), "paths");
        note(!op.not_paths.is_empty(), "notPaths");
        to.push(Match {
            destination_ports: ports(&op.ports),
            not_destination_ports: ports(&op.not_ports),
            ..Default::default()
        });
    }
    let mut from = Vec::new();
    for f in rule.sources() {
        let s = &f.source;
        note(!s.request_principals.is_empty(), "requestPrincipals");
        note(!s.not_request_principals.is_empty(), "notRequestPrincipals");
        note(!s.remote_ip_blocks.is_empty(), "remoteIpBlocks");
        note(!s.not_remote_ip_blocks.is_empty(), "notRemoteIpBlocks");
        from.push(Match {
            namespaces: strings(&s.namespaces),
            not_namespaces: strings(&s.not_namespaces),
            principals: strings(&s.principals),
            not_principals: strings(&s.not_principals),
            source_ips: ips(s.ip_blocks.iter().map(String::as_str)),
            not_source_ips: ips(s.not_ip_blocks.iter().map(String::as_str)),
            service_accounts: service_accounts(ns, &s.service_accounts),
            not_service_accounts: service_accounts(ns, &s.not_service_accounts),
            ..Default::default()
        });
    }
    let mut rules = Vec::new();
    if !to.is_empty() {
        rules.push(Rules { matches: to });
    }
    if !from.is_empty() {
        rules.push(Rules { matches: from });
    }
    for w in &rule.when {
        if !crate::source::L4_WHEN_KEYS.contains(&w.key.as_str()) {
            l7.push(w.key.clone());
        }
        rules.push(Rules { matches: vec![when_match(w)] });
    }
    (rules, l7)
}

/// One condition as a match; a non-L4 key gives an empty match (it holds for everything).
fn when_match(w: &Condition) -> Match {
    let s = |v: &[StrOrNum]| v.iter().map(StrOrNum::as_string).collect::<Vec<_>>();
    let (pos, neg) = (s(&w.values), s(&w.not_values));
    let mut m = Match::default();
    match w.key.as_str() {
        "source.namespace" => (m.namespaces, m.not_namespaces) = (strings(&pos), strings(&neg)),
        "source.principal" => (m.principals, m.not_principals) = (strings(&pos), strings(&neg)),
        "source.ip" => {
            (m.source_ips, m.not_source_ips) =
                (ips(pos.iter().map(String::as_str)), ips(neg.iter().map(String::as_str)))
        }
        "destination.ip" => {
            (m.destination_ips, m.not_destination_ips) =
                (ips(pos.iter().map(String::as_str)), ips(neg.iter().map(String::as_str)))
        }
        "destination.port" => (m.destination_ports, m.not_destination_ports) = (ports(&w.values), ports(&w.not_values)),
        _ => {}
    }
    m
}

/// Istio's string match: `*` presence, `*x` suffix, `x*` prefix, else exact.
pub fn string_match(v: &str) -> StringMatch {
    let t = if v == "*" {
        string_match::MatchType::Presence(())
    } else if let Some(s) = v.strip_prefix('*') {
        string_match::MatchType::Suffix(s.to_owned())
    } else if let Some(p) = v.strip_suffix('*') {
        string_match::MatchType::Prefix(p.to_owned())
    } else {
        string_match::MatchType::Exact(v.to_owned())
    };
    StringMatch { match_type: Some(t) }
}

fn strings(v: &[String]) -> Vec<StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

// Values were validated at parse time; anything unparsable never reaches here.
fn ports(v: &[StrOrNum]) -> Vec<u32> {
    v.iter().filter_map(parse_port).collect()
}

fn ips<'a>(v: impl Iterator<Item = &'a str>) -> Vec<Address> {
    v.filter_map(parse_cidr).map(|(ip, len)| Address { address: ip_bytes(ip).into(), length: len }).collect()
}

fn service_accounts(ns: &str, v: &[String]) -> Vec<ServiceAccountMatch> {
    v.iter()
        .map(|s| match s.split_once('/') {
            Some((n, sa)) => ServiceAccountMatch { namespace: n.to_owned(), service_account: sa.to_owned() },
            None => ServiceAccountMatch { namespace: ns.to_owned(), service_account: s.clone() },
        })
        .collect()
}

/// `<ns>/<name>` of the WORKLOAD_SELECTOR policies (from `namespace` and the root namespace)
/// that select `labels` and are sent to ztunnel, sorted.
pub fn selected(cfg: &MeshConfig, model: &Model, namespace: &str, labels: &Labels) -> Vec<String> {
    let mut out = Vec::new();
    let mut scan = |ns: &str| {
        for ((pns, name), p) in in_namespace(&model.authorization_policies, ns) {
            let Some(sel) = &p.spec.selector else { continue };
            let sent = scope(cfg, p).is_some() && p.spec.action != PolicyAction::Audit;
            if sent && selects(&sel.match_labels, labels) {
                out.push(format!("{pns}/{name}"));
            }
        }
    };
    scan(namespace);
    if namespace != cfg.root_namespace {
        scan(&cfg.root_namespace);
    }
    out.sort();
    out
}
