//! HTTP/1.1 `Upgrade` (WebSocket and other protocols) and CONNECT.
//!
//! An upgrade request is a request like any other until its `101`: it is
//! normalised, authorized (identity, method, path) and rewritten with the
//! identity headers like the rest, and keeps exactly `Upgrade` and
//! `Connection: upgrade` of its hop-by-hop headers. It crosses on an
//! HTTP/1.1 mTLS connection of its own (never pooled: after `101` it is no
//! longer HTTP) and reaches the app on a fresh HTTP/1.1 connection. After
//! `101` both sides are spliced byte for byte, counted, and audited once
//! when the connection closes. Nothing watches an upgraded connection for
//! idleness (a WebSocket may be quiet for long); a drain closes it once it
//! has been quiet briefly.
//!
//! Refused before anything else: `CONNECT` (HTTP/1.1, or HTTP/2 without
//! `:protocol`: meshguard is not a forward proxy, and a made-up target must
//! not be authorized as some path) with 405, and `Upgrade: h2c` with 400
//! (h2c is spoken with prior knowledge, which the outbound detects).

use super::dial::Dial;
use super::outcome::Refusal;
use super::pool::{UpstreamBody, UpstreamError};
use super::serve::{drained, wait_quiet, Activity, DRAIN_QUIET};
use super::ProxyBody;
use crate::sidecar::audit::{self, UpgradeRecord};
use crate::sidecar::headers;
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Direction, Metrics};
use http::header::{CONNECTION, UPGRADE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// Relay buffer per direction.
const SPLICE_BUFFER: usize = 16 * 1024;

/// An upgrade a request asks for: its token, kept to be sent on.
#[derive(Debug, Clone)]
pub struct Upgrade {
    token: HeaderValue,
}

impl Upgrade {
    /// The bounded protocol label of metrics and audit.
    pub fn protocol(&self) -> &'static str {
        if self.token.as_bytes().eq_ignore_ascii_case(b"websocket") {
            "websocket"
        } else {
            "other"
        }
    }

    /// Puts the upgrade back after the hop-by-hop headers were stripped.
    pub fn restore(&self, headers: &mut HeaderMap) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, self.token.clone());
    }
}

/// What the request asks of the connection: nothing special, an upgrade,
/// or something refused here (CONNECT, h2c).
pub fn check(parts: &Parts) -> Result<Option<Upgrade>, Refusal<'static>> {
    if parts.method == Method::CONNECT {
        let message = "CONNECT is not carried: meshguard is not a forward proxy";
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect refused",
            message,
        ));
    }
    let Some(token) = parts.headers.get(UPGRADE) else {
        return Ok(None);
    };
    let asks = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    // `Upgrade` without `Connection: upgrade` asks for nothing (RFC 9110
    // §7.8); the header is dropped as hop-by-hop.
    if !asks || parts.version != Version::HTTP_11 {
        return Ok(None);
    }
    let h2c = token
        .to_str()
        .map(|t| t.split(',').any(|p| p.trim().eq_ignore_ascii_case("h2c")))
        .unwrap_or(false);
    if h2c {
        let message = "Upgrade: h2c is not supported; speak HTTP/2 with prior knowledge";
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "h2c upgrade refused",
            message,
        ));
    }
    Ok(Some(Upgrade {
        token: token.clone(),
    }))
}

/// The response's own upgrade headers, to put back after stripping.
pub fn response_token(headers: &HeaderMap) -> Option<Upgrade> {
    headers.get(UPGRADE).map(|token| Upgrade {
        token: token.clone(),
    })
}

/// Sends an upgrade request on a connection of its own (`dial`), served
/// with upgrades so that a `101` leaves the connection to the splice.
pub async fn send<D: Dial>(
    dial: &D,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, UpstreamError<D::Error>> {
    let io = dial.dial().await.map_err(UpstreamError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::http)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender.send_request(req).await.map_err(UpstreamError::http)
}

/// The response to an upgrade request, as sent back: hop-by-hop headers
/// stripped but for the upgrade itself on a `101`, after which the splice
/// of `caller` and this response's connection starts.
pub fn answer(
    mut resp: Response<Incoming>,
    caller: Option<OnUpgrade>,
    splice: Splice,
) -> Response<ProxyBody> {
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(caller)) = (switched, caller) {
        let upstream = hyper::upgrade::on(&mut resp);
        splice.spawn(caller, upstream);
    }
    let token = response_token(resp.headers());
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(token)) = (switched, token) {
        token.restore(&mut parts.headers);
    }
    Response::from_parts(parts, Either::Left(UpstreamBody::shared(body)))
}

/// Who an upgraded connection is between, for its record.
pub struct Splice {
    pub direction: Direction,
    pub metrics: Arc<Metrics>,
    pub peer_addr: Option<Arc<str>>,
    pub peer_id: Option<SpiffeId>,
    pub path: String,
    pub protocol: &'static str,
    pub drain: watch::Receiver<bool>,
}

impl Splice {
    /// Once both sides have switched protocols, copies bytes both ways
    /// until both close (or a drain finds the connection quiet), then
    /// records it. `client` is the side that asked for the upgrade.
    pub fn spawn(self, client: OnUpgrade, server: OnUpgrade) {
        tokio::spawn(self.run(client, server));
    }

    async fn run(mut self, client: OnUpgrade, server: OnUpgrade) {
        let start = Instant::now();
        let (client, server) = match tokio::try_join!(client, server) {
            Ok(both) => both,
            Err(e) => {
                let direction = self.direction.as_str();
                tracing::debug!(direction, error = %e, "upgrade did not complete");
                return self.record((0, 0), "error", start);
            }
        };
        self.metrics.upgraded(self.direction, self.protocol);
        let to_server = Arc::new(AtomicU64::new(0));
        let to_client = Arc::new(AtomicU64::new(0));
        // For the drain: the same quiet test as every other connection's.
        let activity = Arc::new(Activity::default());
        let mut client = Tally::new(TokioIo::new(client), to_server.clone(), activity.clone());
        let mut server = Tally::new(TokioIo::new(server), to_client.clone(), activity.clone());
        let quiet_after_drain = async {
            drained(&mut self.drain).await;
            wait_quiet(&activity, DRAIN_QUIET).await;
        };
        let end = tokio::select! {
            copied = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, SPLICE_BUFFER, SPLICE_BUFFER) => {
                if copied.is_ok() { "closed" } else { "error" }
            }
            () = quiet_after_drain => "draining",
        };
        let bytes = (
            to_server.load(Ordering::Relaxed),
            to_client.load(Ordering::Relaxed),
        );
        self.record(bytes, end, start);
    }

    fn record(&self, bytes: (u64, u64), end: &str, start: Instant) {
        let duration = start.elapsed();
        self.metrics
            .upgrade_closed(self.direction, bytes, end, duration.as_secs_f64());
        audit::upgrade_closed(&UpgradeRecord {
            direction: self.direction,
            peer_addr: self.peer_addr.as_deref(),
            peer_id: self.peer_id.as_ref(),
            path: &self.path,
            protocol: self.protocol,
            bytes_to_server: bytes.0,
            bytes_to_client: bytes.1,
            duration,
            end,
        });
    }
}

/// One side of a splice: counts the bytes read from it (this connection's
/// tally for its audit line) and notes the activity.
struct Tally<T> {
    inner: T,
    read: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl<T> Tally<T> {
    fn new(inner: T, read: Arc<AtomicU64>, activity: Arc<Activity>) -> Self {
        Tally {
            inner,
            read,
            activity,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tally<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.read.fetch_add(n as u64, Ordering::Relaxed);
        this.activity.moved(n);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tally<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
