//! Kubernetes mode: runs a waypoint for every `Gateway` of class `istio-waypoint`.
//!
//! For each such Gateway, [`reconcile`] server-side applies (field manager `istiod-lite`,
//! forced: these objects are ours) a ServiceAccount, a Deployment and a Service named like the
//! Gateway, in its namespace, each owned by it (deleting the Gateway deletes them), then writes
//! the Gateway's status: `Accepted` and `Programmed`, and the Service's cluster IP as its
//! address. [`controller`] watches Gateways and reconciles each waypoint one on every change.
//!
//! - [`manifests`]: the three objects, a pure function of the Gateway and [`DeployConfig`].
//! - [`route_status`]: the Gateway API status of routes, written back to them.
//! - The waypoint runs as service account `<name>` (identity
//!   `spiffe://<td>/ns/<ns>/sa/<name>`), opted out of capture, with the contract's flags; its
//!   CA token is a projected service-account token with audience `istio-ca`, the mesh root
//!   comes from the `istio-ca-root-cert` ConfigMap (as Istio distributes it).
//! - It learns its node (`NODE_NAME`, `spec.nodeName`) and its own pod IP (`INSTANCE_IP`,
//!   `status.podIP`, as Istio's waypoint template sets it) from the downward API: by that IP
//!   it finds its own workload, the source of locality-aware endpoint choice. `NETWORK` is
//!   not set: istiod-lite has no network setting of its own (Istio sets `ISTIO_META_NETWORK`
//!   from the Gateway's `topology.istio.io/network` label or `global.network`), so the
//!   waypoint stays on the default network, like every workload istiod-lite translates.
//!
//! The identity istiod-lite runs as needs, besides what the source reads: `patch` (apply) on
//! `serviceaccounts`, `services`, `deployments.apps`, and `patch` on `gateways/status`.

use serde_json::{Value, json};

use crate::source::waypoint_service::GATEWAY_NAME_LABEL;

/// Field manager of every apply.
pub const FIELD_MANAGER: &str = "istiod-lite";

/// What every waypoint Deployment gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployConfig {
    /// Container image of the waypoint.
    pub image: String,
    /// `--xds-address` and `--ca-address` (istiod-lite's TLS port through its Service).
    pub istiod_address: String,
    /// `--trust-domain`.
    pub trust_domain: String,
    /// `--cluster-id`.
    pub cluster_id: String,
}

impl DeployConfig {
    /// The defaults for an istiod-lite Service `istiod` in `root_namespace`.
    pub fn new(image: &str, root_namespace: &str, trust_domain: &str) -> DeployConfig {
        DeployConfig {
            image: image.to_owned(),
            istiod_address: format!("https://istiod.{root_namespace}.svc:15012"),
            trust_domain: trust_domain.to_owned(),
            cluster_id: "Kubernetes".into(),
        }
    }
}

/// The Gateway a waypoint is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `metadata.uid`, for owner references.
    pub uid: String,
    /// `metadata.generation`, for the status conditions' `observedGeneration`.
    pub generation: i64,
}

/// The objects of one waypoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifests {
    /// `v1/ServiceAccount`.
    pub service_account: Value,
    /// `apps/v1/Deployment`.
    pub deployment: Value,
    /// `v1/Service`.
    pub service: Value,
}

fn metadata(gw: &GatewayRef) -> Value {
    json!({
        "name": gw.name,
        "namespace": gw.namespace,
        "labels": {GATEWAY_NAME_LABEL: gw.name, "istio.io/dataplane-mode": "none"},
        "ownerReferences": [{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": gw.name,
            "uid": gw.uid,
            "controller": true,
        }],
    })
}

/// The ServiceAccount, Deployment and Service of the waypoint for `gw`.
pub fn manifests(cfg: &DeployConfig, gw: &GatewayRef) -> Manifests {
    let labels = json!({GATEWAY_NAME_LABEL: gw.name, "istio.io/dataplane-mode": "none"});
    let args = [
        "--gateway",
        &format!("{}/{}", gw.namespace, gw.name),
        "--service-account",
        &gw.name,
        "--node-name",
        "$(NODE_NAME)",
        "--trust-domain",
        &cfg.trust_domain,
        "--cluster-id",
        &cfg.cluster_id,
        "--xds-address",
        &cfg.istiod_address,
        "--ca-address",
        &cfg.istiod_address,
        "--ca-token-file",
        "/var/run/secrets/tokens/istio-token",
        "--ca-root-file",
        "/var/run/secrets/istio/root-cert.pem",
        "--log-format",
        "json",
    ]
    .map(str::to_owned);
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(gw),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: gw.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": gw.name,
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "waypoint",
                        "image": cfg.image,
                        "args": args,
                        "env": [
                            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                            {"name": "INSTANCE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        ],
                        "ports": [
                            {"name": "mesh", "containerPort": 15008, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                            {"name": "status", "containerPort": 15021, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz/ready", "port": 15021},
                            "periodSeconds": 2,
                            "failureThreshold": 3,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/healthz/ready", "port": 15021},
                            "initialDelaySeconds": 10,
                            "periodSeconds": 10,
                            "failureThreshold": 6,
                        },
                        "resources": {
                            "requests": {"cpu": "100m", "memory": "128Mi"},
                            "limits": {"memory": "1Gi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true,
                            "runAsUser": 1337,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                            {"name": "istio-ca-root-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
                        ],
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                            "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token",
                        }}]}},
                        {"name": "istio-ca-root-cert", "configMap": {"name": "istio-ca-root-cert"}},
                    ],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(gw),
        "spec": {
            "selector": {GATEWAY_NAME_LABEL: gw.name},
            "ports": [
                {"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"},
                {"name": "metrics", "port": 15020, "targetPort": 15020, "protocol": "TCP"},
                {"name": "status", "port": 15021, "targetPort": 15021, "protocol": "TCP"},
            ],
        },
    });
    let service_account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(gw)});
    Manifests { service_account, deployment, service }
}

/// The Gateway status istiod-lite writes: `Accepted` and `Programmed` (with the address when
/// the Service has one), as a server-side apply body. `previous` is the Gateway's
/// `status.conditions` as read: a condition whose status it already had keeps its
/// `lastTransitionTime` (when the status last changed, as `metav1.Condition` defines it), which
/// also makes a reconcile that changes nothing write the same body, so our own write does not
/// come back as a change that is written again with a new time.
pub fn gateway_status(gw: &GatewayRef, cluster_ip: Option<&str>, previous: Option<&Value>, now: &str) -> Value {
    let condition = |type_: &str, ok: bool, reason: &str, message: &str| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_ && c["status"] == status))
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(now);
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": gw.generation,
            "lastTransitionTime": since,
        })
    };
    let programmed = match cluster_ip {
        Some(_) => condition("Programmed", true, "Programmed", "waypoint Deployment and Service applied"),
        None => condition("Programmed", false, "AddressNotAssigned", "the waypoint Service has no cluster IP yet"),
    };
    let addresses: Vec<Value> = cluster_ip.map(|ip| json!({"type": "IPAddress", "value": ip})).into_iter().collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": gw.name, "namespace": gw.namespace},
        "status": {
            "conditions": [condition("Accepted", true, "Accepted", "waypoint managed by istiod-lite"), programmed],
            "addresses": addresses,
        },
    })
}

mod reconcile;
pub mod route_status;

pub use reconcile::{DeployError, controller, reconcile};

#[cfg(test)]
mod tests;
