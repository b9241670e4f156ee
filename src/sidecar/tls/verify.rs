//! Verifying a peer's chain as an X509-SVID: the leaf rules, then RFC 5280
//! chain validation with webpki against the bundle of the peer's *own*
//! trust domain. Pure functions of a chain and the bundles, so the
//! handshake verifiers, the credential store and the live-connection
//! re-check all build on this module and it on none of them.

use super::bundle::TrustBundles;
use crate::sidecar::identity::{check_svid_leaf, Role, SpiffeId, SvidError};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::{CertificateError, OtherError};
use rustls_pki_types::{CertificateDer, UnixTime};
use std::sync::Arc;

/// Longest chain of intermediates we follow. SPIRE and cert-manager issue
/// from at most a couple of intermediates; a longer chain is suspicious.
pub const MAX_INTERMEDIATES: usize = 4;

/// Why a peer's certificate was refused. Carried inside the rustls error so
/// that the accept/connect path can log and count the precise reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    NotSvid(SvidError),
    #[error("invalid certificate: {0}")]
    InvalidCert(String),
    #[error("expired: {0}")]
    Expired(SvidError),
    #[error("not yet valid: {0}")]
    NotYetValid(SvidError),
    #[error("unknown trust domain {0:?} (no bundle)")]
    UnknownTrustDomain(String),
    #[error("unknown CA: chain does not lead to a root of trust domain {0:?}")]
    UnknownCa(String),
    #[error("chain too long: {0} intermediates (at most {MAX_INTERMEDIATES})")]
    ChainTooLong(usize),
    #[error("invalid chain: {0}")]
    InvalidChain(String),
    #[error("wrong identity: expected {expected}, peer is {actual}")]
    WrongIdentity {
        expected: SpiffeId,
        actual: SpiffeId,
    },
}

impl VerifyError {
    /// A short, bounded label for metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            VerifyError::NotSvid(_) => "not_svid",
            VerifyError::InvalidCert(_) => "invalid_cert",
            VerifyError::Expired(_) => "expired",
            VerifyError::NotYetValid(_) => "not_yet_valid",
            VerifyError::UnknownTrustDomain(_) => "unknown_trust_domain",
            VerifyError::UnknownCa(_) => "unknown_ca",
            VerifyError::ChainTooLong(_) => "chain_too_long",
            VerifyError::InvalidChain(_) => "invalid_chain",
            VerifyError::WrongIdentity { .. } => "wrong_identity",
        }
    }

    /// Finds our reason inside an error returned by a TLS accept/connect.
    pub fn from_io(err: &std::io::Error) -> Option<&VerifyError> {
        let rustls_err = err.get_ref()?.downcast_ref::<rustls::Error>()?;
        match rustls_err {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
                inner.downcast_ref::<VerifyError>()
            }
            _ => None,
        }
    }
}

/// A bounded label and a readable detail for any failed handshake.
pub fn handshake_failure(err: &std::io::Error) -> (&'static str, String) {
    if let Some(reason) = VerifyError::from_io(err) {
        return (reason.reason_label(), reason.to_string());
    }
    let label = match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_cert",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(rustls::Error::InvalidMessage(_)) => "not_tls",
        Some(rustls::Error::AlertReceived(_)) => "alert_received",
        // The client asked for a protocol we do not serve (an opaque TCP
        // port not in inbound.tcp_ports).
        Some(rustls::Error::NoApplicationProtocol) => "no_application_protocol",
        Some(_) => "tls_error",
        None if err.kind() == std::io::ErrorKind::UnexpectedEof => "eof",
        None => "io_error",
    };
    (label, err.to_string())
}

impl From<VerifyError> for rustls::Error {
    fn from(e: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// Verifies a peer's chain as an X509-SVID for `role`: the leaf rules, then
/// RFC 5280 path validation against the bundle of the leaf's own trust
/// domain. Used inside handshakes and again when bundles change, to
/// re-check connections that are already open.
pub fn verify_peer(
    bundles: &TrustBundles,
    algorithms: &WebPkiSupportedAlgorithms,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: Role,
) -> Result<SpiffeId, VerifyError> {
    let now_secs = now.as_secs() as i64;
    let id = check_svid_leaf(end_entity, role, now_secs).map_err(|e| match e {
        SvidError::Expired { .. } => VerifyError::Expired(e),
        SvidError::NotYetValid { .. } => VerifyError::NotYetValid(e),
        other => VerifyError::NotSvid(other),
    })?;
    if intermediates.len() > MAX_INTERMEDIATES {
        return Err(VerifyError::ChainTooLong(intermediates.len()));
    }
    let td = id.trust_domain();
    let bundle = bundles
        .get(td)
        .ok_or_else(|| VerifyError::UnknownTrustDomain(td.to_owned()))?;
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::InvalidCert(format!("{e:?}")))?;
    let usage = match role {
        Role::Client => webpki::KeyUsage::client_auth(),
        Role::Server => webpki::KeyUsage::server_auth(),
    };
    cert.verify_for_usage(
        algorithms.all,
        &bundle.anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| match e {
        // A same-named but different CA shows up as a bad signature.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerifyError::UnknownCa(td.to_owned())
        }
        other => VerifyError::InvalidChain(format!("{other:?}")),
    })?;
    // webpki does not look at an issuer's keyUsage; RFC 5280 6.1.4 (n) and
    // the X509-SVID standard require keyCertSign on every signing cert.
    for (index, intermediate) in intermediates.iter().enumerate() {
        check_signing_cert(intermediate).map_err(|reason| {
            VerifyError::InvalidChain(format!("intermediate #{index}: {reason}"))
        })?;
    }
    Ok(id)
}

/// A certificate that signs others must be a CA and, when it has a
/// keyUsage extension, allow keyCertSign.
fn check_signing_cert(der: &[u8]) -> Result<(), &'static str> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| "not a valid certificate")?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => return Err("not a CA certificate"),
        Err(_) => return Err("invalid basicConstraints"),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err("keyUsage lacks keyCertSign"),
        Ok(_) => Ok(()),
        Err(_) => Err("invalid keyUsage"),
    }
}
