//! HTTP/1.1 upstream: a pool of connections to one destination (plain TCP
//! to the local app, or mTLS to a peer sidecar), each used for one exchange
//! at a time and driven by the request's own task.
//!
//! Why not hyper's client here: each of its connections runs as a task of
//! its own behind a dispatch channel, and keeps its buffers while idle.
//! Measured under a c50 load (massif at the inbound's peak), that is ~43 KiB
//! per app connection: two 32-slot blocks of the channel (~9 KiB each),
//! an 8 KiB read buffer and an 8 KiB write buffer. Here an idle connection
//! is its socket and a timestamp; the read buffer is dropped when an
//! exchange ends, and no task or channel stands between a request and its
//! connection (one wake-up less each way).
//!
//! The request is written while the response is read, so an upstream may
//! answer before it has read the whole body. A connection goes back to the pool
//! only when both sides of the exchange ended cleanly.

use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// An error of a request body (the caller's, or a test's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

use super::dial::{Conn, Dial};
use super::idle::IdleList;
use crate::sidecar::workers::PerWorker;
use upload::Upload;
use wire::{Chunk, Chunked, Head, RequestFraming, ResponseFraming, WireError};

mod upload;
pub mod wire;

/// The first read of an exchange reserves this much; a read that fills
/// the buffer doubles the next one, up to `MAX_READ`.
const FIRST_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("the upstream closed the connection before a complete response")]
    Closed,
    #[error("the upstream answered 101 to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
    #[error("the request body does not match its content-length")]
    BodyLength,
}

impl ExchangeError {
    /// The upstream answered, but not in valid HTTP/1.1 (or with an upgrade
    /// nobody asked for), as opposed to not answering at all.
    pub fn is_invalid(&self) -> bool {
        matches!(self, ExchangeError::Wire(_) | ExchangeError::UnaskedUpgrade)
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError<E = io::Error> {
    /// No connection could be opened.
    #[error("{0}")]
    Connect(E),
    #[error("{0}")]
    Exchange(ExchangeError),
}

/// Where a connection goes back to when its exchange ends cleanly (one
/// per worker loop).
type Home<C> = Arc<IdleList<C>>;

/// HTTP/1.1 connections to one destination, reused one exchange at a time.
pub struct Http1Client<D: Dial> {
    dial: D,
    /// Per worker loop: a socket is only used on the loop it is registered with.
    homes: PerWorker<Home<D::Io>>,
}

impl<D: Dial> Http1Client<D> {
    pub fn new(dial: D, max_idle: usize, idle_timeout: Duration) -> Self {
        Http1Client {
            dial,
            homes: PerWorker::new(|| {
                Arc::new(IdleList::new(max_idle, idle_timeout, Conn::still_open))
            }),
        }
    }

    /// Sends `req` (origin-form target, its Host set) on an idle connection
    /// or a new one. A body-less request with a safe-to-repeat method that
    /// got no byte of response on a reused connection (the upstream closed it
    /// as we sent) is sent once more on a new connection.
    pub async fn send<B>(
        &self,
        req: Request<B>,
    ) -> Result<Response<ClientBody<B, D::Io>>, SendError<D::Error>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let framing =
            wire::request_framing(&mut parts, body.is_end_stream(), body.size_hint().exact());
        let head = wire::encode_head(&parts);
        let repeatable = framing == RequestFraming::None && idempotent(&parts.method);
        let mut body = (framing != RequestFraming::None).then_some(body);
        let home = self.homes.get();
        loop {
            let (io, reused) = match home.take() {
                Some(io) => (io, true),
                // Boxed: rarely needed, and keeps every request's future small.
                None => (Box::pin(self.connect()).await?, false),
            };
            let upload = Upload::new(head.clone(), body.take(), framing.clone());
            // Boxed: the response body carries it, and bodies are moved
            // (by value) through several layers on the way out.
            let mut exchange = Box::new(Exchange::new(io, upload));
            match poll_fn(|cx| exchange.poll_head(cx)).await {
                Ok(head) => {
                    return ClientBody::respond(exchange, head, &parts.method, home.clone())
                        .map_err(SendError::Exchange)
                }
                Err(_) if reused && repeatable && !exchange.received => continue,
                Err(e) => return Err(SendError::Exchange(e)),
            }
        }
    }

    async fn connect(&self) -> Result<D::Io, SendError<D::Error>> {
        self.dial.dial().await.map_err(SendError::Connect)
    }
}

/// Methods whose request may be sent twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// One exchange on one connection: the request going out, the response
/// coming in.
struct Exchange<B, C> {
    io: C,
    buf: BytesMut,
    next_read: usize,
    upload: Upload<B>,
    /// Any byte of the response has arrived.
    received: bool,
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static, C: Conn> Exchange<B, C>
where
    B::Error: Into<BoxError>,
{
    fn new(io: C, upload: Upload<B>) -> Self {
        Exchange {
            io,
            buf: BytesMut::new(),
            next_read: FIRST_READ,
            upload,
            received: false,
        }
    }

    /// The final response head; informational responses are skipped.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, ExchangeError>> {
        loop {
            if let Poll::Ready(Err(e)) = self.upload.poll(&mut self.io, cx) {
                return Poll::Ready(Err(e));
            }
            if !self.buf.is_empty() {
                if let Some(head) = wire::parse_head(&mut self.buf)? {
                    match head.status.as_u16() {
                        101 => return Poll::Ready(Err(ExchangeError::UnaskedUpgrade)),
                        100..=199 => continue,
                        _ => return Poll::Ready(Ok(head)),
                    }
                }
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(ExchangeError::Closed));
            }
        }
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.next_read / 2 {
            self.buf.reserve(self.next_read);
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(self.io.poll_read_buf(cx, &mut self.buf))?;
        self.received |= n > 0;
        if n == room {
            self.next_read = (self.next_read * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }
}

/// The body of an upstream's response. Reading it also keeps the
/// request's body going out. At its end the connection goes back to the
/// pool if the exchange ended cleanly; dropped before its end, the
/// connection closes.
pub struct ClientBody<B = Incoming, C = TcpStream> {
    exchange: Option<Box<Exchange<B, C>>>,
    framing: Decoding,
    keep_alive: bool,
    home: Home<C>,
}

#[derive(Debug, Clone, Copy)]
enum Decoding {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

impl Decoding {
    /// The next piece of the body from what is buffered; `None` when more
    /// must be read.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, WireError> {
        match self {
            Decoding::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                let data = buf.split_to(n as usize).freeze();
                if *left == 0 {
                    *self = Decoding::Done;
                }
                Ok(Some(Chunk::Data(data)))
            }
            Decoding::Chunked(state) => state.decode(buf),
            Decoding::Close if buf.is_empty() => Ok(None),
            Decoding::Close => Ok(Some(Chunk::Data(buf.split().freeze()))),
            Decoding::Done => Ok(Some(Chunk::End)),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static, C: Conn> ClientBody<B, C>
where
    B::Error: Into<BoxError>,
{
    fn respond(
        exchange: Box<Exchange<B, C>>,
        mut head: Head,
        method: &Method,
        home: Home<C>,
    ) -> Result<Response<ClientBody<B, C>>, ExchangeError> {
        let framing = match wire::response_framing(&mut head, method)? {
            ResponseFraming::Empty | ResponseFraming::Length(0) => Decoding::Done,
            ResponseFraming::Length(n) => Decoding::Length(n),
            ResponseFraming::Chunked => Decoding::Chunked(Chunked::Size),
            ResponseFraming::Close => Decoding::Close,
        };
        let mut body = ClientBody {
            exchange: Some(exchange),
            framing,
            keep_alive: head.keep_alive,
            home,
        };
        // A response without a body may never be polled: release now.
        if let Decoding::Done = body.framing {
            body.end();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// The response is complete: the connection goes back to the pool if
    /// the request went out whole and nothing is left over; else it closes.
    fn end(&mut self) {
        self.framing = Decoding::Done;
        let Some(mut exchange) = self.exchange.take() else {
            return;
        };
        let reusable = self.keep_alive && exchange.buf.is_empty();
        if exchange.upload.done() {
            if reusable {
                self.home.put(exchange.io);
            }
            return;
        }
        if exchange.upload.failed {
            return;
        }
        // The app answered before it had the whole request, and may still
        // read the rest (hyper's client let it): the rest goes out on a
        // task of its own, and the connection is reused only if all of it did.
        let home = self.home.clone();
        tokio::spawn(async move {
            let sent = poll_fn(|cx| exchange.upload.poll(&mut exchange.io, cx)).await;
            if sent.is_ok() && reusable && exchange.upload.done() {
                home.put(exchange.io);
            }
        });
    }

    fn fail(
        &mut self,
        e: impl Into<ExchangeError>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        self.exchange = None;
        self.framing = Decoding::Done;
        Poll::Ready(Some(Err(e.into())))
    }
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static, C: Conn> Body for ClientBody<B, C>
where
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = ExchangeError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let this = self.get_mut();
        loop {
            let Some(exchange) = this.exchange.as_mut() else {
                return Poll::Ready(None);
            };
            if let Poll::Ready(Err(e)) = exchange.upload.poll(&mut exchange.io, cx) {
                return this.fail(e);
            }
            match this.framing.decode(&mut exchange.buf) {
                Err(e) => return this.fail(e),
                Ok(Some(Chunk::Data(data))) => {
                    if let Decoding::Done = this.framing {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Some(Chunk::Trailers(trailers))) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Ok(Some(Chunk::End)) => {
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            match ready!(exchange.poll_fill(cx)) {
                Err(e) => return this.fail(e),
                Ok(0) if matches!(this.framing, Decoding::Close) => {
                    // Delimited by the close: the connection ends with it.
                    this.keep_alive = false;
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(ExchangeError::Closed),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Decoding::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Decoding::Length(n) => SizeHint::with_exact(n),
            Decoding::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
