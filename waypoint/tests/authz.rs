//! L7 authorization through the waypoint: ALLOW, DENY, AUDIT, Istio's matching semantics on
//! every field, requests that must not slip past a DENY (path encodings, method case, header
//! bytes, userinfo), and policies the waypoint cannot compile failing closed.

mod support;

use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::mesh::waypoint::v1 as pb;
use support::*;

use pb::l7_policy::Action;

/// A world with service `svc` (VIP 1) backed by one echo backend.
async fn one_service(net: [u8; 2]) -> Arc<World> {
    let w = World::new(net).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    w
}

/// `one_service` with the policy `p` applied.
async fn one_service_with(net: [u8; 2], p: pb::L7Policy) -> Arc<World> {
    let w = one_service(net).await;
    w.policy(&p);
    w.settle().await;
    w
}

/// A rule matching requests to operation `o`.
fn to_op(o: pb::Operation) -> pb::PolicyRule {
    pb::PolicyRule { to: vec![o], ..Default::default() }
}

/// A `when` condition.
fn when(key: &str, values: &[&str], not_values: &[&str]) -> pb::Condition {
    pb::Condition {
        key: key.into(),
        values: values.iter().map(|s| (*s).into()).collect(),
        not_values: not_values.iter().map(|s| (*s).into()).collect(),
    }
}

/// A rule made of `when` conditions only.
fn when_rule(conditions: Vec<pb::Condition>) -> pb::PolicyRule {
    pb::PolicyRule { when: conditions, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_allow_audit_and_encodings() {
    let w = World::new([3, 1]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    w.policy(&policy("deny-admin", Action::Deny, vec![to_paths(&["/admin", "/admin/*"])]));
    w.settle().await;

    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        assert_eq!(c.get("/public").await.status, 200);
        for p in [
            "/admin",
            "/admin/x",
            "//admin/x",
            "/public/../admin/x",
            "/public/%2e%2e/admin/x",
            "/public/%2E%2e/admin",
            "/%61dmin/x",
            "/admin%2Fx",
            "/admin%2fx",
            "/./admin/x",
            "/admin//x",
        ] {
            let r = c.get(p).await;
            assert_eq!(r.status, 403, "{p} must be denied: {r:?}");
            assert_eq!(r.body, "RBAC: access denied");
        }
        // Case matters in paths (as in Istio): /ADMIN is another path.
        assert_eq!(c.get("/ADMIN").await.status, 200);
        // The backend sees the normalized path.
        assert_eq!(c.get("/x/./y/../z").await.seen_path(), "/x/z");
        // Malformed escapes are refused.
        assert_eq!(c.get("/a%zz").await.status, 400);
    }
    let m = w.metrics();
    assert!(m.contains("waypoint_authz_denied_total{policy=\"shop/deny-admin\"}"), "{m}");

    // An ALLOW policy: only GET from namespace frontend with header x-token: ok.
    w.policy(&policy(
        "allow-get",
        Action::Allow,
        vec![pb::PolicyRule {
            from: vec![pb::Source { namespaces: vec!["frontend".into()], ..Default::default() }],
            to: vec![pb::Operation { methods: vec!["GET".into()], ..Default::default() }],
            when: vec![pb::Condition {
                key: "request.headers[x-token]".into(),
                values: vec!["ok".into()],
                not_values: vec![],
            }],
        }],
    ));
    w.policy(&policy("audit-all", Action::Audit, vec![pb::PolicyRule::default()]));
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.send(get("/p").header("x-token", "ok").body(empty()).unwrap()).await.unwrap().status, 200);
    assert_eq!(c.get("/p").await.status, 403, "no token");
    assert_eq!(
        c.send(get("/p").method("POST").header("x-token", "ok").body(empty()).unwrap()).await.unwrap().status,
        403
    );
    assert_eq!(
        c.send(get("/admin").header("x-token", "ok").body(empty()).unwrap()).await.unwrap().status,
        403,
        "DENY wins over ALLOW"
    );

    // An ALLOW for another namespace only: everything from frontend is denied.
    w.remove_policy("shop/allow-get");
    w.policy(&policy(
        "allow-other",
        Action::Allow,
        vec![pb::PolicyRule {
            from: vec![pb::Source { principals: vec!["cluster.local/ns/other/sa/*".into()], ..Default::default() }],
            ..Default::default()
        }],
    ));
    w.settle().await;
    assert_eq!(c.get("/p").await.status, 403);
    w.remove_policy("shop/allow-other");
    w.settle().await;
    assert_eq!(c.get("/p").await.status, 200, "no ALLOW policy left: allowed");
}

/// A policy the waypoint cannot compile (here a condition key it cannot evaluate) is not
/// NACKed, which would drop it and fail open (a DENY gone, or the only ALLOW gone: everything
/// allowed): it becomes a fail-closed stand-in, a DENY denying every request to its targets,
/// an ALLOW matching nothing (`waypoint::authz::Policy::stand_in`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_waypoint_cannot_compile_fails_closed() {
    let w = one_service_with([3, 2], policy("deny-admin", Action::Deny, vec![to_paths(&["/admin"])])).await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/public").await.status, 200);
    let bad_key = || when_rule(vec![when("request.auth.claims[iss]", &["x"], &[])]);
    w.policy(&policy("bad", Action::Deny, vec![bad_key()]));
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/admin").await.status, 403, "the other policies still apply");
    assert_eq!(c.get("/public").await.status, 403, "a DENY that cannot be compiled denies every request");
    let m = w.metrics();
    assert!(m.contains("waypoint_authz_denied_total{policy=\"shop/bad\"}"), "{m}");
    let nacked = w
        .xds_server
        .connections()
        .iter()
        .any(|c| c.types.get(proto::WAYPOINT_POLICY_TYPE_URL).is_some_and(|t| t.last_nack.is_some()));
    assert!(!nacked, "the policy is enforced as a stand-in, not NACKed");

    // An ALLOW that cannot be compiled (a header name that is not one) allows nothing.
    w.remove_policy("shop/bad");
    let bad_header = when_rule(vec![when("request.headers[:authority]", &["svc"], &[])]);
    w.policy(&policy("bad-allow", Action::Allow, vec![bad_header]));
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/public").await.status, 403, "the only ALLOW cannot be compiled: nothing is allowed");
}

/// The condition keys istiod-lite sends to waypoints (`WAYPOINT_WHEN_KEYS`; others are left
/// out there, failing closed) are exactly the ones the waypoint evaluates, and each compiles.
#[test]
fn the_condition_keys_istiod_lite_sends_are_the_ones_the_waypoint_evaluates() {
    use istiod_lite::translate::l7_policy::WAYPOINT_WHEN_KEYS;
    assert_eq!(WAYPOINT_WHEN_KEYS, waypoint::authz::WHEN_KEYS);
    for key in WAYPOINT_WHEN_KEYS {
        let value = match key {
            "source.ip" | "destination.ip" => "10.0.0.0/8",
            "destination.port" => "80",
            _ => "x",
        };
        let p = policy("p", Action::Deny, vec![when_rule(vec![when(key, &[value], &[])])]);
        if let Err(e) = waypoint::authz::Policy::compile(&p) {
            panic!("istiod-lite sends {key:?}, the waypoint cannot compile it: {e}");
        }
    }
}

/// Istio: "Any string field in the rule supports Exact, Prefix, Suffix and Presence match"
/// (istio/api `authorization_policy.proto`, `Rule`), methods included (istiod translates them
/// to a `:method` header matcher): `methods: ["P*"]` covers POST, `methods: ["*"]` any method.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_take_istio_wildcards() {
    let writes = to_op(pb::Operation { methods: vec!["P*".into()], ..Default::default() });
    let w = one_service_with([3, 3], policy("deny-writes", Action::Deny, vec![writes])).await;
    let any_admin = pb::Operation { methods: vec!["*".into()], paths: vec!["/admin".into()], ..Default::default() };
    w.policy(&policy("deny-any-method-admin", Action::Deny, vec![to_op(any_admin)]));
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/public").await.status, 200);
    let post = c.send(get("/x").method("POST").body(full("x")).unwrap()).await.unwrap();
    assert_eq!(post.status, 403, "DENY methods [\"P*\"] must deny POST: {post:?}");
    let admin = c.get("/admin").await;
    assert_eq!(admin.status, 403, "DENY methods [\"*\"] paths [/admin] must deny GET /admin: {admin:?}");
}

/// istio.io "Authorization Policy Normalization" (method): "If the verb in HTTP request is not
/// in upper case, Istio will reject the request with HTTP code 400", so `delete` cannot pass
/// `DENY methods: [DELETE]` to an application that upper-cases it (Django, Werkzeug). On
/// HTTP/1.1 this holds for every request of a connection, not only the first one (the one
/// protocol detection reads); on HTTP/2 any method token reaches the HTTP path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_not_in_upper_case_is_refused() {
    let deny_delete = to_op(pb::Operation { methods: vec!["DELETE".into()], ..Default::default() });
    let w = one_service_with([3, 4], policy("deny-delete", Action::Deny, vec![deny_delete])).await;
    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        assert_eq!(c.get("/").await.status, 200);
        assert_eq!(c.send(get("/x").method("DELETE").body(empty()).unwrap()).await.unwrap().status, 403);
        for m in ["delete", "Delete", "GeT"] {
            let r = c.send(get("/x").method(m).body(empty()).unwrap()).await.unwrap();
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{m} reached the application: {r:?}");
        }
    }
}

/// Istio translates `{**}` to Envoy's URI template `**`, which "matches zero or more path
/// segments" (envoy `uri_template_match.proto`): `DENY /admin/{**}` covers `/admin/`,
/// `/admin/x/` and `/admin/a/b/`, not only paths with one or more non-empty segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_star_template_matches_zero_or_more_segments() {
    let w = one_service_with([3, 5], policy("deny-admin-tree", Action::Deny, vec![to_paths(&["/admin/{**}"])])).await;
    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        assert_eq!(c.get("/public").await.status, 200);
        assert_eq!(c.get("/admin").await.status, 200, "/admin/{{**}} needs the slash after /admin");
        for p in ["/admin/secret", "/admin/", "/admin/secret/", "/admin/a/b/", "/admin/a/b"] {
            let r = c.get(p).await;
            assert_eq!(r.status, 403, "{p} must be denied by /admin/{{**}}: backend saw {:?}", r.seen_path());
        }
    }
}

/// `request.headers[...]` compares the header's value as sent. A value with bytes beyond ASCII
/// (UTF-8 or obs-text, both legal field content, RFC 9110 §5.5) is still a value: it must not
/// count as an absent header, neither to dodge a DENY on `values` nor to satisfy an ALLOW made
/// of `notValues`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_conditions_compare_the_bytes_sent() {
    let deny_admin = when_rule(vec![when("request.headers[x-user]", &["admin*"], &[])]);
    let w = one_service_with([3, 6], policy("deny-admin-user", Action::Deny, vec![deny_admin])).await;
    let utf8 = HeaderValue::from_bytes("adminé".as_bytes()).unwrap();
    for mut c in [w.h1(w.vip(1)).await, w.h2(w.vip(1)).await] {
        assert_eq!(c.send(get("/x").header("x-user", "admin").body(empty()).unwrap()).await.unwrap().status, 403);
        let r = c.send(get("/x").header("x-user", utf8.clone()).body(empty()).unwrap()).await.unwrap();
        assert_eq!(r.status, 403, "DENY x-user=admin* let `adminé` through: {r:?}");
        // Repeated fields are joined with ',' (as Envoy does), none dropped.
        let two = get("/x").header("x-user", HeaderValue::from_bytes(b"\xff").unwrap()).header("x-user", "b");
        let r = c.send(two.header("x-user", "admin").body(empty()).unwrap()).await.unwrap();
        assert_eq!(r.status, 200, "`\\xff,b,admin` does not start with admin: {r:?}");
    }

    let w = one_service_with(
        [3, 7],
        policy(
            "allow-unblocked",
            Action::Allow,
            vec![when_rule(vec![when("request.headers[x-user]", &[], &["blocked*"])])],
        ),
    )
    .await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.send(get("/x").header("x-user", "ok").body(empty()).unwrap()).await.unwrap().status, 200);
    assert_eq!(c.send(get("/x").header("x-user", "blocked").body(empty()).unwrap()).await.unwrap().status, 403);
    let blocked = HeaderValue::from_bytes(b"blocked\xff").unwrap();
    let r = c.send(get("/x").header("x-user", blocked).body(empty()).unwrap()).await.unwrap();
    assert_eq!(r.status, 403, "ALLOW notValues [blocked*] allowed `blocked\\xff`: {r:?}");
}

/// `destination.ip` (Istio's condition key, sent by istiod-lite) is the address the client
/// connected to: the CONNECT's target, here the service VIP 10.3.8.1. A DENY using it denies;
/// an ALLOW using it allows only what it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_ip_conditions_match_the_connect_target() {
    let admin_to = |cidr: &str| pb::PolicyRule {
        to: vec![pb::Operation { paths: vec!["/admin".into()], ..Default::default() }],
        when: vec![when("destination.ip", &[cidr], &[])],
        ..Default::default()
    };
    let w = one_service_with([3, 8], policy("deny-admin-to-vips", Action::Deny, vec![admin_to("10.3.8.0/24")])).await;
    w.policy(&policy("deny-admin-elsewhere", Action::Deny, vec![admin_to("10.3.9.1")]));
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/public").await.status, 200);
    assert_eq!(c.get("/admin").await.status, 403, "DENY when destination.ip in 10.3.8.0/24");
    let m = w.metrics();
    assert!(m.contains("waypoint_authz_denied_total{policy=\"shop/deny-admin-to-vips\"}"), "{m}");
    assert!(!m.contains("shop/deny-admin-elsewhere"), "10.3.9.1 is not the destination: {m}");

    let public_to = |cidr: &str| pb::PolicyRule {
        to: vec![pb::Operation { paths: vec!["/public".into()], ..Default::default() }],
        when: vec![when("destination.ip", &[cidr], &[])],
        ..Default::default()
    };
    let w = one_service_with([3, 9], policy("allow-public-only", Action::Allow, vec![public_to("10.3.9.1")])).await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/public").await.status, 200);
    assert_eq!(c.get("/private").await.status, 403, "the only ALLOW names /public");
    w.policy(&policy("allow-public-only", Action::Allow, vec![public_to("10.3.10.0/24")]));
    w.settle().await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/public").await.status, 403, "another destination.ip: not allowed");
}

/// RFC 9110 §4.2.4: a sender MUST NOT generate userinfo in a target URI, and a recipient SHOULD
/// treat it as an error; RFC 9113 §8.3.1: `:authority` MUST NOT include it. Accepted, a host
/// policy would compare `u@admin.example` (no match for `DENY hosts [admin.example]`) while
/// the application reads `admin.example`: the waypoint answers 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_in_the_authority_is_refused() {
    let deny_host = to_op(pb::Operation { hosts: vec!["admin.example".into()], ..Default::default() });
    let w = one_service_with([3, 10], policy("deny-admin-host", Action::Deny, vec![deny_host])).await;
    // HTTP/1.1, absolute form.
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.send(get("http://admin.example/x").body(empty()).unwrap()).await.unwrap().status, 403);
    let r = c.send(get("http://u@admin.example/x").body(empty()).unwrap()).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "the application saw host {:?}", r.seen_header("host"));
    // HTTP/1.1, a Host that is not a valid authority (bytes beyond ASCII).
    let mut bad_host = get("/x").body(empty()).unwrap();
    bad_host.headers_mut().insert("host", HeaderValue::from_bytes("admin.example\u{e9}".as_bytes()).unwrap());
    let r = c.send(bad_host).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "the application saw host {:?}", r.seen_header("host"));
    // HTTP/2 `:authority`.
    let io = w.tunnel(w.vip(1)).await;
    let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    let _t = Task(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let req = Request::builder().uri("http://admin.example/x").body(empty()).unwrap();
    assert_eq!(s.send_request(req).await.unwrap().status(), 403);
    let req = Request::builder().uri("http://u@admin.example/x").body(empty()).unwrap();
    assert_eq!(s.send_request(req).await.unwrap().status(), StatusCode::BAD_REQUEST);
}

/// The value of the unlabelled gauge `name` in a Prometheus text exposition.
fn gauge(metrics: &str, name: &str) -> Option<i64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// How many policies run as fail-closed stand-ins is on the metrics endpoint, and follows
/// every published state: a stand-in denies (or fails to allow) what its policy never meant
/// to, so an operator must be able to see and alert on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_running_as_stand_ins_are_counted() {
    let w = one_service([3, 11]).await;
    w.policy(&policy("p", Action::Deny, vec![to_paths(&["/admin"])]));
    w.settle().await;
    assert_eq!(gauge(&w.metrics(), "waypoint_policies_stand_in"), Some(0), "{}", w.metrics());
    let bad_key = when_rule(vec![when("request.auth.claims[iss]", &["x"], &[])]);
    w.policy(&policy("p", Action::Deny, vec![bad_key]));
    w.settle().await;
    assert_eq!(gauge(&w.metrics(), "waypoint_policies_stand_in"), Some(1), "{}", w.metrics());
    w.policy(&policy("p", Action::Deny, vec![to_paths(&["/admin"])]));
    w.settle().await;
    assert_eq!(gauge(&w.metrics(), "waypoint_policies_stand_in"), Some(0), "{}", w.metrics());
}

/// A policy with a target of no kind (one this waypoint does not know, sent by a newer
/// control plane, say) is not NACKed: a NACK keeps the previous state, so every other policy
/// of the push (here a new DENY) would never apply. It is placed failing closed instead: it
/// may have targeted anything, so an ALLOW allows nothing anywhere, and a DENY denies what it
/// names everywhere; its target-less part opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_a_kind_fails_closed_and_the_rest_of_the_push_applies() {
    let allow_some = policy("allow-some", Action::Allow, vec![to_paths(&["/public", "/admin", "/secret"])]);
    let w = one_service_with([3, 12], allow_some).await;
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/admin").await.status, 200);
    assert_eq!(c.get("/private").await.status, 403);

    let deny_admin = policy("deny-admin", Action::Deny, vec![to_paths(&["/admin"])]);
    let kindless = pb::Target { kind: None };
    let mut allow_all = policy("allow-all", Action::Allow, vec![pb::PolicyRule::default()]);
    allow_all.targets = vec![kindless.clone()];
    let mut deny_secret = policy("deny-secret", Action::Deny, vec![to_paths(&["/secret"])]);
    deny_secret.targets = vec![pb::Target { kind: Some(pb::target::Kind::Service(host("other"))) }, kindless];
    let url = proto::WAYPOINT_POLICY_TYPE_URL;
    w.xds.update(
        url,
        [deny_admin, allow_all, deny_secret].map(|p| (format!("{}/{}", p.namespace, p.name), any(url, &p))),
        [],
    );
    w.settle().await;
    let nacked = w.xds_server.connections().iter().any(|c| c.types.get(url).is_some_and(|t| t.last_nack.is_some()));
    assert!(!nacked, "the push is applied, not NACKed");

    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/admin").await.status, 403, "the other policies of the push apply");
    assert_eq!(c.get("/private").await.status, 403, "an ALLOW with a target of no kind allows nothing");
    assert_eq!(c.get("/secret").await.status, 403, "a DENY with a target of no kind denies what it names");
    assert_eq!(c.get("/public").await.status, 200, "and nothing else");
    assert_eq!(gauge(&w.metrics(), "waypoint_policies_stand_in"), Some(2), "{}", w.metrics());
}
