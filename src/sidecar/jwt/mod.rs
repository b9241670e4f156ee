//! End-user tokens: the `authenticate` step of the inbound. A request's
//! bearer token (or the token in a provider's named header) is parsed
//! without trusting it, matched to the provider whose issuer it names,
//! verified with that provider's keys, and checked for time, issuer,
//! audience and (JWT-SVIDs) subject. The result goes to authorization,
//! which decides whether a rule that needs a token is met (see
//! `policy/jwt.rs`); this module never refuses a request by itself.
//!
//! Refused before any key is looked at: tokens over the provider's size
//! limit, anything but a three-part compact JWS, `alg: none` or an
//! algorithm the provider does not allow, a `crit` header. A key is used
//! only for its own algorithm family, and HMAC keys exist only for
//! providers with an explicit secret file, so an RSA public key can never
//! be used as an HMAC secret. Header parameters that point at keys (`jku`,
//! `x5u`, `jwk`) are ignored: keys come from the provider's source only.

mod cache;
pub mod fetch;
pub mod keys;
mod metrics;
mod sources;
pub mod token;

use crate::sidecar::config::{JwtConfig, ProviderConfig, ProviderKind};
use crate::sidecar::identity::SpiffeId;
use cache::TokenCache;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;
pub use keys::{KeyCell, KeySet, KeyUse, KeysError};
pub use metrics::JwtMetrics;
pub use sources::{Source, SourceError};
use std::str::FromStr;
use std::sync::Arc;
pub use token::{Claims, Unverified};

/// Why a token is not accepted. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token larger than the provider allows")]
    TooLarge,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    #[error("no provider for the token's issuer")]
    UnknownIssuer,
    #[error("no verification keys available")]
    NoKeys,
    #[error("no key for the token's kid")]
    UnknownKid,
    #[error("signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("audience not accepted")]
    BadAudience,
    #[error("subject is not a SPIFFE ID of the trust domain")]
    BadSubject,
}

impl JwtError {
    /// A bounded label (metrics), one of [`metrics::RESULTS`].
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "too_large",
            JwtError::Malformed(_) => "malformed",
            JwtError::AlgorithmNotAllowed => "alg_not_allowed",
            JwtError::UnknownIssuer => "unknown_issuer",
            JwtError::NoKeys => "no_keys",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::BadAudience => "bad_audience",
            JwtError::BadSubject => "bad_subject",
        }
    }

    /// The audit reason of a request refused for this token (bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            JwtError::TooLarge => "invalid token: too large",
            JwtError::Malformed(_) => "invalid token: malformed",
            JwtError::AlgorithmNotAllowed => "invalid token: algorithm not allowed",
            JwtError::UnknownIssuer => "invalid token: unknown issuer",
            JwtError::NoKeys => "invalid token: no verification keys",
            JwtError::UnknownKid => "invalid token: unknown kid",
            JwtError::BadSignature => "invalid token: bad signature",
            JwtError::Expired => "invalid token: expired",
            JwtError::NotYetValid => "invalid token: not yet valid",
            JwtError::BadAudience => "invalid token: audience",
            JwtError::BadSubject => "invalid token: subject",
        }
    }
}

/// A token that passed every check of its provider.
#[derive(Debug)]
pub struct Verified {
    /// Index of the provider in the config.
    pub provider: usize,
    pub claims: Claims,
}

/// Where a provider reads its token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The whole value of this header.
    Header(HeaderName),
}

/// One configured provider, ready to verify.
pub struct Provider {
    pub name: Box<str>,
    kind: ProviderKind,
    trust_domain: Option<Box<str>>,
    issuers: Box<[Box<str>]>,
    audiences: Box<[Box<str>]>,
    algorithms: Box<[Algorithm]>,
    skew: i64,
    max_bytes: usize,
    location: Location,
    claim_headers: Box<[(Box<str>, HeaderName)]>,
    forward_token: bool,
    /// The keys in force; the seam through which any source publishes.
    pub keys: Arc<KeyCell>,
    source: Source,
}

impl Provider {
    fn new(cfg: &ProviderConfig) -> Result<Provider, SourceError> {
        let location = match &cfg.header {
            None => Location::Bearer,
            // Validated at config load.
            Some(h) => {
                HeaderName::from_bytes(h.as_bytes()).map_or(Location::Bearer, Location::Header)
            }
        };
        Ok(Provider {
            name: cfg.name.as_str().into(),
            kind: cfg.kind,
            trust_domain: cfg.trust_domain.as_deref().map(Into::into),
            issuers: cfg.accepted_issuers().into_iter().map(Into::into).collect(),
            audiences: cfg.audiences.iter().map(|a| a.as_str().into()).collect(),
            algorithms: cfg
                .algorithms
                .iter()
                .filter_map(|a| Algorithm::from_str(a).ok())
                .collect(),
            skew: cfg.clock_skew_s as i64,
            max_bytes: cfg.max_token_bytes,
            location,
            claim_headers: cfg
                .claim_headers
                .iter()
                .filter_map(|(c, h)| {
                    Some((
                        c.as_str().into(),
                        HeaderName::from_bytes(h.as_bytes()).ok()?,
                    ))
                })
                .collect(),
            forward_token: cfg.forward_token,
            keys: Arc::default(),
            source: Source::from_config(cfg)?,
        })
    }

    /// Verifies a parsed token with this provider's keys at `now`; the key
    /// generation it was verified with.
    pub fn verify(&self, t: &Unverified<'_>, now: i64) -> Result<u64, JwtError> {
        if !self.algorithms.contains(&t.alg) {
            return Err(JwtError::AlgorithmNotAllowed);
        }
        let snapshot = self.keys.load();
        if snapshot.keys.keys.is_empty() || snapshot.usable_until.is_some_and(|u| u < now) {
            return Err(JwtError::NoKeys);
        }
        let mut tried = false;
        for key in snapshot.keys.candidates(t.kid.as_deref(), t.alg) {
            tried = true;
            let ok = jsonwebtoken::crypto::verify(
                t.signature,
                t.signing_input.as_bytes(),
                &key.key,
                t.alg,
            );
            if ok.unwrap_or(false) {
                self.check_claims(&t.claims, now)?;
                return Ok(snapshot.generation);
            }
        }
        Err(if tried {
            JwtError::BadSignature
        } else {
            JwtError::UnknownKid
        })
    }

    /// Time, issuer, audience, and for JWT-SVIDs the subject (JWT-SVID spec §3).
    pub fn check_claims(&self, c: &Claims, now: i64) -> Result<(), JwtError> {
        if !self.issuers.iter().any(|i| **i == *c.iss) {
            return Err(JwtError::UnknownIssuer);
        }
        if c.exp.saturating_add(self.skew) < now {
            return Err(JwtError::Expired);
        }
        let future = |t: Option<i64>| t.is_some_and(|t| t.saturating_sub(self.skew) > now);
        if future(c.nbf) || future(c.iat) {
            return Err(JwtError::NotYetValid);
        }
        if !c.aud.iter().any(|a| self.audiences.contains(a)) {
            return Err(JwtError::BadAudience);
        }
        if self.kind == ProviderKind::Spiffe {
            let sub = c.sub.as_deref().ok_or(JwtError::BadSubject)?;
            let id = SpiffeId::parse(sub).map_err(|_| JwtError::BadSubject)?;
            if id.is_root() || Some(id.trust_domain()) != self.trust_domain.as_deref() {
                return Err(JwtError::BadSubject);
            }
        }
        Ok(())
    }
}

/// Why the token providers could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JwtSetupError {
    #[error("inbound.jwt provider {provider}: {source}")]
    Source {
        provider: String,
        #[source]
        source: SourceError,
    },
    #[error("jwt metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Every provider of `inbound.jwt`, the verified-token cache, the counters.
pub struct Authenticator {
    providers: Box<[Provider]>,
    /// Providers grouped by where they read their token.
    locations: Box<[(Location, Box<[usize]>)]>,
    cache: TokenCache,
    metrics: JwtMetrics,
    realm: Box<str>,
}

/// What the authenticate step learnt about one request: per provider
/// (config order) no token, a refused one, or a verified one.
#[derive(Debug, Default)]
pub struct Authn {
    states: Vec<State>,
    names: Vec<Box<str>>,
}

#[derive(Debug, Clone)]
enum State {
    Missing,
    Invalid(JwtError),
    Valid(Arc<Verified>),
}

impl Authenticator {
    /// Builds the providers and loads their file keys (a bad file stops the
    /// start); URL keys come from [`Authenticator::watch`].
    pub fn load(
        cfg: &JwtConfig,
        registry: &prometheus::Registry,
        realm: &str,
    ) -> Result<Arc<Authenticator>, JwtSetupError> {
        let providers = cfg
            .providers
            .iter()
            .map(|p| {
                Provider::new(p).map_err(|source| JwtSetupError::Source {
                    provider: p.name.clone(),
                    source,
                })
            })
            .collect::<Result<Box<[Provider]>, _>>()?;
        let names: Vec<&str> = providers.iter().map(|p| &*p.name).collect();
        let metrics = JwtMetrics::new(registry, &names)?;
        for p in providers.iter() {
            p.source
                .load_initial(p, &metrics)
                .map_err(|source| JwtSetupError::Source {
                    provider: p.name.to_string(),
                    source,
                })?;
        }
        let mut locations: Vec<(Location, Vec<usize>)> = Vec::new();
        for (i, p) in providers.iter().enumerate() {
            match locations.iter_mut().find(|(l, _)| *l == p.location) {
                Some((_, group)) => group.push(i),
                None => locations.push((p.location.clone(), vec![i])),
            }
        }
        Ok(Arc::new(Authenticator {
            providers,
            locations: locations
                .into_iter()
                .map(|(l, g)| (l, g.into_boxed_slice()))
                .collect(),
            cache: TokenCache::new(cfg.cache_entries),
            metrics,
            realm: cfg.realm.as_deref().unwrap_or(realm).into(),
        }))
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// The provider named `name`, to publish keys from another source (the
    /// Workload API's JWT bundles) through its [`KeyCell`].
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|p| &*p.name == name)
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Every header a provider sets from claims: removed from what callers send.
    pub fn claim_header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.providers
            .iter()
            .flat_map(|p| p.claim_headers.iter().map(|(_, h)| h))
    }

    /// Authenticate: every token the request carries, checked. `now` in Unix seconds.
    pub fn authenticate(&self, headers: &HeaderMap, now: i64) -> Authn {
        let mut states = vec![State::Missing; self.providers.len()];
        for (location, group) in self.locations.iter() {
            let token = match read_token(headers, location) {
                Ok(None) => continue,
                Ok(Some(token)) => self.check(token, group, now),
                Err(e) => Err((None, e)),
            };
            match token {
                Ok(v) => {
                    for &i in group.iter() {
                        states[i] = if i == v.provider {
                            State::Valid(v.clone())
                        } else {
                            State::Invalid(JwtError::UnknownIssuer)
                        };
                    }
                }
                Err((claimed, e)) => {
                    self.metrics.validation(claimed, e.label());
                    for &i in group.iter() {
                        states[i] = State::Invalid(e.clone());
                    }
                }
            }
        }
        Authn {
            states,
            names: Vec::new(),
        }
        .named(&self.providers)
    }

    /// One token against the providers of its location: from the cache, or
    /// parsed, matched by issuer and verified. The error names the provider
    /// the token claimed, if any.
    fn check(
        &self,
        token: &str,
        group: &[usize],
        now: i64,
    ) -> Result<Arc<Verified>, (Option<usize>, JwtError)> {
        let hash = crate::sidecar::tls::sha256(token.as_bytes());
        let generation_of = |i: usize| {
            self.providers
                .get(i)
                .and_then(|p| p.keys.generation_at(now))
        };
        if let Some(v) = self.cache.get(&hash, now, generation_of) {
            self.metrics.validation(Some(v.provider), "cached");
            return Ok(v);
        }
        let max = group
            .iter()
            .map(|&i| self.providers[i].max_bytes)
            .max()
            .unwrap_or(0);
        let parsed = token::parse(token, max).map_err(|e| (None, e))?;
        let Some(&index) = group
            .iter()
            .find(|&&i| self.providers[i].issuers.contains(&parsed.claims.iss))
        else {
            return Err((None, JwtError::UnknownIssuer));
        };
        let provider = &self.providers[index];
        if token.len() > provider.max_bytes {
            return Err((Some(index), JwtError::TooLarge));
        }
        let generation = match provider.verify(&parsed, now) {
            Ok(g) => g,
            Err(e) => {
                if e == JwtError::UnknownKid {
                    provider.source.kick();
                }
                return Err((Some(index), e));
            }
        };
        self.metrics.validation(Some(index), "valid");
        let valid_until = parsed.claims.exp.saturating_add(provider.skew);
        let verified = Arc::new(Verified {
            provider: index,
            claims: parsed.claims,
        });
        self.cache
            .insert(hash, verified.clone(), generation, valid_until, now);
        Ok(verified)
    }

    /// For the app: the claims each verified provider maps set as headers
    /// (callers' copies were stripped before), and the token removed where
    /// the provider does not forward it.
    pub fn apply_claim_headers(&self, authn: &Authn, headers: &mut HeaderMap) {
        for (i, state) in authn.states.iter().enumerate() {
            let (State::Valid(v), Some(p)) = (state, self.providers.get(i)) else {
                continue;
            };
            for (claim, header) in p.claim_headers.iter() {
                let value = v
                    .claims
                    .header_text(claim)
                    .and_then(|t| HeaderValue::try_from(t).ok());
                if let Some(value) = value {
                    headers.insert(header.clone(), value);
                }
            }
            if !p.forward_token {
                match &p.location {
                    Location::Bearer => headers.remove(http::header::AUTHORIZATION),
                    Location::Header(h) => headers.remove(h),
                };
            }
        }
    }

    /// Keeps URL keys fresh and file keys reloaded until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        poll: std::time::Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        sources::watch_all(self, poll, shutdown).await
    }

    /// Verified tokens remembered now (bounded by `cache_entries`).
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }
}

/// The token at `location`: `None` when there is none (or the
/// `Authorization` header holds another scheme); two copies are refused.
fn read_token<'h>(
    headers: &'h HeaderMap,
    location: &Location,
) -> Result<Option<&'h str>, JwtError> {
    let name = match location {
        Location::Bearer => &http::header::AUTHORIZATION,
        Location::Header(h) => h,
    };
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(JwtError::Malformed("more than one token header"));
    }
    let text = value
        .to_str()
        .map_err(|_| JwtError::Malformed("token header is not text"))?
        .trim();
    let token = match location {
        Location::Header(_) => text,
        Location::Bearer => match text.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim_start(),
            _ => return Ok(None),
        },
    };
    if token.is_empty() {
        return Err(JwtError::Malformed("empty token"));
    }
    Ok(Some(token))
}

impl Authn {
    fn named(mut self, providers: &[Provider]) -> Authn {
        self.names = providers.iter().map(|p| p.name.clone()).collect();
        self
    }

    /// The first verified token's claims (for the audit line).
    pub fn verified(&self) -> Option<&Claims> {
        self.states.iter().find_map(|s| match s {
            State::Valid(v) => Some(&v.claims),
            _ => None,
        })
    }

    /// The first refusal of a token that was sent.
    pub fn first_error(&self) -> Option<&JwtError> {
        self.states.iter().find_map(|s| match s {
            State::Invalid(e) => Some(e),
            _ => None,
        })
    }

    /// `provider`'s token: `None` when none was sent, else its claims or
    /// why it was refused.
    pub fn token_of(&self, provider: &str) -> Option<Result<&Claims, &JwtError>> {
        let i = self.names.iter().position(|n| &**n == provider)?;
        match &self.states[i] {
            State::Missing => None,
            State::Invalid(e) => Some(Err(e)),
            State::Valid(v) => Some(Ok(&v.claims)),
        }
    }

    /// The error of `provider`'s token, if it sent one that was refused.
    pub fn error_for(&self, provider: &str) -> Option<&JwtError> {
        let i = self.names.iter().position(|n| &**n == provider)?;
        match &self.states[i] {
            State::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
