//! Istio's L4 `AuthorizationPolicy` semantics at ztunnel, end to end: YAML as users write it,
//! istiod-lite's parsing and translation, ztunnel's conversion and verdicts (in memory). What
//! ztunnel cannot see (HTTP attributes, remote IPs, SNI) must make an ALLOW rule match nothing
//! and a DENY rule match regardless of it; CUSTOM fails closed; AUDIT and `targetRefs` policies
//! never change ztunnel's decision; scopes and plaintext follow Istio.

mod yaml_mesh;

use std::net::IpAddr;

use hbone::Identity;
use yaml_mesh::{DB, DB_UID, id};
use ztunnel::state::{ConnInfo, State, Verdict};

/// The state istiod-lite gives ztunnel for shop/db plus `policies` (YAML documents).
fn mesh(policies: &str) -> State {
    yaml_mesh::mesh(&format!("{DB}---\n{policies}")).state
}

/// A policy `p` in `ns` with this spec (YAML lines indented by two).
fn policy(ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: {ns}\nspec:\n{spec}"
    )
}

/// The verdict on a connection to shop/db:5432 from `src` (plaintext when `None`) at `src_ip`.
fn verdict(s: &State, src: Option<&Identity>, src_ip: &str, port: u16) -> Verdict {
    let db = s.workload_by_uid(DB_UID).expect("shop/db is in the state");
    s.authorize(&ConnInfo {
        src_identity: src,
        src_ip: src_ip.parse::<IpAddr>().unwrap(),
        dst_workload: db,
        dst_ip: "10.0.0.5".parse().unwrap(),
        dst_port: port,
    })
}

fn allowed(s: &State, src: &Identity) -> bool {
    verdict(s, Some(src), "10.0.9.9", 5432).allowed
}

/// The L7 attributes ztunnel cannot check, as a `from.source` field, a `to.operation` field or a
/// `when` key.
const L7: [(&str, &str); 13] = [
    ("to", "hosts: [\"db.shop\"]"),
    ("to", "notHosts: [\"db.shop\"]"),
    ("to", "methods: [\"GET\"]"),
    ("to", "notMethods: [\"GET\"]"),
    ("to", "paths: [\"/admin\"]"),
    ("to", "notPaths: [\"/admin\"]"),
    ("from", "requestPrincipals: [\"*\"]"),
    ("from", "notRequestPrincipals: [\"*\"]"),
    ("from", "remoteIpBlocks: [\"10.0.9.9\"]"),
    ("from", "notRemoteIpBlocks: [\"10.0.9.9\"]"),
    ("when", "request.headers[x-user]"),
    ("when", "remote.ip"),
    ("when", "connection.sni"),
];

/// One rule: `principals: [cluster.local/ns/shop/sa/app]` and the L7 attribute.
fn rule_with_l7(part: &str, field: &str) -> String {
    let from = "  - from:\n    - source:\n        principals: [\"cluster.local/ns/shop/sa/app\"]\n";
    match part {
        "to" => format!("{from}    to:\n    - operation:\n        {field}\n"),
        // In the same source: a source of its own would be an alternative matching anyone.
        "from" => format!("{from}        {field}\n"),
        _ => {
            let value = if field == "remote.ip" { "10.0.9.9" } else { "db.shop" };
            format!("{from}    when:\n    - key: {field}\n      values: [\"{value}\"]\n")
        }
    }
}

#[test]
fn an_allow_rule_with_an_l7_attribute_matches_nothing() {
    for (part, field) in L7 {
        // A second rule ztunnel can check still allows what it names.
        let spec = format!(
            "  action: ALLOW\n  rules:\n{}  - from:\n    - source:\n        namespaces: [\"monitoring\"]\n",
            rule_with_l7(part, field)
        );
        let s = mesh(&policy("shop", &spec));
        assert!(!allowed(&s, &id("shop", "app")), "{part} {field}: the L7 rule allowed shop/app");
        assert!(allowed(&s, &id("monitoring", "prom")), "{part} {field}: the L4 rule still applies");
    }
}

#[test]
fn a_deny_rule_with_an_l7_attribute_applies_without_it() {
    for (part, field) in L7 {
        let spec = format!("  action: DENY\n  rules:\n{}", rule_with_l7(part, field));
        let s = mesh(&policy("shop", &spec));
        assert!(!allowed(&s, &id("shop", "app")), "{part} {field}: the DENY did not apply to shop/app");
        assert!(allowed(&s, &id("shop", "other")), "{part} {field}: the rest of the rule still holds");
    }
    // A DENY whose only condition is L7 denies everyone (more restrictive, never less).
    let s =
        mesh(&policy("shop", "  action: DENY\n  rules:\n  - to:\n    - operation:\n        methods: [\"DELETE\"]\n"));
    assert!(!allowed(&s, &id("shop", "app")));
    assert!(!verdict(&s, None, "192.0.2.1", 5432).allowed);
}

#[test]
fn custom_fails_closed_and_audit_and_target_refs_change_nothing() {
    // CUSTOM: ztunnel cannot ask the authorizer, so it refuses what the authorizer might.
    let custom = "  action: CUSTOM\n  provider:\n    name: ext-authz\n  rules:\n  - to:\n    - operation:\n        paths: [\"/admin/*\"]\n";
    let s = mesh(&policy("shop", custom));
    assert!(!allowed(&s, &id("shop", "app")));
    let custom_ns = "  action: CUSTOM\n  provider:\n    name: ext-authz\n  rules:\n  - from:\n    - source:\n        namespaces: [\"untrusted\"]\n";
    let s = mesh(&policy("shop", custom_ns));
    assert!(!allowed(&s, &id("untrusted", "x")));
    assert!(allowed(&s, &id("shop", "app")), "what its rules cannot match is not refused");

    // AUDIT only logs, even when it matches everything.
    let s = mesh(&policy("shop", "  action: AUDIT\n  rules:\n  - {}\n"));
    assert!(allowed(&s, &id("shop", "app")));
    assert!(verdict(&s, None, "192.0.2.1", 5432).allowed);

    // targetRefs bind the policy to a waypoint; ztunnel does not enforce it.
    for target in [
        "    - kind: Service\n      group: \"\"\n      name: db\n",
        "    - kind: Gateway\n      group: gateway.networking.k8s.io\n      name: waypoint\n",
    ] {
        let s = mesh(&policy("shop", &format!("  targetRefs:\n{target}  action: DENY\n  rules:\n  - {{}}\n")));
        assert!(allowed(&s, &id("shop", "app")), "{target}");
        let s = mesh(&policy(
            "shop",
            &format!(
                "  targetRefs:\n{target}  action: ALLOW\n  rules:\n  - from:\n    - source:\n        namespaces: [\"x\"]\n"
            ),
        ));
        assert!(
            allowed(&s, &id("shop", "app")),
            "a waypoint's ALLOW does not make ALLOW required at ztunnel: {target}"
        );
    }
}

#[test]
fn scopes_root_namespace_namespace_and_selector() {
    let deny_all = "  action: DENY\n  rules:\n  - {}\n";
    // Root namespace without a selector: every workload.
    assert!(!allowed(&mesh(&policy("istio-system", deny_all)), &id("shop", "app")));
    // Root namespace with a selector: workloads with those labels, in any namespace.
    let selected = |labels: &str| format!("  selector:\n    matchLabels:\n      {labels}\n{deny_all}");
    assert!(!allowed(&mesh(&policy("istio-system", &selected("app: db"))), &id("shop", "app")));
    assert!(allowed(&mesh(&policy("istio-system", &selected("app: web"))), &id("shop", "app")));
    // Another namespace: not this workload's.
    assert!(allowed(&mesh(&policy("other", deny_all)), &id("shop", "app")));
    assert!(allowed(&mesh(&policy("other", &selected("app: db"))), &id("shop", "app")));
    // Its own namespace, with and without a matching selector.
    assert!(!allowed(&mesh(&policy("shop", deny_all)), &id("shop", "app")));
    assert!(!allowed(&mesh(&policy("shop", &selected("app: db"))), &id("shop", "app")));
    assert!(allowed(&mesh(&policy("shop", &selected("app: web"))), &id("shop", "app")));
}

#[test]
fn empty_rules_and_rule_combination() {
    // ALLOW without rules allows nothing; with `- {}` everything.
    assert!(!allowed(&mesh(&policy("shop", "  action: ALLOW\n")), &id("shop", "app")));
    assert!(!allowed(&mesh(&policy("shop", "  {}\n")), &id("shop", "app")), "spec: {{}} is allow-nothing");
    assert!(allowed(&mesh(&policy("shop", "  action: ALLOW\n  rules:\n  - {}\n")), &id("shop", "app")));
    assert!(!allowed(&mesh(&policy("shop", "  action: ALLOW\n  rules: []\n")), &id("shop", "app")));
    // An ALLOW whose only rule needs HTTP allows nothing (Istio: ztunnel denies the connection).
    let get_only = "  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        methods: [\"GET\"]\n";
    assert!(!allowed(&mesh(&policy("shop", get_only)), &id("shop", "app")));
    // DENY without rules denies nothing; with `- {}` everything.
    assert!(allowed(&mesh(&policy("shop", "  action: DENY\n  rules: []\n")), &id("shop", "app")));
    assert!(allowed(&mesh(&policy("shop", "  action: DENY\n")), &id("shop", "app")));
    assert!(!allowed(&mesh(&policy("shop", "  action: DENY\n  rules:\n  - {}\n")), &id("shop", "app")));

    // `from` entries OR, fields of one entry AND; `to` likewise; `when` ANDed, values ORed.
    let spec = r#"  action: ALLOW
  rules:
  - from:
    - source:
        namespaces: ["shop"]
        notPrincipals: ["cluster.local/ns/shop/sa/evil"]
    - source:
        principals: ["*/sa/prom"]
    to:
    - operation:
        ports: ["5432"]
    - operation:
        ports: ["9090"]
        notPorts: ["9090"]
    when:
    - key: source.ip
      values: ["10.0.9.0/24", "10.0.8.1"]
    - key: destination.port
      notValues: ["6000"]
"#;
    let s = mesh(&policy("shop", spec));
    let v = |src: &Identity, ip: &str, port: u16| verdict(&s, Some(src), ip, port).allowed;
    assert!(v(&id("shop", "app"), "10.0.9.9", 5432));
    assert!(v(&id("shop", "app"), "10.0.8.1", 5432), "when values OR");
    assert!(!v(&id("shop", "app"), "10.0.8.2", 5432), "when must hold");
    assert!(!v(&id("shop", "evil"), "10.0.9.9", 5432), "fields of one source AND");
    assert!(v(&id("monitoring", "prom"), "10.0.9.9", 5432), "sources OR; *suffix");
    assert!(!v(&id("shop", "app"), "10.0.9.9", 9090), "ports and notPorts of one operation AND");
    assert!(!v(&id("shop", "app"), "10.0.9.9", 6000), "notValues");
}

#[test]
fn plaintext_has_no_identity() {
    let plain = |s: &State| verdict(s, None, "192.0.2.1", 5432).allowed;
    let mtls = |s: &State| verdict(s, Some(&id("shop", "app")), "192.0.2.1", 5432).allowed;
    let from = |action: &str, field: &str| {
        mesh(&policy("shop", &format!("  action: {action}\n  rules:\n  - from:\n    - source:\n        {field}\n")))
    };
    // An ALLOW on identity never matches plaintext.
    for f in ["principals: [\"*\"]", "namespaces: [\"*\"]", "serviceAccounts: [\"app\"]"] {
        let s = from("ALLOW", f);
        assert!(!plain(&s), "ALLOW {f} matched plaintext");
        assert!(mtls(&s), "ALLOW {f}");
    }
    // A DENY on a negated identity field matches plaintext: no identity is not one of those.
    for f in ["notPrincipals: [\"*\"]", "notNamespaces: [\"shop\"]", "notServiceAccounts: [\"app\"]"] {
        let s = from("DENY", f);
        assert!(!plain(&s), "DENY {f} did not match plaintext");
        assert!(mtls(&s), "DENY {f}");
    }
    // `when` on identity keys likewise.
    let s = mesh(&policy(
        "shop",
        "  action: DENY\n  rules:\n  - when:\n    - key: source.principal\n      notValues: [\"*\"]\n",
    ));
    assert!(!plain(&s));
    assert!(mtls(&s));
}

#[test]
fn ip_blocks_single_addresses_v6_and_v4_mapped() {
    let deny = |blocks: &str| {
        mesh(&policy(
            "shop",
            &format!("  action: DENY\n  rules:\n  - from:\n    - source:\n        ipBlocks: [{blocks}]\n"),
        ))
    };
    let denied = |s: &State, ip: &str| !verdict(s, None, ip, 5432).allowed;
    let s = deny("\"192.0.2.7\", \"2001:db8::/32\"");
    assert!(denied(&s, "192.0.2.7") && !denied(&s, "192.0.2.8"));
    assert!(denied(&s, "2001:db8::1") && !denied(&s, "2001:db9::1"));
    assert!(denied(&s, "::ffff:192.0.2.7"), "a v4 peer seen on a dual-stack socket");
    let s = deny("\"::ffff:192.0.2.0/120\"");
    assert!(denied(&s, "192.0.2.7"), "a v4-mapped block names v4 peers");
    assert!(!denied(&s, "192.0.3.7"));
}
