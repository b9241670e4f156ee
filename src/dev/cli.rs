//! The developer commands: `certs dev`, `demo` and `echo`.

use crate::dev::certs::{write_dev_certs, CertsError, DevCertsOptions};
use crate::dev::demo::{run_demo, DemoError, DemoPorts};
use crate::sidecar::app::AppError;
use crate::sidecar::runtime::{self, RuntimeError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Ports the demo uses above `--base-port`.
const DEMO_PORT_SPAN: u16 = 110;

/// Why a developer command failed.
#[derive(Debug, thiserror::Error)]
pub enum DevCliError {
    #[error(transparent)]
    Certs(#[from] CertsError),
    #[error(transparent)]
    Demo(#[from] DemoError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("--base-port must leave room for 110 ports above it")]
    BasePort,
    #[error("the demo's ports {base}..{} are not all free; pass --base-port N for another range", base + DEMO_PORT_SPAN)]
    DemoPorts {
        base: u16,
        #[source]
        source: DemoError,
    },
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Write a dev CA and X509-SVIDs for named workloads.
    Dev(CertsDevArgs),
}

#[derive(Debug, clap::Args)]
pub struct CertsDevArgs {
    /// Output directory.
    #[arg(long, default_value = "certs-dev")]
    out: PathBuf,
    /// A workload as namespace/service-account (repeatable).
    #[arg(long = "workload", required = true)]
    workloads: Vec<String>,
    /// Trust domain of the CA and of every SPIFFE ID
    /// (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/ACCOUNT).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// SVID lifetime, e.g. 30m, 1h, 24h, 7d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    ttl: time::Duration,
    /// Replace an existing dev CA instead of reusing it.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where dev certificates go (reused when present).
    #[arg(long, default_value = "certs-dev")]
    certs: PathBuf,
    /// First of the loopback ports the demo uses (base..base+110).
    #[arg(long, default_value_t = 15000)]
    base_port: u16,
    #[command(flatten)]
    pub log: crate::sidecar::logging::LogArgs,
}

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// Address to serve plain HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Name the app gives in every answer ("app NAME received: ...").
    #[arg(long, default_value = "echo")]
    name: String,
}

/// A positive duration: a number, then `s`, `m`, `h` or `d`.
pub fn parse_duration(s: &str) -> Result<time::Duration, String> {
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

/// `meshguard certs ...`: writes the files and lists them on stdout.
pub fn run_certs(cmd: &CertsCommand) -> Result<(), DevCliError> {
    let CertsCommand::Dev(args) = cmd;
    let made = write_dev_certs(&DevCertsOptions {
        out_dir: &args.out,
        trust_domain: &args.trust_domain,
        workloads: &args.workloads,
        ttl: args.ttl,
        ca_ttl: time::Duration::days(365),
        force: args.force,
    })?;
    let ca = if made.ca_reused {
        "reused CA"
    } else {
        "created CA"
    };
    println!("{ca} {}", made.ca_cert.display());
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

/// `meshguard demo`: runs until Ctrl-C.
pub fn run_demo_command(args: &DemoArgs) -> Result<(), DevCliError> {
    if args.base_port > u16::MAX - DEMO_PORT_SPAN {
        return Err(DevCliError::BasePort);
    }
    let ports = DemoPorts {
        base: args.base_port,
    };
    let base = args.base_port;
    runtime::build(1)?
        .block_on(run_demo(&args.certs, ports))
        .map_err(|e| match e {
            DemoError::Bind(_) | DemoError::Start(AppError::Bind(_)) => {
                DevCliError::DemoPorts { base, source: e }
            }
            e => e.into(),
        })
}

/// `meshguard echo`: serves forever.
pub fn run_echo(args: &EchoArgs) -> Result<(), DevCliError> {
    let (addr, name) = (args.listen, args.name.clone());
    runtime::build(1)?.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DevCliError::Listen { addr, source })?;
        println!("echo app {name} on {addr}");
        crate::dev::echo::echo_app(listener, name).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_need_a_positive_number_and_a_unit() {
        assert_eq!(parse_duration("90m"), Ok(time::Duration::minutes(90)));
        assert_eq!(parse_duration("7d"), Ok(time::Duration::days(7)));
        assert!(parse_duration("0h")
            .unwrap_err()
            .contains("must be positive"));
        assert!(parse_duration("5w").unwrap_err().contains("unit must be"));
        assert!(parse_duration("h")
            .unwrap_err()
            .contains("expected a number"));
    }
}
