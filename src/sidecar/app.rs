//! Wires a sidecar together: loads identity, binds every listener, starts
//! the proxies and the admin endpoint, and stops them. Tests start the same
//! app in-process with port 0 addresses.

use crate::sidecar::admin::{self, AdminState};
use crate::sidecar::config::Config;
use crate::sidecar::metrics::Metrics;
use crate::sidecar::policy::PolicyError;
use crate::sidecar::policy::PolicySlot;
use crate::sidecar::proxy::inbound::Inbound;
use crate::sidecar::proxy::serve::ConnectionTracker;
use crate::sidecar::proxy::{bind, outbound::Outbound, BindError};
use crate::sidecar::tls::{inbound_server_config, CredentialStore, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// A running sidecar: the addresses it actually listens on, and the handle
/// to stop it.
pub struct Running {
    pub own_id: crate::sidecar::identity::SpiffeId,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    /// Listeners of routes that own one, in config order.
    pub route_listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub store: Arc<CredentialStore>,
    pub metrics: Arc<Metrics>,
    /// The policy in force (swapped on reload).
    pub policy: PolicySlot,
    /// Open data-path connections (both directions).
    pub connections: ConnectionTracker,
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
/// listeners are bound (so readiness is true).
pub async fn start(config: &Config) -> Result<Running, AppError> {
    let (store, loaded_files) = crate::sidecar::reload::load_credentials(&config.identity)?;
    let own_id = store.own_id();
    let policy_path = config.inbound.as_ref().and_then(|i| i.policy.clone());
    let (policy, policy_hash) = match &policy_path {
        Some(path) => {
            let (policy, hash) = crate::sidecar::reload::load_policy(path)?;
            (Some(Arc::new(policy)), hash)
        }
        None => (None, [0; 32]),
    };
    let policy: PolicySlot = Arc::new(arc_swap::ArcSwapOption::from(policy));
    let known_peers = config
        .outbound
        .iter()
        .flat_map(|o| o.routes.iter().map(|r| r.identity.to_string()));
    let metrics = Arc::new(Metrics::new(known_peers));
    crate::sidecar::reload::publish_cert_expiry(&metrics, &store);
    let config_json =
        serde_json::to_string_pretty(config).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let admin_state = AdminState::new(config_json, metrics.clone(), store.clone());
    let poll = std::time::Duration::from_millis(config.runtime.poll_interval_ms);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let connections = ConnectionTracker::default();
    let mut tasks = JoinSet::new();

    let admin_listener = bind(config.admin.listen).await?;
    let admin = admin_listener.local_addr().map_err(|source| BindError {
        addr: config.admin.listen,
        source,
    })?;
    tasks.spawn(admin::serve(
        admin_listener,
        admin_state.clone(),
        shutdown_rx.clone(),
    ));

    let mut inbound_addr = None;
    if let Some(cfg) = &config.inbound {
        let listener = bind(cfg.listen).await?;
        inbound_addr = Some(listener.local_addr().map_err(|source| BindError {
            addr: cfg.listen,
            source,
        })?);
        let proxy = Inbound::new(
            store.clone(),
            inbound_server_config(&store)?,
            cfg,
            policy.clone(),
            metrics.clone(),
            config.limits.clone(),
        );
        tasks.spawn(proxy.serve(listener, drain_rx.clone(), connections.clone()));
        if let Some(path) = policy_path {
            tasks.spawn(crate::sidecar::reload::watch_policy(
                path,
                policy.clone(),
                policy_hash,
                metrics.clone(),
                poll,
                shutdown_rx.clone(),
            ));
        }
    }

    let mut outbound_addr = None;
    let mut route_listeners = Vec::new();
    if let Some(cfg) = &config.outbound {
        let proxy = Outbound::new(&store, cfg, metrics.clone(), config.limits.clone())?;
        if let Some(listen) = cfg.listen {
            let listener = bind(listen).await?;
            outbound_addr = Some(listener.local_addr().map_err(|source| BindError {
                addr: listen,
                source,
            })?);
            tasks.spawn(
                proxy
                    .clone()
                    .serve(listener, None, drain_rx.clone(), connections.clone()),
            );
        }
        for (listen, route) in &proxy.listener_routes {
            let listener = bind(*listen).await?;
            route_listeners.push(listener.local_addr().map_err(|source| BindError {
                addr: *listen,
                source,
            })?);
            tasks.spawn(proxy.clone().serve(
                listener,
                Some(route.clone()),
                drain_rx.clone(),
                connections.clone(),
            ));
        }
    }

    tasks.spawn(crate::sidecar::reload::watch_credentials(
        config.identity.clone(),
        store.clone(),
        loaded_files,
        metrics.clone(),
        poll,
        shutdown_rx.clone(),
    ));
    admin_state.set_ready(true);
    tracing::info!(
        id = %own_id,
        // Plain addresses; a listener that is not configured is left out.
        inbound = inbound_addr.map(tracing::field::display),
        outbound = outbound_addr.map(tracing::field::display),
        route_listeners = (!route_listeners.is_empty()).then(|| join_addrs(&route_listeners)),
        admin = %admin,
        "meshguard ready"
    );
    Ok(Running {
        own_id,
        inbound: inbound_addr,
        outbound: outbound_addr,
        route_listeners,
        admin,
        store,
        metrics,
        policy,
        connections,
        admin_state,
        shutdown_config: config.shutdown.clone(),
        drain,
        shutdown,
        tasks,
    })
}

/// `a, b, c`: a list of addresses as a log field reads it.
fn join_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
