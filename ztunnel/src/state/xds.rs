//! State from the control plane: delta xDS subscriptions to Istio's `Address` and
//! `Authorization` types, converted (and validated) on arrival, folded into a new [`State`]
//! whenever either cache changes.
//!
//! A resource that does not convert is NACKed by the xDS client with the conversion error and
//! the previous state stays; policies convert fail-closed ([`convert::policy_fail_closed`]), so
//! a defective policy is kept as one that can only deny.

use std::sync::Arc;

use proto::envoy::config::core::v3::Node;
use proto::istio::security::Authorization;
use proto::istio::workload::Address as PbAddress;
use xds::client::{Cache, Client, ClientHandle, Names, cache_handler};

use super::convert::{self, Address};
use super::{Policy, State, StateConfig, StateHandle};

/// A running xDS state source.
pub struct XdsSource {
    /// The xDS client (status for the admin dump; stop by dropping).
    pub client: ClientHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for XdsSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to workloads, services and policies at `endpoint` as `node`, and keeps `handle`
/// current. Must be called inside a tokio runtime.
pub fn start(endpoint: tonic::transport::Endpoint, node: Node, handle: StateHandle, config: StateConfig) -> XdsSource {
    let (addresses, address_handler) =
        cache_handler(|_name: &str, a: PbAddress| Address::try_from(a).map_err(|e| e.to_string()));
    let (policies, policy_handler) =
        cache_handler(|_name: &str, a: Authorization| convert::policy_fail_closed(a).map_err(|e| e.to_string()));
    let client = Client::new(node)
        .subscribe(proto::ADDRESS_TYPE_URL, Names::Wildcard, address_handler)
        .subscribe(proto::AUTHORIZATION_TYPE_URL, Names::Wildcard, policy_handler)
        .spawn(endpoint);
    let task = tokio::spawn(fold(addresses, policies, handle, config));
    XdsSource { client, task }
}

/// Rebuilds the state each time a cache changes. Bursts coalesce: the watch channels keep only
/// the latest revision.
async fn fold(addresses: Cache<Address>, policies: Cache<Policy>, handle: StateHandle, config: StateConfig) {
    let mut a_rx = addresses.subscribe();
    let mut p_rx = policies.subscribe();
    loop {
        tokio::select! {
            r = a_rx.changed() => if r.is_err() { return },
            r = p_rx.changed() => if r.is_err() { return },
        }
        a_rx.borrow_and_update();
        p_rx.borrow_and_update();
        match build(&addresses, &policies, config.clone()) {
            Ok(state) => {
                let counts = state.counts();
                let version = handle.store(state);
                tracing::info!(version, %counts, "state updated from xDS");
            }
            Err(e) => {
                tracing::error!(error = %e, "xDS resources do not form a consistent state; keeping the previous one")
            }
        }
    }
}

fn build(
    addresses: &Cache<Address>,
    policies: &Cache<Policy>,
    config: StateConfig,
) -> Result<State, super::StateError> {
    let mut workloads = Vec::new();
    let mut services = Vec::new();
    for a in addresses.snapshot().into_values() {
        match Arc::unwrap_or_clone(a) {
            Address::Workload(w) => workloads.push(w),
            Address::Service(s) => services.push(s),
        }
    }
    let policies = policies.snapshot().into_values().map(Arc::unwrap_or_clone).collect();
    State::new(config, workloads, services, policies)
}
