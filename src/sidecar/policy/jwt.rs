//! A rule's end-user token requirement (`jwt:`), and its pure matching
//! against what the authenticate step verified.
//!
//! ```yaml
//! jwt:
//!   provider: users           # required: a provider of inbound.jwt
//!   sub: ["user-*"]           # optional: the subject is one of (a trailing * is a prefix)
//!   iss: [https://id.example.com]  # optional: the issuer is one of
//!   aud: [orders]             # optional: the audience contains one of
//!   scopes: [orders.write]    # optional: the scopes (scope / scp) contain all of
//!   claims:                   # optional: each claim matches one of its values
//!     tenant: acme            #   a string claim equals one; an array claim contains one
//!     groups: [admins, ops]   #   numbers and booleans compare by their JSON text
//! ```
//!
//! A rule with `jwt:` matches only when the provider's token is valid and
//! every listed condition holds; without a token it never matches (an
//! allow rule does not allow, a deny rule does not deny).

use super::pattern::NonEmpty;
use crate::sidecar::jwt::Claims;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// What authentication learnt about one provider's token.
#[derive(Debug, Clone, Copy)]
pub enum TokenState<'a> {
    Missing,
    Invalid,
    Valid(&'a Claims),
}

/// The verified tokens of one request, by provider name.
pub trait Tokens {
    fn state(&self, provider: &str) -> TokenState<'_>;
}

/// No token at all (TCP connections, requests without providers).
pub struct NoTokens;

impl Tokens for NoTokens {
    fn state(&self, _: &str) -> TokenState<'_> {
        TokenState::Missing
    }
}

/// The authenticate step's result, read by provider name.
impl Tokens for crate::sidecar::jwt::Authn {
    fn state(&self, provider: &str) -> TokenState<'_> {
        match self.token_of(provider) {
            None => TokenState::Missing,
            Some(Err(_)) => TokenState::Invalid,
            Some(Ok(claims)) => TokenState::Valid(claims),
        }
    }
}

/// A value pattern: exact, or a prefix when it ends in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValuePattern(Box<str>);

impl ValuePattern {
    pub fn matches(&self, v: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => v.starts_with(prefix),
            None => *self.0 == *v,
        }
    }
}

impl<'de> Deserialize<'de> for ValuePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Numbers and booleans in YAML (`verified: true`) are read as their text.
        let v = serde_norway::Value::deserialize(d)?;
        let text = match v {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Number(n) => n.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "a claim value must be a string, number or boolean",
                ))
            }
        };
        if text.is_empty() {
            return Err(serde::de::Error::custom("a claim value must not be empty"));
        }
        Ok(ValuePattern(text.into()))
    }
}

/// One value or a non-empty list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(ValuePattern),
    Many(NonEmpty<ValuePattern>),
}

impl OneOrMany {
    fn into_box(self) -> Box<[ValuePattern]> {
        match self {
            OneOrMany::One(v) => Box::new([v]),
            OneOrMany::Many(NonEmpty(v)) => v.into_boxed_slice(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    provider: String,
    #[serde(default)]
    sub: Option<OneOrMany>,
    #[serde(default)]
    iss: Option<OneOrMany>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    scopes: Option<NonEmpty<String>>,
    #[serde(default)]
    claims: BTreeMap<String, OneOrMany>,
}

/// A validated `jwt:` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRequirement {
    pub provider: Box<str>,
    sub: Option<Box<[ValuePattern]>>,
    iss: Option<Box<[ValuePattern]>>,
    aud: Option<Box<[ValuePattern]>>,
    scopes: Box<[Box<str>]>,
    claims: Box<[ClaimCondition]>,
}

/// A claim's name and the values one of which it must have.
type ClaimCondition = (Box<str>, Box<[ValuePattern]>);

impl From<RawJwt> for JwtRequirement {
    fn from(raw: RawJwt) -> Self {
        JwtRequirement {
            provider: raw.provider.into(),
            sub: raw.sub.map(OneOrMany::into_box),
            iss: raw.iss.map(OneOrMany::into_box),
            aud: raw.aud.map(OneOrMany::into_box),
            scopes: raw.scopes.map_or_else(Box::default, |NonEmpty(s)| {
                s.into_iter().map(Into::into).collect()
            }),
            claims: raw
                .claims
                .into_iter()
                .map(|(k, v)| (k.into(), v.into_box()))
                .collect(),
        }
    }
}

/// How a requirement stands against one request's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Valid token, every condition holds.
    Met,
    /// No token, or a refused one: the caller must authenticate (401).
    Unauthenticated,
    /// Valid token whose claims do not match (403).
    ClaimsRefused,
}

impl JwtRequirement {
    pub fn standing(&self, tokens: &dyn Tokens) -> Standing {
        match tokens.state(&self.provider) {
            TokenState::Missing | TokenState::Invalid => Standing::Unauthenticated,
            TokenState::Valid(c) if self.claims_match(c) => Standing::Met,
            TokenState::Valid(_) => Standing::ClaimsRefused,
        }
    }

    /// Every listed condition against verified claims. Pure.
    pub fn claims_match(&self, c: &Claims) -> bool {
        let any = |pats: &Option<Box<[ValuePattern]>>, v: Option<&str>| {
            pats.as_ref()
                .is_none_or(|p| v.is_some_and(|v| p.iter().any(|p| p.matches(v))))
        };
        any(&self.sub, c.sub.as_deref())
            && any(&self.iss, Some(&c.iss))
            && self
                .aud
                .as_ref()
                .is_none_or(|p| c.aud.iter().any(|a| p.iter().any(|p| p.matches(a))))
            && self.scopes.iter().all(|s| c.scopes.contains(s))
            && self
                .claims
                .iter()
                .all(|(name, pats)| claim_matches(c.get(name), pats))
    }
}

fn claim_matches(value: Option<&Value>, pats: &[ValuePattern]) -> bool {
    let scalar = |v: &Value| match v {
        Value::String(s) => pats.iter().any(|p| p.matches(s)),
        Value::Bool(_) | Value::Number(_) => pats.iter().any(|p| p.matches(&v.to_string())),
        _ => false,
    };
    match value {
        Some(Value::Array(items)) => items.iter().any(scalar),
        Some(v) => scalar(v),
        None => false,
    }
}
