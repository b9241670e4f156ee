//! Where a provider's keys come from, and the tasks that keep them current:
//! a JWKS or JWT-bundle file re-read when its content changes (a bad new
//! file keeps the old keys, logged and counted), an HMAC secret file, or an
//! HTTPS URL refreshed on an interval whose last good keys stay usable for
//! `max_stale_s` after their fetch and then no longer (fail closed). An
//! unknown `kid` asks the URL source for an early refresh (at most one per
//! [`MIN_KICK_INTERVAL`]), so a rotation is picked up before the next tick.

use super::fetch::{self, FetchError};
use super::keys::{KeySet, KeyUse, KeysError};
use super::{Authenticator, JwtMetrics, Provider};
use crate::sidecar::config::{ProviderConfig, ProviderKind};
use crate::sidecar::tls::{sha256, unix_now};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Early refreshes on an unknown kid are at most this frequent.
pub const MIN_KICK_INTERVAL: Duration = Duration::from_secs(5);
/// After a failed fetch, the next try comes this soon (or at the interval if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Keys {
        path: String,
        #[source]
        source: KeysError,
    },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// A provider's key source.
pub enum Source {
    /// A JWKS (oidc) or a SPIFFE JWT bundle (spiffe).
    File { path: PathBuf, usage: KeyUse },
    /// An HMAC provider's secret.
    Secret { path: PathBuf },
    Url {
        url: http::Uri,
        tls: Arc<rustls::ClientConfig>,
        refresh: Duration,
        max_stale: Duration,
        kick: Notify,
    },
}

impl Source {
    pub(super) fn from_config(cfg: &ProviderConfig) -> Result<Source, SourceError> {
        if let Some(path) = &cfg.hmac_secret_file {
            return Ok(Source::Secret { path: path.clone() });
        }
        let usage = match cfg.kind {
            ProviderKind::Oidc => KeyUse::Oidc,
            ProviderKind::Spiffe => KeyUse::JwtSvid,
        };
        let jwks = cfg.jwks.as_ref();
        if let Some(path) = jwks.and_then(|j| j.file.clone()) {
            return Ok(Source::File { path, usage });
        }
        // Config validation guarantees a URL and a CA here.
        let j = jwks.ok_or(FetchError::Url("no jwks source".into()))?;
        let url = j.url.as_deref().unwrap_or_default();
        let url: http::Uri = url.parse().map_err(|_| FetchError::Url(url.to_owned()))?;
        let ca =
            j.ca.as_deref()
                .ok_or(FetchError::Url("no jwks.ca".into()))?;
        Ok(Source::Url {
            url,
            tls: fetch::client_config(ca)?,
            refresh: Duration::from_secs(j.refresh_interval_s),
            max_stale: Duration::from_secs(j.max_stale_s),
            kick: Notify::new(),
        })
    }

    /// At start: file keys must load (or the sidecar does not start); URL
    /// keys are fetched by the watcher, and until then tokens are refused.
    pub(super) fn load_initial(&self, p: &Provider, m: &JwtMetrics) -> Result<(), SourceError> {
        match self {
            Source::File { path, .. } | Source::Secret { path } => {
                let bytes = std::fs::read(path).map_err(|source| SourceError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let keys = self.parse(&bytes).map_err(|source| SourceError::Keys {
                    path: path.display().to_string(),
                    source,
                })?;
                publish(p, m, keys, None);
                Ok(())
            }
            Source::Url { .. } => Ok(()),
        }
    }

    fn parse(&self, bytes: &[u8]) -> Result<KeySet, KeysError> {
        match self {
            Source::Secret { .. } => KeySet::from_secret(bytes),
            Source::File { usage, .. } => KeySet::from_jwks(bytes, *usage),
            Source::Url { .. } => KeySet::from_jwks(bytes, KeyUse::Oidc),
        }
    }

    /// Asks a URL source for an early refresh (an unknown kid was seen).
    pub(super) fn kick(&self) {
        if let Source::Url { kick, .. } = self {
            kick.notify_one();
        }
    }
}

fn publish(p: &Provider, m: &JwtMetrics, keys: KeySet, usable_until: Option<i64>) {
    m.keys_in_force(&p.name, keys.keys.len(), unix_now());
    p.keys.publish(keys, usable_until);
}

/// Runs every provider's watcher until shutdown.
pub(super) async fn watch_all(
    auth: Arc<Authenticator>,
    poll: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..auth.providers.len() {
        let (auth, shutdown) = (auth.clone(), shutdown.clone());
        tasks.spawn(async move {
            let p = &auth.providers[i];
            match &p.source {
                Source::Url { .. } => watch_url(p, &auth.metrics, shutdown).await,
                _ => watch_file(p, &auth.metrics, poll, shutdown).await,
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn watch_file(
    p: &Provider,
    m: &JwtMetrics,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Source::File { path, .. } | Source::Secret { path }) = &p.source else {
        return;
    };
    let mut seen = std::fs::read(path).ok().map(|b| sha256(&b));
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) => {
                if seen.take().is_some() {
                    tracing::error!(kind = "jwks", provider = %p.name, file = %path.display(), error = %e, "key file unreadable; keeping the keys in force");
                    m.fetch(&p.name, "unreadable");
                }
                continue;
            }
        };
        let hash = sha256(&bytes);
        if seen == Some(hash) {
            continue;
        }
        seen = Some(hash);
        match p.source.parse(&bytes) {
            Ok(keys) => {
                tracing::info!(kind = "jwks", provider = %p.name, file = %path.display(), keys = keys.keys.len(), "verification keys reloaded");
                publish(p, m, keys, None);
                m.fetch(&p.name, "success");
            }
            Err(e) => {
                tracing::error!(kind = "jwks", provider = %p.name, file = %path.display(), error = %e, "new key file refused; the previous keys stay in force");
                m.fetch(&p.name, "invalid");
            }
        }
    }
}

async fn watch_url(p: &Provider, m: &JwtMetrics, mut shutdown: watch::Receiver<bool>) {
    let Source::Url {
        url,
        tls,
        refresh,
        max_stale,
        kick,
    } = &p.source
    else {
        return;
    };
    let mut last_ok: Option<i64> = None;
    loop {
        let last_try = tokio::time::Instant::now();
        let wait = match fetch::fetch(url, tls.clone())
            .await
            .map_err(SourceError::from)
            .and_then(|b| {
                p.source.parse(&b).map_err(|source| SourceError::Keys {
                    path: url.to_string(),
                    source,
                })
            }) {
            Ok(keys) => {
                let now = unix_now();
                last_ok = Some(now);
                tracing::debug!(provider = %p.name, keys = keys.keys.len(), "JWKS fetched");
                publish(p, m, keys, Some(now + max_stale.as_secs() as i64));
                m.fetch(&p.name, "success");
                *refresh
            }
            Err(e) => {
                let label = match &e {
                    SourceError::Fetch(f) => f.label(),
                    _ => "invalid",
                };
                m.fetch(&p.name, label);
                let stale = last_ok.is_some_and(|t| unix_now() - t > max_stale.as_secs() as i64);
                if stale || last_ok.is_none() {
                    tracing::error!(provider = %p.name, url = %url, error = %e, "JWKS fetch failed and no fresh keys are known: tokens of this provider are refused");
                } else {
                    tracing::warn!(provider = %p.name, url = %url, error = %e, "JWKS fetch failed; the last keys stay in use within max_stale_s");
                }
                (*refresh).min(RETRY_AFTER_FAILURE)
            }
        };
        let next = tokio::time::sleep(wait);
        tokio::pin!(next);
        loop {
            tokio::select! {
                _ = &mut next => break,
                _ = kick.notified() => {
                    if last_try.elapsed() >= MIN_KICK_INTERVAL { break; }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
