//! One connection from a peer sidecar: which app port it is for, the mTLS
//! handshake that proves the caller's SPIFFE ID, and the `Peer` its
//! requests share; then its requests are served until it ends.

use super::*;

/// A TLS handshake that proved a peer identity.
struct Handshake {
    tls: TlsStream<CountingIo<TcpStream>>,
    id: SpiffeId,
    cert_hash: [u8; 32],
}

impl Inbound {
    /// One connection from a peer sidecar: the handshake proves who it is,
    /// then its requests are served until it ends or is closed.
    pub(super) async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        addr: SocketAddr,
        drain: watch::Receiver<bool>,
        tracked: Tracked,
    ) {
        let _ = tcp.set_nodelay(true);
        let (port, app) = self.app_for(&tcp);
        let _open = self.metrics.connection(Direction::Inbound);
        let activity = Arc::new(Activity::default());
        let Some(handshake) = self.handshake(tcp, addr, &activity).await else {
            return;
        };
        let session = handshake.tls.get_ref().1;
        // Opaque TCP: the handshake named a declared port (see proxy/tcp.rs).
        if tcp::is_tcp(session.alpn_protocol()) {
            return self
                .tcp
                .serve(handshake.tls, handshake.id, addr, drain)
                .await;
        }
        if self.tcp.refuses_http(port, addr, &handshake.id) {
            return;
        }
        let h2 = session.alpn_protocol() == Some(crate::sidecar::tls::ALPN_H2);
        let direction = Direction::Inbound.as_str();
        tracing::debug!(direction, peer_addr = %addr, peer_id = %handshake.id, h2, "peer authenticated");
        // Registered for continuous validation: closed if the peer's
        // certificate expires or its CA leaves the bundle.
        let live = self.store.live().register(
            session.peer_certificates().unwrap_or_default(),
            Role::Client,
        );
        let upgrades_drain = drain.clone();
        let control = Control {
            drain,
            idle_timeout: self.limits.idle_timeout(),
            activity,
            revoked: Some(live),
            multiplexed: h2,
        };
        let conn = Connection {
            direction: Direction::Inbound,
            peer: addr,
            h2,
            control,
            closing: tracked.closing_flag(),
        };
        let peer = self.peer(
            handshake.id,
            addr,
            port,
            app,
            &handshake.cert_hash,
            upgrades_drain,
        );
        // Fail closed: a peer whose identity cannot be passed on is not served.
        let Ok(peer) = peer else {
            let detail = "peer identity is not a valid header value";
            audit::handshake_refused(Direction::Inbound, addr, "no_identity", detail);
            return;
        };
        let peer = Arc::new(peer);
        let this = self.clone();
        let io = TokioIo::new(handshake.tls);
        serve(io, &self.limits, conn, move |req| {
            this.clone().handle(req, peer.clone())
        })
        .await;
    }

    /// The port the caller dialled and where its requests go: the
    /// configured app, or, under capture, the app's address with that port.
    fn app_for(&self, tcp: &TcpStream) -> (u16, AppTarget) {
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or(0);
        let captured = original_destination(tcp);
        let port = captured.map_or(local_port, |d| d.port());
        let configured = || AppTarget {
            authority: self.app.clone(),
            pool: self.app_pool(self.app_addr),
        };
        let app = match captured {
            Some(dst) => {
                let addr = SocketAddr::new(self.app_addr.ip(), dst.port());
                match Authority::try_from(addr.to_string()) {
                    Ok(authority) => AppTarget {
                        authority,
                        pool: self.app_pool(addr),
                    },
                    Err(_) => configured(),
                }
            }
            None => configured(),
        };
        (port, app)
    }

    /// The mTLS handshake, within the handshake timeout; a refusal is
    /// counted and audited here.
    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        activity: &Arc<Activity>,
    ) -> Option<Handshake> {
        let bytes = Some(self.metrics.byte_counters(Direction::Inbound));
        let tcp = CountingIo::new(tcp, bytes, Some(activity.clone()));
        let timeout = self.limits.handshake_timeout();
        let refused = |reason: &str, detail: &str| {
            self.metrics.handshake(Direction::Inbound, false, reason);
            audit::handshake_refused(Direction::Inbound, addr, reason, detail);
            None
        };
        let tls = match tokio::time::timeout(timeout, self.tls.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let (reason, detail) = handshake_failure(&e);
                return refused(reason, &detail);
            }
            Err(_) => {
                let detail = format!("handshake not completed within {timeout:?}");
                return refused("timeout", &detail);
            }
        };
        let Some((id, cert_hash)) = peer_identity(tls.get_ref().1.peer_certificates()) else {
            // Unreachable while the verifier requires a certificate; if it
            // ever happens, fail closed.
            let detail = "handshake completed without a verifiable peer identity";
            return refused("no_identity", detail);
        };
        self.metrics.handshake(Direction::Inbound, true, "");
        Some(Handshake { tls, id, cert_hash })
    }

    /// The authenticated caller of one connection.
    fn peer(
        &self,
        id: SpiffeId,
        addr: SocketAddr,
        port: u16,
        app: AppTarget,
        cert_hash: &[u8; 32],
        drain: watch::Receiver<bool>,
    ) -> Result<Peer, http::header::InvalidHeaderValue> {
        let headers = PeerHeaders::new(&id, &self.store.own_id(), cert_hash)?;
        let label = self.metrics.peer_label(id.as_str());
        let counters = self.metrics.request_counters(Direction::Inbound, label);
        Ok(Peer {
            id,
            addr,
            addr_text: addr.to_string(),
            port,
            app,
            headers,
            counters,
            drain,
        })
    }
}
