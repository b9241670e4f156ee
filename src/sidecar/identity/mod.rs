//! Workload identity: the SPIFFE ID type and the X509-SVID rules.
//!
//! Everything a caller claims is checked here against the SPIFFE standards
//! (SPIFFE-ID.md and X509-SVID.md). Parsing is strict: an ID that a
//! conforming issuer would never produce is refused, never "repaired".

mod svid;

pub use svid::{check_svid_leaf, svid_validity, Role, SvidError, MIN_RSA_BITS};

use std::fmt;
use std::sync::Arc;

/// Longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest SPIFFE ID we accept, in bytes (the standard asks verifiers to
/// support up to 2048 and issuers never to generate longer).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID. Each variant names one rule of the
/// SPIFFE ID standard so that a refusal can be explained precisely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    #[error("scheme must be \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("trust domain must not contain a port")]
    Port,
    #[error("trust domain must not contain userinfo ('@')")]
    UserInfo,
    #[error("percent-encoding is not allowed in a SPIFFE ID")]
    PercentEncoded,
    #[error(
        "trust domain character {0:?} is not allowed (only lowercase a-z, 0-9, '.', '-', '_')"
    )]
    BadTrustDomainChar(char),
    #[error("a SPIFFE ID must not have a query")]
    Query,
    #[error("a SPIFFE ID must not have a fragment")]
    Fragment,
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path must not end with '/'")]
    TrailingSlash,
    #[error("path character {0:?} is not allowed (only a-z, A-Z, 0-9, '.', '-', '_')")]
    BadPathChar(char),
}

/// A validated SPIFFE ID such as `spiffe://cluster.local/ns/default/sa/web`.
///
/// Cheap to clone (one reference count): it is carried with every request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Arc<str>,
    /// Byte offset where the path starts (== id.len() for a root ID).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `s` against every rule of the SPIFFE ID standard.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let path_start = validate(s)?;
        Ok(SpiffeId {
            id: Arc::from(s),
            path_start,
        })
    }

    /// Builds the Kubernetes-convention ID `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn from_k8s(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "{SCHEME_PREFIX}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..self.path_start]
    }

    /// The path, e.g. `/ns/default/sa/web`; empty for a trust-domain (root) ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// True for `spiffe://td` alone, which names a trust domain, not a workload.
    pub fn is_root(&self) -> bool {
        self.path_start == self.id.len()
    }

    /// The namespace of a Kubernetes-convention ID (`/ns/<ns>/sa/<sa>`).
    pub fn k8s_namespace(&self) -> Option<&str> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(_), None) => Some(ns),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.id)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid SPIFFE ID {s:?}: {e}")))
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id)
    }
}

/// Validates a trust domain name on its own (as written in config files).
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '@' => return Err(SpiffeIdError::UserInfo),
            '%' => return Err(SpiffeIdError::PercentEncoded),
            '?' => return Err(SpiffeIdError::Query),
            '#' => return Err(SpiffeIdError::Fragment),
            other => return Err(SpiffeIdError::BadTrustDomainChar(other)),
        }
    }
    Ok(())
}

/// Checks every rule and returns the byte offset where the path starts.
fn validate(s: &str) -> Result<usize, SpiffeIdError> {
    if s.is_empty() {
        return Err(SpiffeIdError::Empty);
    }
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(SpiffeIdError::TooLong);
    }
    // The scheme must be exactly lowercase "spiffe": an issuer never writes
    // anything else, so a variant is a sign of a forged or broken SVID.
    let rest = s
        .strip_prefix(SCHEME_PREFIX)
        .ok_or(SpiffeIdError::WrongScheme)?;
    let td_end = rest.find('/').unwrap_or(rest.len());
    validate_trust_domain(&rest[..td_end])?;
    let path = &rest[td_end..];
    if !path.is_empty() {
        validate_path(path)?;
    }
    Ok(SCHEME_PREFIX.len() + td_end)
}

/// `path` starts with '/'.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    // Query and fragment are named as such even when they sit after a
    // trailing slash, so the reason given is the most telling one.
    if let Some(i) = path.find(['?', '#']) {
        return Err(if path.as_bytes()[i] == b'?' {
            SpiffeIdError::Query
        } else {
            SpiffeIdError::Fragment
        });
    }
    if path.contains('%') {
        return Err(SpiffeIdError::PercentEncoded);
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
