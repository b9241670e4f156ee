//! The admin listener: Prometheus metrics, liveness, readiness, a
//! read-only view of the effective configuration and the identity
//! assertion's public keys (`/.well-known/jwks.json`). It is never subject to the allow matrix: a
//! deny-by-default policy must not break health checks or scraping.

use crate::sidecar::assertion::Assertion;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::tls::CredentialStore;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the admin endpoints report.
pub struct AdminState {
    /// True once identity is loaded and every listener is bound.
    ready: AtomicBool,
    /// Set on SIGTERM: readiness false while connections drain.
    draining: AtomicBool,
    /// The effective configuration as JSON (paths, addresses, identities;
    /// never key material).
    config_json: String,
    metrics: Arc<Metrics>,
    /// Our credentials, once we have any (an identity streamed from the
    /// Workload API arrives after the admin listener is up).
    store: OnceLock<Arc<CredentialStore>>,
    /// An asymmetric identity assertion is configured: its JWKS is served
    /// once the signer is up (503 before, 404 when not configured).
    jwks_expected: AtomicBool,
    assertion: OnceLock<Arc<Assertion>>,
}

impl AdminState {
    pub fn new(config_json: String, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(AdminState {
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            config_json,
            metrics,
            store: OnceLock::new(),
            jwks_expected: AtomicBool::new(false),
            assertion: OnceLock::new(),
        })
    }

    /// The credentials readiness checks from now on (set once).
    pub fn set_store(&self, store: Arc<CredentialStore>) {
        let _ = self.store.set(store);
    }

    /// `/.well-known/jwks.json` will be served (503 until
    /// [`AdminState::set_assertion`]).
    pub fn expect_jwks(&self) {
        self.jwks_expected.store(true, Ordering::Release);
    }

    /// The assertion signer whose public keys are served (set once).
    pub fn set_assertion(&self, assertion: Arc<Assertion>) {
        let _ = self.assertion.set(assertion);
    }

    fn svid_is_valid_now(&self) -> bool {
        self.store.get().is_some_and(|s| s.svid_is_valid_now())
    }

    /// From now on readiness is false: the pod is shutting down.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Ready when every listener is up and our SVID may be presented: an
    /// expired SVID with no valid replacement takes the pod out of service.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.draining.load(Ordering::Acquire)
            && self.svid_is_valid_now()
    }
}

/// Serves admin requests until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&req, &state)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().timer(TokioTimer::new()).serve_connection(TokioIo::new(tcp), service).await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

fn handle(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints are read-only\n",
        );
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.is_ready() => text(StatusCode::OK, "ready\n"),
        "/ready" if state.store.get().is_none() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first SVID\n",
        ),
        "/ready" if !state.svid_is_valid_now() => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: own SVID is expired or not yet valid\n",
        ),
        "/ready" if state.draining.load(Ordering::Acquire) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready: draining\n")
        }
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n"),
        "/metrics" => {
            let mut resp = text(StatusCode::OK, state.metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/config" => {
            let mut resp = text(StatusCode::OK, state.config_json.clone());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/.well-known/jwks.json" => jwks(state),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /live, /ready, /config\n",
        ),
    }
}

/// The identity assertion's public keys (RFC 7517), newest first. Not
/// cached by clients: after a rotation the new key must be fetched.
fn jwks(state: &AdminState) -> Response<Full<Bytes>> {
    match state.assertion.get().and_then(|a| a.jwks()) {
        Some(doc) => {
            let mut resp = text(StatusCode::OK, doc);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            resp
        }
        None if state.jwks_expected.load(Ordering::Acquire) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no keys yet: the assertion signer is starting\n",
        ),
        None => text(
            StatusCode::NOT_FOUND,
            "no public keys: assertion.mode is not ed25519 or es256\n",
        ),
    }
}

/// A short plain-text response (admin and probe endpoints).
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
