//! `PeerAuthentication` → what ztunnel enforces, as Istio does it
//! (istio/istio `pilot/pkg/serviceregistry/kube/controller/ambient/{authorization,policies}.go`):
//!
//! - one static policy `<root ns>/istio_converted_static_strict`: WORKLOAD_SELECTOR, DENY,
//!   `not_principals: [presence]` (refuse plaintext). It exists whenever any PeerAuthentication
//!   exists; a workload lists it when its effective mode (workload policy, else namespace
//!   policy, else the mesh policy in the root namespace; UNSET inherits) is STRICT.
//! - a workload policy (with `matchLabels`, outside the root namespace) with `portLevelMtls`
//!   that makes some port differ from the effective mode becomes
//!   `<ns>/converted_peer_authentication_<name>`: DENY; STRICT ports are one group each
//!   (`not_principals: [presence]` and that port), and under an effective STRICT mode the
//!   PERMISSIVE/DISABLE ports are exempted (`not_destination_ports`) from the plaintext denial.
//!   The workload then lists that policy instead of the static one.
//! - PERMISSIVE and DISABLE add nothing (HBONE is always mTLS). Of several policies at one
//!   level, the oldest (`creationTimestamp`, then name) wins.
//! - One deliberate difference: under an inherited STRICT mode, a workload policy with mode
//!   UNSET and a DISABLE port lists its converted policy exactly as for a PERMISSIVE port (Istio
//!   checks only PERMISSIVE there, so the exemption it computes is never referenced). The
//!   converted policy carries the inherited denial, so nothing is widened beyond that port.

use proto::istio::security::{Action, Authorization, Group, Match, Rules, Scope, StringMatch, string_match};

use super::MeshConfig;
use crate::k8s::security::{MtlsMode, PeerAuthentication, mode};
use crate::k8s::{Labels, selects};
use crate::model::{Model, in_namespace};
use crate::source::parse_port;

/// Name of the static STRICT policy (`_` cannot occur in Kubernetes names: no clash).
pub const STATIC_STRICT_NAME: &str = "istio_converted_static_strict";
/// Prefix of converted port-level policies.
pub const CONVERTED_PREFIX: &str = "converted_peer_authentication_";

fn presence_denial(port: Option<u32>) -> Rules {
    Rules {
        matches: vec![Match {
            not_principals: vec![StringMatch { match_type: Some(string_match::MatchType::Presence(())) }],
            destination_ports: port.into_iter().collect(),
            ..Default::default()
        }],
    }
}

/// The static STRICT policy.
pub fn static_strict(cfg: &MeshConfig) -> Authorization {
    Authorization {
        name: STATIC_STRICT_NAME.into(),
        namespace: cfg.root_namespace.clone(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        groups: vec![Group { rules: vec![presence_denial(None)] }],
        dry_run: false,
    }
}

fn is_workload_level(pa: &PeerAuthentication) -> bool {
    pa.spec.selector.as_ref().is_some_and(|s| !s.match_labels.is_empty())
}

fn age_key(pa: &PeerAuthentication) -> (Option<&str>, &str) {
    // Objects without a timestamp sort first: in file mode they are "older" than nothing.
    (pa.metadata.creation_timestamp.as_deref(), pa.metadata.name.as_str())
}

fn oldest<'a>(it: impl Iterator<Item = &'a PeerAuthentication>) -> Option<&'a PeerAuthentication> {
    it.min_by(|a, b| age_key(a).cmp(&age_key(b)))
}

/// The namespace-level policy of `ns` (the mesh policy for the root namespace).
fn namespace_policy<'a>(model: &'a Model, ns: &str) -> Option<&'a PeerAuthentication> {
    oldest(in_namespace(&model.peer_authentications, ns).map(|(_, p)| p).filter(|p| !is_workload_level(p)))
}

fn ports_sorted(pa: &PeerAuthentication) -> Vec<(u32, MtlsMode)> {
    let mut v: Vec<(u32, MtlsMode)> =
        pa.spec.port_level_mtls.iter().filter_map(|(k, m)| Some((parse_port(k)?, m.mode))).collect();
    v.sort_by_key(|(p, _)| *p);
    v
}

/// The mode a workload-level policy inherits: the namespace's unless UNSET, else the mesh's.
fn inherited_strict(cfg: &MeshConfig, model: &Model, ns: &str) -> bool {
    let mesh = namespace_policy(model, &cfg.root_namespace).map(|p| mode(p.spec.mtls.as_ref()));
    let nsm = namespace_policy(model, ns).map(|p| mode(p.spec.mtls.as_ref()));
    match nsm {
        Some(m) if m != MtlsMode::Unset => m == MtlsMode::Strict,
        _ => mesh == Some(MtlsMode::Strict),
    }
}

/// The peer-authentication policies a workload lists: the static STRICT one and/or its
/// converted port-level one.
pub fn workload_policies(cfg: &MeshConfig, model: &Model, ns: &str, labels: &Labels) -> Vec<String> {
    let mut strict = inherited_strict(cfg, model, ns);
    let workload = if ns == cfg.root_namespace {
        None
    } else {
        oldest(in_namespace(&model.peer_authentications, ns).map(|(_, p)| p).filter(|p| {
            is_workload_level(p) && p.spec.selector.as_ref().is_some_and(|s| selects(&s.match_labels, labels))
        }))
    };
    let mut port_policy = None;
    if let Some(w) = workload {
        let wmode = mode(w.spec.mtls.as_ref());
        match wmode {
            MtlsMode::Strict => strict = true,
            MtlsMode::Permissive | MtlsMode::Disable => strict = false,
            MtlsMode::Unset => {}
        }
        let ports = ports_sorted(w);
        if !ports.is_empty() {
            let any = |f: fn(MtlsMode) -> bool| ports.iter().any(|(_, m)| f(*m));
            let lax = |m: MtlsMode| matches!(m, MtlsMode::Permissive | MtlsMode::Disable);
            let key = format!("{ns}/{CONVERTED_PREFIX}{}", w.metadata.name);
            match wmode {
                MtlsMode::Strict if any(lax) => {
                    port_policy = Some(key);
                    strict = false;
                }
                MtlsMode::Permissive | MtlsMode::Disable if any(|m| m == MtlsMode::Strict) => port_policy = Some(key),
                MtlsMode::Unset if strict && any(lax) => {
                    port_policy = Some(key);
                    strict = false;
                }
                MtlsMode::Unset if !strict && any(|m| m == MtlsMode::Strict) => port_policy = Some(key),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    if strict {
        out.push(format!("{}/{STATIC_STRICT_NAME}", cfg.root_namespace));
    }
    out.extend(port_policy);
    out.sort();
    out
}

/// The converted port-level policy of `pa`, if it has one.
pub fn convert(cfg: &MeshConfig, model: &Model, pa: &PeerAuthentication) -> Option<Authorization> {
    let ns = &pa.metadata.namespace;
    if *ns == cfg.root_namespace || !is_workload_level(pa) || pa.spec.port_level_mtls.is_empty() {
        return None;
    }
    let top = mode(pa.spec.mtls.as_ref());
    let parent_strict = inherited_strict(cfg, model, ns);
    let mut rules = Vec::new();
    let mut groups = Vec::new();
    if top == MtlsMode::Strict {
        rules.push(presence_denial(None));
    }
    let mut found_lax = false;
    for (port, m) in ports_sorted(pa) {
        match m {
            MtlsMode::Strict => {
                if top == MtlsMode::Strict || (top == MtlsMode::Unset && parent_strict) {
                    continue; // already enforced by the policy's own or inherited mode
                }
                groups.push(Group { rules: vec![presence_denial(Some(port))] });
            }
            MtlsMode::Permissive | MtlsMode::Disable => {
                if matches!(top, MtlsMode::Permissive | MtlsMode::Disable) || (top == MtlsMode::Unset && !parent_strict)
                {
                    continue;
                }
                found_lax = true;
                rules.push(Rules { matches: vec![Match { not_destination_ports: vec![port], ..Default::default() }] });
            }
            MtlsMode::Unset => {}
        }
    }
    if top == MtlsMode::Strict && !found_lax {
        return None; // plain STRICT: the static policy covers it
    }
    if parent_strict && found_lax && top != MtlsMode::Strict {
        rules.push(presence_denial(None));
    }
    if !rules.is_empty() {
        groups.push(Group { rules });
    }
    if groups.is_empty() {
        return None;
    }
    Some(Authorization {
        name: format!("{CONVERTED_PREFIX}{}", pa.metadata.name),
        namespace: ns.clone(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        groups,
        dry_run: false,
    })
}
