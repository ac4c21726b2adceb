//! L4 authorization policies (Istio's `istio.security.Authorization`) and how one policy matches
//! a connection.
//!
//! The shape mirrors the proto: a policy matches when ANY of its groups matches; a group when ALL
//! of its rules match; a rule when ANY of its matches matches; a match when every non-empty field
//! holds (values of one field are alternatives) and no non-empty `not_*` field holds. Identity
//! fields (namespaces, principals, service accounts) compare against the source's mesh identity;
//! a plaintext connection has none, so positive identity fields fail and negated ones pass (as
//! Istio documents: ISTIO-SECURITY-2021-004; a DENY on `notPrincipals: ["*"]` refuses plaintext).
//!
//! A match with no field at all holds for every connection. That is what the control plane sends
//! for the part of a DENY rule that only ztunnel cannot check (HTTP attributes, `remote.ip`,
//! `connection.sni`), so such a DENY applies without it: more restrictive, never less. (Istio's
//! ztunnel skips empty matches, which makes such a DENY match nothing; its istiod documents the
//! restrictive reading, which is the one kept here.) IPv4-mapped prefixes are read as IPv4 (see
//! [`Cidr`]).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use hbone::Identity;
use serde::{Serialize, Serializer};

use super::authorize::ConnInfo;

/// Which workloads a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Scope {
    /// Every workload in the mesh (Istio sends root-namespace policies this way).
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Workloads that list the policy (`namespace/name`) in their `authorization_policies`.
    WorkloadSelector,
    /// A scope value this proxy does not know. The policy applies as widely as an Istio policy in
    /// its namespace could: all workloads for the root namespace, else its namespace (fail closed).
    Unknown(i32),
}

/// What happens when a policy matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    /// The connection is allowed (and, once any ALLOW applies, required).
    Allow,
    /// The connection is denied.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
        })
    }
}

/// A string comparison.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal to the value.
    Exact(String),
    /// Starts with the value.
    Prefix(String),
    /// Ends with the value.
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

impl StringMatch {
    /// Whether `value` satisfies the comparison.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// An IP prefix. Host bits are cleared on construction, so `10.1.2.3/8` means `10.0.0.0/8`, and a
/// prefix inside the IPv4-mapped range (`::ffff:0:0/96`) is kept as the IPv4 prefix it names
/// (`::ffff:10.0.0.0/104` is `10.0.0.0/8`), since peers are compared in their IPv4 form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// A prefix length longer than the address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix length {len} is longer than the {max} bits of {addr}")]
pub struct CidrError {
    /// The address given.
    pub addr: IpAddr,
    /// The prefix length given.
    pub len: u32,
    /// Bits in that address family.
    pub max: u8,
}

impl Cidr {
    /// A prefix of `len` bits of `addr`.
    pub fn new(addr: IpAddr, len: u32) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > u32::from(max) {
            return Err(CidrError { addr, len, max });
        }
        let len = len as u8;
        // Mapped: compare as IPv4 (see `contains`), or no peer could ever be inside it.
        let (addr, len) = match addr {
            IpAddr::V6(a) if len >= 96 => match a.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), len - 96),
                None => (addr, len),
            },
            _ => (addr, len),
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(len)).into()),
        };
        Ok(Cidr { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is inside the prefix. IPv4-mapped IPv6 addresses count as IPv4, as a
    /// dual-stack socket reports IPv4 peers that way.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => u32::from(ip) & mask32(self.len) == u32::from(net),
            (IpAddr::V6(net), IpAddr::V6(ip)) => u128::from(ip) & mask128(self.len) == u128::from(net),
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A service account, qualified by its namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    /// Namespace of the service account.
    pub namespace: String,
    /// Name of the service account.
    pub service_account: String,
}

/// One set of conditions; see the module docs for how fields combine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    /// Source namespace is one of these.
    pub namespaces: Vec<StringMatch>,
    /// Source namespace is none of these.
    pub not_namespaces: Vec<StringMatch>,
    /// Source principal (identity without `spiffe://`) is one of these.
    pub principals: Vec<StringMatch>,
    /// Source principal is none of these.
    pub not_principals: Vec<StringMatch>,
    /// Source IP is in one of these prefixes.
    pub source_ips: Vec<Cidr>,
    /// Source IP is in none of these prefixes.
    pub not_source_ips: Vec<Cidr>,
    /// Destination IP is in one of these prefixes.
    pub destination_ips: Vec<Cidr>,
    /// Destination IP is in none of these prefixes.
    pub not_destination_ips: Vec<Cidr>,
    /// Destination port is one of these.
    pub destination_ports: Vec<u16>,
    /// Destination port is none of these.
    pub not_destination_ports: Vec<u16>,
    /// Source service account is one of these.
    pub service_accounts: Vec<ServiceAccountMatch>,
    /// Source service account is none of these.
    pub not_service_accounts: Vec<ServiceAccountMatch>,
}

/// Empty list: no constraint; else some value must satisfy `f`.
fn any_of<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

/// Empty list: no constraint; else no value may satisfy `f`.
fn none_of<T>(list: &[T], f: impl Fn(&T) -> bool) -> bool {
    list.is_empty() || !list.iter().any(f)
}

/// The principal form of an identity: the SPIFFE URI without its scheme.
pub fn principal(id: &Identity) -> &str {
    let s = id.as_str();
    s.strip_prefix("spiffe://").unwrap_or(s)
}

impl Match {
    /// Whether the connection satisfies every condition.
    pub fn matches(&self, c: &ConnInfo<'_>) -> bool {
        let id = c.src_identity;
        let ns = id.map(Identity::namespace);
        let pr = id.map(principal);
        let sa = |m: &ServiceAccountMatch| {
            id.is_some_and(|i| i.namespace() == m.namespace && i.service_account() == m.service_account)
        };
        any_of(&self.namespaces, |m| ns.is_some_and(|v| m.matches(v)))
            && none_of(&self.not_namespaces, |m| ns.is_some_and(|v| m.matches(v)))
            && any_of(&self.principals, |m| pr.is_some_and(|v| m.matches(v)))
            && none_of(&self.not_principals, |m| pr.is_some_and(|v| m.matches(v)))
            && any_of(&self.service_accounts, sa)
            && none_of(&self.not_service_accounts, sa)
            && any_of(&self.source_ips, |n| n.contains(c.src_ip))
            && none_of(&self.not_source_ips, |n| n.contains(c.src_ip))
            && any_of(&self.destination_ips, |n| n.contains(c.dst_ip))
            && none_of(&self.not_destination_ips, |n| n.contains(c.dst_ip))
            && any_of(&self.destination_ports, |p| *p == c.dst_port)
            && none_of(&self.not_destination_ports, |p| *p == c.dst_port)
    }
}

/// Alternatives: matches when any of its matches does (the proto's `Rules`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// The alternatives.
    pub matches: Vec<Match>,
}

/// Matches when all of its rules match. One group is one entry of the AuthorizationPolicy's
/// `rules`, which is why verdicts call a group index a "rule".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Group {
    /// The rules, all required.
    pub rules: Vec<Rule>,
}

impl Group {
    /// Whether every rule has a matching alternative.
    pub fn matches(&self, c: &ConnInfo<'_>) -> bool {
        self.rules.iter().all(|r| r.matches.iter().any(|m| m.matches(c)))
    }
}

/// One authorization policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Policy name.
    pub name: String,
    /// Policy namespace.
    pub namespace: String,
    /// Which workloads it applies to.
    pub scope: Scope,
    /// Allow or deny.
    pub action: Action,
    /// Evaluated and reported, never enforced.
    pub dry_run: bool,
    /// The policy matches when any group does.
    pub groups: Vec<Group>,
    /// Set when the policy cannot be evaluated at L4: why. An unusable DENY matches every
    /// connection and an unusable ALLOW matches none, so a defect never widens access.
    #[serde(serialize_with = "ser_opt_str")]
    pub unusable: Option<Arc<str>>,
}

fn ser_opt_str<S: Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(why) => s.serialize_some(&**why),
        None => s.serialize_none(),
    }
}

/// How one policy relates to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyMatch {
    /// Group `n` (the first that matched) matched.
    Group(usize),
    /// No group matched.
    NoMatch,
    /// The policy is unusable (see [`Policy::unusable`]).
    Unusable,
}

impl Policy {
    /// `namespace/name`, the policy's resource name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A policy that stands in for one that cannot be evaluated: it keeps the name, applies with
    /// the given scope and action, and fails closed (see [`Policy::unusable`]).
    pub fn new_unusable(namespace: &str, name: &str, scope: Scope, action: Action, why: impl Into<Arc<str>>) -> Policy {
        Policy {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            scope,
            action,
            dry_run: false,
            groups: Vec::new(),
            unusable: Some(why.into()),
        }
    }

    /// Matches the policy against a connection.
    pub fn evaluate(&self, c: &ConnInfo<'_>) -> PolicyMatch {
        if self.unusable.is_some() {
            return PolicyMatch::Unusable;
        }
        match self.groups.iter().position(|g| g.matches(c)) {
            Some(n) => PolicyMatch::Group(n),
            None => PolicyMatch::NoMatch,
        }
    }
}
