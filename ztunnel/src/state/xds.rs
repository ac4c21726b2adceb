//! State from the control plane: delta xDS subscriptions to Istio's `Address` and
//! `Authorization` types, converted (and validated) on arrival, folded into a new [`State`]
//! whenever either cache changes.
//!
//! An `Address` (workload or service) that does not convert, or is not named as Istio names it
//! (a workload by its uid, a service by `namespace/hostname`), is NACKed by name and removed, and
//! the rest of its push applies; an `Authorization` push with a resource that does not convert,
//! or is not named `namespace/name`, is NACKed whole and the previous policies stay. Policies
//! convert fail-closed ([`convert::policy_fail_closed`]), so a defective policy is kept as one
//! that can only deny.

use std::sync::Arc;

use proto::envoy::config::core::v3::Node;
use proto::istio::security::Authorization;
use proto::istio::workload::Address as PbAddress;
use xds::client::{Cache, Client, ClientHandle, Names, cache_handler, cache_handler_per_resource};

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

/// How to reach the control plane's xDS.
#[derive(Clone, Debug)]
pub struct XdsEndpoint {
    /// The address, with HTTP/2 settings.
    pub endpoint: tonic::transport::Endpoint,
    /// TLS to istiod (`https://`); `None` for plaintext.
    pub tls: Option<crate::control_plane_tls::Connector>,
    /// File of the bearer token sent on every stream (istiod authenticates xDS on its TLS
    /// port); read again for each stream, as tokens rotate.
    pub token_file: Option<std::path::PathBuf>,
}

impl From<tonic::transport::Endpoint> for XdsEndpoint {
    fn from(endpoint: tonic::transport::Endpoint) -> Self {
        XdsEndpoint { endpoint, tls: None, token_file: None }
    }
}

impl XdsEndpoint {
    /// An xDS client identifying as `node` that sends this endpoint's token, if it has one.
    pub fn client(&self, node: Node) -> Client {
        let client = Client::new(node);
        match &self.token_file {
            Some(path) => client.bearer_token_file(path.clone()),
            None => client,
        }
    }

    /// Opens a channel; a failure is logged with its whole cause (a certificate that names
    /// the wrong host must say so in the log, not only "transport error").
    async fn connect(self) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let uri = self.endpoint.uri().clone();
        let r = match self.tls {
            Some(tls) => self.endpoint.connect_with_connector(tls).await,
            None => self.endpoint.connect().await,
        };
        if let Err(e) = &r {
            tracing::warn!(%uri, error = %crate::control_plane_tls::error_chain(e), "connecting to xDS failed");
        }
        r
    }
}

/// Subscribes to workloads, services and policies at `endpoint` as `node`, and keeps `handle`
/// current. Must be called inside a tokio runtime.
pub fn start(endpoint: impl Into<XdsEndpoint>, node: Node, handle: StateHandle, config: StateConfig) -> XdsSource {
    let mut endpoint = endpoint.into();
    // Pings notice an istiod that vanished without closing the connection.
    endpoint.endpoint = endpoint
        .endpoint
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(10))
        .keep_alive_while_idle(true);
    // Addresses apply resource by resource: a workload or service that does not convert is
    // removed (unknown, so denied inbound: fail closed) and NACKed by name, and the rest of the
    // push applies. All or nothing, one bad resource would hold back every later change of the
    // type (the server sends a NACKed resource again with each push): new pods unserved,
    // deleted ones still routed to. Policies stay all or nothing: one that cannot be made even
    // a fail-closed stand-in must not leave as if it had never denied.
    let (addresses, address_handler) = cache_handler_per_resource(|name: &str, a: PbAddress| {
        Address::from_resource(name, a).map_err(|e| e.to_string())
    });
    let (policies, policy_handler) =
        cache_handler(|name: &str, a: Authorization| convert::policy_resource(name, a).map_err(|e| e.to_string()));
    let client = endpoint
        .client(node)
        .subscribe(proto::ADDRESS_TYPE_URL, Names::Wildcard, address_handler)
        .subscribe(proto::AUTHORIZATION_TYPE_URL, Names::Wildcard, policy_handler)
        .spawn_with(move || endpoint.clone().connect());
    let task = tokio::spawn(fold(addresses, policies, handle, config));
    XdsSource { client, task }
}

/// Rebuilds the state each time a cache changes, once both have had their first push (the
/// control plane answers every subscription, with nothing if it has nothing): workloads known
/// before their policies would be served as if no policy applied to them. Until then the state
/// stays empty, in which no inbound connection finds its destination. Bursts coalesce: the
/// watch channels keep only the latest revision.
async fn fold(addresses: Cache<Address>, policies: Cache<Policy>, handle: StateHandle, config: StateConfig) {
    let mut a_rx = addresses.subscribe();
    let mut p_rx = policies.subscribe();
    loop {
        // Read before the first wait too: pushes applied before this task subscribed count.
        let pushes = (*a_rx.borrow_and_update(), *p_rx.borrow_and_update());
        if pushes.0 == 0 || pushes.1 == 0 {
            tracing::info!(
                addresses = pushes.0 > 0,
                authorization = pushes.1 > 0,
                "waiting for the first push of both xDS types before serving any workload"
            );
        } else {
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
        tokio::select! {
            r = a_rx.changed() => if r.is_err() { return },
            r = p_rx.changed() => if r.is_err() { return },
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
