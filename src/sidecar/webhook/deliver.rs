//! Delivering a verified webhook to the app, shared by `webhooks.listen`
//! and the mesh inbound: the verified bytes on a connection of its own
//! (webhooks are rare; the inbound's pool streams bodies), then the replay
//! reservation settled by the app's answer before that answer goes back
//! to the provider: committed (on disk) when the app took the event,
//! forgotten when it did not (no connection, no response, a 5xx), so the
//! provider's retry is delivered rather than refused as a replay.

use super::route::{Verified, Webhooks};
use crate::sidecar::proxy::pool::UpstreamError;
use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Time allowed to connect to the app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the app gave no answer.
pub type DeliverError = UpstreamError<std::io::Error>;

impl Webhooks {
    /// Sends `verified` to `app` (HTTP/2 when `parts` is in HTTP/2's form,
    /// else HTTP/1.1), settles its reservation and records the result on
    /// `route`: `accepted`, `app_error` (a 5xx) or `app_unavailable`.
    pub async fn deliver(
        &self,
        route: &str,
        peer: &(dyn Display + Sync),
        app: SocketAddr,
        parts: Parts,
        verified: Verified,
    ) -> Result<Response<Incoming>, DeliverError> {
        let Verified { body, reservation } = verified;
        let sent = send(app, Request::from_parts(parts, Full::new(body))).await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                // Dropping the reservation forgets the key.
                drop(reservation);
                tracing::warn!(route, error = %e, "webhook: local app unavailable");
                self.record(route, peer, "app_unavailable", 502);
                return Err(e);
            }
        };
        let status = resp.status();
        if status.is_server_error() {
            drop(reservation);
            self.record(route, peer, "app_error", status.as_u16());
            return Ok(resp);
        }
        let committed = tokio::task::spawn_blocking(move || reservation.commit()).await;
        match committed {
            Ok(Ok(())) => self.record(route, peer, "accepted", status.as_u16()),
            // The app has the event: its answer stands, and the key stays
            // committed in memory; only a restart could forget it.
            Ok(Err(e)) => {
                tracing::error!(route, error = %e, "webhook delivered but its replay key not written");
                self.record(route, peer, "accepted_unrecorded", status.as_u16());
            }
            Err(_) => self.record(route, peer, "accepted_unrecorded", status.as_u16()),
        }
        Ok(resp)
    }
}

/// One request to the app on a connection of its own.
async fn send(
    app: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>, DeliverError> {
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(app)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
        Err(_) => {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            return Err(UpstreamError::Connect(e));
        }
    };
    let _ = tcp.set_nodelay(true);
    let io = TokioIo::new(tcp);
    if req.version() == Version::HTTP_2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(UpstreamError::http)?;
        tokio::spawn(conn);
        return sender.send_request(req).await.map_err(UpstreamError::http);
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(UpstreamError::http)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(UpstreamError::http)
}
