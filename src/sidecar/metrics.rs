//! Prometheus metrics: one struct of families, one registry per sidecar
//! (so several sidecars in one test process never mix), label values kept
//! bounded: peer identities outside the known set fold into `other`, and
//! no path or raw address is ever a label.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// Label value for peers outside the bounded set.
pub const OTHER_PEER: &str = "other";
/// How many distinct peer identities get a label of their own beyond the
/// ones named in config and policy.
pub const MAX_DYNAMIC_PEERS: usize = 100;

/// Every metric family of one sidecar.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    handshakes: IntCounterVec,
    authz: IntCounterVec,
    open_connections: IntGaugeVec,
    connections: IntCounterVec,
    bytes: IntCounterVec,
    cert_expiry: GaugeVec,
    reloads: IntCounterVec,
    /// Per-identity limits and claim headers (`limits/`, `policy/claims.rs`).
    rate_limited: IntCounterVec,
    claim_headers: IntCounterVec,
    tcp: ConnectionFamilies,
    upgraded: ConnectionFamilies,
    peers: Mutex<PeerLabels>,
}

struct PeerLabels {
    known: HashSet<String>,
    dynamic: HashSet<String>,
}

/// Status class label of an HTTP status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Registers `metric`. Names and labels are static and unique, so this
/// fails only on a programming error, which then stops the start.
fn registered<T: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<T>,
) -> prometheus::Result<T> {
    let metric = metric?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// A labelled family of one of the vector kinds, registered in `registry`.
fn family<T, F>(
    registry: &Registry,
    make: F,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<T>
where
    T: prometheus::core::Collector + Clone + 'static,
    F: FnOnce(Opts, &[&str]) -> prometheus::Result<T>,
{
    registered(registry, make(Opts::new(name, help), labels))
}

/// `meshguard_build_info`: a constant series that names the version.
fn publish_build_info(r: &Registry) -> prometheus::Result<()> {
    let build: IntGaugeVec = family(
        r,
        IntGaugeVec::new,
        "meshguard_build_info",
        "Build information (always 1)",
        &["version", "crypto"],
    )?;
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), "aws-lc-rs"])
        .set(1);
    Ok(())
}

/// Request durations: 0.5 ms to 30 s, dense where a sidecar hop lives.
const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// `known_peers` are identities named in config or policy: they always
    /// get their own label value.
    pub fn new(known_peers: impl IntoIterator<Item = String>) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let counters = |name, help, labels| family(&r, IntCounterVec::new, name, help, labels);
        let requests = counters(
            "meshguard_requests_total",
            "HTTP requests that crossed (or were refused at) the boundary",
            &["direction", "peer", "decision", "status_class"],
        )?;
        let request_duration = registered(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "meshguard_request_duration_seconds",
                    "Time from request received to response headers sent",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
                &["direction", "decision"],
            ),
        )?;
        let handshakes = counters(
            "meshguard_tls_handshakes_total",
            "mTLS handshakes by result and failure reason",
            &["direction", "result", "reason"],
        )?;
        let authz = counters(
            "meshguard_authz_decisions_total",
            "Authorization decisions by deciding policy rule",
            &["decision", "rule"],
        )?;
        let open_connections = family(
            &r,
            IntGaugeVec::new,
            "meshguard_open_connections",
            "Connections currently open",
            &["direction"],
        )?;
        let connections = counters(
            "meshguard_connections_total",
            "Connections accepted or opened",
            &["direction"],
        )?;
        let bytes = counters(
            "meshguard_bytes_total",
            "Bytes on the wire, by direction and flow (rx = read, tx = written)",
            &["direction", "flow"],
        )?;
        let cert_expiry = family(
            &r,
            GaugeVec::new,
            "meshguard_certificate_expiry_timestamp_seconds",
            "notAfter of our SVID and of each trust bundle root, Unix seconds",
            &["kind", "trust_domain", "subject"],
        )?;
        let reloads = counters(
            "meshguard_reloads_total",
            "Reloads of configuration, policy and credentials by result",
            &["kind", "result"],
        )?;
        let rate_limited = counters(
            "meshguard_rate_limited_total",
            "Requests refused with 429 by a per-identity limit, by limit, peer and kind",
            &["limit", "peer", "kind"],
        )?;
        let claim_headers = counters(
            "meshguard_untrusted_claim_headers_total",
            "Claim headers from callers not allowed to assert them, by header and action",
            &["header", "action"],
        )?;
        publish_build_info(&r)?;
        let tcp = ConnectionFamilies::new(&r, &TCP_FAMILIES)?;
        let upgraded = ConnectionFamilies::new(&r, &UPGRADE_FAMILIES)?;
        Ok(Metrics {
            registry: r,
            requests,
            request_duration,
            handshakes,
            authz,
            open_connections,
            connections,
            bytes,
            cert_expiry,
            reloads,
            rate_limited,
            claim_headers,
            tcp,
            upgraded,
            peers: Mutex::new(PeerLabels {
                known: known_peers.into_iter().collect(),
                dynamic: HashSet::new(),
            }),
        })
    }

    /// The bounded label value for a peer identity. Called once per
    /// connection, not per request.
    pub fn peer_label(&self, id: &str) -> String {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.known.contains(id) || peers.dynamic.contains(id) {
            return id.to_owned();
        }
        if peers.dynamic.len() < MAX_DYNAMIC_PEERS {
            peers.dynamic.insert(id.to_owned());
            return id.to_owned();
        }
        OTHER_PEER.to_owned()
    }

    /// Counters of one connection's requests, resolved lazily and cached so
    /// the per-request path does no label hashing.
    pub fn request_counters(&self, direction: Direction, peer: String) -> RequestCounters {
        RequestCounters {
            direction,
            peer,
            cells: Default::default(),
            duration: [OnceLock::new(), OnceLock::new(), OnceLock::new()],
        }
    }

    pub fn record_request(
        &self,
        counters: &RequestCounters,
        decision: Disposition,
        status: u16,
        seconds: f64,
    ) {
        let class = status_class(status);
        let slot = decision as usize * 5 + (status / 100).clamp(1, 5) as usize - 1;
        counters.cells[slot]
            .get_or_init(|| {
                self.requests.with_label_values(&[
                    counters.direction.as_str(),
                    &counters.peer,
                    decision.as_str(),
                    class,
                ])
            })
            .inc();
        counters.duration[decision as usize]
            .get_or_init(|| {
                self.request_duration
                    .with_label_values(&[counters.direction.as_str(), decision.as_str()])
            })
            .observe(seconds);
    }

    /// A request over limit `limit` (`kind`: rate or concurrency); `peer`
    /// is the connection's bounded peer label.
    pub fn rate_limited(&self, limit: &str, peer: &str, kind: &str) {
        self.rate_limited
            .with_label_values(&[limit, peer, kind])
            .inc();
    }

    /// A claim header (a name the policy declares, so bounded) from a
    /// caller that may not assert it; `action`: strip or deny.
    pub fn untrusted_claim_header(&self, header: &str, action: &str) {
        self.claim_headers
            .with_label_values(&[header, action])
            .inc();
    }

    pub fn handshake(&self, direction: Direction, ok: bool, reason: &str) {
        let result = if ok { "accepted" } else { "refused" };
        self.handshakes
            .with_label_values(&[direction.as_str(), result, if ok { "" } else { reason }])
            .inc();
    }

    /// The authorization counter of one (decision label, rule name) pair.
    /// Looked up by label, so callers cache it (see the policy's counters).
    pub fn authz_counter(&self, decision: &str, rule: &str) -> IntCounter {
        self.authz.with_label_values(&[decision, rule])
    }

    /// Counts a connection as open until the guard is dropped.
    pub fn connection(&self, direction: Direction) -> ConnectionGuard {
        let direction = direction.as_str();
        self.connections.with_label_values(&[direction]).inc();
        let gauge = self.open_connections.with_label_values(&[direction]);
        gauge.inc();
        ConnectionGuard { gauge }
    }

    /// Byte counters for one direction: (rx, tx).
    pub fn byte_counters(&self, direction: Direction) -> (IntCounter, IntCounter) {
        let direction = direction.as_str();
        (
            self.bytes.with_label_values(&[direction, "rx"]),
            self.bytes.with_label_values(&[direction, "tx"]),
        )
    }

    pub fn set_cert_expiry(&self, kind: &str, trust_domain: &str, subject: &str, not_after: i64) {
        self.cert_expiry
            .with_label_values(&[kind, trust_domain, subject])
            .set(not_after as f64);
    }

    /// Forgets every certificate expiry series (before re-publishing after a reload).
    pub fn clear_cert_expiry(&self) {
        self.cert_expiry.reset();
    }

    pub fn reload(&self, kind: &str, ok: bool) {
        self.reloads
            .with_label_values(&[kind, if ok { "success" } else { "failure" }])
            .inc();
    }

    /// The registry, for the families another module owns (the Workload
    /// API's, egress, `jwt/metrics.rs`, webhooks).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Which direction a request or connection crosses the boundary. Lives
/// here, below the proxy and the audit log, so both can name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// How the boundary disposed of a request, as counted and audited: not
/// the policy's `Decision` (which names the rule), only its bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Allow = 0,
    Deny = 1,
    /// Would have been denied, passed because the policy is in audit mode.
    AuditDeny = 2,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Allow => "allow",
            Disposition::Deny => "deny",
            Disposition::AuditDeny => "audit_would_deny",
        }
    }
}

/// Per-connection cache of labelled request counters.
pub struct RequestCounters {
    direction: Direction,
    peer: String,
    cells: [OnceLock<IntCounter>; 15],
    duration: [OnceLock<prometheus::Histogram>; 3],
}

impl RequestCounters {
    /// The direction these requests cross, the one their audit lines name.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// The bounded peer label these requests are counted under.
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

/// Decrements the open-connections gauge when the connection ends.
pub struct ConnectionGuard {
    gauge: IntGauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Connection durations: 1 ms to 1 h (TCP connections are often pooled).
const TCP_DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// The three families of one kind of long-lived connection (opaque TCP,
/// upgraded HTTP): a counter by a bounded kind label, bytes by flow, and
/// lifetimes by how they ended.
struct ConnectionFamilies {
    connections: IntCounterVec,
    bytes: IntCounterVec,
    duration: HistogramVec,
}

/// Names, help texts and the kind label of one [`ConnectionFamilies`].
struct FamilyNames {
    connections: (&'static str, &'static str),
    kind_label: &'static str,
    bytes: (&'static str, &'static str),
    duration: (&'static str, &'static str),
}

const TCP_FAMILIES: FamilyNames = FamilyNames {
    connections: (
        "meshguard_tcp_connections_total",
        "Opaque TCP connections by authorization decision, counted when it is taken",
    ),
    kind_label: "decision",
    bytes: (
        "meshguard_tcp_bytes_total",
        "Payload bytes of opaque TCP connections, by flow (client_to_server: from the side that opened it)",
    ),
    duration: (
        "meshguard_tcp_connection_duration_seconds",
        "Lifetime of opaque TCP connections, by how they ended",
    ),
};

const UPGRADE_FAMILIES: FamilyNames = FamilyNames {
    connections: (
        "meshguard_upgraded_connections_total",
        "Connections switched to another protocol after 101 (protocol: websocket or other)",
    ),
    kind_label: "protocol",
    bytes: (
        "meshguard_upgraded_bytes_total",
        "Bytes spliced on upgraded connections, by flow (client_to_server: from the side that asked)",
    ),
    duration: (
        "meshguard_upgraded_connection_duration_seconds",
        "Lifetime of upgraded connections after 101, by how they ended",
    ),
};

impl ConnectionFamilies {
    fn new(r: &Registry, names: &FamilyNames) -> prometheus::Result<ConnectionFamilies> {
        let (name, help) = names.connections;
        let kind = ["direction", names.kind_label];
        let connections = family(r, IntCounterVec::new, name, help, &kind)?;
        let (name, help) = names.bytes;
        let bytes = family(r, IntCounterVec::new, name, help, &["direction", "flow"])?;
        let (name, help) = names.duration;
        let duration = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(TCP_DURATION_BUCKETS.to_vec()),
                &["direction", "end"],
            ),
        )?;
        Ok(ConnectionFamilies {
            connections,
            bytes,
            duration,
        })
    }
}

impl Metrics {
    /// Counts one opaque TCP connection under its authorization decision.
    pub fn tcp_connection(&self, direction: Direction, decision: Disposition) {
        self.tcp
            .connections
            .with_label_values(&[direction.as_str(), decision.as_str()])
            .inc();
    }

    /// Payload byte counters of opaque TCP for one direction:
    /// (client_to_server, server_to_client). Resolve once, add per read.
    pub fn tcp_byte_counters(&self, direction: Direction) -> (IntCounter, IntCounter) {
        let direction = direction.as_str();
        (
            self.tcp
                .bytes
                .with_label_values(&[direction, "client_to_server"]),
            self.tcp
                .bytes
                .with_label_values(&[direction, "server_to_client"]),
        )
    }

    /// Records the lifetime of a closed opaque TCP connection; `end` is a
    /// bounded label (`closed`, `error`, `draining`, `refused`, ...).
    pub fn tcp_closed(&self, direction: Direction, end: &str, seconds: f64) {
        self.tcp
            .duration
            .with_label_values(&[direction.as_str(), end])
            .observe(seconds);
    }
}

impl Metrics {
    /// Counts one connection upgraded to `protocol` (a bounded label).
    pub fn upgraded(&self, direction: Direction, protocol: &str) {
        self.upgraded
            .connections
            .with_label_values(&[direction.as_str(), protocol])
            .inc();
    }

    /// Records the end of an upgraded connection: bytes each way and its lifetime.
    pub fn upgrade_closed(&self, direction: Direction, bytes: (u64, u64), end: &str, seconds: f64) {
        let d = direction.as_str();
        let b = &self.upgraded.bytes;
        b.with_label_values(&[d, "client_to_server"])
            .inc_by(bytes.0);
        b.with_label_values(&[d, "server_to_client"])
            .inc_by(bytes.1);
        self.upgraded
            .duration
            .with_label_values(&[d, end])
            .observe(seconds);
    }
}
