//! The `meshguard` command line: parses the arguments and hands each
//! subcommand to the module that owns it. anyhow lives only here, to print
//! a library error with its causes.

use clap::{Parser, Subcommand};
use meshguard::dev::cli::{CertsCommand, DemoArgs, EchoArgs};
use meshguard::kube::inject::webhook::WebhookArgs;
use meshguard::kube::inject::InjectArgs;
use meshguard::kube::iptables::InitIptablesArgs;
use meshguard::kube::run::RunArgs;
use meshguard::sidecar::logging::{self, LogFormat};
use meshguard::sidecar::policy::cli::PolicyCommand;
use std::process::ExitCode;

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

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar, from a config file or (single route) from flags.
    Run(RunArgs),
    /// Certificate tools.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Two workloads with their sidecars on loopback, talking mTLS.
    Demo(DemoArgs),
    /// Policy tools: explain a decision, find rules that can never match.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A tiny HTTP app that echoes what it receives (for demos and tests).
    Echo(EchoArgs),
    /// Add the sidecar to Kubernetes manifests (files or stdin) and print them.
    Inject(InjectArgs),
    /// Set up traffic capture with iptables/ip6tables (the pod's init container).
    InitIptables(InitIptablesArgs),
    /// Inject the sidecar at admission: an HTTPS mutating admission webhook.
    Webhook(WebhookArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format) {
        report(e.into());
        return ExitCode::from(2);
    }
    let result: anyhow::Result<()> = match &cli.command {
        // The policy tools' exit status is their answer (0/1/2).
        Command::Policy(cmd) => return ExitCode::from(meshguard::sidecar::policy::cli::run(cmd)),
        Command::Run(args) => meshguard::kube::run::run(args).map_err(Into::into),
        Command::Certs(cmd) => meshguard::dev::cli::run_certs(cmd).map_err(Into::into),
        Command::Demo(args) => meshguard::dev::cli::run_demo_command(args).map_err(Into::into),
        Command::Echo(args) => meshguard::dev::cli::run_echo(args).map_err(Into::into),
        Command::Inject(args) => meshguard::kube::inject::run(args).map_err(Into::into),
        Command::InitIptables(args) => meshguard::kube::iptables::run(args).map_err(Into::into),
        Command::Webhook(args) => meshguard::kube::inject::webhook::run(args).map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(e);
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr: the error and its causes.
fn report(e: anyhow::Error) {
    eprintln!("meshguard: error: {e:#}");
}
