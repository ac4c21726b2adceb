//! Validated conversion from the Istio protos (`istio.workload`, `istio.security`) to the model.
//!
//! Errors name the object (`workload default/productpage-v1`) and the field, spelled as in the
//! proto's JSON form (`addresses[1]`, `groups[0].rules[0].matches[1].sourceIps[0]`), which is also
//! how the YAML state file spells it.
//!
//! Authorization policies have two conversions. [`TryFrom`] is strict: any defect is an error.
//! [`policy_fail_closed`] is for sources that must keep a policy they cannot understand (xDS): a
//! defect inside the policy yields a [`Policy`] marked unusable, which denies everything if it is
//! a DENY and matches nothing if it is an ALLOW, so a policy we cannot read never widens access.
//!
//! Fields this proxy does not act on (`hostname`, `networkGateway`, `ipFamilies`,
//! `loadBalancing.dnsConnectStrategy`, extensions) are ignored; fields whose meaning it would
//! get wrong (`LEGACY_ISTIO_MTLS`, an application tunnel, HBONE on the host network) are
//! errors. `loadBalancing` fails closed: a mode this build does not know is taken as STRICT and
//! a scope it does not know is one no endpoint shares, so a locality requirement is never
//! widened (no endpoint rather than one in another zone). Workloads on another network are kept
//! but never chosen as endpoints (no network gateway support; see [`super::service`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hbone::{DEFAULT_TRUST_DOMAIN, Identity, IdentityError};
use proto::istio::security as pbs;
use proto::istio::workload as pbw;

use super::policy::{Action, Cidr, CidrError, Group, Match, Policy, Rule, Scope, ServiceAccountMatch, StringMatch};
use super::service::{AppProtocol, LoadBalancing, LoadBalancingMode, LocalityScope, Service};
use super::workload::{
    DEFAULT_CAPACITY, DEFAULT_HBONE_PORT, GatewayAddress, GatewayDestination, Locality, NetworkAddress, NetworkMode,
    PortMap, TunnelProtocol, Workload, WorkloadType,
};

/// Service account assumed when a workload names none, as Kubernetes does.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// A proto message that does not convert; names the object and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: field `{field}`: {problem}")]
pub struct ConvertError {
    /// The object, e.g. `workload default/productpage-v1`.
    pub object: String,
    /// The field path, e.g. `addresses[1]`.
    pub field: String,
    /// What is wrong with it.
    #[source]
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A required field is empty or unset.
    #[error("is required")]
    Missing,
    /// An IP address of the wrong length.
    #[error("address has {0} bytes; want 4 (IPv4) or 16 (IPv6)")]
    AddressLength(usize),
    /// The namespace, service account and trust domain do not form a valid identity.
    #[error("not a valid identity part: {0}")]
    Identity(#[source] IdentityError),
    /// An enum value this proxy does not know.
    #[error("unknown enum value {0}")]
    UnknownEnum(i32),
    /// A known value that this proxy does not implement.
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// A port outside 1..=65535.
    #[error("port {0} is out of range 1-65535")]
    Port(u32),
    /// A CIDR whose prefix is longer than its address.
    #[error("invalid CIDR: {0}")]
    Cidr(#[source] CidrError),
    /// A reference that should be `namespace/name`.
    #[error("{0:?} is not of the form namespace/name")]
    Reference(String),
    /// An xDS resource named other than Istio names it.
    #[error(
        "{0:?} is not the resource's name (a workload's resource is named by its uid, a service's by \
         namespace/hostname, a policy's by namespace/name)"
    )]
    ResourceName(String),
}

/// Builds errors for one object.
struct Ctx(String);

impl Ctx {
    fn err(&self, field: impl Into<String>, problem: Problem) -> ConvertError {
        ConvertError { object: self.0.clone(), field: field.into(), problem }
    }

    fn required(&self, field: &str, value: String) -> Result<String, ConvertError> {
        if value.is_empty() { Err(self.err(field, Problem::Missing)) } else { Ok(value) }
    }
}

fn object_name(kind: &str, namespace: &str, name: &str, fallback: &str) -> Ctx {
    Ctx(if namespace.is_empty() || name.is_empty() {
        format!("{kind} {fallback:?}")
    } else {
        format!("{kind} {namespace}/{name}")
    })
}

/// An IP address from its 4 or 16 network-order bytes.
pub fn ip_from_bytes(b: &[u8]) -> Result<IpAddr, Problem> {
    if let Ok(a) = <[u8; 4]>::try_from(b) {
        Ok(IpAddr::V4(Ipv4Addr::from(a)))
    } else if let Ok(a) = <[u8; 16]>::try_from(b) {
        Ok(IpAddr::V6(Ipv6Addr::from(a)))
    } else {
        Err(Problem::AddressLength(b.len()))
    }
}

/// The bytes of an IP address, as the protos carry it.
pub fn ip_to_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn port(cx: &Ctx, field: impl Into<String>, p: u32) -> Result<u16, ConvertError> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(cx.err(field, Problem::Port(p))),
    }
}

/// A target port: 0 is allowed (a named port resolved elsewhere).
fn target_port(cx: &Ctx, field: impl Into<String>, p: u32) -> Result<u16, ConvertError> {
    u16::try_from(p).map_err(|_| cx.err(field, Problem::Port(p)))
}

fn reference(cx: &Ctx, field: impl Into<String>, r: &str) -> Result<(), ConvertError> {
    match r.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => Ok(()),
        _ => Err(cx.err(field, Problem::Reference(r.to_owned()))),
    }
}

fn gateway(cx: &Ctx, field: &str, g: pbw::GatewayAddress) -> Result<GatewayAddress, ConvertError> {
    use pbw::gateway_address::Destination;
    let destination = match g.destination {
        None => return Err(cx.err(format!("{field}.destination"), Problem::Missing)),
        Some(Destination::Hostname(h)) => GatewayDestination::Hostname {
            namespace: cx.required(&format!("{field}.hostname.namespace"), h.namespace)?,
            hostname: cx.required(&format!("{field}.hostname.hostname"), h.hostname)?,
        },
        Some(Destination::Address(a)) => GatewayDestination::Address(NetworkAddress {
            network: a.network,
            address: ip_from_bytes(&a.address).map_err(|p| cx.err(format!("{field}.address.address"), p))?,
        }),
    };
    let hbone_mtls_port = match g.hbone_mtls_port {
        0 => DEFAULT_HBONE_PORT,
        p => port(cx, format!("{field}.hboneMtlsPort"), p)?,
    };
    Ok(GatewayAddress { destination, hbone_mtls_port })
}

fn identity(cx: &Ctx, td: &str, ns: &str, sa: &str) -> Result<Identity, ConvertError> {
    Identity::new(td, ns, sa).map_err(|e| {
        let field = match &e {
            IdentityError::BadSegment { what: "namespace", .. } => "namespace",
            IdentityError::BadPath(_) if ns.contains('/') => "namespace",
            IdentityError::MissingScheme(_)
            | IdentityError::EmptyTrustDomain(_)
            | IdentityError::TrustDomainChar { .. } => "trustDomain",
            _ => "serviceAccount",
        };
        cx.err(field, Problem::Identity(e))
    })
}

impl TryFrom<pbw::Workload> for Workload {
    type Error = ConvertError;

    fn try_from(w: pbw::Workload) -> Result<Self, ConvertError> {
        let cx = object_name("workload", &w.namespace, &w.name, &w.uid);
        let uid = cx.required("uid", w.uid)?;
        let name = cx.required("name", w.name)?;
        let namespace = cx.required("namespace", w.namespace)?;
        let sa = if w.service_account.is_empty() { DEFAULT_SERVICE_ACCOUNT } else { &w.service_account };
        let td = if w.trust_domain.is_empty() { DEFAULT_TRUST_DOMAIN } else { &w.trust_domain };
        let identity = identity(&cx, td, &namespace, sa)?;
        let addresses = w
            .addresses
            .iter()
            .enumerate()
            .map(|(i, b)| ip_from_bytes(b).map_err(|p| cx.err(format!("addresses[{i}]"), p)))
            .collect::<Result<_, _>>()?;
        let protocol = match pbw::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pbw::TunnelProtocol::None) => TunnelProtocol::None,
            Ok(pbw::TunnelProtocol::Hbone) => TunnelProtocol::Hbone,
            Ok(pbw::TunnelProtocol::LegacyIstioMtls) => {
                return Err(cx.err("tunnelProtocol", Problem::Unsupported("LEGACY_ISTIO_MTLS")));
            }
            Err(_) => return Err(cx.err("tunnelProtocol", Problem::UnknownEnum(w.tunnel_protocol))),
        };
        let network_mode = match pbw::NetworkMode::try_from(w.network_mode) {
            Ok(pbw::NetworkMode::Standard) => NetworkMode::Standard,
            Ok(pbw::NetworkMode::HostNetwork) => NetworkMode::HostNetwork,
            Err(_) => return Err(cx.err("networkMode", Problem::UnknownEnum(w.network_mode))),
        };
        // Istio never sends this (a host-network pod cannot be captured, istio#51711), and no
        // proxy could honour it: the tunnel would go to the node's own 15008, where no ztunnel
        // serves (pod listeners are never bound in the node's namespace), and sending plain TCP
        // instead would quietly drop the mTLS the control plane asked for.
        if network_mode == NetworkMode::HostNetwork && protocol == TunnelProtocol::Hbone {
            return Err(cx.err("tunnelProtocol", Problem::Unsupported("HBONE for a host-network workload")));
        }
        let workload_type = match pbw::WorkloadType::try_from(w.workload_type) {
            Ok(pbw::WorkloadType::Deployment) => WorkloadType::Deployment,
            Ok(pbw::WorkloadType::Cronjob) => WorkloadType::Cronjob,
            Ok(pbw::WorkloadType::Pod) => WorkloadType::Pod,
            Ok(pbw::WorkloadType::Job) => WorkloadType::Job,
            Err(_) => return Err(cx.err("workloadType", Problem::UnknownEnum(w.workload_type))),
        };
        let healthy = match pbw::WorkloadStatus::try_from(w.status) {
            Ok(pbw::WorkloadStatus::Healthy) => true,
            Ok(pbw::WorkloadStatus::Unhealthy) => false,
            Err(_) => return Err(cx.err("status", Problem::UnknownEnum(w.status))),
        };
        if let Some(t) = &w.application_tunnel
            && t.protocol != pbw::application_tunnel::Protocol::None as i32
        {
            return Err(cx.err("applicationTunnel.protocol", Problem::Unsupported("an application tunnel")));
        }
        let waypoint = w.waypoint.map(|g| gateway(&cx, "waypoint", g)).transpose()?;
        let mut services = BTreeMap::new();
        for (key, list) in w.services {
            reference(&cx, format!("services[{key:?}]"), &key)?;
            let mut ports = PortMap::new();
            for (i, p) in list.ports.iter().enumerate() {
                let sp = port(&cx, format!("services[{key:?}].ports[{i}].servicePort"), p.service_port)?;
                let tp = target_port(&cx, format!("services[{key:?}].ports[{i}].targetPort"), p.target_port)?;
                // 0: the workload does not resolve this port; the service's own target applies.
                if tp != 0 {
                    ports.insert(sp, tp);
                }
            }
            services.insert(key, ports);
        }
        for (i, r) in w.authorization_policies.iter().enumerate() {
            reference(&cx, format!("authorizationPolicies[{i}]"), r)?;
        }
        let locality =
            w.locality.map(|l| Locality { region: l.region, zone: l.zone, subzone: l.subzone }).unwrap_or_default();
        Ok(Workload {
            uid,
            name,
            identity,
            addresses,
            node: w.node,
            network: w.network,
            network_mode,
            protocol,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_name: w.workload_name,
            workload_type,
            cluster_id: w.cluster_id,
            waypoint,
            services,
            authorization_policies: w.authorization_policies,
            healthy,
            locality,
            capacity: w.capacity.unwrap_or(DEFAULT_CAPACITY),
        })
    }
}

impl TryFrom<pbw::Service> for Service {
    type Error = ConvertError;

    fn try_from(s: pbw::Service) -> Result<Self, ConvertError> {
        let cx = object_name("service", &s.namespace, &s.hostname, &s.name);
        let name = cx.required("name", s.name)?;
        let namespace = cx.required("namespace", s.namespace)?;
        let hostname = cx.required("hostname", s.hostname)?;
        let vips = s
            .addresses
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let address = ip_from_bytes(&a.address).map_err(|p| cx.err(format!("addresses[{i}].address"), p))?;
                Ok(NetworkAddress { network: a.network, address })
            })
            .collect::<Result<_, ConvertError>>()?;
        let mut ports = PortMap::new();
        let mut app_protocols = BTreeMap::new();
        for (i, p) in s.ports.iter().enumerate() {
            let sp = port(&cx, format!("ports[{i}].servicePort"), p.service_port)?;
            ports.insert(sp, target_port(&cx, format!("ports[{i}].targetPort"), p.target_port)?);
            // A value this build does not know is treated as undeclared, as UNKNOWN is.
            let declared = match pbw::AppProtocol::try_from(p.app_protocol) {
                Ok(pbw::AppProtocol::Http11) => Some(AppProtocol::Http11),
                Ok(pbw::AppProtocol::Http2) => Some(AppProtocol::Http2),
                Ok(pbw::AppProtocol::Grpc) => Some(AppProtocol::Grpc),
                Ok(pbw::AppProtocol::Tcp) => Some(AppProtocol::Tcp),
                Ok(pbw::AppProtocol::Tls) => Some(AppProtocol::Tls),
                Ok(pbw::AppProtocol::Unknown) | Err(_) => None,
            };
            if let Some(d) = declared {
                app_protocols.insert(sp, d);
            }
        }
        let waypoint = s.waypoint.map(|g| gateway(&cx, "waypoint", g)).transpose()?;
        let load_balancing = s.load_balancing.map(load_balancing).unwrap_or_default();
        Ok(Service {
            name,
            namespace,
            hostname,
            vips,
            ports,
            app_protocols,
            subject_alt_names: s.subject_alt_names,
            waypoint,
            load_balancing,
        })
    }
}

/// A service's load balancing, failing closed on values this build does not know (see the
/// module docs): they can only narrow the endpoints, never widen them.
fn load_balancing(lb: pbw::LoadBalancing) -> LoadBalancing {
    use pbw::load_balancing::{HealthPolicy, Mode, Scope as PbScope};
    let mode = match Mode::try_from(lb.mode) {
        Ok(Mode::UnspecifiedMode) => LoadBalancingMode::Standard,
        Ok(Mode::Failover) => LoadBalancingMode::Failover,
        Ok(Mode::Passthrough) => LoadBalancingMode::Passthrough,
        Ok(Mode::Strict) | Err(_) => LoadBalancingMode::Strict,
    };
    let routing_preference = lb
        .routing_preference
        .iter()
        .map(|&v| match PbScope::try_from(v) {
            Ok(PbScope::Region) => LocalityScope::Region,
            Ok(PbScope::Zone) => LocalityScope::Zone,
            Ok(PbScope::Subzone) => LocalityScope::Subzone,
            Ok(PbScope::Node) => LocalityScope::Node,
            Ok(PbScope::Cluster) => LocalityScope::Cluster,
            Ok(PbScope::Network) => LocalityScope::Network,
            Ok(PbScope::UnspecifiedScope) | Err(_) => LocalityScope::Unknown(v),
        })
        .collect();
    // An unknown health policy keeps the default: healthy endpoints only.
    let allow_unhealthy = HealthPolicy::try_from(lb.health_policy) == Ok(HealthPolicy::AllowAll);
    LoadBalancing { mode, routing_preference, allow_unhealthy }
}

/// One workload-discovery resource: a workload or a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// A workload.
    Workload(Workload),
    /// A service.
    Service(Service),
}

impl TryFrom<pbw::Address> for Address {
    type Error = ConvertError;

    fn try_from(a: pbw::Address) -> Result<Self, ConvertError> {
        match a.r#type {
            Some(pbw::address::Type::Workload(w)) => Ok(Address::Workload(w.try_into()?)),
            Some(pbw::address::Type::Service(s)) => Ok(Address::Service(s.try_into()?)),
            None => Err(Ctx("address".to_owned()).err("type", Problem::Missing)),
        }
    }
}

impl Address {
    /// The name Istio gives this address's xDS resource: a workload's uid, a service's
    /// `namespace/hostname`.
    pub fn resource_name(&self) -> String {
        match self {
            Address::Workload(w) => w.uid.clone(),
            Address::Service(s) => format!("{}/{}", s.namespace, s.hostname),
        }
    }

    /// Converts the resource named `name`, which must be the name Istio gives it: proxies
    /// keep addresses by resource name and the state by uid and hostname, so two resources
    /// for one workload (a rename the control plane sent as an upsert without the removal)
    /// would make the whole state ambiguous, where a wrongly named one is refused alone.
    pub fn from_resource(name: &str, a: pbw::Address) -> Result<Address, ConvertError> {
        let address = Address::try_from(a)?;
        let field = if matches!(address, Address::Workload(_)) { "uid" } else { "namespace/hostname" };
        named_as(name, "address", field, address.resource_name())?;
        Ok(address)
    }
}

/// Checks that the resource named `name` carries that name as its `key` (made of `field`).
fn named_as(name: &str, kind: &str, field: &str, key: String) -> Result<(), ConvertError> {
    if key == name {
        return Ok(());
    }
    Err(Ctx(format!("{kind} resource {name:?}")).err(field, Problem::ResourceName(key)))
}

fn string_matches(cx: &Ctx, field: &str, list: Vec<pbs::StringMatch>) -> Result<Vec<StringMatch>, ConvertError> {
    use pbs::string_match::MatchType;
    list.into_iter()
        .enumerate()
        .map(|(i, m)| match m.match_type {
            Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s)),
            Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s)),
            Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s)),
            Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
            None => Err(cx.err(format!("{field}[{i}]"), Problem::Missing)),
        })
        .collect()
}

fn cidrs(cx: &Ctx, field: &str, list: Vec<pbs::Address>) -> Result<Vec<Cidr>, ConvertError> {
    list.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let ip = ip_from_bytes(&a.address).map_err(|p| cx.err(format!("{field}[{i}].address"), p))?;
            Cidr::new(ip, a.length).map_err(|e| cx.err(format!("{field}[{i}].length"), Problem::Cidr(e)))
        })
        .collect()
}

fn ports(cx: &Ctx, field: &str, list: Vec<u32>) -> Result<Vec<u16>, ConvertError> {
    list.into_iter().enumerate().map(|(i, p)| port(cx, format!("{field}[{i}]"), p)).collect()
}

fn service_accounts(
    cx: &Ctx,
    field: &str,
    list: Vec<pbs::ServiceAccountMatch>,
) -> Result<Vec<ServiceAccountMatch>, ConvertError> {
    list.into_iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(ServiceAccountMatch {
                namespace: cx.required(&format!("{field}[{i}].namespace"), m.namespace)?,
                service_account: cx.required(&format!("{field}[{i}].serviceAccount"), m.service_account)?,
            })
        })
        .collect()
}

fn match_(cx: &Ctx, f: &str, m: pbs::Match) -> Result<Match, ConvertError> {
    Ok(Match {
        namespaces: string_matches(cx, &format!("{f}.namespaces"), m.namespaces)?,
        not_namespaces: string_matches(cx, &format!("{f}.notNamespaces"), m.not_namespaces)?,
        principals: string_matches(cx, &format!("{f}.principals"), m.principals)?,
        not_principals: string_matches(cx, &format!("{f}.notPrincipals"), m.not_principals)?,
        source_ips: cidrs(cx, &format!("{f}.sourceIps"), m.source_ips)?,
        not_source_ips: cidrs(cx, &format!("{f}.notSourceIps"), m.not_source_ips)?,
        destination_ips: cidrs(cx, &format!("{f}.destinationIps"), m.destination_ips)?,
        not_destination_ips: cidrs(cx, &format!("{f}.notDestinationIps"), m.not_destination_ips)?,
        destination_ports: ports(cx, &format!("{f}.destinationPorts"), m.destination_ports)?,
        not_destination_ports: ports(cx, &format!("{f}.notDestinationPorts"), m.not_destination_ports)?,
        service_accounts: service_accounts(cx, &format!("{f}.serviceAccounts"), m.service_accounts)?,
        not_service_accounts: service_accounts(cx, &format!("{f}.notServiceAccounts"), m.not_service_accounts)?,
    })
}

fn groups(cx: &Ctx, list: Vec<pbs::Group>) -> Result<Vec<Group>, ConvertError> {
    let mut out = Vec::with_capacity(list.len());
    for (g, group) in list.into_iter().enumerate() {
        let mut rules = Vec::with_capacity(group.rules.len());
        for (r, rule) in group.rules.into_iter().enumerate() {
            let matches = rule
                .matches
                .into_iter()
                .enumerate()
                .map(|(m, x)| match_(cx, &format!("groups[{g}].rules[{r}].matches[{m}]"), x))
                .collect::<Result<_, _>>()?;
            rules.push(Rule { matches });
        }
        out.push(Group { rules });
    }
    Ok(out)
}

/// Converts a policy; `Ok((policy, Some(defect)))` when the policy is kept but unusable.
fn convert_policy(a: pbs::Authorization) -> Result<(Policy, Option<ConvertError>), ConvertError> {
    let cx = object_name("authorization", &a.namespace, &a.name, &a.name);
    let name = cx.required("name", a.name)?;
    let namespace = cx.required("namespace", a.namespace)?;
    let mut defect = None;
    let scope = match pbs::Scope::try_from(a.scope) {
        Ok(pbs::Scope::Global) => Scope::Global,
        Ok(pbs::Scope::Namespace) => Scope::Namespace,
        Ok(pbs::Scope::WorkloadSelector) => Scope::WorkloadSelector,
        Err(_) => {
            defect = Some(cx.err("scope", Problem::UnknownEnum(a.scope)));
            Scope::Unknown(a.scope)
        }
    };
    let action = match pbs::Action::try_from(a.action) {
        Ok(pbs::Action::Allow) => Action::Allow,
        Ok(pbs::Action::Deny) => Action::Deny,
        Err(_) => {
            // Unknown actions (Istio also has AUDIT and CUSTOM) are treated as a DENY that
            // matches everything: we cannot tell what they would let through.
            defect.get_or_insert(cx.err("action", Problem::UnknownEnum(a.action)));
            Action::Deny
        }
    };
    let groups = match groups(&cx, a.groups) {
        Ok(g) if defect.is_none() => g,
        Ok(_) => Vec::new(),
        Err(e) => {
            defect.get_or_insert(e);
            Vec::new()
        }
    };
    let unusable = defect.as_ref().map(|e| format!("field `{}`: {}", e.field, e.problem).into());
    Ok((Policy { name, namespace, scope, action, dry_run: a.dry_run, groups, unusable }, defect))
}

impl TryFrom<pbs::Authorization> for Policy {
    type Error = ConvertError;

    /// Strict: any defect is an error.
    fn try_from(a: pbs::Authorization) -> Result<Self, ConvertError> {
        match convert_policy(a)? {
            (p, None) => Ok(p),
            (_, Some(e)) => Err(e),
        }
    }
}

/// Converts a policy, keeping one with defects as an unusable policy (see the module docs).
/// Errs only when the policy cannot even be named (no name or namespace).
pub fn policy_fail_closed(a: pbs::Authorization) -> Result<Policy, ConvertError> {
    convert_policy(a).map(|(p, _)| p)
}

/// [`policy_fail_closed`] of the resource named `name`, which must be the name Istio gives it
/// (`namespace/name`): two resources for one policy would make the state unbuildable and hold
/// back every change of workloads too, where a wrongly named one is refused with its push.
pub fn policy_resource(name: &str, a: pbs::Authorization) -> Result<Policy, ConvertError> {
    let policy = policy_fail_closed(a)?;
    named_as(name, "authorization", "namespace/name", format!("{}/{}", policy.namespace, policy.name))?;
    Ok(policy)
}
