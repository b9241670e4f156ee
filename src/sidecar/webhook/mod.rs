//! Webhook signatures: a provider that holds no SVID proves an event only
//! by a signature over the raw body (and, for most, a timestamp). Each
//! format is a pure function of (headers, body, secrets, now) that gives
//! the id replay protection keys on, or a typed refusal. Secrets are
//! compared in constant time (aws-lc-rs `hmac`/`constant_time`, Ed25519
//! through aws-lc-rs `signature`).
//!
//! The rest of the module: `replay` (ids kept for the tolerance window in
//! memory and in an fsynced append-only file), `secrets` (the secret
//! files, hot-reloaded), `listener` (the listener for callers without a
//! client certificate, serving only declared routes), `route` (one
//! declared route's check, shared by that listener and the mesh inbound),
//! `deliver` (the verified bytes to the app; the replay key committed or
//! forgotten by its answer), `mesh` (the same check on the mesh inbound,
//! for webhooks an ingress peer forwards).

pub mod deliver;
mod formats;
pub mod listener;
pub mod mesh;
pub mod replay;
pub mod route;
pub mod secrets;

pub use formats::verify;
/// The signature-header parsers, for the fuzz targets.
pub use formats::{
    parse_generic, parse_github, parse_slack, parse_standard, parse_stripe, StandardSig,
};
pub use secrets::{Secret, SecretSet};

/// Why a webhook was refused. Its [`Reject::as_str`] is the bounded
/// `reason` label of the metrics and the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("signature header missing")]
    MissingHeader,
    #[error("a signature header was sent more than once")]
    DuplicateHeader,
    #[error("signature header malformed")]
    MalformedHeader,
    #[error("no signature matches")]
    BadSignature,
    #[error("timestamp outside the tolerance (too old)")]
    Stale,
    #[error("timestamp outside the tolerance (in the future)")]
    Future,
    #[error("no secret configured for this scheme")]
    NoSecret,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::MissingHeader => "missing_header",
            Reject::DuplicateHeader => "duplicate_header",
            Reject::MalformedHeader => "malformed_header",
            Reject::BadSignature => "bad_signature",
            Reject::Stale => "stale",
            Reject::Future => "future",
            Reject::NoSecret => "no_secret",
        }
    }
}

/// A verified webhook: what replay protection keys on and how long the
/// key must be kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The event id where the format signs one (Standard Webhooks), else
    /// the matching signature (which is unique per timestamp and body).
    pub id: String,
    /// The signed timestamp, where the format has one.
    pub timestamp: Option<i64>,
}

/// The provider formats.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `Stripe-Signature: t=…,v1=…` over `t.body`, HMAC-SHA256 hex.
    Stripe,
    /// `X-Hub-Signature-256: sha256=…` over the body. No timestamp.
    Github,
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature` (`v1,` HMAC
    /// or `v1a,` Ed25519, base64) over `id.timestamp.body`.
    StandardWebhooks,
    /// `X-Slack-Signature: v0=…` over `v0:timestamp:body`, with
    /// `X-Slack-Request-Timestamp`.
    Slack,
    /// Any HMAC scheme described by [`Generic`].
    Generic(Generic),
}

/// A generic HMAC scheme.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Generic {
    /// The header carrying the signature.
    pub header: String,
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub encoding: Encoding,
    /// Text before the signature in the header (`sha256=`), if any.
    #[serde(default)]
    pub prefix: String,
    /// A header with the unix timestamp (seconds) that is signed too.
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// A header with an event id that is signed too.
    #[serde(default)]
    pub id_header: Option<String>,
    /// What is signed: `body`, `timestamp.body` or `id.timestamp.body`
    /// (the parts joined by `.`).
    #[serde(default)]
    pub signed: Signed,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Signed {
    #[default]
    #[serde(rename = "body")]
    Body,
    #[serde(rename = "timestamp.body")]
    TimestampBody,
    #[serde(rename = "id.timestamp.body")]
    IdTimestampBody,
}

/// Everything one verification needs besides the request.
pub struct Check<'a> {
    pub format: &'a Format,
    pub secrets: &'a SecretSet,
    /// Seconds a timestamp may be away from `now`, either way.
    pub tolerance: i64,
    /// Unix seconds.
    pub now: i64,
}

#[cfg(test)]
mod tests;

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    formats::hex(bytes)
}
