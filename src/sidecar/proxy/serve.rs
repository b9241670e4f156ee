//! What every listener and connection of the data path shares: the accept
//! loop with its connection limit, the HTTP server settings that carry the
//! limits (header size and count, header read timeout, streams), and the
//! reasons meshguard closes a connection itself: drain on shutdown, idle
//! timeout, or a peer whose proof has lapsed. Closing is always graceful:
//! requests in flight finish, HTTP/1 gets `Connection: close`, HTTP/2 GOAWAY.

use super::ProxyBody;
use crate::sidecar::audit;
use crate::sidecar::config::LimitsConfig;
use crate::sidecar::metrics::Direction;
use crate::sidecar::tls::{LiveConn, Revocation};
use crate::sidecar::workers;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::{service_fn, HttpService};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Connection activity, for the idle timeout: bytes moved and requests in flight.
#[derive(Default)]
pub struct Activity {
    bytes: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    pub fn moved(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why meshguard itself is closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Drain,
    Idle,
    Revoked(Revocation),
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Drain => "draining",
            CloseReason::Idle => "idle_timeout",
            CloseReason::Revoked(r) => r.as_str(),
        }
    }
}

/// Everything that may end one connection from our side.
pub struct Control {
    pub drain: watch::Receiver<bool>,
    pub idle_timeout: Option<Duration>,
    pub activity: Arc<Activity>,
    pub revoked: Option<Arc<LiveConn>>,
    /// HTTP/2: a drain sends GOAWAY at once instead of waiting for a quiet
    /// moment, which a multiplexed connection under load never has.
    pub multiplexed: bool,
}

impl Control {
    /// Completes when the connection should be closed gracefully.
    pub async fn close_reason(&mut self) -> CloseReason {
        let drain_activity = self.activity.clone();
        let multiplexed = self.multiplexed;
        let drain = async {
            drained(&mut self.drain).await;
            // HTTP/1 clients were told `Connection: close` during the drain
            // delay; a connection still open now may have a request on its
            // way (one just accepted, or a client that ignored the hint).
            // Close only once it is quiet, so no request that reached us is
            // dropped. HTTP/2's GOAWAY is safe at any time: streams already
            // sent finish, and the client opens new ones elsewhere.
            if !multiplexed {
                wait_quiet(&drain_activity, DRAIN_QUIET).await;
            }
            CloseReason::Drain
        };
        let revoked = async {
            match &self.revoked {
                Some(live) => CloseReason::Revoked(live.revoked().await),
                None => std::future::pending().await,
            }
        };
        let activity = self.activity.clone();
        let idle_timeout = self.idle_timeout;
        let idle = async move {
            let Some(timeout) = idle_timeout else {
                return std::future::pending().await;
            };
            wait_quiet(&activity, timeout).await;
            CloseReason::Idle
        };
        tokio::select! {
            r = drain => r,
            r = revoked => r,
            r = idle => r,
        }
    }
}

/// How long a connection must be quiet before a drain closes it.
pub const DRAIN_QUIET: Duration = Duration::from_millis(300);

/// Completes once no request has been in flight and no byte has moved for `quiet`.
pub(super) async fn wait_quiet(activity: &Activity, quiet: Duration) {
    let step = (quiet / 4).max(Duration::from_millis(10));
    let (mut last_bytes, mut quiet_for) = (activity.bytes.load(Ordering::Relaxed), Duration::ZERO);
    loop {
        tokio::time::sleep(step).await;
        let bytes = activity.bytes.load(Ordering::Relaxed);
        if bytes != last_bytes || activity.in_flight.load(Ordering::Relaxed) > 0 {
            (last_bytes, quiet_for) = (bytes, Duration::ZERO);
        } else {
            quiet_for += step;
            if quiet_for >= quiet {
                return;
            }
        }
    }
}

/// Completes once a drain has started (or the app is gone, which means the same).
pub async fn drained(drain: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it before returning.
    let started = drain.wait_for(|d| *d).await.is_ok();
    let _ = started;
}

/// The reasons to close one connection, watched on a task of their own:
/// the connection's task is woken for every read and write, and polling the
/// drain, revocation and idle futures at each of those wakeups cost more
/// than the request's policy check. The connection polls only this handle.
/// Dropping it (the connection ended first) stops the watch.
pub struct CloseWatch(tokio::task::JoinHandle<CloseReason>);

impl CloseWatch {
    pub fn spawn(mut control: Control) -> CloseWatch {
        CloseWatch(tokio::spawn(async move { control.close_reason().await }))
    }

    /// Completes with the reason once the connection should close.
    pub async fn reason(&mut self) -> CloseReason {
        match (&mut self.0).await {
            Ok(reason) => reason,
            // Only if the runtime is shutting down: nothing left to watch.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for CloseWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One accepted connection, ready to serve: who is on the other end and
/// what may close it.
pub struct Connection {
    pub direction: Direction,
    pub peer: SocketAddr,
    /// HTTP/2 (negotiated by ALPN) rather than HTTP/1.1.
    pub h2: bool,
    pub control: Control,
    /// Set once a drain begins (see [`Tracked::closing_flag`]).
    pub closing: Arc<AtomicBool>,
}

/// Serves the requests of one connection with `handle`, in either
/// direction and either HTTP version, until the connection ends or its
/// [`Control`] asks for it to close; then closes it gracefully and waits
/// for the requests in flight. Each request is counted in flight (for the
/// idle and drain timers) and, once a drain has begun, its HTTP/1 response
/// says `Connection: close`.
pub async fn serve<I, H, Fut>(io: I, limits: &LimitsConfig, conn: Connection, handle: H)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let Connection {
        direction,
        peer,
        h2,
        control,
        closing,
    } = conn;
    let activity = control.activity.clone();
    // The request's future is made inside the service's own, not before it
    // and moved in: it is the largest value of a request, and hyper moves
    // the service future once more into the stream's task.
    let handle = Arc::new(handle);
    let respond = move |req| {
        let in_flight = activity.request();
        let closing = closing.clone();
        let handle = handle.clone();
        async move {
            let mut resp = handle(req).await;
            close_if_draining(&closing, !h2, &mut resp);
            drop(in_flight);
            Ok::<_, Infallible>(resp)
        }
    };
    // Memory per idle connection: most connections are HTTP/1 keep-alive
    // connections that sit idle between requests. hyper's HTTP/1 dispatcher
    // keeps a slot the size of the service future for the connection's
    // whole life (~5 KiB here), so that future is boxed per request; and the
    // HTTP/2 connection, the larger of the two, is boxed so the task of an
    // HTTP/1 connection is not sized for it. (HTTP/2 spawns each stream's
    // future as a task anyway, and its connections are few.)
    let result = if h2 {
        let conn = http2_builder(limits).serve_connection(io, service_fn(respond));
        Box::pin(until_closed(conn, control, direction, peer)).await
    } else {
        // With upgrades: a `101` hands the connection to `proxy/upgrade.rs`.
        let service = service_fn(move |req| Box::pin(respond(req)));
        let conn = http1_builder(limits)
            .serve_connection(io, service)
            .with_upgrades();
        until_closed(conn, control, direction, peer).await
    };
    if let Err(e) = result {
        log_connection_error(direction, peer, &e);
    }
}

/// A hyper server connection of either HTTP version.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

/// Drives `conn` until it ends or `control` asks for it to close, then
/// closes it gracefully and waits for in-flight work. The close reasons
/// are watched on their own task ([`CloseWatch`]).
async fn until_closed<C: Graceful>(
    conn: C,
    control: Control,
    direction: Direction,
    peer: SocketAddr,
) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    let mut watch = CloseWatch::spawn(control);
    tokio::select! {
        biased;
        result = conn.as_mut() => result,
        reason = watch.reason() => {
            audit::connection_closed(direction, &peer, reason.as_str());
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// Logs why a served connection ended with an error; an oversized request
/// head (answered 431 by the HTTP layer) is an audit event.
fn log_connection_error(direction: Direction, peer: SocketAddr, err: &hyper::Error) {
    if err.is_parse_too_large() {
        audit::headers_too_large(direction, &peer);
    } else if err.is_parse() {
        audit::malformed_request(direction, &peer, err);
    } else if err.is_timeout() {
        audit::header_read_timeout(direction, &peer);
    } else {
        let direction = direction.as_str();
        tracing::debug!(direction, peer_addr = %peer, error = %err, "connection ended with an error");
    }
}

/// HTTP/1 server settings from the limits.
pub fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 64 * 1024);
    // hyper parses up to 100 headers on the stack; asking for another count
    // moves the parse to the heap, so only do it when configured.
    if limits.max_headers != 100 {
        b.max_headers(limits.max_headers);
    }
    b
}

/// HTTP/2 server settings from the limits.
pub fn http2_builder(limits: &LimitsConfig) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32);
    b
}

/// Counts open connections of a sidecar, to know when a drain is done,
/// and says when a drain has begun.
#[derive(Clone, Default)]
pub struct ConnectionTracker {
    active: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
}

impl ConnectionTracker {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// From now on HTTP/1 responses carry `Connection: close`, so clients
    /// move off their keep-alive connections while we still serve, instead
    /// of racing a request against the close at the end of the drain.
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    fn track(&self, permit: OwnedSemaphorePermit) -> Tracked {
        self.active.fetch_add(1, Ordering::AcqRel);
        Tracked {
            tracker: self.clone(),
            _permit: permit,
        }
    }
}

/// Held by a connection task for as long as the connection lives.
pub struct Tracked {
    tracker: ConnectionTracker,
    _permit: OwnedSemaphorePermit,
}

impl Tracked {
    /// The flag [`ConnectionTracker::start_closing`] sets, for request handlers.
    pub fn closing_flag(&self) -> Arc<AtomicBool> {
        self.tracker.closing.clone()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds `Connection: close` to an HTTP/1 response once a drain has begun.
fn close_if_draining<B>(closing: &AtomicBool, http1: bool, resp: &mut http::Response<B>) {
    if http1 && closing.load(Ordering::Relaxed) {
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
}

/// Accepts connections until a drain starts, at most `max_connections` at
/// once (the excess is closed at once, with a log line: queueing them would
/// only hide the overload), and hands each to `handle` on its own task, on
/// the next worker loop in turn (`runtime.workers`, `sidecar/workers.rs`).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    direction: Direction,
    max_connections: usize,
    mut drain: watch::Receiver<bool>,
    tracker: ConnectionTracker,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Tracked) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(max_connections));
    let handle = Arc::new(handle);
    let mut dealt = 0usize;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => match (permits.clone().try_acquire_owned(), super::transparent::canonical(addr)) {
                    (Ok(permit), addr) => {
                        // Every write of ours is a whole message (a response,
                        // a batch of HTTP/2 frames, a TCP read passed on):
                        // Nagle would only hold a second small write, such as
                        // a WINDOW_UPDATE, until the first is acknowledged.
                        // Our own connections set it when they dial.
                        let _ = tcp.set_nodelay(true);
                        let (handle, tracked) = (handle.clone(), tracker.track(permit));
                        workers::spawn_connection(dealt, tcp, move |tcp| handle(tcp, addr, tracked));
                        dealt = dealt.wrapping_add(1);
                    }
                    (Err(_), addr) => {
                        audit::connection_refused(direction, addr, max_connections);
                    }
                },
                Err(e) => {
                    tracing::warn!(direction = direction.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = drained(&mut drain) => return,
        }
    }
}
