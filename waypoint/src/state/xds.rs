//! The waypoint's xDS subscriptions: `istio.workload.Address` and the three
//! `mesh.waypoint.v1` types, each converted (and compiled) on arrival so that anything the
//! waypoint cannot use is NACKed with a message naming the resource and field (and, but for L7
//! policies, removed while the rest of the push applies), except an L7 policy, which fails
//! closed instead ([`TargetedPolicy`]); every change folds the four caches into a new
//! [`Snapshot`].

use std::sync::Arc;

use proto::envoy::config::core::v3::Node;
use proto::istio::workload::Address as PbAddress;
use proto::mesh::waypoint::v1 as pb;
use xds::client::{Cache, ClientHandle, Names, ResourceHandler, cache_handler, cache_handler_per_resource};
use ztunnel::state::convert::Address;
use ztunnel::state::xds::XdsEndpoint;
use ztunnel::state::{State as MeshState, StateConfig};

use super::route::CompiledRoute;
use super::{BackendPolicy, Own, Snapshot, SnapshotHandle, TargetedPolicy};
use crate::telemetry::Metrics;

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

/// Subscribes at `endpoint` as `node` and keeps `handle` current, and the state's gauges in
/// `metrics`. `own` says who this waypoint is (its Gateway, how to find its own workload, its
/// network). Must be called inside a tokio runtime.
pub fn start(endpoint: XdsEndpoint, node: Node, handle: SnapshotHandle, own: Own, metrics: Arc<Metrics>) -> XdsSource {
    let mut endpoint = endpoint;
    endpoint.endpoint = endpoint
        .endpoint
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let (caches, (address_handler, route_handler, policy_handler, backend_handler)) = caches();
    let client = endpoint
        .client(node)
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
    let task = tokio::spawn(fold(caches, handle, own, metrics));
    XdsSource { client, task }
}

/// The four caches, and the handlers that convert each type into its cache.
#[allow(clippy::type_complexity)]
fn caches() -> (
    Caches,
    (
        impl ResourceHandler<Message = PbAddress>,
        impl ResourceHandler<Message = pb::Route>,
        impl ResourceHandler<Message = pb::L7Policy>,
        impl ResourceHandler<Message = pb::BackendPolicy>,
    ),
) {
    // Addresses, routes and backend policies apply resource by resource, as ztunnel's addresses
    // (`ztunnel::state::xds`): one that does not convert is removed and NACKed by name, and must
    // not hold back every later change of its type (the server sends a NACKed resource again
    // with each push). A route or backend policy gone changes routing, never who may do what.
    // L7 policies stay all or nothing: one removed for being unreadable would deny no more
    // (they convert to fail-closed stand-ins rather than fail, so only an undecodable push is
    // NACKed, and whole).
    let (addresses, a) =
        cache_handler_per_resource(|n: &str, a: PbAddress| Address::from_resource(n, a).map_err(|e| e.to_string()));
    let (routes, r) =
        cache_handler_per_resource(|_n: &str, r: pb::Route| CompiledRoute::try_from(r).map_err(|e| e.to_string()));
    let (policies, p) =
        cache_handler(|_n: &str, p: pb::L7Policy| TargetedPolicy::try_from(p).map_err(|e| e.to_string()));
    let (backends, b) = cache_handler_per_resource(|_n: &str, b: pb::BackendPolicy| BackendPolicy::try_from(b));
    (Caches { addresses, routes, policies, backends }, (a, r, p, b))
}

async fn fold(c: Caches, handle: SnapshotHandle, own: Own, metrics: Arc<Metrics>) {
    let mut rx = [c.addresses.subscribe(), c.routes.subscribe(), c.policies.subscribe(), c.backends.subscribe()];
    loop {
        // Nothing is served until every type has come once (the control plane answers each
        // subscription, with nothing if it has nothing): routes known before their policies
        // would be served as if no policy applied to them. Read before the first wait too:
        // pushes applied before this task subscribed count.
        let pushes = rx.each_mut().map(|r| *r.borrow_and_update());
        if pushes.contains(&0) {
            let [addresses, routes, policies, backends] = pushes.map(|n| n > 0);
            tracing::info!(addresses, routes, policies, backends, "waiting for the first push of every xDS type");
        } else {
            publish(&c, &handle, &own, &metrics);
        }
        let [a, b, p, d] = &mut rx;
        tokio::select! {
            r = a.changed() => if r.is_err() { return },
            r = b.changed() => if r.is_err() { return },
            r = p.changed() => if r.is_err() { return },
            r = d.changed() => if r.is_err() { return },
        }
    }
}

/// Builds a snapshot of the caches and stores it (or keeps the previous one if the addresses
/// do not form a consistent state).
fn publish(c: &Caches, handle: &SnapshotHandle, own: &Own, metrics: &Metrics) {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    for a in c.addresses.snapshot().into_values() {
        match Arc::unwrap_or_clone(a) {
            Address::Workload(w) => workloads.push(w),
            Address::Service(s) => services.push(s),
        }
    }
    let config = StateConfig { network: own.network.clone(), ..StateConfig::default() };
    let mesh = match MeshState::new(config, workloads, services, Vec::new()) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!(error = %e, "addresses do not form a consistent state; keeping the previous snapshot");
            return;
        }
    };
    let routes: Vec<_> = c.routes.snapshot().into_values().collect();
    let policies: Vec<_> = c.policies.snapshot().into_values().collect();
    let backends = c.backends.snapshot().into_iter().map(|(k, v)| (k, (*v).clone())).collect();
    let counts = mesh.counts();
    let snapshot = Snapshot::new(mesh, &routes, &policies, backends, own);
    let stand_ins = snapshot.policies_stand_in();
    // Without its own workload the waypoint prefers no locality: worth seeing in every update.
    let source = snapshot.source().map(|w| w.uid.clone());
    let version = handle.store(snapshot);
    metrics.policies_stand_in(stand_ins);
    tracing::info!(
        version,
        %counts,
        routes = routes.len(),
        policies = policies.len(),
        policies_stand_in = stand_ins,
        source_workload = source.as_deref().unwrap_or("-"),
        "waypoint state updated"
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn nothing_is_served_until_every_type_has_come_once() {
        let (caches, (mut a, mut r, mut p, mut b)) = caches();
        let handle = SnapshotHandle::default();
        let mut versions = handle.subscribe();
        // Addresses came before the task started, routes and backends after; the policies are
        // still on their way.
        a.apply(vec![], vec![]).unwrap();
        let metrics = Metrics::register(&mut prometheus_client::registry::Registry::default());
        let task = tokio::spawn(fold(caches, handle.clone(), Own::gateway("shop/waypoint"), metrics));
        tokio::task::yield_now().await;
        r.apply(vec![], vec![]).unwrap();
        b.apply(vec![], vec![]).unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), versions.changed()).await;
        assert!(early.is_err(), "a snapshot was served before the L7 policies came");
        // Their first push, even with nothing in it, completes the first sync.
        p.apply(vec![], vec![]).unwrap();
        let served = tokio::time::timeout(Duration::from_secs(5), versions.changed()).await;
        assert!(matches!(served, Ok(Ok(()))), "no snapshot after every type came");
        task.abort();
    }
}
