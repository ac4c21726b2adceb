//! Where pods run, from the model: what the CA checks before signing for a node.

use std::sync::{Arc, Mutex, PoisonError};

use hbone::Identity;

use crate::ca::{PlacedPod, Placement};
use crate::translator::Translator;

/// Answers from the translator's current model.
#[derive(Clone)]
pub struct ModelPlacement {
    translator: Arc<Mutex<Translator>>,
}

impl ModelPlacement {
    /// Placement read from `translator`'s model.
    pub fn new(translator: Arc<Mutex<Translator>>) -> Self {
        ModelPlacement { translator }
    }
}

impl Placement for ModelPlacement {
    fn runs_on(&self, identity: &Identity, node: &str) -> bool {
        let t = self.translator.lock().unwrap_or_else(PoisonError::into_inner);
        if identity.trust_domain() != t.config().trust_domain {
            return false;
        }
        // Pods are keyed by (namespace, name): only the identity's namespace is scanned, so a
        // CSR costs what its namespace holds, not the cluster, under the translator's lock.
        let ns = identity.namespace();
        t.model().pods.range((ns.to_owned(), String::new())..).take_while(|((pod_ns, _), _)| pod_ns == ns).any(
            |(_, pod)| {
                pod.spec.node_name == node
                    && pod.spec.service_account_name.as_deref().unwrap_or("default") == identity.service_account()
            },
        )
    }

    fn pod(&self, namespace: &str, name: &str) -> Option<PlacedPod> {
        let t = self.translator.lock().unwrap_or_else(PoisonError::into_inner);
        t.model().pods.get(&(namespace.to_owned(), name.to_owned())).map(|p| PlacedPod {
            uid: p.metadata.uid.clone(),
            service_account: p.spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned()),
            node: p.spec.node_name.clone(),
        })
    }
}
