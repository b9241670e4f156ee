//! Outbound: the local app speaks plain HTTP/1.1 to meshguard; each request
//! is matched to a declared route and sent over mTLS to the peer sidecar,
//! which must prove the SPIFFE ID declared for that route. Undeclared
//! destinations are refused: nothing leaves for a place nobody declared.

use super::pool::{Http1Pool, Http2Conn, UpstreamBody, UpstreamError};
use super::serve::{
    accept_loop, close_if_draining, http1_builder, Activity, ConnectionTracker, Control, Tracked,
};
use super::transparent::{original_destination, passthrough, Destinations, Target};
use super::{
    canonical_host, log_connection_error, refusal, ConnectError, CountingIo, PeerConnector,
    ProxyBody,
};
use crate::sidecar::audit::{self, RequestRecord};
use crate::sidecar::config::LimitsConfig;
use crate::sidecar::config::{OutboundConfig, RouteConfig};
use crate::sidecar::headers;
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Decision, Metrics, RequestCounters};
use crate::sidecar::tls::{outbound_client_config, CredentialStore, TlsError, UpstreamProtocol};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Time allowed for TCP connect plus TLS handshake to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection to a peer sidecar is kept: below the
/// peer's default header read timeout (15 s), which also closes idle
/// HTTP/1 keep-alive connections, so we never reuse one it is closing.
pub const PEER_POOL_IDLE: Duration = Duration::from_secs(10);

/// One declared destination with its own pool of mTLS connections.
pub struct Route {
    pub peer: Arc<str>,
    pub identity: SpiffeId,
    upstream: Upstream,
    counters: RequestCounters,
}

/// The mTLS connections of one route, by the protocol of the hop.
enum Upstream {
    Http1(Http1Pool<PeerConnector>),
    Http2(Http2Conn<PeerConnector>),
}

impl Upstream {
    /// The request target on this hop: origin-form for HTTP/1.1 (the
    /// authority travels in Host), absolute for HTTP/2, where it becomes
    /// `:scheme` and `:authority`.
    fn uri(&self, authority: Authority, target: PathAndQuery) -> Result<Uri, http::Error> {
        match self {
            Upstream::Http1(_) => Ok(Uri::from(target)),
            Upstream::Http2(_) => Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(target)
                .build(),
        }
    }

    async fn send(
        &self,
        mut req: Request<Incoming>,
        authority: Authority,
    ) -> Result<Response<UpstreamBody>, UpstreamError<ConnectError>> {
        match self {
            Upstream::Http1(pool) => {
                if !req.headers().contains_key(header::HOST) {
                    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                        req.headers_mut().insert(header::HOST, host);
                    }
                }
                *req.version_mut() = http::Version::HTTP_11;
                pool.send(req).await
            }
            Upstream::Http2(conn) => conn.send(req).await,
        }
    }
}

impl Route {
    fn new(
        store: &Arc<CredentialStore>,
        cfg: &RouteConfig,
        protocol: UpstreamProtocol,
        max_idle: usize,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Route>, TlsError> {
        let tls = outbound_client_config(store, cfg.identity.clone(), protocol)?;
        let connector = PeerConnector::new(
            &cfg.peer,
            tls,
            CONNECT_TIMEOUT,
            metrics.clone(),
            store.clone(),
        );
        let upstream = match protocol {
            UpstreamProtocol::Http1 => {
                Upstream::Http1(Http1Pool::new(connector, max_idle, PEER_POOL_IDLE))
            }
            UpstreamProtocol::Http2 => {
                Upstream::Http2(Http2Conn::new(connector, PEER_POOL_IDLE, max_idle > 0))
            }
        };
        let counters =
            metrics.request_counters("outbound", metrics.peer_label(cfg.identity.as_str()));
        Ok(Arc::new(Route {
            peer: Arc::from(cfg.peer.as_str()),
            identity: cfg.identity.clone(),
            upstream,
            counters,
        }))
    }
}

/// The outbound side of one sidecar: routes by Host on the shared
/// listener, plus routes that own a listener.
pub struct Outbound {
    by_host: HashMap<String, Arc<Route>>,
    metrics: Arc<Metrics>,
    store: Arc<CredentialStore>,
    limits: LimitsConfig,
    /// Counters of requests refused before a route was chosen.
    unrouted: RequestCounters,
    /// Routes with a listener of their own, in config order.
    pub listener_routes: Vec<(std::net::SocketAddr, Arc<Route>)>,
    /// Transparently captured traffic, by original destination.
    destinations: Destinations,
    protocol: UpstreamProtocol,
    max_idle: usize,
}

impl Outbound {
    pub fn new(
        store: &Arc<CredentialStore>,
        cfg: &OutboundConfig,
        metrics: Arc<Metrics>,
        limits: LimitsConfig,
    ) -> Result<Arc<Self>, TlsError> {
        let mut by_host = HashMap::new();
        let mut listener_routes = Vec::new();
        let max_idle = cfg.max_idle_per_peer.unwrap_or(usize::MAX);
        for route_cfg in &cfg.routes {
            let route = Route::new(store, route_cfg, cfg.protocol, max_idle, &metrics)?;
            if let Some(host) = &route_cfg.host {
                by_host.insert(host.to_ascii_lowercase(), route);
            } else if let Some(listen) = route_cfg.listen {
                listener_routes.push((listen, route));
            }
        }
        let unrouted = metrics.request_counters("outbound", "none".to_owned());
        Ok(Arc::new(Outbound {
            by_host,
            metrics,
            store: store.clone(),
            limits,
            unrouted,
            listener_routes,
            destinations: Destinations::new(cfg.destinations.clone(), cfg.undeclared),
            protocol: cfg.protocol,
            max_idle,
        }))
    }

    /// Serves app connections on `listener` until a drain starts. With
    /// `fixed`, every request takes that route; otherwise the route is
    /// chosen by Host.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        fixed: Option<Arc<Route>>,
        drain: watch::Receiver<bool>,
        tracker: ConnectionTracker,
    ) {
        let max = self.limits.max_connections;
        let this = self.clone();
        accept_loop(
            listener,
            "outbound",
            max,
            drain.clone(),
            tracker,
            move |tcp, addr, tracked| {
                this.clone()
                    .connection(tcp, addr, fixed.clone(), drain.clone(), tracked)
            },
        )
        .await
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: std::net::SocketAddr,
        fixed: Option<Arc<Route>>,
        drain: watch::Receiver<bool>,
        tracked: Tracked,
    ) {
        let _ = tcp.set_nodelay(true);
        let target = match fixed {
            Some(route) => Target::Route(route),
            None => match original_destination(&tcp) {
                Some(dst) => self.destinations.target(dst, |cfg| {
                    Route::new(
                        &self.store,
                        cfg,
                        self.protocol,
                        self.max_idle,
                        &self.metrics,
                    )
                    .inspect_err(
                        |e| tracing::error!(destination = %dst, error = %e, "cannot build a route"),
                    )
                    .ok()
                }),
                None => Target::ByHost,
            },
        };
        if let Target::Passthrough(dst) = target {
            tracing::info!(target: crate::sidecar::audit::TARGET, event = "passthrough", direction = "outbound", destination = %dst, decision = "allow", reason = "undeclared destination, passthrough chosen", "forwarding unauthenticated TCP");
            return passthrough(tcp, dst).await;
        }
        let activity = Arc::new(Activity::default());
        let control = Control {
            drain,
            idle_timeout: self.limits.idle_timeout(),
            activity: activity.clone(),
            revoked: None,
            multiplexed: false,
        };
        let this = self.clone();
        let closing = tracked.closing_flag();
        let service = service_fn(move |req| {
            let (this, target, in_flight, closing) = (
                this.clone(),
                target.clone(),
                activity.request(),
                closing.clone(),
            );
            async move {
                let mut resp = this.handle(req, &target).await;
                close_if_draining(&closing, true, &mut resp);
                drop(in_flight);
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(CountingIo::new(tcp, None, Some(control.activity.clone())));
        let result = crate::serve_controlled!(
            http1_builder(&self.limits).serve_connection(io, service),
            control,
            "outbound",
            addr
        );
        if let Err(e) = result {
            log_connection_error("outbound", addr, &e);
        }
    }

    /// The route for a request's authority: `host:port` first, then `host`.
    pub fn route_for(&self, authority: &str) -> Option<&Arc<Route>> {
        let lower;
        let authority = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = authority.to_ascii_lowercase();
            lower.as_str()
        } else {
            authority
        };
        self.by_host.get(authority).or_else(|| {
            let (host, port) = authority.rsplit_once(':')?;
            port.parse::<u16>().ok()?;
            self.by_host.get(host)
        })
    }

    async fn handle(&self, req: Request<Incoming>, target: &Target) -> Response<ProxyBody> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        if let Err(reason) = canonical_host(&mut parts) {
            let (method, path) = (parts.method.clone(), parts.uri.path().to_owned());
            let refused = (StatusCode::BAD_REQUEST, "ambiguous host");
            return self.refuse(None, &method, &path, refused, reason, start);
        }
        // The URI leaves `parts` (a new one is built below) and the Host
        // value is shared, not copied, so that routing and the audit line
        // borrow them without a per-request allocation.
        let uri = std::mem::take(&mut parts.uri);
        let host = parts.headers.get(header::HOST).cloned();
        let authority = uri
            .authority()
            .map(Authority::as_str)
            .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()));
        let method = parts.method.clone();
        let path = uri.path();
        const UNDECLARED: (StatusCode, &str) = (StatusCode::FORBIDDEN, "undeclared destination");
        let route = match (target, authority) {
            (Target::Route(route), _) => route.as_ref(),
            // Captured to an address no destination rule declares: a
            // declared Host route still applies (an app calling a Service
            // by name), anything else is refused.
            (Target::Undeclared(dst) | Target::Passthrough(dst), authority) => {
                match authority.and_then(|a| self.route_for(a)) {
                    Some(route) => route.as_ref(),
                    None => {
                        let message = format_args!(
                            "destination {dst} is not declared in outbound destinations or routes"
                        );
                        return self.refuse(None, &method, path, UNDECLARED, message, start);
                    }
                }
            }
            (Target::ByHost, Some(authority)) => match self.route_for(authority) {
                Some(route) => route.as_ref(),
                None => {
                    let message = format_args!(
                        "destination {authority:?} is not declared in outbound routes"
                    );
                    return self.refuse(None, &method, path, UNDECLARED, message, start);
                }
            },
            (Target::ByHost, None) => {
                let refused = (StatusCode::BAD_REQUEST, "no host");
                let message = "request has no Host; cannot choose a destination";
                return self.refuse(None, &method, path, refused, message, start);
            }
        };
        if !self.store.svid_is_valid_now() {
            let refused = (StatusCode::SERVICE_UNAVAILABLE, "own SVID expired");
            let message = "own SVID has expired and no valid replacement is loaded";
            return self.refuse(Some(route), &method, path, refused, message, start);
        }
        headers::strip_outbound(&mut parts.headers);
        let target = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        // What the peer sees as the authority (Host, or :authority over
        // HTTP/2); where the request goes is fixed by the route's connector.
        let uri_authority = match uri.authority() {
            Some(a) => a.clone(),
            None => authority
                .and_then(|a| Authority::try_from(a).ok())
                .unwrap_or_else(|| Authority::from_static("peer")),
        };
        parts.uri = match route.upstream.uri(uri_authority.clone(), target) {
            Ok(uri) => uri,
            Err(_) => {
                let refused = (StatusCode::BAD_REQUEST, "invalid request target");
                let message = "invalid request target";
                return self.refuse(Some(route), &method, path, refused, message, start);
            }
        };
        let request = Request::from_parts(parts, body);
        let (resp, reason) = match route.upstream.send(request, uri_authority).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                (
                    Response::from_parts(parts, Either::Left(body)),
                    "forwarded to peer",
                )
            }
            Err(UpstreamError::Connect(err)) => {
                (refusal(StatusCode::BAD_GATEWAY, &err), err.reason_label())
            }
            Err(UpstreamError::Http(e)) => {
                tracing::warn!(direction = "outbound", peer = %route.peer, error = %e, "peer failed");
                let resp = refusal(
                    StatusCode::BAD_GATEWAY,
                    format_args!(
                        "peer {} closed the connection without a response",
                        route.peer
                    ),
                );
                (resp, "peer failed")
            }
        };
        self.record(
            Some(route),
            &method,
            path,
            Decision::Allow,
            reason,
            resp,
            start,
        )
    }

    /// A request meshguard refuses itself: the plain-text refusal with
    /// `message`, counted and audited as denied with the short `reason`.
    fn refuse(
        &self,
        route: Option<&Route>,
        method: &http::Method,
        path: &str,
        (status, reason): (StatusCode, &str),
        message: impl std::fmt::Display,
        start: Instant,
    ) -> Response<ProxyBody> {
        let resp = refusal(status, message);
        self.record(route, method, path, Decision::Deny, reason, resp, start)
    }

    /// Counts the request and writes its audit line.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        route: Option<&Route>,
        method: &http::Method,
        path: &str,
        decision: Decision,
        reason: &str,
        resp: Response<ProxyBody>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let duration = start.elapsed();
        let status = resp.status().as_u16();
        let counters = route.map_or(&self.unrouted, |r| &r.counters);
        self.metrics
            .record_request(counters, decision, status, duration.as_secs_f64());
        audit::request(&RequestRecord {
            direction: "outbound",
            peer_addr: route.map(|r| &*r.peer),
            peer_id: route.map(|r| &r.identity),
            method: method.as_str(),
            path,
            decision,
            rule: None,
            status,
            duration,
            reason,
        });
        resp
    }
}
