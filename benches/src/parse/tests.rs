//! Parsers against real tool output (captured from runs on this machine) and broken output.

use super::*;

#[test]
fn iperf3_one_and_several_streams() {
    let one = iperf3(include_str!("fixtures/iperf3-1-stream.json")).unwrap();
    assert_eq!(one.bits_per_second, 3616364766.8393784);
    assert_eq!(one.retransmits, 2);
    let two = iperf3(include_str!("fixtures/iperf3-2-streams.json")).unwrap();
    assert_eq!(two.bits_per_second, 3758178227.8550615, "the sum over streams");
}

#[test]
fn iperf3_errors_are_failed_runs() {
    let e = iperf3(include_str!("fixtures/iperf3-refused.json")).unwrap_err();
    assert!(matches!(&e, ParseError::RunFailed { reason, .. } if reason.contains("Connection refused")), "{e}");
    assert!(matches!(iperf3("iperf3: error"), Err(ParseError::Malformed { .. })));
    let e = iperf3(r#"{"end":{"sum_sent":{}}}"#).unwrap_err();
    assert!(e.to_string().contains("sum_received"), "{e}");
}

#[test]
fn wrk_rates() {
    let r = wrk(include_str!("fixtures/wrk-keepalive.txt")).unwrap();
    assert_eq!(r, Wrk { requests: 12863, requests_per_second: 12658.65 });
    let r = wrk(include_str!("fixtures/wrk-close.txt")).unwrap();
    assert_eq!(r, Wrk { requests: 3137, requests_per_second: 3051.01 });
}

#[test]
fn wrk_errors_fail_the_run() {
    let base = include_str!("fixtures/wrk-keepalive.txt");
    let with = |extra: &str| base.replace("Requests/sec:", &format!("{extra}\nRequests/sec:"));
    let e = wrk(&with("  Socket errors: connect 0, read 3, write 0, timeout 1")).unwrap_err();
    assert!(matches!(&e, ParseError::RunFailed { reason, .. } if reason.contains("read 3")), "{e}");
    // All-zero socket errors are fine.
    assert!(wrk(&with("  Socket errors: connect 0, read 0, write 0, timeout 0")).is_ok());
    let e = wrk(&with("  Non-2xx or 3xx responses: 17")).unwrap_err();
    assert!(e.to_string().contains("17 non-2xx"), "{e}");
    assert!(matches!(wrk("unable to connect to 10.0.0.1:80 Connection refused"), Err(ParseError::Malformed { .. })));
    let e = wrk(&base.replace("12658.65", "lots")).unwrap_err();
    assert!(e.to_string().contains("lots"), "{e}");
}

#[test]
fn oha_percentiles_in_seconds() {
    let r = oha(include_str!("fixtures/oha.json")).unwrap();
    assert_eq!(r.requests, 400, "the fixture has one request cut off at the deadline, which is no error");
    assert_eq!(r.p50, 0.000139661);
    assert_eq!(r.p999, 0.008899519);
    assert!(r.p50 > 0.0 && r.p50 <= r.p90 && r.p90 <= r.p99 && r.p99 <= r.p999, "{r:?}");
    assert!(r.p50 < 1.0, "seconds, not milliseconds: {r:?}");
    assert!(r.requests_per_second > 0.0);
}

#[test]
fn oha_errors_and_bad_statuses_fail_the_run() {
    let good: Value = serde_json::from_str(include_str!("fixtures/oha.json")).unwrap();
    let mut bad = good.clone();
    bad["errorDistribution"] = serde_json::json!({"connection refused": 4});
    let e = oha(&bad.to_string()).unwrap_err();
    assert!(e.to_string().contains("4 × connection refused"), "{e}");
    let mut bad = good.clone();
    bad["statusCodeDistribution"]["503"] = serde_json::json!(2);
    let e = oha(&bad.to_string()).unwrap_err();
    assert!(e.to_string().contains("2 × status 503"), "{e}");
    let mut bad = good.clone();
    bad["latencyPercentiles"].as_object_mut().unwrap().remove("p99.9");
    let e = oha(&bad.to_string()).unwrap_err();
    assert!(e.to_string().contains("p99.9"), "{e}");
    assert!(matches!(oha("Error: bad url"), Err(ParseError::Malformed { .. })));
}
