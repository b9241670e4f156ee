//! Traffic capture: what `meshguard init-iptables` does inside a pod's
//! network namespace before the app starts.
//!
//! The rule set is built by a pure function ([`plan`]) so that it can be
//! reviewed, printed (`--dry-run`) and tested without root; [`apply`] runs
//! it with `iptables`/`ip6tables` and stops at the first failure.
//!
//! Both address families are always captured. A namespace with IPv6 enabled
//! but no working `ip6tables` is an error, never a silent bypass: an app
//! could otherwise reach any IPv6 destination around the proxy.

mod cli;
mod exec;
mod rules;

pub use cli::{run, InitIptablesArgs};
pub use exec::{apply, ipv6_enabled, system_runner, RunOutcome};
pub use rules::{plan, Family, IptablesCommand, NatState};

// Address blocks are runtime vocabulary too (the sidecar's transparent
// destinations); the runtime owns them and capture reuses them.
pub use crate::sidecar::net::{Cidr, CidrError};

use crate::kube::contract::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT, PROBE_PORT, PROXY_UID};
use std::fmt;
use std::str::FromStr;

/// Names of our own chains in the `nat` table. Own chains make a re-run a
/// flush of exactly our rules, leaving anything else in the table alone.
pub const CHAIN_INBOUND: &str = "MESHGUARD_INBOUND";
pub const CHAIN_IN_REDIRECT: &str = "MESHGUARD_IN_REDIRECT";
pub const CHAIN_OUTBOUND: &str = "MESHGUARD_OUTBOUND";
pub const CHAIN_REDIRECT: &str = "MESHGUARD_REDIRECT";

/// Why capture could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{value:?} is not a port or port range (N or N-M, 1-65535): {reason}")]
    InvalidPort { value: String, reason: String },
    #[error(transparent)]
    InvalidCidr(#[from] CidrError),
    #[error("invalid capture settings: {0}")]
    Conflict(String),
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error(
        "IPv6 is enabled in this network namespace but ip6tables is not available ({reason}); \
         refusing to leave IPv6 traffic uncaptured"
    )]
    Ip6tablesMissing { reason: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// A TCP port or an inclusive range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// The `--dport` argument: `N` or `N:M`.
    pub fn iptables_arg(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }

    /// Parses a comma-separated list such as `8081, 9000-9100`. An empty
    /// string is an empty list; an empty item (`8080,,9090`) is an error
    /// because it usually hides a typo.
    pub fn parse_list(s: &str) -> Result<Vec<PortRange>, IptablesError> {
        if s.trim().is_empty() {
            return Ok(Vec::new());
        }
        s.split(',').map(|item| item.trim().parse()).collect()
    }
}

impl FromStr for PortRange {
    type Err = IptablesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| IptablesError::InvalidPort {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let port = |p: &str| -> Result<u16, IptablesError> {
            // u16::from_str accepts a leading '+'; a port list should not.
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("not a number"));
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad("out of range")),
                Ok(n) => Ok(n),
            }
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                (p, p)
            }
        };
        if first > last {
            return Err(bad("range is reversed"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Everything the rules depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Always excluded from inbound capture, so kubelet can probe the
    /// sidecar itself whatever the policy.
    pub admin_port: u16,
    /// Always excluded from inbound capture, for the rewritten app probes.
    pub probe_port: u16,
    pub proxy_uid: u32,
    pub exclude_inbound_ports: Vec<PortRange>,
    pub exclude_outbound_ports: Vec<PortRange>,
    pub exclude_outbound_cidrs: Vec<Cidr>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            inbound_port: INBOUND_PORT,
            outbound_port: OUTBOUND_PORT,
            admin_port: ADMIN_PORT,
            probe_port: PROBE_PORT,
            proxy_uid: PROXY_UID,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            exclude_outbound_cidrs: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// Refuses settings that would capture nothing useful or bypass the
    /// proxy for more than intended.
    pub fn validate(&self) -> Result<(), IptablesError> {
        let conflict = |m: String| Err(IptablesError::Conflict(m));
        let named = [
            ("inbound", self.inbound_port),
            ("outbound", self.outbound_port),
            ("admin", self.admin_port),
            ("probe", self.probe_port),
        ];
        for (i, (a, pa)) in named.iter().enumerate() {
            if *pa == 0 {
                return conflict(format!("{a} port must not be 0"));
            }
            for (b, pb) in &named[i + 1..] {
                if pa == pb {
                    return conflict(format!("{a} and {b} ports are both {pa}"));
                }
            }
        }
        if self.proxy_uid == 0 {
            // Every root process in the pod would bypass capture.
            return conflict("proxy UID must not be 0 (root)".into());
        }
        for r in &self.exclude_inbound_ports {
            if r.contains(self.inbound_port) {
                return conflict(format!(
                    "excluded inbound ports {r} contain the inbound port {}",
                    self.inbound_port
                ));
            }
            // The outbound listener usually binds [::] to serve both
            // families' REDIRECT targets; excluding its port from inbound
            // capture would expose it to the network as an open relay.
            if r.contains(self.outbound_port) {
                return conflict(format!(
                    "excluded inbound ports {r} contain the outbound port {}: it would be reachable from the network",
                    self.outbound_port
                ));
            }
        }
        for r in &self.exclude_outbound_ports {
            if r.contains(self.outbound_port) {
                return conflict(format!(
                    "excluded outbound ports {r} contain the outbound port {}",
                    self.outbound_port
                ));
            }
        }
        for c in &self.exclude_outbound_cidrs {
            if c.prefix == 0 {
                // 0.0.0.0/0 or ::/0 turns the outbound side off for a whole
                // family; that must be a visible decision, not a CIDR.
                return conflict(format!(
                    "excluded CIDR {c} covers every address of its family"
                ));
            }
        }
        Ok(())
    }

    /// Inbound ports that bypass the proxy, admin and probe ports first,
    /// without duplicates, in a stable order.
    pub fn inbound_exclusions(&self) -> Vec<PortRange> {
        let mut out = vec![
            PortRange::single(self.admin_port),
            PortRange::single(self.probe_port),
        ];
        for r in &self.exclude_inbound_ports {
            if !out.contains(r) {
                out.push(*r);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
