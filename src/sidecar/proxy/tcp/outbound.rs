//! Outbound opaque TCP: the app's connection to a TCP route's listener
//! (`outbound.tcp_routes`), or captured to a destination declared
//! `protocol: tcp`, carried over mTLS to the peer sidecar. The peer is
//! dialled at once, before the app sends anything, so a server that
//! speaks first is heard; its handshake names the app port in ALPN.

use super::{client_config, relay, Facts, Plain, Stop, TallyIo, TcpSettings, Watch};
use crate::sidecar::config::{LimitsConfig, OutboundConfig};
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Direction, Disposition, Metrics};
use crate::sidecar::proxy::outbound::CONNECT_TIMEOUT;
use crate::sidecar::proxy::pool::Dial;
use crate::sidecar::proxy::serve::{accept_loop, Activity, ConnectionTracker, Control};
use crate::sidecar::proxy::PeerConnector;
use crate::sidecar::tls::{CredentialStore, TlsError};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One declared TCP destination: the peer sidecar, who must answer there,
/// and the app port asked for behind it.
pub struct TcpRoute {
    peer: Arc<str>,
    identity: SpiffeId,
    port: u16,
    connector: PeerConnector,
}

impl TcpRoute {
    fn new(
        store: &Arc<CredentialStore>,
        metrics: &Arc<Metrics>,
        peer: &str,
        identity: SpiffeId,
        port: u16,
    ) -> Result<Arc<TcpRoute>, TlsError> {
        let tls = client_config(store, identity.clone(), port)?;
        let connector =
            PeerConnector::new(peer, tls, CONNECT_TIMEOUT, metrics.clone(), store.clone());
        Ok(Arc::new(TcpRoute {
            peer: Arc::from(peer),
            identity,
            port,
            connector,
        }))
    }
}

/// The outbound side of opaque TCP for one sidecar.
pub struct TcpOutbound {
    /// `outbound.tcp_routes`, in config order, with their listeners.
    listener_routes: Vec<(SocketAddr, Arc<TcpRoute>)>,
    /// Routes of captured destinations, made the first time each is met.
    captured: Mutex<HashMap<SocketAddr, Arc<TcpRoute>>>,
    store: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
    /// (client_to_server, server_to_client).
    bytes: (IntCounter, IntCounter),
    max_connections: usize,
    settings: TcpSettings,
}

impl TcpOutbound {
    pub fn new(
        store: &Arc<CredentialStore>,
        cfg: &OutboundConfig,
        metrics: Arc<Metrics>,
        limits: &LimitsConfig,
        settings: TcpSettings,
    ) -> Result<Arc<TcpOutbound>, TlsError> {
        let mut listener_routes = Vec::with_capacity(cfg.tcp_routes.len());
        for r in &cfg.tcp_routes {
            let route = TcpRoute::new(store, &metrics, &r.peer, r.identity.clone(), r.port)?;
            listener_routes.push((r.listen, route));
        }
        Ok(Arc::new(TcpOutbound {
            listener_routes,
            captured: Mutex::default(),
            store: store.clone(),
            bytes: metrics.tcp_byte_counters(Direction::Outbound),
            metrics,
            max_connections: limits.max_connections,
            settings,
        }))
    }

    /// The routes that own a listener, in config order.
    pub fn listener_routes(&self) -> &[(SocketAddr, Arc<TcpRoute>)] {
        &self.listener_routes
    }

    /// Accepts the app's connections to `route`'s listener until a drain starts.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        route: Arc<TcpRoute>,
        drain: watch::Receiver<bool>,
        tracker: ConnectionTracker,
    ) {
        let this = self.clone();
        let watched = drain.clone();
        accept_loop(
            listener,
            Direction::Outbound,
            self.max_connections,
            watched,
            tracker,
            move |app, _addr, tracked| {
                let (this, route, drain) = (this.clone(), route.clone(), drain.clone());
                async move {
                    this.connection(app, &route, drain).await;
                    drop(tracked);
                }
            },
        )
        .await
    }

    /// A captured connection to `dst`, declared `protocol: tcp` with the
    /// identity its server must prove.
    pub async fn captured(
        &self,
        app: TcpStream,
        dst: SocketAddr,
        identity: SpiffeId,
        drain: watch::Receiver<bool>,
    ) {
        match self.captured_route(dst, identity) {
            Ok(route) => self.connection(app, &route, drain).await,
            Err(e) => {
                tracing::error!(destination = %dst, error = %e, "cannot build a TCP route");
            }
        }
    }

    fn captured_route(
        &self,
        dst: SocketAddr,
        identity: SpiffeId,
    ) -> Result<Arc<TcpRoute>, TlsError> {
        let mut routes = self.captured.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = routes.get(&dst) {
            return Ok(route.clone());
        }
        let peer = dst.to_string();
        let route = TcpRoute::new(&self.store, &self.metrics, &peer, identity, dst.port())?;
        routes.insert(dst, route.clone());
        Ok(route)
    }

    /// One app connection: dial the peer at once, relay, record.
    async fn connection(&self, app: TcpStream, route: &TcpRoute, drain: watch::Receiver<bool>) {
        let _ = app.set_nodelay(true);
        let facts = Facts {
            direction: Direction::Outbound,
            peer_addr: &route.peer,
            peer_id: Some(&route.identity),
            port: route.port,
            // A declared route; the peer's policy decides on its side.
            decision: Disposition::Allow,
            rule: None,
            start: std::time::Instant::now(),
        };
        self.metrics
            .tcp_connection(Direction::Outbound, Disposition::Allow);
        let activity = Arc::new(Activity::default());
        let mut app = TallyIo::new(app, Plain::Client, &self.bytes, activity.clone());
        if !self.store.svid_is_valid_now() {
            let detail = "own SVID has expired and no valid replacement is loaded";
            return facts.record(&self.metrics, (0, 0), "own_svid_expired", Some(&detail));
        }
        // The handshake's refusal (wrong identity, undeclared port) is
        // counted and audited by the connector itself.
        let mut peer = match route.connector.dial().await {
            Ok(io) => io,
            Err(e) => return facts.record(&self.metrics, (0, 0), "peer_unavailable", Some(&e)),
        };
        let control = Control {
            drain,
            idle_timeout: self.settings.idle_timeout,
            activity,
            revoked: Some(peer.live().clone()),
            multiplexed: false,
        };
        let mut watch = Watch::spawn(
            control,
            self.settings.drain_grace,
            std::future::pending::<Stop>(),
        );
        let end = relay(&mut peer, &mut app, &mut watch).await;
        facts.record(&self.metrics, app.bytes(), end.label(), end.detail());
    }
}
