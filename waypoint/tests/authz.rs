//! L7 authorization through the waypoint: ALLOW, DENY, AUDIT, and path encodings that must
//! not slip past a DENY.

mod support;

use proto::mesh::waypoint::v1 as pb;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_allow_audit_and_encodings() {
    let w = World::new([3, 1]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    use pb::l7_policy::Action;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_policy_is_nacked_and_the_good_state_stays() {
    let w = World::new([3, 2]).await;
    let a = w.backend("a").await;
    w.service("svc", 1, &[&a]);
    w.until_endpoints("svc", 1).await;
    use pb::l7_policy::Action;
    w.policy(&policy("deny-admin", Action::Deny, vec![to_paths(&["/admin"])]));
    w.settle().await;
    let mut bad = policy("bad", Action::Deny, vec![]);
    bad.rules = vec![pb::PolicyRule {
        when: vec![pb::Condition {
            key: "request.auth.claims[iss]".into(),
            values: vec!["x".into()],
            not_values: vec![],
        }],
        ..Default::default()
    }];
    w.policy(&bad);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let nack = w.xds_server.connections().iter().find_map(|c| {
            c.types.get(proto::WAYPOINT_POLICY_TYPE_URL).and_then(|t| t.last_nack.as_ref()).map(|n| n.message.clone())
        });
        if let Some(msg) = nack {
            assert!(msg.contains("shop/bad") && msg.contains("rules[0].when[0].key"), "{msg}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bad policy is NACKed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut c = w.h1(w.vip(1)).await;
    assert_eq!(c.get("/admin").await.status, 403, "the previous policies still apply");
}
