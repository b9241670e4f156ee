//! `webhooks.listen`: the listener for callers that hold no client
//! certificate (a provider, or an ingress that is not a mesh peer). TLS
//! with our SVID as the server certificate, or plain behind a trusted
//! ingress (`tls: false`). Only declared webhook routes are served, and
//! only with a valid signature; everything else gets 404.

use super::route::{Verdict, Webhooks};
use crate::sidecar::assertion::Assertion;
use crate::sidecar::config::LimitsConfig;
use crate::sidecar::headers::{self, RequestRules};
use crate::sidecar::pathnorm::normalize_path;
use crate::sidecar::proxy::pool::UpstreamBody;
use crate::sidecar::proxy::serve::ConnectionTracker;
use crate::sidecar::proxy::serve::{accept_loop, serve, Activity, Connection, Control, Tracked};
use crate::sidecar::proxy::{canonical_host, refusal, Direction, ProxyBody};
use crate::sidecar::tls::{crypto_provider, CredentialStore, TlsError, ALPN_HTTP11};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// The route a forwarded webhook took, for the app.
pub const ROUTE_HEADER: &str = "x-meshguard-webhook-route";
const ROUTE: HeaderName = HeaderName::from_static(ROUTE_HEADER);

/// TLS 1.3 (and 1.2, which some providers still use) without client
/// authentication, our SVID taken from `store` at every handshake.
pub fn server_config(store: &Arc<CredentialStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

pub struct WebhookListener {
    pub webhooks: Arc<Webhooks>,
    pub tls: Option<TlsAcceptor>,
    pub app: SocketAddr,
    pub limits: LimitsConfig,
    pub assertion: Option<Arc<Assertion>>,
}

impl WebhookListener {
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        drain: watch::Receiver<bool>,
        tracker: ConnectionTracker,
    ) {
        let max = self.limits.max_connections;
        let this = self.clone();
        accept_loop(
            listener,
            Direction::Inbound,
            max,
            drain.clone(),
            tracker,
            move |tcp, addr, tracked| this.clone().connection(tcp, addr, drain.clone(), tracked),
        )
        .await
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        drain: watch::Receiver<bool>,
        tracked: Tracked,
    ) {
        let _ = tcp.set_nodelay(true);
        let control = Control {
            drain,
            idle_timeout: self.limits.idle_timeout(),
            activity: Arc::new(Activity::default()),
            revoked: None,
            multiplexed: false,
        };
        let conn = Connection {
            direction: Direction::Inbound,
            peer: addr,
            h2: false,
            control,
            closing: tracked.closing_flag(),
        };
        let this = self.clone();
        let handle = move |req| this.clone().handle(req, addr);
        match &self.tls {
            None => serve(TokioIo::new(tcp), &self.limits, conn, handle).await,
            Some(acceptor) => {
                let timeout = self.limits.handshake_timeout();
                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => serve(TokioIo::new(tls), &self.limits, conn, handle).await,
                    _ => {
                        tracing::debug!(peer_addr = %addr, "webhook listener: TLS handshake failed")
                    }
                }
            }
        }
    }

    /// One request: its route (or 404), the check, then the app.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        addr: SocketAddr,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        if canonical_host(&mut parts).is_err() {
            return refusal(StatusCode::BAD_REQUEST, "ambiguous host");
        }
        let raw = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let Ok(path) = normalize_path(&raw) else {
            return refusal(StatusCode::BAD_REQUEST, "invalid path");
        };
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let Some(route) = self.webhooks.route_for(host, None, path.as_path()) else {
            self.webhooks.record("none", &addr, "no_route", 404);
            return refusal(StatusCode::NOT_FOUND, "no webhook route here");
        };
        let name = route.cfg.name.as_str();
        let verified = match self.webhooks.check(route, &parts.headers, body).await {
            Verdict::Forward(verified) => verified,
            Verdict::Refuse(status, reason, message) => {
                self.webhooks.record(name, &addr, reason, status.as_u16());
                if status == StatusCode::OK {
                    return Response::new(Either::Right(Full::new(bytes::Bytes::new())));
                }
                return refusal(status, message);
            }
        };
        // Forwarded as received (the verified bytes); only identity and
        // hop-by-hop headers are removed, and ours added.
        let target = path.to_request_target().into_owned();
        headers::strip_request(&mut parts.headers, &RequestRules::default());
        if let Ok(v) = HeaderValue::from_str(name) {
            parts.headers.insert(ROUTE, v);
        }
        if let Some(a) = &self.assertion {
            let caller = format!("webhook:{name}");
            let now = crate::sidecar::tls::unix_now();
            a.stamp(
                &mut parts.headers,
                &caller,
                parts.method.as_str(),
                &target,
                now,
            );
        }
        let Ok(uri) = http::Uri::try_from(target) else {
            return refusal(StatusCode::BAD_REQUEST, "invalid path");
        };
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let sent = self
            .webhooks
            .deliver(name, &addr, self.app, parts, verified);
        match sent.await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(UpstreamBody::shared(body)))
            }
            Err(_) => refusal(StatusCode::BAD_GATEWAY, "local app unavailable"),
        }
    }
}
