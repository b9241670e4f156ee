//! `outbound.egress`: the destinations outside the mesh an app may reach,
//! by host name, and the address guard's exceptions; the rules serde
//! cannot check for them.

use super::Config;
use crate::sidecar::net::Cidr;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Declared external destinations and the address guard's settings.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// External destinations by host name; anything else stays refused.
    #[serde(default)]
    pub destinations: Vec<EgressDestination>,
    /// Internal ranges egress (and `undeclared: passthrough`) may reach in
    /// spite of the address guard. A range covering a cloud metadata
    /// address is refused: name that address alone if it must be reached.
    #[serde(default)]
    pub allow_cidrs: Vec<Cidr>,
    /// The pod's own addresses (refused like loopback). Under capture the
    /// address the app's connection comes from is refused as well.
    #[serde(default)]
    pub own_addresses: Vec<IpAddr>,
    /// The DNS server names are resolved with (`ip:port`, UDP then TCP);
    /// default: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    #[serde(default)]
    pub resolver: Option<SocketAddr>,
    /// A listener for TLS from apps that are not captured: the
    /// ClientHello's SNI picks the destination (on its first port).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
}

/// One external destination.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressDestination {
    /// `api.payments.example`, or `*.payments.example` for any name below
    /// it (not the name itself).
    pub host: String,
    /// `tls`: the app does its own TLS, matched by SNI, bytes passed
    /// through. `originate`: the app speaks plain HTTP, meshguard opens TLS.
    pub mode: EgressMode,
    /// `tls` mode: the ports the app may connect to (default 443).
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    /// `originate` mode: the TLS port meshguard connects to (default 443).
    #[serde(default)]
    pub port: Option<u16>,
    /// `originate` mode: PEM CA bundle the server is verified against
    /// (default: the system's roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    Tls,
    Originate,
}

/// The default TLS port.
pub const HTTPS_PORT: u16 = 443;

impl EgressDestination {
    /// The ports a `tls` destination accepts.
    pub fn tls_ports(&self) -> &[u16] {
        self.ports.as_deref().unwrap_or(&[HTTPS_PORT])
    }

    /// The port an `originate` destination is reached on.
    pub fn upstream_port(&self) -> u16 {
        self.port.unwrap_or(HTTPS_PORT)
    }
}

type Invalid = (String, Option<String>);

pub(super) fn resolve_paths(egress: &mut EgressConfig, base: &Path) {
    for d in &mut egress.destinations {
        if let Some(ca) = &mut d.ca {
            if ca.is_relative() {
                *ca = base.join(&*ca);
            }
        }
    }
}

/// Host patterns are names (or `*.` and a name), declared once per mode;
/// mode-specific keys only with their mode; allowed ranges never open a
/// metadata address by accident.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    let Some(egress) = config.outbound.as_ref().map(|o| &o.egress) else {
        return Ok(());
    };
    let mut seen = HashSet::new();
    for (i, d) in egress.destinations.iter().enumerate() {
        let at = |m: String| {
            Err((
                format!("outbound.egress.destinations[{i}]: {m}"),
                Some(d.host.clone()),
            ))
        };
        let name = d.host.strip_prefix("*.").unwrap_or(&d.host);
        let valid = crate::sidecar::egress::sni::valid_host(name.as_bytes());
        if valid.as_deref() != Some(name) || name.ends_with('.') {
            return at(format!(
                "host {:?} must be a lowercase DNS name or *.name (no IP address, no port)",
                d.host
            ));
        }
        if !name.contains('.') && d.host.starts_with("*.") {
            return at(format!("{:?} would match a whole top-level domain", d.host));
        }
        if !seen.insert((d.host.as_str(), d.mode)) {
            return at(format!("host {:?} is declared twice for this mode", d.host));
        }
        match d.mode {
            EgressMode::Tls => {
                if d.port.is_some() || d.ca.is_some() {
                    return at(
                        "`port` and `ca` belong to mode originate; tls takes `ports`".into(),
                    );
                }
                if d.tls_ports().is_empty() || d.tls_ports().contains(&0) {
                    return at("ports must be real ports (1-65535), at least one".into());
                }
            }
            EgressMode::Originate => {
                if d.ports.is_some() {
                    return at("`ports` belongs to mode tls; originate takes `port`".into());
                }
                if d.port == Some(0) {
                    return at("port 0 is not a port".into());
                }
                if d.host.starts_with("*.") {
                    return at(
                        "originate needs one host name (it is the SNI and the certificate name)"
                            .into(),
                    );
                }
            }
        }
    }
    for cidr in &egress.allow_cidrs {
        if let Some(m) = crate::sidecar::egress::guard::metadata_inside(cidr) {
            return Err((
                format!(
                    "outbound.egress.allow_cidrs: {cidr} covers the cloud metadata address {m}; \
                     list that address alone if it must be reached"
                ),
                Some("allow_cidrs".into()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
