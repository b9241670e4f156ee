//! `identity.workload_api`: our SVID and bundles streamed from a SPIFFE
//! Workload API endpoint (a SPIRE agent's unix socket) instead of files,
//! and the rule that exactly one of the two identity sources is given.

use super::IdentityConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The variable the SPIFFE standard names for the endpoint's address.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// Where the Workload API is, and which SVID to take.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadApiConfig {
    /// `unix:///path/to/socket`. Absent: `SPIFFE_ENDPOINT_SOCKET` at start.
    #[serde(default)]
    pub socket: Option<String>,
    /// When the agent offers several SVIDs, the one with this hint;
    /// without it, the first (the agent's order).
    #[serde(default)]
    pub hint: Option<String>,
}

impl WorkloadApiConfig {
    /// The socket path of `socket`, or of the environment's value when the
    /// file gives none. Pure: the caller reads the environment.
    pub fn socket_path(&self, env: Option<&str>) -> Result<PathBuf, String> {
        let (value, from) = match (&self.socket, env) {
            (Some(v), _) => (v.as_str(), "identity.workload_api.socket"),
            (None, Some(v)) => (v, ENDPOINT_ENV),
            (None, None) => {
                return Err(format!(
                    "identity.workload_api needs `socket` (unix:///path) or the {ENDPOINT_ENV} variable"
                ))
            }
        };
        parse_unix_uri(value).map_err(|why| format!("{from} {value:?}: {why}"))
    }
}

/// `unix:///abs/path` or `unix:/abs/path` (the forms of the SPIFFE
/// Workload Endpoint standard); TCP endpoints are not supported.
pub fn parse_unix_uri(value: &str) -> Result<PathBuf, &'static str> {
    let Some(rest) = value.strip_prefix("unix:") else {
        return Err(if value.starts_with("tcp:") {
            "TCP endpoints are not supported; use the agent's unix socket"
        } else {
            "must be a unix:///path URI"
        });
    };
    let path = match rest.strip_prefix("//") {
        // An authority is not allowed: `unix://host/path` names no file.
        Some(p) if p.starts_with('/') => p,
        Some(_) => return Err("must be unix:///path (no host part)"),
        None => rest,
    };
    if !path.starts_with('/') {
        return Err("the socket path must be absolute");
    }
    if path.contains(['?', '#']) {
        return Err("a query or fragment is not allowed");
    }
    if path.len() == 1 || path.ends_with('/') {
        return Err("the path must name a socket file");
    }
    Ok(PathBuf::from(path))
}

fn given(p: &Path) -> bool {
    !p.as_os_str().is_empty()
}

/// Exactly one identity source: all three files, or the Workload API
/// (with a usable socket). `env` is `SPIFFE_ENDPOINT_SOCKET`'s value.
pub(super) fn validate(
    identity: &IdentityConfig,
    env: Option<&str>,
) -> Result<(), (String, Option<String>)> {
    let files = [
        ("cert", &identity.cert),
        ("key", &identity.key),
        ("bundle", &identity.bundle),
    ];
    let any_file = files.iter().any(|(_, p)| given(p));
    match &identity.workload_api {
        Some(api) => {
            let at = Some("workload_api".to_owned());
            if any_file {
                return Err((
                    "identity: give either the cert/key/bundle files or workload_api, not both"
                        .into(),
                    at,
                ));
            }
            if !identity.federated_bundles.is_empty() {
                return Err((
                    "identity.federated_bundles cannot be used with workload_api: the agent streams federated bundles".into(),
                    Some("federated_bundles".into()),
                ));
            }
            api.socket_path(env).map(|_| ()).map_err(|m| (m, at))
        }
        None => {
            if !any_file {
                return Err((
                    "identity: give cert, key and bundle files, or workload_api (a SPIRE agent's socket)".into(),
                    Some("identity:".into()),
                ));
            }
            match files.iter().find(|(_, p)| !given(p)) {
                Some((name, _)) => Err((
                    format!("identity.{name} is missing (cert, key and bundle go together)"),
                    Some("identity:".into()),
                )),
                None => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
