//! The calibration pair of the benchmarks: the bare stack meshguard is built
//! on (tokio, hyper, rustls with aws-lc-rs), doing only the forwarding of a
//! sidecar pair, with no policy, no metrics, no header work, no limits.
//! What meshguard costs above this is what its features cost; what this costs
//! is the floor of the stack.
//!
//!   bare_pair out LISTEN PEER CERT KEY CA SERVER_NAME
//!       plain HTTP/1.1 in; every request on one multiplexed HTTP/2 mTLS
//!       connection to PEER
//!   bare_pair in LISTEN APP CERT KEY CA
//!       mTLS (client certificate required, verified against CA), HTTP/2 or
//!       HTTP/1.1 by ALPN; every request to APP over pooled HTTP/1.1
//!
//! One single-threaded runtime per process, like `meshguard run --workers 1`.
//! Built by `cargo build --release --example bare_pair`; run by
//! benches/pairs/run.sh as the pair `bare`.

use bytes::Bytes;
use http::{Request, Response, Uri};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["out", listen, peer, cert, key, ca, name] => {
            let tls = client_config(cert, key, ca)?;
            let name = ServerName::try_from(name.to_string())?;
            rt.block_on(outbound(listen.parse()?, peer.parse()?, tls, name))
        }
        ["in", listen, app, cert, key, ca] => {
            let tls = server_config(cert, key, ca)?;
            rt.block_on(inbound(listen.parse()?, app.parse()?, tls))
        }
        _ => Err(
            "usage: bare_pair out LISTEN PEER CERT KEY CA SERVER_NAME | in LISTEN APP CERT KEY CA"
                .into(),
        ),
    }
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    Ok(CertificateDer::pem_file_iter(path)?.collect::<Result<_, _>>()?)
}

fn roots(ca: &str) -> Result<rustls::RootCertStore, BoxError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(cert: &str, key: &str, ca: &str) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(certs(cert)?, PrivateKeyDer::from_pem_file(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn server_config(cert: &str, key: &str, ca: &str) -> Result<Arc<rustls::ServerConfig>, BoxError> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca)?),
        provider(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(cert)?, PrivateKeyDer::from_pem_file(key)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The app side of the pair: HTTP/1.1 from wrk, one HTTP/2 connection out.
async fn outbound(
    listen: SocketAddr,
    peer: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
) -> Result<(), BoxError> {
    let tcp = TcpStream::connect(peer).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let sender = sender.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| to_peer(req, sender.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// One request of the app, on the shared HTTP/2 connection.
async fn to_peer(
    mut req: Request<Incoming>,
    mut sender: http2::SendRequest<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri = Uri::builder()
        .scheme("http")
        .authority("peer")
        .path_and_query(path)
        .build()?;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    // HTTP/1.1 connection headers are not allowed in HTTP/2.
    req.headers_mut().remove(http::header::CONNECTION);
    req.headers_mut().remove(http::header::HOST);
    Ok(sender.send_request(req).await?)
}

type Idle = Arc<Mutex<Vec<http1::SendRequest<Incoming>>>>;

/// The peer side: mTLS in, pooled HTTP/1.1 to the app.
async fn inbound(
    listen: SocketAddr,
    app: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<(), BoxError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let idle: Idle = Arc::default();
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let (acceptor, idle) = (acceptor.clone(), idle.clone());
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = service_fn(move |req| forward(req, app, idle.clone()));
            let io = TokioIo::new(stream);
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            }
        });
    }
}

/// One request to the app on an idle pooled connection or a new one; the
/// connection goes back to the pool when the response body ends.
async fn forward(
    mut req: Request<Incoming>,
    app: SocketAddr,
    idle: Idle,
) -> Result<Response<Pooled>, BoxError> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    *req.uri_mut() = Uri::try_from(path)?;
    *req.version_mut() = http::Version::HTTP_11;
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("app"));
    }
    let mut sender = match checkout(&idle).await {
        Some(sender) => sender,
        None => {
            let tcp = TcpStream::connect(app).await?;
            tcp.set_nodelay(true)?;
            let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender
        }
    };
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|body| Pooled {
        body,
        sender: Some(sender),
        idle,
    }))
}

/// An idle connection the app has not closed, if there is one.
async fn checkout(idle: &Idle) -> Option<http1::SendRequest<Incoming>> {
    loop {
        let mut sender = idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        if !sender.is_closed() && sender.ready().await.is_ok() {
            return Some(sender);
        }
    }
}

/// A response body that returns its connection to the pool at its end.
struct Pooled {
    body: Incoming,
    sender: Option<http1::SendRequest<Incoming>>,
    idle: Idle,
}

impl Pooled {
    fn check_in(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sender);
        }
    }
}

// hyper may stop polling once `is_end_stream` is true, so the end is also
// seen at drop; a body dropped before its end leaves the connection busy, so
// it is not pooled.
impl Drop for Pooled {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.check_in();
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.check_in();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
