//! The declared destinations, as matched: a TLS connection by its SNI and
//! port, a plain HTTP request by its Host; and the pure decision about the
//! address a connection may go to once the name is resolved.

use super::guard::{Blocked, Guard};
use crate::sidecar::config::{EgressConfig, EgressMode};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The label of a destination nobody declared.
pub const OTHER: &str = "other";

/// One declared destination, ready to match.
#[derive(Debug, Clone)]
pub struct Entry {
    /// As declared: `api.example` or `*.example` (the metric label).
    pub pattern: Arc<str>,
    pub mode: EgressMode,
    /// `tls`: the ports the app may dial; `originate`: the one port
    /// meshguard dials.
    pub ports: Vec<u16>,
    /// Position in `outbound.egress.destinations`.
    pub index: usize,
}

impl Entry {
    fn matches(&self, name: &str) -> bool {
        match self.pattern.strip_prefix('*') {
            // `*.example` matches `a.example` and `a.b.example`, not `example`.
            Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
            None => *self.pattern == *name,
        }
    }

    /// The port meshguard connects to for an originated request.
    pub fn upstream_port(&self) -> u16 {
        self.ports.first().copied().unwrap_or(443)
    }
}

/// Every declared destination.
#[derive(Debug, Clone, Default)]
pub struct Table {
    entries: Vec<Entry>,
}

impl Table {
    pub fn new(cfg: &EgressConfig) -> Table {
        let entries = cfg
            .destinations
            .iter()
            .enumerate()
            .map(|(index, d)| Entry {
                pattern: Arc::from(d.host.as_str()),
                mode: d.mode,
                ports: match d.mode {
                    EgressMode::Tls => d.tls_ports().to_vec(),
                    EgressMode::Originate => vec![d.upstream_port()],
                },
                index,
            })
            .collect();
        Table { entries }
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The destination of `mode` for `name` (lowercase, no trailing dot):
    /// an exact name first, then the longest matching `*.suffix`.
    pub fn find(&self, mode: EgressMode, name: &str) -> Option<&Entry> {
        let of_mode = || self.entries.iter().filter(move |e| e.mode == mode);
        of_mode()
            .find(|e| !e.pattern.starts_with('*') && e.matches(name))
            .or_else(|| {
                of_mode()
                    .filter(|e| e.matches(name))
                    .max_by_key(|e| e.pattern.len())
            })
    }

    /// The destination of a TLS connection: its SNI, on one of its ports
    /// (`None` accepts the first port: the egress listener's case).
    pub fn tls(&self, name: &str, port: Option<u16>) -> Result<&Entry, Refused> {
        let entry = self
            .find(EgressMode::Tls, name)
            .ok_or(Refused::Undeclared)?;
        match port {
            Some(p) if !entry.ports.contains(&p) => Err(Refused::Port(p)),
            _ => Ok(entry),
        }
    }

    /// The bounded metric label of a name: its declared pattern, or `other`.
    pub fn label(&self, name: Option<&str>) -> &str {
        name.and_then(|n| {
            self.entries
                .iter()
                .find(|e| e.matches(n))
                .map(|e| &*e.pattern)
        })
        .unwrap_or(OTHER)
    }
}

/// The host name of a request's authority (`Host` or the target's):
/// lowercased, without port or trailing dot; `None` for an IP literal or
/// anything that is not a DNS name.
pub fn host_of(authority: &str) -> Option<String> {
    if authority.starts_with('[') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        Some(_) => return None,
        None => authority,
    };
    super::sni::valid_host(host.as_bytes())
}

/// Why a connection or request to the outside is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No destination declares this name (or no name was given).
    Undeclared,
    /// Declared, but not on this port.
    Port(u16),
    /// The name did not resolve (or to nothing usable).
    Unresolved(String),
    /// Captured: the address the app dialled is not one the name resolves to.
    Mismatch { name: String, dst: SocketAddr },
    /// The address is one the guard refuses.
    Blocked(Blocked, IpAddr),
    /// The ClientHello could not be read.
    Sni(super::sni::SniError),
    /// Upgrades (WebSocket, ...) are not originated.
    Upgrade,
}

impl Refused {
    /// A bounded label for metrics and the audit line.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Undeclared => "undeclared",
            Refused::Port(_) => "undeclared_port",
            Refused::Unresolved(_) => "unresolved",
            Refused::Mismatch { .. } => "address_mismatch",
            Refused::Blocked(why, _) => why.label(),
            Refused::Sni(e) => e.label(),
            Refused::Upgrade => "upgrade",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Undeclared => f.write_str("not declared in outbound.egress"),
            Refused::Port(p) => write!(f, "declared, but not on port {p}"),
            Refused::Unresolved(e) => write!(f, "does not resolve: {e}"),
            Refused::Mismatch { name, dst } => {
                write!(f, "{dst} is not an address {name} resolves to")
            }
            Refused::Blocked(why, ip) => write!(f, "{ip} is {why}"),
            Refused::Sni(e) => write!(f, "{e}"),
            Refused::Upgrade => f.write_str("protocol upgrades are not originated"),
        }
    }
}

/// Where a connection to `name` may go, decided once on one resolution:
/// under capture (`dialled`), only the address the app dialled, and only
/// if the name resolves to it; otherwise the resolved addresses, in order,
/// on `port`. Every address returned passed the guard; nothing else may
/// be connected to.
pub fn targets(
    name: &str,
    resolved: &[IpAddr],
    dialled: Option<SocketAddr>,
    port: u16,
    guard: &Guard,
    app: Option<IpAddr>,
) -> Result<Vec<SocketAddr>, Refused> {
    if resolved.is_empty() {
        return Err(Refused::Unresolved("no address".into()));
    }
    if let Some(dst) = dialled {
        let ip = dst.ip().to_canonical();
        if !resolved.iter().any(|r| r.to_canonical() == ip) {
            return Err(Refused::Mismatch {
                name: name.to_owned(),
                dst,
            });
        }
        guard
            .check(ip, app)
            .map_err(|why| Refused::Blocked(why, ip))?;
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut first_refusal = None;
    let mut out = Vec::with_capacity(resolved.len());
    for &ip in resolved {
        match guard.check(ip, app) {
            Ok(()) => out.push(SocketAddr::new(ip.to_canonical(), port)),
            Err(why) => {
                first_refusal.get_or_insert(Refused::Blocked(why, ip));
            }
        }
    }
    match (out.is_empty(), first_refusal) {
        (true, Some(refused)) => Err(refused),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests;
