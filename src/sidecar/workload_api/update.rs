//! Turning Workload API messages into the credentials a sidecar may use,
//! with the same checks as a file reload (`reload.rs`): a valid X509-SVID
//! for both roles, inside its validity window, whose key matches, for our
//! SPIFFE ID, chaining to our trust domain's bundle. Pure: no I/O, so every
//! refusal is unit-tested without an agent.

use super::proto::{X509Svid, X509SvidResponse};
use crate::sidecar::identity::{validate_trust_domain, SpiffeId};
use crate::sidecar::tls::{verify_peer, DomainBundle, Svid, TlsError, TrustBundles, VerifyError};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Why an update from the agent was refused (the previous state stays).
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("the update carries no SVID")]
    NoSvid,
    #[error("no SVID has the configured hint {0:?} (hints offered: {1})")]
    HintNotFound(String, String),
    #[error("{origin}: {reason}")]
    BadDer { origin: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the message names {field}, but its certificate is {cert}")]
    IdMismatch { field: String, cert: SpiffeId },
    #[error(
        "new SVID is for {new}, but this sidecar is {own}; an identity change needs a restart"
    )]
    IdentityChanged { new: SpiffeId, own: SpiffeId },
    #[error("new SVID does not chain to its trust domain's bundle: {0}")]
    Untrusted(VerifyError),
    #[error("bundle key {key:?} is not a trust domain: {reason}")]
    BadTrustDomain { key: String, reason: String },
    #[error("the update has no bundle for our own trust domain {0}")]
    NoOwnBundle(String),
}

impl UpdateError {
    /// The bounded label of this refusal in metrics.
    pub fn reason_label(&self) -> &'static str {
        match self {
            UpdateError::NoSvid => "no_svid",
            UpdateError::HintNotFound(..) => "hint_not_found",
            UpdateError::BadDer { .. } | UpdateError::Tls(_) | UpdateError::IdMismatch { .. } => {
                "invalid"
            }
            UpdateError::IdentityChanged { .. } => "identity_changed",
            UpdateError::Untrusted(_) => "untrusted",
            UpdateError::BadTrustDomain { .. } => "bad_trust_domain",
            UpdateError::NoOwnBundle(_) => "no_own_bundle",
        }
    }
}

/// Roots of each trust domain by name, as the agent sent them.
pub type BundleSet = BTreeMap<String, DomainBundle>;

/// A checked SVID update: the SVID and its trust domain's bundle.
pub struct SvidUpdate {
    pub svid: Svid,
    pub own_bundle: DomainBundle,
    /// The message's federated bundles (used until `FetchX509Bundles`
    /// has answered, which is authoritative for them).
    pub federated: BundleSet,
}

/// The SVID with `hint`, or the first one (the agent's choice of default).
pub fn pick<'a>(svids: &'a [X509Svid], hint: Option<&str>) -> Result<&'a X509Svid, UpdateError> {
    match hint {
        None => svids.first().ok_or(UpdateError::NoSvid),
        Some(hint) => svids.iter().find(|s| s.hint == hint).ok_or_else(|| {
            if svids.is_empty() {
                return UpdateError::NoSvid;
            }
            let offered: Vec<&str> = svids.iter().map(|s| s.hint.as_str()).collect();
            UpdateError::HintNotFound(hint.to_owned(), format!("{offered:?}"))
        }),
    }
}

/// Checks one `FetchX509SVID` message. `own` is our SPIFFE ID once known
/// (the first accepted SVID fixes it, as the first file load does).
pub fn check_svid(
    msg: &X509SvidResponse,
    hint: Option<&str>,
    own: Option<&SpiffeId>,
    source: &str,
    provider: &CryptoProvider,
) -> Result<SvidUpdate, UpdateError> {
    let chosen = pick(&msg.svids, hint)?;
    let cert_source = PathBuf::from(format!("{source}: SVID {:?}", chosen.spiffe_id));
    let chain = split_der(&chosen.x509_svid, &cert_source)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chosen.x509_svid_key.clone()));
    let key_source = PathBuf::from(format!("{source}: key of SVID {:?}", chosen.spiffe_id));
    let svid = Svid::from_der(chain, key, &cert_source, &key_source, provider)?;
    if svid.id.as_str() != chosen.spiffe_id {
        return Err(UpdateError::IdMismatch {
            field: chosen.spiffe_id.clone(),
            cert: svid.id,
        });
    }
    if let Some(own) = own {
        if &svid.id != own {
            return Err(UpdateError::IdentityChanged {
                new: svid.id,
                own: own.clone(),
            });
        }
    }
    let bundle_source = PathBuf::from(format!("{source}: bundle of {}", svid.id.trust_domain()));
    let own_bundle =
        DomainBundle::from_certs(split_der(&chosen.bundle, &bundle_source)?, &bundle_source)?;
    check_chain(&svid, &own_bundle)?;
    let federated = bundle_set(&msg.federated_bundles, source)?;
    Ok(SvidUpdate {
        svid,
        own_bundle,
        federated,
    })
}

/// The SVID chains to a root of its own trust domain in `bundle`: one that
/// peers would refuse is not worth presenting.
fn check_chain(svid: &Svid, bundle: &DomainBundle) -> Result<(), UpdateError> {
    let mut bundles = TrustBundles::new();
    bundles.insert(svid.id.trust_domain(), bundle.clone())?;
    let (leaf, intermediates) =
        svid.key.cert.split_first().ok_or_else(|| {
            UpdateError::Untrusted(VerifyError::InvalidCert("empty chain".into()))
        })?;
    let algorithms = crate::sidecar::tls::crypto_provider().signature_verification_algorithms;
    verify_peer(
        &bundles,
        &algorithms,
        leaf,
        intermediates,
        UnixTime::now(),
        crate::sidecar::identity::Role::Server,
    )
    .map(|_| ())
    .map_err(UpdateError::Untrusted)
}

/// Checks a map of bundles (`federated_bundles`, or `FetchX509Bundles`'
/// `bundles`): every key a trust domain, every value at least one usable
/// root. One bad entry refuses the whole update.
pub fn bundle_set(map: &HashMap<String, Vec<u8>>, source: &str) -> Result<BundleSet, UpdateError> {
    let mut out = BundleSet::new();
    for (key, der) in map {
        let td = trust_domain_of(key)?;
        let path = PathBuf::from(format!("{source}: bundle of {td}"));
        let bundle = DomainBundle::from_certs(split_der(der, &path)?, &path)?;
        out.insert(td, bundle);
    }
    Ok(out)
}

/// A bundle key: the trust domain's SPIFFE ID (`spiffe://example.org`, the
/// standard's form) or its bare name, which agents have also sent.
pub fn trust_domain_of(key: &str) -> Result<String, UpdateError> {
    let bad = |reason: String| UpdateError::BadTrustDomain {
        key: key.to_owned(),
        reason,
    };
    if key.starts_with("spiffe://") {
        let id = SpiffeId::parse(key).map_err(|e| bad(e.to_string()))?;
        if !id.is_root() {
            return Err(bad("a trust domain ID has no path".into()));
        }
        return Ok(id.trust_domain().to_owned());
    }
    validate_trust_domain(key).map_err(|e| bad(e.to_string()))?;
    Ok(key.to_owned())
}

/// Splits concatenated DER certificates (the Workload API's encoding of
/// chains and bundles).
pub fn split_der(
    mut der: &[u8],
    source: &Path,
) -> Result<Vec<CertificateDer<'static>>, UpdateError> {
    let mut out = Vec::new();
    while !der.is_empty() {
        let (rest, _) =
            x509_parser::parse_x509_certificate(der).map_err(|e| UpdateError::BadDer {
                origin: source.display().to_string(),
                reason: format!("certificate #{} is not DER X.509: {e}", out.len()),
            })?;
        let len = der.len() - rest.len();
        out.push(CertificateDer::from(der[..len].to_vec()));
        der = rest;
    }
    Ok(out)
}
