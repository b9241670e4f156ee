//! The `meshguard` command line: parses the arguments and hands each
//! subcommand to the module that owns it. anyhow lives only here, to print
//! a library error with its causes.

use clap::{Parser, Subcommand};
use meshguard::dev::cli::{CertsCommand, DemoArgs, EchoArgs};
use meshguard::kube::inject::webhook::WebhookArgs;
use meshguard::kube::inject::InjectArgs;
use meshguard::kube::iptables::InitIptablesArgs;
use meshguard::kube::run::RunArgs;
use meshguard::sidecar::egress::cli::EgressCommand;
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
    // Not `global`: the commands that log (run, demo, webhook) take it
    // after their name too (LogArgs), the others' help does not offer it.
    /// Log format: human-readable text for local runs, JSON for containers
    /// (also accepted after `run`, `demo` and `webhook`).
    #[arg(long, env = "MESHGUARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
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
    /// Egress tools: explain what happens to a destination outside the mesh.
    #[command(subcommand)]
    Egress(EgressCommand),
    /// A tiny HTTP app that echoes what it receives (for demos and tests).
    Echo(EchoArgs),
    /// Add the sidecar to Kubernetes manifests (files or stdin) and print them.
    #[command(after_help = "Documents that do not change are copied byte for byte. \
        A document that changes is written anew: the comments above it are kept, \
        comments inside it are not (stderr says so when that happens).")]
    Inject(InjectArgs),
    /// Set up traffic capture with iptables/ip6tables (the pod's init container).
    InitIptables(InitIptablesArgs),
    /// Inject the sidecar at admission: an HTTPS mutating admission webhook.
    Webhook(WebhookArgs),
}

impl Cli {
    /// `--log-format` after the subcommand wins over the one before it
    /// (and over `MESHGUARD_LOG_FORMAT`).
    fn log_format(&self) -> LogFormat {
        let after = match &self.command {
            Command::Run(args) => args.log.format,
            Command::Demo(args) => args.log.format,
            Command::Webhook(args) => args.log.format,
            _ => None,
        };
        after.unwrap_or(self.log_format)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format()) {
        report(e.into());
        return ExitCode::from(2);
    }
    let result: anyhow::Result<()> = match &cli.command {
        // The policy tools' exit status is their answer (0/1/2).
        Command::Policy(cmd) => return ExitCode::from(meshguard::sidecar::policy::cli::run(cmd)),
        Command::Egress(cmd) => return ExitCode::from(meshguard::sidecar::egress::cli::run(cmd)),
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
    eprintln!("meshguard: error: {}", with_causes(&e));
}

/// The error, then each cause whose text is not already in the line.
/// Many error types both print their cause (`"{path}: {source}"`) and
/// return it from `source()`; printing the whole chain (`{:#}`) would name
/// that cause twice.
fn with_causes(e: &anyhow::Error) -> String {
    let mut chain = e.chain();
    let mut line = chain.next().map(ToString::to_string).unwrap_or_default();
    for cause in chain {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::with_causes;

    #[derive(Debug, thiserror::Error)]
    #[error("{file}: {source}")]
    struct Repeats {
        file: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("loading the config")]
    struct Silent(#[source] std::io::Error);

    #[test]
    fn a_cause_is_named_once_whether_or_not_the_message_has_it() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io().to_string();
        let e = anyhow::Error::new(Repeats {
            file: "a.yaml",
            source: io(),
        });
        assert_eq!(with_causes(&e), format!("a.yaml: {text}"));
        let e = anyhow::Error::new(Silent(io()));
        assert_eq!(with_causes(&e), format!("loading the config: {text}"));
    }
}
