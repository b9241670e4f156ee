//! Identity header sanitising: the app learns who called it from meshguard
//! alone, never from the caller.
//!
//! Proxies that pass caller-sent identity headers through let any peer claim
//! to be any other (linkerd2#4647, envoy#6038; nginx, haproxy and stunnel
//! all forward them unchanged). So, on every inbound request, meshguard
//! removes every header that claims an identity, a client certificate or a
//! client address, then sets exactly one value of its own from the verified
//! mTLS peer ([`PeerHeaders`], built once per connection). Outbound, the app
//! cannot make meshguard send such headers to a peer on its behalf.
//!
//! # Removed as identity claims (both directions)
//! - `x-meshguard-*`: meshguard's own; only meshguard sets them.
//! - `x-forwarded-*`: `-for`, `-proto`, `-host`, `-port`, `-prefix`, XFCC
//!   (`x-forwarded-client-cert`), Traefik's `-tls-client-cert`, and so on.
//! - `forwarded` (RFC 7239); `x-real-ip`, `x-client-ip`, `true-client-ip`,
//!   `x-cluster-client-ip`: client address claims that apps use for IP
//!   allow lists.
//! - `l5d-*`: Linkerd's `l5d-client-id` and its routing headers.
//! - `x-envoy-*`: Envoy trusts them from "internal" callers (`x-envoy-internal`,
//!   `x-envoy-peer-metadata` carrying Istio's peer identity, retry and
//!   timeout overrides) and strips them from external ones; to meshguard
//!   every caller is external.
//! - Client certificates forwarded by TLS terminators: `client-cert` and
//!   `client-cert-chain` (RFC 9440), `x-ssl-*`, `ssl-client-*`,
//!   `x-client-cert*`, `x-client-verify`, `x-client-dn`, `x-amzn-mtls-*`
//!   (AWS ALB), `x-arr-clientcert` (IIS ARR).
//! - SPIFFE IDs as other meshes and integrations pass them on (the
//!   sources are by each name in `IDENTITY_PREFIXES`/`IDENTITY_NAMES`):
//!   Istio's Mixer-era `x-istio-attributes`, Kuma's
//!   `x-kuma-forwarded-client-cert`, `x-spiffe-*` (`x-spiffe-id`,
//!   `-identity`, `-cert`) set by gateways in front of apps, and
//!   `x-client-spiffe-id` / `x-peer-spiffe-id` / `x-source-spiffe-id`. Consul's Envoy and ghostunnel need nothing
//!   more: Consul passes identity in XFCC (covered above), ghostunnel
//!   proxies TCP and sets no header.
//!
//! # Removed as ambiguous names (requests, both directions)
//! Every request header whose name contains `_`. CGI, WSGI, PHP and the
//! frameworks built on them read header names through environment-style
//! keys where `-` becomes `_`, so `x_forwarded_client_cert` reaches them as
//! `X-Forwarded-Client-Cert`: no list of names could be complete. Envoy
//! (`headers_with_underscores_action`) and nginx (`underscores_in_headers
//! off`) drop them too; `inbound.keep_underscore_headers` /
//! `outbound.keep_underscore_headers` keep them for an app that needs one.
//!
//! A deployment behind a trusted ingress that must keep, say,
//! `x-forwarded-for` needs an explicit trusted-hop setting (as Envoy's
//! `xff_num_trusted_hops`); there is none yet, and the default is to trust
//! no one. Vendor headers not listed here can be added with the config keys
//! `inbound.strip_headers` and `outbound.strip_headers` (the `extra` names
//! of [`RequestRules`]), removed like the identity family in that direction.
//!
//! # Removed as hop-by-hop (RFC 9110 §7.6.1)
//! `connection`, `proxy-connection`, `keep-alive`, `te`, `upgrade`,
//! `proxy-authorization`, `proxy-authenticate`, and every header a
//! `Connection` header names. Three exceptions, each deliberate:
//! - `te: trailers` survives on requests (rewritten to exactly that): gRPC
//!   requires it end to end, and it is the one TE value HTTP/2 allows.
//! - `transfer-encoding` is left to hyper, which frames bodies by it;
//!   removing it here could corrupt a body. `content-length` and `host`
//!   likewise stay even when `Connection` names them, since a caller must
//!   not be able to change framing or routing that way.
//! - `trailer` is not hop-by-hop in RFC 9110 and hyper's HTTP/1 encoder
//!   sends only the trailer fields it declares, so removing it would
//!   silently drop trailers (and with them `grpc-status`).
//!
//! `upgrade` is removed, so WebSocket and h2c upgrades do not pass yet;
//! supporting them means handling the upgrade explicitly after
//! authorisation, not forwarding the header.

use http::header::InvalidHeaderValue;
use http::header::{CONNECTION, TE};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::sidecar::identity::SpiffeId;

/// The header carrying the authenticated caller's SPIFFE ID to the app.
pub const CLIENT_ID_HEADER: &str = "x-meshguard-client-id";
/// Envoy's client-certificate header, set in SANITIZE_SET style: replaced,
/// never appended to (appending lets a caller forge every element but the
/// last, envoy#41658).
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// Between two sidecars: the protocol the calling app spoke, so the
/// destination app is spoken to in the same one. Set by the outbound only
/// (the value [`APP_H2`]; absent means HTTP/1.1), read by the inbound,
/// and, being `x-meshguard-*`, removed from whatever an app or a caller
/// sends and never passed to an app.
pub const APP_PROTOCOL_HEADER: &str = "x-meshguard-app-protocol";
pub const APP_PROTOCOL: HeaderName = HeaderName::from_static(APP_PROTOCOL_HEADER);
/// [`APP_PROTOCOL_HEADER`]'s value for an app that spoke HTTP/2.
pub const APP_H2: &str = "h2";

const CLIENT_ID: HeaderName = HeaderName::from_static(CLIENT_ID_HEADER);
const XFCC: HeaderName = HeaderName::from_static(XFCC_HEADER);

const IDENTITY_PREFIXES: &[&str] = &[
    "x-meshguard-",
    "x-forwarded-",
    "l5d-",
    "x-envoy-",
    "x-ssl-",
    "ssl-client-",
    "x-client-cert",
    "x-amzn-mtls-",
    // Kuma: an Envoy Lua filter used with Kuma copies XFCC's `URI=` into
    // `X-Kuma-Forwarded-Client-Cert` (envoy_on_request in public Kuma setups).
    "x-kuma-",
    // `X-SPIFFE-ID` (FastAPI `APIKeyHeader(name="X-Spiffe-ID")` behind
    // Caddy, which sets it from the verified peer certificate),
    // `X-SPIFFE-Identity`, `X-SPIFFE-Cert`, `X-SPIFFE-ID-Peer-Cert`: the
    // SPIFFE ID or SVID as gateways in front of apps pass them on.
    "x-spiffe-",
];

const IDENTITY_NAMES: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "client-cert",
    "client-cert-chain",
    "x-client-verify",
    "x-client-dn",
    "x-arr-clientcert",
    // Istio's Mixer filter forwards the caller's attributes, among them
    // `source.principal`, in this header (istio/proxy src/envoy/mixer,
    // `forward_attributes`); old sidecars still read it.
    "x-istio-attributes",
    // The caller's SPIFFE ID as apps read it "from the mesh sidecar after
    // mTLS termination" (Python services configured with
    // `spiffe_header = "x-client-spiffe-id"`; Caddy configs strip a
    // caller's copy with `header_up -X-Client-SPIFFE-ID`). The peer/source
    // spellings are the same claim under the other usual role names.
    "x-client-spiffe-id",
    "x-peer-spiffe-id",
    "x-source-spiffe-id",
];

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers a `Connection` header may not remove: framing and routing.
const PROTECTED: &[&str] = &["host", "content-length", "transfer-encoding"];

/// Whether `name` (lowercase) frames or routes a request, so that no rule,
/// `Connection` or configured, may remove it.
pub fn is_protected(name: &str) -> bool {
    PROTECTED.contains(&name)
}

/// Whether a request header of this (lowercase) name is always removed
/// whatever the config: the identity family and hop-by-hop headers.
pub fn is_always_removed(name: &str) -> bool {
    matches!(
        classify(name, Strip::REQUEST, &[]),
        Some(Class::Identity | Class::HopByHop)
    )
}

/// How many distinct header names a strip removed, so the caller can log a
/// caller that tried to send identity headers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stripped {
    /// Identity and client-address headers (and `extra` names).
    pub identity: usize,
    /// Names with `_`, which some frameworks read as the `-` spelling.
    pub underscored: usize,
    /// Hop-by-hop headers, including those named by `Connection`.
    pub hop_by_hop: usize,
}

impl Stripped {
    /// True if the sender tried to claim an identity itself.
    pub fn sent_identity_headers(&self) -> bool {
        self.identity > 0
    }
}

/// What a direction's config adds to the fixed rules for requests.
#[derive(Debug, Clone, Default)]
pub struct RequestRules {
    /// More names to remove (`inbound.strip_headers`, `outbound.strip_headers`).
    pub extra: Vec<HeaderName>,
    /// Keep names with `_` (`*.keep_underscore_headers`).
    pub keep_underscores: bool,
}

/// Removes every identity, hop-by-hop and underscored header from a
/// request arriving from a peer, plus the `extra` names, before it goes to
/// the app.
pub fn strip_inbound(headers: &mut HeaderMap, extra: &[HeaderName]) -> Stripped {
    strip(headers, Strip::REQUEST, extra)
}

/// Removes every identity, hop-by-hop and underscored header from a
/// request the app sends, before it goes to a peer.
pub fn strip_outbound(headers: &mut HeaderMap) -> Stripped {
    strip(headers, Strip::REQUEST, &[])
}

/// A request's strip with a direction's configured rules.
pub fn strip_request(headers: &mut HeaderMap, rules: &RequestRules) -> Stripped {
    let strip_rules = Strip {
        underscores: !rules.keep_underscores,
        ..Strip::REQUEST
    };
    strip(headers, strip_rules, &rules.extra)
}

/// Removes the hop-by-hop headers of a response (where `te` has no place
/// and goes entirely). Returns how many names were removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> usize {
    strip(headers, Strip::RESPONSE, &[]).hop_by_hop
}

/// The identity headers of one authenticated peer, built once per
/// connection; applying them per request clones two `HeaderValue`s, which
/// share their bytes.
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    client_id: HeaderValue,
    xfcc: HeaderValue,
}

impl PeerHeaders {
    /// `peer_cert_sha256` is the SHA-256 of the peer's leaf certificate DER.
    /// Fails only if an identity is not a valid header value, which the
    /// SPIFFE ID rules exclude; the caller then refuses the connection.
    pub fn new(
        peer: &SpiffeId,
        own: &SpiffeId,
        peer_cert_sha256: &[u8; 32],
    ) -> Result<Self, InvalidHeaderValue> {
        let mut xfcc = String::with_capacity(
            "By=;Hash=;URI=".len() + own.as_str().len() + 64 + peer.as_str().len(),
        );
        xfcc.push_str("By=");
        xfcc.push_str(own.as_str());
        xfcc.push_str(";Hash=");
        push_hex(&mut xfcc, peer_cert_sha256);
        xfcc.push_str(";URI=");
        xfcc.push_str(peer.as_str());
        Ok(PeerHeaders {
            client_id: HeaderValue::from_str(peer.as_str())?,
            xfcc: HeaderValue::try_from(xfcc)?,
        })
    }

    /// Sets both headers, replacing whatever is there. Run after
    /// `strip_inbound`, so that a `Connection` header cannot name them away.
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(CLIENT_ID, self.client_id.clone());
        headers.insert(XFCC, self.xfcc.clone());
    }

    pub fn client_id(&self) -> &HeaderValue {
        &self.client_id
    }

    pub fn xfcc(&self) -> &HeaderValue {
        &self.xfcc
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xF)]));
    }
}

/// Which sets a strip removes.
#[derive(Clone, Copy)]
struct Strip {
    identity: bool,
    /// Remove names with `_` (requests, unless configured otherwise).
    underscores: bool,
    /// Rewrite TE to exactly `trailers` if the sender asked for trailers.
    keep_te_trailers: bool,
}

impl Strip {
    const REQUEST: Strip = Strip {
        identity: true,
        underscores: true,
        keep_te_trailers: true,
    };
    const RESPONSE: Strip = Strip {
        identity: false,
        underscores: false,
        keep_te_trailers: false,
    };
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Identity,
    HopByHop,
    Underscored,
}

fn classify(name: &str, rules: Strip, extra: &[HeaderName]) -> Option<Class> {
    if HOP_BY_HOP.contains(&name) {
        return Some(Class::HopByHop);
    }
    let identity = IDENTITY_NAMES.contains(&name)
        || IDENTITY_PREFIXES.iter().any(|p| name.starts_with(p))
        || extra.iter().any(|e| e.as_str() == name);
    if rules.identity && identity {
        return Some(Class::Identity);
    }
    (rules.underscores && name.contains('_')).then_some(Class::Underscored)
}

/// Removes without allocating in the common case: each pass finds one name
/// to remove and removes all its values, so the work is (headers × names
/// removed), bounded by hyper's header count limit.
fn strip(headers: &mut HeaderMap, rules: Strip, extra: &[HeaderName]) -> Stripped {
    let mut stripped = Stripped::default();
    let te_trailers = rules.keep_te_trailers && asks_for_trailers(headers);

    // Names listed in `Connection` first, while it is still there.
    while let Some(name) = next_nominated(headers, rules, extra) {
        headers.remove(&name);
        stripped.hop_by_hop += 1;
    }
    loop {
        let found = headers
            .keys()
            .find_map(|name| classify(name.as_str(), rules, extra).map(|c| (name.clone(), c)));
        let Some((name, class)) = found else { break };
        headers.remove(&name);
        match class {
            Class::Identity => stripped.identity += 1,
            Class::HopByHop => stripped.hop_by_hop += 1,
            Class::Underscored => stripped.underscored += 1,
        }
    }
    if te_trailers {
        // TE was removed (and counted) above; what stays is not a removal.
        headers.insert(TE, HeaderValue::from_static("trailers"));
        stripped.hop_by_hop = stripped.hop_by_hop.saturating_sub(1);
    }
    stripped
}

/// Comma-separated list elements of every value of `name`, trimmed of
/// optional whitespace, empty elements skipped (RFC 9110 §5.6.1).
fn list_elements(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(|element| element.trim_ascii())
        .filter(|element| !element.is_empty())
}

/// True if a TE header lists `trailers` (possibly among codings).
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    list_elements(headers, TE).any(|element| {
        let coding = element.split(|&b| b == b';').next().unwrap_or_default();
        coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
    })
}

/// A header present in the map that a `Connection` header names and that
/// the fixed rules would not remove anyway. Allocates a name only for a
/// custom header that is really there to remove; `Connection: close` or
/// `keep-alive` costs no allocation.
fn next_nominated(headers: &HeaderMap, rules: Strip, extra: &[HeaderName]) -> Option<HeaderName> {
    list_elements(headers, CONNECTION).find_map(|token| {
        let token = std::str::from_utf8(token).ok()?;
        // Fixed-rule names are skipped, or `Connection: connection, x-a`
        // would remove `Connection` before `x-a` is seen.
        let lowercase = !token.bytes().any(|b| b.is_ascii_uppercase());
        if lowercase && classify(token, rules, extra).is_some() {
            return None;
        }
        if PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(token)) {
            return None;
        }
        // Looking up by &str lowercases on the stack; invalid names are
        // simply absent.
        if !headers.contains_key(token) {
            return None;
        }
        let name = HeaderName::from_bytes(token.as_bytes()).ok()?;
        classify(name.as_str(), rules, extra)
            .is_none()
            .then_some(name)
    })
}

#[cfg(test)]
mod tests;
