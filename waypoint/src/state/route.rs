//! Compiled routes: Gateway API HTTPRoute/GRPCRoute rules, validated and compiled once when
//! they arrive (regexes included), ordered by Gateway API precedence for the request path.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::{Serialize, Serializer};

/// A field of a route that cannot be compiled (the push is NACKed with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Route {route}: {field}: {problem}")]
pub struct RouteError {
    /// `namespace/kind/name`.
    pub route: String,
    /// The field path, e.g. `rules[1].matches[0].path.value`.
    pub field: String,
    /// What is wrong.
    pub problem: String,
}

/// An exact or whole-value regex string match.
#[derive(Clone, Debug)]
pub enum StrMatch {
    /// Exact comparison.
    Exact(String),
    /// Must match the whole value.
    Regex(Regex),
}

impl StrMatch {
    /// Whether `v` matches.
    pub fn matches(&self, v: &str) -> bool {
        match self {
            StrMatch::Exact(e) => e == v,
            StrMatch::Regex(r) => r.is_match(v),
        }
    }
}

impl Serialize for StrMatch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StrMatch::Exact(e) => s.serialize_str(&format!("exact:{e}")),
            StrMatch::Regex(r) => s.serialize_str(&format!("regex:{}", r.as_str())),
        }
    }
}

/// A path match.
#[derive(Clone, Debug, Serialize)]
pub enum PathMatch {
    /// Exact path.
    Exact(String),
    /// Element-wise prefix, stored without a trailing slash ("" for "/").
    Prefix(String),
    /// Whole-path regex.
    Regex(#[serde(serialize_with = "ser_regex")] Regex),
}

/// Serializes through a shared pointer (serde's `rc` feature is not enabled in the workspace).
pub fn ser_arc<T: Serialize + ?Sized, S: Serializer>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
    (**v).serialize(s)
}

/// Serializes a list of shared pointers.
pub fn ser_arcs<T: Serialize + ?Sized, S: Serializer>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| &**x))
}

fn ser_regex<S: Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

impl PathMatch {
    /// Whether `path` (normalized, no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(e) => e == path,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// gRPC `/<service>/<method>` match.
#[derive(Clone, Debug, Serialize)]
pub struct GrpcMatch {
    /// `None` matches any service.
    pub service: Option<StrMatch>,
    /// `None` matches any method.
    pub method: Option<StrMatch>,
}

/// One compiled match (all fields ANDed).
#[derive(Clone, Debug, Serialize)]
pub struct Match {
    /// Path (absent for gRPC).
    pub path: Option<PathMatch>,
    /// Header matches.
    #[serde(serialize_with = "ser_headers")]
    pub headers: Vec<(HeaderName, StrMatch)>,
    /// Query parameter matches.
    pub query: Vec<(String, StrMatch)>,
    /// Method.
    #[serde(serialize_with = "ser_method")]
    pub method: Option<Method>,
    /// gRPC service/method.
    pub grpc: Option<GrpcMatch>,
}

fn ser_headers<S: Serializer>(h: &[(HeaderName, StrMatch)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(n, m)| (n.as_str(), m)))
}

fn ser_method<S: Serializer>(m: &Option<Method>, s: S) -> Result<S::Ok, S::Error> {
    match m {
        Some(m) => s.serialize_some(m.as_str()),
        None => s.serialize_none(),
    }
}

/// What a request looks like to route matching.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Normalized path without the query.
    pub path: &'a str,
    /// Raw query.
    pub query: Option<&'a str>,
    /// Headers.
    pub headers: &'a http::HeaderMap,
    /// Host without port, lower case.
    pub host: &'a str,
}

impl Match {
    /// Whether the request matches.
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method
            && m != r.method
        {
            return false;
        }
        if let Some(p) = &self.path
            && !p.matches(r.path)
        {
            return false;
        }
        if let Some(g) = &self.grpc {
            // A GRPCRoute match takes gRPC requests only (`content-type: application/grpc`,
            // `+proto` and the like included): a plain HTTP request to `/a/b` is not one,
            // whatever its path, and belongs to the HTTPRoutes of the same Service.
            if !r.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| is_grpc(v.as_bytes())) {
                return false;
            }
            let mut parts = r.path.strip_prefix('/').unwrap_or("").splitn(2, '/');
            let (svc, method) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if svc.is_empty() || method.is_empty() || method.contains('/') {
                return false;
            }
            if g.service.as_ref().is_some_and(|m| !m.matches(svc))
                || g.method.as_ref().is_some_and(|m| !m.matches(method))
            {
                return false;
            }
        }
        self.headers.iter().all(|(n, m)| {
            // Repeated headers are compared joined with ',' (RFC 9110 field combination).
            let mut values = r.headers.get_all(n).iter();
            match (values.next(), values.next()) {
                (None, _) => false,
                (Some(v), None) => v.to_str().is_ok_and(|v| m.matches(v)),
                (Some(_), Some(_)) => {
                    let joined: Vec<&str> = r.headers.get_all(n).iter().filter_map(|v| v.to_str().ok()).collect();
                    m.matches(&joined.join(","))
                }
            }
        }) && self.query.iter().all(|(n, m)| query_param(r.query, n).is_some_and(|v| m.matches(v)))
    }

    /// The prefix this match matched, for `ReplacePrefixMatch`.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            Some(PathMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }
}

/// Whether a `content-type` is gRPC's: `application/grpc`, alone or followed by `+<format>`
/// or parameters, in any case (as Envoy tells gRPC). `application/grpc-web` and the like are
/// other protocols.
pub fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.get(..GRPC.len()).is_some_and(|p| p.eq_ignore_ascii_case(GRPC))
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';' | b' ' | b'\t'))
}

/// The first value of query parameter `name`.
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Header changes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderModifier {
    /// Replace or add.
    #[serde(serialize_with = "ser_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append.
    #[serde(serialize_with = "ser_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove.
    #[serde(serialize_with = "ser_names")]
    pub remove: Vec<HeaderName>,
}

fn ser_pairs<S: Serializer>(h: &[(HeaderName, HeaderValue)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|(n, v)| (n.as_str(), v.to_str().unwrap_or("<binary>"))))
}

fn ser_names<S: Serializer>(h: &[HeaderName], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(h.iter().map(|n| n.as_str()))
}

impl HeaderModifier {
    /// Applies the changes to `h`.
    pub fn apply(&self, h: &mut http::HeaderMap) {
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            h.remove(n);
        }
    }
}

/// A path change.
#[derive(Clone, Debug, Serialize)]
pub enum PathModifier {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched prefix.
    Prefix(String),
}

impl PathModifier {
    /// The new path for `path`, given the prefix the rule matched (if any).
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            PathModifier::Full(p) => p.clone(),
            PathModifier::Prefix(replacement) => {
                let rest = match matched_prefix {
                    Some(pre) => &path[pre.len().min(path.len())..],
                    None => path,
                };
                // Gateway API: "/foo" -> "/bar" maps "/foo/x" to "/bar/x"; "/foo" -> "/" maps it to "/x".
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{replacement}{rest}"),
                }
            }
        }
    }
}

/// RequestRedirect.
#[derive(Clone, Debug, Serialize)]
pub struct Redirect {
    /// New scheme.
    pub scheme: Option<String>,
    /// New host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathModifier>,
    /// New port.
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308 (Gateway API's enum), sent as is.
    #[serde(serialize_with = "ser_status")]
    pub status: StatusCode,
}

fn ser_status<S: Serializer>(c: &StatusCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(c.as_u16())
}

/// URLRewrite.
#[derive(Clone, Debug, Serialize)]
pub struct Rewrite {
    /// New Host.
    pub hostname: Option<String>,
    /// New path.
    pub path: Option<PathModifier>,
}

/// One filter.
#[derive(Clone, Debug, Serialize)]
pub enum Filter {
    /// RequestHeaderModifier.
    RequestHeaders(HeaderModifier),
    /// ResponseHeaderModifier.
    ResponseHeaders(HeaderModifier),
    /// RequestRedirect.
    Redirect(Redirect),
    /// URLRewrite.
    Rewrite(Rewrite),
    /// RequestMirror.
    Mirror {
        /// Where copies go.
        backend: Backend,
        /// Share mirrored, 0..=100.
        percent: u32,
    },
}

/// A backend reference.
#[derive(Clone, Debug, Serialize)]
pub struct Backend {
    /// Service FQDN, lower case (made so when compiled).
    pub hostname: String,
    /// Service port.
    pub port: u16,
    /// Relative weight.
    pub weight: u32,
    /// Filters applied after the rule's.
    pub filters: Vec<Filter>,
}

/// Retry policy.
#[derive(Clone, Debug, Serialize)]
pub struct Retry {
    /// Further tries after the first.
    pub attempts: u32,
    /// Retried status codes.
    pub codes: Vec<u16>,
    /// Backoff base.
    pub backoff: Duration,
}

/// One rule of a route.
#[derive(Debug, Serialize)]
pub struct Rule {
    /// `namespace/kind/name`.
    #[serde(serialize_with = "ser_arc")]
    pub route: Arc<str>,
    /// Rule name or index, for logs: `<route>#<name or index>`.
    pub id: String,
    /// Filters in order.
    pub filters: Vec<Filter>,
    /// Backends (empty: 500 unless a redirect answers).
    pub backends: Vec<Backend>,
    /// Sum of the backends' weights.
    pub total_weight: u64,
    /// Whole-request timeout.
    pub request_timeout: Option<Duration>,
    /// Per-try timeout.
    pub backend_timeout: Option<Duration>,
    /// Retries (absent: none).
    pub retry: Option<Retry>,
    /// GRPCRoute rule.
    pub grpc: bool,
}

/// A (rule, match) pair in precedence order, as stored in a [`RouteTable`].
#[derive(Debug, Serialize)]
pub struct Entry {
    /// The rule.
    #[serde(serialize_with = "ser_arc")]
    pub rule: Arc<Rule>,
    /// The match.
    pub matcher: Match,
    /// The route's hostnames (empty: any).
    #[serde(serialize_with = "ser_arc")]
    pub hostnames: Arc<[String]>,
    #[serde(skip)]
    order: (i64, String, usize, usize),
}

impl Entry {
    /// Whether the request's host is accepted by the route.
    pub fn host_ok(&self, host: &str) -> bool {
        self.host_rank(host).is_some()
    }

    /// How specifically the route's hostnames match `host`, for Gateway API hostname
    /// precedence: (characters of the matching non-wildcard hostname, characters of the
    /// matching hostname), the best of the route's; `(0, 0)` for a route without hostnames;
    /// `None` when the route does not take `host`.
    pub fn host_rank(&self, host: &str) -> Option<(usize, usize)> {
        if self.hostnames.is_empty() {
            return Some((0, 0));
        }
        self.hostnames
            .iter()
            .filter_map(|h| match h.strip_prefix("*.") {
                Some(suffix) => (host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.')
                    .then_some((0, h.len())),
                None => (h == host).then_some((h.len(), h.len())),
            })
            .max()
    }

    /// Gateway API precedence: `Less` when `self` must be tried first.
    fn precedence(&self, o: &Entry) -> Ordering {
        fn path_rank(m: &Match) -> (u8, usize) {
            match &m.path {
                Some(PathMatch::Exact(p)) => (0, usize::MAX - p.len()),
                Some(PathMatch::Prefix(p)) => (1, usize::MAX - p.len()),
                Some(PathMatch::Regex(r)) => (2, usize::MAX - r.as_str().len()),
                None => match &m.grpc {
                    Some(g) => {
                        let len = |x: &Option<StrMatch>| match x {
                            Some(StrMatch::Exact(e)) => e.len() + 1,
                            Some(StrMatch::Regex(_)) => 1,
                            None => 0,
                        };
                        (1, usize::MAX - len(&g.service) * 1000 - len(&g.method))
                    }
                    None => (1, usize::MAX),
                },
            }
        }
        let (a, b) = (&self.matcher, &o.matcher);
        path_rank(a)
            .cmp(&path_rank(b))
            .then(b.method.is_some().cmp(&a.method.is_some()))
            .then(b.headers.len().cmp(&a.headers.len()))
            .then(b.query.len().cmp(&a.query.len()))
            .then(self.order.cmp(&o.order))
    }
}

/// The ordered entries for one (service, port).
pub type RouteTable = Arc<[Entry]>;

/// Sorts entries into precedence order.
pub fn sort(entries: &mut [Entry]) {
    entries.sort_by(Entry::precedence);
}

/// The entry that takes the request, if any: among the entries whose route takes the request's
/// host, those of the routes with the most specific matching hostname (see
/// [`Entry::host_rank`]) come first, as the Gateway API requires of routes with intersecting
/// hostnames; within those, the first matching entry in precedence order.
///
/// A request that no rule of the most specific routes matches falls through to the rules of
/// less specific ones (a wildcard, then routes without hostnames); it is 404 only when no rule
/// of any route taking its host matches. This is a decision, not Envoy's virtual-host model (a
/// request sees only the most specific virtual host's routes, else 404), because:
/// - the HTTPRoute `hostnames` doc gives "precedence" to the rules of the most specific route,
///   an order among the routes that take the host, and says nothing of hiding the others;
/// - these routes have a Service as parent (GAMMA). There, Istio's waypoints ignore `hostnames`
///   altogether, so no request meets a 404 for a more specific route existing, and the
///   direction GAMMA is taking (gateway-api#2885, Linkerd's behaviour) is `hostnames` as a
///   match on the authority, under which a route's other rules are tried like any non-match;
/// - a route for one host added beside a catch-all route would otherwise cut that host off
///   from every path the new route does not list, which adding a route should not do.
///
/// The host rank depends on the request, so it cannot be part of the table's order; an entry
/// whose rank cannot beat the best match so far is skipped before its matcher runs, so a table
/// without hostnames costs what a first-match scan costs.
pub fn find<'a>(table: &'a [Entry], r: &RequestView<'_>) -> Option<&'a Entry> {
    let mut best: Option<((usize, usize), &'a Entry)> = None;
    for e in table {
        let Some(rank) = e.host_rank(r.host) else { continue };
        if best.is_some_and(|(b, _)| rank <= b) {
            continue;
        }
        if e.matcher.matches(r) {
            best = Some((rank, e));
        }
    }
    best.map(|(_, e)| e)
}

/// A compiled route resource: its parents and its entries (cloned into each parent's table).
#[derive(Debug)]
pub struct CompiledRoute {
    /// `(service hostname, port)`; port 0 = every port.
    pub parents: Vec<(String, u16)>,
    /// Hostnames.
    pub hostnames: Arc<[String]>,
    /// Rules with their matches.
    pub rules: Vec<(Arc<Rule>, Vec<Match>)>,
    order: (i64, String),
}

impl CompiledRoute {
    /// Entries of this route, ready to sort into a table.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.rules.iter().enumerate().flat_map(move |(ri, (rule, matches))| {
            matches.iter().enumerate().map(move |(mi, m)| Entry {
                rule: rule.clone(),
                matcher: m.clone(),
                hostnames: self.hostnames.clone(),
                order: (self.order.0, self.order.1.clone(), ri, mi),
            })
        })
    }
}

mod compile;

#[cfg(test)]
mod tests;
