//! Inbound: terminate mTLS from peer sidecars, verify the caller's SVID,
//! and forward each request to the local app over a plain HTTP/1.1 pool
//! with only the identity meshguard itself authenticated.

use super::{refusal, ProxyBody};
use crate::headers::{self, PeerHeaders};
use crate::identity::SpiffeId;
use crate::tls::{handshake_failure, peer_identity, CredentialStore};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Time a peer gets to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The authenticated caller of one connection, computed once at handshake
/// time and shared by every request on that connection.
pub struct Peer {
    pub id: SpiffeId,
    pub addr: SocketAddr,
    headers: PeerHeaders,
}

/// The inbound proxy of one sidecar.
pub struct Inbound {
    tls: TlsAcceptor,
    store: Arc<CredentialStore>,
    app: Authority,
    client: Client<HttpConnector, Incoming>,
}

impl Inbound {
    pub fn new(
        store: Arc<CredentialStore>,
        tls: Arc<rustls::ServerConfig>,
        app: SocketAddr,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .http1_preserve_header_case(false)
            .build(connector);
        let app =
            Authority::try_from(app.to_string()).expect("a socket address is a valid authority");
        Arc::new(Inbound {
            tls: TlsAcceptor::from(tls),
            store,
            app,
            client,
        })
    }

    /// Accepts connections until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        tokio::spawn(self.clone().connection(tcp, addr));
                    }
                    Err(e) => {
                        tracing::warn!(direction = "inbound", error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, addr: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return log_refused_handshake(addr, &e),
            Err(_) => {
                tracing::warn!(direction = "inbound", peer_addr = %addr, reason = "handshake_timeout", "handshake refused: not completed within {HANDSHAKE_TIMEOUT:?}");
                return;
            }
        };
        let (_, session) = tls.get_ref();
        let Some((id, cert_hash)) = peer_identity(session.peer_certificates()) else {
            // Unreachable while the verifier requires a certificate; if it
            // ever happens, fail closed.
            tracing::error!(direction = "inbound", peer_addr = %addr, "handshake completed without a verifiable peer identity; closing");
            return;
        };
        let h2 = session.alpn_protocol() == Some(crate::tls::ALPN_H2);
        tracing::debug!(direction = "inbound", peer_addr = %addr, peer_id = %id, h2, "peer authenticated");
        let own = self.store.own_id();
        let headers = PeerHeaders::new(&id, &own, &cert_hash);
        let peer = Arc::new(Peer { id, addr, headers });
        let this = self.clone();
        let service = service_fn(move |req| {
            let (this, peer) = (this.clone(), peer.clone());
            async move { Ok::<_, Infallible>(this.handle(req, &peer).await) }
        });
        let io = TokioIo::new(tls);
        let result = if h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, service)
                .await
        } else {
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(io, service)
                .await
        };
        if let Err(e) = result {
            tracing::debug!(direction = "inbound", peer_addr = %addr, error = %e, "connection ended with an error");
        }
    }

    /// One request from an authenticated peer.
    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        // HTTP/2 carries the host in :authority; the app speaks HTTP/1.1.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(value) = parts
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, value);
            }
        }
        headers::strip_inbound(&mut parts.headers, &[]);
        peer.headers.apply(&mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = match Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.app.clone())
            .path_and_query(path)
            .build()
        {
            Ok(uri) => uri,
            Err(_) => return refusal(StatusCode::BAD_REQUEST, "invalid request target"),
        };
        parts.version = Version::HTTP_11;
        match self.client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Err(e) if e.is_connect() => {
                tracing::warn!(direction = "inbound", peer_id = %peer.id, error = %e, "local app unavailable");
                refusal(StatusCode::SERVICE_UNAVAILABLE, "local app unavailable")
            }
            Err(e) => {
                tracing::warn!(direction = "inbound", peer_id = %peer.id, error = %e, "local app failed");
                refusal(
                    StatusCode::BAD_GATEWAY,
                    "local app closed the connection without a response",
                )
            }
        }
    }
}

fn log_refused_handshake(addr: SocketAddr, err: &std::io::Error) {
    let (reason, detail) = handshake_failure(err);
    tracing::warn!(direction = "inbound", peer_addr = %addr, reason, detail = %detail, "handshake refused");
}
