//! The two directions of the data path and what they share.

mod connect;
pub mod inbound;
mod io;
pub mod outbound;
pub mod pool;
pub mod serve;
pub mod transparent;

pub use connect::{ConnectError, PeerConnector};
pub use io::CountingIo;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use std::fmt::Display;
use std::net::SocketAddr;

/// Response body of the proxy: the upstream's body streamed through, or a
/// short refusal written by meshguard itself.
pub type ProxyBody = Either<pool::UpstreamBody, Full<Bytes>>;

/// Which direction a request or connection crosses the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A short plain-text refusal. The reason names what went wrong, never the
/// internals (no policy rules, no certificate contents).
pub fn refusal(status: StatusCode, reason: impl Display) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "meshguard: {reason}\n"
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Logs why a served connection ended with an error; an oversized request
/// head (answered 431 by the HTTP layer) is an audit event.
pub fn log_connection_error(direction: &'static str, peer: impl Display, err: &hyper::Error) {
    if err.is_parse_too_large() {
        tracing::warn!(target: crate::sidecar::audit::TARGET, event = "request_refused", direction, peer_addr = %peer, status = 431u16, reason = "request_headers_too_large", "request refused: headers too large");
    } else if err.is_parse() {
        tracing::warn!(target: crate::sidecar::audit::TARGET, event = "request_refused", direction, peer_addr = %peer, status = 400u16, reason = "malformed_request", detail = %err, "request refused: malformed HTTP");
    } else if err.is_timeout() {
        tracing::info!(target: crate::sidecar::audit::TARGET, event = "connection_closed", direction, peer_addr = %peer, reason = "header_read_timeout", "connection closed: request headers not received in time");
    } else {
        tracing::debug!(direction, peer_addr = %peer, error = %err, "connection ended with an error");
    }
}

/// Makes the request name exactly one host, the one it is routed and
/// authorized by: two Host headers are refused (RFC 9112 section 3.2), and
/// a target or :authority that carries an authority replaces any Host the
/// caller sent (RFC 9112 section 3.2.2, RFC 9113 section 8.3.1), so the app
/// never reads a host that nobody checked.
pub fn canonical_host(parts: &mut http::request::Parts) -> Result<(), &'static str> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(authority) = parts.uri.authority() {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| "invalid authority")?;
        parts.headers.insert(header::HOST, value);
    }
    Ok(())
}
