//! The directory source: file discovery, document numbering, Gateway API kinds kept as parsed.

mod support;

use istiod_lite::source::dir::Loader;
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use support::TempDir;

const ROUTES: &str = "# routes for the shop\n---\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: catalog\n  namespace: shop\nspec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: catalog\n    port: 80\n  rules:\n  - matches:\n    - path: {type: PathPrefix, value: /v2}\n    backendRefs:\n    - {name: catalog-v2, port: 80}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata:\n  name: pricing\n  namespace: shop\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: pricing}\n  rules:\n  - backendRefs:\n    - {name: pricing, port: 9000}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: broken\n  namespace: shop\nspec:\n  bogus: 1\n";

#[test]
fn routes_are_kept_and_documents_are_numbered_as_written() {
    let dir = TempDir::new("routes");
    let file = dir.write("routes.yml", ROUTES);
    let snap = Loader::new(dir.path()).load().unwrap();
    // The comment-only prologue is not a document; the empty one after it keeps its number.
    assert_eq!(snap.errors.len(), 1);
    assert!(
        snap.errors[0]
            .to_string()
            .starts_with(&format!("{} document 4 (AuthorizationPolicy shop/broken)", file.display()))
    );
    let route = snap
        .objects
        .iter()
        .find_map(|o| match &o.object {
            Object::HttpRoute(r) => Some((o.location.document, r)),
            _ => None,
        })
        .unwrap();
    assert_eq!(route.0, 2);
    assert_eq!(route.1.spec.parent_refs[0].kind.as_deref(), Some("Service"));
    assert_eq!(route.1.spec.parent_refs[0].port, Some(80));
    assert_eq!(route.1.spec.rules.len(), 1);
    assert!(snap.objects.iter().any(|o| o.object.key() == ObjectKey::new(Kind::GrpcRoute, "shop", "pricing")));

    // Routes are not translated yet: they change no resource.
    let mut t = Translator::new(MeshConfig::default());
    let routes: Vec<Object> =
        snap.objects.into_iter().map(|o| o.object).filter(|o| !matches!(o, Object::AuthorizationPolicy(_))).collect();
    assert!(t.apply_all(routes.into_iter().map(Change::Upsert)).is_empty());
    assert_eq!(t.model().http_routes.len(), 1);
    assert_eq!(t.model().grpc_routes.len(), 1);
}

#[test]
fn subdirectories_count_and_hidden_entries_do_not() {
    let dir = TempDir::new("layout");
    std::fs::create_dir_all(dir.path().join("shop")).unwrap();
    std::fs::create_dir_all(dir.path().join("..2026_01_01")).unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\nstatus:\n  podIP: 10.0.0.1\n";
    dir.write("shop/pod.yaml", pod);
    // A mounted ConfigMap keeps its files in a hidden timestamped directory as well.
    dir.write("..2026_01_01/pod.yaml", pod);
    dir.write(".pod.yaml.swp", "garbage: [");
    let snap = Loader::new(dir.path()).load().unwrap();
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(snap.objects.len(), 1);
    assert_eq!(snap.objects[0].object.key(), ObjectKey::new(Kind::Pod, "default", "a"));
}

#[test]
fn a_missing_directory_is_an_error_not_a_panic() {
    let err = Loader::new("/nonexistent/istiod-lite-config").load().unwrap_err();
    assert!(err.to_string().starts_with("cannot read /nonexistent/istiod-lite-config"), "{err}");
}
