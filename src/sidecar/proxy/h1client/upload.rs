//! The request going out on an HTTP/1.1 hop: its head, then its body framed
//! as `wire::request_framing` decided, written while the response is read.

use super::wire::{self, RequestFraming};
use super::{BoxError, ExchangeError};
use bytes::Bytes;
use hyper::body::{Body, Frame};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// The request's bytes on their way out: what is staged for the socket,
/// and the caller's body still to be read.
pub(super) struct Upload<B> {
    staged: Staged,
    body: Option<B>,
    framing: RequestFraming,
    /// Written but maybe still buffered in the connection (TLS keeps
    /// records until flushed; for plain TCP a flush is a no-op).
    unflushed: bool,
    /// The socket refused a write (the upstream closed its side); the response
    /// may still be read, but the connection is not reused.
    pub(super) failed: bool,
}

impl<B: Body<Data = Bytes> + Unpin + Send + 'static> Upload<B>
where
    B::Error: Into<BoxError>,
{
    pub(super) fn new(head: Bytes, body: Option<B>, framing: RequestFraming) -> Self {
        Upload {
            staged: Staged {
                first: head,
                ..Staged::default()
            },
            body,
            framing,
            unflushed: false,
            failed: false,
        }
    }

    /// Everything was written.
    pub(super) fn done(&self) -> bool {
        !self.failed && self.body.is_none() && self.staged.is_empty() && !self.unflushed
    }

    /// Writes what it can. `Ready(Ok)` when nothing is left to do (sent,
    /// or the socket refused); an error only for a broken request body.
    pub(super) fn poll(
        &mut self,
        io: &mut (impl AsyncWrite + Unpin),
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            if !self.staged.is_empty() {
                self.unflushed = true;
                if ready!(self.staged.poll_write(io, cx)).is_err() {
                    self.give_up();
                }
                continue;
            }
            // Flushed before waiting for more of the body, so that what
            // was staged reaches the other side meanwhile.
            if self.unflushed {
                if ready!(Pin::new(&mut *io).poll_flush(cx)).is_err() {
                    self.give_up();
                }
                self.unflushed = false;
            }
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                None => self.finish()?,
                Some(Err(e)) => {
                    self.body = None;
                    return Poll::Ready(Err(ExchangeError::RequestBody(e.into())));
                }
                Some(Ok(frame)) => self.stage(frame)?,
            }
        }
    }

    /// The connection refused the request: stop sending it.
    fn give_up(&mut self) {
        self.failed = true;
        self.staged = Staged::default();
        self.body = None;
    }

    fn stage(&mut self, frame: Frame<Bytes>) -> Result<(), ExchangeError> {
        let frame = match frame.into_data() {
            Ok(data) if data.is_empty() => return Ok(()),
            Ok(data) => {
                match &mut self.framing {
                    RequestFraming::Length(left) => {
                        *left = left
                            .checked_sub(data.len() as u64)
                            .ok_or(ExchangeError::BodyLength)?;
                        if *left == 0 {
                            self.body = None;
                        }
                    }
                    RequestFraming::Chunked(_) => {
                        self.staged.size_line = SizeLine::new(data.len());
                        self.staged.tail = b"\r\n";
                    }
                    RequestFraming::None => {}
                }
                self.staged.data = data;
                // The last frame and the body's end go out in one write.
                if self.body.as_ref().is_some_and(Body::is_end_stream) {
                    self.finish()?;
                }
                return Ok(());
            }
            Err(frame) => frame,
        };
        if let (Ok(trailers), RequestFraming::Chunked(allowed)) =
            (frame.into_trailers(), &self.framing)
        {
            self.staged.first = wire::encode_trailers(&trailers, allowed);
            self.body = None;
        }
        Ok(())
    }

    /// The caller's body ended.
    fn finish(&mut self) -> Result<(), ExchangeError> {
        self.body = None;
        match self.framing {
            RequestFraming::Length(0) | RequestFraming::None => Ok(()),
            RequestFraming::Length(_) => Err(ExchangeError::BodyLength),
            RequestFraming::Chunked(_) => {
                self.staged.tail = match self.staged.tail.is_empty() {
                    true => b"0\r\n\r\n",
                    false => b"\r\n0\r\n\r\n",
                };
                Ok(())
            }
        }
    }
}

/// Bytes waiting for the socket, in order: a head (or a trailer
/// section), a chunk-size line, data, and a fixed tail.
#[derive(Default)]
struct Staged {
    first: Bytes,
    size_line: SizeLine,
    data: Bytes,
    tail: &'static [u8],
}

impl Staged {
    fn is_empty(&self) -> bool {
        self.first.is_empty()
            && self.size_line.is_empty()
            && self.data.is_empty()
            && self.tail.is_empty()
    }

    /// One vectored write of what is staged.
    fn poll_write(
        &mut self,
        io: &mut (impl AsyncWrite + Unpin),
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let parts = [
            IoSlice::new(&self.first),
            IoSlice::new(self.size_line.as_bytes()),
            IoSlice::new(&self.data),
            IoSlice::new(self.tail),
        ];
        let n = ready!(Pin::new(io).poll_write_vectored(cx, &parts))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.advance(n);
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let k = n.min(self.first.len());
        let _ = self.first.split_to(k);
        n -= k;
        n = self.size_line.advance(n);
        let k = n.min(self.data.len());
        let _ = self.data.split_to(k);
        n -= k;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

/// A chunk-size line (`1f40\r\n`) kept inline, so staging a chunk does
/// not allocate.
#[derive(Default)]
struct SizeLine {
    bytes: [u8; 18],
    start: usize,
    end: usize,
}

impl SizeLine {
    fn new(size: usize) -> SizeLine {
        let mut line = SizeLine::default();
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        let mut rest = size;
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[rest % 16];
            rest /= 16;
            if rest == 0 {
                break;
            }
        }
        let len = digits.len() - at;
        line.bytes[..len].copy_from_slice(&digits[at..]);
        line.bytes[len..len + 2].copy_from_slice(b"\r\n");
        line.end = len + 2;
        line
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Consumes up to `n` bytes; returns what is left of `n`.
    fn advance(&mut self, n: usize) -> usize {
        let k = n.min(self.end - self.start);
        self.start += k;
        n - k
    }
}

#[cfg(test)]
mod tests {
    use super::SizeLine;

    #[test]
    fn size_lines_are_lowercase_hex() {
        assert_eq!(SizeLine::new(0).as_bytes(), b"0\r\n");
        assert_eq!(SizeLine::new(0x1f40).as_bytes(), b"1f40\r\n");
        assert_eq!(SizeLine::new(usize::MAX).as_bytes().len(), 18);
    }
}
