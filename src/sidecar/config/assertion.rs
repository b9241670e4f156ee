//! The `assertion` section: the signed identity assertion the inbound adds
//! to every request it forwards (`sidecar/assertion.rs`).

use super::Config;
use serde::Deserialize;
use std::path::PathBuf;

/// How the assertion is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AssertionMode {
    /// HMAC-SHA256 under a per-pod secret written to `key_file` (default;
    /// a few hundred nanoseconds per request).
    #[default]
    Hmac,
    /// Ed25519 (`EdDSA`): the app verifies with public keys only.
    Ed25519,
    /// ECDSA P-256 with SHA-256 (`ES256`): public keys only.
    Es256,
}

impl AssertionMode {
    /// Signed with a private key the app never sees (public keys as JWKS).
    pub fn is_asymmetric(self) -> bool {
        self != AssertionMode::Hmac
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AssertionMode::Hmac => "hmac",
            AssertionMode::Ed25519 => "ed25519",
            AssertionMode::Es256 => "es256",
        }
    }
}

/// Who may read the HMAC key file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyFileAccess {
    /// Mode 0400: the app runs as meshguard's user (default).
    #[default]
    Owner,
    /// Mode 0440: the app is in meshguard's group.
    Group,
    /// Mode 0444: for a directory only the app can reach, such as a pod's
    /// memory volume mounted into the app's containers and no others
    /// (what `meshguard.io/assertion` sets up).
    All,
}

impl KeyFileAccess {
    pub fn mode(self) -> u32 {
        match self {
            KeyFileAccess::Owner => 0o400,
            KeyFileAccess::Group => 0o440,
            KeyFileAccess::All => 0o444,
        }
    }
}

/// `assertion`: the signed identity assertion the inbound adds to every
/// request it forwards.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// `hmac` (default), `ed25519` or `es256`.
    #[serde(default)]
    pub mode: AssertionMode,
    /// `hmac`: where the per-pod keys are written for the app (mode 0400).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `hmac`: `owner` (0400, default), `group` (0440) or `all` (0444).
    #[serde(default)]
    pub key_file_access: KeyFileAccess,
    /// `ed25519`/`es256`: where the public keys are written as a JWKS
    /// (mode 0444), besides the admin `/.well-known/jwks.json`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Seconds an assertion is valid (default 30).
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    /// Seconds between key rotations (default 3600).
    #[serde(default = "default_rotate")]
    pub rotate_s: u64,
    /// Seconds the previous key stays published after a rotation
    /// (default 300); at least `ttl_s`.
    #[serde(default = "default_grace")]
    pub grace_s: u64,
}

impl Default for AssertionConfig {
    fn default() -> Self {
        AssertionConfig {
            mode: AssertionMode::Hmac,
            key_file: None,
            key_file_access: KeyFileAccess::Owner,
            jwks_file: None,
            ttl_s: default_ttl(),
            rotate_s: default_rotate(),
            grace_s: default_grace(),
        }
    }
}

fn default_ttl() -> u64 {
    30
}
fn default_rotate() -> u64 {
    3600
}
fn default_grace() -> u64 {
    300
}

type Invalid = (String, Option<String>);

pub(super) fn resolve_paths(config: &mut Config, base: &std::path::Path) {
    if let Some(a) = &mut config.assertion {
        for p in [&mut a.key_file, &mut a.jwks_file].into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }
}

pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    let Some(a) = &config.assertion else {
        return Ok(());
    };
    let at = |m: String, needle: &str| Err((format!("assertion: {m}"), Some(needle.into())));
    let mode = a.mode.as_str();
    if a.mode.is_asymmetric() {
        if a.key_file.is_some() {
            return at(
                format!(
                    "mode {mode} keeps its private key in memory and writes no key file: \
                     remove key_file (the app verifies with jwks_file or the admin \
                     /.well-known/jwks.json)"
                ),
                "key_file:",
            );
        }
    } else {
        if a.key_file.is_none() {
            return at(
                "mode hmac needs key_file (where the app reads the keys)".into(),
                "assertion:",
            );
        }
        if a.jwks_file.is_some() {
            return at(
                "jwks_file is for mode ed25519 or es256 (public keys); mode hmac writes \
                 its keys to key_file"
                    .into(),
                "jwks_file:",
            );
        }
    }
    if !(1..=3600).contains(&a.ttl_s) {
        return at("ttl_s must be between 1 and 3600".into(), "ttl_s:");
    }
    if a.rotate_s < 60 {
        return at("rotate_s must be at least 60".into(), "rotate_s:");
    }
    if a.grace_s < a.ttl_s {
        return at(
            "grace_s must be at least ttl_s (a live assertion's key stays published)".into(),
            "grace_s:",
        );
    }
    if config.inbound.is_none() {
        return at(
            "needs `inbound` (the assertion is added to what it forwards)".into(),
            "assertion:",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
