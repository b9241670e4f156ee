//! Inbound opaque TCP: a peer's mTLS connection whose handshake named a
//! declared app port. The steps, in order: agree on the port (the ALPN
//! token, and under capture the dialled port), authorize the connection
//! (source and port), connect to the app, relay, record. A refusal closes
//! the connection right after the handshake: nothing reaches the app.

use super::APP_CONNECT_TIMEOUT;
use super::{close_peer, port_of_alpn, relay, Facts, Plain, Stop, TallyIo, TcpSettings, Watch};
use crate::sidecar::audit;
use crate::sidecar::config::InboundConfig;
use crate::sidecar::identity::{Role, SpiffeId};
use crate::sidecar::metrics::{Direction, Disposition, Metrics};
use crate::sidecar::policy::{Connection, DecisionCounters, Policy, PolicySlot};
use crate::sidecar::proxy::serve::{drained, Activity, Control};
use crate::sidecar::proxy::transparent::original_destination;
use crate::sidecar::proxy::CountingIo;
use crate::sidecar::tls::CredentialStore;
use prometheus::IntCounter;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

/// A peer's verified mTLS stream, as the inbound's handshake leaves it.
type PeerTls = TlsStream<CountingIo<TcpStream>>;

/// The inbound side of opaque TCP for one sidecar.
pub struct TcpInbound {
    /// `inbound.tcp_ports`.
    ports: Box<[u16]>,
    /// The app's address; each TCP port is reached there.
    app_ip: IpAddr,
    policy: PolicySlot,
    authz_counters: DecisionCounters,
    /// Bumped when the policy in force is replaced, so open connections
    /// are authorized again.
    policy_changed: Arc<watch::Sender<()>>,
    store: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
    /// (client_to_server, server_to_client).
    bytes: (IntCounter, IntCounter),
    settings: TcpSettings,
}

/// Why a connection is refused before the app is reached.
struct Refused {
    end: &'static str,
    detail: String,
}

impl TcpInbound {
    pub fn new(
        cfg: &InboundConfig,
        policy: PolicySlot,
        store: Arc<CredentialStore>,
        metrics: Arc<Metrics>,
        settings: TcpSettings,
    ) -> Arc<TcpInbound> {
        Arc::new(TcpInbound {
            ports: cfg.tcp_ports.clone().into_boxed_slice(),
            app_ip: cfg.app.ip(),
            policy,
            authz_counters: DecisionCounters::new(metrics.clone()),
            policy_changed: Arc::new(watch::channel(()).0),
            store,
            bytes: metrics.tcp_byte_counters(Direction::Inbound),
            metrics,
            settings,
        })
    }

    /// Whether `port` is declared as opaque TCP.
    pub fn is_tcp_port(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// True (and audited) when an HTTP connection is for a port declared
    /// as TCP (under capture): such a port is only ever reached as TCP, so
    /// no HTTP request, authorized by HTTP rules, can be smuggled to it.
    pub fn refuses_http(&self, port: u16, addr: SocketAddr, peer: &SpiffeId) -> bool {
        let refused = self.is_tcp_port(port);
        if refused {
            self.metrics
                .tcp_connection(Direction::Inbound, Disposition::Deny);
            audit::http_to_tcp_port(addr, peer, port);
        }
        refused
    }

    /// Watches the policy slot (reloads swap it) until a drain begins,
    /// telling open connections when it changed. Spawned once per sidecar.
    pub fn watch_policy(
        self: &Arc<Self>,
        mut drain: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let this = self.clone();
        async move {
            let mut tick = tokio::time::interval(this.settings.poll);
            let mut last = this.policy.load_full();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = drained(&mut drain) => return,
                }
                let now = this.policy.load_full();
                let same = match (&now, &last) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                };
                if !same {
                    last = now;
                    this.policy_changed.send_replace(());
                }
            }
        }
    }

    /// One connection whose handshake negotiated opaque TCP, from agreeing
    /// on the port to its audit line.
    pub async fn serve(
        &self,
        mut tls: PeerTls,
        id: SpiffeId,
        addr: SocketAddr,
        drain: watch::Receiver<bool>,
    ) {
        // Subscribed before the decision, so no reload in between is missed.
        let changes = self.policy_changed.subscribe();
        let addr_text = addr.to_string();
        let named = tls.get_ref().1.alpn_protocol().and_then(port_of_alpn);
        let mut facts = Facts {
            direction: Direction::Inbound,
            peer_addr: &addr_text,
            peer_id: Some(&id),
            // The port asked for, also on the line of a refusal.
            port: named.unwrap_or(0),
            decision: Disposition::Deny,
            rule: None,
            start: std::time::Instant::now(),
        };
        let port = match self.port(&tls, named) {
            Ok(port) => port,
            Err(refused) => return self.refuse(&mut tls, &facts, refused).await,
        };
        facts.port = port;
        // Held for the connection, so its audit line names the deciding rule as it was.
        let policy = self.policy.load_full();
        (facts.decision, facts.rule) = self.authorize(policy.as_ref(), &id, port);
        if facts.decision == Disposition::Deny {
            let detail = "denied by policy".to_owned();
            let refused = Refused {
                end: "refused",
                detail,
            };
            return self.refuse(&mut tls, &facts, refused).await;
        }
        self.metrics
            .tcp_connection(Direction::Inbound, facts.decision);
        let app = SocketAddr::new(self.app_ip, port);
        let app = match tokio::time::timeout(APP_CONNECT_TIMEOUT, TcpStream::connect(app)).await {
            Ok(Ok(app)) => app,
            Ok(Err(e)) => return self.unavailable(&mut tls, &facts, e.to_string()).await,
            Err(_) => {
                let error = "connect timed out".to_owned();
                return self.unavailable(&mut tls, &facts, error).await;
            }
        };
        let _ = app.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let mut app = TallyIo::new(app, Plain::Server, &self.bytes, activity.clone());
        let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let control = Control {
            drain,
            idle_timeout: self.settings.idle_timeout,
            activity,
            // Closed when the caller's certificate expires or its CA leaves the bundle.
            revoked: Some(self.store.live().register(chain, Role::Client)),
            multiplexed: false,
        };
        let recheck = recheck(self.policy.clone(), changes, id.clone(), port);
        let mut watch = Watch::spawn(control, self.settings.drain_grace, recheck);
        let end = relay(&mut tls, &mut app, &mut watch).await;
        facts.record(&self.metrics, app.bytes(), end.label(), end.detail());
    }

    /// The app port of the connection: the one its handshake named, which
    /// must be declared and, under capture, the port the caller dialled.
    fn port(&self, tls: &PeerTls, named: Option<u16>) -> Result<u16, Refused> {
        let Some(named) = named else {
            let detail = "the negotiated protocol names no port".to_owned();
            return Err(Refused {
                end: "bad_alpn",
                detail,
            });
        };
        // The handshake accepts only declared ports; checked again here
        // because the app is reached on whatever port this returns.
        if !self.is_tcp_port(named) {
            let detail = format!("port {named} is not in inbound.tcp_ports");
            return Err(Refused {
                end: "undeclared_port",
                detail,
            });
        }
        match original_destination(tls.get_ref().0.get_ref()) {
            Some(dialled) if dialled.port() != named => Err(Refused {
                end: "port_mismatch",
                detail: format!(
                    "the handshake asks for port {named}, the caller dialled port {}",
                    dialled.port()
                ),
            }),
            _ => Ok(named),
        }
    }

    /// The policy's decision on this connection, counted; without a policy
    /// every authenticated peer is allowed.
    fn authorize<'p>(
        &self,
        policy: Option<&'p Arc<Policy>>,
        peer: &SpiffeId,
        port: u16,
    ) -> (Disposition, Option<&'p str>) {
        let Some(policy) = policy else {
            return (Disposition::Allow, None);
        };
        let decision = policy.evaluate_connection(&Connection { peer, port });
        self.authz_counters.count(policy, &decision);
        let disposition = if decision.permit().is_none() {
            Disposition::Deny
        } else if decision.audit_would_deny() {
            Disposition::AuditDeny
        } else {
            Disposition::Allow
        };
        (disposition, decision.rule_name())
    }

    /// Closes a connection refused before the app was reached: counted as
    /// denied, close_notify sent, one audit line.
    async fn refuse(&self, tls: &mut PeerTls, facts: &Facts<'_>, refused: Refused) {
        self.metrics
            .tcp_connection(Direction::Inbound, Disposition::Deny);
        close_peer(tls).await;
        facts.record(&self.metrics, (0, 0), refused.end, Some(&refused.detail));
    }

    /// Closes an allowed connection whose app cannot be reached.
    async fn unavailable(&self, tls: &mut PeerTls, facts: &Facts<'_>, error: String) {
        tracing::warn!(direction = "inbound", port = facts.port, error = %error, "local app unavailable");
        close_peer(tls).await;
        let detail = format!("local app port {} unavailable: {error}", facts.port);
        facts.record(&self.metrics, (0, 0), "app_unavailable", Some(&detail));
    }
}

/// Completes when a reloaded policy no longer allows `peer` on `port`
/// (a policy change then closes the connection as a new one would be refused).
async fn recheck(
    slot: PolicySlot,
    mut changes: watch::Receiver<()>,
    peer: SpiffeId,
    port: u16,
) -> Stop {
    loop {
        if changes.changed().await.is_err() {
            return std::future::pending().await;
        }
        let Some(policy) = slot.load_full() else {
            continue;
        };
        let conn = Connection { peer: &peer, port };
        if policy.evaluate_connection(&conn).permit().is_none() {
            return Stop::PolicyDenies;
        }
    }
}
