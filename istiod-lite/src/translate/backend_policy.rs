//! Service annotations → `mesh.waypoint.v1.BackendPolicy`: how a waypoint balances over a
//! service's endpoints and when it ejects a failing one.
//!
//! - `waypoint.mesh/load-balancer`: `least-request` (default), `round-robin`, `random`, or
//!   `consistent-hash:<header>` (the header's value picks the endpoint).
//! - `waypoint.mesh/outlier-consecutive-errors`: failures in a row that eject (1-1000).
//! - `waypoint.mesh/outlier-ejection-seconds`: base ejection time (1-3600).
//!
//! A service with none of them gets no resource (the waypoint's defaults apply). A bad value is
//! a configuration error naming the annotation (checked when the Service is read).

use proto::mesh::waypoint::v1::BackendPolicy;
use proto::mesh::waypoint::v1::backend_policy::LoadBalancer;

use crate::k8s::Labels;

/// `waypoint.mesh/load-balancer`.
pub const LOAD_BALANCER: &str = "waypoint.mesh/load-balancer";
/// `waypoint.mesh/outlier-consecutive-errors`.
pub const OUTLIER_CONSECUTIVE_ERRORS: &str = "waypoint.mesh/outlier-consecutive-errors";
/// `waypoint.mesh/outlier-ejection-seconds`.
pub const OUTLIER_EJECTION_SECONDS: &str = "waypoint.mesh/outlier-ejection-seconds";

/// A bad annotation value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{annotation}: {reason}")]
pub struct AnnotationError {
    /// The annotation.
    pub annotation: &'static str,
    /// Why its value is refused.
    pub reason: String,
}

fn bad(annotation: &'static str, reason: String) -> AnnotationError {
    AnnotationError { annotation, reason }
}

fn number(annotation: &'static str, v: &str, max: u32) -> Result<u32, AnnotationError> {
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(annotation, format!("{v:?} is not a number from 1 to {max}"))),
    }
}

/// The backend policy of the service `hostname` from its annotations; `Ok(None)` when it has
/// none of ours.
pub fn from_annotations(hostname: &str, a: &Labels) -> Result<Option<BackendPolicy>, AnnotationError> {
    let lb = a.get(LOAD_BALANCER);
    let errors = a.get(OUTLIER_CONSECUTIVE_ERRORS);
    let ejection = a.get(OUTLIER_EJECTION_SECONDS);
    if lb.is_none() && errors.is_none() && ejection.is_none() {
        return Ok(None);
    }
    let mut p = BackendPolicy { hostname: hostname.to_owned(), ..Default::default() };
    if let Some(v) = lb {
        let (kind, header) = match v.trim() {
            "least-request" => (LoadBalancer::LeastRequest, ""),
            "round-robin" => (LoadBalancer::RoundRobin, ""),
            "random" => (LoadBalancer::Random, ""),
            other => match other.strip_prefix("consistent-hash:") {
                Some(h) if http::HeaderName::from_bytes(h.as_bytes()).is_ok() => (LoadBalancer::ConsistentHash, h),
                Some(h) => return Err(bad(LOAD_BALANCER, format!("{h:?} is not a header name"))),
                None => {
                    return Err(bad(
                        LOAD_BALANCER,
                        format!(
                            "unsupported value {v:?} (supported: least-request, round-robin, random, consistent-hash:<header>)"
                        ),
                    ));
                }
            },
        };
        p.load_balancer = kind as i32;
        p.hash_header = header.to_ascii_lowercase();
    }
    if let Some(v) = errors {
        p.outlier_consecutive_errors = number(OUTLIER_CONSECUTIVE_ERRORS, v, 1000)?;
    }
    if let Some(v) = ejection {
        let secs = number(OUTLIER_EJECTION_SECONDS, v, 3600)?;
        p.outlier_ejection = Some(prost_types::Duration { seconds: i64::from(secs), nanos: 0 });
    }
    Ok(Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(kv: &[(&str, &str)]) -> Labels {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn annotations_become_a_policy() {
        assert_eq!(from_annotations("h", &ann(&[("other", "x")])), Ok(None));
        let p = from_annotations(
            "reviews.shop.svc.cluster.local",
            &ann(&[
                (LOAD_BALANCER, "consistent-hash:X-User"),
                (OUTLIER_CONSECUTIVE_ERRORS, "3"),
                (OUTLIER_EJECTION_SECONDS, "10"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.hostname, "reviews.shop.svc.cluster.local");
        assert_eq!(p.load_balancer, LoadBalancer::ConsistentHash as i32);
        assert_eq!(p.hash_header, "x-user");
        assert_eq!(p.outlier_consecutive_errors, 3);
        assert_eq!(p.outlier_ejection.unwrap().seconds, 10);
        let rr = from_annotations("h", &ann(&[(LOAD_BALANCER, "round-robin")])).unwrap().unwrap();
        assert_eq!((rr.load_balancer, rr.outlier_consecutive_errors), (LoadBalancer::RoundRobin as i32, 0));
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v, expect) in [
            (LOAD_BALANCER, "fastest", "unsupported value \"fastest\""),
            (LOAD_BALANCER, "consistent-hash:bad header", "not a header name"),
            (OUTLIER_CONSECUTIVE_ERRORS, "0", "not a number from 1 to 1000"),
            (OUTLIER_EJECTION_SECONDS, "ten", "not a number from 1 to 3600"),
        ] {
            let e = from_annotations("h", &ann(&[(k, v)])).unwrap_err();
            assert_eq!(e.annotation, k);
            assert!(e.to_string().starts_with(k) && e.reason.contains(expect), "{e}");
        }
    }
}
