//! Inbound: terminate mTLS from peer sidecars, verify the caller's SVID,
//! authorize every request against the policy, and forward what is allowed
//! to the local app over a plain HTTP/1.1 pool, carrying only the identity
//! meshguard itself authenticated.
//!
//! The steps of one request, in order: normalise (one Host, the path in
//! normal form), authorize (the policy gives a `Permit`), rewrite (target
//! and headers), forward (needs the `Permit`), record (metrics + audit line).

use super::outcome::{self, Answer, Began, Refusal, RequestFacts, Ruling};
use super::serve::{accept_loop, serve, Activity, Connection, ConnectionTracker, Control, Tracked};
use super::tcp::{self, TcpInbound};
use super::transparent::original_destination;
use super::upgrade;
use super::{CountingIo, Direction, ProxyBody};
use crate::sidecar::audit;
use crate::sidecar::config::{AppProtocol, InboundConfig, LimitsConfig};
use crate::sidecar::headers::{self, PeerHeaders, RequestRules};
use crate::sidecar::identity::{Role, SpiffeId};
use crate::sidecar::jwt::{Authenticator, Authn};
use crate::sidecar::limits::Limiter;
use crate::sidecar::metrics::{Disposition, Metrics, RequestCounters};
use crate::sidecar::pathnorm::NormalizedPath;
use crate::sidecar::policy::{self, DecisionCounters, Permit, Policy, PolicySlot};
use crate::sidecar::tls::{handshake_failure, peer_identity, CredentialStore};
use crate::sidecar::webhook::mesh::Body;
use app::{app_failed, as_http2, AppPool, AppTarget};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use normalise::{normalise, raw_path, take_canonical_uri};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

mod app;
mod authn;
mod boundary;
mod connection;
mod normalise;
mod webhook;

pub use app::APP_POOL_IDLE;

/// The authenticated caller of one connection, computed once at handshake
/// time and shared by every request on that connection.
pub struct Peer {
    pub id: SpiffeId,
    pub addr: SocketAddr,
    /// `addr` as text, formatted once for the audit lines.
    addr_text: String,
    /// The port the caller dialled (policy `ports`): the original
    /// destination port when iptables redirected the connection to us.
    pub port: u16,
    /// Where this connection's requests go: the configured app, or, under
    /// capture, the app's address with the port the caller dialled.
    app: AppTarget,
    headers: PeerHeaders,
    counters: RequestCounters,
    /// For upgraded connections, which outlive the connection's serve loop.
    drain: watch::Receiver<bool>,
}

/// How one request reaches the app.
#[derive(Clone, Copy)]
enum AppForm<'u> {
    Http1,
    /// h2c (`inbound.app_protocol`, or the caller's app spoke HTTP/2).
    Http2,
    /// HTTP/1.1 with its `Upgrade` kept, on a connection of its own.
    Upgrade(&'u upgrade::Upgrade),
}

/// `inbound.app` cannot be written as an HTTP authority (it always can:
/// a socket address is `host:port`; kept typed rather than assumed).
#[derive(Debug, thiserror::Error)]
#[error("inbound.app {0} is not a valid HTTP authority")]
pub struct InvalidAppAddress(pub SocketAddr);

/// The inbound proxy of one sidecar.
pub struct Inbound {
    tls: TlsAcceptor,
    store: Arc<CredentialStore>,
    app: Authority,
    app_addr: SocketAddr,
    /// Connections to the app, by port (one unless traffic is captured,
    /// where the caller's dialled port is kept).
    app_pools: Mutex<HashMap<u16, Arc<AppPool>>>,
    policy: PolicySlot,
    /// The authorization counters of the policy in force.
    authz_counters: DecisionCounters,
    /// `inbound.strip_headers` (parsed once) and `keep_underscore_headers`.
    header_rules: RequestRules,
    metrics: Arc<Metrics>,
    limits: LimitsConfig,
    /// `inbound.app_protocol`.
    app_protocol: AppProtocol,
    /// Connections to `inbound.tcp_ports`.
    tcp: Arc<TcpInbound>,
    /// The buckets of the policy's `limits:`, kept across reloads.
    limiter: Limiter,
    /// End-user token providers (`inbound.jwt`).
    jwt: Option<Arc<Authenticator>>,
    /// The identity assertion stamped for the app (`assertion`), if configured.
    assertion: Option<Arc<crate::sidecar::assertion::Assertion>>,
    /// Declared webhook routes, whose requests must carry a valid signature.
    webhooks: Option<Arc<crate::sidecar::webhook::route::Webhooks>>,
}

impl Inbound {
    pub fn new(
        store: Arc<CredentialStore>,
        tls: Arc<rustls::ServerConfig>,
        cfg: &InboundConfig,
        policy: PolicySlot,
        metrics: Arc<Metrics>,
        limits: LimitsConfig,
        tcp: Arc<TcpInbound>,
    ) -> Result<Self, InvalidAppAddress> {
        let app_addr = cfg.app;
        let app =
            Authority::try_from(app_addr.to_string()).map_err(|_| InvalidAppAddress(app_addr))?;
        // Config validation refused names that do not parse.
        let header_rules = RequestRules {
            extra: cfg
                .strip_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            keep_underscores: cfg.keep_underscore_headers,
        };
        Ok(Inbound {
            tls: TlsAcceptor::from(tls),
            store,
            app,
            app_addr,
            app_pools: Mutex::default(),
            policy,
            authz_counters: DecisionCounters::new(metrics.clone()),
            header_rules,
            metrics,
            limits,
            app_protocol: cfg.app_protocol,
            tcp,
            limiter: Limiter::default(),
            jwt: None,
            assertion: None,
            webhooks: None,
        })
    }

    /// Checks end-user tokens with `jwt`; the headers its providers set
    /// from claims are removed from whatever callers send.
    pub fn with_jwt(mut self, jwt: Option<Arc<Authenticator>>) -> Self {
        if let Some(jwt) = &jwt {
            self.header_rules
                .extra
                .extend(jwt.claim_header_names().cloned());
        }
        self.jwt = jwt;
        self
    }

    /// Every request forwarded carries this identity assertion.
    pub fn with_assertion(
        mut self,
        assertion: Option<Arc<crate::sidecar::assertion::Assertion>>,
    ) -> Self {
        self.assertion = assertion;
        self
    }

    /// Requests on these webhook routes are verified (`webhook/mesh.rs`).
    pub fn with_webhooks(
        mut self,
        webhooks: Option<Arc<crate::sidecar::webhook::route::Webhooks>>,
    ) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// Accepts connections until a drain starts.
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

    /// One request from an authenticated peer, step by step.
    ///
    /// Takes its context by value so that the future is the one `serve`
    /// awaits: a wrapping `async` block would copy it once more per request.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Arc<Peer>,
    ) -> Response<ProxyBody> {
        let peer = &*peer;
        let start = Began::now(req.headers());
        let (mut parts, body) = req.into_parts();
        let upgrade = match upgrade::check(&parts) {
            Ok(upgrade) => upgrade,
            Err(refused) => {
                return self.record(peer, &parts.method, parts.uri.path(), start, refused)
            }
        };
        let uri = match take_canonical_uri(&mut parts) {
            Ok(uri) => uri,
            Err(refused) => {
                return self.record(peer, &parts.method, parts.uri.path(), start, refused)
            }
        };
        let method = parts.method.clone();
        let target = match normalise(&uri) {
            Ok(target) => target,
            Err(refused) => return self.record(peer, &method, raw_path(&uri), start, refused),
        };
        let path = target.as_path();
        // Held (one reference count) until the request is recorded, so the
        // deciding rule's name is logged as is.
        let policy = self.policy.load_full();
        let matched = match Self::strict_path(policy.as_ref(), path) {
            Ok(matched) => matched,
            Err(refused) => return self.record(peer, &method, path, start, refused),
        };
        let authn = self.authenticate(&parts.headers);
        let authz = self.authorize(policy.as_ref(), peer, &method, &matched, &authn);
        let (permit, allowed) = match authz {
            Ok(authorized) => authorized,
            Err(denied) => return self.record_as(peer, &method, path, start, denied, &authn),
        };
        // Limits keyed by end user count the verified token's `sub`.
        let subject = authn.verified().and_then(|c| c.sub.as_deref());
        let admitted = match self.limit(policy.as_ref(), peer, &allowed, subject) {
            Ok(admitted) => admitted,
            Err(limited) => return self.record_as(peer, &method, path, start, limited, &authn),
        };
        let claims = self.claim_headers(policy.as_ref(), peer, path, &mut parts.headers);
        if let Err(refused) = claims {
            return self.record(peer, &method, path, start, refused);
        }
        let body = self.verify_webhook(peer, &parts, path, upgrade.is_some(), body);
        let body = match body.await {
            Ok(body) => body,
            Err(refused) => return self.record_as(peer, &method, path, start, refused, &authn),
        };
        let form = match &upgrade {
            Some(up) => AppForm::Upgrade(up),
            None if self.app_speaks_h2(&parts) => AppForm::Http2,
            None => AppForm::Http1,
        };
        if let Err(refused) = self.rewrite(&mut parts, peer, &uri, &target, form, &authn) {
            return self.record_as(peer, &method, path, start, refused, &authn);
        }
        let answer = match (upgrade, body) {
            (_, Body::Verified(hook)) => {
                Self::forward_webhook(parts, hook, peer, permit, allowed).await
            }
            (None, Body::Stream(body)) => self.forward(parts, body, peer, permit, allowed).await,
            (Some(up), Body::Stream(body)) => {
                let splice = self.splice(peer, path, &up);
                Self::forward_upgrade(parts, body, peer, permit, allowed, splice).await
            }
        };
        let answer = boundary::hold_until_body_ends(answer, admitted);
        self.record_as(peer, &method, path, start, answer, &authn)
    }

    /// Authorize: the policy's decision, counted: the `Permit` forwarding
    /// needs with how the request is recorded, or the denial.
    fn authorize<'p>(
        &self,
        policy: Option<&'p Arc<Policy>>,
        peer: &Peer,
        method: &Method,
        path: &str,
        authn: &Authn,
    ) -> Result<(Permit, Ruling<'p>), Refusal<'p>> {
        let Some(policy) = policy else {
            let allowed = ruling(Disposition::Allow, "allowed (no policy)", None);
            return Ok((Permit::without_policy(), allowed));
        };
        let req = policy::Request {
            peer: &peer.id,
            port: peer.port,
            method,
            path,
        };
        let decision = policy.as_ref().evaluate_with(&req, authn);
        self.authz_counters.count(policy, &decision);
        let rule = decision.rule_name();
        let Some(permit) = decision.permit() else {
            if decision.rule().is_none() {
                if let Some(needs) = policy.token_challenge(&req, authn) {
                    return Err(self.unauthenticated(needs, authn));
                }
            }
            let denied = ruling(Disposition::Deny, "denied by policy", rule);
            let message = "access denied by policy";
            return Err(Refusal::by(denied, StatusCode::FORBIDDEN, message));
        };
        let ruling = if decision.audit_would_deny() {
            ruling(Disposition::AuditDeny, "would be denied (audit mode)", rule)
        } else {
            ruling(Disposition::Allow, "allowed by policy", rule)
        };
        Ok((permit, ruling))
    }

    /// Whether this request goes to the app as HTTP/2: as configured, or
    /// (`auto`) when the calling app spoke HTTP/2, which its sidecar says
    /// in [`headers::APP_PROTOCOL_HEADER`] (read before `rewrite` strips it).
    fn app_speaks_h2(&self, parts: &Parts) -> bool {
        match self.app_protocol {
            AppProtocol::Http1 => false,
            AppProtocol::Http2 => true,
            AppProtocol::Auto => {
                parts.version == Version::HTTP_2
                    && parts
                        .headers
                        .get(headers::APP_PROTOCOL)
                        .is_some_and(|v| v.as_bytes() == headers::APP_H2.as_bytes())
            }
        }
    }

    /// Rewrite: the app gets the normalised target it was authorized for,
    /// in the form `form` says, with only the identity meshguard
    /// authenticated.
    fn rewrite(
        &self,
        parts: &mut Parts,
        peer: &Peer,
        uri: &Uri,
        target: &NormalizedPath<'_>,
        form: AppForm<'_>,
        authn: &Authn,
    ) -> Result<(), Refusal<'static>> {
        // Unchanged by normalisation (the common case), the target is the
        // one already parsed, shared rather than copied and parsed again.
        let forwarded = if target.is_rewritten() {
            PathAndQuery::try_from(target.to_request_target().as_ref())
        } else {
            Ok(uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")))
        };
        let Ok(forwarded) = forwarded else {
            let message = "invalid request target";
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "invalid path",
                message,
            ));
        };
        parts.uri = Uri::from(forwarded);
        parts.version = Version::HTTP_11;
        let stripped = headers::strip_request(&mut parts.headers, &self.header_rules);
        if stripped.sent_identity_headers() {
            let direction = Direction::Inbound.as_str();
            tracing::debug!(direction, peer_id = %peer.id, removed = stripped.identity, "caller sent identity headers; removed");
        }
        peer.headers.apply(&mut parts.headers);
        if let Some(jwt) = &self.jwt {
            jwt.apply_claim_headers(authn, &mut parts.headers);
        }
        if let Some(assertion) = &self.assertion {
            assertion.stamp_request(parts, peer.id.as_str());
        }
        match form {
            AppForm::Http2 => return as_http2(parts, &peer.app.authority),
            AppForm::Upgrade(up) => up.restore(&mut parts.headers),
            AppForm::Http1 => {}
        }
        if !parts.headers.contains_key(http::header::HOST) {
            if let Ok(host) = HeaderValue::from_str(peer.app.authority.as_str()) {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        Ok(())
    }

    /// The pool of connections to the app at `addr`, made on first use.
    fn app_pool(&self, addr: SocketAddr) -> Arc<AppPool> {
        let mut pools = self.app_pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(addr.port())
            .or_insert_with(|| Arc::new(AppPool::new(addr)))
            .clone()
    }

    /// Forward: sends an authorized request to the local app. When the app
    /// cannot answer, the response is meshguard's own 503 or 502, recorded
    /// with the reason.
    async fn forward<'p>(
        &self,
        parts: Parts,
        body: Incoming,
        peer: &Peer,
        _permit: Permit,
        ruling: Ruling<'p>,
    ) -> Answer<'p> {
        match peer.app.pool.send(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                ruling.answer(Response::from_parts(parts, Either::Left(body)))
            }
            Err(e) => app_failed(ruling, e),
        }
    }

    /// Who an upgrade from `peer` is between, for its splice and record.
    fn splice(&self, peer: &Peer, path: &str, up: &upgrade::Upgrade) -> upgrade::Splice {
        upgrade::Splice {
            direction: Direction::Inbound,
            metrics: self.metrics.clone(),
            peer_addr: Some(Arc::from(peer.addr_text.as_str())),
            peer_id: Some(peer.id.clone()),
            path: path.to_owned(),
            protocol: up.protocol(),
            drain: peer.drain.clone(),
        }
    }

    /// Forward, for an authorized upgrade: to the app on a connection of
    /// its own; after `101` the two sides are spliced.
    async fn forward_upgrade<'p>(
        mut parts: Parts,
        body: Incoming,
        peer: &Peer,
        _permit: Permit,
        ruling: Ruling<'p>,
        splice: upgrade::Splice,
    ) -> Answer<'p> {
        let caller = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        match peer
            .app
            .pool
            .upgrade(Request::from_parts(parts, body))
            .await
        {
            Ok(resp) => ruling.answer(upgrade::answer(resp, caller, splice)),
            Err(e) => app_failed(ruling, e),
        }
    }

    /// Record: counts the request and writes its audit line.
    fn record<'a>(
        &self,
        peer: &Peer,
        method: &Method,
        path: &str,
        start: Began,
        answer: impl Into<Answer<'a>>,
    ) -> Response<ProxyBody> {
        self.record_as(peer, method, path, start, answer, &Authn::default())
    }

    /// Record, with the end user the request's token named (sub/iss, never the token).
    fn record_as<'a>(
        &self,
        peer: &Peer,
        method: &Method,
        path: &str,
        start: Began,
        answer: impl Into<Answer<'a>>,
        authn: &Authn,
    ) -> Response<ProxyBody> {
        let user = authn.verified();
        let facts = RequestFacts {
            peer_addr: Some(&peer.addr_text),
            peer_id: Some(&peer.id),
            method: method.as_str(),
            path,
            start,
            token_sub: user.and_then(|c| c.sub.as_deref()),
            token_iss: user.map(|c| &*c.iss),
        };
        outcome::record(&self.metrics, &peer.counters, &facts, answer.into())
    }
}

fn ruling<'p>(disposition: Disposition, reason: &'static str, rule: Option<&'p str>) -> Ruling<'p> {
    Ruling {
        disposition,
        reason,
        rule,
    }
}
