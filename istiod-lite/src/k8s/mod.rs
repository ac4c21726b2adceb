//! The subset of Kubernetes, Istio and Gateway API object shapes istiod-lite reads.
//!
//! Core kinds ([`core`], [`gateway`]) ignore fields we do not use: real objects carry many.
//! Istio security kinds ([`security`]) reject every field they do not know, so no security
//! setting is ever dropped silently.

pub mod core;
pub mod gateway;
pub mod security;

use std::collections::BTreeMap;

use serde::Deserialize;

/// Labels (or a `matchLabels` selector): sorted, so equal sets compare and print equally.
pub type Labels = BTreeMap<String, String>;

/// The part of `metadata` we use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    #[serde(default)]
    pub name: String,
    /// `metadata.namespace`; empty means `default` for namespaced kinds.
    #[serde(default)]
    pub namespace: String,
    /// `metadata.labels`.
    #[serde(default)]
    pub labels: Labels,
    /// `metadata.generation` (route status reports which generation it describes).
    #[serde(default)]
    pub generation: Option<i64>,
    /// `metadata.annotations` (Service annotations carry waypoint load-balancing settings).
    #[serde(default)]
    pub annotations: Labels,
    /// `metadata.creationTimestamp` (RFC 3339), used only to order conflicting policies.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    /// `metadata.ownerReferences`.
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
    /// `metadata.deletionTimestamp` (RFC 3339): set once the object is being deleted. A pod
    /// keeps running (and serving) through its grace period; its workload is UNHEALTHY.
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
    /// `metadata.uid`: tells a pod from an earlier one of the same name (the CA checks that a
    /// node proxy's token is of the pod it names).
    #[serde(default)]
    pub uid: Option<String>,
}

/// `metadata.ownerReferences[]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct OwnerReference {
    /// Owner kind (`ReplicaSet`, `Job`, ...).
    #[serde(default)]
    pub kind: String,
    /// Owner name.
    #[serde(default)]
    pub name: String,
}

/// `selector: {matchLabels: ...}` as Istio uses it (`istio.type.v1beta1.WorkloadSelector`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry; empty selects every workload of the namespace.
    #[serde(default)]
    pub match_labels: Labels,
}

/// A list that may come as `null`, read as empty. The API server writes a Go nil slice of a
/// field without `omitempty` as `null`: the `endpoints` and `ports` of the EndpointSlice of a
/// Service with no pods.
pub(crate) fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Whether every label of `selector` is on `labels`.
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
