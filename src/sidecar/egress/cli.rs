//! `meshguard egress check`: decides one egress destination as the
//! sidecar would, from its config file, and says why. Like `policy check`
//! the answer is the exit status: 0 = allow, 1 = deny, 2 = bad input.

use super::guard::{self, Guard};
use super::resolve::Resolver;
use super::table::{self, Refused, Table};
use crate::sidecar::config::{Config, EgressMode};
use crate::sidecar::policy::cli::{EXIT_BAD_INPUT, EXIT_NO, EXIT_OK};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum EgressCommand {
    /// Decide one destination as the sidecar would (resolving the name
    /// with its resolver). Exit 0 = allow, 1 = deny, 2 = bad input.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The sidecar's config file (its `outbound.egress`).
    #[arg(long)]
    config: PathBuf,
    /// The name the app asks for (SNI, or Host), or an IP address to see
    /// what the address guard says about it (as for `undeclared: passthrough`).
    #[arg(long)]
    host: String,
    /// The port the app dials (TLS: one of the destination's `ports`).
    #[arg(long, default_value_t = 443)]
    port: u16,
    /// Under capture: the address the app dialled (it must be one the
    /// name resolves to).
    #[arg(long)]
    dialled: Option<IpAddr>,
}

/// Runs the command; returns the exit status.
pub fn run(cmd: &EgressCommand) -> u8 {
    let EgressCommand::Check(args) = cmd;
    match check(args) {
        Ok((allowed, text)) => {
            println!("{text}");
            if allowed {
                EXIT_OK
            } else {
                EXIT_NO
            }
        }
        Err(msg) => {
            eprintln!("meshguard: error: {msg}");
            EXIT_BAD_INPUT
        }
    }
}

/// `Ok((allowed, explanation))`; `Err` is a bad-input message.
fn check(args: &CheckArgs) -> Result<(bool, String), String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let egress = config.outbound.map(|o| o.egress).unwrap_or_default();
    let guard = Guard::new(egress.allow_cidrs.clone(), egress.own_addresses.clone());
    if let Ok(ip) = args.host.parse::<IpAddr>() {
        return Ok(address(&guard, ip));
    }
    let Some(name) = table::host_of(&args.host) else {
        return Err(format!(
            "--host {:?} is not a DNS name or an IP address",
            args.host
        ));
    };
    let table = Table::new(&egress);
    let port = args.port;
    let dialled = args.dialled.map(|ip| SocketAddr::new(ip, port));
    let (entry, mode) = match table.tls(&name, Some(port)) {
        Ok(entry) => (entry, "tls"),
        Err(tls_refusal) => match table.find(EgressMode::Originate, &name) {
            Some(entry) => (entry, "originate"),
            None => return Ok((false, format!("deny: {name}:{port}: {tls_refusal}"))),
        },
    };
    let declared = format!(
        "declared by outbound.egress.destinations[{}] ({:?}, mode {mode})",
        entry.index, &*entry.pattern
    );
    let upstream = if mode == "tls" {
        port
    } else {
        entry.upstream_port()
    };
    let resolver = Resolver::new(egress.resolver).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let resolved = match runtime.block_on(resolver.lookup(&name)) {
        Ok(found) => found,
        Err(e) => {
            return Ok((
                false,
                format!(
                    "deny: {name}:{port}: {declared}; {}",
                    Refused::Unresolved(e)
                ),
            ))
        }
    };
    let shown: Vec<String> = resolved.iter().map(ToString::to_string).collect();
    let resolves = format!("resolves to {}", shown.join(", "));
    Ok(
        match table::targets(&name, &resolved, dialled, upstream, &guard, None) {
            Ok(targets) => {
                let to: Vec<String> = targets.iter().map(ToString::to_string).collect();
                let how = if mode == "tls" {
                    "passes TLS through to"
                } else {
                    "originates TLS to"
                };
                (
                    true,
                    format!(
                        "allow: {name}:{port}: {declared}; {resolves}; {how} {}",
                        to.join(" or ")
                    ),
                )
            }
            Err(refused) => (
                false,
                format!("deny: {name}:{port}: {declared}; {resolves}; {refused}"),
            ),
        },
    )
}

/// What the guard says about one address.
fn address(guard: &Guard, ip: IpAddr) -> (bool, String) {
    let eff = guard::effective(ip);
    let form = if eff != ip {
        format!(" (carries {eff})")
    } else {
        String::new()
    };
    match guard.check(ip, None) {
        Ok(()) => match guard.allowed_by(ip) {
            Some(cidr) => (
                true,
                format!("allow: {ip}{form}: inside allow_cidrs {cidr}"),
            ),
            None => (true, format!("allow: {ip}{form}: not an internal address")),
        },
        Err(why) => (
            false,
            format!("deny: {ip}{form} is {why} (not in allow_cidrs)"),
        ),
    }
}
