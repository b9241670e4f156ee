//! End-user tokens on the inbound: the authenticate step, and the 401 a
//! request gets when an allow rule would take it with a valid token.

use super::{ruling, Inbound};
use crate::sidecar::jwt::Authn;
use crate::sidecar::metrics::Disposition;
use crate::sidecar::policy;
use crate::sidecar::proxy::outcome::Refusal;
use http::{HeaderValue, StatusCode};

impl Inbound {
    /// Authenticate: the end-user tokens the request carries, verified
    /// (`jwt/`); nothing is refused here, authorization decides.
    pub(super) fn authenticate(&self, headers: &http::HeaderMap) -> Authn {
        match &self.jwt {
            Some(jwt) => jwt.authenticate(headers, crate::sidecar::tls::unix_now()),
            None => Authn::default(),
        }
    }

    /// A 401 for a request an allow rule would take with a valid token:
    /// `WWW-Authenticate` as RFC 6750 §3 says (no error code when no token
    /// was sent, `invalid_token` when one was refused).
    pub(super) fn unauthenticated<'p>(&self, rule: &'p policy::Rule, authn: &Authn) -> Refusal<'p> {
        let realm = self.jwt.as_ref().map_or("meshguard", |j| j.realm());
        let provider = rule.jwt().map_or("", |j| &*j.provider);
        let (reason, challenge) = match authn.error_for(provider) {
            Some(e) => (
                e.reason(),
                format!(
                    "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{e}\""
                ),
            ),
            None => ("token required", format!("Bearer realm=\"{realm}\"")),
        };
        let denied = ruling(Disposition::Deny, reason, Some(rule.name()));
        let refusal = Refusal::by(denied, StatusCode::UNAUTHORIZED, reason);
        match HeaderValue::try_from(challenge) {
            Ok(value) => refusal.challenge(value),
            Err(_) => refusal,
        }
    }
}
