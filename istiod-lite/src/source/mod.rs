//! Sources of objects: a directory of Kubernetes YAML ([`dir`]) or the Kubernetes API
//! ([`kube`]); [`parse_file`] turns one file's text into objects and located errors, one
//! document at a time, so a bad document never hides the good ones around it.

pub mod dir;
pub mod kube;
mod validate;
mod validate_route;
pub mod waypoint_service;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_yaml::Value;

use crate::error::{ConfigError, Location, ObjectError};
use crate::model::{Kind, Object, ObjectKey};

pub use validate::{L4_WHEN_KEYS, parse_cidr, parse_port};
pub use validate_route::{InvalidRule, check_regex, invalid_rules};

/// A parsed object and where it came from.
#[derive(Clone, Debug)]
pub struct Located {
    /// Where.
    pub location: Location,
    /// What.
    pub object: Object,
}

/// The objects and errors of one file.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Good objects, in file order.
    pub objects: Vec<Located>,
    /// Bad documents and objects.
    pub errors: Vec<ConfigError>,
    /// Documents of kinds we do not read (a `Deployment`, a `ConfigMap`): `kind/name`, skipped.
    pub ignored: Vec<String>,
    /// For each rejected security object: the fail-closed stand-in to enforce if no valid
    /// version of it was ever seen (see [`fail_closed`]).
    pub fail_closed: Vec<Located>,
}

/// Splits on `---` lines. A blank prologue before the first separator is not a document;
/// blank documents elsewhere keep their number (so numbers match what an editor counts).
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs: Vec<String> = vec![String::new()];
    for line in text.lines() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line.starts_with("---#");
        if is_sep {
            docs.push(String::new());
        } else {
            let cur = docs.last_mut().expect("never empty");
            cur.push_str(line);
            cur.push('\n');
        }
    }
    let blank = |d: &str| d.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
    if docs.len() > 1 && blank(&docs[0]) {
        docs.remove(0);
    }
    docs.into_iter().enumerate().filter(|(_, d)| !blank(d)).map(|(i, d)| (i + 1, d)).collect()
}

/// How many documents [`parse_file`] reads in `text`.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn document_count(text: &str) -> usize {
    documents(text).len()
}

/// Parses one file's text.
pub fn parse_file(file: &Path, text: &str) -> Parsed {
    let mut out = Parsed::default();
    for (n, doc) in documents(text) {
        let location = Location { file: file.to_owned(), document: n };
        match parse_document(&doc) {
            Ok(Some(object)) => out.objects.push(Located { location, object }),
            Ok(None) => {
                let v: Value = serde_yaml::from_str(&doc).unwrap_or(Value::Null);
                let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                let name = v.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("");
                out.ignored.push(format!("{} {}", s("kind"), name));
            }
            Err((object, error)) => {
                if let Some(stand_in) = object.as_ref().and_then(|k| fail_closed(k, &doc)) {
                    out.fail_closed.push(Located { location: location.clone(), object: stand_in });
                }
                out.errors.push(ConfigError { location, object, error })
            }
        }
    }
    out
}

/// The stand-in for a rejected security object: the strictest object of its kind with the same
/// name and, when `spec.selector.matchLabels` is readable, the same selector (else the whole
/// namespace). An `AuthorizationPolicy` becomes a DENY of everything; a `PeerAuthentication`
/// becomes STRICT. A policy the user meant to add is never silently absent: its workloads are
/// refused until it is fixed, and ztunnel's denials name it.
pub fn fail_closed(key: &ObjectKey, doc: &str) -> Option<Object> {
    use crate::k8s::security::{
        AuthorizationPolicySpec, MtlsMode, MutualTls, PeerAuthenticationSpec, PolicyAction, Rule,
    };
    use crate::k8s::{ObjectMeta, WorkloadSelector};
    let v: Value = serde_yaml::from_str(doc).ok()?;
    let selector = v.get("spec").and_then(|s| s.get("selector")).map(|sel| {
        let labels = sel.get("matchLabels").and_then(|m| serde_yaml::from_value::<crate::k8s::Labels>(m.clone()).ok());
        // An unreadable selector selects the whole namespace: wider, never narrower.
        labels.filter(|l| !l.is_empty()).map(|match_labels| WorkloadSelector { match_labels })
    });
    let selector = selector.flatten();
    let metadata = ObjectMeta { name: key.name.clone(), namespace: key.namespace.clone(), ..Default::default() };
    let api_version = str_at(&v, "apiVersion").unwrap_or("security.istio.io/v1").to_owned();
    match key.kind {
        Kind::AuthorizationPolicy => Some(Object::AuthorizationPolicy(crate::k8s::security::AuthorizationPolicy {
            api_version,
            kind: "AuthorizationPolicy".into(),
            metadata,
            spec: match target_refs(&v) {
                // A policy for waypoints stays one: a DENY of everything at its targets.
                Some(target_refs) => AuthorizationPolicySpec {
                    target_refs,
                    action: PolicyAction::Deny,
                    rules: vec![Rule::default()],
                    ..Default::default()
                },
                None => AuthorizationPolicySpec {
                    selector,
                    action: PolicyAction::Deny,
                    rules: vec![Rule::default()],
                    ..Default::default()
                },
            },
            status: None,
        })),
        Kind::PeerAuthentication => Some(Object::PeerAuthentication(crate::k8s::security::PeerAuthentication {
            api_version,
            kind: "PeerAuthentication".into(),
            metadata,
            spec: PeerAuthenticationSpec {
                selector,
                mtls: Some(MutualTls { mode: MtlsMode::Strict }),
                ..Default::default()
            },
            status: None,
        })),
        _ => None,
    }
}

/// `spec.targetRefs` (or `targetRef`) when readable, non-empty and all of kinds waypoints
/// enforce; otherwise the stand-in falls back to a ztunnel policy (wider, never narrower).
fn target_refs(v: &Value) -> Option<Vec<crate::k8s::security::PolicyTargetReference>> {
    use crate::k8s::security::PolicyTargetReference;
    let spec = v.get("spec")?;
    let refs: Vec<PolicyTargetReference> = match (spec.get("targetRefs"), spec.get("targetRef")) {
        (Some(r), None) => serde_yaml::from_value(r.clone()).ok()?,
        (None, Some(r)) => vec![serde_yaml::from_value(r.clone()).ok()?],
        _ => return None,
    };
    let ok = |t: &PolicyTargetReference| {
        matches!(
            (t.group.as_deref().unwrap_or(""), t.kind.as_str()),
            ("gateway.networking.k8s.io", "Gateway") | ("" | "core", "Service")
        )
    };
    (!refs.is_empty() && refs.iter().all(ok)).then_some(refs)
}

type DocError = (Option<ObjectKey>, ObjectError);

fn str_at<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Parses one document: `Ok(None)` for a kind we do not read.
fn parse_document(doc: &str) -> Result<Option<Object>, DocError> {
    let v: Value = serde_yaml::from_str(doc).map_err(|source| (None, ObjectError::Yaml { source }))?;
    if !v.is_mapping() {
        return Err((None, ObjectError::Invalid { field: "(document)".into(), reason: "not a YAML mapping".into() }));
    }
    let api_version = str_at(&v, "apiVersion").ok_or((None, ObjectError::Missing { field: "apiVersion" }))?;
    let kind_str = str_at(&v, "kind").ok_or((None, ObjectError::Missing { field: "kind" }))?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = match (group, version, kind_str) {
        ("", "v1", "Namespace") => Kind::Namespace,
        ("", "v1", "Node") => Kind::Node,
        ("", "v1", "Pod") => Kind::Pod,
        ("", "v1", "Service") => Kind::Service,
        ("discovery.k8s.io", "v1", "EndpointSlice") => Kind::EndpointSlice,
        ("security.istio.io", "v1" | "v1beta1", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
        ("security.istio.io", "v1" | "v1beta1", "PeerAuthentication") => Kind::PeerAuthentication,
        ("gateway.networking.k8s.io", "v1" | "v1beta1", "Gateway") => Kind::Gateway,
        ("gateway.networking.k8s.io", "v1" | "v1beta1", "HTTPRoute") => Kind::HttpRoute,
        ("gateway.networking.k8s.io", "v1" | "v1alpha2", "GRPCRoute") => Kind::GrpcRoute,
        ("gateway.networking.k8s.io", "v1" | "v1beta1" | "v1alpha2", "ReferenceGrant") => Kind::ReferenceGrant,
        // Groups whose objects can carry policy or routing: never skip them quietly.
        ("security.istio.io" | "gateway.networking.k8s.io" | "networking.istio.io", _, _) => {
            return Err((
                None,
                ObjectError::UnsupportedKind { api_version: api_version.to_owned(), kind: kind_str.to_owned() },
            ));
        }
        _ => return Ok(None),
    };
    let meta = v.get("metadata");
    let name = meta.and_then(|m| str_at(m, "name")).unwrap_or("");
    let namespace = match kind {
        Kind::Namespace | Kind::Node => "",
        _ => meta.and_then(|m| str_at(m, "namespace")).unwrap_or("default"),
    };
    let key = ObjectKey::new(kind, namespace, name);
    if name.is_empty() {
        return Err((Some(key), ObjectError::Missing { field: "metadata.name" }));
    }
    let fail = |error| (Some(key.clone()), error);
    fn de<T: DeserializeOwned>(doc: &str) -> Result<T, ObjectError> {
        serde_yaml::from_str(doc).map_err(|source| ObjectError::Schema { source })
    }
    let mut object = match kind {
        Kind::Namespace => Object::Namespace(de(doc).map_err(fail)?),
        Kind::Node => Object::Node(de(doc).map_err(fail)?),
        Kind::Pod => Object::Pod(de(doc).map_err(fail)?),
        Kind::Service => Object::Service(de(doc).map_err(fail)?),
        Kind::EndpointSlice => Object::EndpointSlice(de(doc).map_err(fail)?),
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(de(doc).map_err(fail)?),
        Kind::PeerAuthentication => Object::PeerAuthentication(de(doc).map_err(fail)?),
        Kind::Gateway => Object::Gateway(de(doc).map_err(fail)?),
        Kind::HttpRoute => Object::HttpRoute(de(doc).map_err(fail)?),
        Kind::GrpcRoute => Object::GrpcRoute(de(doc).map_err(fail)?),
        Kind::ReferenceGrant => Object::ReferenceGrant(de(doc).map_err(fail)?),
    };
    set_namespace(&mut object, namespace);
    validate::object(&object).map_err(fail)?;
    Ok(Some(object))
}

fn set_namespace(o: &mut Object, ns: &str) {
    let m = match o {
        Object::Namespace(_) | Object::Node(_) => return,
        Object::Pod(o) => &mut o.metadata,
        Object::Service(o) => &mut o.metadata,
        Object::EndpointSlice(o) => &mut o.metadata,
        Object::AuthorizationPolicy(o) => &mut o.metadata,
        Object::PeerAuthentication(o) => &mut o.metadata,
        Object::Gateway(o) => &mut o.metadata,
        Object::HttpRoute(o) | Object::GrpcRoute(o) => &mut o.metadata,
        Object::ReferenceGrant(o) => &mut o.metadata,
    };
    m.namespace = ns.to_owned();
}
