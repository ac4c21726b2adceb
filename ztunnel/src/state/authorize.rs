//! The L4 authorization decision for one connection, and the verdict that explains it.
//!
//! Order, as in Istio: any applicable DENY that matches denies; otherwise, if any ALLOW applies,
//! one of them must match; with no applicable ALLOW the connection is allowed. Dry-run policies
//! are evaluated and reported in the verdict but never change it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use hbone::Identity;

use super::policy::{Action, Policy, PolicyMatch};
use super::workload::Workload;

/// What policy sees of a connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo<'a> {
    /// The peer's verified mesh identity; `None` for plaintext.
    pub src_identity: Option<&'a Identity>,
    /// Source address (the original client's).
    pub src_ip: IpAddr,
    /// The workload being connected to.
    pub dst_workload: &'a Workload,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Destination port.
    pub dst_port: u16,
}

/// A policy, and which of its rules (groups) decided, if one did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRule {
    /// The policy.
    pub policy: Arc<Policy>,
    /// Index of the matching group (the AuthorizationPolicy's `rules[n]`); `None` when no group
    /// matched or the policy is unusable.
    pub group: Option<usize>,
}

impl PolicyRule {
    /// Namespace of the policy.
    pub fn namespace(&self) -> &str {
        &self.policy.namespace
    }

    /// Name of the policy.
    pub fn name(&self) -> &str {
        &self.policy.name
    }

    /// Action of the policy.
    pub fn action(&self) -> Action {
        self.policy.action
    }
}

impl fmt::Display for PolicyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.policy.namespace, self.policy.name)?;
        if let Some(g) = self.group {
            write!(f, " rule {g}")?;
        }
        Ok(())
    }
}

/// Why a verdict came out as it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No DENY matched and no ALLOW applies to the destination.
    NoPolicies,
    /// An ALLOW matched (and no DENY did).
    AllowedByPolicy,
    /// A DENY matched.
    DeniedByPolicy,
    /// ALLOW policies apply but none matched.
    NoAllowPolicyMatched {
        /// How many enforced ALLOW policies apply to the destination.
        allow_policies: usize,
    },
    /// A policy that cannot be evaluated decided (an unusable DENY denies everything; an unusable
    /// ALLOW matches nothing).
    PolicyUnusable {
        /// What is wrong with it.
        why: Arc<str>,
    },
}

/// What a dry-run policy would have done to the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRunResult {
    /// The policy and, if it matched, the group.
    pub rule: PolicyRule,
    /// Whether this policy on its own would let the connection through.
    pub would_allow: bool,
}

/// The authorization decision for one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// The policy (and rule) that decided, when one did.
    pub decided_by: Option<PolicyRule>,
    /// Why.
    pub reason: Reason,
    /// Dry-run policies that apply, with what each would have done.
    pub dry_run: Vec<DryRunResult>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = |f: &mut fmt::Formatter<'_>| match &self.decided_by {
            Some(r) => write!(f, "{r}"),
            None => f.write_str("?"),
        };
        match &self.reason {
            Reason::NoPolicies => f.write_str("allowed: no DENY policy matched and no ALLOW policy applies")?,
            Reason::AllowedByPolicy => {
                f.write_str("allowed by policy ")?;
                by(f)?;
            }
            Reason::DeniedByPolicy => {
                f.write_str("denied by policy ")?;
                by(f)?;
            }
            Reason::NoAllowPolicyMatched { allow_policies } => {
                write!(f, "denied: none of {allow_policies} ALLOW policies matched (first: ")?;
                by(f)?;
                f.write_str(")")?;
            }
            Reason::PolicyUnusable { why } => {
                f.write_str(if self.allowed { "allowed" } else { "denied" })?;
                f.write_str(": policy ")?;
                by(f)?;
                if let Some(r) = &self.decided_by {
                    write!(f, " ({})", r.action())?;
                }
                write!(f, " cannot be evaluated: {why}")?;
            }
        }
        for d in &self.dry_run {
            let what = if d.would_allow { "allow" } else { "deny" };
            write!(f, "; dry-run {} {} would {what}", d.rule.action(), d.rule)?;
        }
        Ok(())
    }
}

/// Decides a connection against the policies that apply to its destination.
///
/// Allocation-free unless dry-run policies apply (their results are collected). Every policy is
/// evaluated even after a DENY matched, so dry-run results are complete; lists are short.
pub(super) fn decide<'p>(policies: impl Iterator<Item = &'p Arc<Policy>>, c: &ConnInfo<'_>) -> Verdict {
    let mut deny: Option<(&Arc<Policy>, PolicyMatch)> = None;
    let mut allow_match: Option<(&Arc<Policy>, usize)> = None;
    let mut unusable_allow: Option<&Arc<Policy>> = None;
    let mut first_allow: Option<&Arc<Policy>> = None;
    let mut allows = 0usize;
    let mut dry_run = Vec::new();
    for p in policies {
        let m = p.evaluate(c);
        if p.dry_run {
            let would_allow = match p.action {
                Action::Deny => m == PolicyMatch::NoMatch,
                Action::Allow => matches!(m, PolicyMatch::Group(_)),
            };
            dry_run.push(DryRunResult { rule: PolicyRule { policy: p.clone(), group: group_of(m) }, would_allow });
            continue;
        }
        match p.action {
            Action::Deny if m != PolicyMatch::NoMatch => {
                deny.get_or_insert((p, m));
            }
            Action::Deny => {}
            Action::Allow => {
                allows += 1;
                first_allow.get_or_insert(p);
                match m {
                    PolicyMatch::Group(g) => {
                        allow_match.get_or_insert((p, g));
                    }
                    PolicyMatch::Unusable => {
                        unusable_allow.get_or_insert(p);
                    }
                    PolicyMatch::NoMatch => {}
                }
            }
        }
    }
    let (allowed, decided_by, reason) = if let Some((p, m)) = deny {
        let rule = PolicyRule { policy: p.clone(), group: group_of(m) };
        match &p.unusable {
            Some(why) if m == PolicyMatch::Unusable => (false, Some(rule), Reason::PolicyUnusable { why: why.clone() }),
            _ => (false, Some(rule), Reason::DeniedByPolicy),
        }
    } else if let Some((p, g)) = allow_match {
        (true, Some(PolicyRule { policy: p.clone(), group: Some(g) }), Reason::AllowedByPolicy)
    } else if let Some(p) = unusable_allow {
        // Name the broken ALLOW: it is the likeliest reason the operator expected this to pass.
        let why = p.unusable.clone().unwrap_or_else(|| Arc::from("unusable"));
        (false, Some(PolicyRule { policy: p.clone(), group: None }), Reason::PolicyUnusable { why })
    } else if let Some(p) = first_allow {
        let rule = PolicyRule { policy: p.clone(), group: None };
        (false, Some(rule), Reason::NoAllowPolicyMatched { allow_policies: allows })
    } else {
        (true, None, Reason::NoPolicies)
    };
    Verdict { allowed, decided_by, reason, dry_run }
}

fn group_of(m: PolicyMatch) -> Option<usize> {
    match m {
        PolicyMatch::Group(g) => Some(g),
        _ => None,
    }
}
