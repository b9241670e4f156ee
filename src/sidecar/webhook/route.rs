//! The declared webhook routes at run time: which route a request takes,
//! and its check (body bound, signature, replay), counted and audited.

use super::replay::{self, ReplayStore, Reservation, Seen};
use super::secrets::{SecretError, SecretSlot};
use super::{verify, Check, Reject};
use crate::sidecar::config::{OnReplay, WebhookRoute, WebhooksConfig};
use crate::sidecar::metrics::Metrics;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use prometheus::{IntCounterVec, Opts};
use std::sync::Arc;

/// Why the webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhooks.routes {route}: {source}")]
    Secrets { route: String, source: SecretError },
    #[error(transparent)]
    Replay(#[from] replay::ReplayError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// One declared route with its secrets in force.
pub struct Route {
    pub cfg: WebhookRoute,
    secrets: SecretSlot,
}

/// Every declared route, the replay store and the counters.
pub struct Webhooks {
    routes: Vec<Route>,
    replay: Arc<ReplayStore>,
    counter: IntCounterVec,
    metrics: Arc<Metrics>,
}

/// How a webhook request ends at its check.
pub enum Verdict {
    /// Verified and first seen: forward this body, byte for byte, then
    /// settle its reservation ([`Webhooks::deliver`]).
    Forward(Verified),
    /// Answered by meshguard: status, reason label, message.
    Refuse(StatusCode, &'static str, String),
}

/// A verified webhook on its way to the app: the exact bytes that were
/// verified, and its replay key, reserved until the app has answered.
pub struct Verified {
    pub body: Bytes,
    pub(super) reservation: Reservation,
}

impl Webhooks {
    pub fn new(cfg: &WebhooksConfig, metrics: Arc<Metrics>) -> Result<Arc<Webhooks>, WebhookError> {
        let mut routes = Vec::new();
        for r in &cfg.routes {
            let secrets =
                SecretSlot::load(r.format.clone(), r.secrets.clone()).map_err(|source| {
                    WebhookError::Secrets {
                        route: r.name.clone(),
                        source,
                    }
                })?;
            routes.push(Route {
                cfg: r.clone(),
                secrets,
            });
        }
        let now = crate::sidecar::tls::unix_now();
        let replay = ReplayStore::open(cfg.replay_store.as_deref(), cfg.max_replay_ids, now)?;
        let counter = IntCounterVec::new(
            Opts::new(
                "meshguard_webhook_requests_total",
                "Requests on signature-verified webhook routes, by route and result",
            ),
            &["route", "result"],
        )?;
        metrics.registry().register(Box::new(counter.clone()))?;
        Ok(Arc::new(Webhooks {
            routes,
            replay: Arc::new(replay),
            counter,
            metrics,
        }))
    }

    /// The route of a request: the longest matching path prefix whose host
    /// and port (when given) match too.
    pub fn route_for(&self, host: Option<&str>, port: Option<u16>, path: &str) -> Option<&Route> {
        let host = host.map(|h| h.rsplit_once(':').map_or(h, |(n, _)| n));
        self.routes
            .iter()
            .filter(|r| path.starts_with(r.cfg.path_prefix.as_str()))
            .filter(|r| r.cfg.port.is_none() || r.cfg.port == port)
            .filter(|r| match (&r.cfg.host, host) {
                (None, _) => true,
                (Some(want), Some(h)) => want.eq_ignore_ascii_case(h),
                (Some(_), None) => false,
            })
            .max_by_key(|r| r.cfg.path_prefix.len())
    }

    /// Counts and audits one webhook's result.
    pub fn record(&self, route: &str, peer: &dyn std::fmt::Display, result: &str, status: u16) {
        self.counter.with_label_values(&[route, result]).inc();
        crate::sidecar::audit::webhook(route, peer, result, status);
    }

    /// Re-reads every route's secret files; a bad file keeps the secrets
    /// in force (logged and counted).
    pub fn reload_secrets(&self) {
        for r in &self.routes {
            match r.secrets.reload() {
                Ok(false) => {}
                Ok(true) => {
                    self.metrics.reload("webhook_secrets", true);
                    tracing::info!(kind = "webhook_secrets", route = %r.cfg.name, "webhook secrets reloaded");
                }
                Err(e) => {
                    self.metrics.reload("webhook_secrets", false);
                    tracing::error!(kind = "webhook_secrets", route = %r.cfg.name, error = %e, "webhook secrets not reloaded; keeping those in force");
                }
            }
        }
    }

    /// Polls the secret files every `interval` until shutdown.
    pub async fn watch_secrets(
        self: Arc<Self>,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            let this = self.clone();
            let _ = tokio::task::spawn_blocking(move || this.reload_secrets()).await;
        }
    }

    /// The check of one request on `route`: the body buffered up to the
    /// bound, the signature, then a reservation in the replay store.
    pub async fn check(&self, route: &Route, headers: &HeaderMap, body: Incoming) -> Verdict {
        let max = route.cfg.max_body_bytes;
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let too_large = || {
            let m = format!("body larger than {max} bytes");
            Verdict::Refuse(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", m)
        };
        if declared.is_some_and(|n| n > max as u64) {
            return too_large();
        }
        let body = match Limited::new(body, max).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Err(_) => {
                let m = "request body not received".to_owned();
                return Verdict::Refuse(StatusCode::BAD_REQUEST, "body_error", m);
            }
        };
        let now = crate::sidecar::tls::unix_now();
        let tolerance = route.cfg.tolerance_s as i64;
        let secrets = route.secrets.get();
        let check = Check {
            format: &route.cfg.format,
            secrets: &secrets,
            tolerance,
            now,
        };
        let verified = match verify(headers, &body, &check) {
            Ok(v) => v,
            Err(reject) => return unauthorized(reject),
        };
        let key = replay::key(&route.cfg.name, &verified.id);
        let expiry = verified.timestamp.unwrap_or(now).max(now) + tolerance;
        match self.replay.reserve(key, expiry, now) {
            Ok(Seen::New(reservation)) => Verdict::Forward(Verified { body, reservation }),
            Ok(Seen::Replay) => match route.cfg.on_replay {
                OnReplay::Reject => {
                    let m = "webhook already delivered".to_owned();
                    Verdict::Refuse(StatusCode::CONFLICT, "replay", m)
                }
                OnReplay::Accept => Verdict::Refuse(StatusCode::OK, "replay", String::new()),
            },
            // Never the configured 200: if the first delivery fails, the
            // provider must still retry.
            Ok(Seen::InFlight) => {
                let m = "the same webhook is being delivered; retry later".to_owned();
                Verdict::Refuse(StatusCode::SERVICE_UNAVAILABLE, "in_flight", m)
            }
            Err(e) => {
                tracing::error!(route = %route.cfg.name, error = %e, "replay store refused a webhook");
                let m = "replay store unavailable".to_owned();
                Verdict::Refuse(StatusCode::SERVICE_UNAVAILABLE, "replay_store", m)
            }
        }
    }

    /// The replay store (tests and the admin's view of it).
    pub fn replay(&self) -> &ReplayStore {
        &self.replay
    }
}

fn unauthorized(reject: Reject) -> Verdict {
    Verdict::Refuse(
        StatusCode::UNAUTHORIZED,
        reject.as_str(),
        format!("webhook refused: {reject}"),
    )
}
