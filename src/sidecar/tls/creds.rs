//! Our own SVID (certificate chain + private key) and the trust bundles,
//! held behind atomically swappable pointers so that a reload is seen by the
//! next handshake without any lock on the handshake path.

use super::live::LiveConnections;
use super::verify::{verify_peer, VerifyError};
use super::{bundle::TrustBundles, unix_now, TlsError};
use crate::sidecar::identity::{check_svid_leaf, svid_validity, Role, SpiffeId};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::UnixTime;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A loaded, checked X509-SVID with its private key.
#[derive(Debug)]
pub struct Svid {
    pub id: SpiffeId,
    pub key: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
}

impl Svid {
    /// Loads `cert_path` (leaf first, then any intermediates) and `key_path`,
    /// and refuses anything we must never present: a certificate that is not
    /// a valid X509-SVID for both client and server use, one outside its
    /// validity window, or a key that does not match the certificate.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<Svid, TlsError> {
        let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
            path: cert_path.into(),
            source,
        })?;
        let key_pem = std::fs::read(key_path).map_err(|source| TlsError::Read {
            path: key_path.into(),
            source,
        })?;
        Self::from_pem(&cert_pem, &key_pem, cert_path, key_path, provider)
    }

    /// As [`Svid::load`], from PEM bytes already read.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<Svid, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadPem {
                path: cert_path.into(),
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoPem {
                path: key_path.into(),
                what: "PRIVATE KEY",
            },
            other => TlsError::BadPem {
                path: key_path.into(),
                reason: other.to_string(),
            },
        })?;
        Self::from_der(chain, key, cert_path, key_path, provider)
    }

    /// As [`Svid::from_pem`], from DER already split (the Workload API's
    /// form); `cert_path` and `key_path` only name the source in errors.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_path: &Path,
        key_path: &Path,
        provider: &CryptoProvider,
    ) -> Result<Svid, TlsError> {
        let leaf = chain.first().ok_or_else(|| TlsError::NoPem {
            path: cert_path.into(),
            what: "CERTIFICATE",
        })?;
        let bad_svid = |reason: String| TlsError::BadSvid {
            path: cert_path.into(),
            reason,
        };
        let now = unix_now();
        // Our SVID serves both directions, so it must be usable as both.
        let id = check_svid_leaf(leaf, Role::Server, now).map_err(|e| bad_svid(e.to_string()))?;
        check_svid_leaf(leaf, Role::Client, now).map_err(|e| bad_svid(e.to_string()))?;
        let (not_before, not_after) = svid_validity(leaf).map_err(|e| bad_svid(e.to_string()))?;
        let signing_key =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| TlsError::BadKey {
                    path: key_path.into(),
                    reason: e.to_string(),
                })?;
        let certified = CertifiedKey::new(chain, signing_key);
        // A cert written before its key (spiffe-helper writes one file after
        // the other) must never be paired with the old key.
        certified.keys_match().map_err(|_| TlsError::KeyMismatch {
            cert: cert_path.into(),
            key: key_path.into(),
        })?;
        Ok(Svid {
            id,
            key: Arc::new(certified),
            not_before,
            not_after,
        })
    }

    /// True while `now` lies inside the certificate's validity window.
    pub fn is_valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Which certificate a [`CertExpiry`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// Our own SVID.
    Svid,
    /// A root of a trust bundle.
    BundleRoot,
}

impl CertKind {
    /// The bounded label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            CertKind::Svid => "svid",
            CertKind::BundleRoot => "bundle_root",
        }
    }
}

/// When one certificate we hold stops being valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    pub kind: CertKind,
    pub trust_domain: String,
    /// The SPIFFE ID for an SVID, the subject DN for a root.
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// The current SVID and trust bundles, swapped as a whole on reload.
#[derive(Debug)]
pub struct CredentialStore {
    svid: ArcSwap<Svid>,
    bundles: ArcSwap<TrustBundles>,
    /// Open mTLS connections, re-checked when bundles change or peers expire.
    live: LiveConnections,
    algorithms: WebPkiSupportedAlgorithms,
}

impl CredentialStore {
    /// Builds a store, checking that our own trust domain has a bundle (a
    /// sidecar that trusts nobody of its own domain can talk to no one).
    pub fn new(svid: Svid, bundles: TrustBundles) -> Result<Arc<Self>, TlsError> {
        if bundles.get(svid.id.trust_domain()).is_none() {
            return Err(TlsError::NoOwnBundle {
                td: svid.id.trust_domain().to_owned(),
                id: svid.id,
            });
        }
        Ok(Arc::new(CredentialStore {
            svid: ArcSwap::from_pointee(svid),
            bundles: ArcSwap::from_pointee(bundles),
            live: LiveConnections::default(),
            algorithms: super::crypto_provider().signature_verification_algorithms,
        }))
    }

    /// The registry of open connections.
    pub fn live(&self) -> &LiveConnections {
        &self.live
    }

    /// True while our own SVID may be presented. Once it expires without a
    /// valid replacement, handshakes fail closed and readiness goes false.
    pub fn svid_is_valid_now(&self) -> bool {
        self.svid.load().is_valid_at(unix_now())
    }

    /// Checks that `svid` chains to a root of its own trust domain in
    /// `bundles`: a replacement peers would refuse is not worth presenting.
    pub fn check_own_chain(&self, svid: &Svid, bundles: &TrustBundles) -> Result<(), VerifyError> {
        let chain = &svid.key.cert;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| VerifyError::InvalidCert("empty chain".into()))?;
        verify_peer(
            bundles,
            &self.algorithms,
            leaf,
            intermediates,
            UnixTime::now(),
            Role::Server,
        )
        .map(|_| ())
    }

    /// Re-verifies every open connection against the current bundles.
    pub fn revalidate_live(&self) -> usize {
        self.live.revalidate(&self.bundles.load(), &self.algorithms)
    }

    pub fn svid(&self) -> Arc<Svid> {
        self.svid.load_full()
    }

    pub fn bundles(&self) -> arc_swap::Guard<Arc<TrustBundles>> {
        self.bundles.load()
    }

    /// Our own SPIFFE ID.
    pub fn own_id(&self) -> SpiffeId {
        self.svid.load().id.clone()
    }

    /// The expiry of our SVID, then of every bundle root that parses (one
    /// that does not has been refused at load, so none is skipped in
    /// practice). Read at load and reload only, never per handshake.
    pub fn expiries(&self) -> Vec<CertExpiry> {
        let svid = self.svid.load();
        let mut out = vec![CertExpiry {
            kind: CertKind::Svid,
            trust_domain: svid.id.trust_domain().to_owned(),
            subject: svid.id.as_str().to_owned(),
            not_after: svid.not_after,
        }];
        for (td, root) in self.bundles.load().roots() {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(root) {
                out.push(CertExpiry {
                    kind: CertKind::BundleRoot,
                    trust_domain: td.to_owned(),
                    subject: cert.subject().to_string(),
                    not_after: cert.validity().not_after.timestamp(),
                });
            }
        }
        out
    }

    /// Replaces the SVID; the next handshake presents it.
    pub fn set_svid(&self, svid: Svid) {
        self.svid.store(Arc::new(svid));
    }

    /// Replaces the trust bundles; the next handshake is verified against them.
    pub fn set_bundles(&self, bundles: TrustBundles) {
        self.bundles.store(Arc::new(bundles));
    }

    /// The key to present now, or none at all once it has expired: an
    /// expired SVID is never presented (the handshake then fails closed).
    fn current_key(&self) -> Option<Arc<CertifiedKey>> {
        let svid = self.svid.load();
        if svid.is_valid_at(unix_now()) {
            Some(svid.key.clone())
        } else {
            tracing::error!(id = %svid.id, not_after = svid.not_after, "own SVID is outside its validity window; refusing to present it");
            None
        }
    }
}

impl rustls::server::ResolvesServerCert for CredentialStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current_key()
    }
}

impl rustls::client::ResolvesClientCert for CredentialStore {
    fn resolve(
        &self,
        _root_hints: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current_key()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
