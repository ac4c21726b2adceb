//! Compiled routes: Gateway API HTTPRoute/GRPCRoute rules, validated and compiled once when
//! they arrive (regexes included), ordered by Gateway API precedence for the request path.

use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use proto::mesh::waypoint::v1 as pb;
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
    /// 301 or 302.
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
    /// Service FQDN.
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
        self.hostnames.is_empty()
            || self.hostnames.iter().any(|h| match h.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => h == host,
            })
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

/// The first entry matching the request, if any.
pub fn find<'a>(table: &'a [Entry], r: &RequestView<'_>) -> Option<&'a Entry> {
    table.iter().find(|e| e.host_ok(r.host) && e.matcher.matches(r))
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

struct Cx<'a> {
    route: &'a str,
}

impl Cx<'_> {
    fn err(&self, field: impl Into<String>, problem: impl Into<String>) -> RouteError {
        RouteError { route: self.route.to_owned(), field: field.into(), problem: problem.into() }
    }

    fn regex(&self, field: String, re: &str) -> Result<Regex, RouteError> {
        // Whole-value semantics: anchor the user's expression.
        Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| self.err(field, format!("invalid regular expression {re:?}: {e}")))
    }

    fn str_match(&self, field: String, t: i32, v: &str) -> Result<StrMatch, RouteError> {
        match pb::MatchType::try_from(t) {
            Ok(pb::MatchType::Exact) => Ok(StrMatch::Exact(v.to_owned())),
            Ok(pb::MatchType::RegularExpression) => Ok(StrMatch::Regex(self.regex(format!("{field}.value"), v)?)),
            Ok(pb::MatchType::PathPrefix) => {
                Err(self.err(format!("{field}.type"), "PATH_PREFIX applies to paths only"))
            }
            Err(_) => Err(self.err(format!("{field}.type"), format!("unknown match type {t}"))),
        }
    }

    fn port(&self, field: String, p: u32, zero_ok: bool) -> Result<u16, RouteError> {
        match u16::try_from(p) {
            Ok(0) if !zero_ok => Err(self.err(field, "port 0")),
            Ok(p) => Ok(p),
            Err(_) => Err(self.err(field, format!("port {p} out of range"))),
        }
    }

    fn header_name(&self, field: String, n: &str) -> Result<HeaderName, RouteError> {
        HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
            .map_err(|_| self.err(field, format!("{n:?} is not a valid header name")))
    }

    fn header_mod(&self, field: &str, h: &pb::HeaderModifier) -> Result<HeaderModifier, RouteError> {
        let pairs = |what: &str, list: &[pb::Header]| {
            list.iter()
                .enumerate()
                .map(|(i, x)| {
                    let f = format!("{field}.{what}[{i}]");
                    let n = self.header_name(format!("{f}.name"), &x.name)?;
                    let v = HeaderValue::from_str(&x.value)
                        .map_err(|_| self.err(format!("{f}.value"), "not a valid header value"))?;
                    Ok((n, v))
                })
                .collect::<Result<Vec<_>, RouteError>>()
        };
        Ok(HeaderModifier {
            set: pairs("set", &h.set)?,
            add: pairs("add", &h.add)?,
            remove: h
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| self.header_name(format!("{field}.remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
        })
    }

    fn path_mod(&self, field: String, p: &Option<pb::PathModifier>) -> Result<Option<PathModifier>, RouteError> {
        use pb::path_modifier::Kind;
        match p.as_ref().and_then(|p| p.kind.as_ref()) {
            None => Ok(None),
            Some(Kind::ReplaceFullPath(s)) | Some(Kind::ReplacePrefixMatch(s)) if !s.starts_with('/') => {
                Err(self.err(field, format!("{s:?} does not start with '/'")))
            }
            Some(Kind::ReplaceFullPath(s)) => Ok(Some(PathModifier::Full(s.clone()))),
            Some(Kind::ReplacePrefixMatch(s)) => Ok(Some(PathModifier::Prefix(s.clone()))),
        }
    }

    fn backend(&self, field: &str, b: &pb::Backend) -> Result<Backend, RouteError> {
        if b.hostname.is_empty() {
            return Err(self.err(format!("{field}.hostname"), "empty"));
        }
        Ok(Backend {
            hostname: b.hostname.clone(),
            port: self.port(format!("{field}.port"), b.port, false)?,
            weight: b.weight,
            filters: self.filters(&format!("{field}.filters"), &b.filters)?,
        })
    }

    fn filters(&self, field: &str, list: &[pb::Filter]) -> Result<Vec<Filter>, RouteError> {
        use pb::filter::Kind;
        list.iter()
            .enumerate()
            .map(|(i, f)| {
                let field = format!("{field}[{i}]");
                Ok(match &f.kind {
                    None => return Err(self.err(field, "filter without a kind")),
                    Some(Kind::RequestHeaderModifier(h)) => Filter::RequestHeaders(self.header_mod(&field, h)?),
                    Some(Kind::ResponseHeaderModifier(h)) => Filter::ResponseHeaders(self.header_mod(&field, h)?),
                    Some(Kind::RequestRedirect(r)) => Filter::Redirect(Redirect {
                        scheme: Some(r.scheme.clone()).filter(|s| !s.is_empty()),
                        hostname: Some(r.hostname.clone()).filter(|s| !s.is_empty()),
                        path: self.path_mod(format!("{field}.path"), &r.path)?,
                        port: Some(self.port(format!("{field}.port"), r.port, true)?).filter(|&p| p != 0),
                        status: match r.status_code {
                            0 | 302 => StatusCode::FOUND,
                            301 => StatusCode::MOVED_PERMANENTLY,
                            c => return Err(self.err(format!("{field}.status_code"), format!("{c} is not 301 or 302"))),
                        },
                    }),
                    Some(Kind::UrlRewrite(r)) => Filter::Rewrite(Rewrite {
                        hostname: Some(r.hostname.clone()).filter(|s| !s.is_empty()),
                        path: self.path_mod(format!("{field}.path"), &r.path)?,
                    }),
                    Some(Kind::RequestMirror(m)) => {
                        let b = m.backend.as_ref().ok_or_else(|| self.err(format!("{field}.backend"), "missing"))?;
                        if m.percent > 100 {
                            return Err(self.err(format!("{field}.percent"), format!("{} > 100", m.percent)));
                        }
                        Filter::Mirror { backend: self.backend(&format!("{field}.backend"), b)?, percent: m.percent }
                    }
                })
            })
            .collect()
    }
}

fn duration(d: &Option<prost_types::Duration>) -> Option<Duration> {
    let d = d.as_ref()?;
    if d.seconds < 0 || d.nanos < 0 {
        return None;
    }
    Some(Duration::new(d.seconds as u64, d.nanos as u32)).filter(|d| !d.is_zero())
}

impl TryFrom<pb::Route> for CompiledRoute {
    type Error = RouteError;

    fn try_from(r: pb::Route) -> Result<CompiledRoute, RouteError> {
        let kind = match pb::route::Kind::try_from(r.kind) {
            Ok(pb::route::Kind::Http) => "HTTPRoute",
            Ok(pb::route::Kind::Grpc) => "GRPCRoute",
            Err(_) => "UnknownRoute",
        };
        let name = format!("{}/{kind}/{}", r.namespace, r.name);
        let cx = Cx { route: &name };
        if kind == "UnknownRoute" {
            return Err(cx.err("kind", format!("unknown kind {}", r.kind)));
        }
        let grpc = kind == "GRPCRoute";
        if r.parents.is_empty() {
            return Err(cx.err("parents", "no parent service"));
        }
        let parents = r
            .parents
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.hostname.is_empty() {
                    return Err(cx.err(format!("parents[{i}].hostname"), "empty"));
                }
                Ok((p.hostname.to_ascii_lowercase(), cx.port(format!("parents[{i}].port"), p.port, true)?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let route: Arc<str> = name.clone().into();
        let mut rules = Vec::new();
        for (ri, rule) in r.rules.iter().enumerate() {
            let rf = format!("rules[{ri}]");
            let mut matches = Vec::new();
            for (mi, m) in rule.matches.iter().enumerate() {
                let mf = format!("{rf}.matches[{mi}]");
                let path = match &m.path {
                    None => None,
                    Some(p) => Some(match pb::MatchType::try_from(p.r#type) {
                        Ok(pb::MatchType::Exact) if p.value.starts_with('/') => PathMatch::Exact(p.value.clone()),
                        Ok(pb::MatchType::PathPrefix) if p.value.starts_with('/') => {
                            PathMatch::Prefix(p.value.trim_end_matches('/').to_owned())
                        }
                        Ok(pb::MatchType::RegularExpression) => {
                            PathMatch::Regex(cx.regex(format!("{mf}.path.value"), &p.value)?)
                        }
                        Ok(_) => {
                            return Err(
                                cx.err(format!("{mf}.path.value"), format!("{:?} does not start with '/'", p.value))
                            );
                        }
                        Err(_) => {
                            return Err(cx.err(format!("{mf}.path.type"), format!("unknown match type {}", p.r#type)));
                        }
                    }),
                };
                let headers = m
                    .headers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let f = format!("{mf}.headers[{i}]");
                        Ok((cx.header_name(format!("{f}.name"), &h.name)?, cx.str_match(f, h.r#type, &h.value)?))
                    })
                    .collect::<Result<Vec<_>, RouteError>>()?;
                let query = m
                    .query_params
                    .iter()
                    .enumerate()
                    .map(|(i, q)| {
                        Ok((q.name.clone(), cx.str_match(format!("{mf}.query_params[{i}]"), q.r#type, &q.value)?))
                    })
                    .collect::<Result<Vec<_>, RouteError>>()?;
                let method = match m.method.as_str() {
                    "" => None,
                    s => Some(
                        Method::from_bytes(s.as_bytes())
                            .map_err(|_| cx.err(format!("{mf}.method"), format!("{s:?} is not a method")))?,
                    ),
                };
                let grpc_m = match &m.grpc {
                    None => None,
                    Some(g) => {
                        let part = |what: &str, v: &str| -> Result<Option<StrMatch>, RouteError> {
                            if v.is_empty() {
                                Ok(None)
                            } else {
                                cx.str_match(format!("{mf}.grpc.{what}"), g.r#type, v).map(Some)
                            }
                        };
                        Some(GrpcMatch { service: part("service", &g.service)?, method: part("method", &g.method)? })
                    }
                };
                // A GRPCRoute match without a method match still only takes gRPC-shaped paths.
                let grpc_m = if grpc && grpc_m.is_none() && path.is_none() {
                    Some(GrpcMatch { service: None, method: None })
                } else {
                    grpc_m
                };
                matches.push(Match { path, headers, query, method, grpc: grpc_m });
            }
            if matches.is_empty() {
                matches.push(Match {
                    path: if grpc { None } else { Some(PathMatch::Prefix(String::new())) },
                    headers: Vec::new(),
                    query: Vec::new(),
                    method: None,
                    grpc: None,
                });
            }
            let backends = rule
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| cx.backend(&format!("{rf}.backends[{i}]"), b))
                .collect::<Result<Vec<_>, _>>()?;
            let retry = rule.retry.as_ref().map(|x| {
                Ok::<_, RouteError>(Retry {
                    attempts: x.attempts,
                    codes: x
                        .codes
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| {
                            u16::try_from(c).ok().filter(|c| (100..600).contains(c)).ok_or_else(|| {
                                cx.err(format!("{rf}.retry.codes[{i}]"), format!("{c} is not an HTTP status"))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    backoff: duration(&x.backoff).unwrap_or(Duration::from_millis(25)),
                })
            });
            let timeouts = rule.timeouts.unwrap_or_default();
            let id = if rule.name.is_empty() { format!("{name}#{ri}") } else { format!("{name}#{}", rule.name) };
            rules.push((
                Arc::new(Rule {
                    route: route.clone(),
                    id,
                    filters: cx.filters(&format!("{rf}.filters"), &rule.filters)?,
                    total_weight: backends.iter().map(|b| u64::from(b.weight)).sum(),
                    backends,
                    request_timeout: duration(&timeouts.request),
                    backend_timeout: duration(&timeouts.backend_request),
                    retry: retry.transpose()?,
                    grpc,
                }),
                matches,
            ));
        }
        Ok(CompiledRoute {
            parents,
            hostnames: r.hostnames.iter().map(|h| h.to_ascii_lowercase()).collect(),
            rules,
            order: (r.creation_timestamp, format!("{}/{}", r.namespace, r.name)),
        })
    }
}

#[cfg(test)]
mod tests;
