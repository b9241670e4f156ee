//! Verification keys: a JWKS (or a SPIFFE JWT bundle, a JWKS whose keys
//! have `use: jwt-svid`) parsed into keys of a known family, and the cell
//! that holds a provider's current keys. Whoever learns new keys (the file
//! watcher, the HTTPS refresher, later the Workload API client) publishes a
//! [`KeySet`] into the [`KeyCell`]; verification only reads it.

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why a key document is refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("not a JWKS: {0}")]
    NotJwks(String),
    #[error("no usable signing key in the key set ({skipped} skipped)")]
    Empty { skipped: usize },
    #[error("HMAC secret must be at least 32 bytes")]
    ShortSecret,
}

/// One verification key.
pub struct Key {
    pub kid: Option<Box<str>>,
    /// The `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`: the same
    /// family (so an RSA public key is never an HMAC secret) and, if the key
    /// names an algorithm, that one.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.key.family() == alg.family() && self.alg.is_none_or(|a| a == alg)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// What the keys are for, which decides which JWKs are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// An OIDC JWKS: signature keys (`use: sig` or none).
    Oidc,
    /// A SPIFFE JWT bundle: `use: jwt-svid` only.
    JwtSvid,
}

/// A provider's keys at one moment.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
}

impl KeySet {
    /// Parses a JWKS. Keys of an unknown type, symmetric keys (`kty: oct`,
    /// never taken from a key set) and keys for another use are skipped; a
    /// set with no usable key is refused, so a bad document never replaces
    /// good keys.
    pub fn from_jwks(bytes: &[u8], usage: KeyUse) -> Result<KeySet, KeysError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| KeysError::NotJwks(e.to_string()))?;
        let mut keys = Vec::with_capacity(doc.keys.len());
        let mut skipped = 0;
        for value in doc.keys {
            match Self::key(value, usage) {
                Some(key) => keys.push(key),
                None => skipped += 1,
            }
        }
        if keys.is_empty() {
            return Err(KeysError::Empty { skipped });
        }
        Ok(KeySet { keys })
    }

    fn key(value: serde_json::Value, usage: KeyUse) -> Option<Key> {
        let jwk: Jwk = serde_json::from_value(value).ok()?;
        let use_ok = match (&jwk.common.public_key_use, usage) {
            (None | Some(PublicKeyUse::Signature), KeyUse::Oidc) => true,
            (Some(PublicKeyUse::Other(u)), KeyUse::JwtSvid) => u == "jwt-svid",
            _ => false,
        };
        if !use_ok {
            return None;
        }
        let key = DecodingKey::from_jwk(&jwk).ok()?;
        if key.family() == AlgorithmFamily::Hmac {
            return None;
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(signing_alg(a)?),
        };
        Some(Key {
            kid: jwk.common.key_id.map(Into::into),
            alg,
            key,
        })
    }

    /// An HMAC provider's one key, from its secret file.
    pub fn from_secret(secret: &[u8]) -> Result<KeySet, KeysError> {
        let secret = trim_newline(secret);
        if secret.len() < 32 {
            return Err(KeysError::ShortSecret);
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| KeysError::ShortSecret)?;
        Ok(KeySet {
            keys: vec![Key {
                kid: None,
                alg: None,
                key,
            }],
        })
    }

    /// The keys that may verify a token with this `kid` and `alg`: the one
    /// with that kid, or, for a token without a kid, every key that fits.
    pub fn candidates<'k>(
        &'k self,
        kid: Option<&'k str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'k Key> + 'k {
        self.keys
            .iter()
            .filter(move |k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)) && k.fits(alg))
    }
}

fn trim_newline(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

/// A JWK `alg` as a signing algorithm; encryption algorithms are `None`.
fn signing_alg(a: KeyAlgorithm) -> Option<Algorithm> {
    use KeyAlgorithm as K;
    Some(match a {
        K::RS256 => Algorithm::RS256,
        K::RS384 => Algorithm::RS384,
        K::RS512 => Algorithm::RS512,
        K::PS256 => Algorithm::PS256,
        K::PS384 => Algorithm::PS384,
        K::PS512 => Algorithm::PS512,
        K::ES256 => Algorithm::ES256,
        K::ES384 => Algorithm::ES384,
        K::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The keys in force for one provider, with a generation that changes on
/// every publish (so cached verifications made with replaced keys are
/// redone) and the instant after which they may no longer be used.
pub struct KeySnapshot {
    pub keys: KeySet,
    pub generation: u64,
    /// Unix seconds; `None`: no expiry (a file's keys stay until replaced).
    pub usable_until: Option<i64>,
}

/// A provider's current keys, swapped whole.
pub struct KeyCell {
    current: ArcSwap<KeySnapshot>,
    generations: AtomicU64,
}

impl Default for KeyCell {
    fn default() -> Self {
        KeyCell {
            current: ArcSwap::from_pointee(KeySnapshot {
                keys: KeySet::default(),
                generation: 0,
                usable_until: None,
            }),
            generations: AtomicU64::new(0),
        }
    }
}

impl KeyCell {
    /// Puts `keys` in force, usable until `usable_until` (Unix seconds) if given.
    pub fn publish(&self, keys: KeySet, usable_until: Option<i64>) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        self.current.store(Arc::new(KeySnapshot {
            keys,
            generation,
            usable_until,
        }));
    }

    /// Drops every key: tokens are refused until new keys are published.
    pub fn clear(&self) {
        self.publish(KeySet::default(), None);
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<KeySnapshot>> {
        self.current.load()
    }

    /// The generation of the keys in force at `now` (cache entries of
    /// another one are stale); `None` when no key is usable (then cached
    /// verifications are not either: fail closed).
    pub fn generation_at(&self, now: i64) -> Option<u64> {
        let current = self.current.load();
        let usable = !current.keys.keys.is_empty() && current.usable_until.is_none_or(|u| u >= now);
        usable.then_some(current.generation)
    }
}
