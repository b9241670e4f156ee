//! Authorization of opaque TCP connections (`inbound.tcp_ports`): the
//! same rules as requests, decided once per connection on who the peer is
//! and which app port it asked for. A TCP connection has no method and no
//! path, and none is made up for it: a rule with `methods` or `paths` that
//! could apply to a TCP port is refused when the policy is loaded
//! ([`Policy::check_tcp_ports`]).

use super::{Decision, Policy, PolicyError, Rule};
use crate::sidecar::identity::SpiffeId;

/// The facts about one opaque TCP connection that authorization looks at.
#[derive(Debug, Clone, Copy)]
pub struct Connection<'a> {
    /// The authenticated peer (from its verified X509-SVID).
    pub peer: &'a SpiffeId,
    /// The app port the connection is for (named in the handshake, and
    /// equal to the dialled port under capture).
    pub port: u16,
}

impl Rule {
    /// True when the rule has conditions only an HTTP request can meet.
    fn has_http_conditions(&self) -> bool {
        self.methods.is_some() || self.paths.is_some() || self.jwt.is_some()
    }

    fn covers_port(&self, port: u16) -> bool {
        self.ports.as_ref().is_none_or(|p| p.contains(&port))
    }
}

impl Policy {
    /// Authorises one TCP connection: source and port only. Allocates
    /// nothing. Should a rule with HTTP conditions meet a connection
    /// anyway (a port outside the checked `tcp_ports`), it fails closed:
    /// such a deny rule denies, such an allow rule never allows.
    pub fn evaluate_connection(&self, conn: &Connection<'_>) -> Decision<'_> {
        let candidates = self.index.for_peer(conn.peer);
        let denies = |i: usize| self.rules[i].covers_port(conn.port);
        let allows = |i: usize| {
            let rule = &self.rules[i];
            !rule.has_http_conditions() && rule.covers_port(conn.port)
        };
        self.decide(&candidates, denies, allows)
    }

    /// Refuses a policy with a rule whose `methods` or `paths` would apply
    /// to one of `tcp_ports` (a rule without `ports` applies to all of
    /// them): such a rule cannot mean anything for opaque TCP, so it is an
    /// error at its line rather than a guess.
    pub fn check_tcp_ports(&self, tcp_ports: &[u16]) -> Result<(), PolicyError> {
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.has_http_conditions() {
                continue;
            }
            let Some(port) = tcp_ports.iter().copied().find(|&p| rule.covers_port(p)) else {
                continue;
            };
            let conditions = match (rule.methods.is_some(), rule.paths.is_some()) {
                (true, true) => "methods and paths",
                (true, false) => "methods",
                _ => "paths",
            };
            let scope = if rule.ports.is_some() {
                format!("lists TCP port {port}")
            } else {
                format!("has no `ports`, so it applies to every port, TCP port {port} included")
            };
            return Err(PolicyError::Invalid {
                file: self.file.to_string(),
                line: rule.line,
                column: None,
                message: format!(
                    "rules[{index}] {:?} has {conditions} but {scope} (inbound.tcp_ports): \
                     opaque TCP has no method or path; give the rule `ports` without the TCP \
                     ports, or drop its {conditions}",
                    rule.name()
                ),
            });
        }
        Ok(())
    }
}
