//! Reloading files that change under a running sidecar. Files are polled
//! by content (not mtime or inotify), which sees every way they are really
//! replaced: editors, `kubectl apply` of a ConfigMap (a `..data` symlink
//! swap), or one file written after another. SIGHUP forces a reload now.

use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::proxy::inbound::PolicySlot;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often watched files are re-read.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Re-reads the policy file when its contents change or on SIGHUP. A new
/// policy that does not parse is refused with its file and line, and the
/// old one stays in force.
pub async fn watch_policy(
    path: PathBuf,
    slot: PolicySlot,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_seen = std::fs::read(&path).ok().map(|b| crate::tls::sha256(&b));
    let mut hangup = sighup();
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = recv_hangup(&mut hangup) => true,
            _ = shutdown.changed() => return,
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
        let hash = crate::tls::sha256(&bytes);
        if !forced && last_seen == Some(hash) {
            continue;
        }
        last_seen = Some(hash);
        let text = String::from_utf8_lossy(&bytes);
        match Policy::from_yaml(&text, &path.display().to_string()) {
            Ok(policy) => {
                tracing::info!(kind = "policy", file = %path.display(), rules = policy.rules().len(), mode = ?policy.mode(), "policy reloaded");
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
