//! The request headers HBONE carries besides `:authority`.

use std::net::SocketAddr;

use http::HeaderValue;

/// Name of the header that carries the original client address (RFC 7239).
pub const FORWARDED: &str = "forwarded";

/// `for="<ip:port>"`, quoted because of the colon (and brackets, for IPv6).
pub fn forwarded_for(addr: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(format!("for=\"{addr}\"")).expect("socket addresses are valid header text")
}

/// The original client address from a `forwarded` header, if it names one by IP and port.
///
/// Only the first element and its `for` parameter are read: the first hop is the one the
/// sending proxy vouches for.
pub fn parse_forwarded_for(value: &HeaderValue) -> Option<SocketAddr> {
    let text = value.to_str().ok()?;
    let first = text.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim().trim_matches('"').parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_v4_and_v6() {
        for a in ["10.1.2.3:4567", "[fd00::1]:80"] {
            let addr: SocketAddr = a.parse().unwrap();
            let v = forwarded_for(addr);
            assert_eq!(v.to_str().unwrap(), format!("for=\"{a}\""));
            assert_eq!(parse_forwarded_for(&v), Some(addr));
        }
    }

    #[test]
    fn reads_first_element_only() {
        let v = HeaderValue::from_static("proto=http;For=\"10.0.0.1:1\", for=\"10.0.0.2:2\"");
        assert_eq!(parse_forwarded_for(&v), Some("10.0.0.1:1".parse().unwrap()));
        assert_eq!(parse_forwarded_for(&HeaderValue::from_static("for=unknown")), None);
        assert_eq!(parse_forwarded_for(&HeaderValue::from_static("by=\"1.2.3.4:5\"")), None);
    }
}
