//! One signing key of the assertion, in each mode, and what of it is
//! published: the HMAC secret (for the key file) or the public key (as a
//! JWK, RFC 7517 / RFC 8037).

use super::{AssertionError, B64};
use crate::sidecar::config::AssertionMode;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use aws_lc_rs::{hmac, rand};
use base64::Engine;

// One per key, behind an `Arc`, never moved on the request path: the HMAC
// key's size costs nothing, and boxing it would add a pointer chase to the
// default mode's every request.
#[allow(clippy::large_enum_variant)]
enum Signer {
    Hmac { key: hmac::Key, raw: [u8; 32] },
    Ed25519(Ed25519KeyPair),
    Es256(EcdsaKeyPair),
}

/// A key and its id (`kid`). Private key material stays in memory: only
/// the HMAC mode's secret is ever written (for the app, to its key file).
pub(super) struct SigningKey {
    pub kid: String,
    signer: Signer,
}

pub(super) fn random<const N: usize>() -> Result<[u8; N], AssertionError> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(|_| AssertionError::Random)?;
    Ok(out)
}

impl SigningKey {
    pub fn generate(mode: AssertionMode) -> Result<SigningKey, AssertionError> {
        let signer = match mode {
            AssertionMode::Hmac => {
                let raw = random::<32>()?;
                Signer::Hmac {
                    key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
                    raw,
                }
            }
            AssertionMode::Ed25519 => {
                Signer::Ed25519(Ed25519KeyPair::generate().map_err(|_| AssertionError::Random)?)
            }
            AssertionMode::Es256 => Signer::Es256(
                EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .map_err(|_| AssertionError::Random)?,
            ),
        };
        Ok(SigningKey {
            kid: super::webhook_hex(&random::<6>()?),
            signer,
        })
    }

    /// Appends base64url (no padding) of the signature over the
    /// concatenation of `parts` to `out`: the HMAC-SHA256 tag (32 bytes),
    /// the Ed25519 signature (64) or the ES256 signature as JWS has it,
    /// `r || s` (64).
    pub fn sign_into(&self, parts: &[&[u8]], out: &mut String) -> Result<(), AssertionError> {
        match &self.signer {
            Signer::Hmac { key, .. } => {
                // Streamed: no copy of the message on the default path.
                let mut ctx = hmac::Context::with_key(key);
                parts.iter().for_each(|p| ctx.update(p));
                B64.encode_string(ctx.sign().as_ref(), out);
            }
            Signer::Ed25519(pair) => {
                B64.encode_string(pair.sign(&parts.concat()).as_ref(), out);
            }
            Signer::Es256(pair) => {
                let sig = pair
                    .sign(&rand::SystemRandom::new(), &parts.concat())
                    .map_err(|_| AssertionError::Sign)?;
                B64.encode_string(sig.as_ref(), out);
            }
        }
        Ok(())
    }

    /// `<kid> <base64url secret>`: a line of the HMAC key file.
    pub fn secret_line(&self) -> Option<String> {
        match &self.signer {
            Signer::Hmac { raw, .. } => Some(format!("{} {}\n", self.kid, B64.encode(raw))),
            _ => None,
        }
    }

    /// The public key as a JWK (`kid`, `alg`, `use: sig`); none for HMAC.
    pub fn public_jwk(&self) -> Option<serde_json::Value> {
        let mut jwk = match &self.signer {
            Signer::Hmac { .. } => return None,
            Signer::Ed25519(pair) => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(pair.public_key().as_ref()),
                "alg": "EdDSA",
            }),
            Signer::Es256(pair) => {
                // The uncompressed point: 0x04 || x (32) || y (32).
                let point = pair.public_key().as_ref();
                let (x, y) = point.get(1..65)?.split_at(32);
                serde_json::json!({
                    "kty": "EC",
                    "crv": "P-256",
                    "x": B64.encode(x),
                    "y": B64.encode(y),
                    "alg": "ES256",
                })
            }
        };
        jwk["kid"] = self.kid.clone().into();
        jwk["use"] = "sig".into();
        Some(jwk)
    }
}
