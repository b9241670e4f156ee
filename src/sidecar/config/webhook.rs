//! The `webhooks` section of the configuration (`assertion` is in
//! `config/assertion.rs`).

use super::Config;
use crate::sidecar::webhook::Format;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `webhooks`: routes whose requests carry a provider's signature, and
/// the listener for callers without a client certificate.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// A listener that accepts callers without a client certificate; only
    /// the routes below are served there (anything else: 404).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// TLS with our SVID as the server certificate (default). `false`
    /// serves plain HTTP: only behind a trusted ingress that terminates TLS.
    #[serde(default = "yes")]
    pub tls: bool,
    /// The replay store's append-only file. Without one, replays are
    /// refused only until the sidecar restarts.
    #[serde(default)]
    pub replay_store: Option<PathBuf>,
    /// Most ids kept at once; beyond, new webhooks get 503.
    #[serde(default = "default_max_ids")]
    pub max_replay_ids: usize,
    pub routes: Vec<WebhookRoute>,
}

/// One declared webhook route.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookRoute {
    /// Names the route in metrics, audit lines and replay keys.
    pub name: String,
    /// Requests whose path starts with this (`/stripe/`).
    pub path_prefix: String,
    /// Only this Host (any port), if given.
    #[serde(default)]
    pub host: Option<String>,
    /// Only on this inbound port (the mesh inbound), if given.
    #[serde(default)]
    pub port: Option<u16>,
    pub format: Format,
    /// Files of secrets, one per line (during a rotation: both).
    pub secrets: Vec<PathBuf>,
    /// Seconds a signed timestamp may be away from now (default 300).
    #[serde(default = "default_tolerance")]
    pub tolerance_s: u64,
    #[serde(default)]
    pub on_replay: OnReplay,
    /// Largest body buffered for verification; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

/// What a replayed webhook gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReplay {
    /// 409 Conflict.
    #[default]
    Reject,
    /// 200 without forwarding, so the provider stops retrying.
    Accept,
}

fn yes() -> bool {
    true
}
fn default_max_ids() -> usize {
    1_000_000
}
fn default_tolerance() -> u64 {
    300
}
fn default_max_body() -> usize {
    1024 * 1024
}

type Invalid = (String, Option<String>);

pub(super) fn resolve_paths(config: &mut Config, base: &std::path::Path) {
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(w) = &mut config.webhooks {
        w.replay_store.iter_mut().for_each(resolve);
        w.routes
            .iter_mut()
            .flat_map(|r| r.secrets.iter_mut())
            .for_each(resolve);
    }
}

pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    let Some(w) = &config.webhooks else {
        return Ok(());
    };
    if w.listen.is_some() && config.inbound.is_none() {
        return Err((
            "webhooks.listen needs `inbound` (its app)".into(),
            Some("webhooks:".into()),
        ));
    }
    if w.max_replay_ids == 0 {
        return Err((
            "webhooks.max_replay_ids must be at least 1".into(),
            Some("max_replay_ids".into()),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, r) in w.routes.iter().enumerate() {
        let at = |m: String| Err((format!("webhooks.routes[{i}]: {m}"), Some(r.name.clone())));
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return at(format!(
                "name {:?} must be letters, digits, '-', '_' or '.'",
                r.name
            ));
        }
        if !names.insert(&r.name) {
            return at(format!("name {:?} is declared twice", r.name));
        }
        if !r.path_prefix.starts_with('/') {
            return at(format!(
                "path_prefix {:?} must start with '/'",
                r.path_prefix
            ));
        }
        if r.secrets.is_empty() {
            return at("give at least one secret file".into());
        }
        if !(1..=86_400).contains(&r.tolerance_s) {
            return at("tolerance_s must be between 1 and 86400".into());
        }
        if !(1..=64 * 1024 * 1024).contains(&r.max_body_bytes) {
            return at("max_body_bytes must be between 1 and 67108864".into());
        }
        if let Format::Generic(g) = &r.format {
            let names = [
                Some(&g.header),
                g.timestamp_header.as_ref(),
                g.id_header.as_ref(),
            ];
            for name in names.into_iter().flatten() {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return at(format!("{name:?} is not an HTTP header name"));
                }
            }
            let needs_ts = g.signed != crate::sidecar::webhook::Signed::Body;
            if needs_ts && g.timestamp_header.is_none() {
                return at(
                    "generic: `signed` includes the timestamp: give timestamp_header".into(),
                );
            }
            if g.signed == crate::sidecar::webhook::Signed::IdTimestampBody && g.id_header.is_none()
            {
                return at("generic: `signed` includes the id: give id_header".into());
            }
        }
        // Secrets are read at start too (app.rs); an unreadable or
        // malformed file stops it with the file and line.
    }
    Ok(())
}
