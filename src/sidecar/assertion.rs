//! The identity assertion: with every request the inbound forwards, a
//! short-lived signature binding the caller, the method, the request
//! target, a timestamp and a request id, so the app can check that a
//! request came through its own sidecar (and not from anything else that
//! reaches its port: an excluded port, a host-network neighbour, a broken
//! capture).
//!
//! Header `x-meshguard-assertion: v1.<kid>.<iat>.<exp>.<rid>.<sig>` where
//! `sig` is base64url (no padding) of the signature under key `kid` of
//!
//! ```text
//! meshguard-assertion-v1\n<kid>\n<iat>\n<exp>\n<rid>\n<caller>\n<METHOD>\n<target>
//! ```
//!
//! `caller` is the `x-meshguard-client-id` the app receives (the caller's
//! SPIFFE ID; `webhook:<route>` on the webhook listener), `target` the
//! request target the app receives (path and query).
//!
//! `assertion.mode` picks the signature: `hmac` (default), HMAC-SHA256 with
//! keys in `assertion.key_file` (mode 0400), one `<kid> <base64url key>`
//! per line, newest first; `ed25519` (64 bytes) or `es256` (ECDSA P-256
//! SHA-256, `r || s`, 64 bytes) with a private key generated here and kept
//! in memory only, the public keys published as a JWKS at the admin
//! `/.well-known/jwks.json` and in `assertion.jwks_file` (mode 0444). The
//! verifier takes the algorithm from the key its `kid` names, never from
//! the header. A rotation publishes the new key before it signs with it,
//! and the previous key stays published for `grace_s`.

use crate::sidecar::config::{AssertionConfig, AssertionMode};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use keys::SigningKey;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

mod keys;
mod publish;

pub const ASSERTION_HEADER: &str = "x-meshguard-assertion";
const ASSERTION: HeaderName = HeaderName::from_static(ASSERTION_HEADER);
const DOMAIN: &[u8] = b"meshguard-assertion-v1\n";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("assertion file {file}: {source}")]
    Write {
        file: String,
        source: std::io::Error,
    },
    #[error("no randomness for a key")]
    Random,
    #[error("the signing key refused to sign")]
    Sign,
}

/// The keys in force: `current` signs; `previous` is still published
/// during the grace period after a rotation. `jwks` is the published
/// document (asymmetric modes), built once per change.
struct KeySet {
    current: Arc<SigningKey>,
    previous: Option<Arc<SigningKey>>,
    jwks: Option<Bytes>,
}

impl KeySet {
    fn new(
        mode: AssertionMode,
        current: Arc<SigningKey>,
        previous: Option<Arc<SigningKey>>,
    ) -> KeySet {
        let mut set = KeySet {
            current,
            previous,
            jwks: None,
        };
        if mode.is_asymmetric() {
            set.jwks = Some(publish::jwks_json(&set.published()).into());
        }
        set
    }

    /// Newest first.
    fn published(&self) -> Vec<&SigningKey> {
        std::iter::once(&*self.current)
            .chain(self.previous.as_deref())
            .collect()
    }
}

/// The assertion signer of one sidecar.
pub struct Assertion {
    mode: AssertionMode,
    keys: ArcSwap<KeySet>,
    ttl: i64,
    /// `hmac`: the key file; asymmetric: the JWKS file, if configured.
    file: Option<PathBuf>,
    /// The key file's mode (`assertion.key_file_access`).
    key_mode: u32,
    /// Request ids: a random per-process prefix and a counter.
    rid_prefix: String,
    counter: AtomicU64,
}

impl Assertion {
    /// A first key, published (key file or JWKS file) before anything is
    /// signed.
    pub fn start(cfg: &AssertionConfig) -> Result<Arc<Assertion>, AssertionError> {
        let key = Arc::new(SigningKey::generate(cfg.mode)?);
        let file = match cfg.mode {
            AssertionMode::Hmac => cfg.key_file.clone(),
            _ => cfg.jwks_file.clone(),
        };
        let this = Assertion {
            mode: cfg.mode,
            ttl: cfg.ttl_s as i64,
            file,
            key_mode: cfg.key_file_access.mode(),
            rid_prefix: webhook_hex(&keys::random::<8>()?),
            counter: AtomicU64::new(0),
            keys: ArcSwap::from_pointee(KeySet::new(cfg.mode, key, None)),
        };
        this.publish(&this.keys.load())?;
        Ok(Arc::new(this))
    }

    pub fn mode(&self) -> AssertionMode {
        self.mode
    }

    /// The JWKS of the published public keys (`None` in `hmac` mode).
    pub fn jwks(&self) -> Option<Bytes> {
        self.keys.load().jwks.clone()
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
        let keys = self.keys.load();
        let key = &keys.current;
        let rid = self.counter.fetch_add(1, Ordering::Relaxed);
        let (iat, exp) = (itoa(now), itoa(now + self.ttl));
        let rid = format!("{}-{rid:x}", self.rid_prefix);
        let signed: [&[u8]; 14] = [
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
        ];
        let mut value = String::with_capacity(160);
        for part in ["v1", &key.kid, &iat, &exp, &rid] {
            value.push_str(part);
            value.push('.');
        }
        if let Err(e) = key.sign_into(&signed, &mut value) {
            // Forwarded without an assertion: the app refuses it, which
            // fails closed without a second refusal path here.
            tracing::error!(error = %e, "identity assertion not signed");
            return;
        }
        // Only [A-Za-z0-9._-]: always a valid header value.
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(ASSERTION, v);
        }
    }

    /// A new key: published (with the previous one) first, then signed
    /// with. Returns the previous key's id.
    pub fn rotate(&self) -> Result<String, AssertionError> {
        let next = Arc::new(SigningKey::generate(self.mode)?);
        let old = self.keys.load().current.clone();
        let set = KeySet::new(self.mode, next, Some(old.clone()));
        self.publish(&set)?;
        self.keys.store(Arc::new(set));
        Ok(old.kid.clone())
    }

    /// Stops publishing the previous key (after the grace period).
    pub fn retire(&self) -> Result<(), AssertionError> {
        let current = self.keys.load().current.clone();
        let set = KeySet::new(self.mode, current, None);
        self.publish(&set)?;
        self.keys.store(Arc::new(set));
        Ok(())
    }

    /// Writes what the app reads: the key file (0400 by default) or the JWKS file
    /// (0444), atomically.
    fn publish(&self, set: &KeySet) -> Result<(), AssertionError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        match &set.jwks {
            None => {
                let text = publish::key_file_text(&set.published());
                publish::write_atomic(file, &text, self.key_mode)
            }
            Some(jwks) => {
                publish::write_atomic(file, std::str::from_utf8(jwks).unwrap_or(""), 0o444)
            }
        }
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
                    tracing::info!(mode = self.mode.as_str(), retired_after_s = grace.as_secs(), old_kid = %old, "assertion key rotated")
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
                tracing::error!(error = %e, "assertion keys not republished; the previous key stays published");
            }
        }
    }
}

fn webhook_hex(bytes: &[u8]) -> String {
    super::webhook::hex(bytes)
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
