//! TLS between sidecars: SVID credentials, trust bundles, and the rustls
//! configurations whose verifiers enforce the X509-SVID rules inside the
//! handshake itself (so a wrong identity never gets a connection).
//!
//! Submodules form a DAG: `handshake` -> `creds` -> `live` -> `verify` ->
//! `bundle`. This file holds what they all share ([`TlsError`], the one
//! crypto provider, the clock) and the rustls configs built on them.

mod bundle;
mod creds;
mod handshake;
mod live;
mod verify;

pub use bundle::{parse_bundle, DomainBundle, TrustBundles};
pub use creds::{CertExpiry, CertKind, CredentialStore, Svid};
pub use handshake::{InboundVerifier, OutboundVerifier};
pub use live::{LiveConn, LiveConnections, Revocation};
pub use verify::{handshake_failure, verify_peer, VerifyError};

use crate::sidecar::identity::SpiffeId;
use rustls::crypto::CryptoProvider;
use std::path::PathBuf;
use std::sync::Arc;

/// ALPN protocol ids offered between sidecars.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no {what} found in PEM file")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("{path}: invalid PEM: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{path}: own certificate is not a usable X509-SVID: {reason}")]
    BadSvid { path: PathBuf, reason: String },
    #[error("{cert}: certificate does not match private key {key}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{path}: private key not usable: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("{path}: trust bundle certificate #{index} is not a usable trust anchor: {reason}")]
    BadAnchor {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error("own SVID {id} is in trust domain {td}, but no trust bundle for it was given")]
    NoOwnBundle { id: SpiffeId, td: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The one crypto provider for all of meshguard: aws-lc-rs, restricted to
/// the AES-GCM TLS 1.3 suites (as ztunnel does between proxies).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    let mut provider = default_provider();
    provider.cipher_suites = vec![
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
    ];
    Arc::new(provider)
}

/// Which HTTP version to speak on the mTLS hop when we originate it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a pool of connections, one request at a time on each.
    Http1,
    /// One multiplexed HTTP/2 connection per peer: about half the syscalls
    /// per request of HTTP/1.1 and one handshake per peer (the default,
    /// like linkerd2-proxy between proxies).
    #[default]
    Http2,
}

/// Server side of the mTLS hop (inbound): TLS 1.3 only, client certificate
/// required and verified as an X509-SVID, our own SVID taken from `store`
/// at every handshake so rotation applies to the next handshake.
pub fn inbound_server_config(
    store: &Arc<CredentialStore>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(InboundVerifier::new(store.clone(), &provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    // Resumed TLS 1.3 sessions skip client certificate verification, so a
    // peer whose CA has left the bundle could come back on an old ticket.
    // Every connection gets a full handshake instead.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Client side of the mTLS hop (outbound) to a peer that must prove it is
/// exactly `expected`.
pub fn outbound_client_config(
    store: &Arc<CredentialStore>,
    expected: SpiffeId,
    protocol: UpstreamProtocol,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let verifier = Arc::new(OutboundVerifier::new(store.clone(), expected, &provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(store.clone());
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![ALPN_HTTP11.to_vec()],
        UpstreamProtocol::Http2 => vec![ALPN_H2.to_vec()],
    };
    // Peers are named by SPIFFE ID, not DNS: SNI would only leak a made-up name.
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name handed to rustls when connecting. It is never sent (SNI
/// is off) and never checked (the verifier checks the SPIFFE ID instead).
/// An IP address form, so that nothing is parsed and rustls would not send
/// it as SNI even if SNI were on.
pub fn placeholder_server_name() -> rustls_pki_types::ServerName<'static> {
    rustls_pki_types::ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The SPIFFE ID of an already-verified peer certificate (a cheap re-parse
/// after the handshake; the verifier has applied every rule).
pub fn peer_identity(
    conn_certs: Option<&[rustls_pki_types::CertificateDer<'_>]>,
) -> Option<(SpiffeId, [u8; 32])> {
    let leaf = conn_certs?.first()?;
    let id = crate::sidecar::identity::check_svid_leaf(
        leaf,
        crate::sidecar::identity::Role::Client,
        unix_now(),
    )
    .ok()?;
    Some((id, sha256(leaf)))
}

/// SHA-256 of `data` via the same aws-lc-rs library rustls uses.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
