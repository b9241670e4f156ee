//! A declared destination of the outbound and its mTLS connections: an
//! HTTP/1.1 pool or the multiplexed HTTP/2 connection, chosen per request.

use super::super::h1client::Http1Client;
use super::super::pool::{Http2Conn, UpstreamBody, UpstreamError};
use super::super::{ConnectError, Direction, PeerConnector};
use crate::sidecar::config::RouteConfig;
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Metrics, RequestCounters};
use crate::sidecar::tls::{outbound_client_config, CredentialStore, TlsError, UpstreamProtocol};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{header, HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Time allowed for TCP connect plus TLS handshake to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection to a peer sidecar is kept: below the
/// peer's default header read timeout (15 s), which also closes idle
/// HTTP/1 keep-alive connections, so we never reuse one it is closing.
pub const PEER_POOL_IDLE: Duration = Duration::from_secs(10);

/// How a route's connections to its peer are made (`outbound`'s
/// `protocol`, `max_idle_per_peer`, `h2_connections_per_peer`).
#[derive(Clone, Copy)]
pub(in crate::sidecar::proxy) struct HopSettings {
    pub protocol: UpstreamProtocol,
    pub max_idle: usize,
    pub h2_connections: usize,
}

/// One declared destination with its own pool of mTLS connections.
pub struct Route {
    pub peer: Arc<str>,
    pub identity: SpiffeId,
    pub(super) upstream: Upstream,
    /// HTTP/1.1 mTLS connections, one per upgrade (never pooled).
    pub(super) upgrades: PeerConnector,
    pub(super) counters: RequestCounters,
}

/// The mTLS connections of one route. A request that left the app as
/// HTTP/2 always takes the multiplexed HTTP/2 connection: its trailers
/// (gRPC's status) cannot cross HTTP/1.1. HTTP/1.1 requests take the hop
/// the route is configured with (`outbound.protocol`).
pub(super) struct Upstream {
    /// Set when the route's hop is HTTP/1.1.
    pool: Option<Http1Client<PeerConnector>>,
    /// Each opened on first use and taken in turn, so that several
    /// connections' reads and writes can be in flight at once; with an
    /// HTTP/1.1 hop only HTTP/2 apps use them.
    mux: Box<[Http2Conn<PeerConnector>]>,
    next: AtomicUsize,
}

/// Which of a route's connections one request takes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Hop {
    Http1,
    Http2,
}

impl Upstream {
    pub(super) fn hop(&self, app_version: Version) -> Hop {
        match (&self.pool, app_version) {
            (Some(_), v) if v != Version::HTTP_2 => Hop::Http1,
            _ => Hop::Http2,
        }
    }

    /// The request target on the hop: origin-form for HTTP/1.1 (the
    /// authority travels in Host), absolute for HTTP/2, where it becomes
    /// `:scheme` and `:authority`.
    pub(super) fn uri(
        hop: Hop,
        authority: Authority,
        path: PathAndQuery,
    ) -> Result<Uri, http::Error> {
        match hop {
            Hop::Http1 => Ok(Uri::from(path)),
            Hop::Http2 => Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(authority)
                .path_and_query(path)
                .build(),
        }
    }

    pub(super) async fn send(
        &self,
        hop: Hop,
        mut req: Request<Incoming>,
        authority: Authority,
    ) -> Result<Response<UpstreamBody>, UpstreamError<ConnectError>> {
        match (hop, &self.pool) {
            (Hop::Http1, Some(pool)) => {
                if !req.headers().contains_key(header::HOST) {
                    if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                        req.headers_mut().insert(header::HOST, host);
                    }
                }
                *req.version_mut() = http::Version::HTTP_11;
                let resp = pool.send(req).await?;
                Ok(resp.map(UpstreamBody::peer))
            }
            _ => {
                // HTTP/2 carries the authority in :authority; a Host
                // header beside it is redundant and may disagree.
                req.headers_mut().remove(header::HOST);
                *req.version_mut() = http::Version::HTTP_2;
                // Relaxed: the turn only spreads load, it orders nothing.
                let turn = self.next.fetch_add(1, Ordering::Relaxed);
                self.mux[turn % self.mux.len()].send(req).await
            }
        }
    }
}

impl Route {
    pub(super) fn new(
        store: &Arc<CredentialStore>,
        cfg: &RouteConfig,
        hop: HopSettings,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Route>, TlsError> {
        let connector = |protocol| -> Result<PeerConnector, TlsError> {
            let tls = outbound_client_config(store, cfg.identity.clone(), protocol)?;
            Ok(PeerConnector::new(
                &cfg.peer,
                tls,
                CONNECT_TIMEOUT,
                metrics.clone(),
                store.clone(),
            ))
        };
        let pool = match hop.protocol {
            UpstreamProtocol::Http1 => Some(Http1Client::new(
                connector(UpstreamProtocol::Http1)?,
                hop.max_idle,
                PEER_POOL_IDLE,
            )),
            UpstreamProtocol::Http2 => None,
        };
        let mux = (0..hop.h2_connections.max(1))
            .map(|_| {
                let dial = connector(UpstreamProtocol::Http2)?;
                Ok(Http2Conn::new(dial, PEER_POOL_IDLE, hop.max_idle > 0))
            })
            .collect::<Result<_, TlsError>>()?;
        let upstream = Upstream {
            pool,
            mux,
            next: AtomicUsize::new(0),
        };
        let upgrades = connector(UpstreamProtocol::Http1)?;
        let counters = metrics.request_counters(
            Direction::Outbound,
            metrics.peer_label(cfg.identity.as_str()),
        );
        Ok(Arc::new(Route {
            peer: Arc::from(cfg.peer.as_str()),
            identity: cfg.identity.clone(),
            upstream,
            upgrades,
            counters,
        }))
    }
}
