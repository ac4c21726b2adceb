//! L7 authorization with Istio's semantics, as pure functions over compiled policies.
//!
//! - CUSTOM does not exist here (istiod-lite refuses it); AUDIT policies are evaluated and
//!   reported but never change the decision.
//! - DENY first: any matching DENY rule denies. Then ALLOW: with no ALLOW policy applying to
//!   the request everything is allowed; with some, one of their rules must match.
//! - A rule matches when all of its `from`, `to` and `when` match; the entries of a list are
//!   ORed, the fields of one entry ANDed; `not_*` fields must not match.
//! - On plain TCP (no HTTP request), fields that need HTTP (hosts, methods, paths,
//!   `request.headers`) never match in an ALLOW rule and always match in a DENY rule: an
//!   opaque connection cannot prove it is not the request a DENY targets (fail closed).
//!
//! Principals are compared without `spiffe://`; strings use Istio's wildcards (exact,
//! `*`, `prefix*`, `*suffix`), hosts compare case-insensitively, paths also accept the
//! `{*}` (one segment) and `{**}` (one or more segments) templates. Paths arrive normalized
//! (see [`crate::normalize`]).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use proto::mesh::waypoint::v1 as pb;
use serde::Serialize;
use ztunnel::state::policy::Cidr;

/// What a policy does when a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    /// Allow (and require a match from some ALLOW policy).
    Allow,
    /// Deny.
    Deny,
    /// Log only.
    Audit,
}

/// A string pattern with Istio's wildcards.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Wild {
    /// `*`: anything, but something must be present.
    Any,
    /// Exact value.
    Exact(String),
    /// `prefix*`.
    Prefix(String),
    /// `*suffix`.
    Suffix(String),
}

impl Wild {
    fn new(s: &str, fold_case: bool) -> Wild {
        let s = if fold_case { s.to_ascii_lowercase() } else { s.to_owned() };
        if s == "*" {
            Wild::Any
        } else if let Some(p) = s.strip_suffix('*') {
            Wild::Prefix(p.to_owned())
        } else if let Some(p) = s.strip_prefix('*') {
            Wild::Suffix(p.to_owned())
        } else {
            Wild::Exact(s)
        }
    }

    fn matches(&self, v: &str) -> bool {
        match self {
            Wild::Any => true,
            Wild::Exact(e) => v == e,
            Wild::Prefix(p) => v.starts_with(p.as_str()),
            Wild::Suffix(s) => v.ends_with(s.as_str()),
        }
    }
}

/// A path pattern: a wildcard string or a `{*}`/`{**}` template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathPattern {
    /// Exact, `*`, `prefix*`, `*suffix`.
    Wild(Wild),
    /// Segments, each literal, `{*}` or `{**}`.
    Template(Vec<String>),
}

impl PathPattern {
    fn new(s: &str) -> PathPattern {
        if s.contains("{*}") || s.contains("{**}") {
            PathPattern::Template(s.split('/').map(str::to_owned).collect())
        } else {
            PathPattern::Wild(Wild::new(s, false))
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Wild(w) => w.matches(path),
            PathPattern::Template(t) => {
                let segs: Vec<&str> = path.split('/').collect();
                template_match(t, &segs)
            }
        }
    }
}

fn template_match(pat: &[String], segs: &[&str]) -> bool {
    match pat.split_first() {
        None => segs.is_empty(),
        Some((p, rest)) if p == "{**}" => {
            (1..=segs.len()).any(|n| segs[..n].iter().all(|s| !s.is_empty()) && template_match(rest, &segs[n..]))
        }
        Some((p, rest)) => match segs.split_first() {
            Some((s, srest)) if (p == "{*}" && !s.is_empty()) || p == s => template_match(rest, srest),
            _ => false,
        },
    }
}

/// The `from` part of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Source {
    principals: Vec<Wild>,
    not_principals: Vec<Wild>,
    namespaces: Vec<Wild>,
    not_namespaces: Vec<Wild>,
    ip_blocks: Vec<Cidr>,
    not_ip_blocks: Vec<Cidr>,
}

/// The `to` part of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Operation {
    hosts: Vec<Wild>,
    not_hosts: Vec<Wild>,
    ports: Vec<u16>,
    not_ports: Vec<u16>,
    methods: Vec<String>,
    not_methods: Vec<String>,
    paths: Vec<PathPattern>,
    not_paths: Vec<PathPattern>,
}

/// What a `when` condition tests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ConditionKey {
    /// `request.headers[<name>]`.
    Header(String),
    /// `source.ip`.
    SourceIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.port`.
    DestinationPort,
}

/// One `when` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    key: ConditionKey,
    values: Vec<Wild>,
    not_values: Vec<Wild>,
    /// For `source.ip`.
    cidrs: Vec<Cidr>,
    not_cidrs: Vec<Cidr>,
}

/// One rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    from: Vec<Source>,
    to: Vec<Operation>,
    when: Vec<Condition>,
}

/// A compiled L7 policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// `namespace/name`.
    #[serde(serialize_with = "crate::state::route::ser_arc")]
    pub key: Arc<str>,
    /// The action.
    pub action: Action,
    /// The rules (no rules: matches nothing).
    pub rules: Vec<Rule>,
}

/// A field of a policy that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("L7Policy {policy}: {field}: {problem}")]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    /// The field path, e.g. `rules[0].when[1].key`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// Parses `a.b.c.d`, `a.b.c.d/len` or the IPv6 forms.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip.trim().parse().map_err(|_| format!("{s:?} is not an address or CIDR"))?;
    let len = match len {
        Some(l) => l.trim().parse::<u32>().map_err(|_| format!("{s:?}: bad prefix length"))?,
        None if ip.is_ipv4() => 32,
        None => 128,
    };
    Cidr::new(ip, len).map_err(|e| e.to_string())
}

impl TryFrom<pb::L7Policy> for Policy {
    type Error = PolicyError;

    fn try_from(p: pb::L7Policy) -> Result<Policy, PolicyError> {
        let key = format!("{}/{}", p.namespace, p.name);
        let err = |field: String, problem: String| PolicyError { policy: key.clone(), field, problem };
        let action = match pb::l7_policy::Action::try_from(p.action) {
            Ok(pb::l7_policy::Action::Allow) => Action::Allow,
            Ok(pb::l7_policy::Action::Deny) => Action::Deny,
            Ok(pb::l7_policy::Action::Audit) => Action::Audit,
            Err(_) => return Err(err("action".into(), format!("unknown action {}", p.action))),
        };
        let wilds = |v: &[String], fold: bool| v.iter().map(|s| Wild::new(s, fold)).collect::<Vec<_>>();
        let cidrs = |field: String, v: &[String]| {
            v.iter()
                .enumerate()
                .map(|(i, s)| parse_cidr(s).map_err(|e| err(format!("{field}[{i}]"), e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let ports = |field: String, v: &[u32]| {
            v.iter()
                .enumerate()
                .map(|(i, &p)| {
                    u16::try_from(p)
                        .ok()
                        .filter(|&p| p != 0)
                        .ok_or_else(|| err(format!("{field}[{i}]"), format!("port {p} out of range")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut rules = Vec::with_capacity(p.rules.len());
        for (r, rule) in p.rules.iter().enumerate() {
            let mut from = Vec::new();
            for (i, s) in rule.from.iter().enumerate() {
                let f = format!("rules[{r}].from[{i}]");
                from.push(Source {
                    principals: wilds(&s.principals, false),
                    not_principals: wilds(&s.not_principals, false),
                    namespaces: wilds(&s.namespaces, false),
                    not_namespaces: wilds(&s.not_namespaces, false),
                    ip_blocks: cidrs(format!("{f}.ip_blocks"), &s.ip_blocks)?,
                    not_ip_blocks: cidrs(format!("{f}.not_ip_blocks"), &s.not_ip_blocks)?,
                });
            }
            let mut to = Vec::new();
            for (i, o) in rule.to.iter().enumerate() {
                let f = format!("rules[{r}].to[{i}]");
                to.push(Operation {
                    hosts: wilds(&o.hosts, true),
                    not_hosts: wilds(&o.not_hosts, true),
                    ports: ports(format!("{f}.ports"), &o.ports)?,
                    not_ports: ports(format!("{f}.not_ports"), &o.not_ports)?,
                    methods: o.methods.clone(),
                    not_methods: o.not_methods.clone(),
                    paths: o.paths.iter().map(|s| PathPattern::new(s)).collect(),
                    not_paths: o.not_paths.iter().map(|s| PathPattern::new(s)).collect(),
                });
            }
            let mut when = Vec::new();
            for (i, c) in rule.when.iter().enumerate() {
                let f = format!("rules[{r}].when[{i}]");
                let key = match c.key.as_str() {
                    "source.ip" | "remote.ip" => ConditionKey::SourceIp,
                    "source.namespace" => ConditionKey::SourceNamespace,
                    "source.principal" => ConditionKey::SourcePrincipal,
                    "destination.port" => ConditionKey::DestinationPort,
                    k => match k.strip_prefix("request.headers[").and_then(|h| h.strip_suffix(']')) {
                        Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                            ConditionKey::Header(h.to_ascii_lowercase())
                        }
                        _ => return Err(err(format!("{f}.key"), format!("unsupported condition key {k:?}"))),
                    },
                };
                let (cidr_v, cidr_nv) = if key == ConditionKey::SourceIp {
                    (cidrs(format!("{f}.values"), &c.values)?, cidrs(format!("{f}.not_values"), &c.not_values)?)
                } else {
                    (Vec::new(), Vec::new())
                };
                if key == ConditionKey::DestinationPort {
                    for (j, v) in c.values.iter().chain(&c.not_values).enumerate() {
                        if v.parse::<u16>().is_err() {
                            return Err(err(format!("{f}.values[{j}]"), format!("{v:?} is not a port")));
                        }
                    }
                }
                when.push(Condition {
                    key,
                    values: wilds(&c.values, false),
                    not_values: wilds(&c.not_values, false),
                    cidrs: cidr_v,
                    not_cidrs: cidr_nv,
                });
            }
            rules.push(Rule { from, to, when });
        }
        Ok(Policy { key: key.into(), action, rules })
    }
}

/// The HTTP part of a request, absent for plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    /// Host (`:authority`), as sent.
    pub host: &'a str,
    /// Method.
    pub method: &'a str,
    /// Normalized path without the query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// What authorization knows about a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The peer's SPIFFE identity without `spiffe://`.
    pub principal: Option<&'a str>,
    /// The peer's namespace.
    pub namespace: Option<&'a str>,
    /// The original client address.
    pub source_ip: Option<IpAddr>,
    /// The destination (service) port.
    pub port: u16,
    /// HTTP facts; `None` on plain TCP.
    pub http: Option<HttpFacts<'a>>,
}

/// Why a request was allowed or denied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// No ALLOW policy applies, and no DENY matched.
    NoAllowPolicy,
    /// This ALLOW policy matched.
    AllowedBy(#[serde(serialize_with = "crate::state::route::ser_arc")] Arc<str>),
    /// This DENY policy matched.
    DeniedBy(#[serde(serialize_with = "crate::state::route::ser_arc")] Arc<str>),
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
}

/// The outcome for one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Let it through.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// AUDIT policies that matched (logged by the caller).
    #[serde(serialize_with = "crate::state::route::ser_arcs")]
    pub audited: Vec<Arc<str>>,
}

impl Decision {
    /// The policy that decided, for logs and metrics (`-` when none).
    pub fn policy(&self) -> &str {
        match &self.reason {
            Reason::AllowedBy(p) | Reason::DeniedBy(p) => p,
            Reason::NoAllowPolicy => "-",
            Reason::NoAllowMatched => "no-allow-match",
        }
    }
}

/// Decides one request against every policy that applies to it.
pub fn evaluate<'p>(policies: impl Iterator<Item = &'p Policy> + Clone, f: &Facts<'_>) -> Decision {
    let audited: Vec<Arc<str>> = policies
        .clone()
        .filter(|p| p.action == Action::Audit && p.rules.iter().any(|r| rule_matches(r, f, Action::Audit)))
        .map(|p| p.key.clone())
        .collect();
    if let Some(p) =
        policies.clone().find(|p| p.action == Action::Deny && p.rules.iter().any(|r| rule_matches(r, f, Action::Deny)))
    {
        return Decision { allowed: false, reason: Reason::DeniedBy(p.key.clone()), audited };
    }
    let mut any_allow = false;
    for p in policies.filter(|p| p.action == Action::Allow) {
        any_allow = true;
        if p.rules.iter().any(|r| rule_matches(r, f, Action::Allow)) {
            return Decision { allowed: true, reason: Reason::AllowedBy(p.key.clone()), audited };
        }
    }
    if any_allow {
        Decision { allowed: false, reason: Reason::NoAllowMatched, audited }
    } else {
        Decision { allowed: true, reason: Reason::NoAllowPolicy, audited }
    }
}

/// `list` empty, or one of it matches.
fn any_of<T>(list: &[T], m: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(m)
}

/// `list` empty, or none of it matches.
fn none_of<T>(list: &[T], m: impl Fn(&T) -> bool) -> bool {
    !list.iter().any(m)
}

fn rule_matches(r: &Rule, f: &Facts<'_>, action: Action) -> bool {
    any_of(&r.from, |s| source_matches(s, f))
        && any_of(&r.to, |o| operation_matches(o, f, action))
        && r.when.iter().all(|c| condition_matches(c, f, action))
}

fn source_matches(s: &Source, f: &Facts<'_>) -> bool {
    let principal = f.principal.unwrap_or("");
    let namespace = f.namespace.unwrap_or("");
    let present = |v: &str, w: &Wild| !v.is_empty() && w.matches(v);
    let ip_in = |c: &Cidr| f.source_ip.is_some_and(|ip| c.contains(ip));
    any_of(&s.principals, |w| present(principal, w))
        && none_of(&s.not_principals, |w| present(principal, w))
        && any_of(&s.namespaces, |w| present(namespace, w))
        && none_of(&s.not_namespaces, |w| present(namespace, w))
        && any_of(&s.ip_blocks, ip_in)
        && none_of(&s.not_ip_blocks, ip_in)
}

/// Whether an operation that needs HTTP facts counts as matched on plain TCP.
fn opaque(action: Action) -> bool {
    action == Action::Deny
}

fn host_matches(w: &Wild, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if w.matches(&host) {
        return true;
    }
    // Hosts are written without ports; compare the Host header without one too.
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => w.matches(h),
        _ => false,
    }
}

fn operation_matches(o: &Operation, f: &Facts<'_>, action: Action) -> bool {
    let ports_ok = any_of(&o.ports, |&p| p == f.port) && none_of(&o.not_ports, |&p| p == f.port);
    if !ports_ok {
        return false;
    }
    let needs_http = !(o.hosts.is_empty()
        && o.not_hosts.is_empty()
        && o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty());
    let Some(h) = f.http else { return !needs_http || opaque(action) };
    any_of(&o.hosts, |w| host_matches(w, h.host))
        && none_of(&o.not_hosts, |w| host_matches(w, h.host))
        && any_of(&o.methods, |m| m == h.method)
        && none_of(&o.not_methods, |m| m == h.method)
        && any_of(&o.paths, |p| p.matches(h.path))
        && none_of(&o.not_paths, |p| p.matches(h.path))
}

fn condition_matches(c: &Condition, f: &Facts<'_>, action: Action) -> bool {
    let strings = |v: Option<&str>| {
        let v = v.unwrap_or("");
        let hit = |w: &Wild| !v.is_empty() && w.matches(v);
        any_of(&c.values, hit) && none_of(&c.not_values, hit)
    };
    match &c.key {
        ConditionKey::Header(name) => {
            let Some(h) = f.http else { return opaque(action) };
            // Several values of one header: Istio joins them with ','.
            let joined;
            let v = match h.headers.get_all(name.as_str()).iter().count() {
                0 => None,
                1 => h.headers.get(name.as_str()).and_then(|v| v.to_str().ok()),
                _ => {
                    joined = h
                        .headers
                        .get_all(name.as_str())
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(",");
                    Some(joined.as_str())
                }
            };
            if v.is_none() {
                // Absent header: matches only a rule made purely of not_values.
                return c.values.is_empty();
            }
            strings(v)
        }
        ConditionKey::SourceIp => {
            let ip_in = |x: &Cidr| f.source_ip.is_some_and(|ip| x.contains(ip));
            any_of(&c.cidrs, ip_in) && none_of(&c.not_cidrs, ip_in)
        }
        ConditionKey::SourceNamespace => strings(f.namespace),
        ConditionKey::SourcePrincipal => strings(f.principal),
        ConditionKey::DestinationPort => strings(Some(&f.port.to_string())),
    }
}

#[cfg(test)]
mod tests;
