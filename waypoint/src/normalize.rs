//! Request path normalization, applied before routing and authorization; the normalized path
//! is also what the backend receives, so policy and application see the same path.
//!
//! We implement what Istio calls `DECODE_AND_MERGE_SLASHES`, Istio's documented hardening
//! option (its default, `BASE`, neither merges `//` nor decodes `%2F`, which lets `/admin//x`
//! or `/admin%2Fx` slip past a `DENY /admin/*`; a waypoint is a security boundary, so we
//! take the stricter option):
//!
//! 1. Percent-decode unreserved characters (`A-Z a-z 0-9 - . _ ~`) and the slashes `%2F` and
//!    `%5C` (either hex case); other escapes are kept with upper-case hex (RFC 3986 6.2.2.1).
//! 2. A backslash is a slash.
//! 3. Runs of slashes merge into one.
//! 4. `.` and `..` segments are resolved (RFC 3986 5.2.4); `..` never climbs above the root.
//!
//! Paths stay case-sensitive (as in Istio). A malformed escape (`%zz`, a truncated `%4`), a
//! control character raw or encoded (`%00`-`%1F`, `%7F`), or a path not starting with `/` is
//! refused: the caller answers 400 (fail closed rather than guess what the backend would make
//! of it: an application that trims the path it decodes reads `/admin%0A` as `/admin`, which
//! a policy on `/admin` never saw).

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path does not start with `/` (and is not `*`).
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-escape at byte {0}")]
    BadEscape(usize),
    /// A control byte, raw or percent-encoded.
    #[error("control character in path at byte {0}")]
    Control(usize),
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes `path` (without the query). Returns the input unchanged (borrowed) when it is
/// already normal, which is the common case and costs no allocation.
pub fn normalize(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(bytes)? {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    // Steps 1-2: decode into a byte buffer of segments separated by '/'.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
            else {
                return Err(PathError::BadEscape(i));
            };
            let v = h * 16 + l;
            if v < 0x20 || v == 0x7f {
                return Err(PathError::Control(i));
            }
            if unreserved(v) {
                decoded.push(v);
            } else if v == b'/' || v == b'\\' {
                decoded.push(b'/');
            } else {
                decoded.extend_from_slice(&[
                    b'%',
                    bytes[i + 1].to_ascii_uppercase(),
                    bytes[i + 2].to_ascii_uppercase(),
                ]);
            }
            i += 3;
        } else {
            if b < 0x20 || b == 0x7f {
                return Err(PathError::Control(i));
            }
            decoded.push(if b == b'\\' { b'/' } else { b });
            i += 1;
        }
    }
    // Steps 3-4 over segments.
    let mut out: Vec<&[u8]> = Vec::new();
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (n, seg) in segments.iter().enumerate() {
        if n == 0 {
            continue; // before the leading slash
        }
        match *seg {
            b"" => {
                if n == last {
                    trailing_slash = true;
                }
            }
            b"." => trailing_slash = n == last,
            b".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = Vec::with_capacity(decoded.len());
    for seg in &out {
        result.push(b'/');
        result.extend_from_slice(seg);
    }
    if out.is_empty() || trailing_slash {
        result.push(b'/');
    }
    // Only ASCII bytes were rewritten and escapes stay escapes, so UTF-8 validity is kept;
    // the input was a &str.
    Ok(std::borrow::Cow::Owned(
        String::from_utf8(result).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
    ))
}

/// True when nothing would change: no escapes, backslashes, `//`, dot segments or control bytes.
fn is_normal(b: &[u8]) -> Result<bool, PathError> {
    let mut prev_slash = false;
    for (i, &c) in b.iter().enumerate() {
        if c < 0x20 || c == 0x7f {
            return Err(PathError::Control(i));
        }
        match c {
            b'%' | b'\\' => return Ok(false),
            b'/' if prev_slash => return Ok(false),
            b'.' if prev_slash => {
                // "/." followed by end, '/', or ".": a dot segment (or something starting like one).
                match b.get(i + 1) {
                    None | Some(b'/') | Some(b'.') => return Ok(false),
                    _ => {}
                }
            }
            _ => {}
        }
        prev_slash = c == b'/';
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn rfc3986_examples_and_istio_cases() {
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a/b/c/./../../g"), "/a/g");
        assert_eq!(n("/mid/content=5/../6"), "/mid/6");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("/admin/."), "/admin/");
        assert_eq!(n("/admin/.."), "/");
        assert_eq!(n("//admin//secret"), "/admin/secret");
        assert_eq!(n("/public/%2e%2e/admin"), "/admin");
        assert_eq!(n("/public/%2E%2e/admin"), "/admin");
        assert_eq!(n("/admin%2Fsecret"), "/admin/secret");
        assert_eq!(n("/admin%5csecret"), "/admin/secret");
        assert_eq!(n("/a\\b"), "/a/b");
        assert_eq!(n("/%61dmin"), "/admin");
        assert_eq!(n("/a%20b%3f"), "/a%20b%3F");
        assert_eq!(n("/Admin"), "/Admin", "paths stay case-sensitive");
        assert_eq!(n("/a/"), "/a/");
        assert_eq!(n("/a/..."), "/a/...");
        assert_eq!(n("/.well-known/x"), "/.well-known/x");
        assert!(matches!(normalize("/a/b"), Ok(std::borrow::Cow::Borrowed(_))), "normal paths are not copied");
    }

    #[test]
    fn refusals() {
        assert_eq!(normalize("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(normalize(""), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize("/a%4"), Err(PathError::BadEscape(2)));
        assert_eq!(normalize("/a%00"), Err(PathError::Control(2)));
        assert_eq!(normalize("/a\x01"), Err(PathError::Control(2)));
        for encoded in ["/admin%0a", "/admin%0D", "/a%09b", "/a%1f", "/a%7F", "/a%7f/b"] {
            assert!(matches!(normalize(encoded), Err(PathError::Control(_))), "{encoded}");
        }
        // Encoded bytes above the controls stay escaped.
        assert_eq!(n("/a%20b%7e%80"), "/a%20b~%80");
    }
}
