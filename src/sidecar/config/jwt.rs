//! `inbound.jwt`: the providers whose end-user tokens the inbound checks.
//!
//! Under `inbound` because only the inbound checks tokens (a request's
//! end-user context is established where it enters the workload); the
//! policy names a provider by `name`, and the keys, issuers and sources
//! are the operator's config, not the app owner's policy.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default allowed clock skew for `exp`/`nbf`/`iat`, seconds.
pub const DEFAULT_CLOCK_SKEW_S: u64 = 60;
/// Most clock skew a provider may allow, seconds.
pub const MAX_CLOCK_SKEW_S: u64 = 300;
/// Default largest token accepted, bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Default number of verified tokens remembered.
pub const DEFAULT_CACHE_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub providers: Vec<ProviderConfig>,
    /// Verified tokens remembered (so a repeated token skips the signature check).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// The `realm` of the `WWW-Authenticate` challenge (default: our SPIFFE ID's trust domain).
    #[serde(default)]
    pub realm: Option<String>,
}

fn default_cache_entries() -> usize {
    DEFAULT_CACHE_ENTRIES
}

/// `oidc`: an OAuth/OIDC issuer's access or ID tokens; `spiffe`: JWT-SVIDs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Oidc,
    Spiffe,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Referred to by policy rules (`jwt: {provider: NAME}`); [A-Za-z0-9._-].
    pub name: String,
    #[serde(default)]
    pub kind: ProviderKind,
    /// Accepted `iss` values (oidc: required; spiffe: default the trust domain's `spiffe://TD`).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// The token's `aud` must contain one of these (spiffe: required).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `alg` values; default RS256, ES256 (and PS256, ES384, RS384, RS512, EdDSA if listed).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Where the verification keys come from.
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// HS256/384/512 only: a file holding the shared secret (then `jwks` is not used).
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// spiffe: the trust domain whose JWT bundle (`jwks.file`) signs the SVIDs.
    #[serde(default)]
    pub trust_domain: Option<String>,
    #[serde(default = "default_skew")]
    pub clock_skew_s: u64,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// A header to read the token from as is; default `Authorization: Bearer`.
    #[serde(default)]
    pub header: Option<String>,
    /// Verified claims set as request headers for the app (claim -> header);
    /// caller-sent headers of those names are always removed.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    /// Pass the token on to the app (default true); false removes it once verified.
    #[serde(default = "yes")]
    pub forward_token: bool,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into()]
}
fn default_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_S
}
fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// A JWKS file (or a SPIFFE JWT bundle), re-read when it changes.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Or an `https://` URL meshguard fetches itself.
    #[serde(default)]
    pub url: Option<String>,
    /// PEM CA certificates that the URL's server must chain to (required with `url`).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_refresh")]
    pub refresh_interval_s: u64,
    /// After failed refreshes, the last keys fetched stay in use this long
    /// after their fetch, then none are (tokens are refused: fail closed).
    #[serde(default = "default_max_stale")]
    pub max_stale_s: u64,
}

fn default_refresh() -> u64 {
    300
}
fn default_max_stale() -> u64 {
    3600
}

/// The algorithm names meshguard verifies, and whether each is HMAC.
pub const ASYMMETRIC: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
pub const HMAC: &[&str] = &["HS256", "HS384", "HS512"];

impl JwtConfig {
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for p in &mut self.providers {
            if let Some(f) = &mut p.hmac_secret_file {
                resolve(f);
            }
            if let Some(j) = &mut p.jwks {
                j.file.iter_mut().for_each(resolve);
                j.ca.iter_mut().for_each(resolve);
            }
        }
    }

    /// Every rule serde cannot express; the message and a needle for the line.
    pub(super) fn validate(&self) -> Result<(), (String, Option<String>)> {
        if !(1..=1_000_000).contains(&self.cache_entries) {
            return Err((
                "inbound.jwt.cache_entries must be between 1 and 1000000".into(),
                Some("cache_entries".into()),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |m: String| {
                (
                    format!("inbound.jwt.providers[{i}] ({}): {m}", p.name),
                    Some(p.name.clone()),
                )
            };
            if !names.insert(p.name.as_str()) {
                return Err(at("provider name is used twice".into()));
            }
            p.validate().map_err(at)?;
        }
        Ok(())
    }
}

impl ProviderConfig {
    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !name_ok {
            return Err("name must be 1-64 bytes of A-Z a-z 0-9 - _ .".into());
        }
        if self.clock_skew_s > MAX_CLOCK_SKEW_S {
            return Err(format!("clock_skew_s must be at most {MAX_CLOCK_SKEW_S}"));
        }
        if !(256..=64 * 1024).contains(&self.max_token_bytes) {
            return Err("max_token_bytes must be between 256 and 65536".into());
        }
        self.validate_algorithms()?;
        self.validate_kind()?;
        if let Some(h) = &self.header {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) if !crate::sidecar::headers::is_protected(n.as_str()) => {}
                _ => return Err(format!("header {h:?} is not a usable header name")),
            }
        }
        for (claim, header) in &self.claim_headers {
            if claim.is_empty() {
                return Err("claim_headers: empty claim name".into());
            }
            match http::HeaderName::from_bytes(header.as_bytes()) {
                Ok(n)
                    if !crate::sidecar::headers::is_protected(n.as_str())
                        && n != http::header::AUTHORIZATION => {}
                _ => {
                    return Err(format!(
                        "claim_headers: {header:?} is not a usable header name"
                    ))
                }
            }
        }
        Ok(())
    }

    /// `none` never; HMAC only with a secret file and then nothing else, so a
    /// public key can never be used as an HMAC secret (and the reverse).
    fn validate_algorithms(&self) -> Result<(), String> {
        if self.algorithms.is_empty() {
            return Err("algorithms must not be empty".into());
        }
        let hmac = self
            .algorithms
            .iter()
            .filter(|a| HMAC.contains(&a.as_str()))
            .count();
        for a in &self.algorithms {
            if a.eq_ignore_ascii_case("none") {
                return Err("algorithm `none` is never accepted".into());
            }
            if !ASYMMETRIC.contains(&a.as_str()) && !HMAC.contains(&a.as_str()) {
                return Err(format!(
                    "algorithm {a:?} is not supported (one of {})",
                    [ASYMMETRIC, HMAC].concat().join(", ")
                ));
            }
        }
        match (hmac, &self.hmac_secret_file, &self.jwks) {
            (0, None, Some(j)) => j.validate(),
            (0, None, None) => Err("give `jwks` (file or url)".into()),
            (0, Some(_), _) => Err("hmac_secret_file needs HS256/HS384/HS512 in algorithms".into()),
            (n, Some(_), None) if n == self.algorithms.len() && self.kind == ProviderKind::Oidc => {
                Ok(())
            }
            (n, _, _) if n < self.algorithms.len() => {
                Err("HMAC and asymmetric algorithms cannot be mixed in one provider".into())
            }
            (_, None, _) => Err("HS* algorithms need hmac_secret_file".into()),
            (_, Some(_), _) => Err(
                "an HMAC provider takes hmac_secret_file, not jwks (and is not a spiffe provider)"
                    .into(),
            ),
        }
    }

    fn validate_kind(&self) -> Result<(), String> {
        match self.kind {
            ProviderKind::Oidc => {
                if self.issuers.is_empty() {
                    return Err("issuers must not be empty".into());
                }
                if self.audiences.is_empty() {
                    return Err(
                        "audiences must not be empty (a token for another service must not pass)"
                            .into(),
                    );
                }
                if self.trust_domain.is_some() {
                    return Err("trust_domain is for kind: spiffe".into());
                }
            }
            ProviderKind::Spiffe => {
                let Some(td) = &self.trust_domain else {
                    return Err("kind spiffe needs trust_domain".into());
                };
                crate::sidecar::identity::validate_trust_domain(td)
                    .map_err(|e| format!("trust_domain {td:?}: {e}"))?;
                if self.audiences.is_empty() {
                    return Err(
                        "kind spiffe needs audiences (a JWT-SVID without an audience is refused)"
                            .into(),
                    );
                }
                if self.jwks.as_ref().is_none_or(|j| j.file.is_none()) {
                    return Err(
                        "kind spiffe reads its trust domain's JWT bundle from jwks.file".into(),
                    );
                }
            }
        }
        Ok(())
    }

    /// The issuers accepted: as configured, or a spiffe provider's `spiffe://TD`.
    pub fn accepted_issuers(&self) -> Vec<String> {
        match (&self.kind, self.issuers.is_empty(), &self.trust_domain) {
            (ProviderKind::Spiffe, true, Some(td)) => vec![format!("spiffe://{td}")],
            _ => self.issuers.clone(),
        }
    }
}

impl JwksConfig {
    fn validate(&self) -> Result<(), String> {
        match (&self.file, &self.url) {
            (Some(_), Some(_)) => return Err("jwks: give file or url, not both".into()),
            (None, None) => return Err("jwks: give file or url".into()),
            (Some(_), None) => return Ok(()),
            (None, Some(url)) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| format!("jwks.url {url:?} is not a URL"))?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    return Err(format!("jwks.url {url:?} must be https://host/..."));
                }
                if self.ca.is_none() {
                    return Err("jwks.url needs jwks.ca (the CA file its server chains to)".into());
                }
            }
        }
        if !(1..=86_400).contains(&self.refresh_interval_s) {
            return Err("jwks.refresh_interval_s must be between 1 and 86400".into());
        }
        if !(self.refresh_interval_s..=7 * 86_400).contains(&self.max_stale_s) {
            return Err("jwks.max_stale_s must be between refresh_interval_s and 604800".into());
        }
        Ok(())
    }
}
