//! Findings about a valid policy that probably does not say what its author
//! meant: rules that can never decide anything, sources that can never
//! match, and deny rules that leave an obvious way around them.

use std::fmt;

use super::index::Candidates;
use super::pattern::{PathPattern, Source};
use super::{Policy, Rule};

/// One finding, about one rule or (for `NoAllowRule`) the whole policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintFinding {
    /// The rule the finding is about; `None` for the whole policy.
    pub rule: Option<String>,
    /// 1-based line of that rule in the policy file.
    pub line: Option<usize>,
    pub kind: LintKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LintKind {
    /// A deny rule matches every request this allow rule matches, so it can
    /// never allow anything (deny wins wherever it is in the file).
    AllowShadowedByDeny { deny_rule: String },
    /// An earlier rule with the same action matches every request this one
    /// matches, so this rule never decides anything and can be removed.
    CoveredByEarlierRule { earlier_rule: String },
    /// The source names a trust domain this workload does not trust; no
    /// peer from it can authenticate, so the source never matches.
    UnknownTrustDomain {
        source: String,
        trust_domain: String,
    },
    /// A deny rule on an exact path leaves the same path with a trailing
    /// slash, and everything below it, allowed.
    ExactDenyPath { path: String },
    /// The policy has no allow rule, so it denies every request.
    NoAllowRule,
    /// A deny rule with `jwt:` matches only requests with a valid token of
    /// its provider, so a request without one is not denied by it, and this
    /// allow rule, which needs no such token, lets it through.
    DenyNeedsToken {
        provider: String,
        allow_rule: String,
    },
    /// The rule's `jwt.provider` is not among the providers given (the
    /// sidecar would refuse to start with this policy).
    UnknownJwtProvider { provider: String },
}

impl fmt::Display for LintKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LintKind::AllowShadowedByDeny { deny_rule } => write!(
                f,
                "never allows anything: deny rule {deny_rule:?} matches every request it matches"
            ),
            LintKind::CoveredByEarlierRule { earlier_rule } => write!(
                f,
                "never decides anything: earlier rule {earlier_rule:?} matches every request it matches"
            ),
            LintKind::UnknownTrustDomain {
                source,
                trust_domain,
            } => write!(
                f,
                "source {source:?} can never match: trust domain {trust_domain:?} is not trusted"
            ),
            LintKind::ExactDenyPath { path } => write!(
                f,
                "denies {path:?} only; {path}/ and paths below it are not denied \
                 (use \"{path}/*\" to deny the whole subtree)"
            ),
            LintKind::NoAllowRule => f.write_str("the policy has no allow rule: every request is denied"),
            LintKind::DenyNeedsToken {
                provider,
                allow_rule,
            } => write!(
                f,
                "denies only requests with a valid {provider:?} token: without one, \
                 allow rule {allow_rule:?} (which needs no such token) lets the same requests through"
            ),
            LintKind::UnknownJwtProvider { provider } => write!(
                f,
                "jwt.provider {provider:?} is not a provider of inbound.jwt: the sidecar refuses this policy"
            ),
        }
    }
}

impl fmt::Display for LintFinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(rule) = &self.rule {
            write!(f, "rule {rule:?}: ")?;
        }
        self.kind.fmt(f)
    }
}

/// Lints `policy`. `known_trust_domains` are the trust domains this
/// workload has bundles for; sources in any other domain are reported (an
/// empty list reports every domain-bound source). Findings come in rule
/// order.
pub fn lint(policy: &Policy, known_trust_domains: &[&str]) -> Vec<LintFinding> {
    let rules = policy.rules();
    let mut findings = Vec::new();
    if !rules.iter().any(|r| !r.action().is_deny()) {
        findings.push(LintFinding {
            rule: None,
            line: None,
            kind: LintKind::NoAllowRule,
        });
    }
    for (i, rule) in rules.iter().enumerate() {
        let finding = |kind| LintFinding {
            rule: Some(rule.name().to_owned()),
            line: rule.line(),
            kind,
        };
        for source in rule.sources() {
            if let Some(td) = source.trust_domain() {
                if !known_trust_domains.contains(&td) {
                    findings.push(finding(LintKind::UnknownTrustDomain {
                        source: source.to_string(),
                        trust_domain: td.to_owned(),
                    }));
                }
            }
        }
        if let Some(kind) = redundancy(policy, i, rule) {
            findings.push(finding(kind));
        }
        if let Some(kind) = deny_needs_token(policy, rule) {
            findings.push(finding(kind));
        }
        if rule.action().is_deny() {
            for path in rule.paths().unwrap_or_default() {
                if let PathPattern::Exact(p) = path {
                    if !p.ends_with('/') {
                        findings.push(finding(LintKind::ExactDenyPath {
                            path: p.to_string(),
                        }));
                    }
                }
            }
        }
    }
    findings
}

/// Lints the `jwt.provider` of every rule against the providers of
/// `inbound.jwt` (`meshguard policy lint --jwt-provider`).
pub fn lint_jwt_providers(policy: &Policy, providers: &[&str]) -> Vec<LintFinding> {
    let unknown = |r: &&Rule| r.jwt().is_some_and(|j| !providers.contains(&&*j.provider));
    policy
        .rules()
        .iter()
        .filter(unknown)
        .map(|rule| LintFinding {
            rule: Some(rule.name().to_owned()),
            line: rule.line(),
            kind: LintKind::UnknownJwtProvider {
                provider: rule
                    .jwt()
                    .map_or_else(String::new, |j| j.provider.to_string()),
            },
        })
        .collect()
}

/// For a deny rule with `jwt:`: an allow rule without that provider's
/// token whose requests overlap it one way or the other (one's target
/// covers the other's), through which tokenless requests pass.
fn deny_needs_token(policy: &Policy, rule: &Rule) -> Option<LintKind> {
    let provider = &rule.jwt()?.provider;
    if !rule.action().is_deny() {
        return None;
    }
    let allow = policy.rules().iter().find(|a| {
        !a.action().is_deny()
            && a.jwt().is_none_or(|j| j.provider != *provider)
            && (covers_target(a, rule) || covers_target(rule, a))
    })?;
    Some(LintKind::DenyNeedsToken {
        provider: provider.to_string(),
        allow_rule: allow.name().to_owned(),
    })
}

/// Whether another rule makes `rule` (at position `i`) pointless.
fn redundancy(policy: &Policy, i: usize, rule: &Rule) -> Option<LintKind> {
    let rules = policy.rules();
    // Any rule covering this one covers its first source, so only the rules
    // indexed under keys covering that source need a look.
    let first_source = rule.sources().first()?;
    let candidates = policy.index.covering(first_source);
    let covering = |deny: bool, before: usize| {
        first_covering(&candidates, deny, before, |j| {
            j != i && covers(&rules[j], rule)
        })
    };
    if !rule.action().is_deny() {
        if let Some(j) = covering(true, usize::MAX) {
            return Some(LintKind::AllowShadowedByDeny {
                deny_rule: rules[j].name().to_owned(),
            });
        }
    }
    covering(rule.action().is_deny(), i).map(|j| LintKind::CoveredByEarlierRule {
        earlier_rule: rules[j].name().to_owned(),
    })
}

/// The first rule before position `before` in the deny or allow lists of
/// `candidates` that `accept`s.
fn first_covering(
    candidates: &Candidates<'_>,
    deny: bool,
    before: usize,
    mut accept: impl FnMut(usize) -> bool,
) -> Option<usize> {
    candidates
        .iter()
        .flatten()
        .filter_map(|bucket| {
            let list = if deny { &bucket.deny } else { &bucket.allow };
            list.iter()
                .copied()
                .take_while(|&j| j < before)
                .find(|&j| accept(j))
        })
        .min()
}

/// True if every request `narrow` matches is also matched by `wide`. A
/// `jwt:` requirement narrows a rule, so `wide` may have one only when
/// `narrow` has the same.
fn covers(wide: &Rule, narrow: &Rule) -> bool {
    let tokens = match (wide.jwt(), narrow.jwt()) {
        (None, _) => true,
        (Some(w), Some(n)) => w == n,
        (Some(_), None) => false,
    };
    tokens && covers_target(wide, narrow)
}

/// [`covers`] on source, port, method and path only.
fn covers_target(wide: &Rule, narrow: &Rule) -> bool {
    let sources = narrow
        .sources()
        .iter()
        .all(|n| wide.sources().iter().any(|w: &Source| w.covers(n)));
    let ports = match (wide.ports(), narrow.ports()) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(w), Some(n)) => n.iter().all(|p| w.contains(p)),
    };
    let methods = match (wide.methods(), narrow.methods()) {
        (None, _) => true,
        // `None` also matches extension methods, which no list names.
        (Some(_), None) => false,
        (Some(w), Some(n)) => w.is_superset(n),
    };
    let paths = match (wide.paths(), narrow.paths()) {
        (None, _) => true,
        (Some(w), None) => w.iter().any(|w| w.covers(&PathPattern::Prefix("".into()))),
        (Some(w), Some(n)) => n.iter().all(|n| w.iter().any(|w| w.covers(n))),
    };
    sources && ports && methods && paths
}
