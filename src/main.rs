//! The `meshguard` command line. Parses arguments and hands off to the
//! library; anyhow lives only here.

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use meshguard::sidecar::config::{
    AdminConfig, Config, IdentityConfig, InboundConfig, OutboundConfig, RouteConfig, RuntimeConfig,
    DEFAULT_ADMIN_ADDR,
};
use meshguard::sidecar::identity::SpiffeId;
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Parser)]
#[command(
    name = "meshguard",
    version,
    about = "Service-mesh sidecar: strict SPIFFE mTLS in and out"
)]
struct Cli {
    /// Log format: human-readable text for local runs, JSON for containers.
    #[arg(long, global = true, env = "MESHGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar, from a config file or (single route) from flags.
    Run(RunArgs),
    /// Certificate tools.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Two workloads with their sidecars on loopback, talking mTLS.
    Demo {
        /// Where dev certificates go (reused when present).
        #[arg(long, default_value = "certs-dev")]
        certs: PathBuf,
        /// First of the loopback ports the demo uses (base..base+110).
        #[arg(long, default_value_t = 15000)]
        base_port: u16,
    },
    /// Policy tools: explain a decision, find rules that can never match.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A tiny HTTP app that echoes what it receives (for demos and tests).
    Echo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "echo")]
        name: String,
    },
    /// Add the sidecar to Kubernetes manifests (files or stdin) and print them.
    Inject(meshguard::kube::inject::InjectArgs),
    /// Set up traffic capture with iptables/ip6tables (the pod's init container).
    InitIptables(meshguard::kube::iptables::InitIptablesArgs),
    /// Inject the sidecar at admission: an HTTPS mutating admission webhook.
    Webhook(meshguard::kube::inject::webhook::WebhookArgs),
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a dev CA and X509-SVIDs for named workloads.
    Dev {
        /// Output directory.
        #[arg(long, default_value = "certs-dev")]
        out: PathBuf,
        /// A workload as namespace/service-account (repeatable).
        #[arg(long = "workload", required = true)]
        workloads: Vec<String>,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// SVID lifetime, e.g. 30m, 1h, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: time::Duration,
        /// Replace an existing dev CA instead of reusing it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Decide one request as the sidecar would. Exit 0 = allow, 1 = deny, 2 = bad input.
    Check {
        #[arg(long)]
        policy: PathBuf,
        /// The caller's SPIFFE ID.
        #[arg(long)]
        from: String,
        /// The port the caller dialled (under iptables capture: the app's
        /// port; otherwise the inbound listener's).
        #[arg(long, default_value_t = 15006)]
        port: u16,
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request target as sent (normalised exactly as the proxy does).
        #[arg(long)]
        path: String,
    },
    /// Report rules that can never match. Exit 0 = clean, 1 = findings, 2 = bad input.
    Lint {
        #[arg(long)]
        policy: PathBuf,
        /// Trust domains this workload has bundles for (repeatable).
        #[arg(long = "trust-domain", default_value = "cluster.local")]
        trust_domains: Vec<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// YAML config file (see meshguard.example.yaml). Excludes the flags below.
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
}

fn parse_duration(s: &str) -> Result<time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number then s, m, h or d"))?;
    let d = match unit {
        "s" => time::Duration::seconds(n),
        "m" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    if d <= time::Duration::ZERO {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(d)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format) {
        eprintln!("meshguard: error: {e:#}");
        return std::process::ExitCode::from(2);
    }
    if let Command::Policy(cmd) = cli.command {
        return policy_command(cmd);
    }
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshguard: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logging to stderr, filtered by `MESHGUARD_LOG` (`info` if unset): a
/// level, or `target=level` pairs such as `info,meshguard::audit=warn`.
fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter: tracing_subscriber::filter::Targets = match std::env::var("MESHGUARD_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec
            .parse()
            .with_context(|| format!("MESHGUARD_LOG={spec:?}: expected a level (error, warn, info, debug, trace) or target=level pairs"))?,
        _ => "info".parse().expect("a valid filter"),
    };
    // The filter decides; the builder's own level cap is lifted.
    let builder = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_writer(meshguard::sidecar::logbuf::BatchedStderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .init(),
        LogFormat::Text => builder.finish().with(filter).init(),
    }
    Ok(())
}

fn runtime_builder(workers: usize) -> tokio::runtime::Builder {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all();
    builder
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_builder(workers)
        .build()
        .context("starting the async runtime")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => {
            let mut config = match &args.config {
                Some(path) => Config::load(path)?,
                None => config_from_flags(&args)?,
            };
            // Overrides that also apply to a config file (the injector forces
            // the admin address so kubelet can always probe it).
            if let Some(admin) = args.admin {
                config.admin.listen = admin;
            }
            if let Some(w) = args.workers {
                if w == 0 {
                    bail!("--workers must be at least 1");
                }
                config.runtime.workers = w;
            }
            // Injected pods hand over the app's kubelet probes and, in
            // classic-container mode, a loopback shutdown endpoint. Bad
            // values refuse to start.
            let probes = meshguard::kube::probe::probes_from_env()?;
            let shutdown_listen = meshguard::kube::probe::shutdown_listen_from_env()?;
            // Log lines are written in batches, each time the event loop
            // runs out of work (see logbuf).
            let runtime = runtime_builder(config.runtime.workers)
                .on_thread_park(meshguard::sidecar::logbuf::flush)
                .build()
                .context("starting the async runtime")?;
            meshguard::sidecar::logbuf::start();
            let result = runtime.block_on(run_sidecar(config, probes, shutdown_listen));
            meshguard::sidecar::logbuf::stop();
            result
        }
        Command::Certs(CertsCommand::Dev {
            out,
            workloads,
            trust_domain,
            ttl,
            force,
        }) => {
            let made =
                meshguard::dev::certs::write_dev_certs(&meshguard::dev::certs::DevCertsOptions {
                    out_dir: &out,
                    trust_domain: &trust_domain,
                    workloads: &workloads,
                    ttl,
                    ca_ttl: time::Duration::days(365),
                    force,
                })?;
            println!(
                "{} {}",
                if made.ca_reused {
                    "reused CA"
                } else {
                    "created CA"
                },
                made.ca_cert.display()
            );
            for w in &made.workloads {
                println!(
                    "{}\n  cert   {}\n  key    {}\n  bundle {}",
                    w.id,
                    w.cert.display(),
                    w.key.display(),
                    w.bundle.display()
                );
            }
            Ok(())
        }
        Command::Demo { certs, base_port } => {
            if base_port > u16::MAX - 110 {
                bail!("--base-port must leave room for 110 ports above it");
            }
            runtime(1)?.block_on(meshguard::dev::demo::run_demo(
                &certs,
                meshguard::dev::demo::DemoPorts { base: base_port },
            ))
        }
        Command::Policy(_) => unreachable!("handled in main"),
        Command::Inject(args) => Ok(meshguard::kube::inject::run(&args)?),
        Command::InitIptables(args) => Ok(meshguard::kube::iptables::run(&args)?),
        Command::Webhook(args) => runtime(2)?.block_on(async {
            let webhook = meshguard::kube::inject::webhook::Webhook::bind(&args).await?;
            // Tests and scripts read the address (useful with port 0).
            println!(
                "meshguard webhook: listening on https://{}",
                webhook.local_addr()?
            );
            webhook
                .serve(async {
                    shutdown_signal().await;
                })
                .await;
            Ok(())
        }),
        Command::Echo { listen, name } => runtime(1)?.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            println!("echo app {name} on {listen}");
            meshguard::dev::demo::echo_app(listener, name).await;
            Ok(())
        }),
    }
}

/// `meshguard policy ...`: prints the answer; the exit status carries it.
fn policy_command(cmd: PolicyCommand) -> std::process::ExitCode {
    use meshguard::sidecar::policy::{lint, Policy, Request};
    use std::process::ExitCode;
    let bad_input = |msg: String| {
        eprintln!("meshguard: error: {msg}");
        ExitCode::from(2)
    };
    match cmd {
        PolicyCommand::Check {
            policy,
            from,
            port,
            method,
            path,
        } => {
            let policy = match Policy::load(&policy) {
                Ok(p) => p,
                Err(e) => return bad_input(e.to_string()),
            };
            let peer = match from.parse::<SpiffeId>() {
                Ok(id) => id,
                Err(e) => return bad_input(format!("--from {from:?}: {e}")),
            };
            let method = match http::Method::from_bytes(method.as_bytes()) {
                Ok(m) => m,
                Err(_) => return bad_input(format!("--method {method:?} is not an HTTP method")),
            };
            let target = match meshguard::sidecar::pathnorm::normalize_path(&path) {
                Ok(t) => t,
                Err(e) => {
                    return bad_input(format!("--path {path:?}: {e} (the sidecar answers 400)"))
                }
            };
            let decision = policy.evaluate(&Request {
                peer: &peer,
                port,
                method: &method,
                path: target.as_path(),
            });
            let rule = match decision.rule() {
                Some(rule) => format!(
                    "rule {:?} (line {})",
                    rule.name(),
                    rule.line().map_or("?".into(), |l| l.to_string())
                ),
                None => "no rule matched: default deny".to_owned(),
            };
            let verdict = match decision {
                meshguard::sidecar::policy::Decision::Allow { .. } => "allow",
                meshguard::sidecar::policy::Decision::Deny { .. } => "deny",
                meshguard::sidecar::policy::Decision::AuditWouldDeny { .. } => {
                    "deny (audit mode: the request would pass, logged as would-deny)"
                }
            };
            println!(
                "{verdict}: {method} {} from {peer} on port {port}; {rule}",
                target.as_path()
            );
            if matches!(decision, meshguard::sidecar::policy::Decision::Allow { .. }) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        PolicyCommand::Lint {
            policy: path,
            trust_domains,
        } => {
            let policy = match Policy::load(&path) {
                Ok(p) => p,
                Err(e) => return bad_input(e.to_string()),
            };
            let tds: Vec<&str> = trust_domains.iter().map(String::as_str).collect();
            let findings = lint(&policy, &tds);
            for f in &findings {
                println!("{}: {f}", path.display());
            }
            if findings.is_empty() {
                println!(
                    "{}: {} rules, no findings",
                    path.display(),
                    policy.rules().len()
                );
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Runs one sidecar until SIGTERM (drain), Ctrl-C (stop now) or a POST to
/// the shutdown endpoint (drain).
async fn run_sidecar(
    config: Config,
    probes: Option<(SocketAddr, meshguard::kube::inject::probes::AppProbes)>,
    shutdown_listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut extra = tokio::task::JoinSet::new();
    // Bound before the data path: the app's probes hit it as soon as the app starts.
    if let Some((addr, probes)) = probes {
        let listener = meshguard::kube::probe::bind_probe_listener(addr).await?;
        extra.spawn(meshguard::kube::probe::serve_probes(
            listener,
            std::sync::Arc::new(probes),
            stop_rx.clone(),
        ));
    }
    let (trigger, mut requested) = tokio::sync::mpsc::channel(1);
    if let Some(addr) = shutdown_listen {
        let listener = meshguard::sidecar::proxy::bind(addr).await?;
        extra.spawn(meshguard::kube::probe::serve_shutdown(
            listener,
            trigger,
            stop_rx.clone(),
        ));
    } else {
        drop(trigger);
    }
    let running = meshguard::sidecar::app::start(&config).await?;
    let shutdown_requested = async move {
        match requested.recv().await {
            Some(()) => (),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        stop = shutdown_signal() => match stop {
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

/// Builds the single-route config of the ghostunnel-style quick start.
fn config_from_flags(args: &RunArgs) -> anyhow::Result<Config> {
    let (Some(cert), Some(key), Some(bundle)) = (&args.cert, &args.key, &args.bundle) else {
        bail!("give --config FILE, or --cert, --key and --bundle with --inbound/--app and/or --outbound/--peer/--peer-id");
    };
    let inbound = args
        .inbound
        .zip(args.app)
        .map(|(listen, app)| InboundConfig {
            listen,
            app,
            policy: args.policy.clone(),
            strip_headers: Vec::new(),
        });
    let outbound = match (args.outbound, &args.peer, &args.peer_id) {
        (Some(listen), Some(peer), Some(identity)) => Some(OutboundConfig {
            listen: None,
            protocol: Default::default(),
            max_idle_per_peer: None,
            destinations: Vec::new(),
            undeclared: Default::default(),
            routes: vec![RouteConfig {
                host: None,
                listen: Some(listen),
                peer: peer.clone(),
                identity: identity.clone(),
            }],
        }),
        _ => None,
    };
    let config = Config {
        identity: IdentityConfig {
            cert: cert.clone(),
            key: key.clone(),
            bundle: bundle.clone(),
            federated_bundles: Default::default(),
        },
        inbound,
        outbound,
        admin: AdminConfig {
            listen: args
                .admin
                .unwrap_or_else(|| DEFAULT_ADMIN_ADDR.parse().expect("static address")),
        },
        runtime: RuntimeConfig::default(),
        limits: Default::default(),
        shutdown: Default::default(),
    };
    config
        .validate()
        .map_err(|(msg, _)| anyhow::anyhow!("{msg}"))?;
    Ok(config)
}

enum Stop {
    Terminate,
    Interrupt,
}

async fn shutdown_signal() -> Stop {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return Stop::Interrupt;
                }
            };
        tokio::select! {
            _ = ctrl_c => Stop::Interrupt,
            _ = term.recv() => Stop::Terminate,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        Stop::Interrupt
    }
}
