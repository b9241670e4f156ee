//! The sections of a policy file beside its rules that constrain what an
//! allowed request may do: per-identity limits (`limits:`), which callers
//! may assert which claim headers (`claim_headers:`), and the path profile
//! (`path_profile:`). Parsed with the rules, swapped with them on reload.
//!
//! ```yaml
//! path_profile: strict                # standard (default) | strict | strict_case_insensitive
//! claim_headers:
//!   on_untrusted: strip               # strip (default) | deny
//!   headers:
//!     - name: x-authenticated-user-id
//!       from: [spiffe://cluster.local/ns/edge/sa/gateway]
//! limits:
//!   - name: per-caller                # unique; [A-Za-z0-9._-]
//!     from: ["spiffe://cluster.local/ns/shop/*"]   # optional: callers it applies to (default any)
//!     rules: [orders-read]            # optional: only requests these allow rules let through
//!     key: id                         # id (default) | namespace | trust_domain | subject
//!     rate: 50                        # requests per second, fractional allowed
//!     burst: 100                      # bucket size (default: rate rounded up)
//!     concurrency: 20                 # requests in flight per key
//!     max_keys: 10000                 # buckets kept at most (default 10000)
//! ```

use serde::Deserialize;

use super::claims::{ClaimHeaders, RawClaimHeaders};
use super::file::PolicyError;
use super::limits::{LimitRule, RawLimit};
use super::pattern::{PathPattern, Source};
use super::Rule;
use crate::sidecar::identity::SpiffeId;

/// How strictly request paths are read (see `pathnorm::strict`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathProfile {
    /// The RFC 3986 normal form only.
    #[default]
    Standard,
    /// Also refuse what an app that decodes twice or runs on Windows would
    /// read as another path: `%25XX`, segments ending in `.` or whitespace,
    /// NTFS stream names.
    Strict,
    /// `strict`, and rules match paths whatever their ASCII case, for apps
    /// that route case-insensitively (IIS, Windows file systems).
    StrictCaseInsensitive,
}

impl PathProfile {
    pub fn is_strict(self) -> bool {
        self != PathProfile::Standard
    }

    pub fn case_insensitive(self) -> bool {
        self == PathProfile::StrictCaseInsensitive
    }
}

/// The boundary sections of one policy.
#[derive(Debug, Default)]
pub struct Boundary {
    pub limits: Box<[LimitRule]>,
    pub claims: ClaimHeaders,
    pub path_profile: PathProfile,
}

/// The sections as written; each value validated as it is read.
pub(super) struct RawBoundary {
    pub limits: Vec<RawLimit>,
    pub claim_headers: Option<RawClaimHeaders>,
    pub path_profile: PathProfile,
}

/// Under `strict_case_insensitive`, a rule's paths are matched in ASCII
/// lowercase, as the request path is (`pathnorm::strict`); percent-escapes
/// fold too, consistently on both sides.
pub(super) fn fold_path_case(rule: &mut Rule) {
    if let Some(paths) = &mut rule.paths {
        for p in paths.iter_mut() {
            *p = match p {
                PathPattern::Exact(s) => PathPattern::Exact(s.to_ascii_lowercase().into()),
                PathPattern::Prefix(s) => PathPattern::Prefix(s.to_ascii_lowercase().into()),
            };
        }
    }
}

impl RawBoundary {
    /// Cross-field checks: names unique, rule names that exist.
    pub(super) fn build(
        self,
        rules: &[Rule],
        text: &str,
        file: &str,
    ) -> Result<Boundary, PolicyError> {
        let limits = super::limits::build(self.limits, rules, text, file)?;
        let claims = match self.claim_headers {
            Some(raw) => raw.build(text, file)?,
            None => ClaimHeaders::default(),
        };
        Ok(Boundary {
            limits,
            claims,
            path_profile: self.path_profile,
        })
    }
}

/// Whether `peer` is among the peers `source` names (the same reading as
/// the rule index, for sections that are not indexed).
pub fn source_matches(source: &Source, peer: &SpiffeId) -> bool {
    match source {
        Source::Any => true,
        Source::Id(id) => id == peer,
        Source::TrustDomain(td) => peer.trust_domain() == &**td,
        Source::Namespace {
            trust_domain,
            namespace,
        } => peer.trust_domain() == &**trust_domain && peer.k8s_namespace() == Some(&**namespace),
    }
}

/// An error about a whole entry of a section, at the line where `needle`
/// (its name) is written after the section's key.
pub(super) fn entry_error(
    text: &str,
    file: &str,
    section: &str,
    needle: &str,
    message: String,
) -> PolicyError {
    let start = text.find(&format!("{section}:")).unwrap_or(0);
    let line = text[start..]
        .find(needle)
        .map(|at| text[..start + at].matches('\n').count() + 1);
    PolicyError::Invalid {
        file: file.to_owned(),
        line,
        column: None,
        message,
    }
}
