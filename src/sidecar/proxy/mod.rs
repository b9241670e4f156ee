//! The two directions of the data path and what they share.

mod connect;
mod dial;
pub mod grpc;
pub mod h1client;
mod idle;
pub mod inbound;
mod io;
pub mod outbound;
pub mod outcome;
pub mod pool;
pub mod serve;
mod sniff;
pub mod tcp;
pub mod transparent;
pub mod upgrade;

pub use crate::sidecar::metrics::Direction;
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

/// A short plain-text refusal. The reason names what went wrong, never the
/// internals (no policy rules, no certificate contents).
pub fn refusal(status: StatusCode, reason: impl Display) -> Response<ProxyBody> {
    refusal_response(status, refusal_body(reason))
}

/// The body of a refusal, formatted when the request is refused.
pub fn refusal_body(reason: impl Display) -> Bytes {
    Bytes::from(format!("meshguard: {reason}\n"))
}

/// A refusal response around a body made by [`refusal_body`]. The body is
/// kept in the response's extensions too, so that `outcome::record` can
/// answer a gRPC caller with the same message in gRPC's form.
pub fn refusal_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.clone())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.extensions_mut().insert(RefusalMessage(body));
    resp
}

/// The text of one of meshguard's own refusals (see [`refusal_response`]).
#[derive(Clone)]
pub struct RefusalMessage(pub Bytes);

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
