//! The apps that tests/probes.rs probes: an HTTP/1.1 app (plain or TLS)
//! that records every request it gets, and an h2c gRPC health server.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshguard::dev::certs::{DevCa, LeafSpec};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One request as the app got it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub target: String,
    pub headers: HeaderMap,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub type Log = Arc<Mutex<Vec<Seen>>>;

pub struct App {
    pub addr: SocketAddr,
    pub seen: Log,
}

impl App {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn targets(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.target.clone())
            .collect()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// The HTTP app on `bind` (e.g. `127.0.0.1:0`); over TLS when `tls` is set.
pub async fn http_app(bind: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> App {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Log::default();
    let log = seen.clone();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (log, tls) = (log.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(route(req, &log, scheme, addr).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(cfg) => {
                        if let Ok(tls) = TlsAcceptor::from(cfg).accept(tcp).await {
                            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    App { addr, seen }
}

fn reply(status: u16, location: Option<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("app says {status}\n"))));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    if let Some(l) = location {
        resp.headers_mut().insert("location", l.parse().unwrap());
    }
    resp
}

async fn route(
    req: Request<Incoming>,
    log: &Log,
    scheme: &str,
    addr: SocketAddr,
) -> Response<Full<Bytes>> {
    let target = req.uri().to_string();
    log.lock().unwrap().push(Seen {
        target: target.clone(),
        headers: req.headers().clone(),
    });
    let here = format!("{scheme}://{addr}");
    match req.uri().path() {
        "/healthz" => reply(200, None),
        "/fail" => reply(500, None),
        "/teapot" => reply(418, None),
        "/redirect" => reply(302, Some("/healthz".into())),
        "/dir/redirect-relative" => reply(301, Some("../healthz".into())),
        "/redirect-abs" => reply(307, Some(format!("{here}/healthz"))),
        "/redirect-fail" => reply(302, Some("/fail".into())),
        "/redirect-away" => reply(302, Some("http://probe-target.invalid/healthz".into())),
        "/redirect-nowhere" => reply(302, None),
        "/loop" => reply(302, Some("/loop".into())),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reply(200, None)
        }
        "/counted" => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            reply(200, None)
        }
        "/query" if req.uri().query() == Some("probe=1&x=%20y") => reply(200, None),
        "/query" => reply(400, None),
        "/header"
            if req.headers().get("x-probe").is_some_and(|v| v == "yes")
                && req
                    .headers()
                    .get("host")
                    .is_some_and(|v| v == "probe.example") =>
        {
            reply(200, None)
        }
        "/header" => reply(403, None),
        _ => reply(404, None),
    }
}

/// A server config with a certificate from a throwaway dev CA (nothing
/// trusts it; the probe must not care), for the given TLS versions.
pub fn tls_server(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let ca = DevCa::generate("probe.test", time::Duration::hours(1)).unwrap();
    let mut spec = LeafSpec::svid("spiffe://probe.test/app", time::Duration::hours(1));
    spec.dns = vec!["app.example".into()];
    let leaf = ca.issue(&spec).unwrap();
    let chain = vec![
        CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap(),
        CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap(),
    ];
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// A gRPC health server over h2c. Service "" and "ok" are SERVING, "down"
/// is NOT_SERVING, "unimplemented" gets a trailers-only UNIMPLEMENTED,
/// anything else a trailers-only NOT_FOUND (as grpc-go's health server).
pub async fn grpc_app() -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Log::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(health(req, &log).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    App { addr, seen }
}

async fn health(req: Request<Incoming>, log: &Log) -> Response<BoxBody<Bytes, Infallible>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // Frame: flag, u32 length; message: optional field 1 (0x0A, len < 128).
    let message = body.get(5..).unwrap_or_default();
    let service = match message {
        [0x0A, len, rest @ ..] if rest.len() == usize::from(*len) => {
            String::from_utf8_lossy(rest).into_owned()
        }
        _ => String::new(),
    };
    let mut headers = parts.headers.clone();
    headers.insert("x-test-service", service.parse().unwrap());
    log.lock().unwrap().push(Seen {
        target: parts.uri.path().to_owned(),
        headers,
    });
    let status = match service.as_str() {
        "" | "ok" => 1u8,
        "down" => 2,
        "unimplemented" => return trailers_only("12"),
        _ => return trailers_only("5"),
    };
    let frame = Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    let body = Full::new(frame).with_trailers(async move { Some(Ok(trailers)) });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body.boxed())
        .unwrap()
}

fn trailers_only(code: &str) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .header("content-type", "application/grpc")
        .header("grpc-status", code)
        .body(Empty::new().boxed())
        .unwrap()
}
