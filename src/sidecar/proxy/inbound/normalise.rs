//! The normalise step of the inbound: one Host, and the path in the form
//! the app will read it, or a 400.

use crate::sidecar::pathnorm::{normalize_path, NormalizedPath};
use crate::sidecar::proxy::canonical_host;
use crate::sidecar::proxy::outcome::Refusal;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{StatusCode, Uri};

/// Normalise, first half: one Host, the one authorized (HTTP/2's
/// :authority becomes the Host the HTTP/1.1 app reads). The URI leaves
/// `parts` (`rewrite` builds the app's), so the normalised path can borrow
/// it while `parts` goes on to the app: no per-request copy of the path.
pub(super) fn take_canonical_uri(parts: &mut Parts) -> Result<Uri, Refusal<'static>> {
    if let Err(reason) = canonical_host(parts) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "ambiguous host",
            reason,
        ));
    }
    Ok(std::mem::take(&mut parts.uri))
}

/// Normalise, second half: the path in the normal form the policy matches.
pub(super) fn normalise(uri: &Uri) -> Result<NormalizedPath<'_>, Refusal<'static>> {
    let raw = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/");
    normalize_path(raw).map_err(|e| {
        let message = format_args!("invalid request path: {e}");
        Refusal::new(StatusCode::BAD_REQUEST, "invalid path", message)
    })
}

/// The path as sent, for the audit line of a path that did not normalise.
pub(super) fn raw_path(uri: &Uri) -> &str {
    let raw = uri
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/");
    raw.split('?').next().unwrap_or("")
}
