//! A [`Config`] built from a handful of values rather than a file: the
//! single-route quick start of `meshguard run --cert ...` and the demo's
//! two sidecars. Everything not given here takes the file's defaults.

use super::{
    AdminConfig, Config, IdentityConfig, InboundConfig, OutboundConfig, RouteConfig, RuntimeConfig,
    DEFAULT_ADMIN,
};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The few settings of a sidecar started without a config file.
#[derive(Debug, Clone)]
pub struct QuickStart {
    /// Our SVID (PEM).
    pub cert: PathBuf,
    /// Our SVID's private key (PEM).
    pub key: PathBuf,
    /// The CA bundle of our trust domain (PEM).
    pub bundle: PathBuf,
    pub inbound: Option<QuickInbound>,
    pub outbound: Option<QuickOutbound>,
    /// The admin listener ([`DEFAULT_ADMIN`] if `None`).
    pub admin: Option<SocketAddr>,
}

/// The inbound side: mTLS on `listen`, forwarded to `app`.
#[derive(Debug, Clone)]
pub struct QuickInbound {
    pub listen: SocketAddr,
    pub app: SocketAddr,
    pub policy: Option<PathBuf>,
}

/// The outbound side: one declared route, either on a listener of its own
/// (`route.listen`) or matched by Host on `listen`.
#[derive(Debug, Clone)]
pub struct QuickOutbound {
    pub listen: Option<SocketAddr>,
    pub route: RouteConfig,
}

/// The quick start's settings do not make a valid config.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct QuickStartError(String);

impl QuickStart {
    /// The config, not yet validated (the demo's are valid by
    /// construction).
    pub fn into_config(self) -> Config {
        Config {
            identity: IdentityConfig {
                cert: self.cert,
                key: self.key,
                bundle: self.bundle,
                federated_bundles: Default::default(),
                workload_api: None,
            },
            inbound: self.inbound.map(|i| InboundConfig {
                listen: i.listen,
                app: i.app,
                policy: i.policy,
                strip_headers: Vec::new(),
                keep_underscore_headers: false,
                tcp_ports: Vec::new(),
                app_protocol: Default::default(),
                jwt: None,
            }),
            outbound: self.outbound.map(|o| OutboundConfig {
                listen: o.listen,
                routes: vec![o.route],
                ..Default::default()
            }),
            admin: AdminConfig {
                listen: self.admin.unwrap_or(DEFAULT_ADMIN),
            },
            runtime: RuntimeConfig::default(),
            limits: Default::default(),
            shutdown: Default::default(),
            webhooks: None,
            assertion: None,
        }
    }

    /// As [`QuickStart::validated`], with the identity from the Workload API
    /// at `SPIFFE_ENDPOINT_SOCKET` instead of the (empty) file paths.
    pub fn validated_from_workload_api(self) -> Result<Config, QuickStartError> {
        let mut config = self.into_config();
        config.identity.workload_api = Some(super::WorkloadApiConfig::default());
        config.validate().map_err(|(msg, _)| QuickStartError(msg))?;
        Ok(config)
    }

    /// The config, checked by the same rules as a file's.
    pub fn validated(self) -> Result<Config, QuickStartError> {
        let config = self.into_config();
        config.validate().map_err(|(msg, _)| QuickStartError(msg))?;
        Ok(config)
    }
}
