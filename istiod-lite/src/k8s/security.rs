//! Istio `security.istio.io` kinds (`v1` and `v1beta1`): `AuthorizationPolicy` and
//! `PeerAuthentication`. Every struct denies unknown fields: a field we do not understand
//! could be a restriction the user relies on, so the object is rejected instead.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{ObjectMeta, WorkloadSelector};

/// `AuthorizationPolicy`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `apiVersion` (checked before this type is chosen).
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Metadata (unknown metadata fields are fine: they carry no policy).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec; absent is an empty spec (an ALLOW policy that allows nothing).
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
    /// Written by the API server; ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// `AuthorizationPolicy.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// Workloads the policy applies to.
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// Deprecated single target reference.
    #[serde(default)]
    pub target_ref: Option<PolicyTargetReference>,
    /// Targets (Gateways, Services): the policy is for waypoints, not ztunnel.
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetReference>,
    /// Rules; any matching rule triggers the action.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// ALLOW (default), DENY, AUDIT or CUSTOM.
    #[serde(default)]
    pub action: PolicyAction,
    /// The external authorizer of a CUSTOM policy.
    #[serde(default)]
    pub provider: Option<Provider>,
}

/// `spec.targetRef(s)[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetReference {
    /// API group.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind (`Gateway`, `Service`, `ServiceEntry`, `GatewayClass`).
    pub kind: String,
    /// Name.
    pub name: String,
    /// Namespace (default: the policy's).
    #[serde(default)]
    pub namespace: Option<String>,
}

/// `spec.provider`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Extension provider name from the mesh config.
    pub name: String,
}

/// `spec.action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    /// Allow matching requests; with any ALLOW policy present, others are denied.
    #[default]
    Allow,
    /// Deny matching requests.
    Deny,
    /// Audit matching requests (no effect on access).
    Audit,
    /// Delegate matching requests to an external authorizer.
    Custom,
}

/// `spec.rules[]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources; any may match. Left out, any source matches; given empty, the policy is refused
    /// (as by Istio: read as "one of no sources", it would match any).
    #[serde(default)]
    pub from: Option<Vec<From>>,
    /// Operations; any may match. Left out, any operation matches; never given empty.
    #[serde(default)]
    pub to: Option<Vec<To>>,
    /// Conditions; all must match.
    #[serde(default)]
    pub when: Vec<Condition>,
}

/// `rules[].from[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct From {
    /// The source.
    pub source: Source,
}

/// `rules[].from[].source`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer identities (`<trust domain>/ns/<ns>/sa/<sa>`), with `*` wildcards.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Negated `principals`.
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// Request (JWT) principals: L7.
    #[serde(default)]
    pub request_principals: Vec<String>,
    /// Negated `requestPrincipals`: L7.
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Negated `namespaces`.
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Peer IPs or CIDRs.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    /// Negated `ipBlocks`.
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Client IPs from `X-Forwarded-For`: L7.
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    /// Negated `remoteIpBlocks`: L7.
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
    /// Service accounts, `<ns>/<sa>` or `<sa>` (the policy's namespace).
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Negated `serviceAccounts`.
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
}

/// `rules[].to[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct To {
    /// The operation.
    pub operation: Operation,
}

/// `rules[].to[].operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// Hosts: L7.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Negated hosts: L7.
    #[serde(default)]
    pub not_hosts: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<StrOrNum>,
    /// Negated ports.
    #[serde(default)]
    pub not_ports: Vec<StrOrNum>,
    /// Methods: L7.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Negated methods: L7.
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Paths: L7.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Negated paths: L7.
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// Annotation that makes an `AuthorizationPolicy` evaluated and reported but not enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// A boolean annotation's value, spelled as Istio accepts it (Go's `strconv.ParseBool`).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

impl AuthorizationPolicy {
    /// Marked dry-run ([`DRY_RUN_ANNOTATION`]); a value that is not a boolean is refused when
    /// the policy is read.
    pub fn dry_run(&self) -> bool {
        self.metadata.annotations.get(DRY_RUN_ANNOTATION).and_then(|v| parse_bool(v)).unwrap_or(false)
    }
}

impl Rule {
    /// `from`, empty when left out.
    pub fn sources(&self) -> &[From] {
        self.from.as_deref().unwrap_or_default()
    }

    /// `to`, empty when left out.
    pub fn operations(&self) -> &[To] {
        self.to.as_deref().unwrap_or_default()
    }
}

impl Source {
    /// No field set (or each set to an empty list).
    pub fn is_empty(&self) -> bool {
        *self == Source::default()
    }
}

impl Operation {
    /// No field set (or each set to an empty list).
    pub fn is_empty(&self) -> bool {
        *self == Operation::default()
    }
}

/// `rules[].when[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// Attribute name, e.g. `source.ip` or `request.headers[x-token]`.
    pub key: String,
    /// Values; any may match.
    #[serde(default)]
    pub values: Vec<StrOrNum>,
    /// Negated values.
    #[serde(default)]
    pub not_values: Vec<StrOrNum>,
}

/// A value Istio types as string that YAML authors often write as a number (ports).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
pub enum StrOrNum {
    /// A number.
    Num(u64),
    /// A string.
    Str(String),
}

impl StrOrNum {
    /// The value as Istio's string.
    pub fn as_string(&self) -> String {
        match self {
            StrOrNum::Num(n) => n.to_string(),
            StrOrNum::Str(s) => s.clone(),
        }
    }
}

/// `PeerAuthentication`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Spec.
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    /// Written by the API server; ignored.
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

/// `PeerAuthentication.spec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads it applies to; absent: the whole namespace (the mesh, in the root namespace).
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    /// The mode.
    #[serde(default)]
    pub mtls: Option<MutualTls>,
    /// Per-port modes (workload policies only).
    #[serde(default)]
    pub port_level_mtls: BTreeMap<StrOrNum, MutualTls>,
}

/// `spec.mtls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// The mode.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `spec.mtls.mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the parent (namespace, then mesh).
    #[default]
    Unset,
    /// Plaintext allowed; meaningless in ambient, where HBONE is always mTLS.
    Disable,
    /// Plaintext and mTLS both accepted.
    Permissive,
    /// mTLS required.
    Strict,
}

/// `MutualTls` or absent, as a mode.
pub fn mode(m: Option<&MutualTls>) -> MtlsMode {
    m.map(|m| m.mode).unwrap_or_default()
}
