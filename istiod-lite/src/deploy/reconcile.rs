//! Applying a waypoint's objects and status through the API, and the Gateway watch that does
//! it on every change.

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

use super::{DeployConfig, FIELD_MANAGER, GatewayRef, gateway_status, manifests};
use crate::translate::WAYPOINT_CLASS;

/// Why a waypoint could not be (fully) deployed; the next change of its Gateway retries.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Applying one object failed.
    #[error("applying {kind} {namespace}/{name}: {source}")]
    Apply {
        /// Kind of the object.
        kind: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// Writing the Gateway's status failed.
    #[error("writing the status of Gateway {namespace}/{name}: {source}")]
    Status {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    let api_version = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
    ApiResource { group: group.into(), version: version.into(), api_version, kind: kind.into(), plural: plural.into() }
}

fn gateways() -> ApiResource {
    resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
}

async fn apply(
    client: &kube::Client,
    gw: &GatewayRef,
    kind: &'static str,
    ar: ApiResource,
    object: &Value,
) -> Result<DynamicObject, DeployError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &gw.namespace, &ar);
    // Forced: the waypoint's objects are ours; a hand edit of a field we set is taken back.
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(&gw.name, &params, &Patch::Apply(object)).await.map_err(|source| DeployError::Apply {
        kind,
        namespace: gw.namespace.clone(),
        name: gw.name.clone(),
        source,
    })
}

/// Applies the waypoint of `gw` and writes its status (`previous`: its `status.conditions` as
/// read, whose transition times are kept); returns the Service's cluster IP.
pub async fn reconcile(
    client: &kube::Client,
    cfg: &DeployConfig,
    gw: &GatewayRef,
    previous: Option<&Value>,
) -> Result<Option<String>, DeployError> {
    let m = manifests(cfg, gw);
    apply(client, gw, "ServiceAccount", resource("", "v1", "ServiceAccount", "serviceaccounts"), &m.service_account)
        .await?;
    apply(client, gw, "Deployment", resource("apps", "v1", "Deployment", "deployments"), &m.deployment).await?;
    let svc = apply(client, gw, "Service", resource("", "v1", "Service", "services"), &m.service).await?;
    let ip = svc.data["spec"]["clusterIP"].as_str().filter(|ip| !ip.is_empty() && *ip != "None").map(str::to_owned);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &gw.namespace, &gateways());
    let now =
        k8s_openapi::jiff::Timestamp::now().round(k8s_openapi::jiff::Unit::Second).unwrap_or_default().to_string();
    let status = gateway_status(gw, ip.as_deref(), previous, &now);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    api.patch_status(&gw.name, &params, &Patch::Apply(&status)).await.map_err(|source| DeployError::Status {
        namespace: gw.namespace.clone(),
        name: gw.name.clone(),
        source,
    })?;
    Ok(ip)
}

/// The waypoint Gateway an object is, if it is one.
fn waypoint_gateway(o: &DynamicObject) -> Option<GatewayRef> {
    if o.data["spec"]["gatewayClassName"].as_str() != Some(WAYPOINT_CLASS) {
        return None;
    }
    Some(GatewayRef {
        namespace: o.metadata.namespace.clone()?,
        name: o.metadata.name.clone()?,
        uid: o.metadata.uid.clone()?,
        generation: o.metadata.generation.unwrap_or(0),
    })
}

/// Watches Gateways cluster-wide and reconciles every waypoint one on each change (and on
/// every re-list, which retries what failed). Runs until dropped.
pub async fn controller(client: kube::Client, cfg: DeployConfig) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &gateways());
    let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let o = match event {
            Ok(Event::Apply(o) | Event::InitApply(o)) => o,
            // Deletion: owner references let the garbage collector remove what we applied.
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching Gateways for waypoints; retrying");
                continue;
            }
        };
        let Some(gw) = waypoint_gateway(&o) else { continue };
        match reconcile(&client, &cfg, &gw, o.data.get("status").and_then(|s| s.get("conditions"))).await {
            Ok(ip) => {
                tracing::info!(gateway = %format!("{}/{}", gw.namespace, gw.name), address = ?ip, "waypoint applied")
            }
            Err(e) => tracing::error!("waypoint: {e}"),
        }
    }
}
