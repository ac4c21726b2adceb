//! Istio L4 authorization semantics.

use std::sync::Arc;

use super::support::*;
use crate::state::convert::policy_fail_closed;
use crate::state::policy::{Cidr, Group, Match, Rule, ServiceAccountMatch, StringMatch};
use crate::state::{Action, Policy, Reason, Scope, State, StateConfig, Verdict, Workload};
use proto::istio::security as pbs;

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr::new(ip(a), l.parse().unwrap()).unwrap()
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.to_owned())
}

fn sa(ns: &str, name: &str) -> ServiceAccountMatch {
    ServiceAccountMatch { namespace: ns.to_owned(), service_account: name.to_owned() }
}

/// The destination used by the tables: `default/dst` at 10.0.0.2, port 80.
fn dst() -> Workload {
    workload("dst", "default", "dst", "10.0.0.2")
}

fn state(workloads: Vec<Workload>, policies: Vec<Policy>) -> State {
    State::new(StateConfig::default(), workloads, vec![], policies).unwrap()
}

/// Decides a connection to `dst()` against one ALLOW policy holding `m`.
fn allow_with(m: Match, src: Option<&hbone::Identity>, src_ip: &str, port: u16) -> Verdict {
    let d = dst();
    let s = state(vec![d.clone()], vec![policy("default", "p", Scope::Namespace, Action::Allow, vec![group(vec![m])])]);
    s.authorize(&conn(src, src_ip, &d, port))
}

#[test]
fn each_field_and_its_negation() {
    let foo_bar = id("foo", "bar");
    let other = id("other", "sa");
    let none = None;
    // (case, match, source identity, source ip, destination port, allowed?)
    type Case<'a> = (&'a str, Match, Option<&'a hbone::Identity>, &'a str, u16, bool);
    let cases: Vec<Case<'_>> = vec![
        ("no conditions", Match::default(), none, "1.1.1.1", 80, true),
        (
            "namespace hit",
            Match { namespaces: vec![exact("foo")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "namespace miss",
            Match { namespaces: vec![exact("foo")], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "namespace plaintext",
            Match { namespaces: vec![exact("foo")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            false,
        ),
        (
            "namespaces OR",
            Match { namespaces: vec![exact("x"), exact("other")], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "not namespace hit",
            Match { not_namespaces: vec![exact("foo")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not namespace miss",
            Match { not_namespaces: vec![exact("foo")], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "not namespace plaintext",
            Match { not_namespaces: vec![exact("foo")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            true,
        ),
        (
            "principal exact",
            Match { principals: vec![exact("cluster.local/ns/foo/sa/bar")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "principal has no scheme",
            Match { principals: vec![exact("spiffe://cluster.local/ns/foo/sa/bar")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "principal prefix",
            Match { principals: vec![StringMatch::Prefix("cluster.local/ns/foo/".into())], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "principal prefix miss",
            Match { principals: vec![StringMatch::Prefix("cluster.local/ns/foo/".into())], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "principal suffix",
            Match { principals: vec![StringMatch::Suffix("/sa/bar".into())], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "principal suffix miss",
            Match { principals: vec![StringMatch::Suffix("/sa/bar".into())], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "principal presence mtls",
            Match { principals: vec![StringMatch::Presence], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "principal presence plaintext",
            Match { principals: vec![StringMatch::Presence], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not principal hit",
            Match { not_principals: vec![exact("cluster.local/ns/foo/sa/bar")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not principal miss",
            Match { not_principals: vec![exact("cluster.local/ns/foo/sa/bar")], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "not principal presence plaintext",
            Match { not_principals: vec![StringMatch::Presence], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            true,
        ),
        (
            "not principal presence mtls",
            Match { not_principals: vec![StringMatch::Presence], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "service account",
            Match { service_accounts: vec![sa("foo", "bar")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "service account other ns",
            Match { service_accounts: vec![sa("other", "bar")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "service account plaintext",
            Match { service_accounts: vec![sa("foo", "bar")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not service account hit",
            Match { not_service_accounts: vec![sa("foo", "bar")], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not service account miss",
            Match { not_service_accounts: vec![sa("foo", "bar")], ..Default::default() },
            Some(&other),
            "1.1.1.1",
            80,
            true,
        ),
        (
            "not service account plaintext",
            Match { not_service_accounts: vec![sa("foo", "bar")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            true,
        ),
        (
            "source ip in",
            Match { source_ips: vec![cidr("10.0.0.0/8")], ..Default::default() },
            none,
            "10.9.8.7",
            80,
            true,
        ),
        (
            "source ip out",
            Match { source_ips: vec![cidr("10.0.0.0/8")], ..Default::default() },
            none,
            "11.0.0.1",
            80,
            false,
        ),
        (
            "source ip v4-mapped",
            Match { source_ips: vec![cidr("10.0.0.0/8")], ..Default::default() },
            none,
            "::ffff:10.1.1.1",
            80,
            true,
        ),
        (
            "source ip other family",
            Match { source_ips: vec![cidr("10.0.0.0/8")], ..Default::default() },
            none,
            "fd00::1",
            80,
            false,
        ),
        (
            "source ip v6",
            Match { source_ips: vec![cidr("fd00::/64")], ..Default::default() },
            none,
            "fd00::1:2",
            80,
            true,
        ),
        (
            "source ip host bits masked",
            Match { source_ips: vec![cidr("10.1.2.3/16")], ..Default::default() },
            none,
            "10.1.200.1",
            80,
            true,
        ),
        (
            "source ip /0",
            Match { source_ips: vec![cidr("0.0.0.0/0")], ..Default::default() },
            none,
            "203.0.113.9",
            80,
            true,
        ),
        (
            "not source ip in",
            Match { not_source_ips: vec![cidr("10.0.0.0/8")], ..Default::default() },
            none,
            "10.9.8.7",
            80,
            false,
        ),
        (
            "not source ip out",
            Match { not_source_ips: vec![cidr("10.0.0.0/8")], ..Default::default() },
            none,
            "11.0.0.1",
            80,
            true,
        ),
        (
            "destination ip",
            Match { destination_ips: vec![cidr("10.0.0.2/32")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            true,
        ),
        (
            "destination ip miss",
            Match { destination_ips: vec![cidr("10.0.0.3/32")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not destination ip hit",
            Match { not_destination_ips: vec![cidr("10.0.0.0/24")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            false,
        ),
        (
            "not destination ip miss",
            Match { not_destination_ips: vec![cidr("10.0.1.0/24")], ..Default::default() },
            none,
            "1.1.1.1",
            80,
            true,
        ),
        ("port", Match { destination_ports: vec![443, 80], ..Default::default() }, none, "1.1.1.1", 80, true),
        ("port miss", Match { destination_ports: vec![443], ..Default::default() }, none, "1.1.1.1", 80, false),
        ("not port hit", Match { not_destination_ports: vec![80], ..Default::default() }, none, "1.1.1.1", 80, false),
        ("not port miss", Match { not_destination_ports: vec![81], ..Default::default() }, none, "1.1.1.1", 80, true),
        (
            "fields AND",
            Match { namespaces: vec![exact("foo")], destination_ports: vec![81], ..Default::default() },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
        (
            "field and negation",
            Match {
                namespaces: vec![StringMatch::Prefix("f".into())],
                not_principals: vec![StringMatch::Suffix("/bar".into())],
                ..Default::default()
            },
            Some(&foo_bar),
            "1.1.1.1",
            80,
            false,
        ),
    ];
    for (case, m, src, src_ip, port, want) in cases {
        let v = allow_with(m, src, src_ip, port);
        assert_eq!(v.allowed, want, "{case}: {v}");
        if want {
            assert_eq!(v.reason, Reason::AllowedByPolicy, "{case}");
            assert_eq!(v.decided_by.as_ref().unwrap().group, Some(0), "{case}");
        } else {
            assert_eq!(v.reason, Reason::NoAllowPolicyMatched { allow_policies: 1 }, "{case}");
        }
    }
}

#[test]
fn groups_rules_and_matches_combine_as_in_istio() {
    let foo = id("foo", "a");
    let ns = |n: &str| Match { namespaces: vec![exact(n)], ..Default::default() };
    let port = |p: u16| Match { destination_ports: vec![p], ..Default::default() };
    // Group: all rules. Rule: any match.
    let both = Group { rules: vec![Rule { matches: vec![ns("x"), ns("foo")] }, Rule { matches: vec![port(80)] }] };
    let d = dst();
    let s = state(vec![d.clone()], vec![policy("default", "p", Scope::Namespace, Action::Allow, vec![both])]);
    assert!(s.authorize(&conn(Some(&foo), "1.1.1.1", &d, 80)).allowed);
    assert!(!s.authorize(&conn(Some(&foo), "1.1.1.1", &d, 81)).allowed, "second rule must also hold");
    assert!(!s.authorize(&conn(Some(&id("y", "a")), "1.1.1.1", &d, 80)).allowed, "first rule must hold");

    // Policy: any group; the verdict names the first group that matched.
    let groups = vec![group(vec![port(1)]), group(vec![port(80)]), group(vec![port(80)])];
    let s = state(vec![d.clone()], vec![policy("default", "p", Scope::Namespace, Action::Allow, groups)]);
    let v = s.authorize(&conn(None, "1.1.1.1", &d, 80));
    assert!(v.allowed);
    assert_eq!(v.decided_by.as_ref().unwrap().group, Some(1));
    assert_eq!(v.to_string(), "allowed by policy default/p rule 1");

    // `rules: [{}]` in Istio becomes a group without rules: matches everything.
    let s =
        state(vec![d.clone()], vec![policy("default", "all", Scope::Namespace, Action::Allow, vec![Group::default()])]);
    assert!(s.authorize(&conn(None, "1.1.1.1", &d, 9)).allowed);
    // An ALLOW with no groups is Istio's allow-nothing.
    let s = state(vec![d.clone()], vec![policy("default", "nothing", Scope::Namespace, Action::Allow, vec![])]);
    let v = s.authorize(&conn(Some(&foo), "1.1.1.1", &d, 80));
    assert!(!v.allowed);
    assert_eq!(v.to_string(), "denied: none of 1 ALLOW policies matched (first: default/nothing)");
    // A rule without matches matches nothing.
    let empty_rule = Group { rules: vec![Rule { matches: vec![] }] };
    let s = state(vec![d.clone()], vec![policy("default", "p", Scope::Namespace, Action::Allow, vec![empty_rule])]);
    assert!(!s.authorize(&conn(Some(&foo), "1.1.1.1", &d, 80)).allowed);
}

#[test]
fn deny_wins_over_allow_and_allow_is_required_once_present() {
    let d = dst();
    let good = id("good", "a");
    let bad = id("bad", "a");
    let allow_all = policy("default", "allow-all", Scope::Namespace, Action::Allow, vec![Group::default()]);
    let deny_bad = policy(
        "default",
        "deny-bad",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![Match { namespaces: vec![exact("bad")], ..Default::default() }])],
    );
    let s = state(vec![d.clone()], vec![allow_all, deny_bad.clone()]);
    let v = s.authorize(&conn(Some(&bad), "1.1.1.1", &d, 80));
    assert!(!v.allowed);
    assert_eq!(v.reason, Reason::DeniedByPolicy);
    assert_eq!(
        (v.decided_by.as_ref().unwrap().name(), v.decided_by.as_ref().unwrap().action()),
        ("deny-bad", Action::Deny)
    );
    assert_eq!(v.to_string(), "denied by policy default/deny-bad rule 0");
    let v = s.authorize(&conn(Some(&good), "1.1.1.1", &d, 80));
    assert!(v.allowed, "{v}");
    assert_eq!(v.to_string(), "allowed by policy default/allow-all rule 0");

    // Only a DENY: what it does not match is allowed, with no policy to thank.
    let s = state(vec![d.clone()], vec![deny_bad]);
    let v = s.authorize(&conn(Some(&good), "1.1.1.1", &d, 80));
    assert_eq!((v.allowed, &v.reason, &v.decided_by), (true, &Reason::NoPolicies, &None));
    assert_eq!(v.to_string(), "allowed: no DENY policy matched and no ALLOW policy applies");
    // The common allow path does not allocate the dry-run list.
    assert_eq!(v.dry_run.capacity(), 0);
}

#[test]
fn strict_peer_authentication_translation_denies_plaintext_only() {
    // Istio renders PeerAuthentication STRICT as a DENY of anything without a principal.
    let strict = policy(
        "default",
        "istio_converted_peer_authentication_default",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![Match { not_principals: vec![StringMatch::Presence], ..Default::default() }])],
    );
    let d = dst();
    let s = state(vec![d.clone()], vec![strict]);
    let v = s.authorize(&conn(None, "10.0.0.9", &d, 80));
    assert!(!v.allowed);
    assert_eq!(v.reason, Reason::DeniedByPolicy);
    assert_eq!(v.to_string(), "denied by policy default/istio_converted_peer_authentication_default rule 0");
    let client = id("client", "sa");
    assert!(s.authorize(&conn(Some(&client), "10.0.0.9", &d, 80)).allowed);
}

#[test]
fn scopes_select_the_right_workloads() {
    let in_default = workload("a", "default", "a", "10.0.0.2");
    let mut selected = workload("b", "default", "b", "10.0.0.3");
    selected.authorization_policies = vec!["default/only-b".into()];
    let elsewhere = workload("c", "other", "c", "10.0.0.4");
    let deny_all = |ns: &str, name: &str, scope| policy(ns, name, scope, Action::Deny, vec![Group::default()]);
    let all = vec![in_default.clone(), selected.clone(), elsewhere.clone()];
    let denied =
        |s: &State| -> Vec<bool> { all.iter().map(|w| !s.authorize(&conn(None, "1.1.1.1", w, 80)).allowed).collect() };

    // `b` names `default/only-b`; give it a harmless one (a DENY that matches nothing) where the
    // case is about something else, so the missing-policy rule does not decide for it.
    let noop = || policy("default", "only-b", Scope::WorkloadSelector, Action::Deny, vec![]);
    let s = state(all.clone(), vec![noop()]);
    assert_eq!(denied(&s), [false, false, false], "baseline");
    let s = state(all.clone(), vec![noop(), deny_all("istio-system", "g", Scope::Global)]);
    assert_eq!(denied(&s), [true, true, true], "global");
    // The control plane sends root-namespace policies without a selector as GLOBAL: one sent as
    // NAMESPACE stays in its namespace (an ALLOW taken mesh-wide would widen access).
    let s = state(all.clone(), vec![noop(), deny_all("istio-system", "root-ns", Scope::Namespace)]);
    assert_eq!(denied(&s), [false, false, false], "namespace-wide policy in the root namespace");
    let mut in_root = workload("m", "istio-system", "m", "10.0.0.5");
    in_root.authorization_policies = vec![];
    let s = state(vec![in_root.clone()], vec![deny_all("istio-system", "root-ns", Scope::Namespace)]);
    assert!(!s.authorize(&conn(None, "1.1.1.1", &in_root, 80)).allowed, "it applies in its own namespace");
    // A scope this build does not know is taken mesh-wide from the root namespace: the policy is
    // unusable, so that can only deny.
    let s = state(all.clone(), vec![noop(), deny_all("istio-system", "odd", Scope::Unknown(9))]);
    assert_eq!(denied(&s), [true, true, true], "unknown scope in the root namespace");
    let s = state(all.clone(), vec![noop(), deny_all("default", "ns", Scope::Namespace)]);
    assert_eq!(denied(&s), [true, true, false], "namespace");
    let s = state(all.clone(), vec![deny_all("default", "only-b", Scope::WorkloadSelector)]);
    assert_eq!(denied(&s), [false, true, false], "workload selector");
    let s = state(all.clone(), vec![noop(), deny_all("default", "only-c", Scope::WorkloadSelector)]);
    assert_eq!(denied(&s), [false, false, false], "a selector policy nobody lists");

    // A configured root namespace replaces istio-system.
    let config = StateConfig { root_namespace: "mesh-root".into(), ..Default::default() };
    let s =
        State::new(config, all.clone(), vec![], vec![noop(), deny_all("mesh-root", "r", Scope::Unknown(9))]).unwrap();
    assert_eq!(denied(&s), [true, true, true], "custom root namespace");
    let config = StateConfig { root_namespace: "mesh-root".into(), ..Default::default() };
    let s = State::new(config, all.clone(), vec![], vec![noop(), deny_all("istio-system", "r", Scope::Unknown(9))])
        .unwrap();
    assert_eq!(denied(&s), [false, false, false], "istio-system is an ordinary namespace then");

    // A selector policy applies once even if listed and evaluated: the count of ALLOWs says so.
    let mut listed = selected.clone();
    listed.authorization_policies.push("default/ns-allow".into());
    let s = state(
        vec![listed.clone()],
        vec![
            policy("default", "ns-allow", Scope::Namespace, Action::Allow, vec![]),
            policy("default", "only-b", Scope::WorkloadSelector, Action::Allow, vec![]),
        ],
    );
    let v = s.authorize(&conn(None, "1.1.1.1", &listed, 80));
    assert_eq!(v.reason, Reason::NoAllowPolicyMatched { allow_policies: 2 });
    assert_eq!(s.policies_for(&listed).len(), 2);
}

#[test]
fn dry_run_is_reported_not_enforced() {
    let d = dst();
    let mut deny = policy("default", "would-deny", Scope::Namespace, Action::Deny, vec![Group::default()]);
    deny.dry_run = true;
    let mut allow = policy("default", "would-not-allow", Scope::Namespace, Action::Allow, vec![]);
    allow.dry_run = true;
    let s = state(vec![d.clone()], vec![deny, allow]);
    let v = s.authorize(&conn(None, "1.1.1.1", &d, 80));
    assert!(v.allowed, "dry-run policies must not decide: {v}");
    assert_eq!(v.reason, Reason::NoPolicies, "a dry-run ALLOW does not make ALLOW required");
    let got: Vec<_> = v.dry_run.iter().map(|r| (r.rule.name().to_owned(), r.rule.group, r.would_allow)).collect();
    assert_eq!(got, [("would-deny".to_owned(), Some(0), false), ("would-not-allow".to_owned(), None, false)]);
    assert_eq!(
        v.to_string(),
        "allowed: no DENY policy matched and no ALLOW policy applies; dry-run DENY default/would-deny rule 0 would deny; \
         dry-run ALLOW default/would-not-allow would deny"
    );
}

fn authz(ns: &str, name: &str, scope: pbs::Scope, action: pbs::Action, m: pbs::Match) -> pbs::Authorization {
    pbs::Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        groups: vec![pbs::Group { rules: vec![pbs::Rules { matches: vec![m] }] }],
        dry_run: false,
    }
}

#[test]
fn unusable_policies_fail_closed() {
    let a = workload("a", "default", "a", "10.0.0.2");
    let b = workload("b", "other", "b", "10.0.0.3");
    let bad_cidr = pbs::Match {
        source_ips: vec![pbs::Address { address: vec![10, 0, 0, 0].into(), length: 40 }],
        ..Default::default()
    };
    // A DENY whose CIDR is broken would match fewer sources than meant: deny all in its scope.
    let bad_deny =
        policy_fail_closed(authz("default", "bad-deny", pbs::Scope::Namespace, pbs::Action::Deny, bad_cidr.clone()))
            .unwrap();
    let s = state(vec![a.clone(), b.clone()], vec![bad_deny]);
    let v = s.authorize(&conn(Some(&id("x", "y")), "192.168.1.1", &a, 80));
    assert!(!v.allowed);
    let Reason::PolicyUnusable { why } = &v.reason else { panic!("{v}") };
    assert!(why.contains("groups[0].rules[0].matches[0].sourceIps[0].length"), "{why}");
    assert!(
        v.to_string().starts_with("denied: policy default/bad-deny (DENY) cannot be evaluated: field `groups[0]"),
        "{v}"
    );
    assert!(s.authorize(&conn(None, "1.1.1.1", &b, 80)).allowed, "other namespaces are untouched");

    // A broken ALLOW matches nothing but still makes ALLOW required; another ALLOW can still allow.
    let bad_port = pbs::Match { destination_ports: vec![70000], ..Default::default() };
    let bad_allow =
        policy_fail_closed(authz("default", "bad-allow", pbs::Scope::Namespace, pbs::Action::Allow, bad_port)).unwrap();
    let s = state(vec![a.clone()], vec![bad_allow.clone()]);
    let v = s.authorize(&conn(None, "1.1.1.1", &a, 80));
    assert!(!v.allowed);
    assert!(matches!(&v.reason, Reason::PolicyUnusable { why } if why.contains("port 70000")), "{v}");
    assert_eq!(v.decided_by.as_ref().unwrap().name(), "bad-allow");
    let port_80 = policy(
        "default",
        "port-80",
        Scope::Namespace,
        Action::Allow,
        vec![group(vec![Match { destination_ports: vec![80], ..Default::default() }])],
    );
    let s = state(vec![a.clone()], vec![bad_allow, port_80]);
    assert_eq!(s.authorize(&conn(None, "1.1.1.1", &a, 80)).reason, Reason::AllowedByPolicy);

    // Unknown action: treated as a DENY of everything.
    let mut unknown_action = authz("default", "audit", pbs::Scope::Namespace, pbs::Action::Allow, Default::default());
    unknown_action.action = 2;
    let p = policy_fail_closed(unknown_action).unwrap();
    assert_eq!(p.action, Action::Deny);
    let s = state(vec![a.clone()], vec![p]);
    let v = s.authorize(&conn(Some(&id("x", "y")), "1.1.1.1", &a, 80));
    assert!(!v.allowed && v.to_string().contains("field `action`: unknown enum value 2"), "{v}");

    // Unknown scope: as wide as a policy in that namespace can reach.
    let mut unknown_scope = authz("default", "future", pbs::Scope::Namespace, pbs::Action::Deny, Default::default());
    unknown_scope.scope = 9;
    let p = policy_fail_closed(unknown_scope.clone()).unwrap();
    assert_eq!(p.scope, Scope::Unknown(9));
    let s = state(vec![a.clone(), b.clone()], vec![p]);
    assert!(!s.authorize(&conn(None, "1.1.1.1", &a, 80)).allowed);
    assert!(s.authorize(&conn(None, "1.1.1.1", &b, 80)).allowed);
    unknown_scope.namespace = "istio-system".into();
    let s = state(vec![a.clone(), b.clone()], vec![policy_fail_closed(unknown_scope).unwrap()]);
    assert!(!s.authorize(&conn(None, "1.1.1.1", &b, 80)).allowed, "root namespace: everyone");

    // A dry-run policy stays dry-run even when unusable: reported as would-deny.
    let mut dry = authz("default", "dry", pbs::Scope::Namespace, pbs::Action::Deny, bad_cidr);
    dry.dry_run = true;
    let s = state(vec![a.clone()], vec![policy_fail_closed(dry).unwrap()]);
    let v = s.authorize(&conn(None, "1.1.1.1", &a, 80));
    assert!(v.allowed);
    assert!(!v.dry_run[0].would_allow);
}

#[test]
fn a_selected_policy_that_is_missing_denies() {
    let mut a = workload("a", "default", "a", "10.0.0.2");
    a.authorization_policies = vec!["default/not-yet".into()];
    let s = state(vec![a.clone()], vec![]);
    assert!(s.warnings().iter().any(|w| w.contains("default/not-yet")));
    let v = s.authorize(&conn(Some(&id("x", "y")), "1.1.1.1", &a, 80));
    assert!(!v.allowed);
    assert!(
        v.to_string().contains("default/not-yet (DENY) cannot be evaluated: selects this workload but is not known"),
        "{v}"
    );

    // A workload from a newer snapshot naming a policy this snapshot never saw: same answer.
    let older = state(vec![], vec![]);
    let v = older.authorize(&conn(None, "1.1.1.1", &a, 80));
    assert!(!v.allowed, "{v}");
    assert_eq!(
        v.decided_by.unwrap().policy,
        Arc::new(Policy::new_unusable(
            "default",
            "not-yet",
            Scope::WorkloadSelector,
            Action::Deny,
            "selects this workload but is not known (yet)"
        ))
    );
}

#[test]
fn v4_mapped_policy_addresses_name_the_v4_peers() {
    // Peers are compared in their IPv4 form (a dual-stack socket reports an IPv4 peer as
    // `::ffff:a.b.c.d`), so a policy that names IPv4 addresses in that mapped form must be read
    // the same way: otherwise `ipBlocks: ["::ffff:10.0.0.0/104"]` in a DENY never matches, not
    // even a peer reported as `::ffff:10.1.2.3` (it fails open).
    let d = dst();
    let cases = [
        ("::ffff:10.0.0.0/104", "10.1.2.3", true),
        ("::ffff:10.0.0.0/104", "::ffff:10.1.2.3", true),
        ("::ffff:10.0.0.0/104", "11.0.0.1", false),
        ("::ffff:10.1.2.3/128", "10.1.2.3", true),
        ("::ffff:10.1.2.3/128", "10.1.2.4", false),
        ("::ffff:0.0.0.0/96", "203.0.113.9", true),
        // Not inside the mapped range: all of IPv6 is not IPv4, as in Istio.
        ("::/0", "10.1.2.3", false),
        ("::/0", "fd00::1", true),
    ];
    for (net, peer, denied) in cases {
        let deny = |m: Match| policy("default", "deny", Scope::Namespace, Action::Deny, vec![group(vec![m])]);
        let s = state(vec![d.clone()], vec![deny(Match { source_ips: vec![cidr(net)], ..Default::default() })]);
        let v = s.authorize(&conn(None, peer, &d, 80));
        assert_eq!(!v.allowed, denied, "ipBlocks {net}, peer {peer}: {v}");
        let s = state(vec![d.clone()], vec![deny(Match { not_source_ips: vec![cidr(net)], ..Default::default() })]);
        let v = s.authorize(&conn(None, peer, &d, 80));
        assert_eq!(!v.allowed, !denied, "notIpBlocks {net}, peer {peer}: {v}");
    }
    // Destination addresses likewise (the destination is 10.0.0.2).
    let s = state(
        vec![d.clone()],
        vec![policy(
            "default",
            "deny",
            Scope::Namespace,
            Action::Deny,
            vec![group(vec![Match { destination_ips: vec![cidr("::ffff:10.0.0.2/128")], ..Default::default() }])],
        )],
    );
    assert!(!s.authorize(&conn(None, "1.1.1.1", &d, 80)).allowed);
    // As the control plane sends it (16 address bytes), and as dumps show it.
    let mapped = pbs::Match {
        source_ips: vec![pbs::Address {
            address: crate::state::convert::ip_to_bytes(ip("::ffff:10.0.0.0")).into(),
            length: 104,
        }],
        ..Default::default()
    };
    let p = policy_fail_closed(authz("default", "p", pbs::Scope::Namespace, pbs::Action::Deny, mapped)).unwrap();
    assert_eq!(p.unusable, None);
    assert_eq!(p.groups[0].rules[0].matches[0].source_ips[0].to_string(), "10.0.0.0/8");
}
