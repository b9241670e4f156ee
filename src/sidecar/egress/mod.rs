//! Egress outside the mesh: the declared external destinations
//! (`outbound.egress`), matched by SNI (TLS passed through) or by Host
//! (plain HTTP, TLS originated by meshguard), and the address guard that
//! every connection to the outside passes, `undeclared: passthrough`
//! included.
//!
//! The order of one decision: the name the app asked for (SNI or Host) →
//! the declared destination for it (else refused) → one resolution of the
//! name → the address to connect to: under capture the one the app
//! dialled, which the name must resolve to (a lying SNI is refused),
//! otherwise the resolved ones → the guard on that address → connect to
//! exactly that address. Nothing is resolved twice, so an answer that
//! changes between two lookups (DNS rebinding) cannot slip an address past
//! the guard. Responses are passed back as they are: a redirect is the
//! app's to follow, through meshguard again.

pub mod cli;
pub mod guard;
mod originate;
mod peek;
pub mod resolve;
pub mod sni;
pub mod table;

use crate::sidecar::audit::{self, EgressRecord};
use crate::sidecar::config::{EgressConfig, EgressMode, LimitsConfig};
use crate::sidecar::metrics::{Direction, Disposition, Metrics, RequestCounters};
use guard::Guard;
use prometheus::IntCounterVec;
use resolve::Resolver;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use table::{Refused, Table};
use tokio::net::TcpStream;

pub use originate::AppRequest;
pub use peek::starts_with_tls;

/// Time allowed to open a TCP connection to one external address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why egress could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error(transparent)]
    Resolver(#[from] resolve::ResolverError),
    #[error("outbound.egress.destinations[{index}] ({host}): CA file {path}: {reason}")]
    Ca {
        index: usize,
        host: String,
        path: String,
        reason: String,
    },
    #[error("outbound.egress.destinations[{index}] ({host}): no `ca` given and the system has no CA roots: {reason}")]
    NoSystemRoots {
        index: usize,
        host: String,
        reason: String,
    },
    #[error("egress metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// How a connection or request leaves: its `mode` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Tls,
    Originate,
    Passthrough,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tls => "tls",
            Mode::Originate => "originate",
            Mode::Passthrough => "passthrough",
        }
    }
}

/// The egress of one sidecar.
pub struct Egress {
    table: Table,
    guard: Guard,
    /// Set when destinations are declared (passthrough needs none).
    resolver: Option<Resolver>,
    /// The TLS client config of each `originate` destination, by index.
    originate: Vec<Option<Arc<rustls::ClientConfig>>>,
    decisions: IntCounterVec,
    metrics: Arc<Metrics>,
    /// Request counters of originated requests (peer label `egress`).
    counters: RequestCounters,
    /// How long the app may take to send its ClientHello.
    hello_timeout: Option<Duration>,
    keep_underscores: bool,
    /// `outbound.egress.listen`.
    pub listen: Option<SocketAddr>,
}

impl Egress {
    pub fn new(
        cfg: &EgressConfig,
        limits: &LimitsConfig,
        keep_underscores: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Egress>, EgressError> {
        let table = Table::new(cfg);
        let resolver = match cfg.destinations.is_empty() {
            true => None,
            false => Some(Resolver::new(cfg.resolver)?),
        };
        let originate = originate::client_configs(cfg)?;
        let decisions = IntCounterVec::new(
            prometheus::Opts::new(
                "meshguard_egress_decisions_total",
                "Egress decisions by declared destination (other: anything undeclared), mode, decision and reason",
            ),
            &["host", "mode", "decision", "reason"],
        )?;
        metrics.registry().register(Box::new(decisions.clone()))?;
        let counters = metrics.request_counters(Direction::Outbound, "egress".to_owned());
        Ok(Arc::new(Egress {
            table,
            guard: Guard::new(cfg.allow_cidrs.clone(), cfg.own_addresses.clone()),
            resolver,
            originate,
            decisions,
            metrics,
            counters,
            hello_timeout: limits.header_read_timeout(),
            keep_underscores,
            listen: cfg.listen,
        }))
    }

    /// Counts and audits one decision.
    fn decided(
        &self,
        mode: Mode,
        host: Option<&str>,
        destination: Option<SocketAddr>,
        outcome: Result<(), &Refused>,
    ) {
        let (decision, reason) = match outcome {
            Ok(()) => (Disposition::Allow, "allowed"),
            Err(refused) => (Disposition::Deny, refused.label()),
        };
        let label = self.table.label(host);
        self.decisions
            .with_label_values(&[label, mode.as_str(), decision.as_str(), reason])
            .inc();
        audit::egress(&EgressRecord {
            mode: mode.as_str(),
            host,
            destination,
            decision,
            reason,
            detail: outcome.err().map(|r| r as &dyn std::fmt::Display),
        });
    }

    /// Counts and audits an allowed connection that could not be opened.
    fn unreachable(
        &self,
        mode: Mode,
        host: Option<&str>,
        to: Option<SocketAddr>,
        e: &std::io::Error,
    ) {
        let label = self.table.label(host);
        let labels = [label, mode.as_str(), "allow", "unreachable"];
        self.decisions.with_label_values(&labels).inc();
        audit::egress(&EgressRecord {
            mode: mode.as_str(),
            host,
            destination: to,
            decision: Disposition::Allow,
            reason: "unreachable",
            detail: Some(e),
        });
    }

    /// Counts an HTTP request to an undeclared host.
    fn undeclared_request(&self) {
        let labels = [table::OTHER, Mode::Originate.as_str(), "deny", "undeclared"];
        self.decisions.with_label_values(&labels).inc();
    }

    /// The addresses a connection to `name` may go to, from one lookup.
    async fn targets(
        &self,
        name: &str,
        dialled: Option<SocketAddr>,
        port: u16,
        app: Option<IpAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let Some(resolver) = &self.resolver else {
            return Err(Refused::Undeclared);
        };
        let resolved = resolver.lookup(name).await.map_err(Refused::Unresolved)?;
        table::targets(name, &resolved, dialled, port, &self.guard, app)
    }

    /// A captured connection to an undeclared address, under
    /// `undeclared: passthrough`: copied as TCP if the guard lets the
    /// address through, closed otherwise.
    pub async fn passthrough(&self, mut app: TcpStream, dst: SocketAddr) {
        let from = app.peer_addr().ok().map(|a| a.ip());
        if let Err(why) = self.guard.check(dst.ip(), from) {
            let refused = Refused::Blocked(why, dst.ip());
            return self.decided(Mode::Passthrough, None, Some(dst), Err(&refused));
        }
        // Its audit line is the `passthrough` event of old; counted here.
        audit::passthrough(dst);
        let labels = [table::OTHER, Mode::Passthrough.as_str(), "allow", "allowed"];
        self.decisions.with_label_values(&labels).inc();
        match connect(&[dst]).await {
            Ok((mut upstream, _)) => {
                let _ = tokio::io::copy_bidirectional(&mut app, &mut upstream).await;
            }
            Err(e) => self.unreachable(Mode::Passthrough, None, Some(dst), &e),
        }
    }

    /// A TLS connection from the app, its bytes passed through to the
    /// destination its SNI names. `dialled`: the original destination
    /// under capture; `None` on the egress listener (the first declared
    /// port of the destination is used).
    pub async fn tls(&self, mut app: TcpStream, dialled: Option<SocketAddr>) {
        let from = app.peer_addr().ok().map(|a| a.ip());
        let name = match peek::client_hello(&app, self.hello_timeout).await {
            Ok(name) => name,
            Err(peek::PeekError::Sni(e)) => {
                return self.decided(Mode::Tls, None, dialled, Err(&Refused::Sni(e)))
            }
            // The app went away or never spoke: nothing was asked for.
            Err(peek::PeekError::Io(_)) => return,
        };
        let refuse =
            |refused: Refused| self.decided(Mode::Tls, Some(&name), dialled, Err(&refused));
        let entry = match self.table.tls(&name, dialled.map(|d| d.port())) {
            Ok(entry) => entry,
            Err(refused) => return refuse(refused),
        };
        let port = dialled.map_or(entry.upstream_port(), |d| d.port());
        let targets = match self.targets(&name, dialled, port, from).await {
            Ok(targets) => targets,
            Err(refused) => return refuse(refused),
        };
        let (mut upstream, addr) = match connect(&targets).await {
            Ok(connected) => connected,
            Err(e) => {
                return self.unreachable(Mode::Tls, Some(&name), targets.first().copied(), &e)
            }
        };
        self.decided(Mode::Tls, Some(&name), Some(addr), Ok(()));
        let _ = tokio::io::copy_bidirectional(&mut app, &mut upstream).await;
    }

    /// Accepts TLS from apps on `outbound.egress.listen` until a drain starts.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        max_connections: usize,
        drain: tokio::sync::watch::Receiver<bool>,
        tracker: crate::sidecar::proxy::serve::ConnectionTracker,
    ) {
        let this = self.clone();
        crate::sidecar::proxy::serve::accept_loop(
            listener,
            Direction::Outbound,
            max_connections,
            drain,
            tracker,
            move |app, _addr, tracked| {
                let this = this.clone();
                async move {
                    let _ = app.set_nodelay(true);
                    this.tls(app, None).await;
                    drop(tracked);
                }
            },
        )
        .await
    }
}

/// Connects to the first of `targets` that answers (each was checked).
async fn connect(targets: &[SocketAddr]) -> std::io::Result<(TcpStream, SocketAddr)> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address to connect to");
    for &addr in targets {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok((tcp, addr));
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

/// The mode label of a declared destination.
impl From<EgressMode> for Mode {
    fn from(m: EgressMode) -> Mode {
        match m {
            EgressMode::Tls => Mode::Tls,
            EgressMode::Originate => Mode::Originate,
        }
    }
}
