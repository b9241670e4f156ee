//! Configuration: one YAML file (or the flags of the single-route quick
//! start) turned into one typed, validated [`Config`]. Reading the file is
//! kept apart from building the struct, so the builder is unit-testable.

use crate::sidecar::identity::SpiffeId;
use crate::sidecar::tls::UpstreamProtocol;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod assertion;
mod egress;
mod flags;
mod jwt;
mod locate;
mod process;
mod tcp;
mod workload_api;
pub use egress::{EgressConfig, EgressDestination, EgressMode};
mod webhook;
pub use assertion::{AssertionConfig, AssertionMode, KeyFileAccess};
pub use flags::{QuickInbound, QuickOutbound, QuickStart, QuickStartError};
pub use jwt::{JwksConfig, JwtConfig, ProviderConfig, ProviderKind};
pub use process::{LimitsConfig, RuntimeConfig, ShutdownConfig};
pub use tcp::{DestinationProtocol, TcpRouteConfig};
pub use webhook::{OnReplay, WebhookRoute, WebhooksConfig};
pub use workload_api::{parse_unix_uri, WorkloadApiConfig, ENDPOINT_ENV};

/// Default admin listener (metrics, health, config view).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";
/// [`DEFAULT_ADMIN_ADDR`] as an address.
pub const DEFAULT_ADMIN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);

/// A configuration error, always pointing at the file and (where the
/// parser knows it) the line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
}

/// The effective configuration of one sidecar.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Config {
    pub identity: IdentityConfig,
    pub inbound: Option<InboundConfig>,
    pub outbound: Option<OutboundConfig>,
    pub admin: AdminConfig,
    pub runtime: RuntimeConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    /// Signature-verified webhook routes (config/webhook.rs).
    pub webhooks: Option<WebhooksConfig>,
    /// The identity assertion added for the app (config/webhook.rs).
    pub assertion: Option<AssertionConfig>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PEM file: our X509-SVID, leaf first, then any intermediates.
    /// Empty (not given) when the identity comes from `workload_api`.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub cert: PathBuf,
    /// PEM file: the SVID's private key (PKCS#8, SEC1 or PKCS#1).
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub key: PathBuf,
    /// PEM file: the CA certificates of our own trust domain.
    #[serde(default, skip_serializing_if = "path_is_empty")]
    pub bundle: PathBuf,
    /// Extra trust domains (federation): trust domain name -> PEM bundle.
    #[serde(default)]
    pub federated_bundles: BTreeMap<String, PathBuf>,
    /// Instead of the three files: SVIDs and bundles streamed from a SPIFFE
    /// Workload API (a SPIRE agent). Exactly one of the two is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_api: Option<WorkloadApiConfig>,
}

fn path_is_empty(p: &Path) -> bool {
    p.as_os_str().is_empty()
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Where peers connect with mTLS.
    pub listen: SocketAddr,
    /// The local application (plain HTTP), normally on loopback.
    pub app: SocketAddr,
    /// The allow matrix (YAML). Without one, every authenticated peer is
    /// allowed; with one, anything it does not allow is denied.
    #[serde(default)]
    pub policy: Option<PathBuf>,
    /// More request headers to remove before the app sees them, beside the
    /// identity and hop-by-hop ones always removed (vendor identity headers).
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Keep request headers whose name contains `_` (dropped by default).
    #[serde(default)]
    pub keep_underscore_headers: bool,
    /// App ports carried as opaque TCP (redis, postgres, ...): reached on
    /// `app`'s address with that port, authorized per connection.
    #[serde(default)]
    pub tcp_ports: Vec<u16>,
    /// The HTTP version spoken to the app: `auto` (the one the calling app
    /// spoke, as its sidecar says), or always `http1` or `http2` (h2c).
    #[serde(default)]
    pub app_protocol: AppProtocol,
    /// End-user token providers (`config/jwt.rs`).
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
}

/// How the inbound speaks to its app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/2 (h2c) for requests whose caller spoke HTTP/2, else HTTP/1.1.
    #[default]
    Auto,
    Http1,
    /// HTTP/2 with prior knowledge, for every request.
    Http2,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// Where the local app sends plain HTTP/1.1 requests routed by Host.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// HTTP version spoken on the mTLS hop to peers.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Idle pooled connections kept per peer (default: no limit). 0 makes
    /// every request a new connection and handshake.
    #[serde(default)]
    pub max_idle_per_peer: Option<usize>,
    /// Multiplexed HTTP/2 connections kept per peer (default 1), taken in
    /// turn by requests.
    #[serde(default = "one")]
    pub h2_connections_per_peer: usize,
    /// Declared destinations. Anything else is refused.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Transparent capture (iptables REDIRECT to `listen`): destinations
    /// by original address, each with the SPIFFE ID expected there. The
    /// connection goes to the original destination over mTLS.
    #[serde(default)]
    pub destinations: Vec<DestinationConfig>,
    /// What happens to a captured connection whose original destination
    /// is not declared: `deny` (default: 403, nothing leaves the pod) or
    /// `passthrough` (forwarded as plain TCP, unauthenticated).
    #[serde(default)]
    pub undeclared: Undeclared,
    /// Keep request headers whose name contains `_` (dropped by default).
    #[serde(default)]
    pub keep_underscore_headers: bool,
    /// More request headers to remove before a peer sees them, beside the
    /// identity and hop-by-hop ones always removed.
    #[serde(default)]
    pub strip_headers: Vec<String>,
    /// Opaque TCP routes, each with a listener of its own.
    #[serde(default)]
    pub tcp_routes: Vec<TcpRouteConfig>,
    /// Destinations outside the mesh, and the address guard.
    #[serde(default)]
    pub egress: EgressConfig,
}

impl Default for OutboundConfig {
    /// What an empty `outbound:` section means (serde's defaults).
    fn default() -> Self {
        OutboundConfig {
            listen: None,
            protocol: UpstreamProtocol::default(),
            max_idle_per_peer: None,
            h2_connections_per_peer: 1,
            routes: Vec::new(),
            destinations: Vec::new(),
            undeclared: Undeclared::default(),
            keep_underscore_headers: false,
            strip_headers: Vec::new(),
            tcp_routes: Vec::new(),
            egress: EgressConfig::default(),
        }
    }
}

/// A declared destination for transparently captured traffic.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Addresses: `10.96.0.0/12`, `fd00::/8`, or one address.
    pub cidr: crate::sidecar::net::Cidr,
    /// Ports (default: any).
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
    /// The SPIFFE ID the server there must prove.
    pub identity: SpiffeId,
    /// `http` (default) or `tcp`: opaque TCP to a port the peer declares
    /// in its `inbound.tcp_ports`.
    #[serde(default)]
    pub protocol: DestinationProtocol,
}

/// The egress rule for undeclared destinations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Undeclared {
    #[default]
    Deny,
    Passthrough,
}

/// One declared destination: how requests are matched, where they go, and
/// who must answer there.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Match requests on the outbound listener whose Host (authority) is
    /// this name; `name` matches any port, `name:port` only that port.
    #[serde(default)]
    pub host: Option<String>,
    /// Or: a listener of its own; everything sent to it takes this route.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The peer sidecar's inbound address, `host:port`.
    pub peer: String,
    /// The SPIFFE ID the peer must prove.
    pub identity: SpiffeId,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: DEFAULT_ADMIN,
        }
    }
}

fn one() -> usize {
    1
}

/// The file as written: the same shape as [`Config`], every key optional
/// where a default exists, unknown keys refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    identity: IdentityConfig,
    #[serde(default)]
    inbound: Option<InboundConfig>,
    #[serde(default)]
    outbound: Option<OutboundConfig>,
    #[serde(default)]
    admin: AdminConfig,
    #[serde(default)]
    runtime: RuntimeConfig,
    #[serde(default)]
    limits: LimitsConfig,
    #[serde(default)]
    shutdown: ShutdownConfig,
    #[serde(default)]
    webhooks: Option<WebhooksConfig>,
    #[serde(default)]
    assertion: Option<AssertionConfig>,
}

impl Config {
    /// Reads and validates a YAML file. Relative paths inside it are taken
    /// relative to the file's own directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_yaml(&text, &file, base)
    }

    /// Parses and validates YAML text. `file` names it in errors; `base` is
    /// the directory relative paths are resolved against.
    pub fn from_yaml(text: &str, file: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: FileConfig =
            serde_norway::from_str(text).map_err(|e| locate::parse_error(text, file, &e))?;
        let mut config = Config {
            identity: raw.identity,
            inbound: raw.inbound,
            outbound: raw.outbound,
            admin: raw.admin,
            runtime: raw.runtime,
            limits: raw.limits,
            shutdown: raw.shutdown,
            webhooks: raw.webhooks,
            assertion: raw.assertion,
        };
        config.resolve_paths(base);
        config
            .validate()
            .map_err(|refused| locate::validation_error(text, file, refused))?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            // An empty path is a file not given (the Workload API is used).
            if p.is_relative() && !path_is_empty(p) {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.identity.cert);
        resolve(&mut self.identity.key);
        resolve(&mut self.identity.bundle);
        self.identity
            .federated_bundles
            .values_mut()
            .for_each(resolve);
        if let Some(out) = &mut self.outbound {
            egress::resolve_paths(&mut out.egress, base);
        }
        if let Some(jwt) = self.inbound.as_mut().and_then(|i| i.jwt.as_mut()) {
            jwt.resolve_paths(base);
        }
        webhook::resolve_paths(self, base);
        assertion::resolve_paths(self, base);
    }

    /// Cross-field rules serde cannot express. On failure returns the
    /// message and a piece of text to locate the offending line.
    pub fn validate(&self) -> Result<(), (String, Option<String>)> {
        if !(10..=3_600_000).contains(&self.runtime.poll_interval_ms) {
            return Err((
                "runtime.poll_interval_ms must be between 10 and 3600000".into(),
                Some("poll_interval_ms".into()),
            ));
        }
        self.limits.validate()?;
        let endpoint_env = std::env::var(ENDPOINT_ENV).ok();
        workload_api::validate(&self.identity, endpoint_env.as_deref())?;
        if self.runtime.workers == 0 {
            return Err((
                "runtime.workers must be at least 1".into(),
                Some("workers".into()),
            ));
        }
        if let Some(out) = &self.outbound {
            if !(1..=64).contains(&out.h2_connections_per_peer) {
                return Err((
                    "outbound.h2_connections_per_peer must be between 1 and 64".into(),
                    Some("h2_connections_per_peer".into()),
                ));
            }
        }
        for td in self.identity.federated_bundles.keys() {
            crate::sidecar::identity::validate_trust_domain(td).map_err(|e| {
                (
                    format!("federated_bundles: trust domain {td:?}: {e}"),
                    Some(td.clone()),
                )
            })?;
        }
        if self.inbound.is_none() && self.outbound.is_none() {
            return Err((
                "nothing to do: configure `inbound`, `outbound`, or both".into(),
                None,
            ));
        }
        if let Some(inbound) = &self.inbound {
            validate_strip_headers("inbound", &inbound.strip_headers)?;
            if let Some(jwt) = &inbound.jwt {
                jwt.validate()?;
            }
        }
        if let Some(outbound) = &self.outbound {
            validate_strip_headers("outbound", &outbound.strip_headers)?;
        }
        tcp::validate(self)?;
        egress::validate(self)?;
        webhook::validate(self)?;
        assertion::validate(self)?;
        let Some(out) = &self.outbound else {
            return Ok(());
        };
        let mut hosts = std::collections::HashSet::new();
        for (i, route) in out.routes.iter().enumerate() {
            let at = |m: String| {
                (
                    format!("outbound.routes[{i}]: {m}"),
                    Some(route.peer.clone()),
                )
            };
            match (&route.host, &route.listen) {
                (Some(_), Some(_)) => {
                    return Err(at("give either `host` or `listen`, not both".into()))
                }
                (None, None) => return Err(at(
                    "give `host` (matched on outbound.listen) or `listen` (a listener of its own)"
                        .into(),
                )),
                (Some(host), None) => {
                    if out.listen.is_none() {
                        return Err(at(format!("route for host {host:?} needs outbound.listen")));
                    }
                    if host.is_empty() || host.contains(['/', ' ', '@']) {
                        return Err(at(format!("host {host:?} is not a host or host:port")));
                    }
                    if !hosts.insert(host.to_ascii_lowercase()) {
                        return Err((
                            format!("outbound.routes[{i}]: host {host:?} is declared twice"),
                            Some(host.clone()),
                        ));
                    }
                }
                (None, Some(_)) => {}
            }
            if route.identity.is_root() {
                return Err(at(format!(
                    "identity {} names a trust domain, not a workload",
                    route.identity
                )));
            }
            match route.peer.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0) => {}
                _ => return Err(at(format!("peer {:?} must be host:port", route.peer))),
            }
        }
        Ok(())
    }
}

/// `<direction>.strip_headers`: HTTP header names (any case), never the
/// headers that frame or route the request.
fn validate_strip_headers(
    direction: &str,
    names: &[String],
) -> Result<(), (String, Option<String>)> {
    for name in names {
        let at = |rule: &str| {
            Err((
                format!("{direction}.strip_headers: {name:?} {rule}"),
                Some(name.clone()),
            ))
        };
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Err(_) => return at("is not an HTTP header name"),
            Ok(h) if crate::sidecar::headers::is_protected(h.as_str()) => {
                return at("frames or routes the request and cannot be removed")
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
