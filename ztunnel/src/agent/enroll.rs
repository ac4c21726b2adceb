//! Which pods are enrolled: the rule ([`decide`]), the [`Source`] the agent asks, and the
//! file source, read from ordinary Kubernetes YAML, the same
//! files the local control plane reads (a file, or a directory of `*.yaml` /
//! `*.yml` files with `---`-separated documents).
//!
//! Only `Namespace` and `Pod` documents matter; others are skipped (but must
//! still have a well-formed `metadata`). A pod is
//! enrolled when its label `istio.io/dataplane-mode` is `ambient`, or when its
//! namespace's label is `ambient` and the pod's is not `none`. The source is
//! read afresh for every decision, so edits apply to the next pod without a
//! restart. A source that cannot be read or parsed refuses the decision (the
//! pod does not start) rather than guessing.
//!
//! Both sources also report the pod's annotation `ambient.istio.io/dns-capture`
//! ([`DnsCapture`]), which overrides the agent's global `--capture-dns` for that pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio::sync::watch;

use super::kube_enroll::{KubeEnrollError, KubeEnrollment};

/// The enrollment label.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// The pod annotation that overrides the global DNS capture setting for one pod (Istio ≥ 1.25).
pub const DNS_CAPTURE_ANNOTATION: &str = "ambient.istio.io/dns-capture";

/// A boolean as Go's `strconv.ParseBool` reads it (`1`, `t`, `T`, `TRUE`, `true`, `True` and
/// the `0` / `f` / `false` equivalents; nothing else, no surrounding spaces). Istio reads its
/// boolean annotations and environment this way, so the same values mean the same here.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A pod's own DNS capture setting, from its annotation [`DNS_CAPTURE_ANNOTATION`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DnsCapture {
    /// No annotation: the global setting applies.
    #[default]
    Unset,
    /// `true` or `false` (as [`parse_bool`] reads it): wins over the global setting.
    Set(bool),
    /// Any other value (kept for the warning): ignored, the global setting applies, as in
    /// Istio. Failing open is fine here: DNS capture is a convenience, not a security control.
    Invalid(String),
}

impl DnsCapture {
    /// Reads the annotation from a pod's annotations (`None`: none known).
    pub fn of(annotations: Option<&BTreeMap<String, String>>) -> Self {
        match annotations.and_then(|a| a.get(DNS_CAPTURE_ANNOTATION)) {
            None => DnsCapture::Unset,
            Some(v) => parse_bool(v).map_or_else(|| DnsCapture::Invalid(v.clone()), DnsCapture::Set),
        }
    }

    /// Whether the pod's DNS is captured, given the agent's global setting.
    pub fn capture(&self, global: bool) -> bool {
        match self {
            DnsCapture::Set(v) => *v,
            DnsCapture::Unset | DnsCapture::Invalid(_) => global,
        }
    }
}

/// The rule, given the labels of the pod's namespace and of the pod (`None`: not known, which
/// counts as no labels): the pod's label `ambient` enrolls and `none` opts out; otherwise the
/// namespace's label `ambient` enrolls.
pub fn decide(
    namespace_labels: Option<&BTreeMap<String, String>>,
    pod_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    match pod_labels.and_then(|l| l.get(DATAPLANE_MODE_LABEL)).map(String::as_str) {
        Some("ambient") => true,
        Some("none") => false,
        _ => namespace_labels.and_then(|l| l.get(DATAPLANE_MODE_LABEL)).map(String::as_str) == Some("ambient"),
    }
}

/// Where the agent learns enrollment.
#[derive(Clone, Debug)]
pub enum Source {
    /// Kubernetes YAML files, read for each decision.
    Files(Enrollment),
    /// The Kubernetes API, watched.
    Kube(Arc<KubeEnrollment>),
}

/// Why a source could not decide.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// From the file source.
    #[error(transparent)]
    Files(#[from] EnrollError),
    /// From the API source.
    #[error(transparent)]
    Kube(#[from] KubeEnrollError),
}

impl Source {
    /// Decides for the pod `namespace/name`.
    pub async fn pod(&self, namespace: &str, name: &str) -> Result<PodFacts, SourceError> {
        match self {
            Source::Files(e) => Ok(e.pod(namespace, name)?),
            Source::Kube(k) => Ok(k.pod(namespace, name).await?),
        }
    }

    /// Notifications of changes that may alter decisions for running pods; `None` for a
    /// source that does not watch (files are read at each pod event only).
    pub fn changes(&self) -> Option<watch::Receiver<u64>> {
        match self {
            Source::Files(_) => None,
            Source::Kube(k) => Some(k.changes()),
        }
    }

    /// The current decision without any I/O, if the source has the facts at hand.
    pub fn cached(&self, namespace: &str, name: &str) -> Option<PodFacts> {
        match self {
            Source::Files(_) => None,
            Source::Kube(k) => k.cached(namespace, name),
        }
    }
}

/// Errors reading the enrollment source.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML or its fields have the wrong shape.
    #[error("{path}, document {doc}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based index of the document in the file.
        doc: usize,
        /// The parser's message (it names the field).
        #[source]
        source: serde_yaml::Error,
    },
}

/// What the agent knows about a pod from the enrollment source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodFacts {
    /// Whether the pod is enrolled.
    pub enrolled: bool,
    /// `spec.serviceAccountName` (default `default`).
    pub service_account: String,
    /// `metadata.uid`, if the document has one.
    pub uid: Option<String>,
    /// The pod's annotation `ambient.istio.io/dns-capture`.
    pub dns_capture: DnsCapture,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    service_account_name: Option<String>,
}

/// Any Kubernetes object, read straight from its document so that parse
/// errors carry the path of the offending field.
#[derive(Debug, Deserialize)]
struct Object {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Option<PodSpec>,
}

/// The enrollment source.
#[derive(Clone, Debug)]
pub struct Enrollment {
    path: PathBuf,
}

#[derive(Default)]
struct Snapshot {
    namespaces: BTreeMap<String, Meta>,
    pods: BTreeMap<(String, String), (Meta, PodSpec)>,
}

impl Enrollment {
    /// Reads from `path` (a file or a directory).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Decides for the pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<PodFacts, EnrollError> {
        let snap = self.load()?;
        let pod = snap.pods.get(&(namespace.to_owned(), name.to_owned()));
        let enrolled = decide(snap.namespaces.get(namespace).map(|m| &m.labels), pod.map(|(m, _)| &m.labels));
        Ok(PodFacts {
            enrolled,
            service_account: pod
                .and_then(|(_, s)| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
            uid: pod.and_then(|(m, _)| m.uid.clone()),
            dns_capture: DnsCapture::of(pod.map(|(m, _)| &m.annotations)),
        })
    }

    fn load(&self) -> Result<Snapshot, EnrollError> {
        let read_err = |path: &Path| {
            let path = path.to_owned();
            move |source| EnrollError::Read { path, source }
        };
        let mut files = Vec::new();
        if self.path.is_dir() {
            for entry in std::fs::read_dir(&self.path).map_err(read_err(&self.path))? {
                let p = entry.map_err(read_err(&self.path))?.path();
                if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                    files.push(p);
                }
            }
            files.sort();
        } else {
            files.push(self.path.clone());
        }
        let mut snap = Snapshot::default();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(read_err(&file))?;
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let parse_err = |source| EnrollError::Parse { path: file.clone(), doc: i + 1, source };
                let Some(obj) = Option::<Object>::deserialize(doc).map_err(parse_err)? else {
                    continue; // an empty document
                };
                match obj.kind.as_str() {
                    "Namespace" => {
                        snap.namespaces.insert(obj.metadata.name.clone(), obj.metadata);
                    }
                    "Pod" => {
                        let ns = obj.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
                        snap.pods.insert((ns, obj.metadata.name.clone()), (obj.metadata, obj.spec.unwrap_or_default()));
                    }
                    _ => {}
                }
            }
        }
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_dir::TempDir;

    fn source(text: &str) -> (TempDir, Enrollment) {
        let dir = TempDir::new("enroll");
        std::fs::write(dir.0.join("cluster.yaml"), text).unwrap();
        std::fs::write(dir.0.join("ignored.txt"), "not: [yaml").unwrap();
        let e = Enrollment::new(&dir.0);
        (dir, e)
    }

    const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata:
  name: mesh
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: mesh
  uid: 1234-abcd
spec:
  serviceAccountName: web-sa
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: mesh
  labels:
    istio.io/dataplane-mode: none
---
apiVersion: v1
kind: Pod
metadata:
  name: lone
  namespace: plain
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: mesh
spec: {ports: [{port: 80}]}
";

    #[test]
    fn namespace_and_pod_labels_decide() {
        let (_d, e) = source(CLUSTER);
        let web = e.pod("mesh", "web").unwrap();
        assert_eq!(
            web,
            PodFacts {
                enrolled: true,
                service_account: "web-sa".into(),
                uid: Some("1234-abcd".into()),
                dns_capture: DnsCapture::Unset
            }
        );
        assert!(!e.pod("mesh", "opted-out").unwrap().enrolled);
        assert!(e.pod("mesh", "not-listed").unwrap().enrolled);
        assert!(e.pod("plain", "lone").unwrap().enrolled);
        assert!(!e.pod("plain", "other").unwrap().enrolled);
        assert!(!e.pod("nowhere", "x").unwrap().enrolled);
    }

    #[test]
    fn dns_capture_annotation_read_from_the_pod() {
        let pod = |name: &str, annotations: &str| {
            format!("---\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: mesh\n  annotations: {annotations}\n")
        };
        let text = [
            CLUSTER.to_owned(),
            pod("off", r#"{ambient.istio.io/dns-capture: "false"}"#),
            pod("on", r#"{ambient.istio.io/dns-capture: "True"}"#),
            pod("odd", r#"{ambient.istio.io/dns-capture: "disabled"}"#),
            pod("other", r#"{example.com/x: "false"}"#),
        ]
        .concat();
        let (_d, e) = source(&text);
        assert_eq!(e.pod("mesh", "off").unwrap().dns_capture, DnsCapture::Set(false));
        assert_eq!(e.pod("mesh", "on").unwrap().dns_capture, DnsCapture::Set(true));
        assert_eq!(e.pod("mesh", "odd").unwrap().dns_capture, DnsCapture::Invalid("disabled".into()));
        assert_eq!(e.pod("mesh", "other").unwrap().dns_capture, DnsCapture::Unset);
        assert_eq!(e.pod("mesh", "web").unwrap().dns_capture, DnsCapture::Unset);
        assert_eq!(e.pod("mesh", "not-listed").unwrap().dns_capture, DnsCapture::Unset);
        // The YAML reader takes an unquoted boolean as its text (Kubernetes would refuse it).
        let (_d, e) = source(&pod("bare", "{ambient.istio.io/dns-capture: false}"));
        assert_eq!(e.pod("mesh", "bare").unwrap().dns_capture, DnsCapture::Set(false));
        // Annotations of the wrong shape name the field, as labels do.
        let (_d, e) = source(&pod("list", "[ambient.istio.io/dns-capture]"));
        let err = e.pod("mesh", "list").unwrap_err().to_string();
        assert!(err.contains("annotations"), "{err}");
    }

    #[test]
    fn dns_capture_annotation_overrides_the_global_setting() {
        let annotated = |v: Option<&str>| {
            let mut a = BTreeMap::new();
            if let Some(v) = v {
                a.insert(DNS_CAPTURE_ANNOTATION.to_owned(), v.to_owned());
            }
            DnsCapture::of(Some(&a))
        };
        for global in [true, false] {
            assert_eq!(annotated(None).capture(global), global, "unset follows the global {global}");
            assert_eq!(DnsCapture::of(None).capture(global), global);
            for on in ["true", "True", "TRUE", "t", "T", "1"] {
                assert!(annotated(Some(on)).capture(global), "{on:?} under global {global}");
            }
            for off in ["false", "False", "FALSE", "f", "F", "0"] {
                assert!(!annotated(Some(off)).capture(global), "{off:?} under global {global}");
            }
            // Anything else is ignored (with a warning from the agent): the global applies.
            for garbage in ["", "yes", "no", "off", "tRuE", " true", "false ", "2"] {
                assert_eq!(annotated(Some(garbage)), DnsCapture::Invalid(garbage.into()));
                assert_eq!(annotated(Some(garbage)).capture(global), global, "{garbage:?} under global {global}");
            }
        }
    }

    #[test]
    fn bad_yaml_names_file_and_field() {
        let (_d, e) = source("kind: Pod\nmetadata:\n  name: p\n  labels: [oops]\n");
        let err = e.pod("default", "p").unwrap_err().to_string();
        assert!(err.contains("cluster.yaml, document 1"), "{err}");
        assert!(err.contains("labels"), "{err}");
        let (_d, e) = source("kind: Pod\nmetadata: {name: [\n");
        assert!(e.pod("default", "p").is_err());
    }
}
