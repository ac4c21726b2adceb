//! The YAML shapes of the state file, and their translation into the Istio protos (so the file
//! goes through exactly the validation xDS input does).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use proto::istio::security as pbs;
use proto::istio::workload as pbw;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::state::convert::ip_to_bytes;

/// The whole document; each list is deserialized item by item so errors can name the item.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Document {
    #[serde(default)]
    pub workloads: Vec<WorkloadYaml>,
    #[serde(default)]
    pub services: Vec<ServiceYaml>,
    #[serde(default)]
    pub policies: Vec<PolicyYaml>,
}

#[derive(Deserialize, Clone, Copy, Default)]
pub(super) enum ProtocolYaml {
    #[default]
    #[serde(rename = "NONE")]
    None,
    #[serde(rename = "HBONE")]
    Hbone,
}

#[derive(Deserialize, Clone, Copy, Default)]
pub(super) enum NetworkModeYaml {
    #[default]
    #[serde(rename = "STANDARD")]
    Standard,
    #[serde(rename = "HOST_NETWORK")]
    HostNetwork,
}

/// Where a workload runs; an absent part is unknown (empty), as in the proto.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LocalityYaml {
    #[serde(default)]
    region: String,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    subzone: String,
}

#[derive(Deserialize, Clone, Copy, Default)]
pub(super) enum WorkloadTypeYaml {
    #[default]
    #[serde(rename = "DEPLOYMENT")]
    Deployment,
    #[serde(rename = "CRONJOB")]
    Cronjob,
    #[serde(rename = "POD")]
    Pod,
    #[serde(rename = "JOB")]
    Job,
}

#[derive(Deserialize, Clone, Copy, Default)]
pub(super) enum StatusYaml {
    #[default]
    #[serde(rename = "HEALTHY")]
    Healthy,
    #[serde(rename = "UNHEALTHY")]
    Unhealthy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct WorkloadYaml {
    #[serde(default)]
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub network_mode: NetworkModeYaml,
    #[serde(default, alias = "tunnelProtocol")]
    pub protocol: ProtocolYaml,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: WorkloadTypeYaml,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub waypoint: Option<GatewayYaml>,
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<u32, u32>>,
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    #[serde(default)]
    pub status: StatusYaml,
    #[serde(default)]
    pub locality: Option<LocalityYaml>,
    /// Absent: the proto's unset wrapper, i.e. the default capacity; 0 takes no connections.
    #[serde(default)]
    pub capacity: Option<u32>,
}

/// An address, written either as a bare IP (default network) or `{network, address}`.
#[derive(Clone)]
pub(super) struct NetworkAddressYaml {
    pub network: String,
    pub address: IpAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkAddressMap {
    #[serde(default)]
    network: String,
    address: IpAddr,
}

impl<'de> Deserialize<'de> for NetworkAddressYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NetworkAddressYaml;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an IP address or {network, address}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                let address = s.parse().map_err(|_| E::custom(format_args!("invalid IP address {s:?}")))?;
                Ok(NetworkAddressYaml { network: String::new(), address })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let m = NetworkAddressMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(NetworkAddressYaml { network: m.network, address: m.address })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct NamespacedHostnameYaml {
    namespace: String,
    hostname: String,
}

/// A waypoint: `{hostname: {namespace, hostname}}` or `{address: ...}`, and `hboneMtlsPort`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct GatewayRaw {
    #[serde(default)]
    hostname: Option<NamespacedHostnameYaml>,
    #[serde(default)]
    address: Option<NetworkAddressYaml>,
    #[serde(default)]
    hbone_mtls_port: u32,
}

/// A validated waypoint, already in proto form.
pub(super) struct GatewayYaml(pbw::GatewayAddress);

impl<'de> Deserialize<'de> for GatewayYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Validated inside the visitor so the error carries the field's path (`waypoint`).
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = GatewayYaml;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{hostname: {namespace, hostname}} or {address: ..}, with an optional hboneMtlsPort")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<GatewayYaml, A::Error> {
                let raw = GatewayRaw::deserialize(de::value::MapAccessDeserializer::new(map))?;
                GatewayYaml::try_from(raw).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

impl TryFrom<GatewayRaw> for GatewayYaml {
    type Error = &'static str;

    fn try_from(g: GatewayRaw) -> Result<Self, &'static str> {
        use pbw::gateway_address::Destination;
        let destination = match (g.hostname, g.address) {
            (Some(h), None) => {
                Destination::Hostname(pbw::NamespacedHostname { namespace: h.namespace, hostname: h.hostname })
            }
            (None, Some(a)) => Destination::Address(net_addr(a)),
            _ => return Err("a waypoint needs exactly one of `hostname`, `address`"),
        };
        Ok(GatewayYaml(pbw::GatewayAddress { destination: Some(destination), hbone_mtls_port: g.hbone_mtls_port }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PortYaml {
    pub service_port: u32,
    #[serde(default)]
    pub target_port: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ServiceYaml {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    #[serde(default)]
    pub addresses: Vec<NetworkAddressYaml>,
    #[serde(default)]
    pub ports: Vec<PortYaml>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub waypoint: Option<GatewayYaml>,
    #[serde(default)]
    pub load_balancing: Option<LoadBalancingYaml>,
}

/// `LoadBalancing.Mode`, by its proto names. Unlike xDS (where an unknown mode is taken as
/// STRICT), an unknown name in the file is an error.
#[derive(Deserialize, Clone, Copy, Default)]
pub(super) enum LoadBalancingModeYaml {
    #[default]
    #[serde(rename = "UNSPECIFIED_MODE")]
    Unspecified,
    #[serde(rename = "STRICT")]
    Strict,
    #[serde(rename = "FAILOVER")]
    Failover,
    #[serde(rename = "PASSTHROUGH")]
    Passthrough,
}

/// `LoadBalancing.Scope`, by its proto names. UNSPECIFIED_SCOPE is not accepted: it is a scope
/// no endpoint shares (see [`crate::state::LocalityScope::Unknown`]), never what a file means.
#[derive(Deserialize, Clone, Copy)]
pub(super) enum LocalityScopeYaml {
    #[serde(rename = "REGION")]
    Region,
    #[serde(rename = "ZONE")]
    Zone,
    #[serde(rename = "SUBZONE")]
    Subzone,
    #[serde(rename = "NODE")]
    Node,
    #[serde(rename = "CLUSTER")]
    Cluster,
    #[serde(rename = "NETWORK")]
    Network,
}

/// `LoadBalancing.HealthPolicy`, by its proto names.
#[derive(Deserialize, Clone, Copy, Default)]
pub(super) enum HealthPolicyYaml {
    #[default]
    #[serde(rename = "ONLY_HEALTHY")]
    OnlyHealthy,
    #[serde(rename = "ALLOW_ALL")]
    AllowAll,
}

/// A service's `loadBalancing`; every field optional, defaulting to the proto's zero value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct LoadBalancingYaml {
    #[serde(default)]
    mode: LoadBalancingModeYaml,
    #[serde(default)]
    routing_preference: Vec<LocalityScopeYaml>,
    #[serde(default)]
    health_policy: HealthPolicyYaml,
}

impl LoadBalancingYaml {
    fn into_proto(self) -> pbw::LoadBalancing {
        use pbw::load_balancing::{HealthPolicy, Mode, Scope};
        pbw::LoadBalancing {
            routing_preference: self
                .routing_preference
                .into_iter()
                .map(|s| {
                    let scope = match s {
                        LocalityScopeYaml::Region => Scope::Region,
                        LocalityScopeYaml::Zone => Scope::Zone,
                        LocalityScopeYaml::Subzone => Scope::Subzone,
                        LocalityScopeYaml::Node => Scope::Node,
                        LocalityScopeYaml::Cluster => Scope::Cluster,
                        LocalityScopeYaml::Network => Scope::Network,
                    };
                    scope as i32
                })
                .collect(),
            mode: match self.mode {
                LoadBalancingModeYaml::Unspecified => Mode::UnspecifiedMode,
                LoadBalancingModeYaml::Strict => Mode::Strict,
                LoadBalancingModeYaml::Failover => Mode::Failover,
                LoadBalancingModeYaml::Passthrough => Mode::Passthrough,
            } as i32,
            health_policy: match self.health_policy {
                HealthPolicyYaml::OnlyHealthy => HealthPolicy::OnlyHealthy,
                HealthPolicyYaml::AllowAll => HealthPolicy::AllowAll,
            } as i32,
            ..Default::default()
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
pub(super) enum ScopeYaml {
    #[serde(rename = "GLOBAL")]
    Global,
    #[serde(rename = "NAMESPACE")]
    Namespace,
    #[serde(rename = "WORKLOAD_SELECTOR")]
    WorkloadSelector,
}

#[derive(Deserialize, Clone, Copy)]
pub(super) enum ActionYaml {
    #[serde(rename = "ALLOW")]
    Allow,
    #[serde(rename = "DENY")]
    Deny,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PolicyYaml {
    pub name: String,
    pub namespace: String,
    /// Required: defaulting to the proto's zero value (GLOBAL) would be a surprise in a file.
    pub scope: ScopeYaml,
    /// Required, like `scope`.
    pub action: ActionYaml,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub groups: Vec<GroupYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupYaml {
    #[serde(default)]
    pub rules: Vec<RuleYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleYaml {
    #[serde(default)]
    pub matches: Vec<MatchYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct MatchYaml {
    #[serde(default)]
    pub namespaces: Vec<StringMatchYaml>,
    #[serde(default)]
    pub not_namespaces: Vec<StringMatchYaml>,
    #[serde(default)]
    pub principals: Vec<StringMatchYaml>,
    #[serde(default)]
    pub not_principals: Vec<StringMatchYaml>,
    #[serde(default)]
    pub source_ips: Vec<CidrYaml>,
    #[serde(default)]
    pub not_source_ips: Vec<CidrYaml>,
    #[serde(default)]
    pub destination_ips: Vec<CidrYaml>,
    #[serde(default)]
    pub not_destination_ips: Vec<CidrYaml>,
    #[serde(default)]
    pub destination_ports: Vec<u32>,
    #[serde(default)]
    pub not_destination_ports: Vec<u32>,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountYaml>,
    #[serde(default)]
    pub not_service_accounts: Vec<ServiceAccountYaml>,
}

/// `{}`: the value of `presence`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Empty {}

/// Exactly one of `exact`, `prefix`, `suffix`, `presence: {}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StringMatchRaw {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    presence: Option<Empty>,
}

/// `10.0.0.0/8`, or a bare address meaning a single host.
pub(super) struct CidrYaml {
    address: IpAddr,
    length: u32,
}

impl<'de> Deserialize<'de> for CidrYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor rather than String-then-parse: errors raised inside the visitor carry the
        // element's own path (`sourceIps[1]`), not the list's.
        struct V;
        impl Visitor<'_> for V {
            type Value = CidrYaml;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CIDR such as 10.0.0.0/8, or an IP address")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<CidrYaml, E> {
                let bad = || E::custom(format_args!("invalid CIDR {s:?}: want <address>/<prefix length>"));
                let (addr, len) = match s.split_once('/') {
                    Some((a, l)) => (a, Some(l)),
                    None => (s, None),
                };
                let address: IpAddr = addr.parse().map_err(|_| bad())?;
                let full = if address.is_ipv4() { 32 } else { 128 };
                let length = match len {
                    None => full,
                    Some(l) => l.parse::<u32>().ok().filter(|l| *l <= full).ok_or_else(bad)?,
                };
                Ok(CidrYaml { address, length })
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ServiceAccountYaml {
    namespace: String,
    service_account: String,
}

/// A validated string match, already in proto form.
pub(super) struct StringMatchYaml(pbs::StringMatch);

impl<'de> Deserialize<'de> for StringMatchYaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Validated inside the visitor so the error carries the element's path (`principals[0]`).
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMatchYaml;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of {exact: ..}, {prefix: ..}, {suffix: ..}, {presence: {}}")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<StringMatchYaml, A::Error> {
                let raw = StringMatchRaw::deserialize(de::value::MapAccessDeserializer::new(map))?;
                StringMatchYaml::try_from(raw).map_err(de::Error::custom)
            }
        }
        d.deserialize_map(V)
    }
}

impl TryFrom<StringMatchRaw> for StringMatchYaml {
    type Error = &'static str;

    fn try_from(m: StringMatchRaw) -> Result<Self, &'static str> {
        use pbs::string_match::MatchType;
        let t = match (m.exact, m.prefix, m.suffix, m.presence) {
            (Some(s), None, None, None) => MatchType::Exact(s),
            (None, Some(s), None, None) => MatchType::Prefix(s),
            (None, None, Some(s), None) => MatchType::Suffix(s),
            (None, None, None, Some(Empty {})) => MatchType::Presence(()),
            _ => return Err("a string match needs exactly one of `exact`, `prefix`, `suffix`, `presence: {}`"),
        };
        Ok(StringMatchYaml(pbs::StringMatch { match_type: Some(t) }))
    }
}

fn net_addr(a: NetworkAddressYaml) -> pbw::NetworkAddress {
    pbw::NetworkAddress { network: a.network, address: ip_to_bytes(a.address).into() }
}

impl WorkloadYaml {
    /// The proto form. An empty uid becomes Istio's pod uid form `Kubernetes//Pod/<ns>/<name>`.
    pub(super) fn into_proto(self) -> pbw::Workload {
        let uid =
            if self.uid.is_empty() { format!("Kubernetes//Pod/{}/{}", self.namespace, self.name) } else { self.uid };
        let services = self
            .services
            .into_iter()
            .map(|(k, ports)| {
                let ports = ports
                    .into_iter()
                    .map(|(service_port, target_port)| pbw::Port { service_port, target_port, app_protocol: 0 })
                    .collect();
                (k, pbw::PortList { ports })
            })
            .collect();
        pbw::Workload {
            uid,
            name: self.name,
            namespace: self.namespace,
            addresses: self.addresses.into_iter().map(|a| ip_to_bytes(a).into()).collect(),
            network: self.network,
            tunnel_protocol: match self.protocol {
                ProtocolYaml::None => pbw::TunnelProtocol::None,
                ProtocolYaml::Hbone => pbw::TunnelProtocol::Hbone,
            } as i32,
            trust_domain: self.trust_domain,
            service_account: self.service_account,
            waypoint: self.waypoint.map(|g| g.0),
            node: self.node,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_type: match self.workload_type {
                WorkloadTypeYaml::Deployment => pbw::WorkloadType::Deployment,
                WorkloadTypeYaml::Cronjob => pbw::WorkloadType::Cronjob,
                WorkloadTypeYaml::Pod => pbw::WorkloadType::Pod,
                WorkloadTypeYaml::Job => pbw::WorkloadType::Job,
            } as i32,
            workload_name: self.workload_name,
            services,
            authorization_policies: self.authorization_policies,
            status: match self.status {
                StatusYaml::Healthy => pbw::WorkloadStatus::Healthy,
                StatusYaml::Unhealthy => pbw::WorkloadStatus::Unhealthy,
            } as i32,
            cluster_id: self.cluster_id,
            network_mode: match self.network_mode {
                NetworkModeYaml::Standard => pbw::NetworkMode::Standard,
                NetworkModeYaml::HostNetwork => pbw::NetworkMode::HostNetwork,
            } as i32,
            locality: self.locality.map(|l| pbw::Locality { region: l.region, zone: l.zone, subzone: l.subzone }),
            capacity: self.capacity,
            ..Default::default()
        }
    }
}

impl ServiceYaml {
    /// The proto form.
    pub(super) fn into_proto(self) -> pbw::Service {
        pbw::Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            addresses: self.addresses.into_iter().map(net_addr).collect(),
            ports: self
                .ports
                .into_iter()
                .map(|p| pbw::Port { service_port: p.service_port, target_port: p.target_port, app_protocol: 0 })
                .collect(),
            subject_alt_names: self.subject_alt_names,
            waypoint: self.waypoint.map(|g| g.0),
            load_balancing: self.load_balancing.map(LoadBalancingYaml::into_proto),
            ..Default::default()
        }
    }
}

fn string_matches(v: Vec<StringMatchYaml>) -> Vec<pbs::StringMatch> {
    v.into_iter().map(|m| m.0).collect()
}

fn cidrs(v: Vec<CidrYaml>) -> Vec<pbs::Address> {
    v.into_iter().map(|c| pbs::Address { address: ip_to_bytes(c.address).into(), length: c.length }).collect()
}

fn service_accounts(v: Vec<ServiceAccountYaml>) -> Vec<pbs::ServiceAccountMatch> {
    v.into_iter()
        .map(|s| pbs::ServiceAccountMatch { namespace: s.namespace, service_account: s.service_account })
        .collect()
}

impl MatchYaml {
    fn into_proto(self) -> pbs::Match {
        pbs::Match {
            namespaces: string_matches(self.namespaces),
            not_namespaces: string_matches(self.not_namespaces),
            principals: string_matches(self.principals),
            not_principals: string_matches(self.not_principals),
            source_ips: cidrs(self.source_ips),
            not_source_ips: cidrs(self.not_source_ips),
            destination_ips: cidrs(self.destination_ips),
            not_destination_ips: cidrs(self.not_destination_ips),
            destination_ports: self.destination_ports,
            not_destination_ports: self.not_destination_ports,
            service_accounts: service_accounts(self.service_accounts),
            not_service_accounts: service_accounts(self.not_service_accounts),
        }
    }
}

impl PolicyYaml {
    /// The proto form.
    pub(super) fn into_proto(self) -> pbs::Authorization {
        let groups = self
            .groups
            .into_iter()
            .map(|g| pbs::Group {
                rules: g
                    .rules
                    .into_iter()
                    .map(|r| pbs::Rules { matches: r.matches.into_iter().map(MatchYaml::into_proto).collect() })
                    .collect(),
            })
            .collect();
        pbs::Authorization {
            name: self.name,
            namespace: self.namespace,
            scope: match self.scope {
                ScopeYaml::Global => pbs::Scope::Global,
                ScopeYaml::Namespace => pbs::Scope::Namespace,
                ScopeYaml::WorkloadSelector => pbs::Scope::WorkloadSelector,
            } as i32,
            action: match self.action {
                ActionYaml::Allow => pbs::Action::Allow,
                ActionYaml::Deny => pbs::Action::Deny,
            } as i32,
            groups,
            dry_run: self.dry_run,
        }
    }
}
