//! The header fields that belong to one connection or frame one message: the proxy strips the
//! first when forwarding ([`crate::proxy`]) and a route's header modifier may touch none of
//! them ([`crate::state::route`]). One list, so the two never drift apart.

use http::{HeaderMap, HeaderName, header};

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

/// Whether the request's `Transfer-Encoding` fields, if any, list `chunked` and nothing else.
///
/// The HTTP/1.1 server takes a request whose last coding is `chunked` and undoes only that one;
/// the field is hop-by-hop and goes, so any coding before it (`gzip, chunked`, or `chunked`
/// twice over one field or several) would reach the application as plain body bytes it reads
/// otherwise than the client meant them. Such a request is refused (RFC 9112 §6.1: 501 for a
/// transfer coding the server does not understand).
pub fn chunked_alone(h: &HeaderMap) -> bool {
    let mut codings = 0usize;
    for v in h.get_all(header::TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else { return false };
        for c in v.split(',') {
            codings += 1;
            if codings > 1 || !c.trim().eq_ignore_ascii_case("chunked") {
                return false;
            }
        }
    }
    true
}

/// Whether a field value starts or ends with whitespace (SP or HTAB), which makes an HTTP/2
/// request malformed (RFC 9113 §8.2.1). The HTTP/1.1 parser trims such whitespace; HTTP/2
/// carries it as sent, so policy would compare ` admin` where an HTTP/1.1 application (or one
/// that trims) reads `admin`.
pub fn has_padded_value(h: &HeaderMap) -> bool {
    let ws = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    h.values().any(|v| ws(v.as_bytes().first()) || ws(v.as_bytes().last()))
}

/// Joins the `cookie` fields of an HTTP/2 request into one, with `"; "` between them.
///
/// HTTP/2 clients send each cookie in a field of its own (RFC 9113 §8.2.3), and the fields
/// must be joined so before the request goes to HTTP/1.1, where a request has one `Cookie`
/// (RFC 6265 §5.4) and an application reading only the first would lose the others. Joined
/// for every HTTP/2 request, before policy and routing, so that a `request.headers[cookie]`
/// condition reads the value the application gets whatever its version. Only a request with
/// several fields is touched (and allocates).
pub fn join_cookies(h: &mut HeaderMap) {
    let mut fields = h.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for v in h.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Made of valid values and "; ", so a valid value.
    if let Ok(v) = http::HeaderValue::from_bytes(&joined) {
        h.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_fields_are_joined_into_one() {
        let mut h = HeaderMap::new();
        for c in ["a=1", "b=2", "c=3"] {
            h.append(header::COOKIE, http::HeaderValue::from_static(c));
        }
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().collect::<Vec<_>>(), ["a=1; b=2; c=3"]);
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, http::HeaderValue::from_static("a=1"));
        join_cookies(&mut one);
        assert_eq!(one[header::COOKIE], "a=1");
    }

    #[test]
    fn padded_values_are_found() {
        let map = |v: &'static str| -> HeaderMap {
            [(HeaderName::from_static("x-a"), http::HeaderValue::from_static(v))].into_iter().collect()
        };
        for padded in [" a", "a ", "\ta", "a\t", " "] {
            assert!(has_padded_value(&map(padded)), "{padded:?}");
        }
        for fine in ["a", "a b", "a\tb", ""] {
            assert!(!has_padded_value(&map(fine)), "{fine:?}");
        }
    }

    #[test]
    fn only_a_lone_chunked_coding_is_taken() {
        let map = |fields: &[&'static str]| -> HeaderMap {
            fields.iter().map(|v| (header::TRANSFER_ENCODING, http::HeaderValue::from_static(v))).collect()
        };
        assert!(chunked_alone(&HeaderMap::new()));
        for ok in [&["chunked"][..], &["Chunked"], &[" chunked "]] {
            assert!(chunked_alone(&map(ok)), "{ok:?}");
        }
        for bad in [
            &["gzip, chunked"][..],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &["gzip", "chunked"],
            &[", chunked"],
        ] {
            assert!(!chunked_alone(&map(bad)), "{bad:?}");
        }
    }

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
