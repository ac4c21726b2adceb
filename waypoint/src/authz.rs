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
//! Principals are compared without `spiffe://`; every string field (methods included) uses
//! Istio's wildcards (exact, `*`, `prefix*`, `*suffix`), hosts compare case-insensitively,
//! header values compare as the bytes sent, paths also accept the `{*}` (one non-empty
//! segment) and `{**}` (zero or more segments) templates. Paths arrive normalized (see
//! [`crate::normalize`]), and a policy's paths are normalized the same way when compiled
//! (Istio compares them as written, so there a `DENY` on `/%7Eadmin/*` never matches).
//!
//! A policy the waypoint cannot compile (a condition key it does not know, a bad address or
//! template, an unknown action) is not dropped, which would open what it denies or, for the
//! only ALLOW policy, everything: it becomes a fail-closed stand-in ([`Policy::stand_in`]):
//! a DENY denies every request to its targets, an ALLOW matches nothing. A policy with a
//! target the waypoint cannot resolve is placed failing closed on every request
//! ([`Policy::unresolved_target`]).

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
        self.matches_bytes(v.as_bytes())
    }

    /// The same on raw bytes (header values need not be UTF-8).
    fn matches_bytes(&self, v: &[u8]) -> bool {
        match self {
            Wild::Any => true,
            Wild::Exact(e) => v == e.as_bytes(),
            Wild::Prefix(p) => v.starts_with(p.as_bytes()),
            Wild::Suffix(s) => v.ends_with(s.as_bytes()),
        }
    }
}

/// A path pattern: a wildcard string or a `{*}`/`{**}` template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathPattern {
    /// Exact, `*`, `prefix*`, `*suffix`.
    Wild(Wild),
    /// A template (Envoy's URI template as Istio translates it): `head` segments, each
    /// literal or `{*}` (one non-empty segment); with `glob`, a `{**}` (zero or more
    /// segments: any text, `/` included) follows and then `tail`, literal segments.
    Template {
        /// Segments before `{**}` (all of them without one).
        head: Vec<String>,
        /// Whether `{**}` follows `head`.
        glob: bool,
        /// After `{**}`: `/` and the literal segments joined by `/` (empty when `{**}` ends it).
        tail: String,
    },
}

/// `{*}`: one path segment.
const MATCH_ONE: &str = "{*}";
/// `{**}`: zero or more path segments.
const MATCH_ANY: &str = "{**}";

impl PathPattern {
    /// A path is a template when it contains `{*}` or `{**}` (Istio's `ContainsPathTemplate`);
    /// a template must pass Istio's `CheckValidPathTemplate`: `{*}` and `{**}` only as whole
    /// segments, no other `{`, `}` (nor a bare `*`, which Envoy would read as an operator),
    /// and no operator after `{**}`.
    ///
    /// A pattern's path text (an exact path, a prefix, a template: whatever starts with `/`) is
    /// normalized as request paths are ([`crate::normalize`]), or it could never match one: a
    /// `DENY` on `/%7Eadmin/*` would let `/~admin/x` through. A suffix (`*.js`) is left as
    /// written. Text that cannot be normalized (a malformed escape) is an error, so the
    /// policy fails closed.
    pub fn new(s: &str) -> Result<PathPattern, String> {
        let s = &*Self::normalized(s)?;
        if !(s.contains(MATCH_ONE) || s.contains(MATCH_ANY)) {
            return Ok(PathPattern::Wild(Wild::new(s, false)));
        }
        let mut head = Vec::new();
        let mut tail = Vec::new();
        let mut glob = false;
        for seg in s.split('/') {
            match seg {
                MATCH_ANY | MATCH_ONE if glob => {
                    return Err(format!("invalid path template {s:?}: {{**}} is not the last operator"));
                }
                MATCH_ANY => glob = true,
                MATCH_ONE => head.push(seg.to_owned()),
                _ if seg.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "invalid path template {s:?}: segment {seg:?} is not a literal, {{*}} or {{**}}"
                    ));
                }
                _ if glob => tail.push(seg),
                _ => head.push(seg.to_owned()),
            }
        }
        let tail = if tail.is_empty() { String::new() } else { format!("/{}", tail.join("/")) };
        Ok(PathPattern::Template { head, glob, tail })
    }

    /// `s` with its path text normalized: a prefix keeps its `*`.
    fn normalized(s: &str) -> Result<std::borrow::Cow<'_, str>, String> {
        if !s.starts_with('/') {
            return Ok(s.into());
        }
        let (path, star) = match s.strip_suffix('*').filter(|p| !p.ends_with("{*") && !p.ends_with("{**")) {
            Some(p) => (p, "*"),
            None => (s, ""),
        };
        match crate::normalize::normalize(path) {
            Ok(std::borrow::Cow::Borrowed(_)) => Ok(s.into()),
            Ok(n) => Ok(format!("{n}{star}").into()),
            Err(e) => Err(format!("path {s:?} cannot be normalized as request paths are: {e}")),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Wild(w) => w.matches(path),
            PathPattern::Template { head, glob, tail } => template_match(head, *glob, tail, path),
        }
    }
}

/// One pass over `path`: the `head` segments, then (with `glob`) anything that ends with
/// `tail`, else the end of the path.
fn template_match(head: &[String], glob: bool, tail: &str, path: &str) -> bool {
    let segment = |p: &str, s: &str| if p == MATCH_ONE { !s.is_empty() } else { p == s };
    if !glob {
        let mut segs = path.split('/');
        return head.iter().all(|p| segs.next().is_some_and(|s| segment(p, s))) && segs.next().is_none();
    }
    // Each head segment is followed by `/`; what is left is `{**}` then `tail`.
    let mut rest = path;
    for p in head {
        match rest.split_once('/') {
            Some((s, r)) if segment(p, s) => rest = r,
            _ => return false,
        }
    }
    rest.ends_with(tail)
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
    methods: Vec<Wild>,
    not_methods: Vec<Wild>,
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
    /// `destination.ip`: the CONNECT's target address (service VIP or workload IP).
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
}

/// The condition keys a waypoint evaluates, besides `request.headers[<name>]` (istiod-lite
/// sends exactly these; `waypoint/tests/authz.rs` checks that the two lists agree).
pub const WHEN_KEYS: [&str; 5] =
    ["source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"];

/// One `when` condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    key: ConditionKey,
    values: Vec<Wild>,
    not_values: Vec<Wild>,
    /// For `source.ip` and `destination.ip`.
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
    /// Why the policy is not enforced as sent: it could not be compiled (its rules are then
    /// the stand-in's), or a target could not be resolved ([`Policy::unresolved_target`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
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

/// Compiles `p`; a policy that cannot be compiled becomes its fail-closed stand-in
/// ([`Policy::stand_in`]), logged with the reason: never an error, so a policy is never
/// dropped (which would fail open).
impl TryFrom<pb::L7Policy> for Policy {
    type Error = PolicyError;

    fn try_from(p: pb::L7Policy) -> Result<Policy, PolicyError> {
        Ok(Policy::compile(&p).unwrap_or_else(|e| {
            let stand_in = Policy::stand_in(&p, &e);
            tracing::warn!(
                policy = %stand_in.key,
                action = ?stand_in.action,
                error = %e,
                "L7 policy cannot be compiled; enforcing a fail-closed stand-in (DENY: denies every request \
                 to its targets; ALLOW: allows nothing)"
            );
            stand_in
        }))
    }
}

impl Policy {
    /// What a policy that cannot be compiled is enforced as, failing closed: a DENY (or a
    /// policy of an unknown action) denies every request to its targets, an ALLOW matches
    /// nothing, an AUDIT audits every request.
    pub fn stand_in(p: &pb::L7Policy, why: &PolicyError) -> Policy {
        let action = match pb::l7_policy::Action::try_from(p.action) {
            Ok(pb::l7_policy::Action::Allow) => Action::Allow,
            Ok(pb::l7_policy::Action::Audit) => Action::Audit,
            Ok(pb::l7_policy::Action::Deny) | Err(_) => Action::Deny,
        };
        // One empty rule matches every request; no rule matches none.
        let rules = if action == Action::Allow { Vec::new() } else { vec![Rule::default()] };
        Policy {
            key: format!("{}/{}", p.namespace, p.name).into(),
            action,
            rules,
            invalid: Some(format!("{}: {}", why.field, why.problem)),
        }
    }

    /// What is enforced on every request through the waypoint in place of this policy for a
    /// target it cannot resolve (a target without a kind: one a newer control plane knows,
    /// say). That target may be this waypoint's Gateway or any service, so the policy must
    /// fail closed wherever it may have applied. A DENY (or AUDIT) keeps its rules: applied
    /// to every request they deny (audit) all they were meant to and more, and denying every
    /// request instead would take down every service for one policy. An ALLOW matches
    /// nothing: its rules applied everywhere would let through requests that the ALLOW
    /// policies of other services refuse, while an ALLOW in place only makes a request need
    /// a match from some ALLOW policy.
    pub fn unresolved_target(&self, why: &PolicyError) -> Policy {
        let why = format!("{}: {}", why.field, why.problem);
        Policy {
            key: self.key.clone(),
            action: self.action,
            rules: if self.action == Action::Allow { Vec::new() } else { self.rules.clone() },
            invalid: Some(match &self.invalid {
                Some(first) => format!("{first}; {why}"),
                None => why,
            }),
        }
    }

    /// Compiles `p` as written, or names the field that cannot be compiled.
    pub fn compile(p: &pb::L7Policy) -> Result<Policy, PolicyError> {
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
        let paths = |field: String, v: &[String]| {
            v.iter()
                .enumerate()
                .map(|(i, s)| PathPattern::new(s).map_err(|e| err(format!("{field}[{i}]"), e)))
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
                    methods: wilds(&o.methods, false),
                    not_methods: wilds(&o.not_methods, false),
                    paths: paths(format!("{f}.paths"), &o.paths)?,
                    not_paths: paths(format!("{f}.not_paths"), &o.not_paths)?,
                });
            }
            let mut when = Vec::new();
            for (i, c) in rule.when.iter().enumerate() {
                let f = format!("rules[{r}].when[{i}]");
                let key = match c.key.as_str() {
                    "source.ip" | "remote.ip" => ConditionKey::SourceIp,
                    "source.namespace" => ConditionKey::SourceNamespace,
                    "source.principal" => ConditionKey::SourcePrincipal,
                    "destination.ip" => ConditionKey::DestinationIp,
                    "destination.port" => ConditionKey::DestinationPort,
                    k => match k.strip_prefix("request.headers[").and_then(|h| h.strip_suffix(']')) {
                        Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => {
                            ConditionKey::Header(h.to_ascii_lowercase())
                        }
                        _ => return Err(err(format!("{f}.key"), format!("unsupported condition key {k:?}"))),
                    },
                };
                let (cidr_v, cidr_nv) = if matches!(key, ConditionKey::SourceIp | ConditionKey::DestinationIp) {
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
        Ok(Policy { key: key.into(), action, rules, invalid: None })
    }
}

/// The HTTP part of a request, absent for plain TCP.
#[derive(Debug, Clone, Copy)]
pub struct HttpFacts<'a> {
    /// Host (`:authority`), as sent and as forwarded.
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
    /// The address the client connected to: the CONNECT's target (service VIP or workload IP).
    pub destination_ip: Option<IpAddr>,
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
        && any_of(&o.methods, |m| m.matches(h.method))
        && none_of(&o.not_methods, |m| m.matches(h.method))
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
            // The value as sent, bytes and all (a value that is not UTF-8 is still a value);
            // several values of one header: Istio joins them with ','.
            let mut values = h.headers.get_all(name.as_str()).iter();
            let Some(first) = values.next() else {
                // Absent header: matches only a rule made purely of not_values.
                return c.values.is_empty();
            };
            let joined: std::borrow::Cow<'_, [u8]> = match values.next() {
                None => first.as_bytes().into(),
                Some(second) => {
                    let mut all = first.as_bytes().to_vec();
                    for v in std::iter::once(second).chain(values) {
                        all.push(b',');
                        all.extend_from_slice(v.as_bytes());
                    }
                    all.into()
                }
            };
            let hit = |w: &Wild| !joined.is_empty() && w.matches_bytes(&joined);
            any_of(&c.values, hit) && none_of(&c.not_values, hit)
        }
        ConditionKey::SourceIp | ConditionKey::DestinationIp => {
            let ip = if c.key == ConditionKey::SourceIp { f.source_ip } else { f.destination_ip };
            let ip_in = |x: &Cidr| ip.is_some_and(|ip| x.contains(ip));
            any_of(&c.cidrs, ip_in) && none_of(&c.not_cidrs, ip_in)
        }
        ConditionKey::SourceNamespace => strings(f.namespace),
        ConditionKey::SourcePrincipal => strings(f.principal),
        ConditionKey::DestinationPort => strings(Some(&f.port.to_string())),
    }
}

#[cfg(test)]
mod tests;
