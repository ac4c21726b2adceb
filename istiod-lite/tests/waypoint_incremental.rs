//! Waypoint resources follow changes incrementally: each delta holds exactly the routes,
//! policies and backend policies that changed, and route status follows what its references
//! resolve to.

use std::path::Path;

use istiod_lite::source::dir::Loader;
use istiod_lite::source::parse_file;
use istiod_lite::{Change, Kind, MeshConfig, Object, ObjectKey, Translator};
use proto::mesh::waypoint::v1::l7_policy::Action;
use proto::{ADDRESS_TYPE_URL, WAYPOINT_BACKEND_TYPE_URL, WAYPOINT_POLICY_TYPE_URL, WAYPOINT_ROUTE_TYPE_URL};

fn loaded() -> Translator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/waypoint-samples");
    let snap = Loader::new(dir).load().unwrap();
    assert!(snap.errors.is_empty());
    let mut t = Translator::new(MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    t
}

fn object(yaml: &str) -> Object {
    let mut p = parse_file(Path::new("change.yaml"), yaml);
    assert!(p.errors.is_empty(), "{:?}", p.errors);
    p.objects.remove(0).object
}

fn names(d: &istiod_lite::ResourceDelta) -> Vec<&str> {
    let mut v: Vec<&str> = d.upserts.iter().map(|(n, _)| n.as_str()).collect();
    v.sort();
    v
}

fn conditions(t: &Translator, kind: Kind, name: &str) -> Vec<(String, bool, String)> {
    t.route_status()[&ObjectKey::new(kind, "bank", name)]
        .iter()
        .flat_map(|p| p.conditions.iter().map(|c| (c.type_.to_owned(), c.status, c.reason.to_owned())))
        .collect()
}

const ROUTE: &str =
    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: extra\n  namespace: bank\nspec:\n";

#[test]
fn a_route_change_yields_exactly_that_route() {
    let mut t = loaded();
    let d = t.apply(Change::Upsert(object(&format!(
        "{ROUTE}  parentRefs: [{{group: \"\", kind: Service, name: accounts}}]\n  rules:\n  - backendRefs: [{{name: accounts-v1, port: 80}}]\n"
    ))));
    assert_eq!(d.types.keys().copied().collect::<Vec<_>>(), [WAYPOINT_ROUTE_TYPE_URL]);
    assert_eq!(names(&d.of(WAYPOINT_ROUTE_TYPE_URL)), ["bank/HTTPRoute/extra"]);
    // The same object again changes nothing.
    let again =
        t.apply(Change::Upsert(Object::HttpRoute(t.model().http_routes[&("bank".into(), "extra".into())].clone())));
    assert!(again.is_empty(), "{again:?}");
    let gone = t.apply(Change::Delete(ObjectKey::new(Kind::HttpRoute, "bank", "extra")));
    assert_eq!(gone.of(WAYPOINT_ROUTE_TYPE_URL).removals, ["bank/HTTPRoute/extra"]);
    assert!(!t.route_status().contains_key(&ObjectKey::new(Kind::HttpRoute, "bank", "extra")));
}

#[test]
fn unresolved_references_show_in_status_and_resolve_when_the_service_appears() {
    let mut t = loaded();
    t.apply(Change::Upsert(object(&format!(
        "{ROUTE}  parentRefs:\n  - {{group: \"\", kind: Service, name: accounts}}\n  - {{group: \"\", kind: Service, name: nope}}\n  \
         - {{name: waypoint}}\n  - {{group: apps, kind: Deployment, name: x}}\n  rules:\n  - backendRefs:\n    \
         - {{name: accounts-v3, port: 80, weight: 5}}\n    - {{name: accounts-v1, port: 80}}\n"
    ))));
    let status = &t.route_status()[&ObjectKey::new(Kind::HttpRoute, "bank", "extra")];
    let accepted: Vec<(&str, bool, &str)> =
        status.iter().map(|p| (p.parent_ref.as_str(), p.conditions[0].status, p.conditions[0].reason)).collect();
    assert_eq!(
        accepted,
        [
            ("Service bank/accounts", true, "Accepted"),
            ("Service bank/nope", false, "NoMatchingParent"),
            ("Gateway bank/waypoint", false, "NotAllowedByListeners"),
            ("Deployment bank/x", false, "InvalidKind"),
        ]
    );
    assert!(status.iter().all(|p| !p.conditions[1].status && p.conditions[1].reason == "BackendNotFound"));
    let r = &t.routes()["bank/HTTPRoute/extra"];
    assert_eq!(r.parents.len(), 1, "only the accepted parent is sent");
    // The missing backend keeps its share with no hostname: the waypoint answers 500 for it.
    let b: Vec<(&str, u32)> = r.rules[0].backends.iter().map(|b| (b.hostname.as_str(), b.weight)).collect();
    assert_eq!(b, [("", 5), ("accounts-v1.bank.svc.cluster.local", 1)]);
    assert!(
        t.warnings().iter().any(|w| w.message.contains("Service bank/accounts-v3 not found")),
        "{:?}",
        t.warnings()
    );

    let d = t.apply(Change::Upsert(object(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: accounts-v3\n  namespace: bank\nspec:\n  clusterIP: 10.96.1.13\n  ports: [{port: 80}]\n",
    )));
    assert_eq!(
        names(&d.of(WAYPOINT_ROUTE_TYPE_URL)),
        ["bank/HTTPRoute/extra"],
        "only the route whose backend resolved"
    );
    assert_eq!(t.routes()["bank/HTTPRoute/extra"].rules[0].backends[0].hostname, "accounts-v3.bank.svc.cluster.local");
    assert!(d.of(ADDRESS_TYPE_URL).upserts.iter().any(|(n, _)| n == "bank/accounts-v3.bank.svc.cluster.local"));
    assert_eq!(conditions(&t, Kind::HttpRoute, "extra")[1], ("ResolvedRefs".into(), true, "ResolvedRefs".into()));
}

const GRANT: &str = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata:\n  name: from-bank\n  namespace: audit\nspec:\n";

#[test]
fn a_backend_in_another_namespace_needs_a_reference_grant_there() {
    let mut t = loaded();
    t.apply(Change::Upsert(object(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: recorder\n  namespace: audit\nspec:\n  clusterIP: 10.96.2.1\n  ports: [{port: 80}]\n",
    )));
    t.apply(Change::Upsert(object(&format!(
        "{ROUTE}  parentRefs: [{{group: \"\", kind: Service, name: accounts}}]\n  rules:\n  \
         - backendRefs: [{{name: recorder, namespace: audit, port: 80}}]\n"
    ))));
    let refused = |t: &Translator| {
        assert_eq!(
            conditions(t, Kind::HttpRoute, "extra")[1],
            ("ResolvedRefs".into(), false, "RefNotPermitted".into())
        );
        assert_eq!(t.routes()["bank/HTTPRoute/extra"].rules[0].backends[0].hostname, "");
    };
    refused(&t);
    assert!(
        t.warnings()
            .iter()
            .any(|w| w.message.contains("no ReferenceGrant in audit lets a HTTPRoute from bank refer to it")),
        "{:?}",
        t.warnings()
    );

    // Grants for another kind, another namespace or another Service do not let it through.
    for (from, to) in [
        ("{group: gateway.networking.k8s.io, kind: GRPCRoute, namespace: bank}", "{group: \"\", kind: Service}"),
        ("{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}", "{group: \"\", kind: Service}"),
        (
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bank}",
            "{group: \"\", kind: Service, name: other}",
        ),
        ("{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bank}", "{group: apps, kind: Service}"),
    ] {
        t.apply(Change::Upsert(object(&format!("{GRANT}  from: [{from}]\n  to: [{to}]\n"))));
        refused(&t);
    }

    // The grant that names this route's kind and namespace and the Service.
    let d = t.apply(Change::Upsert(object(&format!(
        "{GRANT}  from: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bank}}]\n  \
         to: [{{group: \"\", kind: Service, name: recorder}}]\n"
    ))));
    assert_eq!(names(&d.of(WAYPOINT_ROUTE_TYPE_URL)), ["bank/HTTPRoute/extra"], "only the route pointing into audit");
    assert_eq!(t.routes()["bank/HTTPRoute/extra"].rules[0].backends[0].hostname, "recorder.audit.svc.cluster.local");
    assert_eq!(conditions(&t, Kind::HttpRoute, "extra")[1], ("ResolvedRefs".into(), true, "ResolvedRefs".into()));

    // While granted, the route follows the Service: gone is BackendNotFound, back resolves.
    let svc = ObjectKey::new(Kind::Service, "audit", "recorder");
    t.apply(Change::Delete(svc));
    assert_eq!(conditions(&t, Kind::HttpRoute, "extra")[1], ("ResolvedRefs".into(), false, "BackendNotFound".into()));
    t.apply(Change::Upsert(object(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: recorder\n  namespace: audit\nspec:\n  clusterIP: 10.96.2.1\n  ports: [{port: 80}]\n",
    )));
    assert_eq!(conditions(&t, Kind::HttpRoute, "extra")[1], ("ResolvedRefs".into(), true, "ResolvedRefs".into()));

    // Withdrawing the grant refuses the reference again.
    let d = t.apply(Change::Delete(ObjectKey::new(Kind::ReferenceGrant, "audit", "from-bank")));
    assert_eq!(names(&d.of(WAYPOINT_ROUTE_TYPE_URL)), ["bank/HTTPRoute/extra"]);
    refused(&t);
}

#[test]
fn annotations_drive_the_backend_policy() {
    let mut t = loaded();
    let d = t.apply(Change::Upsert(object(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ledger\n  namespace: bank\n  annotations: {waypoint.mesh/load-balancer: random}\n\
         spec:\n  clusterIP: 10.96.1.20\n  selector: {app: ledger}\n  ports:\n  - {name: grpc, port: 9000, targetPort: 9000}\n",
    )));
    assert_eq!(names(&d.of(WAYPOINT_BACKEND_TYPE_URL)), ["ledger.bank.svc.cluster.local"]);
    assert!(d.of(WAYPOINT_POLICY_TYPE_URL).is_empty());
    // Annotations removed: the resource goes.
    let d = t.apply(Change::Upsert(object(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: accounts\n  namespace: bank\nspec:\n  clusterIP: 10.96.1.10\n  \
         selector: {app: accounts}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
    )));
    assert_eq!(d.of(WAYPOINT_BACKEND_TYPE_URL).removals, ["accounts.bank.svc.cluster.local"]);
}

#[test]
fn waypoint_policies_fail_closed_on_what_a_waypoint_cannot_check() {
    let mut t = loaded();
    let ap = |name: &str, action: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: bank\nspec:\n  \
             targetRefs: [{{kind: Service, group: \"\", name: accounts}}]\n  action: {action}\n  rules:\n  \
             - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n    to: [{{operation: {{paths: [/x]}}}}]\n  \
             - to: [{{operation: {{methods: [GET]}}}}]\n    when: [{{key: \"request.auth.claims[group]\", values: [a]}}]\n"
        )
    };
    let d = t.apply(Change::Upsert(object(&ap("jwt-allow", "ALLOW"))));
    assert_eq!(names(&d.of(WAYPOINT_POLICY_TYPE_URL)), ["bank/jwt-allow"]);
    assert!(d.of(proto::AUTHORIZATION_TYPE_URL).is_empty(), "never sent to ztunnel");
    let allow = &t.l7_policies()["bank/jwt-allow"];
    assert_eq!(allow.action, Action::Allow as i32);
    assert!(allow.rules.is_empty(), "ALLOW rules using request authentication are left out: {allow:?}");

    t.apply(Change::Upsert(object(&ap("jwt-deny", "DENY"))));
    let deny = &t.l7_policies()["bank/jwt-deny"];
    assert_eq!(deny.rules.len(), 2, "DENY keeps its rules");
    assert_eq!(deny.rules[0].from, [Default::default()], "an empty source: matches any requester");
    assert_eq!(deny.rules[0].to[0].paths, ["/x"]);
    assert!(deny.rules[1].when.is_empty(), "the unsupported condition is dropped (denies more)");
    let ws: Vec<String> = t.warnings().iter().map(|w| w.to_string()).collect();
    assert!(ws.iter().any(|w| w.contains("jwt-deny") && w.contains("requestPrincipals")), "{ws:?}");
    // A Gateway change recomputes waypoint policies: their warnings are replaced, not piled up.
    let gw = t.model().gateways[&("bank".to_string(), "waypoint".to_string())].clone();
    let mut changed = gw.clone();
    changed.metadata.labels.insert("x".into(), "y".into());
    t.apply(Change::Upsert(Object::Gateway(changed)));
    let again: Vec<String> = t.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(again.iter().filter(|w| w.contains("jwt-deny")).count(), 1, "{again:?}");
}
