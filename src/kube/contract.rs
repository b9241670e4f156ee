//! The contract between what injection writes into a pod and what the
//! sidecar and its init container read there: the fixed ports and UID,
//! the sidecar's environment, and the recorded app probes with their JSON
//! encoding. The injector, the iptables capture and the probe forwarder
//! all build on this module; none of them imports another for it.
//!
//! # What the sidecar's probe forwarder must do
//!
//! - Listen on `MESHGUARD_PROBE_LISTEN` (`[::]:15020`) when it and
//!   `MESHGUARD_APP_PROBES` are set; refuse to start if the JSON does not
//!   parse ([`parse_app_probes`]). The port is outside capture and policy.
//! - Answer only `GET`/`HEAD` on exactly `/app-probe/<key>` for a key in
//!   the map (any query string ignored); everything else is 404. Never
//!   forward a path or header taken from the request: the port is open to
//!   the network, so it must run only the recorded probes.
//! - Dial the app on loopback only (`127.0.0.1:port`, then `[::1]:port` if
//!   refused). The capture rules send the proxy's own connections to its
//!   pod IP into the inbound listener, so never dial the pod IP.
//! - `http`: GET `path` (query included) over HTTP/1.1, or TLS without
//!   certificate verification and without SNI for `HTTPS` (kubelet does
//!   not verify either); send the recorded `headers` (they replace
//!   defaults, `Host` included), else `Host: 127.0.0.1:<port>`, the
//!   kubelet's `User-Agent` and `Accept: */*`. Follow redirects to the same
//!   host up to 10 times; a redirect elsewhere counts as success, as in
//!   kubelet. Success is a final status 200-399.
//! - `tcp`: success when a connection opens; close it at once.
//! - `grpc`: `grpc.health.v1.Health/Check` over h2c with `service` (empty
//!   when absent); success is `SERVING`.
//! - Give up after `timeoutSeconds` (less a small margin, so the answer
//!   reaches kubelet within its own timeout of the same length).
//! - Answer 200 on success and 503 on failure, with a one-line plain-text
//!   reason (status received, connection refused, timeout); never pass the
//!   app's status through, since kubelet would follow a 3xx to the sidecar.

use serde::{Deserialize, Serialize};
use serde_norway::Value;
use std::collections::BTreeMap;

/// Where captured inbound TCP is redirected: the sidecar's mTLS listener.
pub const INBOUND_PORT: u16 = 15006;
/// Where captured outbound TCP is redirected: the sidecar's outbound listener.
pub const OUTBOUND_PORT: u16 = 15001;
/// The admin listener (/live, /ready); kubelet reaches it directly.
pub const ADMIN_PORT: u16 = 15000;
/// The probe forwarder for the app's rewritten kubelet probes.
pub const PROBE_PORT: u16 = 15020;
/// The opt-in, loopback-only shutdown endpoint (classic-container mode).
pub const SHUTDOWN_PORT: u16 = 15021;
/// The UID (and GID) the sidecar runs as. Its traffic is never captured,
/// so no app container may run as this UID. Chosen outside the ranges
/// images commonly use (0, 100-999 system users, 1000+, 65532 distroless,
/// 1337 Istio, 2102 Linkerd) so that a clash is unlikely and a capture
/// bypass by accident even less so.
pub const PROXY_UID: u32 = 2110;

/// Environment of the sidecar (the contract with `meshguard run`).
pub const ENV_LOG_FORMAT: &str = "MESHGUARD_LOG_FORMAT";
pub const ENV_APP_PROBES: &str = "MESHGUARD_APP_PROBES";
/// Where the probe forwarder listens (set together with the probes).
pub const ENV_PROBE_LISTEN: &str = "MESHGUARD_PROBE_LISTEN";
pub const ENV_SHUTDOWN_LISTEN: &str = "MESHGUARD_SHUTDOWN_LISTEN";
/// App ports carried as opaque TCP (comma-separated), from the
/// `meshguard.io/inbound-tcp-ports` annotation; `meshguard run` adds them to
/// `inbound.tcp_ports`.
pub const ENV_INBOUND_TCP_PORTS: &str = "MESHGUARD_INBOUND_TCP_PORTS";
/// The identity assertion's mode (`hmac`, `ed25519`, `es256`), from the
/// `meshguard.io/assertion` annotation; `meshguard run` adds an `assertion`
/// section writing to [`ASSERTION_DIR`].
pub const ENV_ASSERTION: &str = "MESHGUARD_ASSERTION";
/// The pod's memory volume shared with the app's containers (read-only
/// there): `key` (hmac) or `jwks.json` (ed25519, es256).
pub const ASSERTION_DIR: &str = "/var/run/meshguard/assertion";

/// URL path prefix of rewritten probes on the probe port.
pub const PROBE_PATH_PREFIX: &str = "/app-probe/";

/// One rewritten probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRecord {
    /// The whole probe as written; put back by uninject.
    pub original: Value,
    /// What the sidecar does when kubelet calls the rewritten probe.
    pub forward: Forward,
}

/// What the sidecar's probe port runs against the app, over loopback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "lowercase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Forward {
    /// GET `scheme://127.0.0.1:port{path}` (path includes any query).
    Http {
        port: u16,
        scheme: Scheme,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<HttpHeader>,
        timeout_seconds: u32,
    },
    /// A TCP connect to `127.0.0.1:port`.
    Tcp { port: u16, timeout_seconds: u32 },
    /// `grpc.health.v1.Health/Check` over h2c on `127.0.0.1:port`.
    Grpc {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        timeout_seconds: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scheme {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// The annotation's content, keyed by `<container>/<kind>`.
pub type AppProbes = BTreeMap<String, ProbeRecord>;

/// Parses the `meshguard.io/app-probes` annotation (or the sidecar's
/// `MESHGUARD_APP_PROBES` environment variable, which carries the same).
pub fn parse_app_probes(json: &str) -> Result<AppProbes, serde_json::Error> {
    serde_json::from_str(json)
}

/// The annotation's (and the environment variable's) encoding of `probes`.
pub fn to_json(probes: &AppProbes) -> Result<String, String> {
    serde_json::to_string(probes).map_err(|e| e.to_string())
}
