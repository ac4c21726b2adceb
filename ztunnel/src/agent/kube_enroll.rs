//! Enrollment from the Kubernetes API: watches every Namespace (for its labels) and the Pods
//! scheduled to this node (field selector `spec.nodeName=<node>`), and decides with the same
//! rule as the file source ([`super::enroll::decide`]).
//!
//! - A pod the watch has not delivered yet when its CNI ADD arrives (the sandbox is often
//!   created before the watch event reaches us) is fetched with a GET, as is its namespace if
//!   the namespace watch has not listed it: the decision is never a guess from missing data.
//!   A pod or namespace the API does not know, or an API that cannot be reached, refuses the
//!   decision (kubelet retries the sandbox), as an unreadable file source does.
//! - A pod's annotation `ambient.istio.io/dns-capture` is read with its labels
//!   ([`super::enroll::DnsCapture`]); the agent applies it when it enrolls the pod.
//! - Every change of a namespace's or pod's labels (or that annotation) bumps [`KubeEnrollment::changes`]; the
//!   agent then re-decides for the pods it knows from [`KubeEnrollment::cached`] and enrolls or
//!   unenrolls running pods.
//! - Watches restart with backoff on errors; each re-list replaces what was cached of its kind,
//!   so objects deleted meanwhile are forgotten.
//!
//! The identity it runs as needs `get`, `list` and `watch` on `pods` and `namespaces`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use super::enroll::{DnsCapture, PodFacts, decide};

type Labels = BTreeMap<String, String>;

/// Why a decision could not be made from the API.
#[derive(Debug, thiserror::Error)]
pub enum KubeEnrollError {
    /// A GET of the object failed (unreachable API, no permission, ...).
    #[error("getting {kind} {name}: {source}")]
    Get {
        /// `Pod` or `Namespace`.
        kind: &'static str,
        /// `namespace/name` of a pod, the name of a namespace.
        name: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// The API does not know the object.
    #[error("{kind} {name} does not exist in the API")]
    NotFound {
        /// `Pod` or `Namespace`.
        kind: &'static str,
        /// `namespace/name` of a pod, the name of a namespace.
        name: String,
    },
}

/// What enrollment needs of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodMeta {
    uid: Option<String>,
    labels: Labels,
    service_account: Option<String>,
    dns_capture: DnsCapture,
}

impl PodMeta {
    fn of(pod: &Pod) -> Self {
        PodMeta {
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            service_account: pod.spec.as_ref().and_then(|s| s.service_account_name.clone()),
            dns_capture: DnsCapture::of(pod.metadata.annotations.as_ref()),
        }
    }
}

#[derive(Default)]
struct Cache {
    namespaces: HashMap<String, Labels>,
    pods: HashMap<(String, String), PodMeta>,
}

/// The API-backed enrollment source. Its watches run on the runtime that called
/// [`KubeEnrollment::start`] until the value is dropped.
pub struct KubeEnrollment {
    client: kube::Client,
    cache: Arc<Mutex<Cache>>,
    changed: watch::Sender<u64>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for KubeEnrollment {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for KubeEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEnrollment").finish_non_exhaustive()
    }
}

fn lock(cache: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    // Every update is a single insert, remove or swap: a poisoned cache is still consistent.
    cache.lock().unwrap_or_else(PoisonError::into_inner)
}

fn facts(ns_labels: Option<&Labels>, pod: &PodMeta) -> PodFacts {
    PodFacts {
        enrolled: decide(ns_labels, Some(&pod.labels)),
        service_account: pod.service_account.clone().unwrap_or_else(|| "default".to_owned()),
        uid: pod.uid.clone(),
        dns_capture: pod.dns_capture.clone(),
    }
}

impl KubeEnrollment {
    /// Starts watching namespaces and the pods of `node`.
    pub fn start(client: kube::Client, node: &str) -> Arc<Self> {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let (changed, _) = watch::channel(0);
        let ns_api: Api<Namespace> = Api::all(client.clone());
        let pod_api: Api<Pod> = Api::all(client.clone());
        let ns_task = tokio::spawn(watch_kind(
            ns_api,
            watcher::Config::default(),
            cache.clone(),
            changed.clone(),
            |c: &mut Cache, ns: Namespace| {
                let labels = ns.metadata.labels.unwrap_or_default();
                c.namespaces.insert(ns.metadata.name.unwrap_or_default(), labels.clone()) != Some(labels)
            },
            |c: &mut Cache, ns: &Namespace| {
                c.namespaces.remove(ns.metadata.name.as_deref().unwrap_or_default()).is_some()
            },
            |c: &mut Cache, fresh: Cache| c.namespaces = fresh.namespaces,
        ));
        let pod_task = tokio::spawn(watch_kind(
            pod_api,
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
            cache.clone(),
            changed.clone(),
            |c: &mut Cache, pod: Pod| {
                let meta = PodMeta::of(&pod);
                let key = (pod.metadata.namespace.unwrap_or_default(), pod.metadata.name.unwrap_or_default());
                c.pods.insert(key, meta.clone()) != Some(meta)
            },
            |c: &mut Cache, pod: &Pod| {
                let key =
                    (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
                c.pods.remove(&key).is_some()
            },
            |c: &mut Cache, fresh: Cache| c.pods = fresh.pods,
        ));
        Arc::new(KubeEnrollment {
            client,
            cache,
            changed,
            tasks: vec![ns_task.abort_handle(), pod_task.abort_handle()],
        })
    }

    /// Bumped whenever a namespace's or pod's labels (or service account) may have changed the
    /// decision for some pod.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The decision from what the watches have delivered, or `None` when the pod or its
    /// namespace is not cached (then nothing should change for it).
    pub fn cached(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        let cache = lock(&self.cache);
        let pod = cache.pods.get(&(namespace.to_owned(), name.to_owned()))?;
        let ns = cache.namespaces.get(namespace)?;
        Some(facts(Some(ns), pod))
    }

    /// Decides for the pod `namespace/name`, fetching what is not cached.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<PodFacts, KubeEnrollError> {
        let (pod, ns) = {
            let cache = lock(&self.cache);
            (
                cache.pods.get(&(namespace.to_owned(), name.to_owned())).cloned(),
                cache.namespaces.get(namespace).cloned(),
            )
        };
        let pod = match pod {
            Some(p) => p,
            None => {
                let full = format!("{namespace}/{name}");
                let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
                let got = api.get_opt(name).await.map_err(|source| KubeEnrollError::Get {
                    kind: "Pod",
                    name: full.clone(),
                    source,
                })?;
                PodMeta::of(&got.ok_or(KubeEnrollError::NotFound { kind: "Pod", name: full })?)
            }
        };
        let ns = match ns {
            Some(l) => l,
            None => {
                let api: Api<Namespace> = Api::all(self.client.clone());
                let got = api.get_opt(namespace).await.map_err(|source| KubeEnrollError::Get {
                    kind: "Namespace",
                    name: namespace.to_owned(),
                    source,
                })?;
                got.ok_or(KubeEnrollError::NotFound { kind: "Namespace", name: namespace.to_owned() })?
                    .metadata
                    .labels
                    .unwrap_or_default()
            }
        };
        Ok(facts(Some(&ns), &pod))
    }
}

/// Runs one kind's watch forever, keeping `cache` current. `apply` and `delete` return whether
/// the cache changed; `replace` puts a complete (re-)list of the kind in place of the old.
async fn watch_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    cache: Arc<Mutex<Cache>>,
    changed: watch::Sender<u64>,
    apply: impl Fn(&mut Cache, K) -> bool,
    delete: impl Fn(&mut Cache, &K) -> bool,
    replace: impl Fn(&mut Cache, Cache),
) where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let mut stream = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    // A re-list is collected first and swapped in at its end, so that decisions made
    // meanwhile still see the previous objects rather than none.
    let mut relist: Option<Cache> = None;
    let mut failing = false;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(error) => {
                if !failing {
                    tracing::warn!(%kind, %error, "watch failing; retrying with backoff");
                }
                failing = true;
                continue;
            }
        };
        if failing {
            tracing::info!(%kind, "watch recovered");
            failing = false;
        }
        let bump = match event {
            Event::Init => {
                relist = Some(Cache::default());
                false
            }
            Event::InitApply(obj) => {
                if let Some(r) = relist.as_mut() {
                    apply(r, obj);
                }
                false
            }
            Event::InitDone => {
                let Some(fresh) = relist.take() else { continue };
                replace(&mut lock(&cache), fresh);
                tracing::debug!(%kind, "listed");
                true
            }
            Event::Apply(obj) => apply(&mut lock(&cache), obj),
            Event::Delete(obj) => delete(&mut lock(&cache), &obj),
        };
        if bump {
            changed.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Option<serde_json::Value>) -> Pod {
        let mut meta = serde_json::json!({"name": "p", "namespace": "mesh", "uid": "u"});
        if let Some(a) = annotations {
            meta["annotations"] = a;
        }
        serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta})).unwrap()
    }

    #[test]
    fn dns_capture_annotation_read_from_the_watched_pod() {
        let ns: Labels = [("istio.io/dataplane-mode".to_owned(), "ambient".to_owned())].into();
        let of = |p: &Pod| facts(Some(&ns), &PodMeta::of(p)).dns_capture;
        assert_eq!(of(&pod(None)), DnsCapture::Unset);
        assert_eq!(of(&pod(Some(serde_json::json!({"other": "x"})))), DnsCapture::Unset);
        let annotated = |v: &str| pod(Some(serde_json::json!({"ambient.istio.io/dns-capture": v})));
        assert_eq!(of(&annotated("false")), DnsCapture::Set(false));
        assert_eq!(of(&annotated("true")), DnsCapture::Set(true));
        assert_eq!(of(&annotated("nope")), DnsCapture::Invalid("nope".into()));
        // An annotation change is a change of what the watch caches.
        assert_ne!(PodMeta::of(&annotated("false")), PodMeta::of(&annotated("true")));
    }
}
