//! Claim headers: request headers that assert something about the end user
//! (`x-authenticated-user-id`, `x-user-roles`) and that only some callers
//! may send, typically the edge gateway that authenticated the user. The
//! policy names who may assert each; from anyone else the header is
//! removed, or the request refused (`on_untrusted: deny`). A role header
//! from an arbitrary upstream service is never proof.

use std::str::FromStr;

use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer};

use super::boundary::{entry_error, source_matches};
use super::file::PolicyError;
use super::pattern::{deserialize_parsed, NonEmpty, Source};
use crate::sidecar::headers;
use crate::sidecar::identity::SpiffeId;

/// What happens to a claim header from a caller not allowed to assert it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUntrusted {
    /// Removed; the request goes on without it.
    #[default]
    Strip,
    /// The request is refused with 403.
    Deny,
}

impl OnUntrusted {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUntrusted::Strip => "strip",
            OnUntrusted::Deny => "deny",
        }
    }
}

/// One claim header and who may send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    name: HeaderName,
    from: Box<[Source]>,
    on_untrusted: OnUntrusted,
}

impl ClaimHeader {
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

/// The `claim_headers:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimHeaders {
    headers: Box<[ClaimHeader]>,
}

/// A claim header present in a request from a caller that may not send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Untrusted<'p> {
    pub header: &'p str,
    pub action: OnUntrusted,
}

impl ClaimHeaders {
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    pub fn headers(&self) -> &[ClaimHeader] {
        &self.headers
    }

    /// Removes every claim header `peer` may not assert, calling `removed`
    /// for each; but if one of them is under `deny`, returns it first and
    /// touches nothing (the request is refused, so the rest is moot).
    pub fn enforce<'p>(
        &'p self,
        peer: &SpiffeId,
        request: &mut HeaderMap,
        mut removed: impl FnMut(Untrusted<'p>),
    ) -> Result<(), Untrusted<'p>> {
        let untrusted = || {
            self.headers
                .iter()
                .filter(|claim| request.contains_key(&claim.name))
                .filter(|claim| !claim.from.iter().any(|s| source_matches(s, peer)))
                .map(|claim| Untrusted {
                    header: claim.name.as_str(),
                    action: claim.on_untrusted,
                })
        };
        if let Some(denied) = untrusted().find(|u| u.action == OnUntrusted::Deny) {
            return Err(denied);
        }
        let strip: Vec<Untrusted<'p>> = untrusted().collect();
        for claim in strip {
            request.remove(claim.header);
            removed(claim);
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClaimHeaders {
    #[serde(default)]
    on_untrusted: OnUntrusted,
    headers: NonEmpty<RawClaim>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaim {
    name: ClaimName,
    from: NonEmpty<Source>,
    /// Overrides the section's `on_untrusted` for this header.
    #[serde(default)]
    on_untrusted: Option<OnUntrusted>,
}

/// A header name a policy may declare as a claim: not one meshguard always
/// removes or sets (the identity family, hop-by-hop), not one that frames
/// or routes the request.
struct ClaimName(HeaderName);

impl FromStr for ClaimName {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name =
            HeaderName::from_bytes(s.as_bytes()).map_err(|_| "is not an HTTP header name")?;
        if headers::is_protected(name.as_str()) {
            return Err("frames or routes the request and cannot be a claim");
        }
        if headers::is_always_removed(name.as_str()) {
            return Err("is an identity or hop-by-hop header, which meshguard always removes (and sets its own); no caller can assert it");
        }
        Ok(ClaimName(name))
    }
}

impl<'de> Deserialize<'de> for ClaimName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, "claim header")
    }
}

impl RawClaimHeaders {
    pub(super) fn build(self, text: &str, file: &str) -> Result<ClaimHeaders, PolicyError> {
        let mut headers: Vec<ClaimHeader> = Vec::with_capacity(self.headers.0.len());
        for raw in self.headers.0 {
            let name = raw.name.0;
            if headers.iter().any(|h| h.name == name) {
                let message = format!("claim_headers: {:?} is declared twice", name.as_str());
                return Err(entry_error(
                    text,
                    file,
                    "claim_headers",
                    name.as_str(),
                    message,
                ));
            }
            headers.push(ClaimHeader {
                name,
                from: raw.from.0.into_boxed_slice(),
                on_untrusted: raw.on_untrusted.unwrap_or(self.on_untrusted),
            });
        }
        Ok(ClaimHeaders {
            headers: headers.into_boxed_slice(),
        })
    }
}
