//! The opaque TCP parts of the configuration: `inbound.tcp_ports`,
//! `outbound.tcp_routes` and `outbound.destinations[].protocol`, and the
//! rules serde cannot check for them.

use super::Config;
use crate::sidecar::identity::SpiffeId;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::SocketAddr;

/// What a captured destination speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationProtocol {
    /// HTTP, routed and forwarded request by request.
    #[default]
    Http,
    /// Opaque TCP: the connection is carried whole over mTLS.
    Tcp,
}

/// One opaque TCP route: everything sent to `listen` goes, over mTLS, to
/// app port `port` behind the peer sidecar at `peer`, which must prove
/// `identity`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteConfig {
    /// The local listener the app connects to.
    pub listen: SocketAddr,
    /// The peer sidecar's inbound address, `host:port`.
    pub peer: String,
    /// The SPIFFE ID the peer must prove.
    pub identity: SpiffeId,
    /// The app port at the peer (one of its `inbound.tcp_ports`).
    pub port: u16,
}

type Invalid = (String, Option<String>);

/// `inbound.tcp_ports`: real ports, each once; `outbound.tcp_routes`: a
/// peer `host:port`, a workload identity, a real app port.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    if let Some(inbound) = &config.inbound {
        let mut seen = HashSet::new();
        for &port in &inbound.tcp_ports {
            let at = |rule: &str| {
                Err((
                    format!("inbound.tcp_ports: {rule}"),
                    Some("tcp_ports".into()),
                ))
            };
            if port == 0 {
                return at("port 0 is not a port");
            }
            if !seen.insert(port) {
                return at(&format!("port {port} is listed twice"));
            }
        }
    }
    let Some(outbound) = &config.outbound else {
        return Ok(());
    };
    for (i, route) in outbound.tcp_routes.iter().enumerate() {
        let at = |m: String| {
            Err((
                format!("outbound.tcp_routes[{i}]: {m}"),
                Some(route.peer.clone()),
            ))
        };
        if route.port == 0 {
            return at("port 0 is not a port".into());
        }
        if route.identity.is_root() {
            return at(format!(
                "identity {} names a trust domain, not a workload",
                route.identity
            ));
        }
        match route.peer.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {}
            _ => return at(format!("peer {:?} must be host:port", route.peer)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
