//! Wires a sidecar together: loads identity, binds every listener, starts
//! the proxies and the admin endpoint, and stops them. Tests start the same
//! app in-process with port 0 addresses.

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::proxy::{bind, inbound::Inbound, outbound::Outbound, BindError};
use crate::tls::{
    crypto_provider, inbound_server_config, CredentialStore, Svid, TlsError, TrustBundles,
};
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
}

/// A running sidecar: the addresses it actually listens on, and the handle
/// to stop it.
pub struct Running {
    pub own_id: crate::identity::SpiffeId,
    pub inbound: Option<SocketAddr>,
    pub outbound: Option<SocketAddr>,
    /// Listeners of routes that own one, in config order.
    pub route_listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub store: Arc<CredentialStore>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting and waits for the listener tasks to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Loads our SVID and the trust bundles named in the config.
pub fn load_credentials(config: &Config) -> Result<Arc<CredentialStore>, TlsError> {
    let provider = crypto_provider();
    let id = &config.identity;
    let svid = Svid::load(&id.cert, &id.key, &provider)?;
    let mut bundles = TrustBundles::new();
    bundles.load_domain(svid.id.trust_domain(), &id.bundle)?;
    for (td, path) in &id.federated_bundles {
        bundles.load_domain(td, path)?;
    }
    CredentialStore::new(svid, bundles)
}

/// Starts every part of the sidecar described by `config`. Returns once all
/// listeners are bound (so readiness is true).
pub async fn start(config: &Config) -> Result<Running, AppError> {
    let store = load_credentials(config)?;
    let own_id = store.own_id();
    let config_json =
        serde_json::to_string_pretty(config).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    let admin_state = AdminState::new(config_json);
    let (shutdown, shutdown_rx) = watch::channel(false);
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
        let proxy = Inbound::new(store.clone(), inbound_server_config(&store)?, cfg.app);
        tasks.spawn(proxy.serve(listener, shutdown_rx.clone()));
    }

    let mut outbound_addr = None;
    let mut route_listeners = Vec::new();
    if let Some(cfg) = &config.outbound {
        let proxy = Outbound::new(&store, cfg)?;
        if let Some(listen) = cfg.listen {
            let listener = bind(listen).await?;
            outbound_addr = Some(listener.local_addr().map_err(|source| BindError {
                addr: listen,
                source,
            })?);
            tasks.spawn(proxy.clone().serve(listener, None, shutdown_rx.clone()));
        }
        for (listen, route) in &proxy.listener_routes {
            let listener = bind(*listen).await?;
            route_listeners.push(listener.local_addr().map_err(|source| BindError {
                addr: *listen,
                source,
            })?);
            tasks.spawn(
                proxy
                    .clone()
                    .serve(listener, Some(route.clone()), shutdown_rx.clone()),
            );
        }
    }

    admin_state.set_ready(true);
    tracing::info!(
        id = %own_id,
        inbound = ?inbound_addr,
        outbound = ?outbound_addr,
        route_listeners = ?route_listeners,
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
        shutdown,
        tasks,
    })
}
