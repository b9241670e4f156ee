//! The inbound's webhook step and its forward, each one call in
//! `Inbound::handle`, with the logic in `sidecar::webhook::mesh`: after
//! authorize, a request on a declared webhook route must carry a valid
//! provider signature (401/409/413/503 as on `webhooks.listen`); its
//! verified bytes then go to the app on a connection of their own, and the
//! app's answer settles the replay key.

use super::app::app_failed;
use super::{Inbound, Peer};
use crate::sidecar::headers;
use crate::sidecar::policy::Permit;
use crate::sidecar::proxy::outcome::{Answer, Refusal, Ruling};
use crate::sidecar::proxy::pool::UpstreamBody;
use crate::sidecar::webhook::listener::ROUTE_HEADER;
use crate::sidecar::webhook::mesh::{Body, Hook, Target};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Response};
use http_body_util::Either;
use hyper::body::Incoming;

impl Inbound {
    /// Webhook: on a declared route, the signature check; elsewhere (or
    /// without `webhooks`) the body as it came.
    pub(super) async fn verify_webhook(
        &self,
        peer: &Peer,
        parts: &Parts,
        path: &str,
        upgrade: bool,
        body: Incoming,
    ) -> Result<Body, Refusal<'static>> {
        let Some(webhooks) = &self.webhooks else {
            return Ok(Body::Stream(body));
        };
        let target = Target {
            headers: &parts.headers,
            port: peer.port,
            path,
            upgrade,
        };
        webhooks.check_inbound(target, &peer.addr_text, body).await
    }

    /// Forward, for a verified webhook: the rewritten request with the
    /// verified bytes and the route's name; the app's answer, or
    /// meshguard's 503/502 when it gives none.
    pub(super) async fn forward_webhook<'p>(
        mut parts: Parts,
        hook: Hook,
        peer: &Peer,
        _permit: Permit,
        ruling: Ruling<'p>,
    ) -> Answer<'p> {
        if let Ok(route) = HeaderValue::from_str(hook.route()) {
            parts
                .headers
                .insert(HeaderName::from_static(ROUTE_HEADER), route);
        }
        let app = peer.app.pool.addr();
        match hook.deliver(parts, &peer.addr_text, app).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers);
                let body = Either::Left(UpstreamBody::shared(body));
                ruling.answer(Response::from_parts(parts, body))
            }
            Err(e) => app_failed(ruling, e),
        }
    }
}
