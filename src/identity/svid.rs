//! The X509-SVID rules a verifier must apply to a peer's leaf certificate,
//! beyond what RFC 5280 chain validation (done by webpki) already covers.

use super::{SpiffeId, SpiffeIdError};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

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
    #[error("certificate is expired (notAfter {not_after}, now {now})")]
    Expired { not_after: i64, now: i64 },
    #[error("certificate is not yet valid (notBefore {not_before}, now {now})")]
    NotYetValid { not_before: i64, now: i64 },
}

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

fn check_validity(cert: &X509Certificate<'_>, now: i64) -> Result<(), SvidError> {
    let v = cert.validity();
    let (not_before, not_after) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now < not_before {
        return Err(SvidError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(SvidError::Expired { not_after, now });
    }
    Ok(())
}
