//! A byte-counting wrapper for the sockets on the mTLS side.

use super::serve::Activity;
use prometheus::IntCounter;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Counts bytes read (rx) and written (tx) on the wrapped stream, and
/// notes the connection's activity for its idle timeout.
pub struct CountingIo<T> {
    inner: T,
    counters: Option<(IntCounter, IntCounter)>,
    activity: Option<Arc<Activity>>,
}

impl<T> CountingIo<T> {
    pub fn new(
        inner: T,
        counters: Option<(IntCounter, IntCounter)>,
        activity: Option<Arc<Activity>>,
    ) -> Self {
        CountingIo {
            inner,
            counters,
            activity,
        }
    }

    /// The wrapped stream (to read socket options such as the original
    /// destination after a handshake).
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn note(&self, n: usize, rx: bool) {
        if n == 0 {
            return;
        }
        if let Some((rx_counter, tx_counter)) = &self.counters {
            if rx { rx_counter } else { tx_counter }.inc_by(n as u64);
        }
        if let Some(activity) = &self.activity {
            activity.moved(n);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountingIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(buf.filled().len() - before, true);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountingIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.note(n, false);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.note(n, false);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
