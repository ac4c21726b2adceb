//! `AuthorizationPolicy` YAML as users write it, through istiod-lite's parsing and translation,
//! into ztunnel's state and its verdicts: what Istio documents about dry-run policies and empty
//! rule parts holds end to end (in memory, as the directory source and xDS would carry it).

mod yaml_mesh;

use std::net::{IpAddr, Ipv4Addr};

use hbone::Identity;
use yaml_mesh::{DB, DB_UID, id, mesh};
use ztunnel::state::{ConnInfo, State, Verdict};

const ALLOW_APP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-app
  namespace: shop
spec:
  selector:
    matchLabels:
      app: db
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/app"]
"#;

/// The verdict on an HBONE connection from `src` to shop/db:5432.
fn verdict(s: &State, src: &Identity) -> Verdict {
    let db = s.workload_by_uid(DB_UID).expect("shop/db is in the state");
    s.authorize(&ConnInfo {
        src_identity: Some(src),
        src_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 9, 9)),
        dst_workload: db,
        dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
        dst_port: 5432,
    })
}

/// shop/db's YAML and one more AuthorizationPolicy selecting it: `try-monitoring`, with these
/// annotations (YAML lines under `annotations:`, or empty) and these rules.
fn with_policy(annotations: &str, rules: &str) -> String {
    let annotations = if annotations.is_empty() { String::new() } else { format!("  annotations:\n{annotations}") };
    format!(
        "{DB}---\n{ALLOW_APP}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: try-monitoring\n  namespace: shop\n{annotations}spec:\n  selector:\n    matchLabels:\n      app: db\n  action: ALLOW\n  rules:\n{rules}"
    )
}

const FROM_MONITORING: &str = "  - from:\n    - source:\n        namespaces: [\"monitoring\"]\n";

#[test]
fn a_dry_run_allow_is_reported_not_enforced() {
    // istio.io/dry-run: the policy is evaluated "without actually enforcing it"
    // (istio.io, authorization dry-run). Enforced, an ALLOW beside another one widens access.
    let m = mesh(&with_policy("    istio.io/dry-run: \"true\"\n", FROM_MONITORING));
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let v = verdict(&m.state, &id("shop", "app"));
    assert!(v.allowed, "the enforced ALLOW still admits shop/app: {v}");
    let v = verdict(&m.state, &id("monitoring", "prometheus"));
    assert!(!v.allowed, "a dry-run ALLOW admitted monitoring/prometheus: {v}");
    let reported: Vec<_> = v.dry_run.iter().map(|d| (d.rule.policy.name.as_str(), d.would_allow)).collect();
    assert_eq!(reported, [("try-monitoring", true)], "the dry-run result is reported");
    // "false" is an ordinary, enforced policy.
    let m = mesh(&with_policy("    istio.io/dry-run: \"false\"\n", FROM_MONITORING));
    assert!(verdict(&m.state, &id("monitoring", "prometheus")).allowed);
}

#[test]
fn a_dry_run_annotation_that_is_not_a_boolean_is_refused_and_fails_closed() {
    let m = mesh(&with_policy("    istio.io/dry-run: \"yes\"\n", FROM_MONITORING));
    assert!(
        m.errors.iter().any(|e| e.contains("metadata.annotations[istio.io/dry-run]") && e.contains("not a boolean")),
        "the error names the annotation: {:?}",
        m.errors
    );
    let v = verdict(&m.state, &id("monitoring", "prometheus"));
    assert!(!v.allowed, "{v}");
}

#[test]
fn empty_rule_parts_are_refused_naming_the_field_and_allow_nobody() {
    // Istio's validation refuses each ("`from` must not be empty", "`from.source` must not be
    // empty", and the same for `to` and `operation`): read as "no restriction", a templated
    // allow-list that rendered empty would admit everyone.
    let cases = [
        ("  - from: []\n", "spec.rules[0].from"),
        ("  - from:\n    - source:\n        principals: []\n", "spec.rules[0].from[0].source"),
        ("  - from:\n    - source: {}\n", "spec.rules[0].from[0].source"),
        ("  - to: []\n", "spec.rules[0].to"),
        ("  - to:\n    - operation:\n        ports: []\n", "spec.rules[0].to[0].operation"),
    ];
    for (rule, field) in cases {
        let m = mesh(&with_policy("", rule));
        assert!(
            m.errors.iter().any(|e| e.contains(field) && e.contains("must not be empty")),
            "{rule:?}: the error names {field}: {:?}",
            m.errors
        );
        let v = verdict(&m.state, &id("attacker", "evil"));
        assert!(!v.allowed, "{rule:?} admitted attacker/evil: {v}");
        let v = verdict(&m.state, &id("shop", "app"));
        assert!(!v.allowed, "{rule:?}: the refused policy's stand-in denies: {v}");
    }
}
