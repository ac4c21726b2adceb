//! Every kind of bad input is reported with file, document, object and field, and the good
//! documents around it still apply.

mod support;

use istiod_lite::source::dir::Loader;
use istiod_lite::{Kind, ObjectKey};
use support::TempDir;

const GOOD_BEFORE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
const GOOD_AFTER: &str =
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\nstatus:\n  podIP: 10.0.0.1\n";

const AP: &str =
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ap\n  namespace: shop\n";
const PA: &str =
    "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: pa\n  namespace: shop\n";

/// (case, bad document, object label expected in the message or "", message fragments)
fn cases() -> Vec<(&'static str, String, &'static str, Vec<&'static str>)> {
    let ap = |spec: &str| format!("{AP}spec:\n{spec}");
    let pa = |spec: &str| format!("{PA}spec:\n{spec}");
    vec![
        ("yaml syntax", "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n".into(), "", vec!["not valid YAML"]),
        ("not a mapping", "- a\n- b\n".into(), "", vec!["(document): not a YAML mapping"]),
        ("no apiVersion", "kind: Pod\nmetadata:\n  name: x\n".into(), "", vec!["apiVersion: required"]),
        ("no kind", "apiVersion: v1\nmetadata:\n  name: x\n".into(), "", vec!["kind: required"]),
        ("no name", "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\n".into(), "(Service shop/)", vec!["metadata.name: required"]),
        (
            "unsupported security kind",
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n".into(),
            "",
            vec!["security.istio.io/v1 RequestAuthentication is not supported"],
        ),
        (
            "unsupported api version",
            "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: old\n".into(),
            "",
            vec!["security.istio.io/v1alpha1 AuthorizationPolicy is not supported"],
        ),
        (
            "unknown top-level field",
            format!("{AP}specs:\n  action: DENY\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["unknown field `specs`"],
        ),
        (
            "unknown source field",
            ap("  rules:\n  - from:\n    - source:\n        principal: [x]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].from[0].source", "unknown field `principal`"],
        ),
        (
            "matchExpressions",
            ap("  selector:\n    matchExpressions: [{key: app, operator: In, values: [a]}]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.selector", "unknown field `matchExpressions`"],
        ),
        (
            "bad action",
            ap("  action: REJECT\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.action", "unknown variant `REJECT`"],
        ),
        (
            "bad port",
            ap("  rules:\n  - to:\n    - operation:\n        ports: [\"80\", \"http\"]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].to[0].operation.ports[1]: \"http\" is not a port"],
        ),
        (
            "port out of range",
            ap("  rules:\n  - to:\n    - operation:\n        notPorts: [70000]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].to[0].operation.notPorts[0]: \"70000\" is not a port"],
        ),
        // Istio's CheckValidPathTemplate: `{**}` is the last operator, `{*}`/`{**}` are whole
        // segments, no other braces; a template Envoy could not read must not become a
        // literal that never matches (a DENY that denies nothing).
        (
            "path template operator after {**}",
            ap("  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/a, \"/admin/{**}/{*}\"]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].to[0].operation.paths[1]: invalid path template", "{**} is not the last operator"],
        ),
        (
            "path template operator inside a segment",
            ap("  rules:\n  - to:\n    - operation:\n        notPaths: [\"/files/{*}.txt\"]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].to[0].operation.notPaths[0]: invalid path template", "\"{*}.txt\""],
        ),
        (
            "bad ip block",
            ap("  action: DENY\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/33]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].from[0].source.ipBlocks[0]: \"10.0.0.0/33\" is not an IP address or CIDR"],
        ),
        (
            "unknown when key",
            ap("  rules:\n  - when:\n    - key: source.ipaddr\n      values: [1.2.3.4]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].when[0].key: unknown attribute \"source.ipaddr\""],
        ),
        (
            "when without values",
            ap("  rules:\n  - when:\n    - key: source.ip\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].when[0]: needs values or notValues"],
        ),
        (
            "bad when port",
            ap("  rules:\n  - when:\n    - key: destination.port\n      notValues: [\"x\"]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].when[0].notValues[0]"],
        ),
        (
            "selector and targetRefs",
            ap("  selector:\n    matchLabels: {app: a}\n  targetRefs:\n  - kind: Service\n    group: \"\"\n    name: a\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.selector: cannot be used together with spec.targetRefs"],
        ),
        (
            "custom without provider",
            ap("  action: CUSTOM\n  rules: [{}]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.provider: required when action is CUSTOM"],
        ),
        (
            "empty principal",
            ap("  rules:\n  - from:\n    - source:\n        principals: [\"\"]\n"),
            "(AuthorizationPolicy shop/ap)",
            vec!["spec.rules[0].from[0].source.principals[0]: empty value"],
        ),
        (
            "bad mtls mode",
            pa("  mtls:\n    mode: STRICTER\n"),
            "(PeerAuthentication shop/pa)",
            vec!["spec.mtls.mode", "unknown variant `STRICTER`"],
        ),
        (
            "unknown peer authentication field",
            pa("  mtls:\n    mode: STRICT\n    strict: true\n"),
            "(PeerAuthentication shop/pa)",
            vec!["spec.mtls", "unknown field `strict`"],
        ),
        (
            "port level without selector",
            pa("  portLevelMtls:\n    8080:\n      mode: PERMISSIVE\n"),
            "(PeerAuthentication shop/pa)",
            vec!["spec.portLevelMtls: requires a spec.selector with matchLabels"],
        ),
        (
            "port level bad port",
            pa("  selector:\n    matchLabels: {app: a}\n  portLevelMtls:\n    http:\n      mode: PERMISSIVE\n"),
            "(PeerAuthentication shop/pa)",
            vec!["spec.portLevelMtls[http]: key is not a port"],
        ),
        (
            "bad pod ip",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\nstatus:\n  podIP: 10.0.0.300\n".into(),
            "(Pod shop/p)",
            vec!["status.podIP: \"10.0.0.300\" is not an IP address"],
        ),
        (
            "bad pod ips",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\nstatus:\n  podIPs:\n  - ip: nope\n".into(),
            "(Pod shop/p)",
            vec!["status.podIPs[0].ip: \"nope\" is not an IP address"],
        ),
        (
            "bad cluster ip",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\nspec:\n  clusterIPs: [10.96.0.1, fd00::zz]\n".into(),
            "(Service shop/s)",
            vec!["spec.clusterIPs[1]: \"fd00::zz\" is not an IP address"],
        ),
        (
            "wrong type in a core kind",
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: shop\nspec:\n  nodeName: [a, b]\n".into(),
            "(Pod shop/p)",
            vec!["spec.nodeName"],
        ),
        (
            "bad service port",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  namespace: shop\nspec:\n  ports:\n  - port: 99999\n".into(),
            "(Service shop/s)",
            vec!["spec.ports[0].port"],
        ),
        (
            "gateway without class",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\n  namespace: shop\nspec:\n  listeners: []\n".into(),
            "(Gateway shop/g)",
            vec!["spec", "missing field `gatewayClassName`"],
        ),
    ]
}

#[test]
fn each_bad_document_is_reported_and_the_rest_applies() {
    for (case, bad, object, fragments) in cases() {
        let dir = TempDir::new("bad-input");
        let file = dir.write("mixed.yaml", &format!("{GOOD_BEFORE}---\n{bad}---\n{GOOD_AFTER}"));
        let snap = Loader::new(dir.path()).load().unwrap();
        assert_eq!(snap.errors.len(), 1, "{case}: {:?}", snap.errors);
        let msg = snap.errors[0].to_string();
        println!("{case}: {msg}");
        let location = format!("{} document 2", file.display());
        assert!(msg.starts_with(&location), "{case}: {msg}");
        assert!(msg.contains(object), "{case}: {msg} lacks {object}");
        for f in fragments {
            assert!(msg.contains(f), "{case}: {msg:?} lacks {f:?}");
        }
        let keys: Vec<ObjectKey> = snap.objects.iter().map(|o| o.object.key()).collect();
        let mut expected = vec![ObjectKey::new(Kind::Namespace, "", "shop"), ObjectKey::new(Kind::Pod, "shop", "web")];
        // A rejected security object is enforced as its fail-closed stand-in.
        if object == "(AuthorizationPolicy shop/ap)" {
            expected.push(ObjectKey::new(Kind::AuthorizationPolicy, "shop", "ap"));
        }
        if object == "(PeerAuthentication shop/pa)" {
            expected.push(ObjectKey::new(Kind::PeerAuthentication, "shop", "pa"));
        }
        assert_eq!(keys, expected, "{case}: the good documents apply");
    }
}

#[test]
fn duplicates_are_reported_and_the_first_wins() {
    let dir = TempDir::new("dup");
    let a = dir.write("a.yaml", GOOD_AFTER);
    let b = dir
        .write("b.yaml", &format!("# comment\n---\n{GOOD_BEFORE}---\n{}", GOOD_AFTER.replace("10.0.0.1", "10.0.0.2")));
    let snap = Loader::new(dir.path()).load().unwrap();
    assert_eq!(snap.errors.len(), 1);
    let msg = snap.errors[0].to_string();
    assert_eq!(
        msg,
        format!(
            "{} document 2 (Pod shop/web): duplicate object: already defined in {} document 1",
            b.display(),
            a.display()
        )
    );
    assert_eq!(snap.objects.len(), 2);
}

#[test]
fn unknown_core_kinds_and_fields_are_ignored() {
    let dir = TempDir::new("ignored");
    dir.write(
        "app.yml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  uid: abc\n  annotations: {a: b}\nspec:\n  \
         dnsPolicy: ClusterFirst\n  containers:\n  - name: c\n    image: x\nstatus:\n  podIP: 10.0.0.1\n  hostIP: 10.1.1.1\n",
    );
    dir.write("notes.txt", "not yaml: [");
    let snap = Loader::new(dir.path()).load().unwrap();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(snap.ignored, ["Deployment web"]);
    assert_eq!(snap.objects.len(), 1);
    assert_eq!(snap.objects[0].object.key(), ObjectKey::new(Kind::Pod, "default", "web"));
}

#[test]
fn a_never_valid_security_object_fails_closed() {
    use istiod_lite::{MeshConfig, Translator};
    use proto::istio::security::{Action, Group, Scope};
    let dir = TempDir::new("fail-closed");
    dir.write(
        "p.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {app: web}\nstatus:\n  podIP: 10.0.0.1\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: db\n  namespace: shop\n  labels: {app: db}\nstatus:\n  podIP: 10.0.0.2\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: web-only\n  namespace: shop\nspec:\n  \
         selector:\n    matchLabels: {app: web}\n  rules:\n  - to:\n    - operation:\n        ports: [\"web\"]\n---\n\
         apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: shop\nspec:\n  mtls:\n    mode: strict\n",
    );
    let snap = Loader::new(dir.path()).load().unwrap();
    assert_eq!(snap.errors.len(), 2, "{:?}", snap.errors);
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    // The broken ALLOW becomes a DENY of everything, for the workloads it selected only.
    let a = &t.authorizations()["shop/web-only"];
    assert_eq!(a.action, Action::Deny as i32);
    assert_eq!(a.scope, Scope::WorkloadSelector as i32);
    assert_eq!(a.groups, vec![Group { rules: vec![] }]);
    let policies = |uid: &str| match &t.addresses()[uid].r#type {
        Some(proto::istio::workload::address::Type::Workload(w)) => w.authorization_policies.clone(),
        _ => panic!("not a workload"),
    };
    // The broken PeerAuthentication (lowercase mode) is enforced as STRICT.
    assert_eq!(policies("Kubernetes//Pod/shop/web"), ["shop/web-only", "istio-system/istio_converted_static_strict"]);
    assert_eq!(policies("Kubernetes//Pod/shop/db"), ["istio-system/istio_converted_static_strict"]);
}

/// One loader across reloads (as the watcher uses it): clean files are reused from their last
/// parse, but only while their bytes are the same, and a bad file is reported on every load.
#[test]
fn a_reused_loader_sees_every_edit_and_keeps_reporting_bad_files() {
    let dir = TempDir::new("loader-reuse");
    dir.write("a.yaml", GOOD_BEFORE);
    dir.write("b.yaml", GOOD_AFTER);
    let mut loader = Loader::new(dir.path());
    let pod_ip = |snap: &istiod_lite::source::dir::Snapshot| {
        snap.objects.iter().find(|o| o.object.key().kind == Kind::Pod).map(|o| format!("{:?}", o.object))
    };
    let first = loader.load().unwrap();
    assert_eq!(first.objects.len(), 2);
    assert!(pod_ip(&first).unwrap().contains("10.0.0.1"));
    // Same length, other bytes: a size-and-time check could miss it, the loader must not.
    dir.write("b.yaml", &GOOD_AFTER.replace("10.0.0.1", "10.0.0.2"));
    let second = loader.load().unwrap();
    assert!(pod_ip(&second).unwrap().contains("10.0.0.2"), "{:?}", pod_ip(&second));
    assert_eq!(second.objects.len(), 2);
    // A bad file: reported now and on the next load too, never served from a stale parse.
    dir.write("b.yaml", "apiVersion: v1\nkind: Pod\nmetadata: [not, a, map]\n");
    for _ in 0..2 {
        let snap = loader.load().unwrap();
        assert_eq!(snap.errors.len(), 1, "{:?}", snap.errors);
        assert!(pod_ip(&snap).is_none());
    }
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let gone = loader.load().unwrap();
    assert_eq!(gone.objects.len(), 1);
    assert!(gone.errors.is_empty());
}
