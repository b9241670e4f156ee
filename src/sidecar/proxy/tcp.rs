//! Opaque TCP over mTLS: app ports that speak something other than HTTP
//! (redis, postgres, ...) carried whole between two sidecars, with the
//! caller's identity proven by the handshake and authorized once per
//! connection.
//!
//! The outbound names the app port it wants in ALPN: it offers exactly
//! one protocol, `meshguard-tcp/<port>`. The inbound accepts that token
//! only for the ports of its `inbound.tcp_ports` (beside `h2` and
//! `http/1.1`), so an undeclared port fails inside the handshake
//! (`no_application_protocol`) and a declared one is known the moment the
//! handshake ends: no extra round trip, no preamble to parse, and nothing
//! waits for the client to speak first, so server-speaks-first protocols
//! work. Under iptables capture the inbound also knows the port the caller
//! dialled; the two must agree or the connection is refused.
//!
//! This file holds what both directions share: the ALPN token, the relay
//! (both ways, half-close passed on as it happens), what may stop it, and
//! the one record (metrics and audit line) of each connection.

mod inbound;
mod outbound;

pub use inbound::TcpInbound;
pub use outbound::{TcpOutbound, TcpRoute};

use super::serve::{drained, Activity, CloseReason, Control};
use crate::sidecar::audit::{self, TcpRecord};
use crate::sidecar::config::Config;
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Direction, Disposition, Metrics};
use crate::sidecar::tls::{outbound_client_config, CredentialStore, TlsError, UpstreamProtocol};
use prometheus::IntCounter;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The ALPN protocol id of opaque TCP is this prefix and the app port in decimal.
pub const ALPN_PREFIX: &[u8] = b"meshguard-tcp/";

/// Relay buffer per direction: two TLS records' worth, so a large value
/// moves in few syscalls while an idle pool of connections stays small.
const RELAY_BUFFER: usize = 32 * 1024;

/// Time allowed to connect to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time given to tell both sides we are closing (TLS close_notify, FIN).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

/// The ALPN protocol id that asks for app port `port`.
pub fn alpn(port: u16) -> Vec<u8> {
    [ALPN_PREFIX, port.to_string().as_bytes()].concat()
}

/// The app port an ALPN protocol id of opaque TCP names: canonical
/// decimal only (no sign, no leading zero), 1 to 65535.
pub fn port_of_alpn(alpn: &[u8]) -> Option<u16> {
    let digits = alpn.strip_prefix(ALPN_PREFIX)?;
    if digits.first() == Some(&b'0') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether the negotiated protocol is opaque TCP.
pub fn is_tcp(alpn: Option<&[u8]>) -> bool {
    alpn.is_some_and(|p| p.starts_with(ALPN_PREFIX))
}

/// The inbound's TLS config with the tokens of its TCP ports accepted
/// after the HTTP ones.
pub fn server_config(
    base: Arc<rustls::ServerConfig>,
    tcp_ports: &[u16],
) -> Arc<rustls::ServerConfig> {
    if tcp_ports.is_empty() {
        return base;
    }
    let mut config = Arc::unwrap_or_clone(base);
    config
        .alpn_protocols
        .extend(tcp_ports.iter().map(|&p| alpn(p)));
    Arc::new(config)
}

/// The outbound's TLS config for app port `port` behind a peer that must
/// prove `expected`: the HTTP hop's config offering only that port's token.
pub fn client_config(
    store: &Arc<CredentialStore>,
    expected: SpiffeId,
    port: u16,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let base = outbound_client_config(store, expected, UpstreamProtocol::Http1)?;
    let mut config = Arc::unwrap_or_clone(base);
    config.alpn_protocols = vec![alpn(port)];
    Ok(Arc::new(config))
}

/// The settings of the relays, from the sidecar's config.
#[derive(Debug, Clone, Copy)]
pub struct TcpSettings {
    /// `limits.idle_timeout_ms`: a connection that moves no byte this long is closed.
    pub idle_timeout: Option<Duration>,
    /// After a drain begins, a connection is closed once quiet, and at the
    /// latest after this (inside `shutdown.deadline_ms`, so every
    /// connection ends, with its audit line, before the sidecar exits).
    pub drain_grace: Duration,
    /// `runtime.poll_interval_ms`: how often a policy change is looked for.
    pub poll: Duration,
}

impl TcpSettings {
    pub fn new(config: &Config) -> TcpSettings {
        let budget = config
            .shutdown
            .deadline_ms
            .saturating_sub(config.shutdown.drain_delay_ms);
        TcpSettings {
            idle_timeout: config.limits.idle_timeout(),
            // A fifth of the budget is left for the close itself.
            drain_grace: Duration::from_millis(budget - budget / 5),
            poll: Duration::from_millis(config.runtime.poll_interval_ms),
        }
    }
}

/// Which side of the connection the plain (local app) socket is.
#[derive(Clone, Copy)]
enum Plain {
    /// Inbound: the app accepted the connection.
    Server,
    /// Outbound: the app opened it.
    Client,
}

/// The local app's socket of one relayed connection: counts this
/// connection's payload bytes each way (every relayed byte crosses it),
/// feeds the byte counters, and notes activity for the idle and drain timers.
struct TallyIo {
    inner: TcpStream,
    side: Plain,
    read: u64,
    written: u64,
    read_counter: IntCounter,
    write_counter: IntCounter,
    activity: Arc<Activity>,
}

impl TallyIo {
    /// `counters` are (client_to_server, server_to_client).
    fn new(
        inner: TcpStream,
        side: Plain,
        counters: &(IntCounter, IntCounter),
        activity: Arc<Activity>,
    ) -> TallyIo {
        let (to_server, to_client) = counters.clone();
        let (read_counter, write_counter) = match side {
            Plain::Server => (to_client, to_server),
            Plain::Client => (to_server, to_client),
        };
        TallyIo {
            inner,
            side,
            read: 0,
            written: 0,
            read_counter,
            write_counter,
            activity,
        }
    }

    /// (bytes to the server, bytes to the client) so far.
    fn bytes(&self) -> (u64, u64) {
        match self.side {
            Plain::Server => (self.written, self.read),
            Plain::Client => (self.read, self.written),
        }
    }
}

impl AsyncRead for TallyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.read += n as u64;
            this.read_counter.inc_by(n as u64);
            this.activity.moved(n);
        }
        poll
    }
}

impl AsyncWrite for TallyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.written += n as u64;
            this.write_counter.inc_by(n as u64);
            this.activity.moved(n);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Why meshguard itself ends a relayed connection.
enum Stop {
    /// Drain, idle timeout, or the peer's proof lapsed.
    Close(CloseReason),
    /// A reloaded policy no longer allows the connection.
    PolicyDenies,
}

/// The reasons to stop one relay, watched on a task of their own (as
/// `serve::CloseWatch` does for HTTP: the relay's task is woken for every
/// read and write). Dropping it stops the watch.
struct Watch(tokio::task::JoinHandle<Stop>);

impl Watch {
    /// Watches `control` (with its drain waiting for a quiet moment), a
    /// drain that has lasted `grace`, and `more` (a policy change).
    fn spawn(
        mut control: Control,
        grace: Duration,
        more: impl Future<Output = Stop> + Send + 'static,
    ) -> Watch {
        let mut drain = control.drain.clone();
        Watch(tokio::spawn(async move {
            let deadline = async {
                drained(&mut drain).await;
                tokio::time::sleep(grace).await;
            };
            tokio::select! {
                reason = control.close_reason() => Stop::Close(reason),
                () = deadline => Stop::Close(CloseReason::Drain),
                stop = more => stop,
            }
        }))
    }

    async fn stop(&mut self) -> Stop {
        match (&mut self.0).await {
            Ok(stop) => stop,
            // Only if the runtime is shutting down: nothing left to watch.
            Err(_) => std::future::pending().await,
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a relay ended.
enum End {
    /// Both sides closed their write side (each passed on as it came).
    Closed,
    /// A read or write failed on either side.
    Error(io::Error),
    /// Closed by us.
    Stopped(Stop),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error(_) => "error",
            End::Stopped(Stop::Close(reason)) => reason.as_str(),
            End::Stopped(Stop::PolicyDenies) => "policy_changed",
        }
    }

    fn detail(&self) -> Option<&dyn Display> {
        match self {
            End::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// Copies bytes both ways until both sides have closed or `watch` stops
/// it. A side that shuts its write side has that passed on at once
/// (TLS close_notify, TCP FIN) while the other direction goes on. When we
/// stop it, both sides are told with a short grace.
async fn relay<P>(peer: &mut P, app: &mut TallyIo, watch: &mut Watch) -> End
where
    P: AsyncRead + AsyncWrite + Unpin,
{
    let stop = tokio::select! {
        biased;
        copied = tokio::io::copy_bidirectional_with_sizes(peer, app, RELAY_BUFFER, RELAY_BUFFER) => {
            return match copied {
                Ok(_) => End::Closed,
                Err(e) => End::Error(e),
            };
        }
        stop = watch.stop() => stop,
    };
    close_both(peer, app).await;
    End::Stopped(stop)
}

/// Best-effort close of both sides' write directions.
async fn close_both<P: AsyncWrite + Unpin>(peer: &mut P, app: &mut TallyIo) {
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = peer.shutdown().await;
        let _ = app.shutdown().await;
    })
    .await;
}

/// Sends close_notify to a peer we refuse, briefly; nothing else is sent.
async fn close_peer<P: AsyncWrite + Unpin>(peer: &mut P) {
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, peer.shutdown()).await;
}

/// What is known about one connection when it is recorded.
struct Facts<'a> {
    direction: Direction,
    peer_addr: &'a str,
    peer_id: Option<&'a SpiffeId>,
    port: u16,
    decision: Disposition,
    rule: Option<&'a str>,
    start: Instant,
}

impl Facts<'_> {
    /// Records the end of the connection: its duration under how it
    /// ended, and its one audit line.
    fn record(
        &self,
        metrics: &Metrics,
        bytes: (u64, u64),
        end: &str,
        detail: Option<&dyn Display>,
    ) {
        let duration = self.start.elapsed();
        metrics.tcp_closed(self.direction, end, duration.as_secs_f64());
        audit::tcp_connection(&TcpRecord {
            direction: self.direction,
            peer_addr: self.peer_addr,
            peer_id: self.peer_id,
            port: self.port,
            decision: self.decision,
            rule: self.rule,
            bytes_to_server: bytes.0,
            bytes_to_client: bytes.1,
            duration,
            end,
            detail,
        });
    }
}

#[cfg(test)]
mod tests;
