//! Signature-verified routes on the mesh inbound: a webhook that reaches
//! the pod through an ingress that is a mesh peer arrives over mTLS, and
//! the ingress's identity proves only where it came from, not that the
//! provider sent it. A request matching a declared route (host, port as
//! the caller dialled it, path prefix) must pass the same check as on
//! `webhooks.listen`: same statuses, counters and audit lines. The step
//! runs after the policy authorized the request and before it is
//! forwarded; anything else streams on untouched.

use super::deliver::DeliverError;
use super::route::{Verdict, Verified, Webhooks};
use crate::sidecar::proxy::outcome::Refusal;
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode};
use hyper::body::Incoming;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::Arc;

/// A request body after the webhook step.
pub enum Body {
    /// Not on a webhook route: streamed to the app as it comes.
    Stream(Incoming),
    /// A verified webhook: these exact bytes go to the app.
    Verified(Hook),
}

/// A verified webhook on the mesh inbound, with what delivers it.
pub struct Hook {
    webhooks: Arc<Webhooks>,
    route: String,
    verified: Verified,
}

/// Where a mesh request is going, as the routes match it.
pub struct Target<'a> {
    pub headers: &'a HeaderMap,
    /// The inbound port the caller dialled.
    pub port: u16,
    /// The normalised path.
    pub path: &'a str,
    /// The request asks for a protocol upgrade.
    pub upgrade: bool,
}

impl Webhooks {
    /// The webhook step of the mesh inbound: on a declared route, the
    /// signature check (body bounded, 413 beyond), counted and audited as
    /// on `webhooks.listen`; elsewhere the body is passed on as it is.
    pub async fn check_inbound(
        self: &Arc<Self>,
        target: Target<'_>,
        peer_addr: &(dyn Display + Sync),
        body: Incoming,
    ) -> Result<Body, Refusal<'static>> {
        let host = target
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let Some(route) = self.route_for(host, Some(target.port), target.path) else {
            return Ok(Body::Stream(body));
        };
        let name = route.cfg.name.as_str();
        if target.upgrade {
            self.record(name, peer_addr, "upgrade", 400);
            let message = "a webhook route does not upgrade";
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "webhook upgrade",
                message,
            ));
        }
        // Boxed: only webhook requests pay for the buffering future.
        match Box::pin(self.check(route, target.headers, body)).await {
            Verdict::Forward(verified) => Ok(Body::Verified(Hook {
                webhooks: self.clone(),
                route: name.to_owned(),
                verified,
            })),
            Verdict::Refuse(status, reason, message) => {
                self.record(name, peer_addr, reason, status.as_u16());
                Err(Refusal::new(status, inbound_reason(status), message))
            }
        }
    }
}

impl Hook {
    /// The route's name (the `x-meshguard-webhook-route` the app gets).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Delivers the verified bytes to `app` with the rewritten `parts`;
    /// the replay key is committed or forgotten by the app's answer.
    pub async fn deliver(
        self,
        parts: Parts,
        peer_addr: &(dyn Display + Sync),
        app: SocketAddr,
    ) -> Result<Response<Incoming>, DeliverError> {
        let Hook {
            webhooks,
            route,
            verified,
        } = self;
        Box::pin(webhooks.deliver(&route, peer_addr, app, parts, verified)).await
    }
}

/// The inbound request record's bounded reason for a webhook refusal (the
/// precise one is the webhook counter's `result`).
fn inbound_reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::UNAUTHORIZED => "webhook signature refused",
        StatusCode::CONFLICT | StatusCode::OK => "webhook replay",
        StatusCode::PAYLOAD_TOO_LARGE => "webhook body too large",
        StatusCode::SERVICE_UNAVAILABLE => "webhook not admitted now",
        _ => "webhook body not received",
    }
}
