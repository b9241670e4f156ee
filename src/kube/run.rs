//! `meshguard run`: one sidecar, from a config file or the single-route
//! quick start's flags, until SIGTERM (drain), Ctrl-C (stop now) or a POST
//! to the shutdown endpoint (drain).
//!
//! This is the one place where the sidecar runtime is wired with the
//! Kubernetes probe contract (the probe forwarder and shutdown endpoint
//! that injection asks for through the environment). It lives under
//! `kube` because `sidecar` must not depend on `kube`; outside an injected
//! pod those variables are unset and it is the plain sidecar.

use crate::kube::contract::{AppProbes, ASSERTION_DIR, ENV_ASSERTION, ENV_INBOUND_TCP_PORTS};
use crate::kube::probe::{self, ProbeError};
use crate::sidecar::app::AppError;
use crate::sidecar::config::{AssertionConfig, AssertionMode, KeyFileAccess};
use crate::sidecar::config::{
    Config, ConfigError, QuickInbound, QuickOutbound, QuickStart, QuickStartError, RouteConfig,
};
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::logbuf;
use crate::sidecar::proxy::BindError;
use crate::sidecar::runtime::{self, RuntimeError, Stop};
use crate::sidecar::workers::{self, WorkersError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// YAML config file (a commented one: deploy/meshguard.example.yaml).
    /// Excludes the flags below.
    #[arg(long, short = 'c', conflicts_with_all = ["cert", "key", "bundle", "workload_api", "inbound", "app", "policy", "outbound", "peer", "peer_id"])]
    config: Option<PathBuf>,
    /// Event loops, one thread each (overrides the config; default 1).
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
    /// Instead of --cert, --key and --bundle: our SVID and bundles from the
    /// SPIFFE Workload API at SPIFFE_ENDPOINT_SOCKET (a SPIRE agent).
    #[arg(long, conflicts_with_all = ["cert", "key", "bundle"])]
    workload_api: bool,
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
    #[error("give --config FILE, or --cert, --key and --bundle (or --workload-api) with --inbound/--app and/or --outbound/--peer/--peer-id")]
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
    Workers(#[from] WorkersError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Start(#[from] AppError),
    #[error(transparent)]
    TcpPorts(#[from] TcpPortsError),
    #[error(transparent)]
    Assertion(#[from] AssertionEnvError),
}

/// Why the ports of `MESHGUARD_INBOUND_TCP_PORTS` could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum TcpPortsError {
    #[error(
        "{}: {value:?} is not a port (1-65535); give ports separated by commas",
        ENV_INBOUND_TCP_PORTS
    )]
    NotAPort { value: String },
    #[error("{}: not valid UTF-8", ENV_INBOUND_TCP_PORTS)]
    NotUnicode,
    #[error(
        "{} names TCP ports, but the config has no inbound to carry them",
        ENV_INBOUND_TCP_PORTS
    )]
    NoInbound,
}

/// Adds the ports of `value` (`MESHGUARD_INBOUND_TCP_PORTS`, comma-separated,
/// set by injection from the pod's annotation) to `inbound.tcp_ports`,
/// each once. An empty value adds nothing; anything that is not a port
/// refuses to start.
pub fn add_inbound_tcp_ports(config: &mut Config, value: &str) -> Result<(), TcpPortsError> {
    if value.trim().is_empty() {
        return Ok(());
    }
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim) {
        match item.parse::<u16>() {
            Ok(port) if port != 0 && item.bytes().all(|b| b.is_ascii_digit()) => ports.push(port),
            _ => {
                return Err(TcpPortsError::NotAPort {
                    value: item.to_owned(),
                })
            }
        }
    }
    let inbound = config.inbound.as_mut().ok_or(TcpPortsError::NoInbound)?;
    for port in ports {
        if !inbound.tcp_ports.contains(&port) {
            inbound.tcp_ports.push(port);
        }
    }
    Ok(())
}

/// [`add_inbound_tcp_ports`] with the variable's value, when it is set.
fn add_inbound_tcp_ports_from_env(config: &mut Config) -> Result<(), TcpPortsError> {
    match std::env::var(ENV_INBOUND_TCP_PORTS) {
        Ok(value) => add_inbound_tcp_ports(config, &value),
        Err(std::env::VarError::NotPresent) => Ok(()),
        Err(std::env::VarError::NotUnicode(_)) => Err(TcpPortsError::NotUnicode),
    }
}

/// Why `MESHGUARD_ASSERTION` could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum AssertionEnvError {
    #[error("{ENV_ASSERTION}: {0:?} is not a mode; give hmac, ed25519 or es256")]
    NotAMode(String),
    #[error(
        "{ENV_ASSERTION} is set (annotation meshguard.io/assertion) and the config has an \
         assertion section too; set it in one place"
    )]
    Twice,
    #[error("{ENV_ASSERTION} is set, but the config has no inbound whose requests it would sign")]
    NoInbound,
}

/// The `assertion` section `MESHGUARD_ASSERTION` (set by injection from the
/// pod's annotation) stands for: `mode`, writing to [`ASSERTION_DIR`], a
/// directory only the app's containers mount, so the HMAC key file is
/// readable by all there (the app runs as another user than meshguard).
pub fn add_assertion(config: &mut Config, mode: &str) -> Result<(), AssertionEnvError> {
    let mode = match mode.trim() {
        "hmac" => AssertionMode::Hmac,
        "ed25519" => AssertionMode::Ed25519,
        "es256" => AssertionMode::Es256,
        other => return Err(AssertionEnvError::NotAMode(other.to_owned())),
    };
    if config.assertion.is_some() {
        return Err(AssertionEnvError::Twice);
    }
    if config.inbound.is_none() {
        return Err(AssertionEnvError::NoInbound);
    }
    let dir = PathBuf::from(ASSERTION_DIR);
    config.assertion = Some(match mode {
        AssertionMode::Hmac => AssertionConfig {
            key_file: Some(dir.join("key")),
            key_file_access: KeyFileAccess::All,
            ..Default::default()
        },
        _ => AssertionConfig {
            mode,
            jwks_file: Some(dir.join("jwks.json")),
            ..Default::default()
        },
    });
    Ok(())
}

impl RunArgs {
    /// The effective config: the file's or the flags', with the overrides
    /// that apply to both.
    pub fn config(&self) -> Result<Config, RunError> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None if self.workload_api => self.quick_start()?.validated_from_workload_api()?,
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
        let none = PathBuf::new();
        let (cert, key, bundle) = match (&self.cert, &self.key, &self.bundle) {
            _ if self.workload_api => (&none, &none, &none),
            (Some(cert), Some(key), Some(bundle)) => (cert, key, bundle),
            _ => return Err(RunError::NoConfig),
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
    let mut config = args.config()?;
    // Injected pods name their opaque TCP ports through the environment.
    add_inbound_tcp_ports_from_env(&mut config)?;
    // ... and whether the app gets an identity assertion.
    if let Some(mode) = std::env::var_os(ENV_ASSERTION) {
        add_assertion(&mut config, &mode.to_string_lossy())?;
    }
    // Injected pods hand over the app's kubelet probes and, in
    // classic-container mode, a loopback shutdown endpoint. Bad values
    // refuse to start.
    let probes = probe::probes_from_env()?;
    let shutdown_listen = probe::shutdown_listen_from_env()?;
    // Log lines are written in batches, each time the event loop runs out
    // of work (see logbuf).
    // One single-threaded loop per worker (`sidecar/workers.rs`), this one first.
    let runtime = runtime::finish(runtime::builder(1).on_thread_park(logbuf::flush))?;
    workers::start(
        runtime.handle().clone(),
        config.runtime.workers,
        logbuf::flush,
    )?;
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
    // With an identity from the Workload API the start waits for the
    // first SVID, for as long as the agent takes: stopping must still work.
    let running = tokio::select! {
        running = crate::sidecar::app::start(&config) => running?,
        _ = signals.next() => {
            tracing::info!("stopped before the sidecar was ready");
            return Ok(());
        }
    };
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

#[cfg(test)]
mod tests;
