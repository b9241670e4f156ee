//! Outbound: the local app speaks plain HTTP/1.1 to meshguard; each request
//! is matched to a declared route and sent over mTLS to the peer sidecar,
//! which must prove the SPIFFE ID declared for that route. Undeclared
//! destinations are refused: nothing leaves for a place nobody declared.
//!
//! The steps of one request, in order: normalise (one Host), select the
//! route, rewrite (target and headers), forward, record (metrics + audit line).

use super::outcome::{self, Answer, Began, Refusal, RequestFacts, Ruling};
use super::pool::UpstreamError;
use super::serve::{accept_loop, serve, Activity, Connection, ConnectionTracker, Control, Tracked};
use super::sniff;
use super::tcp::TcpOutbound;
use super::transparent::{original_destination, Destination, Destinations, Routing};
use super::upgrade;
use route::{Hop, HopSettings, Upstream};
pub use route::{Route, CONNECT_TIMEOUT, PEER_POOL_IDLE};

mod route;
use super::{canonical_host, refusal, ConnectError, CountingIo, Direction, ProxyBody};
use crate::sidecar::config::LimitsConfig;
use crate::sidecar::config::OutboundConfig;
use crate::sidecar::egress::{self, AppRequest, Egress};
use crate::sidecar::headers::{self, RequestRules, APP_H2, APP_PROTOCOL};
use crate::sidecar::metrics::{Disposition, Metrics, RequestCounters};
use crate::sidecar::tls::{CredentialStore, TlsError};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How a request the route forwarded is recorded.
const ALLOWED: Ruling<'static> = Ruling {
    disposition: Disposition::Allow,
    reason: "forwarded to peer",
    rule: None,
};

/// The answer when the peer could not answer: meshguard's own 502, with
/// why (connect, handshake, or a connection lost before the response).
fn peer_failed(route: &Route, err: UpstreamError<ConnectError>) -> Answer<'static> {
    match err {
        UpstreamError::Connect(err) => ALLOWED
            .because(err.reason_label())
            .answer(refusal(StatusCode::BAD_GATEWAY, &err)),
        UpstreamError::Http(e) => {
            let direction = Direction::Outbound.as_str();
            tracing::warn!(direction, peer = %route.peer, error = %e, "peer failed");
            let message = format_args!(
                "peer {} closed the connection without a response",
                route.peer
            );
            ALLOWED
                .because("peer failed")
                .answer(refusal(StatusCode::BAD_GATEWAY, message))
        }
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
    pub listener_routes: Vec<(SocketAddr, Arc<Route>)>,
    /// Transparently captured traffic, by original destination.
    destinations: Destinations<Route>,
    /// How each route's connections are made.
    hop: HopSettings,
    /// `outbound.strip_headers` (parsed once) and `keep_underscore_headers`.
    header_rules: RequestRules,
    /// Opaque TCP: `outbound.tcp_routes` and captured `protocol: tcp` destinations.
    pub tcp: Arc<TcpOutbound>,
    /// Destinations outside the mesh, and the address guard.
    pub egress: Arc<Egress>,
    /// The drain signal, for upgraded connections (they outlive the
    /// serve loop of their connection); set when serving starts.
    drain: std::sync::OnceLock<watch::Receiver<bool>>,
}

impl Outbound {
    pub fn new(
        store: &Arc<CredentialStore>,
        cfg: &OutboundConfig,
        metrics: Arc<Metrics>,
        limits: LimitsConfig,
        tcp: Arc<TcpOutbound>,
        egress: Arc<Egress>,
    ) -> Result<Arc<Self>, TlsError> {
        let mut by_host = HashMap::new();
        let mut listener_routes = Vec::new();
        let hop = HopSettings {
            protocol: cfg.protocol,
            max_idle: cfg.max_idle_per_peer.unwrap_or(usize::MAX),
            h2_connections: cfg.h2_connections_per_peer,
        };
        for route_cfg in &cfg.routes {
            let route = Route::new(store, route_cfg, hop, &metrics)?;
            if let Some(host) = &route_cfg.host {
                by_host.insert(host.to_ascii_lowercase(), route);
            } else if let Some(listen) = route_cfg.listen {
                listener_routes.push((listen, route));
            }
        }
        let unrouted = metrics.request_counters(Direction::Outbound, "none".to_owned());
        Ok(Arc::new(Outbound {
            by_host,
            metrics,
            store: store.clone(),
            limits,
            unrouted,
            listener_routes,
            destinations: Destinations::new(cfg.destinations.clone(), cfg.undeclared),
            hop,
            header_rules: RequestRules {
                // Config validation refused names that do not parse.
                extra: cfg
                    .strip_headers
                    .iter()
                    .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
                    .collect(),
                keep_underscores: cfg.keep_underscore_headers,
            },
            tcp,
            egress,
            drain: std::sync::OnceLock::new(),
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
        let _ = self.drain.set(drain.clone());
        let max = self.limits.max_connections;
        let this = self.clone();
        accept_loop(
            listener,
            Direction::Outbound,
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

    /// One connection from the app: passed through as TCP, or served as
    /// HTTP with its requests routed.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        fixed: Option<Arc<Route>>,
        drain: watch::Receiver<bool>,
        tracked: Tracked,
    ) {
        let _ = tcp.set_nodelay(true);
        let routing = match self.destination(&tcp, fixed) {
            Destination::Http(routing) => routing,
            Destination::Passthrough(dst) => return self.egress.passthrough(tcp, dst).await,
            Destination::Tcp(dst, id) => return self.tcp.captured(tcp, dst, id, drain).await,
        };
        // Captured to an undeclared address: TLS can only be egress (by SNI).
        if let Routing::Undeclared(dst) = routing {
            let timeout = self.limits.header_read_timeout();
            match egress::starts_with_tls(&tcp, timeout).await {
                Ok(true) => return self.egress.tls(tcp, Some(dst)).await,
                Ok(false) => {}
                Err(_) => return,
            }
        }
        // The app speaks HTTP/1.1 or HTTP/2 with prior knowledge (h2c) on
        // the same port; its first bytes tell which.
        let h2 = match sniff::h2_preface(&tcp, self.limits.header_read_timeout()).await {
            Ok(h2) => h2,
            Err(_) => return,
        };
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(CountingIo::new(tcp, None, Some(activity.clone())));
        let control = Control {
            drain,
            idle_timeout: self.limits.idle_timeout(),
            activity,
            revoked: None,
            multiplexed: h2,
        };
        let conn = Connection {
            direction: Direction::Outbound,
            peer: addr,
            h2,
            control,
            closing: tracked.closing_flag(),
        };
        let this = self.clone();
        serve(io, &self.limits, conn, move |req| {
            this.clone().handle(req, routing.clone())
        })
        .await;
    }

    /// Where the requests of one app connection go: the listener's own
    /// route, the captured original destination, or else by Host.
    fn destination(&self, tcp: &TcpStream, fixed: Option<Arc<Route>>) -> Destination<Route> {
        if let Some(route) = fixed {
            return Destination::Http(Routing::Route(route));
        }
        let Some(dst) = original_destination(tcp) else {
            return Destination::Http(Routing::ByHost);
        };
        self.destinations.resolve(dst, |cfg| {
            Route::new(&self.store, cfg, self.hop, &self.metrics)
                .inspect_err(
                    |e| tracing::error!(destination = %dst, error = %e, "cannot build a route"),
                )
                .ok()
        })
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

    /// One request from the app, step by step.
    ///
    /// Takes its context by value so that the future is the one `serve`
    /// awaits: a wrapping `async` block would copy it once more per request.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        routing: Routing<Route>,
    ) -> Response<ProxyBody> {
        let routing = &routing;
        let start = Began::now(req.headers());
        let (mut parts, body) = req.into_parts();
        let upgrade = match upgrade::check(&parts) {
            Ok(upgrade) => upgrade,
            Err(refused) => {
                return self.record(None, &parts.method, parts.uri.path(), start, refused)
            }
        };
        if let Err(reason) = canonical_host(&mut parts) {
            let refused = Refusal::new(StatusCode::BAD_REQUEST, "ambiguous host", reason);
            return self.record(None, &parts.method, parts.uri.path(), start, refused);
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
        let route = match self.select_route(routing, authority) {
            Ok(route) => route,
            Err(refused) => {
                let req = AppRequest {
                    parts,
                    body,
                    target: uri.path_and_query().cloned(),
                    dialled: match routing {
                        Routing::Undeclared(dst) => Some(*dst),
                        _ => None,
                    },
                    upgrade: upgrade.is_some(),
                    start,
                };
                let unrouted = &self.unrouted;
                // Boxed, like the upgrade below: the rare paths' futures
                // (egress 6.4 KiB, upgrade 3.8 KiB) would otherwise size
                // every request's future, which is moved several times per
                // request (7.7 -> 3.3 KiB; callgrind: memcpy per request).
                return Box::pin(self.egress.outside_mesh(req, authority, refused, unrouted)).await;
            }
        };
        let rewritten = self.rewrite(&mut parts, route, &uri, authority, upgrade.as_ref());
        let answer = match (rewritten, upgrade) {
            (Ok((hop, peer_authority)), None) => {
                Self::forward(route, hop, parts, body, peer_authority).await
            }
            (Ok(_), Some(up)) => {
                let splice = self.splice(route, path, &up);
                Box::pin(Self::forward_upgrade(route, parts, body, splice)).await
            }
            (Err(refused), _) => refused.into(),
        };
        self.record(Some(route), &method, path, start, answer)
    }

    /// Select the route: the connection's own, or the declared route for
    /// the request's authority. Nothing leaves for an undeclared place.
    fn select_route<'r>(
        &'r self,
        routing: &'r Routing<Route>,
        authority: Option<&str>,
    ) -> Result<&'r Route, Refusal<'static>> {
        const UNDECLARED: (StatusCode, &str) = (StatusCode::FORBIDDEN, "undeclared destination");
        let undeclared = |message| Refusal::new(UNDECLARED.0, UNDECLARED.1, message);
        match (routing, authority) {
            (Routing::Route(route), _) => Ok(route),
            // Captured to an address no destination rule declares: a
            // declared Host route still applies (an app calling a Service
            // by name), anything else is refused.
            (Routing::Undeclared(dst), authority) => {
                match authority.and_then(|a| self.route_for(a)) {
                    Some(route) => Ok(route),
                    None => Err(undeclared(format_args!(
                        "destination {dst} is not declared in outbound destinations or routes"
                    ))),
                }
            }
            (Routing::ByHost, Some(authority)) => match self.route_for(authority) {
                Some(route) => Ok(route),
                None => Err(undeclared(format_args!(
                    "destination {authority:?} is not declared in outbound routes"
                ))),
            },
            (Routing::ByHost, None) => {
                let message = "request has no Host; cannot choose a destination";
                Err(Refusal::new(StatusCode::BAD_REQUEST, "no host", message))
            }
        }
    }

    /// Rewrite: no identity or hop-by-hop header leaves with the request,
    /// the target takes the form of the hop it takes, and a request the
    /// app sent as HTTP/2 says so to the peer ([`headers::APP_PROTOCOL_HEADER`]), so
    /// that it reaches the destination app as HTTP/2. Returns the hop and
    /// the authority the peer sees (Host, or :authority over HTTP/2); where
    /// the request goes is fixed by the route's connector. Refused while
    /// our own SVID has expired: no peer would accept it.
    fn rewrite(
        &self,
        parts: &mut Parts,
        route: &Route,
        uri: &Uri,
        authority: Option<&str>,
        upgrade: Option<&upgrade::Upgrade>,
    ) -> Result<(Hop, Authority), Refusal<'static>> {
        if !self.store.svid_is_valid_now() {
            let message = "own SVID has expired and no valid replacement is loaded";
            let status = StatusCode::SERVICE_UNAVAILABLE;
            return Err(Refusal::new(status, "own SVID expired", message));
        }
        headers::strip_request(&mut parts.headers, &self.header_rules);
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let peer_authority = match uri.authority() {
            Some(a) => a.clone(),
            None => authority
                .and_then(|a| Authority::try_from(a).ok())
                .unwrap_or_else(|| Authority::from_static("peer")),
        };
        // An upgrade (HTTP/1.1 only) takes an HTTP/1.1 connection of its
        // own, and keeps the two headers that ask for it.
        let hop = match upgrade {
            Some(up) => {
                up.restore(&mut parts.headers);
                Hop::Http1
            }
            None => route.upstream.hop(parts.version),
        };
        if parts.version == Version::HTTP_2 {
            parts
                .headers
                .insert(APP_PROTOCOL, HeaderValue::from_static(APP_H2));
        }
        parts.uri = Upstream::uri(hop, peer_authority.clone(), path).map_err(|_| {
            let reason = "invalid request target";
            Refusal::new(StatusCode::BAD_REQUEST, reason, reason)
        })?;
        Ok((hop, peer_authority))
    }

    /// Forward: sends the request over the route's mTLS connections.
    async fn forward(
        route: &Route,
        hop: Hop,
        parts: Parts,
        body: Incoming,
        peer_authority: Authority,
    ) -> Answer<'static> {
        let request = Request::from_parts(parts, body);
        match route.upstream.send(hop, request, peer_authority).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let resp = Response::from_parts(parts, Either::Left(body));
                ALLOWED.answer(resp)
            }
            Err(e) => peer_failed(route, e),
        }
    }

    /// Who an upgrade on `route` is between, for its splice and record.
    fn splice(&self, route: &Route, path: &str, up: &upgrade::Upgrade) -> upgrade::Splice {
        let drain = self.drain.get().cloned();
        upgrade::Splice {
            direction: Direction::Outbound,
            metrics: self.metrics.clone(),
            peer_addr: Some(route.peer.clone()),
            peer_id: Some(route.identity.clone()),
            path: path.to_owned(),
            protocol: up.protocol(),
            drain: drain.unwrap_or_else(|| watch::channel(false).1),
        }
    }

    /// Forward, for an upgrade: on an mTLS connection of its own
    /// (HTTP/1.1); after `101` the app and that connection are spliced.
    async fn forward_upgrade(
        route: &Route,
        mut parts: Parts,
        body: Incoming,
        splice: upgrade::Splice,
    ) -> Answer<'static> {
        let caller = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        parts.version = Version::HTTP_11;
        match upgrade::send(&route.upgrades, Request::from_parts(parts, body)).await {
            Ok(resp) => ALLOWED.answer(upgrade::answer(resp, caller, splice)),
            Err(e) => peer_failed(route, e),
        }
    }

    /// Record: counts the request (on the route's counters, or the
    /// unrouted ones) and writes its audit line.
    fn record<'a>(
        &self,
        route: Option<&Route>,
        method: &Method,
        path: &str,
        start: Began,
        answer: impl Into<Answer<'a>>,
    ) -> Response<ProxyBody> {
        let counters = route.map_or(&self.unrouted, |r| &r.counters);
        let facts = RequestFacts {
            peer_addr: route.map(|r| &*r.peer),
            peer_id: route.map(|r| &r.identity),
            method: method.as_str(),
            path,
            start,
            token_sub: None,
            token_iss: None,
        };
        outcome::record(&self.metrics, counters, &facts, answer.into())
    }
}
