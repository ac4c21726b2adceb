//! Which mesh service a query name is: the hostnames of a state snapshot's services as DNS
//! compares names (RFC 4343: without case; a trailing dot is the same name), so a name that is
//! not `<service>.<namespace>.svc.<domain>` (an Istio ServiceEntry host, which may be in any
//! namespace, or any name the upstream is asked for) costs a lookup, not a scan of every
//! service. The state indexes services by namespace and hostname as spelled; this index is
//! built here, from the snapshot, once for each snapshot a query meets.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};

use crate::state::State;
use crate::state::service::Service;

/// A snapshot's services by DNS name.
#[derive(Debug, Default)]
pub(super) struct HostIndex {
    /// The snapshot indexed. A weak reference holds no snapshot (nor its services) alive, but
    /// holds its allocation: no later snapshot can be at that address while this one is kept.
    built_from: Weak<State>,
    /// The hostname in lower case without a trailing dot, to its services (in the state's order).
    by_name: HashMap<String, Vec<Arc<Service>>>,
}

impl HostIndex {
    fn build(state: &Arc<State>) -> HostIndex {
        let mut by_name: HashMap<String, Vec<Arc<Service>>> = HashMap::with_capacity(state.services().len());
        for svc in state.services() {
            by_name.entry(dns_name(&svc.hostname)).or_default().push(svc.clone());
        }
        HostIndex { built_from: Arc::downgrade(state), by_name }
    }

    fn indexes(&self, state: &Arc<State>) -> bool {
        std::ptr::eq(self.built_from.as_ptr(), Arc::as_ptr(state))
    }

    /// The service named `name` (lower case, no trailing dot): the one in `pod_namespace` if
    /// there is one, else the first namespace's in order.
    fn get(&self, name: &str, pod_namespace: &str) -> Option<&Arc<Service>> {
        // A few at most: a name is one service's, or an Istio ServiceEntry host's in a few
        // namespaces.
        self.by_name.get(name)?.iter().min_by_key(|s| (s.namespace != pod_namespace, s.namespace.as_str()))
    }
}

/// A hostname as DNS compares it: lower case, without the trailing dot a user may have written.
fn dns_name(hostname: &str) -> String {
    hostname.strip_suffix('.').unwrap_or(hostname).to_ascii_lowercase()
}

/// The [`HostIndex`] of the latest snapshot, shared by every pod's proxy.
#[derive(Debug, Default)]
pub(super) struct Hosts {
    current: Mutex<Arc<HostIndex>>,
}

impl Hosts {
    /// The index of `state`, built now if the last one built is another snapshot's. Queries
    /// arriving meanwhile wait for it: each would otherwise have scanned the services itself.
    pub(super) fn of(&self, state: &Arc<State>) -> Arc<HostIndex> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if !current.indexes(state) {
            *current = Arc::new(HostIndex::build(state));
        }
        current.clone()
    }
}

/// The mesh's answer to a name: the addresses of the service of that hostname on this network,
/// the asking pod's namespace first. `None` when no service has the name, or it has no address
/// here (a headless service: the upstream knows its pods). `name` is in lower case, without the
/// trailing dot; `hosts` is `state`'s index.
pub(super) fn service_addresses(
    state: &State,
    hosts: &HostIndex,
    name: &str,
    pod_namespace: &str,
) -> Option<Vec<IpAddr>> {
    let network = &state.config().network;
    // A Kubernetes service's name says its namespace (`<service>.<namespace>.svc.<domain>`):
    // that namespace's service of the name as spelled, if it has one. Otherwise (a host spelled
    // with capitals or a trailing dot, an Istio ServiceEntry host in any namespace) the index.
    let named_namespace = {
        let mut labels = name.splitn(4, '.');
        match (labels.next(), labels.next(), labels.next()) {
            (Some(_), Some(ns), Some("svc")) => Some(ns),
            _ => None,
        }
    };
    let svc = state
        .service_by_host(pod_namespace, name)
        .or_else(|| named_namespace.and_then(|ns| state.service_by_host(ns, name)))
        .or_else(|| hosts.get(name, pod_namespace))?;
    let addrs: Vec<IpAddr> = svc.vips.iter().filter(|v| &v.network == network).map(|v| v.address).collect();
    (!addrs.is_empty()).then_some(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StateConfig, StateHandle, file};

    const STATE: &str = r#"
services:
- name: api
  namespace: bbb
  hostname: Api.Example.COM.
  addresses: ["240.240.0.2"]
  ports: [{servicePort: 443, targetPort: 443}]
- name: api
  namespace: aaa
  hostname: api.example.com
  addresses: ["240.240.0.1"]
  ports: [{servicePort: 443, targetPort: 443}]
"#;

    fn addrs(a: &[&str]) -> Option<Vec<IpAddr>> {
        Some(a.iter().map(|s| s.parse().unwrap()).collect())
    }

    #[test]
    fn a_name_is_found_without_case_or_trailing_dot_in_the_pods_namespace_first() {
        let state = Arc::new(file::parse(STATE, StateConfig::default()).unwrap());
        let hosts = Hosts::default();
        let index = hosts.of(&state);
        let find = |name, ns| service_addresses(&state, &index, name, ns);
        assert_eq!(find("api.example.com", "bbb"), addrs(&["240.240.0.2"]), "the pod's namespace's, as spelled there");
        assert_eq!(find("api.example.com", "aaa"), addrs(&["240.240.0.1"]));
        assert_eq!(find("api.example.com", "shop"), addrs(&["240.240.0.1"]), "else the first namespace's");
        assert_eq!(find("www.example.com", "bbb"), None);
        assert_eq!(find("api.example.com.shop.svc.cluster.local", "bbb"), None);
    }

    #[test]
    fn the_index_is_built_once_for_each_snapshot() {
        let handle = StateHandle::new(file::parse(STATE, StateConfig::default()).unwrap());
        let hosts = Hosts::default();
        let first = hosts.of(&handle.load());
        assert!(Arc::ptr_eq(&first, &hosts.of(&handle.load())), "one build for queries of one snapshot");
        let more = format!(
            "{STATE}- name: new\n  namespace: ccc\n  hostname: New.Example.com\n  addresses: [\"240.240.0.3\"]\n  \
             ports: [{{servicePort: 80, targetPort: 80}}]\n"
        );
        handle.store(file::parse(&more, StateConfig::default()).unwrap());
        let state = handle.load();
        let second = hosts.of(&state);
        assert!(!Arc::ptr_eq(&first, &second), "a new snapshot, a new index");
        assert_eq!(service_addresses(&state, &second, "new.example.com", "shop"), addrs(&["240.240.0.3"]));
        assert_eq!(service_addresses(&handle.load(), &first, "new.example.com", "shop"), None, "the old one's");
    }
}
