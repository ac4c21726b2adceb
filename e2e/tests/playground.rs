//! The playground's one-round mode, as a user runs it: it must show mTLS identities, an allowed
//! and two denied flows naming the deciding policies, an L7 GET allowed and an L7 DELETE denied
//! by the waypoint, service names resolved by ztunnel's DNS proxy, and exit 0 only if every
//! verdict was the expected one. Needs root and the binaries (`cargo test --workspace` builds them).

use std::process::Command;

#[test]
fn playground_once_shows_identities_and_verdicts() {
    let out = Command::new(env!("CARGO_BIN_EXE_playground")).arg("--once").output().expect("playground runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "playground --once failed:\n{text}");
    for want in [
        "spiffe://cluster.local/ns/tools/sa/curl",
        "spiffe://cluster.local/ns/shop/sa/catalog",
        "allowed by policy shop/catalog-allow-curl",
        "none of 1 ALLOW policies matched",
        "denied by policy istio-system/istio_converted_static_strict",
        "L7 GET allowed by policy shop/orders-readers",
        "L7 DELETE denied (403, policy no-allow-match)",
        // The pods' nameserver does not exist: ztunnel's DNS proxy answers the service names.
        "DNS  tools/curl: catalog.shop.svc.cluster.local. → 10.96.0.20 (answered by ztunnel's DNS proxy",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(!text.contains("UNEXPECTED"), "{text}");
    assert_eq!(text.matches("agrees").count(), 3, "meshctl explain agrees with every observed verdict:\n{text}");
    assert!(!text.contains("DISAGREES"), "{text}");
    assert_eq!(
        text.matches("via waypoint shop/waypoint-0").count(),
        2,
        "meshctl routes orders via the waypoint:\n{text}"
    );
    // Nothing is left on the host: everything lived in the playground's sandbox.
    let netns = Command::new("ip").args(["netns", "list"]).output().expect("ip runs");
    assert!(!String::from_utf8_lossy(&netns.stdout).contains("catalog"), "no pod namespace left behind");
}
