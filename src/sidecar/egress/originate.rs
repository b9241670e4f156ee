//! `originate` destinations: the app sends plain HTTP, meshguard opens
//! TLS to the declared host (SNI and certificate name = that host, the
//! server verified against the declared CA file or the system roots) and
//! sends the request there. One connection per request: the address is
//! chosen and guarded at each connect, so a pooled connection can never
//! outlive the answer that justified it. The response (a redirect too) is
//! returned as it is.

use super::table::{host_of, Entry, Refused};
use super::{connect, Egress, EgressError, Mode};
use crate::sidecar::config::{EgressConfig, EgressMode};
use crate::sidecar::headers::{self, RequestRules};
use crate::sidecar::metrics::{Disposition, RequestCounters};
use crate::sidecar::proxy::outcome::{self, Answer, Began, Refusal, RequestFacts, Ruling};
use crate::sidecar::proxy::pool::UpstreamBody;
use crate::sidecar::proxy::{refusal, ProxyBody};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;

const ALLOWED: Ruling<'static> = Ruling {
    disposition: Disposition::Allow,
    reason: "originated to egress destination",
    rule: None,
};

/// The TLS client config of every `originate` destination, by index.
pub(super) fn client_configs(
    cfg: &EgressConfig,
) -> Result<Vec<Option<Arc<rustls::ClientConfig>>>, EgressError> {
    let mut system: Option<Arc<rustls::RootCertStore>> = None;
    let mut out = Vec::with_capacity(cfg.destinations.len());
    for (index, d) in cfg.destinations.iter().enumerate() {
        if d.mode != EgressMode::Originate {
            out.push(None);
            continue;
        }
        let roots = match &d.ca {
            Some(path) => Arc::new(ca_file(path).map_err(|reason| EgressError::Ca {
                index,
                host: d.host.clone(),
                path: path.display().to_string(),
                reason,
            })?),
            None => match &system {
                Some(roots) => roots.clone(),
                None => {
                    let roots =
                        Arc::new(system_roots().map_err(|reason| EgressError::NoSystemRoots {
                            index,
                            host: d.host.clone(),
                            reason,
                        })?);
                    system = Some(roots.clone());
                    roots
                }
            },
        };
        out.push(Some(client_config(roots)?));
    }
    Ok(out)
}

fn client_config(
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>, EgressError> {
    // aws-lc-rs with its default suites: outside the mesh TLS 1.2 servers
    // are still common, so it is not limited to TLS 1.3 as the mesh is.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| EgressError::Ca {
            index: 0,
            host: String::new(),
            path: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file; at least one.
fn ca_file(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(roots)
}

/// The system's CA roots (SSL_CERT_FILE / SSL_CERT_DIR, else the OS store).
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
        return Err(if errors.is_empty() {
            "none found".into()
        } else {
            errors.join("; ")
        });
    }
    Ok(roots)
}

/// One plain HTTP request from the app that no mesh route took.
pub struct AppRequest {
    /// The head; its URI was taken for routing, `target` is what it named.
    pub parts: Parts,
    pub body: Incoming,
    pub target: Option<PathAndQuery>,
    /// The original destination, under capture.
    pub dialled: Option<SocketAddr>,
    /// An upgrade was asked for.
    pub upgrade: bool,
    pub start: Began,
}

impl Egress {
    /// A request no mesh route takes: forwarded if its host is a declared
    /// `originate` destination, else recorded as `refused` (on the
    /// outbound's unrouted counters), the audit line naming the
    /// destination asked for.
    pub async fn outside_mesh(
        &self,
        req: AppRequest,
        authority: Option<&str>,
        refused: Refusal<'_>,
        unrouted: &RequestCounters,
    ) -> Response<ProxyBody> {
        if let Some((name, entry)) = self.originates(authority) {
            return self.forward(&name, entry, req).await;
        }
        self.undeclared_request();
        let facts = RequestFacts {
            peer_addr: authority,
            peer_id: None,
            method: req.parts.method.as_str(),
            path: req.target.as_ref().map_or("/", |t| t.path()),
            start: req.start,
            token_sub: None,
            token_iss: None,
        };
        outcome::record(&self.metrics, unrouted, &facts, refused.into())
    }

    /// The declared `originate` destination for a request's authority.
    fn originates(&self, authority: Option<&str>) -> Option<(String, &Entry)> {
        let name = host_of(authority?)?;
        let entry = self.table.find(EgressMode::Originate, &name)?;
        Some((name, entry))
    }

    /// Forwards `req` to the declared destination `entry` over TLS, and
    /// records it: the request's audit line and counters, and the egress
    /// decision.
    async fn forward(&self, name: &str, entry: &Entry, req: AppRequest) -> Response<ProxyBody> {
        let method = req.parts.method.clone();
        let path = req.target.as_ref().map_or("/", |t| t.path()).to_owned();
        let start = req.start;
        let answer = self.originate(name, entry, req).await;
        let facts = RequestFacts {
            peer_addr: Some(name),
            peer_id: None,
            method: method.as_str(),
            path: &path,
            start,
            token_sub: None,
            token_iss: None,
        };
        outcome::record(&self.metrics, &self.counters, &facts, answer)
    }

    async fn originate(&self, name: &str, entry: &Entry, req: AppRequest) -> Answer<'static> {
        let refuse = |refused: Refused| -> Answer<'static> {
            self.decided(Mode::Originate, Some(name), req.dialled, Err(&refused));
            let message = format_args!("egress to {name}: {refused}");
            Refusal::new(StatusCode::FORBIDDEN, "egress refused", message).into()
        };
        if req.upgrade {
            return refuse(Refused::Upgrade);
        }
        let Some(tls) = self.originate.get(entry.index).cloned().flatten() else {
            return refuse(Refused::Undeclared);
        };
        let port = entry.upstream_port();
        let targets = match self.targets(name, req.dialled, port, None).await {
            Ok(targets) => targets,
            Err(refused) => return refuse(refused),
        };
        let failed = |reason: &'static str, e: &dyn std::fmt::Display| {
            tracing::warn!(host = %name, error = %e, "egress {reason}");
            let message = format_args!("egress to {name}: {e}");
            ALLOWED
                .because(reason)
                .answer(refusal(StatusCode::BAD_GATEWAY, message))
        };
        let (tcp, addr) = match connect(&targets).await {
            Ok(connected) => connected,
            Err(e) => {
                self.unreachable(Mode::Originate, Some(name), targets.first().copied(), &e);
                return failed("egress unreachable", &e);
            }
        };
        self.decided(Mode::Originate, Some(name), Some(addr), Ok(()));
        let Ok(server_name) = ServerName::try_from(name.to_owned()) else {
            return failed("egress handshake failed", &"not a server name");
        };
        let tls = match tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return failed("egress handshake failed", &e),
        };
        let request = match self.rewrite(req.parts, req.body, req.target, name, port) {
            Ok(request) => request,
            Err(refusal) => return refusal.into(),
        };
        match send(tls, request).await {
            Ok(mut resp) => {
                headers::strip_hop_by_hop(resp.headers_mut());
                ALLOWED.answer(resp.map(|b| Either::Left(UpstreamBody::shared(b))))
            }
            Err(e) => failed("egress failed", &e),
        }
    }

    /// The request as it leaves: origin-form target, `Host` the declared
    /// name (the SNI, so no request can name another host inside the
    /// tunnel), no identity or hop-by-hop header, HTTP/1.1.
    fn rewrite(
        &self,
        mut parts: Parts,
        body: Incoming,
        target: Option<PathAndQuery>,
        name: &str,
        port: u16,
    ) -> Result<Request<Incoming>, Refusal<'static>> {
        let rules = RequestRules {
            extra: Vec::new(),
            keep_underscores: self.keep_underscores,
        };
        headers::strip_request(&mut parts.headers, &rules);
        let path = target.unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
        let host = match port {
            443 => HeaderValue::from_str(name),
            p => HeaderValue::from_str(&format!("{name}:{p}")),
        };
        let host = host
            .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid host", "invalid host"))?;
        parts.headers.insert(header::HOST, host);
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}

/// One HTTP/1.1 exchange on a fresh TLS connection.
async fn send<T>(io: T, request: Request<Incoming>) -> Result<Response<Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    sender.send_request(request).await
}
