//! Webhook secrets: read from files (one secret per non-empty line, so a
//! rotation writes `new` above `old`, then `new` alone), parsed for the
//! route's format, swapped whole when the files change. A file that
//! becomes unreadable or empty never replaces the secrets in force.

use super::Format;
use arc_swap::ArcSwap;
use base64::Engine;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One secret. Never printed.
pub enum Secret {
    /// An HMAC key (the bytes the provider signs with).
    Hmac(Vec<u8>),
    /// Standard Webhooks `v1a`: the sender's Ed25519 public key.
    Ed25519Public(Vec<u8>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Hmac(_) => f.write_str("Secret::Hmac(<redacted>)"),
            Secret::Ed25519Public(_) => f.write_str("Secret::Ed25519Public(..)"),
        }
    }
}

/// Every secret a route accepts at once (two during a rotation).
#[derive(Debug, Default)]
pub struct SecretSet(Vec<Secret>);

/// Why secrets could not be loaded; never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {what}")]
    Invalid {
        file: String,
        line: usize,
        what: &'static str,
    },
    #[error("{0}: no secret in the file")]
    Empty(String),
}

impl SecretSet {
    pub fn new(secrets: Vec<Secret>) -> SecretSet {
        SecretSet(secrets)
    }

    pub fn all(&self) -> &[Secret] {
        &self.0
    }

    /// Parses the text of one secret file for `format`.
    pub fn parse(format: &Format, text: &str, file: &str) -> Result<SecretSet, SecretError> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what| SecretError::Invalid {
                file: file.to_owned(),
                line: n + 1,
                what,
            };
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s);
            let secret = match format {
                // Standard Webhooks: `whsec_<base64 key>` (HMAC) or
                // `whpk_<base64 Ed25519 public key>` (v1a).
                Format::StandardWebhooks => {
                    if let Some(k) = line.strip_prefix("whsec_") {
                        Secret::Hmac(b64(k).map_err(|_| bad("whsec_ key is not base64"))?)
                    } else if let Some(k) = line.strip_prefix("whpk_") {
                        let key = b64(k).map_err(|_| bad("whpk_ key is not base64"))?;
                        if key.len() != 32 {
                            return Err(bad("whpk_ key is not a 32-byte Ed25519 public key"));
                        }
                        Secret::Ed25519Public(key)
                    } else {
                        return Err(bad("expected whsec_<base64> or whpk_<base64>"));
                    }
                }
                // Stripe signs with the whole `whsec_…` string; GitHub,
                // Slack and generic schemes with the text as given.
                _ => Secret::Hmac(line.as_bytes().to_vec()),
            };
            out.push(secret);
        }
        if out.is_empty() {
            return Err(SecretError::Empty(file.to_owned()));
        }
        Ok(SecretSet(out))
    }

    /// Reads every file of a route; together they are the route's set.
    pub fn load(format: &Format, files: &[PathBuf]) -> Result<(SecretSet, Vec<u8>), SecretError> {
        let mut all = Vec::new();
        let mut seen = Vec::new();
        for path in files {
            let (set, bytes) = read_one(format, path)?;
            all.extend(set.0);
            seen.extend_from_slice(&bytes);
            seen.push(0);
        }
        Ok((SecretSet(all), seen))
    }
}

fn read_one(format: &Format, path: &Path) -> Result<(SecretSet, Vec<u8>), SecretError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
        file: file.clone(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    Ok((SecretSet::parse(format, &text, &file)?, bytes))
}

/// A route's secrets in force, swapped on reload.
pub struct SecretSlot {
    format: Format,
    files: Vec<PathBuf>,
    current: ArcSwap<SecretSet>,
    /// The file contents last loaded, to reload only on change.
    seen: std::sync::Mutex<Vec<u8>>,
}

impl SecretSlot {
    pub fn load(format: Format, files: Vec<PathBuf>) -> Result<SecretSlot, SecretError> {
        let (set, seen) = SecretSet::load(&format, &files)?;
        Ok(SecretSlot {
            format,
            files,
            current: ArcSwap::from_pointee(set),
            seen: std::sync::Mutex::new(seen),
        })
    }

    pub fn get(&self) -> Arc<SecretSet> {
        self.current.load_full()
    }

    /// Re-reads the files: `Ok(true)` if new secrets are in force,
    /// `Ok(false)` if nothing changed, an error (old secrets kept) else.
    pub fn reload(&self) -> Result<bool, SecretError> {
        let (set, seen) = SecretSet::load(&self.format, &self.files)?;
        let mut last = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *last == seen {
            return Ok(false);
        }
        *last = seen;
        self.current.store(Arc::new(set));
        Ok(true)
    }
}
