//! The X509-SVID rules a verifier must apply to a peer's leaf certificate,
//! beyond what RFC 5280 chain validation (done by webpki) already covers.

use super::{SpiffeId, SpiffeIdError};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// Which side of the TLS handshake the certificate's holder plays, so that
/// an extended key usage can be checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The peer is a TLS client (we are verifying it at inbound).
    Client,
    /// The peer is a TLS server (we are verifying it at outbound).
    Server,
}

/// Why a certificate is not an acceptable X509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("not an X.509 certificate: {0}")]
    Malformed(String),
    #[error("not an SVID: no URI SAN")]
    NoUriSan,
    #[error("not an SVID: {0} URI SANs (exactly one allowed)")]
    MultipleUriSans(usize),
    #[error("not an SVID: URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(SpiffeIdError),
    #[error("not an SVID: SPIFFE ID {0} has no workload path")]
    RootPath(String),
    #[error("CA certificate presented as a leaf")]
    CaAsLeaf,
    #[error("leaf has no keyUsage extension")]
    MissingKeyUsage,
    #[error("leaf keyUsage extension is not marked critical")]
    KeyUsageNotCritical,
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf keyUsage allows certificate or CRL signing")]
    SigningKeyUsage,
    #[error("extended key usage does not allow {0}")]
    WrongExtendedKeyUsage(&'static str),
    #[error("leaf RSA key is too weak: {0} bits (at least {MIN_RSA_BITS} required)")]
    WeakKey(usize),
    #[error("subject is empty but subjectAltName is not critical (RFC 5280 section 4.2.1.6)")]
    EmptySubjectSanNotCritical,
    #[error("validity window is empty (notBefore {not_before} is after notAfter {not_after})")]
    EmptyValidity { not_before: i64, not_after: i64 },
    #[error("certificate is expired (notAfter {not_after}, now {now})")]
    Expired { not_after: i64, now: i64 },
    #[error("certificate is not yet valid (notBefore {not_before}, now {now})")]
    NotYetValid { not_before: i64, now: i64 },
}

/// Smallest RSA modulus accepted in a leaf. The TLS 1.3 signature schemes
/// rustls verifies with refuse smaller keys anyway, but only later and with a
/// vague handshake error; refusing here names the reason.
pub const MIN_RSA_BITS: usize = 2048;

/// Applies the X509-SVID leaf rules to `der` and returns its SPIFFE ID.
///
/// `now` is seconds since the Unix epoch. Chain and signature checks are not
/// done here: they belong to webpki, which the TLS verifiers call after this.
pub fn check_svid_leaf(der: &[u8], role: Role, now: i64) -> Result<SpiffeId, SvidError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Malformed(
            "trailing data after certificate".into(),
        ));
    }
    let id = spiffe_id_of(&cert)?;
    check_leaf_constraints(&cert, role)?;
    check_key_strength(&cert)?;
    check_validity(&cert, now)?;
    Ok(id)
}

/// notBefore and notAfter of a certificate, as Unix seconds.
pub fn svid_validity(der: &[u8]) -> Result<(i64, i64), SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(format!("subjectAltName: {e}")))?
        .ok_or(SvidError::NoUriSan)?;
    // An issuer that leaves the subject empty must make the SAN critical;
    // one that does not is not following the rules a verifier relies on.
    if !san.critical && cert.subject().iter().next().is_none() {
        return Err(SvidError::EmptySubjectSanNotCritical);
    }
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    let first = uris.next().ok_or(SvidError::NoUriSan)?;
    let extra = uris.count();
    if extra > 0 {
        return Err(SvidError::MultipleUriSans(extra + 1));
    }
    let id = SpiffeId::parse(first).map_err(SvidError::InvalidSpiffeId)?;
    if id.is_root() {
        return Err(SvidError::RootPath(id.to_string()));
    }
    Ok(id)
}

fn check_leaf_constraints(cert: &X509Certificate<'_>, role: Role) -> Result<(), SvidError> {
    let basic = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(format!("basicConstraints: {e}")))?;
    if basic.is_some_and(|b| b.value.ca) {
        return Err(SvidError::CaAsLeaf);
    }
    let key_usage = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(format!("keyUsage: {e}")))?
        .ok_or(SvidError::MissingKeyUsage)?;
    if !key_usage.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    if key_usage.value.key_cert_sign() || key_usage.value.crl_sign() {
        return Err(SvidError::SigningKeyUsage);
    }
    if !key_usage.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| SvidError::Malformed(format!("extendedKeyUsage: {e}")))?;
    if let Some(eku) = eku {
        let eku = eku.value;
        let (allowed, name) = match role {
            Role::Client => (eku.client_auth, "clientAuth"),
            Role::Server => (eku.server_auth, "serverAuth"),
        };
        if !(allowed || eku.any) {
            return Err(SvidError::WrongExtendedKeyUsage(name));
        }
    }
    Ok(())
}

/// Refuses RSA keys below [`MIN_RSA_BITS`]. Other key types are left to
/// the handshake, which accepts only the curves the provider supports.
fn check_key_strength(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    if let Ok(PublicKey::RSA(rsa)) = cert.public_key().parsed() {
        let bits = significant_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(SvidError::WeakKey(bits));
        }
    }
    Ok(())
}

/// Bit length of a big-endian unsigned integer (leading zero bytes, such as
/// DER's sign byte, do not count).
pub(super) fn significant_bits(be: &[u8]) -> usize {
    match be.iter().position(|&b| b != 0) {
        Some(i) => (be.len() - i - 1) * 8 + (8 - be[i].leading_zeros() as usize),
        None => 0,
    }
}

fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), SvidError> {
    let v = cert.validity();
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    if not_before > not_after {
        return Err(SvidError::EmptyValidity {
            not_before,
            not_after,
        });
    }
    if now < not_before {
        return Err(SvidError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(SvidError::Expired { not_after, now });
    }
    Ok(())
}
