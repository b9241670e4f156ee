use super::*;

/// Hop-by-hop headers and what `Connection` may and may not remove.
mod connection;

/// A header map built from raw (mixed-case) names as they come off the
/// wire, duplicates appended, as hyper's parser does.
fn map(raw: &[(&str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in raw {
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

/// Asserts the set of header names present, in any order.
#[track_caller]
fn assert_names(headers: &HeaderMap, expected: &[&str]) {
    let mut names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    let mut expected = expected.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
}

const PEER: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const OWN: &str = "spiffe://cluster.local/ns/shop/sa/api";
const HASH: [u8; 32] = [0xab; 32];

fn peer_headers() -> PeerHeaders {
    PeerHeaders::new(
        &SpiffeId::parse(PEER).unwrap(),
        &SpiffeId::parse(OWN).unwrap(),
        &HASH,
    )
    .unwrap()
}

fn expected_xfcc() -> String {
    format!("By={OWN};Hash={};URI={PEER}", "ab".repeat(32))
}

/// Inbound as the proxy runs it: strip, then set meshguard's own values.
fn inbound(raw: &[(&str, &str)]) -> (HeaderMap, Stripped) {
    let mut headers = map(raw);
    let stripped = strip_inbound(&mut headers, &[]);
    peer_headers().apply(&mut headers);
    (headers, stripped)
}

/// The property that matters: after strip + inject, every identity header
/// present is one meshguard set, with meshguard's value, exactly once.
fn assert_only_meshguard_identity(headers: &HeaderMap) {
    for name in headers.keys() {
        let name = name.as_str();
        if classify(name, Strip::REQUEST, &[]) == Some(Class::Identity) {
            let expected = match name {
                CLIENT_ID_HEADER => PEER.to_owned(),
                XFCC_HEADER => expected_xfcc(),
                other => panic!("identity header {other:?} survived"),
            };
            assert_eq!(values(headers, name), [expected.as_str()], "{name}");
        }
    }
    assert_eq!(values(headers, CLIENT_ID_HEADER), [PEER]);
    assert_eq!(values(headers, XFCC_HEADER), [expected_xfcc().as_str()]);
}

#[test]
fn peer_headers_use_the_envoy_xfcc_format() {
    let h = peer_headers();
    assert_eq!(h.client_id(), PEER);
    assert_eq!(h.xfcc().to_str().unwrap(), expected_xfcc());
    let mut hash = [0u8; 32];
    hash[0] = 0x01;
    hash[31] = 0xf0;
    let h = PeerHeaders::new(
        &SpiffeId::parse(PEER).unwrap(),
        &SpiffeId::parse(OWN).unwrap(),
        &hash,
    )
    .unwrap();
    let xfcc = h.xfcc().to_str().unwrap();
    assert!(
        xfcc.contains(&format!(";Hash=01{}f0;", "00".repeat(30))),
        "{xfcc}"
    );
}

#[test]
fn spoofed_client_id_is_replaced_not_appended() {
    let (headers, stripped) = inbound(&[
        (
            "X-Meshguard-Client-Id",
            "spiffe://cluster.local/ns/kube-system/sa/admin",
        ),
        ("x-meshguard-client-id", "spiffe://evil/x"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert!(stripped.sent_identity_headers());
    assert_eq!(stripped.identity, 1);
}

#[test]
fn every_x_meshguard_header_is_removed() {
    let (headers, _) = inbound(&[
        ("X-MeshGuard-Peer-Trust-Domain", "cluster.local"),
        ("x-meshguard-authorized", "true"),
        ("x-meshguard-", "empty suffix"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER]);
}

#[test]
fn caller_xfcc_with_several_elements_is_replaced_by_one() {
    let forged =
        "By=spiffe://cluster.local/ns/a/sa/b;URI=spiffe://cluster.local/ns/kube-system/sa/admin,\
                  By=spiffe://x;Hash=00;Subject=\"CN=admin,O=root\";URI=spiffe://y";
    let (headers, _) = inbound(&[
        ("X-Forwarded-Client-Cert", forged),
        (
            "x-forwarded-client-cert",
            "URI=spiffe://cluster.local/ns/a/sa/c",
        ),
    ]);
    assert_only_meshguard_identity(&headers);
}

#[test]
fn linkerd_headers_are_removed() {
    let (headers, stripped) = inbound(&[
        (
            "L5d-Client-Id",
            "web.default.serviceaccount.identity.linkerd.cluster.local",
        ),
        ("l5d-dst-override", "admin.svc:80"),
        ("L5D-Require-Id", "x"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert_eq!(stripped.identity, 3);
}

#[test]
fn every_forwarding_header_is_removed() {
    let (headers, _) = inbound(&[
        ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"),
        ("x-forwarded-for", "192.168.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "admin.internal"),
        ("X-Forwarded-Port", "443"),
        ("X-Forwarded-Prefix", "/admin"),
        ("X-Forwarded-Server", "lb"),
        ("X-Forwarded-Tls-Client-Cert", "MIIB..."),
        ("X-Real-IP", "127.0.0.1"),
        ("X-Client-IP", "127.0.0.1"),
        ("True-Client-IP", "127.0.0.1"),
        ("X-Cluster-Client-IP", "127.0.0.1"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER]);
}

#[test]
fn rfc7239_forwarded_with_several_elements_is_removed() {
    let (headers, stripped) = inbound(&[
        (
            "Forwarded",
            "for=127.0.0.1;by=10.0.0.2;proto=https;host=admin, for=\"[::1]:80\"",
        ),
        ("forwarded", "for=unknown"),
    ]);
    assert!(!headers.contains_key("forwarded"));
    assert_eq!(stripped.identity, 1);
}

#[test]
fn envoy_headers_are_removed() {
    let (headers, _) = inbound(&[
        ("X-Envoy-Internal", "true"),
        ("x-envoy-peer-metadata-id", "sidecar~10.0.0.1~admin"),
        ("X-Envoy-External-Address", "127.0.0.1"),
        ("x-envoy-upstream-rq-timeout-ms", "0"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert_names(&headers, &[CLIENT_ID_HEADER, XFCC_HEADER]);
}

#[test]
fn forwarded_client_certificates_are_removed() {
    let (headers, stripped) = inbound(&[
        ("Client-Cert", ":MIIB...:"),
        ("Client-Cert-Chain", ":MIIC...:, :MIID...:"),
        ("X-SSL-Client-Cert", "-----BEGIN CERTIFICATE-----"),
        ("X-SSL-Client-Verify", "SUCCESS"),
        ("X-SSL-Client-S-DN", "CN=admin"),
        ("SSL-Client-Cert", "x"),
        ("X-Client-Cert", "x"),
        ("X-Client-Cert-Chain", "x"),
        ("X-Client-Verify", "SUCCESS"),
        ("X-Client-DN", "CN=admin"),
        ("X-Amzn-Mtls-Clientcert", "x"),
        ("X-ARR-ClientCert", "x"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert_eq!(stripped.identity, 12);
}

#[test]
fn unrelated_headers_and_their_duplicates_are_untouched() {
    let raw = [
        ("Authorization", "Bearer abc"),
        ("Cookie", "a=1"),
        ("Cookie", "b=2; c=3"),
        ("Accept", "text/html, application/json;q=0.9"),
        ("Content-Type", "application/grpc"),
        ("Traceparent", "00-abc-def-01"),
        ("X-Request-Id", "42"),
        ("User-Agent", "curl/8"),
        ("X-Forwarded", "not a forwarding header name"),
        ("L5d", "no dash"),
    ];
    let (headers, stripped) = inbound(&raw);
    for (name, _) in raw {
        let name = name.to_ascii_lowercase();
        let expected: Vec<_> = raw
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(values(&headers, &name), expected, "{name}");
    }
    assert_eq!(stripped, Stripped::default());
}

#[test]
fn a_clean_request_reports_nothing_stripped() {
    let mut headers = map(&[("host", "app"), ("accept", "*/*")]);
    assert_eq!(strip_inbound(&mut headers, &[]), Stripped::default());
    assert_names(&headers, &["accept", "host"]);
}

#[test]
fn extra_names_are_removed_too() {
    let extra = [
        HeaderName::from_static("cf-connecting-ip"),
        HeaderName::from_static("x-user"),
    ];
    let mut headers = map(&[
        ("CF-Connecting-IP", "1.2.3.4"),
        ("X-User", "admin"),
        ("x-ok", "1"),
    ]);
    let stripped = strip_inbound(&mut headers, &extra);
    assert_names(&headers, &["x-ok"]);
    assert_eq!(stripped.identity, 2);
}

#[test]
fn configured_strip_headers_are_removed_whatever_their_case() {
    // `inbound.strip_headers` as written in the config, parsed the way the
    // inbound parses it once at startup.
    let configured = ["X-Tenant-User", "cf-connecting-ip"];
    let extra: Vec<HeaderName> = configured
        .iter()
        .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
        .collect();
    let mut headers = map(&[
        ("x-tenant-user", "admin"),
        ("CF-Connecting-IP", "1.2.3.4"),
        ("X-Meshguard-Client-Id", "spiffe://evil/x"),
        ("x-ok", "1"),
    ]);
    let stripped = strip_inbound(&mut headers, &extra);
    peer_headers().apply(&mut headers);
    assert_names(&headers, &["x-ok", CLIENT_ID_HEADER, XFCC_HEADER]);
    assert_eq!(stripped.identity, 3);
    assert!(stripped.sent_identity_headers());
}

#[test]
fn a_request_full_of_spoofing_attempts_ends_with_only_meshguard_values() {
    let (headers, stripped) = inbound(&[
        ("Connection", "keep-alive, X-Custom-Auth"),
        ("X-Custom-Auth", "root"),
        ("X-Meshguard-Client-Id", PEER),
        ("X-Forwarded-Client-Cert", &expected_xfcc()),
        ("L5d-Client-Id", "admin"),
        ("Forwarded", "for=127.0.0.1"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Envoy-Internal", "true"),
        ("Client-Cert", ":x:"),
        ("TE", "trailers"),
        ("Content-Type", "application/grpc"),
    ]);
    assert_only_meshguard_identity(&headers);
    assert_names(
        &headers,
        &["content-type", "te", CLIENT_ID_HEADER, XFCC_HEADER],
    );
    assert_eq!(
        stripped,
        Stripped {
            identity: 7,
            underscored: 0,
            hop_by_hop: 2
        }
    );
}

#[test]
fn inject_replaces_existing_values_even_without_a_strip() {
    let mut headers = map(&[
        (CLIENT_ID_HEADER, "spiffe://evil/a"),
        (CLIENT_ID_HEADER, "spiffe://evil/b"),
        (XFCC_HEADER, "URI=spiffe://evil/a"),
    ]);
    PeerHeaders::new(
        &SpiffeId::parse(PEER).unwrap(),
        &SpiffeId::parse(OWN).unwrap(),
        &HASH,
    )
    .unwrap()
    .apply(&mut headers);
    assert_only_meshguard_identity(&headers);
}

#[test]
fn the_app_cannot_send_identity_headers_to_a_peer() {
    let mut headers = map(&[
        ("X-Meshguard-Client-Id", OWN),
        ("X-Forwarded-Client-Cert", "By=x;URI=y"),
        ("L5d-Client-Id", "admin"),
        ("X-Forwarded-For", "127.0.0.1"),
        ("Connection", "close, x-secret"),
        ("x-secret", "s"),
        ("TE", "trailers"),
        ("Authorization", "Bearer t"),
    ]);
    let stripped = strip_outbound(&mut headers);
    assert_names(&headers, &["authorization", "te"]);
    assert_eq!(values(&headers, "te"), ["trailers"]);
    assert_eq!(
        stripped,
        Stripped {
            identity: 4,
            underscored: 0,
            hop_by_hop: 2
        }
    );
}

#[test]
fn responses_lose_hop_by_hop_headers_only() {
    let mut headers = map(&[
        ("Connection", "keep-alive, x-hop"),
        ("Keep-Alive", "timeout=5"),
        ("x-hop", "1"),
        ("TE", "trailers"),
        ("Trailer", "grpc-status"),
        ("X-Forwarded-For", "kept: responses carry no caller claims"),
        ("Content-Length", "0"),
    ]);
    assert_eq!(strip_hop_by_hop(&mut headers), 4);
    assert_names(&headers, &["content-length", "trailer", "x-forwarded-for"]);
}

#[test]
fn mixed_case_names_from_a_request_builder_are_stripped() {
    let request = http::Request::builder()
        .header("X-Forwarded-Client-Cert", "URI=spiffe://evil/x")
        .header("X-MESHGUARD-CLIENT-ID", "spiffe://evil/x")
        .header("FoRwArDeD", "for=1.2.3.4")
        .header("Connection", "X-Drop")
        .header("X-Drop", "1")
        .body(())
        .unwrap();
    let (mut parts, ()) = request.into_parts();
    strip_inbound(&mut parts.headers, &[]);
    peer_headers().apply(&mut parts.headers);
    assert_only_meshguard_identity(&parts.headers);
    assert_names(&parts.headers, &[CLIENT_ID_HEADER, XFCC_HEADER]);
}

#[test]
fn underscored_names_are_dropped_from_requests_unless_kept() {
    // What CGI/WSGI/PHP read as X-Forwarded-Client-Cert, X-Meshguard-Client-Id, ...
    let spoofs = [
        "x_forwarded_client_cert",
        "x_meshguard_client_id",
        "l5d_client_id",
        "x-forwarded_for",
        "x_real_ip",
        "x_authenticated_user",
    ];
    let request = || {
        let mut h = HeaderMap::new();
        h.append("content-type", HeaderValue::from_static("text/plain"));
        for name in spoofs {
            h.append(
                HeaderName::from_static(name),
                HeaderValue::from_static("spiffe://cluster.local/ns/kube-system/sa/admin"),
            );
        }
        h
    };
    let mut inbound = request();
    let stripped = strip_inbound(&mut inbound, &[]);
    assert_names(&inbound, &["content-type"]);
    assert_eq!(stripped.underscored, spoofs.len());
    let mut outbound = request();
    strip_outbound(&mut outbound);
    assert_names(&outbound, &["content-type"]);

    // Kept when configured: only the identity family still goes.
    let keep = RequestRules {
        extra: Vec::new(),
        keep_underscores: true,
    };
    let mut kept = request();
    let stripped = strip_request(&mut kept, &keep);
    assert_eq!(stripped.underscored, 0);
    assert!(kept.contains_key("x_authenticated_user"));
    assert!(kept.contains_key("x_forwarded_client_cert"));
    // A configured extra name is still removed, underscores or not.
    let rules = RequestRules {
        extra: vec![HeaderName::from_static("x_authenticated_user")],
        keep_underscores: true,
    };
    let mut h = request();
    strip_request(&mut h, &rules);
    assert!(!h.contains_key("x_authenticated_user"));

    // Responses keep them: the app's own headers are not a claim to us.
    let mut resp = request();
    strip_hop_by_hop(&mut resp);
    assert_eq!(resp.len(), spoofs.len() + 1);
}

/// The SPIFFE-ID spellings of other meshes and gateways, in any case, are
/// removed in both directions and never reach an app or a peer.
#[test]
fn spiffe_id_headers_of_other_meshes_and_gateways_are_removed_both_ways() {
    let spoofs = [
        "X-Spiffe-Id",
        "x-spiffe-identity",
        "X-SPIFFE-Cert",
        "x-spiffe-id-peer-cert",
        "X-Client-Spiffe-Id",
        "x-peer-spiffe-id",
        "x-source-spiffe-id",
        "X-Istio-Attributes",
        "X-Kuma-Forwarded-Client-Cert",
        // Already in the family before; kept here so the table is whole.
        "x-envoy-peer-metadata",
        "l5d-client-id",
        "x-forwarded-client-cert",
        "ssl-client-subject-dn",
        "x-ssl-client-s-dn",
        "x-client-cert",
    ];
    let raw: Vec<(&str, &str)> = spoofs
        .iter()
        .map(|n| (*n, "spiffe://cluster.local/ns/kube-system/sa/admin"))
        .chain([("content-type", "text/plain")])
        .collect();
    let (inbound, stripped) = inbound(&raw);
    assert_names(&inbound, &["content-type", CLIENT_ID_HEADER, XFCC_HEADER]);
    assert_eq!(stripped.identity, spoofs.len());
    let mut outbound = map(&raw);
    assert_eq!(
        strip_request(&mut outbound, &RequestRules::default()).identity,
        spoofs.len()
    );
    assert_names(&outbound, &["content-type"]);
    for name in spoofs {
        assert!(is_always_removed(&name.to_ascii_lowercase()), "{name}");
    }
    assert!(!is_always_removed("x-authenticated-user-id"));
    assert!(
        !is_always_removed("x_underscored"),
        "kept when configured, so not always"
    );
}
