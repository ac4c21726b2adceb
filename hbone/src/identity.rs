//! SPIFFE workload identities of the form `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! Parsing is strict: an identity that would compare unequal after any normalization is refused
//! rather than guessed at, because identities decide authorization.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Trust domain used when nothing else is configured, as in Istio.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

const SCHEME: &str = "spiffe://";

/// A workload identity: trust domain, namespace and service account.
///
/// Cheap to clone (one shared allocation): identities are pool keys and travel with every
/// connection.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    /// The full URI; the parts below index into it.
    uri: Arc<str>,
    /// Byte ranges of trust domain, namespace and service account in `uri`.
    td_end: u16,
    ns: (u16, u16),
}

/// Why a string is not a valid mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The string does not start with `spiffe://`.
    #[error("identity {0:?} does not start with \"spiffe://\"")]
    MissingScheme(String),
    /// Nothing between `spiffe://` and the path.
    #[error("identity {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    /// A character not allowed in a trust domain (lowercase letters, digits, `.`, `-`, `_`).
    #[error("identity {uri:?}: character {ch:?} is not allowed in a trust domain")]
    TrustDomainChar {
        /// The identity as given.
        uri: String,
        /// The offending character.
        ch: char,
    },
    /// The path is not exactly `/ns/<namespace>/sa/<service account>`.
    #[error("identity {0:?}: path must be /ns/<namespace>/sa/<service account>")]
    BadPath(String),
    /// A path segment is empty, `.`/`..`, or holds a character outside `[A-Za-z0-9._-]`.
    #[error("identity {uri:?}: {what} {segment:?} is not a valid path segment")]
    BadSegment {
        /// The identity as given.
        uri: String,
        /// `namespace` or `service account`.
        what: &'static str,
        /// The segment as given.
        segment: String,
    },
    /// Longer than this crate supports (SPIFFE caps IDs at 2048 bytes).
    #[error("identity is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
}

impl Identity {
    /// Builds an identity from its parts, validating each.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.uri[SCHEME.len()..self.td_end as usize]
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.uri[self.ns.0 as usize..self.ns.1 as usize]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.uri[self.ns.1 as usize + "/sa/".len()..]
    }

    /// The identity as its `spiffe://` URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

fn trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > 2048 {
            return Err(IdentityError::TooLong(s.len()));
        }
        let rest = s.strip_prefix(SCHEME).ok_or_else(|| IdentityError::MissingScheme(s.to_owned()))?;
        let slash = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..slash];
        if td.is_empty() {
            return Err(IdentityError::EmptyTrustDomain(s.to_owned()));
        }
        if let Some(ch) = td.chars().find(|c| !trust_domain_char(*c)) {
            return Err(IdentityError::TrustDomainChar { uri: s.to_owned(), ch });
        }
        let path = &rest[slash..];
        let mut parts = path.split('/');
        let (Some(""), Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::BadPath(s.to_owned()));
        };
        for (what, segment) in [("namespace", ns), ("service account", sa)] {
            if !segment_ok(segment) {
                return Err(IdentityError::BadSegment { uri: s.to_owned(), what, segment: segment.to_owned() });
            }
        }
        let td_end = SCHEME.len() + td.len();
        let ns_start = td_end + "/ns/".len();
        // Lengths fit: the whole string is at most 2048 bytes.
        Ok(Identity { uri: Arc::from(s), td_end: td_end as u16, ns: (ns_start as u16, (ns_start + ns.len()) as u16) })
    }
}

impl TryFrom<&str> for Identity {
    type Error = IdentityError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage".parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/bookinfo-productpage");
        assert_eq!(Identity::new("td", "a", "b").unwrap().as_str(), "spiffe://td/ns/a/sa/b");
    }

    #[test]
    fn refuses_malformed() {
        type Check = fn(&IdentityError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("http://cluster.local/ns/a/sa/b", |e| matches!(e, IdentityError::MissingScheme(_))),
            ("SPIFFE://cluster.local/ns/a/sa/b", |e| matches!(e, IdentityError::MissingScheme(_))),
            ("spiffe:///ns/a/sa/b", |e| matches!(e, IdentityError::EmptyTrustDomain(_))),
            ("spiffe://Cluster.local/ns/a/sa/b", |e| matches!(e, IdentityError::TrustDomainChar { ch: 'C', .. })),
            ("spiffe://td:8080/ns/a/sa/b", |e| matches!(e, IdentityError::TrustDomainChar { ch: ':', .. })),
            ("spiffe://user@td/ns/a/sa/b", |e| matches!(e, IdentityError::TrustDomainChar { ch: '@', .. })),
            ("spiffe://td", |e| matches!(e, IdentityError::BadPath(_))),
            ("spiffe://td/ns/a/sa/b/", |e| matches!(e, IdentityError::BadPath(_))),
            ("spiffe://td/ns/a/sa/b/c", |e| matches!(e, IdentityError::BadPath(_))),
            ("spiffe://td/sa/b/ns/a", |e| matches!(e, IdentityError::BadPath(_))),
            ("spiffe://td//ns/a/sa/b", |e| matches!(e, IdentityError::BadPath(_))),
            ("spiffe://td/ns//sa/b", |e| matches!(e, IdentityError::BadSegment { what: "namespace", .. })),
            ("spiffe://td/ns/../sa/b", |e| matches!(e, IdentityError::BadSegment { what: "namespace", .. })),
            ("spiffe://td/ns/a/sa/b?x=1", |e| matches!(e, IdentityError::BadSegment { what: "service account", .. })),
            ("spiffe://td/ns/a/sa/b#f", |e| matches!(e, IdentityError::BadSegment { .. })),
            ("spiffe://td/ns/a%2f/sa/b", |e| matches!(e, IdentityError::BadSegment { .. })),
        ];
        for (input, want) in cases {
            let err = input.parse::<Identity>().expect_err(input);
            assert!(want(&err), "{input}: unexpected error {err:?}");
            assert!(err.to_string().contains(input) || matches!(err, IdentityError::TooLong(_)));
        }
        let long = format!("spiffe://td/ns/a/sa/{}", "x".repeat(2100));
        assert!(matches!(long.parse::<Identity>(), Err(IdentityError::TooLong(_))));
    }

    #[test]
    fn equality_is_on_the_whole_uri() {
        let a: Identity = "spiffe://td/ns/a/sa/b".parse().unwrap();
        let b = Identity::new("td", "a", "b").unwrap();
        let c = Identity::new("td", "ab", "").map(|_| ()).unwrap_err();
        assert_eq!(a, b);
        assert!(matches!(c, IdentityError::BadSegment { .. }));
        assert_ne!(a, Identity::new("td2", "a", "b").unwrap());
    }
}
