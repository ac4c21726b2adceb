//! Properties of the waypoint's parsers of client input, checked on arbitrary bytes: the same
//! checks for the libFuzzer targets in `fuzz/` and for the tests below, which replay the
//! committed corpus (`fuzz/corpus/<target>/`) and seeded mutations of it (see
//! `hbone::fuzzing` for the scheme). Feature `fuzzing` (or this crate's own tests).

use crate::normalize::normalize;
use crate::proxy::detect::{Protocol, classify};
use crate::telemetry::TraceParent;

/// Request paths: an accepted path is absolute, has no `//`, no backslash and no dot segment
/// left, and normalizing it again changes nothing; so no encoding reaches policy or routing
/// in a form that a rule on the plain path would miss.
pub fn path(data: &[u8]) {
    let Ok(p) = std::str::from_utf8(data) else { return };
    let Ok(out) = normalize(p) else { return };
    assert!(out.starts_with('/'), "{p:?} -> {out:?}");
    assert!(!out.contains("//"), "{p:?} -> {out:?}");
    assert!(!out.contains('\\'), "{p:?} -> {out:?}");
    assert!(out.split('/').all(|seg| seg != "." && seg != ".."), "{p:?} -> {out:?}");
    assert_eq!(normalize(&out).as_deref(), Ok(&*out), "normalizing {p:?} twice changes nothing");
}

/// Protocol detection on a connection's first bytes: once made, a decision does not change as
/// more bytes arrive, and long enough input always gets one.
pub fn detect(data: &[u8]) {
    let mut decided: Option<Protocol> = None;
    for n in 1..=data.len() {
        let now = classify(&data[..n]);
        if let Some(p) = decided {
            assert_eq!(now, Some(p), "decision changed at byte {n} of {data:?}");
        }
        decided = now;
    }
    if data.len() > crate::proxy::detect::MAX_REQUEST_LINE + 32 {
        assert!(decided.is_some(), "no decision after {} bytes", data.len());
    }
}

/// `traceparent` headers: an accepted one is version 00's exact form, and writing it back
/// gives the lowercase header that parses to the same context.
pub fn traceparent(data: &[u8]) {
    let Ok(v) = std::str::from_utf8(data) else { return };
    let Some(tp) = TraceParent::parse(v) else { return };
    assert!(tp.trace_id != 0 && tp.span_id != 0, "{v:?}");
    let header = tp.to_header();
    assert_eq!(header.len(), 55);
    assert_eq!(TraceParent::parse(&header), Some(tp), "{v:?} -> {header:?}");
    if v.trim().starts_with("00-") {
        assert_eq!(header, v.trim(), "a version-00 header is kept as it came");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hbone::fuzzing::replay;

    /// Mutations per target and test run (as in `hbone::fuzzing`).
    const MUTATIONS: usize = 20_000;

    #[test]
    fn paths() {
        let tokens: &[&[u8]] = &[
            b"/",
            b".",
            b"..",
            b"%2e",
            b"%2E",
            b"%2f",
            b"%2F",
            b"%5C",
            b"%5c",
            b"\\",
            b"%",
            b"%4",
            b"%41",
            b"%zz",
            b"~",
            b"%00",
            b"\xc3\xa9",
            b"%25",
            b";",
            b"?",
        ];
        replay("path", Vec::new(), tokens, MUTATIONS, path);
    }

    #[test]
    fn detection() {
        let tokens: &[&[u8]] = &[
            b"GET",
            b" ",
            b"/",
            b"HTTP/1.1",
            b"\r\n",
            b"PRI * HTTP/2.0",
            b"\x00",
            b"\xff",
            b"A",
            b"\n",
            crate::proxy::detect::H2_PREFACE,
        ];
        replay("detect", Vec::new(), tokens, MUTATIONS, detect);
    }

    #[test]
    fn traceparents() {
        let tokens: &[&[u8]] = &[b"-", b"00", b"ff", b"0", b"f", b"F", b" ", b"01"];
        replay("traceparent", Vec::new(), tokens, MUTATIONS, traceparent);
    }
}
