//! Test support: real certificates from our own rcgen code, real sidecars
//! started in-process on port 0, a real HTTP app that records what reached
//! it, and a TLS client that can present any certificate.

// Every test binary that says `mod support;` compiles all of this but uses
// a part; each helper is used by at least one of them, so unused-code
// warnings here would only be noise.
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::dev::certs::{DevCa, Issued, LeafSpec};
use meshguard::sidecar::config::{
    AdminConfig, Config, IdentityConfig, InboundConfig, OutboundConfig, RouteConfig, RuntimeConfig,
};
use meshguard::sidecar::identity::SpiffeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};

pub const TD: &str = "cluster.local";

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::from_k8s(TD, ns, sa).unwrap()
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A loopback port free at the time of asking, for a child process's
/// listener (its address must be known before it starts).
///
/// Why not `bind(0)`: that hands out a port from the kernel's ephemeral
/// range, the same range every `connect()` takes its source port from. In
/// the gap before the child binds, another test's connection could take the
/// port and the child would exit with "address in use". Ports below the
/// range are never handed out by the kernel; the base differs per test
/// process so parallel test binaries walk different stretches.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = (10_000u32, ephemeral_low().min(32_768));
    let span = high - low;
    let base = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = (low + (base + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// The first port of the kernel's ephemeral range (Linux default 32768).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&low| low > 11_000)
        .unwrap_or(32_768)
}

/// A child process killed when the test lets go of it, also when an
/// assertion fails first: an orphan would keep its listeners and the test's
/// output pipes open.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to process `pid` (the way kubelet stops a container).
pub fn sigterm(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {pid}: {sent}");
}

/// Waits (blocking, up to 20 s) until the admin listener on `admin` says ready.
pub fn wait_ready(admin: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if admin_answer(admin, "/ready").is_some_and(|out| out.starts_with("HTTP/1.1 200")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("sidecar not ready");
}

/// The first whole answer (status line, headers, body) of the admin
/// listener on `admin` to `GET path`, waiting (blocking, up to 20 s) while
/// the listener is not up yet or drops the connection before answering.
pub fn wait_answer(admin: u16, path: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(out) = admin_answer(admin, path) {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("admin listener on port {admin} never answered {path}");
}

/// One `GET path` with `Connection: close`; None when the connection fails
/// or ends before a status line arrives.
fn admin_answer(admin: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 ").then_some(out)
}

/// A trust domain's CA plus a directory to write files into.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: DevCa,
}

impl Pki {
    pub fn new() -> Pki {
        Pki::for_domain(TD)
    }

    pub fn for_domain(td: &str) -> Pki {
        Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: DevCa::generate(td, time::Duration::days(1)).unwrap(),
        }
    }

    pub fn bundle_path(&self) -> PathBuf {
        let path = self.dir.path().join("bundle.pem");
        if !path.exists() {
            std::fs::write(&path, self.ca.cert_pem()).unwrap();
        }
        path
    }

    /// A correct SVID for `id`.
    pub fn svid(&self, id: &SpiffeId) -> Issued {
        self.ca
            .issue(&LeafSpec::svid(id.as_str(), time::Duration::hours(1)))
            .unwrap()
    }

    /// Writes `issued` as name.crt / name.key and returns (cert, key).
    pub fn write(&self, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{name}.crt"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        (cert, key)
    }

    pub fn identity(&self, name: &str, id: &SpiffeId) -> IdentityConfig {
        let (cert, key) = self.write(name, &self.svid(id));
        IdentityConfig {
            cert,
            key,
            bundle: self.bundle_path(),
            federated_bundles: Default::default(),
            workload_api: None,
        }
    }
}

/// What one request looked like when it reached the app.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP/1.1 app on loopback that records every request it gets.
pub struct RecordingApp {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl RecordingApp {
    pub async fn start() -> RecordingApp {
        let listener = TcpListener::bind(any_port()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let record = record.clone();
                        async move {
                            let entry = Seen {
                                method: req.method().to_string(),
                                target: req.uri().to_string(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                            };
                            record.lock().unwrap().push(entry);
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let mut resp = Response::new(Full::new(Bytes::from(format!(
                                "app ok, {} body bytes",
                                body.len()
                            ))));
                            resp.headers_mut()
                                .insert("x-app", "recording".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        RecordingApp { addr, seen }
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the app saw a request")
    }
}

/// Config of a sidecar with only an inbound listener.
pub fn inbound_config(identity: IdentityConfig, app: SocketAddr) -> Config {
    Config {
        identity,
        inbound: Some(InboundConfig {
            listen: any_port(),
            app,
            policy: None,
            strip_headers: Vec::new(),
            keep_underscore_headers: false,
            tcp_ports: Vec::new(),
            app_protocol: Default::default(),
            jwt: None,
        }),
        outbound: None,
        admin: AdminConfig { listen: any_port() },
        runtime: RuntimeConfig::default(),
        limits: Default::default(),
        shutdown: Default::default(),
        webhooks: None,
        assertion: None,
    }
}

/// Config of a sidecar with only an outbound listener routing `host` to `peer`.
pub fn outbound_config(
    identity: IdentityConfig,
    host: &str,
    peer: SocketAddr,
    expected: SpiffeId,
) -> Config {
    Config {
        identity,
        inbound: None,
        outbound: Some(OutboundConfig {
            listen: Some(any_port()),
            routes: vec![RouteConfig {
                host: Some(host.into()),
                listen: None,
                peer: peer.to_string(),
                identity: expected,
            }],
            ..Default::default()
        }),
        admin: AdminConfig { listen: any_port() },
        runtime: RuntimeConfig::default(),
        limits: Default::default(),
        shutdown: Default::default(),
        webhooks: None,
        assertion: None,
    }
}

/// A running inbound sidecar with the SVID of `default/<workload>`, in front of `app`.
pub async fn start_inbound(
    pki: &Pki,
    workload: &str,
    app: SocketAddr,
) -> meshguard::sidecar::app::Running {
    let identity = pki.identity(workload, &id("default", workload));
    meshguard::sidecar::app::start(&inbound_config(identity, app))
        .await
        .unwrap()
}

/// A running outbound sidecar of `default/client` routing `host` to the
/// inbound of `server`, which must prove `default/server`.
pub async fn start_outbound(
    pki: &Pki,
    host: &str,
    server: &meshguard::sidecar::app::Running,
) -> meshguard::sidecar::app::Running {
    let identity = pki.identity("client", &id("default", "client"));
    let peer = server.inbound.expect("the server has an inbound listener");
    meshguard::sidecar::app::start(&outbound_config(
        identity,
        host,
        peer,
        id("default", "server"),
    ))
    .await
    .unwrap()
}

/// Plain HTTP/1.1 request to `addr` with the given Host and extra headers.
pub async fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Accepts any server certificate: the test client is probing the
/// sidecar's verification of *client* certificates, not the reverse.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client presenting `chain_pem` (leaf first) with `key_pem`, or no
/// certificate at all.
pub fn tls_client(cert: Option<(&str, &str)>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let provider = meshguard::sidecar::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)));
    let mut config = match cert {
        Some((chain, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Connects to an inbound listener with `client`, sends one GET over
/// HTTP/1.1 (or HTTP/2 when negotiated) and returns the status, or the
/// error that stopped the exchange.
pub async fn tls_get(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("server.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut req = Request::get(format!("http://server.test{path}"));
    if !h2 {
        req = req.header("host", "server.test");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender.send_request(req).await.map_err(|e| e.to_string())?
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Sends raw request bytes over mTLS (for paths an HTTP library would
/// refuse or tidy up) and returns the raw response text.
pub async fn tls_raw(addr: SocketAddr, client: Arc<rustls::ClientConfig>, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("server.test").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut out),
    )
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of a raw HTTP/1.1 response.
pub fn status_of(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Fetches the admin /metrics page.
pub async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = http_get(admin, "admin", "/metrics", &[]).await;
    assert_eq!(status, 200);
    body
}

/// The value of the series `name` whose labels include all of `labels`,
/// summed over every matching series (None when there is none).
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (head, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match head.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (head, ""),
        };
        if metric != name {
            continue;
        }
        let have: Vec<(String, String)> = label_text
            .split("\",")
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                p.split_once("=\"")
                    .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
            })
            .collect();
        if labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    total
}

/// A TLS connection to `addr` made with `client` (the server name is
/// neither sent nor checked by the test verifier).
pub async fn tls_connect(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(client)
        .connect(ServerName::try_from("s.test").unwrap(), tcp)
        .await
        .unwrap()
}
