//! Upstream connections of the data path: a pool of HTTP/1.1 connections
//! (to the local app, or to a peer sidecar) and one multiplexed HTTP/2
//! connection (to a peer sidecar).
//!
//! Why not hyper-util's pooled client: it is general (keyed by scheme and
//! authority, a connect future built and moved with every request, a task
//! spawned per HTTP/1.1 response to put the connection back), and on our
//! hop every request of a pool goes to one fixed place. Measured with
//! callgrind on the inbound proxy, its checkout, key hashing and put-back
//! were ~5,000 of ~55,000 instructions per request. Here a checkout is a
//! pop from a list under an uncontended lock, and an HTTP/1.1 connection
//! goes back to the list when its response body ends, from the body itself.

pub use super::h1client::BoxError;
use super::h1client::{connect_tcp, AppBody};
use super::idle::IdleList;
use crate::sidecar::workers::PerWorker;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How a pool opens a new connection to its one destination.
pub trait Dial: Send + Sync + 'static {
    type Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static;
    type Error: std::error::Error + Send + Sync + 'static;
    fn dial(&self) -> impl Future<Output = Result<Self::Io, Self::Error>> + Send;
}

/// Why an upstream request got no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError<E: std::error::Error + 'static> {
    /// No connection could be opened (refused, timed out, handshake refused).
    #[error("{0}")]
    Connect(E),
    /// The connection was opened but the HTTP exchange on it failed.
    #[error("{0}")]
    Http(BoxError),
}

impl<E: std::error::Error + 'static> UpstreamError<E> {
    /// The exchange failed (for `map_err`).
    pub fn http(e: impl Into<BoxError>) -> Self {
        UpstreamError::Http(e.into())
    }
}

/// Plain TCP to the local app.
pub struct TcpDial {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl Dial for TcpDial {
    type Io = TokioIo<TcpStream>;
    type Error = std::io::Error;

    async fn dial(&self) -> Result<Self::Io, Self::Error> {
        connect_tcp(self.addr, self.timeout).await.map(TokioIo::new)
    }
}

type Idle = IdleList<http1::SendRequest<Incoming>>;

/// HTTP/1.1 connections to one destination, reused one request at a time.
pub struct Http1Pool<D> {
    dial: D,
    /// Per worker loop: a connection is only reused on the loop that drives it.
    idle: PerWorker<Arc<Idle>>,
}

impl<D: Dial> Http1Pool<D> {
    pub fn new(dial: D, max_idle: usize, idle_timeout: Duration) -> Self {
        Http1Pool {
            dial,
            idle: PerWorker::new(|| Arc::new(IdleList::new(max_idle, idle_timeout))),
        }
    }

    /// Sends `req` (origin-form URI) on an idle connection, or a new one.
    /// A request that a reused connection never started to send (the
    /// other side had closed it) is retried; one sent on a fresh
    /// connection is not.
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError<D::Error>> {
        let idle = self.idle.get();
        loop {
            let (mut sender, reused) = match idle.take(|s| !s.is_closed()) {
                Some(sender) => (sender, true),
                // Boxed: the connect future is large and rarely needed;
                // this keeps every request's future small.
                None => (Box::pin(self.connect()).await?, false),
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(UpstreamError::http(e));
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let checkin = Checkin {
                        sender,
                        idle: idle.clone(),
                    };
                    return Ok(resp.map(|body| UpstreamBody::pooled(body, checkin)));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::http(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<Incoming>, UpstreamError<D::Error>> {
        let io = self.dial.dial().await.map_err(UpstreamError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::http)?;
        drive(conn);
        Ok(sender)
    }
}

/// Runs a client connection's I/O on a task of its own until it closes.
fn drive(conn: impl Future<Output = Result<(), hyper::Error>> + Send + 'static) {
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
}

/// Gives an HTTP/1.1 connection back to its pool once its response is read.
struct Checkin {
    sender: http1::SendRequest<Incoming>,
    idle: Arc<Idle>,
}

impl Checkin {
    fn release(self) {
        if !self.sender.is_closed() {
            self.idle.put(self.sender, |s| !s.is_closed());
        }
    }
}

/// The body of an upstream response. For a pooled HTTP/1.1 connection,
/// reaching its end puts the connection back in the pool; dropping it
/// before the end closes the connection instead (it is mid-response).
pub struct UpstreamBody {
    body: Source,
    checkin: Option<Checkin>,
    /// Kept until the body ends, fails or is dropped (a request's slots
    /// under a concurrency limit).
    held: Option<Box<dyn Send + Sync>>,
}

/// Which client the body comes from.
enum Source {
    Hyper(Incoming),
    /// The local app's HTTP/1.1 (`h1client`, which gives back its own
    /// connection).
    App(AppBody),
}

impl UpstreamBody {
    /// A body on a multiplexed connection: nothing to give back.
    pub fn shared(body: Incoming) -> Self {
        UpstreamBody::new(Source::Hyper(body), None)
    }

    /// A body from the local app's HTTP/1.1 pool.
    pub fn app(body: AppBody) -> Self {
        UpstreamBody::new(Source::App(body), None)
    }

    fn new(body: Source, checkin: Option<Checkin>) -> Self {
        UpstreamBody {
            body,
            checkin,
            held: None,
        }
    }

    /// Keeps `value` alive until the body ends (or fails, or is dropped).
    pub fn hold_until_end(&mut self, value: Box<dyn Send + Sync>) {
        if !self.is_end_stream() {
            self.held = Some(value);
        }
    }

    fn pooled(body: Incoming, checkin: Checkin) -> Self {
        let mut this = UpstreamBody::new(Source::Hyper(body), Some(checkin));
        // A response without a body may never be polled: release now.
        if this.is_end_stream() {
            this.release();
        }
        this
    }

    fn release(&mut self) {
        self.held = None;
        if let Some(checkin) = self.checkin.take() {
            checkin.release();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.body {
            Source::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
            Source::App(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        };
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => {
                self.checkin = None;
                self.held = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Source::Hyper(body) => body.is_end_stream(),
            Source::App(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Source::Hyper(body) => body.size_hint(),
            Source::App(body) => body.size_hint(),
        }
    }
}

/// One multiplexed HTTP/2 connection to a peer, opened on first use and
/// replaced when it closes or has been idle longer than `idle_timeout`.
/// Without `keep`, (`max_idle_per_peer: 0`) every request gets a
/// connection of its own, closed when its response ends.
pub struct Http2Conn<D> {
    dial: D,
    keep: bool,
    /// Per worker loop: each loop multiplexes over a connection it drives.
    slots: PerWorker<H2Slot>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct H2Slot {
    current: Mutex<Option<(http2::SendRequest<RequestBody>, Instant)>>,
    /// Held while a connection is being opened, so that a burst of
    /// requests opens one connection, not one each.
    opening: tokio::sync::Mutex<()>,
}

impl<D: Dial> Http2Conn<D> {
    pub fn new(dial: D, idle_timeout: Duration, keep: bool) -> Self {
        Http2Conn {
            dial,
            keep,
            slots: PerWorker::new(H2Slot::default),
            idle_timeout,
        }
    }

    /// Sends `req` (absolute URI: it becomes `:scheme` and `:authority`).
    /// A request the connection never took (it was closing) is retried
    /// once on a new connection; so is a body-less request the peer
    /// refused unprocessed: a stream above the last one a GOAWAY accepts
    /// (RFC 9113 §6.8), which happens when the peer drains while we send.
    pub async fn send(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError<D::Error>> {
        // Keeping a copy costs a header map clone; only a request without
        // a body can be replayed, and only those are copied.
        let replay = req.body().is_end_stream().then(|| head_copy(&req));
        let slot = self.slots.get();
        let mut sender = match self.open_sender(slot) {
            Some(sender) => sender,
            None => Box::pin(self.connect(slot)).await?,
        };
        let unsent = match sender.try_send_request(req.map(RequestBody::Stream)).await {
            Ok(resp) => return Ok(resp.map(UpstreamBody::shared)),
            Err(mut e) => match e.take_message() {
                Some(unsent) => unsent,
                None => {
                    let error = e.into_error();
                    match replay {
                        Some(copy) if refused_unprocessed(&error) => copy,
                        _ => return Err(UpstreamError::http(error)),
                    }
                }
            },
        };
        // This connection is closing: forget it and open another.
        *slot.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut sender = Box::pin(self.connect(slot)).await?;
        let resp = sender.send_request(unsent).await;
        resp.map(|r| r.map(UpstreamBody::shared))
            .map_err(UpstreamError::http)
    }

    /// The current connection if it is open and was used recently.
    fn open_sender(&self, slot: &H2Slot) -> Option<http2::SendRequest<RequestBody>> {
        let mut current = slot.current.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_mut() {
            Some((sender, last_used))
                if !sender.is_closed() && last_used.elapsed() < self.idle_timeout =>
            {
                *last_used = Instant::now();
                Some(sender.clone())
            }
            _ => None,
        }
    }

    async fn connect(
        &self,
        slot: &H2Slot,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError<D::Error>> {
        let _opening = match self.keep {
            true => Some(slot.opening.lock().await),
            false => None,
        };
        // Another request may have opened one while this one waited.
        if let Some(sender) = self.open_sender(slot) {
            return Ok(sender);
        }
        let io = self.dial.dial().await.map_err(UpstreamError::Connect)?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(UpstreamError::http)?;
        drive(conn);
        if self.keep {
            *slot.current.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((sender.clone(), Instant::now()));
        }
        Ok(sender)
    }
}

/// The body of a request on the HTTP/2 hop: the caller's, or none (a
/// replayed body-less request).
pub enum RequestBody {
    Stream(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Stream(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Method, target, version and headers of a body-less request, to send it again.
fn head_copy(req: &Request<Incoming>) -> Request<RequestBody> {
    let mut copy = Request::new(RequestBody::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Whether the peer refused a stream without processing it: a GOAWAY
/// without error whose last accepted stream is below ours, or
/// REFUSED_STREAM.
fn refused_unprocessed(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return (h2.is_go_away()
                && h2.is_remote()
                && h2.reason() == Some(h2::Reason::NO_ERROR))
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}
