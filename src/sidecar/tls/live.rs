//! Continuous validation of open connections. A peer is verified at its
//! handshake, but a connection can outlive that proof: the peer's
//! certificate expires, or its CA leaves the bundle. Every open mTLS
//! connection registers here; a sweep after each bundle change re-verifies
//! the chains, a cheap periodic sweep catches expiry, and a revoked
//! connection is closed (gracefully inbound, by end-of-stream outbound) so
//! the next request must handshake again.

use super::bundle::TrustBundles;
use super::verify::{verify_peer, VerifyError};
use crate::sidecar::identity::{svid_validity, Role};
use atomic_waker::AtomicWaker;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Context;
use tokio::sync::Notify;

/// Why an open connection was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The peer's certificate reached its notAfter.
    Expired,
    /// The peer's chain no longer verifies against the current bundles.
    Untrusted,
}

impl Revocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Revocation::Expired => "peer_certificate_expired",
            Revocation::Untrusted => "peer_no_longer_trusted",
        }
    }
}

/// One open, verified mTLS connection.
pub struct LiveConn {
    /// The peer's role in the handshake (client at inbound, server at outbound).
    role: Role,
    chain: Vec<CertificateDer<'static>>,
    not_after: i64,
    revoked: AtomicBool,
    reason: Mutex<Option<Revocation>>,
    waker: AtomicWaker,
    notify: Notify,
}

impl LiveConn {
    fn revoke(&self, why: Revocation) {
        if let Ok(mut reason) = self.reason.lock() {
            reason.get_or_insert(why);
        }
        self.revoked.store(true, Ordering::Release);
        self.waker.wake();
        self.notify.notify_waiters();
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub fn reason(&self) -> Option<Revocation> {
        self.reason.lock().ok().and_then(|r| *r)
    }

    /// For I/O wrappers: true once revoked; otherwise arranges for the
    /// task to be woken when it is.
    pub fn poll_revoked(&self, cx: &mut Context<'_>) -> bool {
        if self.is_revoked() {
            return true;
        }
        self.waker.register(cx.waker());
        self.is_revoked()
    }

    /// Completes when the connection is revoked.
    pub async fn revoked(&self) -> Revocation {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_revoked() {
                return self.reason().unwrap_or(Revocation::Untrusted);
            }
            notified.await;
        }
    }
}

/// Every open mTLS connection of one sidecar.
#[derive(Default)]
pub struct LiveConnections {
    conns: Mutex<Vec<Weak<LiveConn>>>,
}

impl std::fmt::Debug for LiveConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LiveConnections({} open)", self.len())
    }
}

impl LiveConnections {
    /// Registers a connection whose peer presented `chain` (leaf first).
    /// The handle keeps the registration alive; drop it when the connection ends.
    pub fn register(&self, chain: &[CertificateDer<'_>], role: Role) -> Arc<LiveConn> {
        let not_after = chain
            .first()
            .and_then(|leaf| svid_validity(leaf).ok())
            .map_or(i64::MIN, |(_, na)| na);
        let conn = Arc::new(LiveConn {
            role,
            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
            not_after,
            revoked: AtomicBool::new(false),
            reason: Mutex::new(None),
            waker: AtomicWaker::new(),
            notify: Notify::new(),
        });
        if let Ok(mut conns) = self.conns.lock() {
            conns.push(Arc::downgrade(&conn));
        }
        conn
    }

    /// Revokes connections whose peer certificate has expired; forgets
    /// closed ones. Cheap: no signature checks. Returns how many were revoked.
    pub fn sweep_expired(&self, now: i64) -> usize {
        self.sweep(|conn| (now > conn.not_after).then_some(Revocation::Expired))
    }

    /// Re-verifies every open connection against `bundles` (after they
    /// changed). Returns how many were revoked.
    pub fn revalidate(
        &self,
        bundles: &TrustBundles,
        algorithms: &WebPkiSupportedAlgorithms,
    ) -> usize {
        let now = UnixTime::now();
        self.sweep(|conn| {
            let (leaf, intermediates) = conn.chain.split_first()?;
            match verify_peer(bundles, algorithms, leaf, intermediates, now, conn.role) {
                Ok(_) => None,
                Err(VerifyError::Expired(_)) => Some(Revocation::Expired),
                Err(_) => Some(Revocation::Untrusted),
            }
        })
    }

    /// Open connections currently registered.
    pub fn len(&self) -> usize {
        self.conns
            .lock()
            .map(|c| c.iter().filter(|w| w.strong_count() > 0).count())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep(&self, verdict: impl Fn(&LiveConn) -> Option<Revocation>) -> usize {
        // Collect under the lock, judge outside it: verification may be slow.
        let live: Vec<Arc<LiveConn>> = match self.conns.lock() {
            Ok(mut conns) => {
                conns.retain(|w| w.strong_count() > 0);
                conns.iter().filter_map(Weak::upgrade).collect()
            }
            Err(_) => return 0,
        };
        let mut revoked = 0;
        for conn in live.iter().filter(|c| !c.is_revoked()) {
            if let Some(why) = verdict(conn) {
                conn.revoke(why);
                revoked += 1;
            }
        }
        revoked
    }
}
