//! Identity header sanitising (interim version written with the proxy core;
//! the full rule set of the authorization issue replaces it).

use crate::identity::SpiffeId;
use http::{HeaderMap, HeaderName, HeaderValue};

pub const CLIENT_ID_HEADER: &str = "x-meshguard-client-id";

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];
const IDENTITY: &[&str] = &[
    "x-forwarded-client-cert",
    "l5d-client-id",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

fn strip_identity(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    for n in IDENTITY {
        headers.remove(*n);
    }
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-meshguard-"))
        .cloned()
        .collect();
    for n in own {
        headers.remove(n);
    }
}

pub fn strip_inbound(headers: &mut HeaderMap, extra: &[HeaderName]) {
    strip_identity(headers);
    for n in extra {
        headers.remove(n);
    }
}

pub fn strip_outbound(headers: &mut HeaderMap) {
    strip_identity(headers);
}

/// The identity headers of one authenticated peer, built once per connection.
pub struct PeerHeaders {
    client_id: HeaderValue,
    xfcc: HeaderValue,
}

impl PeerHeaders {
    pub fn new(peer: &SpiffeId, own: &SpiffeId, cert_sha256: &[u8; 32]) -> Self {
        let hash: String = cert_sha256.iter().map(|b| format!("{b:02x}")).collect();
        let xfcc = format!("By={own};Hash={hash};URI={peer}");
        PeerHeaders {
            client_id: HeaderValue::from_str(peer.as_str())
                .expect("a SPIFFE ID is a valid header value"),
            xfcc: HeaderValue::from_str(&xfcc).expect("SPIFFE IDs and hex are valid header values"),
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert(
            HeaderName::from_static(CLIENT_ID_HEADER),
            self.client_id.clone(),
        );
        headers.insert(
            HeaderName::from_static("x-forwarded-client-cert"),
            self.xfcc.clone(),
        );
    }
}
