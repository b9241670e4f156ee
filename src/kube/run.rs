//! `meshguard run`: one sidecar, from a config file or the single-route
//! quick start's flags, until SIGTERM (drain), Ctrl-C (stop now) or a POST
//! to the shutdown endpoint (drain).
//!
//! This is the one place where the sidecar runtime is wired with the
//! Kubernetes probe contract (the probe forwarder and shutdown endpoint
//! that injection asks for through the environment). It lives under
//! `kube` because `sidecar` must not depend on `kube`; outside an injected
//! pod those variables are unset and it is the plain sidecar.

use crate::kube::contract::AppProbes;
use crate::kube::probe::{self, ProbeError};
use crate::sidecar::app::AppError;
use crate::sidecar::config::{
    Config, ConfigError, QuickInbound, QuickOutbound, QuickStart, QuickStartError, RouteConfig,
};
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::logbuf;
use crate::sidecar::proxy::BindError;
use crate::sidecar::runtime::{self, RuntimeError, Stop};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// YAML config file (a commented one: deploy/meshguard.example.yaml).
    /// Excludes the flags below.
    #[arg(long, short = 'c', conflicts_with_all = ["cert", "key", "bundle", "inbound", "app", "policy", "outbound", "peer", "peer_id"])]
    config: Option<PathBuf>,
    /// Tokio worker threads (overrides the config; 1 = single-threaded).
    #[arg(long)]
    workers: Option<usize>,
    /// Our SVID certificate (PEM).
    #[arg(long, requires_all = ["key", "bundle"])]
    cert: Option<PathBuf>,
    /// Our SVID private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA bundle of our trust domain (PEM).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// Inbound mTLS listener address.
    #[arg(long, requires = "app")]
    inbound: Option<SocketAddr>,
    /// Local app address that inbound forwards to.
    #[arg(long, requires = "inbound")]
    app: Option<SocketAddr>,
    /// Policy file (allow matrix) for --inbound.
    #[arg(long, requires = "inbound")]
    policy: Option<PathBuf>,
    /// Outbound plain-HTTP listener; every request goes to --peer.
    #[arg(long, requires_all = ["peer", "peer_id"])]
    outbound: Option<SocketAddr>,
    /// Peer sidecar address (host:port) for --outbound.
    #[arg(long)]
    peer: Option<String>,
    /// SPIFFE ID the peer must prove.
    #[arg(long)]
    peer_id: Option<SpiffeId>,
    /// Admin listener (health, config).
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    pub log: crate::sidecar::logging::LogArgs,
}

/// Why the sidecar did not start (or stopped with an error). Causes are
/// wrapped unchanged: the message is the cause's own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("give --config FILE, or --cert, --key and --bundle with --inbound/--app and/or --outbound/--peer/--peer-id")]
    NoConfig,
    #[error("--workers must be at least 1")]
    ZeroWorkers,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Flags(#[from] QuickStartError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Start(#[from] AppError),
}

impl RunArgs {
    /// The effective config: the file's or the flags', with the overrides
    /// that apply to both.
    pub fn config(&self) -> Result<Config, RunError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None => self.quick_start()?.validated()?,
        };
        // The injector forces the admin address so kubelet can always probe it.
        if let Some(admin) = self.admin {
            config.admin.listen = admin;
        }
        if let Some(w) = self.workers {
            if w == 0 {
                return Err(RunError::ZeroWorkers);
            }
            config.runtime.workers = w;
        }
        Ok(config)
    }

    /// The ghostunnel-style single-route quick start the flags describe.
    fn quick_start(&self) -> Result<QuickStart, RunError> {
        let (Some(cert), Some(key), Some(bundle)) = (&self.cert, &self.key, &self.bundle) else {
            return Err(RunError::NoConfig);
        };
        let inbound = self
            .inbound
            .zip(self.app)
            .map(|(listen, app)| QuickInbound {
                listen,
                app,
                policy: self.policy.clone(),
            });
        let outbound = match (self.outbound, &self.peer, &self.peer_id) {
            (Some(listen), Some(peer), Some(identity)) => Some(QuickOutbound {
                listen: None,
                route: RouteConfig {
                    host: None,
                    listen: Some(listen),
                    peer: peer.clone(),
                    identity: identity.clone(),
                },
            }),
            _ => None,
        };
        Ok(QuickStart {
            cert: cert.clone(),
            key: key.clone(),
            bundle: bundle.clone(),
            inbound,
            outbound,
            admin: self.admin,
        })
    }
}

/// Runs the command: builds the config, reads the probe contract from the
/// environment, and serves until stopped.
pub fn run(args: &RunArgs) -> Result<(), RunError> {
    let config = args.config()?;
    // Injected pods hand over the app's kubelet probes and, in
    // classic-container mode, a loopback shutdown endpoint. Bad values
    // refuse to start.
    let probes = probe::probes_from_env()?;
    let shutdown_listen = probe::shutdown_listen_from_env()?;
    // Log lines are written in batches, each time the event loop runs out
    // of work (see logbuf).
    let runtime =
        runtime::finish(runtime::builder(config.runtime.workers).on_thread_park(logbuf::flush))?;
    logbuf::start();
    let result = runtime.block_on(run_sidecar(config, probes, shutdown_listen));
    logbuf::stop();
    result
}

async fn run_sidecar(
    config: Config,
    probes: Option<(SocketAddr, AppProbes)>,
    shutdown_listen: Option<SocketAddr>,
) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut extra = tokio::task::JoinSet::new();
    // Bound before the data path: the app's probes hit it as soon as the app starts.
    if let Some((addr, probes)) = probes {
        let listener = probe::bind_probe_listener(addr).await?;
        extra.spawn(probe::serve_probes(
            listener,
            Arc::new(probes),
            stop_rx.clone(),
        ));
    }
    let (trigger, mut requested) = tokio::sync::mpsc::channel(1);
    if let Some(addr) = shutdown_listen {
        let listener = crate::sidecar::proxy::bind(addr).await?;
        extra.spawn(probe::serve_shutdown(listener, trigger, stop_rx.clone()));
    } else {
        drop(trigger);
    }
    let mut signals = runtime::StopSignals::install();
    let running = crate::sidecar::app::start(&config).await?;
    let shutdown_requested = async move {
        match requested.recv().await {
            Some(()) => (),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        stop = signals.next() => match stop {
            // Kubernetes stopping the pod: drain as configured.
            Stop::Terminate => running.drain().await,
            // A person at a terminal: stop now.
            Stop::Interrupt => {
                tracing::info!("interrupted; stopping");
                running.stop().await
            }
        },
        () = shutdown_requested => {
            tracing::info!("shutdown requested on the shutdown endpoint; draining");
            running.drain().await
        }
    }
    // Only now: kubelet keeps probing while the pod terminates.
    let _ = stop_tx.send(true);
    while extra.join_next().await.is_some() {}
    Ok(())
}
