//! The waypoint's xDS subscriptions: `istio.workload.Address` and the three
//! `mesh.waypoint.v1` types, each converted (and compiled) on arrival so that anything the
//! waypoint cannot use is NACKed with a message naming the resource and field; every change
//! folds the four caches into a new [`Snapshot`].

use std::sync::Arc;

use proto::envoy::config::core::v3::Node;
use proto::istio::workload::Address as PbAddress;
use proto::mesh::waypoint::v1 as pb;
use xds::client::{Cache, Client, ClientHandle, Names, cache_handler};
use ztunnel::state::convert::Address;
use ztunnel::state::xds::XdsEndpoint;
use ztunnel::state::{State as MeshState, StateConfig};

use super::route::CompiledRoute;
use super::{BackendPolicy, Snapshot, SnapshotHandle, TargetedPolicy};

/// A running xDS source; dropping it stops the client and the folding task.
pub struct XdsSource {
    /// The client (status for the admin dump).
    pub client: ClientHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for XdsSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Caches {
    addresses: Cache<Address>,
    routes: Cache<CompiledRoute>,
    policies: Cache<TargetedPolicy>,
    backends: Cache<BackendPolicy>,
}

/// Subscribes at `endpoint` as `node` and keeps `handle` current. `gateway` is this
/// waypoint's `namespace/name`. Must be called inside a tokio runtime.
pub fn start(endpoint: XdsEndpoint, node: Node, handle: SnapshotHandle, gateway: String) -> XdsSource {
    let mut endpoint = endpoint;
    endpoint.endpoint = endpoint
        .endpoint
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let (addresses, address_handler) =
        cache_handler(|_n: &str, a: PbAddress| Address::try_from(a).map_err(|e| e.to_string()));
    let (routes, route_handler) =
        cache_handler(|_n: &str, r: pb::Route| CompiledRoute::try_from(r).map_err(|e| e.to_string()));
    let (policies, policy_handler) =
        cache_handler(|_n: &str, p: pb::L7Policy| TargetedPolicy::try_from(p).map_err(|e| e.to_string()));
    let (backends, backend_handler) = cache_handler(|_n: &str, b: pb::BackendPolicy| BackendPolicy::try_from(b));
    let client = Client::new(node)
        .subscribe(proto::ADDRESS_TYPE_URL, Names::Wildcard, address_handler)
        .subscribe(proto::WAYPOINT_ROUTE_TYPE_URL, Names::Wildcard, route_handler)
        .subscribe(proto::WAYPOINT_POLICY_TYPE_URL, Names::Wildcard, policy_handler)
        .subscribe(proto::WAYPOINT_BACKEND_TYPE_URL, Names::Wildcard, backend_handler)
        .spawn_with(move || {
            let e = endpoint.clone();
            async move {
                match e.tls {
                    Some(tls) => e.endpoint.connect_with_connector(tls).await,
                    None => e.endpoint.connect().await,
                }
            }
        });
    let caches = Caches { addresses, routes, policies, backends };
    let task = tokio::spawn(fold(caches, handle, gateway));
    XdsSource { client, task }
}

async fn fold(c: Caches, handle: SnapshotHandle, gateway: String) {
    let mut rx = [c.addresses.subscribe(), c.routes.subscribe(), c.policies.subscribe(), c.backends.subscribe()];
    loop {
        {
            let [a, b, p, d] = &mut rx;
            tokio::select! {
                r = a.changed() => if r.is_err() { return },
                r = b.changed() => if r.is_err() { return },
                r = p.changed() => if r.is_err() { return },
                r = d.changed() => if r.is_err() { return },
            }
        }
        for r in &mut rx {
            r.borrow_and_update();
        }
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        for a in c.addresses.snapshot().into_values() {
            match Arc::unwrap_or_clone(a) {
                Address::Workload(w) => workloads.push(w),
                Address::Service(s) => services.push(s),
            }
        }
        let mesh = match MeshState::new(StateConfig::default(), workloads, services, Vec::new()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "addresses do not form a consistent state; keeping the previous snapshot");
                continue;
            }
        };
        let routes: Vec<_> = c.routes.snapshot().into_values().collect();
        let policies: Vec<_> = c.policies.snapshot().into_values().collect();
        let backends = c.backends.snapshot().into_iter().map(|(k, v)| (k, (*v).clone())).collect();
        let counts = mesh.counts();
        let version = handle.store(Snapshot::new(mesh, &routes, &policies, backends, &gateway));
        tracing::info!(version, %counts, routes = routes.len(), policies = policies.len(), "waypoint state updated");
    }
}
