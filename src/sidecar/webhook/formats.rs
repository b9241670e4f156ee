//! The signature formats, each a pure function: headers, raw body,
//! secrets and the time in; the replay key or a [`Reject`] out.

use super::{Algorithm, Check, Encoding, Format, Generic, Reject, Secret, Signed, Verified};
use aws_lc_rs::{constant_time, hmac, signature};
use base64::Engine;
use http::HeaderMap;

/// Verifies one request's signature as `check.format` says.
pub fn verify(headers: &HeaderMap, body: &[u8], check: &Check<'_>) -> Result<Verified, Reject> {
    match check.format {
        Format::Stripe => stripe(headers, body, check),
        Format::Github => github(headers, body, check),
        Format::StandardWebhooks => standard(headers, body, check),
        Format::Slack => slack(headers, body, check),
        Format::Generic(g) => generic(g, headers, body, check),
    }
}

/// The one value of `name`: absent and sent-twice are refusals of their
/// own (two signature headers would let a proxy and the app disagree on
/// which one was checked).
fn one<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, Reject> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(Reject::MissingHeader)?;
    if values.next().is_some() {
        return Err(Reject::DuplicateHeader);
    }
    first.to_str().map_err(|_| Reject::MalformedHeader)
}

/// A unix timestamp within `tolerance` of `now`.
fn fresh(text: &str, check: &Check<'_>) -> Result<i64, Reject> {
    if text.is_empty() || text.len() > 12 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reject::MalformedHeader);
    }
    let t: i64 = text.parse().map_err(|_| Reject::MalformedHeader)?;
    if t < check.now - check.tolerance {
        return Err(Reject::Stale);
    }
    if t > check.now + check.tolerance {
        return Err(Reject::Future);
    }
    Ok(t)
}

/// HMAC of the concatenation of `parts`, without copying the body.
fn mac(alg: Algorithm, key: &[u8], parts: &[&[u8]]) -> hmac::Tag {
    let alg = match alg {
        Algorithm::Sha256 => hmac::HMAC_SHA256,
        Algorithm::Sha512 => hmac::HMAC_SHA512,
    };
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(alg, key));
    for part in parts {
        ctx.update(part);
    }
    ctx.sign()
}

/// Whether any HMAC secret signs `parts` as one of `candidates` (decoded
/// signatures). Every comparison is constant-time.
fn any_hmac(
    alg: Algorithm,
    check: &Check<'_>,
    parts: &[&[u8]],
    candidates: &[Vec<u8>],
) -> Result<usize, Reject> {
    let mut keys = check.secrets.hmac().peekable();
    if keys.peek().is_none() {
        return Err(Reject::NoSecret);
    }
    for key in keys {
        let tag = mac(alg, key, parts);
        for (i, sig) in candidates.iter().enumerate() {
            if constant_time::verify_slices_are_equal(tag.as_ref(), sig).is_ok() {
                return Ok(i);
            }
        }
    }
    Err(Reject::BadSignature)
}

pub(super) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) || bytes.is_empty() || bytes.len() > 256 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    bytes
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

fn b64_decode(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || text.len() > 512 {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]` (other
/// schemes such as `v0` ignored), signed `t.body`.
pub fn parse_stripe(header: &str) -> Result<(&str, Vec<&str>), Reject> {
    let mut t = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let (k, v) = item.trim().split_once('=').ok_or(Reject::MalformedHeader)?;
        match k {
            "t" if t.is_some() => return Err(Reject::MalformedHeader),
            "t" => t = Some(v),
            "v1" if v1.len() < 8 => v1.push(v),
            "v1" => return Err(Reject::MalformedHeader),
            _ => {}
        }
    }
    match t {
        Some(t) if !v1.is_empty() => Ok((t, v1)),
        _ => Err(Reject::MalformedHeader),
    }
}

fn stripe(headers: &HeaderMap, body: &[u8], check: &Check<'_>) -> Result<Verified, Reject> {
    let (t, sigs) = parse_stripe(one(headers, "stripe-signature")?)?;
    let timestamp = fresh(t, check)?;
    let decoded: Vec<Vec<u8>> = sigs.iter().filter_map(|s| hex_decode(s)).collect();
    let parts: [&[u8]; 3] = [t.as_bytes(), b".", body];
    let i = any_hmac(Algorithm::Sha256, check, &parts, &decoded)?;
    Ok(Verified {
        id: format!("stripe:{t}:{}", hex(&decoded[i])),
        timestamp: Some(timestamp),
    })
}

/// GitHub: `X-Hub-Signature-256: sha256=<hex>` over the body. GitHub signs
/// no timestamp, so staleness cannot be judged; the signature is the key.
pub fn parse_github(header: &str) -> Result<Vec<u8>, Reject> {
    header
        .strip_prefix("sha256=")
        .and_then(hex_decode)
        .filter(|s| s.len() == 32)
        .ok_or(Reject::MalformedHeader)
}

fn github(headers: &HeaderMap, body: &[u8], check: &Check<'_>) -> Result<Verified, Reject> {
    let sig = parse_github(one(headers, "x-hub-signature-256")?)?;
    any_hmac(
        Algorithm::Sha256,
        check,
        &[body],
        std::slice::from_ref(&sig),
    )?;
    Ok(Verified {
        id: format!("github:{}", hex(&sig)),
        timestamp: None,
    })
}

/// One entry of a Standard Webhooks `webhook-signature` list.
#[derive(Debug, PartialEq, Eq)]
pub enum StandardSig {
    V1(Vec<u8>),
    V1a(Vec<u8>),
}

/// Standard Webhooks: space-separated `v1,<base64>` / `v1a,<base64>`;
/// unknown versions are skipped, as the spec asks.
pub fn parse_standard(header: &str) -> Result<Vec<StandardSig>, Reject> {
    let mut out = Vec::new();
    for item in header.split(' ').filter(|s| !s.is_empty()).take(16) {
        let (version, sig) = item.split_once(',').ok_or(Reject::MalformedHeader)?;
        let decoded = || b64_decode(sig).ok_or(Reject::MalformedHeader);
        match version {
            "v1" => out.push(StandardSig::V1(decoded()?)),
            "v1a" => out.push(StandardSig::V1a(decoded()?)),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(Reject::MalformedHeader);
    }
    Ok(out)
}

fn standard(headers: &HeaderMap, body: &[u8], check: &Check<'_>) -> Result<Verified, Reject> {
    let id = one(headers, "webhook-id")?;
    let ts = one(headers, "webhook-timestamp")?;
    let sigs = parse_standard(one(headers, "webhook-signature")?)?;
    if id.is_empty() || id.len() > 256 {
        return Err(Reject::MalformedHeader);
    }
    let timestamp = fresh(ts, check)?;
    let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts.as_bytes(), b".", body];
    let hmacs: Vec<Vec<u8>> = sigs
        .iter()
        .filter_map(|s| match s {
            StandardSig::V1(v) => Some(v.clone()),
            StandardSig::V1a(_) => None,
        })
        .collect();
    let mut result = Err(Reject::NoSecret);
    if !hmacs.is_empty() && check.secrets.hmac().next().is_some() {
        result = any_hmac(Algorithm::Sha256, check, &parts, &hmacs).map(|_| ());
    }
    let eds: Vec<&[u8]> = sigs
        .iter()
        .filter_map(|s| match s {
            StandardSig::V1a(v) => Some(v.as_slice()),
            StandardSig::V1(_) => None,
        })
        .collect();
    if result.is_err() && !eds.is_empty() && check.secrets.ed25519().next().is_some() {
        let message = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
        let ok = check.secrets.ed25519().any(|pk| {
            let key = signature::UnparsedPublicKey::new(&signature::ED25519, pk);
            eds.iter().any(|sig| key.verify(&message, sig).is_ok())
        });
        result = if ok {
            Ok(())
        } else {
            Err(Reject::BadSignature)
        };
    }
    result?;
    Ok(Verified {
        id: format!("standard:{id}"),
        timestamp: Some(timestamp),
    })
}

/// Slack: `X-Slack-Signature: v0=<hex>` over `v0:<timestamp>:body`.
pub fn parse_slack(header: &str) -> Result<Vec<u8>, Reject> {
    header
        .strip_prefix("v0=")
        .and_then(hex_decode)
        .filter(|s| s.len() == 32)
        .ok_or(Reject::MalformedHeader)
}

fn slack(headers: &HeaderMap, body: &[u8], check: &Check<'_>) -> Result<Verified, Reject> {
    let sig = parse_slack(one(headers, "x-slack-signature")?)?;
    let ts = one(headers, "x-slack-request-timestamp")?;
    let timestamp = fresh(ts, check)?;
    let parts: [&[u8]; 4] = [b"v0:", ts.as_bytes(), b":", body];
    any_hmac(Algorithm::Sha256, check, &parts, std::slice::from_ref(&sig))?;
    Ok(Verified {
        id: format!("slack:{ts}:{}", hex(&sig)),
        timestamp: Some(timestamp),
    })
}

/// The generic scheme's signature header: `prefix` then the encoded MAC.
pub fn parse_generic(g: &Generic, header: &str) -> Result<Vec<u8>, Reject> {
    let sig = header
        .strip_prefix(g.prefix.as_str())
        .ok_or(Reject::MalformedHeader)?;
    match g.encoding {
        Encoding::Hex => hex_decode(sig),
        Encoding::Base64 => b64_decode(sig),
    }
    .ok_or(Reject::MalformedHeader)
}

fn generic(
    g: &Generic,
    headers: &HeaderMap,
    body: &[u8],
    check: &Check<'_>,
) -> Result<Verified, Reject> {
    let sig = parse_generic(g, one(headers, &g.header)?)?;
    let ts = match &g.timestamp_header {
        Some(name) => Some(one(headers, name)?),
        None => None,
    };
    let id = match &g.id_header {
        Some(name) => Some(one(headers, name)?),
        None => None,
    };
    let timestamp = ts.map(|t| fresh(t, check)).transpose()?;
    let (t, i) = (ts.unwrap_or("").as_bytes(), id.unwrap_or("").as_bytes());
    let parts: Vec<&[u8]> = match g.signed {
        Signed::Body => vec![body],
        Signed::TimestampBody => vec![t, b".", body],
        Signed::IdTimestampBody => vec![i, b".", t, b".", body],
    };
    any_hmac(g.algorithm, check, &parts, std::slice::from_ref(&sig))?;
    // An id header that is not signed could be changed to replay.
    let id = match id {
        Some(id) if g.signed == Signed::IdTimestampBody => format!("generic:id:{id}"),
        _ => format!("generic:{}:{}", ts.unwrap_or(""), hex(&sig)),
    };
    Ok(Verified { id, timestamp })
}

pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl Secret {
    fn as_hmac(&self) -> Option<&[u8]> {
        match self {
            Secret::Hmac(k) => Some(k),
            Secret::Ed25519Public(_) => None,
        }
    }
}

impl super::SecretSet {
    fn hmac(&self) -> impl Iterator<Item = &[u8]> {
        self.all().iter().filter_map(Secret::as_hmac)
    }

    fn ed25519(&self) -> impl Iterator<Item = &[u8]> {
        self.all().iter().filter_map(|s| match s {
            Secret::Ed25519Public(k) => Some(k.as_slice()),
            Secret::Hmac(_) => None,
        })
    }
}
