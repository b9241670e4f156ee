//! `meshguard webhook`: the injector as an HTTPS mutating admission
//! webhook. `POST /mutate` takes an AdmissionReview and answers with the
//! JSON Patch that injects the object (see [`admission`](super::admission));
//! `GET /healthz` says it is up.
//!
//! TLS is server-auth only (the apiserver presents no client certificate
//! unless configured to), TLS 1.3 with meshguard's crypto provider. The
//! serving certificate and key are read from files, and read again every
//! `--reload-interval` seconds: a changed pair that loads and matches
//! serves the next handshakes (cert-manager renews the Secret, the
//! kubelet swaps the files); one that does not is logged and the old pair
//! stays. After the shutdown signal it keeps accepting for
//! `--shutdown-delay` seconds (the apiserver may still dial a pod whose
//! endpoint is being removed), then lets open requests finish.

use super::admission::{self, BadReview};
use super::cli::{InjectCliError, InjectorArgs};
use super::InjectOptions;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest AdmissionReview accepted (the apiserver's own request limit is
/// 3 MiB; a pod is far smaller).
pub const MAX_BODY: usize = 4 << 20;

/// Time a client gets for the TLS handshake, and for sending a body.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve the injector as a mutating admission webhook over HTTPS.
#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address to serve HTTPS on (`[::]:8443` for IPv6 too).
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Serving certificate chain, leaf first (PEM).
    #[arg(long)]
    pub cert: PathBuf,
    /// Private key of the serving certificate (PEM).
    #[arg(long)]
    pub key: PathBuf,
    /// Seconds between two reads of --cert and --key; a changed pair is
    /// used for new connections.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub reload_interval: u64,
    /// Seconds to keep accepting after SIGTERM, while the endpoint is
    /// taken out of the Service (the apiserver may still dial this pod).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=300))]
    pub shutdown_delay: u64,
    #[command(flatten)]
    pub injector: InjectorArgs,
    #[command(flatten)]
    pub log: crate::sidecar::logging::LogArgs,
}

/// Why the webhook cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Options(#[from] InjectCliError),
    #[error("serving certificate: {0}")]
    Cert(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Runtime(#[from] crate::sidecar::runtime::RuntimeError),
    #[error(transparent)]
    LocalAddr(std::io::Error),
}

/// Runs `meshguard webhook`: serves until SIGTERM or Ctrl-C.
pub fn run(args: &WebhookArgs) -> Result<(), WebhookError> {
    crate::sidecar::runtime::build(2)?.block_on(async {
        let webhook = Webhook::bind(args).await?;
        let mut signals = crate::sidecar::runtime::StopSignals::install();
        // Tests and scripts read the address (useful with port 0).
        let addr = webhook.local_addr().map_err(WebhookError::LocalAddr)?;
        println!("meshguard webhook: listening on https://{addr}");
        webhook
            .serve(async move {
                signals.next().await;
            })
            .await;
        Ok(())
    })
}

/// A bound, not yet serving, webhook.
pub struct Webhook {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    cert: Arc<ServingCert>,
    opts: Arc<InjectOptions>,
    /// Digest of the certificate files as loaded.
    loaded: [u8; 32],
    reload_interval: Duration,
    shutdown_delay: Duration,
}

impl Webhook {
    /// Checks the options, loads the certificate and binds the port.
    pub async fn bind(args: &WebhookArgs) -> Result<Webhook, WebhookError> {
        let opts = Arc::new(args.injector.options()?);
        let provider = crate::sidecar::tls::crypto_provider();
        let pair = load_pair(&args.cert, &args.key, &provider).map_err(WebhookError::Cert)?;
        let cert = Arc::new(ServingCert {
            cert_path: args.cert.clone(),
            key_path: args.key.clone(),
            current: ArcSwap::new(pair.certified),
            provider: provider.clone(),
        });
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(cert.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener =
            TcpListener::bind(args.listen)
                .await
                .map_err(|source| WebhookError::Bind {
                    addr: args.listen,
                    source,
                })?;
        Ok(Webhook {
            listener,
            tls: Arc::new(tls),
            cert,
            opts,
            loaded: pair.digest,
            reload_interval: Duration::from_secs(args.reload_interval),
            shutdown_delay: Duration::from_secs(args.shutdown_delay),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes and the shutdown delay has
    /// passed, then stops accepting, lets the open connections finish
    /// their requests (up to a deadline) and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let delay = self.shutdown_delay;
        let shutdown = async move {
            shutdown.await;
            tracing::info!(
                delay_secs = delay.as_secs(),
                "webhook: shutdown requested; still accepting during the delay"
            );
            tokio::time::sleep(delay).await;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let reloader = tokio::spawn(self.cert.clone().watch(
            self.loaded,
            self.reload_interval,
            stop_rx.clone(),
        ));
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while conns.try_join_next().is_some() {}
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off.
                        tracing::warn!(error = %e, "webhook: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, opts, stop) = (acceptor.clone(), self.opts.clone(), stop_rx.clone());
            conns.spawn(connection(acceptor, tcp, peer, opts, stop));
        }
        tracing::info!(open = conns.len(), "webhook: shutting down");
        let _ = stop_tx.send(true);
        drop(self.listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                open = conns.len(),
                "webhook: connections still open at the deadline"
            );
        }
        reloader.abort();
    }
}

/// One client connection: handshake, then HTTP/1.1 or HTTP/2 (ALPN).
async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    opts: Arc<InjectOptions>,
    mut stop: watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "webhook: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "webhook: TLS handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let opts = opts.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, &opts).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = async { drop(stop.wait_for(|s| *s).await) } => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "webhook: connection ended with an error");
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, format!("use {allow}\n"));
    resp.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    resp
}

/// Routes one request. Never fails: every problem is an HTTP answer.
pub async fn handle<B>(req: Request<B>, opts: &InjectOptions) -> Response<Full<Bytes>>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    match (req.uri().path(), req.method()) {
        ("/healthz", &Method::GET | &Method::HEAD) => text(StatusCode::OK, "ok\n"),
        ("/healthz", _) => not_allowed("GET"),
        ("/mutate", &Method::POST) => mutate(req, opts).await,
        ("/mutate", _) => not_allowed("POST"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: POST /mutate, GET /healthz\n",
        ),
    }
}

async fn mutate<B>(req: Request<B>, opts: &InjectOptions) -> Response<Full<Bytes>>
where
    B: hyper::body::Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("AdmissionReview larger than {MAX_BODY} bytes\n"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(CLIENT_TIMEOUT, body).await {
        Err(_) => return text(StatusCode::REQUEST_TIMEOUT, "body not received in time\n"),
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(),
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match admission::review(&body, opts) {
        Ok(reviewed) => {
            tracing::info!("webhook: {}", reviewed.summary);
            let json = serde_json::to_vec(&reviewed.review).unwrap_or_default();
            let mut resp = Response::new(Full::new(Bytes::from(json)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(BadReview(message)) => {
            tracing::warn!("webhook: bad request: {message}");
            text(StatusCode::BAD_REQUEST, format!("{message}\n"))
        }
    }
}

/// The serving certificate, swapped in place when its files change.
#[derive(Debug)]
struct ServingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    provider: Arc<CryptoProvider>,
}

/// A loaded pair and the digest of the file contents it came from.
struct Loaded {
    certified: Arc<CertifiedKey>,
    digest: [u8; 32],
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl ServingCert {
    /// Polls the files by content; a new pair that loads replaces the old.
    /// `last` is the digest of what is loaded now.
    async fn watch(
        self: Arc<Self>,
        mut last: [u8; 32],
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut unreadable = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let Some(digest) = digest_of(&self.cert_path, &self.key_path).await else {
                if !unreadable {
                    tracing::warn!(cert = %self.cert_path.display(), key = %self.key_path.display(),
                        "webhook: serving certificate files unreadable; keeping the loaded pair");
                }
                unreadable = true;
                continue;
            };
            unreadable = false;
            if digest == last {
                continue;
            }
            // A refused pair is not tried again until the files change.
            last = digest;
            match load_pair(&self.cert_path, &self.key_path, &self.provider) {
                Ok(pair) => {
                    last = pair.digest;
                    self.current.store(pair.certified);
                    tracing::info!(cert = %self.cert_path.display(), "webhook: serving certificate reloaded");
                }
                Err(e) => tracing::warn!(
                    "webhook: new serving certificate refused, keeping the loaded one: {e}"
                ),
            }
        }
    }
}

/// SHA-256 over both files (with the certificate's length, so moving
/// bytes from one file to the other changes it), or None when unreadable.
async fn digest_of(cert: &Path, key: &Path) -> Option<[u8; 32]> {
    let cert = tokio::fs::read(cert).await.ok()?;
    let key = tokio::fs::read(key).await.ok()?;
    Some(digest(&cert, &key))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut all = (cert.len() as u64).to_be_bytes().to_vec();
    all.extend_from_slice(cert);
    all.extend_from_slice(key);
    crate::sidecar::tls::sha256(&all)
}

/// Reads and checks a certificate chain and its key.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE in the PEM file",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    let certified = CertifiedKey::from_der(chain, private, provider).map_err(|e| {
        format!(
            "{} with {}: {e} (does the key belong to the certificate?)",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Loaded {
        certified: Arc::new(certified),
        digest: digest(&cert_pem, &key_pem),
    })
}
