//! The `meshguard init-iptables` command line.

use super::exec::{apply, ipv6_enabled, system_runner};
use super::rules::{plan, Family, NatState};
use super::{CaptureConfig, Cidr, IptablesError, PortRange};
use crate::kube::contract::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROBE_PORT, PROXY_UID};
use std::io::Write;
use std::path::Path;

/// Set up traffic capture in this network namespace (run by the pod's init
/// container, as root with NET_ADMIN and NET_RAW).
#[derive(Debug, Clone, clap::Args)]
pub struct InitIptablesArgs {
    /// Port of the sidecar's inbound (mTLS) listener.
    #[arg(long, default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,
    /// Port of the sidecar's outbound listener.
    #[arg(long, default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Admin port; never captured, so kubelet can probe the sidecar.
    #[arg(long, default_value_t = ADMIN_PORT)]
    pub admin_port: u16,
    /// Probe-forwarding port; never captured.
    #[arg(long, default_value_t = PROBE_PORT)]
    pub probe_port: u16,
    /// UID the sidecar runs as; its traffic is not captured.
    #[arg(long, default_value_t = PROXY_UID)]
    pub proxy_uid: u32,
    /// Inbound ports that bypass the sidecar, e.g. `9090,9100-9110`.
    #[arg(long, default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound destination ports that bypass the sidecar.
    #[arg(long, default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound destinations (IPv4 or IPv6 CIDRs) that bypass the sidecar.
    #[arg(long, default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// Print the commands for a fresh namespace, both families, and exit.
    #[arg(long)]
    pub dry_run: bool,
}

impl InitIptablesArgs {
    pub fn capture_config(&self) -> Result<CaptureConfig, IptablesError> {
        let config = CaptureConfig {
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            admin_port: self.admin_port,
            probe_port: self.probe_port,
            proxy_uid: self.proxy_uid,
            exclude_inbound_ports: PortRange::parse_list(&self.exclude_inbound_ports)?,
            exclude_outbound_ports: PortRange::parse_list(&self.exclude_outbound_ports)?,
            exclude_outbound_cidrs: Cidr::parse_list(&self.exclude_outbound_cidrs)?,
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs the command: prints the plan, or applies it for IPv4 and (when the
/// namespace has IPv6) IPv6.
pub fn run(args: &InitIptablesArgs) -> Result<(), IptablesError> {
    let config = args.capture_config()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.dry_run {
        for family in [Family::V4, Family::V6] {
            for command in plan(&config, family, &NatState::fresh()) {
                let _ = writeln!(out, "{command}");
            }
        }
        return Ok(());
    }
    let mut families = vec![Family::V4];
    if ipv6_enabled(Path::new("/proc/net")) {
        families.push(Family::V6);
    } else {
        // Not a bypass: with IPv6 off no IPv6 socket can exist. Say it, so
        // the decision is visible in the init container's log.
        let _ = writeln!(
            out,
            "# IPv6 is disabled in this network namespace; configuring IPv4 only"
        );
    }
    let ran = apply(&config, &families, system_runner, &mut out)?;
    let _ = writeln!(out, "# traffic capture configured ({} commands)", ran.len());
    Ok(())
}
