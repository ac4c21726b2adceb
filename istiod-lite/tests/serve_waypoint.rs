//! istiod-lite as its binary runs it serves the waypoint's resource types over delta ADS to a
//! wildcard subscriber, beside `istio.workload.Address`, and pushes a route edit.

mod support;

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use istiod_lite::config::Config;
use proto::istio::workload::Address;
use proto::mesh::waypoint::v1::{BackendPolicy, L7Policy, Route};
use support::TempDir;
use tonic::transport::Endpoint;
use xds::{Client, Names, cache_handler};

const WAIT: Duration = Duration::from_secs(10);

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gets_its_four_types_over_one_stream() {
    let dir = TempDir::new("serve-waypoint");
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/waypoint-samples");
    for f in ["mesh.yaml", "routes.yaml", "policies.yaml"] {
        dir.write(&format!("config/{f}"), &std::fs::read_to_string(samples.join(f)).unwrap());
    }
    dir.write("tokens.yaml", "node-a: node-a-bootstrap-token-0123456789\n");
    let p = |s: &str| dir.path().join(s).to_string_lossy().into_owned();
    let cfg = Config::try_parse_from([
        "istiod-lite",
        "--config-dir",
        &p("config"),
        "--ca-dir",
        &p("ca"),
        "--bootstrap-tokens",
        &p("tokens.yaml"),
        "--tls-addr",
        "127.0.0.1:0",
        "--monitoring-addr",
        "127.0.0.1:0",
        "--plaintext-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let running = istiod_lite::serve::start(&cfg).await.unwrap();
    let channel =
        Endpoint::from_shared(format!("http://{}", running.plaintext_addr.unwrap())).unwrap().connect().await.unwrap();
    let (addresses, a) = cache_handler(|_: &str, x: Address| Ok::<_, String>(x));
    let (routes, r) = cache_handler(|_: &str, x: Route| Ok::<_, String>(x));
    let (policies, l) = cache_handler(|_: &str, x: L7Policy| Ok::<_, String>(x));
    let (backends, b) = cache_handler(|_: &str, x: BackendPolicy| Ok::<_, String>(x));
    let node = proto::envoy::config::core::v3::Node { id: "waypoint~bank/waypoint".into(), ..Default::default() };
    let _client = Client::new(node)
        .subscribe(proto::ADDRESS_TYPE_URL, Names::Wildcard, a)
        .subscribe(proto::WAYPOINT_ROUTE_TYPE_URL, Names::Wildcard, r)
        .subscribe(proto::WAYPOINT_POLICY_TYPE_URL, Names::Wildcard, l)
        .subscribe(proto::WAYPOINT_BACKEND_TYPE_URL, Names::Wildcard, b)
        .spawn_with(move || std::future::ready(Ok(channel.clone())));

    until("every type", || !addresses.is_empty() && routes.len() == 2 && policies.len() == 2 && backends.len() == 1)
        .await;
    let accounts = routes.get("bank/HTTPRoute/accounts").expect("the HTTPRoute");
    assert_eq!(accounts.rules.len(), 3);
    assert!(policies.get("bank/no-admin").is_some());
    assert!(backends.get("accounts.bank.svc.cluster.local").is_some());

    // An edit reaches the subscriber as a delta.
    let edited = std::fs::read_to_string(samples.join("routes.yaml")).unwrap().replace("weight: 90", "weight: 50");
    dir.write("config/routes.yaml", &edited);
    until("the edited weight", || {
        routes.get("bank/HTTPRoute/accounts").is_some_and(|r| r.rules[2].backends[0].weight == 50)
    })
    .await;
}
