//! The audit log: one structured line for every decision taken at the
//! boundary (request allowed, request denied, handshake refused, undeclared
//! outbound destination), so every accepted request can be explained after
//! the fact. Emitted through tracing under the target `meshguard::audit`;
//! JSON with `--log-format json`. Every event is one function here, so the
//! vocabulary (event names, fields, levels) has one owner.

use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Direction, Disposition};
use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

/// The tracing target of audit lines (filter with `MESHGUARD_LOG`).
pub const TARGET: &str = "meshguard::audit";

/// Everything the audit line of one request carries.
pub struct RequestRecord<'a> {
    pub direction: Direction,
    /// The peer's address: the caller inbound, the peer sidecar outbound.
    pub peer_addr: Option<&'a str>,
    pub peer_id: Option<&'a SpiffeId>,
    pub method: &'a str,
    /// The normalised path that was authorized (no query string).
    pub path: &'a str,
    pub decision: Disposition,
    /// The policy rule that decided, if any.
    pub rule: Option<&'a str>,
    pub status: u16,
    pub duration: Duration,
    /// Why, in a few words (`allowed`, `denied by policy`, `local app unavailable`, ...).
    pub reason: &'a str,
    /// The verified end-user token's subject and issuer (never the token).
    pub token_sub: Option<&'a str>,
    pub token_iss: Option<&'a str>,
}

/// Writes the audit line of one request.
pub fn request(r: &RequestRecord<'_>) {
    let duration_ms = r.duration.as_secs_f64() * 1000.0;
    let peer_id = r.peer_id.map(|p| p.as_str());
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: TARGET,
                event = "request",
                direction = r.direction.as_str(),
                peer_addr = r.peer_addr,
                peer_id,
                method = r.method,
                path = r.path,
                decision = r.decision.as_str(),
                rule = r.rule,
                status = r.status,
                duration_ms,
                reason = r.reason,
                token_sub = r.token_sub,
                token_iss = r.token_iss,
                "request {}",
                r.decision.as_str()
            )
        };
    }
    match r.decision {
        Disposition::Allow => line!(info),
        Disposition::Deny | Disposition::AuditDeny => line!(warn),
    }
}

/// Writes the audit line of a refused inbound handshake.
pub fn handshake_refused(direction: Direction, peer_addr: SocketAddr, reason: &str, detail: &str) {
    tracing::warn!(
        target: TARGET,
        event = "handshake",
        direction = direction.as_str(),
        peer_addr = %peer_addr,
        decision = "deny",
        status = 0u16,
        reason,
        detail,
        "handshake refused"
    );
}

/// Writes the audit line of a connection to a peer sidecar that could not
/// be made (unreachable, timed out, or its proof refused).
pub fn peer_connect_refused(peer_addr: &str, reason: &str, detail: &dyn Display) {
    tracing::warn!(
        target: TARGET,
        event = "handshake",
        direction = Direction::Outbound.as_str(),
        peer_addr,
        decision = "deny",
        reason,
        detail = %detail,
        "connection to peer refused"
    );
}

/// A request whose head exceeded the limits (answered 431 by the HTTP layer).
pub fn headers_too_large(direction: Direction, peer_addr: &dyn Display) {
    tracing::warn!(
        target: TARGET,
        event = "request_refused",
        direction = direction.as_str(),
        peer_addr = %peer_addr,
        status = 431u16,
        reason = "request_headers_too_large",
        "request refused: headers too large"
    );
}

/// A request that is not valid HTTP (answered 400 by the HTTP layer).
pub fn malformed_request(direction: Direction, peer_addr: &dyn Display, detail: &dyn Display) {
    tracing::warn!(
        target: TARGET,
        event = "request_refused",
        direction = direction.as_str(),
        peer_addr = %peer_addr,
        status = 400u16,
        reason = "malformed_request",
        detail = %detail,
        "request refused: malformed HTTP"
    );
}

/// A connection closed because its request head did not arrive in time.
pub fn header_read_timeout(direction: Direction, peer_addr: &dyn Display) {
    tracing::info!(
        target: TARGET,
        event = "connection_closed",
        direction = direction.as_str(),
        peer_addr = %peer_addr,
        reason = "header_read_timeout",
        "connection closed: request headers not received in time"
    );
}

/// A connection meshguard closes itself (drain, idle, revoked proof).
pub fn connection_closed(direction: Direction, peer_addr: &dyn Display, reason: &str) {
    tracing::info!(
        target: TARGET,
        event = "connection_closed",
        direction = direction.as_str(),
        peer_addr = %peer_addr,
        reason,
        "closing connection gracefully"
    );
}

/// A connection refused because its listener is at its connection limit.
pub fn connection_refused(direction: Direction, peer_addr: SocketAddr, limit: usize) {
    tracing::warn!(
        target: TARGET,
        event = "connection_refused",
        direction = direction.as_str(),
        peer_addr = %peer_addr,
        reason = "connection_limit",
        limit,
        "connection refused: listener at its connection limit"
    );
}

/// A captured connection to an undeclared destination, forwarded as
/// unauthenticated TCP because the operator chose `passthrough`.
pub fn passthrough(destination: SocketAddr) {
    tracing::info!(
        target: TARGET,
        event = "passthrough",
        direction = Direction::Outbound.as_str(),
        destination = %destination,
        decision = "allow",
        reason = "undeclared destination, passthrough chosen",
        "forwarding unauthenticated TCP"
    );
}

/// Everything the audit line of one opaque TCP connection carries; it is
/// written once, when the connection ends (a refused one ends at once).
pub struct TcpRecord<'a> {
    pub direction: Direction,
    /// The caller inbound, the peer sidecar outbound.
    pub peer_addr: &'a str,
    /// The caller's proven identity inbound; outbound, the identity the
    /// peer had to prove.
    pub peer_id: Option<&'a SpiffeId>,
    /// The app port the connection is for.
    pub port: u16,
    pub decision: Disposition,
    /// The policy rule that decided, if any.
    pub rule: Option<&'a str>,
    /// Payload bytes from the side that opened the connection.
    pub bytes_to_server: u64,
    /// Payload bytes back to it.
    pub bytes_to_client: u64,
    pub duration: Duration,
    /// How it ended, a bounded label (`closed`, `error`, `refused`, `draining`, ...).
    pub end: &'a str,
    /// Why, when that needs more than the label (an I/O error, a refusal).
    pub detail: Option<&'a dyn Display>,
}

/// Writes the audit line of one opaque TCP connection.
pub fn tcp_connection(r: &TcpRecord<'_>) {
    let duration_ms = r.duration.as_secs_f64() * 1000.0;
    let peer_id = r.peer_id.map(|p| p.as_str());
    let detail = r.detail.map(tracing::field::display);
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: TARGET,
                event = "tcp_connection",
                direction = r.direction.as_str(),
                peer_addr = r.peer_addr,
                peer_id,
                port = r.port,
                decision = r.decision.as_str(),
                rule = r.rule,
                bytes_to_server = r.bytes_to_server,
                bytes_to_client = r.bytes_to_client,
                duration_ms,
                end = r.end,
                detail,
                "tcp connection {}",
                r.decision.as_str()
            )
        };
    }
    match r.decision {
        Disposition::Allow => line!(info),
        Disposition::Deny | Disposition::AuditDeny => line!(warn),
    }
}

/// An HTTP connection to an app port declared as opaque TCP: closed after
/// the handshake, since that port is only reached as TCP.
pub fn http_to_tcp_port(peer_addr: SocketAddr, peer_id: &SpiffeId, port: u16) {
    tracing::warn!(
        target: TARGET,
        event = "connection_refused",
        direction = Direction::Inbound.as_str(),
        peer_addr = %peer_addr,
        peer_id = peer_id.as_str(),
        port,
        decision = "deny",
        reason = "http_to_tcp_port",
        "connection refused: HTTP to a port declared as TCP"
    );
}

/// One connection switched protocols after `101`, when it closes.
pub struct UpgradeRecord<'a> {
    pub direction: Direction,
    pub peer_addr: Option<&'a str>,
    pub peer_id: Option<&'a SpiffeId>,
    /// The path the upgrade was authorized for.
    pub path: &'a str,
    /// The protocol token, a bounded label (`websocket`, `other`).
    pub protocol: &'a str,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub duration: Duration,
    /// How it ended (`closed`, `error`, `draining`).
    pub end: &'a str,
}

/// Writes the audit line of an upgraded connection that has closed.
pub fn upgrade_closed(r: &UpgradeRecord<'_>) {
    tracing::info!(
        target: TARGET,
        event = "upgrade_closed",
        direction = r.direction.as_str(),
        peer_addr = r.peer_addr,
        peer_id = r.peer_id.map(|p| p.as_str()),
        path = r.path,
        protocol = r.protocol,
        bytes_to_server = r.bytes_to_server,
        bytes_to_client = r.bytes_to_client,
        duration_ms = r.duration.as_secs_f64() * 1000.0,
        end = r.end,
        "upgraded connection closed"
    );
}

/// Everything the audit line of one egress decision carries: a TLS
/// connection (by SNI), a passthrough connection, or an originated request.
pub struct EgressRecord<'a> {
    /// `tls`, `originate` or `passthrough`.
    pub mode: &'a str,
    /// The name asked for (SNI or Host), as the app sent it.
    pub host: Option<&'a str>,
    /// The address connected to, or the one the app dialled when refused.
    pub destination: Option<SocketAddr>,
    pub decision: Disposition,
    /// A bounded label (`allowed`, `undeclared`, `metadata`, `address_mismatch`, ...).
    pub reason: &'a str,
    pub detail: Option<&'a dyn Display>,
}

/// Writes the audit line of one egress decision.
pub fn egress(r: &EgressRecord<'_>) {
    let destination = r.destination.map(tracing::field::display);
    let detail = r.detail.map(tracing::field::display);
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                target: TARGET,
                event = "egress",
                direction = Direction::Outbound.as_str(),
                mode = r.mode,
                host = r.host,
                destination,
                decision = r.decision.as_str(),
                reason = r.reason,
                detail,
                "egress {}",
                r.decision.as_str()
            )
        };
    }
    match r.decision {
        Disposition::Allow => line!(info),
        Disposition::Deny | Disposition::AuditDeny => line!(warn),
    }
}

/// A claim header from a caller the policy does not let assert it, with
/// what was done (`strip`: removed, the request goes on; `deny`: refused).
/// The header's value is never logged: it may carry a user's identity.
pub fn untrusted_claim_header(
    peer_addr: &str,
    peer_id: &SpiffeId,
    header: &str,
    action: &str,
    path: &str,
) {
    tracing::warn!(
        target: TARGET,
        event = "untrusted_claim_header",
        direction = Direction::Inbound.as_str(),
        peer_addr,
        peer_id = peer_id.as_str(),
        header,
        action,
        path,
        "claim header from a caller not allowed to assert it"
    );
}
/// A webhook's verdict on a signature-verified route (never the secret or
/// the body): `result` is `accepted` or the refusal reason.
pub fn webhook(route: &str, peer_addr: &dyn Display, result: &str, status: u16) {
    if result == "accepted" {
        tracing::info!(target: TARGET, event = "webhook", route, peer_addr = %peer_addr, result, status, "webhook accepted");
    } else {
        tracing::warn!(target: TARGET, event = "webhook", route, peer_addr = %peer_addr, result, status, "webhook refused");
    }
}
