//! Wires a sidecar together: loads identity, binds every listener, starts
//! the proxies and the admin endpoint, and stops them. Tests start the same
//! app in-process with port 0 addresses.

use crate::sidecar::admin::{self, AdminState};
use crate::sidecar::assertion::Assertion;
use crate::sidecar::config::Config;
use crate::sidecar::egress::Egress;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::policy::PolicyError;
use crate::sidecar::policy::PolicySlot;
use crate::sidecar::proxy::inbound::Inbound;
use crate::sidecar::proxy::serve::ConnectionTracker;
use crate::sidecar::proxy::tcp::{self, TcpInbound, TcpOutbound, TcpSettings};
use crate::sidecar::proxy::{bind, outbound::Outbound, BindError};
use crate::sidecar::tls::{inbound_server_config, CredentialStore, TlsError};
use crate::sidecar::webhook::route::Webhooks;
use crate::sidecar::workload_api::{self, JwtBundles, WorkloadApi, WorkloadApiError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

mod signed;

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    AppAddress(#[from] crate::sidecar::proxy::inbound::InvalidAppAddress),
    #[error(transparent)]
    Egress(#[from] crate::sidecar::egress::EgressError),
    #[error("Workload API: {0}")]
    WorkloadApi(#[from] WorkloadApiError),
    #[error("the Workload API client stopped before any SVID arrived")]
    IdentityStopped,
    #[error(transparent)]
    Jwt(#[from] crate::sidecar::jwt::JwtSetupError),
    #[error(transparent)]
    Webhook(#[from] crate::sidecar::webhook::route::WebhookError),
    #[error(transparent)]
    Assertion(#[from] crate::sidecar::assertion::AssertionError),
}

/// A running sidecar: the addresses it actually listens on, and the handle
/// to stop it.
pub struct Running {
    pub own_id: crate::sidecar::identity::SpiffeId,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    /// Listeners of routes that own one, in config order.
    pub route_listeners: Vec<SocketAddr>,
    /// Listeners of `outbound.tcp_routes`, in config order.
    pub tcp_route_listeners: Vec<SocketAddr>,
    /// `outbound.egress.listen`, if configured.
    pub egress: Option<SocketAddr>,
    /// `webhooks.listen`, if configured.
    pub webhooks: Option<SocketAddr>,
    /// The identity assertion's signer, if configured (rotated on its own
    /// schedule; `rotate` here rotates now).
    pub assertion: Option<Arc<Assertion>>,
    pub admin: SocketAddr,
    pub store: Arc<CredentialStore>,
    pub metrics: Arc<Metrics>,
    /// The policy in force (swapped on reload).
    pub policy: PolicySlot,
    /// Open data-path connections (both directions).
    pub connections: ConnectionTracker,
    /// With an identity from the Workload API: the JWT bundles it streams
    /// (the seam for JWT-SVID validation; see `workload_api::JwtBundles`).
    pub jwt_bundles: Option<watch::Receiver<JwtBundles>>,
    admin_state: Arc<AdminState>,
    shutdown_config: crate::sidecar::config::ShutdownConfig,
    /// true = stop accepting, close connections gracefully.
    drain: watch::Sender<bool>,
    /// true = stop everything (admin, watchers) now.
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops at once: closes listeners, asks connections to close, and
    /// waits for the listener tasks to end.
    pub async fn stop(mut self) {
        let _ = self.drain.send(true);
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }

    /// The shutdown Kubernetes needs (on SIGTERM): readiness goes false at
    /// once while both directions keep serving for the drain delay (so
    /// endpoints are removed before anything is refused, and the app can
    /// finish its outbound calls); then listeners close, every connection
    /// is closed gracefully (HTTP/1 `Connection: close`, HTTP/2 GOAWAY),
    /// and we return when none is left or at the deadline.
    pub async fn drain(self) {
        let cfg = self.shutdown_config.clone();
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(cfg.deadline_ms);
        self.admin_state.set_draining();
        self.connections.start_closing();
        tracing::info!(
            delay_ms = cfg.drain_delay_ms,
            deadline_ms = cfg.deadline_ms,
            "draining: not ready, still serving"
        );
        tokio::time::sleep_until(
            (tokio::time::Instant::now() + std::time::Duration::from_millis(cfg.drain_delay_ms))
                .min(deadline),
        )
        .await;
        let _ = self.drain.send(true);
        tracing::info!(
            open = self.connections.active(),
            "draining: listeners closed, closing connections gracefully"
        );
        while self.connections.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = self.connections.active();
        if left > 0 {
            tracing::warn!(open = left, "drain deadline reached; closing the rest");
        } else {
            tracing::info!("drained");
        }
        self.stop().await;
    }
}

/// Starts every part of the sidecar described by `config`. Returns once all
/// listeners are bound (so readiness is true); with an identity from the
/// Workload API, that is after the first SVID arrived.
pub async fn start(config: &Config) -> Result<Running, AppError> {
    begin(config).await?.finish().await
}

/// Where our credentials come from.
enum Identity {
    /// Loaded from files, with the fingerprints their watcher starts from.
    Files(Arc<CredentialStore>, crate::sidecar::reload::LoadedFiles),
    /// Streamed by a SPIFFE Workload API client running in `tasks`.
    WorkloadApi(workload_api::Receivers),
}

/// A sidecar whose admin listener is up and whose identity is loaded or on
/// its way (`/ready` answers 503 meanwhile); [`Starting::finish`] starts
/// the rest.
pub struct Starting<'c> {
    /// The admin listener's address.
    pub admin: SocketAddr,
    config: &'c Config,
    identity: Identity,
    metrics: Arc<Metrics>,
    admin_state: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// The first half of [`start`]: identity files loaded (or the Workload API
/// client started) and the admin listener serving.
pub async fn begin(config: &Config) -> Result<Starting<'_>, AppError> {
    warm_random();
    let known_peers = config
        .outbound
        .iter()
        .flat_map(|o| o.routes.iter().map(|r| r.identity.to_string()));
    let metrics = Arc::new(Metrics::new(known_peers)?);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let identity = match &config.identity.workload_api {
        None => {
            let (store, loaded) = crate::sidecar::reload::load_credentials(&config.identity)?;
            Identity::Files(store, loaded)
        }
        Some(api) => {
            let (client, receivers) = WorkloadApi::new(api, metrics.clone())?;
            tasks.spawn(client.run(shutdown_rx.clone()));
            Identity::WorkloadApi(receivers)
        }
    };
    let config_json =
        serde_json::to_string_pretty(config).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let admin_state = AdminState::new(config_json, metrics.clone());
    if config
        .assertion
        .as_ref()
        .is_some_and(|a| a.mode.is_asymmetric())
    {
        admin_state.expect_jwks();
    }
    let (admin_listener, admin) = bind_local(config.admin.listen).await?;
    tasks.spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        shutdown_rx,
    ));
    Ok(Starting {
        admin,
        config,
        identity,
        metrics,
        admin_state,
        shutdown,
        tasks,
    })
}

impl Starting<'_> {
    /// Waits for our identity, then binds every listener and starts the
    /// proxies and watchers.
    pub async fn finish(self) -> Result<Running, AppError> {
        let Starting {
            admin,
            config,
            identity,
            metrics,
            admin_state,
            shutdown,
            tasks,
        } = self;
        let (store, jwt_bundles) = match &identity {
            Identity::Files(store, _) => (store.clone(), None),
            Identity::WorkloadApi(rx) => (first_store(rx).await?, Some(rx.jwt_bundles.clone())),
        };
        let own_id = store.own_id();
        let (policy, policy_hash) = load_policy(config)?;
        crate::sidecar::reload::publish_cert_expiry(&metrics, &store);
        admin_state.set_store(store.clone());
        let (drain, drain_rx) = watch::channel(false);
        let mut parts = Parts {
            config,
            store,
            metrics,
            policy,
            poll: std::time::Duration::from_millis(config.runtime.poll_interval_ms),
            shutdown: shutdown.subscribe(),
            drain: drain_rx,
            connections: ConnectionTracker::default(),
            tasks,
            egress_listener: None,
        };
        let assertion = parts.start_assertion()?;
        if let Some(a) = &assertion {
            admin_state.set_assertion(a.clone());
        }
        let hooks = parts.webhook_routes()?;
        let inbound = parts
            .start_inbound(policy_hash, assertion.clone(), hooks.clone())
            .await?;
        let webhooks = parts.start_webhooks(hooks, assertion.clone()).await?;
        let (outbound, route_listeners, tcp_route_listeners) = parts.start_outbound().await?;
        parts.watch_credentials(identity);
        release_startup_pages();
        admin_state.set_ready(true);
        tracing::info!(
            id = %own_id,
            // Plain addresses; a listener that is not configured is left out.
            inbound = inbound.map(tracing::field::display),
            outbound = outbound.map(tracing::field::display),
            route_listeners = (!route_listeners.is_empty()).then(|| join_addrs(&route_listeners)),
            admin = %admin,
            "meshguard ready"
        );
        Ok(Running {
            own_id,
            inbound,
            outbound,
            route_listeners,
            tcp_route_listeners,
            egress: parts.egress_listener,
            webhooks,
            assertion,
            admin,
            store: parts.store,
            metrics: parts.metrics,
            policy: parts.policy,
            connections: parts.connections,
            jwt_bundles,
            admin_state,
            shutdown_config: config.shutdown.clone(),
            drain,
            shutdown,
            tasks: parts.tasks,
        })
    }
}

/// The store the Workload API client builds from the first accepted SVID.
async fn first_store(rx: &workload_api::Receivers) -> Result<Arc<CredentialStore>, AppError> {
    let mut store = rx.store.clone();
    tracing::info!("waiting for the first SVID from the Workload API; not ready until then");
    let ready = store
        .wait_for(Option::is_some)
        .await
        .map_err(|_| AppError::IdentityStopped)?;
    ready.clone().ok_or(AppError::IdentityStopped)
}

/// The policy file of `inbound.policy`, if any, with the hash its watcher
/// starts from. A rule with methods or paths on a TCP port is refused.
fn load_policy(config: &Config) -> Result<(PolicySlot, [u8; 32]), AppError> {
    let path = config.inbound.as_ref().and_then(|i| i.policy.as_deref());
    let (policy, hash) = match path {
        Some(path) => {
            let (policy, hash) = crate::sidecar::reload::load_policy(path)?;
            let tcp_ports = config.inbound.as_ref().map_or(&[][..], |i| &i.tcp_ports);
            policy.check_tcp_ports(tcp_ports)?;
            policy.check_jwt_providers(&jwt_provider_names(config))?;
            (Some(Arc::new(policy)), hash)
        }
        None => (None, [0; 32]),
    };
    Ok((Arc::new(arc_swap::ArcSwapOption::from(policy)), hash))
}

/// The outbound's shared listener, its route listeners, its TCP route listeners.
type OutboundListeners = (Option<SocketAddr>, Vec<SocketAddr>, Vec<SocketAddr>);

/// What the parts of one sidecar share while it starts.
struct Parts<'c> {
    config: &'c Config,
    store: Arc<CredentialStore>,
    metrics: Arc<Metrics>,
    policy: PolicySlot,
    poll: std::time::Duration,
    shutdown: watch::Receiver<bool>,
    drain: watch::Receiver<bool>,
    connections: ConnectionTracker,
    tasks: JoinSet<()>,
    /// Where `outbound.egress.listen` was bound.
    egress_listener: Option<SocketAddr>,
}

impl Parts<'_> {
    /// The inbound proxy and its policy watcher; the address it listens on.
    async fn start_inbound(
        &mut self,
        policy_hash: [u8; 32],
        assertion: Option<Arc<Assertion>>,
        webhooks: Option<Arc<Webhooks>>,
    ) -> Result<Option<SocketAddr>, AppError> {
        let Some(cfg) = &self.config.inbound else {
            return Ok(None);
        };
        let (listener, addr) = bind_local(cfg.listen).await?;
        let tcp = TcpInbound::new(
            cfg,
            self.policy.clone(),
            self.store.clone(),
            self.metrics.clone(),
            TcpSettings::new(self.config),
        );
        if !cfg.tcp_ports.is_empty() {
            self.tasks.spawn(tcp.watch_policy(self.drain.clone()));
        }
        let jwt = self.start_jwt(cfg)?;
        let proxy = Inbound::new(
            self.store.clone(),
            tcp::server_config(inbound_server_config(&self.store)?, &cfg.tcp_ports),
            cfg,
            self.policy.clone(),
            self.metrics.clone(),
            self.config.limits.clone(),
            tcp,
        )?;
        let proxy = proxy.with_jwt(jwt).with_assertion(assertion);
        let proxy = Arc::new(proxy.with_webhooks(webhooks));
        let served = proxy.serve(listener, self.drain.clone(), self.connections.clone());
        self.tasks.spawn(served);
        if let Some(path) = &cfg.policy {
            self.tasks.spawn(crate::sidecar::reload::watch_policy(
                path.clone(),
                self.policy.clone(),
                policy_hash,
                crate::sidecar::reload::PolicyChecks {
                    tcp_ports: cfg.tcp_ports.clone(),
                    jwt_providers: jwt_provider_names(self.config),
                },
                self.metrics.clone(),
                self.poll,
                self.shutdown.clone(),
            ));
        }
        Ok(Some(addr))
    }

    /// The token providers of `inbound.jwt` (file keys loaded now, a bad
    /// file stops the start) and the task that keeps their keys current.
    fn start_jwt(
        &mut self,
        cfg: &crate::sidecar::config::InboundConfig,
    ) -> Result<Option<Arc<crate::sidecar::jwt::Authenticator>>, AppError> {
        let Some(jwt_cfg) = &cfg.jwt else {
            return Ok(None);
        };
        let own = self.store.own_id();
        let jwt = crate::sidecar::jwt::Authenticator::load(
            jwt_cfg,
            self.metrics.registry(),
            own.trust_domain(),
        )?;
        let watched = jwt.clone().watch(self.poll, self.shutdown.clone());
        self.tasks.spawn(watched);
        Ok(Some(jwt))
    }

    /// The outbound proxy: its shared listener's address, if it has one,
    /// those of the routes that own a listener, and those of the TCP
    /// routes, in config order.
    async fn start_outbound(&mut self) -> Result<OutboundListeners, AppError> {
        let Some(cfg) = &self.config.outbound else {
            return Ok((None, Vec::new(), Vec::new()));
        };
        let limits = self.config.limits.clone();
        let settings = TcpSettings::new(self.config);
        let tcp = TcpOutbound::new(&self.store, cfg, self.metrics.clone(), &limits, settings)?;
        let egress = Egress::new(
            &cfg.egress,
            &limits,
            cfg.keep_underscore_headers,
            self.metrics.clone(),
        )?;
        let proxy = Outbound::new(&self.store, cfg, self.metrics.clone(), limits, tcp, egress)?;
        let mut shared = None;
        if let Some(listen) = cfg.listen {
            let (listener, addr) = bind_local(listen).await?;
            shared = Some(addr);
            let served =
                proxy
                    .clone()
                    .serve(listener, None, self.drain.clone(), self.connections.clone());
            self.tasks.spawn(served);
        }
        let mut route_listeners = Vec::new();
        for (listen, route) in &proxy.listener_routes {
            let (listener, addr) = bind_local(*listen).await?;
            route_listeners.push(addr);
            let route = Some(route.clone());
            let served = proxy.clone().serve(
                listener,
                route,
                self.drain.clone(),
                self.connections.clone(),
            );
            self.tasks.spawn(served);
        }
        let mut tcp_listeners = Vec::new();
        for (listen, route) in proxy.tcp.listener_routes() {
            let (listener, addr) = bind_local(*listen).await?;
            tcp_listeners.push(addr);
            let served = proxy.tcp.clone().serve(
                listener,
                route.clone(),
                self.drain.clone(),
                self.connections.clone(),
            );
            self.tasks.spawn(served);
        }
        if let Some(listen) = proxy.egress.listen {
            let (listener, addr) = bind_local(listen).await?;
            self.egress_listener = Some(addr);
            let max = self.config.limits.max_connections;
            let served = proxy.egress.clone().serve(
                listener,
                max,
                self.drain.clone(),
                self.connections.clone(),
            );
            self.tasks.spawn(served);
        }
        Ok((shared, route_listeners, tcp_listeners))
    }

    /// Reloads of our SVID, key and bundles from files; with the Workload
    /// API (whose client applies updates itself), the expiry sweep of open
    /// connections only.
    fn watch_credentials(&mut self, identity: Identity) {
        match identity {
            Identity::Files(_, loaded) => {
                self.tasks.spawn(crate::sidecar::reload::watch_credentials(
                    self.config.identity.clone(),
                    self.store.clone(),
                    loaded,
                    self.metrics.clone(),
                    self.poll,
                    self.shutdown.clone(),
                ));
            }
            Identity::WorkloadApi(_) => {
                self.tasks.spawn(workload_api::sweep_expired(
                    self.store.clone(),
                    self.poll,
                    self.shutdown.clone(),
                ));
            }
        }
    }
}

/// Binds `addr`, returning the listener and the address it really got
/// (port 0 picks one).
async fn bind_local(addr: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr), BindError> {
    let listener = bind(addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    Ok((listener, local))
}

/// The names of `inbound.jwt`'s providers, which policy rules may name.
fn jwt_provider_names(config: &Config) -> Vec<String> {
    let jwt = config.inbound.as_ref().and_then(|i| i.jwt.as_ref());
    jwt.map_or_else(Vec::new, |j| {
        j.providers.iter().map(|p| p.name.clone()).collect()
    })
}

/// AWS-LC seeds its random generator from CPU-jitter entropy on the first
/// draw, ~30 ms of CPU (perf: `jent_*`). Drawn here on a thread of its own,
/// so it runs beside the start instead of inside the first TLS handshake
/// (or, with the assertion, the first key).
fn warm_random() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("meshguard-rng".into())
            .spawn(|| aws_lc_rs::rand::fill(&mut [0u8; 1]));
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "random generator not warmed ahead");
        }
    });
}

/// `a, b, c`: a list of addresses as a log field reads it.
fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives back the pages only starting needed (`sidecar::resident`), before
/// readiness so that the first requests already run in the smaller set.
fn release_startup_pages() {
    match crate::sidecar::resident::release_startup_pages() {
        Ok(r) => tracing::debug!(
            mappings = r.mappings,
            kib = r.kib,
            "start-up pages released"
        ),
        Err(e) => tracing::debug!(error = %e, "start-up pages kept: smaps unreadable"),
    }
}
