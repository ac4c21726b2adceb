//! Request and response heads out of decoded header fields, with the rules RFC 9113 §8.2–8.3
//! sets for HTTP/2 fields: anything else is a malformed message, which resets its stream.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::hpack::Field;

/// A request's pseudo-header fields and the rest.
#[derive(Debug, Clone)]
pub struct RequestHead {
    /// `:method`.
    pub method: Bytes,
    /// `:authority`, if sent.
    pub authority: Option<Bytes>,
    /// `:scheme`, if sent (never for a plain CONNECT).
    pub scheme: Option<Bytes>,
    /// `:path`, if sent (never for a plain CONNECT).
    pub path: Option<Bytes>,
    /// `:protocol` (extended CONNECT, RFC 8441), if sent.
    pub protocol: Option<Bytes>,
    /// Regular fields.
    pub fields: HeaderMap,
}

/// A response's status and fields.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// `:status`.
    pub status: StatusCode,
    /// Regular fields.
    pub fields: HeaderMap,
}

/// Fields that HTTP/2 forbids because they describe an HTTP/1.1 connection (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&[u8]; 5] =
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"];

fn regular(fields: &mut HeaderMap, f: Field) -> Result<(), &'static str> {
    if f.name.iter().any(|c| c.is_ascii_uppercase()) {
        return Err("upper-case field name");
    }
    if CONNECTION_SPECIFIC.contains(&&f.name[..]) {
        return Err("connection-specific field");
    }
    if &f.name[..] == b"te" && &f.value[..] != b"trailers" {
        return Err("te other than \"trailers\"");
    }
    let name = HeaderName::from_bytes(&f.name).map_err(|_| "invalid field name")?;
    let value = HeaderValue::from_maybe_shared(f.value).map_err(|_| "invalid field value")?;
    fields.append(name, value);
    Ok(())
}

/// Splits fields into pseudo-headers (checked: known, once each, before any regular field)
/// and the regular ones.
fn split(
    list: Vec<Field>,
    mut pseudo: impl FnMut(&[u8], Bytes) -> Result<(), &'static str>,
) -> Result<HeaderMap, &'static str> {
    let mut fields = HeaderMap::new();
    let mut regular_seen = false;
    for f in list {
        if f.name.first() == Some(&b':') {
            if regular_seen {
                return Err("pseudo-header after a regular field");
            }
            pseudo(&f.name[..], f.value)?;
        } else {
            regular_seen = true;
            regular(&mut fields, f)?;
        }
    }
    Ok(fields)
}

fn once(slot: &mut Option<Bytes>, value: Bytes) -> Result<(), &'static str> {
    if slot.replace(value).is_some() { Err("repeated pseudo-header") } else { Ok(()) }
}

/// A request head, or why it is malformed.
pub fn request(list: Vec<Field>) -> Result<RequestHead, &'static str> {
    let (mut method, mut authority, mut scheme, mut path, mut protocol) = (None, None, None, None, None);
    let fields = split(list, |name, value| match name {
        b":method" => once(&mut method, value),
        b":authority" => once(&mut authority, value),
        b":scheme" => once(&mut scheme, value),
        b":path" => once(&mut path, value),
        b":protocol" => once(&mut protocol, value),
        b":status" => Err(":status in a request"),
        _ => Err("unknown pseudo-header"),
    })?;
    let method = method.ok_or("no :method")?;
    if &method[..] == b"CONNECT" && protocol.is_none() {
        if scheme.is_some() || path.is_some() {
            return Err("CONNECT with :scheme or :path");
        }
        if authority.is_none() {
            return Err("CONNECT without :authority");
        }
    } else if scheme.is_none() || path.as_ref().is_none_or(|p| p.is_empty()) {
        return Err("request without :scheme or :path");
    }
    Ok(RequestHead { method, authority, scheme, path, protocol, fields })
}

/// A response head, or why it is malformed.
pub fn response(list: Vec<Field>) -> Result<ResponseHead, &'static str> {
    let mut status = None;
    let fields = split(list, |name, value| match name {
        b":status" => once(&mut status, value),
        _ => Err("request pseudo-header in a response"),
    })?;
    let status = status.ok_or("no :status")?;
    if status.len() != 3 {
        return Err(":status is not three digits");
    }
    let status = StatusCode::from_bytes(&status).map_err(|_| ":status is not three digits")?;
    Ok(ResponseHead { status, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| Field {
                name: Bytes::copy_from_slice(n.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect()
    }

    #[test]
    fn connect_request_is_read() {
        let r =
            request(fields(&[(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("forwarded", "for=x")])).unwrap();
        assert_eq!((&r.method[..], r.authority.as_deref()), (&b"CONNECT"[..], Some(&b"10.0.0.1:80"[..])));
        assert_eq!(r.fields["forwarded"], "for=x");
        assert!(r.scheme.is_none() && r.path.is_none() && r.protocol.is_none());
    }

    #[test]
    fn malformed_requests_are_refused() {
        for (list, why) in [
            (&[(":authority", "a:1")][..], "no :method"),
            (&[(":method", "CONNECT")], "CONNECT without :authority"),
            (&[(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")], "CONNECT with :scheme or :path"),
            (&[(":method", "GET"), (":authority", "a")], "request without :scheme or :path"),
            (&[(":method", "CONNECT"), ("x", "1"), (":authority", "a:1")], "pseudo-header after a regular field"),
            (&[(":method", "CONNECT"), (":method", "CONNECT")], "repeated pseudo-header"),
            (&[(":method", "CONNECT"), (":foo", "1")], "unknown pseudo-header"),
            (&[(":method", "CONNECT"), (":status", "200")], ":status in a request"),
            (&[(":method", "CONNECT"), (":authority", "a:1"), ("Host", "a")], "upper-case field name"),
            (&[(":method", "CONNECT"), (":authority", "a:1"), ("connection", "close")], "connection-specific field"),
            (&[(":method", "CONNECT"), (":authority", "a:1"), ("te", "gzip")], "te other than \"trailers\""),
            (&[(":method", "CONNECT"), (":authority", "a:1"), ("x", "a\nb")], "invalid field value"),
        ] {
            assert_eq!(request(fields(list)).unwrap_err(), why, "{list:?}");
        }
    }

    #[test]
    fn responses_need_exactly_one_three_digit_status() {
        let r = response(fields(&[(":status", "401"), ("content-type", "text/plain")])).unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(response(fields(&[("x", "1")])).unwrap_err(), "no :status");
        assert_eq!(response(fields(&[(":status", "20")])).unwrap_err(), ":status is not three digits");
        assert_eq!(response(fields(&[(":status", "2000")])).unwrap_err(), ":status is not three digits");
        assert_eq!(
            response(fields(&[(":status", "200"), (":path", "/")])).unwrap_err(),
            "request pseudo-header in a response"
        );
    }
}
