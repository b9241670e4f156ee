//! Transparent outbound: connections the pod's iptables rules redirected
//! to the outbound listener. The original destination (`SO_ORIGINAL_DST`)
//! decides: a declared destination is reached over mTLS, requiring the
//! SPIFFE ID declared for it; an undeclared one is refused (egress
//! allowlist) unless `passthrough` was chosen explicitly.

use crate::sidecar::config::{DestinationConfig, DestinationProtocol, RouteConfig, Undeclared};
use crate::sidecar::identity::SpiffeId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpStream;

/// Where the connections of the app go: served as HTTP and routed, or,
/// captured to an undeclared destination under `passthrough`, copied as TCP.
/// Generic over the route (outbound's pooled mTLS route), so this table
/// stays pure and knows nothing of connections.
pub enum Destination<R> {
    Http(Routing<R>),
    /// Captured, destination not declared, policy `passthrough`.
    Passthrough(SocketAddr),
    /// Captured, declared `protocol: tcp`: opaque TCP over mTLS to this
    /// destination, whose server must prove this identity.
    Tcp(SocketAddr, SpiffeId),
}

/// How the HTTP requests of one app connection find their route.
pub enum Routing<R> {
    /// Not captured (the app dialled the listener itself): route by Host.
    ByHost,
    /// A declared route.
    Route(Arc<R>),
    /// Captured, destination not declared, policy `deny`: only a declared
    /// Host route may still apply.
    Undeclared(SocketAddr),
}

// Not derived: a derive would require `R: Clone`, and only the Arc is cloned.
impl<R> Clone for Routing<R> {
    fn clone(&self) -> Self {
        match self {
            Routing::ByHost => Routing::ByHost,
            Routing::Route(route) => Routing::Route(route.clone()),
            Routing::Undeclared(dst) => Routing::Undeclared(*dst),
        }
    }
}

/// The destination table and a route (with its pool) per destination met.
pub struct Destinations<R> {
    rules: Vec<DestinationConfig>,
    undeclared: Undeclared,
    routes: Mutex<HashMap<SocketAddr, Arc<R>>>,
}

impl<R> Destinations<R> {
    pub fn new(rules: Vec<DestinationConfig>, undeclared: Undeclared) -> Destinations<R> {
        Destinations {
            rules,
            undeclared,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The identity declared for `dst` (first matching rule).
    pub fn identity_for(&self, dst: SocketAddr) -> Option<&SpiffeId> {
        self.rule_for(dst).map(|r| &r.identity)
    }

    /// The first rule that matches `dst`.
    fn rule_for(&self, dst: SocketAddr) -> Option<&DestinationConfig> {
        self.rules.iter().find(|r| {
            r.cidr.contains(dst.ip()) && r.ports.as_ref().is_none_or(|p| p.contains(&dst.port()))
        })
    }

    /// What to do with a connection whose original destination is `dst`.
    /// `make_route` builds the pooled mTLS route the first time a declared
    /// destination is met.
    pub fn resolve(
        &self,
        dst: SocketAddr,
        make_route: impl FnOnce(&RouteConfig) -> Option<Arc<R>>,
    ) -> Destination<R> {
        let Some(rule) = self.rule_for(dst) else {
            return match self.undeclared {
                Undeclared::Deny => Destination::Http(Routing::Undeclared(dst)),
                Undeclared::Passthrough => Destination::Passthrough(dst),
            };
        };
        let identity = &rule.identity;
        if rule.protocol == DestinationProtocol::Tcp {
            return Destination::Tcp(dst, identity.clone());
        }
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(route) = routes.get(&dst) {
            return Destination::Http(Routing::Route(route.clone()));
        }
        let cfg = RouteConfig {
            host: None,
            listen: None,
            peer: dst.to_string(),
            identity: identity.clone(),
        };
        match make_route(&cfg) {
            Some(route) => {
                routes.insert(dst, route.clone());
                Destination::Http(Routing::Route(route))
            }
            None => Destination::Http(Routing::Undeclared(dst)),
        }
    }
}

/// The destination the app originally dialled, if iptables redirected this
/// connection to us; `None` when it dialled the listener itself.
///
/// A listener on `[::]` (one socket for both families, as the capture rules
/// need: IPv4 is redirected to 127.0.0.1, IPv6 to ::1) accepts IPv4 as
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`). Such a connection is tracked by the
/// IPv4 conntrack, so its original destination is asked with the IPv4
/// option (the IPv6 one fails for it) and returned as plain IPv4, so the
/// IPv4 CIDRs of `destinations` match it.
pub fn original_destination(tcp: &TcpStream) -> Option<SocketAddr> {
    let local = canonical(tcp.local_addr().ok()?);
    let sock = socket2::SockRef::from(tcp);
    let original = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    }
    .ok()?
    .as_socket()?;
    let original = canonical(original);
    // Without a redirect the kernel reports the listener's own address.
    (original != local).then_some(original)
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is; others unchanged.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests;
