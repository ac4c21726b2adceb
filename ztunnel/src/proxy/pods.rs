//! The pods this ztunnel serves: started when the node agent hands one over, stopped when
//! it is deleted or missing from the agent's snapshot after a reconnect.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hbone::Identity;

use proto::istio::workload::zds::WorkloadInfo;

use crate::inpod::zds::PodHandler;
use crate::netns::{Netns, NetnsId};

use super::netns_sockets::InPodSockets;
use super::{PodAddrs, PodProxy, ProxyInputs};

/// Every pod with listeners on this node.
pub struct Pods {
    inputs: ProxyInputs,
    trust_domain: String,
    cluster_id: String,
    host: Arc<Netns>,
    running: Mutex<HashMap<String, Running>>,
    /// Where certificates come from when not from files.
    ca: Option<crate::ca_client::CaClient>,
    /// Blocks readiness until the node agent's first snapshot has been applied.
    first_snapshot: Mutex<Option<crate::readiness::BlockReady>>,
}

/// One served pod.
struct Running {
    identity: Identity,
    /// The network namespace its listeners are in.
    netns: NetnsId,
    proxy: PodProxy,
}

impl Pods {
    /// No pods yet; `host` is ztunnel's own network namespace, returned to after each
    /// socket made inside a pod.
    pub fn new(
        inputs: ProxyInputs,
        trust_domain: String,
        cluster_id: String,
        host: Netns,
        ready: &crate::readiness::Ready,
        ca: Option<crate::ca_client::CaClient>,
    ) -> Self {
        Pods {
            ca,
            inputs,
            trust_domain,
            cluster_id,
            host: Arc::new(host),
            running: Mutex::default(),
            first_snapshot: Mutex::new(Some(ready.register("first pod snapshot from the node agent"))),
        }
    }

    /// UIDs and bound addresses of the pods served, for the admin dump.
    pub fn list(&self) -> Vec<(String, PodAddrs)> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<_> = running.iter().map(|(k, r)| (k.clone(), r.proxy.addrs)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Stops renewing `identity`'s certificate once no pod here runs as it.
    fn release(&self, identity: &Identity) {
        let in_use =
            self.running.lock().unwrap_or_else(PoisonError::into_inner).values().any(|r| &r.identity == identity);
        if let (Some(ca), false) = (&self.ca, in_use) {
            ca.forget(identity);
        }
    }

    /// Stops accepting on every pod (graceful shutdown); open connections continue.
    pub fn stop_all(&self) {
        let drained: Vec<_> = self.running.lock().unwrap_or_else(PoisonError::into_inner).drain().collect();
        for (_, r) in drained {
            r.proxy.stop();
        }
    }
}

impl PodHandler for Pods {
    async fn add(&self, uid: String, info: Option<WorkloadInfo>, netns: Netns) -> Result<(), String> {
        let Some(info) = info else {
            return Err(format!("pod {uid}: no workload info; cannot tell its identity"));
        };
        let identity = Identity::new(&self.trust_domain, &info.namespace, &info.service_account)
            .map_err(|e| format!("pod {uid} ({}/{}): {e}", info.namespace, info.name))?;
        let id = netns.id();
        // Never bind capture listeners in ztunnel's own namespace: a pod there is on the
        // host network, and Istio never redirects those (cni/pkg/util/podutil.go,
        // PodRedirectionEnabled).
        if id == self.host.id() {
            return Err(format!(
                "pod {uid} ({}/{}): its network namespace {id} is ztunnel's own (a host-network pod?); \
                 refusing to bind pod listeners there",
                info.namespace, info.name
            ));
        }
        let replaced = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            match running.get(&uid) {
                // Replayed after a reconnect: the listeners are still there.
                Some(r) if r.netns == id => return Ok(()),
                // The sandbox was recreated while we were not told (e.g. across an agent
                // restart): the old listeners sit in a dead namespace. As Istio's ztunnel
                // (statemanager add_workload_inner), drop them and serve the new one.
                Some(_) => running.remove(&uid),
                None => None,
            }
        };
        let replaced = replaced.map(|old| {
            tracing::info!(%uid, old = %old.netns, new = %id, "pod has a new network namespace; replacing its listeners");
            old.proxy.stop();
            old.identity
        });
        if let Some(ca) = &self.ca {
            // Fetched in the background: the pod's listeners come up now, and its tunnels
            // work as soon as the certificate arrives.
            let (ca, id) = (ca.clone(), identity.clone());
            tokio::spawn(async move {
                let mut wait = Duration::from_millis(100);
                while let Err(e) = ca.ensure(&id).await {
                    tracing::warn!(identity = %id, error = %e, "no certificate yet; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
            });
        } else if self.inputs.certs.get(&identity).is_none() {
            tracing::warn!(%uid, %identity, "no certificate for pod identity yet; its tunnels fail until one arrives");
        }
        let sockets = InPodSockets::new(Arc::new(netns), self.host.clone());
        // The node agent's uid is the runtime's; the control plane names workloads
        // `<cluster>//Pod/<namespace>/<name>`, which is what the state is keyed by.
        let workload_uid = format!("{}//Pod/{}/{}", self.cluster_id, info.namespace, info.name);
        let proxy = match PodProxy::start(workload_uid, identity.clone(), sockets, self.inputs.clone()) {
            Ok(p) => p,
            Err(e) => {
                if let Some(old) = replaced {
                    self.release(&old);
                }
                return Err(format!("pod {uid}: binding listeners in its network namespace: {e}"));
            }
        };
        tracing::info!(%uid, pod = %format!("{}/{}", info.namespace, info.name), %identity, "serving pod");
        self.running.lock().unwrap_or_else(PoisonError::into_inner).insert(uid, Running { identity, netns: id, proxy });
        if let Some(old) = replaced {
            self.release(&old);
        }
        Ok(())
    }

    async fn del(&self, uid: &str) {
        let removed = self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(uid);
        if let Some(r) = removed {
            r.proxy.stop();
            self.release(&r.identity);
            tracing::info!(%uid, "stopped serving pod");
        }
    }

    async fn snapshot_done(&self, uids: HashSet<String>) {
        let stale: Vec<Running> = {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            let gone: Vec<String> = running.keys().filter(|k| !uids.contains(*k)).cloned().collect();
            gone.iter().filter_map(|k| running.remove(k)).collect()
        };
        for r in stale {
            r.proxy.stop();
            self.release(&r.identity);
        }
        self.first_snapshot.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}
