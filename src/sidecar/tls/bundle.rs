//! Trust bundles: the CA certificates trusted for each trust domain.
//!
//! A peer is verified only against the bundle of its own trust domain; an
//! unknown trust domain is untrusted and an empty bundle trusts nothing.

use super::TlsError;
use crate::sidecar::identity::validate_trust_domain;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The roots of one trust domain. Several roots are normal: a CA rotates by
/// overlap, old and new root both trusted for a while.
#[derive(Debug, Clone)]
pub struct DomainBundle {
    pub anchors: Vec<TrustAnchor<'static>>,
    pub roots: Vec<CertificateDer<'static>>,
    pub source: PathBuf,
}

/// Trust bundles keyed by trust domain name.
#[derive(Debug, Clone, Default)]
pub struct TrustBundles {
    by_domain: HashMap<String, DomainBundle>,
}

impl TrustBundles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a PEM file of CA certificates as the bundle of `trust_domain`.
    pub fn load_domain(&mut self, trust_domain: &str, path: &Path) -> Result<(), TlsError> {
        let pem = std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?;
        let bundle = parse_bundle(&pem, path)?;
        self.insert(trust_domain, bundle)
    }

    /// Adds roots for `trust_domain`, merging with any already present.
    pub fn insert(&mut self, trust_domain: &str, bundle: DomainBundle) -> Result<(), TlsError> {
        validate_trust_domain(trust_domain).map_err(|e| TlsError::BadAnchor {
            path: bundle.source.clone(),
            index: 0,
            reason: format!("trust domain {trust_domain:?}: {e}"),
        })?;
        match self.by_domain.get_mut(trust_domain) {
            Some(existing) => {
                existing.anchors.extend(bundle.anchors);
                existing.roots.extend(bundle.roots);
            }
            None => {
                self.by_domain.insert(trust_domain.to_owned(), bundle);
            }
        }
        Ok(())
    }

    /// The roots trusted for `trust_domain`, if any.
    pub fn get(&self, trust_domain: &str) -> Option<&DomainBundle> {
        self.by_domain
            .get(trust_domain)
            .filter(|b| !b.anchors.is_empty())
    }

    /// Trust domain names with at least one root, sorted.
    pub fn trust_domains(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .by_domain
            .iter()
            .filter(|(_, b)| !b.anchors.is_empty())
            .map(|(k, _)| k.as_str())
            .collect();
        v.sort_unstable();
        v
    }

    /// Every (trust domain, root certificate) pair, for expiry reporting.
    pub fn roots(&self) -> impl Iterator<Item = (&str, &CertificateDer<'static>)> {
        self.by_domain
            .iter()
            .flat_map(|(td, b)| b.roots.iter().map(move |r| (td.as_str(), r)))
    }
}

/// Parses every certificate in a PEM bundle into a trust anchor.
pub fn parse_bundle(pem: &[u8], path: &Path) -> Result<DomainBundle, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            path: path.into(),
            reason: e.to_string(),
        })?;
    DomainBundle::from_certs(certs, path)
}

impl DomainBundle {
    /// Turns every certificate into a trust anchor (PEM files and the
    /// Workload API's DER share this); `source` names them in errors. No
    /// certificate at all is an error: it would trust nothing, which is
    /// almost certainly a mistake in how it was written.
    pub fn from_certs(
        certs: Vec<CertificateDer<'static>>,
        source: &Path,
    ) -> Result<DomainBundle, TlsError> {
        let mut anchors = Vec::with_capacity(certs.len());
        for (index, cert) in certs.iter().enumerate() {
            let anchor = webpki::anchor_from_trusted_cert(cert)
                .map_err(|e| TlsError::BadAnchor {
                    path: source.into(),
                    index,
                    reason: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(anchor);
        }
        if anchors.is_empty() {
            return Err(TlsError::NoPem {
                path: source.into(),
                what: "CERTIFICATE",
            });
        }
        Ok(DomainBundle {
            anchors,
            roots: certs,
            source: source.into(),
        })
    }
}
