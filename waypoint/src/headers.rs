//! The header fields that belong to one connection or frame one message: the proxy strips the
//! first when forwarding ([`crate::proxy`]) and a route's header modifier may touch none of
//! them ([`crate::state::route`]). One list, so the two never drift apart.

use http::HeaderName;

/// Connection-specific fields (RFC 9110 §7.6.1), never forwarded as they came, in lower case
/// as `HeaderName` holds them. `te` is among them, but its `trailers` is re-sent on its own
/// (the proxy's forwarding says why).
pub const HOP_BY_HOP: [&str; 6] =
    ["connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"];

/// Fields that frame a message without belonging to one connection: the proxy keeps them when
/// forwarding, but they describe the bytes as sent (RFC 9110 §8.6, §6.6.2), so a filter that
/// set `content-length` would cut the body short.
pub const FRAMING: [&str; 2] = ["content-length", "trailer"];

/// Whether `name` is hop-by-hop or framing: a field the proxy writes for each hop, which a
/// route may not modify.
pub fn is_connection_or_framing(name: &HeaderName) -> bool {
    let n = name.as_str();
    HOP_BY_HOP.contains(&n) || FRAMING.contains(&n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `HeaderName` holds names in lower case; a list entry in any other case would never be
    /// compared equal, and the field would pass unnoticed.
    #[test]
    fn every_name_is_a_header_name_as_held() {
        for n in HOP_BY_HOP.iter().chain(&FRAMING) {
            let h = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert_eq!(h.as_str(), *n);
            assert!(is_connection_or_framing(&h), "{n}");
        }
        assert!(!is_connection_or_framing(&HeaderName::from_static("host")));
    }
}
