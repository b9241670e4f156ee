//! Fetching a JWKS over HTTPS with meshguard's own client: rustls (aws-lc-rs)
//! trusting only the CA file the provider declares, one HTTP/1.1 request
//! per fetch, bounded in time and size. No redirects are followed and no
//! proxy is used: the key source is exactly the URL configured.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use pki_types::{CertificateDer, ServerName};
use rustls_pki_types as pki_types;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Largest JWKS document accepted.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// A fetch (connect, handshake, response) must finish within this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}: cannot read CA file: {1}")]
    Ca(String, String),
    #[error("bad URL: {0}")]
    Url(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("status {0}")]
    Status(u16),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl FetchError {
    /// A bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            FetchError::Ca(..) | FetchError::Url(_) => "config",
            FetchError::Connect(_) => "connect",
            FetchError::Tls(_) => "tls",
            FetchError::Http(_) | FetchError::Status(_) => "http",
            FetchError::Timeout(_) => "timeout",
        }
    }
}

/// The TLS client of one provider: trusts the CA file's certificates only.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, FetchError> {
    let name = ca.display().to_string();
    let pem = std::fs::read(ca).map_err(|e| FetchError::Ca(name.clone(), e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in <CertificateDer as pki_types::pem::PemObject>::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| FetchError::Ca(name.clone(), e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| FetchError::Ca(name.clone(), e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(FetchError::Ca(name, "no certificate in the file".into()));
    }
    let config =
        rustls::ClientConfig::builder_with_provider(crate::sidecar::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| FetchError::Ca(name, e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// GETs `url` (https) and returns the body of a 200 answer.
pub async fn fetch(url: &http::Uri, tls: Arc<rustls::ClientConfig>) -> Result<Bytes, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(url, tls))
        .await
        .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
}

async fn fetch_inner(url: &http::Uri, tls: Arc<rustls::ClientConfig>) -> Result<Bytes, FetchError> {
    let host = url
        .host()
        .ok_or_else(|| FetchError::Url("no host".into()))?;
    let port = url.port_u16().unwrap_or(443);
    let server = ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|e| FetchError::Url(e.to_string()))?;
    let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(FetchError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server, tcp)
        .await
        .map_err(FetchError::Tls)?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(io)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::ACCEPT,
            "application/json, application/jwk-set+json",
        )
        .header(
            http::header::USER_AGENT,
            concat!("meshguard/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    if resp.status() != http::StatusCode::OK {
        return Err(FetchError::Status(resp.status().as_u16()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| FetchError::Http(e.to_string()))?;
    Ok(body.to_bytes())
}
