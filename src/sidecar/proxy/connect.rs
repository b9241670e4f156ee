//! Originating mTLS to a peer sidecar: TCP connect, TLS 1.3 handshake with
//! our SVID, and the peer's identity checked by the route's verifier. Used
//! as the dialer of the upstream connections of one outbound route.

use super::dial::{Conn, Dial};
use super::CountingIo;
use crate::sidecar::audit;
use crate::sidecar::identity::Role;
use crate::sidecar::metrics::{ConnectionGuard, Direction, Metrics};
use crate::sidecar::tls::{placeholder_server_name, CredentialStore, LiveConn, VerifyError};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why a connection to a peer sidecar could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("peer {peer} unreachable: {source}")]
    Unreachable { peer: Arc<str>, source: io::Error },
    #[error("peer {peer} did not answer within {0:?}", .timeout)]
    Timeout { peer: Arc<str>, timeout: Duration },
    #[error("handshake with peer {peer} refused: {reason}")]
    Refused { peer: Arc<str>, reason: VerifyError },
    #[error("handshake with peer {peer} failed: {source}")]
    Handshake { peer: Arc<str>, source: io::Error },
}

impl ConnectError {
    /// A short bounded label for metrics and logs.
    pub fn reason_label(&self) -> &'static str {
        match self {
            ConnectError::Unreachable { .. } => "unreachable",
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::Refused { reason, .. } => reason.reason_label(),
            ConnectError::Handshake { .. } => "handshake_failed",
        }
    }

    /// The peer address this error is about.
    pub fn peer(&self) -> &str {
        match self {
            ConnectError::Unreachable { peer, .. }
            | ConnectError::Timeout { peer, .. }
            | ConnectError::Refused { peer, .. }
            | ConnectError::Handshake { peer, .. } => peer,
        }
    }
}

/// Connects every request of one route to the same peer, whatever the URI
/// says: the route, not the caller, decides where a request may go.
#[derive(Clone)]
pub struct PeerConnector {
    peer: Arc<str>,
    tls: TlsConnector,
    timeout: Duration,
    metrics: Arc<Metrics>,
    store: Arc<CredentialStore>,
}

impl PeerConnector {
    pub fn new(
        peer: &str,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        store: Arc<CredentialStore>,
    ) -> Self {
        PeerConnector {
            peer: Arc::from(peer),
            tls: TlsConnector::from(tls),
            timeout,
            metrics,
            store,
        }
    }

    /// Connects, counting the handshake and logging a refusal.
    async fn connect_counted(self) -> Result<PeerStream, ConnectError> {
        let metrics = self.metrics.clone();
        let result = self.connect().await;
        match &result {
            Ok(_) => metrics.handshake(Direction::Outbound, true, ""),
            Err(e) => {
                metrics.handshake(Direction::Outbound, false, e.reason_label());
                audit::peer_connect_refused(e.peer(), e.reason_label(), e);
            }
        }
        result
    }

    async fn connect(self) -> Result<PeerStream, ConnectError> {
        let peer = self.peer.clone();
        let attempt = async {
            let tcp =
                TcpStream::connect(&*peer)
                    .await
                    .map_err(|source| ConnectError::Unreachable {
                        peer: peer.clone(),
                        source,
                    })?;
            let _ = tcp.set_nodelay(true);
            let tcp = CountingIo::new(
                tcp,
                Some(self.metrics.byte_counters(Direction::Outbound)),
                None,
            );
            self.tls
                .connect(placeholder_server_name(), tcp)
                .await
                .map_err(|source| match VerifyError::from_io(&source) {
                    Some(reason) => ConnectError::Refused {
                        peer: peer.clone(),
                        reason: reason.clone(),
                    },
                    None => ConnectError::Handshake {
                        peer: peer.clone(),
                        source,
                    },
                })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(tls)) => {
                let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
                let live = self.store.live().register(certs, Role::Server);
                Ok(PeerStream {
                    tls,
                    live,
                    _open: self.metrics.connection(Direction::Outbound),
                })
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ConnectError::Timeout {
                peer,
                timeout: self.timeout,
            }),
        }
    }
}

impl Dial for PeerConnector {
    type Io = PeerStream;
    type Error = ConnectError;

    fn dial(&self) -> impl Future<Output = Result<Self::Io, Self::Error>> + Send {
        self.clone().connect_counted()
    }
}

/// An established mTLS stream to a peer.
pub struct PeerStream {
    tls: TlsStream<CountingIo<TcpStream>>,
    /// Revoked when the peer's certificate expires or stops verifying; the
    /// stream then reads as closed, so the pool drops it and the next
    /// request makes a new handshake.
    live: Arc<LiveConn>,
    _open: ConnectionGuard,
}

impl PeerStream {
    /// The stream's registration for continuous validation, so a relay
    /// can close both directions when the peer's proof lapses.
    pub fn live(&self) -> &Arc<LiveConn> {
        &self.live
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.live.poll_revoked(cx) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

impl Conn for PeerStream {
    /// Not revoked, and nothing arrived while idle: a peer closing the
    /// connection sends close_notify or a FIN, which marks the socket
    /// readable (a TLS record is never expected between exchanges).
    fn still_open(&self) -> bool {
        !self.live.is_revoked() && self.tls.get_ref().0.get_ref().still_open()
    }
}
