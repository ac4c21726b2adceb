//! Where pods run, from the model: what the CA checks before signing for a node.

use std::sync::{Arc, Mutex, PoisonError};

use hbone::Identity;

use crate::ca::Placement;
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
        t.model().pods.iter().any(|((ns, _), pod)| {
            ns == identity.namespace()
                && pod.spec.node_name == node
                && pod.spec.service_account_name.as_deref().unwrap_or("default") == identity.service_account()
        })
    }

    fn pod_node(&self, namespace: &str, name: &str) -> Option<String> {
        let t = self.translator.lock().unwrap_or_else(PoisonError::into_inner);
        t.model()
            .pods
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|p| p.spec.node_name.clone())
            .filter(|n| !n.is_empty())
    }
}
