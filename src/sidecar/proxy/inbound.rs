//! Inbound: terminate mTLS from peer sidecars, verify the caller's SVID,
//! authorize every request against the policy, and forward what is allowed
//! to the local app over a plain HTTP/1.1 pool, carrying only the identity
//! meshguard itself authenticated.
//!
//! The steps of one request, in order: normalise the path, authorize,
//! rewrite headers, forward, record (metrics + audit line).

use super::pool::{Http1Pool, TcpDial, UpstreamError};
use super::serve::{
    accept_loop, close_if_draining, http1_builder, http2_builder, Activity, ConnectionTracker,
    Control, Tracked,
};
use super::transparent::original_destination;
use super::{canonical_host, log_connection_error, refusal, CountingIo, ProxyBody};
use crate::sidecar::audit::{self, RequestRecord};
use crate::sidecar::config::LimitsConfig;
use crate::sidecar::headers::{self, PeerHeaders};
use crate::sidecar::identity::{Role, SpiffeId};
use crate::sidecar::metrics::{Decision, Metrics, PolicyCounters, RequestCounters};
use crate::sidecar::pathnorm::normalize_path;
use crate::sidecar::policy::{self, Permit, Policy};
use crate::sidecar::tls::{handshake_failure, peer_identity, CredentialStore};
use arc_swap::ArcSwapOption;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How long an idle pooled connection to the local app is kept: below the
/// keep-alive timeouts common app servers use (Node's is 5 s), so we never
/// send on a connection the app is closing.
pub const APP_POOL_IDLE: Duration = Duration::from_secs(4);

/// Time allowed to connect to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per app port.
const APP_POOL_MAX_IDLE: usize = 1024;

type AppPool = Http1Pool<TcpDial>;

/// The current policy: `None` means no policy file, and then every
/// authenticated peer is allowed. Swapped whole on reload.
pub type PolicySlot = Arc<ArcSwapOption<Policy>>;

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
    app: Authority,
    /// The pool of connections to that address.
    app_pool: Arc<AppPool>,
    headers: PeerHeaders,
    counters: RequestCounters,
}

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
    /// The authorization counters of the policy in force (see `PolicyCounters`).
    authz_counters: ArcSwapOption<PolicyCounters>,
    metrics: Arc<Metrics>,
    limits: LimitsConfig,
}

/// How one request ended, for the metrics and the audit line.
struct Outcome<'a> {
    decision: Decision,
    rule: Option<&'a str>,
    reason: &'static str,
}

impl Inbound {
    pub fn new(
        store: Arc<CredentialStore>,
        tls: Arc<rustls::ServerConfig>,
        app: SocketAddr,
        policy: PolicySlot,
        metrics: Arc<Metrics>,
        limits: LimitsConfig,
    ) -> Arc<Self> {
        let app_addr = app;
        let app =
            Authority::try_from(app.to_string()).expect("a socket address is a valid authority");
        Arc::new(Inbound {
            tls: TlsAcceptor::from(tls),
            store,
            app,
            app_addr,
            app_pools: Mutex::default(),
            policy,
            authz_counters: ArcSwapOption::empty(),
            metrics,
            limits,
        })
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
            "inbound",
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
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let captured = original_destination(&tcp);
        let port = captured.map_or(local_port, |d| d.port());
        let (app, app_pool) = match captured {
            Some(dst) => {
                let addr = SocketAddr::new(self.app_addr.ip(), dst.port());
                match Authority::try_from(addr.to_string()) {
                    Ok(authority) => (authority, self.app_pool(addr)),
                    Err(_) => (self.app.clone(), self.app_pool(self.app_addr)),
                }
            }
            None => (self.app.clone(), self.app_pool(self.app_addr)),
        };
        let _open = self.metrics.connection("inbound");
        let activity = Arc::new(Activity::default());
        let tcp = CountingIo::new(
            tcp,
            Some(self.metrics.byte_counters("inbound")),
            Some(activity.clone()),
        );
        let timeout = self.limits.handshake_timeout();
        let tls = match tokio::time::timeout(timeout, self.tls.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let (reason, detail) = handshake_failure(&e);
                self.metrics.handshake("inbound", false, reason);
                return audit::handshake_refused("inbound", addr, reason, &detail);
            }
            Err(_) => {
                self.metrics.handshake("inbound", false, "timeout");
                let detail = format!("handshake not completed within {timeout:?}");
                return audit::handshake_refused("inbound", addr, "timeout", &detail);
            }
        };
        let (_, session) = tls.get_ref();
        let Some((id, cert_hash)) = peer_identity(session.peer_certificates()) else {
            // Unreachable while the verifier requires a certificate; if it
            // ever happens, fail closed.
            self.metrics.handshake("inbound", false, "no_identity");
            let detail = "handshake completed without a verifiable peer identity";
            return audit::handshake_refused("inbound", addr, "no_identity", detail);
        };
        self.metrics.handshake("inbound", true, "");
        let h2 = session.alpn_protocol() == Some(crate::sidecar::tls::ALPN_H2);
        tracing::debug!(direction = "inbound", peer_addr = %addr, peer_id = %id, h2, "peer authenticated");
        let own = self.store.own_id();
        let headers = PeerHeaders::new(&id, &own, &cert_hash);
        let counters = self
            .metrics
            .request_counters("inbound", self.metrics.peer_label(id.as_str()));
        let peer = Arc::new(Peer {
            id,
            addr,
            addr_text: addr.to_string(),
            port,
            app,
            app_pool,
            headers,
            counters,
        });
        // Registered for continuous validation: closed if the peer's
        // certificate expires or its CA leaves the bundle.
        let live = self.store.live().register(
            session.peer_certificates().unwrap_or_default(),
            Role::Client,
        );
        let control = Control {
            drain,
            idle_timeout: self.limits.idle_timeout(),
            activity: activity.clone(),
            revoked: Some(live),
            multiplexed: h2,
        };
        let this = self.clone();
        let closing = tracked.closing_flag();
        let service = service_fn(move |req| {
            let (this, peer, in_flight, closing) = (
                this.clone(),
                peer.clone(),
                activity.request(),
                closing.clone(),
            );
            async move {
                let mut resp = this.handle(req, &peer).await;
                close_if_draining(&closing, !h2, &mut resp);
                drop(in_flight);
                Ok::<_, Infallible>(resp)
            }
        });
        let io = TokioIo::new(tls);
        let result = if h2 {
            crate::serve_controlled!(
                http2_builder(&self.limits).serve_connection(io, service),
                control,
                "inbound",
                addr
            )
        } else {
            crate::serve_controlled!(
                http1_builder(&self.limits).serve_connection(io, service),
                control,
                "inbound",
                addr
            )
        };
        if let Err(e) = result {
            log_connection_error("inbound", addr, &e);
        }
    }

    /// One request from an authenticated peer.
    async fn handle(&self, req: Request<Incoming>, peer: &Peer) -> Response<ProxyBody> {
        let start = Instant::now();
        let (mut parts, body) = req.into_parts();
        // One Host, the one authorized; HTTP/2's :authority becomes the
        // Host the HTTP/1.1 app reads.
        if let Err(reason) = canonical_host(&mut parts) {
            let (method, path) = (parts.method.as_str(), parts.uri.path());
            let refused = (StatusCode::BAD_REQUEST, "ambiguous host");
            return self.refuse(peer, method, path, refused, reason, start);
        }
        // The URI leaves `parts` (`forward` builds the app's), so the
        // normalised path can borrow it while `parts` goes on to the app:
        // no per-request copy of the path.
        let uri = std::mem::take(&mut parts.uri);
        let raw_target = uri
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        let target = match normalize_path(raw_target) {
            Ok(target) => target,
            Err(e) => {
                let path = raw_target.split('?').next().unwrap_or("");
                let refused = (StatusCode::BAD_REQUEST, "invalid path");
                let message = format_args!("invalid request path: {e}");
                return self.refuse(peer, parts.method.as_str(), path, refused, message, start);
            }
        };
        let path = target.as_path();

        // Authorize. The policy is held (one reference count) until the end
        // of the request so the deciding rule's name can be logged as is.
        let policy = self.policy.load_full();
        let (permit, outcome) = match &policy {
            None => (
                Permit::without_policy(),
                Outcome {
                    decision: Decision::Allow,
                    rule: None,
                    reason: "allowed (no policy)",
                },
            ),
            Some(policy_in_force) => {
                let policy = policy_in_force.as_ref();
                let req = policy::Request {
                    peer: &peer.id,
                    port: peer.port,
                    method: &parts.method,
                    path,
                };
                let decision = policy.evaluate(&req);
                self.count_decision(policy_in_force, &decision);
                let Some(permit) = decision.permit() else {
                    let resp = refusal(StatusCode::FORBIDDEN, "access denied by policy");
                    let outcome = Outcome {
                        decision: Decision::Deny,
                        rule: decision.rule_name(),
                        reason: "denied by policy",
                    };
                    return self.record(peer, parts.method.as_str(), path, &outcome, resp, start);
                };
                let outcome = if decision.audit_would_deny() {
                    Outcome {
                        decision: Decision::AuditDeny,
                        rule: decision.rule_name(),
                        reason: "would be denied (audit mode)",
                    }
                } else {
                    Outcome {
                        decision: Decision::Allow,
                        rule: decision.rule_name(),
                        reason: "allowed by policy",
                    }
                };
                (permit, outcome)
            }
        };

        // Rewrite: the app gets the normalised target it was authorized
        // for, and only the identity meshguard authenticated.
        // Unchanged by normalisation (the common case), the target is the
        // one already parsed, shared rather than copied and parsed again.
        let reparsed = if target.is_rewritten() {
            PathAndQuery::try_from(target.to_request_target().as_ref())
        } else {
            Ok(uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")))
        };
        let forwarded_target = match reparsed {
            Ok(pq) => pq,
            Err(_) => {
                let refused = (StatusCode::BAD_REQUEST, "invalid path");
                let message = "invalid request target";
                return self.refuse(peer, parts.method.as_str(), path, refused, message, start);
            }
        };
        headers::strip_inbound(&mut parts.headers, &[]);
        peer.headers.apply(&mut parts.headers);
        let method = parts.method.clone();
        let (resp, failed) = self
            .forward(parts, peer, forwarded_target, body, permit)
            .await;
        let outcome = match failed {
            Some(reason) => Outcome { reason, ..outcome },
            None => outcome,
        };
        self.record(peer, method.as_str(), path, &outcome, resp, start)
    }

    /// The pool of connections to the app at `addr`, made on first use.
    fn app_pool(&self, addr: SocketAddr) -> Arc<AppPool> {
        let mut pools = self.app_pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(addr.port())
            .or_insert_with(|| {
                let dial = TcpDial {
                    addr,
                    timeout: APP_CONNECT_TIMEOUT,
                };
                Arc::new(Http1Pool::new(dial, APP_POOL_MAX_IDLE, APP_POOL_IDLE))
            })
            .clone()
    }

    /// Sends an authorized request to the local app. The second value is
    /// the reason when the app could not answer (the response is then
    /// meshguard's own 503 or 502).
    async fn forward(
        &self,
        mut parts: http::request::Parts,
        peer: &Peer,
        target: PathAndQuery,
        body: Incoming,
        _permit: Permit,
    ) -> (Response<ProxyBody>, Option<&'static str>) {
        parts.uri = Uri::from(target);
        parts.version = Version::HTTP_11;
        if !parts.headers.contains_key(http::header::HOST) {
            if let Ok(host) = HeaderValue::from_str(peer.app.as_str()) {
                parts.headers.insert(http::header::HOST, host);
            }
        }
        match peer.app_pool.send(Request::from_parts(parts, body)).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                (Response::from_parts(parts, Either::Left(body)), None)
            }
            Err(UpstreamError::Connect(e)) => {
                tracing::warn!(direction = "inbound", error = %e, "local app unavailable");
                let resp = refusal(StatusCode::SERVICE_UNAVAILABLE, "local app unavailable");
                (resp, Some("local app unavailable"))
            }
            Err(UpstreamError::Http(e)) => {
                tracing::warn!(direction = "inbound", error = %e, "local app failed");
                let message = "local app closed the connection without a response";
                (
                    refusal(StatusCode::BAD_GATEWAY, message),
                    Some("local app failed"),
                )
            }
        }
    }

    /// Counts a decision of the policy in force, on the counters cached
    /// for it (made anew, once, after a reload).
    fn count_decision(&self, policy: &Arc<Policy>, decision: &policy::Decision<'_>) {
        let cached = self.authz_counters.load();
        match cached.as_deref() {
            Some(counters) if counters.belong_to(policy) => {
                self.metrics.authz_decision(counters, decision)
            }
            _ => {
                let counters = Arc::new(PolicyCounters::new(policy.clone()));
                self.metrics.authz_decision(&counters, decision);
                self.authz_counters.store(Some(counters));
            }
        }
    }

    /// A request meshguard refuses itself before the policy decides:
    /// the plain-text refusal with `message`, audited as denied with `reason`.
    fn refuse(
        &self,
        peer: &Peer,
        method: &str,
        path: &str,
        (status, reason): (StatusCode, &'static str),
        message: impl std::fmt::Display,
        start: Instant,
    ) -> Response<ProxyBody> {
        let outcome = Outcome {
            decision: Decision::Deny,
            rule: None,
            reason,
        };
        self.record(
            peer,
            method,
            path,
            &outcome,
            refusal(status, message),
            start,
        )
    }

    /// Counts the request and writes its audit line.
    fn record(
        &self,
        peer: &Peer,
        method: &str,
        path: &str,
        outcome: &Outcome<'_>,
        resp: Response<ProxyBody>,
        start: Instant,
    ) -> Response<ProxyBody> {
        let duration = start.elapsed();
        let status = resp.status().as_u16();
        self.metrics.record_request(
            &peer.counters,
            outcome.decision,
            status,
            duration.as_secs_f64(),
        );
        audit::request(&RequestRecord {
            direction: "inbound",
            peer_addr: Some(&peer.addr_text),
            peer_id: Some(&peer.id),
            method,
            path,
            decision: outcome.decision,
            rule: outcome.rule,
            status,
            duration,
            reason: outcome.reason,
        });
        resp
    }
}
