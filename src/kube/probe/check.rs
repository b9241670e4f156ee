//! Running one recorded probe against the app over loopback, the way
//! kubelet runs it against the pod IP: the same request, the same redirect
//! rules, the same notion of success.

use super::conn::{dial, one_line, AbortOnDrop, Failure, KUBE_PROBE_USER_AGENT};
use super::grpc;
use crate::kube::contract::{Forward, HttpHeader, Scheme};
use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Requests of one HTTP probe, redirects included (Go's client stops at 10).
pub(super) const MAX_REQUESTS: usize = 10;

/// How much of a response body is read before the connection is dropped
/// (kubelet reads up to 10 KiB).
const MAX_BODY: usize = 10 * 1024;

/// Runs `forward` once against the app on loopback, within its timeout.
pub async fn run_probe(forward: &Forward) -> Result<(), Failure> {
    let timeout_seconds = match forward {
        Forward::Http {
            timeout_seconds, ..
        }
        | Forward::Tcp {
            timeout_seconds, ..
        }
        | Forward::Grpc {
            timeout_seconds, ..
        } => *timeout_seconds,
    };
    let run = async {
        match forward {
            Forward::Http {
                port,
                scheme,
                path,
                headers,
                ..
            } => http(*port, *scheme, path, headers).await,
            Forward::Tcp { port, .. } => dial(*port).await.map(drop),
            Forward::Grpc { port, service, .. } => {
                grpc::check(
                    *port,
                    service.as_deref().unwrap_or(""),
                    budget(timeout_seconds),
                )
                .await
            }
        }
    };
    match tokio::time::timeout(budget(timeout_seconds), run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timeout after {timeout_seconds}s")),
    }
}

/// The time a probe may take: kubelet waits `timeoutSeconds` for our
/// answer, so we give up a little earlier (10%, at least 100 ms) to answer
/// in time; never less than 500 ms.
pub(super) fn budget(timeout_seconds: u32) -> Duration {
    let full = Duration::from_secs(u64::from(timeout_seconds));
    let margin = (full / 10).max(Duration::from_millis(100));
    full.saturating_sub(margin).max(Duration::from_millis(500))
}

/// One request of an HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hop {
    pub scheme: Scheme,
    pub port: u16,
    /// Path and query, as sent.
    pub target: String,
    /// The Host header.
    pub host: String,
}

/// Where a redirect leads.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Follow(Hop),
    /// Another host: kubelet does not follow it and counts the redirect
    /// itself as success.
    Elsewhere,
}

async fn http(
    port: u16,
    scheme: Scheme,
    path: &str,
    recorded: &[HttpHeader],
) -> Result<(), Failure> {
    let (headers, host) = request_headers(port, recorded)?;
    let mut hop = Hop {
        scheme,
        port,
        target: path.to_owned(),
        host,
    };
    for sent in 1..=MAX_REQUESTS {
        let (status, location) = send(&hop, &headers).await?;
        let followed = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let location = location.filter(|l| !l.is_empty());
        let (true, Some(location)) = (followed, location) else {
            return judge(status);
        };
        match resolve_redirect(&hop, &location)? {
            Next::Elsewhere => return Ok(()),
            Next::Follow(_) if sent == MAX_REQUESTS => {
                return Err(format!("stopped after {MAX_REQUESTS} redirects"))
            }
            Next::Follow(next) => hop = next,
        }
    }
    Err(format!("stopped after {MAX_REQUESTS} redirects"))
}

/// The headers every request of the probe carries, and the Host header
/// apart, as kubelet builds them from the recorded ones.
fn request_headers(port: u16, recorded: &[HttpHeader]) -> Result<(HeaderMap, String), Failure> {
    let mut headers = HeaderMap::new();
    for h in recorded {
        let name = HeaderName::from_bytes(h.name.as_bytes());
        let value = HeaderValue::from_str(&h.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(format!("recorded header {:?} is not valid HTTP", h.name));
        };
        headers.append(name, value);
    }
    // Go (kubelet) takes the first Host value, and the URL's when empty.
    let host = match headers.remove(HOST) {
        Some(h) if !h.is_empty() => String::from_utf8_lossy(h.as_bytes()).into_owned(),
        _ => format!("127.0.0.1:{port}"),
    };
    default_unless_set(&mut headers, USER_AGENT, KUBE_PROBE_USER_AGENT);
    default_unless_set(&mut headers, ACCEPT, "*/*");
    // kubelet's transport disables keep-alive.
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    Ok((headers, host))
}

/// kubelet's rule for its default headers: added when absent, and an
/// empty recorded value means "send none".
fn default_unless_set(headers: &mut HeaderMap, name: HeaderName, default: &'static str) {
    match headers.get(&name) {
        None => {
            headers.insert(name, HeaderValue::from_static(default));
        }
        Some(v) if v.is_empty() => {
            headers.remove(name);
        }
        Some(_) => {}
    }
}

fn judge(status: StatusCode) -> Result<(), Failure> {
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("status {}", status.as_u16()))
    }
}

/// Sends one GET and returns the status and the Location header.
async fn send(hop: &Hop, headers: &HeaderMap) -> Result<(StatusCode, Option<String>), Failure> {
    let uri = request_target(&hop.target)?;
    let mut req = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {}", one_line(&e)))?;
    *req.headers_mut() = headers.clone();
    let host = HeaderValue::from_str(&hop.host)
        .map_err(|_| format!("host {:?} is not a valid header value", hop.host))?;
    req.headers_mut().insert(HOST, host);
    let tcp = dial(hop.port).await?;
    match hop.scheme {
        Scheme::Http => exchange(TokioIo::new(tcp), req).await,
        Scheme::Https => {
            let connector = tokio_rustls::TlsConnector::from(tls_config()?);
            // An IP address as server name: rustls then sends no SNI.
            let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("tls: {}", one_line(&e)))?;
            exchange(TokioIo::new(tls), req).await
        }
    }
}

async fn exchange<I>(
    io: I,
    req: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Option<String>), Failure>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("http: {}", one_line(&e)))?;
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("http: {}", one_line(&e)))?;
    let status = resp.status();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|l| String::from_utf8_lossy(l.as_bytes()).trim().to_owned());
    // Like kubelet: read (some of) the body; an error reading it fails the probe.
    let mut body = resp.into_body();
    let mut read = 0;
    while read < MAX_BODY {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(e)) => return Err(format!("reading body: {}", one_line(&e))),
        }
    }
    Ok((status, location))
}

/// The recorded path as a request target: the fragment dropped (never
/// sent), bytes a URL cannot carry percent-encoded, as Go does.
pub(super) fn request_target(path: &str) -> Result<Uri, Failure> {
    let path = path.split('#').next().unwrap_or_default();
    let mut out = String::with_capacity(path.len() + 1);
    if !path.starts_with('/') {
        out.push('/');
    }
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out.parse()
        .map_err(|_| format!("path {path:?} is not a valid request target"))
}

/// Where a `Location` leads from `current`, by Go's rules: relative
/// references resolve against the current URL (keeping the Host header
/// sent); an absolute URL is followed only to the same host (loopback,
/// since loopback is what kubelet's pod IP became here), any port.
pub(super) fn resolve_redirect(current: &Hop, location: &str) -> Result<Next, Failure> {
    let location = location.split('#').next().unwrap_or_default();
    let scheme_name = match current.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let absolute = if let Some(rest) = location.strip_prefix("//") {
        Some(format!("{scheme_name}://{rest}"))
    } else if has_scheme(location) {
        Some(location.to_owned())
    } else {
        None
    };
    let Some(absolute) = absolute else {
        let (current_path, _) = split_query(&current.target);
        let target = if location.starts_with('/') {
            location.to_owned()
        } else if location.starts_with('?') {
            format!("{current_path}{location}")
        } else {
            let dir = &current_path[..current_path.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        let (path, query) = split_query(&target);
        return Ok(Next::Follow(Hop {
            target: format!("{}{query}", remove_dot_segments(path)),
            ..current.clone()
        }));
    };
    let uri: Uri = absolute
        .parse()
        .map_err(|_| format!("invalid redirect location {:?}", truncate(location)))?;
    let Some(authority) = uri.authority() else {
        return Err(format!(
            "invalid redirect location {:?}",
            truncate(location)
        ));
    };
    let hostname = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if hostname != "127.0.0.1" && hostname != "::1" {
        return Ok(Next::Elsewhere);
    }
    let (scheme, default_port) = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") => (Scheme::Http, 80),
        Some("https") => (Scheme::Https, 443),
        _ => return Err("redirect to an unsupported scheme".to_owned()),
    };
    let host = authority.as_str();
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h).to_owned();
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let (path, query) = split_query(target);
    Ok(Next::Follow(Hop {
        scheme,
        port: authority.port_u16().unwrap_or(default_port),
        target: format!("{}{query}", remove_dot_segments(path)),
        host,
    }))
}

fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// (path, "?query" or "").
fn split_query(target: &str) -> (&str, &str) {
    match target.find('?') {
        Some(i) => target.split_at(i),
        None => (target, ""),
    }
}

/// RFC 3986 section 5.2.4, on an absolute path.
pub(super) fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *seg {
            "." if last => out.push(""),
            "." => {}
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

/// The TLS client of HTTPS probes: TLS 1.2 and 1.3 (whatever this rustls
/// build supports), no certificate verification, no SNI, no ALPN.
fn tls_config() -> Result<Arc<ClientConfig>, Failure> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            // Not crate::sidecar::tls::crypto_provider(): that one allows only the
            // TLS 1.3 suites meshguard speaks between sidecars, and apps
            // may speak TLS 1.2.
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls setup: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth();
            config.enable_sni = false;
            Ok(Arc::new(config))
        })
        .clone()
}

/// Accepts whatever certificate the app presents. This is production code
/// on purpose: kubelet's HTTPS probes do not verify the server either
/// (`InsecureSkipVerify`), since the app's certificate names a public
/// host, or nothing, never the pod IP, and is often self-signed. A probe
/// that verified would fail where kubelet's succeeds. The handshake
/// signature is still checked, so the peer holds the key of the
/// certificate it sent.
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
