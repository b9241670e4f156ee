//! The sidecar's probe forwarder and the classic-mode shutdown endpoint.
//!
//! **Probe forwarder.** Injection rewrites the app's kubelet probes to
//! `GET /app-probe/<container>/<kind>` on the sidecar's probe port and
//! records the originals (see [`crate::kube::contract`], which holds the
//! contract). [`serve_probes`] answers those requests by running the
//! recorded probe against the app over loopback and answering `200 ok` or
//! `503 <reason>`. The port is reachable from the network and is outside
//! capture and policy, so it runs nothing but the recorded probes: the
//! request's path picks one, and nothing else of the request (query,
//! headers, body) reaches the app. Concurrent requests for the same probe
//! share one run, so a flood of requests cannot multiply the load on the
//! app.
//!
//! **Shutdown endpoint.** In classic-container mode (clusters before
//! native sidecars) a Job's pod only completes when every container
//! exits, so the app tells the sidecar it is done: `POST /shutdown` on
//! `MESHGUARD_SHUTDOWN_LISTEN` (`127.0.0.1:15021`). [`serve_shutdown`]
//! answers `202 draining` and fires its trigger once; the caller then
//! drains and exits 0. Only loopback addresses are accepted
//! ([`shutdown_listen_from_env`]), and connections from elsewhere are
//! refused anyway.
//!
//! Both servers run until their `shutdown` receiver turns true (or its
//! sender is gone). Give them the channel that stops the admin listener,
//! not the drain one: kubelet keeps probing while the pod terminates.

mod check;
mod conn;
mod grpc;
#[cfg(test)]
mod tests;

pub use check::run_probe;
pub use conn::{Failure, KUBE_PROBE_USER_AGENT};

use crate::kube::contract::{
    parse_app_probes, AppProbes, Forward, ENV_APP_PROBES, ENV_PROBE_LISTEN, ENV_SHUTDOWN_LISTEN,
    PROBE_PATH_PREFIX,
};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Connections served at once on each port; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the probe forwarder or the shutdown endpoint cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{set} is set but {missing} is not: set both or neither")]
    Unpaired {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{var} is not valid UTF-8")]
    NotUnicode { var: &'static str },
    #[error("{var}={value:?} is not a socket address such as [::]:15020: {source}")]
    BadAddr {
        var: &'static str,
        value: String,
        source: std::net::AddrParseError,
    },
    #[error("{var} is empty (is the pod annotation meshguard.io/app-probes missing?)")]
    EmptyProbes { var: &'static str },
    #[error("{var} is not a valid app probe map: {source}")]
    BadJson {
        var: &'static str,
        source: serde_json::Error,
    },
    #[error("{var}={addr}: the shutdown endpoint must listen on a loopback address (127.0.0.1 or [::1])")]
    NotLoopback { var: &'static str, addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn env_var(var: &'static str) -> Result<Option<String>, ProbeError> {
    match std::env::var(var) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(ProbeError::NotUnicode { var }),
    }
}

/// The probe port and the recorded probes, from `MESHGUARD_PROBE_LISTEN`
/// and `MESHGUARD_APP_PROBES`; `None` when neither is set.
pub fn probes_from_env() -> Result<Option<(SocketAddr, AppProbes)>, ProbeError> {
    probes_from_vars(
        env_var(ENV_PROBE_LISTEN)?.as_deref(),
        env_var(ENV_APP_PROBES)?.as_deref(),
    )
}

/// [`probes_from_env`] on given values (`listen`, `probes`).
pub fn probes_from_vars(
    listen: Option<&str>,
    probes: Option<&str>,
) -> Result<Option<(SocketAddr, AppProbes)>, ProbeError> {
    let (listen, probes) = match (listen, probes) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ProbeError::Unpaired {
                set: ENV_PROBE_LISTEN,
                missing: ENV_APP_PROBES,
            })
        }
        (None, Some(_)) => {
            return Err(ProbeError::Unpaired {
                set: ENV_APP_PROBES,
                missing: ENV_PROBE_LISTEN,
            })
        }
        (Some(l), Some(p)) => (l, p),
    };
    let addr = parse_addr(ENV_PROBE_LISTEN, listen)?;
    if probes.trim().is_empty() {
        return Err(ProbeError::EmptyProbes {
            var: ENV_APP_PROBES,
        });
    }
    let probes = parse_app_probes(probes).map_err(|source| ProbeError::BadJson {
        var: ENV_APP_PROBES,
        source,
    })?;
    Ok(Some((addr, probes)))
}

/// Where the shutdown endpoint listens, from `MESHGUARD_SHUTDOWN_LISTEN`;
/// `None` when unset. Refuses any address that is not loopback.
pub fn shutdown_listen_from_env() -> Result<Option<SocketAddr>, ProbeError> {
    shutdown_listen_from_var(env_var(ENV_SHUTDOWN_LISTEN)?.as_deref())
}

/// [`shutdown_listen_from_env`] on a given value.
pub fn shutdown_listen_from_var(value: Option<&str>) -> Result<Option<SocketAddr>, ProbeError> {
    let Some(value) = value else { return Ok(None) };
    let addr = parse_addr(ENV_SHUTDOWN_LISTEN, value)?;
    if !addr.ip().to_canonical().is_loopback() {
        return Err(ProbeError::NotLoopback {
            var: ENV_SHUTDOWN_LISTEN,
            addr,
        });
    }
    Ok(Some(addr))
}

fn parse_addr(var: &'static str, value: &str) -> Result<SocketAddr, ProbeError> {
    value.trim().parse().map_err(|source| ProbeError::BadAddr {
        var,
        value: value.to_owned(),
        source,
    })
}

/// Binds the probe port. Injection asks for `[::]`; on a kernel without
/// IPv6 that fails, and the same port on `0.0.0.0` is used instead.
pub async fn bind_probe_listener(addr: SocketAddr) -> Result<TcpListener, ProbeError> {
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(l),
        Err(source)
            if addr.is_ipv6()
                && addr.ip().is_unspecified()
                && !matches!(
                    source.kind(),
                    std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            let v4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()));
            match TcpListener::bind(v4).await {
                Ok(l) => {
                    tracing::info!(%addr, fallback = %v4, error = %source, "no IPv6; probe port on IPv4 only");
                    Ok(l)
                }
                Err(_) => Err(ProbeError::Bind { addr, source }),
            }
        }
        Err(source) => Err(ProbeError::Bind { addr, source }),
    }
}

/// Completes once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it before returning.
    let stop = shutdown.wait_for(|s| *s).await.is_ok();
    let _ = stop;
}

/// Accepts connections until `shutdown`, serving each over HTTP/1.1 with
/// `handle`; connections still open at shutdown are closed gracefully.
async fn serve_http<H, Fut>(
    listener: TcpListener,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        tokio::spawn(serve_conn(tcp, peer, permit, shutdown.clone(), handle.clone()));
                    }
                    Err(_) => tracing::debug!(what, %peer, "connection limit reached; closing"),
                },
                Err(e) => {
                    tracing::debug!(what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(&mut shutdown) => return,
        }
    }
}

async fn serve_conn<H, Fut>(
    tcp: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    mut shutdown: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = service_fn(move |req| {
        let answer = handle(req, peer);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tcp), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

use crate::sidecar::admin::text;

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// Serves the recorded probes on `listener` until `shutdown` turns true.
/// `GET`/`HEAD /app-probe/<key>` runs the probe recorded under `<key>`.
pub async fn serve_probes(
    listener: TcpListener,
    probes: Arc<AppProbes>,
    shutdown: watch::Receiver<bool>,
) {
    let forwarder = Arc::new(Forwarder::new(probes));
    tracing::info!(
        addr = listener.local_addr().ok().map(tracing::field::display),
        probes = forwarder.probes.len(),
        "probe forwarder listening"
    );
    serve_http(listener, "probe", shutdown, move |req, _peer| {
        let forwarder = forwarder.clone();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        async move { forwarder.handle(&method, &path).await }
    })
    .await;
}

type Outcome = Result<(), Failure>;

/// The recorded probes, the runs in flight, and what each last returned.
struct Forwarder {
    probes: Arc<AppProbes>,
    /// One run per key at a time; later requests wait for its outcome.
    in_flight: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    /// Whether the last run of each key failed, to log changes only.
    failing: HashMap<String, AtomicBool>,
}

impl Forwarder {
    fn new(probes: Arc<AppProbes>) -> Forwarder {
        let failing = probes
            .keys()
            .map(|k| (k.clone(), AtomicBool::new(false)))
            .collect();
        Forwarder {
            probes,
            in_flight: Mutex::new(HashMap::new()),
            failing,
        }
    }

    async fn handle(self: &Arc<Self>, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let record = path
            .strip_prefix(PROBE_PATH_PREFIX)
            .and_then(|key| self.probes.get_key_value(key));
        let Some((key, record)) = record else {
            return text(StatusCode::NOT_FOUND, "no such probe\n");
        };
        if method != Method::GET && method != Method::HEAD {
            return method_not_allowed("GET, HEAD");
        }
        match self.run(key, &record.forward).await {
            Ok(()) => text(StatusCode::OK, "ok\n"),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        }
    }

    /// Runs the probe of `key`, or waits for the run already in flight.
    async fn run(self: &Arc<Self>, key: &str, forward: &Forward) -> Outcome {
        let mut outcome = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match in_flight.get(key) {
                // has_changed fails only when the run's task is gone.
                Some(rx) if rx.has_changed().is_ok() => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    in_flight.insert(key.to_owned(), rx.clone());
                    // Its own task: the run completes (within its timeout)
                    // even if kubelet hangs up first.
                    let (me, key, forward) = (self.clone(), key.to_owned(), forward.clone());
                    tokio::spawn(async move {
                        let outcome = run_probe(&forward).await;
                        me.note(&key, &outcome);
                        me.in_flight
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&key);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let done = outcome
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|o| o.clone());
        done.unwrap_or_else(|| Err("probe did not complete".into()))
    }

    /// Logs a failure at debug (kubelet retries, every period), and at
    /// info only when a probe starts or stops failing.
    fn note(&self, key: &str, outcome: &Outcome) {
        let was_failing = self
            .failing
            .get(key)
            .map(|f| f.swap(outcome.is_err(), Ordering::Relaxed));
        match (outcome, was_failing) {
            (Err(reason), Some(false)) => {
                tracing::info!(probe = key, reason = %reason, "app probe failing")
            }
            (Err(reason), _) => tracing::debug!(probe = key, reason = %reason, "app probe failed"),
            (Ok(()), Some(true)) => tracing::info!(probe = key, "app probe passing again"),
            (Ok(()), _) => {}
        }
    }
}

/// Serves the shutdown endpoint on `listener` (bound to loopback by the
/// caller) until `shutdown` turns true: `POST /shutdown` answers
/// `202 draining` and sends on `trigger` the first time.
pub async fn serve_shutdown(
    listener: TcpListener,
    trigger: mpsc::Sender<()>,
    shutdown: watch::Receiver<bool>,
) {
    let fired = Arc::new(AtomicBool::new(false));
    tracing::info!(
        addr = listener.local_addr().ok().map(tracing::field::display),
        "shutdown endpoint listening"
    );
    serve_http(listener, "shutdown", shutdown, move |req, peer| {
        let answer = shutdown_request(&req, peer, &trigger, &fired);
        async move { answer }
    })
    .await;
}

fn shutdown_request(
    req: &Request<Incoming>,
    peer: SocketAddr,
    trigger: &mpsc::Sender<()>,
    fired: &AtomicBool,
) -> Response<Full<Bytes>> {
    if !peer.ip().to_canonical().is_loopback() {
        return text(StatusCode::FORBIDDEN, "only the pod itself may ask\n");
    }
    if req.uri().path() != "/shutdown" {
        return text(StatusCode::NOT_FOUND, "not found; POST /shutdown\n");
    }
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    if !fired.swap(true, Ordering::AcqRel) {
        tracing::info!(%peer, "shutdown requested by the app (POST /shutdown); draining");
        let _ = trigger.try_send(());
    }
    text(StatusCode::ACCEPTED, "draining\n")
}
