//! How one request ended, as one typed value, and the one place that
//! records it: the request counters and the audit line together, for both
//! directions, so the metrics and the log cannot disagree.

use super::{grpc, refusal_body, refusal_response, ProxyBody, RefusalMessage};
use crate::sidecar::audit::{self, RequestRecord};
use crate::sidecar::identity::SpiffeId;
use crate::sidecar::metrics::{Disposition, Metrics, RequestCounters};
use bytes::Bytes;
use http::{Response, StatusCode};
use std::fmt::Display;
use std::time::Instant;

/// The outcome of one request: what it is counted and audited as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOutcome<'a> {
    /// The status sent back (meshguard's own for a refusal).
    pub status: StatusCode,
    pub disposition: Disposition,
    /// Why, as a bounded label (`allowed by policy`, `local app unavailable`, ...).
    pub reason: &'static str,
    /// The policy rule that decided, if any.
    pub rule: Option<&'a str>,
}

/// What a request was granted (or refused) before its response exists:
/// the outcome but for the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ruling<'a> {
    pub disposition: Disposition,
    pub reason: &'static str,
    pub rule: Option<&'a str>,
}

impl<'a> Ruling<'a> {
    /// The response this ruling led to, with the outcome it records.
    pub fn answer(self, response: Response<ProxyBody>) -> Answer<'a> {
        let outcome = RequestOutcome {
            status: response.status(),
            disposition: self.disposition,
            reason: self.reason,
            rule: self.rule,
        };
        Answer { response, outcome }
    }

    /// The same ruling, recorded with another reason (the app or peer
    /// failed after the request was allowed).
    pub fn because(self, reason: &'static str) -> Ruling<'a> {
        Ruling { reason, ..self }
    }
}

/// A response on its way back with the outcome it will be recorded as.
/// The outcome's status is the response's, read once when it is made.
pub struct Answer<'a> {
    pub response: Response<ProxyBody>,
    pub outcome: RequestOutcome<'a>,
}

/// A request meshguard refuses itself: the status and plain-text body of
/// its refusal and how it is recorded. Small (the response is made only
/// when it is recorded), so the steps can return it as their error.
#[derive(Debug)]
pub struct Refusal<'a> {
    status: StatusCode,
    ruling: Ruling<'a>,
    body: Bytes,
    /// One header the refusal carries: `Retry-After` of a 429, or
    /// `WWW-Authenticate` of a 401 (RFC 6750). Boxed: rare, and every step
    /// returns a `Refusal` as its error, which should stay small.
    header: Option<Box<(http::HeaderName, http::HeaderValue)>>,
}

impl Refusal<'static> {
    /// Refused before or without a rule: recorded as denied with `reason`,
    /// answered with `message`.
    pub fn new(status: StatusCode, reason: &'static str, message: impl Display) -> Self {
        let denied = Ruling {
            disposition: Disposition::Deny,
            reason,
            rule: None,
        };
        Refusal::by(denied, status, message)
    }
}

impl<'a> Refusal<'a> {
    /// Refused as `ruling` says (a policy denial names its rule).
    pub fn by(ruling: Ruling<'a>, status: StatusCode, message: impl Display) -> Self {
        Refusal {
            status,
            ruling,
            body: refusal_body(message),
            header: None,
        }
    }

    /// The same refusal, telling the caller when to try again.
    pub fn retry_after(self, seconds: u32) -> Self {
        let value = http::HeaderValue::from(seconds);
        Refusal {
            header: Some(Box::new((http::header::RETRY_AFTER, value))),
            ..self
        }
    }

    /// The same refusal with a `WWW-Authenticate` challenge.
    pub fn challenge(self, value: http::HeaderValue) -> Self {
        Refusal {
            header: Some(Box::new((http::header::WWW_AUTHENTICATE, value))),
            ..self
        }
    }
}

impl<'a> From<Refusal<'a>> for Answer<'a> {
    fn from(r: Refusal<'a>) -> Answer<'a> {
        let mut response = refusal_response(r.status, r.body);
        if let Some(header) = r.header {
            let (name, value) = *header;
            response.headers_mut().insert(name, value);
        }
        r.ruling.answer(response)
    }
}

/// Who asked for what: the request's side of the audit line.
pub struct RequestFacts<'a> {
    /// The peer's address: the caller inbound, the peer sidecar outbound.
    pub peer_addr: Option<&'a str>,
    pub peer_id: Option<&'a SpiffeId>,
    pub method: &'a str,
    /// The normalised path that was authorized (no query string).
    pub path: &'a str,
    pub start: Began,
    /// The verified end-user token's `sub` and `iss`, if any.
    pub token_sub: Option<&'a str>,
    pub token_iss: Option<&'a str>,
}

/// When a request began, and whether it is a gRPC call (whose refusals
/// must be gRPC-shaped): taken from the request head on arrival.
#[derive(Debug, Clone, Copy)]
pub struct Began {
    pub at: Instant,
    pub grpc: bool,
}

impl Began {
    pub fn now(headers: &http::HeaderMap) -> Began {
        Began {
            at: Instant::now(),
            grpc: grpc::is_grpc(headers),
        }
    }
}

/// Counts the request on `counters` (which name its direction) and writes
/// its audit line; returns the response to send.
pub fn record(
    metrics: &Metrics,
    counters: &RequestCounters,
    facts: &RequestFacts<'_>,
    answer: Answer<'_>,
) -> Response<ProxyBody> {
    let duration = facts.start.at.elapsed();
    let outcome = &answer.outcome;
    let status = outcome.status.as_u16();
    metrics.record_request(
        counters,
        outcome.disposition,
        status,
        duration.as_secs_f64(),
    );
    audit::request(&RequestRecord {
        direction: counters.direction(),
        peer_addr: facts.peer_addr,
        peer_id: facts.peer_id,
        method: facts.method,
        path: facts.path,
        decision: outcome.disposition,
        rule: outcome.rule,
        status,
        duration,
        reason: outcome.reason,
        token_sub: facts.token_sub,
        token_iss: facts.token_iss,
    });
    let mut response = answer.response;
    if facts.start.grpc {
        if let Some(RefusalMessage(message)) = response.extensions_mut().remove() {
            let message = String::from_utf8_lossy(&message);
            response = grpc::refusal(outcome.status, &message);
        }
    }
    response
}
