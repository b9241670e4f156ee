//! Reloading files that change under a running sidecar: the policy, our
//! SVID and key, and the trust bundles. Files are polled by content (not
//! mtime or inotify), which sees every way they are really replaced:
//! editors, a kubelet `..data` symlink swap (ConfigMaps, Secrets,
//! csi-driver-spiffe), or spiffe-helper writing one file after another.
//! SIGHUP forces a reload at once. A bad new file never replaces a good
//! one: the reason is logged and counted, and the old state stays.

use crate::sidecar::config::IdentityConfig;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::policy::Policy;
use crate::sidecar::policy::PolicySlot;
use crate::sidecar::tls::{
    crypto_provider, parse_bundle, unix_now, CredentialStore, Svid, TlsError, TrustBundles,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What woke a watcher up.
enum Wake {
    Tick,
    Hangup,
    Shutdown,
}

/// The shared loop: a tick every `interval`, SIGHUP, or shutdown.
struct Waker {
    tick: tokio::time::Interval,
    hangup: Hangup,
    shutdown: watch::Receiver<bool>,
}

impl Waker {
    fn new(interval: Duration, shutdown: watch::Receiver<bool>) -> Waker {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Waker {
            tick,
            hangup: sighup(),
            shutdown,
        }
    }

    async fn next(&mut self) -> Wake {
        tokio::select! {
            _ = self.tick.tick() => Wake::Tick,
            _ = recv_hangup(&mut self.hangup) => Wake::Hangup,
            _ = self.shutdown.changed() => Wake::Shutdown,
        }
    }
}

/// What a new policy is checked against besides its own rules.
#[derive(Debug, Clone, Default)]
pub struct PolicyChecks {
    /// `inbound.tcp_ports`: no rule with methods, paths or jwt may apply.
    pub tcp_ports: Vec<u16>,
    /// `inbound.jwt` provider names: the only ones a rule may name.
    pub jwt_providers: Vec<String>,
}

/// Re-reads the policy file when its contents change or on SIGHUP. A new
/// policy that does not parse, has a rule with methods or paths for one
/// of `tcp_ports`, or names an undeclared token provider, is refused with
/// its file and line, and the old one stays in force.
pub async fn watch_policy(
    path: PathBuf,
    slot: PolicySlot,
    loaded: [u8; 32],
    checks: PolicyChecks,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let mut last_seen = Some(loaded);
    let mut waker = Waker::new(interval, shutdown);
    loop {
        let forced = match waker.next().await {
            Wake::Shutdown => return,
            Wake::Hangup => true,
            Wake::Tick => false,
        };
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) => {
                if forced || last_seen.is_some() {
                    tracing::error!(kind = "policy", file = %path.display(), error = %e, "policy file unreadable; keeping the policy in force");
                    metrics.reload("policy", false);
                }
                last_seen = None;
                continue;
            }
        };
        let hash = crate::sidecar::tls::sha256(&bytes);
        if !forced && last_seen == Some(hash) {
            continue;
        }
        last_seen = Some(hash);
        let text = String::from_utf8_lossy(&bytes);
        let parsed = Policy::from_yaml(&text, &path.display().to_string())
            .and_then(|policy| policy.check_tcp_ports(&checks.tcp_ports).map(|()| policy))
            .and_then(|policy| {
                policy
                    .check_jwt_providers(&checks.jwt_providers)
                    .map(|()| policy)
            });
        match parsed {
            Ok(policy) => {
                tracing::info!(kind = "policy", file = %path.display(), rules = policy.rules().len(), mode = policy.mode().as_str(), "policy reloaded");
                slot.store(Some(Arc::new(policy)));
                metrics.reload("policy", true);
            }
            Err(e) => {
                tracing::error!(kind = "policy", error = %e, "new policy refused; the previous policy stays in force");
                metrics.reload("policy", false);
            }
        }
    }
}

/// The identity files as read at one moment.
struct IdentityFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    own_bundle: Vec<u8>,
    federated: Vec<(String, PathBuf, Vec<u8>)>,
}

impl IdentityFiles {
    fn read(cfg: &IdentityConfig) -> Result<IdentityFiles, TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        let mut federated = Vec::new();
        for (td, path) in &cfg.federated_bundles {
            federated.push((td.clone(), path.clone(), read(path)?));
        }
        Ok(IdentityFiles {
            cert: read(&cfg.cert)?,
            key: read(&cfg.key)?,
            own_bundle: read(&cfg.bundle)?,
            federated,
        })
    }

    fn svid_hash(&self) -> [u8; 32] {
        crate::sidecar::tls::sha256(&[self.cert.as_slice(), b"\0", self.key.as_slice()].concat())
    }

    fn bundle_hash(&self) -> [u8; 32] {
        let mut joined = self.own_bundle.clone();
        for (td, _, pem) in &self.federated {
            joined.push(0);
            joined.extend_from_slice(td.as_bytes());
            joined.push(0);
            joined.extend_from_slice(pem);
        }
        crate::sidecar::tls::sha256(&joined)
    }

    fn parse_svid(
        &self,
        cfg: &IdentityConfig,
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Svid, TlsError> {
        Svid::from_pem(&self.cert, &self.key, &cfg.cert, &cfg.key, provider)
    }

    fn parse_bundles(&self, cfg: &IdentityConfig, own_td: &str) -> Result<TrustBundles, TlsError> {
        let mut bundles = TrustBundles::new();
        bundles.insert(own_td, parse_bundle(&self.own_bundle, &cfg.bundle)?)?;
        for (td, path, pem) in &self.federated {
            bundles.insert(td, parse_bundle(pem, path)?)?;
        }
        Ok(bundles)
    }
}

/// Fingerprints of the identity files that were loaded, so a watcher acts
/// on changes made after the load (and only on those).
#[derive(Debug, Clone, Copy)]
pub struct LoadedFiles {
    svid: [u8; 32],
    bundles: [u8; 32],
}

/// Loads our SVID and the trust bundles named in `cfg`, from one read of
/// the files.
pub fn load_credentials(
    cfg: &IdentityConfig,
) -> Result<(Arc<CredentialStore>, LoadedFiles), TlsError> {
    let files = IdentityFiles::read(cfg)?;
    let svid = files.parse_svid(cfg, &crypto_provider())?;
    let bundles = files.parse_bundles(cfg, svid.id.trust_domain())?;
    let loaded = LoadedFiles {
        svid: files.svid_hash(),
        bundles: files.bundle_hash(),
    };
    Ok((CredentialStore::new(svid, bundles)?, loaded))
}

/// Loads the policy file, returning it with the fingerprint of its text.
pub fn load_policy(path: &Path) -> Result<(Policy, [u8; 32]), crate::sidecar::policy::PolicyError> {
    let file = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|source| crate::sidecar::policy::PolicyError::Read {
            file: file.clone(),
            source,
        })?;
    let policy = Policy::from_yaml(&String::from_utf8_lossy(&bytes), &file)?;
    Ok((policy, crate::sidecar::tls::sha256(&bytes)))
}

/// Watches our SVID, key and trust bundles, and keeps every open
/// connection honest:
/// - a changed SVID is loaded only if it is a valid X509-SVID inside its
///   validity window, matches its key (a cert written before its key is
///   retried when the key arrives), keeps our SPIFFE ID, and chains to our
///   trust domain's bundle; the next handshake presents it;
/// - changed bundles are loaded if every file parses, and then every open
///   connection is re-verified against them (closed if no longer trusted);
/// - at every tick, connections whose peer certificate expired are closed.
pub async fn watch_credentials(
    cfg: IdentityConfig,
    store: Arc<CredentialStore>,
    loaded: LoadedFiles,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let own_td = store.own_id().trust_domain().to_owned();
    let (mut svid_seen, mut bundle_seen) = (Some(loaded.svid), Some(loaded.bundles));
    let provider = crypto_provider();
    let mut waker = Waker::new(interval, shutdown);
    let mut was_valid = true;
    loop {
        let forced = match waker.next().await {
            Wake::Shutdown => return,
            Wake::Hangup => true,
            Wake::Tick => false,
        };
        let now = unix_now();
        let expired = store.live().sweep_expired(now);
        if expired > 0 {
            tracing::info!(
                closed = expired,
                reason = "peer_certificate_expired",
                "closing connections whose peer certificate expired"
            );
        }
        match IdentityFiles::read(&cfg) {
            Err(e) => {
                if forced || svid_seen.is_some() {
                    tracing::error!(kind = "credentials", error = %e, "identity files unreadable; keeping the loaded SVID and bundles");
                    metrics.reload("credentials", false);
                }
                svid_seen = None;
                bundle_seen = None;
            }
            Ok(files) => {
                let (svid_hash, bundle_hash) = (files.svid_hash(), files.bundle_hash());
                if forced || bundle_seen != Some(bundle_hash) {
                    bundle_seen = Some(bundle_hash);
                    reload_bundles(&cfg, &files, &own_td, &store, &metrics);
                }
                if forced || svid_seen != Some(svid_hash) {
                    svid_seen = Some(svid_hash);
                    reload_svid(&cfg, &files, &store, &metrics, &provider);
                }
            }
        }
        let valid = store.svid_is_valid_now();
        if was_valid && !valid {
            tracing::error!(id = %store.own_id(), "own SVID expired and no valid replacement was loaded: refusing handshakes, readiness is false");
        }
        was_valid = valid;
    }
}

fn reload_bundles(
    cfg: &IdentityConfig,
    files: &IdentityFiles,
    own_td: &str,
    store: &CredentialStore,
    metrics: &Metrics,
) {
    match files.parse_bundles(cfg, own_td) {
        Ok(bundles) => {
            let domains = bundles.trust_domains().join(",");
            store.set_bundles(bundles);
            let closed = store.revalidate_live();
            publish_cert_expiry(metrics, store);
            metrics.reload("bundle", true);
            tracing::info!(kind = "bundle", trust_domains = %domains, closed_connections = closed, "trust bundles reloaded");
        }
        Err(e) => {
            metrics.reload("bundle", false);
            tracing::error!(kind = "bundle", error = %e, "new trust bundle refused; the previous bundles stay in force");
        }
    }
}

fn reload_svid(
    cfg: &IdentityConfig,
    files: &IdentityFiles,
    store: &CredentialStore,
    metrics: &Metrics,
    provider: &rustls::crypto::CryptoProvider,
) {
    let refuse = |reason: String| {
        metrics.reload("svid", false);
        tracing::error!(kind = "svid", error = %reason, "new SVID refused; still presenting the previous one while it is valid");
    };
    let svid = match files.parse_svid(cfg, provider) {
        Ok(svid) => svid,
        Err(e) => return refuse(e.to_string()),
    };
    let own = store.own_id();
    if svid.id != own {
        return refuse(format!(
            "{}: new SVID is for {}, but this sidecar is {own}; an identity change needs a restart",
            cfg.cert.display(),
            svid.id
        ));
    }
    if let Err(e) = store.check_own_chain(&svid, &store.bundles()) {
        return refuse(format!(
            "{}: new SVID does not chain to our trust bundle: {e}",
            cfg.cert.display()
        ));
    }
    tracing::info!(kind = "svid", id = %svid.id, not_after = svid.not_after, "SVID reloaded; new handshakes present it");
    store.set_svid(svid);
    publish_cert_expiry(metrics, store);
    metrics.reload("svid", true);
}

/// Sets the expiry gauges to the certificates `store` holds now (our SVID
/// and every bundle root), dropping those of certificates it no longer has.
pub fn publish_cert_expiry(metrics: &Metrics, store: &CredentialStore) {
    metrics.clear_cert_expiry();
    for e in store.expiries() {
        metrics.set_cert_expiry(e.kind.label(), &e.trust_domain, &e.subject, e.not_after);
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn sighup() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn sighup() -> Hangup {
    None
}

#[cfg(unix)]
async fn recv_hangup(h: &mut Hangup) {
    match h {
        Some(sig) => {
            sig.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangup) {
    std::future::pending().await
}
