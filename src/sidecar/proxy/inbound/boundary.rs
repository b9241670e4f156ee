//! The inbound's boundary steps beside authorisation, each a call of its
//! own in `Inbound::handle`, with its logic in its own module:
//! - strict paths (`pathnorm::strict`), before authorize: the path rules
//!   are matched against;
//! - limits (`sidecar::limits`), after authorize: 429 with `Retry-After`;
//! - claim headers (`policy::claims`), after authorize: untrusted copies
//!   removed, or the request refused.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use http_body_util::Either;

use super::{Inbound, Peer};
use crate::sidecar::audit;
use crate::sidecar::limits::Admitted;
use crate::sidecar::metrics::Disposition;
use crate::sidecar::pathnorm::strict::check_strict;
use crate::sidecar::policy::{OnUntrusted, Policy};
use crate::sidecar::proxy::outcome::{Answer, Refusal, Ruling};

impl Inbound {
    /// Strict paths: under the policy's `path_profile: strict*`, refuses
    /// spellings a double-decoding or Windows app would read as another
    /// path (400), and gives the path the rules match (lowercased under
    /// `strict_case_insensitive`).
    pub(super) fn strict_path<'a>(
        policy: Option<&Arc<Policy>>,
        path: &'a str,
    ) -> Result<Cow<'a, str>, Refusal<'static>> {
        let Some(profile) = policy.map(|p| p.boundary().path_profile) else {
            return Ok(Cow::Borrowed(path));
        };
        if !profile.is_strict() {
            return Ok(Cow::Borrowed(path));
        }
        check_strict(path, profile.case_insensitive()).map_err(|e| {
            let message = format_args!("invalid request path (strict profile): {e}");
            Refusal::new(StatusCode::BAD_REQUEST, "invalid path (strict)", message)
        })
    }

    /// Limits: every per-identity limit of the policy that applies to this
    /// request, or 429 naming the limit. `subject` is the verified end
    /// user's `sub`, once a token step provides one.
    pub(super) fn limit<'p>(
        &self,
        policy: Option<&'p Arc<Policy>>,
        peer: &Peer,
        allowed: &Ruling<'p>,
        subject: Option<&str>,
    ) -> Result<Admitted, Refusal<'p>> {
        let Some(policy) = policy else {
            return Ok(Admitted::default());
        };
        self.limiter
            .check(policy, &peer.id, allowed.rule, subject)
            .map_err(|limited| {
                self.metrics
                    .rate_limited(limited.limit, peer.counters.peer(), limited.kind());
                let reason = match limited.kind() {
                    "rate" => "rate limited",
                    _ => "concurrency limited",
                };
                let ruling = Ruling {
                    disposition: Disposition::Deny,
                    reason,
                    rule: Some(limited.limit),
                };
                let message = format_args!("{reason} ({}), retry later", limited.limit);
                Refusal::by(ruling, StatusCode::TOO_MANY_REQUESTS, message)
                    .retry_after(limited.retry_after())
            })
    }

    /// Claim headers: the ones `peer` may not assert are removed (audited
    /// with the header's name), or, under `on_untrusted: deny`, the request
    /// is refused with 403.
    pub(super) fn claim_headers<'p>(
        &self,
        policy: Option<&'p Arc<Policy>>,
        peer: &Peer,
        path: &str,
        headers: &mut HeaderMap,
    ) -> Result<(), Refusal<'p>> {
        let Some(claims) = policy.map(|p| &p.boundary().claims) else {
            return Ok(());
        };
        if claims.is_empty() {
            return Ok(());
        }
        let report = |header: &str, action: OnUntrusted| {
            self.metrics.untrusted_claim_header(header, action.as_str());
            audit::untrusted_claim_header(&peer.addr_text, &peer.id, header, action.as_str(), path);
        };
        claims
            .enforce(&peer.id, headers, |u| report(u.header, u.action))
            .map_err(|untrusted| {
                report(untrusted.header, untrusted.action);
                let message =
                    format_args!("header {} may not be sent by this caller", untrusted.header);
                Refusal::new(StatusCode::FORBIDDEN, "untrusted claim header", message)
            })
    }
}

/// Keeps a request's in-flight slots until its response body ends; a
/// response meshguard wrote itself (a refusal, an app failure) is complete
/// already, and the slots go with `admitted` here.
pub(super) fn hold_until_body_ends(mut answer: Answer<'_>, admitted: Admitted) -> Answer<'_> {
    if admitted.is_empty() {
        return answer;
    }
    if let Either::Left(body) = answer.response.body_mut() {
        body.hold_until_end(Box::new(admitted));
    }
    answer
}
