//! Upstream connections of the data path that hyper drives: one
//! multiplexed HTTP/2 connection (to a peer sidecar, or h2c to the local
//! app), and the body of any upstream response, whichever client it came
//! from. HTTP/1.1 upstreams are `h1client`'s.
//!
//! Why not hyper-util's pooled client: it is general (keyed by scheme and
//! authority, a connect future built and moved with every request, a task
//! spawned per HTTP/1.1 response to put the connection back), and on our
//! hop every request of a pool goes to one fixed place. Measured with
//! callgrind on the inbound proxy, its checkout, key hashing and put-back
//! were ~5,000 of ~55,000 instructions per request.

use super::connect::PeerStream;
pub use super::dial::{Dial, TcpDial};
pub use super::h1client::BoxError;
use super::h1client::{ClientBody, SendError};
use crate::sidecar::workers::PerWorker;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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

impl<E: std::error::Error + 'static> From<SendError<E>> for UpstreamError<E> {
    fn from(e: SendError<E>) -> Self {
        match e {
            SendError::Connect(e) => UpstreamError::Connect(e),
            SendError::Exchange(e) => UpstreamError::http(e),
        }
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

/// The body of an upstream response, whichever client it came from.
pub struct UpstreamBody {
    body: Source,
    /// Kept until the body ends, fails or is dropped (a request's slots
    /// under a concurrency limit).
    held: Option<Box<dyn Send + Sync>>,
}

/// Which client the body comes from.
enum Source {
    Hyper(Incoming),
    /// HTTP/1.1 from the local app.
    App(ClientBody),
    /// HTTP/1.1 from a peer sidecar.
    Peer(ClientBody<Incoming, PeerStream>),
}

impl UpstreamBody {
    /// A body on a multiplexed connection.
    pub fn shared(body: Incoming) -> Self {
        UpstreamBody::new(Source::Hyper(body))
    }

    /// A body from the local app's HTTP/1.1 pool.
    pub fn app(body: ClientBody) -> Self {
        UpstreamBody::new(Source::App(body))
    }

    /// A body from a peer sidecar's HTTP/1.1 pool.
    pub fn peer(body: ClientBody<Incoming, PeerStream>) -> Self {
        UpstreamBody::new(Source::Peer(body))
    }

    fn new(body: Source) -> Self {
        UpstreamBody { body, held: None }
    }

    /// Keeps `value` alive until the body ends (or fails, or is dropped).
    pub fn hold_until_end(&mut self, value: Box<dyn Send + Sync>) {
        if !self.is_end_stream() {
            self.held = Some(value);
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
            Source::Peer(body) => Pin::new(body).poll_frame(cx).map_err(BoxError::from),
        };
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.held = None,
            Poll::Ready(Some(Ok(_))) if self.is_end_stream() => self.held = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Source::Hyper(body) => body.is_end_stream(),
            Source::App(body) => body.is_end_stream(),
            Source::Peer(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Source::Hyper(body) => body.size_hint(),
            Source::App(body) => body.size_hint(),
            Source::Peer(body) => body.size_hint(),
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
            .handshake(TokioIo::new(io))
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
