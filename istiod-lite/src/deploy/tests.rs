//! The waypoint's objects and status, as applied.

use super::*;

fn gw() -> GatewayRef {
    GatewayRef { namespace: "bank".into(), name: "waypoint".into(), uid: "u-1".into(), generation: 3 }
}

#[test]
fn manifests_follow_the_contract() {
    let cfg = DeployConfig::new("ghcr.io/example/waypoint:1", "istio-system", "cluster.local");
    let m = manifests(&cfg, &gw());
    for o in [&m.service_account, &m.deployment, &m.service] {
        assert_eq!(o["metadata"]["name"], "waypoint");
        assert_eq!(o["metadata"]["namespace"], "bank");
        let owner = &o["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str(), owner["controller"].as_bool()),
            (Some("Gateway"), Some("u-1"), Some(true))
        );
    }
    let pod = &m.deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint", "its identity is spiffe://cluster.local/ns/bank/sa/waypoint");
    let labels = &m.deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["istio.io/dataplane-mode"], "none", "opted out of capture");
    assert_eq!(labels[GATEWAY_NAME_LABEL], "waypoint");
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/example/waypoint:1");
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for pair in [
        ["--gateway", "bank/waypoint"],
        ["--service-account", "waypoint"],
        ["--node-name", "$(NODE_NAME)"],
        ["--xds-address", "https://istiod.istio-system.svc:15012"],
        ["--ca-address", "https://istiod.istio-system.svc:15012"],
        ["--ca-token-file", "/var/run/secrets/tokens/istio-token"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert!(c["resources"]["requests"]["cpu"].is_string());
    let ports: Vec<u64> =
        m.service["spec"]["ports"].as_array().unwrap().iter().filter_map(|p| p["port"].as_u64()).collect();
    assert_eq!(ports, [15008, 15020, 15021]);
    assert_eq!(m.service["spec"]["selector"][GATEWAY_NAME_LABEL], "waypoint");
}

#[test]
fn the_waypoint_learns_its_node_and_pod_ip_from_the_downward_api() {
    let cfg = DeployConfig::new("ghcr.io/example/waypoint:1", "istio-system", "cluster.local");
    let m = manifests(&cfg, &gw());
    let env = m.deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let field = |name: &str| {
        let e = env.iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no env {name} in {env:?}"));
        e["valueFrom"]["fieldRef"]["fieldPath"].as_str().map(str::to_owned)
    };
    assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
    // Its own workload, the source of locality-aware endpoint choice, is found by this IP.
    assert_eq!(field("INSTANCE_IP").as_deref(), Some("status.podIP"));
    // istiod-lite has no network setting: the waypoint stays on the default network.
    assert!(env.iter().all(|e| e["name"] != "NETWORK"), "{env:?}");
}

#[test]
fn status_reports_the_address_once_there_is_one() {
    let s = gateway_status(&gw(), Some("10.96.5.5"), None, "2026-01-01T00:00:00Z");
    let conds = s["status"]["conditions"].as_array().unwrap();
    assert_eq!(
        conds.iter().map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap())).collect::<Vec<_>>(),
        [("Accepted", "True"), ("Programmed", "True")]
    );
    assert_eq!(conds[0]["observedGeneration"], 3);
    assert_eq!(s["status"]["addresses"][0]["value"], "10.96.5.5");
    let s = gateway_status(&gw(), None, None, "2026-01-01T00:00:00Z");
    assert_eq!(s["status"]["conditions"][1]["status"], "False");
    assert!(s["status"]["addresses"].as_array().unwrap().is_empty());

    // Written again a day later: Accepted stayed True and keeps its time; Programmed turned
    // True and takes the new one.
    let later = gateway_status(&gw(), Some("10.96.5.5"), Some(&s["status"]["conditions"]), "2026-01-02T00:00:00Z");
    let times: Vec<&str> = later["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["lastTransitionTime"].as_str().unwrap())
        .collect();
    assert_eq!(times, ["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]);
    // Nothing changed: the same body, so the write is no change to watch.
    let again = gateway_status(&gw(), Some("10.96.5.5"), Some(&later["status"]["conditions"]), "2026-01-03T00:00:00Z");
    assert_eq!(again, later);
}

/// A route's status for its parent Service `shop/web`.
fn web_parent(conditions: Vec<crate::translate::route::Condition>) -> crate::translate::route::ParentStatus {
    crate::translate::route::ParentStatus {
        parent_ref: "Service shop/web".into(),
        group: String::new(),
        kind: "Service".into(),
        namespace: "shop".into(),
        name: "web".into(),
        port: None,
        section_name: None,
        conditions,
    }
}

#[test]
fn a_route_condition_message_is_cut_to_what_the_api_server_takes() {
    use crate::model::{Kind, ObjectKey};
    use crate::translate::route::Condition;
    let long = "é".repeat(20_000);
    let parent = web_parent(vec![Condition {
        type_: "PartiallyInvalid",
        status: true,
        reason: "UnsupportedValue",
        message: format!("Dropped Rule(s) {long}"),
    }]);
    let key = ObjectKey::new(Kind::HttpRoute, "shop", "r");
    let body = route_status::status_body(&key, &[parent], 1, &Default::default(), "2026-01-01T00:00:00Z");
    let message = body["status"]["parents"][0]["conditions"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("Dropped Rule(s) é"));
    assert!(message.len() <= 32_768 && message.len() > 32_000, "{}", message.len());
}

#[test]
fn a_route_condition_keeps_its_transition_time_while_its_status_stays() {
    use crate::model::{Kind, ObjectKey};
    use crate::translate::route::Condition;
    let cond = |type_, status, message: &str| Condition { type_, status, reason: "Any", message: message.into() };
    let parent = web_parent;
    let (t0, t1) = ("2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z");
    let first = [parent(vec![cond("Accepted", true, "a"), cond("ResolvedRefs", true, "r")])];
    let before = route_status::transitions(&first, None, t0);
    // A new message keeps Accepted's time; ResolvedRefs turned False and PartiallyInvalid is
    // new: both take the time of this write.
    let next = [parent(vec![
        cond("Accepted", true, "a, edited"),
        cond("ResolvedRefs", false, "r"),
        cond("PartiallyInvalid", true, "p"),
    ])];
    let times = route_status::transitions(&next, Some(&before), t1);
    let body = route_status::status_body(&ObjectKey::new(Kind::HttpRoute, "shop", "r"), &next, 2, &times, t1);
    let written: Vec<(&str, &str)> = body["status"]["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["lastTransitionTime"].as_str().unwrap()))
        .collect();
    assert_eq!(written, [("Accepted", t0), ("ResolvedRefs", t1), ("PartiallyInvalid", t1)]);
}
