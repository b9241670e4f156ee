//! Header sanitising. Input: `name: value` lines. After `strip_inbound` and
//! `PeerHeaders::apply`, no caller identity header survives, each identity
//! header meshguard sets has exactly its one value, no hop-by-hop header or
//! header named by `Connection` is left (but `te: trailers` and framing),
//! and nothing else is lost. Outbound and response stripping likewise.
#![no_main]

use std::sync::OnceLock;

use http::header::{CONNECTION, TE};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshguard::sidecar::headers::{
    strip_hop_by_hop, strip_inbound, strip_outbound, PeerHeaders, CLIENT_ID_HEADER, XFCC_HEADER,
};
use meshguard::sidecar::identity::SpiffeId;
use meshguard_fuzz::{connection_tokens, header_map, is_hop_by_hop, is_identity_header};

const PEER: &str = "spiffe://cluster.local/ns/default/sa/client";
const OWN: &str = "spiffe://cluster.local/ns/default/sa/server";
/// Framing and routing: a `Connection` header may not remove them.
const PROTECTED: &[&str] = &["host", "content-length", "transfer-encoding"];

fn peer_headers() -> &'static PeerHeaders {
    static H: OnceLock<PeerHeaders> = OnceLock::new();
    H.get_or_init(|| {
        PeerHeaders::new(
            &SpiffeId::parse(PEER).expect("peer"),
            &SpiffeId::parse(OWN).expect("own"),
            &[0xab; 32],
        )
        .expect("SPIFFE IDs are header values")
    })
}

/// True if a TE header lists `trailers`, read independently of meshguard.
fn asks_for_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|element| {
            let coding = element.split(|&b| b == b';').next().unwrap_or_default();
            coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
        })
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a HeaderValue> {
    headers.get_all(name).iter().collect()
}

/// Every header of `before` that no rule removes is in `after`, with the
/// same values in the same order.
fn nothing_else_lost(before: &HeaderMap, after: &HeaderMap, identity_rules: bool) {
    let tokens = connection_tokens(before);
    for name in before.keys() {
        let n = name.as_str();
        let removable = is_hop_by_hop(n)
            || (identity_rules && (is_identity_header(n) || n.contains('_')))
            || (tokens.iter().any(|t| t == n) && !PROTECTED.contains(&n));
        if !removable {
            assert_eq!(values(before, n), values(after, n), "{n} changed");
        }
    }
}

fn check_request_side(before: &HeaderMap, after: &HeaderMap, injected: bool) {
    let tokens = connection_tokens(before);
    let ours = |n: &str| injected && (n == CLIENT_ID_HEADER || n == XFCC_HEADER);
    for name in after.keys() {
        let n = name.as_str();
        assert!(
            !is_identity_header(n) || ours(n),
            "identity header {n} survived"
        );
        assert!(!n.contains('_'), "underscored header {n} survived");
        if is_hop_by_hop(n) {
            assert_eq!(n, "te", "hop-by-hop header {n} survived");
        }
        if tokens.iter().any(|t| t == n) {
            assert!(
                PROTECTED.contains(&n) || n == "te" || ours(n),
                "{n} is named by Connection but survived"
            );
        }
    }
    if asks_for_trailers(before) {
        assert_eq!(values(after, "te"), vec!["trailers"]);
    } else {
        assert!(!after.contains_key(TE));
    }
    assert!(!after.contains_key(CONNECTION));
    nothing_else_lost(before, after, true);
}

fuzz_target!(|data: &[u8]| {
    let original = header_map(data);

    // Inbound: strip, then set our own identity.
    let mut inbound = original.clone();
    let stripped = strip_inbound(&mut inbound, &[]);
    assert_eq!(
        stripped.sent_identity_headers(),
        original.keys().any(|n| is_identity_header(n.as_str())),
    );
    let mut again = inbound.clone();
    let second = strip_inbound(&mut again, &[]);
    assert_eq!(again, inbound, "stripping is idempotent");
    assert_eq!((second.identity, second.hop_by_hop), (0, 0));
    check_request_side(&original, &inbound, false);
    let peer = peer_headers();
    peer.apply(&mut inbound);
    assert_eq!(values(&inbound, CLIENT_ID_HEADER), vec![peer.client_id()]);
    assert_eq!(values(&inbound, XFCC_HEADER), vec![peer.xfcc()]);
    assert_eq!(values(&inbound, CLIENT_ID_HEADER), vec![PEER]);
    check_request_side(&original, &inbound, true);

    // Outbound: the app cannot send identity headers to a peer.
    let mut outbound = original.clone();
    strip_outbound(&mut outbound);
    check_request_side(&original, &outbound, false);

    // Responses: hop-by-hop only, `te` included.
    let mut response = original.clone();
    strip_hop_by_hop(&mut response);
    let tokens = connection_tokens(&original);
    for name in response.keys() {
        let n = name.as_str();
        assert!(
            !is_hop_by_hop(n),
            "hop-by-hop header {n} survived in a response"
        );
        assert!(
            !tokens.iter().any(|t| t == n) || PROTECTED.contains(&n),
            "{n} is named by Connection but survived in a response"
        );
    }
    nothing_else_lost(&original, &response, false);
});
