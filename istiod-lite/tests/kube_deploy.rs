//! Kubernetes mode deploys waypoints: for a Gateway of class `istio-waypoint` (from the
//! recorded cluster), istiod-lite server-side applies the ServiceAccount, Deployment and
//! Service, then writes the Gateway's status with the Service's address, against the mock API.

mod kube_support;

use std::time::Duration;

use istiod_lite::deploy::{DeployConfig, GatewayRef, controller, reconcile};
use kube_support::{MockApi, Seen};

const SA: &str = "/api/v1/namespaces/shop/serviceaccounts/waypoint";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/waypoint";
const SERVICE: &str = "/api/v1/namespaces/shop/services/waypoint";
const STATUS: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/waypoint/status";

fn cfg() -> DeployConfig {
    DeployConfig::new("ghcr.io/example/waypoint:1", "istio-system", "cluster.local")
}

fn check_writes(writes: &[Seen]) {
    let paths: Vec<&str> = writes.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths, [SA, DEPLOYMENT, SERVICE, STATUS], "{writes:#?}");
    for w in writes {
        assert_eq!(w.method, "PATCH", "server-side apply is a PATCH: {w:?}");
        assert_eq!(w.query.get("fieldManager").map(String::as_str), Some("istiod-lite"), "{w:?}");
        assert_eq!(w.query.get("force").map(String::as_str), Some("true"), "{w:?}");
    }
    let body = |i: usize| writes[i].body.clone().expect("a JSON body");
    let dep = body(1);
    assert_eq!(dep["kind"], "Deployment");
    assert_eq!(dep["metadata"]["ownerReferences"][0]["uid"], "9b3d5f7a-1c2e-4a4b-8f6c-8d0f2a4b6d01");
    assert_eq!(dep["spec"]["template"]["spec"]["containers"][0]["image"], "ghcr.io/example/waypoint:1");
    let env = &dep["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "INSTANCE_IP" && e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"),
        "the waypoint finds its own workload by its pod IP: {env}"
    );
    let status = body(3);
    assert_eq!(status["status"]["addresses"][0]["value"], "10.96.0.50", "the address is the Service's cluster IP");
    assert_eq!(status["status"]["conditions"][1]["type"], "Programmed");
    assert_eq!(status["status"]["conditions"][1]["status"], "True");
}

#[tokio::test]
async fn a_waypoint_gateway_gets_its_objects_and_status() {
    let mock = MockApi::start().await;
    mock.on_write(SERVICE, "apply/service-waypoint.json");
    let gw = GatewayRef {
        namespace: "shop".into(),
        name: "waypoint".into(),
        uid: "9b3d5f7a-1c2e-4a4b-8f6c-8d0f2a4b6d01".into(),
        generation: 1,
    };
    let ip = reconcile(&mock.client(), &cfg(), &gw, None).await.unwrap();
    assert_eq!(ip.as_deref(), Some("10.96.0.50"));
    check_writes(&mock.writes());
}

#[tokio::test]
async fn the_controller_reconciles_waypoint_gateways_it_watches() {
    let mock = MockApi::start().await;
    mock.cluster();
    mock.on_write(SERVICE, "apply/service-waypoint.json");
    let task = tokio::spawn(controller(mock.client(), cfg()));
    mock.wait_seen("the Gateway status write", Duration::from_secs(10), |seen| seen.iter().any(|s| s.path == STATUS))
        .await;
    task.abort();
    check_writes(&mock.writes());
}

#[tokio::test]
async fn a_refused_apply_is_an_error_naming_the_object() {
    let mock = MockApi::start().await;
    mock.on_write_status(SA, hyper::StatusCode::NOT_FOUND, "status/not-found.json");
    let gw = GatewayRef { namespace: "shop".into(), name: "waypoint".into(), uid: "u".into(), generation: 1 };
    match reconcile(&mock.client(), &cfg(), &gw, None).await {
        Err(e) => assert!(e.to_string().starts_with("applying ServiceAccount shop/waypoint"), "{e}"),
        Ok(ip) => panic!("succeeded: {ip:?}"),
    }
    // Nothing after the refused object was attempted.
    assert_eq!(mock.writes().len(), 1);
}

#[tokio::test]
async fn route_status_is_written_once_per_change() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use istiod_lite::deploy::route_status::sync;

    let t = Arc::new(Mutex::new(sample_translator()));
    let mock = MockApi::start().await;
    let mut written = BTreeMap::new();
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 2);
    let writes = mock.writes();
    let paths: Vec<&str> = writes.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/apis/gateway.networking.k8s.io/v1/namespaces/bank/httproutes/accounts/status",
            "/apis/gateway.networking.k8s.io/v1/namespaces/bank/grpcroutes/ledger/status",
        ]
    );
    let body = writes[0].body.clone().unwrap();
    let parent = &body["status"]["parents"][0];
    assert_eq!(
        parent["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "namespace": "bank", "name": "accounts", "port": 80})
    );
    assert_eq!(parent["conditions"][0]["type"], "Accepted");
    assert_eq!(parent["conditions"][0]["status"], "True");
    assert_eq!(parent["conditions"][1]["reason"], "ResolvedRefs");
    // Nothing changed: nothing written.
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 0);
    assert_eq!(mock.writes().len(), 2);

    // The route loses its parents: our entries go (an empty list), not left saying Accepted.
    let orphan = snap_route(&t, "bank", "accounts");
    t.lock().unwrap().apply(istiod_lite::Change::Upsert(orphan));
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 1);
    let writes = mock.writes();
    assert!(writes[2].path.ends_with("/httproutes/accounts/status"), "{}", writes[2].path);
    assert_eq!(writes[2].body.as_ref().unwrap()["status"]["parents"], serde_json::json!([]));
    // Written once: no parents stays no write.
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 0);
}

/// A translator holding `manifests/waypoint-samples` (two routes: `bank/accounts`, `bank/ledger`).
fn sample_translator() -> istiod_lite::Translator {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/waypoint-samples");
    let snap = istiod_lite::source::dir::Loader::new(dir).load().unwrap();
    let mut t = istiod_lite::Translator::new(istiod_lite::MeshConfig::default());
    t.replace_all(snap.objects.into_iter().map(|o| o.object).collect());
    t
}

/// HTTPRoute `ns/name` of the translator's model, with no `parentRefs`.
fn snap_route(t: &std::sync::Mutex<istiod_lite::Translator>, ns: &str, name: &str) -> istiod_lite::Object {
    let mut route = t.lock().unwrap().model().http_routes[&(ns.to_owned(), name.to_owned())].clone();
    route.spec.parent_refs.clear();
    istiod_lite::Object::HttpRoute(route)
}

/// After a restart the writer has no memory of what it wrote: it starts from the routes'
/// status as read. A status already as it would be written is not written again, a condition
/// whose status stays keeps the time it had, and a route that lost its parents while we were
/// away still has our old entries taken away.
#[tokio::test]
async fn route_status_after_a_restart_starts_from_the_status_read() {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use istiod_lite::deploy::route_status::sync;
    use istiod_lite::{Change, Object};

    let t = Arc::new(Mutex::new(sample_translator()));
    let mock = MockApi::start().await;
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut BTreeMap::new()).await, 2);
    let first = mock.writes()[0].body.clone().unwrap();
    assert!(mock.writes()[0].path.ends_with("/httproutes/accounts/status"));
    let with_status = |status: serde_json::Value, keep_parents: bool| {
        let Object::HttpRoute(mut route) = snap_route(&t, "bank", "accounts") else { unreachable!() };
        if keep_parents {
            route.spec.parent_refs =
                t.lock().unwrap().model().http_routes[&("bank".into(), "accounts".into())].spec.parent_refs.clone();
        }
        route.status = Some(serde_yaml::to_value(&status).unwrap());
        t.lock().unwrap().apply(Change::Upsert(Object::HttpRoute(route)));
    };

    // The status we wrote came back on the object; a new writer finds it as it would write it.
    with_status(first["status"].clone(), true);
    let restarted = mock.writes().len();
    let mut written = BTreeMap::new();
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 1, "only the other route");
    assert!(mock.writes()[restarted..].iter().all(|w| !w.path.contains("/httproutes/accounts/")));
    // Remembered now: still nothing for it on the next pass.
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut written).await, 0);

    // Another generation on the object, with an old time: written again for the generation,
    // each condition keeping the time it had.
    let mut old = first["status"].clone();
    for c in old["parents"][0]["conditions"].as_array_mut().unwrap() {
        c["observedGeneration"] = serde_json::json!(99);
        c["lastTransitionTime"] = serde_json::json!("2020-01-01T00:00:00Z");
    }
    with_status(old, true);
    let before = mock.writes().len();
    assert_eq!(sync(&mock.client(), &t, &BTreeMap::new(), &mut BTreeMap::new()).await, 2);
    let writes = mock.writes();
    let accounts = writes[before..].iter().find(|w| w.path.ends_with("/httproutes/accounts/status")).unwrap();
    let conditions = accounts.body.as_ref().unwrap()["status"]["parents"][0]["conditions"].clone();
    for c in conditions.as_array().unwrap() {
        assert_eq!(c["lastTransitionTime"], "2020-01-01T00:00:00Z", "{c}");
        assert_ne!(c["observedGeneration"], 99, "{c}");
    }

    // The route lost its parents while no writer ran: our entries on it are taken away.
    with_status(first["status"].clone(), false);
    let before = mock.writes().len();
    sync(&mock.client(), &t, &BTreeMap::new(), &mut BTreeMap::new()).await;
    let writes = mock.writes();
    let accounts = writes[before..].iter().find(|w| w.path.ends_with("/httproutes/accounts/status"));
    let accounts = accounts.expect("our stale entries are taken away");
    assert_eq!(accounts.body.as_ref().unwrap()["status"]["parents"], serde_json::json!([]));
}

/// The writer waits for every kind to be synced: a partial model (routes listed before their
/// Services) would write statuses that flip back a moment later.
#[tokio::test]
async fn route_status_waits_for_every_kind_to_be_synced() {
    use std::sync::{Arc, Mutex};

    use istiod_lite::deploy::route_status::writer;
    use istiod_lite::source::kube::{KubeStatus, WATCHED};

    let t = sample_translator();
    let mock = MockApi::start().await;
    let (tx, rx) = tokio::sync::watch::channel(KubeStatus::default());
    let task = tokio::spawn(writer(mock.client(), Arc::new(Mutex::new(t)), rx));
    // All kinds but one synced: nothing is written.
    tx.send_modify(|s| s.synced.extend(WATCHED[1..].iter().map(|w| w.kind)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(mock.writes().is_empty(), "{:#?}", mock.writes());
    tx.send_modify(|s| {
        s.synced.insert(WATCHED[0].kind);
    });
    mock.wait_seen("both route statuses", Duration::from_secs(10), |seen| seen.len() >= 2).await;
    task.abort();
}
