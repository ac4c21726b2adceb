//! Compilation of `mesh.waypoint.v1.Route` into [`CompiledRoute`]: every field validated,
//! regexes anchored and compiled once, errors naming the route and the field.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, StatusCode};
use proto::mesh::waypoint::v1 as pb;
use regex::Regex;

use crate::normalize::normalize;

use super::{
    Backend, CompiledRoute, Filter, GrpcMatch, HeaderModifier, Match, PathMatch, PathModifier, Redirect, Retry,
    Rewrite, RouteError, Rule, StrMatch,
};

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

    /// A path value as requests are matched: normalized as their paths are (`/%7Euser` is
    /// `/~user`, `%c3` is `%C3`), or it could never match one.
    fn normalized(&self, field: String, v: &str) -> Result<String, RouteError> {
        normalize(v).map(|p| p.into_owned()).map_err(|e| self.err(field, format!("{v:?}: {e}")))
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
        let m = HeaderModifier {
            set: pairs("set", &h.set)?,
            add: pairs("add", &h.add)?,
            remove: h
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| self.header_name(format!("{field}.remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
        };
        // Gateway API HTTPHeaderFilter: one action per header name (names compared without
        // case, as `HeaderName` holds them lower case). istiod-lite refuses such a route; one
        // that arrives anyway is refused here rather than applied in some order.
        let named = (m.set.iter().enumerate().map(|(i, (n, _))| (n, "set", i, ".name")))
            .chain(m.add.iter().enumerate().map(|(i, (n, _))| (n, "add", i, ".name")))
            .chain(m.remove.iter().enumerate().map(|(i, n)| (n, "remove", i, "")));
        let mut seen: Vec<&HeaderName> = Vec::new();
        for (n, what, i, suffix) in named {
            // The proxy writes these for each hop; a filter's `content-length` would cut the
            // body short. istiod-lite refuses them too.
            if crate::headers::is_connection_or_framing(n) {
                return Err(self.err(
                    format!("{field}.{what}[{i}]{suffix}"),
                    format!("header {:?} frames the message or belongs to one connection", n.as_str()),
                ));
            }
            if seen.contains(&n) {
                return Err(self.err(
                    format!("{field}.{what}[{i}]{suffix}"),
                    format!("header {:?} is modified more than once", n.as_str()),
                ));
            }
            seen.push(n);
        }
        Ok(m)
    }

    fn path_mod(&self, field: String, p: &Option<pb::PathModifier>) -> Result<Option<PathModifier>, RouteError> {
        use pb::path_modifier::Kind;
        match p.as_ref().and_then(|p| p.kind.as_ref()) {
            None => Ok(None),
            // Gateway API: an empty `replacePrefixMatch` is valid (it drops the matched prefix).
            Some(Kind::ReplaceFullPath(s)) if !s.starts_with('/') => {
                Err(self.err(field, format!("{s:?} does not start with '/'")))
            }
            Some(Kind::ReplacePrefixMatch(s)) if !s.is_empty() && !s.starts_with('/') => {
                Err(self.err(field, format!("{s:?} does not start with '/'")))
            }
            Some(Kind::ReplaceFullPath(s)) => Ok(Some(PathModifier::Full(s.clone()))),
            Some(Kind::ReplacePrefixMatch(s)) => Ok(Some(PathModifier::Prefix(s.clone()))),
        }
    }

    /// An empty hostname is a reference istiod-lite could not resolve: it keeps its weight, and
    /// the requests its share gets are answered 500 (a mirror to it sends nothing), as the
    /// Gateway API requires; its port may then be 0.
    fn backend(&self, field: &str, b: &pb::Backend) -> Result<Backend, RouteError> {
        let unresolved = b.hostname.is_empty();
        Ok(Backend {
            // Lower case once here: the snapshot's services are keyed so, and the request path
            // (backends and mirrors) looks them up without converting.
            hostname: b.hostname.to_ascii_lowercase(),
            port: self.port(format!("{field}.port"), b.port, unresolved)?,
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
                        // Gateway API HTTPRequestRedirectFilter.statusCode: 301, 302 (default),
                        // 303, 307, 308. 307 and 308 tell the client to repeat the method and
                        // body (RFC 9110 §15.4.8, §15.4.9): the code is sent as is.
                        status: match r.status_code {
                            0 | 302 => StatusCode::FOUND,
                            301 => StatusCode::MOVED_PERMANENTLY,
                            303 => StatusCode::SEE_OTHER,
                            307 => StatusCode::TEMPORARY_REDIRECT,
                            308 => StatusCode::PERMANENT_REDIRECT,
                            c => {
                                return Err(self.err(
                                    format!("{field}.status_code"),
                                    format!("{c} is not 301, 302, 303, 307 or 308"),
                                ));
                            }
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
                        Ok(pb::MatchType::Exact) if p.value.starts_with('/') => {
                            PathMatch::Exact(cx.normalized(format!("{mf}.path.value"), &p.value)?)
                        }
                        Ok(pb::MatchType::PathPrefix) if p.value.starts_with('/') => PathMatch::Prefix(
                            cx.normalized(format!("{mf}.path.value"), &p.value)?.trim_end_matches('/').to_owned(),
                        ),
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
                // HTTPRoute: a prefix match on `/`; GRPCRoute: every gRPC request (and only those).
                matches.push(Match {
                    path: if grpc { None } else { Some(PathMatch::Prefix(String::new())) },
                    headers: Vec::new(),
                    query: Vec::new(),
                    method: None,
                    grpc: grpc.then_some(GrpcMatch { service: None, method: None }),
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
            let id = if rule.name.is_empty() {
                format!("{name}#{}", rule.index.map_or(ri, |i| i as usize))
            } else {
                format!("{name}#{}", rule.name)
            };
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
