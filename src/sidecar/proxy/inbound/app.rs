//! The inbound's side toward its app: the connections to each app port
//! (an HTTP/1.1 pool and one h2c connection, plus a fresh connection per
//! upgrade), the HTTP/2 form of a request for an h2c app, and the answer
//! when the app cannot answer.

use super::super::h1client::{ExchangeError, Http1Client};
use super::super::outcome::{Answer, Refusal, Ruling};
use super::super::pool::{Http2Conn, TcpDial, UpstreamBody, UpstreamError};
use super::super::{refusal, upgrade, Direction};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long an idle pooled connection to the local app is kept: below the
/// keep-alive timeouts common app servers use (Node's is 5 s), so we never
/// send on a connection the app is closing.
pub const APP_POOL_IDLE: Duration = Duration::from_secs(4);

/// Time allowed to connect to the local app.
const APP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle connections kept per app port.
const APP_POOL_MAX_IDLE: usize = 1024;

/// The connections to one app port: a pool of HTTP/1.1 connections and one
/// multiplexed HTTP/2 (h2c) connection, each opened on first use.
pub(super) struct AppPool {
    addr: SocketAddr,
    http1: Http1Client<TcpDial>,
    http2: Http2Conn<TcpDial>,
}

/// The address the requests of one connection go to, and its pool.
pub(super) struct AppTarget {
    pub authority: Authority,
    pub pool: Arc<AppPool>,
}

impl AppPool {
    pub(super) fn new(addr: SocketAddr) -> AppPool {
        AppPool {
            addr,
            http1: Http1Client::new(dial(addr), APP_POOL_MAX_IDLE, APP_POOL_IDLE),
            http2: Http2Conn::new(dial(addr), APP_POOL_IDLE, true),
        }
    }

    /// The app's address (a verified webhook goes there on a connection
    /// of its own).
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends a request in the version `rewrite` gave it.
    pub(super) async fn send(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<UpstreamBody>, UpstreamError<std::io::Error>> {
        match request.version() {
            Version::HTTP_2 => self.http2.send(request).await,
            _ => {
                let resp = self.http1.send(request).await?;
                Ok(resp.map(UpstreamBody::app))
            }
        }
    }

    /// Sends an upgrade request on a connection of its own.
    pub(super) async fn upgrade(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError<std::io::Error>> {
        upgrade::send(&dial(self.addr), request).await
    }
}

fn dial(addr: SocketAddr) -> TcpDial {
    TcpDial {
        addr,
        timeout: APP_CONNECT_TIMEOUT,
    }
}

/// The answer when the app could not answer: meshguard's own 503 (no
/// connection) or 502 (connection lost), recorded with the reason.
pub(super) fn app_failed(ruling: Ruling<'_>, err: UpstreamError<std::io::Error>) -> Answer<'_> {
    let direction = Direction::Inbound.as_str();
    match err {
        UpstreamError::Connect(e) => {
            tracing::warn!(direction, error = %e, "local app unavailable");
            let resp = refusal(StatusCode::SERVICE_UNAVAILABLE, "local app unavailable");
            ruling.because("local app unavailable").answer(resp)
        }
        UpstreamError::Http(e) => {
            tracing::warn!(direction, error = %e, "local app failed");
            let invalid = e
                .downcast_ref::<ExchangeError>()
                .is_some_and(ExchangeError::is_invalid);
            let message = match invalid {
                true => "local app sent an invalid response",
                false => "local app closed the connection without a response",
            };
            let resp = refusal(StatusCode::BAD_GATEWAY, message);
            ruling.because("local app failed").answer(resp)
        }
    }
}

/// The request in HTTP/2's form for an h2c app: the authority (the Host
/// the caller named, else the app's address) moves into `:authority`.
pub(super) fn as_http2(parts: &mut Parts, app: &Authority) -> Result<(), Refusal<'static>> {
    let authority = parts
        .headers
        .remove(http::header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        .unwrap_or_else(|| app.clone());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(http::uri::Scheme::HTTP)
        .authority(authority)
        .path_and_query(path)
        .build();
    parts.uri = uri.map_err(|_| {
        let message = "invalid request target";
        Refusal::new(StatusCode::BAD_REQUEST, "invalid path", message)
    })?;
    parts.version = Version::HTTP_2;
    Ok(())
}
