//! The identity assertion: with every request the inbound forwards, a
//! short-lived MAC binding the caller, the method, the request target, a
//! timestamp and a request id, so the app can check that a request came
//! through its own sidecar (and not from anything else that reaches its
//! port: an excluded port, a host-network neighbour, a broken capture).
//!
//! Header `x-meshguard-assertion: v1.<kid>.<iat>.<exp>.<rid>.<mac>` where
//! `mac` is base64url (no padding) of HMAC-SHA256 under key `kid` of
//!
//! ```text
//! meshguard-assertion-v1\n<kid>\n<iat>\n<exp>\n<rid>\n<caller>\n<METHOD>\n<target>
//! ```
//!
//! `caller` is the `x-meshguard-client-id` the app receives (the caller's
//! SPIFFE ID; `webhook:<route>` on the webhook listener), `target` the
//! request target the app receives (path and query). The keys are in
//! `assertion.key_file` (mode 0400), one `<kid> <base64url key>` per line,
//! newest first; a rotation writes the new key to the file before it signs
//! with it, and the previous key stays in the file for `grace_s`.

use crate::sidecar::config::AssertionConfig;
use arc_swap::ArcSwap;
use aws_lc_rs::{hmac, rand};
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const ASSERTION_HEADER: &str = "x-meshguard-assertion";
const ASSERTION: HeaderName = HeaderName::from_static(ASSERTION_HEADER);
const DOMAIN: &[u8] = b"meshguard-assertion-v1\n";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("assertion key file {file}: {source}")]
    Write {
        file: String,
        source: std::io::Error,
    },
    #[error("no randomness for a key")]
    Random,
}

struct SigningKey {
    kid: String,
    key: hmac::Key,
    raw: [u8; 32],
}

/// The assertion signer of one sidecar.
pub struct Assertion {
    key: ArcSwap<SigningKey>,
    ttl: i64,
    file: PathBuf,
    /// Request ids: a random per-process prefix and a counter.
    rid_prefix: String,
    counter: AtomicU64,
}

fn random<const N: usize>() -> Result<[u8; N], AssertionError> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(|_| AssertionError::Random)?;
    Ok(out)
}

fn new_key() -> Result<SigningKey, AssertionError> {
    let raw = random::<32>()?;
    let kid = super::webhook::hex(&random::<6>()?);
    Ok(SigningKey {
        kid,
        key: hmac::Key::new(hmac::HMAC_SHA256, &raw),
        raw,
    })
}

impl Assertion {
    /// A first key, written to the key file before anything is signed.
    pub fn start(cfg: &AssertionConfig) -> Result<Arc<Assertion>, AssertionError> {
        let key = new_key()?;
        let this = Assertion {
            ttl: cfg.ttl_s as i64,
            file: cfg.key_file.clone(),
            rid_prefix: super::webhook::hex(&random::<8>()?),
            counter: AtomicU64::new(0),
            key: ArcSwap::from_pointee(key),
        };
        this.write_file(&[&this.key.load()])?;
        Ok(Arc::new(this))
    }

    /// Adds the assertion of one request to `headers`.
    pub fn stamp(
        &self,
        headers: &mut HeaderMap,
        caller: &str,
        method: &str,
        target: &str,
        now: i64,
    ) {
        let key = self.key.load();
        let rid = self.counter.fetch_add(1, Ordering::Relaxed);
        let (iat, exp) = (itoa(now), itoa(now + self.ttl));
        let rid = format!("{}-{rid:x}", self.rid_prefix);
        let mut ctx = hmac::Context::with_key(&key.key);
        for part in [
            DOMAIN,
            key.kid.as_bytes(),
            b"\n",
            iat.as_bytes(),
            b"\n",
            exp.as_bytes(),
            b"\n",
            rid.as_bytes(),
            b"\n",
            caller.as_bytes(),
            b"\n",
            method.as_bytes(),
            b"\n",
            target.as_bytes(),
        ] {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let mut value = String::with_capacity(96);
        for part in ["v1", &key.kid, &iat, &exp, &rid] {
            value.push_str(part);
            value.push('.');
        }
        B64.encode_string(tag.as_ref(), &mut value);
        // Only [A-Za-z0-9._-]: always a valid header value.
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(ASSERTION, v);
        }
    }

    /// A new key: written to the file (with the previous one) first, then
    /// signed with. Returns the previous key's id.
    pub fn rotate(&self) -> Result<String, AssertionError> {
        let next = new_key()?;
        let old = self.key.load_full();
        self.write_file(&[&next, &old])?;
        self.key.store(Arc::new(next));
        Ok(old.kid.clone())
    }

    /// Drops the previous key from the file (after the grace period).
    pub fn retire(&self) -> Result<(), AssertionError> {
        self.write_file(&[&self.key.load()])
    }

    /// Atomically replaces the key file (mode 0400): temporary file,
    /// fsync, rename.
    fn write_file(&self, keys: &[&SigningKey]) -> Result<(), AssertionError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| AssertionError::Write {
            file: self.file.display().to_string(),
            source,
        };
        let mut text = String::new();
        for k in keys {
            text.push_str(&k.kid);
            text.push(' ');
            B64.encode_string(k.raw, &mut text);
            text.push('\n');
        }
        if let Some(dir) = self.file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = self.file.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.file).map_err(io)
    }

    /// Rotates every `rotate`, retiring the previous key `grace` later.
    pub async fn rotate_loop(
        self: Arc<Self>,
        rotate: Duration,
        grace: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(rotate) => {}
                _ = shutdown.changed() => return,
            }
            match self.rotate() {
                Ok(old) => {
                    tracing::info!(retired_after_s = grace.as_secs(), old_kid = %old, "assertion key rotated")
                }
                Err(e) => {
                    tracing::error!(error = %e, "assertion key rotation failed; the current key stays");
                    continue;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(grace.min(rotate)) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.retire() {
                tracing::error!(error = %e, "assertion key file not rewritten; the previous key stays in it");
            }
        }
    }
}

fn itoa(n: i64) -> String {
    n.to_string()
}

#[cfg(test)]
mod tests;

impl Assertion {
    /// [`Assertion::stamp`] for a request as it goes to the app.
    pub fn stamp_request(&self, parts: &mut http::request::Parts, caller: &str) {
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let now = crate::sidecar::tls::unix_now();
        self.stamp(
            &mut parts.headers,
            caller,
            parts.method.as_str(),
            target,
            now,
        );
    }
}
