//! Checks on `HTTPRoute` and `GRPCRoute` values the schema cannot express (match types, regexes,
//! filter combinations, durations), with the field named.
//!
//! Problems outside the rules (`parentRefs`, `hostnames`) refuse the route whole, as the Gateway
//! API's CRD validation would refuse it at `kubectl apply`. A problem inside one rule (its
//! matches, filters, backendRefs, timeouts, retry) makes only that rule invalid: the Gateway API
//! lets an implementation drop such a rule and serve the others (`PartiallyInvalid`, "Dropped
//! Rule"), which is what route translation does with [`invalid_rules`]. A route whose every rule
//! is invalid has nothing left to serve and is refused whole. Route translation relies on what
//! is checked here.

use crate::error::ObjectError;
use crate::k8s::gateway::{
    BackendObjectRef, MethodMatch, PathModifier, Route, RouteFilter, RouteMatch, RouteRule, ValueMatch, parse_duration,
};

/// HTTP methods an `HTTPRouteMatch` may name (the API's enum).
const HTTP_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// `HTTPRequestRedirectFilter.statusCode` values (the API's enum).
pub const REDIRECT_CODES: [u32; 5] = [301, 302, 303, 307, 308];

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ObjectError {
    ObjectError::Invalid { field: field.into(), reason: reason.into() }
}

/// Compiles `value` as a whole-value regular expression.
pub fn check_regex(field: &str, value: &str) -> Result<(), ObjectError> {
    regex::Regex::new(value).map(|_| ()).map_err(|e| invalid(field, format!("not a valid regular expression: {e}")))
}

/// Whether `h` is a Gateway API `PreciseHostname`: an RFC 1123 DNS name of 1 to 253
/// characters (labels of 1 to 63 letters, digits and inner `-`), not an IP address, so no
/// wildcard and no port. Upper case is tolerated (hostnames are compared and sent in lower case).
pub fn precise_hostname(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && h.parse::<std::net::IpAddr>().is_err()
        && h.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn hostname_field(field: String, h: Option<&str>) -> Result<(), ObjectError> {
    match h {
        Some(h) if !precise_hostname(h) => Err(invalid(
            field,
            format!("{h:?} is not a precise hostname (an RFC 1123 DNS name: no wildcard, port or IP address)"),
        )),
        _ => Ok(()),
    }
}

/// A rule of a route that cannot be served, and the first problem found in it.
#[derive(Debug)]
pub struct InvalidRule {
    /// Its index in `spec.rules`.
    pub index: usize,
    /// What is wrong; the field path starts with `spec.rules[<index>]`.
    pub error: ObjectError,
}

/// The rules of `r` that are invalid, in order; `grpc` for a `GRPCRoute`.
pub fn invalid_rules(r: &Route, grpc: bool) -> Vec<InvalidRule> {
    r.spec
        .rules
        .iter()
        .enumerate()
        .filter_map(|(index, rule)| {
            self::rule(&format!("spec.rules[{index}]"), rule, grpc).err().map(|error| InvalidRule { index, error })
        })
        .collect()
}

/// Validates one route; `grpc` for a `GRPCRoute`. Invalid rules pass while another rule is
/// valid (translation drops them); when none is, the first rule's problem refuses the route.
pub(super) fn route(r: &Route, grpc: bool) -> Result<(), ObjectError> {
    for (i, p) in r.spec.parent_refs.iter().enumerate() {
        if p.name.is_empty() {
            return Err(invalid(format!("spec.parentRefs[{i}].name"), "required"));
        }
        if p.port == Some(0) {
            return Err(invalid(format!("spec.parentRefs[{i}].port"), "must be 1-65535"));
        }
    }
    for (i, h) in r.spec.hostnames.iter().enumerate() {
        // At most one leading wildcard label.
        let name = h.strip_prefix("*.").unwrap_or(h);
        if h.len() > 253 || !precise_hostname(name) {
            return Err(invalid(format!("spec.hostnames[{i}]"), format!("{h:?} is not a hostname")));
        }
    }
    let invalid = invalid_rules(r, grpc);
    if invalid.len() == r.spec.rules.len()
        && let Some(first) = invalid.into_iter().next()
    {
        return Err(first.error);
    }
    Ok(())
}

fn rule(base: &str, rule: &RouteRule, grpc: bool) -> Result<(), ObjectError> {
    for (j, m) in rule.matches.iter().enumerate() {
        route_match(&format!("{base}.matches[{j}]"), m, grpc)?;
    }
    filters(&format!("{base}.filters"), &rule.filters, rule, grpc)?;
    let redirects = rule.filters.iter().any(|f| f.type_ == "RequestRedirect");
    if redirects && !rule.backend_refs.is_empty() {
        return Err(invalid(format!("{base}.backendRefs"), "cannot be used with a RequestRedirect filter"));
    }
    for (k, b) in rule.backend_refs.iter().enumerate() {
        let field = format!("{base}.backendRefs[{k}]");
        if b.name.is_empty() {
            return Err(invalid(format!("{field}.name"), "required"));
        }
        let is_service =
            b.group.as_deref().unwrap_or("").is_empty() && b.kind.as_deref().unwrap_or("Service") == "Service";
        if is_service && b.port.is_none_or(|p| p == 0) {
            return Err(invalid(format!("{field}.port"), "required (1-65535) when the backend is a Service"));
        }
        if b.weight.is_some_and(|w| w > 1_000_000) {
            return Err(invalid(format!("{field}.weight"), "must be 0-1000000"));
        }
        filters(&format!("{field}.filters"), &b.filters, rule, grpc)?;
        if b.filters.iter().any(|f| f.type_ == "RequestRedirect") {
            return Err(invalid(format!("{field}.filters"), "RequestRedirect is a rule filter, not a backend filter"));
        }
    }
    if let Some(t) = &rule.timeouts {
        if grpc {
            return Err(invalid(format!("{base}.timeouts"), "not a GRPCRoute field"));
        }
        let request = duration(&format!("{base}.timeouts.request"), t.request.as_deref())?;
        let backend = duration(&format!("{base}.timeouts.backendRequest"), t.backend_request.as_deref())?;
        // As the API's rule has it: a zero request timeout (none) bounds nothing, and a zero
        // backendRequest (none for each try) is not longer than any request timeout.
        if let (Some(r), Some(b)) = (request, backend)
            && !r.is_zero()
            && b > r
        {
            return Err(invalid(format!("{base}.timeouts.backendRequest"), "must not be longer than timeouts.request"));
        }
    }
    if let Some(r) = &rule.retry {
        if grpc {
            return Err(invalid(format!("{base}.retry"), "not a GRPCRoute field"));
        }
        for (k, c) in r.codes.iter().enumerate() {
            if !(400..=599).contains(c) {
                return Err(invalid(
                    format!("{base}.retry.codes[{k}]"),
                    format!("{c} is not an HTTP error code (400-599)"),
                ));
            }
        }
        if r.attempts.is_some_and(|a| a > 100) {
            return Err(invalid(format!("{base}.retry.attempts"), "more than 100 retries"));
        }
        duration(&format!("{base}.retry.backoff"), r.backoff.as_deref())?;
    }
    Ok(())
}

fn duration(field: &str, v: Option<&str>) -> Result<Option<std::time::Duration>, ObjectError> {
    v.map(|s| {
        parse_duration(s).ok_or_else(|| invalid(field, format!("{s:?} is not a duration (e.g. 10s, 1m30s, 500ms)")))
    })
    .transpose()
}

fn match_type<'a>(field: &str, t: Option<&'a str>, default: &'a str, allowed: &[&str]) -> Result<&'a str, ObjectError> {
    let t = t.unwrap_or(default);
    if allowed.contains(&t) {
        Ok(t)
    } else {
        Err(invalid(field, format!("unsupported value {t:?} (supported: {})", allowed.join(", "))))
    }
}

/// Headers that frame the message or belong to one connection (RFC 9110 §7.6.1, RFC 9112
/// §6): the proxy writes them itself for each hop. A filter that set one would cut or stall
/// the body (a `content-length` shorter than the body truncates it), so it is refused rather
/// than applied.
const FRAMING_HEADERS: [&str; 8] =
    ["connection", "content-length", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

fn framing(name: &str, field: String) -> Result<(), ObjectError> {
    if FRAMING_HEADERS.iter().any(|f| f.eq_ignore_ascii_case(name)) {
        return Err(invalid(
            field,
            format!("{name:?} frames the message or belongs to one connection; the proxy sets it for each hop"),
        ));
    }
    Ok(())
}

fn value_matches(base: &str, what: &str, v: &[ValueMatch], header: bool) -> Result<(), ObjectError> {
    let mut seen: Vec<String> = Vec::new();
    for (k, h) in v.iter().enumerate() {
        let field = format!("{base}.{what}[{k}]");
        if h.name.is_empty() {
            return Err(invalid(format!("{field}.name"), "required"));
        }
        if header && http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            return Err(invalid(format!("{field}.name"), format!("{:?} is not a header name", h.name)));
        }
        // The same name twice is refused, as the API server refuses it (the list is keyed by
        // name). Header names equal but for case are different keys to the API server, and
        // the Gateway API says the first of them counts: translation keeps that one.
        if seen.contains(&h.name) {
            return Err(invalid(format!("{field}.name"), format!("{:?} is matched twice", h.name)));
        }
        seen.push(h.name.clone());
        if match_type(&format!("{field}.type"), h.type_.as_deref(), "Exact", &["Exact", "RegularExpression"])?
            == "RegularExpression"
        {
            check_regex(&format!("{field}.value"), &h.value)?;
        }
    }
    Ok(())
}

fn route_match(base: &str, m: &RouteMatch, grpc: bool) -> Result<(), ObjectError> {
    value_matches(base, "headers", &m.headers, true)?;
    if grpc {
        if m.path.is_some() {
            return Err(invalid(format!("{base}.path"), "not a GRPCRoute field (match the method instead)"));
        }
        if !m.query_params.is_empty() {
            return Err(invalid(format!("{base}.queryParams"), "not a GRPCRoute field"));
        }
        match &m.method {
            None => {}
            Some(MethodMatch::Http(s)) => {
                return Err(invalid(
                    format!("{base}.method"),
                    format!("{s:?}: a GRPCRoute method is {{type, service, method}}"),
                ));
            }
            Some(MethodMatch::Grpc(g)) => {
                let t = match_type(
                    &format!("{base}.method.type"),
                    g.type_.as_deref(),
                    "Exact",
                    &["Exact", "RegularExpression"],
                )?;
                if g.service.as_deref().unwrap_or("").is_empty() && g.method.as_deref().unwrap_or("").is_empty() {
                    return Err(invalid(format!("{base}.method"), "needs a service or a method"));
                }
                for (name, v) in [("service", &g.service), ("method", &g.method)] {
                    let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else { continue };
                    let field = format!("{base}.method.{name}");
                    if t == "RegularExpression" {
                        check_regex(&field, v)?;
                    } else if v.contains('/') {
                        return Err(invalid(field, format!("{v:?} contains '/'")));
                    }
                }
            }
        }
        return Ok(());
    }
    value_matches(base, "queryParams", &m.query_params, false)?;
    if let Some(p) = &m.path {
        let field = format!("{base}.path");
        let t = match_type(
            &format!("{field}.type"),
            p.type_.as_deref(),
            "PathPrefix",
            &["Exact", "PathPrefix", "RegularExpression"],
        )?;
        let v = p.value.as_deref().unwrap_or("/");
        if t == "RegularExpression" {
            check_regex(&format!("{field}.value"), v)?;
        } else if !v.starts_with('/') {
            return Err(invalid(format!("{field}.value"), format!("{v:?} must start with '/'")));
        } else if let Some(c) = v.chars().find(|&c| !path_char(c)) {
            return Err(invalid(format!("{field}.value"), format!("{v:?} contains {c:?}, which a path match may not")));
        } else if v.contains("//")
            || v.split('/').any(|seg| seg == "." || seg == "..")
            || v.contains("%2f")
            || v.contains("%2F")
            || !percent_escapes_ok(v)
        {
            return Err(invalid(format!("{field}.value"), format!("{v:?} is not a normalized path")));
        }
    }
    match &m.method {
        None => Ok(()),
        Some(MethodMatch::Http(s)) if HTTP_METHODS.contains(&s.as_str()) => Ok(()),
        Some(MethodMatch::Http(s)) => Err(invalid(
            format!("{base}.method"),
            format!("unsupported value {s:?} (supported: {})", HTTP_METHODS.join(", ")),
        )),
        Some(MethodMatch::Grpc(_)) => {
            Err(invalid(format!("{base}.method"), "an HTTPRoute method is a method name, e.g. GET"))
        }
    }
}

/// A character an `Exact` or `PathPrefix` value may hold (the Gateway API's pattern: RFC 3986
/// `pchar` and `/`, with `%` starting an escape).
fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-/._~!$&'()*+,;=:@%".contains(c)
}

/// Whether every `%` in `v` starts a two-hex-digit escape.
fn percent_escapes_ok(v: &str) -> bool {
    let b = v.as_bytes();
    b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit) && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fn filters(base: &str, fs: &[RouteFilter], rule: &RouteRule, grpc: bool) -> Result<(), ObjectError> {
    let mut seen: Vec<&str> = Vec::new();
    for (k, f) in fs.iter().enumerate() {
        let field = format!("{base}[{k}]");
        filter(&field, f, rule, grpc)?;
        if f.type_ != "RequestMirror" && seen.contains(&f.type_.as_str()) {
            return Err(invalid(format!("{field}.type"), format!("{} appears twice", f.type_)));
        }
        seen.push(&f.type_);
    }
    if seen.contains(&"RequestRedirect") && seen.contains(&"URLRewrite") {
        return Err(invalid(base, "RequestRedirect and URLRewrite cannot be used together"));
    }
    Ok(())
}

fn filter(field: &str, f: &RouteFilter, rule: &RouteRule, grpc: bool) -> Result<(), ObjectError> {
    let supported: &[&str] = if grpc {
        &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror"]
    } else {
        &["RequestHeaderModifier", "ResponseHeaderModifier", "RequestRedirect", "URLRewrite", "RequestMirror"]
    };
    if !supported.contains(&f.type_.as_str()) {
        return Err(invalid(
            format!("{field}.type"),
            format!("unsupported value {:?} (supported: {})", f.type_, supported.join(", ")),
        ));
    }
    // Exactly the member the type names, as the API's CEL rules require.
    let members = [
        ("RequestHeaderModifier", "requestHeaderModifier", f.request_header_modifier.is_some()),
        ("ResponseHeaderModifier", "responseHeaderModifier", f.response_header_modifier.is_some()),
        ("RequestRedirect", "requestRedirect", f.request_redirect.is_some()),
        ("URLRewrite", "urlRewrite", f.url_rewrite.is_some()),
        ("RequestMirror", "requestMirror", f.request_mirror.is_some()),
        ("ExtensionRef", "extensionRef", f.extension_ref.is_some()),
    ];
    for (t, member, present) in members {
        if t == f.type_ && !present {
            return Err(invalid(format!("{field}.{member}"), format!("required when type is {t}")));
        }
        if t != f.type_ && present {
            return Err(invalid(format!("{field}.{member}"), format!("not allowed when type is {}", f.type_)));
        }
    }
    for (member, m) in
        [("requestHeaderModifier", &f.request_header_modifier), ("responseHeaderModifier", &f.response_header_modifier)]
    {
        let Some(m) = m else { continue };
        let base = format!("{field}.{member}");
        // HTTPHeaderFilter: "Only one action for a given header name is permitted", and names
        // compare without case: a name may appear once across set, add and remove.
        let mut seen: Vec<(String, String)> = Vec::new();
        let mut once = |name: &str, at: String| match seen.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some((_, first)) => Err(invalid(
                at,
                format!(
                    "header {name:?} already appears at {first} (header names compare without case; one action per header name)"
                ),
            )),
            None => {
                seen.push((name.to_owned(), at));
                Ok(())
            }
        };
        for (what, hs) in [("set", &m.set), ("add", &m.add)] {
            for (i, h) in hs.iter().enumerate() {
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    return Err(invalid(
                        format!("{base}.{what}[{i}].name"),
                        format!("{:?} is not a header name", h.name),
                    ));
                }
                if http::HeaderValue::from_str(&h.value).is_err() {
                    return Err(invalid(format!("{base}.{what}[{i}].value"), "not a valid header value"));
                }
                framing(&h.name, format!("{base}.{what}[{i}].name"))?;
                once(&h.name, format!("{base}.{what}[{i}].name"))?;
            }
        }
        for (i, n) in m.remove.iter().enumerate() {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                return Err(invalid(format!("{base}.remove[{i}]"), format!("{n:?} is not a header name")));
            }
            framing(n, format!("{base}.remove[{i}]"))?;
            once(n, format!("{base}.remove[{i}]"))?;
        }
    }
    if let Some(r) = &f.request_redirect {
        let base = format!("{field}.requestRedirect");
        if let Some(s) = r.scheme.as_deref()
            && s != "http"
            && s != "https"
        {
            return Err(invalid(format!("{base}.scheme"), format!("unsupported value {s:?} (supported: http, https)")));
        }
        // The API's enum (v1.2+): 301 and 302 are Core, 303, 307 and 308 Extended.
        if let Some(c) = r.status_code
            && !REDIRECT_CODES.contains(&c)
        {
            return Err(invalid(
                format!("{base}.statusCode"),
                format!("unsupported value {c} (supported: 301, 302, 303, 307, 308)"),
            ));
        }
        hostname_field(format!("{base}.hostname"), r.hostname.as_deref())?;
        if r.port == Some(0) {
            return Err(invalid(format!("{base}.port"), "must be 1-65535"));
        }
        if let Some(p) = &r.path {
            path_modifier(&format!("{base}.path"), p, rule)?;
        }
    }
    if let Some(u) = &f.url_rewrite {
        hostname_field(format!("{field}.urlRewrite.hostname"), u.hostname.as_deref())?;
        if let Some(p) = &u.path {
            path_modifier(&format!("{field}.urlRewrite.path"), p, rule)?;
        }
    }
    if let Some(m) = &f.request_mirror {
        let base = format!("{field}.requestMirror");
        backend_object(&format!("{base}.backendRef"), &m.backend_ref)?;
        if m.percent.is_some() && m.fraction.is_some() {
            return Err(invalid(base, "percent and fraction cannot be used together"));
        }
        if m.percent.is_some_and(|p| p > 100) {
            return Err(invalid(format!("{base}.percent"), "must be 0-100"));
        }
        if let Some(fr) = &m.fraction {
            let d = fr.denominator.unwrap_or(100);
            if d == 0 {
                return Err(invalid(format!("{base}.fraction.denominator"), "must be greater than 0"));
            }
            if fr.numerator > d {
                return Err(invalid(format!("{base}.fraction.numerator"), "must not exceed the denominator"));
            }
        }
    }
    Ok(())
}

fn backend_object(field: &str, b: &BackendObjectRef) -> Result<(), ObjectError> {
    let is_service = b.group.as_deref().unwrap_or("").is_empty() && b.kind.as_deref().unwrap_or("Service") == "Service";
    if !is_service {
        return Err(invalid(format!("{field}.kind"), "unsupported value (only core Services can be mirrored to)"));
    }
    if b.port.is_none_or(|p| p == 0) {
        return Err(invalid(format!("{field}.port"), "required (1-65535) when the backend is a Service"));
    }
    Ok(())
}

fn path_modifier(field: &str, p: &PathModifier, rule: &RouteRule) -> Result<(), ObjectError> {
    match p.type_.as_str() {
        "ReplaceFullPath" => {
            if p.replace_prefix_match.is_some() {
                return Err(invalid(format!("{field}.replacePrefixMatch"), "not allowed when type is ReplaceFullPath"));
            }
            if !p.replace_full_path.as_deref().is_some_and(|v| v.starts_with('/')) {
                return Err(invalid(format!("{field}.replaceFullPath"), "required, and must start with '/'"));
            }
        }
        "ReplacePrefixMatch" => {
            if p.replace_full_path.is_some() {
                return Err(invalid(format!("{field}.replaceFullPath"), "not allowed when type is ReplacePrefixMatch"));
            }
            // The empty string is allowed: it drops the matched prefix ("/foo/bar" -> "/bar").
            if !p.replace_prefix_match.as_deref().is_some_and(|v| v.is_empty() || v.starts_with('/')) {
                return Err(invalid(
                    format!("{field}.replacePrefixMatch"),
                    "required, and must be empty or start with '/'",
                ));
            }
            let prefix_only = rule
                .matches
                .iter()
                .all(|m| m.path.as_ref().is_none_or(|p| p.type_.as_deref().unwrap_or("PathPrefix") == "PathPrefix"));
            if !prefix_only {
                return Err(invalid(
                    field,
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                ));
            }
        }
        t => {
            return Err(invalid(
                format!("{field}.type"),
                format!("unsupported value {t:?} (supported: ReplaceFullPath, ReplacePrefixMatch)"),
            ));
        }
    }
    Ok(())
}
