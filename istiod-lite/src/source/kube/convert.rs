//! One API object → one model [`Object`], through the same parser and validation as a YAML
//! document of the directory source, so both sources accept, reject and word errors alike.

use kube::api::DynamicObject;

use super::{RefusedRoute, Watched};
use crate::error::ObjectError;
use crate::model::{Kind, Object, ObjectKey};

/// An object the source cannot apply.
#[derive(Debug)]
pub(super) struct Rejected {
    /// Which object.
    pub key: ObjectKey,
    /// What is wrong.
    pub error: ObjectError,
    /// What the source keeps of it. Boxed: rejections are rare and `Object` is large.
    pub remains: Option<Box<Remains>>,
}

/// What the source keeps of a rejected object.
// Always boxed in `Rejected`, so the smaller variant wastes nothing that boxing it would save.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Remains {
    /// Of a security object: its fail-closed stand-in ([`crate::source::fail_closed`]).
    StandIn(Object),
    /// Of a route: what its status needs ([`refused_route`]).
    Route(RefusedRoute),
}

/// What the status of a rejected route needs: its generation and `spec.parentRefs`, read on
/// their own so that a problem elsewhere in the object (an unknown field in a rule, a bad
/// hostname) does not hide them. `None` when `spec.parentRefs` itself cannot be read: there is
/// then no parent to write a status for. (Through the API this is rare: the Gateway API's CRD
/// schema already holds `parentRefs` to its shape.)
fn refused_route(v: &serde_json::Value) -> Option<RefusedRoute> {
    let parent_refs = match v.pointer("/spec/parentRefs") {
        Some(refs) => serde_json::from_value(refs.clone()).ok()?,
        None => Vec::new(),
    };
    let generation = v.pointer("/metadata/generation").and_then(serde_json::Value::as_i64).unwrap_or(0);
    let status_parents = v.pointer("/status/parents").cloned();
    Some(RefusedRoute { generation, parent_refs, status_parents })
}

/// The key of an object as the API names it, without parsing it.
pub(super) fn key_of(w: &Watched, obj: &DynamicObject) -> ObjectKey {
    let ns = match w.kind {
        Kind::Namespace | Kind::Node => String::new(),
        _ => obj.metadata.namespace.clone().unwrap_or_default(),
    };
    ObjectKey::new(w.kind, ns, obj.metadata.name.clone().unwrap_or_default())
}

/// The annotation in which `kubectl apply` keeps a copy of the whole object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the model never reads but would keep: `kubectl apply`'s copy of the object (an
/// annotation, kept with the others), and all the annotations of the kinds whose annotations
/// nothing reads (pods, the most numerous, carry those of every tool on the node: CNI
/// network status, sidecar and scrape settings). `managedFields` and the rest of what the
/// model has no field for are not kept anyway; dropped here, they are not rendered and parsed
/// either.
fn drop_unread(kind: Kind, map: &mut serde_json::Map<String, serde_json::Value>) {
    let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) else { return };
    meta.remove("managedFields");
    if matches!(kind, Kind::Pod | Kind::Node | Kind::EndpointSlice) {
        meta.remove("annotations");
    } else if let Some(annotations) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
        annotations.remove(LAST_APPLIED);
    }
}

/// Converts one object of kind `w`.
///
/// Items of a list response carry no `apiVersion`/`kind` for built-in kinds: both are filled in
/// from `w`. What the model does not read is dropped first ([`drop_unread`]). The object is rendered as indented JSON (a YAML document) and parsed by the
/// directory source's parser, so a schema error's line and column count in that rendering.
pub(super) fn convert(w: &Watched, obj: &DynamicObject) -> Result<Object, Rejected> {
    let reject = |error| Rejected { key: key_of(w, obj), error, remains: None };
    let mut v = serde_json::to_value(obj)
        .map_err(|e| reject(ObjectError::Invalid { field: "(object)".into(), reason: e.to_string() }))?;
    let Some(map) = v.as_object_mut() else {
        return Err(reject(ObjectError::Invalid { field: "(object)".into(), reason: "not a JSON object".into() }));
    };
    let listed_as = map.get("apiVersion").and_then(|a| a.as_str()).filter(|a| !a.is_empty()).map(str::to_owned);
    // The API server converts to the version watched, one of those we read (built-in kinds'
    // list items say none); anything else is not this kind.
    let api_version = match listed_as {
        None => w.api_version(),
        Some(a) if w.versions.iter().any(|v| w.api_version_at(v) == a) => a,
        Some(a) => {
            return Err(reject(ObjectError::Invalid {
                field: "apiVersion".into(),
                reason: format!("{a:?} in a watch of {}", w.api_version()),
            }));
        }
    };
    drop_unread(w.kind, map);
    map.insert("apiVersion".into(), api_version.clone().into());
    map.insert("kind".into(), w.kind.as_str().into());
    let text = serde_json::to_string_pretty(&v)
        .map_err(|e| reject(ObjectError::Invalid { field: "(object)".into(), reason: e.to_string() }))?;
    match super::super::parse_document(&text) {
        Ok(Some(object)) if object.key().kind == w.kind => Ok(object),
        Ok(_) => Err(reject(ObjectError::UnsupportedKind { api_version, kind: w.kind.as_str().into() })),
        Err((key, error)) => {
            let key = key.unwrap_or_else(|| key_of(w, obj));
            let is_route = matches!(key.kind, Kind::HttpRoute | Kind::GrpcRoute) && !key.name.is_empty();
            let remains = match super::super::fail_closed(&key, &text) {
                Some(stand_in) => Some(Remains::StandIn(stand_in)),
                None if is_route => refused_route(&v).map(Remains::Route),
                None => None,
            };
            Err(Rejected { key, error, remains: remains.map(Box::new) })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::source::kube::WATCHED;

    fn watched(kind: Kind) -> &'static Watched {
        WATCHED.iter().find(|w| w.kind == kind).unwrap()
    }

    fn dynamic(v: serde_json::Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn list_items_without_type_fields_take_them_from_the_watch() {
        let o = dynamic(json!({
            "metadata": {"name": "web-0", "namespace": "shop", "resourceVersion": "7"},
            "spec": {"nodeName": "node-a"},
            "status": {"podIP": "10.244.1.7"}
        }));
        let Ok(Object::Pod(p)) = convert(watched(Kind::Pod), &o) else { panic!("not a pod") };
        assert_eq!((p.metadata.namespace.as_str(), p.spec.node_name.as_str()), ("shop", "node-a"));
    }

    #[test]
    fn what_only_kubectl_reads_is_not_kept() {
        // `kubectl apply` keeps a copy of the whole object in an annotation: held for every
        // object, it would double the model's memory for nothing.
        let o = dynamic(json!({
            "metadata": {
                "name": "catalog", "namespace": "shop", "resourceVersion": "7",
                "annotations": {
                    "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}",
                    "keep": "me"
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {"selector": {"app": "catalog"}, "ports": [{"port": 80}]}
        }));
        let Ok(Object::Service(s)) = convert(watched(Kind::Service), &o) else { panic!("not a service") };
        assert_eq!(s.metadata.annotations.keys().collect::<Vec<_>>(), ["keep"]);
    }

    #[test]
    fn a_version_we_do_not_read_is_rejected_one_we_read_is_not() {
        let at = |api_version: &str| {
            dynamic(json!({
                "apiVersion": api_version, "kind": "AuthorizationPolicy",
                "metadata": {"name": "p", "namespace": "shop"}, "spec": {}
            }))
        };
        assert!(convert(watched(Kind::AuthorizationPolicy), &at("security.istio.io/v1beta1")).is_ok());
        let r = convert(watched(Kind::AuthorizationPolicy), &at("security.istio.io/v1alpha1")).unwrap_err();
        assert_eq!(r.key, ObjectKey::new(Kind::AuthorizationPolicy, "shop", "p"));
        assert!(r.error.to_string().starts_with("apiVersion: "), "{}", r.error);
    }

    #[test]
    fn a_rejected_route_keeps_what_its_status_needs_when_it_can_be_read() {
        let route = |parent_refs: serde_json::Value| {
            dynamic(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "r", "namespace": "shop", "generation": 7},
                "spec": {"parentRefs": parent_refs, "hostnames": ["bad..host"]},
                "status": {"parents": [{"controllerName": "istio.io/gateway-controller", "conditions": []}]}
            }))
        };
        let r = convert(watched(Kind::HttpRoute), &route(json!([{"group": "", "kind": "Service", "name": "web"}])))
            .unwrap_err();
        assert!(r.error.to_string().starts_with("spec.hostnames[0]: "), "{}", r.error);
        let Some(Remains::Route(refused)) = r.remains.as_deref() else { panic!("parents not read") };
        assert_eq!((refused.generation, refused.parent_refs[0].name.as_str()), (7, "web"));
        // The status as read, where our entries' transition times are kept across restarts.
        let status = refused.status_parents.as_ref().expect("status.parents read");
        assert_eq!(status[0]["controllerName"], "istio.io/gateway-controller");
        // Nothing to write a status for.
        let r = convert(watched(Kind::HttpRoute), &route(json!("web"))).unwrap_err();
        assert!(r.remains.is_none() && r.error.to_string().starts_with("spec.parentRefs"), "{}", r.error);
    }

    #[test]
    fn unknown_security_field_is_rejected_by_path_with_a_fail_closed_stand_in() {
        let o = dynamic(json!({
            "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "rules": [{"from": [{"source": {"principal": ["x"]}}]}]}
        }));
        let r = convert(watched(Kind::AuthorizationPolicy), &o).unwrap_err();
        let msg = r.error.to_string();
        assert!(msg.contains("spec.rules[0].from[0].source") && msg.contains("unknown field `principal`"), "{msg}");
        let Some(Remains::StandIn(Object::AuthorizationPolicy(stand_in))) = r.remains.as_deref() else {
            panic!("no stand-in")
        };
        assert_eq!(stand_in.spec.action, crate::k8s::security::PolicyAction::Deny);
        assert_eq!(stand_in.spec.selector.as_ref().unwrap().match_labels["app"], "web");
    }
}
