//! The audit log: one structured line for every decision taken at the
//! boundary (request allowed, request denied, handshake refused, undeclared
//! outbound destination), so every accepted request can be explained after
//! the fact. Emitted through tracing under the target `meshguard::audit`;
//! JSON with `--log-format json`.

use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::Decision;
use std::net::SocketAddr;
use std::time::Duration;

/// The tracing target of audit lines (filter with `MESHGUARD_LOG`).
pub const TARGET: &str = "meshguard::audit";

/// Everything the audit line of one request carries.
pub struct RequestRecord<'a> {
    pub direction: &'static str,
    /// The peer's address: the caller inbound, the peer sidecar outbound.
    pub peer_addr: Option<&'a str>,
    pub peer_id: Option<&'a SpiffeId>,
    pub method: &'a str,
    /// The normalised path that was authorized (no query string).
    pub path: &'a str,
    pub decision: Decision,
    /// The policy rule that decided, if any.
    pub rule: Option<&'a str>,
    pub status: u16,
    pub duration: Duration,
    /// Why, in a few words (`allowed`, `denied by policy`, `local app unavailable`, ...).
    pub reason: &'a str,
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
                direction = r.direction,
                peer_addr = r.peer_addr,
                peer_id,
                method = r.method,
                path = r.path,
                decision = r.decision.as_str(),
                rule = r.rule,
                status = r.status,
                duration_ms,
                reason = r.reason,
                "request {}",
                r.decision.as_str()
            )
        };
    }
    match r.decision {
        Decision::Allow => line!(info),
        Decision::Deny | Decision::AuditDeny => line!(warn),
    }
}

/// Writes the audit line of a refused handshake.
pub fn handshake_refused(
    direction: &'static str,
    peer_addr: SocketAddr,
    reason: &str,
    detail: &str,
) {
    tracing::warn!(
        target: TARGET,
        event = "handshake",
        direction,
        peer_addr = %peer_addr,
        decision = "deny",
        status = 0u16,
        reason,
        detail,
        "handshake refused"
    );
}
