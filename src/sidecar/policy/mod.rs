//! The allow matrix: which peers may call which ports, methods and paths of
//! this workload.
//!
//! # Policy file
//!
//! ```yaml
//! mode: enforce              # optional: enforce (default) | audit
//! rules:                     # required; may be empty (then everything is denied)
//!   - name: orders-read      # required, unique; [A-Za-z0-9._-], at most 128 bytes
//!     action: allow          # required: allow | deny
//!     from:                  # required, non-empty list of sources:
//!       - spiffe://cluster.local/ns/shop/sa/orders  #   exactly this workload
//!       - spiffe://cluster.local/ns/shop/*          #   any ID in namespace shop
//!       - spiffe://partner.org/*                    #   any ID in trust domain partner.org
//!       - "*"                                       #   any authenticated peer (quote it)
//!     ports: [8080]          # optional, non-empty; default any port
//!     methods: [GET, HEAD]   # optional, non-empty, uppercase standard methods; default any
//!     paths: ["/api/*", /healthz]   # optional, non-empty; default any path
//! ```
//!
//! Unknown keys are errors. Paths are matched against the normalised
//! request path ([`crate::pathnorm`]) and must themselves be written in
//! normal form. `/healthz` matches that path only (not `/healthz/`);
//! `/api/*` matches `/api`, `/api/` and everything below, never `/apix`.
//!
//! # Semantics
//!
//! A rule matches a request when its source, port, method and path criteria
//! all match. Any matching deny rule denies, whatever its position; otherwise
//! any matching allow rule allows; otherwise the request is denied (default
//! deny). The deciding rule reported is the first matching one in file order.
//! In audit mode a request that would be denied passes and is reported as
//! [`Decision::AuditWouldDeny`], so a policy can be tried on live traffic.
//! Whether a workload without a policy file accepts everything is the
//! caller's choice, made visible by [`Permit::without_policy`].

mod boundary;
mod claims;
pub mod cli;
mod connection;
mod counters;
mod file;
mod index;
mod jwt;
mod limits;
mod lint;
mod pattern;

use http::Method;

use crate::sidecar::identity::SpiffeId;
use index::{first_match, SourceIndex};

pub use boundary::{source_matches, Boundary, PathProfile};
pub use claims::{ClaimHeader, ClaimHeaders, OnUntrusted, Untrusted};
pub use connection::Connection;
pub use counters::{DecisionCounters, PolicyCounters};
pub use file::PolicyError;
pub use jwt::{JwtRequirement, NoTokens, Standing, TokenState, Tokens};
pub use limits::{KeyBy, LimitRule, Rate, DEFAULT_MAX_KEYS};
pub use lint::{lint, lint_jwt_providers, LintFinding, LintKind};
pub use pattern::{MethodError, MethodSet, PathPattern, PathPatternError, Source, SourceError};

/// What a workload does with requests its rules would deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny them.
    #[default]
    Enforce,
    /// Let them pass, reported as would-deny.
    Audit,
}

impl Mode {
    /// The name a policy file uses (`mode: audit`), for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn is_deny(self) -> bool {
        self == Action::Deny
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    name: Box<str>,
    /// Place in the file's rule list (0-based).
    position: usize,
    action: Action,
    /// Line of the rule's `name` in the policy file, when it could be found.
    line: Option<usize>,
    sources: Box<[Source]>,
    ports: Option<Box<[u16]>>,
    methods: Option<MethodSet>,
    paths: Option<Box<[PathPattern]>>,
    /// An end-user token this rule needs (`jwt.rs`).
    jwt: Option<Box<JwtRequirement>>,
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 0-based place in the policy's rules, for per-rule tables.
    pub fn position(&self) -> usize {
        self.position
    }

    pub fn action(&self) -> Action {
        self.action
    }

    /// 1-based line of the rule in its file, for messages.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// `None` means any port.
    pub fn ports(&self) -> Option<&[u16]> {
        self.ports.as_deref()
    }

    /// `None` means any method, extension methods included.
    pub fn methods(&self) -> Option<MethodSet> {
        self.methods
    }

    /// `None` means any path.
    pub fn paths(&self) -> Option<&[PathPattern]> {
        self.paths.as_deref()
    }

    /// `None` means no end-user token is needed.
    pub fn jwt(&self) -> Option<&JwtRequirement> {
        self.jwt.as_deref()
    }

    /// Everything but the source, which the index has already matched.
    /// `method` is `MethodSet::of(req.method)`, computed once per request.
    fn matches_target(&self, req: &Request<'_>, method: MethodSet) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&req.port))
            && self.methods.is_none_or(|m| m.intersects(method))
            && self
                .paths
                .as_ref()
                .is_none_or(|p| p.iter().any(|p| p.matches(req.path)))
    }
}

/// The facts about one request that authorisation looks at.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The authenticated peer (from its verified X509-SVID).
    pub peer: &'a SpiffeId,
    /// The local port the request arrived on.
    pub port: u16,
    pub method: &'a Method,
    /// The path as returned by [`crate::pathnorm::normalize_path`]: rules
    /// match normal forms only, so a raw path could slip past them.
    pub path: &'a str,
}

/// The outcome of authorising one request. One function maps it to the
/// HTTP status, the metric label and the log line, so they cannot drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'p> {
    /// An allow rule matched and no deny rule did.
    Allow { rule: &'p Rule },
    /// Refused.
    Deny { cause: DenyCause<'p> },
    /// Audit mode: would have been refused, but passes.
    AuditWouldDeny { cause: DenyCause<'p> },
}

/// Why a request is (or in audit mode would be) denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyCause<'p> {
    /// This deny rule matched.
    Rule(&'p Rule),
    /// No allow rule matched: default deny.
    NoRuleMatched,
}

/// Whether the request goes on to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl<'p> Decision<'p> {
    /// `Allow` for audit-mode would-denies too: they pass.
    pub fn verdict(&self) -> Verdict {
        match self {
            Decision::Allow { .. } | Decision::AuditWouldDeny { .. } => Verdict::Allow,
            Decision::Deny { .. } => Verdict::Deny,
        }
    }

    /// The deciding rule; `None` when no rule matched (default deny).
    pub fn rule(&self) -> Option<&'p Rule> {
        match self {
            Decision::Allow { rule } => Some(rule),
            Decision::Deny { cause } | Decision::AuditWouldDeny { cause } => match cause {
                DenyCause::Rule(rule) => Some(rule),
                DenyCause::NoRuleMatched => None,
            },
        }
    }

    pub fn rule_name(&self) -> Option<&'p str> {
        self.rule().map(Rule::name)
    }

    pub fn audit_would_deny(&self) -> bool {
        matches!(self, Decision::AuditWouldDeny { .. })
    }

    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow { .. } => "allow",
            Decision::Deny { .. } => "deny",
            Decision::AuditWouldDeny { .. } => "audit_would_deny",
        }
    }

    /// The proof forwarding needs; `None` when the request is denied.
    pub fn permit(&self) -> Option<Permit> {
        match self.verdict() {
            Verdict::Allow => Some(Permit { _sealed: () }),
            Verdict::Deny => None,
        }
    }
}

/// Proof that a request was authorised. Only this module creates one, so a
/// forwarding function that takes a `Permit` cannot be reached without a
/// policy decision (or the explicit, greppable [`Permit::without_policy`]).
#[derive(Debug)]
#[must_use = "a Permit exists to be handed to the forwarding step"]
pub struct Permit {
    _sealed: (),
}

impl Permit {
    /// For a workload that runs without a policy file, where every
    /// authenticated peer is allowed. The one place that skips the policy.
    pub fn without_policy() -> Permit {
        Permit { _sealed: () }
    }
}

/// The current policy: `None` means no policy file, and then every
/// authenticated peer is allowed. Swapped whole on reload.
pub type PolicySlot = std::sync::Arc<arc_swap::ArcSwapOption<Policy>>;

/// A loaded, validated policy. Immutable: a reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    file: Box<str>,
    mode: Mode,
    rules: Box<[Rule]>,
    index: SourceIndex,
    /// Limits, claim headers, path profile (`boundary.rs`).
    boundary: Boundary,
}

impl Policy {
    /// Parses and validates a policy; `file_name` is used in messages only.
    pub fn from_yaml(text: &str, file_name: &str) -> Result<Policy, PolicyError> {
        let (mode, rules, boundary) = file::parse(text, file_name)?;
        let index = SourceIndex::build(&rules);
        Ok(Policy {
            file: file_name.into(),
            mode,
            rules: rules.into_boxed_slice(),
            index,
            boundary,
        })
    }

    /// Reads and parses a policy file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            file: file.clone(),
            source,
        })?;
        Policy::from_yaml(&text, &file)
    }

    pub fn file_name(&self) -> &str {
        &self.file
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The rules in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Limits, claim headers and path profile of this policy.
    pub fn boundary(&self) -> &Boundary {
        &self.boundary
    }

    /// Authorises one request. Looks only at the rules indexed under the
    /// peer's ID, namespace and trust domain plus the any-peer rules, and
    /// allocates nothing.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision<'_> {
        self.evaluate_with(req, &NoTokens)
    }

    /// [`Policy::evaluate`] with the request's end-user tokens: a rule with
    /// `jwt:` matches only when its token is valid and its claims match.
    pub fn evaluate_with(&self, req: &Request<'_>, tokens: &dyn Tokens) -> Decision<'_> {
        let candidates = self.index.for_peer(req.peer);
        let method = MethodSet::of(req.method);
        let matches = |i: usize| {
            let rule = &self.rules[i];
            rule.matches_target(req, method)
                && rule
                    .jwt
                    .as_ref()
                    .is_none_or(|j| j.standing(tokens) == Standing::Met)
        };
        self.decide(&candidates, matches, matches)
    }

    /// For a denied request: the first allow rule that would have matched
    /// had the caller presented a valid token (so the answer is 401, not 403).
    pub fn token_challenge(&self, req: &Request<'_>, tokens: &dyn Tokens) -> Option<&Rule> {
        let candidates = self.index.for_peer(req.peer);
        let method = MethodSet::of(req.method);
        let needs_token = |i: usize| {
            let rule = &self.rules[i];
            rule.matches_target(req, method)
                && rule
                    .jwt
                    .as_ref()
                    .is_some_and(|j| j.standing(tokens) == Standing::Unauthenticated)
        };
        first_match(&candidates, false, needs_token).map(|i| &self.rules[i])
    }

    /// Whether any rule needs an end-user token.
    pub fn uses_jwt(&self) -> bool {
        self.rules.iter().any(|r| r.jwt.is_some())
    }

    /// Refuses a rule naming a token provider that `inbound.jwt` does not declare.
    pub fn check_jwt_providers(&self, providers: &[String]) -> Result<(), PolicyError> {
        for rule in self.rules.iter() {
            let Some(j) = &rule.jwt else { continue };
            if !providers.iter().any(|p| **p == *j.provider) {
                return Err(PolicyError::Invalid {
                    file: self.file.to_string(),
                    line: rule.line,
                    column: None,
                    message: format!(
                        "rules[{}] ({}): jwt.provider {:?} is not a provider of inbound.jwt (declared: {})",
                        rule.position,
                        rule.name,
                        j.provider,
                        if providers.is_empty() { "none".to_owned() } else { providers.join(", ") }
                    ),
                });
            }
        }
        Ok(())
    }

    /// The decision over `candidates`: the first deny rule that `denies`
    /// accepts, else the first allow rule that `allows` accepts, else no
    /// rule; a denial is only logged in audit mode. One order for requests
    /// and connections alike.
    pub(crate) fn decide(
        &self,
        candidates: &index::Candidates<'_>,
        denies: impl FnMut(usize) -> bool,
        allows: impl FnMut(usize) -> bool,
    ) -> Decision<'_> {
        let cause = if let Some(i) = first_match(candidates, true, denies) {
            DenyCause::Rule(&self.rules[i])
        } else if let Some(i) = first_match(candidates, false, allows) {
            return Decision::Allow {
                rule: &self.rules[i],
            };
        } else {
            DenyCause::NoRuleMatched
        };
        match self.mode {
            Mode::Enforce => Decision::Deny { cause },
            Mode::Audit => Decision::AuditWouldDeny { cause },
        }
    }
}

#[cfg(test)]
mod tests;
