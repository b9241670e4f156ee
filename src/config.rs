//! Configuration: one YAML file (or the flags of the single-route quick
//! start) turned into one typed, validated [`Config`]. Reading the file is
//! kept apart from building the struct, so the builder is unit-testable.

use crate::identity::SpiffeId;
use crate::tls::UpstreamProtocol;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Default admin listener (metrics, health, config view).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:15000";

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
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// PEM file: our X509-SVID, leaf first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file: the SVID's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// PEM file: the CA certificates of our own trust domain.
    pub bundle: PathBuf,
    /// Extra trust domains (federation): trust domain name -> PEM bundle.
    #[serde(default)]
    pub federated_bundles: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    /// Where peers connect with mTLS.
    pub listen: SocketAddr,
    /// The local application (plain HTTP/1.1), normally on loopback.
    pub app: SocketAddr,
    /// The allow matrix (YAML). Without one, every authenticated peer is
    /// allowed; with one, anything it does not allow is denied.
    #[serde(default)]
    pub policy: Option<PathBuf>,
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
    /// Declared destinations. Anything else is refused.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
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
            listen: DEFAULT_ADMIN_ADDR.parse().expect("static address"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Tokio worker threads; 1 runs a single-threaded runtime.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// How often the policy, SVID, key and bundle files are re-read, in
    /// milliseconds (SIGHUP re-reads at once).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            workers: default_workers(),
            poll_interval_ms: default_poll_interval_ms(),
        }
    }
}

fn default_poll_interval_ms() -> u64 {
    1000
}

fn default_workers() -> usize {
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
        let raw: FileConfig = serde_norway::from_str(text).map_err(|e| match e.location() {
            Some(loc) => {
                let message = strip_location(&e.to_string());
                // For a value refused by its own parser (a SPIFFE ID, say)
                // the parser reports the enclosing mapping; the line of the
                // quoted value itself is more useful.
                let line = quoted_value(&message)
                    .and_then(|v| line_of_from(text, v, loc.line()))
                    .unwrap_or(loc.line());
                ConfigError::At {
                    file: file.into(),
                    line,
                    column: loc.column(),
                    message,
                }
            }
            None => ConfigError::Invalid {
                file: file.into(),
                message: e.to_string(),
            },
        })?;
        let mut config = Config {
            identity: raw.identity,
            inbound: raw.inbound,
            outbound: raw.outbound,
            admin: raw.admin,
            runtime: raw.runtime,
        };
        config.resolve_paths(base);
        config.validate().map_err(|(message, needle)| {
            match needle.and_then(|n| line_of(text, &n)) {
                Some(line) => ConfigError::At {
                    file: file.into(),
                    line,
                    column: 1,
                    message,
                },
                None => ConfigError::Invalid {
                    file: file.into(),
                    message,
                },
            }
        })?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
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
        if self.runtime.workers == 0 {
            return Err((
                "runtime.workers must be at least 1".into(),
                Some("workers".into()),
            ));
        }
        for td in self.identity.federated_bundles.keys() {
            crate::identity::validate_trust_domain(td).map_err(|e| {
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

/// serde_norway appends " at line L column C"; we print the location first.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// The first double-quoted piece of an error message.
fn quoted_value(msg: &str) -> Option<&str> {
    let start = msg.find('"')? + 1;
    let len = msg[start..].find('"')?;
    Some(&msg[start..start + len]).filter(|v| !v.is_empty())
}

/// 1-based line of the first occurrence of `needle` at or after line `from`.
fn line_of_from(text: &str, needle: &str, from: usize) -> Option<usize> {
    let skip: usize = text
        .split_inclusive('\n')
        .take(from.saturating_sub(1))
        .map(str::len)
        .sum();
    let pos = text.get(skip..)?.find(needle)? + skip;
    Some(text[..pos].matches('\n').count() + 1)
}

/// 1-based line of the last occurrence of `needle` (the last, because a
/// duplicate is the later one).
fn line_of(text: &str, needle: &str) -> Option<usize> {
    let pos = text.rfind(needle)?;
    Some(text[..pos].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests;
